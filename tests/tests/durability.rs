//! DESIGN.md §6: "an accepted [request] is never lost". A real `receiptd`
//! process is killed with SIGKILL right after (or while) it acknowledges
//! writes, restarted on the same data directory, and every acknowledged write
//! must be visible, and subscribers must resume from their cursors with no gap.

use receipts_proto::v1 as pb;
use receipts_tests::*;
use std::collections::{HashMap, HashSet};
use tokio::sync::mpsc;
use tonic::{Code, Status};
use uuid::Uuid;

use pb::subscribe_receipts_response::Event as E;

/// A user-side write.
#[derive(Clone, Debug)]
enum Op {
    Deliver(Vec<Uuid>),
    ReadUpTo(Uuid),
    Sharing(bool),
}

/// A write the server acknowledged, with what it answered.
#[derive(Clone, Debug)]
enum Acked {
    Delivered {
        user: Uuid,
        results: Vec<pb::DeliveryResult>,
    },
    Read {
        user: Uuid,
        read_up_to_seq: i64,
    },
    Sharing {
        user: Uuid,
        on: bool,
    },
    Added {
        user: Uuid,
        from_seq: i64,
    },
    Removed {
        user: Uuid,
        from_seq: i64,
    },
    Registered {
        message: Uuid,
        seq: i64,
        sender: Uuid,
    },
}

/// Outcomes of one client's writes, in order; stops at the first error, so
/// at most the last one failed.
type Outcomes = Vec<(String, Result<Acked, Status>)>;

/// Runs `ops` as `user`, one after the other (one device), and pings `acks`
/// after each acknowledged one.
fn spawn_user(
    mut client: UserClient,
    user: Uuid,
    conversation: Uuid,
    ops: Vec<Op>,
    acks: Option<mpsc::UnboundedSender<()>>,
) -> tokio::task::JoinHandle<Outcomes> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        for op in ops {
            let result = match &op {
                Op::Deliver(ids) => client
                    .mark_delivered(pb::MarkDeliveredRequest {
                        message_ids: ids.iter().map(Uuid::to_string).collect(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| Acked::Delivered {
                        user,
                        results: r.into_inner().results,
                    }),
                Op::ReadUpTo(m) => client
                    .mark_read_up_to(pb::MarkReadUpToRequest {
                        conversation_id: conversation.to_string(),
                        message_id: m.to_string(),
                    })
                    .await
                    .map(|r| Acked::Read {
                        user,
                        read_up_to_seq: r.into_inner().read_up_to_seq,
                    }),
                Op::Sharing(on) => client
                    .update_privacy_settings(pb::UpdatePrivacySettingsRequest {
                        settings: Some(pb::PrivacySettings {
                            send_read_receipts: *on,
                        }),
                    })
                    .await
                    .map(|r| Acked::Sharing {
                        user,
                        on: r
                            .into_inner()
                            .settings
                            .expect("settings")
                            .send_read_receipts,
                    }),
            };
            let failed = result.is_err();
            if let (Ok(_), Some(acks)) = (&result, &acks) {
                let _ = acks.send(());
            }
            out.push((format!("{user} {op:?}"), result));
            if failed {
                break;
            }
        }
        out
    })
}

/// What the acknowledged writes imply for one conversation.
#[derive(Debug, Default)]
struct Model {
    conversation: Uuid,
    /// `(id, seq, sender)` of every registered message.
    messages: Vec<(Uuid, i64, Uuid)>,
    /// `(from, until)` seqs per user ever a member.
    membership: HashMap<Uuid, (i64, Option<i64>)>,
    /// The first acknowledged delivery time of `(user, message)`.
    delivered_at: HashMap<(Uuid, Uuid), i64>,
    watermark: HashMap<Uuid, i64>,
    sharing: HashMap<Uuid, bool>,
}

impl Model {
    fn new(conversation: &Conversation, messages: Vec<(Uuid, i64, Uuid)>) -> Self {
        Self {
            conversation: conversation.id,
            messages,
            membership: conversation
                .members
                .iter()
                .map(|u| (*u, (1, None)))
                .collect(),
            ..Self::default()
        }
    }

