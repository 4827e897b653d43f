//! Protection on a real `receiptd` process: load shedding past the
//! concurrency limit, the server's deadline, per-user write and subscribe
//! rates, the cap on open subscriptions, and the request size limit. Each
//! refusal has its documented status and message and changes nothing.

use receipts_proto::v1 as pb;
use receipts_tests::*;
use std::time::Duration;
use tokio::time::{Instant, sleep};
use tonic::Code;
use uuid::Uuid;

async fn node(extra: &[&str]) -> (ChildServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let node = ChildServer::start_with_args(dir.path(), free_port(), &args).await;
    (node, dir)
}

fn privacy() -> pb::GetPrivacySettingsRequest {
    pb::GetPrivacySettingsRequest {}
}

#[tokio::test]
async fn calls_past_the_concurrency_limit_are_shed_with_unavailable() {
    let (node, _dir) = node(&["--max-concurrent-requests", "1"]).await;
    let mut user = node.user(Uuid::now_v7()).await;
    // A stuck call takes the only slot once its headers arrive. (If a probe
    // got there first, the stuck call itself was shed: start another.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut holder = stalled_call(node.addr, Uuid::now_v7());
    let shed = loop {
        sleep(Duration::from_millis(50)).await;
        if holder.is_finished() {
            holder = stalled_call(node.addr, Uuid::now_v7());
            continue;
        }
        if let Err(s) = user.get_privacy_settings(privacy()).await {
            break s;
        }
        assert!(Instant::now() < deadline, "the slot was never taken");
    };
    assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");
    assert!(shed.message().contains("overloaded"), "{}", shed.message());
    assert!(shed.message().contains("--max-concurrent-requests"));

    // Health stays answerable under overload.
    wait_serving(node.addr).await;

    // The slot comes back when the stuck call goes away.
    holder.abort();
    let deadline = Instant::now() + Duration::from_secs(10);
    while user.get_privacy_settings(privacy()).await.is_err() {
        assert!(Instant::now() < deadline, "the slot was never freed");
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_call_that_outlives_the_server_deadline_gets_deadline_exceeded() {
    let (node, _dir) = node(&["--request-timeout-ms", "300"]).await;
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        stalled_call(node.addr, Uuid::now_v7()),
    )
    .await
    .expect("the server ends the call")
    .expect("task");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--request-timeout-ms"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn writes_past_a_users_rate_are_refused_and_change_nothing() {
    let (node, _dir) = node(&["--user-writes-per-sec", "1", "--user-write-burst", "2"]).await;
    let mut backend = node.backend().await;
    let mut chat = Conversation::create(&mut backend, 3).await;
    let (alice, bob, carol) = (chat.members[0], chat.members[1], chat.members[2]);
    let mut ms = Vec::new();
    for _ in 0..6 {
        ms.push(chat.send(&mut backend, alice).await);
    }
    let mut bob_client = node.user(bob).await;
    let mark = |m: Uuid| pb::MarkDeliveredRequest {
        message_ids: vec![m.to_string()],
        ..Default::default()
    };
    // The burst of 2 goes at once; then one write a second. Writing as fast
    // as possible is refused within a few writes (at most one token can come
    // back per second, however slow a loaded machine makes these calls).
    let mut accepted = 0;
    let (refused, m) = loop {
        let m = ms[accepted];
        match bob_client.mark_delivered(mark(m)).await {
            Ok(_) => accepted += 1,
            Err(status) => break (status, m),
        }
        assert!(accepted < ms.len(), "the rate was never enforced");
    };
    assert!(accepted >= 2, "the burst of 2 is allowed");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("writes/s per user"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("retry in"),
        "{}",
        refused.message()
    );

    // Nothing of the refused write was kept.
    let mut alice_client = node.user(alice).await;
    let state = receipt(&mut alice_client, chat.id, m).await;
    assert_eq!(
        state.delivered_count, 0,
        "the refused delivery changed nothing"
    );

    // Another user has a budget of their own.
    let mut carol_client = node.user(carol).await;
    carol_client.mark_delivered(mark(m)).await.expect("carol");

    // Later the same write is accepted and kept.
    let deadline = Instant::now() + Duration::from_secs(10);
    while bob_client.mark_delivered(mark(m)).await.is_err() {
        assert!(Instant::now() < deadline, "the budget never refilled");
        sleep(Duration::from_millis(100)).await;
    }
    let state = receipt(&mut alice_client, chat.id, m).await;
    assert_eq!(state.delivered_count, 2);
}

async fn try_subscribe(
    client: &mut UserClient,
) -> Result<tonic::Streaming<pb::SubscribeReceiptsResponse>, tonic::Status> {
    client
        .subscribe_receipts(pb::SubscribeReceiptsRequest::default())
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_user_may_hold_only_so_many_subscriptions() {
    let (node, _dir) = node(&["--max-subscriptions-per-user", "2"]).await;
    let me = Uuid::now_v7();
    let mut client = node.user(me).await;
    let first = try_subscribe(&mut client).await.expect("1st");
    let _second = try_subscribe(&mut client).await.expect("2nd");
    let refused = try_subscribe(&mut client)
        .await
        .expect_err("3rd is over the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("too many open subscriptions"),
        "{}",
        refused.message()
    );
    // Someone else is not affected.
    let mut other = node.user(Uuid::now_v7()).await;
    try_subscribe(&mut other).await.expect("another user");
    // Closing one frees its slot.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_subscribe(&mut client).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot never came back"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn opening_subscriptions_too_fast_is_refused() {
    let (node, _dir) = node(&[
        "--user-subscribes-per-sec",
        "1",
        "--user-subscribe-burst",
        "2",
    ])
    .await;
    let mut client = node.user(Uuid::now_v7()).await;
    let mut open = Vec::new();
    let refused = loop {
        match try_subscribe(&mut client).await {
            Ok(s) => open.push(s),
            Err(s) => break s,
        }
        // Only one more can come per second, however slow the machine.
        assert!(open.len() < 10, "the subscribe rate was never enforced");
    };
    assert!(open.len() >= 2, "the burst allows two at once");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("new subscriptions/s"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn an_oversized_request_gets_resource_exhausted_and_changes_nothing() {
    let (node, _dir) = node(&["--max-message-bytes", "2000"]).await;
    let mut backend = node.backend().await;
    let mut chat = Conversation::create(&mut backend, 2).await;
    let sender = chat.members[0];
    let messages: Vec<pb::MessageRegistration> = (1..=40)
        .map(|seq| registration(Uuid::now_v7(), chat.id, seq, sender))
        .collect();
    let first = messages[0].message_id.clone();
    let status = backend
        .register_messages(pb::RegisterMessagesRequest { messages })
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("request message too large"),
        "{}",
        status.message()
    );
    assert!(status.message().contains("--max-message-bytes"));
    let mut client = node.user(sender).await;
    let missing = client
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: chat.id.to_string(),
            message_ids: vec![first],
            include_recipients: false,
        })
        .await
        .expect_err("nothing was registered");
    assert_eq!(missing.code(), Code::NotFound);
    // A request under the limit goes through.
    chat.send(&mut backend, sender).await;
}
