//! The embedded default store: one redb file in a data directory.
//!
//! Why redb: pure Rust (nothing to install, no C toolchain), ACID transactions
//! with fsync on commit, MVCC so readers never block the writer, and a stable
//! file format. See `docs/storage-embedded.md`.
//!
//! Writes go through one writer thread that applies queued jobs in a single
//! transaction and commits once (group commit): every job in the batch is
//! acknowledged only after the fsync, so an acknowledged write survives
//! `kill -9`. Each job validates before it writes, so a rejected job leaves
//! nothing behind even though it shares the transaction. Reads use their own
//! snapshot transactions on the blocking thread pool.
//!
//! Keys are fixed-width big-endian byte strings (`uuid ‖ uuid ‖ seq`), so
//! range scans give seq order. Values are postcard-encoded.

use super::*;
use crate::domain::{
    self, Aggregate, Delivery, EventBody, Membership, Message, ReadWatermark, RecipientFacts, Run,
    Runs, WatermarkAdvance,
};
use crate::fanout::{self, Window, Windows};
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

type Bytes = &'static [u8];
type Def = TableDefinition<'static, Bytes, Bytes>;

const META: Def = TableDefinition::new("meta");
const CONVS: Def = TableDefinition::new("conversations");
const MEMBERS: Def = TableDefinition::new("members");
const USER_CONVS: Def = TableDefinition::new("user_conversations");
const MESSAGES: Def = TableDefinition::new("messages");
const CONV_MSGS: Def = TableDefinition::new("conversation_messages");
const SENDER_MSGS: Def = TableDefinition::new("sender_messages");
/// Deliveries as runs (`conv ‖ user ‖ first seq` → `last seq ‖ time`), see
/// [`domain::Run`].
const RUNS: Def = TableDefinition::new("delivery_runs");
/// The second layout of deliveries (`conv ‖ user ‖ seq` → time, one row per
/// message per recipient), folded into [`RUNS`] at open.
const DELIVERED_V2: Def = TableDefinition::new("delivered_by_recipient");
/// The first layout of deliveries (`msg ‖ user`), moved to [`DELIVERED_V2`] at open.
const DELIVERED_V1: Def = TableDefinition::new("delivered");
const WATERMARKS: Def = TableDefinition::new("watermarks");
const READ_HIST: Def = TableDefinition::new("read_history");
const PUBLIC_HIST: Def = TableDefinition::new("public_read_history");
const PRIVACY: Def = TableDefinition::new("privacy");
const EVENTS: Def = TableDefinition::new("events");
const EVENT_INDEX: Def = TableDefinition::new("event_index");
const PENDING: Def = TableDefinition::new("pending_windows");

const META_EPOCH: &[u8] = b"epoch";
const META_NEXT_OFFSET: &[u8] = b"next_offset";
const META_TRIMMED_TO: &[u8] = b"trimmed_to";
const META_SENDER_COUNTER: &[u8] = b"sender_counter";

/// Most jobs committed together.
const MAX_BATCH: usize = 512;
/// Most trimmed log entries per commit (keeps commits short).
const MAX_TRIM_PER_COMMIT: usize = 4096;
/// Facts of a set of messages are read with range scans, one per member and
/// table, when the set's seq span is below this many seqs per message;
/// otherwise with point reads per message.
const DENSE_SPAN_PER_MESSAGE: u64 = 8;
/// Messages and conversations in a reset snapshot.
const SNAPSHOT_MESSAGES: usize = 200;
const SNAPSHOT_CONVERSATIONS: usize = 500;

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Group aggregation window.
    pub group_window: Duration,
    /// Events kept in the replay log (older ones are trimmed).
    pub log_retention: u64,
    /// Buffered events per live subscriber.
    pub subscriber_buffer: usize,
    /// Memory for redb's page cache (its default, 1 GiB, is more than a
    /// one-process default should take).
    pub cache_bytes: usize,
}

/// The embedded store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    jobs: std::sync::Mutex<Option<std_mpsc::Sender<Job>>>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    hub: Arc<Hub>,
    epoch: u64,
}

fn k1(a: &Uuid) -> [u8; 16] {
    *a.as_bytes()
}
fn k2(a: &Uuid, b: &Uuid) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(a.as_bytes());
    k[16..].copy_from_slice(b.as_bytes());
    k
}
fn k_seq(a: &Uuid, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(a.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}
fn k3(a: &Uuid, b: &Uuid, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&k2(a, b));
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}
fn uuid_at(bytes: &[u8], at: usize) -> Uuid {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[at..at + 16]);
    Uuid::from_bytes(b)
}
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}
fn i64_val(bytes: &[u8]) -> i64 {
    u64_at(bytes, 0) as i64
}