    fn apply(&mut self, acked: &Acked) {
        match acked {
            Acked::Delivered { user, results } => {
                for r in results {
                    if r.outcome == pb::DeliveryOutcome::NotARecipient as i32 {
                        continue;
                    }
                    let m = Uuid::parse_str(&r.message_id).expect("message id");
                    let first = *self
                        .delivered_at
                        .entry((*user, m))
                        .or_insert(r.delivered_at_ms);
                    assert_eq!(
                        first, r.delivered_at_ms,
                        "a repeated acknowledgement reports the first delivery time"
                    );
                }
            }
            Acked::Read {
                user,
                read_up_to_seq,
            } => {
                let wm = self.watermark.entry(*user).or_default();
                *wm = (*wm).max(*read_up_to_seq);
            }
            Acked::Sharing { user, on } => {
                self.sharing.insert(*user, *on);
            }
            Acked::Added { user, from_seq } => {
                self.membership.insert(*user, (*from_seq, None));
            }
            Acked::Removed { user, from_seq } => {
                self.membership.get_mut(user).expect("a member").1 = Some(*from_seq);
            }
            Acked::Registered {
                message,
                seq,
                sender,
            } => self.messages.push((*message, *seq, *sender)),
        }
    }

    fn member_at(&self, u: Uuid, seq: i64) -> bool {
        self.membership
            .get(&u)
            .is_some_and(|(from, until)| *from <= seq && until.is_none_or(|x| seq < x))
    }

    fn current(&self, u: Uuid) -> bool {
        self.membership
            .get(&u)
            .is_some_and(|(_, until)| until.is_none())
    }

    fn wm(&self, u: Uuid) -> i64 {
        self.watermark.get(&u).copied().unwrap_or(0)
    }

    fn shares(&self, u: Uuid) -> bool {
        self.sharing.get(&u).copied().unwrap_or(true)
    }

    /// `u`'s state for message `m` at `seq`, as `viewer` may see it.
    fn state(&self, viewer: Uuid, u: Uuid, m: Uuid, seq: i64) -> pb::RecipientState {
        let read = self.wm(u) >= seq;
        if read && (viewer == u || self.shares(u)) {
            pb::RecipientState::Read
        } else if read || self.delivered_at.contains_key(&(u, m)) {
            pb::RecipientState::Delivered
        } else {
            pb::RecipientState::None
        }
    }

    /// Checks every message as its sender and each current recipient see it,
    /// every user's unread count and watermark, and privacy settings.
    async fn verify(&self, srv: &ChildServer) {
        let users: Vec<Uuid> = self.membership.keys().copied().collect();
        let last_seq = self.messages.iter().map(|(_, s, _)| *s).max().unwrap_or(0);
        for &(m, seq, sender) in &self.messages {
            let recipients: Vec<Uuid> = users
                .iter()
                .copied()
                .filter(|u| *u != sender && self.member_at(*u, seq))
                .collect();
            let viewers = std::iter::once(sender)
                .chain(recipients.iter().copied().filter(|u| self.current(*u)));
            for viewer in viewers {
                let r = receipt(&mut srv.user(viewer).await, self.conversation, m).await;
                let ctx = format!("message at seq {seq} as seen by {viewer}");
                assert_eq!(r.recipients_total, recipients.len() as i64, "{ctx}");
                assert_eq!(r.recipients.len(), recipients.len(), "{ctx}");
                let (mut delivered, mut read) = (0, 0);
                for u in &recipients {
                    let got = r
                        .recipients
                        .iter()
                        .find(|x| x.user_id == u.to_string())
                        .unwrap_or_else(|| panic!("{ctx}: recipient {u} missing"));
                    let want = self.state(viewer, *u, m, seq);
                    assert_eq!(got.state, want as i32, "{ctx}: recipient {u}");
                    if let Some(at) = self.delivered_at.get(&(*u, m)) {
                        assert_eq!(got.delivered_at_ms, *at, "{ctx}: {u}'s delivery time");
                    }
                    delivered += i64::from(want != pb::RecipientState::None);
                    read += i64::from(want == pb::RecipientState::Read);
                }
                assert_eq!(
                    (r.delivered_count, r.read_count),
                    (delivered, read),
                    "{ctx}"
                );
                let n = recipients.len() as i64;
                let tick = if n > 0 && read == n {
                    pb::Tick::Read
                } else if n > 0 && delivered == n {
                    pb::Tick::Delivered
                } else {
                    pb::Tick::Sent
                };
                assert_eq!(r.tick, tick as i32, "{ctx}");
            }
        }
        for &u in &users {
            let mut client = srv.user(u).await;
            let counts = client
                .get_unread_counts(pb::GetUnreadCountsRequest {
                    conversation_ids: vec![self.conversation.to_string()],
                })
                .await
                .expect("unread counts")
                .into_inner()
                .conversations
                .remove(0);
            if !self.current(u) {
                assert_eq!(
                    counts.outcome,
                    pb::ConversationOutcome::PermissionDenied as i32,
                    "{u} was removed"
                );
            } else {
                let unread = self
                    .messages
                    .iter()
                    .filter(|(_, s, sender)| {
                        *sender != u && self.member_at(u, *s) && *s > self.wm(u)
                    })
                    .count() as i64;
                let got = (
                    counts.outcome,
                    counts.read_up_to_seq,
                    counts.unread_count,
                    counts.last_seq,
                );
                let want = (
                    pb::ConversationOutcome::Ok as i32,
                    self.wm(u),
                    unread,
                    last_seq,
                );
                assert_eq!(got, want, "unread counts of {u}");
            }
            let sharing = client
                .get_privacy_settings(pb::GetPrivacySettingsRequest {})
                .await
                .expect("privacy")
                .into_inner()
                .settings
                .expect("settings")
                .send_read_receipts;
            assert_eq!(sharing, self.shares(u), "privacy of {u}");
        }
    }
}

