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

/// Whether a member whose delivered prefix is `prefix`, with deliveries
/// past it up to `beyond` (a *gapped* member), has the message at `s`,
/// which it receives: only past the prefix (up to it, the prefix counted
/// it) and up to `beyond` (nothing past it is delivered), where
/// `covered()` says a delivery run covers it.
pub fn delivered_past_prefix(
    prefix: Seq,
    beyond: Seq,
    s: Seq,
    covered: impl FnOnce() -> bool,
) -> bool {
    prefix < s && s <= beyond && covered()
}

/// A registered message after a member's delivered prefix, as
/// [`advance_delivered`] walks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Later {
    /// Its seq.
    pub seq: Seq,
    /// Who sent it.
    pub sender: UserId,
    /// Whether it is in a thread. A store that counts thread messages
    /// another way (from the members' thread positions) keeps prefixes over
    /// the main timeline alone and passes over thread messages.
    pub in_thread: bool,
}

/// A regular member's delivered prefix once more is delivered to it: from
/// `prefix`, over `after` (registered messages after it, in seq order;
/// possibly only the first few), as long as each is the member's own, in a
/// thread, or delivered: `covered(seq)` is the last seq of the delivery run
/// covering it, if one does, and the prefix then reaches that far at once
/// (a run never spans a recipient seq left undelivered, [`super::runs_of`],
/// and one registered late splits it). The walk stops at the first message
/// of someone else that is not delivered, or where `after` ends: a prefix
/// may stay short of what is delivered (the member is then counted one by
/// one for the seqs beyond it), never go past what is not.
pub fn advance_delivered(
    user: UserId,
    prefix: Seq,
    after: &[Later],
    covered: impl Fn(Seq) -> Option<Seq>,
) -> Seq {
    let mut p = prefix;
    for m in after {
        if m.seq <= p {
            continue;
        }
        if m.in_thread || m.sender == user {
            p = m.seq;
        } else if let Some(last) = covered(m.seq) {
            p = last.max(m.seq);
        } else {
            break;
        }
    }
    p
}

