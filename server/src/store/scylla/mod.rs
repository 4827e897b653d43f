//! The persistent tier: ScyllaDB (or Apache Cassandra, same CQL protocol).
//!
//! The hot tier queues [`PersistOp`]s durably and flushes them here with
//! [`ScyllaPersistence::apply`]; on a miss it re-warms from
//! [`ScyllaPersistence::conversation`] and friends. This module persists what
//! the domain already decided and never re-decides it.
//!
//! # Monotonicity without lightweight transactions
//! A flush may be replayed, and flushes from several nodes may interleave, so
//! every write must be idempotent and order-independent. Instead of
//! read-before-write or LWT (Paxos round trips), each write carries an explicit
//! `USING TIMESTAMP` chosen so that CQL's last-write-wins picks the value the
//! domain rules want:
//! - *highest wins* (watermark fields, membership and sharing versions): the
//!   timestamp is the value (or its version) itself;
//! - *earliest wins* (first delivery, first covering read): the timestamp is
//!   [`EARLIEST_WINS_BASE`] − `at`, so an older `at` carries a larger timestamp.
//!
//! Equal timestamps only happen for equal values (a replay), which is harmless.
//! Every write also carries `USING TTL` = the retention period, so the tier
//! never grows without bound; a replay refreshes the TTL.
//!
//! # Tables (all in the configured keyspace, all written `USING TTL retention`)
//! - `conversations (conversation uuid PRIMARY KEY, members blob, version bigint)`:
//!   the full membership after the latest change, postcard-encoded
//!   `Vec<(UserId, Membership)>`. One row per conversation, read whole when the
//!   hot tier re-warms. Timestamp = `version`, so the highest version wins and
//!   both columns always come from the same write.
//! - `user_conversations (user uuid, conversation uuid, PRIMARY KEY (user, conversation))`:
//!   every conversation a user was ever a member of, for "my conversations"
//!   after the hot tier forgot them. Insert-only (a set), so order is irrelevant.
//! - `messages (id uuid PRIMARY KEY, conversation uuid, seq bigint, sender uuid, sent_at bigint)`:
//!   messages by id, for receipt lookups by message id. Immutable: a replay
//!   writes the same values.
//! - `conversation_messages (conversation uuid, seq bigint, id uuid, sender uuid, sent_at bigint, PRIMARY KEY (conversation, seq))`:
//!   the same messages clustered by seq, so a conversation's messages come back
//!   in order in one partition read. Immutable.
//! - `sender_messages (sender uuid, sent_at bigint, id uuid, conversation uuid, seq bigint, PRIMARY KEY (sender, sent_at, id)) WITH CLUSTERING ORDER BY (sent_at DESC, id DESC)`:
//!   a user's sent messages newest first, so "recent sent" is one `LIMIT` read.
//!   Immutable.
//! - `receipts (message uuid, user uuid, conversation uuid, delivered_at bigint, PRIMARY KEY (message, user))`:
//!   first delivery of a message to a user; one partition per message holds
//!   all its recipients, which is what a receipt lookup needs. Timestamp =
//!   `EARLIEST_WINS_BASE − delivered_at`: the earliest delivery wins.
//! - `delivery_runs (conversation uuid, user uuid, first bigint, last bigint, at bigint, removed boolean, PRIMARY KEY (conversation, user, first, last, at))`:
//!   deliveries as runs ([`crate::domain::Run`]): one row per run, however
//!   many messages it covers, one partition per conversation (re-warmed
//!   together). A row is a run's whole identity and never changes; a run
//!   that a late registration splits is marked `removed` and its pieces are
//!   new rows. Both writes are idempotent and commute (`removed` is only
//!   ever set to true), and no identity is written again after its removal
//!   (pieces are strictly smaller, and a new run has a new time).
//!   Deliveries written before runs existed are in `receipts`, read on
//!   re-warm until they expire (docs/storage.md, "Migration").
//! - `watermarks (conversation uuid, user uuid, seq bigint, public_seq bigint, PRIMARY KEY (conversation, user))`:
//!   every member's read position, one partition per conversation (re-warmed
//!   together). `seq` and `public_seq` are written by separate statements whose
//!   timestamp is the value itself, so each field is max-merged independently
//!   and never moves backwards.
//! - `watermark_history (conversation uuid, user uuid, public boolean, seq bigint, at bigint, PRIMARY KEY (conversation, user, public, seq))`:
//!   when each (true or public) watermark position was reached. Clustered by
//!   seq so "when was message `seq` first read" is one query: the first row
//!   with `seq >= X` (`... AND seq >= ? LIMIT 1`). Timestamp =
//!   `EARLIEST_WINS_BASE − at`: for the same seq the first (earliest) write wins.
//! - `sharing (user uuid PRIMARY KEY, sharing boolean, version bigint)`: the
//!   read-receipt sharing setting. Timestamp = `version`: the highest wins.
//!
//! # Migrations
//! [`ScyllaPersistence::connect`] creates the keyspace and tables with
//! `IF NOT EXISTS` and then waits for schema agreement, so several nodes may
//! start at once; tables are only ever added, never altered in place.