fn storage(e: impl std::fmt::Display) -> ServiceError {
    tracing::error!(error = %e, "embedded store error");
    ServiceError::Unavailable {
        message: "embedded store error".into(),
    }
}
fn corrupt(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("corrupt record: {e}"))
}
fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encoding of plain data cannot fail")
}
fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> StoreResult<T> {
    postcard::from_bytes(b).map_err(corrupt)
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct ConversationMeta {
    created_at: Millis,
    member_count: u64,
}

/// Read access shared by write jobs and read transactions.
struct Tables<T> {
    meta: T,
    convs: T,
    members: T,
    user_convs: T,
    messages: T,
    conv_msgs: T,
    sender_msgs: T,
    runs: T,
    watermarks: T,
    read_hist: T,
    public_hist: T,
    privacy: T,
    events: T,
    event_index: T,
    pending: T,
}

macro_rules! open_tables {
    ($txn:expr) => {
        Tables {
            meta: $txn.open_table(META).map_err(storage)?,
            convs: $txn.open_table(CONVS).map_err(storage)?,
            members: $txn.open_table(MEMBERS).map_err(storage)?,
            user_convs: $txn.open_table(USER_CONVS).map_err(storage)?,
            messages: $txn.open_table(MESSAGES).map_err(storage)?,
            conv_msgs: $txn.open_table(CONV_MSGS).map_err(storage)?,
            sender_msgs: $txn.open_table(SENDER_MSGS).map_err(storage)?,
            runs: $txn.open_table(RUNS).map_err(storage)?,
            watermarks: $txn.open_table(WATERMARKS).map_err(storage)?,
            read_hist: $txn.open_table(READ_HIST).map_err(storage)?,
            public_hist: $txn.open_table(PUBLIC_HIST).map_err(storage)?,
            privacy: $txn.open_table(PRIVACY).map_err(storage)?,
            events: $txn.open_table(EVENTS).map_err(storage)?,
            event_index: $txn.open_table(EVENT_INDEX).map_err(storage)?,
            pending: $txn.open_table(PENDING).map_err(storage)?,
        }
    };
}

/// One member's facts about a set of messages (see [`Tables::track`]).
#[derive(Debug, Default)]
struct Track {
    /// The delivery runs covering the seqs asked about.
    delivered: Runs,
    /// Watermark advancements `(seq reached, time)`, by seq: for each seq
    /// asked about, at least the first advancement at or beyond it.
    read: Vec<(Seq, Millis)>,
    /// The same for advancements made while sharing read receipts.
    public: Vec<(Seq, Millis)>,
}

impl Track {
    /// The time of the first advancement in `rows` that reached `seq`.
    fn covering(rows: &[(Seq, Millis)], seq: Seq) -> Option<Millis> {
        let i = rows.partition_point(|(s, _)| *s < seq);
        rows.get(i).map(|(_, at)| *at)
    }
}

/// Everything about one conversation's members needed to compute states.
struct ConvContext {
    conversation: ConversationId,
    members: Vec<(UserId, Membership)>,
    watermarks: HashMap<UserId, ReadWatermark>,
    sharing: HashMap<UserId, bool>,
}

fn get_bytes<T: ReadableTable<Bytes, Bytes>>(t: &T, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    Ok(t.get(key).map_err(storage)?.map(|g| g.value().to_vec()))
}

impl<T: ReadableTable<Bytes, Bytes>> Tables<T> {
    fn meta_u64(&self, key: &[u8]) -> StoreResult<u64> {
        Ok(get_bytes(&self.meta, key)?
            .map(|b| u64_at(&b, 0))
            .unwrap_or(0))
    }

    fn conversation(&self, c: &ConversationId) -> StoreResult<Option<ConversationMeta>> {
        get_bytes(&self.convs, &k1(c))?
            .map(|b| decode(&b))
            .transpose()
    }

    fn membership(&self, c: &ConversationId, u: &UserId) -> StoreResult<Option<Membership>> {
        get_bytes(&self.members, &k2(c, u))?
            .map(|b| decode(&b))
            .transpose()
    }

    fn members(&self, c: &ConversationId) -> StoreResult<Vec<(UserId, Membership)>> {
        let lo = k2(c, &Uuid::nil());
        let hi = k2(c, &Uuid::max());
        let mut out = Vec::new();
        for entry in self
            .members
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            out.push((uuid_at(k.value(), 16), decode(v.value())?));
        }
        Ok(out)
    }

    fn message(&self, m: &MessageId) -> StoreResult<Option<Message>> {
        get_bytes(&self.messages, &k1(m))?
            .map(|b| decode(&b))
            .transpose()
    }

    fn watermark(&self, c: &ConversationId, u: &UserId) -> StoreResult<ReadWatermark> {
        Ok(get_bytes(&self.watermarks, &k2(c, u))?
            .map(|b| ReadWatermark {
                seq: u64_at(&b, 0),
                public_seq: u64_at(&b, 8),
            })
            .unwrap_or_default())
    }

    fn sharing(&self, u: &UserId) -> StoreResult<bool> {
        Ok(get_bytes(&self.privacy, &k1(u))?.is_none_or(|b| b.first() == Some(&1)))
    }

    /// The delivery run of `u` in `c` that covers `seq`, if any.
    fn run_covering(&self, c: &ConversationId, u: &UserId, seq: Seq) -> StoreResult<Option<Run>> {
        let (lo, hi) = (k3(c, u, 0), k3(c, u, seq));
        let mut range = self
            .runs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?;
        let Some(entry) = range.next_back() else {
            return Ok(None);
        };
        let (k, v) = entry.map_err(storage)?;
        let run = run_from(k.value(), v.value());
        Ok(run.covers(seq).then_some(run))
    }

    /// The delivery runs of `u` in `c` that overlap `lo..=hi`, in seq order.
    fn runs_between(&self, c: &ConversationId, u: &UserId, lo: Seq, hi: Seq) -> StoreResult<Runs> {
        let mut runs: Vec<Run> = self.run_covering(c, u, lo)?.into_iter().collect();
        if lo < hi {
            let (lo, hi) = (k3(c, u, lo + 1), k3(c, u, hi));
            for entry in self
                .runs
                .range(lo.as_slice()..=hi.as_slice())
                .map_err(storage)?
            {
                let (k, v) = entry.map_err(storage)?;
                runs.push(run_from(k.value(), v.value()));
            }
        }
        Ok(Runs::new(runs))
    }

    /// The first advancement that reached `seq` or beyond: `(seq reached, time)`.
    fn first_covering(
        table: &T,
        c: &ConversationId,
        u: &UserId,
        seq: Seq,
    ) -> StoreResult<Option<(Seq, Millis)>> {
        Ok(Self::seq_rows(table, c, u, seq, u64::MAX, |_| true)?.pop())
    }

    /// Rows `(seq, time)` of a `conv ‖ user ‖ seq` table from `lo` to `hi`, in
    /// seq order, up to and including the first row for which `last` holds.
    fn seq_rows(
        table: &T,
        c: &ConversationId,
        u: &UserId,
        lo: Seq,
        hi: Seq,
        last: impl Fn(Seq) -> bool,
    ) -> StoreResult<Vec<(Seq, Millis)>> {
        let mut out = Vec::new();
        if lo > hi {
            return Ok(out);
        }
        let (lo, hi) = (k3(c, u, lo), k3(c, u, hi));
        for entry in table
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            let seq = u64_at(k.value(), 32);
            out.push((seq, i64_val(v.value())));
            if last(seq) {
                break;
            }
        }
        Ok(out)
    }

    /// What `u` did to the messages at `seqs` (ascending, distinct) of `c`.
    /// Dense sets cost one range scan per table; sparse ones point reads.
    fn track(
        &self,
        c: &ConversationId,
        u: &UserId,
        seqs: &[Seq],
        wm: ReadWatermark,
    ) -> StoreResult<Track> {
        let mut t = Track::default();
        let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) else {
            return Ok(t);
        };
        if hi - lo < DENSE_SPAN_PER_MESSAGE.saturating_mul(seqs.len() as u64) {
            t.delivered = self.runs_between(c, u, lo, hi)?;
            // The history rows from `lo` to the first at or beyond `hi` hold
            // the first advancement covering each seq in between.
            if wm.seq >= lo {
                t.read = Self::seq_rows(&self.read_hist, c, u, lo, u64::MAX, |s| s >= hi)?;
            }
            if wm.public_seq >= lo {
                t.public = Self::seq_rows(&self.public_hist, c, u, lo, u64::MAX, |s| s >= hi)?;
            }
            return Ok(t);
        }
        let mut runs: Vec<Run> = Vec::new();
        for &seq in seqs {
            if runs.last().is_none_or(|r| !r.covers(seq)) {
                runs.extend(self.run_covering(c, u, seq)?);
            }
            if wm.seq >= seq {
                t.read
                    .extend(Self::first_covering(&self.read_hist, c, u, seq)?);
            }
            if wm.public_seq >= seq {
                t.public
                    .extend(Self::first_covering(&self.public_hist, c, u, seq)?);
            }
        }
        t.delivered = Runs::new(runs);
        // First coverings of ascending seqs ascend; equal ones repeat.
        t.read.dedup();
        t.public.dedup();
        Ok(t)
    }

    fn last_seq(&self, c: &ConversationId) -> StoreResult<Seq> {
        let lo = k_seq(c, 0);
        let hi = k_seq(c, u64::MAX);
        let mut range = self
            .conv_msgs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?;
        match range.next_back() {
            Some(entry) => Ok(u64_at(entry.map_err(storage)?.0.value(), 16)),
            None => Ok(0),
        }
    }

    /// `(seq, message, sender)` for seqs in `lo..=hi`.
    fn messages_between(
        &self,
        c: &ConversationId,
        lo: Seq,
        hi: Seq,
    ) -> StoreResult<Vec<(Seq, MessageId, UserId)>> {
        let (lo, hi) = (k_seq(c, lo), k_seq(c, hi));
        let mut out = Vec::new();
        for entry in self
            .conv_msgs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            out.push((
                u64_at(k.value(), 16),
                uuid_at(v.value(), 0),
                uuid_at(v.value(), 16),
            ));
        }
        Ok(out)
    }

    /// Messages others sent after `wm` while `membership` covered them.
    fn unread(
        &self,
        c: &ConversationId,
        u: &UserId,
        wm: Seq,
        membership: &Membership,
    ) -> StoreResult<u64> {
        let (lo, hi) = (k_seq(c, wm.saturating_add(1)), k_seq(c, u64::MAX));
        let mut n = 0;
        for entry in self
            .conv_msgs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            if membership.receives(*u, uuid_at(v.value(), 16), u64_at(k.value(), 16)) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn context(&self, c: &ConversationId) -> StoreResult<ConvContext> {
        let members = self.members(c)?;
        let mut watermarks = HashMap::with_capacity(members.len());
        let mut sharing = HashMap::with_capacity(members.len());
        for (u, _) in &members {
            watermarks.insert(*u, self.watermark(c, u)?);
            sharing.insert(*u, self.sharing(u)?);
        }
        Ok(ConvContext {
            conversation: *c,
            members,
            watermarks,
            sharing,
        })
    }

    /// The states of `msgs` (all in `ctx`'s conversation), each as
    /// `viewer(m)` may see it (the rules are in `domain`). Each member's facts
    /// are read once for the whole set.
    fn states(
        &self,
        ctx: &ConvContext,
        msgs: &[Message],
        viewer: impl Fn(&Message) -> UserId,
        with_recipients: bool,
    ) -> StoreResult<Vec<domain::MessageState>> {
        let mut seqs: Vec<Seq> = msgs.iter().map(|m| m.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let mut tracks = HashMap::with_capacity(ctx.members.len());
        for (u, membership) in &ctx.members {
            let received: Vec<Seq> = seqs
                .iter()
                .copied()
                .filter(|s| membership.contains(*s))
                .collect();
            let wm = ctx.watermarks.get(u).copied().unwrap_or_default();
            tracks.insert(*u, self.track(&ctx.conversation, u, &received, wm)?);
        }
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            let mut views = Vec::new();
            for (u, membership) in &ctx.members {
                if !membership.receives(*u, m.sender, m.seq) {
                    continue;
                }
                let wm = ctx.watermarks.get(u).copied().unwrap_or_default();
                let track = &tracks[u];
                let facts = RecipientFacts {
                    delivered_at: track.delivered.delivered_at(m.seq),
                    read_at: (wm.seq >= m.seq)
                        .then(|| Track::covering(&track.read, m.seq))
                        .flatten(),
                    public_read_at: (wm.public_seq >= m.seq)
                        .then(|| Track::covering(&track.public, m.seq))
                        .flatten(),
                    sharing: ctx.sharing.get(u).copied().unwrap_or(true),
                };
                views.push(domain::recipient_view(viewer(m), *u, facts));
            }
            let aggregate: Aggregate = domain::aggregate(&views);
            out.push(domain::MessageState {
                message: *m,
                aggregate,
                recipients: if with_recipients { views } else { Vec::new() },
            });
        }
        Ok(out)
    }

    fn events_after(&self, u: &UserId, after: u64, max: usize) -> StoreResult<Vec<Event>> {
        let lo = k_seq(u, after.saturating_add(1));
        let hi = k_seq(u, u64::MAX);
        let mut out = Vec::new();
        for entry in self
            .events
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
            .take(max)
        {
            let (k, v) = entry.map_err(storage)?;
            out.push(Event {
                offset: u64_at(k.value(), 16),
                user: *u,
                body: decode(v.value())?,
            });
        }
        Ok(out)
    }

    fn snapshot(&self, u: &UserId) -> StoreResult<Snapshot> {
        let lo = k_seq(u, 0);
        let hi = k_seq(u, u64::MAX);
        let mut recent = Vec::new();
        for entry in self
            .sender_msgs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
            .rev()
            .take(SNAPSHOT_MESSAGES)
        {
            let (_, v) = entry.map_err(storage)?;
            if let Some(m) = self.message(&uuid_at(v.value(), 0))? {
                recent.push(m);
            }
        }
        let mut contexts: HashMap<ConversationId, ConvContext> = HashMap::new();
        let mut recent_messages = Vec::with_capacity(recent.len());
        for m in &recent {
            if let std::collections::hash_map::Entry::Vacant(e) = contexts.entry(m.conversation) {
                e.insert(self.context(&m.conversation)?);
            }
            let ctx = &contexts[&m.conversation];
            recent_messages.extend(self.states(ctx, std::slice::from_ref(m), |_| *u, false)?);
        }
        let (lo, hi) = (k2(u, &Uuid::nil()), k2(u, &Uuid::max()));
        let mut watermarks = Vec::new();
        for entry in self
            .user_convs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            if watermarks.len() >= SNAPSHOT_CONVERSATIONS {
                break;
            }
            let (k, _) = entry.map_err(storage)?;
            let c = uuid_at(k.value(), 16);
            let Some(membership) = self.membership(&c, u)? else {
                continue;
            };
            if !membership.is_current() {
                continue;
            }
            let wm = self.watermark(&c, u)?;
            watermarks.push((c, wm.seq, self.unread(&c, u, wm.seq, &membership)?));
        }
        Ok(Snapshot {
            recent_messages,
            watermarks,
        })
    }

    /// Checks that `c` exists and `u` is a current member.
    fn authorize(&self, c: &ConversationId, u: &UserId, field: &str) -> StoreResult<Membership> {
        if self.conversation(c)?.is_none() {
            return Err(ServiceError::not_found(field, "conversation", c));
        }
        match self.membership(c, u)? {
            Some(m) if m.is_current() => Ok(m),
            _ => Err(ServiceError::PermissionDenied(format!(
                "{field}: caller is not a member of conversation {c}"
            ))),
        }
    }
}

