//! Threads on the production tier: reading a conversation's thread index,
//! members' positions in threads and their histories (docs/storage.md,
//! "Threads"). What is written is in `commit.rs` and `store.rs`, as for the
//! main timeline.

use super::load::{View, count_unread, parse_watermark};
use super::*;

impl Inner {
    /// Loads `users`' positions in the thread under `root` (0 where none).
    pub(super) async fn ensure_thread_positions(
        &self,
        view: &mut View,
        root: Seq,
        users: &[UserId],
    ) -> StoreResult<()> {
        let missing: Vec<UserId> = users
            .iter()
            .filter(|u| !view.twms.contains_key(&(root, **u)))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.thread_positions(&view.c));
        for u in &missing {
            cmd.arg(thread_position_field(u, root));
        }
        let values: Vec<Option<String>> = self.query(&cmd).await?;
        for (u, v) in missing.into_iter().zip(values) {
            let wm = v.as_deref().map(parse_watermark).transpose()?;
            view.twms.insert((root, u), wm.unwrap_or_default());
        }
        Ok(())
    }

    /// Loads `users`' positions in the thread under `root` and their
    /// histories in it from `min_seq` on (as [`Self::ensure_history`] does
    /// for the main timeline).
    pub(super) async fn ensure_thread_reads(
        &self,
        view: &mut View,
        root: Seq,
        users: &[UserId],
        min_seq: Seq,
    ) -> StoreResult<()> {
        self.ensure_thread_positions(view, root, users).await?;
        self.ensure_timeline_history(view, root, users, min_seq)
            .await
    }

    /// The messages of the thread under `root` with seqs in `lo..=hi`, in
    /// seq order (from the thread index).
    pub(super) async fn thread_between(
        &self,
        c: &ConversationId,
        root: Seq,
        lo: Seq,
        hi: Seq,
    ) -> StoreResult<Vec<Indexed>> {
        if lo > hi {
            return Ok(Vec::new());
        }
        let bound = |seq: Seq| {
            let mut b = b"[".to_vec();
            b.extend_from_slice(&root.to_be_bytes());
            b.extend_from_slice(&seq.to_be_bytes());
            b
        };
        let mut hi_bound = bound(hi);
        hi_bound.extend_from_slice(&[0xff; 32]);
        let rows: Vec<Vec<u8>> = self
            .query(
                redis::cmd("ZRANGEBYLEX")
                    .arg(self.keys.thread_messages(c))
                    .arg(bound(lo))
                    .arg(hi_bound),
            )
            .await?;
        rows.iter().map(|e| parse_thread_row(e)).collect()
    }

    /// Every thread of `c` with its messages, highest root first (the whole
    /// thread index: O(thread messages)), and the roots' ids.
    pub(super) async fn threads_of(
        &self,
        c: &ConversationId,
    ) -> StoreResult<Vec<(ThreadRoot, Vec<Indexed>)>> {
        let rows: Vec<Vec<u8>> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys.thread_messages(c))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        let mut threads: Vec<(Seq, Vec<Indexed>)> = Vec::new();
        for e in &rows {
            let m = parse_thread_row(e)?;
            let root = m.thread.unwrap_or_default();
            match threads.last_mut() {
                Some((r, msgs)) if *r == root => msgs.push(m),
                _ => threads.push((root, vec![m])),
            }
        }
        threads.reverse();
        // The roots' ids, from the seq index.
        let roots: Vec<Seq> = threads.iter().map(|(root, _)| *root).collect();
        let ids = self.ids_at(c, &roots).await?;
        let mut out = Vec::with_capacity(threads.len());
        for (root, msgs) in threads {
            let id = *ids.get(&root).ok_or_else(|| corrupt("thread root"))?;
            out.push((ThreadRoot { id, seq: root }, msgs));
        }
        Ok(out)
    }

    /// `u`'s unread counts in every thread of `view`'s conversation (highest
    /// root first; none without threads), its positions loaded into the
    /// view.
    pub(super) async fn unread_by_timeline(
        &self,
        view: &mut View,
        u: &UserId,
        membership: &Membership,
    ) -> StoreResult<Vec<crate::store::ThreadUnread>> {
        if !view.has_threads {
            return Ok(Vec::new());
        }
        // The thread index is read once per view (a write's several reads
        // of timelines share it), and the positions the view lacks in one
        // HMGET; a position the view holds may be one this write moved.
        if view.thread_index.is_none() {
            view.thread_index = Some(self.threads_of(&view.c).await?);
        }
        let threads = view.thread_index.clone().unwrap_or_default();
        let missing: Vec<Seq> = threads
            .iter()
            .map(|(root, _)| root.seq)
            .filter(|root| !view.twms.contains_key(&(*root, *u)))
            .collect();
        if !missing.is_empty() {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys.thread_positions(&view.c));
            for root in &missing {
                cmd.arg(thread_position_field(u, *root));
            }
            let positions: Vec<Option<String>> = self.query(&cmd).await?;
            for (root, pos) in missing.into_iter().zip(positions) {
                let pos = pos.as_deref().map(parse_watermark).transpose()?;
                view.twms.insert((root, *u), pos.unwrap_or_default());
            }
        }
        let mut out = Vec::with_capacity(threads.len());
        for (root, msgs) in threads {
            let pos = view.position(u, root.seq);
            let after: Vec<Indexed> = msgs.iter().filter(|m| m.seq > pos.seq).copied().collect();
            out.push(crate::store::ThreadUnread {
                root: root.id,
                unread: count_unread(&after, u, membership, Some(root.seq)),
                read_up_to: pos.seq,
                last_seq: msgs.last().map_or(0, |m| m.seq),
            });
        }
        Ok(out)
    }
}

/// A thread-index entry as an [`Indexed`].
fn parse_thread_row(e: &[u8]) -> StoreResult<Indexed> {
    let (root, seq, id, sender) =
        keys::parse_thread_member(e).ok_or_else(|| corrupt("thread index"))?;
    Ok(Indexed {
        seq,
        id,
        sender,
        thread: Some(root),
        sent_at: None,
    })
}

/// A [`Keys::thread_positions`] field: `<hex user>:<root seq>`.
pub(super) fn thread_position_field(u: &UserId, root: Seq) -> String {
    format!("{}:{root}", hex(u))
}
