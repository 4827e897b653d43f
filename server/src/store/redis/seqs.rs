//! The seq index, `P:{C}:sb` ([`Keys::seq_buckets`]): a sorted set of
//! [`record`]s, in one of two forms (the meta hash's `sb`, [`SeqForm`]):
//!
//! - **one record per member**, scored by its seq, while the conversation
//!   has at most [`SINGLES_MAX`] messages: Redis keeps such a set in a
//!   listpack (33-byte members, ~40 B a message), where a member holding
//!   more would make it a skip list (~850 B more for a short conversation);
//! - **packed**: one member per bucket of [`SEQ_BUCKET`] seqs, scored by
//!   the bucket's first seq, holding its messages' records in the order they
//!   were registered. A skip-list entry per message cost ~135 B past 128
//!   messages (docs/storage.md, "Measured bytes per message"); a bucket
//!   costs about its records' bytes and one entry. The registration that
//!   would take the set past [`SINGLES_MAX`] members packs it, in its
//!   commit ([`Inner::seq_writes`]).
//!
//! A member's records are in the bucket of its score in either form, so a
//! reader needs no form: a seq range is the members scored from its first
//! bucket's start to its last bucket's end, in one `ZRANGEBYSCORE`, and the
//! seqs it asked for are kept ([`parse_rows`]). A registration into a
//! packed index appends to its buckets (`ZAPPEND`, a command of the commit
//! script, [`scripts::APPLY`]: the new member, then the old one removed, so
//! the key is never empty and keeps its expiry) with the members it read
//! under the version it commits at ([`Inner::seq_buckets_at`]).
//!
//! Conversations written before this format have the seq index as a member
//! per message in `P:{C}:sq` ([`Keys::legacy_seqs`]) and no `sb` in the meta
//! hash: the first view of one writes it into `sb`
//! ([`Inner::pack_seq_index`]), in one commit.

use super::*;

/// Seqs per bucket of a packed index: 64 records of 33 bytes (~2 KB) per
/// sorted-set member.
pub(super) const SEQ_BUCKET: u64 = 64;

/// The most messages an index keeps one per member: Redis's
/// `zset-max-listpack-entries` default, past which the set is a skip list
/// anyway.
pub(super) const SINGLES_MAX: usize = 128;

/// The form of a conversation's seq index, from the meta hash's `sb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SeqForm {
    /// No `sb`: the index is `sq`, as written before `sb` existed.
    Legacy,
    /// `sb` = 1: one record per member.
    Singles,
    /// `sb` = 2: one member per bucket.
    Packed,
    /// `sb` = 3: one record per member, each with its message's send time,
    /// and no messages hash: a lookup by id reads the index (at most
    /// [`SINGLES_MAX`] records), which holds all the hash would. The
    /// registration that packs the index writes the hash (see the module's
    /// doc).
    Timed,
}

impl SeqForm {
    /// The form a meta hash's `sb` value names.
    pub(super) fn of(sb: Option<&[u8]>) -> Self {
        match sb {
            None => SeqForm::Legacy,
            Some(b"1") => SeqForm::Singles,
            Some(b"3") => SeqForm::Timed,
            Some(_) => SeqForm::Packed,
        }
    }

    /// The meta hash's `sb` value for this form.
    pub(super) fn mark(self) -> u64 {
        match self {
            SeqForm::Legacy => 0,
            SeqForm::Singles => 1,
            SeqForm::Packed => 2,
            SeqForm::Timed => 3,
        }
    }
}

/// The flag bit of a record's first byte: the message is in a thread (the
/// root's seq follows the sender).
const IN_THREAD: u8 = 0x80;

/// The flag bit of a record's first byte: the message's send time follows
/// the rest (less [`time_base`], as an `i64` zigzag varint, postcard), in
/// an index of [`SeqForm::Timed`].
const TIMED: u8 = 0x40;

/// What a record's send time is written relative to: for an id whose
/// version nibble is 7 (a UUIDv7), the millisecond in its first 6 bytes,
/// when it was minted, which a backend's registration follows closely
/// (1 to 3 bytes for a time within 17 minutes of it, where the time itself
/// takes 6); else 0. `scripts::MESSAGES_AT` reads it the same way.
fn time_base(m: &MessageId) -> Millis {
    let b = m.as_bytes();
    match b[6] >> 4 {
        7 => b[..6].iter().fold(0, |ms, x| (ms << 8) | Millis::from(*x)),
        _ => 0,
    }
}