/// State owned by the writer thread.
struct WriterState {
    /// The last time stamped on a write: times follow commit order.
    last_stamp: Millis,
    next_offset: u64,
    trimmed_to: u64,
    sender_counter: u64,
    windows: Windows,
    options: EmbeddedOptions,
}

/// A write transaction in progress, shared by the jobs of one batch.
struct WriteCtx<'a, 'txn> {
    t: &'a mut Tables<Table<'txn, Bytes, Bytes>>,
    st: &'a mut WriterState,
    events: Vec<Arc<Event>>,
}

/// What a job hands back: called after the commit with its outcome.
type Completion = Box<dyn FnOnce(StoreResult<()>) + Send>;
/// A queued write: runs inside the batch transaction and returns its
/// completion, plus whether it failed in storage (which aborts the batch,
/// since the job may have written part of its changes).
type Job = Box<dyn FnOnce(&mut WriteCtx<'_, '_>) -> (Completion, bool) + Send>;

fn run_from(key: &[u8], value: &[u8]) -> Run {
    Run {
        first: u64_at(key, 32),
        last: u64_at(value, 0),
        at: u64_at(value, 8) as Millis,
    }
}

fn run_value(run: &Run) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&run.last.to_be_bytes());
    v[8..].copy_from_slice(&run.at.to_be_bytes());
    v
}

fn put_run(
    t: &mut Table<'_, Bytes, Bytes>,
    c: &ConversationId,
    u: &UserId,
    run: &Run,
) -> StoreResult<()> {
    put(t, &k3(c, u, run.first), &run_value(run))
}

fn put(t: &mut Table<'_, Bytes, Bytes>, k: &[u8], v: &[u8]) -> StoreResult<()> {
    t.insert(k, v).map_err(storage)?;
    Ok(())
}

impl WriteCtx<'_, '_> {
    /// The time to record for a write accepted at `at`: never earlier than a
    /// write committed before it, so "first time it became true" follows the
    /// order in which writes actually took effect, whatever order concurrent
    /// requests reached the writer in.
    fn stamp(&mut self, at: Millis) -> Millis {
        self.st.last_stamp = self.st.last_stamp.max(at);
        self.st.last_stamp
    }

    fn emit(&mut self, user: UserId, body: EventBody) -> StoreResult<()> {
        let offset = self.st.next_offset;
        self.st.next_offset += 1;
        put(&mut self.t.events, &k_seq(&user, offset), &encode(&body))?;
        put(&mut self.t.event_index, &offset.to_be_bytes(), &k1(&user))?;
        self.events.push(Arc::new(Event { offset, user, body }));
        Ok(())
    }

    /// Announces that the states of `msgs` (seq, id, sender) in `c` changed: pushed
    /// at once in direct conversations, folded into the group window otherwise.
    fn touch(
        &mut self,
        c: &ConversationId,
        msgs: Vec<(Seq, MessageId, UserId)>,
    ) -> StoreResult<()> {
        let seqs = msgs.iter().map(|(s, _, _)| *s);
        let (Some(lo), Some(hi)) = (seqs.clone().min(), seqs.max()) else {
            return Ok(());
        };
        let group = self
            .t
            .conversation(c)?
            .is_some_and(|meta| meta.member_count > 2);
        if group {
            let w = self.st.windows.touch(*c, lo, hi);
            let v = [w.lo.to_be_bytes(), w.hi.to_be_bytes()].concat();
            put(&mut self.t.pending, &k1(c), &v)?;
            return Ok(());
        }
        let ctx = self.t.context(c)?;
        self.emit_states(&ctx, msgs, false)
    }

    /// Computes the states of `msgs` for their senders and logs one event per
    /// sender (split into chunks).
    fn emit_states(
        &mut self,
        ctx: &ConvContext,
        msgs: Vec<(Seq, MessageId, UserId)>,
        group: bool,
    ) -> StoreResult<()> {
        let mut found = Vec::with_capacity(msgs.len());
        for (_, id, _) in msgs {
            found.extend(self.t.message(&id)?);
        }
        let states = self.t.states(ctx, &found, |m| m.sender, !group)?;
        for (sender, body) in fanout::receipt_events(ctx.conversation, group, states) {
            self.emit(sender, body)?;
        }
        Ok(())
    }

    fn flush_window(&mut self, c: &ConversationId, w: Window) -> StoreResult<()> {
        self.t.pending.remove(k1(c).as_slice()).map_err(storage)?;
        let ctx = self.t.context(c)?;
        let msgs = self.t.messages_between(c, w.lo, w.hi)?;
        self.emit_states(&ctx, msgs, true)
    }

    fn flush_due_windows(&mut self, all: bool) -> StoreResult<()> {
        for (c, w) in self.st.windows.take_due(all) {
            self.flush_window(&c, w)?;
        }
        Ok(())
    }

