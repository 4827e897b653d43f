//! Tables, keys and the reads that load facts (see docs/storage-embedded.md).

use super::*;

pub(super) type Bytes = &'static [u8];
pub(super) type Def = TableDefinition<'static, Bytes, Bytes>;

/// Members (ever) of a conversation with their memberships, in user-id order.
pub(super) type Members = Vec<(UserId, Membership)>;

pub(super) const META: Def = TableDefinition::new("meta");
pub(super) const CONVS: Def = TableDefinition::new("conversations");
pub(super) const MEMBERS: Def = TableDefinition::new("members");
pub(super) const USER_CONVS: Def = TableDefinition::new("user_conversations");
pub(super) const MESSAGES: Def = TableDefinition::new("messages");
pub(super) const CONV_MSGS: Def = TableDefinition::new("conversation_messages");
pub(super) const SENDER_MSGS: Def = TableDefinition::new("sender_messages");
/// Deliveries as runs (`conv ‖ user ‖ first seq` → `last seq ‖ time`), see
/// [`domain::Run`].
pub(super) const RUNS: Def = TableDefinition::new("delivery_runs");
/// The second layout of deliveries (`conv ‖ user ‖ seq` → time, one row per
/// message per recipient), folded into [`RUNS`] at open.
pub(super) const DELIVERED_V2: Def = TableDefinition::new("delivered_by_recipient");
/// The first layout of deliveries (`msg ‖ user`), moved to [`DELIVERED_V2`] at open.
pub(super) const DELIVERED_V1: Def = TableDefinition::new("delivered");
pub(super) const WATERMARKS: Def = TableDefinition::new("watermarks");
pub(super) const READ_HIST: Def = TableDefinition::new("read_history");
pub(super) const PUBLIC_HIST: Def = TableDefinition::new("public_read_history");
pub(super) const PRIVACY: Def = TableDefinition::new("privacy");
pub(super) const EVENTS: Def = TableDefinition::new("events");
pub(super) const EVENT_INDEX: Def = TableDefinition::new("event_index");
pub(super) const PENDING: Def = TableDefinition::new("pending_windows");
/// The thread of each thread message: `conv ‖ seq` → `root seq ‖ root id`
/// (a message without a row is in the main timeline).
pub(super) const THREAD_OF: Def = TableDefinition::new("thread_of");
/// Each thread's messages: `scope ‖ seq` → sender, where the scope is
/// [`scope`] of the thread.
pub(super) const THREAD_MSGS: Def = TableDefinition::new("thread_messages");
/// Each conversation's threads: `conv ‖ root seq` → root id.
pub(super) const THREAD_ROOTS: Def = TableDefinition::new("thread_roots");
/// The counting histograms (`counts.rs`): `conv ‖ kind ‖ seq` → how many
/// simple members score exactly `seq` in that kind.
pub(super) const COUNT_INDEX: Def = TableDefinition::new("count_index");
/// Each simple member's scores: `conv ‖ user` → `from ‖ delivered ‖ public`.
pub(super) const PREFIXES: Def = TableDefinition::new("member_prefixes");
/// Members counted one by one: `conv ‖ user` → nothing (ever left or joined
/// again) or the highest seq delivered past its prefix (gapped).
pub(super) const APART: Def = TableDefinition::new("counted_apart");
/// Completion times of messages every recipient has: `conv ‖ seq` →
/// membership version ‖ when the last got it ‖ when the last read it, as
/// others may see it (`counts.rs`).
pub(super) const COMPLETIONS: Def = TableDefinition::new("completion_times");

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

/// Where a timeline's read positions and histories are kept, in the same
/// tables (`watermarks`, `read_history`, `public_read_history`) and key
/// layouts as the main timeline's: [`crate::store::thread_scope`].
pub(super) fn scope(c: &ConversationId, timeline: domain::Timeline) -> Uuid {
    crate::store::thread_scope(c, timeline)
}

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

