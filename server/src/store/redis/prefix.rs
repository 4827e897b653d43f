//! Delivered prefixes: what lets a count take "delivered" from one `ZCOUNT`
//! (docs/storage.md, "Counting reads"; docs/model.md, "Counts in O(log n)").
//!
//! A simple member's score in `tz` ([`Keys::prefixes`]) is a seq up to which
//! it has every main-timeline message it receives: each is delivered (a run
//! covers it), read (the watermark covers it), or its own. A member with a
//! delivery past its prefix is in the gapped set `gz` ([`Keys::gapped`]),
//! scored by the highest seq delivered past it, and only those are counted
//! one by one, for the seqs between. What moves a prefix is `domain`'s
//! ([`domain::advance_delivered`], [`domain::prefix_after_late`]); this file
//! reads the facts those need and writes what they decide:
//!
//! - a read raises the prefix to the watermark (`index_read`, `ZADD GT`);
//! - a delivery walks it over the first messages after it
//!   ([`PREFIX_WALK`], read with the delivery's view);
//! - a message registered late below a prefix that it does not cover ends
//!   the prefix before it;
//! - a member whose prefix reaches its gapped score (by a read or a later
//!   delivery) leaves `gz` in the commit of the next window summary that
//!   counts it (`window.rs`); no write path reads `gz`.
//!
//! A prefix may stay short of what the member has (a walk that stopped at
//! the end of what it read); it never passes what it has not had. Thread
//! messages are passed over: their counts come from the thread positions.
//! Deliveries in a direct chat (whose counts read both members) do not walk
//! prefixes; when it becomes a group its gapped set is built again by the
//! first count, as for a re-warmed conversation ([`Inner::build_gapped`]).

use super::*;
use crate::domain::{Later, Run};

/// How many seq-index entries after a member's delivered prefix a delivery
/// walks to move it (of the two buckets it reads) (`domain::advance_delivered`): enough to pass the
/// member's own messages between two it receives; a prefix that stops short
/// only costs that member being counted one by one until its next read.
pub const PREFIX_WALK: usize = 16;

/// The first [`PREFIX_WALK`] messages after `prefix`, from the seq index's
/// members in the two buckets from its next seq's (at least 64 seqs).
pub(super) fn later(rows: &[(Vec<u8>, f64)], prefix: Seq) -> StoreResult<Vec<Later>> {
    Ok(seqs::parse_rows(rows, prefix.saturating_add(1), Seq::MAX)?
        .into_iter()
        .take(PREFIX_WALK)
        .map(|m| Later {
            seq: m.seq,
            sender: m.sender,
            in_thread: m.thread.is_some(),
        })
        .collect())
}

/// A sorted-set score as a seq.
pub(super) fn seq_score(s: Option<f64>) -> Option<Seq> {
    s.map(|s| s.max(0.0) as Seq)
}

impl Inner {
    /// Loads `u`'s prefix facts into `view`, unless its view script did.
    pub(super) async fn ensure_prefix(&self, view: &mut View, u: &UserId) -> StoreResult<()> {
        if view.prefix.is_some() {
            return Ok(());
        }
        let (k, c) = (&self.keys, &view.c);
        let mut cmd = redis::cmd("ZSCORE");
        cmd.arg(k.prefixes(c)).arg(hex(u));
        let prefix = seq_score(self.query(&cmd).await?);
        let after = match prefix {
            Some(d) => {
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                let start = seqs::bucket_start(d.saturating_add(1));
                cmd.arg(k.seq_buckets(c))
                    .arg(start)
                    .arg(start.saturating_add(2 * seqs::SEQ_BUCKET - 1))
                    .arg("WITHSCORES");
                let rows: Vec<(Vec<u8>, f64)> = self.query(&cmd).await?;
                later(&rows, d)?
            }
            None => Vec::new(),
        };
        view.prefix = Some(PrefixFacts { prefix, after });
        Ok(())
    }

