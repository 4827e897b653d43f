//! Counts without reading every member (docs/storage-embedded.md,
//! "Counting"; docs/model.md, "Counts in O(log n)").
//!
//! A member whose membership is one open interval from seq `from` is
//! *simple*: its scores are kept in [`PREFIXES`] and summed up per
//! conversation in histograms ([`COUNT_INDEX`], `conv ‖ kind ‖ seq` → how
//! many simple members score exactly `seq`):
//!
//! - `J`: `from`; `N` (at seq 0): how many simple members there are;
//! - `D`: the delivered prefix, a seq up to which the member has every
//!   main-timeline message it receives (delivered, read or its own), never
//!   below `from − 1`;
//! - `P`: `max(public watermark, from − 1)` while it shares read receipts,
//!   `from − 1` while it does not.
//!
//! The histograms are [`domain::PrefixIndex`]: a rank query above a seq is a
//! range scan over the distinct scores above it, which the messages after
//! it bound, not the members. [`domain::count`] does the arithmetic. Members
//! counted one by one are in [`APART`]: those who ever left or joined again
//! (*complex*, absent from the histograms, counted from their facts), and
//! the simple ones with a delivery past their prefix (*gapped*, scored by
//! the highest seq delivered past it), whose deliveries between are read.
//!
//! Every write that moves a score moves it here, in the same transaction,
//! with `domain`'s rules: a read raises the prefix to the watermark; a
//! delivery walks it forward ([`domain::advance_delivered`]); a message
//! registered late ends it before the message ([`domain::prefix_after_late`]);
//! a membership change makes a member simple or complex; a privacy toggle
//! moves the user's public score in each of its conversations. A data
//! directory written before the index gets it built at open
//! ([`build_count_index`]). Thread messages are counted from every member's
//! position in the thread (docs/storage.md, "Threads"): the prefixes pass
//! over them.

use super::*;
use crate::domain::{Counts, Later, Party, PrefixIndex, Prefixes};

const JOIN: u8 = b'J';
const DELIVERED: u8 = b'D';
const PUBLIC: u8 = b'P';
const SIMPLE: u8 = b'N';
/// At seq 0: the membership version, which the completion times are valid for.
const VERSION: u8 = b'V';
/// At seq 0: present once the conversation's index is kept (see
/// [`Tables::indexed`]).
const KEPT: u8 = b'K';

/// Seqs a delivery's walk reads at a time, and at most in all: a prefix
/// may stay short of what the member has (it is then gapped), never pass
/// what it has not had.
const WALK_CHUNK: u64 = 64;
const WALK_MAX: u64 = 1024;

/// Marks a data directory whose counting index is built.
const META_COUNT_INDEX: &[u8] = b"count_index_v1";

/// A simple member's scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Scores {
    pub(super) from: Seq,
    pub(super) delivered: Seq,
    pub(super) public: Seq,
}

impl Scores {
    fn decode(v: &[u8]) -> Self {
        Self {
            from: u64_at(v, 0),
            delivered: u64_at(v, 8),
            public: u64_at(v, 16),
        }
    }

    fn encode(&self) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..8].copy_from_slice(&self.from.to_be_bytes());
        v[8..16].copy_from_slice(&self.delivered.to_be_bytes());
        v[16..].copy_from_slice(&self.public.to_be_bytes());
        v
    }

    fn floor(&self) -> Seq {
        self.from - 1
    }

    /// The public score from the facts: reads others may see.
    fn public_of(&self, wm: ReadWatermark, sharing: bool) -> Seq {
        if sharing {
            wm.public_seq.max(self.floor())
        } else {
            self.floor()
        }
    }

    /// As [`domain::count`] takes it.
    fn prefixes(&self, wm: ReadWatermark) -> Prefixes {
        Prefixes {
            from: self.from,
            until: None,
            delivered: self.delivered,
            read: wm.seq.max(self.floor()),
            public_read: self.public,
        }
    }
}

/// Why a member is counted one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Apart {
    /// It ever left or joined again: counted from its facts.
    Complex,
    /// Simple, with deliveries past its prefix up to this seq.
    Gapped(Seq),
}

