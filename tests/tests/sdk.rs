//! The Rust SDK against a real receiptd: every method, typed errors, token
//! refresh, batching, and a subscription that survives a server restart.

use futures::StreamExt;
use receipts_sdk::{
    Client, ConversationOutcome, Cursor, DeliveryOutcome, Error, Event, NewMessage, ReadReceipts,
    ReceiptState, RecipientFilter, RecipientState, RetryPolicy, SubscribeOptions, Tick, token_fn,
};
use receipts_server::auth::Role;
use receipts_tests::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use uuid::Uuid;

async fn user_client(url: &str, user: Uuid) -> Client {
    Client::builder(url)
        .token(token(user, Role::User))
        .connect()
        .await
        .expect("connect")
}

async fn backend(url: &str) -> receipts_sdk::BackendClient {
    Client::builder(url)
        .token(token(Uuid::now_v7(), Role::Service))
        .connect()
        .await
        .expect("connect")
        .backend()
}

/// A conversation with `n` members and `k` messages from the first member.
async fn chat(url: &str, n: usize, k: u64) -> (Uuid, Vec<Uuid>, Vec<Uuid>) {
    let b = backend(url).await;
    let members: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let conv = Uuid::now_v7();
    assert!(b.create_conversation(conv, &members).await.unwrap());
    let msgs: Vec<NewMessage> = (1..=k)
        .map(|seq| NewMessage {
            message_id: Uuid::now_v7(),
            conversation_id: conv,
            seq,
            sender_id: members[0],
            sent_at: None,
            thread_root_message_id: None,
        })
        .collect();
    assert_eq!(b.register_messages(&msgs).await.unwrap(), k);
    (conv, members, msgs.iter().map(|m| m.message_id).collect())
}

/// "Read by" through the SDK: GetReceipts gives the first page and a token,
/// `list_recipients` continues it page by page in user-id order, a filter
/// keeps the readers, `all_recipients` pages to the end, and a token sent
/// with another filter is a typed INVALID_ARGUMENT.
#[tokio::test]
async fn sdk_pages_a_large_groups_recipients() {
    let s = TestServer::start().await;
    let url = s.url();
    let (conv, members, msgs) = chat(&url, 61, 1).await;
    let m = msgs[0];
    let mut recipients = members[1..].to_vec();
    recipients.sort();
    for u in &recipients[10..13] {
        user_client(&url, *u)
            .await
            .mark_read_up_to(conv, m)
            .await
            .unwrap();
    }
    let sender = user_client(&url, members[0]).await;
    let r = sender
        .get_receipts_with_recipients(conv, &[m])
        .await
        .unwrap();
    assert_eq!((r[0].recipients.len(), r[0].recipients_total), (50, 60));
    let token = r[0]
        .recipients_next_page_token
        .clone()
        .expect("more than a page");
    let rest = sender
        .list_recipients(conv, m, RecipientFilter::All, 0, Some(&token))
        .await
        .unwrap();
    assert_eq!(rest.next_page_token, None);
    let listed: Vec<Uuid> = r[0]
        .recipients
        .iter()
        .chain(&rest.recipients)
        .map(|r| r.user_id)
        .collect();
    assert_eq!(listed, recipients);

    let readers = sender
        .all_recipients(conv, m, RecipientFilter::Read)
        .await
        .unwrap();
    assert_eq!(
        readers.iter().map(|r| r.user_id).collect::<Vec<_>>(),
        recipients[10..13]
    );
    assert!(readers.iter().all(|r| r.state == RecipientState::Read));
    let all = sender
        .all_recipients(conv, m, RecipientFilter::All)
        .await
        .unwrap();
    assert_eq!(all.len(), 60);

    let page = sender
        .list_recipients(conv, m, RecipientFilter::NotDelivered, 5, None)
        .await
        .unwrap();
    assert_eq!(page.recipients.len(), 5);
    let err = sender
        .list_recipients(
            conv,
            m,
            RecipientFilter::Read,
            5,
            page.next_page_token.as_deref(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { .. }) && err.to_string().contains("page_token"),
        "{err:?}"
    );
}