    fn trim(&mut self) -> StoreResult<()> {
        let head = self.st.next_offset.saturating_sub(1);
        let keep_from = head.saturating_sub(self.st.options.log_retention);
        if keep_from <= self.st.trimmed_to {
            return Ok(());
        }
        let upto = keep_from.min(self.st.trimmed_to + MAX_TRIM_PER_COMMIT as u64);
        let lo = (self.st.trimmed_to + 1).to_be_bytes();
        let hi = upto.to_be_bytes();
        let doomed: Vec<(u64, Uuid)> = self
            .t
            .event_index
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
            .map(|e| e.map(|(k, v)| (u64_at(k.value(), 0), uuid_at(v.value(), 0))))
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        for (offset, user) in doomed {
            self.t
                .event_index
                .remove(offset.to_be_bytes().as_slice())
                .map_err(storage)?;
            self.t
                .events
                .remove(k_seq(&user, offset).as_slice())
                .map_err(storage)?;
        }
        self.st.trimmed_to = upto;
        put(&mut self.t.meta, META_TRIMMED_TO, &upto.to_be_bytes())
    }

    fn save_counters(&mut self) -> StoreResult<()> {
        put(
            &mut self.t.meta,
            META_NEXT_OFFSET,
            &self.st.next_offset.to_be_bytes(),
        )?;
        put(
            &mut self.t.meta,
            META_SENDER_COUNTER,
            &self.st.sender_counter.to_be_bytes(),
        )
    }

    /// Stores the deliveries of the seqs in `new` by `u` in `c` at `at` as
    /// runs (the grouping is [`domain::runs_of`]'s): one row per run, however
    /// many messages it covers.
    fn record_runs(
        &mut self,
        c: &ConversationId,
        u: &UserId,
        membership: &Membership,
        mut new: Vec<Seq>,
        at: Millis,
    ) -> StoreResult<()> {
        new.sort_unstable();
        let (Some(&lo), Some(&hi)) = (new.first(), new.last()) else {
            return Ok(());
        };
        // Reading the registered messages in between lets runs span the
        // member's own messages; for a sparse set it would cost more than
        // the rows it saves.
        let registered: Option<Vec<(Seq, UserId)>> =
            if hi - lo < DENSE_SPAN_PER_MESSAGE.saturating_mul(new.len() as u64) {
                let msgs = self.t.messages_between(c, lo, hi)?;
                Some(msgs.into_iter().map(|(s, _, sender)| (s, sender)).collect())
            } else {
                None
            };
        let mut runs = domain::runs_of(*u, membership, &new, registered.as_deref(), at);
        if let Some(first) = runs.first_mut()
            && let Some(prev) = self.t.run_covering(c, u, lo.saturating_sub(1))?
            && prev.continued_by(first)
        {
            first.first = prev.first;
        }
        for run in &runs {
            // Runs inside the new one cover none of the member's recipient
            // seqs (any such seq ends a run), only pieces left by a split:
            // they go, so that runs stay disjoint.
            let (from, to) = (k3(c, u, run.first.saturating_add(1)), k3(c, u, run.last));
            let inside: Vec<Vec<u8>> = self
                .t
                .runs
                .range(from.as_slice()..=to.as_slice())
                .map_err(storage)?
                .map(|e| e.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<_, _>>()
                .map_err(storage)?;
            for k in inside {
                self.t.runs.remove(k.as_slice()).map_err(storage)?;
            }
            put_run(&mut self.t.runs, c, u, run)?;
        }
        Ok(())
    }

    /// A message registered at `seq` below messages already registered in
    /// `c`: every member's run that covers `seq` was written before the
    /// message existed, so it is split around it.
    fn split_runs_at(&mut self, c: &ConversationId, seq: Seq) -> StoreResult<()> {
        for (u, _) in self.t.members(c)? {
            let Some(run) = self.t.run_covering(c, &u, seq)? else {
                continue;
            };
            self.t
                .runs
                .remove(k3(c, &u, run.first).as_slice())
                .map_err(storage)?;
            let (left, right) = run.without(seq);
            for piece in left.iter().chain(right.iter()) {
                put_run(&mut self.t.runs, c, &u, piece)?;
            }
        }
        Ok(())
    }

    /// Applies a read by `u` up to `to` (the rule is [`ReadWatermark::advance`]).
    fn apply_read(
        &mut self,
        u: &UserId,
        c: &ConversationId,
        membership: &Membership,
        to: Seq,
        at: Millis,
    ) -> StoreResult<ReadResult> {
        let wm = self.t.watermark(c, u)?;
        let sharing = self.t.sharing(u)?;
        let Some(adv) = wm.advance(to, sharing) else {
            return Ok(ReadResult {
                read_up_to: wm.seq,
                advanced: false,
                unread: self.t.unread(c, u, wm.seq, membership)?,
            });
        };
        let WatermarkAdvance { before, after } = adv;
        let v = [after.seq.to_be_bytes(), after.public_seq.to_be_bytes()].concat();
        put(&mut self.t.watermarks, &k2(c, u), &v)?;
        put(
            &mut self.t.read_hist,
            &k3(c, u, after.seq),
            &at.to_be_bytes(),
        )?;
        if adv.is_public() {
            put(
                &mut self.t.public_hist,
                &k3(c, u, after.seq),
                &at.to_be_bytes(),
            )?;
        }
        let unread = self.t.unread(c, u, after.seq, membership)?;
        self.emit(
            *u,
            EventBody::Watermark {
                conversation: *c,
                read_up_to: after.seq,
                unread,
            },
        )?;
        // What others may notice: reads that became visible, and messages that
        // became delivered through this read. Nothing else, so a private read
        // of already-delivered messages sends no event at all.
        let mut changed = Vec::new();
        let first = if adv.is_public() {
            before.public_seq.min(before.seq)
        } else {
            before.seq
        };
        // Deliveries of the newly read messages, in one range scan.
        let delivered = self.t.runs_between(c, u, before.seq + 1, after.seq)?;
        for (seq, id, sender) in self.t.messages_between(c, first + 1, after.seq)? {
            if !membership.receives(*u, sender, seq) {
                continue;
            }
            let visible = adv.is_public() && seq > before.public_seq;
            let newly_delivered = seq > before.seq && delivered.delivered_at(seq).is_none();
            if visible || newly_delivered {
                changed.push((seq, id, sender));
            }
        }
        self.touch(c, changed)?;
        Ok(ReadResult {
            read_up_to: after.seq,
            advanced: true,
            unread,
        })
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(dir.join("receipts.redb"))
            .map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        let (epoch, next_offset, trimmed_to, sender_counter, pending) = {
            let mut t = open_tables!(txn);
            let epoch = match get_bytes(&t.meta, META_EPOCH)? {
                Some(b) => u64_at(&b, 0),
                None => {
                    let e: u64 = rand::random::<u64>() >> 1;
                    put(&mut t.meta, META_EPOCH, &e.to_be_bytes())?;
                    e
                }
            };
            let next_offset = t.meta_u64(META_NEXT_OFFSET)?.max(1);
            let trimmed_to = t.meta_u64(META_TRIMMED_TO)?;
            let sender_counter = t.meta_u64(META_SENDER_COUNTER)?;
            let mut pending = Windows::new(options.group_window);
            for entry in t.pending.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                // Windows left open by a stop or crash are flushed right away.
                pending.restore(
                    uuid_at(k.value(), 0),
                    Window {
                        lo: u64_at(v.value(), 0),
                        hi: u64_at(v.value(), 8),
                        deadline: tokio::time::Instant::now(),
                    },
                );
            }
            (epoch, next_offset, trimmed_to, sender_counter, pending)
        };
        migrate_to_runs(&txn)?;
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        let hub = Hub::new(options.subscriber_buffer);
        let state = WriterState {
            last_stamp: 0,
            next_offset,
            trimmed_to,
            sender_counter,
            windows: pending,
            options,
        };
        let (tx, rx) = std_mpsc::channel::<Job>();
        let writer = {
            let db = db.clone();
            let hub = hub.clone();
            std::thread::Builder::new()
                .name("receipts-writer".into())
                .spawn(move || writer_loop(db, hub, state, rx))
                .map_err(storage)?
        };
        Ok(Self {
            db,
            jobs: std::sync::Mutex::new(Some(tx)),
            writer: std::sync::Mutex::new(Some(writer)),
            hub,
            epoch,
        })
    }