/// The first seq of a simple membership (one open interval).
fn simple_from(ms: &Membership) -> Option<Seq> {
    match ms.intervals.as_slice() {
        [iv] if iv.until.is_none() => Some(iv.from.max(1)),
        _ => None,
    }
}

fn k_hist(c: &ConversationId, kind: u8, seq: Seq) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..16].copy_from_slice(c.as_bytes());
    k[16] = kind;
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// One kind's histogram from some seq on: `(seq, members)` ascending.
struct Hist(Vec<(Seq, u64)>);

impl Hist {
    /// Members scoring at least `s` (all of them are in the histogram: it
    /// was read from at most `s`).
    fn at_least(&self, s: Seq) -> u64 {
        let i = self.0.partition_point(|(x, _)| *x < s);
        self.0[i..].iter().map(|(_, n)| n).sum()
    }
}

/// [`PrefixIndex`] over the histograms read for one set of messages.
struct Ranks {
    simple: u64,
    join: Hist,
    delivered: Hist,
    public: Hist,
}

impl PrefixIndex for Ranks {
    fn joined_at_most(&self, s: Seq) -> u64 {
        self.simple - self.joined_after(s)
    }
    fn joined_after(&self, s: Seq) -> u64 {
        self.join.at_least(s.saturating_add(1))
    }
    fn left_at_most(&self, _: Seq) -> u64 {
        // Members who ever left are complex: none is in the histograms.
        0
    }
    fn delivered_at_least(&self, s: Seq) -> u64 {
        self.delivered.at_least(s)
    }
    fn public_read_at_least(&self, s: Seq) -> u64 {
        self.public.at_least(s)
    }
}

/// A member counted one by one, with its facts for the seqs counted.
struct Counted {
    user: UserId,
    apart: Apart,
    /// Complex: its membership, watermark and setting.
    membership: Membership,
    wm: ReadWatermark,
    sharing: bool,
    /// Gapped: its scores.
    scores: Option<Scores>,
    runs: Runs,
}

impl<T: ReadableTable<Bytes, Bytes>> Tables<T> {
    pub(super) fn scores(&self, c: &ConversationId, u: &UserId) -> StoreResult<Option<Scores>> {
        Ok(get_bytes(&self.prefixes, &k2(c, u))?.map(|v| Scores::decode(&v)))
    }

    pub(super) fn apart(&self, c: &ConversationId, u: &UserId) -> StoreResult<Option<Apart>> {
        Ok(get_bytes(&self.apart, &k2(c, u))?.map(|v| apart_of(&v)))
    }

    /// Whether `c`'s counting index is kept: from the moment it has more
    /// than [`EmbeddedOptions::indexed_above`] members, for good.
    pub(super) fn indexed(&self, c: &ConversationId) -> StoreResult<bool> {
        Ok(self.hist_count(c, KEPT, 0)? > 0)
    }

    fn hist_count(&self, c: &ConversationId, kind: u8, seq: Seq) -> StoreResult<u64> {
        Ok(get_bytes(&self.count_index, &k_hist(c, kind, seq))?.map_or(0, |v| u64_at(&v, 0)))
    }

