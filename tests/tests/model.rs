//! Property test: random interleavings of registrations, deliveries and reads
//! from several devices — with duplicates, reordering, privacy toggles,
//! messages in threads (read positions per thread),
//! members leaving and joining again, deliveries of several messages at once
//! and messages registered late into a gap below later ones (which must not
//! be delivered by a run of deliveries written before them) — end in exactly
//! the state a simple
//! reference model computes, as every member sees it, both with the
//! per-recipient list and counts only (which the Redis store answers from its
//! counting indexes), and never show a read the model does not. A subscriber
//! that applies range events and one that does not end in the states of now
//! after a replay from the start, and so do the live ranges when nobody
//! turned read receipts off.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use receipts_proto::v1 as pb;
use receipts_tests::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

const USERS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    /// Register the next message, sent by user `0`.
    Send(usize),
    /// User delivers messages (index into sent messages, modulo, and how
    /// many in registration order) in one call.
    Deliver(usize, usize, usize),
    /// User reads up to message (index, modulo).
    Read(usize, usize),
    /// User turns read receipts on or off.
    Share(usize, bool),
    /// User leaves from a seq on: the next one, or up to that many earlier
    /// (a change may apply to messages already registered).
    Leave(usize, u64),
    /// User (re)joins from a seq on, chosen the same way.
    Join(usize, u64),
    /// The next seq stays unregistered for now: a gap.
    Skip,
    /// User registers a message late, into a gap (index, modulo).
    Fill(usize, usize),
    /// User registers the next message in the thread under a main-timeline
    /// message (index among them, modulo).
    Reply(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..USERS).prop_map(Op::Send),
        3 => (0..USERS, 0..64usize, 1..5usize).prop_map(|(u, m, n)| Op::Deliver(u, m, n)),
        3 => (0..USERS, 0..64usize).prop_map(|(u, m)| Op::Read(u, m)),
        1 => (0..USERS, any::<bool>()).prop_map(|(u, s)| Op::Share(u, s)),
        1 => (0..USERS, 0..4u64).prop_map(|(u, back)| Op::Leave(u, back)),
        1 => (0..USERS, 0..4u64).prop_map(|(u, back)| Op::Join(u, back)),
        1 => Just(Op::Skip),
        1 => (0..USERS, 0..8usize).prop_map(|(u, g)| Op::Fill(u, g)),
        2 => (0..USERS, 0..8usize).prop_map(|(u, r)| Op::Reply(u, r)),
    ]
}

/// The reference model: the rules of DESIGN.md §3 stated as plainly as possible.
#[derive(Default)]
struct Model {
    messages: Vec<(u64, usize)>, // (seq, sender), in registration order
    /// Each message's timeline: 0 (main) or its thread root's seq.
    timelines: Vec<u64>,
    /// Seqs skipped and not registered yet.
    gaps: Vec<u64>,
    next: u64,
    delivered: HashSet<(usize, usize)>,
    /// Read positions by (user, timeline).
    watermark: HashMap<(usize, u64), u64>,
    public_watermark: HashMap<(usize, u64), u64>,
    private: HashSet<usize>,
    /// Membership intervals per user: (from, until).
    intervals: HashMap<usize, Vec<(u64, Option<u64>)>>,
}

impl Model {
    fn new() -> Self {
        Self {
            intervals: (0..USERS).map(|u| (u, vec![(1, None)])).collect(),
            next: 1,
            ..Self::default()
        }
    }

    fn next_seq(&self) -> u64 {
        self.next
    }

    /// The gap a `Fill` registers into, if any.
    fn gap(&self, g: usize) -> Option<u64> {
        (!self.gaps.is_empty()).then(|| self.gaps[g % self.gaps.len()])
    }

    fn current(&self, u: usize) -> bool {
        self.intervals[&u].last().is_some_and(|i| i.1.is_none())
    }

    fn member_at(&self, u: usize, seq: u64) -> bool {
        self.intervals[&u]
            .iter()
            .any(|&(from, until)| from <= seq && until.is_none_or(|x| seq < x))
    }

