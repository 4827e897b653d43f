//! DESIGN.md §4: live pushes, group windows, cursors, replay, resets, slow
//! subscribers and shutdown — against a real server over a real socket.

use pb::subscribe_receipts_response::Event as E;
use receipts_proto::v1 as pb;
use receipts_server::domain::Cursor;
use receipts_tests::*;
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

fn tick(m: &pb::MessageReceipts) -> pb::Tick {
    pb::Tick::try_from(m.tick).expect("tick")
}

/// The message states a replay carries, in order.
fn replayed_states(events: &[pb::SubscribeReceiptsResponse]) -> Vec<pb::MessageReceipts> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(E::Receipts(r)) => Some(r.messages.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test]
async fn direct_conversation_pushes_each_change_at_once() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m = c.send(&mut backend, a).await;
    let (mut sub, replayed) = Subscription::open(&mut s.user(a).await, None).await;
    assert!(replayed.is_empty());
    let mut reader = s.user(b).await;
    deliver(&mut reader, &[m]).await;
    let ev = sub.next_receipts().await;
    assert!(!ev.group);
    assert_eq!(ev.messages.len(), 1);
    assert_eq!(tick(&ev.messages[0]), pb::Tick::Delivered);
    assert_eq!(
        ev.messages[0].recipients.len(),
        1,
        "direct updates carry the recipient"
    );
    read_up_to(&mut reader, c.id, m).await;
    let ev = sub.next_receipts().await;
    assert_eq!(tick(&ev.messages[0]), pb::Tick::Read);
    assert!(ev.messages[0].read_at_ms > 0);
}

#[tokio::test]
async fn group_changes_arrive_as_one_summary_with_absolute_counts() {
    // The longest window allowed, so the three marks surely fall in one.
    let s = TestServer::start_with(|c| c.group_window_ms = 2000).await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 4).await;
    let sender = c.members[0];
    let m = c.send(&mut backend, sender).await;
    let (mut sub, _) = Subscription::open(&mut s.user(sender).await, None).await;
    let mut calls = Vec::new();
    for u in c.members[1..].iter().copied() {
        let client = s.user(u).await;
        calls.push(tokio::spawn(async move {
            let mut client = client;
            deliver(&mut client, &[m]).await;
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let ev = sub.next_receipts().await;
    assert!(ev.group);
    assert_eq!(ev.messages.len(), 1);
    let r = &ev.messages[0];
    assert_eq!(
        (r.delivered_count, r.recipients_total),
        (3, 3),
        "one summary, absolute counts"
    );
    assert_eq!(tick(r), pb::Tick::Delivered);
    assert!(r.recipients.is_empty(), "group summaries carry counts only");
    assert!(
        sub.next_within(Duration::from_millis(2500)).await.is_none(),
        "no second summary"
    );
}

#[tokio::test]
async fn group_window_is_bounded_by_its_configuration() {
    let s = TestServer::start_with(|c| c.group_window_ms = 200).await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let m = c.send(&mut backend, c.members[0]).await;
    let (mut sub, _) = Subscription::open(&mut s.user(c.members[0]).await, None).await;
    deliver(&mut s.user(c.members[1]).await, &[m]).await;
    // The summary must come once the window closes; 2 s is the contract's
    // upper bound for any window.
    let ev = sub
        .next_within(Duration::from_secs(2))
        .await
        .expect("summary within the window bound");
    assert!(matches!(ev.event, Some(E::Receipts(_))));
}

#[tokio::test]
async fn own_read_watermark_moves_reach_the_other_devices() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m1 = c.send(&mut backend, a).await;
    c.send(&mut backend, a).await;
    let (mut laptop_sub, _) = Subscription::open(&mut s.user(b).await, None).await;
    read_up_to(&mut s.user(b).await, c.id, m1).await;
    let ev = laptop_sub.next().await.expect("watermark sync");
    match ev.event {
        Some(E::Watermark(w)) => {
            assert_eq!(w.conversation_id, c.id.to_string());
            assert_eq!((w.read_up_to_seq, w.unread_count), (1, 1));
        }
        other => panic!("expected a watermark sync, got {other:?}"),
    }
}

#[tokio::test]
async fn resume_with_a_cursor_replays_what_was_missed_with_no_gap_and_no_duplicate() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let ids: Vec<Uuid> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(c.send(&mut backend, a).await);
        }
        v
    };
    let mut sender = s.user(a).await;
    let mut reader = s.user(b).await;
    let (mut sub, _) = Subscription::open(&mut sender, None).await;
    deliver(&mut reader, &[ids[0]]).await;
    let first = sub.next().await.expect("first event");
    let mut seen: HashSet<String> = HashSet::from([first.cursor.clone()]);
    let cursor = sub.cursor.clone();
    drop(sub);
    // Missed while disconnected.
    deliver(&mut reader, &[ids[1]]).await;
    deliver(&mut reader, &[ids[2]]).await;
    let (mut sub, replayed) = Subscription::open(&mut sender, Some(cursor)).await;
    let mut replayed_ids = Vec::new();
    for ev in &replayed {
        assert!(
            seen.insert(ev.cursor.clone()),
            "duplicate cursor {}",
            ev.cursor
        );
        if let Some(E::Receipts(r)) = &ev.event {
            replayed_ids.extend(r.messages.iter().map(|m| m.message_id.clone()));
        }
    }
    assert_eq!(replayed_ids, vec![ids[1].to_string(), ids[2].to_string()]);
    // And live continues after the replay.
    read_up_to(&mut reader, c.id, ids[2]).await;
    let live = sub.next_receipts().await;
    assert_eq!(live.messages.len(), 3);
    assert!(live.messages.iter().all(|m| tick(m) == pb::Tick::Read));
}