/// The first seq of `seq`'s bucket.
pub(super) fn bucket_start(seq: Seq) -> Seq {
    seq / SEQ_BUCKET * SEQ_BUCKET
}

/// The last seq of `seq`'s bucket.
pub(super) fn bucket_end(seq: Seq) -> Seq {
    bucket_start(seq).saturating_add(SEQ_BUCKET - 1)
}

/// One message in its bucket: `seq mod SEQ_BUCKET` (1 byte, with
/// [`IN_THREAD`] for a thread message and [`TIMED`] when its send time
/// follows) ‖ message ‖ sender (raw, 16 bytes each) ‖ for a thread message
/// its root's seq (8 bytes, big-endian) ‖ with a send time, the time less
/// the message's [`time_base`], postcard (an `i64` zigzag varint).
/// The registration's writers keep a timed index [`exact`].
pub(super) fn record(
    seq: Seq,
    m: &MessageId,
    sender: &UserId,
    thread: Option<Seq>,
    sent_at: Option<Millis>,
) -> Vec<u8> {
    let mut r = Vec::with_capacity(48);
    let flag =
        if thread.is_some() { IN_THREAD } else { 0 } | if sent_at.is_some() { TIMED } else { 0 };
    r.push((seq % SEQ_BUCKET) as u8 | flag);
    r.extend_from_slice(m.as_bytes());
    r.extend_from_slice(sender.as_bytes());
    if let Some(root) = thread {
        r.extend_from_slice(&root.to_be_bytes());
    }
    if let Some(t) = sent_at {
        r.extend_from_slice(&enc(&t.wrapping_sub(time_base(m))));
    }
    r
}

/// The messages of a member scored `score` (its [`record`]s, in the bucket
/// the score is in), in record order; `None` if the value is cut short.
pub(super) fn parse_member(score: Seq, value: &[u8]) -> Option<Vec<Indexed>> {
    let base = bucket_start(score);
    let mut out = Vec::with_capacity(value.len() / 33);
    let mut rest = value;
    while let Some(&k) = rest.first() {
        let len = if k & IN_THREAD != 0 { 41 } else { 33 };
        let r = rest.get(..len)?;
        let id = MessageId::from_slice(&r[1..17]).ok()?;
        let (sent_at, after) = match k & TIMED {
            0 => (None, &rest[len..]),
            _ => {
                let (t, after) = postcard::take_from_bytes::<Millis>(&rest[len..]).ok()?;
                (Some(t.wrapping_add(time_base(&id))), after)
            }
        };
        out.push(Indexed {
            seq: base + u64::from(k % TIMED),
            id,
            sender: UserId::from_slice(&r[17..33]).ok()?,
            thread: (len == 41).then(|| u64::from_be_bytes(r[33..41].try_into().unwrap_or([0; 8]))),
            sent_at,
        });
        rest = after;
    }
    Some(out)
}

/// The messages in index rows (`(member, score)`, as `ZRANGEBYSCORE …
/// WITHSCORES` returns them) whose seqs are in `lo..=hi`, in seq order.
pub(super) fn parse_rows(rows: &[(Vec<u8>, f64)], lo: Seq, hi: Seq) -> StoreResult<Vec<Indexed>> {
    let mut out = Vec::new();
    for (value, score) in rows {
        let msgs = parse_member(*score as Seq, value).ok_or_else(|| corrupt("seq index"))?;
        out.extend(msgs.into_iter().filter(|m| (lo..=hi).contains(&m.seq)));
    }
    out.sort_unstable_by_key(|m| m.seq);
    Ok(out)
}

/// Messages to write into a seq index: (seq, id, sender, thread root's seq,
/// send time: only in an index of [`SeqForm::Timed`]).
pub(super) type Entry = (Seq, MessageId, UserId, Option<Seq>, Option<Millis>);

/// The [`Entry`]s of `msgs`, with their send times if `timed`.
pub(super) fn entries(msgs: &[(Message, Option<ThreadRoot>)], timed: bool) -> Vec<Entry> {
    msgs.iter()
        .map(|(m, t)| {
            (
                m.seq,
                m.id,
                m.sender,
                t.map(|t| t.seq),
                timed.then_some(m.sent_at),
            )
        })
        .collect()
}

