//! Tables, keys and the reads that load facts (see docs/storage-embedded.md).

use super::*;

/// A table of the store: a keyspace, an ordered map of byte keys to byte
/// values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tb {
    Meta,
    Convs,
    Members,
    UserConvs,
    Messages,
    ConvMsgs,
    SenderMsgs,
    /// Deliveries as runs (`conv ‖ user ‖ first seq` → `last seq ‖ time`), see
    /// [`domain::Run`].
    Runs,
    Watermarks,
    ReadHist,
    PublicHist,
    Privacy,
    Events,
    EventIndex,
    Pending,
}

impl Tb {
    pub(super) const ALL: [Tb; 15] = [
        Tb::Meta,
        Tb::Convs,
        Tb::Members,
        Tb::UserConvs,
        Tb::Messages,
        Tb::ConvMsgs,
        Tb::SenderMsgs,
        Tb::Runs,
        Tb::Watermarks,
        Tb::ReadHist,
        Tb::PublicHist,
        Tb::Privacy,
        Tb::Events,
        Tb::EventIndex,
        Tb::Pending,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Tb::Meta => "meta",
            Tb::Convs => "conversations",
            Tb::Members => "members",
            Tb::UserConvs => "user_conversations",
            Tb::Messages => "messages",
            Tb::ConvMsgs => "conversation_messages",
            Tb::SenderMsgs => "sender_messages",
            Tb::Runs => "delivery_runs",
            Tb::Watermarks => "watermarks",
            Tb::ReadHist => "read_history",
            Tb::PublicHist => "public_read_history",
            Tb::Privacy => "privacy",
            Tb::Events => "events",
            Tb::EventIndex => "event_index",
            Tb::Pending => "pending_windows",
        }
    }
}

/// The opened keyspaces, in [`Tb::ALL`] order. Cheap to clone.
#[derive(Clone)]
pub(super) struct Keyspaces(Arc<[fjall::SingleWriterTxKeyspace]>);

impl Keyspaces {
    pub(super) fn open(db: &fjall::SingleWriterTxDatabase) -> StoreResult<Self> {
        let ks = Tb::ALL
            .iter()
            .map(|t| {
                db.keyspace(t.name(), || {
                    fjall::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
                })
            })
            .collect::<fjall::Result<Vec<_>>>()
            .map_err(storage)?;
        Ok(Self(ks.into()))
    }

    pub(super) fn get(&self, t: Tb) -> &fjall::SingleWriterTxKeyspace {
        &self.0[t as usize]
    }
}

impl std::fmt::Debug for Keyspaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyspaces")
    }
}

/// A row read from a table.
pub(super) type Row = (fjall::Slice, fjall::Slice);

pub(super) const META_EPOCH: &[u8] = b"epoch";
pub(super) const META_NEXT_OFFSET: &[u8] = b"next_offset";
pub(super) const META_TRIMMED_TO: &[u8] = b"trimmed_to";
pub(super) const META_SENDER_COUNTER: &[u8] = b"sender_counter";

/// Facts of a set of messages are read with range scans, one per member and
/// table, when the set's seq span is below this many seqs per message;
/// otherwise with point reads per message.
pub(super) const DENSE_SPAN_PER_MESSAGE: u64 = 8;
/// Messages and conversations in a reset snapshot.
pub(super) const SNAPSHOT_MESSAGES: usize = 200;
pub(super) const SNAPSHOT_CONVERSATIONS: usize = 500;

pub(super) fn k1(a: &Uuid) -> [u8; 16] {
    *a.as_bytes()
}
pub(super) fn k2(a: &Uuid, b: &Uuid) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(a.as_bytes());
    k[16..].copy_from_slice(b.as_bytes());
    k
}
pub(super) fn k_seq(a: &Uuid, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(a.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}
pub(super) fn k3(a: &Uuid, b: &Uuid, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&k2(a, b));
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}
pub(super) fn uuid_at(bytes: &[u8], at: usize) -> Uuid {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[at..at + 16]);
    Uuid::from_bytes(b)
}
pub(super) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}
pub(super) fn i64_val(bytes: &[u8]) -> i64 {
    u64_at(bytes, 0) as i64
}

