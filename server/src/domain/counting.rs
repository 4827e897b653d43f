//! Counting "n of m delivered / read" without visiting every member
//! (docs/model.md, "Counts in O(log n)").
//!
//! Most members of a conversation are *regular*: one membership interval
//! `[from, until)` and deliveries that cover a prefix of their recipient seqs
//! with nothing delivered beyond it. Such a member is summed up by where its
//! prefixes end ([`Prefixes`]), and a store keeps the members of a
//! conversation in ordered indexes by `from`, `until` and each prefix. The
//! counts of one message are then a few rank queries ([`PrefixIndex`]) plus
//! the few *irregular* members (several intervals, or a hole in their
//! deliveries), counted one by one from their [`RecipientView`]s.
//!
//! For the message at `s` sent by `x`:
//!
//! ```text
//! recipients(s) = #{from ≤ s} − #{until ≤ s} − [x regular, from_x ≤ s < until_x] + irregular
//! delivered(s)  = #{P_d ≥ s}  − #{from > s}  − [x regular, from_x ≤ s ≤ P_d(x)]  + irregular
//! read(s)       = the same with P_r' (reads others may see), then the viewer's own truth
//! ```
//!
//! It holds because `from − 1 ≤ P < until` for every prefix: a member that
//! joins after `s` has `P ≥ s` and is taken out by `#{from > s}`; one that
//! left at or before `s` has `P < s`; the sender's own messages do not end
//! its prefixes, so a regular sender is taken out once. [`count`] is
//! property-tested against [`super::aggregate`] over explicit views.

use super::{Membership, ReadWatermark, RecipientState, RecipientView, Seq, UserId};

/// Where a regular member's facts end, all capped to `[from − 1, until − 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefixes {
    /// First seq it receives.
    pub from: Seq,
    /// First seq it no longer receives, if it left.
    pub until: Option<Seq>,
    /// Every recipient seq in `from..=delivered` is delivered (a delivery
    /// run or a read covers it), and none after it.
    pub delivered: Seq,
    /// Every recipient seq in `from..=read` is read (the true watermark).
    pub read: Seq,
    /// Every recipient seq in `from..=public_read` is read as others may see
    /// it: the public watermark while the member shares read receipts, and
    /// nothing (`from − 1`) while it does not.
    pub public_read: Seq,
}

impl Prefixes {
    fn clamp(&self, p: Seq) -> Seq {
        let hi = self.until.map_or(Seq::MAX, |u| u - 1);
        p.clamp(self.from - 1, hi)
    }

    /// Whether the member received the message at `s` (sent by someone else).
    fn member_at(&self, s: Seq) -> bool {
        self.from <= s && self.until.is_none_or(|u| s < u)
    }
}

/// A member's standing for counting: its [`Prefixes`] if it is regular,
/// `None` if it must be counted one by one.
///
/// `recipient_seqs` are the registered seqs at which it is a recipient, in
/// ascending order; `delivered(s)` tells whether a delivery run covers `s`.
pub fn standing(
    membership: &Membership,
    recipient_seqs: &[Seq],
    delivered: impl Fn(Seq) -> bool,
    watermark: ReadWatermark,
    sharing: bool,
) -> Option<Prefixes> {
    let [interval] = membership.intervals.as_slice() else {
        return None;
    };
    let from = interval.from.max(1);
    let mut p = Prefixes {
        from,
        until: interval.until,
        delivered: from - 1,
        read: 0,
        public_read: 0,
    };
    // Read implies delivered: the prefix runs over runs and the watermark.
    let had = |s: Seq| delivered(s) || watermark.seq >= s;
    let mut hole = false;
    for &s in recipient_seqs {
        if had(s) {
            if hole {
                return None;
            }
            p.delivered = s;
        } else {
            hole = true;
        }
    }
    // The prefix ends before the first recipient seq that is not delivered
    // (seqs in between that are not the member's to receive do not end it).
    // Without one, it reaches the last recipient seq, or the watermark if
    // further: a message registered later is delivered only if read.
    let next_missing = recipient_seqs.iter().find(|&&s| !had(s));
    p.delivered = p.clamp(match next_missing {
        Some(&s) => s - 1,
        None => recipient_seqs
            .last()
            .copied()
            .unwrap_or(0)
            .max(watermark.seq),
    });
    p.read = p.clamp(watermark.seq);
    p.public_read = p.clamp(if sharing { watermark.public_seq } else { 0 });
    Some(p)
}

/// Rank queries over a conversation's regular members.
pub trait PrefixIndex {
    /// Members with `from ≤ s`.
    fn joined_at_most(&self, s: Seq) -> u64;
    /// Members with `from > s`.
    fn joined_after(&self, s: Seq) -> u64;
    /// Members that left with `until ≤ s`.
    fn left_at_most(&self, s: Seq) -> u64;
    /// Members with `delivered ≥ s`.
    fn delivered_at_least(&self, s: Seq) -> u64;
    /// Members with `public_read ≥ s`.
    fn public_read_at_least(&self, s: Seq) -> u64;
}