#[tokio::test]
async fn replay_is_coalesced_to_the_latest_state_per_message() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m = c.send(&mut backend, a).await;
    let mut sender = s.user(a).await;
    let (sub, _) = Subscription::open(&mut sender, None).await;
    let cursor = sub.cursor.clone();
    drop(sub);
    let mut reader = s.user(b).await;
    deliver(&mut reader, &[m]).await; // one event: delivered
    read_up_to(&mut reader, c.id, m).await; // another: read
    let (_sub, replayed) = Subscription::open(&mut sender, Some(cursor)).await;
    let states: Vec<pb::Tick> = replayed_states(&replayed).iter().map(tick).collect();
    assert_eq!(
        states,
        vec![pb::Tick::Read],
        "only the latest state of the message"
    );
}

#[tokio::test]
async fn expired_cursor_gets_a_reset_with_a_snapshot() {
    let s = TestServer::start_with(|c| c.log_retention = 3).await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let mut sender = s.user(a).await;
    let (sub, _) = Subscription::open(&mut sender, None).await;
    let old = sub.cursor.clone();
    drop(sub);
    let mut reader = s.user(b).await;
    let mut last = Uuid::nil();
    for _ in 0..8 {
        last = c.send(&mut backend, a).await;
        deliver(&mut reader, &[last]).await;
    }
    read_up_to(&mut reader, c.id, last).await;
    let (sub, replayed) = Subscription::open(&mut sender, Some(old)).await;
    assert_eq!(replayed.len(), 1, "just the reset");
    let Some(E::Reset(reset)) = &replayed[0].event else {
        panic!("expected a reset, got {:?}", replayed[0].event);
    };
    assert_eq!(reset.reason, pb::ResetReason::CursorExpired as i32);
    assert_eq!(reset.recent_messages.len(), 8);
    assert!(
        reset
            .recent_messages
            .iter()
            .all(|m| tick(m) == pb::Tick::Read)
    );
    assert_eq!(
        reset.recent_messages[0].message_id,
        last.to_string(),
        "newest first"
    );
    assert_eq!(reset.watermarks.len(), 1);
    assert_eq!(reset.watermarks[0].conversation_id, c.id.to_string());
    assert!(!sub.cursor.is_empty());
}