/// Registers `n` messages from `sender` at the conversation's next seqs.
async fn register(
    backend: &mut BackendClient,
    c: &mut Conversation,
    sender: Uuid,
    n: usize,
) -> Vec<(Uuid, i64, Uuid)> {
    let msgs: Vec<(Uuid, i64, Uuid)> = (0..n)
        .map(|i| (Uuid::now_v7(), c.next_seq() + i as i64, sender))
        .collect();
    backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: msgs
                .iter()
                .map(|(id, seq, s)| registration(*id, c.id, *seq, *s))
                .collect(),
        })
        .await
        .expect("register");
    c.set_next_seq(c.next_seq() + n as i64);
    msgs
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut srv = ChildServer::start(dir.path(), free_port()).await;
    let mut backend = srv.backend().await;
    let mut conv = Conversation::create(&mut backend, 5).await;
    let &[a, b, c, d, e] = conv.members.as_slice() else {
        unreachable!("five members")
    };
    let f = Uuid::now_v7();
    let mut messages = register(&mut backend, &mut conv, a, 8).await;
    messages.extend(register(&mut backend, &mut conv, b, 2).await);
    let m: Vec<Uuid> = messages.iter().map(|(id, _, _)| *id).collect();
    let late = Uuid::now_v7();

    let one_by_one = |ids: &[Uuid]| {
        ids.iter()
            .map(|id| Op::Deliver(vec![*id]))
            .collect::<Vec<_>>()
    };
    let mut scripts: Vec<(Uuid, Vec<Op>)> = vec![
        (a, [one_by_one(&m[8..]), vec![Op::ReadUpTo(m[9])]].concat()),
        (
            b,
            [
                one_by_one(&m),
                vec![
                    Op::ReadUpTo(m[5]),
                    Op::Deliver(m[..3].to_vec()),
                    Op::ReadUpTo(m[3]),
                ],
            ]
            .concat(),
        ),
        (
            c,
            vec![
                Op::Sharing(false),
                Op::Deliver(m[..4].to_vec()),
                Op::ReadUpTo(m[8]),
                Op::Deliver(m[7..].to_vec()),
            ],
        ),
        (
            d,
            [
                one_by_one(&m[4..8]),
                vec![Op::ReadUpTo(m[1]), Op::ReadUpTo(m[9])],
            ]
            .concat(),
        ),
        // e races its own removal: some of these may be refused.
        (
            e,
            [
                one_by_one(&m[..2]),
                vec![Op::ReadUpTo(m[4]), Op::Deliver(vec![m[9]])],
            ]
            .concat(),
        ),
    ];
    // A second device of b, concurrently with the first. It only delivers:
    // timestamps are taken before the writer orders concurrent calls, so a
    // concurrent read of the same messages could legitimately date their
    // delivery a millisecond earlier than this device was told.
    scripts.push((
        b,
        vec![Op::Deliver(m[4..8].to_vec()), Op::Deliver(m[..2].to_vec())],
    ));

    let mut tasks = Vec::new();
    for (user, ops) in scripts {
        tasks.push(spawn_user(srv.user(user).await, user, conv.id, ops, None));
    }
    let backend_task = {
        let mut backend = srv.backend().await;
        let conversation = conv.id;
        tokio::spawn(async move {
            let mut out: Outcomes = Vec::new();
            let r = backend
                .add_members(pb::AddMembersRequest {
                    conversation_id: conversation.to_string(),
                    members: vec![pb::MembershipChange {
                        user_id: f.to_string(),
                        from_seq: 11,
                    }],
                })
                .await
                .map(|_| Acked::Added {
                    user: f,
                    from_seq: 11,
                });
            out.push(("add f".into(), r));
            let r = backend
                .remove_members(pb::RemoveMembersRequest {
                    conversation_id: conversation.to_string(),
                    members: vec![pb::MembershipChange {
                        user_id: e.to_string(),
                        from_seq: 11,
                    }],
                })
                .await
                .map(|_| Acked::Removed {
                    user: e,
                    from_seq: 11,
                });
            out.push(("remove e".into(), r));
            let r = backend
                .register_messages(pb::RegisterMessagesRequest {
                    messages: vec![registration(late, conversation, 11, a)],
                })
                .await
                .map(|_| Acked::Registered {
                    message: late,
                    seq: 11,
                    sender: a,
                });
            out.push(("register seq 11".into(), r));
            out
        })
    };
    tasks.push(backend_task);

    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("client task"));
    }
    // The last acknowledgement is in: no chance to flush anything more.
    srv.kill9();

    let mut model = Model::new(&conv, messages);
    let mut acked = 0;
    for (label, result) in outcomes.iter().flatten() {
        match result {
            Ok(a) => {
                model.apply(a);
                acked += 1;
            }
            Err(s) => assert!(
                label.starts_with(&e.to_string()) && s.code() == Code::PermissionDenied,
                "{label} failed unexpectedly: {s:?}"
            ),
        }
    }
    assert!(acked >= 30, "only {acked} writes were acknowledged");

    let srv = ChildServer::start(dir.path(), free_port()).await;
    model.verify(&srv).await;
}