    /// One kind's histogram for seqs `lo` and above.
    fn hist_from(&self, c: &ConversationId, kind: u8, lo: Seq) -> StoreResult<Hist> {
        let (lo, hi) = (k_hist(c, kind, lo), k_hist(c, kind, Seq::MAX));
        let mut out = Vec::new();
        for entry in self
            .count_index
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            out.push((u64_at(k.value(), 17), u64_at(v.value(), 0)));
        }
        Ok(Hist(out))
    }

    /// The members of `c` counted one by one.
    fn apart_members(&self, c: &ConversationId) -> StoreResult<Vec<(UserId, Apart)>> {
        let (lo, hi) = (k2(c, &Uuid::nil()), k2(c, &Uuid::max()));
        let mut out = Vec::new();
        for entry in self
            .apart
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            out.push((uuid_at(k.value(), 16), apart_of(v.value())));
        }
        Ok(out)
    }

    /// The counts of main-timeline messages `msgs` of `c`, each as
    /// `viewer(m)` may see it: simple members from the histograms, the
    /// others one by one (the rules are [`domain::count`]'s and
    /// [`domain::recipient_view`]'s).
    pub(super) fn counts(
        &self,
        c: &ConversationId,
        msgs: &[Message],
        viewer: impl Fn(&Message) -> UserId,
    ) -> StoreResult<Vec<Counts>> {
        let (Some(lo), Some(hi)) = (
            msgs.iter().map(|m| m.seq).min(),
            msgs.iter().map(|m| m.seq).max(),
        ) else {
            return Ok(Vec::new());
        };
        let ranks = Ranks {
            simple: self.hist_count(c, SIMPLE, 0)?,
            join: self.hist_from(c, JOIN, lo)?,
            delivered: self.hist_from(c, DELIVERED, lo)?,
            public: self.hist_from(c, PUBLIC, lo)?,
        };
        let mut apart = Vec::new();
        for (user, a) in self.apart_members(c)? {
            let mut m = Counted {
                user,
                apart: a,
                membership: Membership::default(),
                wm: ReadWatermark::default(),
                sharing: true,
                scores: None,
                runs: Runs::default(),
            };
            match a {
                Apart::Complex => {
                    m.membership = self.membership(c, &user)?.unwrap_or_default();
                    m.wm = self.watermark(c, &user)?;
                    m.sharing = self.sharing(&user)?;
                    m.runs = self.runs_between(c, &user, lo, hi)?;
                }
                Apart::Gapped(beyond) => {
                    m.scores = self.scores(c, &user)?;
                    let Some(s) = m.scores else { continue };
                    let (a, b) = (lo.max(s.delivered + 1), hi.min(beyond));
                    if a > b {
                        continue;
                    }
                    m.runs = self.runs_between(c, &user, a, b)?;
                }
            }
            apart.push(m);
        }
        let mut parties: HashMap<UserId, Party> = HashMap::new();
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            let v = viewer(m);
            for u in [m.sender, v] {
                if let std::collections::hash_map::Entry::Vacant(e) = parties.entry(u) {
                    let wm = self.watermark(c, &u)?;
                    e.insert(Party {
                        user: u,
                        prefixes: self.scores(c, &u)?.map(|s| s.prefixes(wm)),
                        read_up_to: wm.seq,
                    });
                }
            }
            let s = m.seq;
            let mut irregular = Vec::new();
            let mut past_prefix = 0;
            for x in &apart {
                match x.apart {
                    Apart::Complex if x.membership.receives(x.user, m.sender, s) => {
                        // Counts need no times: any value stands for "some time".
                        let facts = RecipientFacts {
                            delivered_at: x.runs.delivered_at(s),
                            read_at: (x.wm.seq >= s).then_some(0),
                            public_read_at: (x.wm.public_seq >= s).then_some(0),
                            sharing: x.sharing,
                        };
                        irregular.push(domain::recipient_view(v, x.user, facts));
                    }
                    Apart::Gapped(beyond) if x.user != m.sender => {
                        let Some(p) = x.scores.filter(|p| p.from <= s) else {
                            continue;
                        };
                        past_prefix += u64::from(domain::delivered_past_prefix(
                            p.delivered,
                            beyond,
                            s,
                            || x.runs.delivered_at(s).is_some(),
                        ));
                    }
                    _ => {}
                }
            }
            let mut n = domain::count(&ranks, s, parties[&m.sender], Some(parties[&v]), &irregular);
            n.delivered += past_prefix;
            out.push(n);
        }
        Ok(out)
    }

    /// The states of `msgs` (all of `c`) without recipients, each as
    /// `viewer(m)` may see it, in the order of `msgs`: counts from
    /// [`Self::counts`], and from every member's facts only where they are
    /// needed: thread messages (counted from every member's position in the
    /// thread), and completion times (the last recipient's time) not in
    /// [`COMPLETIONS`] yet, or seen by a recipient, who sees its own true
    /// read. Completion times computed here are added to `fresh` for the
    /// writer to keep ([`Tables::keep_completions`]): once every recipient
    /// has (publicly read) a message, each of their first times is fixed,
    /// and only a change of members can change the last of them.
    pub(super) fn counted_states(
        &self,
        c: &ConversationId,
        msgs: &[Message],
        viewer: impl Fn(&Message) -> UserId + Copy,
        fresh: &mut Vec<Completed>,
    ) -> StoreResult<Vec<domain::MessageState>> {
        let (Some(lo), Some(hi)) = (
            msgs.iter().map(|m| m.seq).min(),
            msgs.iter().map(|m| m.seq).max(),
        ) else {
            return Ok(Vec::new());
        };
        if !self.indexed(c)? {
            let ctx = self.context(c)?;
            return self.states(&ctx, msgs, viewer, false);
        }
        let threads = self.threads_between(c, lo, hi)?;
        let main: Vec<Message> = msgs
            .iter()
            .filter(|m| !threads.contains_key(&m.seq))
            .copied()
            .collect();
        let version = self.hist_count(c, VERSION, 0)?;
        let mut memberships: HashMap<UserId, Membership> = HashMap::new();
        let mut states: HashMap<MessageId, domain::MessageState> = HashMap::new();
        let mut full: Vec<(Message, bool, Completed)> = Vec::new();
        for (m, n) in main.iter().zip(self.counts(c, &main, viewer)?) {
            let all_delivered = n.total > 0 && n.delivered == n.total;
            let all_read = n.total > 0 && n.read == n.total;
            let mut cached = Completed {
                seq: m.seq,
                delivered_at: None,
                read_at: None,
            };
            let mut viewer_recipient = false;
            if all_delivered || all_read {
                let v = viewer(m);
                if let std::collections::hash_map::Entry::Vacant(e) = memberships.entry(v) {
                    e.insert(self.membership(c, &v)?.unwrap_or_default());
                }
                viewer_recipient = memberships[&v].receives(v, m.sender, m.seq);
                if let Some(b) = get_bytes(&self.completions, &k_seq(c, m.seq))?
                    && u64_at(&b, 0) == version
                {
                    cached = Completed::decode(m.seq, &b);
                }
            }
            if (all_delivered && cached.delivered_at.is_none())
                || (all_read && (viewer_recipient || cached.read_at.is_none()))
            {
                full.push((*m, viewer_recipient, cached));
                continue;
            }
            states.insert(
                m.id,
                domain::MessageState {
                    message: *m,
                    aggregate: Aggregate {
                        tick: domain::Tick::of(n.total, n.delivered, n.read),
                        delivered_count: n.delivered,
                        read_count: n.read,
                        recipients_total: n.total,
                        delivered_at: cached.delivered_at.filter(|_| all_delivered),
                        read_at: cached.read_at.filter(|_| all_read),
                    },
                    recipients: Vec::new(),
                },
            );
        }
        let in_threads = msgs.iter().filter(|m| threads.contains_key(&m.seq));
        let scan: Vec<Message> = full
            .iter()
            .map(|(m, _, _)| *m)
            .chain(in_threads.copied())
            .collect();
        if !scan.is_empty() {
            let ctx = self.context(c)?;
            for s in self.states(&ctx, &scan, viewer, false)? {
                if let Some((_, viewer_recipient, cached)) =
                    full.iter().find(|(m, _, _)| m.id == s.message.id)
                {
                    let a = &s.aggregate;
                    let known = Completed {
                        seq: s.message.seq,
                        delivered_at: a.delivered_at.or(cached.delivered_at),
                        read_at: a.read_at.filter(|_| !viewer_recipient).or(cached.read_at),
                    };
                    if known != *cached {
                        fresh.push(known);
                    }
                }
                states.insert(s.message.id, s);
            }
        }
        Ok(msgs
            .iter()
            .filter_map(|m| states.get(&m.id).cloned())
            .collect())
    }
}