/// The reset snapshot of a group member: counted states of the messages it
/// sent, and its own watermark and unread count in the group.
#[tokio::test]
async fn a_reset_snapshot_in_a_group_counts_states_and_carries_the_callers_watermark() {
    let s = TestServer::start_with(|c| c.log_retention = 3).await;
    let mut backend = s.backend().await;
    let mut g = Conversation::create(&mut backend, 4).await;
    let (a, b, c) = (g.members[0], g.members[1], g.members[2]);
    let mut sender = s.user(a).await;
    let (sub, _) = Subscription::open(&mut sender, None).await;
    let old = sub.cursor.clone();
    drop(sub);
    // a reads four of b's messages one by one: four watermark events in
    // a's log, more than it keeps, so the old cursor cannot be honoured.
    for _ in 0..4 {
        let theirs = g.send(&mut backend, b).await;
        read_up_to(&mut sender, g.id, theirs).await;
    }
    let last = g.send(&mut backend, a).await;
    let (mut rb, mut rc) = (s.user(b).await, s.user(c).await);
    read_up_to(&mut rb, g.id, last).await;
    deliver(&mut rc, &[last]).await;
    let unread_for_a = g.send(&mut backend, b).await;
    let (_sub, replayed) = Subscription::open(&mut sender, Some(old)).await;
    let Some(E::Reset(reset)) = &replayed[0].event else {
        panic!("expected a reset, got {:?}", replayed[0].event);
    };
    let state = reset
        .recent_messages
        .iter()
        .find(|m| m.message_id == last.to_string())
        .expect("the sender's message is in the snapshot");
    assert_eq!(
        (
            state.recipients_total,
            state.delivered_count,
            state.read_count
        ),
        (3, 2, 1),
        "b read it, c has it, d has nothing"
    );
    assert!(state.recipients.is_empty(), "counts only");
    assert_eq!(reset.watermarks.len(), 1);
    let wm = &reset.watermarks[0];
    assert_eq!(wm.conversation_id, g.id.to_string());
    assert_eq!(wm.read_up_to_seq, 4, "a's own watermark");
    assert_eq!(wm.unread_count, 1, "{unread_for_a} is unread for a");
}

#[tokio::test]
async fn cursor_from_another_epoch_gets_a_reset() {
    let s = TestServer::start().await;
    let user = Uuid::now_v7();
    let foreign = Cursor {
        epoch: 12345,
        offset: 1,
    }
    .encode();
    let (_sub, replayed) = Subscription::open(&mut s.user(user).await, Some(foreign)).await;
    let Some(E::Reset(reset)) = &replayed[0].event else {
        panic!("expected a reset");
    };
    assert_eq!(reset.reason, pb::ResetReason::EpochChanged as i32);
}

#[tokio::test]
async fn unparseable_cursor_gets_a_reset_not_an_error() {
    let s = TestServer::start().await;
    let (_sub, replayed) =
        Subscription::open(&mut s.user(Uuid::now_v7()).await, Some("garbage!".into())).await;
    let Some(E::Reset(reset)) = &replayed[0].event else {
        panic!("expected a reset");
    };
    assert_eq!(reset.reason, pb::ResetReason::CursorInvalid as i32);
}