#[tokio::test]
async fn writes_acknowledged_while_others_are_in_flight_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut srv = ChildServer::start(dir.path(), free_port()).await;
    let mut backend = srv.backend().await;
    let mut conv = Conversation::create(&mut backend, 4).await;
    let &[a, b, c, d] = conv.members.as_slice() else {
        unreachable!("four members")
    };
    let messages = register(&mut backend, &mut conv, a, 300).await;
    let m: Vec<Uuid> = messages.iter().map(|(id, _, _)| *id).collect();

    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for user in [b, c, d] {
        let mut ops = Vec::new();
        if user == d {
            ops.push(Op::Sharing(false));
        }
        for (i, id) in m.iter().enumerate() {
            ops.push(Op::Deliver(vec![*id]));
            if i % 10 == 9 {
                ops.push(Op::ReadUpTo(m[i - 3]));
            }
        }
        let client = srv.user(user).await;
        tasks.push(spawn_user(client, user, conv.id, ops, Some(ack_tx.clone())));
    }
    // The backend keeps registering, one message per call.
    let registrations = {
        let mut backend = srv.backend().await;
        let ack_tx = ack_tx.clone();
        let conversation = conv.id;
        let first_seq = conv.next_seq();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for seq in first_seq..first_seq + 300 {
                let id = Uuid::now_v7();
                let r = backend
                    .register_messages(pb::RegisterMessagesRequest {
                        messages: vec![registration(id, conversation, seq, a)],
                    })
                    .await;
                if r.is_err() {
                    break;
                }
                acked.push(id);
                let _ = ack_tx.send(());
            }
            acked
        })
    };
    drop(ack_tx);
    for _ in 0..200 {
        ack_rx.recv().await.expect("an acknowledgement");
    }
    srv.kill9();

    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("client task"));
    }
    let registered = registrations.await.expect("backend task");
    let total_ops = 3 * (300 + 30) + 1 + 300;
    let acked_ops = outcomes.iter().flatten().filter(|(_, r)| r.is_ok()).count() + registered.len();
    assert!(acked_ops >= 200, "{acked_ops} acknowledged");
    assert!(
        acked_ops < total_ops,
        "the kill must land mid-traffic ({acked_ops} of {total_ops} acknowledged)"
    );

    let srv = ChildServer::start(dir.path(), free_port()).await;
    // Every acknowledged registration exists.
    let mut sender = srv.user(a).await;
    for chunk in registered.chunks(100) {
        let r = sender
            .get_receipts(pb::GetReceiptsRequest {
                conversation_id: conv.id.to_string(),
                message_ids: chunk.iter().map(Uuid::to_string).collect(),
                include_recipients: false,
            })
            .await
            .expect("acknowledged registrations exist");
        assert_eq!(r.into_inner().messages.len(), chunk.len());
    }
    // Every acknowledged delivery, read and privacy change is there. Writes
    // that were in flight may or may not have happened, so reads are checked
    // as "at least".
    for (user, outcome) in [b, c, d].into_iter().zip(&outcomes) {
        let mut model = Model::default();
        for (_, r) in outcome {
            if let Ok(a) = r {
                model.apply(a);
            }
        }
        let mut client = srv.user(user).await;
        let wm = client
            .get_unread_counts(pb::GetUnreadCountsRequest {
                conversation_ids: vec![conv.id.to_string()],
            })
            .await
            .expect("unread")
            .into_inner()
            .conversations[0]
            .read_up_to_seq;
        assert!(
            wm >= model.wm(user),
            "{user}: watermark {wm} < acknowledged {}",
            model.wm(user)
        );
        let mut delivered: Vec<(&(Uuid, Uuid), &i64)> = model.delivered_at.iter().collect();
        delivered.sort();
        assert!(!delivered.is_empty(), "{user} had acknowledged deliveries");
        for chunk in delivered.chunks(100) {
            let r = client
                .get_receipts(pb::GetReceiptsRequest {
                    conversation_id: conv.id.to_string(),
                    message_ids: chunk.iter().map(|((_, m), _)| m.to_string()).collect(),
                    include_recipients: true,
                })
                .await
                .expect("own receipts")
                .into_inner();
            for (msg, ((_, id), at)) in r.messages.iter().zip(chunk) {
                assert_eq!(msg.message_id, id.to_string());
                let own = msg
                    .recipients
                    .iter()
                    .find(|x| x.user_id == user.to_string())
                    .expect("own entry");
                assert_ne!(own.state, pb::RecipientState::None as i32, "{user} {id}");
                assert_eq!(
                    own.delivered_at_ms, **at,
                    "{user} {id}: first delivery time"
                );
            }
        }
        if model.sharing.get(&user) == Some(&false) {
            let sharing = client
                .get_privacy_settings(pb::GetPrivacySettingsRequest {})
                .await
                .expect("privacy")
                .into_inner()
                .settings
                .expect("settings")
                .send_read_receipts;
            assert!(!sharing, "{user} turned read receipts off");
        }
    }
}

