//! Deliveries: what a MarkDelivered decides for each message, and a member's
//! deliveries kept as runs of seqs (docs/model.md).
//!
//! A member's deliveries in a conversation are disjoint runs `first..=last`,
//! each stamped with the time it became true. A run covers the member's
//! recipient seqs in its range that were registered when it was written; a
//! seq inside it that is not one of them (the member's own message, a seq
//! outside its membership, a seq nobody registered) means nothing, because
//! every reader asks [`Membership::receives`] first. A message registered
//! later inside a run splits the run around it ([`Run::without`]), so it is
//! never delivered by a run written before it existed. A batch of consecutive
//! deliveries is one run, so the cost of a MarkDelivered does not grow with
//! the number of messages it covers.

use super::{Membership, Millis, Seq, UserId};
use serde::{Deserialize, Serialize};

/// What a MarkDelivered does to one message for one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The member is not a recipient (its own message, or not a member at
    /// the message's seq): nothing changes.
    NotARecipient,
    /// It was delivered already (or read, which implies delivered) at this
    /// time: nothing changes, and the first time stays.
    Already(Millis),
    /// It becomes delivered now.
    Record,
}

/// Decides a delivery of the message at `seq` sent by `sender` to `member`,
/// from what is stored: when a run covering it was written (`delivered_at`)
/// and when a read first covered it (`read_at`). Read implies delivered, at
/// the earlier of the two times.
pub fn judge(
    member: UserId,
    membership: &Membership,
    sender: UserId,
    seq: Seq,
    delivered_at: Option<Millis>,
    read_at: Option<Millis>,
) -> Delivery {
    if !membership.receives(member, sender, seq) {
        return Delivery::NotARecipient;
    }
    match (delivered_at, read_at) {
        (Some(d), Some(r)) => Delivery::Already(d.min(r)),
        (Some(t), None) | (None, Some(t)) => Delivery::Already(t),
        (None, None) => Delivery::Record,
    }
}

/// A run of deliveries: the member's recipient seqs in `first..=last` became
/// delivered at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The first seq of the run.
    pub first: Seq,
    /// The last seq of the run (inclusive).
    pub last: Seq,
    /// When the run became true.
    pub at: Millis,
}

impl Run {
    /// Whether the run covers `seq`.
    pub fn covers(&self, seq: Seq) -> bool {
        self.first <= seq && seq <= self.last
    }

    /// The run with `seq` taken out: what is left on each side of it. Used
    /// when a message is registered at a seq inside the run, which the run
    /// must not deliver.
    pub fn without(&self, seq: Seq) -> (Option<Run>, Option<Run>) {
        if !self.covers(seq) {
            return if seq < self.first {
                (None, Some(*self))
            } else {
                (Some(*self), None)
            };
        }
        let left = (seq > self.first).then_some(Run {
            last: seq - 1,
            ..*self
        });
        let right = (seq < self.last).then_some(Run {
            first: seq + 1,
            ..*self
        });
        (left, right)
    }

    /// Whether `next` continues this run: it starts right after it and
    /// became true at the same time, so the two can be stored as one.
    pub fn continued_by(&self, next: &Run) -> bool {
        self.at == next.at && self.last.checked_add(1) == Some(next.first)
    }
}

/// The runs of one member that a store loaded (all of them, or those that
/// overlap the seqs it asks about), in seq order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runs(Vec<Run>);

impl Runs {
    /// Runs in any order; they must be disjoint.
    pub fn new(mut runs: Vec<Run>) -> Self {
        runs.sort_unstable_by_key(|r| r.first);
        Self(runs)
    }

    /// When the run covering `seq` became true, if one does. The caller has
    /// checked that the member is a recipient at `seq`.
    pub fn delivered_at(&self, seq: Seq) -> Option<Millis> {
        let i = self.0.partition_point(|r| r.first <= seq);
        let run = self.0.get(i.checked_sub(1)?)?;
        run.covers(seq).then_some(run.at)
    }

    /// The runs, in seq order.
    pub fn as_slice(&self) -> &[Run] {
        &self.0
    }
}