/// Completion times of one message (see [`Tables::counted_states`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Completed {
    seq: Seq,
    delivered_at: Option<Millis>,
    read_at: Option<Millis>,
}

impl Completed {
    /// A [`COMPLETIONS`] value: version ‖ delivered ‖ read, `i64::MIN` for
    /// not yet.
    fn decode(seq: Seq, v: &[u8]) -> Self {
        let time = |at: usize| v.get(at..at + 8).map(i64_val).filter(|t| *t != i64::MIN);
        Self {
            seq,
            delivered_at: time(8),
            read_at: time(16),
        }
    }

    fn encode(&self, version: u64) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..8].copy_from_slice(&version.to_be_bytes());
        v[8..16].copy_from_slice(&self.delivered_at.unwrap_or(i64::MIN).to_be_bytes());
        v[16..].copy_from_slice(&self.read_at.unwrap_or(i64::MIN).to_be_bytes());
        v
    }
}

fn apart_of(v: &[u8]) -> Apart {
    if v.len() >= 8 {
        Apart::Gapped(u64_at(v, 0))
    } else {
        Apart::Complex
    }
}

impl Tables<Table<'_, Bytes, Bytes>> {
    fn hist_add(&mut self, c: &ConversationId, kind: u8, seq: Seq, delta: i64) -> StoreResult<()> {
        let k = k_hist(c, kind, seq);
        let n = self.hist_count(c, kind, seq)?.saturating_add_signed(delta);
        if n == 0 {
            self.count_index.remove(k.as_slice()).map_err(storage)?;
            Ok(())
        } else {
            put(&mut self.count_index, &k, &n.to_be_bytes())
        }
    }

    /// Replaces `u`'s scores `old` with `new` in its row and the histograms.
    fn set_scores(
        &mut self,
        c: &ConversationId,
        u: &UserId,
        old: Option<Scores>,
        new: Option<Scores>,
    ) -> StoreResult<()> {
        if old == new {
            return Ok(());
        }
        let parts = |s: Option<Scores>| {
            s.map(|s| {
                [
                    (JOIN, s.from),
                    (DELIVERED, s.delivered),
                    (PUBLIC, s.public),
                    (SIMPLE, 0),
                ]
            })
        };
        // Only the kinds whose score moved.
        for i in 0..4 {
            let (was, now) = (parts(old).map(|p| p[i]), parts(new).map(|p| p[i]));
            if was == now {
                continue;
            }
            if let Some((kind, seq)) = was {
                self.hist_add(c, kind, seq, -1)?;
            }
            if let Some((kind, seq)) = now {
                self.hist_add(c, kind, seq, 1)?;
            }
        }
        match new {
            Some(s) => put(&mut self.prefixes, &k2(c, u), &s.encode()),
            None => {
                self.prefixes.remove(k2(c, u).as_slice()).map_err(storage)?;
                Ok(())
            }
        }
    }

    fn set_apart(&mut self, c: &ConversationId, u: &UserId, a: Option<Apart>) -> StoreResult<()> {
        match a {
            Some(Apart::Complex) => put(&mut self.apart, &k2(c, u), &[]),
            Some(Apart::Gapped(beyond)) => put(&mut self.apart, &k2(c, u), &beyond.to_be_bytes()),
            None => {
                self.apart.remove(k2(c, u).as_slice()).map_err(storage)?;
                Ok(())
            }
        }
    }

    /// Replaces `u`'s scores `old` with `new` and sets its gapped score to
    /// the highest seq delivered past the new prefix (`beyond`, kept if
    /// higher, dropped once the prefix reaches it).
    fn set_prefix(
        &mut self,
        c: &ConversationId,
        u: &UserId,
        old: Scores,
        new: Scores,
        beyond: Option<Seq>,
    ) -> StoreResult<()> {
        let was = self.apart(c, u)?;
        let beyond = match (was, beyond) {
            (Some(Apart::Gapped(a)), Some(b)) => Some(a.max(b)),
            (Some(Apart::Gapped(a)), None) => Some(a),
            (_, b) => b,
        };
        let now = beyond.filter(|b| *b > new.delivered).map(Apart::Gapped);
        if now != was {
            self.set_apart(c, u, now)?;
        }
        self.set_scores(c, u, Some(old), Some(new))
    }

    /// Keeps completion times computed by [`Tables::counted_states`].
    pub(super) fn keep_completions(
        &mut self,
        c: &ConversationId,
        fresh: &[Completed],
    ) -> StoreResult<()> {
        let version = self.hist_count(c, VERSION, 0)?;
        for f in fresh {
            put(&mut self.completions, &k_seq(c, f.seq), &f.encode(version))?;
        }
        Ok(())
    }

    /// `u`'s membership of `c` became `after`: it enters the histograms as
    /// a new simple member, or leaves them for good (it left, or joined
    /// again after leaving). The recipients of some messages changed: the
    /// completion times kept so far no longer hold.
    pub(super) fn index_membership(
        &mut self,
        c: &ConversationId,
        u: &UserId,
        after: &Membership,
    ) -> StoreResult<()> {
        if !self.indexed(c)? {
            return Ok(());
        }
        self.hist_add(c, VERSION, 0, 1)?;
        let old = self.scores(c, u)?;
        match simple_from(after) {
            Some(_) if old.is_some() => Ok(()),
            Some(from) if self.apart(c, u)?.is_none() => {
                let wm = self.watermark(c, u)?;
                let sharing = self.sharing(u)?;
                let floor = Scores {
                    from,
                    delivered: from - 1,
                    public: from - 1,
                };
                let new = Scores {
                    delivered: wm.seq.max(from - 1),
                    public: floor.public_of(wm, sharing),
                    ..floor
                };
                self.set_scores(c, u, None, Some(new))
            }
            _ => {
                self.set_scores(c, u, old, None)?;
                self.set_apart(c, u, Some(Apart::Complex))
            }
        }
    }

    /// `u` read the main timeline of `c` up to `wm`: its prefix rises to
    /// the watermark and its public score follows the facts.
    pub(super) fn index_read(
        &mut self,
        c: &ConversationId,
        u: &UserId,
        wm: ReadWatermark,
        sharing: bool,
    ) -> StoreResult<()> {
        let Some(old) = self.scores(c, u)? else {
            return Ok(());
        };
        let new = Scores {
            delivered: old.delivered.max(wm.seq),
            public: old.public_of(wm, sharing),
            ..old
        };
        self.set_prefix(c, u, old, new, None)
    }

    /// `u` had deliveries recorded in `c`, `top` the highest main-timeline
    /// seq among them: its prefix walks forward over what it has
    /// ([`domain::advance_delivered`]), and it is gapped if `top` is past
    /// where the walk ended.
    pub(super) fn index_delivery(
        &mut self,
        c: &ConversationId,
        u: &UserId,
        top: Option<Seq>,
    ) -> StoreResult<()> {
        let Some(old) = self.scores(c, u)? else {
            return Ok(());
        };
        let last = self.last_seq(c)?;
        let mut d = old.delivered;
        let mut walked = 0;
        while d < last && walked < WALK_MAX {
            let hi = d.saturating_add(WALK_CHUNK).min(last);
            let threads = self.threads_between(c, d + 1, hi)?;
            let later: Vec<Later> = self
                .messages_between(c, d + 1, hi)?
                .into_iter()
                .map(|m| Later {
                    seq: m.seq,
                    sender: m.sender,
                    in_thread: threads.contains_key(&m.seq),
                })
                .collect();
            let runs = self.runs_between(c, u, d + 1, hi)?;
            let covered = |s: Seq| runs.as_slice().iter().find(|r| r.covers(s)).map(|r| r.last);
            let moved = domain::advance_delivered(*u, d, &later, covered);
            // Past every message of the span: the seqs left in it are not
            // registered, and one registered there later is a late one,
            // which ends the prefix again.
            let passed = later.last().is_none_or(|m| moved >= m.seq);
            walked += hi - d;
            d = if passed { moved.max(hi) } else { moved };
            if !passed {
                break;
            }
        }
        let new = Scores {
            delivered: d,
            ..old
        };
        self.set_prefix(c, u, old, new, top)
    }

    /// Main-timeline messages `late` (seq, sender) were registered in `c`
    /// below messages registered before them: each simple member's prefix
    /// that covers one it did not have ends before it, and the member is
    /// gapped up to its old prefix ([`domain::prefix_after_late`]).
    pub(super) fn index_late(
        &mut self,
        c: &ConversationId,
        late: &[(Seq, UserId)],
    ) -> StoreResult<()> {
        let Some(low) = late.iter().map(|(s, _)| *s).min() else {
            return Ok(());
        };
        let (lo, hi) = (k2(c, &Uuid::nil()), k2(c, &Uuid::max()));
        let mut covering = Vec::new();
        for entry in self
            .prefixes
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            let s = Scores::decode(v.value());
            if s.delivered >= low {
                covering.push((uuid_at(k.value(), 16), s));
            }
        }
        for (u, s) in covering {
            let wm = self.watermark(c, &u)?;
            let ended = domain::prefix_after_late(u, s.delivered, s.from, wm.seq, late);
            if ended < s.delivered {
                let new = Scores {
                    delivered: ended,
                    ..s
                };
                self.set_prefix(c, &u, s, new, Some(s.delivered))?;
            }
        }
        Ok(())
    }

    /// `u` turned sharing read receipts on or off: its public score moves
    /// in each of its conversations.
    pub(super) fn index_sharing(&mut self, u: &UserId, sharing: bool) -> StoreResult<()> {
        let (lo, hi) = (k2(u, &Uuid::nil()), k2(u, &Uuid::max()));
        let convs: Vec<ConversationId> = self
            .user_convs
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
            .map(|e| e.map(|(k, _)| uuid_at(k.value(), 16)))
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        for c in convs {
            let Some(old) = self.scores(&c, u)? else {
                continue;
            };
            let wm = self.watermark(&c, u)?;
            let new = Scores {
                public: old.public_of(wm, sharing),
                ..old
            };
            self.set_scores(&c, u, Some(old), Some(new))?;
        }
        Ok(())
    }
}