/// Reads events until one satisfies `done`; returns them all (live markers
/// excluded).
async fn events_until(
    sub: &mut Subscription,
    done: impl Fn(&pb::SubscribeReceiptsResponse) -> bool,
) -> Vec<pb::SubscribeReceiptsResponse> {
    let mut out = Vec::new();
    loop {
        let ev = sub.next().await.expect("expected event did not arrive");
        if matches!(ev.event, Some(E::Live(_))) {
            continue;
        }
        let stop = done(&ev);
        out.push(ev);
        if stop {
            return out;
        }
    }
}

/// The states of `message` carried by `ev`, if any.
fn message_in(ev: &pb::SubscribeReceiptsResponse, message: Uuid) -> Option<&pb::MessageReceipts> {
    match &ev.event {
        Some(E::Receipts(r)) => r
            .messages
            .iter()
            .find(|m| m.message_id == message.to_string()),
        _ => None,
    }
}

/// Asserts no reset and no cursor already seen, and records the cursors.
fn assert_fresh(events: &[pb::SubscribeReceiptsResponse], seen: &mut HashSet<String>) {
    for ev in events {
        assert!(
            !matches!(ev.event, Some(E::Reset(_))),
            "the cursor must be honoured after a restart, got {ev:?}"
        );
        assert!(
            seen.insert(ev.cursor.clone()),
            "duplicate event (cursor {} already seen): {ev:?}",
            ev.cursor
        );
    }
}