    /// The main-timeline messages (indexes), in registration order.
    fn main_messages(&self) -> Vec<usize> {
        (0..self.messages.len())
            .filter(|m| self.timelines[*m] == 0)
            .collect()
    }

    /// The root a `Reply` goes under, if any.
    fn root(&self, r: usize) -> Option<usize> {
        let roots = self.main_messages();
        (!roots.is_empty()).then(|| roots[r % roots.len()])
    }

    /// Whether the server accepts `op` (else the test does not send it).
    fn allows(&self, op: &Op) -> bool {
        match *op {
            Op::Send(u) | Op::Deliver(u, ..) | Op::Read(u, _) => self.current(u),
            Op::Reply(u, r) => self.current(u) && self.root(r).is_some(),
            Op::Share(..) | Op::Skip => true,
            // The backend registers only from a member at the seq.
            Op::Fill(u, g) => self.gap(g).is_some_and(|seq| self.member_at(u, seq)),
            Op::Leave(u, _) => {
                let last = self.intervals[&u].last().expect("interval");
                self.current(u) && self.next_seq() > last.0
            }
            Op::Join(u, _) => !self.current(u),
        }
    }

    /// The seq a membership change takes effect from: `back` before the next
    /// seq, but never where the server would refuse it (a leave must come
    /// after the join, a join not before the last leave).
    fn change_from(&self, op: &Op) -> u64 {
        let last = *self.intervals[&op_user(op)].last().expect("interval");
        match *op {
            Op::Leave(_, back) => self.next_seq().saturating_sub(back).max(last.0 + 1),
            Op::Join(_, back) => self
                .next_seq()
                .saturating_sub(back)
                .max(last.1.unwrap_or(1))
                .max(1),
            _ => self.next_seq(),
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Send(u) => {
                let seq = self.next_seq();
                self.messages.push((seq, u));
                self.timelines.push(0);
                self.next += 1;
            }
            Op::Reply(u, r) => {
                let root = self.messages[self.root(r).expect("allowed")].0;
                let seq = self.next_seq();
                self.messages.push((seq, u));
                self.timelines.push(root);
                self.next += 1;
            }
            Op::Skip => {
                self.gaps.push(self.next);
                self.next += 1;
            }
            Op::Fill(u, g) => {
                if let Some(seq) = self.gap(g) {
                    self.gaps.retain(|s| *s != seq);
                    self.messages.push((seq, u));
                    self.timelines.push(0);
                }
            }
            Op::Deliver(u, i, n) => {
                for m in self.batch(i, n) {
                    if self.messages[m].1 != u && self.member_at(u, self.messages[m].0) {
                        self.delivered.insert((u, m));
                    }
                }
            }
            Op::Leave(u, _) => {
                let from = self.change_from(op);
                let last = self.intervals.get_mut(&u).and_then(|i| i.last_mut());
                last.expect("interval").1 = Some(from);
            }
            Op::Join(u, _) => {
                let from = self.change_from(op);
                self.intervals.get_mut(&u).expect("user").push((from, None));
            }
            Op::Read(u, i) => {
                if let Some(m) = self.pick(i) {
                    let (seq, timeline) = (self.messages[m].0, self.timelines[m]);
                    let wm = self.watermark.entry((u, timeline)).or_default();
                    if seq > *wm {
                        *wm = seq;
                        if !self.private.contains(&u) {
                            self.public_watermark.insert((u, timeline), seq);
                        }
                    }
                }
            }
            Op::Share(u, on) => {
                if on {
                    self.private.remove(&u);
                } else {
                    self.private.insert(u);
                }
            }
        }
    }

    fn pick(&self, i: usize) -> Option<usize> {
        (!self.messages.is_empty()).then(|| i % self.messages.len())
    }