/// Counts of one message as one viewer may see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Recipients.
    pub total: u64,
    /// Recipients that have it.
    pub delivered: u64,
    /// Recipients that have read it, as the viewer may see it.
    pub read: u64,
}

/// A member of the conversation as [`count`] needs it: its standing, and
/// for the viewer its true watermark.
#[derive(Clone, Copy, Debug)]
pub struct Party {
    /// Who.
    pub user: UserId,
    /// Its prefixes, if regular.
    pub prefixes: Option<Prefixes>,
    /// Its true read position.
    pub read_up_to: Seq,
}

/// The counts of the message at `s` sent by `sender`, as `viewer` may see
/// them: regular members through `index`, irregular ones from their views
/// (`irregular`: one [`RecipientView`] per irregular recipient of the
/// message, made for this viewer by [`super::recipient_view`]).
pub fn count(
    index: &impl PrefixIndex,
    s: Seq,
    sender: Party,
    viewer: Option<Party>,
    irregular: &[RecipientView],
) -> Counts {
    let regular_sender = sender.prefixes.filter(|p| p.member_at(s));
    let taken = |f: fn(&Prefixes) -> Seq| u64::from(regular_sender.is_some_and(|p| f(&p) >= s));
    let mut c = Counts {
        total: index.joined_at_most(s)
            - index.left_at_most(s)
            - u64::from(regular_sender.is_some()),
        delivered: index.delivered_at_least(s) - index.joined_after(s) - taken(|p| p.delivered),
        read: index.public_read_at_least(s) - index.joined_after(s) - taken(|p| p.public_read),
    };
    // A regular viewer that received the message sees its own read as it is.
    if let Some(v) = viewer.filter(|v| v.user != sender.user)
        && let Some(p) = v.prefixes.filter(|p| p.member_at(s))
    {
        c.read = c.read - u64::from(p.public_read >= s) + u64::from(v.read_up_to >= s);
    }
    for view in irregular {
        c.total += 1;
        c.delivered += u64::from(view.delivered_at.is_some());
        c.read += u64::from(view.state == RecipientState::Read);
    }
    c
}

/// A [`PrefixIndex`] over sorted vectors: for tests, and for a store that
/// keeps a conversation's index in memory.
#[derive(Clone, Debug, Default)]
pub struct SortedPrefixes {
    from: Vec<Seq>,
    until: Vec<Seq>,
    delivered: Vec<Seq>,
    public_read: Vec<Seq>,
}

impl SortedPrefixes {
    /// The index of `members` (regular ones).
    pub fn new(members: impl IntoIterator<Item = Prefixes>) -> Self {
        let mut i = Self::default();
        for p in members {
            i.from.push(p.from);
            i.until.extend(p.until);
            i.delivered.push(p.delivered);
            i.public_read.push(p.public_read);
        }
        for v in [
            &mut i.from,
            &mut i.until,
            &mut i.delivered,
            &mut i.public_read,
        ] {
            v.sort_unstable();
        }
        i
    }

    fn at_most(v: &[Seq], s: Seq) -> u64 {
        v.partition_point(|&x| x <= s) as u64
    }
}