#[tokio::test]
async fn subscriber_cursor_from_before_kill_9_resumes_after_restart_with_no_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut srv = ChildServer::start(dir.path(), free_port()).await;
    let mut backend = srv.backend().await;
    let mut conv = Conversation::create(&mut backend, 2).await;
    let (a, b) = (conv.members[0], conv.members[1]);
    let mut m = Vec::new();
    for _ in 0..3 {
        m.push(conv.send(&mut backend, a).await);
    }
    let mut reader = srv.user(b).await;
    let (mut sub, replayed) = Subscription::open(&mut srv.user(a).await, None).await;
    assert!(replayed.is_empty());
    let mut seen = HashSet::new();
    deliver(&mut reader, &[m[0]]).await;
    read_up_to(&mut reader, conv.id, m[0]).await;
    let before = events_until(&mut sub, |ev| {
        message_in(ev, m[0]).is_some_and(|r| r.tick == pb::Tick::Read as i32)
    })
    .await;
    assert_fresh(&before, &mut seen);
    let cursor = sub.cursor.clone();
    drop(sub);
    // Acknowledged while the subscriber is away; then the process dies.
    let missed = deliver(&mut reader, &[m[1]]).await;
    assert_eq!(
        missed.results[0].outcome,
        pb::DeliveryOutcome::Recorded as i32
    );
    srv.kill9();

    let srv = ChildServer::start(dir.path(), free_port()).await;
    let (mut sub, replayed) = Subscription::open(&mut srv.user(a).await, Some(cursor)).await;
    assert_fresh(&replayed, &mut seen);
    let replayed_m1: Vec<i32> = replayed
        .iter()
        .filter_map(|ev| message_in(ev, m[1]).map(|r| r.tick))
        .collect();
    assert_eq!(
        replayed_m1,
        vec![pb::Tick::Delivered as i32],
        "the write missed before the kill is replayed, once"
    );
    // A new write after the restart arrives live.
    read_up_to(&mut srv.user(b).await, conv.id, m[2]).await;
    let live = events_until(&mut sub, |ev| {
        message_in(ev, m[2]).is_some_and(|r| r.tick == pb::Tick::Read as i32)
    })
    .await;
    assert_fresh(&live, &mut seen);
    let last = live.last().expect("live event");
    assert_eq!(
        message_in(last, m[1]).map(|r| r.tick),
        Some(pb::Tick::Read as i32),
        "the read covers the message delivered before the kill"
    );
}

#[tokio::test]
async fn group_update_pending_in_its_window_at_kill_9_reaches_the_resumed_subscriber() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut srv = ChildServer::start(dir.path(), free_port()).await;
    let mut backend = srv.backend().await;
    let mut conv = Conversation::create(&mut backend, 3).await;
    let (a, b, c) = (conv.members[0], conv.members[1], conv.members[2]);
    let m0 = conv.send(&mut backend, a).await;
    let m1 = conv.send(&mut backend, a).await;
    let (mut sub, _) = Subscription::open(&mut srv.user(a).await, None).await;
    let mut seen = HashSet::new();
    deliver(&mut srv.user(b).await, &[m0]).await;
    let before = events_until(&mut sub, |ev| message_in(ev, m0).is_some()).await;
    assert_fresh(&before, &mut seen);
    let cursor = sub.cursor.clone();
    drop(sub);
    // Acknowledged, then killed well within the 100 ms group window.
    deliver(&mut srv.user(b).await, &[m1]).await;
    srv.kill9();

    let srv = ChildServer::start(dir.path(), free_port()).await;
    let (mut sub, replayed) = Subscription::open(&mut srv.user(a).await, Some(cursor)).await;
    assert_fresh(&replayed, &mut seen);
    // The pending update is flushed after the restart: replayed, or live.
    let pending = if replayed
        .iter()
        .any(|ev| message_in(ev, m1).is_some_and(|r| r.delivered_count == 1))
    {
        Vec::new()
    } else {
        events_until(&mut sub, |ev| {
            message_in(ev, m1).is_some_and(|r| r.delivered_count == 1)
        })
        .await
    };
    assert_fresh(&pending, &mut seen);
    deliver(&mut srv.user(c).await, &[m1]).await;
    let live = events_until(&mut sub, |ev| {
        message_in(ev, m1).is_some_and(|r| r.delivered_count == 2)
    })
    .await;
    assert_fresh(&live, &mut seen);
    let last = message_in(live.last().expect("live"), m1).expect("m1");
    assert_eq!(last.tick, pb::Tick::Delivered as i32);
}
