//! DESIGN.md §2–§3: states, timestamps, watermarks, counts, membership,
//! privacy and unread counts, each rule as its own test, over a real socket.

use receipts_proto::v1 as pb;
use receipts_tests::*;
use std::time::Duration;
use uuid::Uuid;

fn tick(m: &pb::MessageReceipts) -> pb::Tick {
    pb::Tick::try_from(m.tick).expect("tick")
}

fn state_of(m: &pb::MessageReceipts, user: Uuid) -> pb::RecipientState {
    let r = m
        .recipients
        .iter()
        .find(|r| r.user_id == user.to_string())
        .expect("recipient listed");
    pb::RecipientState::try_from(r.state).expect("state")
}

fn recipient(m: &pb::MessageReceipts, user: Uuid) -> pb::RecipientReceipt {
    m.recipients
        .iter()
        .find(|r| r.user_id == user.to_string())
        .cloned()
        .expect("recipient listed")
}

/// Waits long enough for the next millisecond timestamp to differ.
async fn next_millisecond() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

#[tokio::test]
async fn registered_message_is_sent_with_counts_and_sent_time() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m = c.send(&mut backend, a).await;
    let r = receipt(&mut s.user(b).await, c.id, m).await;
    assert_eq!(tick(&r), pb::Tick::Sent);
    assert_eq!(
        (r.delivered_count, r.read_count, r.recipients_total),
        (0, 0, 2)
    );
    assert_eq!(r.seq, 1);
    assert_eq!(r.sender_id, a.to_string());
    assert!(r.sent_at_ms > 0);
    assert_eq!(r.recipients.len(), 2, "sender is not its own recipient");
}

#[tokio::test]
async fn registration_keeps_the_time_the_backend_supplies() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let c = Conversation::create(&mut backend, 2).await;
    let m = Uuid::now_v7();
    let mut reg = registration(m, c.id, 1, c.members[0]);
    reg.sent_at_ms = 1_700_000_000_000;
    backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![reg],
        })
        .await
        .unwrap();
    let r = receipt(&mut s.user(c.members[1]).await, c.id, m).await;
    assert_eq!(r.sent_at_ms, 1_700_000_000_000);
}

#[tokio::test]
async fn delivered_tick_needs_every_recipient() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let (a, b, d) = (c.members[0], c.members[1], c.members[2]);
    let m = c.send(&mut backend, a).await;
    deliver(&mut s.user(b).await, &[m]).await;
    let r = receipt(&mut s.user(a).await, c.id, m).await;
    assert_eq!(tick(&r), pb::Tick::Sent);
    assert_eq!(r.delivered_count, 1);
    assert_eq!(r.delivered_at_ms, 0, "not everyone has it yet");
    deliver(&mut s.user(d).await, &[m]).await;
    let r = receipt(&mut s.user(a).await, c.id, m).await;
    assert_eq!(tick(&r), pb::Tick::Delivered);
    assert_eq!(r.delivered_count, 2);
    assert!(r.delivered_at_ms > 0);
}

/// MarkDelivered's two forms (ids alone, ids in their conversation) record
/// the same facts; results follow the request: `message_ids` first, then
/// `conversations`, one per distinct message.
#[tokio::test]
async fn mark_delivered_by_id_or_in_the_conversation_records_the_same() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (a, b, c) = (group.members[0], group.members[1], group.members[2]);
    let mut direct = Conversation::create_with(&mut backend, vec![b, c]).await;
    let m: Vec<Uuid> = [
        group.send(&mut backend, a).await,
        group.send(&mut backend, a).await,
        group.send(&mut backend, a).await,
    ]
    .into();
    let own = direct.send(&mut backend, b).await;
    let mut phone = s.user(b).await;
    let by_conversation = |c: Uuid, ids: &[Uuid]| pb::ConversationMessageIds {
        conversation_id: c.to_string(),
        message_ids: ids.iter().map(Uuid::to_string).collect(),
    };
    let out = phone
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: vec![m[1].to_string()],
            conversations: vec![
                by_conversation(group.id, &[m[0], m[1], m[2], m[0]]),
                by_conversation(direct.id, &[own]),
            ],
        })
        .await
        .expect("mark delivered")
        .into_inner()
        .results;
    let got: Vec<(String, i32)> = out
        .iter()
        .map(|r| (r.message_id.clone(), r.outcome))
        .collect();
    let want: Vec<(String, i32)> = [
        (m[1], pb::DeliveryOutcome::Recorded),
        (m[0], pb::DeliveryOutcome::Recorded),
        (m[2], pb::DeliveryOutcome::Recorded),
        (own, pb::DeliveryOutcome::NotARecipient),
    ]
    .iter()
    .map(|(id, o)| (id.to_string(), *o as i32))
    .collect();
    assert_eq!(got, want);
    // The same messages by id alone: already delivered, at the same times.
    let again = deliver(&mut s.user(b).await, &m).await.results;
    assert_eq!(again.len(), 3);
    for second in &again {
        let first = out
            .iter()
            .find(|r| r.message_id == second.message_id)
            .expect("named before");
        assert_eq!(second.outcome, pb::DeliveryOutcome::AlreadyDelivered as i32);
        assert_eq!(second.delivered_at_ms, first.delivered_at_ms);
    }
    for id in &m {
        let r = receipt(&mut s.user(a).await, group.id, *id).await;
        assert_eq!(r.delivered_count, 1, "b has {id}");
        assert_eq!(state_of(&r, c), pb::RecipientState::None);
    }
}