pub(super) fn storage(e: impl Into<Source>) -> ServiceError {
    ServiceError::unavailable_because("the embedded store failed (see the server log)", e)
}
pub(super) fn corrupt(e: impl Into<Source>) -> ServiceError {
    ServiceError::internal_because("corrupt record in the embedded store", e)
}
pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encoding of plain data cannot fail")
}
pub(super) fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> StoreResult<T> {
    postcard::from_bytes(b).map_err(corrupt)
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct ConversationMeta {
    pub(super) created_at: Millis,
    pub(super) member_count: u64,
}

/// Read access (a snapshot, or the write transaction, which reads its own
/// writes) to every table, shared by write jobs and reads.
pub(super) struct Tables<R> {
    pub(super) tx: R,
    pub(super) ks: Keyspaces,
}

/// The engine: an fjall database (a log-structured merge tree per table,
/// one journal) and its keyspaces.
pub(super) struct Engine {
    db: fjall::SingleWriterTxDatabase,
    ks: Keyspaces,
}

/// The engine's directory inside the data directory.
pub(super) const DATA_DIR: &str = "receipts.fjall";
/// Journal kept before the memtables it covers are flushed to table files
/// (fjall's minimum). Writes not yet flushed are in memory too, so with the
/// block cache (`--cache-mb`) this bounds the store's memory.
const JOURNAL_BYTES: u64 = 64 << 20;
/// One table's memtable is flushed when it reaches this size.
const MEMTABLE_BYTES: u64 = 16 << 20;

impl Engine {
    pub(super) fn open(path: &Path, cache_bytes: usize) -> StoreResult<Self> {
        let db = fjall::SingleWriterTxDatabase::builder(path)
            .cache_size(cache_bytes as u64)
            .max_journaling_size(JOURNAL_BYTES)
            .open()
            .map_err(storage)?;
        let ks = Keyspaces::open(&db)?;
        Ok(Self { db, ks })
    }

    /// A write transaction whose commit returns once the journal is synced
    /// to disk (`fdatasync`): an acknowledged write survives a crash.
    pub(super) fn write(&self) -> WriteTables<'_> {
        Tables {
            tx: self
                .db
                .write_tx()
                .durability(Some(fjall::PersistMode::SyncData)),
            ks: self.ks.clone(),
        }
    }

    /// A consistent snapshot for reads; it never blocks the writer.
    pub(super) fn read(&self) -> Tables<fjall::Snapshot> {
        Tables {
            tx: self.db.read_tx(),
            ks: self.ks.clone(),
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine(fjall)")
    }
}

/// The writer's transaction.
pub(super) type WriteTables<'db> = Tables<fjall::SingleWriterWriteTx<'db>>;

/// One member's facts about a set of messages (see [`Tables::track`]).
#[derive(Debug, Default)]
pub(super) struct Track {
    /// The delivery runs covering the seqs asked about.
    pub(super) delivered: Runs,
    /// Watermark advancements `(seq reached, time)`, by seq: for each seq
    /// asked about, at least the first advancement at or beyond it.
    pub(super) read: Vec<(Seq, Millis)>,
    /// The same for advancements made while sharing read receipts.
    pub(super) public: Vec<(Seq, Millis)>,
}

impl Track {
    /// The time of the first advancement in `rows` that reached `seq`.
    pub(super) fn covering(rows: &[(Seq, Millis)], seq: Seq) -> Option<Millis> {
        let i = rows.partition_point(|(s, _)| *s < seq);
        rows.get(i).map(|(_, at)| *at)
    }
}

/// Everything about one conversation's members needed to compute states.
pub(super) struct ConvContext {
    pub(super) conversation: ConversationId,
    pub(super) members: Vec<(UserId, Membership)>,
    pub(super) watermarks: HashMap<UserId, ReadWatermark>,
    pub(super) sharing: HashMap<UserId, bool>,
}

impl<R: Readable> Tables<R> {
    pub(super) fn get(&self, t: Tb, key: &[u8]) -> StoreResult<Option<fjall::Slice>> {
        self.tx.get(self.ks.get(t), key).map_err(storage)
    }

    /// The rows of `t` with keys in `lo..=hi`, in key order (or reversed).
    pub(super) fn rows(
        &self,
        t: Tb,
        lo: &[u8],
        hi: &[u8],
    ) -> impl DoubleEndedIterator<Item = StoreResult<Row>> + use<R> {
        self.tx
            .range(self.ks.get(t), lo..=hi)
            .map(|g| g.into_inner().map_err(storage))
    }

    /// Every row of `t`, in key order.
    pub(super) fn all(&self, t: Tb) -> impl DoubleEndedIterator<Item = StoreResult<Row>> + use<R> {
        self.tx
            .iter(self.ks.get(t))
            .map(|g| g.into_inner().map_err(storage))
    }

    pub(super) fn meta_u64(&self, key: &[u8]) -> StoreResult<u64> {
        Ok(self.get(Tb::Meta, key)?.map(|b| u64_at(&b, 0)).unwrap_or(0))
    }

    pub(super) fn conversation(&self, c: &ConversationId) -> StoreResult<Option<ConversationMeta>> {
        self.get(Tb::Convs, &k1(c))?.map(|b| decode(&b)).transpose()
    }

    pub(super) fn membership(
        &self,
        c: &ConversationId,
        u: &UserId,
    ) -> StoreResult<Option<Membership>> {
        self.get(Tb::Members, &k2(c, u))?
            .map(|b| decode(&b))
            .transpose()
    }

    pub(super) fn members(&self, c: &ConversationId) -> StoreResult<Vec<(UserId, Membership)>> {
        let lo = k2(c, &Uuid::nil());
        let hi = k2(c, &Uuid::max());
        let mut out = Vec::new();
        for entry in self.rows(Tb::Members, &lo, &hi) {
            let (k, v) = entry?;
            out.push((uuid_at(&k, 16), decode(&v)?));
        }
        Ok(out)
    }

    pub(super) fn message(&self, m: &MessageId) -> StoreResult<Option<Message>> {
        self.get(Tb::Messages, &k1(m))?
            .map(|b| decode(&b))
            .transpose()
    }

    pub(super) fn watermark(&self, c: &ConversationId, u: &UserId) -> StoreResult<ReadWatermark> {
        Ok(self
            .get(Tb::Watermarks, &k2(c, u))?
            .map(|b| ReadWatermark {
                seq: u64_at(&b, 0),
                public_seq: u64_at(&b, 8),
            })
            .unwrap_or_default())
    }

    pub(super) fn sharing(&self, u: &UserId) -> StoreResult<bool> {
        Ok(self
            .get(Tb::Privacy, &k1(u))?
            .is_none_or(|b| b.first() == Some(&1)))
    }

    /// The delivery run of `u` in `c` that covers `seq`, if any.
    pub(super) fn run_covering(
        &self,
        c: &ConversationId,
        u: &UserId,
        seq: Seq,
    ) -> StoreResult<Option<Run>> {
        let (lo, hi) = (k3(c, u, 0), k3(c, u, seq));
        let mut range = self.rows(Tb::Runs, &lo, &hi);
        let Some(entry) = range.next_back() else {
            return Ok(None);
        };
        let (k, v) = entry?;
        let run = run_from(&k, &v);
        Ok(run.covers(seq).then_some(run))
    }

    /// The delivery runs of `u` in `c` that overlap `lo..=hi`, in seq order.
    pub(super) fn runs_between(
        &self,
        c: &ConversationId,
        u: &UserId,
        lo: Seq,
        hi: Seq,
    ) -> StoreResult<Runs> {
        let mut runs: Vec<Run> = self.run_covering(c, u, lo)?.into_iter().collect();
        if lo < hi {
            let (lo, hi) = (k3(c, u, lo + 1), k3(c, u, hi));
            for entry in self.rows(Tb::Runs, &lo, &hi) {
                let (k, v) = entry?;
                runs.push(run_from(&k, &v));
            }
        }
        Ok(Runs::new(runs))
    }

    /// The first advancement that reached `seq` or beyond: `(seq reached, time)`.
    pub(super) fn first_covering(
        &self,
        table: Tb,
        c: &ConversationId,
        u: &UserId,
        seq: Seq,
    ) -> StoreResult<Option<(Seq, Millis)>> {
        Ok(self.seq_rows(table, c, u, seq, u64::MAX, |_| true)?.pop())
    }

    /// Rows `(seq, time)` of a `conv ‖ user ‖ seq` table from `lo` to `hi`, in
    /// seq order, up to and including the first row for which `last` holds.
    pub(super) fn seq_rows(
        &self,
        table: Tb,
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
        for entry in self.rows(table, &lo, &hi) {
            let (k, v) = entry?;
            let seq = u64_at(&k, 32);
            out.push((seq, i64_val(&v)));
            if last(seq) {
                break;
            }
        }
        Ok(out)
    }

    /// What `u` did to the messages at `seqs` (ascending, distinct) of `c`.
    /// Dense sets cost one range scan per table; sparse ones point reads.
    pub(super) fn track(
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
                t.read = self.seq_rows(Tb::ReadHist, c, u, lo, u64::MAX, |s| s >= hi)?;
            }
            if wm.public_seq >= lo {
                t.public = self.seq_rows(Tb::PublicHist, c, u, lo, u64::MAX, |s| s >= hi)?;
            }
            return Ok(t);
        }
        let mut runs: Vec<Run> = Vec::new();
        for &seq in seqs {
            if runs.last().is_none_or(|r| !r.covers(seq)) {
                runs.extend(self.run_covering(c, u, seq)?);
            }
            if wm.seq >= seq {
                t.read.extend(self.first_covering(Tb::ReadHist, c, u, seq)?);
            }
            if wm.public_seq >= seq {
                t.public
                    .extend(self.first_covering(Tb::PublicHist, c, u, seq)?);
            }
        }
        t.delivered = Runs::new(runs);
        // First coverings of ascending seqs ascend; equal ones repeat.
        t.read.dedup();
        t.public.dedup();
        Ok(t)
    }

    pub(super) fn last_seq(&self, c: &ConversationId) -> StoreResult<Seq> {
        let lo = k_seq(c, 0);
        let hi = k_seq(c, u64::MAX);
        let mut range = self.rows(Tb::ConvMsgs, &lo, &hi);
        match range.next_back() {
            Some(entry) => Ok(u64_at(&entry?.0, 16)),
            None => Ok(0),
        }
    }

    /// `(seq, message, sender)` for seqs in `lo..=hi`.
    pub(super) fn messages_between(
        &self,
        c: &ConversationId,
        lo: Seq,
        hi: Seq,
    ) -> StoreResult<Vec<Message>> {
        let (lo, hi) = (k_seq(c, lo), k_seq(c, hi));
        let mut out = Vec::new();
        for entry in self.rows(Tb::ConvMsgs, &lo, &hi) {
            let (k, v) = entry?;
            let (seq, v) = (u64_at(&k, 16), &v);
            let message = match v.len() {
                40.. => Message {
                    id: uuid_at(v, 0),
                    conversation: *c,
                    seq,
                    sender: uuid_at(v, 16),
                    sent_at: u64_at(v, 32) as Millis,
                },
                // Written before the row carried the sent time.
                _ => self
                    .message(&uuid_at(v, 0))?
                    .ok_or_else(|| corrupt(format!("message at seq {seq} of {c} has no record")))?,
            };
            out.push(message);
        }
        Ok(out)
    }

    /// Messages others sent after `wm` while `membership` covered them.
    pub(super) fn unread(
        &self,
        c: &ConversationId,
        u: &UserId,
        wm: Seq,
        membership: &Membership,
    ) -> StoreResult<u64> {
        let (lo, hi) = (k_seq(c, wm.saturating_add(1)), k_seq(c, u64::MAX));
        let mut n = 0;
        for entry in self.rows(Tb::ConvMsgs, &lo, &hi) {
            let (k, v) = entry?;
            if membership.receives(*u, uuid_at(&v, 16), u64_at(&k, 16)) {
                n += 1;
            }
        }
        Ok(n)
    }

    pub(super) fn context(&self, c: &ConversationId) -> StoreResult<ConvContext> {
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
    pub(super) fn states(
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

    pub(super) fn events_after(
        &self,
        u: &UserId,
        after: u64,
        max: usize,
    ) -> StoreResult<Vec<Event>> {
        let lo = k_seq(u, after.saturating_add(1));
        let hi = k_seq(u, u64::MAX);
        let mut out = Vec::new();
        for entry in self.rows(Tb::Events, &lo, &hi).take(max) {
            let (k, v) = entry?;
            out.push(Event {
                offset: u64_at(&k, 16),
                user: *u,
                body: decode(&v)?,
            });
        }
        Ok(out)
    }

    pub(super) fn snapshot(&self, u: &UserId) -> StoreResult<Snapshot> {
        let lo = k_seq(u, 0);
        let hi = k_seq(u, u64::MAX);
        let mut recent = Vec::new();
        for entry in self
            .rows(Tb::SenderMsgs, &lo, &hi)
            .rev()
            .take(SNAPSHOT_MESSAGES)
        {
            let (_, v) = entry?;
            if let Some(m) = self.message(&uuid_at(&v, 0))? {
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
        for entry in self.rows(Tb::UserConvs, &lo, &hi) {
            if watermarks.len() >= SNAPSHOT_CONVERSATIONS {
                break;
            }
            let (k, _) = entry?;
            let c = uuid_at(&k, 16);
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
    pub(super) fn authorize(
        &self,
        c: &ConversationId,
        u: &UserId,
        field: &str,
    ) -> StoreResult<Membership> {
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

pub(super) fn run_from(key: &[u8], value: &[u8]) -> Run {
    Run {
        first: u64_at(key, 32),
        last: u64_at(value, 0),
        at: u64_at(value, 8) as Millis,
    }
}

pub(super) fn run_value(run: &Run) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&run.last.to_be_bytes());
    v[8..].copy_from_slice(&run.at.to_be_bytes());
    v
}

/// The `conversation_messages` value of `m`: id ‖ sender ‖ sent time, so
/// that messages read by seq need no second lookup by id.
pub(super) fn conv_msg_value(m: &Message) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..16].copy_from_slice(m.id.as_bytes());
    v[16..32].copy_from_slice(m.sender.as_bytes());
    v[32..].copy_from_slice(&m.sent_at.to_be_bytes());
    v
}

impl WriteTables<'_> {
    /// Writes `k` → `v` in `t` (in the transaction: seen by its own reads,
    /// durable at its commit).
    pub(super) fn put(&mut self, t: Tb, k: &[u8], v: &[u8]) -> StoreResult<()> {
        self.tx.insert(self.ks.get(t), k, v);
        Ok(())
    }

    /// Commits; returns once the commit is durable (see [`Engine::write`]).
    pub(super) fn commit(self) -> StoreResult<()> {
        self.tx.commit().map_err(storage)
    }

    pub(super) fn remove(&mut self, t: Tb, k: &[u8]) {
        self.tx.remove(self.ks.get(t), k);
    }

    pub(super) fn put_run(&mut self, c: &ConversationId, u: &UserId, run: &Run) -> StoreResult<()> {
        self.put(Tb::Runs, &k3(c, u, run.first), &run_value(run))
    }
}