impl Tables<Table<'_, Bytes, Bytes>> {
    /// Starts keeping `c`'s counting index, if it is not kept yet: every
    /// member becomes simple or complex, and a simple member's prefix is
    /// walked from its watermark over everything it has (whatever it has
    /// past where the walk stops makes it gapped).
    pub(super) fn keep_index(&mut self, c: &ConversationId) -> StoreResult<()> {
        if self.indexed(c)? {
            return Ok(());
        }
        self.hist_add(c, KEPT, 0, 1)?;
        // Completion times kept before (by an index dropped since) were
        // kept for a version this build starts again from.
        let (lo, hi) = (k_seq(c, 0), k_seq(c, Seq::MAX));
        self.completions
            .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
            .map_err(storage)?;
        for (u, ms) in self.members(c)? {
            self.index_membership(c, &u, &ms)?;
            let top = self
                .runs_between(c, &u, 0, Seq::MAX)?
                .as_slice()
                .iter()
                .map(|r| r.last)
                .max();
            let mut walked = self.scores(c, &u)?;
            while let Some(s) = walked {
                self.index_delivery(c, &u, top)?;
                walked = self.scores(c, &u)?.filter(|n| n.delivered > s.delivered);
            }
        }
        Ok(())
    }
}

/// Builds the counting index of a data directory written before it (once;
/// a marker in `meta` says it is built), for every conversation of more
/// than `above` members ([`Tables::keep_index`]).
pub(super) fn build_count_index(txn: &redb::WriteTransaction, above: u64) -> StoreResult<()> {
    let mut t = open_tables!(txn);
    if get_bytes(&t.meta, META_COUNT_INDEX)?.is_some() {
        return Ok(());
    }
    let mut groups = Vec::new();
    for entry in t.convs.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let meta: ConversationMeta = decode(v.value())?;
        if meta.member_count > above {
            groups.push(uuid_at(k.value(), 0));
        }
    }
    for c in groups {
        t.keep_index(&c)?;
    }
    put(&mut t.meta, META_COUNT_INDEX, &[1])
}
