//! The graceful-shutdown scenario shared by the shutdown and production
//! suites: SIGTERM one `receiptd` mid-stream, resume on another.

use crate::rpc::{Conversation, Subscription, deliver, event_offset, latest_states, read_up_to};
use crate::servers::{ChildServer, stalled_call};
use receipts_proto::v1 as pb;
use std::time::Duration;
use uuid::Uuid;

/// Graceful shutdown, end to end: a sender subscribed on node `a`, a client
/// that never finishes its call, and writes acknowledged just before SIGTERM
/// (one still in its group window). `a` must end the stream with a
/// resumable UNAVAILABLE, flush, and exit 0 within `grace` plus a margin
/// despite the stuck client; the sender then resumes from its last cursor
/// on the node `start_b` starts and sees every acknowledged write exactly
/// once, then live events.
pub async fn shutdown_then_resume_elsewhere<F, Fut>(mut a: ChildServer, grace: Duration, start_b: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ChildServer>,
{
    use pb::subscribe_receipts_response::Event as E;
    let mut backend = a.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    let dave = Uuid::now_v7();
    let mut direct = Conversation::create_with(&mut backend, vec![alice, dave]).await;
    let g: Vec<Uuid> = vec![
        group.send(&mut backend, alice).await,
        group.send(&mut backend, alice).await,
        group.send(&mut backend, alice).await,
    ];
    let d1 = direct.send(&mut backend, alice).await;

    let mut alice_a = a.user(alice).await;
    let (mut sub, _) = Subscription::open(&mut alice_a, None).await;
    let mut bob_a = a.user(bob).await;
    deliver(&mut bob_a, &[g[0]]).await;
    let first = sub.next().await.expect("the first group summary");
    let mut seen = vec![first];
    // Everything else alice's stream carries, until it ends.
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(30), sub.stream.message()).await {
                Ok(Ok(Some(ev))) => events.push(ev),
                Ok(Ok(None)) => break tonic::Status::ok("ended without a status"),
                Ok(Err(status)) => break status,
                Err(_) => panic!("the stream neither ended nor carried events for 30 s"),
            }
        };
        (events, end)
    });

    let stuck = stalled_call(a.addr, bob);
    // Acknowledged just before the signal: a group read still in its window,
    // and a direct delivery.
    deliver(&mut bob_a, &[g[1]]).await;
    read_up_to(&mut bob_a, group.id, g[1]).await;
    let mut dave_a = a.user(dave).await;
    deliver(&mut dave_a, &[d1]).await;

    let started = tokio::time::Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let status = a.terminate();
        (a, status)
    });
    let (events, end) = collector.await.expect("collector");
    let (_a, status) = exit.await.expect("terminate");
    let status = status.expect("exit status");
    assert!(status.success(), "exit 0 on SIGTERM, got {status:?}");
    assert!(
        started.elapsed() < grace + Duration::from_secs(10),
        "shutdown took {:?} despite a {grace:?} grace",
        started.elapsed()
    );
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(
        end.message().contains("resume from your last cursor"),
        "{}",
        end.message()
    );
    let _ = stuck.await;
    seen.extend(events);
    let cursor = seen.last().expect("events").cursor.clone();

    // Resume elsewhere.
    let b = start_b().await;
    let mut alice_b = b.user(alice).await;
    let (mut sub, replayed) = Subscription::open(&mut alice_b, Some(cursor.clone())).await;
    assert!(
        !replayed
            .iter()
            .any(|e| matches!(e.event, Some(E::Reset(_)))),
        "a resume, not a reset"
    );
    let last_seen = event_offset(seen.last().expect("events"));
    assert!(
        replayed.iter().all(|e| event_offset(e) > last_seen),
        "nothing seen is replayed"
    );
    seen.extend(replayed);
    let mut offsets: Vec<u64> = seen.iter().map(event_offset).collect();
    let n = offsets.len();
    offsets.dedup();
    assert_eq!(offsets.len(), n, "no event twice");

    let states = latest_states(&seen);
    let state = |m: &Uuid| states.get(&m.to_string()).copied();
    let (delivered, read) = (pb::Tick::Delivered as i32, pb::Tick::Read as i32);
    assert_eq!(
        state(&g[0]).map(|s| (s.0, s.1)),
        Some((1, 1)),
        "g0: bob has it and read it"
    );
    assert_eq!(
        state(&g[1]).map(|s| (s.0, s.1)),
        Some((1, 1)),
        "g1: the windowed read"
    );
    assert_eq!(state(&d1).map(|s| s.2), Some(delivered), "d1 delivered");

    // And live on the new node.
    let mut carol_b = b.user(carol).await;
    read_up_to(&mut carol_b, group.id, g[2]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = match tokio::time::timeout(Duration::from_secs(5), sub.stream.message()).await {
            Ok(Ok(Some(ev))) => ev,
            other => panic!("a live event on the new node, got {other:?}"),
        };
        seen.push(ev);
        let states = latest_states(&seen);
        if states.get(&g[2].to_string()).map(|s| s.1) == Some(1)
            && states.get(&g[0].to_string()).map(|s| s.2) == Some(read)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol's read never arrived"
        );
    }
    drop(b);
}