    /// The prefix entries a delivery by `u` changes, once its runs are in
    /// `view` (`top`: the highest seq it delivered): the prefix, walked
    /// forward, and the gapped score if it delivered past where the walk
    /// ended (`GT`: it only rises). A member whose walk passed its gapped
    /// score is left in the set for the next window summary to take out
    /// ([`Inner::aggregates`]): reading the score here would cost every
    /// delivery a command. Needs [`Self::ensure_prefix`].
    pub(super) fn prefix_cmds(&self, view: &View, u: &UserId, top: Seq) -> Vec<Vec<Vec<u8>>> {
        let Some(PrefixFacts {
            prefix: Some(d),
            after,
        }) = &view.prefix
        else {
            return Vec::new();
        };
        let (k, c, member) = (&self.keys, &view.c, hex(u));
        let moved =
            domain::advance_delivered(*u, *d, after, |s| view.runs.covering(u, s).map(|r| r.last));
        let mut cmds = Vec::new();
        if moved > *d {
            cmds.push(rcmd!["ZADD", k.prefixes(c), "GT", moved, member.clone()]);
        }
        if top > moved {
            cmds.push(rcmd!["ZADD", k.gapped(c), "GT", top, member]);
        }
        cmds
    }

    /// Main-timeline messages registered late (`late`: seq and sender,
    /// below the last registered): each simple member whose prefix covers
    /// one it did not have gets its prefix ended before it, and joins the
    /// gapped set with its old prefix (what it had past the new one is at
    /// most that). One read of the members whose prefix reaches the lowest
    /// (a late registration already visits every member's runs there).
    pub(super) async fn prefixes_after_late(
        &self,
        view: &View,
        plan: &mut Plan,
        late: &[(Seq, UserId)],
    ) -> StoreResult<()> {
        let Some(low) = late.iter().map(|(s, _)| *s).min() else {
            return Ok(());
        };
        let (k, c) = (&self.keys, &view.c);
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(k.prefixes(c))
            .arg(low)
            .arg("+inf")
            .arg("WITHSCORES");
        let rows: Vec<(String, f64)> = self.query(&cmd).await?;
        for (member, d) in rows {
            let u = parse_uuid(&member)?;
            let Some(from) = view.members.get(&u).and_then(simple_join) else {
                continue;
            };
            let d = d.max(0.0) as Seq;
            let ended = domain::prefix_after_late(u, d, from, view.wm(&u).seq, late);
            if ended < d {
                plan.cmds
                    .push(rcmd!["ZADD", k.prefixes(c), "XX", ended, member.clone()]);
                plan.cmds.push(rcmd!["ZADD", k.gapped(c), "GT", d, member]);
            }
        }
        Ok(())
    }

    /// Builds the gapped set of a conversation whose keys were written
    /// before it existed, or re-warmed (the meta hash has no `dp`): every
    /// simple member whose runs reach past its prefix. At version `ver`, so
    /// that no write lands between the read and the set; on a conflict the
    /// next count builds it again.
    pub(super) async fn build_gapped(&self, c: &ConversationId, ver: u64) -> StoreResult<()> {
        let k = &self.keys;
        let fields: Vec<(Vec<u8>, Vec<u8>)> = {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(k.runs(c));
            self.query(&cmd).await?
        };
        let mut top: BTreeMap<UserId, Seq> = BTreeMap::new();
        for (f, v) in fields {
            let Some(user) = f.get(..16).and_then(|b| Uuid::from_slice(b).ok()) else {
                continue; // `_`
            };
            let runs: Vec<Run> = dec(&v, "delivery runs")?;
            if let Some(last) = runs.iter().map(|r| r.last).max() {
                let t = top.entry(user).or_default();
                *t = (*t).max(last);
            }
        }
        let users: Vec<(UserId, Seq)> = top.into_iter().collect();
        let mut cmds = Vec::new();
        for chunk in users.chunks(1000) {
            let mut cmd = redis::cmd("ZMSCORE");
            cmd.arg(k.prefixes(c));
            for (u, _) in chunk {
                cmd.arg(hex(u));
            }
            let prefixes: Vec<Option<f64>> = self.query(&cmd).await?;
            for ((u, t), d) in chunk.iter().zip(prefixes) {
                if seq_score(d).is_some_and(|d| d < *t) {
                    cmds.push(rcmd!["ZADD", k.gapped(c), "GT", *t, hex(u)]);
                }
            }
        }
        cmds.push(rcmd!["HSET", k.meta(c), "dp", 1u64]);
        self.apply(c, ver, Registration::None, cmds, 0, &[])
            .await
            .map(|_| ())
    }
}