use crate::domain::{
    ConversationId, Membership, Message, MessageId, Millis, ReadWatermark, Run, Seq, ThreadRoot,
    UserId,
};
use crate::error::ServiceError;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

mod schema;
use schema::{Statements, TABLES};

/// How long one statement may wait for Scylla's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Write timestamps for "earliest wins" columns are `EARLIEST_WINS_BASE - at`.
///
/// 2^50 ms is far beyond any real `at` (year ~37 000), and as a microsecond
/// write timestamp it lies in 2005, never in the future: no clock-skew
/// guardrail can reject it.
pub const EARLIEST_WINS_BASE: i64 = 1 << 50;

/// Statements in flight at once during [`ScyllaPersistence::apply`]: enough to
/// hide round trips, small enough not to overload one coordinator.
const MAX_IN_FLIGHT: usize = 256;

/// CQL's largest TTL (20 years).
const MAX_TTL_SECS: u64 = 630_720_000;

/// One durable change queued for the persistent tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistOp {
    /// The full membership of a conversation after a change; `version` only grows.
    Conversation {
        /// The conversation.
        conversation: ConversationId,
        /// Every member ever, with its intervals.
        members: Vec<(UserId, Membership)>,
        /// The membership version (highest wins).
        version: u64,
    },
    /// A registered message (immutable).
    Message(Message),
    /// `user` first had `message` delivered at `at` (earliest time wins on
    /// replay or reorder).
    Delivered {
        /// The message's conversation.
        conversation: ConversationId,
        /// The message.
        message: MessageId,
        /// The recipient.
        user: UserId,
        /// When it was delivered.
        at: Millis,
    },
    /// `user`'s watermark in `conversation` moved to `watermark` at `at`.
    ///
    /// Persists the watermark (max-merge per field, never backwards) and the
    /// history rows: true history `watermark.seq -> at` and, if
    /// `public_advanced`, public history `watermark.public_seq -> at`. History
    /// rows are first-write-wins (an older `at` for the same seq wins).
    Watermark {
        /// The conversation.
        conversation: ConversationId,
        /// The reader.
        user: UserId,
        /// The watermark after the move.
        watermark: ReadWatermark,
        /// Whether `public_seq` moved with this read.
        public_advanced: bool,
        /// When the read was made.
        at: Millis,
    },
    /// `user`'s read-receipt sharing setting; `version` only grows (highest wins).
    Sharing {
        /// The user.
        user: UserId,
        /// Whether it shares read receipts.
        sharing: bool,
        /// The setting's version.
        version: u64,
    },
    /// `user`'s deliveries in `conversation` gained the run `run` (one row,
    /// however many messages it covers).
    Run {
        /// The conversation.
        conversation: ConversationId,
        /// The recipient.
        user: UserId,
        /// The run.
        run: Run,
    },
    /// The run `run` of `user` no longer holds as written (a message was
    /// registered inside it; its pieces are [`PersistOp::Run`]s).
    RunRemoved {
        /// The conversation.
        conversation: ConversationId,
        /// The recipient.
        user: UserId,
        /// The run, exactly as it was written.
        run: Run,
    },
    /// The message at `seq` of `conversation` is in the thread under `root`
    /// (immutable, like the message). The members' positions in the thread
    /// are [`PersistOp::Watermark`]s under the thread's scope
    /// ([`crate::store::thread_scope`]) in place of the conversation.
    ThreadMessage {
        /// The conversation.
        conversation: ConversationId,
        /// The message's seq.
        seq: Seq,
        /// The thread's root.
        root: ThreadRoot,
    },
}