#[tokio::test]
async fn delivered_time_is_the_first_acknowledgement_from_any_device() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m = c.send(&mut backend, a).await;
    let (mut phone, mut laptop) = (s.user(b).await, s.user(b).await);
    let first = deliver(&mut phone, &[m]).await.results[0].clone();
    assert_eq!(first.outcome, pb::DeliveryOutcome::Recorded as i32);
    next_millisecond().await;
    let second = deliver(&mut laptop, &[m]).await.results[0].clone();
    assert_eq!(second.outcome, pb::DeliveryOutcome::AlreadyDelivered as i32);
    assert_eq!(second.delivered_at_ms, first.delivered_at_ms);
    let r = receipt(&mut s.user(a).await, c.id, m).await;
    assert_eq!(recipient(&r, b).delivered_at_ms, first.delivered_at_ms);
}

#[tokio::test]
async fn read_implies_delivered_without_mark_delivered() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m = c.send(&mut backend, a).await;
    read_up_to(&mut s.user(b).await, c.id, m).await;
    let r = receipt(&mut s.user(a).await, c.id, m).await;
    assert_eq!(tick(&r), pb::Tick::Read);
    assert_eq!((r.delivered_count, r.read_count), (1, 1));
    let rb = recipient(&r, b);
    assert_eq!(rb.delivered_at_ms, rb.read_at_ms);
    let again = deliver(&mut s.user(b).await, &[m]).await.results[0].clone();
    assert_eq!(again.outcome, pb::DeliveryOutcome::AlreadyDelivered as i32);
}

#[tokio::test]
async fn read_up_to_covers_every_message_with_a_lower_or_equal_seq() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(c.send(&mut backend, a).await);
    }
    let resp = read_up_to(&mut s.user(b).await, c.id, ids[2]).await;
    assert_eq!(
        (resp.read_up_to_seq, resp.advanced, resp.unread_count),
        (3, true, 1)
    );
    let mut sender = s.user(a).await;
    for (i, m) in ids.iter().enumerate() {
        let want = if i <= 2 {
            pb::Tick::Read
        } else {
            pb::Tick::Sent
        };
        assert_eq!(
            tick(&receipt(&mut sender, c.id, *m).await),
            want,
            "message {i}"
        );
    }
}

#[tokio::test]
async fn read_time_is_exact_per_message_from_the_first_covering_read() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(c.send(&mut backend, a).await);
    }
    let mut reader = s.user(b).await;
    read_up_to(&mut reader, c.id, ids[1]).await;
    next_millisecond().await;
    read_up_to(&mut reader, c.id, ids[3]).await;
    let mut sender = s.user(a).await;
    let mut times = Vec::new();
    for m in &ids {
        times.push(recipient(&receipt(&mut sender, c.id, *m).await, b).read_at_ms);
    }
    assert!(times.iter().all(|t| *t > 0));
    assert_eq!(times[0], times[1], "both covered by the first read");
    assert_eq!(times[2], times[3], "both covered by the second read");
    assert!(times[1] < times[2], "the second read came later: {times:?}");
}