/// Read access shared by write jobs and read transactions.
pub(super) struct Tables<T> {
    pub(super) meta: T,
    pub(super) convs: T,
    pub(super) members: T,
    pub(super) user_convs: T,
    pub(super) messages: T,
    pub(super) conv_msgs: T,
    pub(super) sender_msgs: T,
    pub(super) runs: T,
    pub(super) watermarks: T,
    pub(super) read_hist: T,
    pub(super) public_hist: T,
    pub(super) privacy: T,
    pub(super) events: T,
    pub(super) event_index: T,
    pub(super) pending: T,
    pub(super) thread_of: T,
    pub(super) thread_msgs: T,
    pub(super) thread_roots: T,
    pub(super) count_index: T,
    pub(super) prefixes: T,
    pub(super) apart: T,
    pub(super) completions: T,
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
            thread_of: $txn.open_table(THREAD_OF).map_err(storage)?,
            thread_msgs: $txn.open_table(THREAD_MSGS).map_err(storage)?,
            thread_roots: $txn.open_table(THREAD_ROOTS).map_err(storage)?,
            count_index: $txn.open_table(COUNT_INDEX).map_err(storage)?,
            prefixes: $txn.open_table(PREFIXES).map_err(storage)?,
            apart: $txn.open_table(APART).map_err(storage)?,
            completions: $txn.open_table(COMPLETIONS).map_err(storage)?,
        }
    };
}

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

pub(super) fn get_bytes<T: ReadableTable<Bytes, Bytes>>(
    t: &T,
    key: &[u8],
) -> StoreResult<Option<Vec<u8>>> {
    Ok(t.get(key).map_err(storage)?.map(|g| g.value().to_vec()))
}

impl<T: ReadableTable<Bytes, Bytes>> Tables<T> {
    pub(super) fn meta_u64(&self, key: &[u8]) -> StoreResult<u64> {
        Ok(get_bytes(&self.meta, key)?
            .map(|b| u64_at(&b, 0))
            .unwrap_or(0))
    }

    pub(super) fn conversation(&self, c: &ConversationId) -> StoreResult<Option<ConversationMeta>> {
        get_bytes(&self.convs, &k1(c))?
            .map(|b| decode(&b))
            .transpose()
    }

    pub(super) fn membership(
        &self,
        c: &ConversationId,
        u: &UserId,
    ) -> StoreResult<Option<Membership>> {
        get_bytes(&self.members, &k2(c, u))?
            .map(|b| decode(&b))
            .transpose()
    }

    pub(super) fn members(&self, c: &ConversationId) -> StoreResult<Members> {
        Ok(self.members_after(c, None, usize::MAX)?.0)
    }

