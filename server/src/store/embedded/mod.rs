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
//!
//! Files: `tables.rs` (tables, keys, the reads that load facts), `writer.rs`
//! (the writer thread and what a job writes), `migrate.rs` (earlier formats),
//! this file (opening, and the calls).

use super::*;
use crate::domain::{
    self, Aggregate, Delivery, EventBody, Membership, Message, ReadWatermark, RecipientFacts, Run,
    Runs, ThreadRoot, WatermarkAdvance,
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

#[macro_use]
mod tables;
mod counts;
mod migrate;
#[cfg(test)]
mod tests;
mod threads;
mod writer;

use migrate::migrate_to_runs;
use tables::*;
use threads::thread_of_value;
use writer::*;

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
    /// A conversation's counting index is kept once it has more members
    /// than this ([`INDEXED_ABOVE`] by default; tests lower it to exercise
    /// the index in small groups).
    pub indexed_above: u64,
}

/// Below this many members, a count reading every member's facts costs
/// less than keeping the counting index on every delivery and read
/// (BENCHMARKS.md, "Counting without the members on the embedded store").
pub const INDEXED_ABOVE: u64 = 64;

/// The embedded store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    jobs: std::sync::Mutex<Option<std_mpsc::Sender<Job>>>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    hub: Arc<Hub>,
    epoch: u64,
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
        counts::build_count_index(&txn, options.indexed_above)?;
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
                Err(ServiceError::Unavailable { .. } | ServiceError::Internal { .. })
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
                return Err(ServiceError::unavailable("store is shutting down"));
            }
        }
        rx.await
            .map_err(|_| ServiceError::unavailable("store writer stopped"))?
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
        .map_err(|e| ServiceError::internal(format!("read task failed: {e}")))?
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
            if members.len() as u64 > ctx.st.options.indexed_above {
                ctx.t.keep_index(&conversation)?;
            }
            Ok(true)
        })
        .await
    }

    async fn change_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
        kind: MemberChangeKind,
    ) -> StoreResult<MembershipResult> {
        self.write(move |ctx| {
            let Some(mut meta) = ctx.t.conversation(&conversation)? else {
                return Err(ServiceError::not_found(
                    "conversation_id",
                    "conversation",
                    conversation,
                ));
            };
            let updated = fold_member_changes(&changes, kind, |u| {
                Ok(ctx.t.membership(&conversation, u)?.unwrap_or_default())
            })?;
            let mut lowest = Seq::MAX;
            for (u, (ms, from)) in &updated {
                put(&mut ctx.t.members, &k2(&conversation, u), &encode(ms))?;
                put(&mut ctx.t.user_convs, &k2(u, &conversation), &[])?;
                ctx.t.index_membership(&conversation, u, ms)?;
                lowest = lowest.min(*from);
            }
            meta.member_count = kind.count_after(meta.member_count, updated.len() as u64);
            put(&mut ctx.t.convs, &k1(&conversation), &encode(&meta))?;
            if meta.member_count > ctx.st.options.indexed_above {
                ctx.t.keep_index(&conversation)?;
            }
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

    async fn register_in_threads(
        &self,
        messages: Vec<NewMessage>,
        roots: Vec<Option<MessageId>>,
    ) -> StoreResult<u64> {
        let root_of = move |i: usize| roots.get(i).copied().flatten();
        self.write(move |ctx| {
            // Validate the whole batch before writing anything. A batch is
            // usually one conversation and a few senders: each is read once.
            let mut fresh = Vec::new();
            let mut last_seqs: HashMap<ConversationId, Seq> = HashMap::new();
            let mut memberships: HashMap<(ConversationId, UserId), Option<Membership>> =
                HashMap::new();
            // Ids above the highest registered one are new without a lookup
            // (time-ordered ids, UUIDv7, mostly are).
            let highest = ctx.t.highest_message_id()?;
            // The batch's messages judged so far, for roots named in it.
            let mut in_batch: HashMap<MessageId, (ConversationId, Seq, Option<ThreadRoot>)> =
                HashMap::new();
            let mut fresh_threads: HashMap<MessageId, ThreadRoot> = HashMap::new();
            for (i, m) in distinct_registrations(&messages, &root_of)? {
                let root = root_of(i);
                if let std::collections::hash_map::Entry::Vacant(e) =
                    last_seqs.entry(m.conversation)
                {
                    if ctx.t.conversation(&m.conversation)?.is_none() {
                        return Err(ServiceError::not_found(
                            format!("messages[{i}].conversation_id"),
                            "conversation",
                            m.conversation,
                        ));
                    }
                    e.insert(ctx.t.last_seq(&m.conversation)?);
                }
                let existing = if highest.is_some_and(|h| m.id <= h) {
                    ctx.t.message(&m.id)?
                } else {
                    None
                };
                let existing = match existing {
                    Some(e) => {
                        let thread = ctx.t.thread_of(&e.conversation, e.seq)?;
                        Some((e, thread.map(|t| t.id)))
                    }
                    None => None,
                };
                // Nothing is registered past the conversation's last seq, so
                // appended messages (the common case) need no lookup.
                let seq_taken_by = if m.seq > last_seqs[&m.conversation] {
                    None
                } else {
                    ctx.t.message_at(&m.conversation, m.seq)?
                };
                let membership = match memberships.get(&(m.conversation, m.sender)) {
                    Some(known) => known,
                    None => {
                        let read = ctx.t.membership(&m.conversation, &m.sender)?;
                        memberships
                            .entry((m.conversation, m.sender))
                            .or_insert(read)
                    }
                };
                let sender_is_member = membership.as_ref().is_some_and(|ms| ms.contains(m.seq));
                let thread = match root {
                    Some(r) if existing.is_none() => {
                        let found = match in_batch.get(&r) {
                            Some(known) => Some(*known),
                            None => match ctx.t.message(&r)? {
                                Some(rm) => Some((
                                    rm.conversation,
                                    rm.seq,
                                    ctx.t.thread_of(&rm.conversation, rm.seq)?,
                                )),
                                None => None,
                            },
                        };
                        let seq = domain::judge_root(m.conversation, m.seq, found)
                            .map_err(|e| root_refused(i, r, e))?;
                        Some(ThreadRoot { id: r, seq })
                    }
                    _ => None,
                };
                let known_thread = match &existing {
                    Some((e, _)) => ctx.t.thread_of(&e.conversation, e.seq)?,
                    None => thread,
                };
                if judge_registration(i, &m, root, existing, seq_taken_by, sender_is_member)? {
                    fresh.push(m);
                    if let Some(t) = thread {
                        fresh_threads.insert(m.id, t);
                    }
                }
                in_batch.insert(m.id, (m.conversation, m.seq, known_thread));
            }
            fresh.sort_by_key(|m| (m.conversation, m.seq));
            // Main-timeline messages registered below the last one, per
            // conversation: they end the delivered prefixes that cover them.
            let mut late: BTreeMap<ConversationId, Vec<(Seq, UserId)>> = BTreeMap::new();
            for m in &fresh {
                let last = last_seqs.entry(m.conversation).or_default();
                if *last > m.seq {
                    ctx.split_runs_at(&m.conversation, m.seq)?;
                    if !fresh_threads.contains_key(&m.id) {
                        late.entry(m.conversation)
                            .or_default()
                            .push((m.seq, m.sender));
                    }
                }
                *last = (*last).max(m.seq);
                put(&mut ctx.t.messages, &k1(&m.id), &encode(m))?;
                if let Some(t) = fresh_threads.get(&m.id) {
                    let c = &m.conversation;
                    put(
                        &mut ctx.t.thread_of,
                        &k_seq(c, m.seq),
                        &thread_of_value(t, &m.sender),
                    )?;
                    put(
                        &mut ctx.t.thread_msgs,
                        &k_seq(&scope(c, t.seq), m.seq),
                        m.sender.as_bytes(),
                    )?;
                    put(&mut ctx.t.thread_roots, &k_seq(c, t.seq), t.id.as_bytes())?;
                }
            }
            for (c, late) in &late {
                ctx.t.index_late(c, late)?;
            }
            // Consecutive seqs of one sender are one row by seq and one by
            // sender, however many messages they hold.
            for run in fresh.chunk_by(|a, b| {
                a.conversation == b.conversation && a.sender == b.sender && a.seq + 1 == b.seq
            }) {
                let (first, last) = (&run[0], &run[run.len() - 1]);
                put(
                    &mut ctx.t.conv_msgs,
                    &k_seq(&first.conversation, first.seq),
                    &registered_value(run),
                )?;
                ctx.st.sender_counter += 1;
                let by_sender = if run.len() == 1 {
                    k1(&first.id).to_vec()
                } else {
                    [
                        first.conversation.as_bytes().as_slice(),
                        &first.seq.to_be_bytes(),
                        &last.seq.to_be_bytes(),
                    ]
                    .concat()
                };
                put(
                    &mut ctx.t.sender_msgs,
                    &k_seq(&first.sender, ctx.st.sender_counter),
                    &by_sender,
                )?;
            }
            Ok(fresh.len() as u64)
        })
        .await
    }

    async fn mark_delivered(
        &self,
        user: UserId,
        messages: Vec<Named>,
        at: Millis,
    ) -> StoreResult<Vec<DeliveryResult>> {
        self.write(move |ctx| {
            let named = dedup(messages);
            let mut by_conv: BTreeMap<ConversationId, Vec<Message>> = BTreeMap::new();
            let mut memberships: HashMap<ConversationId, Membership> = HashMap::new();
            for n in &named {
                // A conversation named by the caller is authorized first, so
                // that a non-member learns nothing of which messages it holds.
                if let Some(c) = n.conversation
                    && let std::collections::hash_map::Entry::Vacant(e) = memberships.entry(c)
                {
                    e.insert(ctx.t.authorize(&c, &user, CONVERSATION_FIELD)?);
                }
                let Some(m) = ctx.t.message(&n.id)? else {
                    return Err(n.not_found());
                };
                if n.conversation.is_some_and(|c| c != m.conversation) {
                    return Err(n.not_found());
                }
                if let std::collections::hash_map::Entry::Vacant(e) =
                    memberships.entry(m.conversation)
                {
                    e.insert(ctx.t.authorize(&m.conversation, &user, n.field())?);
                }
                by_conv.entry(m.conversation).or_default().push(m);
            }
            let at = ctx.stamp(at);
            let mut results = HashMap::with_capacity(named.len());
            for (c, msgs) in by_conv {
                let membership = &memberships[&c];
                // Each message's reads are its timeline's: one position and
                // one track per timeline the call names.
                let (lo, hi) = (
                    msgs.iter().map(|m| m.seq).min().unwrap_or(0),
                    msgs.iter().map(|m| m.seq).max().unwrap_or(0),
                );
                let threads = ctx.t.threads_between(&c, lo, hi)?;
                let timeline_of = |m: &Message| threads.get(&m.seq).map_or(domain::MAIN, |t| t.seq);
                let mut read_facts: HashMap<domain::Timeline, (ReadWatermark, Track)> =
                    HashMap::new();
                for m in &msgs {
                    let timeline = timeline_of(m);
                    if read_facts.contains_key(&timeline) {
                        continue;
                    }
                    let mut seqs: Vec<Seq> = msgs
                        .iter()
                        .filter(|x| timeline_of(x) == timeline)
                        .map(|x| x.seq)
                        .collect();
                    seqs.sort_unstable();
                    let wm = ctx.t.position(&c, &user, timeline)?;
                    let hist = scope(&c, timeline);
                    let track = ctx.t.track(&c, &hist, &user, &seqs, wm)?;
                    read_facts.insert(timeline, (wm, track));
                }
                let mut new = Vec::new();
                let mut touched = Vec::new();
                for m in msgs {
                    let (wm, facts) = &read_facts[&timeline_of(&m)];
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
                            touched.push(m);
                            DeliveryResult::recorded(m.id, at)
                        }
                    };
                    results.insert(m.id, result);
                }
                let top = touched
                    .iter()
                    .filter(|m| timeline_of(m) == domain::MAIN)
                    .map(|m| m.seq)
                    .max();
                // Any delivery walks the prefix on (one the walk's cap
                // stopped goes on); `top` is what may lie past it.
                let delivered_some = !new.is_empty();
                ctx.record_runs(&c, &user, membership, new, at)?;
                if delivered_some {
                    ctx.t.index_delivery(&c, &user, top)?;
                }
                ctx.touch(&c, touched)?;
            }
            Ok(named.iter().map(|n| results[&n.id]).collect())
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
            let thread = ctx.t.thread_of(&conversation, m.seq)?;
            let at = ctx.stamp(at);
            ctx.apply_read(&user, &conversation, &membership, thread, m.seq, at)
        })
        .await
    }

    async fn mark_conversations_read(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
        threads: Vec<(ConversationId, MessageId)>,
        at: Millis,
    ) -> StoreResult<Vec<ConversationRead>> {
        self.write(move |ctx| {
            let at = ctx.stamp(at);
            let mut out = Vec::new();
            let refused = |c: ConversationId, e: ServiceError, thread: Option<MessageId>| {
                let outcome = match e {
                    ServiceError::NotFound { .. } => ConversationOutcome::NotFound,
                    ServiceError::PermissionDenied(_) => ConversationOutcome::PermissionDenied,
                    e => return Err(e),
                };
                Ok(ConversationRead {
                    conversation: c,
                    outcome,
                    read: ReadResult {
                        thread,
                        ..ReadResult::main(0, false, 0)
                    },
                })
            };
            for c in dedup(conversations) {
                let membership = match ctx.t.authorize(&c, &user, "conversation_ids") {
                    Ok(m) => m,
                    Err(e) => {
                        out.push(refused(c, e, None)?);
                        continue;
                    }
                };
                // Every timeline up to its last message; the result is the
                // main timeline's, advanced if any timeline moved.
                let mut moved = false;
                for root in ctx.t.threads(&c)? {
                    let last = ctx.t.last_in(&c, root.seq)?;
                    moved |= ctx
                        .apply_read(&user, &c, &membership, Some(root), last, at)?
                        .advanced;
                }
                let last = ctx.t.last_in(&c, domain::MAIN)?;
                let mut read = ctx.apply_read(&user, &c, &membership, None, last, at)?;
                read.advanced |= moved;
                out.push(ConversationRead {
                    conversation: c,
                    outcome: ConversationOutcome::Ok,
                    read,
                });
            }
            for (c, root) in dedup(threads) {
                let membership = match ctx.t.authorize(&c, &user, "threads.conversation_id") {
                    Ok(m) => m,
                    Err(e) => {
                        out.push(refused(c, e, Some(root))?);
                        continue;
                    }
                };
                // A thread is a main-timeline message of the conversation
                // with a thread under it (or none yet: nothing to mark).
                let root_seq = match ctx.t.message(&root)? {
                    Some(m) if m.conversation == c && ctx.t.thread_of(&c, m.seq)?.is_none() => {
                        m.seq
                    }
                    _ => {
                        let e = ServiceError::not_found("threads", "thread", root);
                        out.push(refused(c, e, Some(root))?);
                        continue;
                    }
                };
                let thread = ThreadRoot {
                    id: root,
                    seq: root_seq,
                };
                let last = ctx.t.last_in(&c, root_seq)?;
                let read = ctx.apply_read(&user, &c, &membership, Some(thread), last, at)?;
                out.push(ConversationRead {
                    conversation: c,
                    outcome: ConversationOutcome::Ok,
                    read,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn set_sharing(&self, user: UserId, sharing: bool) -> StoreResult<bool> {
        self.write(move |ctx| {
            if ctx.t.sharing(&user)? != sharing {
                ctx.t.index_sharing(&user, sharing)?;
            }
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
            let found = dedup(messages)
                .into_iter()
                .map(|id| t.message_in(&conversation, id, "message_ids"))
                .collect::<StoreResult<Vec<_>>>()?;
            if !include_recipients {
                // Completion times computed here are kept by the writer's
                // next summary of the conversation, not by a read.
                return t.counted_states(&conversation, &found, |_| viewer, &mut Vec::new());
            }
            let ctx = t.context(&conversation)?;
            t.states(&ctx, &found, |_| viewer, true)
        })
        .await
    }

    async fn recipients(
        &self,
        viewer: UserId,
        conversation: ConversationId,
        message: MessageId,
        after: Option<UserId>,
        budget: usize,
    ) -> StoreResult<domain::Examined> {
        self.read(move |t| {
            t.authorize(&conversation, &viewer, "conversation_id")?;
            let m = t.message_in(&conversation, message, "message_id")?;
            let (members, more_after) = t.members_after(&conversation, after, budget.max(1))?;
            let ctx = t.context_of(&conversation, members)?;
            let views = t
                .states(&ctx, &[m], |_| viewer, true)?
                .pop()
                .map(|s| s.recipients)
                .unwrap_or_default();
            Ok(domain::Examined { views, more_after })
        })
        .await
    }

    async fn registered_between(
        &self,
        conversation: ConversationId,
        from: Seq,
        to: Seq,
    ) -> StoreResult<Vec<(Seq, MessageId, UserId)>> {
        self.read(move |t| {
            Ok(t.messages_between(&conversation, from, to)?
                .into_iter()
                .map(|m| (m.seq, m.id, m.sender))
                .collect())
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
                let mut r = UnreadCount::empty(c, ConversationOutcome::Ok);
                match t.authorize(&c, &user, "conversation_ids") {
                    Ok(membership) => {
                        r.read_up_to = t.position(&c, &user, domain::MAIN)?.seq;
                        r.last_seq = t.last_seq(&c)?;
                        let (main, threads) = t.unread_by_timeline(&c, &user, &membership)?;
                        r.main_unread = main;
                        r.unread =
                            domain::conversation_unread(main, threads.iter().map(|t| t.unread));
                        r.threads = threads
                            .into_iter()
                            .filter(|t| t.unread > 0)
                            .take(domain::MAX_LISTED_THREADS)
                            .collect();
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