/// What a registration read of the index (under the version it commits at):
/// the messages at the buckets of its seqs, and what its writes need.
#[derive(Default)]
pub(super) struct SeqBuckets {
    /// Bucket start -> its member as read (a packed index's).
    values: HashMap<Seq, Vec<u8>>,
    /// How many members the index has (an index of singles').
    count: usize,
    /// Seq -> the message registered at it.
    pub(super) taken: HashMap<Seq, MessageId>,
}

impl SeqBuckets {
    fn insert(&mut self, score: Seq, value: Vec<u8>) -> StoreResult<()> {
        for m in parse_member(score, &value).ok_or_else(|| corrupt("seq index"))? {
            self.taken.insert(m.seq, m.id);
        }
        self.values.insert(bucket_start(score), value);
        Ok(())
    }

    /// The command that appends `msgs` to a packed index: for each bucket,
    /// `ZAPPEND key start old records`.
    fn append_cmd(&self, key: String, msgs: Vec<Entry>) -> Option<Vec<Vec<u8>>> {
        let by_bucket = by_bucket(msgs);
        if by_bucket.is_empty() {
            return None;
        }
        let mut cmd = rcmd!["ZAPPEND", key];
        for (start, records) in by_bucket {
            let old = self.values.get(&start).map_or(&[][..], Vec::as_slice);
            cmd.extend(rcmd![start, old, records]);
        }
        Some(cmd)
    }
}

/// `msgs`' records by bucket start, without send times: a packed index
/// has the messages hash beside it.
fn by_bucket(msgs: impl IntoIterator<Item = Entry>) -> BTreeMap<Seq, Vec<u8>> {
    let mut out: BTreeMap<Seq, Vec<u8>> = BTreeMap::new();
    for (seq, id, sender, thread, _) in msgs {
        out.entry(bucket_start(seq))
            .or_default()
            .extend(record(seq, &id, &sender, thread, None));
    }
    out
}

/// `ZADD` commands that write `msgs` into the index in `form`.
fn add_cmds(key: &str, form: SeqForm, msgs: Vec<Entry>) -> Vec<Vec<Vec<u8>>> {
    let members: Vec<(Seq, Vec<u8>)> = match form {
        SeqForm::Packed => by_bucket(msgs).into_iter().collect(),
        _ => msgs
            .into_iter()
            .map(|(seq, id, sender, thread, sent_at)| {
                (seq, record(seq, &id, &sender, thread, sent_at))
            })
            .collect(),
    };
    members
        .chunks(500)
        .map(|chunk| {
            let mut z = rcmd!["ZADD", key];
            for (score, value) in chunk {
                z.extend(rcmd![*score, value.as_slice()]);
            }
            z
        })
        .collect()
}

/// Whether a timed record of `e` reads back exactly in Lua
/// (`timed_values` in `scripts::MESSAGES_AT`, whose numbers are doubles):
/// it has a send time, from 0 to 2^50 ms, and its seq and its root's are
/// below 2^53. Other messages keep a messages hash (a registration of one
/// packs the index; a re-warm writes the singles form with the hash).
fn exact(e: &Entry) -> bool {
    const EXACT: u64 = 1 << 53;
    let (seq, _, _, thread, at) = e;
    *seq < EXACT
        && at.is_some_and(|t| (0..1 << 50).contains(&t))
        && thread.is_none_or(|r| r < EXACT)
}

/// Whether `msgs`, a whole index, can be [`SeqForm::Timed`]: each
/// [`exact`], and each thread's root among them (its id is found by its
/// seq; a re-warm can lack a root whose row Scylla's retention dropped
/// before its replies').
fn timeable(msgs: &[Entry]) -> bool {
    let seqs: HashSet<Seq> = msgs.iter().map(|e| e.0).collect();
    msgs.iter()
        .all(|e| exact(e) && e.3.is_none_or(|r| seqs.contains(&r)))
}

