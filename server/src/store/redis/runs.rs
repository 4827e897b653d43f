//! Deliveries as runs in Redis (docs/model.md, docs/storage.md "Redis keys").
//!
//! A conversation's delivery runs live in one hash, `P:{C}:d`, in the
//! conversation's slot and with its lifetime: no key per message. A field is
//! one member's runs in one *bucket* of [`BUCKET`] seqs (`user ‖ bucket`,
//! 20 bytes), and its value lists (postcard) every run of that member that
//! overlaps the bucket, whole: a run over several buckets is listed in each,
//! so the run covering any seq is found by reading one field, and a split
//! knows the run's identity (what Scylla stores). Field `_` marks the hash
//! as loaded from Scylla. What the runs mean, and every rule about them, is
//! `domain`'s ([`Run`], [`domain::runs_of`]).

use super::*;
use crate::domain::Run;

/// Seqs per bucket. A field holds at most the member's runs over this many
/// seqs, so reading the run covering a seq reads a bounded value, and a
/// batch of consecutive messages touches one or two fields.
pub(super) const BUCKET: Seq = 256;

/// The bucket of `seq`.
pub(super) fn bucket(seq: Seq) -> u32 {
    u32::try_from(seq / BUCKET).unwrap_or(u32::MAX)
}

/// The buckets a run (or a span of seqs) overlaps.
pub(super) fn buckets(lo: Seq, hi: Seq) -> std::ops::RangeInclusive<u32> {
    bucket(lo)..=bucket(hi.max(lo))
}

/// The hash field of `u`'s runs in bucket `b`.
pub(super) fn field(u: &UserId, b: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(20);
    f.extend_from_slice(u.as_bytes());
    f.extend_from_slice(&b.to_be_bytes());
    f
}

/// The runs of some members in some buckets, as loaded, and the fields a
/// write changed.
#[derive(Default)]
pub(super) struct RunBuckets {
    loaded: HashMap<(UserId, u32), Vec<Run>>,
    dirty: BTreeSet<(UserId, u32)>,
}

impl RunBuckets {
    /// Whether `u`'s bucket `b` is loaded.
    pub(super) fn has(&self, u: &UserId, b: u32) -> bool {
        self.loaded.contains_key(&(*u, b))
    }

    /// Records what a field holds (`None`: nothing yet).
    pub(super) fn insert(&mut self, u: UserId, b: u32, value: Option<&[u8]>) -> StoreResult<()> {
        let runs = match value {
            Some(v) => dec(v, "delivery runs")?,
            None => Vec::new(),
        };
        self.loaded.insert((u, b), runs);
        Ok(())
    }

    /// The run of `u` that covers `seq`, if its bucket is loaded and one does.
    pub(super) fn covering(&self, u: &UserId, seq: Seq) -> Option<Run> {
        self.loaded
            .get(&(*u, bucket(seq)))?
            .iter()
            .find(|r| r.covers(seq))
            .copied()
    }

    /// When the run covering `seq` became true for `u`.
    pub(super) fn delivered_at(&self, u: &UserId, seq: Seq) -> Option<Millis> {
        self.covering(u, seq).map(|r| r.at)
    }

    /// `u`'s loaded runs that overlap `lo..=hi` (each once).
    pub(super) fn overlapping(&self, u: &UserId, lo: Seq, hi: Seq) -> Vec<Run> {
        let mut out: Vec<Run> = buckets(lo, hi)
            .filter_map(|b| self.loaded.get(&(*u, b)))
            .flatten()
            .filter(|r| r.first <= hi && r.last >= lo)
            .copied()
            .collect();
        out.sort_unstable_by_key(|r| (r.first, r.last, r.at));
        out.dedup();
        out
    }

    /// Adds `run` to every bucket it overlaps (all must be loaded).
    pub(super) fn add(&mut self, u: &UserId, run: Run) -> StoreResult<()> {
        for b in buckets(run.first, run.last) {
            let list = self
                .loaded
                .get_mut(&(*u, b))
                .ok_or_else(|| ServiceError::internal("delivery runs: bucket not loaded"))?;
            list.push(run);
            list.sort_unstable_by_key(|r| r.first);
            self.dirty.insert((*u, b));
        }
        Ok(())
    }