#[tokio::test]
async fn late_duplicate_or_reordered_reads_change_nothing() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m1 = c.send(&mut backend, a).await;
    let m2 = c.send(&mut backend, a).await;
    let mut reader = s.user(b).await;
    read_up_to(&mut reader, c.id, m2).await;
    let before = receipt(&mut s.user(a).await, c.id, m1).await;
    next_millisecond().await;
    let late = read_up_to(&mut reader, c.id, m1).await;
    assert_eq!((late.read_up_to_seq, late.advanced), (2, false));
    let dup = read_up_to(&mut reader, c.id, m2).await;
    assert_eq!((dup.read_up_to_seq, dup.advanced), (2, false));
    let after = receipt(&mut s.user(a).await, c.id, m1).await;
    assert_eq!(before, after);
}

#[tokio::test]
async fn watermarks_merge_by_max_across_devices() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let ids = [
        c.send(&mut backend, a).await,
        c.send(&mut backend, a).await,
        c.send(&mut backend, a).await,
    ];
    let (mut phone, mut laptop) = (s.user(b).await, s.user(b).await);
    read_up_to(&mut laptop, c.id, ids[2]).await;
    let phone_late = read_up_to(&mut phone, c.id, ids[0]).await;
    assert_eq!(phone_late.read_up_to_seq, 3);
    let counts = phone
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![c.id.to_string()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts.conversations[0].read_up_to_seq, 3);
    assert_eq!(counts.conversations[0].unread_count, 0);
}

#[tokio::test]
async fn group_counts_show_how_many_of_how_many() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 5).await;
    let sender = c.members[0];
    let m = c.send(&mut backend, sender).await;
    for u in &c.members[1..4] {
        deliver(&mut s.user(*u).await, &[m]).await;
    }
    for u in &c.members[1..3] {
        read_up_to(&mut s.user(*u).await, c.id, m).await;
    }
    let r = receipt(&mut s.user(sender).await, c.id, m).await;
    assert_eq!(
        (r.delivered_count, r.read_count, r.recipients_total),
        (3, 2, 4)
    );
    assert_eq!(tick(&r), pb::Tick::Sent);
    for u in &c.members[3..] {
        read_up_to(&mut s.user(*u).await, c.id, m).await;
    }
    let r = receipt(&mut s.user(sender).await, c.id, m).await;
    assert_eq!(
        (r.delivered_count, r.read_count, r.recipients_total),
        (4, 4, 4)
    );
    assert_eq!(tick(&r), pb::Tick::Read);
    assert!(r.read_at_ms >= r.delivered_at_ms && r.read_at_ms > 0);
}

#[tokio::test]
async fn completion_times_follow_membership_changes_to_registered_messages() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 4).await;
    let (sender, a, b, last) = (c.members[0], c.members[1], c.members[2], c.members[3]);
    c.send(&mut backend, sender).await;
    let m = c.send(&mut backend, sender).await; // seq 2
    let mut times = Vec::new();
    for u in [a, b, last] {
        next_millisecond().await;
        times.push(read_up_to(&mut s.user(u).await, c.id, m).await);
    }
    let mut viewer = s.user(sender).await;
    let all = counts_only(&mut viewer, c.id, m).await;
    assert_eq!((tick(&all), all.read_count), (pb::Tick::Read, 3));
    let listed = receipt(&mut viewer, c.id, m).await;
    assert_eq!(all.read_at_ms, recipient(&listed, last).read_at_ms);
    // The last reader turns out to have left before the message: the message
    // was read by everyone when `b` read it.
    let change = |user: Uuid, from_seq: i64| pb::MembershipChange {
        user_id: user.to_string(),
        from_seq,
    };
    backend
        .remove_members(pb::RemoveMembersRequest {
            conversation_id: c.id.to_string(),
            members: vec![change(last, 2)],
        })
        .await
        .unwrap();
    let fewer = counts_only(&mut viewer, c.id, m).await;
    assert_eq!((fewer.read_count, fewer.recipients_total), (2, 2));
    assert_eq!(fewer.read_at_ms, recipient(&listed, b).read_at_ms);
    assert!(fewer.read_at_ms < all.read_at_ms);
    // Someone added from before the message is a recipient who has not read.
    let newcomer = Uuid::now_v7();
    backend
        .add_members(pb::AddMembersRequest {
            conversation_id: c.id.to_string(),
            members: vec![change(newcomer, 1)],
        })
        .await
        .unwrap();
    let more = counts_only(&mut viewer, c.id, m).await;
    assert_eq!(
        (tick(&more), more.read_count, more.recipients_total),
        (pb::Tick::Sent, 2, 3)
    );
    assert_eq!((more.read_at_ms, more.delivered_at_ms), (0, 0));
    next_millisecond().await;
    read_up_to(&mut s.user(newcomer).await, c.id, m).await;
    let again = counts_only(&mut viewer, c.id, m).await;
    let listed = receipt(&mut viewer, c.id, m).await;
    assert_eq!(tick(&again), pb::Tick::Read);
    assert_eq!(again.read_at_ms, recipient(&listed, newcomer).read_at_ms);
    assert!(again.read_at_ms > all.read_at_ms);
    let mut plain = listed.clone();
    plain.recipients.clear();
    assert_eq!(again, plain);
}