/// The commands that write `msgs` as a whole seq index (a re-warm, a
/// legacy index written again): the index deleted and written in the form
/// its size calls for, and the meta hash's `sb` naming it; with the form.
/// Up to [`SINGLES_MAX`] messages whose send times the entries carry (a
/// re-warm's) and that are [`timeable`], [`SeqForm::Timed`]: the caller
/// writes no messages hash (nor for no messages at all).
pub(super) fn fill_cmds(
    k: &Keys,
    c: &ConversationId,
    msgs: Vec<Entry>,
) -> (Vec<Vec<Vec<u8>>>, SeqForm) {
    let form = if msgs.len() > SINGLES_MAX {
        SeqForm::Packed
    } else if timeable(&msgs) {
        SeqForm::Timed
    } else {
        SeqForm::Singles
    };
    let key = k.seq_buckets(c);
    let mut cmds = vec![rcmd!["DEL", key.clone()]];
    cmds.extend(add_cmds(&key, form, msgs));
    cmds.push(rcmd!["HSET", k.meta(c), "sb", form.mark()]);
    (cmds, form)
}

/// The messages of a [`SeqForm::Timed`] index's records (every one of
/// them, `rows`), as the messages hash holds them: each with its send time
/// and, in a thread, its root (the record at the root's seq).
fn timed_messages(
    c: &ConversationId,
    rows: &[Indexed],
) -> StoreResult<Vec<(Message, Option<ThreadRoot>)>> {
    let ids: HashMap<Seq, MessageId> = rows.iter().map(|m| (m.seq, m.id)).collect();
    rows.iter()
        .map(|m| {
            let sent_at = m
                .sent_at
                .ok_or_else(|| corrupt("seq index: a record without its time"))?;
            let thread = match m.thread {
                None => None,
                Some(seq) => Some(ThreadRoot {
                    id: *ids
                        .get(&seq)
                        .ok_or_else(|| corrupt("seq index: a thread without its root"))?,
                    seq,
                }),
            };
            let msg = Message {
                id: m.id,
                conversation: *c,
                seq: m.seq,
                sender: m.sender,
                sent_at,
            };
            Ok((msg, thread))
        })
        .collect()
}