/// A regular member's delivered prefix once main-timeline messages are
/// registered late, below messages registered before them (`late`: seq and
/// sender): it ends before the first one it receives (`from` on, not its
/// own) and has not read (`read_up_to`), which it cannot have had.
pub fn prefix_after_late(
    user: UserId,
    prefix: Seq,
    from: Seq,
    read_up_to: Seq,
    late: &[(Seq, UserId)],
) -> Seq {
    late.iter()
        .filter(|&&(s, x)| s <= prefix && s >= from && s > read_up_to && x != user)
        .map(|&(s, _)| s - 1)
        .fold(prefix, Seq::min)
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
    use super::super::{MemberInterval, RecipientFacts, Run, aggregate, recipient_view, runs_of};
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

    /// One step of a member's life in [`prefix_is_kept_by_walks_and_late_registrations`].
    #[derive(Clone, Debug)]
    enum Step {
        /// A message at this seq: from the member (true) or someone else, in
        /// a thread or not.
        Register(Seq, bool, bool),
        /// The member marks these registered seqs delivered.
        Deliver(Vec<Seq>),
        /// The member reads up to this seq.
        Read(Seq),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..40, any::<bool>(), proptest::bool::weighted(0.2))
                .prop_map(|(s, own, t)| Step::Register(s, own, t)),
            proptest::collection::vec(1u64..40, 1..6).prop_map(Step::Deliver),
            (1u64..40).prop_map(Step::Read),
        ]
    }

    proptest! {
        /// The prefix a store keeps with [`advance_delivered`] (given the
        /// first few messages after it) and [`prefix_after_late`] never
        /// claims a main-timeline message of someone else that the member
        /// has not had, and `beyond` (the highest delivered seq past the
        /// prefix, as a store keeps it) bounds every delivery past it.
        #[test]
        fn prefix_is_kept_by_walks_and_late_registrations(
            from in 1u64..8,
            steps in proptest::collection::vec(step(), 1..40),
            window in 1usize..6,
        ) {
            let me = Uuid::from_u128(1);
            let other = Uuid::from_u128(2);
            // seq -> (sender, in thread)
            let mut registered: std::collections::BTreeMap<Seq, (UserId, bool)> = Default::default();
            let mut runs: Vec<Run> = Vec::new();
            let mut read = 0;
            let mut prefix = from - 1;
            let mut beyond: Option<Seq> = None;
            for st in steps {
                match st {
                    Step::Register(s, own, t) => {
                        if registered.contains_key(&s) { continue; }
                        let last = registered.keys().next_back().copied().unwrap_or(0);
                        let sender = if own { me } else { other };
                        registered.insert(s, (sender, t));
                        // A run over the new seq was written before it
                        // existed: it is split around it (the stores do).
                        if let Some(i) = runs.iter().position(|r| r.covers(s)) {
                            let (l, r) = runs.remove(i).without(s);
                            runs.extend(l.into_iter().chain(r));
                        }
                        if s < last && !t {
                            let p = prefix_after_late(me, prefix, from, read, &[(s, sender)]);
                            if p < prefix {
                                beyond = beyond.max(Some(prefix));
                                prefix = p;
                            }
                        }
                    }
                    Step::Deliver(seqs) => {
                        let covered = |runs: &Vec<Run>, s: Seq| runs.iter().find(|r| r.covers(s)).map(|r| r.last);
                        let mut new: Vec<Seq> = seqs.into_iter()
                            .filter(|s| *s >= from && *s > read && covered(&runs, *s).is_none())
                            .filter(|s| registered.get(s).is_some_and(|(x, _)| *x != me))
                            .collect();
                        new.sort_unstable();
                        new.dedup();
                        let (Some(&lo), Some(&hi)) = (new.first(), new.last()) else { continue };
                        let span: Vec<(Seq, UserId)> = registered.range(lo..=hi).map(|(&s, &(x, _))| (s, x)).collect();
                        let made = runs_of(me, &Membership::joined(from), &new, Some(&span), 0);
                        runs.extend(made.iter().copied());
                        let top = made.iter().map(|r| r.last).max().expect("some");
                        let after: Vec<Later> = registered.range(prefix + 1..).take(window)
                            .map(|(&seq, &(sender, in_thread))| Later { seq, sender, in_thread })
                            .collect();
                        prefix = advance_delivered(me, prefix, &after, |s| covered(&runs, s));
                        if top > prefix { beyond = beyond.max(Some(top)); }
                        if beyond.is_some_and(|b| b <= prefix) { beyond = None; }
                    }
                    Step::Read(s) => {
                        if !registered.contains_key(&s) || s <= read { continue; }
                        read = s;
                        prefix = prefix.max(read);
                        if beyond.is_some_and(|b| b <= prefix) { beyond = None; }
                    }
                }
                let delivered = |s: Seq| runs.iter().any(|r| r.covers(s));
                for (&s, &(x, t)) in registered.range(from..prefix + 1) {
                    prop_assert!(t || x == me || delivered(s) || read >= s,
                        "prefix {} claims seq {}", prefix, s);
                }
                prop_assert!(prefix >= read.max(from - 1));
                for &s in registered.keys().filter(|&&s| s > prefix && delivered(s)) {
                    prop_assert!(beyond.is_some_and(|b| b >= s), "delivered {} past prefix {} unbounded", s, prefix);
                }
            }
        }
    }

    #[test]
    fn a_walk_passes_own_and_thread_messages_and_stops_at_a_gap() {
        let (me, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let later = |seq, sender, in_thread| Later {
            seq,
            sender,
            in_thread,
        };
        let after = [
            later(3, me, false),
            later(4, other, true),
            later(5, other, false),
            later(7, other, false),
        ];
        let single = |seqs: &'static [Seq]| move |s: Seq| seqs.contains(&s).then_some(s);
        assert_eq!(advance_delivered(me, 2, &after, single(&[5])), 5);
        assert_eq!(advance_delivered(me, 2, &after, single(&[5, 7])), 7);
        assert_eq!(advance_delivered(me, 2, &after, single(&[7])), 4);
        // A run reaches past what the walk read: the prefix goes with it.
        assert_eq!(
            advance_delivered(me, 2, &after, |s| (5..=40).contains(&s).then_some(40)),
            40
        );
        // A late message of someone else, unread, ends the prefix before it;
        // the member's own, or one it read, does not.
        assert_eq!(prefix_after_late(me, 9, 1, 2, &[(6, other)]), 5);
        assert_eq!(prefix_after_late(me, 9, 1, 2, &[(6, me)]), 9);
        assert_eq!(prefix_after_late(me, 9, 1, 7, &[(6, other)]), 9);
        assert_eq!(prefix_after_late(me, 9, 1, 2, &[(8, other), (4, other)]), 3);
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