    /// Up to `n` messages from `i` on, in registration order.
    fn batch(&self, i: usize, n: usize) -> Vec<usize> {
        match self.pick(i) {
            Some(m) => (m..self.messages.len()).take(n).collect(),
            None => Vec::new(),
        }
    }

    /// (state per recipient) of message `m` as `viewer` sees it.
    fn view(&self, viewer: usize, m: usize) -> Vec<(usize, pb::RecipientState)> {
        let (seq, sender) = self.messages[m];
        let timeline = self.timelines[m];
        (0..USERS)
            .filter(|u| *u != sender && self.member_at(*u, seq))
            .map(|u| {
                let wm = self.watermark.get(&(u, timeline)).copied().unwrap_or(0);
                let public = self
                    .public_watermark
                    .get(&(u, timeline))
                    .copied()
                    .unwrap_or(0);
                let read = if viewer == u {
                    wm >= seq
                } else {
                    !self.private.contains(&u) && public >= seq
                };
                let delivered = self.delivered.contains(&(u, m)) || wm >= seq;
                let state = if read {
                    pb::RecipientState::Read
                } else if delivered {
                    pb::RecipientState::Delivered
                } else {
                    pb::RecipientState::None
                };
                (u, state)
            })
            .collect()
    }
}

async fn run_case(server: &TestServer, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut backend = server.backend().await;
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::now_v7()).collect();
    let mut conv = Conversation::create_with(&mut backend, users.clone()).await;
    // Two devices per user: ops alternate between them.
    let mut devices = Vec::new();
    for u in &users {
        devices.push([server.user(*u).await, server.user(*u).await]);
    }
    // Each user's stream position before anything happened: the replays
    // at the end must bring a subscriber to the states of now.
    // Live streams that take ranges stay open throughout.
    let mut start_cursors = Vec::new();
    let mut live_subs = Vec::new();
    for dev in devices.iter_mut() {
        let (sub, _) = Subscription::open_with(&mut dev[0], None, true).await;
        start_cursors.push(sub.cursor.clone());
        live_subs.push(sub);
    }
    let mut model = Model::new();
    let mut ids: Vec<Uuid> = Vec::new();
    // Each message's seq and sender, by index in `ids`, and whether it was
    // registered late (into a gap: it may be born read, below a watermark).
    let mut placed: Vec<(i64, usize, bool)> = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        if !model.allows(op) {
            continue;
        }
        let device = &mut devices[op_user(op)][n % 2];
        let change = |u: usize| pb::MembershipChange {
            user_id: users[u].to_string(),
            from_seq: model.change_from(op) as i64,
        };
        match *op {
            Op::Send(u) => {
                placed.push((conv.next_seq(), u, false));
                ids.push(conv.send(&mut backend, users[u]).await);
            }
            Op::Skip => conv.set_next_seq(conv.next_seq() + 1),
            Op::Reply(u, r) => {
                let seq = conv.next_seq();
                let root = ids[model.root(r).expect("allowed")];
                let id = Uuid::now_v7();
                backend
                    .register_messages(pb::RegisterMessagesRequest {
                        messages: vec![pb::MessageRegistration {
                            thread_root_message_id: root.to_string(),
                            ..registration(id, conv.id, seq, users[u])
                        }],
                    })
                    .await
                    .expect("register in a thread");
                conv.set_next_seq(seq + 1);
                placed.push((seq, u, false));
                ids.push(id);
            }
            Op::Fill(u, g) => {
                let seq = model.gap(g).expect("allowed") as i64;
                let id = Uuid::now_v7();
                backend
                    .register_messages(pb::RegisterMessagesRequest {
                        messages: vec![registration(id, conv.id, seq, users[u])],
                    })
                    .await
                    .expect("register late");
                placed.push((seq, u, true));
                ids.push(id);
            }
            Op::Deliver(_, i, n) if !ids.is_empty() => {
                let batch: Vec<Uuid> = model.batch(i, n).into_iter().map(|m| ids[m]).collect();
                deliver(device, &batch).await;
            }
            Op::Read(_, i) if !ids.is_empty() => {
                read_up_to(device, conv.id, ids[i % ids.len()]).await;
            }
            Op::Share(_, on) => set_sharing(device, on).await,
            Op::Leave(u, _) => {
                backend
                    .remove_members(pb::RemoveMembersRequest {
                        conversation_id: conv.id.to_string(),
                        members: vec![change(u)],
                    })
                    .await
                    .expect("remove member");
            }
            Op::Join(u, _) => {
                backend
                    .add_members(pb::AddMembersRequest {
                        conversation_id: conv.id.to_string(),
                        members: vec![change(u)],
                    })
                    .await
                    .expect("add member");
            }
            _ => {}
        }
        model.apply(op);
        // Asking in between fills the store's caches (completion times) that
        // later changes must invalidate.
        if !ids.is_empty()
            && let Some(v) = (0..USERS).find(|u| model.current(*u))
        {
            counts_only(&mut devices[v][0], conv.id, ids[n % ids.len()]).await;
        }
    }
    for (viewer, dev) in devices.iter_mut().enumerate() {
        if !model.current(viewer) {
            continue;
        }
        for (m, id) in ids.iter().enumerate() {
            let got = receipt(&mut dev[0], conv.id, *id).await;
            let counted = counts_only(&mut dev[1], conv.id, *id).await;
            let mut listed = got.clone();
            listed.recipients.clear();
            prop_assert_eq!(
                &counted,
                &listed,
                "viewer {} message {}: counts only vs with recipients",
                viewer,
                m
            );
            let want = model.view(viewer, m);
            let mut got_states: Vec<(usize, pb::RecipientState)> = got
                .recipients
                .iter()
                .map(|r| {
                    let u = users
                        .iter()
                        .position(|x| x.to_string() == r.user_id)
                        .expect("known user");
                    (u, pb::RecipientState::try_from(r.state).expect("state"))
                })
                .collect();
            got_states.sort_by_key(|(u, _)| *u);
            prop_assert_eq!(&got_states, &want, "viewer {} message {}", viewer, m);
            let reads = want
                .iter()
                .filter(|(_, s)| *s == pb::RecipientState::Read)
                .count();
            let delivered = want
                .iter()
                .filter(|(_, s)| *s != pb::RecipientState::None)
                .count();
            prop_assert_eq!(got.read_count as usize, reads);
            prop_assert_eq!(got.delivered_count as usize, delivered);
            // A message nobody else can see stays sent.
            let tick = if !want.is_empty() && reads == want.len() {
                pb::Tick::Read
            } else if !want.is_empty() && delivered == want.len() {
                pb::Tick::Delivered
            } else {
                pb::Tick::Sent
            };
            prop_assert_eq!(got.tick, tick as i32);
            prop_assert_eq!(got.read_at_ms != 0, tick == pb::Tick::Read);
            prop_assert_eq!(got.delivered_at_ms != 0, tick != pb::Tick::Sent);
        }
    }
    // Replays from the start, with ranges and without, applied to the
    // messages each sender holds, end in the states GetReceipts gives now.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    for (viewer, dev) in devices.iter_mut().enumerate() {
        if !model.current(viewer) {
            continue;
        }
        let mine: BTreeMap<i64, Uuid> = placed
            .iter()
            .zip(&ids)
            .filter(|((_, sender, _), _)| *sender == viewer)
            .map(|((seq, _, _), id)| (*seq, *id))
            .collect();
        let late: HashSet<Uuid> = placed
            .iter()
            .zip(&ids)
            .filter(|((_, _, late), _)| *late)
            .map(|(_, id)| *id)
            .collect();
        let cursor = Some(start_cursors[viewer].clone());
        let (_s, with) = Subscription::open_with(&mut dev[0], cursor.clone(), true).await;
        let (_s, without) = Subscription::open_with(&mut dev[1], cursor, false).await;
        let ranged = applied(&with, &mine, users[viewer])?;
        let plain = applied(&without, &mine, users[viewer])?;
        prop_assert_eq!(&ranged, &plain, "viewer {}: ranges vs messages", viewer);
        // Live, the ranges as they were built at commit: applied in order,
        // they end in the states of now too, unless someone turned read
        // receipts off (that changes what the viewer may see and pushes
        // nothing), or the
        // viewer was away for a while (nothing is pushed to a non-member).
        let mut live = Vec::new();
        while let Some(ev) = live_subs[viewer]
            .next_within(std::time::Duration::from_millis(50))
            .await
        {
            live.push(ev);
        }
        let quiet = !ops.iter().any(|op| match op {
            Op::Share(_, on) => !on,
            Op::Leave(u, _) => *u == viewer,
            _ => false,
        });
        if quiet {
            let live = applied(&live, &mine, users[viewer])?;
            prop_assert_eq!(&live, &ranged, "viewer {}: live ranges vs now", viewer);
        }
        for id in mine.values() {
            let now = counts_only(&mut dev[0], conv.id, *id).await;
            let now = (
                (
                    now.tick,
                    now.delivered_count,
                    now.read_count,
                    now.recipients_total,
                ),
                (now.delivered_at_ms, now.read_at_ms),
            );
            match ranged.get(id) {
                Some(got) => prop_assert_eq!(*got, now, "viewer {} replayed state", viewer),
                None => prop_assert!(
                    late.contains(id) || (now.0.1 == 0 && now.0.2 == 0),
                    "viewer {}: {:?} changed, but no replayed event says so",
                    viewer,
                    now
                ),
            }
        }
    }
    let _ = conv.next_seq();
    Ok(())
}