#[tokio::test]
async fn recipients_are_members_at_the_message_seq_minus_the_sender() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let (a, b, d) = (c.members[0], c.members[1], c.members[2]);
    let newcomer = Uuid::now_v7();
    let m1 = c.send(&mut backend, a).await;
    c.add_member(&mut backend, newcomer, 2).await;
    let m2 = c.send(&mut backend, a).await;
    c.remove_member(&mut backend, d, 3).await;
    let m3 = c.send(&mut backend, a).await;
    let mut viewer = s.user(b).await;
    let total = |r: &pb::MessageReceipts| {
        let mut users: Vec<String> = r.recipients.iter().map(|x| x.user_id.clone()).collect();
        users.sort();
        (r.recipients_total, users)
    };
    let sorted = |v: &[Uuid]| {
        let mut s: Vec<String> = v.iter().map(Uuid::to_string).collect();
        s.sort();
        s
    };
    assert_eq!(
        total(&receipt(&mut viewer, c.id, m1).await),
        (2, sorted(&[b, d]))
    );
    assert_eq!(
        total(&receipt(&mut viewer, c.id, m2).await),
        (3, sorted(&[b, d, newcomer]))
    );
    assert_eq!(
        total(&receipt(&mut viewer, c.id, m3).await),
        (2, sorted(&[b, newcomer]))
    );
}

#[tokio::test]
async fn a_member_who_joined_later_is_not_a_recipient_of_earlier_messages() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let m1 = c.send(&mut backend, c.members[0]).await;
    let late = Uuid::now_v7();
    c.add_member(&mut backend, late, 2).await;
    let out = deliver(&mut s.user(late).await, &[m1]).await;
    assert_eq!(
        out.results[0].outcome,
        pb::DeliveryOutcome::NotARecipient as i32
    );
    let r = receipt(&mut s.user(c.members[0]).await, c.id, m1).await;
    assert_eq!((r.delivered_count, r.recipients_total), (0, 2));
}

/// Counts in a group, where stores count from indexes rather than member by
/// member (docs/storage.md, "Counting reads"): a message registered late,
/// into a gap below messages a member already had, is not delivered to that
/// member until it says so, unless its read covers it; the counts agree with
/// the per-recipient list throughout.
#[tokio::test]
async fn a_message_registered_late_below_what_a_member_had_is_not_counted_delivered() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 4).await;
    let (a, b, x, r) = (c.members[0], c.members[1], c.members[2], c.members[3]);
    let m1 = c.send(&mut backend, a).await;
    c.set_next_seq(3);
    let m3 = c.send(&mut backend, a).await;
    let m4 = c.send(&mut backend, x).await;
    // b has everything registered so far, one call at a time; r reads it all.
    for m in [m1, m3, m4] {
        deliver(&mut s.user(b).await, &[m]).await;
    }
    read_up_to(&mut s.user(r).await, c.id, m4).await;
    let m2 = Uuid::now_v7();
    backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![registration(m2, c.id, 2, x)],
        })
        .await
        .expect("register late");
    let check = |r: &pb::MessageReceipts, want: (i64, i64, i64)| {
        assert_eq!(
            (r.delivered_count, r.read_count, r.recipients_total),
            want,
            "{r:?}"
        );
        let listed = r
            .recipients
            .iter()
            .filter(|x| x.state > pb::RecipientState::None as i32)
            .count() as i64;
        assert!(r.recipients.is_empty() || listed == want.0, "{r:?}");
    };
    // m2: r read past it; b never had it.
    check(
        &counts_only(&mut s.user(x).await, c.id, m2).await,
        (1, 1, 3),
    );
    check(&receipt(&mut s.user(x).await, c.id, m2).await, (1, 1, 3));
    // The messages around it are as they were.
    check(
        &counts_only(&mut s.user(a).await, c.id, m3).await,
        (2, 1, 3),
    );
    check(
        &counts_only(&mut s.user(x).await, c.id, m4).await,
        (2, 1, 3),
    );
    deliver(&mut s.user(b).await, &[m2]).await;
    check(
        &counts_only(&mut s.user(x).await, c.id, m2).await,
        (2, 1, 3),
    );
    check(&receipt(&mut s.user(x).await, c.id, m2).await, (2, 1, 3));
}