impl Inner {
    /// `(seq, id, sender)` for seqs in `lo..=hi`: the members of the buckets
    /// they span, in one read.
    pub(super) async fn between(
        &self,
        c: &ConversationId,
        lo: Seq,
        hi: Seq,
    ) -> StoreResult<Vec<Indexed>> {
        if lo > hi {
            return Ok(Vec::new());
        }
        let rows: Vec<(Vec<u8>, f64)> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.seq_buckets(c))
                    .arg(bucket_start(lo))
                    .arg(bucket_end(hi))
                    .arg("WITHSCORES"),
            )
            .await?;
        parse_rows(&rows, lo, hi)
    }

    /// The highest registered seq of `c` (0 without messages): in its last
    /// member (in either form, no member holds a higher seq than a member
    /// scored after it).
    pub(super) async fn last_seq(&self, c: &ConversationId) -> StoreResult<Seq> {
        let rows: Vec<(Vec<u8>, f64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys.seq_buckets(c))
                    .arg(-1)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        Ok(parse_rows(&rows, 0, Seq::MAX)?.last().map_or(0, |m| m.seq))
    }

    /// The highest seq of `c`'s main timeline: the seq index from its end,
    /// past any thread messages there.
    pub(super) async fn last_main_seq(&self, c: &ConversationId) -> StoreResult<Seq> {
        const PAGE: i64 = 16;
        let mut from = 0i64;
        loop {
            let rows: Vec<(Vec<u8>, f64)> = self
                .query(
                    redis::cmd("ZREVRANGE")
                        .arg(self.keys.seq_buckets(c))
                        .arg(from)
                        .arg(from + PAGE - 1)
                        .arg("WITHSCORES"),
                )
                .await?;
            let msgs = parse_rows(&rows, 0, Seq::MAX)?;
            if let Some(m) = msgs.iter().rev().find(|m| m.thread.is_none()) {
                return Ok(m.seq);
            }
            if rows.len() < PAGE as usize {
                return Ok(0);
            }
            from += PAGE;
        }
    }

    /// The members of the buckets `seqs` fall in, as read (a batch of
    /// nearly consecutive seqs is one range read, others one read per
    /// bucket, pipelined), and with `count` how many members the index has,
    /// in the same round trip.
    pub(super) async fn seq_buckets_at(
        &self,
        c: &ConversationId,
        seqs: &[Seq],
        count: bool,
    ) -> StoreResult<SeqBuckets> {
        let mut out = SeqBuckets::default();
        let starts: BTreeSet<Seq> = seqs.iter().map(|s| bucket_start(*s)).collect();
        let (Some(&lo), Some(&hi)) = (starts.first(), starts.last()) else {
            return Ok(out);
        };
        let key = self.keys.seq_buckets(c);
        let mut p = redis::pipe();
        let ranges = if (hi - lo) / SEQ_BUCKET < 4u64.saturating_mul(starts.len() as u64) {
            vec![(lo, bucket_end(hi))]
        } else {
            starts.iter().map(|s| (*s, bucket_end(*s))).collect()
        };
        for (from, to) in &ranges {
            p.cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(*from)
                .arg(*to)
                .arg("WITHSCORES");
        }
        if count {
            p.cmd("ZCARD").arg(&key);
        }
        let mut replies: Vec<Value> = self.pipe(&p).await?;
        if count {
            let n = replies.pop().ok_or_else(|| corrupt("seq index count"))?;
            out.count = usize::from_redis_value(n).map_err(|_| corrupt("seq index count"))?;
        }
        for reply in replies {
            let rows: Vec<(Vec<u8>, f64)> =
                FromRedisValue::from_redis_value(reply).map_err(|_| corrupt("seq index"))?;
            for (value, score) in rows {
                out.insert(score as Seq, value)?;
            }
        }
        Ok(out)
    }

    /// The ids at `seqs` (absent where none is registered).
    pub(super) async fn ids_at(
        &self,
        c: &ConversationId,
        seqs: &[Seq],
    ) -> StoreResult<HashMap<Seq, MessageId>> {
        Ok(self.seq_buckets_at(c, seqs, false).await?.taken)
    }

    /// The writes that register `fresh` (with their threads) in `view`'s
    /// seq index and messages hash, given what [`Self::seq_buckets_at`]
    /// read of the index (with the count, for an index of singles):
    /// appended to a packed index's buckets; added one per member while the
    /// index stays within [`SINGLES_MAX`] (with their send times and no
    /// messages hash in a [`SeqForm::Timed`] one); else the whole index
    /// (read now, under the same version) written again packed, and, for a
    /// timed one, the messages hash written with every message it held.
    pub(super) async fn seq_writes(
        &self,
        view: &View,
        read: &SeqBuckets,
        fresh: &[(Message, Option<ThreadRoot>)],
    ) -> StoreResult<Vec<Vec<Vec<u8>>>> {
        let (k, c) = (&self.keys, &view.c);
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let held = |b: &[u8]| view.bucket_bytes.get(b).copied().unwrap_or(0);
        let timed = view.seq_form == SeqForm::Timed;
        let mut cmds = Vec::new();
        let mut hashed = Vec::new();
        // A timed index takes messages its Lua reader reads exactly (a
        // thread's root is an earlier message of the index); else packed.
        let fits = read.count + fresh.len() <= SINGLES_MAX
            && (!timed || entries(fresh, true).iter().all(exact));
        if view.seq_form == SeqForm::Packed {
            cmds.extend(read.append_cmd(k.seq_buckets(c), entries(fresh, false)));
        } else if fits {
            cmds.extend(add_cmds(
                &k.seq_buckets(c),
                view.seq_form,
                entries(fresh, timed),
            ));
            if timed {
                return Ok(cmds);
            }
        } else {
            let rows = self.whole(&k.seq_buckets(c)).await?;
            let old = parse_rows(&rows, 0, Seq::MAX)?;
            if timed {
                hashed = timed_messages(c, &old)?;
            }
            let mut all: Vec<Entry> = old
                .into_iter()
                .map(|m| (m.seq, m.id, m.sender, m.thread, None))
                .collect();
            all.extend(entries(fresh, false));
            let key = k.seq_buckets(c);
            cmds.push(rcmd!["DEL", key.clone()]);
            cmds.extend(add_cmds(&key, SeqForm::Packed, all));
            cmds.push(rcmd!["HSET", k.meta(c), "sb", SeqForm::Packed.mark()]);
        }
        hashed.extend_from_slice(fresh);
        cmds.extend(load::message_cmds(
            k,
            c,
            keys::message_writes(&hashed, held),
        ));
        Ok(cmds)
    }

    /// Every member of the sorted set `key`, with its score.
    async fn whole(&self, key: &str) -> StoreResult<Vec<(Vec<u8>, f64)>> {
        self.query(
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
        .await
    }

    /// [`Self::pack_seq_index`] for a reader that starts from no view (the
    /// delivery runs' re-warm): one `HMGET`, and the view only when the
    /// index is still `sq`.
    pub(super) async fn ensure_seq_form(&self, c: &ConversationId) -> StoreResult<()> {
        let (n, sb): (Option<u64>, Option<Vec<u8>>) = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.keys.meta(c))
                    .arg("n")
                    .arg("sb"),
            )
            .await?;
        if n.is_some() && sb.is_none() {
            self.view(c).await?;
        }
        Ok(())
    }

    /// Writes a conversation's seq index as it was before `sb` (`sq`, a
    /// member per message) into [`Keys::seq_buckets`], marks the meta hash
    /// (`sb`) and deletes `sq`, in one commit at `view`'s version. `false`:
    /// the conversation changed under it (the caller views it again).
    pub(super) async fn pack_seq_index(&self, view: &View) -> StoreResult<bool> {
        let (k, c) = (&self.keys, &view.c);
        let rows = self.whole(&k.legacy_seqs(c)).await?;
        let mut msgs = Vec::with_capacity(rows.len());
        for (member, score) in &rows {
            let (id, sender, thread) =
                keys::parse_seq_member(member).ok_or_else(|| corrupt("seq index"))?;
            // No send time: the messages hash stays.
            msgs.push((*score as Seq, id, sender, thread, None));
        }
        tracing::debug!(conversation = %c, messages = msgs.len(), "writing the seq index again");
        let mut plan = Plan::default();
        let written = !msgs.is_empty();
        plan.cmds.extend(fill_cmds(k, c, msgs).0);
        // The meta hash's `e` may mark `sb` as carrying an expiry (a node of
        // this release wrote it before the key was lost): a key created by
        // adds alone would then keep none. An EXPIRE is not an add, so the
        // commit sets the key's mark from it.
        if written {
            plan.cmds
                .push(rcmd!["EXPIRE", k.seq_buckets(c), self.ttl()]);
        }
        plan.cmds.push(rcmd!["DEL", k.legacy_seqs(c)]);
        self.commit(view, plan).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: Seq, thread: Option<Seq>) -> Entry {
        (seq, Uuid::now_v7(), Uuid::new_v4(), thread, None)
    }

    fn timed(seq: Seq, thread: Option<Seq>, at: Millis) -> Entry {
        (seq, Uuid::now_v7(), Uuid::new_v4(), thread, Some(at))
    }

    fn records(msgs: &[Entry]) -> Vec<u8> {
        msgs.iter()
            .flat_map(|(s, m, u, t, at)| record(*s, m, u, *t, *at))
            .collect()
    }

    /// `(seq, id, sender, thread, sent_at)` of parsed rows.
    fn parsed(rows: &[(Vec<u8>, f64)]) -> Vec<Entry> {
        parse_rows(rows, 0, Seq::MAX)
            .unwrap()
            .iter()
            .map(|m| (m.seq, m.id, m.sender, m.thread, m.sent_at))
            .collect()
    }

    /// The `(member, score)` pairs of `ZADD` commands.
    fn added(cmds: &[Vec<Vec<u8>>]) -> Vec<(Vec<u8>, f64)> {
        cmds.iter()
            .filter(|c| c[0] == b"ZADD")
            .flat_map(|c| {
                c[2..]
                    .chunks(2)
                    .map(|p| {
                        (
                            p[1].clone(),
                            String::from_utf8_lossy(&p[0]).parse().unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_member_holds_records_of_its_scores_bucket_in_any_order_and_rows_come_back_by_seq() {
        let a = [msg(130, None), msg(128, Some(5)), msg(191, None)];
        let b = [msg(192, Some(130)), msg(255, None)];
        let value = records(&a);
        assert_eq!(value.len(), 33 + 41 + 33);
        // Packed (scored by the bucket's start) or a single record (scored
        // by its seq): the same bucket.
        let got: Vec<_> = parse_member(128, &value)
            .unwrap()
            .iter()
            .map(|m| (m.seq, m.id, m.sender, m.thread, m.sent_at))
            .collect();
        assert_eq!(got, a.to_vec());
        let single = records(&b[1..]);
        assert_eq!(parse_member(255, &single).unwrap()[0].seq, 255);
        let rows = vec![(value, 128.0), (records(&b[..1]), 192.0), (single, 255.0)];
        let seqs: Vec<Seq> = parse_rows(&rows, 129, 192)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, [130, 191, 192]);
        assert_eq!(parsed(&rows).len(), 5);
        // Cut short, a member is corrupt, not fewer messages.
        let cut = &rows[0].0[..40];
        assert!(parse_member(128, cut).is_none());
        assert!(parse_rows(&[(cut.to_vec(), 128.0)], 0, Seq::MAX).is_err());
        assert_eq!((bucket_start(191), bucket_end(128)), (128, 191));
        assert_eq!(bucket_end(Seq::MAX), Seq::MAX);
    }

    #[test]
    fn an_append_names_each_bucket_with_what_it_held() {
        let held = [msg(64, None)];
        let mut read = SeqBuckets::default();
        read.insert(64, records(&held)).unwrap();
        assert_eq!(read.taken.get(&64), Some(&held[0].1));
        let fresh = [msg(65, None), msg(127, Some(64)), msg(128, None)];
        let cmd = read.append_cmd("k".into(), fresh.to_vec()).unwrap();
        assert_eq!(cmd[0], b"ZAPPEND");
        assert_eq!(cmd[1], b"k");
        assert_eq!(cmd[2], b"64");
        assert_eq!(cmd[3], records(&held));
        assert_eq!(cmd[4], records(&fresh[..2]));
        assert_eq!(cmd[5], b"128");
        assert!(cmd[6].is_empty(), "bucket 128.. held nothing");
        assert_eq!(cmd[7], records(&fresh[2..]));
        assert_eq!(cmd.len(), 8);
        assert!(read.append_cmd("k".into(), Vec::new()).is_none());
    }

    #[test]
    fn a_whole_index_is_one_record_per_member_up_to_the_listpack_size_then_packed() {
        let k = Keys::new("t");
        let c = Uuid::now_v7();
        for (n, members, mark) in [(0, 0, b"3"), (128, 128, b"1"), (200, 4, b"2")] {
            let all: Vec<Entry> = (1..=n).map(|s| msg(s, None)).collect();
            let (cmds, form) = fill_cmds(&k, &c, all.clone());
            assert_eq!(form.mark().to_string().as_bytes(), mark);
            assert_eq!(cmds[0], rcmd!["DEL", k.seq_buckets(&c)]);
            let last = cmds.last().unwrap();
            assert_eq!(last[..3], rcmd!["HSET", k.meta(&c), "sb"][..]);
            assert_eq!(&last[3], mark);
            let rows = added(&cmds);
            assert_eq!(rows.len(), members, "{n} messages");
            assert!(rows.iter().all(|(v, _)| v.len() <= 64) || n > SINGLES_MAX as u64);
            assert_eq!(parsed(&rows), all);
        }
        // With their send times, up to the listpack size: timed singles
        // (and no messages hash); past it, packed without them.
        for (n, mark) in [(128u64, b"3"), (129, b"2")] {
            let all: Vec<Entry> = (1..=n).map(|s| timed(s, None, 1_700_000_000_000)).collect();
            let (cmds, form) = fill_cmds(&k, &c, all.clone());
            assert_eq!(form.mark().to_string().as_bytes(), mark);
            let got = parsed(&added(&cmds));
            assert_eq!(got.len(), n as usize);
            let times: Vec<Option<Millis>> = got.iter().map(|e| e.4).collect();
            match form {
                SeqForm::Timed => assert_eq!(got, all),
                _ => assert!(times.iter().all(Option::is_none)),
            }
        }
    }

    #[test]
    fn a_timed_record_carries_its_send_time_after_the_rest_and_keeps_its_seq() {
        let at = 1_764_755_000_123;
        let msgs = [
            timed(63, None, at),
            timed(64, Some(63), at + 1),
            timed(65, None, 0),
            timed(66, Some(1), -5),
            msg(67, None),
        ];
        // Relative to the id's minting: a byte for the ids minted now; a
        // time of this century is 6 bytes on its own (an id not UUIDv7).
        let minted = time_base(&msgs[0].1);
        assert!(minted > 1_764_000_000_000, "{minted}");
        let now = record(63, &msgs[0].1, &msgs[0].2, None, Some(minted + 5));
        assert_eq!(now.len(), 33 + 1);
        assert_eq!(now[0], 63 | TIMED);
        let v4 = Uuid::new_v4();
        assert_eq!(time_base(&v4), 0);
        let one = record(63, &v4, &msgs[0].2, None, Some(at));
        assert_eq!(one.len(), 33 + 6);
        assert_eq!(one[33..], super::enc(&at)[..]);
        let one_back = parse_member(63, &one).unwrap();
        assert_eq!((one_back[0].id, one_back[0].sent_at), (v4, Some(at)));
        let two = records(&msgs[1..2]);
        assert_eq!(two[0], IN_THREAD | TIMED);
        // Several in one member (a packed index never writes them, but a
        // reader needs no form), each found whole.
        let value = records(&msgs[1..]);
        let got: Vec<Entry> = parse_member(64, &value)
            .unwrap()
            .iter()
            .map(|m| (m.seq, m.id, m.sender, m.thread, m.sent_at))
            .collect();
        assert_eq!(got, msgs[1..].to_vec());
        assert_eq!(parse_member(63, &one).unwrap()[0].seq, 63);
        // Cut inside the time: corrupt.
        assert!(parse_member(63, &one[..37]).is_none());
    }

    #[test]
    fn a_whole_index_is_timed_only_when_its_lua_reader_reads_it_exactly() {
        let k = Keys::new("t");
        let c = Uuid::now_v7();
        let at = 1_764_755_000_000;
        let form = |msgs: Vec<Entry>| fill_cmds(&k, &c, msgs).1;
        let ok = vec![timed(1, None, at), timed(2, Some(1), at)];
        assert_eq!(form(ok.clone()), SeqForm::Timed);
        assert_eq!(form(Vec::new()), SeqForm::Timed, "nothing to look up");
        // A reply whose root a re-warm lacks (Scylla's retention dropped
        // the root's row before its reply's).
        assert_eq!(form(vec![timed(2, Some(1), at)]), SeqForm::Singles);
        // A seq or a root's seq past 2^53, a time past 2^50 ms or before 0.
        for bad in [
            timed(1 << 53, None, at),
            timed(5, Some(1 << 53), at),
            timed(3, None, 1 << 50),
            timed(3, None, -1),
            msg(3, None),
        ] {
            let mut msgs = ok.clone();
            msgs.push(bad);
            assert_eq!(form(msgs), SeqForm::Singles, "{bad:?}");
        }
        assert!(exact(&timed((1 << 53) - 1, None, (1 << 50) - 1)));
        assert!(exact(&timed(7, Some((1 << 53) - 1), 0)));
    }

    /// `scripts::MESSAGES_AT` makes a message's messages-hash value from
    /// its timed record, byte for byte: the seq's varint, 16 and the
    /// sender (a postcard `Uuid`), the time (its base added back, as a
    /// postcard `i64`), then for a thread message the root's id and seq.
    #[test]
    fn a_timed_record_holds_the_messages_hash_value_after_its_seq() {
        let c = Uuid::now_v7();
        for (seq, thread, id) in [
            (1, None, Uuid::now_v7()),
            (300, None, Uuid::new_v4()),
            (70_000, Some(5), Uuid::now_v7()),
        ] {
            let m = Message {
                id,
                conversation: c,
                seq,
                sender: Uuid::new_v4(),
                sent_at: 1_764_755_000_123,
            };
            let root = thread.map(|seq| ThreadRoot {
                id: Uuid::now_v7(),
                seq,
            });
            let r = record(seq, &m.id, &m.sender, thread, Some(m.sent_at));
            let time_at = if thread.is_some() { 41 } else { 33 };
            let mut made = super::enc(&seq);
            made.push(16);
            made.extend_from_slice(&r[17..33]);
            let (delta, rest) = postcard::take_from_bytes::<Millis>(&r[time_at..]).unwrap();
            assert!(rest.is_empty());
            made.extend_from_slice(&super::enc(&(delta + time_base(&m.id))));
            if let Some(root) = root {
                made.extend_from_slice(root.id.as_bytes());
                made.extend_from_slice(&root.seq.to_be_bytes());
            }
            assert_eq!(made, keys::message_value(&m, root), "seq {seq}");
        }
    }
}