/// Next event that is not a lifecycle notice, within 10 s.
async fn next_change(sub: &mut receipts_sdk::Subscription) -> Event {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("no error");
        if !matches!(ev, Event::Live { .. } | Event::Reconnecting { .. }) {
            return ev;
        }
    }
}

#[tokio::test]
async fn sdk_covers_every_method() {
    let s = TestServer::start().await;
    let url = s.url();
    let (conv, members, msgs) = chat(&url, 3, 3).await;
    let b = backend(&url).await;
    // Backend: idempotent create, membership.
    assert!(!b.create_conversation(conv, &members).await.unwrap());
    let newcomer = Uuid::now_v7();
    let added = b.add_members(conv, &[newcomer], 4).await.unwrap();
    assert_eq!((added.changed, added.member_count), (1, 4));
    let removed = b.remove_members(conv, &[newcomer], 5).await.unwrap();
    assert_eq!((removed.changed, removed.member_count), (1, 3));

    let (alice, bob) = (
        user_client(&url, members[0]).await,
        user_client(&url, members[1]).await,
    );
    let d = bob.mark_delivered(&[msgs[0], msgs[0]]).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].outcome, DeliveryOutcome::Recorded);
    assert!(d[0].delivered_at.is_some());
    // The conversation form: one result per distinct message, in order.
    let carol = user_client(&url, members[2]).await;
    let d = carol
        .mark_delivered_in(conv, &[msgs[2], msgs[1], msgs[2]])
        .await
        .unwrap();
    let got: Vec<(Uuid, DeliveryOutcome)> = d.iter().map(|d| (d.message_id, d.outcome)).collect();
    assert_eq!(
        got,
        [
            (msgs[2], DeliveryOutcome::Recorded),
            (msgs[1], DeliveryOutcome::Recorded)
        ]
    );
    let pos = bob.mark_read_up_to(conv, msgs[1]).await.unwrap();
    assert_eq!(
        (pos.read_up_to_seq, pos.advanced, pos.unread_count),
        (2, true, 1)
    );
    let r = alice
        .get_receipts_with_recipients(conv, &msgs)
        .await
        .unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(
        (r[0].read_count, r[0].delivered_count, r[0].recipients_total),
        (1, 1, 2)
    );
    assert_eq!(r[0].recipients.len(), 2);
    assert_eq!(r[0].tick, Tick::Sent);
    let u = bob.unread_counts(&[conv]).await.unwrap();
    assert_eq!(
        (u[0].outcome, u[0].unread_count, u[0].last_seq),
        (ConversationOutcome::Ok, 1, 3)
    );
    let m = bob
        .mark_conversations_read(&[conv, Uuid::now_v7()])
        .await
        .unwrap();
    assert_eq!(m[0].read_up_to_seq, 3);
    assert_eq!(m[1].outcome, ConversationOutcome::NotFound);
    assert_eq!(bob.read_receipts().await.unwrap(), ReadReceipts::Shared);
    assert_eq!(
        bob.set_read_receipts(ReadReceipts::Private).await.unwrap(),
        ReadReceipts::Private
    );
    assert_eq!(bob.read_receipts().await.unwrap(), ReadReceipts::Private);
    let r = alice.get_receipts(conv, &msgs[..1]).await.unwrap();
    assert_eq!(r[0].read_count, 0, "bob's reads are now hidden");
    // Subscribe: live marker first.
    let mut sub = alice.subscribe(None);
    assert!(matches!(
        sub.next().await,
        Some(Ok(Event::Live { replayed: 0 }))
    ));
    assert!(sub.cursor().is_some());
}

