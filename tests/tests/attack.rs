//! DESIGN.md §6: a caller without valid credentials never holds server
//! resources beyond a short bound, and one connection cannot starve the
//! others. Each attack runs against a real `receiptd` process over raw
//! HTTP/2 and TCP, while a legitimate caller on its own connection keeps
//! getting OK answers and health stays SERVING.

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use receipts_proto::v1 as pb;
use receipts_tests::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use uuid::Uuid;

async fn node(extra: &[&str]) -> (ChildServer, tempfile::TempDir, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(["--metrics-listen".to_string(), metrics.to_string()]);
    let node = ChildServer::start_with_args(dir.path(), free_port(), &args).await;
    (node, dir, metrics)
}

/// Opens `streams` gRPC calls on one HTTP/2 connection, each sending only
/// its headers (with `authorization`, if any) and never a body, and keeps
/// them open. Returns how many got a response (and with which
/// `grpc-status`), once every stream was answered or `hold` passed.
async fn headers_only_flood(
    addr: SocketAddr,
    streams: usize,
    authorization: Option<String>,
    hold: Duration,
) -> Vec<Option<String>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client;
    let mut open = Vec::new();
    let mut answers = FuturesUnordered::new();
    let until = Instant::now() + hold;
    for _ in 0..streams {
        // Waits while the server's stream limit is reached.
        client = match tokio::time::timeout_at(until, client.ready()).await {
            Ok(Ok(c)) => c,
            _ => break,
        };
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{addr}/receipts.v1.ReceiptService/GetPrivacySettings"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(a) = &authorization {
            req = req.header("authorization", a.as_str());
        }
        let (resp, send) = match client.send_request(req.body(()).expect("request"), false) {
            Ok(pair) => pair,
            Err(_) => break,
        };
        open.push(send);
        answers.push(async move {
            match resp.await {
                Ok(r) => Some(
                    r.headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string(),
                ),
                Err(e) => Some(format!("h2 error: {e}")),
            }
        });
    }
    let mut out = Vec::new();
    while let Ok(Some(a)) = tokio::time::timeout_at(until, answers.next()).await {
        out.push(a);
    }
    drop(open);
    out
}