#[tokio::test]
async fn a_private_read_pushes_no_read_to_the_sender() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m1 = c.send(&mut backend, a).await;
    let m2 = c.send(&mut backend, a).await;
    let mut reader = s.user(b).await;
    deliver(&mut reader, &[m1]).await;
    let (mut sub, _) = Subscription::open(&mut s.user(a).await, None).await;
    set_sharing(&mut reader, false).await;
    read_up_to(&mut reader, c.id, m2).await;
    // m2 became delivered through the read: that is visible; the read is not.
    let ev = sub.next_receipts().await;
    let ids: Vec<String> = ev.messages.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(
        ids,
        vec![m2.to_string()],
        "m1 was already delivered: nothing to tell"
    );
    assert_eq!(tick(&ev.messages[0]), pb::Tick::Delivered);
    assert_eq!(ev.messages[0].read_count, 0);
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn a_replay_shows_a_read_hidden_since_it_was_logged_as_delivered() {
    // A sends M to B; A's stream is closed; B reads M; B turns read receipts
    // off; A resumes from its older cursor. The log holds "read by B", but
    // what A may see now is "delivered", as GetReceipts says.
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m = c.send(&mut backend, a).await;
    let mut sender = s.user(a).await;
    let (sub, _) = Subscription::open(&mut sender, None).await;
    let cursor = sub.cursor.clone();
    drop(sub);
    let mut reader = s.user(b).await;
    read_up_to(&mut reader, c.id, m).await;
    set_sharing(&mut reader, false).await;
    let (_sub, replayed) = Subscription::open(&mut sender, Some(cursor.clone())).await;
    let states = replayed_states(&replayed);
    assert_eq!(states.len(), 1, "{replayed:?}");
    let state = &states[0];
    assert_eq!(state.message_id, m.to_string());
    assert_eq!(tick(state), pb::Tick::Delivered);
    assert_eq!((state.delivered_count, state.read_count), (1, 0));
    assert_eq!(state.read_at_ms, 0, "B's read time leaked: {state:?}");
    for r in &state.recipients {
        assert_eq!(r.read_at_ms, 0, "B's read time leaked: {r:?}");
    }
    // The replay agrees with GetReceipts.
    let now = receipt(&mut sender, c.id, m).await;
    assert_eq!((now.tick, now.read_count), (state.tick, state.read_count));
    // Turned back on: B read while sharing, so the read shows again, in a
    // replay from the same cursor as in GetReceipts.
    set_sharing(&mut reader, true).await;
    let (_sub, replayed) = Subscription::open(&mut sender, Some(cursor)).await;
    let states = replayed_states(&replayed);
    let now = receipt(&mut sender, c.id, m).await;
    assert_eq!(tick(&now), pb::Tick::Read);
    assert_eq!(states.len(), 1, "{replayed:?}");
    assert_eq!(
        (states[0].tick, states[0].read_count, states[0].read_at_ms),
        (now.tick, now.read_count, now.read_at_ms)
    );
}

#[tokio::test]
async fn a_group_replay_counts_a_read_hidden_since_it_was_logged_as_delivered() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let (a, b, d) = (c.members[0], c.members[1], c.members[2]);
    let m = c.send(&mut backend, a).await;
    let mut sender = s.user(a).await;
    let (mut sub, _) = Subscription::open(&mut sender, None).await;
    let cursor = sub.cursor.clone();
    read_up_to(&mut s.user(b).await, c.id, m).await;
    read_up_to(&mut s.user(d).await, c.id, m).await;
    // The window's summary is logged with both reads: 2 of 2, blue.
    let logged = sub.next_receipts().await;
    assert_eq!(logged.messages[0].read_count, 2);
    drop(sub);
    set_sharing(&mut s.user(b).await, false).await;
    let (_sub, replayed) = Subscription::open(&mut sender, Some(cursor)).await;
    let states = replayed_states(&replayed);
    assert_eq!(states.len(), 1, "{replayed:?}");
    assert_eq!(tick(&states[0]), pb::Tick::Delivered);
    assert_eq!(
        (
            states[0].delivered_count,
            states[0].read_count,
            states[0].recipients_total
        ),
        (2, 1, 2)
    );
}

