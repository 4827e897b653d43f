//! Threads on the embedded store: which messages are in which thread, and a
//! member's position and unread counts per timeline (docs/semantics.md,
//! "Threads"). Positions and histories live in the main timeline's tables
//! under each thread's scope ([`scope`]).

use super::tables::*;
use super::*;

impl<T: ReadableTable<Bytes, Bytes>> Tables<T> {
    /// The thread of the message at `seq` of `c` (`None`: the main timeline).
    pub(super) fn thread_of(
        &self,
        c: &ConversationId,
        seq: Seq,
    ) -> StoreResult<Option<ThreadRoot>> {
        Ok(get_bytes(&self.thread_of, &k_seq(c, seq))?.map(|b| thread_root(&b)))
    }

    /// The thread messages of `c` at seqs in `lo..=hi`, with their threads
    /// (one range scan; the seqs of `lo..=hi` without an entry are in the
    /// main timeline).
    pub(super) fn threads_between(
        &self,
        c: &ConversationId,
        lo: Seq,
        hi: Seq,
    ) -> StoreResult<HashMap<Seq, ThreadRoot>> {
        let mut out = HashMap::new();
        if lo > hi {
            return Ok(out);
        }
        let (lo, hi) = (k_seq(c, lo), k_seq(c, hi));
        for entry in self
            .thread_of
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            out.insert(u64_at(k.value(), 16), thread_root(v.value()));
        }
        Ok(out)
    }

    /// The threads of `c`, highest root first.
    pub(super) fn threads(&self, c: &ConversationId) -> StoreResult<Vec<ThreadRoot>> {
        let (lo, hi) = (k_seq(c, 0), k_seq(c, u64::MAX));
        let mut out = Vec::new();
        for entry in self
            .thread_roots
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
            .rev()
        {
            let (k, v) = entry.map_err(storage)?;
            out.push(ThreadRoot {
                seq: u64_at(k.value(), 16),
                id: uuid_at(v.value(), 0),
            });
        }
        Ok(out)
    }

    /// `u`'s read position in `timeline` of `c`.
    pub(super) fn position(
        &self,
        c: &ConversationId,
        u: &UserId,
        timeline: domain::Timeline,
    ) -> StoreResult<ReadWatermark> {
        self.watermark(&scope(c, timeline), u)
    }

    /// The highest seq registered in `timeline` of `c`.
    pub(super) fn last_in(
        &self,
        c: &ConversationId,
        timeline: domain::Timeline,
    ) -> StoreResult<Seq> {
        if timeline == domain::MAIN {
            // The last registered seq not in a thread: rows hold consecutive
            // seqs, so this walks back over trailing thread messages only.
            let (lo, hi) = (k_seq(c, 0), k_seq(c, u64::MAX));
            for entry in self
                .conv_msgs
                .range(lo.as_slice()..=hi.as_slice())
                .map_err(storage)?
                .rev()
            {
                let (k, v) = entry.map_err(storage)?;
                let row = Registered::of(k.value(), v.value())?;
                for seq in (row.first..=row.last).rev() {
                    if get_bytes(&self.thread_of, &k_seq(c, seq))?.is_none() {
                        return Ok(seq);
                    }
                }
            }
            return Ok(0);
        }
        let s = scope(c, timeline);
        let (lo, hi) = (k_seq(&s, 0), k_seq(&s, u64::MAX));
        let last = self
            .thread_msgs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
            .next_back();
        match last {
            Some(entry) => Ok(u64_at(entry.map_err(storage)?.0.value(), 16)),
            None => Ok(0),
        }
    }

    /// Messages of `timeline` of `c` that others sent after `pos` while
    /// `membership` covered them.
    pub(super) fn unread_in(
        &self,
        c: &ConversationId,
        u: &UserId,
        timeline: domain::Timeline,
        pos: Seq,
        membership: &Membership,
    ) -> StoreResult<u64> {
        let counts =
            |seq: Seq, sender: UserId| sender != *u && membership.receives(*u, sender, seq);
        if timeline == domain::MAIN {
            // Every message after the position, less those in threads.
            let all = self.unread(c, u, pos, membership)?;
            let (lo, hi) = (k_seq(c, pos.saturating_add(1)), k_seq(c, u64::MAX));
            let mut in_threads = 0;
            for entry in self
                .thread_of
                .range(lo.as_slice()..=hi.as_slice())
                .map_err(storage)?
            {
                let (k, v) = entry.map_err(storage)?;
                in_threads += u64::from(counts(u64_at(k.value(), 16), uuid_at(v.value(), 24)));
            }
            return Ok(all.saturating_sub(in_threads));
        }
        let s = scope(c, timeline);
        let (lo, hi) = (k_seq(&s, pos.saturating_add(1)), k_seq(&s, u64::MAX));
        let mut n = 0;
        for entry in self
            .thread_msgs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            n += u64::from(counts(u64_at(k.value(), 16), uuid_at(v.value(), 0)));
        }
        Ok(n)
    }

    /// `u`'s unread counts in `c`: the main timeline's, and each thread's
    /// with its position and last seq (every thread, highest root first).
    pub(super) fn unread_by_timeline(
        &self,
        c: &ConversationId,
        u: &UserId,
        membership: &Membership,
    ) -> StoreResult<(u64, Vec<ThreadUnread>)> {
        let main = self.position(c, u, domain::MAIN)?;
        let main = self.unread_in(c, u, domain::MAIN, main.seq, membership)?;
        let mut threads = Vec::new();
        for root in self.threads(c)? {
            let pos = self.position(c, u, root.seq)?.seq;
            threads.push(ThreadUnread {
                root: root.id,
                unread: self.unread_in(c, u, root.seq, pos, membership)?,
                read_up_to: pos,
                last_seq: self.last_in(c, root.seq)?,
            });
        }
        Ok((main, threads))
    }

    /// `u`'s position in one timeline of `c` (`thread`: `None` for the main
    /// one), with the timeline's and the conversation's unread counts.
    pub(super) fn read_position(
        &self,
        c: &ConversationId,
        u: &UserId,
        thread: Option<ThreadRoot>,
        membership: &Membership,
    ) -> StoreResult<domain::ReadPosition> {
        let timeline = thread.map_or(domain::MAIN, |t| t.seq);
        let (main, threads) = self.unread_by_timeline(c, u, membership)?;
        let unread = match thread {
            None => main,
            Some(t) => threads
                .iter()
                .find(|x| x.root == t.id)
                .map_or(0, |x| x.unread),
        };
        Ok(domain::ReadPosition {
            conversation: *c,
            thread: thread.map(|t| t.id),
            read_up_to: self.position(c, u, timeline)?.seq,
            unread,
            conversation_unread: domain::conversation_unread(
                main,
                threads.iter().map(|t| t.unread),
            ),
        })
    }
}

/// A `thread_of` value: `root seq ‖ root id ‖ sender`.
pub(super) fn thread_of_value(root: &ThreadRoot, sender: &UserId) -> Vec<u8> {
    [
        root.seq.to_be_bytes().as_slice(),
        root.id.as_bytes(),
        sender.as_bytes(),
    ]
    .concat()
}

pub(super) fn thread_root(v: &[u8]) -> ThreadRoot {
    ThreadRoot {
        seq: u64_at(v, 0),
        id: uuid_at(v, 8),
    }
}
