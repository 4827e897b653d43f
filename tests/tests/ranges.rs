//! Range events (docs/model.md): a change over many messages reaches a
//! subscriber that accepts ranges as a few ranges, and one that does not as
//! exactly the messages it covers, live and in a replay, resumable between
//! chunks. Against a real server over a real socket, on every store.

use pb::subscribe_receipts_response::Event as E;
use receipts_proto::v1 as pb;
use receipts_tests::*;
use std::collections::BTreeMap;
use uuid::Uuid;

/// More than one event's worth of messages (500), so an expansion is chunked.
const N: usize = 1_200;

/// Registers `n` messages from `sender` in one call per 1,000.
async fn send_many(
    backend: &mut BackendClient,
    c: &mut Conversation,
    sender: Uuid,
    n: usize,
) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    let mut regs = Vec::with_capacity(n);
    for _ in 0..n {
        let id = Uuid::now_v7();
        regs.push(registration(id, c.id, c.next_seq(), sender));
        c.set_next_seq(c.next_seq() + 1);
        ids.push(id);
    }
    for chunk in regs.chunks(1_000) {
        backend
            .register_messages(pb::RegisterMessagesRequest {
                messages: chunk.to_vec(),
            })
            .await
            .expect("register");
    }
    ids
}

/// Marks `ids` delivered in calls of at most 1,000.
async fn deliver_all(client: &mut UserClient, ids: &[Uuid]) {
    for chunk in ids.chunks(1_000) {
        deliver(client, chunk).await;
    }
}

fn receipts(ev: &pb::SubscribeReceiptsResponse) -> Option<&pb::ConversationReceipts> {
    match &ev.event {
        Some(E::Receipts(r)) => Some(r),
        _ => None,
    }
}

/// Reads receipts events until their messages cover `n` distinct ids;
/// returns the events.
async fn messages_until(sub: &mut Subscription, n: usize) -> Vec<pb::SubscribeReceiptsResponse> {
    let mut seen = std::collections::HashSet::new();
    let mut events = Vec::new();
    while seen.len() < n {
        let ev = sub.next().await.expect("receipts event");
        if let Some(r) = receipts(&ev) {
            assert!(r.ranges.is_empty(), "ranges sent to a client without them");
            seen.extend(r.messages.iter().map(|m| m.message_id.clone()));
        }
        events.push(ev);
    }
    events
}

/// The latest state of each message (by id) in `events`.
fn latest(events: &[pb::SubscribeReceiptsResponse]) -> BTreeMap<String, pb::MessageReceipts> {
    let mut out = BTreeMap::new();
    for ev in events {
        if let Some(r) = receipts(ev) {
            for m in &r.messages {
                out.insert(m.message_id.clone(), m.clone());
            }
        }
    }
    out
}

