//! Property test: random interleavings of registrations, deliveries and reads
//! from several devices — with duplicates, reordering and privacy toggles —
//! end in exactly the state a simple reference model computes, as every
//! member sees it, and never show a read the model does not.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use receipts_proto::v1 as pb;
use receipts_tests::*;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

const USERS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    /// Register the next message, sent by user `0`.
    Send(usize),
    /// User delivers message (index into sent messages, modulo).
    Deliver(usize, usize),
    /// User reads up to message (index, modulo).
    Read(usize, usize),
    /// User turns read receipts on or off.
    Share(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..USERS).prop_map(Op::Send),
        3 => (0..USERS, 0..64usize).prop_map(|(u, m)| Op::Deliver(u, m)),
        3 => (0..USERS, 0..64usize).prop_map(|(u, m)| Op::Read(u, m)),
        1 => (0..USERS, any::<bool>()).prop_map(|(u, s)| Op::Share(u, s)),
    ]
}

/// The reference model: the rules of DESIGN.md §3 stated as plainly as possible.
#[derive(Default)]
struct Model {
    messages: Vec<(u64, usize)>, // (seq, sender)
    delivered: HashSet<(usize, usize)>,
    watermark: HashMap<usize, u64>,
    public_watermark: HashMap<usize, u64>,
    private: HashSet<usize>,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Send(u) => {
                let seq = self.messages.len() as u64 + 1;
                self.messages.push((seq, u));
            }
            Op::Deliver(u, i) => {
                if let Some(m) = self.pick(i)
                    && self.messages[m].1 != u
                {
                    self.delivered.insert((u, m));
                }
            }
            Op::Read(u, i) => {
                if let Some(m) = self.pick(i) {
                    let seq = self.messages[m].0;
                    let wm = self.watermark.entry(u).or_default();
                    if seq > *wm {
                        *wm = seq;
                        if !self.private.contains(&u) {
                            self.public_watermark.insert(u, seq);
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

    /// (state per recipient) of message `m` as `viewer` sees it.
    fn view(&self, viewer: usize, m: usize) -> Vec<(usize, pb::RecipientState)> {
        let (seq, sender) = self.messages[m];
        (0..USERS)
            .filter(|u| *u != sender)
            .map(|u| {
                let wm = self.watermark.get(&u).copied().unwrap_or(0);
                let public = self.public_watermark.get(&u).copied().unwrap_or(0);
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
    let mut model = Model::default();
    let mut ids: Vec<Uuid> = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        let device = &mut devices[op_user(op)][n % 2];
        match *op {
            Op::Send(u) => ids.push(conv.send(&mut backend, users[u]).await),
            Op::Deliver(_, i) if !ids.is_empty() => {
                deliver(device, &[ids[i % ids.len()]]).await;
            }
            Op::Read(_, i) if !ids.is_empty() => {
                read_up_to(device, conv.id, ids[i % ids.len()]).await;
            }
            Op::Share(_, on) => set_sharing(device, on).await,
            _ => {}
        }
        model.apply(op);
    }
    for (viewer, dev) in devices.iter_mut().enumerate() {
        for (m, id) in ids.iter().enumerate() {
            let got = receipt(&mut dev[0], conv.id, *id).await;
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
            let tick = if reads == want.len() {
                pb::Tick::Read
            } else if delivered == want.len() {
                pb::Tick::Delivered
            } else {
                pb::Tick::Sent
            };
            prop_assert_eq!(got.tick, tick as i32);
        }
    }
    let _ = conv.next_seq();
    Ok(())
}

fn op_user(op: &Op) -> usize {
    match *op {
        Op::Send(u) | Op::Deliver(u, _) | Op::Read(u, _) | Op::Share(u, _) => u,
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