/// What a subscriber holds of one message: (tick, delivered, read,
/// recipients) and (delivered at, read at).
type State = ((i32, i64, i64, i64), (i64, i64));

/// The state of each message a subscriber holds
/// (`mine`: seq -> id) after applying `events` in order: a range to the
/// held messages in it, a message entry to that message.
fn applied(
    events: &[pb::SubscribeReceiptsResponse],
    mine: &BTreeMap<i64, Uuid>,
    me: Uuid,
) -> Result<HashMap<Uuid, State>, TestCaseError> {
    use pb::subscribe_receipts_response::Event as E;
    let mut out = HashMap::new();
    for ev in events {
        match &ev.event {
            Some(E::Receipts(r)) => {
                for x in &r.ranges {
                    for (_, id) in mine.range(x.from_seq..=x.to_seq) {
                        out.insert(
                            *id,
                            (
                                (x.tick, x.delivered_count, x.read_count, x.recipients_total),
                                (x.delivered_at_ms, x.read_at_ms),
                            ),
                        );
                    }
                }
                for m in &r.messages {
                    prop_assert_eq!(&m.sender_id, &me.to_string());
                    let id: Uuid = m.message_id.parse().expect("id");
                    out.insert(
                        id,
                        (
                            (m.tick, m.delivered_count, m.read_count, m.recipients_total),
                            (m.delivered_at_ms, m.read_at_ms),
                        ),
                    );
                }
            }
            Some(E::Reset(_)) => prop_assert!(false, "unexpected reset"),
            _ => {}
        }
    }
    Ok(out)
}

fn op_user(op: &Op) -> usize {
    match *op {
        Op::Send(u)
        | Op::Reply(u, _)
        | Op::Deliver(u, ..)
        | Op::Read(u, _)
        | Op::Share(u, _)
        | Op::Leave(u, _)
        | Op::Join(u, _)
        | Op::Fill(u, _) => u,
        // Not a user's op; the device picked for it is not used.
        Op::Skip => 0,
    }
}

#[test]
fn random_interleavings_end_in_the_reference_models_state() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(TestServer::start());
    let cases = std::env::var("RECEIPTS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            // Every case starts with a message so reads have a target.
            let mut all = vec![Op::Send(0)];
            all.extend(ops);
            rt.block_on(run_case(&server, &all))
        })
        .expect("model and server agree");
}