/// Everything persisted about one conversation, to re-warm the hot tier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversationImage {
    /// Every member ever, with its intervals.
    pub members: Vec<(UserId, Membership)>,
    /// The membership version (0 if no membership was persisted).
    pub version: u64,
    /// The messages, ordered by seq.
    pub messages: Vec<Message>,
    /// Every member's read watermark.
    pub watermarks: Vec<(UserId, ReadWatermark)>,
    /// All history rows: (user, public, seq, at), ordered by user, public, seq.
    pub history: Vec<(UserId, bool, Seq, Millis)>,
    /// The messages in threads: (seq, root).
    pub threads: Vec<(Seq, ThreadRoot)>,
    /// Every member's position in each thread: (root seq, user, position).
    pub thread_watermarks: Vec<(Seq, UserId, ReadWatermark)>,
    /// The threads' history rows: (root seq, user, public, seq, at).
    pub thread_history: Vec<(Seq, UserId, bool, Seq, Millis)>,
}

/// Where and how to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScyllaOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace (created if missing): letters, digits and `_`, at most 48.
    pub keyspace: String,
    /// The keyspace's replication, as a CQL map literal.
    pub replication: String,
    /// How long persisted data lives (applied as `USING TTL`).
    pub retention: Duration,
    /// Credentials and TLS.
    pub access: super::scylla_access::ScyllaAccess,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "receipts".to_owned(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            retention: Duration::from_secs(90 * 24 * 3600),
            access: Default::default(),
        }
    }
}

/// The persistent tier: a driver session (cheap to share; it pools
/// connections per node) plus the prepared statements.
#[derive(Debug)]
pub struct ScyllaPersistence {
    session: Session,
    statements: Statements,
    /// `USING TTL` value, seconds.
    ttl: i32,
}

/// A backend failure: UNAVAILABLE with a client-safe message, the driver's
/// error kept as its cause.
fn unavailable(what: &str, err: impl Into<crate::error::Source>) -> ServiceError {
    ServiceError::unavailable_because(
        format!("persistent store (Scylla) did not answer: {what} failed; retry with backoff"),
        err,
    )
}

/// Stored data that cannot be what we wrote.
fn corrupt(what: &str, err: impl Into<crate::error::Source>) -> ServiceError {
    ServiceError::internal_because(format!("persistent store: {what}"), err)
}

fn to_i64(field: &str, value: u64) -> Result<i64, ServiceError> {
    i64::try_from(value).map_err(|_| ServiceError::internal(format!("{field} {value} exceeds i64")))
}

fn to_u64(field: &str, value: i64) -> Result<u64, ServiceError> {
    u64::try_from(value).map_err(|_| corrupt(field, format!("negative value {value}")))
}

/// The write timestamp that makes the earliest `at` win.
fn earliest_wins(at: Millis) -> i64 {
    EARLIEST_WINS_BASE - at.clamp(0, EARLIEST_WINS_BASE - 1)
}