    /// Takes `run` out of every bucket it overlaps (all must be loaded).
    pub(super) fn remove(&mut self, u: &UserId, run: Run) -> StoreResult<()> {
        for b in buckets(run.first, run.last) {
            let list = self
                .loaded
                .get_mut(&(*u, b))
                .ok_or_else(|| ServiceError::internal("delivery runs: bucket not loaded"))?;
            list.retain(|r| *r != run);
            self.dirty.insert((*u, b));
        }
        Ok(())
    }

    /// The fields changed since loading, with their new values. An emptied
    /// field is written empty, not deleted, so that a concurrent re-warm
    /// (which only fills absent fields) cannot bring a removed run back.
    pub(super) fn changed(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.dirty
            .iter()
            .map(|(u, b)| (field(u, *b), enc(&self.loaded[&(*u, *b)])))
            .collect()
    }
}

/// Runs read from Scylla made disjoint and bucketed: for each member, the
/// runs, then the deliveries stored one row per message before runs existed
/// (`legacy`, single seqs), each kept where no earlier time covers its seq.
pub(super) fn rewarmed(
    runs: Vec<(UserId, Run)>,
    legacy: Vec<(UserId, Seq, Millis)>,
) -> BTreeMap<(UserId, u32), Vec<Run>> {
    let mut by_user: BTreeMap<UserId, Vec<Run>> = BTreeMap::new();
    for (u, r) in runs {
        by_user.entry(u).or_default().push(r);
    }
    for runs in by_user.values_mut() {
        // Rows are disjoint by construction; should two overlap, the one
        // that starts first keeps the overlap.
        runs.sort_unstable_by_key(|r| (r.first, std::cmp::Reverse(r.last)));
        let mut out: Vec<Run> = Vec::with_capacity(runs.len());
        for r in runs.drain(..) {
            match out.last() {
                Some(prev) if prev.last >= r.last => {}
                Some(prev) if prev.last >= r.first => out.push(Run {
                    first: prev.last + 1,
                    ..r
                }),
                _ => out.push(r),
            }
        }
        *runs = out;
    }
    for (u, seq, at) in legacy {
        let runs = by_user.entry(u).or_default();
        match runs.iter().position(|r| r.covers(seq)) {
            Some(i) if runs[i].at <= at => {}
            Some(i) => {
                let (left, right) = runs.remove(i).without(seq);
                runs.extend(left.into_iter().chain(right));
                runs.push(Run {
                    first: seq,
                    last: seq,
                    at,
                });
            }
            None => runs.push(Run {
                first: seq,
                last: seq,
                at,
            }),
        }
    }
    let mut out: BTreeMap<(UserId, u32), Vec<Run>> = BTreeMap::new();
    for (u, runs) in by_user {
        for r in runs {
            for b in buckets(r.first, r.last) {
                out.entry((u, b)).or_default().push(r);
            }
        }
    }
    for runs in out.values_mut() {
        runs.sort_unstable_by_key(|r| r.first);
    }
    out
}

impl Inner {
    /// Loads the runs of `users` over `lo..=hi` into `view`, re-warming the
    /// conversation's runs from Scylla when Redis does not hold them.
    pub(super) async fn ensure_runs(
        &self,
        view: &mut View,
        users: &[UserId],
        lo: Seq,
        hi: Seq,
    ) -> StoreResult<()> {
        if lo > hi {
            return Ok(());
        }
        let bs: Vec<u32> = buckets(lo, hi).collect();
        self.ensure_buckets(view, users, &bs).await
    }

    /// Loads the runs of `users` at `seqs` (the buckets they fall in).
    pub(super) async fn ensure_runs_at(
        &self,
        view: &mut View,
        users: &[UserId],
        seqs: impl IntoIterator<Item = Seq>,
    ) -> StoreResult<()> {
        let bs: BTreeSet<u32> = seqs.into_iter().map(bucket).collect();
        let bs: Vec<u32> = bs.into_iter().collect();
        self.ensure_buckets(view, users, &bs).await
    }