/// A legitimate caller on its own connection: every call answered OK, and
/// health SERVING, for `rounds` rounds while the attack runs.
async fn legitimate_caller_is_served(node: &ChildServer, rounds: usize) {
    let mut user = node.user(Uuid::now_v7()).await;
    for _ in 0..rounds {
        let started = Instant::now();
        user.get_privacy_settings(pb::GetPrivacySettingsRequest {})
            .await
            .expect("a legitimate call is answered OK during the attack");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a legitimate call waited {:?}",
            started.elapsed()
        );
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(channel(node.addr).await);
        for service in ["", "receipts.v1.ReceiptService"] {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health answers during the attack")
                .into_inner()
                .status;
            assert_eq!(
                status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "health of {service:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn headers_only_calls_without_a_token_hold_no_slot_and_others_are_served() {
    // The reported attack, with the defaults: 1,024 slots; ~1,100 streams
    // on one connection, headers only, no token, no body.
    let (node, _dir, metrics) = node(&[]).await;
    let addr = node.addr;
    let attack = tokio::spawn(async move {
        let mut answered = Vec::new();
        for _ in 0..3 {
            answered.extend(headers_only_flood(addr, 1100, None, Duration::from_secs(5)).await);
        }
        answered
    });
    legitimate_caller_is_served(&node, 20).await;
    let answered = attack.await.expect("attack");
    // Every stream was answered at once, without its body: UNAUTHENTICATED,
    // or refused by HTTP/2 past the connection's stream limit (a stream the
    // server never processed, which real clients retry).
    let mut kinds = std::collections::BTreeMap::new();
    for a in &answered {
        *kinds.entry(a.clone()).or_insert(0) += 1;
    }
    assert!(
        answered.len() >= 3000,
        "only {} answered: {kinds:?}",
        answered.len()
    );
    let unauthenticated = kinds.get(&Some("16".to_string())).copied().unwrap_or(0);
    assert!(unauthenticated >= 256, "{kinds:?}");
    assert!(
        answered.iter().all(|a| a.as_deref() == Some("16")
            || a.as_deref().is_some_and(|e| e.contains("refused stream"))),
        "neither UNAUTHENTICATED nor refused: {kinds:?}"
    );
    let text = scrape(metrics).await;
    assert_eq!(
        sample(&text, "receipts_rejected_total{reason=\"overloaded\"}"),
        0.0,
        "the attack took slots:\n{text}"
    );
}

#[tokio::test]
async fn one_authenticated_connection_cannot_take_every_slot() {
    // An authenticated client that stalls its calls holds at most its
    // connection's share: 16 of 64 slots here.
    let (node, _dir, metrics) = node(&[
        "--max-concurrent-requests",
        "64",
        "--max-calls-per-connection",
        "16",
    ])
    .await;
    let addr = node.addr;
    let bearer = format!(
        "Bearer {}",
        token(Uuid::now_v7(), receipts_server::auth::Role::User)
    );
    let attack = tokio::spawn(async move {
        headers_only_flood(addr, 200, Some(bearer), Duration::from_secs(6)).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    legitimate_caller_is_served(&node, 20).await;
    let answered = attack.await.expect("attack");
    // Past its share, the attacker's own calls were shed (UNAVAILABLE).
    let shed = answered
        .iter()
        .filter(|a| a.as_deref() == Some("14"))
        .count();
    assert!(shed >= 150, "{shed} shed of {}", answered.len());
    let text = scrape(metrics).await;
    assert!(
        sample(
            &text,
            "receipts_rejected_total{reason=\"connection_share\"}"
        ) >= 150.0
    );
    assert_eq!(
        sample(&text, "receipts_rejected_total{reason=\"overloaded\"}"),
        0.0
    );
}

/// Whether the server closed `conn` (EOF or reset) within `wait`.
async fn closed_within(conn: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let until = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The server's SETTINGS and such: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn idle_and_half_open_connections_are_closed_after_the_header_timeout() {
    let (node, _dir, metrics) = node(&["--header-timeout-ms", "1000"]).await;
    let mut idle = Vec::new();
    for i in 0..400 {
        let mut c = TcpStream::connect(node.addr).await.expect("connect");
        match i % 3 {
            // Nothing at all.
            0 => {}
            // Half an HTTP/2 preface.
            1 => c.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write"),
            // Half an HTTP/1.1 request head.
            _ => c
                .write_all(
                    b"POST /receipts.v1.ReceiptService/GetPrivacySettings HTTP/1.1\r\nHost: x\r\n",
                )
                .await
                .expect("write"),
        }
        idle.push(c);
    }
    legitimate_caller_is_served(&node, 3).await;
    let started = Instant::now();
    for c in &mut idle {
        assert!(
            closed_within(c, Duration::from_secs(10)).await,
            "a connection without a call is still open after {:?}",
            started.elapsed()
        );
    }
    let text = scrape(metrics).await;
    assert!(
        sample(
            &text,
            "receipts_connections_closed_total{reason=\"first_request_timeout\"}"
        ) >= 400.0,
        "{text}"
    );
    legitimate_caller_is_served(&node, 2).await;
}

#[tokio::test]
async fn a_connection_idle_after_its_calls_is_closed_and_a_client_reconnects() {
    let (node, _dir, _metrics) = node(&["--idle-timeout-ms", "1000"]).await;
    let mut backend = node.backend().await;
    let mut chat = Conversation::create(&mut backend, 2).await;
    let (a, b) = (chat.members[0], chat.members[1]);
    let m = chat.send(&mut backend, a).await;
    let mut user = node.user(b).await;
    user.get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await
        .expect("first call");
    // A subscription is a call in flight: its connection is not idle.
    let (mut sub, _) = Subscription::open(&mut node.user(a).await, None).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The subscription outlived the idle timeout and still gets events.
    deliver(&mut node.user(b).await, &[m]).await;
    let ev = sub.next_receipts().await;
    assert_eq!(ev.messages[0].message_id, m.to_string());
    // The idle connection was closed; tonic reconnects on the next call.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match user
            .get_privacy_settings(pb::GetPrivacySettingsRequest {})
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no reconnect: {e:?}"),
        }
    }
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once() {
    let (node, _dir, metrics) = node(&["--max-connections", "20"]).await;
    // The start-up probe's connection may still hold a slot: wait until the
    // node counts none, then until it counts exactly the 20 held here, so
    // that the extra one is the 21st whatever the scheduling.
    let open_becomes = |n: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let open = sample(&scrape(metrics).await, "receipts_connections_open");
            if open == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{open} connections open, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    open_becomes(0.0).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(node.addr).await.expect("connect"));
    }
    open_becomes(20.0).await;
    let mut extra = TcpStream::connect(node.addr).await.expect("connect");
    assert!(closed_within(&mut extra, Duration::from_secs(5)).await);
    let text = scrape(metrics).await;
    assert!(sample(&text, "receipts_connections_closed_total{reason=\"limit\"}") >= 1.0);
    drop(held);
    // Freed: a client gets in again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = match tokio::time::timeout(Duration::from_secs(2), node.user(Uuid::now_v7())).await
        {
            Ok(mut u) => u
                .get_privacy_settings(pb::GetPrivacySettingsRequest {})
                .await
                .is_ok(),
            Err(_) => false,
        };
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection after the others closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