/// A direct chat that becomes a group is counted from indexes from then on
/// (docs/storage.md, "Counting reads"): deliveries made while it was direct,
/// with a gap, count for exactly the messages they named.
#[tokio::test]
async fn deliveries_made_in_a_direct_chat_count_once_it_is_a_group() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let ms = c.send_many(&mut backend, a, 4).await;
    deliver(&mut s.user(b).await, &[ms[1], ms[2]]).await;
    let late = Uuid::now_v7();
    c.add_member(&mut backend, late, 1).await;
    let mut sender = s.user(a).await;
    let mut counted = Vec::new();
    for m in &ms {
        let r = counts_only(&mut sender, c.id, *m).await;
        counted.push((r.delivered_count, r.recipients_total));
    }
    assert_eq!(counted, [(0, 2), (1, 2), (1, 2), (0, 2)]);
    deliver(&mut s.user(b).await, &[ms[0]]).await;
    deliver(&mut s.user(late).await, &[ms[3]]).await;
    let mut counted = Vec::new();
    for m in &ms {
        let r = counts_only(&mut sender, c.id, *m).await;
        counted.push(r.delivered_count);
    }
    assert_eq!(counted, [1, 1, 1, 1]);
}

#[tokio::test]
async fn senders_marking_their_own_message_change_nothing() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let a = c.members[0];
    let m = c.send(&mut backend, a).await;
    let out = deliver(&mut s.user(a).await, &[m]).await;
    assert_eq!(
        out.results[0].outcome,
        pb::DeliveryOutcome::NotARecipient as i32
    );
    let r = receipt(&mut s.user(a).await, c.id, m).await;
    assert_eq!((tick(&r), r.delivered_count), (pb::Tick::Sent, 0));
}

#[tokio::test]
async fn privacy_off_hides_reads_from_others_at_once_but_not_from_the_reader() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m = c.send(&mut backend, a).await;
    let mut reader = s.user(b).await;
    read_up_to(&mut reader, c.id, m).await;
    assert_eq!(
        tick(&receipt(&mut s.user(a).await, c.id, m).await),
        pb::Tick::Read
    );
    set_sharing(&mut reader, false).await;
    let seen_by_sender = receipt(&mut s.user(a).await, c.id, m).await;
    assert_eq!(tick(&seen_by_sender), pb::Tick::Delivered);
    assert_eq!(
        (seen_by_sender.delivered_count, seen_by_sender.read_count),
        (1, 0)
    );
    assert_eq!(state_of(&seen_by_sender, b), pb::RecipientState::Delivered);
    assert_eq!(recipient(&seen_by_sender, b).read_at_ms, 0);
    let seen_by_reader = receipt(&mut reader, c.id, m).await;
    assert_eq!(state_of(&seen_by_reader, b), pb::RecipientState::Read);
}

#[tokio::test]
async fn privacy_reads_made_while_private_stay_hidden() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m1 = c.send(&mut backend, a).await;
    let m2 = c.send(&mut backend, a).await;
    let m3 = c.send(&mut backend, a).await;
    let mut reader = s.user(b).await;
    read_up_to(&mut reader, c.id, m1).await; // while sharing
    set_sharing(&mut reader, false).await;
    read_up_to(&mut reader, c.id, m2).await; // while private
    set_sharing(&mut reader, true).await;
    let mut sender = s.user(a).await;
    assert_eq!(
        state_of(&receipt(&mut sender, c.id, m1).await, b),
        pb::RecipientState::Read
    );
    assert_eq!(
        state_of(&receipt(&mut sender, c.id, m2).await, b),
        pb::RecipientState::Delivered
    );
    // Re-reading the same position is not reading further.
    read_up_to(&mut reader, c.id, m2).await;
    assert_eq!(
        state_of(&receipt(&mut sender, c.id, m2).await, b),
        pb::RecipientState::Delivered
    );
    // Reading further reveals everything up to the new position.
    read_up_to(&mut reader, c.id, m3).await;
    for m in [m2, m3] {
        assert_eq!(
            state_of(&receipt(&mut sender, c.id, m).await, b),
            pb::RecipientState::Read
        );
    }
}