#[tokio::test]
async fn sdk_maps_every_status_to_a_typed_error() {
    let s = TestServer::start().await;
    let url = s.url();
    let (conv, members, msgs) = chat(&url, 2, 1).await;
    let stranger = user_client(&url, Uuid::now_v7()).await;
    let member = user_client(&url, members[1]).await;
    let b = backend(&url).await;

    match stranger.mark_read_up_to(conv, msgs[0]).await {
        Err(Error::PermissionDenied(s)) => assert_eq!(s.code(), tonic::Code::PermissionDenied),
        other => panic!("{other:?}"),
    }
    match member.mark_delivered(&[Uuid::now_v7()]).await {
        Err(e @ Error::NotFound(_)) => assert_eq!(e.code(), Some(tonic::Code::NotFound)),
        other => panic!("{other:?}"),
    }
    match member.mark_delivered_in(Uuid::now_v7(), &msgs).await {
        Err(e @ Error::NotFound(_)) => assert_eq!(e.code(), Some(tonic::Code::NotFound)),
        other => panic!("{other:?}"),
    }
    match member.mark_delivered(&[]).await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "message_ids"),
        other => panic!("{other:?}"),
    }
    match b
        .create_conversation(conv, &[Uuid::now_v7(), Uuid::now_v7()])
        .await
    {
        Err(Error::AlreadyExists(_)) => {}
        other => panic!("{other:?}"),
    }
    let not_member = NewMessage {
        message_id: Uuid::now_v7(),
        conversation_id: conv,
        seq: 2,
        sender_id: Uuid::now_v7(),
        sent_at: None,
        thread_root_message_id: None,
    };
    match b.register_messages(&[not_member]).await {
        Err(Error::FailedPrecondition(s)) => assert!(s.message().contains("sender_id")),
        other => panic!("{other:?}"),
    }
    let anonymous = Client::builder(&url).connect().await.unwrap();
    match anonymous.unread_counts(&[conv]).await {
        Err(Error::Unauthenticated(_)) => {}
        other => panic!("{other:?}"),
    }
    // A user token on the backend service.
    match member
        .backend()
        .create_conversation(Uuid::now_v7(), &[members[0]])
        .await
    {
        Err(e @ Error::PermissionDenied(_)) => {
            // Debug shows the code and message, not the response headers.
            let debug = format!("{e:?}");
            assert!(debug.contains("PermissionDenied"), "{debug}");
            assert!(!debug.to_lowercase().contains("content-type"), "{debug}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing listening: UNAVAILABLE, after the configured attempts.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let unreachable = Client::builder(dead.clone())
        .retry(RetryPolicy::none())
        .token(token(Uuid::now_v7(), Role::User))
        .connect_lazy()
        .unwrap();
    match unreachable.unread_counts(&[conv]).await {
        Err(e @ Error::Unavailable(_)) => {
            assert!(e.is_transient());
            // Says where and why, down to the socket error.
            let text = e.to_string();
            assert!(text.contains(&format!("connect {dead}")), "{text}");
            assert!(text.to_lowercase().contains("refused"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    match Client::builder(dead.clone()).connect().await {
        Err(e @ Error::Connect { .. }) => {
            assert!(e.is_transient());
            let text = e.to_string();
            assert!(text.starts_with(&format!("connect {dead}: ")), "{text}");
            assert!(text.to_lowercase().contains("refused"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // A server that accepts and never answers: the client's deadline, told
    // as such (tonic alone reports CANCELLED).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let impatient = Client::builder(silent_url)
        .retry(RetryPolicy::none())
        .timeout(Duration::from_millis(300))
        .token(token(Uuid::now_v7(), Role::User))
        .connect_lazy()
        .unwrap();
    match impatient.unread_counts(&[conv]).await {
        Err(e @ Error::DeadlineExceeded(_)) => assert!(e.to_string().contains("deadline"), "{e}"),
        other => panic!("{other:?}"),
    }
    holder.abort();
    // An endpoint without a scheme is a configuration error that says so.
    match Client::builder(dead.trim_start_matches("http://")).connect_lazy() {
        Err(Error::Config(m)) => assert!(m.contains("needs http:// or https://"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sdk_asks_the_token_provider_again_and_recovers_from_an_expired_token() {
    let s = TestServer::start().await;
    let url = s.url();
    let (conv, members, msgs) = chat(&url, 2, 1).await;
    let alice = members[0];
    let calls = Arc::new(AtomicU32::new(0));
    let provider = {
        let calls = calls.clone();
        token_fn(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    // The first token handed out has already expired.
                    Ok(expired_token(alice))
                } else {
                    Ok(token(alice, Role::User))
                }
            }
        })
    };
    let client = quick_retrying(&url, provider).await;
    // The subscription's first connection is refused; it reconnects with a
    // fresh token and goes live.
    let mut sub = client.subscribe(None);
    let mut saw_reconnect = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Event::Reconnecting { reason, .. } => {
                assert!(reason.contains("expired"), "{reason}");
                saw_reconnect = true;
            }
            Event::Live { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_reconnect);
    let before = calls.load(Ordering::SeqCst);
    client.get_receipts(conv, &msgs).await.unwrap();
    client.unread_counts(&[conv]).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 2,
        "asked before every call"
    );
}

#[tokio::test]
async fn a_subscription_ends_on_a_refused_token_instead_of_retrying_forever() {
    let s = TestServer::start().await;
    let url = s.url();
    // A fixed token the server refuses: the error, then the end.
    let fixed = Client::builder(&url)
        .token(expired_token(Uuid::now_v7()))
        .connect()
        .await
        .unwrap();
    let mut sub = fixed.subscribe(None);
    match next(&mut sub).await {
        Some(Err(Error::Unauthenticated(s))) => assert!(s.message().contains("expired"), "{s:?}"),
        other => panic!("{other:?}"),
    }
    assert!(next(&mut sub).await.is_none(), "ended");
    // A provider that only hands out refused tokens: asked once more (an
    // expired token is replaced on the next attempt), then the end.
    let user = Uuid::now_v7();
    let calls = Arc::new(AtomicU32::new(0));
    let provider = {
        let calls = calls.clone();
        token_fn(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok(expired_token(user)) }
        })
    };
    let client = quick_retrying(&url, provider).await;
    let mut sub = client.subscribe(None);
    let mut reconnects = 0;
    loop {
        match next(&mut sub).await {
            Some(Ok(Event::Reconnecting { .. })) => reconnects += 1,
            Some(Err(Error::Unauthenticated(_))) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(next(&mut sub).await.is_none(), "ended");
    assert_eq!((reconnects, calls.load(Ordering::SeqCst)), (1, 2));
}

/// A client with `provider`, retrying after 10 ms.
async fn quick_retrying(url: &str, provider: impl receipts_sdk::TokenProvider) -> Client {
    Client::builder(url)
        .token_provider(provider)
        .retry(RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        })
        .connect()
        .await
        .unwrap()
}

/// The subscription's next item, within 10 s.
async fn next(sub: &mut receipts_sdk::Subscription) -> Option<Result<Event, receipts_sdk::Error>> {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the subscription neither yielded nor ended")
}

fn expired_token(user: Uuid) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = receipts_server::auth::Claims {
        sub: user.to_string(),
        role: Role::User,
        exp: now - 3600,
        iat: Some(now - 7200),
        nbf: None,
        iss: None,
        aud: None,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// GetReceipts of any number of messages (100 per call).
async fn receipts_of(
    client: &Client,
    conv: Uuid,
    ids: &[Uuid],
) -> Vec<receipts_sdk::MessageReceipts> {
    let mut out = Vec::new();
    for chunk in ids.chunks(100) {
        out.extend(client.get_receipts(conv, chunk).await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_subscription_that_accepts_ranges_gets_one_range_for_a_batch() {
    let s = TestServer::start().await;
    let url = s.url();
    let (conv, members, msgs) = chat(&url, 2, 300).await;
    let alice = user_client(&url, members[0]).await;
    let bob = user_client(&url, members[1]).await;
    let mut ranged = alice.subscribe_with(None, SubscribeOptions::default().accept_ranges(true));
    let mut plain = alice.subscribe(None);
    assert!(matches!(ranged.next().await, Some(Ok(Event::Live { .. }))));
    assert!(matches!(plain.next().await, Some(Ok(Event::Live { .. }))));
    // What Alice's UI holds: every message with its seq, all at one tick.
    let mut held = receipts_of(&alice, conv, &msgs).await;
    assert!(held.iter().all(|m| m.tick == Tick::Sent));

    bob.mark_delivered(&msgs[..250]).await.unwrap();
    let Event::Receipts {
        messages, ranges, ..
    } = next_change(&mut ranged).await
    else {
        panic!("expected receipts")
    };
    assert!(messages.is_empty());
    assert_eq!(ranges.len(), 1);
    assert_eq!((ranges[0].from_seq, ranges[0].to_seq), (1, 250));
    assert_eq!(ranges[0].recipients.len(), 1, "the direct chat's recipient");
    let mut applied = 0;
    for m in held.iter_mut() {
        for r in &ranges {
            applied += usize::from(m.apply_range(r));
        }
    }
    assert_eq!(applied, 250);
    let now = receipts_of(&alice, conv, &msgs).await;
    for (h, n) in held.iter().zip(&now) {
        assert_eq!(
            (h.tick, h.delivered_count, h.delivered_at),
            (n.tick, n.delivered_count, n.delivered_at)
        );
    }
    // Without ranges, the same change as 250 message entries.
    let mut seen = HashSet::new();
    while seen.len() < 250 {
        match next_change(&mut plain).await {
            Event::Receipts {
                messages, ranges, ..
            } => {
                assert!(ranges.is_empty());
                seen.extend(messages.iter().map(|m| m.message_id));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, msgs[..250].iter().copied().collect::<HashSet<_>>());
}

/// Waits until `state` satisfies `ok`: woken by its changes, and every
/// 20 ms for what is not a change of state (the cursor).
async fn until(state: &ReceiptState, what: &str, ok: impl Fn(&ReceiptState) -> bool) {
    let mut changes = state.changes();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !ok(state) {
            tokio::select! {
                r = changes.changed() => r.expect("state alive"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 10 s"));
}

#[tokio::test]
async fn a_receipt_state_follows_ranges_resets_and_resumes() {
    let s = TestServer::start().await;
    let url = s.url();
    let (conv, members, msgs) = chat(&url, 2, 120).await;
    let alice = user_client(&url, members[0]).await;
    let bob = user_client(&url, members[1]).await;
    let state = ReceiptState::new();
    let mut held = receipts_of(&alice, conv, &msgs).await;
    held.truncate(100); // the UI shows the first 100
    state.track(held);
    assert_eq!(state.seq(msgs[9]), Some(10), "the read marker's seq");
    let follower = {
        let (state, alice) = (state.clone(), alice.clone());
        tokio::spawn(async move { state.follow(&alice, None).await })
    };
    // Live: a batch marked delivered arrives as a range over the held ones.
    until(&state, "follow is live", |s| s.cursor().is_some()).await;
    bob.mark_delivered(&msgs).await.unwrap();
    until(&state, "100 delivered", |s| {
        s.conversation(conv)
            .iter()
            .all(|m| m.tick == Tick::Delivered)
    })
    .await;
    assert_eq!(
        state.conversation(conv).len(),
        100,
        "ranges touch only held messages"
    );
    assert!(state.message(msgs[110]).is_none());
    bob.mark_read_up_to(conv, msgs[49]).await.unwrap();
    until(&state, "50 read", |s| {
        s.conversation(conv)
            .iter()
            .filter(|m| m.tick == Tick::Read)
            .count()
            == 50
    })
    .await;
    follower.abort();
    let _ = follower.await;

    // Resume: what happened while it was away arrives when it follows again.
    bob.mark_read_up_to(conv, msgs[99]).await.unwrap();
    let follower = {
        let (state, alice) = (state.clone(), alice.clone());
        tokio::spawn(async move { state.follow(&alice, None).await })
    };
    until(&state, "100 read after resuming", |s| {
        s.conversation(conv).iter().all(|m| m.tick == Tick::Read)
    })
    .await;
    follower.abort();
    let _ = follower.await;

    // Reset: a cursor the server cannot honour replaces everything with
    // its snapshot (Alice's most recent messages, as they are now).
    let reset = ReceiptState::new();
    reset.track(receipts_of(&alice, conv, &msgs[..5]).await);
    let follower = {
        let (reset, alice) = (reset.clone(), alice.clone());
        tokio::spawn(async move {
            reset
                .follow(&alice, Some(Cursor::from_string("not-a-cursor")))
                .await
        })
    };
    until(&reset, "the snapshot", |s| s.message(msgs[119]).is_some()).await;
    let newest = reset.message(msgs[119]).unwrap();
    assert_eq!((newest.tick, newest.seq), (Tick::Delivered, 120));
    assert_eq!(
        reset.watermark(conv).map(|w| w.read_up_to_seq),
        Some(0),
        "Alice's own read position came with the snapshot"
    );
    follower.abort();
}

#[tokio::test]
async fn read_marker_sends_one_call_for_a_burst_and_loses_nothing_on_drop() {
    let s = TestServer::start().await;
    let url = s.url();
    let (conv, members, msgs) = chat(&url, 2, 10).await;
    let bob = user_client(&url, members[1]).await;
    // Bob's other device watches his watermark: one event per MarkReadUpTo
    // that moved it.
    let mut watch = user_client(&url, members[1]).await.subscribe(None);
    assert!(matches!(watch.next().await, Some(Ok(Event::Live { .. }))));

    let marker = bob.read_marker_every(Duration::from_secs(60));
    for (i, m) in msgs.iter().enumerate().take(8) {
        marker.mark(conv, *m, i as u64 + 1);
    }
    marker.mark(conv, msgs[2], 3); // late and lower: ignored
    marker.flush().await.unwrap();
    match next_change(&mut watch).await {
        Event::Watermark(w) => assert_eq!((w.read_up_to_seq, w.unread_count), (8, 2)),
        other => panic!("{other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.next())
            .await
            .is_err(),
        "one call for the whole burst"
    );
    // Marks still pending when the marker is dropped are sent.
    marker.mark(conv, msgs[9], 10);
    drop(marker);
    match next_change(&mut watch).await {
        Event::Watermark(w) => assert_eq!(w.read_up_to_seq, 10),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn delivered_batcher_groups_by_size_and_time_and_flushes_on_close() {
    let s = TestServer::start().await;
    let url = s.url();
    let (conv, members, msgs) = chat(&url, 2, 250).await;
    let bob = user_client(&url, members[1]).await;
    let batcher = bob.delivered_batcher_with(100, Duration::from_millis(50));
    for m in &msgs[..200] {
        batcher.deliver(*m);
    }
    // The time bound sends a partial batch without a flush.
    batcher.deliver(msgs[200]);
    let alice = user_client(&url, members[0]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = alice.get_receipts(conv, &msgs[200..201]).await.unwrap();
        if r[0].delivered_count == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "time-bounded batch never sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The conversation form, mixed with ids alone in one batch.
    for (i, m) in msgs[201..].iter().enumerate() {
        if i % 2 == 0 {
            batcher.deliver_in(conv, *m);
        } else {
            batcher.deliver(*m);
        }
    }
    batcher.close().await.unwrap();
    for chunk in msgs.chunks(100) {
        let r = alice.get_receipts(conv, chunk).await.unwrap();
        assert!(
            r.iter()
                .all(|m| m.delivered_count == 1 && m.tick == Tick::Delivered)
        );
    }
}

// Multi-threaded: `terminate` blocks while waiting for the child, and the
// client's connection must keep running meanwhile (HTTP/2 graceful shutdown
// waits for the client to acknowledge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_a_server_restart_with_no_loss_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = ChildServer::start(dir.path(), port).await;
    let url = format!("http://{}", server.addr);
    let (conv, members, msgs) = chat(&url, 2, 6).await;
    let alice = Client::builder(&url)
        .token(token(members[0], Role::User))
        .retry(RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            ..RetryPolicy::default()
        })
        .connect()
        .await
        .unwrap();
    let bob = user_client(&url, members[1]).await;
    let mut sub = alice.subscribe(None);
    assert!(matches!(sub.next().await, Some(Ok(Event::Live { .. }))));

    let mut seen: Vec<(Uuid, Tick)> = Vec::new();
    fn collect(seen: &mut Vec<(Uuid, Tick)>, ev: Event) {
        if let Event::Receipts { messages, .. } = ev {
            seen.extend(messages.iter().map(|m| (m.message_id, m.tick)));
        }
    }
    for m in &msgs[..3] {
        bob.mark_delivered(&[*m]).await.unwrap();
        collect(&mut seen, next_change(&mut sub).await);
    }
    // Stop the server gracefully; the stream ends with a resumable status.
    let status = server.terminate().expect("exit status");
    assert!(status.success(), "graceful exit: {status:?}");
    // Writes the subscriber has not seen yet, made while it was away: on the
    // next server process (same data directory and port).
    let server2 = ChildServer::start(dir.path(), port).await;
    let bob = user_client(&url, members[1]).await;
    for m in &msgs[3..] {
        bob.mark_delivered(&[*m]).await.unwrap();
    }
    bob.mark_read_up_to(conv, msgs[5]).await.unwrap();
    // Everything arrives exactly once (replay is coalesced per message).
    while seen.iter().filter(|(_, t)| *t == Tick::Read).count() < 6 {
        collect(&mut seen, next_change(&mut sub).await);
    }
    // Whether the stream came back before or after the later writes, each
    // message's state arrives at most once per state: no duplicate, no gap.
    let delivered: Vec<Uuid> = seen
        .iter()
        .filter(|(_, t)| *t == Tick::Delivered)
        .map(|(m, _)| *m)
        .collect();
    assert_eq!(
        delivered[..3],
        msgs[..3],
        "delivered before the restart, in order"
    );
    let pairs: HashSet<(Uuid, Tick)> = seen.iter().copied().collect();
    assert_eq!(pairs.len(), seen.len(), "no duplicate: {seen:?}");
    let read: HashSet<Uuid> = seen
        .iter()
        .filter(|(_, t)| *t == Tick::Read)
        .map(|(m, _)| *m)
        .collect();
    assert_eq!(read.len(), 6, "every message read: {seen:?}");
    drop(server2);
}

#[tokio::test]
async fn interceptors_see_every_call_and_a_caller_supplied_channel_is_used() {
    let server = TestServer::start().await;
    let user = Uuid::now_v7();
    // No credentials on the builder: the interceptor adds them, so a call
    // that succeeds proves it ran (on unary calls and on the stream).
    let seen = Arc::new(AtomicU32::new(0));
    let count = seen.clone();
    let bearer = format!("Bearer {}", token(user, Role::User));
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect_lazy();
    let client = Client::builder(server.url())
        .interceptor(move |mut req| {
            count.fetch_add(1, Ordering::SeqCst);
            req.metadata_mut()
                .insert("authorization", bearer.parse().unwrap());
            Ok(req)
        })
        .with_channel(channel);
    assert_eq!(client.read_receipts().await.unwrap(), ReadReceipts::Shared);
    let mut sub = client.subscribe(None);
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the stream answers");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    assert!(
        seen.load(Ordering::SeqCst) >= 2,
        "interceptor skipped a call"
    );

    // An interceptor's refusal fails the call with its status, typed, and
    // nothing is sent.
    let refusing = Client::builder(server.url())
        .token(token(user, Role::User))
        .interceptor(|_| Err(tonic::Status::permission_denied("not from this pod")))
        .connect()
        .await
        .unwrap();
    let err = refusing.read_receipts().await.unwrap_err();
    assert!(
        matches!(&err, Error::PermissionDenied(s) if s.message() == "not from this pod"),
        "{err:?}"
    );
}