/// Groups the seqs a MarkDelivered records for `member` (`new`, ascending,
/// distinct, all delivered at `at`) into as few runs as the rule allows.
///
/// Two recorded seqs may share a run only if no seq between them is a
/// recipient seq of `member` left undelivered. `registered` lists the
/// registered messages `(seq, sender)` from the first to the last recorded
/// seq, in seq order, when the store read them; without it (`None`, for a
/// sparse set where reading the span would cost more than it saves), only
/// seqs that follow each other directly share a run.
pub fn runs_of(
    member: UserId,
    membership: &Membership,
    new: &[Seq],
    registered: Option<&[(Seq, UserId)]>,
    at: Millis,
) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut extend = |seq: Seq, joinable: bool| match runs.last_mut() {
        Some(run) if joinable || run.last + 1 == seq => run.last = seq,
        _ => runs.push(Run {
            first: seq,
            last: seq,
            at,
        }),
    };
    match registered {
        None => new.iter().for_each(|&s| extend(s, false)),
        Some(registered) => {
            let mut next = new.iter().peekable();
            // Whether nothing undelivered lies between the open run and here.
            let mut joinable = false;
            for &(seq, sender) in registered {
                if next.peek() == Some(&&seq) {
                    next.next();
                    extend(seq, joinable);
                    joinable = true;
                } else if membership.receives(member, sender, seq) {
                    joinable = false;
                }
            }
            // Seqs the store did not list (it should list them all) get runs
            // of their own rather than a guess.
            for &seq in next {
                runs.push(Run {
                    first: seq,
                    last: seq,
                    at,
                });
            }
            runs.sort_unstable_by_key(|r| r.first);
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    const ME: Uuid = Uuid::from_u128(1);
    const OTHER: Uuid = Uuid::from_u128(2);

    #[test]
    fn a_delivery_is_recorded_once_and_read_implies_delivered() {
        let m = Membership::joined(1);
        assert_eq!(judge(ME, &m, ME, 5, None, None), Delivery::NotARecipient);
        assert_eq!(
            judge(ME, &Membership::joined(6), OTHER, 5, None, None),
            Delivery::NotARecipient
        );
        assert_eq!(judge(ME, &m, OTHER, 5, None, None), Delivery::Record);
        assert_eq!(judge(ME, &m, OTHER, 5, Some(7), None), Delivery::Already(7));
        assert_eq!(judge(ME, &m, OTHER, 5, None, Some(3)), Delivery::Already(3));
        assert_eq!(
            judge(ME, &m, OTHER, 5, Some(7), Some(3)),
            Delivery::Already(3)
        );
    }

    #[test]
    fn consecutive_recipient_seqs_make_one_run_across_own_and_missing_seqs() {
        let m = Membership::joined(1);
        // 1, 3, 5 from the other side; 2 and 4 are mine; 6 is not registered.
        let registered = [
            (1, OTHER),
            (2, ME),
            (3, OTHER),
            (4, ME),
            (5, OTHER),
            (7, OTHER),
        ];
        let runs = runs_of(ME, &m, &[1, 3, 5, 7], Some(&registered), 9);
        assert_eq!(
            runs,
            vec![Run {
                first: 1,
                last: 7,
                at: 9
            }]
        );
        // An undelivered recipient seq in between (3) splits the run.
        let runs = runs_of(ME, &m, &[1, 5], Some(&registered), 9);
        assert_eq!(runs.len(), 2);
        // Without the registered messages, only adjacent seqs join.
        let runs = runs_of(ME, &m, &[1, 2, 4], None, 9);
        assert_eq!(
            runs,
            vec![
                Run {
                    first: 1,
                    last: 2,
                    at: 9
                },
                Run {
                    first: 4,
                    last: 4,
                    at: 9
                }
            ]
        );
    }

    #[test]
    fn a_late_registration_splits_the_run_around_it() {
        let run = Run {
            first: 3,
            last: 8,
            at: 1,
        };
        let (l, r) = run.without(5);
        assert_eq!((l.unwrap().first, l.unwrap().last), (3, 4));
        assert_eq!((r.unwrap().first, r.unwrap().last), (6, 8));
        assert_eq!(run.without(3).0, None);
        assert_eq!(run.without(8).1, None);
        assert_eq!(run.without(9), (Some(run), None));
        assert_eq!(run.without(2), (None, Some(run)));
        let one = Run {
            first: 4,
            last: 4,
            at: 1,
        };
        assert_eq!(one.without(4), (None, None));
    }

    proptest! {
        /// Runs cover exactly the recorded seqs among the member's recipient
        /// seqs, never an undelivered recipient seq, and `Runs::delivered_at`
        /// answers from them.
        #[test]
        fn runs_cover_exactly_the_recorded_recipient_seqs(
            senders in proptest::collection::vec(proptest::option::of(any::<bool>()), 1..60),
            pick in proptest::collection::vec(any::<bool>(), 60),
            join in 1u64..10,
            with_registered in any::<bool>(),
        ) {
            let membership = Membership::joined(join);
            // seq i+1 is registered by ME (Some(true)), by OTHER (Some(false)), or not at all.
            let registered: Vec<(Seq, UserId)> = senders.iter().enumerate()
                .filter_map(|(i, s)| s.map(|mine| (i as Seq + 1, if mine { ME } else { OTHER })))
                .collect();
            let recipient = |s: Seq| registered.iter().any(|&(q, who)| q == s && membership.receives(ME, who, s));
            let new: Vec<Seq> = registered.iter().map(|r| r.0)
                .filter(|&s| recipient(s) && pick[s as usize - 1]).collect();
            let span: Vec<(Seq, UserId)> = registered.iter().copied()
                .filter(|r| new.first().is_some_and(|&f| r.0 >= f) && new.last().is_some_and(|&l| r.0 <= l))
                .collect();
            let runs = Runs::new(runs_of(ME, &membership, &new, with_registered.then_some(span.as_slice()), 5));
            for &(s, _) in &registered {
                if recipient(s) {
                    prop_assert_eq!(runs.delivered_at(s).is_some(), new.contains(&s), "seq {}", s);
                }
            }
            for w in runs.as_slice().windows(2) {
                prop_assert!(w[0].last < w[1].first);
            }
            if with_registered {
                // As few runs as the rule allows: a run ends only where an
                // undelivered recipient seq follows.
                let breaks = registered.iter().filter(|&&(s, _)| {
                    recipient(s) && !new.contains(&s)
                        && new.first().is_some_and(|&f| s > f) && new.last().is_some_and(|&l| s < l)
                }).count();
                prop_assert!(runs.as_slice().len() <= breaks + 1);
            }
        }
    }
}