#[tokio::test]
async fn privacy_hides_reads_in_counts_for_every_other_member() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let (a, b, d) = (c.members[0], c.members[1], c.members[2]);
    let m = c.send(&mut backend, a).await;
    let mut reader = s.user(b).await;
    set_sharing(&mut reader, false).await;
    read_up_to(&mut reader, c.id, m).await;
    for viewer in [a, d] {
        let r = receipt(&mut s.user(viewer).await, c.id, m).await;
        assert_eq!(
            (r.delivered_count, r.read_count),
            (1, 0),
            "as seen by {viewer}"
        );
    }
    let own = reader
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!own.settings.unwrap().send_read_receipts);
}

#[tokio::test]
async fn unread_counts_are_messages_others_sent_after_the_watermark_in_bulk() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let me = Uuid::now_v7();
    let other = Uuid::now_v7();
    let mut c1 = Conversation::create_with(&mut backend, vec![me, other]).await;
    let mut c2 = Conversation::create_with(&mut backend, vec![me, other, Uuid::now_v7()]).await;
    let m1 = c1.send(&mut backend, other).await;
    c1.send(&mut backend, me).await; // my own message never counts
    c1.send(&mut backend, other).await;
    for _ in 0..3 {
        c2.send(&mut backend, other).await;
    }
    let mut client = s.user(me).await;
    read_up_to(&mut client, c1.id, m1).await;
    let out = client
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![c1.id.to_string(), c2.id.to_string()],
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i64, i64, i64)> = out
        .conversations
        .iter()
        .map(|c| (c.unread_count, c.read_up_to_seq, c.last_seq))
        .collect();
    assert_eq!(got, vec![(1, 1, 3), (3, 0, 3)]);
    assert!(
        out.conversations
            .iter()
            .all(|c| c.outcome == pb::ConversationOutcome::Ok as i32)
    );
}

#[tokio::test]
async fn unread_counts_only_count_messages_from_while_a_member() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    c.send(&mut backend, c.members[0]).await;
    c.send(&mut backend, c.members[0]).await;
    let late = Uuid::now_v7();
    c.add_member(&mut backend, late, 3).await;
    c.send(&mut backend, c.members[0]).await;
    let out = s
        .user(late)
        .await
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![c.id.to_string()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.conversations[0].unread_count, 1);
}

#[tokio::test]
async fn mark_conversations_read_gives_a_result_per_conversation() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let me = Uuid::now_v7();
    let mut mine = Conversation::create_with(&mut backend, vec![me, Uuid::now_v7()]).await;
    let mut empty = Conversation::create_with(&mut backend, vec![me, Uuid::now_v7()]).await;
    let mut theirs = Conversation::create(&mut backend, 2).await;
    let sender = mine.members[1];
    let last = {
        mine.send(&mut backend, sender).await;
        mine.send(&mut backend, sender).await
    };
    let foreign = theirs.send(&mut backend, theirs.members[0]).await;
    let _ = &mut empty;
    let unknown = Uuid::now_v7();
    let mut client = s.user(me).await;
    let out = client
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: vec![
                mine.id.to_string(),
                empty.id.to_string(),
                theirs.id.to_string(),
                unknown.to_string(),
            ],
            threads: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i32, i64, bool)> = out
        .results
        .iter()
        .map(|r| (r.outcome, r.read_up_to_seq, r.advanced))
        .collect();
    assert_eq!(
        got,
        vec![
            (pb::ConversationOutcome::Ok as i32, 2, true),
            (pb::ConversationOutcome::Ok as i32, 0, false),
            (pb::ConversationOutcome::PermissionDenied as i32, 0, false),
            (pb::ConversationOutcome::NotFound as i32, 0, false),
        ]
    );
    assert_eq!(
        tick(&receipt(&mut s.user(sender).await, mine.id, last).await),
        pb::Tick::Read
    );
    // The conversation the caller may not mark is untouched.
    let r = receipt(&mut s.user(theirs.members[0]).await, theirs.id, foreign).await;
    assert_eq!(r.read_count, 0);
}

#[tokio::test]
async fn get_receipts_in_bulk_keeps_request_order_and_counts_duplicates_once() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let m1 = c.send(&mut backend, c.members[0]).await;
    let m2 = c.send(&mut backend, c.members[0]).await;
    let out = s
        .user(c.members[1])
        .await
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: c.id.to_string(),
            message_ids: vec![m2.to_string(), m1.to_string(), m2.to_string()],
            include_recipients: false,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = out.messages.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids, vec![m2.to_string(), m1.to_string()]);
    assert!(out.messages.iter().all(|m| m.recipients.is_empty()));
}