    async fn ensure_buckets(
        &self,
        view: &mut View,
        users: &[UserId],
        bs: &[u32],
    ) -> StoreResult<()> {
        let wanted: Vec<(UserId, u32)> = users
            .iter()
            .flat_map(|u| bs.iter().map(move |b| (*u, *b)))
            .filter(|(u, b)| !view.runs.has(u, *b))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        for _ in 0..3 {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys.runs(&view.c)).arg("_");
            for (u, b) in &wanted {
                cmd.arg(field(u, *b));
            }
            let mut rows: Vec<Option<Vec<u8>>> = self.query(&cmd).await?;
            if rows.first().is_some_and(Option::is_some) {
                for ((u, b), v) in wanted.iter().zip(rows.drain(1..)) {
                    view.runs.insert(*u, *b, v.as_deref())?;
                }
                return Ok(());
            }
            self.rewarm_runs(&view.c).await?;
        }
        Err(ServiceError::unavailable(format!(
            "delivery runs of conversation {} could not be loaded into redis",
            view.c
        )))
    }

    /// Copies `c`'s runs from Scylla into Redis. Only absent fields are
    /// written (`HSETNX`): a field a commit wrote in the meantime is newer.
    pub(super) async fn rewarm_runs(&self, c: &ConversationId) -> StoreResult<()> {
        let runs = self.scylla.runs(*c).await?;
        // The legacy rows are read for the messages of the seq index.
        self.ensure_seq_form(c).await?;
        let legacy = self.legacy_deliveries(c).await?;
        let key = self.keys.runs(c);
        let mut p = redis::pipe();
        for ((u, b), list) in rewarmed(runs, legacy) {
            p.cmd("HSETNX")
                .arg(&key)
                .arg(field(&u, b))
                .arg(enc(&list))
                .ignore();
        }
        p.cmd("HSET").arg(&key).arg("_").arg("1").ignore();
        p.cmd("EXPIRE").arg(&key).arg(self.ttl()).ignore();
        self.pipe::<()>(&p).await
    }

    /// Deliveries persisted one row per message before runs existed (the
    /// `receipts` table), as `(user, seq, time)`. They expire with the
    /// retention period; until then a re-warm reads them.
    async fn legacy_deliveries(
        &self,
        c: &ConversationId,
    ) -> StoreResult<Vec<(UserId, Seq, Millis)>> {
        use futures::{StreamExt, TryStreamExt};
        let msgs = self.between(c, 1, Seq::MAX).await?;
        let rows: Vec<Vec<(UserId, Seq, Millis)>> = futures::stream::iter(msgs)
            .map(|m| async move {
                Ok::<_, ServiceError>(
                    self.scylla
                        .deliveries(m.id)
                        .await?
                        .into_iter()
                        .map(|(u, at)| (u, m.seq, at))
                        .collect(),
                )
            })
            .buffer_unordered(32)
            .try_collect()
            .await?;
        Ok(rows.into_iter().flatten().collect())
    }

    /// Records `new` (ascending recipient seqs of `u`, delivered at `at`) as
    /// runs in `view` and `plan`: one run per stretch the rule allows
    /// ([`domain::runs_of`]), whatever the number of messages. The
    /// buckets over `new` must be loaded.
    pub(super) async fn record_runs(
        &self,
        view: &mut View,
        plan: &mut Plan,
        u: &UserId,
        membership: &Membership,
        new: &[Seq],
        at: Millis,
    ) -> StoreResult<()> {
        let (Some(&lo), Some(&hi)) = (new.first(), new.last()) else {
            return Ok(());
        };
        let registered: Option<Vec<(Seq, UserId)>> =
            if new.len() > 1 && fanout::worth_reading_span(lo, hi, new.len()) {
                let span = self.between(&view.c, lo, hi).await?;
                Some(span.iter().map(|m| (m.seq, m.sender)).collect())
            } else {
                None
            };
        let runs = domain::runs_of(*u, membership, new, registered.as_deref(), at);
        self.ensure_runs(view, &[*u], lo, hi).await?;
        for run in runs {
            // A new run spans none of the member's delivered recipient seqs
            // (each ends a run), only runs left by a split over seqs that
            // are not the member's to receive: those go, so runs stay
            // disjoint.
            let inside = view.runs.overlapping(u, run.first, run.last);
            for inside in inside.into_iter().filter(|r| r.first >= run.first) {
                view.runs.remove(u, inside)?;
                plan.persist.push(PersistOp::RunRemoved {
                    conversation: view.c,
                    user: *u,
                    run: inside,
                });
            }
            view.runs.add(u, run)?;
            plan.persist.push(PersistOp::Run {
                conversation: view.c,
                user: *u,
                run,
            });
        }
        Ok(())
    }

    /// A message registered at `seq` below messages already registered:
    /// every member's run that covers `seq` was written before the message
    /// existed, so it is split around it (as the embedded store does).
    pub(super) async fn split_runs_at(
        &self,
        view: &mut View,
        plan: &mut Plan,
        seq: Seq,
    ) -> StoreResult<()> {
        let members: Vec<UserId> = view.members.keys().copied().collect();
        self.ensure_runs(view, &members, seq, seq).await?;
        for u in &members {
            let Some(run) = view.runs.covering(u, seq) else {
                continue;
            };
            self.ensure_runs(view, &[*u], run.first, run.last).await?;
            view.runs.remove(u, run)?;
            plan.persist.push(PersistOp::RunRemoved {
                conversation: view.c,
                user: *u,
                run,
            });
            let (left, right) = run.without(seq);
            for piece in left.into_iter().chain(right) {
                view.runs.add(u, piece)?;
                plan.persist.push(PersistOp::Run {
                    conversation: view.c,
                    user: *u,
                    run: piece,
                });
            }
        }
        Ok(())
    }

    /// The commands that store the runs `view` changed.
    pub(super) fn runs_cmds(&self, view: &View) -> Option<Vec<Vec<u8>>> {
        let changed = view.runs.changed();
        if changed.is_empty() {
            return None;
        }
        let mut cmd = rcmd!["HSET", self.keys.runs(&view.c)];
        for (f, v) in changed {
            cmd.extend(rcmd![f, v]);
        }
        Some(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first: Seq, last: Seq, at: Millis) -> Run {
        Run { first, last, at }
    }

    #[test]
    fn a_run_is_listed_in_every_bucket_it_overlaps_and_found_from_any() {
        let u = Uuid::from_u128(7);
        let mut b = RunBuckets::default();
        for k in 0..=2 {
            b.insert(u, k, None).unwrap();
        }
        let r = run(250, 600, 9);
        b.add(&u, r).unwrap();
        assert_eq!(b.changed().len(), 3, "buckets 0, 1 and 2");
        for s in [250, 256, 511, 600] {
            assert_eq!(b.delivered_at(&u, s), Some(9), "seq {s}");
        }
        assert_eq!(b.delivered_at(&u, 249), None);
        assert_eq!(b.delivered_at(&u, 601), None);
        assert_eq!(b.overlapping(&u, 0, 1000), vec![r]);
        b.remove(&u, r).unwrap();
        assert_eq!(b.delivered_at(&u, 300), None);
        assert!(
            b.changed()
                .iter()
                .all(|(_, v)| v == &enc(&Vec::<Run>::new()))
        );
        assert_eq!(field(&u, 3)[16..], [0, 0, 0, 3]);
        let mut unloaded = RunBuckets::default();
        assert!(
            unloaded.add(&u, r).is_err(),
            "a write needs its buckets loaded"
        );
    }

    #[test]
    fn rewarmed_runs_are_disjoint_and_legacy_rows_keep_their_earlier_times() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let got = rewarmed(
            vec![(a, run(1, 10, 50)), (a, run(1, 4, 50)), (b, run(3, 3, 7))],
            vec![(a, 5, 20), (a, 8, 90), (a, 12, 30), (b, 3, 9)],
        );
        let a_runs = &got[&(a, 0)];
        let at = |s: Seq| a_runs.iter().find(|r| r.covers(s)).map(|r| r.at);
        assert_eq!(at(4), Some(50));
        assert_eq!(at(5), Some(20), "an earlier legacy delivery wins");
        assert_eq!(at(8), Some(50), "a later one does not");
        assert_eq!(at(12), Some(30));
        assert_eq!(at(11), None);
        for w in a_runs.windows(2) {
            assert!(w[0].last < w[1].first, "disjoint: {a_runs:?}");
        }
        assert_eq!(got[&(b, 0)], vec![run(3, 3, 7)]);
    }
}