fn spans(r: &pb::ConversationReceipts) -> Vec<(i64, i64, pb::Tick)> {
    r.ranges
        .iter()
        .map(|x| {
            (
                x.from_seq,
                x.to_seq,
                pb::Tick::try_from(x.tick).expect("tick"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_batch_arrives_as_one_range_or_as_exactly_its_messages() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let ids = send_many(&mut backend, &mut c, a, N).await;
    let (mut ranged, _) = Subscription::open_with(&mut s.user(a).await, None, true).await;
    let (mut plain, _) = Subscription::open(&mut s.user(a).await, None).await;
    let mut reader = s.user(b).await;
    deliver(&mut reader, &ids[..N / 2]).await;

    // Ranges: one, over every message of the batch, with the recipient.
    let ev = ranged.next_receipts().await;
    assert!(ev.messages.is_empty(), "{ev:?}");
    assert_eq!(spans(&ev), vec![(1, (N / 2) as i64, pb::Tick::Delivered)]);
    let range = &ev.ranges[0];
    assert_eq!((range.delivered_count, range.recipients_total), (1, 1));
    assert_eq!(range.recipients.len(), 1);
    assert_eq!(range.recipients[0].user_id, b.to_string());
    assert!(range.recipients[0].delivered_at_ms > 0);

    // No ranges: the same change as one entry per message, in chunks.
    let events = messages_until(&mut plain, N / 2).await;
    let states = latest(&events);
    assert_eq!(states.len(), N / 2);
    for (i, id) in ids[..N / 2].iter().enumerate() {
        let m = &states[&id.to_string()];
        assert_eq!(m.seq, i as i64 + 1);
        assert_eq!(m.sender_id, a.to_string());
        assert_eq!(m.tick, pb::Tick::Delivered as i32, "{m:?}");
        assert_eq!(m.recipients.len(), 1);
        assert_eq!(m.delivered_at_ms, range.delivered_at_ms);
    }
    assert!(
        events
            .iter()
            .filter_map(receipts)
            .all(|r| r.messages.len() <= 500)
    );
    assert!(events.len() > 1, "600 messages come in more than one chunk");
}

#[tokio::test]
async fn a_client_that_stops_between_chunks_resumes_at_the_start_of_the_change() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let ids = send_many(&mut backend, &mut c, a, N).await;
    let mut sender = s.user(a).await;
    let (mut plain, _) = Subscription::open(&mut sender, None).await;
    let mut reader = s.user(b).await;
    let last = *ids.last().expect("ids");
    read_up_to(&mut reader, c.id, last).await;
    // The first chunk only, then the client goes away.
    let first = loop {
        let ev = plain.next().await.expect("event");
        if receipts(&ev).is_some() {
            break ev;
        }
    };
    assert!(receipts(&first).expect("receipts").messages.len() < N);
    drop(plain);
    let (_again, replayed) = Subscription::open(&mut sender, Some(first.cursor.clone())).await;
    let states = latest(&replayed);
    assert_eq!(
        states.len(),
        N,
        "every message of the read, again, after stopping mid-change"
    );
    assert!(
        states.values().all(|m| m.tick == pb::Tick::Read as i32),
        "{states:?}"
    );
}

#[tokio::test]
async fn a_replay_of_ranges_shows_the_states_of_now() {
    // A's streams are closed; B reads everything while sharing, then turns
    // read receipts off. A resumes: what it may see now is "delivered".
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let ids = send_many(&mut backend, &mut c, a, N).await;
    // A message of B's in the middle, which no range for A may claim.
    let own = c.send(&mut backend, b).await;
    let more = send_many(&mut backend, &mut c, a, 10).await;
    let mut sender = s.user(a).await;
    let (sub, _) = Subscription::open(&mut sender, None).await;
    let cursor = sub.cursor.clone();
    drop(sub);
    let mut reader = s.user(b).await;
    deliver_all(&mut reader, &ids).await;
    read_up_to(&mut reader, c.id, *more.last().expect("more")).await;
    set_sharing(&mut reader, false).await;

    let (_sub, replayed) = Subscription::open_with(&mut sender, Some(cursor.clone()), true).await;
    let ranges: Vec<(i64, i64, pb::Tick)> = replayed
        .iter()
        .filter_map(receipts)
        .flat_map(spans)
        .collect();
    let last_seq = (N + 11) as i64;
    assert!(!ranges.is_empty(), "{replayed:?}");
    for (from, to, tick) in &ranges {
        assert_eq!(*tick, pb::Tick::Delivered, "B's hidden read leaked");
        assert!(*from >= 1 && *to <= last_seq);
    }
    // Every seq of A's is covered, and the states are the ones GetReceipts
    // gives now.
    let covered = |seq: i64| ranges.iter().any(|(f, t, _)| *f <= seq && seq <= *t);
    assert!((1..=N as i64).all(covered) && ((N + 2) as i64..=last_seq).all(covered));
    let now = receipt(&mut sender, c.id, ids[0]).await;
    assert_eq!(now.tick, pb::Tick::Delivered as i32);

    // Without ranges: exactly A's messages, none of B's.
    let (_sub, replayed) = Subscription::open(&mut sender, Some(cursor)).await;
    let states = latest(&replayed);
    assert_eq!(states.len(), N + 10);
    assert!(!states.contains_key(&own.to_string()));
    assert!(
        states
            .values()
            .all(|m| m.tick == pb::Tick::Delivered as i32 && m.read_at_ms == 0),
        "B's hidden read leaked"
    );
}

#[tokio::test]
async fn the_recipients_own_messages_in_between_do_not_split_the_range() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    // A chat where B answers every third message.
    let mut mine = Vec::new();
    for i in 0..60 {
        let sender = if i % 3 == 2 { b } else { a };
        let id = c.send(&mut backend, sender).await;
        if sender == a {
            mine.push(id);
        }
    }
    let (mut ranged, _) = Subscription::open_with(&mut s.user(a).await, None, true).await;
    deliver(&mut s.user(b).await, &mine).await;
    let ev = ranged.next_receipts().await;
    assert_eq!(spans(&ev), vec![(1, 59, pb::Tick::Delivered)], "{ev:?}");
}