    /// Runs `f` in the writer's next transaction and waits for the commit.
    async fn write<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_, '_>) -> StoreResult<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<StoreResult<R>>();
        let job: Job = Box::new(move |ctx| {
            let result = f(ctx);
            let fatal = matches!(
                result,
                Err(ServiceError::Unavailable { .. } | ServiceError::Internal(_))
            );
            let done: Completion = Box::new(move |commit: StoreResult<()>| {
                let out = match (result, commit) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(e),
                    (Ok(r), Ok(())) => Ok(r),
                };
                let _ = tx.send(out);
            });
            (done, fatal)
        });
        let sender = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match sender {
            Some(s) if s.send(job).is_ok() => {}
            _ => {
                return Err(ServiceError::Unavailable {
                    message: "store is shutting down".into(),
                });
            }
        }
        rx.await.map_err(|_| ServiceError::Unavailable {
            message: "store writer stopped".into(),
        })?
    }

    /// Runs `f` on a read snapshot on the blocking pool.
    async fn read<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Tables<redb::ReadOnlyTable<Bytes, Bytes>>) -> StoreResult<R> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            let t = open_tables!(txn);
            f(&t)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("read task failed: {e}")))?
    }
}

/// Folds deliveries kept one row per message per recipient into runs and
/// drops the old tables: the second layout ([`DELIVERED_V2`],
/// `conv ‖ user ‖ seq`) and the first ([`DELIVERED_V1`], `msg ‖ user`, small
/// and old, so it is re-keyed in memory). Consecutive rows of one member with
/// the same time join when nothing but the member's own messages lies between
/// them (the recipient seqs in between are then all in the run); anything
/// else starts a new run, which is never wrong, only less compact.
fn migrate_to_runs(txn: &redb::WriteTransaction) -> StoreResult<()> {
    use redb::TableHandle as _;
    let names: HashSet<String> = txn
        .list_tables()
        .map_err(storage)?
        .map(|t| t.name().to_string())
        .collect();
    let (has_v1, has_v2) = (
        names.contains(DELIVERED_V1.name()),
        names.contains(DELIVERED_V2.name()),
    );
    if !has_v1 && !has_v2 {
        return Ok(());
    }
    let mut fold = Fold::default();
    {
        let conv_msgs = txn.open_table(CONV_MSGS).map_err(storage)?;
        let mut runs = txn.open_table(RUNS).map_err(storage)?;
        if has_v1 {
            let old = txn.open_table(DELIVERED_V1).map_err(storage)?;
            let messages = txn.open_table(MESSAGES).map_err(storage)?;
            let mut rows: BTreeMap<[u8; 40], i64> = BTreeMap::new();
            for entry in old.iter().map_err(storage)? {
                let (k, at) = entry.map_err(storage)?;
                let (m, u) = (uuid_at(k.value(), 0), uuid_at(k.value(), 16));
                let Some(b) = get_bytes(&messages, &k1(&m))? else {
                    return Err(corrupt(format!("delivery of unknown message {m}")));
                };
                let msg: Message = decode(&b)?;
                rows.insert(k3(&msg.conversation, &u, msg.seq), i64_val(at.value()));
            }
            for (k, at) in rows {
                fold.push(&conv_msgs, &mut runs, &k, at)?;
            }
        }
        if has_v2 {
            let old = txn.open_table(DELIVERED_V2).map_err(storage)?;
            for entry in old.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                fold.push(&conv_msgs, &mut runs, k.value(), i64_val(v.value()))?;
            }
        }
        fold.finish(&mut runs)?;
    }
    for (exists, def) in [(has_v1, DELIVERED_V1), (has_v2, DELIVERED_V2)] {
        if exists {
            txn.delete_table(def).map_err(storage)?;
        }
    }
    tracing::info!(
        deliveries = fold.moved,
        runs = fold.written,
        "embedded store: deliveries folded into runs"
    );
    Ok(())
}

/// The state of [`migrate_to_runs`]: the run being built.
#[derive(Default)]
struct Fold {
    open: Option<(ConversationId, UserId, Run)>,
    moved: u64,
    written: u64,
}

impl Fold {
    /// Adds the delivery `conv ‖ user ‖ seq` (`key`) at `at`; keys come in order.
    fn push(
        &mut self,
        conv_msgs: &impl ReadableTable<Bytes, Bytes>,
        runs: &mut Table<'_, Bytes, Bytes>,
        key: &[u8],
        at: Millis,
    ) -> StoreResult<()> {
        let (c, u, seq) = (uuid_at(key, 0), uuid_at(key, 16), u64_at(key, 32));
        self.moved += 1;
        if let Some((oc, ou, run)) = &mut self.open
            && *oc == c
            && *ou == u
            && run.at == at
        {
            // Only the member's own messages in between?
            let (lo, hi) = (k_seq(&c, run.last + 1), k_seq(&c, seq));
            let mut own_only = true;
            for e in conv_msgs
                .range(lo.as_slice()..hi.as_slice())
                .map_err(storage)?
            {
                let (_, m) = e.map_err(storage)?;
                if uuid_at(m.value(), 16) != u {
                    own_only = false;
                    break;
                }
            }
            if own_only {
                run.last = seq;
                return Ok(());
            }
        }
        self.finish(runs)?;
        self.open = Some((
            c,
            u,
            Run {
                first: seq,
                last: seq,
                at,
            },
        ));
        Ok(())
    }

    /// Writes the run being built, if any.
    fn finish(&mut self, runs: &mut Table<'_, Bytes, Bytes>) -> StoreResult<()> {
        if let Some((c, u, run)) = self.open.take() {
            put_run(runs, &c, &u, &run)?;
            self.written += 1;
        }
        Ok(())
    }
}

fn writer_loop(db: Arc<Database>, hub: Arc<Hub>, mut st: WriterState, rx: std_mpsc::Receiver<Job>) {
    let mut closed = false;
    loop {
        let mut jobs: Vec<Job> = Vec::new();
        if !closed {
            let first = match st.windows.next_deadline() {
                None => rx
                    .recv()
                    .map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d.into_std().saturating_duration_since(Instant::now())),
            };
            match first {
                Ok(job) => jobs.push(job),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => closed = true,
            }
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        let saved = (
            st.next_offset,
            st.trimmed_to,
            st.sender_counter,
            st.windows.clone(),
        );
        let (completions, events, commit) = run_batch(&db, &mut st, jobs, closed);
        if commit.is_ok() {
            hub.publish(&events);
        } else {
            // Nothing of the batch is stored: forget its in-memory effects.
            (st.next_offset, st.trimmed_to, st.sender_counter, st.windows) = saved;
        }
        for done in completions {
            done(match &commit {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, "embedded store: commit failed");
                    Err(ServiceError::Unavailable {
                        message: "the embedded store could not commit (see the server log: a full \
                                  disk or an I/O error); nothing of the write was applied, retry"
                            .into(),
                    })
                }
            });
        }
        if closed {
            break;
        }
    }
}

type BatchOutcome = (Vec<Completion>, Vec<Arc<Event>>, Result<(), String>);

fn run_batch(db: &Database, st: &mut WriterState, jobs: Vec<Job>, flush_all: bool) -> BatchOutcome {
    let mut completions = Vec::with_capacity(jobs.len());
    let result = (|| -> StoreResult<Vec<Arc<Event>>> {
        let txn = db.begin_write().map_err(storage)?;
        let events = {
            let mut t = open_tables!(txn);
            let mut ctx = WriteCtx {
                t: &mut t,
                st,
                events: Vec::new(),
            };
            let mut fatal = false;
            for job in jobs {
                let (done, failed) = job(&mut ctx);
                completions.push(done);
                fatal |= failed;
            }
            if fatal {
                return Err(ServiceError::Unavailable {
                    message: "a write in the batch failed in storage".into(),
                });
            }
            ctx.flush_due_windows(flush_all)?;
            ctx.trim()?;
            ctx.save_counters()?;
            ctx.events
        };
        txn.commit().map_err(storage)?;
        Ok(events)
    })();
    match result {
        Ok(events) => (completions, events, Ok(())),
        Err(e) => (completions, Vec::new(), Err(e.to_string())),
    }
}

fn dedup<T: Copy + Eq + std::hash::Hash>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|x| seen.insert(*x)).collect()
}

#[async_trait]
impl ReceiptStore for EmbeddedStore {
    async fn create_conversation(
        &self,
        conversation: ConversationId,
        members: Vec<UserId>,
    ) -> StoreResult<bool> {
        self.write(move |ctx| {
            let members = dedup(members);
            if ctx.t.conversation(&conversation)?.is_some() {
                let existing: HashSet<UserId> = ctx
                    .t
                    .members(&conversation)?
                    .into_iter()
                    .filter(|(_, m)| m.is_current())
                    .map(|(u, _)| u)
                    .collect();
                if existing == members.iter().copied().collect() {
                    return Ok(false);
                }
                return Err(ServiceError::AlreadyExists {
                    field: "conversation_id".into(),
                    reason: format!("conversation {conversation} exists with other members"),
                });
            }
            let meta = ConversationMeta {
                created_at: domain::now_millis(),
                member_count: members.len() as u64,
            };
            put(&mut ctx.t.convs, &k1(&conversation), &encode(&meta))?;
            for u in &members {
                put(
                    &mut ctx.t.members,
                    &k2(&conversation, u),
                    &encode(&Membership::joined(1)),
                )?;
                put(&mut ctx.t.user_convs, &k2(u, &conversation), &[])?;
            }
            Ok(true)
        })
        .await
    }