#[tokio::test]
async fn slow_subscriber_stream_ends_with_a_resumable_status() {
    let s = TestServer::start_with(|c| c.subscriber_buffer = 2).await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    // 60 batches of 500 messages: each delivery call pushes a ~60 KB event.
    const BATCHES: usize = 60;
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let mut regs = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..500 {
            let id = Uuid::now_v7();
            regs.push(registration(id, c.id, c.next_seq(), a));
            c.set_next_seq(c.next_seq() + 1);
            ids.push(id);
        }
        backend
            .register_messages(pb::RegisterMessagesRequest { messages: regs })
            .await
            .unwrap();
        batches.push(ids);
    }
    // A client that reads nothing and keeps HTTP/2 windows small, so the
    // transport cannot absorb the backlog.
    let small = tonic::transport::Channel::from_shared(s.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut sender = ReceiptServiceClient::with_interceptor(
        small,
        Bearer(Some(token(a, receipts_server::auth::Role::User))),
    );
    let (mut sub, _) = Subscription::open(&mut sender, None).await;
    let mut reader = s.user(b).await;
    for ids in &batches {
        deliver(&mut reader, ids).await;
    }
    // Now drain: some events, then the status.
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.stream.message()).await {
            Ok(Ok(Some(ev))) => {
                sub.cursor = ev.cursor.clone();
                received += 1;
            }
            Ok(Err(status)) => break status,
            other => panic!("expected the stream to end with a status, got {other:?}"),
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("resume"), "{}", status.message());
    assert!(
        received < BATCHES,
        "the stream was cut before everything was buffered"
    );
    // Resuming from the last cursor brings the rest.
    let (_sub, replayed) = Subscription::open(&mut sender, Some(sub.cursor.clone())).await;
    let mut ids: HashSet<String> = HashSet::new();
    for ev in replayed {
        if let Some(E::Receipts(r)) = ev.event {
            ids.extend(r.messages.into_iter().map(|m| m.message_id));
        }
    }
    let last_batch: HashSet<String> = batches[BATCHES - 1].iter().map(Uuid::to_string).collect();
    assert!(
        last_batch.is_subset(&ids),
        "the missed deliveries are replayed"
    );
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_resumable_status() {
    let s = TestServer::start().await;
    let (mut sub, _) = Subscription::open(&mut s.user(Uuid::now_v7()).await, None).await;
    let stop = tokio::spawn(s.stop());
    let status = match tokio::time::timeout(Duration::from_secs(10), sub.stream.message()).await {
        Ok(Err(status)) => status,
        other => panic!("expected a status, got {other:?}"),
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("resume"));
    stop.await.unwrap();
}

#[tokio::test]
async fn membership_changes_push_new_counts_to_senders() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let sender = c.members[0];
    let m = c.send(&mut backend, sender).await;
    let (mut sub, _) = Subscription::open(&mut s.user(sender).await, None).await;
    backend
        .add_members(pb::AddMembersRequest {
            conversation_id: c.id.to_string(),
            members: vec![pb::MembershipChange {
                user_id: Uuid::now_v7().to_string(),
                from_seq: 1,
            }],
        })
        .await
        .unwrap();
    let ev = sub.next_receipts().await;
    assert_eq!(ev.messages[0].message_id, m.to_string());
    assert_eq!(ev.messages[0].recipients_total, 3);
}

/// A group window that closes after the group has shrunk to a direct chat
/// sums up what happened in between: the last word on a message is its
/// state, whatever the store counted the window's messages with
/// (docs/storage.md, "Counting reads": a direct chat keeps no delivered
/// prefixes).
#[tokio::test]
async fn a_window_that_closes_after_the_group_shrank_to_two_counts_what_happened_since() {
    let s = TestServer::start_with(|c| c.group_window_ms = 1000).await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 3).await;
    let (a, b, gone) = (c.members[0], c.members[1], c.members[2]);
    let m = c.send(&mut backend, a).await;
    let (mut sub, _) = Subscription::open(&mut s.user(a).await, None).await;
    // Opens the window while it is a group.
    deliver(&mut s.user(gone).await, &[m]).await;
    c.remove_member(&mut backend, gone, 2).await;
    deliver(&mut s.user(b).await, &[m]).await;
    // m is at seq 1; an event's ranges hold first, its messages after them.
    let mut last = None;
    while let Some(ev) = sub.next_within(Duration::from_millis(2500)).await {
        if let Some(E::Receipts(r)) = ev.event {
            for x in r.ranges.iter().filter(|x| x.from_seq <= 1 && 1 <= x.to_seq) {
                last = Some((x.delivered_count, x.recipients_total));
            }
            for x in r.messages.iter().filter(|x| x.message_id == m.to_string()) {
                last = Some((x.delivered_count, x.recipients_total));
            }
        }
    }
    assert_eq!(
        last,
        Some((2, 2)),
        "the last push says what GetReceipts says"
    );
    let r = receipt(&mut s.user(a).await, c.id, m).await;
    assert_eq!((r.delivered_count, r.recipients_total), (2, 2));
}