/// Keyspace names are interpolated into CQL, so only plain identifiers pass.
fn valid_keyspace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl ScyllaPersistence {
    /// Connects, creates the keyspace and tables if missing, and prepares
    /// every statement.
    ///
    /// Migrations are idempotent (`IF NOT EXISTS`) and wait for schema
    /// agreement, so several nodes may start at once.
    pub async fn connect(options: &ScyllaOptions) -> Result<Self, ServiceError> {
        if !valid_keyspace(&options.keyspace) {
            return Err(ServiceError::invalid(
                "keyspace",
                "must be 1-48 letters, digits or _, starting with a letter",
            ));
        }
        if options.nodes.is_empty() {
            return Err(ServiceError::invalid(
                "nodes",
                "at least one node is needed",
            ));
        }
        // A statement that gets no answer fails after REQUEST_TIMEOUT, well
        // inside a call's deadline: a hung Scylla makes a cold read
        // UNAVAILABLE rather than DEADLINE_EXCEEDED, and never stalls the
        // calls that Redis alone can answer.
        let profile = scylla::client::execution_profile::ExecutionProfile::builder()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&options.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .connection_timeout(Duration::from_secs(10));
        let access = &options.access;
        let invalid = |e: crate::config::ConfigError| ServiceError::invalid(e.key, e.reason);
        if let Some((user, password)) = access.credentials().map_err(invalid)? {
            builder = builder.user(user, password);
        }
        if let Some(tls) = access.client_config().map_err(invalid)? {
            builder = builder.tls_context(Some(tls));
        }
        let session = builder.build().await.map_err(|e| {
            // The operator is told the driver's reason (a wrong password, a
            // refused certificate), which a client's status leaves out.
            tracing::error!("cannot connect to Scylla: {e}");
            unavailable("connect", e)
        })?;
        let ks = &options.keyspace;
        let create_keyspace = format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
            options.replication
        );
        session
            .query_unpaged(create_keyspace, ())
            .await
            .map_err(|e| unavailable("create keyspace", e))?;
        for table in TABLES {
            session
                .query_unpaged(table.replace("{ks}", ks), ())
                .await
                .map_err(|e| unavailable("create table", e))?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(|e| unavailable("schema agreement", e))?;
        let statements = Statements::prepare(&session, ks).await?;
        let ttl = options.retention.as_secs().clamp(1, MAX_TTL_SECS) as i32;
        Ok(Self {
            session,
            statements,
            ttl,
        })
    }

    /// Applies `ops` idempotently: replaying or reordering them never moves
    /// anything backwards (see the module docs). Statements run concurrently;
    /// on error some ops may have been applied, which is safe to retry.
    pub async fn apply(&self, ops: &[PersistOp]) -> Result<(), ServiceError> {
        let mut writes: Vec<BoxFuture<'_, Result<(), ServiceError>>> = Vec::new();
        for op in ops {
            self.writes_for(op, &mut writes)?;
        }
        futures::stream::iter(writes)
            .buffer_unordered(MAX_IN_FLIGHT)
            .try_for_each(|()| futures::future::ready(Ok(())))
            .await
    }

    /// Appends the statements that persist `op` to `writes`.
    fn writes_for<'a>(
        &'a self,
        op: &PersistOp,
        writes: &mut Vec<BoxFuture<'a, Result<(), ServiceError>>>,
    ) -> Result<(), ServiceError> {
        let s = &self.statements;
        let ttl = self.ttl;
        match op {
            PersistOp::Conversation {
                conversation,
                members,
                version,
            } => {
                let blob = postcard::to_stdvec(members)
                    .map_err(|e| ServiceError::internal(format!("encode membership: {e}")))?;
                let version = to_i64("version", *version)?;
                writes.push(self.write(
                    &s.insert_conversation,
                    (*conversation, blob, version, version, ttl),
                ));
                for (user, _) in members {
                    writes
                        .push(self.write(&s.insert_user_conversation, (*user, *conversation, ttl)));
                }
            }
            PersistOp::Message(m) => {
                let seq = to_i64("seq", m.seq)?;
                writes.push(self.write(
                    &s.insert_message,
                    (m.id, m.conversation, seq, m.sender, m.sent_at, ttl),
                ));
                writes.push(self.write(
                    &s.insert_conversation_message,
                    (m.conversation, seq, m.id, m.sender, m.sent_at, ttl),
                ));
                writes.push(self.write(
                    &s.insert_sender_message,
                    (m.sender, m.sent_at, m.id, m.conversation, seq, ttl),
                ));
            }
            PersistOp::Delivered {
                conversation,
                message,
                user,
                at,
            } => {
                writes.push(self.write(
                    &s.insert_receipt,
                    (*message, *user, *conversation, *at, earliest_wins(*at), ttl),
                ));
            }
            PersistOp::Watermark {
                conversation,
                user,
                watermark,
                public_advanced,
                at,
            } => {
                let seq = to_i64("seq", watermark.seq)?;
                let public_seq = to_i64("public_seq", watermark.public_seq)?;
                // Timestamp = the value: the higher position wins per field.
                writes.push(self.write(
                    &s.update_watermark_seq,
                    (seq, ttl, seq, *conversation, *user),
                ));
                writes.push(self.write(
                    &s.update_watermark_public_seq,
                    (public_seq, ttl, public_seq, *conversation, *user),
                ));
                let history_ts = earliest_wins(*at);
                writes.push(self.write(
                    &s.insert_history,
                    (*conversation, *user, false, seq, *at, history_ts, ttl),
                ));
                if *public_advanced {
                    writes.push(self.write(
                        &s.insert_history,
                        (*conversation, *user, true, public_seq, *at, history_ts, ttl),
                    ));
                }
            }
            PersistOp::Sharing {
                user,
                sharing,
                version,
            } => {
                let version = to_i64("version", *version)?;
                writes
                    .push(self.write(&s.insert_sharing, (*user, *sharing, version, version, ttl)));
            }
            PersistOp::ThreadMessage {
                conversation,
                seq,
                root,
            } => {
                let (seq, root_seq) = (to_i64("seq", *seq)?, to_i64("root_seq", root.seq)?);
                writes.push(self.write(
                    &s.insert_thread_message,
                    (*conversation, seq, root_seq, root.id, ttl),
                ));
            }
            PersistOp::Run {
                conversation,
                user,
                run,
            }
            | PersistOp::RunRemoved {
                conversation,
                user,
                run,
            } => {
                let (c, u, at) = (*conversation, *user, run.at);
                let (first, last) = (to_i64("first", run.first)?, to_i64("last", run.last)?);
                writes.push(match op {
                    PersistOp::Run { .. } => {
                        self.write(&s.insert_run, (c, u, first, last, at, ttl))
                    }
                    _ => self.write(&s.remove_run, (ttl, c, u, first, last, at)),
                });
            }
        }
        Ok(())
    }

    /// One write, as a future that runs when polled.
    fn write<'a, V: SerializeRow + Send + Sync + 'a>(
        &'a self,
        statement: &'a PreparedStatement,
        values: V,
    ) -> BoxFuture<'a, Result<(), ServiceError>> {
        async move {
            self.session
                .execute_unpaged(statement, values)
                .await
                .map(drop)
                .map_err(|e| unavailable("write", e))
        }
        .boxed()
    }

    /// All rows of a (possibly multi-page) read.
    async fn select_all<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<Vec<R>, ServiceError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(|e| unavailable(what, e))?
            .rows_stream::<R>()
            .map_err(|e| corrupt(what, e))?
            .try_collect()
            .await
            .map_err(|e| unavailable(what, e))
    }

    /// The single row of a read by primary key, if any.
    async fn select_one<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<Option<R>, ServiceError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| unavailable(what, e))?
            .into_rows_result()
            .map_err(|e| corrupt(what, e))?;
        result.maybe_first_row::<R>().map_err(|e| corrupt(what, e))
    }

    /// Everything persisted about `c`, or `None` if nothing ever was.
    pub async fn conversation(
        &self,
        c: ConversationId,
    ) -> Result<Option<ConversationImage>, ServiceError> {
        let s = &self.statements;
        let (row, messages, (watermarks, history), threads) = futures::try_join!(
            self.select_one::<(Option<Vec<u8>>, Option<i64>)>(
                &s.select_conversation,
                (c,),
                "read conversation"
            ),
            self.select_all::<(Uuid, i64, Uuid, i64)>(
                &s.select_conversation_messages,
                (c,),
                "read conversation messages"
            ),
            self.positions(c),
            self.select_all::<(i64, i64, Uuid)>(
                &s.select_thread_messages,
                (c,),
                "read thread messages"
            ),
        )?;
        if row.is_none() && messages.is_empty() && watermarks.is_empty() && history.is_empty() {
            return Ok(None);
        }
        let threads = threads
            .into_iter()
            .map(|(seq, root_seq, root)| {
                Ok((
                    to_u64("thread_messages.seq", seq)?,
                    ThreadRoot {
                        id: root,
                        seq: to_u64("thread_messages.root_seq", root_seq)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let roots: std::collections::BTreeSet<Seq> = threads.iter().map(|(_, r)| r.seq).collect();
        let in_threads = futures::future::try_join_all(
            roots
                .iter()
                .map(|root| self.positions(crate::store::thread_scope(&c, *root))),
        )
        .await?;
        let (mut thread_watermarks, mut thread_history) = (Vec::new(), Vec::new());
        for (root, (wms, hist)) in roots.iter().zip(in_threads) {
            thread_watermarks.extend(wms.into_iter().map(|(u, wm)| (*root, u, wm)));
            thread_history.extend(
                hist.into_iter()
                    .map(|(u, public, seq, at)| (*root, u, public, seq, at)),
            );
        }
        let (members, version) = match row {
            Some((blob, version)) => {
                let members = match blob {
                    Some(blob) => postcard::from_bytes(&blob)
                        .map_err(|e| corrupt("conversations.members", e))?,
                    None => Vec::new(),
                };
                (
                    members,
                    to_u64("conversations.version", version.unwrap_or(0))?,
                )
            }
            None => (Vec::new(), 0),
        };
        let messages = messages
            .into_iter()
            .map(|(id, seq, sender, sent_at)| {
                Ok(Message {
                    id,
                    conversation: c,
                    seq: to_u64("conversation_messages.seq", seq)?,
                    sender,
                    sent_at,
                })
            })
            .collect::<Result<_, ServiceError>>()?;
        Ok(Some(ConversationImage {
            members,
            version,
            messages,
            watermarks,
            history,
            threads,
            thread_watermarks,
            thread_history,
        }))
    }

    /// The read positions and their histories kept under `scope`: a
    /// conversation (its main timeline) or a thread's scope.
    #[allow(clippy::type_complexity)]
    async fn positions(
        &self,
        scope: Uuid,
    ) -> Result<
        (
            Vec<(UserId, ReadWatermark)>,
            Vec<(UserId, bool, Seq, Millis)>,
        ),
        ServiceError,
    > {
        let s = &self.statements;
        let (watermarks, history) = futures::try_join!(
            self.select_all::<(Uuid, Option<i64>, Option<i64>)>(
                &s.select_watermarks,
                (scope,),
                "read watermarks"
            ),
            self.select_all::<(Uuid, bool, i64, i64)>(
                &s.select_history,
                (scope,),
                "read watermark history"
            ),
        )?;
        let watermarks = watermarks
            .into_iter()
            .map(|(user, seq, public_seq)| {
                Ok((
                    user,
                    ReadWatermark {
                        seq: to_u64("watermarks.seq", seq.unwrap_or(0))?,
                        public_seq: to_u64("watermarks.public_seq", public_seq.unwrap_or(0))?,
                    },
                ))
            })
            .collect::<Result<_, ServiceError>>()?;
        let history = history
            .into_iter()
            .map(|(user, public, seq, at)| {
                Ok((user, public, to_u64("watermark_history.seq", seq)?, at))
            })
            .collect::<Result<_, ServiceError>>()?;
        Ok((watermarks, history))
    }

    /// The message `m`, if persisted.
    pub async fn message(&self, m: MessageId) -> Result<Option<Message>, ServiceError> {
        let row = self
            .select_one::<(Uuid, i64, Uuid, i64)>(
                &self.statements.select_message,
                (m,),
                "read message",
            )
            .await?;
        row.map(|(conversation, seq, sender, sent_at)| {
            Ok(Message {
                id: m,
                conversation,
                seq: to_u64("messages.seq", seq)?,
                sender,
                sent_at,
            })
        })
        .transpose()
    }

    /// The delivery runs of `c` that hold (not removed), by member.
    pub async fn runs(&self, c: ConversationId) -> Result<Vec<(UserId, Run)>, ServiceError> {
        let rows = self
            .select_all::<(Uuid, i64, i64, i64, Option<bool>)>(
                &self.statements.select_runs,
                (c,),
                "read delivery runs",
            )
            .await?;
        rows.into_iter()
            .filter(|row| row.4 != Some(true))
            .map(|(user, first, last, at, _)| {
                Ok((
                    user,
                    Run {
                        first: to_u64("delivery_runs.first", first)?,
                        last: to_u64("delivery_runs.last", last)?,
                        at,
                    },
                ))
            })
            .collect()
    }

    /// Every recipient that had `m` delivered, with the first delivery time.
    pub async fn deliveries(&self, m: MessageId) -> Result<Vec<(UserId, Millis)>, ServiceError> {
        self.select_all::<(Uuid, i64)>(&self.statements.select_deliveries, (m,), "read receipts")
            .await
    }

    /// `u`'s sharing setting and its version, if ever persisted.
    pub async fn sharing(&self, u: UserId) -> Result<Option<(bool, u64)>, ServiceError> {
        let row = self
            .select_one::<(Option<bool>, Option<i64>)>(
                &self.statements.select_sharing,
                (u,),
                "read sharing",
            )
            .await?;
        match row {
            Some((Some(sharing), version)) => Ok(Some((
                sharing,
                to_u64("sharing.version", version.unwrap_or(0))?,
            ))),
            _ => Ok(None),
        }
    }

    /// Up to `limit` of `u`'s sent messages, newest `sent_at` first.
    pub async fn recent_sent(&self, u: UserId, limit: usize) -> Result<Vec<Message>, ServiceError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = self
            .select_all::<(i64, Uuid, Uuid, i64)>(
                &self.statements.select_recent_sent,
                (u, limit),
                "read sent messages",
            )
            .await?;
        rows.into_iter()
            .map(|(sent_at, id, conversation, seq)| {
                Ok(Message {
                    id,
                    conversation,
                    seq: to_u64("sender_messages.seq", seq)?,
                    sender: u,
                    sent_at,
                })
            })
            .collect()
    }

    /// Every conversation `u` was ever a member of.
    pub async fn user_conversations(&self, u: UserId) -> Result<Vec<ConversationId>, ServiceError> {
        let rows = self
            .select_all::<(Uuid,)>(
                &self.statements.select_user_conversations,
                (u,),
                "read user conversations",
            )
            .await?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), ServiceError> {
        self.session
            .execute_unpaged(&self.statements.ping, ())
            .await
            .map(drop)
            .map_err(|e| unavailable("ping", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_times_get_larger_write_timestamps() {
        assert!(earliest_wins(1_000) > earliest_wins(2_000));
        assert!(earliest_wins(0) > earliest_wins(1_700_000_000_000));
        assert!(earliest_wins(i64::MAX) > 0);
        assert!(earliest_wins(-5) <= EARLIEST_WINS_BASE);
    }

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        assert!(valid_keyspace("receipts"));
        assert!(valid_keyspace("t_1a2b"));
        assert!(!valid_keyspace(""));
        assert!(!valid_keyspace("1abc"));
        assert!(!valid_keyspace("a; DROP KEYSPACE b"));
        assert!(!valid_keyspace(&"a".repeat(49)));
    }

    #[test]
    fn ops_roundtrip_through_postcard() {
        let op = PersistOp::Watermark {
            conversation: Uuid::from_u128(1),
            user: Uuid::from_u128(2),
            watermark: ReadWatermark {
                seq: 5,
                public_seq: 3,
            },
            public_advanced: false,
            at: 42,
        };
        let bytes = postcard::to_stdvec(&op).unwrap();
        assert_eq!(postcard::from_bytes::<PersistOp>(&bytes).unwrap(), op);
    }
}