    async fn add_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
    ) -> StoreResult<MembershipResult> {
        self.change_members(conversation, changes, true).await
    }

    async fn remove_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
    ) -> StoreResult<MembershipResult> {
        self.change_members(conversation, changes, false).await
    }

    async fn register_messages(&self, messages: Vec<NewMessage>) -> StoreResult<u64> {
        self.write(move |ctx| {
            // Validate the whole batch before writing anything.
            let mut fresh = Vec::new();
            for (i, m) in distinct_registrations(&messages)? {
                if ctx.t.conversation(&m.conversation)?.is_none() {
                    return Err(ServiceError::not_found(
                        format!("messages[{i}].conversation_id"),
                        "conversation",
                        m.conversation,
                    ));
                }
                let existing = ctx.t.message(&m.id)?;
                let seq_taken_by = get_bytes(&ctx.t.conv_msgs, &k_seq(&m.conversation, m.seq))?
                    .map(|b| uuid_at(&b, 0));
                let sender_is_member = ctx
                    .t
                    .membership(&m.conversation, &m.sender)?
                    .is_some_and(|ms| ms.contains(m.seq));
                if judge_registration(i, &m, existing, seq_taken_by, sender_is_member)? {
                    fresh.push(m);
                }
            }
            for m in &fresh {
                if ctx.t.last_seq(&m.conversation)? > m.seq {
                    ctx.split_runs_at(&m.conversation, m.seq)?;
                }
                put(&mut ctx.t.messages, &k1(&m.id), &encode(m))?;
                let v = k2(&m.id, &m.sender);
                put(&mut ctx.t.conv_msgs, &k_seq(&m.conversation, m.seq), &v)?;
                ctx.st.sender_counter += 1;
                put(
                    &mut ctx.t.sender_msgs,
                    &k_seq(&m.sender, ctx.st.sender_counter),
                    &k1(&m.id),
                )?;
            }
            Ok(fresh.len() as u64)
        })
        .await
    }

    async fn mark_delivered(
        &self,
        user: UserId,
        messages: Vec<MessageId>,
        at: Millis,
    ) -> StoreResult<Vec<DeliveryResult>> {
        self.write(move |ctx| {
            let ids = dedup(messages);
            let mut by_conv: BTreeMap<ConversationId, Vec<Message>> = BTreeMap::new();
            let mut memberships: HashMap<ConversationId, Membership> = HashMap::new();
            for id in &ids {
                let Some(m) = ctx.t.message(id)? else {
                    return Err(ServiceError::not_found("message_ids", "message", id));
                };
                if let std::collections::hash_map::Entry::Vacant(e) =
                    memberships.entry(m.conversation)
                {
                    e.insert(ctx.t.authorize(&m.conversation, &user, "message_ids")?);
                }
                by_conv.entry(m.conversation).or_default().push(m);
            }
            let at = ctx.stamp(at);
            let mut results = HashMap::with_capacity(ids.len());
            for (c, msgs) in by_conv {
                let membership = &memberships[&c];
                let wm = ctx.t.watermark(&c, &user)?;
                let mut seqs: Vec<Seq> = msgs.iter().map(|m| m.seq).collect();
                seqs.sort_unstable();
                let facts = ctx.t.track(&c, &user, &seqs, wm)?;
                let mut new = Vec::new();
                let mut touched = Vec::new();
                for m in msgs {
                    let read_at = (wm.seq >= m.seq)
                        .then(|| Track::covering(&facts.read, m.seq))
                        .flatten();
                    let delivered_at = facts.delivered.delivered_at(m.seq);
                    let result = match domain::judge_delivery(
                        user,
                        membership,
                        m.sender,
                        m.seq,
                        delivered_at,
                        read_at,
                    ) {
                        Delivery::NotARecipient => DeliveryResult::not_a_recipient(m.id),
                        Delivery::Already(t) => DeliveryResult::already(m.id, t),
                        Delivery::Record => {
                            new.push(m.seq);
                            touched.push((m.seq, m.id, m.sender));
                            DeliveryResult::recorded(m.id, at)
                        }
                    };
                    results.insert(m.id, result);
                }
                ctx.record_runs(&c, &user, membership, new, at)?;
                ctx.touch(&c, touched)?;
            }
            Ok(ids.iter().map(|id| results[id]).collect())
        })
        .await
    }

    async fn mark_read_up_to(
        &self,
        user: UserId,
        conversation: ConversationId,
        message: MessageId,
        at: Millis,
    ) -> StoreResult<ReadResult> {
        self.write(move |ctx| {
            let membership = ctx.t.authorize(&conversation, &user, "conversation_id")?;
            let Some(m) = ctx.t.message(&message)? else {
                return Err(ServiceError::not_found("message_id", "message", message));
            };
            if m.conversation != conversation {
                return Err(ServiceError::invalid(
                    "message_id",
                    format!("message {message} belongs to another conversation"),
                ));
            }
            let at = ctx.stamp(at);
            ctx.apply_read(&user, &conversation, &membership, m.seq, at)
        })
        .await
    }

    async fn mark_conversations_read(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
        at: Millis,
    ) -> StoreResult<Vec<ConversationRead>> {
        self.write(move |ctx| {
            let at = ctx.stamp(at);
            let mut out = Vec::new();
            for c in dedup(conversations) {
                let none = ReadResult {
                    read_up_to: 0,
                    advanced: false,
                    unread: 0,
                };
                let (outcome, read) = match ctx.t.authorize(&c, &user, "conversation_ids") {
                    Ok(membership) => {
                        let last = ctx.t.last_seq(&c)?;
                        (
                            ConversationOutcome::Ok,
                            ctx.apply_read(&user, &c, &membership, last, at)?,
                        )
                    }
                    Err(ServiceError::NotFound { .. }) => (ConversationOutcome::NotFound, none),
                    Err(ServiceError::PermissionDenied(_)) => {
                        (ConversationOutcome::PermissionDenied, none)
                    }
                    Err(e) => return Err(e),
                };
                out.push(ConversationRead {
                    conversation: c,
                    outcome,
                    read,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn set_sharing(&self, user: UserId, sharing: bool) -> StoreResult<bool> {
        self.write(move |ctx| {
            put(&mut ctx.t.privacy, &k1(&user), &[u8::from(sharing)])?;
            Ok(sharing)
        })
        .await
    }

    async fn sharing(&self, user: UserId) -> StoreResult<bool> {
        self.read(move |t| t.sharing(&user)).await
    }

    async fn receipts(
        &self,
        viewer: UserId,
        conversation: ConversationId,
        messages: Vec<MessageId>,
        include_recipients: bool,
    ) -> StoreResult<Vec<MessageState>> {
        self.read(move |t| {
            t.authorize(&conversation, &viewer, "conversation_id")?;
            let mut found = Vec::new();
            for id in dedup(messages) {
                match t.message(&id)? {
                    Some(m) if m.conversation == conversation => found.push(m),
                    Some(_) => {
                        return Err(ServiceError::invalid(
                            "message_ids",
                            format!("message {id} belongs to another conversation"),
                        ));
                    }
                    None => return Err(ServiceError::not_found("message_ids", "message", id)),
                }
            }
            let ctx = t.context(&conversation)?;
            t.states(&ctx, &found, |_| viewer, include_recipients)
        })
        .await
    }

    async fn unread_counts(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
    ) -> StoreResult<Vec<UnreadCount>> {
        self.read(move |t| {
            let mut out = Vec::new();
            for c in dedup(conversations) {
                let mut r = UnreadCount {
                    conversation: c,
                    outcome: ConversationOutcome::Ok,
                    unread: 0,
                    read_up_to: 0,
                    last_seq: 0,
                };
                match t.authorize(&c, &user, "conversation_ids") {
                    Ok(membership) => {
                        let wm = t.watermark(&c, &user)?;
                        r.read_up_to = wm.seq;
                        r.last_seq = t.last_seq(&c)?;
                        r.unread = t.unread(&c, &user, wm.seq, &membership)?;
                    }
                    Err(ServiceError::NotFound { .. }) => r.outcome = ConversationOutcome::NotFound,
                    Err(ServiceError::PermissionDenied(_)) => {
                        r.outcome = ConversationOutcome::PermissionDenied
                    }
                    Err(e) => return Err(e),
                }
                out.push(r);
            }
            Ok(out)
        })
        .await
    }

    async fn replay(&self, user: UserId, from: ReplayFrom, max: usize) -> StoreResult<Replay> {
        let epoch = self.epoch;
        self.read(move |t| {
            let head = Cursor {
                epoch,
                offset: t.meta_u64(META_NEXT_OFFSET)?.max(1) - 1,
            };
            let trimmed_to = t.meta_u64(META_TRIMMED_TO)?;
            let reset = |reason| -> StoreResult<Replay> {
                Ok(Replay::Reset {
                    reason,
                    snapshot: t.snapshot(&user)?,
                    head,
                })
            };
            let cursor = match from {
                ReplayFrom::Live => {
                    return Ok(Replay::Events {
                        events: Vec::new(),
                        head,
                    });
                }
                ReplayFrom::Unparseable => return reset(ResetReason::Invalid),
                ReplayFrom::Cursor(c) => c,
            };
            let after = match domain::replay_start(cursor, epoch, head.offset, trimmed_to) {
                Ok(after) => after,
                Err(reason) => return reset(reason),
            };
            let events = t.events_after(&user, after, max.saturating_add(1))?;
            if domain::too_large(events.len(), max) {
                return reset(ResetReason::TooLarge);
            }
            Ok(Replay::Events { events, head })
        })
        .await
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn shutdown(&self) {
        let sender = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(sender);
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

impl EmbeddedStore {
    async fn change_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
        join: bool,
    ) -> StoreResult<MembershipResult> {
        self.write(move |ctx| {
            let Some(mut meta) = ctx.t.conversation(&conversation)? else {
                return Err(ServiceError::not_found(
                    "conversation_id",
                    "conversation",
                    conversation,
                ));
            };
            let updated = fold_member_changes(&changes, join, |u| {
                Ok(ctx.t.membership(&conversation, u)?.unwrap_or_default())
            })?;
            let mut lowest = Seq::MAX;
            for (u, (ms, from)) in &updated {
                put(&mut ctx.t.members, &k2(&conversation, u), &encode(ms))?;
                put(&mut ctx.t.user_convs, &k2(u, &conversation), &[])?;
                lowest = lowest.min(*from);
            }
            if join {
                meta.member_count += updated.len() as u64;
            } else {
                meta.member_count = meta.member_count.saturating_sub(updated.len() as u64);
            }
            put(&mut ctx.t.convs, &k1(&conversation), &encode(&meta))?;
            // Recipients of already registered messages at or after the change
            // are now different: their counts change.
            let last = ctx.t.last_seq(&conversation)?;
            if !updated.is_empty() && lowest <= last {
                let msgs = ctx.t.messages_between(&conversation, lowest, last)?;
                ctx.touch(&conversation, msgs)?;
            }
            Ok(MembershipResult {
                changed: updated.len() as u64,
                member_count: meta.member_count,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata as _;

    const STATE_TABLES: [Def; 11] = [
        CONVS,
        MEMBERS,
        USER_CONVS,
        MESSAGES,
        CONV_MSGS,
        SENDER_MSGS,
        RUNS,
        WATERMARKS,
        READ_HIST,
        PUBLIC_HIST,
        PRIVACY,
    ];

    fn state_rows(store: &EmbeddedStore) -> u64 {
        let txn = store.db.begin_read().expect("read");
        STATE_TABLES
            .iter()
            .map(|def| txn.open_table(*def).expect("table").len().expect("len"))
            .sum()
    }

    fn options() -> EmbeddedOptions {
        EmbeddedOptions {
            group_window: Duration::from_millis(50),
            log_retention: 1_000_000,
            subscriber_buffer: 16,
            cache_bytes: 16 << 20,
        }
    }

    async fn conversation_with(
        store: &EmbeddedStore,
        n: u64,
    ) -> (ConversationId, UserId, UserId, MessageId) {
        let (c, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        store
            .create_conversation(c, vec![a, b])
            .await
            .expect("create");
        let mut last = Uuid::nil();
        let msgs: Vec<Message> = (1..=n)
            .map(|seq| {
                last = Uuid::now_v7();
                Message {
                    id: last,
                    conversation: c,
                    seq,
                    sender: a,
                    sent_at: 1,
                }
            })
            .collect();
        for chunk in msgs.chunks(1000) {
            store
                .register_messages(chunk.to_vec())
                .await
                .expect("register");
        }
        (c, a, b, last)
    }

    /// The seed design's watermark: a read costs the same number of stored
    /// rows whether it covers one message or thousands.
    #[tokio::test]
    async fn mark_read_up_to_writes_the_same_rows_for_1_or_5000_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), options()).expect("open");
        let mut deltas = Vec::new();
        for n in [1, 5000] {
            let (c, _, reader, last) = conversation_with(&store, n).await;
            let before = state_rows(&store);
            let r = store
                .mark_read_up_to(reader, c, last, 10)
                .await
                .expect("read");
            assert_eq!(r.read_up_to, n);
            deltas.push(state_rows(&store) - before);
        }
        assert_eq!(deltas[0], deltas[1], "rows written: {deltas:?}");
        assert_eq!(
            deltas[0], 3,
            "watermark, history entry, public history entry"
        );
        store.shutdown().await;
    }

    /// A read accepted earlier but applied after a delivery must not be
    /// recorded as earlier than that delivery.
    #[tokio::test]
    async fn recorded_times_follow_commit_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), options()).expect("open");
        let (c, a, b, m) = conversation_with(&store, 1).await;
        let d = store
            .mark_delivered(b, vec![m], 1_000)
            .await
            .expect("deliver");
        assert_eq!(d[0].delivered_at, Some(1_000));
        store.mark_read_up_to(b, c, m, 900).await.expect("read");
        let s = store.receipts(a, c, vec![m], true).await.expect("receipts");
        let r = s[0].recipients[0];
        assert_eq!((r.delivered_at, r.read_at), (Some(1_000), Some(1_000)));
        store.shutdown().await;
    }

    #[tokio::test]
    async fn reopening_keeps_the_epoch_and_the_log_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), options()).expect("open");
        let (c, _, reader, last) = conversation_with(&store, 3).await;
        store
            .mark_read_up_to(reader, c, last, 10)
            .await
            .expect("read");
        let Replay::Events { head, .. } = store
            .replay(reader, ReplayFrom::Live, 10)
            .await
            .expect("replay")
        else {
            panic!("no cursor, no reset");
        };
        store.shutdown().await;
        drop(store);
        let store = EmbeddedStore::open(dir.path(), options()).expect("reopen");
        let replay = store
            .replay(
                reader,
                ReplayFrom::Cursor(Cursor {
                    epoch: head.epoch,
                    offset: 0,
                }),
                10,
            )
            .await
            .expect("replay");
        let Replay::Events {
            events,
            head: again,
        } = replay
        else {
            panic!("same epoch must replay, not reset");
        };
        assert_eq!(again, head);
        assert!(
            events
                .iter()
                .any(|e| matches!(e.body, EventBody::Watermark { read_up_to: 3, .. }))
        );
        store.shutdown().await;
    }
    /// A data directory written with the first delivery layout opens with
    /// its deliveries intact, moved to the new table.
    #[tokio::test]
    async fn deliveries_in_the_first_layout_are_moved_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), options()).expect("open");
        let (c, _, b, m) = conversation_with(&store, 2).await;
        store
            .mark_delivered(b, vec![m], 1_000)
            .await
            .expect("deliver");
        store.shutdown().await;
        drop(store);
        // Rewrite the delivery as the first layout kept it.
        {
            let db = Database::create(dir.path().join("receipts.redb")).expect("db");
            let txn = db.begin_write().expect("write");
            {
                let mut runs = txn.open_table(RUNS).expect("runs");
                let k = {
                    let (k, _) = runs.first().expect("read").expect("one delivery");
                    k.value().to_vec()
                };
                runs.remove(k.as_slice()).expect("remove");
                let mut old = txn.open_table(DELIVERED_V1).expect("old");
                old.insert(k2(&m, &b).as_slice(), 1_000i64.to_be_bytes().as_slice())
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        let store = EmbeddedStore::open(dir.path(), options()).expect("reopen");
        let states = store.receipts(b, c, vec![m], true).await.expect("receipts");
        assert_eq!(states[0].recipients[0].delivered_at, Some(1_000));
        let txn = store.db.begin_read().expect("read");
        for old in [DELIVERED_V1, DELIVERED_V2] {
            assert!(txn.open_table(old).is_err(), "the old tables are dropped");
        }
        drop(txn);
        store.shutdown().await;
    }

    /// Reading facts by range scans (messages close together) and by point
    /// reads (messages far apart) gives the same states.
    #[tokio::test]
    async fn dense_and_sparse_message_sets_get_the_same_states() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), options()).expect("open");
        let (c, _, b, _) = conversation_with(&store, 100).await;
        let ids: Vec<MessageId> = store
            .read(move |t| t.messages_between(&c, 1, 100))
            .await
            .expect("messages")
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        // Delivered: every third message; read up to 40 at t=2000, then 70 at t=3000.
        let delivered: Vec<MessageId> = ids.iter().step_by(3).copied().collect();
        store
            .mark_delivered(b, delivered, 1_000)
            .await
            .expect("deliver");
        store
            .mark_read_up_to(b, c, ids[39], 2_000)
            .await
            .expect("read");
        store
            .mark_read_up_to(b, c, ids[69], 3_000)
            .await
            .expect("read");
        let dense: Vec<MessageId> = ids[30..45].to_vec();
        let sparse = vec![ids[0], ids[38], ids[40], ids[69], ids[70], ids[99]];
        for set in [dense, sparse] {
            let together = store.receipts(b, c, set.clone(), true).await.expect("all");
            for (i, id) in set.iter().enumerate() {
                let alone = store.receipts(b, c, vec![*id], true).await.expect("one");
                assert_eq!(together[i], alone[0], "message {id}");
            }
            for s in &together {
                let r = &s.recipients[0];
                let seq = s.message.seq;
                let delivered = (seq - 1) % 3 == 0;
                let read_at = match seq {
                    ..=40 => Some(2_000),
                    41..=70 => Some(3_000),
                    _ => None,
                };
                assert_eq!(r.read_at, read_at, "seq {seq}");
                let delivered_at = match (delivered, read_at) {
                    (true, _) => Some(1_000),
                    (false, r) => r,
                };
                assert_eq!(r.delivered_at, delivered_at, "seq {seq}");
            }
        }
        store.shutdown().await;
    }

    fn run_rows(store: &EmbeddedStore) -> Vec<Run> {
        let txn = store.db.begin_read().expect("read");
        let runs = txn.open_table(RUNS).expect("runs");
        runs.iter()
            .expect("iter")
            .map(|e| {
                let (k, v) = e.expect("row");
                run_from(k.value(), v.value())
            })
            .collect()
    }

    /// A MarkDelivered costs one stored row whether it covers one message or
    /// ten thousand, and messages of the caller's own in between do not
    /// split it.
    #[tokio::test]
    async fn mark_delivered_writes_the_same_rows_for_1_or_10000_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), options()).expect("open");
        let mut deltas = Vec::new();
        for n in [1u64, 10_000] {
            let (c, a, b, _) = conversation_with(&store, 0).await;
            // a sends every message but each tenth, which b sends.
            let msgs: Vec<Message> = (1..=n)
                .map(|seq| Message {
                    id: Uuid::now_v7(),
                    conversation: c,
                    seq,
                    sender: if seq % 10 == 0 { b } else { a },
                    sent_at: 1,
                })
                .collect();
            for chunk in msgs.chunks(1000) {
                store
                    .register_messages(chunk.to_vec())
                    .await
                    .expect("register");
            }
            let before = state_rows(&store);
            let all: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
            let results = store.mark_delivered(b, all, 1_000).await.expect("deliver");
            let recorded = results
                .iter()
                .filter(|r| r.outcome == DeliveryOutcome::Recorded)
                .count() as u64;
            assert_eq!(recorded, n - n / 10);
            deltas.push(state_rows(&store) - before);
            let states = store
                .receipts(a, c, vec![msgs[0].id, msgs[msgs.len() - 1].id], true)
                .await
                .expect("receipts");
            assert!(
                states
                    .iter()
                    .all(|s| s.message.sender == b || s.recipients[0].delivered_at == Some(1_000))
            );
        }
        assert_eq!(deltas, vec![1, 1], "rows written for 1 and 10,000 messages");
        store.shutdown().await;
    }

    /// A message registered at a seq inside a run written before it existed
    /// is not delivered by that run; the messages around it stay delivered.
    #[tokio::test]
    async fn a_message_registered_late_inside_a_run_is_not_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), options()).expect("open");
        let (c, a, b, _) = conversation_with(&store, 0).await;
        let msg = |seq| Message {
            id: Uuid::now_v7(),
            conversation: c,
            seq,
            sender: a,
            sent_at: 1,
        };
        let early: Vec<Message> = [1, 2, 4, 5].into_iter().map(msg).collect();
        store
            .register_messages(early.clone())
            .await
            .expect("register");
        store
            .mark_delivered(b, early.iter().map(|m| m.id).collect(), 1_000)
            .await
            .expect("deliver");
        assert_eq!(run_rows(&store).len(), 1, "1..=5 is one run");
        let late = msg(3);
        store
            .register_messages(vec![late])
            .await
            .expect("register late");
        let ids: Vec<MessageId> = early.iter().map(|m| m.id).chain([late.id]).collect();
        let states = store.receipts(b, c, ids, true).await.expect("receipts");
        for s in &states {
            let expected = (s.message.seq != 3).then_some(1_000);
            assert_eq!(
                s.recipients[0].delivered_at, expected,
                "seq {}",
                s.message.seq
            );
        }
        // Delivering it now joins nothing (another time) and overlaps nothing.
        let r = store
            .mark_delivered(b, vec![late.id], 2_000)
            .await
            .expect("deliver late");
        assert_eq!(r[0].outcome, DeliveryOutcome::Recorded);
        let runs = run_rows(&store);
        assert_eq!(runs.len(), 3, "{runs:?}");
        for w in runs.windows(2) {
            assert!(w[0].last < w[1].first, "{runs:?}");
        }
        store.shutdown().await;
    }

    /// A data directory with one delivery row per message per recipient opens
    /// with the same states, its deliveries folded into runs.
    #[tokio::test]
    async fn deliveries_one_row_per_message_are_folded_into_runs_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), options()).expect("open");
        let (c, a, b, _) = conversation_with(&store, 0).await;
        // seqs 1..=9 from a, but 5 from b (b's own message).
        let msgs: Vec<Message> = (1..=9)
            .map(|seq| Message {
                id: Uuid::now_v7(),
                conversation: c,
                seq,
                sender: if seq == 5 { b } else { a },
                sent_at: 1,
            })
            .collect();
        store
            .register_messages(msgs.clone())
            .await
            .expect("register");
        store.shutdown().await;
        drop(store);
        // b's deliveries as the second layout kept them: 1..=4 and 6 at one
        // time, 7 at another, 9 at the first again (8 undelivered).
        let rows = [
            (1, 10),
            (2, 10),
            (3, 10),
            (4, 10),
            (6, 10),
            (7, 20),
            (9, 10),
        ];
        {
            let db = Database::create(dir.path().join("receipts.redb")).expect("db");
            let txn = db.begin_write().expect("write");
            {
                let mut old = txn.open_table(DELIVERED_V2).expect("old");
                for (seq, at) in rows {
                    old.insert(
                        k3(&c, &b, seq).as_slice(),
                        (at as i64).to_be_bytes().as_slice(),
                    )
                    .expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let store = EmbeddedStore::open(dir.path(), options()).expect("reopen");
        let runs: Vec<(Seq, Seq, Millis)> = run_rows(&store)
            .iter()
            .map(|r| (r.first, r.last, r.at))
            .collect();
        assert_eq!(runs, vec![(1, 6, 10), (7, 7, 20), (9, 9, 10)]);
        let ids: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
        let states = store.receipts(a, c, ids, true).await.expect("receipts");
        for s in states.iter().filter(|s| s.message.sender == a) {
            let expected = rows
                .iter()
                .find(|r| r.0 == s.message.seq)
                .map(|r| r.1 as Millis);
            assert_eq!(
                s.recipients[0].delivered_at, expected,
                "seq {}",
                s.message.seq
            );
        }
        let txn = store.db.begin_read().expect("read");
        assert!(
            txn.open_table(DELIVERED_V2).is_err(),
            "the old table is dropped"
        );
        drop(txn);
        store.shutdown().await;
    }
}