impl PrefixIndex for SortedPrefixes {
    fn joined_at_most(&self, s: Seq) -> u64 {
        Self::at_most(&self.from, s)
    }
    fn joined_after(&self, s: Seq) -> u64 {
        self.from.len() as u64 - Self::at_most(&self.from, s)
    }
    fn left_at_most(&self, s: Seq) -> u64 {
        Self::at_most(&self.until, s)
    }
    fn delivered_at_least(&self, s: Seq) -> u64 {
        self.delivered.len() as u64 - Self::at_most(&self.delivered, s.saturating_sub(1))
    }
    fn public_read_at_least(&self, s: Seq) -> u64 {
        self.public_read.len() as u64 - Self::at_most(&self.public_read, s.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MemberInterval, RecipientFacts, aggregate, recipient_view};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use uuid::Uuid;

    /// One member of a generated conversation.
    #[derive(Clone, Debug)]
    struct Member {
        membership: Membership,
        delivered: BTreeSet<Seq>,
        watermark: ReadWatermark,
        sharing: bool,
    }

    fn member() -> impl Strategy<Value = Member> {
        (
            1u64..12,
            proptest::option::of(2u64..30),
            proptest::option::of((0u64..6, 1u64..12)),
            0u64..32,
            proptest::collection::btree_set(1u64..32, 0..6),
            0u64..32,
            0u64..32,
            any::<bool>(),
        )
            .prop_map(|(from, len, again, prefix, extra, seq, public, sharing)| {
                let mut intervals = vec![MemberInterval {
                    from,
                    until: len.map(|l| from + l),
                }];
                // Sometimes a second interval after leaving.
                if let (Some(until), Some((gap, len2))) = (intervals[0].until, again) {
                    intervals.push(MemberInterval {
                        from: until + gap,
                        until: (len2 % 3 != 0).then_some(until + gap + len2),
                    });
                }
                let mut delivered: BTreeSet<Seq> = (1..=prefix).collect();
                // Sometimes a hole: deliveries beyond the prefix.
                if prefix % 2 == 0 {
                    delivered.extend(extra);
                }
                Member {
                    membership: Membership { intervals },
                    delivered,
                    watermark: ReadWatermark {
                        seq: seq.max(public.min(seq)),
                        public_seq: public.min(seq),
                    },
                    sharing,
                }
            })
    }

    proptest! {
        /// The counts from the prefix indexes equal the aggregate of the
        /// explicit per-recipient views, for every message and every viewer.
        #[test]
        fn counting_by_prefixes_equals_the_aggregate_of_every_view(
            members in proptest::collection::vec(member(), 2..7),
            senders in proptest::collection::vec((0usize..7, any::<bool>()), 1..30),
        ) {
            let users: Vec<UserId> = (0..members.len()).map(|i| Uuid::from_u128(i as u128 + 1)).collect();
            // Seq i+1 is registered (or not) and sent by a member of it, if any.
            let messages: Vec<(Seq, usize)> = senders.iter().enumerate().filter_map(|(i, &(who, registered))| {
                let s = i as Seq + 1;
                let who = who % members.len();
                (registered && members[who].membership.contains(s)).then_some((s, who))
            }).collect();
            let facts = |m: &Member, s: Seq| RecipientFacts {
                delivered_at: m.delivered.contains(&s).then_some(1),
                read_at: (m.watermark.seq >= s).then_some(2),
                public_read_at: (m.watermark.public_seq >= s).then_some(2),
                sharing: m.sharing,
            };
            let standings: Vec<Option<Prefixes>> = members.iter().enumerate().map(|(i, m)| {
                let seqs: Vec<Seq> = messages.iter()
                    .filter(|&&(s, who)| m.membership.receives(users[i], users[who], s))
                    .map(|&(s, _)| s).collect();
                standing(&m.membership, &seqs, |s| m.delivered.contains(&s), m.watermark, m.sharing)
            }).collect();
            let index = SortedPrefixes::new(standings.iter().flatten().copied());
            let party = |i: usize| Party { user: users[i], prefixes: standings[i], read_up_to: members[i].watermark.seq };
            for &(s, x) in &messages {
                for v in 0..members.len() {
                    let views: Vec<RecipientView> = (0..members.len())
                        .filter(|&u| members[u].membership.receives(users[u], users[x], s))
                        .map(|u| recipient_view(users[v], users[u], facts(&members[u], s)))
                        .collect();
                    let expected = aggregate(&views);
                    let irregular: Vec<RecipientView> = (0..members.len())
                        .filter(|&u| standings[u].is_none() && members[u].membership.receives(users[u], users[x], s))
                        .map(|u| recipient_view(users[v], users[u], facts(&members[u], s)))
                        .collect();
                    let got = count(&index, s, party(x), Some(party(v)), &irregular);
                    prop_assert_eq!(
                        (got.total, got.delivered, got.read),
                        (expected.recipients_total, expected.delivered_count, expected.read_count),
                        "message {} from {}, viewer {}, standings {:?}", s, x, v, standings
                    );
                }
            }
        }
    }

    #[test]
    fn a_hole_makes_a_member_irregular_and_own_messages_do_not() {
        let m = Membership::joined(1);
        let wm = ReadWatermark::default();
        // Recipient seqs 1, 2, 4 (3 is its own); 1, 2, 4 delivered: regular.
        let p = standing(&m, &[1, 2, 4], |s| s != 3, wm, true).expect("regular");
        assert_eq!((p.from, p.delivered, p.read, p.public_read), (1, 4, 0, 0));
        // 1 delivered, 2 not, 4 not: regular, the prefix ends at 1.
        let p = standing(&m, &[1, 2, 4], |s| s == 1, wm, true).expect("regular");
        assert_eq!(p.delivered, 1);
        // Read up to 6 while private: delivered and read to 6, public nothing.
        let read = ReadWatermark {
            seq: 6,
            public_seq: 0,
        };
        let p = standing(&m, &[1, 2, 4], |_| false, read, true).expect("regular");
        assert_eq!((p.delivered, p.read, p.public_read), (6, 6, 0));
        // 1 and 4 delivered, 2 not: a hole.
        assert_eq!(
            standing(&m, &[1, 2, 4], |s| s == 1 || s == 4, wm, true),
            None
        );
        // Two intervals: irregular.
        let two = Membership {
            intervals: vec![
                MemberInterval {
                    from: 1,
                    until: Some(3),
                },
                MemberInterval {
                    from: 5,
                    until: None,
                },
            ],
        };
        assert_eq!(standing(&two, &[1], |_| true, wm, true), None);
    }
}