    /// At most `limit` members (ever) of `c` after `after`, in user-id order,
    /// and the last of them if more follow.
    pub(super) fn members_after(
        &self,
        c: &ConversationId,
        after: Option<UserId>,
        limit: usize,
    ) -> StoreResult<(Members, Option<UserId>)> {
        let lo = k2(c, &after.unwrap_or_else(Uuid::nil));
        let hi = k2(c, &Uuid::max());
        let mut out = Vec::new();
        for entry in self
            .members
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            let u = uuid_at(k.value(), 16);
            if Some(u) == after {
                continue;
            }
            if out.len() == limit {
                let last = out.last().map(|(u, _)| *u);
                return Ok((out, last));
            }
            out.push((u, decode(v.value())?));
        }
        Ok((out, None))
    }

    /// The highest id in `messages` (ids compare as their bytes, which is
    /// the order of the keys).
    pub(super) fn highest_message_id(&self) -> StoreResult<Option<MessageId>> {
        Ok(self
            .messages
            .last()
            .map_err(storage)?
            .map(|(k, _)| uuid_at(k.value(), 0)))
    }

    pub(super) fn message(&self, m: &MessageId) -> StoreResult<Option<Message>> {
        get_bytes(&self.messages, &k1(m))?
            .map(|b| decode(&b))
            .transpose()
    }

    pub(super) fn watermark(&self, c: &ConversationId, u: &UserId) -> StoreResult<ReadWatermark> {
        Ok(get_bytes(&self.watermarks, &k2(c, u))?
            .map(|b| ReadWatermark {
                seq: u64_at(&b, 0),
                public_seq: u64_at(&b, 8),
            })
            .unwrap_or_default())
    }

    pub(super) fn sharing(&self, u: &UserId) -> StoreResult<bool> {
        Ok(get_bytes(&self.privacy, &k1(u))?.is_none_or(|b| b.first() == Some(&1)))
    }

    /// The delivery run of `u` in `c` that covers `seq`, if any.
    pub(super) fn run_covering(
        &self,
        c: &ConversationId,
        u: &UserId,
        seq: Seq,
    ) -> StoreResult<Option<Run>> {
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
    pub(super) fn first_covering(
        table: &T,
        c: &ConversationId,
        u: &UserId,
        seq: Seq,
    ) -> StoreResult<Option<(Seq, Millis)>> {
        Ok(Self::seq_rows(table, c, u, seq, u64::MAX, |_| true)?.pop())
    }

    /// Rows `(seq, time)` of a `conv ‖ user ‖ seq` table from `lo` to `hi`, in
    /// seq order, up to and including the first row for which `last` holds.
    pub(super) fn seq_rows(
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

    /// What `u` did to the messages at `seqs` (ascending, distinct) of `c`,
    /// all in the timeline whose read history is kept under `hist` (see
    /// [`scope`]). Dense sets cost one range scan per table; sparse ones
    /// point reads.
    pub(super) fn track(
        &self,
        c: &ConversationId,
        hist: &Uuid,
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
                t.read = Self::seq_rows(&self.read_hist, hist, u, lo, u64::MAX, |s| s >= hi)?;
            }
            if wm.public_seq >= lo {
                t.public = Self::seq_rows(&self.public_hist, hist, u, lo, u64::MAX, |s| s >= hi)?;
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
                    .extend(Self::first_covering(&self.read_hist, hist, u, seq)?);
            }
            if wm.public_seq >= seq {
                t.public
                    .extend(Self::first_covering(&self.public_hist, hist, u, seq)?);
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
        let mut range = self
            .conv_msgs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?;
        match range.next_back() {
            Some(entry) => {
                let (k, v) = entry.map_err(storage)?;
                Ok(Registered::of(k.value(), v.value())?.last)
            }
            None => Ok(0),
        }
    }

    /// The `conversation_messages` rows of `c` holding a seq in `lo..=hi`
    /// (a row of several messages may start before `lo`), in seq order.
    fn registered_rows(
        &self,
        c: &ConversationId,
        lo: Seq,
        hi: Seq,
        mut each: impl FnMut(&[u8], &[u8]) -> StoreResult<()>,
    ) -> StoreResult<()> {
        if lo > hi {
            return Ok(());
        }
        // The row starting at or before `lo`, if it reaches `lo`.
        let (start, at_lo) = (k_seq(c, 0), k_seq(c, lo));
        let before = self
            .conv_msgs
            .range(start.as_slice()..at_lo.as_slice())
            .map_err(storage)?
            .next_back();
        if let Some(entry) = before {
            let (k, v) = entry.map_err(storage)?;
            if Registered::of(k.value(), v.value())?.last >= lo {
                each(k.value(), v.value())?;
            }
        }
        let end = k_seq(c, hi);
        for entry in self
            .conv_msgs
            .range(at_lo.as_slice()..=end.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            each(k.value(), v.value())?;
        }
        Ok(())
    }

    /// The messages of `c` registered at seqs in `lo..=hi`, in seq order.
    pub(super) fn messages_between(
        &self,
        c: &ConversationId,
        lo: Seq,
        hi: Seq,
    ) -> StoreResult<Vec<Message>> {
        let mut out = Vec::new();
        self.registered_rows(c, lo, hi, |k, v| {
            let row = Registered::of(k, v)?;
            match Registered::one_without_sent_time(v) {
                // Written before the row carried the sent time.
                Some(id) => out.push(self.message(&id)?.ok_or_else(|| {
                    corrupt(format!("message at seq {} of {c} has no record", row.first))
                })?),
                None => out.extend(row.messages(c, v).filter(|m| (lo..=hi).contains(&m.seq))),
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The id of the message of `c` registered at `seq`, if any.
    pub(super) fn message_at(
        &self,
        c: &ConversationId,
        seq: Seq,
    ) -> StoreResult<Option<MessageId>> {
        let mut found = None;
        self.registered_rows(c, seq, seq, |k, v| {
            found = Registered::of(k, v)?.id_at(v, seq);
            Ok(())
        })?;
        Ok(found)
    }

    /// Messages others sent after `wm` while `membership` covered them.
    pub(super) fn unread(
        &self,
        c: &ConversationId,
        u: &UserId,
        wm: Seq,
        membership: &Membership,
    ) -> StoreResult<u64> {
        let mut n = 0;
        self.registered_rows(c, wm.saturating_add(1), u64::MAX, |k, v| {
            let row = Registered::of(k, v)?;
            if row.sender != *u {
                n += (row.first.max(wm.saturating_add(1))..=row.last)
                    .filter(|seq| membership.receives(*u, row.sender, *seq))
                    .count() as u64;
            }
            Ok(())
        })?;
        Ok(n)
    }

    pub(super) fn context(&self, c: &ConversationId) -> StoreResult<ConvContext> {
        self.context_of(c, self.members(c)?)
    }

    /// The context of `c` with only `members` (and their watermarks and
    /// settings).
    pub(super) fn context_of(
        &self,
        c: &ConversationId,
        members: Vec<(UserId, Membership)>,
    ) -> StoreResult<ConvContext> {
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
    /// `viewer(m)` may see it (the rules are in `domain`), in the order of
    /// `msgs`. A message's reads are its timeline's (main, or its thread's):
    /// each member's facts are read once per timeline for the whole set.
    pub(super) fn states(
        &self,
        ctx: &ConvContext,
        msgs: &[Message],
        viewer: impl Fn(&Message) -> UserId,
        with_recipients: bool,
    ) -> StoreResult<Vec<domain::MessageState>> {
        let c = &ctx.conversation;
        let (Some(lo), Some(hi)) = (
            msgs.iter().map(|m| m.seq).min(),
            msgs.iter().map(|m| m.seq).max(),
        ) else {
            return Ok(Vec::new());
        };
        let threads = self.threads_between(c, lo, hi)?;
        let timeline_of = |m: &Message| threads.get(&m.seq).map_or(domain::MAIN, |t| t.seq);
        let mut timelines: Vec<domain::Timeline> = msgs.iter().map(timeline_of).collect();
        timelines.sort_unstable();
        timelines.dedup();
        let mut out: Vec<Option<domain::MessageState>> = vec![None; msgs.len()];
        for timeline in timelines {
            let hist = scope(c, timeline);
            let in_thread;
            let watermarks = if timeline == domain::MAIN {
                &ctx.watermarks
            } else {
                in_thread = ctx
                    .members
                    .iter()
                    .map(|(u, _)| Ok((*u, self.watermark(&hist, u)?)))
                    .collect::<StoreResult<HashMap<_, _>>>()?;
                &in_thread
            };
            let mut seqs: Vec<Seq> = msgs
                .iter()
                .filter(|m| timeline_of(m) == timeline)
                .map(|m| m.seq)
                .collect();
            seqs.sort_unstable();
            seqs.dedup();
            let mut tracks = HashMap::with_capacity(ctx.members.len());
            for (u, membership) in &ctx.members {
                let received: Vec<Seq> = seqs
                    .iter()
                    .copied()
                    .filter(|s| membership.contains(*s))
                    .collect();
                let wm = watermarks.get(u).copied().unwrap_or_default();
                tracks.insert(*u, self.track(c, &hist, u, &received, wm)?);
            }
            for (i, m) in msgs.iter().enumerate() {
                if timeline_of(m) != timeline {
                    continue;
                }
                let mut views = Vec::new();
                for (u, membership) in &ctx.members {
                    if !membership.receives(*u, m.sender, m.seq) {
                        continue;
                    }
                    let wm = watermarks.get(u).copied().unwrap_or_default();
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
                out[i] = Some(domain::MessageState {
                    message: *m,
                    aggregate,
                    recipients: if with_recipients { views } else { Vec::new() },
                });
            }
        }
        Ok(out.into_iter().flatten().collect())
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

    pub(super) fn snapshot(&self, u: &UserId) -> StoreResult<Snapshot> {
        let lo = k_seq(u, 0);
        let hi = k_seq(u, u64::MAX);
        let mut recent = Vec::new();
        for entry in self
            .sender_msgs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
            .rev()
        {
            if recent.len() >= SNAPSHOT_MESSAGES {
                break;
            }
            let (_, v) = entry.map_err(storage)?;
            let v = v.value();
            match v.len() {
                // One message: its id.
                16 => recent.extend(self.message(&uuid_at(v, 0))?),
                // A registered run: conversation ‖ first seq ‖ last seq.
                _ => {
                    let c = uuid_at(v, 0);
                    let msgs = self.messages_between(&c, u64_at(v, 16), u64_at(v, 24))?;
                    let room = SNAPSHOT_MESSAGES - recent.len();
                    recent.extend(msgs.into_iter().rev().take(room));
                }
            }
        }
        // Counted per conversation, kept in the order of `recent`.
        let mut by_conv: HashMap<ConversationId, Vec<Message>> = HashMap::new();
        for m in &recent {
            by_conv.entry(m.conversation).or_default().push(*m);
        }
        let mut states: HashMap<MessageId, domain::MessageState> = HashMap::new();
        for (c, msgs) in by_conv {
            for s in self.counted_states(&c, &msgs, |_| *u, &mut Vec::new())? {
                states.insert(s.message.id, s);
            }
        }
        let recent_messages: Vec<domain::MessageState> =
            recent.iter().filter_map(|m| states.remove(&m.id)).collect();
        let (lo, hi) = (k2(u, &Uuid::nil()), k2(u, &Uuid::max()));
        let mut watermarks = Vec::new();
        let mut listed = 0;
        for entry in self
            .user_convs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            // The limit is on conversations (each with its thread positions).
            if listed >= SNAPSHOT_CONVERSATIONS {
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
            let (main, threads) = self.unread_by_timeline(&c, u, &membership)?;
            let read_up_to = self.position(&c, u, domain::MAIN)?.seq;
            watermarks.extend(crate::store::snapshot_positions(
                c,
                (read_up_to, main),
                &threads,
            ));
            listed += 1;
        }
        Ok(Snapshot {
            recent_messages,
            watermarks,
        })
    }

    /// Message `id`, which must be one of `c`'s (NOT_FOUND or
    /// INVALID_ARGUMENT naming `field` otherwise).
    pub(super) fn message_in(
        &self,
        c: &ConversationId,
        id: MessageId,
        field: &str,
    ) -> StoreResult<Message> {
        match self.message(&id)? {
            Some(m) if m.conversation == *c => Ok(m),
            Some(_) => Err(ServiceError::invalid(
                field,
                format!("message {id} belongs to another conversation"),
            )),
            None => Err(ServiceError::not_found(field, "message", id)),
        }
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

pub(super) fn put_run(
    t: &mut Table<'_, Bytes, Bytes>,
    c: &ConversationId,
    u: &UserId,
    run: &Run,
) -> StoreResult<()> {
    put(t, &k3(c, u, run.first), &run_value(run))
}

/// A `conversation_messages` row (`conv ‖ first seq` → value): the messages
/// one registration call made at the consecutive seqs `first..=last`, all
/// from one sender. Three value layouts, told apart by length:
/// - 32 bytes, `id ‖ sender`: one message, written before rows carried the
///   sent time (the time is in `messages`);
/// - 40 bytes, `id ‖ sender ‖ sent time`: one message;
/// - 24 + 24·n bytes (n ≥ 2), `last seq ‖ sender ‖ (id ‖ sent time)·n`: a
///   run of n messages, so a registered batch costs one row here however
///   many messages it holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Registered {
    pub(super) first: Seq,
    pub(super) last: Seq,
    pub(super) sender: UserId,
}

const RUN_HEADER: usize = 24;
const RUN_ENTRY: usize = 24;

impl Registered {
    pub(super) fn of(key: &[u8], v: &[u8]) -> StoreResult<Self> {
        let first = u64_at(key, 16);
        match v.len() {
            32 | 40 => Ok(Self {
                first,
                last: first,
                sender: uuid_at(v, 16),
            }),
            n if n >= RUN_HEADER + 2 * RUN_ENTRY && (n - RUN_HEADER).is_multiple_of(RUN_ENTRY) => {
                let last = u64_at(v, 0);
                if last.checked_sub(first) != Some(((n - RUN_HEADER) / RUN_ENTRY - 1) as u64) {
                    return Err(corrupt(format!(
                        "registration row at seq {first} ends at {last} with {} messages",
                        (n - RUN_HEADER) / RUN_ENTRY
                    )));
                }
                Ok(Self {
                    first,
                    last,
                    sender: uuid_at(v, 8),
                })
            }
            n => Err(corrupt(format!(
                "registration row at seq {first} has {n} bytes"
            ))),
        }
    }

    /// The id of a one-message row written without the sent time.
    fn one_without_sent_time(v: &[u8]) -> Option<MessageId> {
        (v.len() == 32).then(|| uuid_at(v, 0))
    }

    /// The id at `seq`, if the row holds it.
    pub(super) fn id_at(&self, v: &[u8], seq: Seq) -> Option<MessageId> {
        if !(self.first..=self.last).contains(&seq) {
            return None;
        }
        Some(if v.len() <= 40 {
            uuid_at(v, 0)
        } else {
            uuid_at(v, RUN_HEADER + (seq - self.first) as usize * RUN_ENTRY)
        })
    }

    /// The row's messages (a 40-byte or run row).
    fn messages<'a>(&self, c: &ConversationId, v: &'a [u8]) -> impl Iterator<Item = Message> + 'a {
        let (c, first, sender) = (*c, self.first, self.sender);
        let single = v.len() == 40;
        let n = if single {
            1
        } else {
            (v.len() - RUN_HEADER) / RUN_ENTRY
        };
        (0..n).map(move |i| {
            let at = if single {
                0
            } else {
                RUN_HEADER + i * RUN_ENTRY
            };
            Message {
                id: uuid_at(v, at),
                conversation: c,
                seq: first + i as u64,
                sender,
                sent_at: u64_at(v, at + if single { 32 } else { 16 }) as Millis,
            }
        })
    }
}

/// The `conversation_messages` value of `msgs`: consecutive seqs of one
/// conversation and one sender, in seq order (see [`Registered`]).
pub(super) fn registered_value(msgs: &[Message]) -> Vec<u8> {
    if let [m] = msgs {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(m.id.as_bytes());
        v.extend_from_slice(m.sender.as_bytes());
        v.extend_from_slice(&m.sent_at.to_be_bytes());
        return v;
    }
    let mut v = Vec::with_capacity(RUN_HEADER + RUN_ENTRY * msgs.len());
    v.extend_from_slice(&msgs[msgs.len() - 1].seq.to_be_bytes());
    v.extend_from_slice(msgs[0].sender.as_bytes());
    for m in msgs {
        v.extend_from_slice(m.id.as_bytes());
        v.extend_from_slice(&m.sent_at.to_be_bytes());
    }
    v
}

pub(super) fn put(t: &mut Table<'_, Bytes, Bytes>, k: &[u8], v: &[u8]) -> StoreResult<()> {
    t.insert(k, v).map_err(storage)?;
    Ok(())
}
