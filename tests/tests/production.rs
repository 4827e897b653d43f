//! The production tier across real processes: several `receiptd` nodes
//! (`--store redis-scylla`) sharing a real Redis and a real Cassandra, killed
//! with `kill -9`, with hot data expired and Redis restarted under them.
//!
//! Needs `RECEIPTS_TEST_REDIS` and `RECEIPTS_TEST_CASSANDRA` (set by
//! `eval "$(scripts/backends.sh env)"`, which `scripts/test.sh` does); fails,
//! never skips, without them. The Redis-restart test starts its own
//! `redis-server` (from Debian's package) so it can kill it.

use pb::subscribe_receipts_response::Event as E;
use receipts_proto::v1 as pb;
use receipts_server::domain::Cursor;
use receipts_tests::tier::*;
use receipts_tests::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::time::Duration;
use tokio::time::{Instant, sleep};
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

fn tick(m: &pb::MessageReceipts) -> pb::Tick {
    pb::Tick::try_from(m.tick).expect("tick")
}

#[tokio::test]
async fn three_nodes_share_writes_and_events_with_no_gap_and_no_duplicate() {
    let tier = Tier::new().await;
    let (a, b, c) = (tier.node().await, tier.node().await, tier.node().await);
    let mut backend = a.backend().await;
    let mut direct = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);

    // Alice watches from B and from C; Bob writes on A.
    let (mut on_b, replayed) = Subscription::open(&mut b.user(alice).await, None).await;
    assert!(replayed.is_empty());
    let (mut on_c, _) = Subscription::open(&mut c.user(alice).await, None).await;

    let mut sent = Vec::new();
    for _ in 0..30 {
        sent.push(direct.send(&mut backend, alice).await);
    }
    let mut bob_on_a = a.user(bob).await;
    for m in &sent {
        deliver(&mut bob_on_a, &[*m]).await;
    }
    for m in sent.iter().skip(4).step_by(5) {
        read_up_to(&mut bob_on_a, direct.id, *m).await;
    }
    // 30 deliveries and 6 reads, each one event on Alice's log.
    let mut seen_b = Vec::new();
    let mut seen_c = Vec::new();
    for _ in 0..36 {
        seen_b.push(on_b.next().await.expect("event on node B"));
        seen_c.push(on_c.next().await.expect("event on node C"));
    }
    assert!(
        on_b.next_within(Duration::from_millis(500)).await.is_none(),
        "no extra event on B"
    );
    assert!(
        on_c.next_within(Duration::from_millis(100)).await.is_none(),
        "no extra event on C"
    );
    assert_eq!(seen_b, seen_c, "both nodes stream the same log");
    let offsets: Vec<u64> = seen_b.iter().map(event_offset).collect();
    for w in offsets.windows(2) {
        assert_eq!(w[1], w[0] + 1, "consecutive offsets: no gap, no duplicate");
    }
    for (ev, m) in seen_b.iter().zip(&sent) {
        let Some(E::Receipts(r)) = &ev.event else {
            panic!("expected receipts, got {ev:?}");
        };
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].message_id, m.to_string(), "in write order");
        assert_eq!(tick(&r.messages[0]), pb::Tick::Delivered);
    }
    let finals = latest_states(&seen_b);
    for m in &sent {
        assert_eq!(finals[&m.to_string()].2, pb::Tick::Read as i32, "{m}");
    }

    // A group spread over the nodes: counts are absolute and converge.
    let mut group = Conversation::create(&mut c.backend().await, 6).await;
    let sender = group.members[0];
    let gm = group.send(&mut c.backend().await, sender).await;
    let (mut watcher, _) = Subscription::open(&mut a.user(sender).await, None).await;
    let nodes = [&a, &b, &c];
    let mut calls = Vec::new();
    for (i, u) in group.members[1..].iter().copied().enumerate() {
        let mut client = nodes[i % 3].user(u).await;
        let conv = group.id;
        calls.push(tokio::spawn(async move {
            deliver(&mut client, &[gm]).await;
            read_up_to(&mut client, conv, gm).await;
        }));
    }
    for call in calls {
        call.await.expect("reader task");
    }
    loop {
        let r = watcher.next_receipts().await;
        assert!(r.group);
        let m = &r.messages[0];
        assert!(m.read_count <= m.delivered_count && m.delivered_count <= 5);
        if m.read_count == 5 {
            assert_eq!(tick(m), pb::Tick::Read);
            break;
        }
    }
    for node in nodes {
        let r = receipt(&mut node.user(sender).await, group.id, gm).await;
        assert_eq!(
            (r.delivered_count, r.read_count, r.recipients_total),
            (5, 5, 5)
        );
    }

    // Resume on another node after missing events: exactly the rest.
    let cursor = on_c.cursor.clone();
    drop(on_c);
    let more: Vec<Uuid> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(direct.send(&mut backend, alice).await);
        }
        v
    };
    deliver(&mut bob_on_a, &more).await;
    read_up_to(&mut bob_on_a, direct.id, more[4]).await;
    let live_tail = [
        on_b.next().await.expect("delivered batch"),
        on_b.next().await.expect("read"),
    ];
    let (_resumed, replay) =
        Subscription::open(&mut b.user(alice).await, Some(cursor.clone())).await;
    assert!(!replay.is_empty(), "the missed events are replayed");
    let from = Cursor::decode(&cursor).expect("cursor").offset;
    let mut last = from;
    for ev in &replay {
        assert!(!matches!(ev.event, Some(E::Reset(_))), "no reset: {ev:?}");
        assert!(event_offset(ev) > last, "replay moves forward only");
        last = event_offset(ev);
    }
    assert_eq!(
        last,
        event_offset(&live_tail[1]),
        "replay ends where the log ends"
    );
    assert_eq!(latest_states(&replay), latest_states(&live_tail));
}

#[tokio::test]
async fn a_node_killed_after_acknowledging_writes_loses_nothing() {
    let tier = Tier::new().await;
    // The victim never flushes on its own within the test.
    let mut victim = tier.node_with(&["--flush-interval-ms", "3600000"]).await;
    let mut backend = victim.backend().await;
    let mut direct = Conversation::create(&mut backend, 2).await;
    let mut group = Conversation::create(&mut backend, 4).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);
    let dm: Vec<Uuid> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(direct.send(&mut backend, alice).await);
        }
        v
    };
    let gm = group.send(&mut backend, group.members[0]).await;
    let mut bob_client = victim.user(bob).await;
    deliver(&mut bob_client, &dm).await;
    read_up_to(&mut bob_client, direct.id, dm[1]).await;
    let carol = group.members[1];
    let mut carol_client = victim.user(carol).await;
    set_sharing(&mut carol_client, false).await;
    deliver(&mut carol_client, &[gm]).await;
    read_up_to(&mut carol_client, group.id, gm).await;

    // Acknowledged, and not yet in Cassandra: the kill below is what matters.
    assert_eq!(tier.scylla.message(dm[0]).await.expect("scylla"), None);
    victim.kill9();

    let _survivor = tier.node().await;
    let s = &tier.scylla;
    eventually("every acknowledged write reaches Cassandra", || async {
        let Ok(Some(d)) = s.conversation(direct.id).await else {
            return false;
        };
        let Ok(Some(g)) = s.conversation(group.id).await else {
            return false;
        };
        let bob_wm = d
            .watermarks
            .iter()
            .find(|(u, _)| *u == bob)
            .map(|(_, w)| *w);
        let carol_wm = g
            .watermarks
            .iter()
            .find(|(u, _)| *u == carol)
            .map(|(_, w)| *w);
        let mut delivered = 0;
        for m in dm.iter().chain([&gm]) {
            delivered += s.deliveries(*m).await.unwrap_or_default().len();
        }
        d.messages.len() == 3
            && g.messages.len() == 1
            && d.members.len() == 2
            && g.members.len() == 4
            && bob_wm.is_some_and(|w| w.seq == 2 && w.public_seq == 2)
            && carol_wm.is_some_and(|w| w.seq == 1 && w.public_seq == 0)
            && delivered == 4
            && s.sharing(carol)
                .await
                .ok()
                .flatten()
                .is_some_and(|(on, _)| !on)
    })
    .await;
}

/// The receipts of `ids`, with recipients.
async fn receipts_of(
    client: &mut UserClient,
    conversation: Uuid,
    ids: &[Uuid],
) -> Vec<pb::MessageReceipts> {
    client
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: conversation.to_string(),
            message_ids: ids.iter().map(Uuid::to_string).collect(),
            include_recipients: true,
        })
        .await
        .expect("get receipts")
        .into_inner()
        .messages
}

#[tokio::test]
async fn sigterm_flushes_every_queued_write_before_exit() {
    let tier = Tier::new().await;
    // Only shutdown flushes.
    let mut node = tier.shutdown_flushing_node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob) = (group.members[0], group.members[1]);
    let m = group.send(&mut backend, alice).await;
    let mut bob_client = node.user(bob).await;
    deliver(&mut bob_client, &[m]).await;
    read_up_to(&mut bob_client, group.id, m).await;
    assert_eq!(tier.scylla.message(m).await.expect("scylla"), None);
    drop((backend, bob_client));
    let status = node.terminate().expect("exit status");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    // Nothing else runs: what is in Cassandra now was flushed at shutdown.
    let image = tier
        .scylla
        .conversation(group.id)
        .await
        .expect("scylla")
        .expect("conversation flushed");
    assert_eq!(image.messages.len(), 1);
    let wm = image
        .watermarks
        .iter()
        .find(|(u, _)| *u == bob)
        .map(|(_, w)| *w);
    assert_eq!(wm.map(|w| w.seq), Some(1));
    assert_eq!(tier.scylla.deliveries(m).await.expect("scylla").len(), 1);
}

#[tokio::test]
async fn expired_hot_data_reads_through_from_cassandra() {
    let tier = Tier::new().await;
    // Hot data lives 3 s after its last update; flushes every 100 ms.
    let node = tier
        .node_with(&["--hot-ttl-secs", "3", "--flush-interval-ms", "100"])
        .await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    let m1 = group.send(&mut backend, alice).await;
    let m2 = group.send(&mut backend, alice).await;
    let m3 = group.send(&mut backend, alice).await;
    deliver(&mut node.user(bob).await, &[m1, m2]).await;
    read_up_to(&mut node.user(bob).await, group.id, m1).await;
    deliver(&mut node.user(carol).await, &[m1]).await;
    let mut alice_client = node.user(alice).await;
    let before = receipts_of(&mut alice_client, group.id, &[m1, m2, m3]).await;

    // Wait until the conversation's hot keys are gone (expired, as Redis
    // would evict them), with everything flushed first by then.
    let tag = group.id.simple().to_string();
    eventually("the conversation's hot keys expire", || async {
        !tier.keys().await.iter().any(|k| k.contains(&tag))
    })
    .await;

    let after = receipts_of(&mut alice_client, group.id, &[m1, m2, m3]).await;
    assert_eq!(after, before, "read through from Cassandra, unchanged");
    // The re-warm rebuilt the counting indexes: counts alone agree.
    let counted = alice_client
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: group.id.to_string(),
            message_ids: [m1, m2, m3].iter().map(Uuid::to_string).collect(),
            include_recipients: false,
        })
        .await
        .expect("get receipts")
        .into_inner()
        .messages;
    let mut plain = before.clone();
    plain.iter_mut().for_each(|m| m.recipients.clear());
    assert_eq!(counted, plain, "counts from the re-warmed indexes");
    assert!(
        tier.keys().await.iter().any(|k| k.contains(&tag)),
        "the read re-warmed Redis"
    );
    // Writes go on from the re-warmed state.
    read_up_to(&mut node.user(carol).await, group.id, m3).await;
    let r = receipt(&mut alice_client, group.id, m1).await;
    assert_eq!((r.delivered_count, r.read_count), (2, 2));
    assert_eq!(tick(&r), pb::Tick::Read);
    let r = receipt(&mut alice_client, group.id, m3).await;
    assert_eq!((r.delivered_count, r.read_count), (1, 1));
    let unread = node
        .user(bob)
        .await
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![group.id.to_string()],
        })
        .await
        .expect("unread")
        .into_inner();
    assert_eq!(unread.conversations[0].unread_count, 2, "{unread:?}");
}

#[tokio::test]
async fn a_redis_restart_gives_subscribers_a_reset_never_a_silent_gap() {
    let mut redis = OwnedRedis::start(free_port());
    let tier = Tier::with_redis(redis.url()).await;
    let node = tier.node_with(&["--flush-interval-ms", "100"]).await;
    let mut backend = node.backend().await;
    let mut direct = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);
    let m1 = direct.send(&mut backend, alice).await;
    let m2 = direct.send(&mut backend, alice).await;
    let (mut sub, _) = Subscription::open(&mut node.user(alice).await, None).await;
    deliver(&mut node.user(bob).await, &[m1]).await;
    assert_eq!(
        tick(&sub.next_receipts().await.messages[0]),
        pb::Tick::Delivered
    );
    let cursor = sub.cursor.clone();
    eventually("m1's delivery reaches Cassandra", || async {
        tier.scylla.deliveries(m1).await.is_ok_and(|d| d.len() == 1)
    })
    .await;

    redis.kill9();
    eventually("health says NOT_SERVING while Redis is down", || async {
        health(node.addr).await == Some(ServingStatus::NotServing)
    })
    .await;
    let err = node
        .user(bob)
        .await
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: vec![m2.to_string()],
        })
        .await
        .expect_err("no write without Redis");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(!err.message().is_empty());

    // Back empty: the hot tier and the replay log are gone.
    redis.spawn();
    eventually("health says SERVING once Redis is back", || async {
        health(node.addr).await == Some(ServingStatus::Serving)
    })
    .await;
    // The old stream ends (resumably) or stays open; either way nothing
    // may be missed: a write after the restart, then a resume.
    deliver(&mut node.user(bob).await, &[m2]).await;
    let (_resumed, replay) = Subscription::open(&mut node.user(alice).await, Some(cursor)).await;
    let Some(E::Reset(reset)) = replay.first().and_then(|e| e.event.clone()) else {
        panic!("a cursor from before the restart must get a reset, got {replay:?}");
    };
    assert_eq!(reset.reason, pb::ResetReason::EpochChanged as i32);
    let state: BTreeMap<String, i32> = reset
        .recent_messages
        .iter()
        .map(|m| (m.message_id.clone(), m.tick))
        .collect();
    assert_eq!(
        state.get(&m1.to_string()),
        Some(&(pb::Tick::Delivered as i32))
    );
    assert_eq!(
        state.get(&m2.to_string()),
        Some(&(pb::Tick::Delivered as i32))
    );
    // The old subscription never silently skips: it either ended or it
    // carries m2's event.
    let mut saw_m2_or_end = false;
    while let Some(ev) = sub.next_within(Duration::from_secs(2)).await {
        if let Some(E::Receipts(r)) = &ev.event
            && r.messages.iter().any(|m| m.message_id == m2.to_string())
        {
            saw_m2_or_end = true;
        }
    }
    let ended = sub
        .stream
        .message()
        .await
        .map(|m| m.is_none())
        .unwrap_or(true);
    assert!(
        saw_m2_or_end || ended,
        "the old stream neither ended nor carried m2"
    );
}

#[tokio::test]
async fn memory_per_message_in_a_20_member_group() {
    let tier = Tier::new().await;
    let node = tier.node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 20).await;
    let sender = group.members[0];
    const MESSAGES: usize = 100;
    let mut sent = Vec::new();
    for _ in 0..MESSAGES {
        sent.push(group.send(&mut backend, sender).await);
    }
    let mut clients = Vec::new();
    for u in &group.members[1..] {
        clients.push(node.user(*u).await);
    }
    for client in &mut clients {
        for chunk in sent.chunks(50) {
            deliver(client, chunk).await;
        }
        read_up_to(client, group.id, *sent.last().unwrap()).await;
    }
    let r = receipt(&mut node.user(sender).await, group.id, sent[0]).await;
    assert_eq!(
        (r.delivered_count, r.read_count, r.recipients_total),
        (19, 19, 19)
    );
    // Let windows and queues drain so only steady state is measured.
    eventually("the queues drain", || async {
        tier.scylla
            .deliveries(sent[MESSAGES - 1])
            .await
            .is_ok_and(|d| d.len() == 19)
    })
    .await;
    sleep(Duration::from_millis(500)).await;

    let mut con = tier.redis().await;
    let tag = group.id.simple().to_string();
    let mut per_message = 0u64;
    let mut shared = 0u64;
    let mut one_receipt_hash = 0u64;
    let ids: HashSet<String> = sent.iter().map(|m| m.simple().to_string()).collect();
    for key in tier.keys().await {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut con)
            .await
            .expect("memory usage");
        let bytes = bytes.unwrap_or(0);
        let is_message_key = ids.iter().any(|id| key.contains(id.as_str()));
        if key.contains(&tag) && key.contains(":r:") {
            if key.contains(&sent[0].simple().to_string()) {
                one_receipt_hash = bytes;
            }
            per_message += bytes;
        } else if is_message_key {
            per_message += bytes; // the message's home key
        } else if key.contains(&tag) {
            shared += bytes; // index, messages hash, watermarks, histories
        }
    }
    let total = per_message + shared;
    eprintln!(
        "redis memory, 20-member group, {MESSAGES} messages, all delivered and read: \
         receipt hash of one message {one_receipt_hash} B; per message {} B \
         (receipt hash + home key) + {} B share of conversation structures = {} B per message \
         (seed estimate: ~200 B)",
        per_message / MESSAGES as u64,
        shared / MESSAGES as u64,
        total / MESSAGES as u64
    );
    assert!(one_receipt_hash > 0, "the receipt hash exists");
}

#[tokio::test]
async fn hot_data_that_would_expire_before_its_flush_is_refused_with_exit_64() {
    let tier = Tier::new().await;
    let out = Command::new(receiptd_path())
        .args(tier.args(&["--hot-ttl-secs", "60", "--flush-interval-ms", "60000"]))
        .args(["--listen", "127.0.0.1:0", "--jwt-secret", SECRET])
        .arg("--data-dir")
        .arg(tier.dir.path())
        .output()
        .expect("run receiptd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    assert!(stderr.contains("--hot-ttl-secs"), "stderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_one_node_and_its_subscriber_resumes_on_another_with_no_loss() {
    let tier = Tier::new().await;
    let a = tier.shutdown_flushing_node().await;
    shutdown_then_resume_elsewhere(a, Duration::from_millis(1000), || tier.node()).await;
}

#[tokio::test]
async fn write_behind_metrics_show_the_queue_and_what_was_persisted() {
    let tier = Tier::new().await;
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics_flag = metrics.to_string();
    // Flushes only when the test has looked at the queue (see below).
    let node = tier
        .node_with(&[
            "--flush-interval-ms",
            "2000",
            "--hot-ttl-secs",
            "60",
            "--metrics-listen",
            &metrics_flag,
        ])
        .await;
    let mut backend = node.backend().await;
    let mut chat = Conversation::create(&mut backend, 2).await;
    let m = chat.send(&mut backend, chat.members[0]).await;
    let mut bob = node.user(chat.members[1]).await;
    deliver(&mut bob, &[m]).await;
    let text = scrape(metrics).await;
    assert!(
        sample(&text, "receipts_writebehind_queues") >= 1.0,
        "the conversation's queue waits for the flush:\n{text}"
    );
    assert!(text.contains("receipts_writebehind_oldest_seconds "));
    // The flush persists it; the counter moves.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(metrics).await;
        if sample(&text, "receipts_writebehind_persisted_total") >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing was persisted:\n{text}");
        sleep(Duration::from_millis(200)).await;
    }
    assert!(tier.scylla.message(m).await.expect("scylla").is_some());
}

/// Calls of each Redis command so far (`INFO commandstats`), by name.
async fn command_calls(con: &mut redis::aio::MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// The Redis writes of one MarkReadUpTo, by command (commands run inside
/// the Lua scripts included; the measuring INFO calls excluded).
async fn read_writes(
    tier: &Tier,
    client: &mut UserClient,
    conversation: Uuid,
    up_to: Uuid,
) -> BTreeMap<String, u64> {
    const WRITES: &[&str] = &[
        "hset", "hsetnx", "hdel", "hincrby", "zadd", "zrem", "sadd", "srem", "expire", "del",
        "xadd", "xdel", "publish", "set",
    ];
    let (commands, _) = redis_cost_of(tier, || async {
        read_up_to(client, conversation, up_to).await;
    })
    .await;
    commands
        .into_iter()
        .filter(|(c, _)| WRITES.contains(&c.as_str()))
        .collect()
}

/// A node on a Redis of the test's own (nothing else runs on it), where
/// nothing is flushed and no group window closes within a measurement.
async fn measured_node() -> (OwnedRedis, Tier, ChildServer) {
    let redis = OwnedRedis::start(free_port());
    let tier = Tier::with_redis(redis.url()).await;
    let node = tier
        .node_with(&[
            "--flush-interval-ms",
            "3600000",
            "--group-window-ms",
            "2000",
        ])
        .await;
    (redis, tier, node)
}

/// DESIGN.md §3: MarkReadUpTo is O(1) in writes however many messages it
/// covers. Counted on a Redis of the test's own (nothing else runs on it),
/// in a group, where the call's writes are the watermark, its history and
/// the counting indexes, plus one window entry; the summary to the sender
/// comes later, from the window.
#[tokio::test]
async fn mark_read_up_to_writes_the_same_whether_it_covers_one_message_or_ten_thousand() {
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob) = (group.members[0], group.members[1]);
    let first = group.send(&mut backend, alice).await;
    let second = group.send(&mut backend, alice).await;
    let mut last = second;
    for _ in 0..10 {
        let batch: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
        let seq = group.next_seq();
        backend
            .register_messages(pb::RegisterMessagesRequest {
                messages: batch
                    .iter()
                    .enumerate()
                    .map(|(i, id)| registration(*id, group.id, seq + i as i64, alice))
                    .collect(),
            })
            .await
            .expect("register 1000");
        group.set_next_seq(seq + 1000);
        last = batch[999];
    }
    let mut bob_client = node.user(bob).await;
    // The first read also creates bob's replay log: not what is measured.
    read_up_to(&mut bob_client, group.id, first).await;
    let one = read_writes(&tier, &mut bob_client, group.id, second).await;
    let many = read_writes(&tier, &mut bob_client, group.id, last).await;
    println!("MarkReadUpTo writes, covering 1 message: {one:?}");
    println!("MarkReadUpTo writes, covering 10,000 messages: {many:?}");
    assert_eq!(one, many, "the same writes, command by command");
    let total: u64 = one.values().sum();
    assert!(total > 0 && total < 40, "a handful of writes: {one:?}");
    let r = receipt(&mut node.user(alice).await, group.id, last).await;
    assert_eq!(r.read_count, 1, "the read was applied");
}

/// Every recipient of a 200-member group marks the same message delivered
/// and read at once, half of them through each of two nodes: no call is
/// refused as contended, every write is kept, and the sender's summary and
/// the per-recipient list agree on 199 of 199.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_group_delivering_and_reading_at_once_is_accepted_and_kept() {
    let tier = Tier::new().await;
    let nodes = [tier.node().await, tier.node().await];
    let mut backend = nodes[0].backend().await;
    let mut group = Conversation::create(&mut backend, 200).await;
    let sender = group.members[0];
    let m = group.send(&mut backend, sender).await;
    let mut sender_client = nodes[0].user(sender).await;
    let (mut sub, _) = Subscription::open(&mut sender_client, None).await;
    let mut clients = Vec::new();
    for (i, u) in group.members[1..].iter().enumerate() {
        clients.push(nodes[i % 2].user(*u).await);
    }
    let conversation = group.id;
    let calls: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let d = deliver(&mut client, &[m]).await;
                let r = read_up_to(&mut client, conversation, m).await;
                (d.results[0].outcome, r.read_up_to_seq)
            })
        })
        .collect();
    for call in calls {
        let (outcome, read_up_to) = call.await.expect("every call succeeds");
        assert_eq!(outcome, pb::DeliveryOutcome::Recorded as i32);
        assert_eq!(read_up_to, 1);
    }
    let full = receipt(&mut sender_client, group.id, m).await;
    assert_eq!(full.recipients.len(), 199);
    assert!(
        full.recipients
            .iter()
            .all(|r| r.delivered_at_ms > 0 && r.read_at_ms >= r.delivered_at_ms),
        "every delivery and read kept, read never before delivered"
    );
    assert_eq!((full.delivered_count, full.read_count), (199, 199));
    let counted = counts_only(&mut sender_client, group.id, m).await;
    assert_eq!((counted.delivered_count, counted.read_count), (199, 199));
    loop {
        let summary = sub.next_receipts().await;
        let s = &summary.messages[0];
        if (s.delivered_count, s.read_count) == (199, 199) {
            break;
        }
    }
}

/// What one call costs Redis: its commands (commands run inside Lua scripts
/// included; the measuring INFO calls excluded) and the bytes Redis sent
/// back (give or take the few bytes by which two INFO replies differ).
async fn redis_cost_of<F, Fut>(tier: &Tier, call: F) -> (BTreeMap<String, u64>, u64)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut con = tier.redis().await;
    let before = command_calls(&mut con).await;
    let sent_before = redis_info(&mut con, "stats", "total_net_output_bytes").await;
    call().await;
    let sent_after = redis_info(&mut con, "stats", "total_net_output_bytes").await;
    let after = command_calls(&mut con).await;
    let commands = after
        .iter()
        .map(|(c, n)| (c.clone(), n - before.get(c).unwrap_or(&0)))
        .filter(|(c, n)| *n > 0 && c != "info")
        .collect();
    (commands, sent_after - sent_before)
}

/// A member's MarkDelivered and MarkReadUpTo in a group read only that
/// member's data: the same Redis commands, command by command, and the same
/// bytes read back (within 100 B) in a group of 5 and in a group of 500.
/// Reading the group's memberships would add more than 15 kB at 500.
#[tokio::test]
async fn a_group_write_costs_redis_the_same_in_a_group_of_5_or_500() {
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    let mut costs = Vec::new();
    for size in [5, 500] {
        let mut group = Conversation::create(&mut backend, size).await;
        let (alice, bob) = (group.members[0], group.members[1]);
        let warm = group.send(&mut backend, alice).await;
        let m = group.send(&mut backend, alice).await;
        let mut bob_client = node.user(bob).await;
        // Creates bob's replay log and loads the sharing setting: not measured.
        read_up_to(&mut bob_client, group.id, warm).await;
        let delivered = redis_cost_of(&tier, || async {
            deliver(&mut bob_client, &[m]).await;
        })
        .await;
        let read = redis_cost_of(&tier, || async {
            read_up_to(&mut bob_client, group.id, m).await;
        })
        .await;
        println!("group of {size}: MarkDelivered {delivered:?}");
        println!("group of {size}: MarkReadUpTo {read:?}");
        costs.push((delivered, read));
    }
    let ((d5, r5), (d500, r500)) = (&costs[0], &costs[1]);
    assert_eq!((&d5.0, &r5.0), (&d500.0, &r500.0), "the same commands");
    assert!(
        d500.1 <= d5.1 + 100 && r500.1 <= r5.1 + 100,
        "the same bytes read: MarkDelivered {} B vs {} B, MarkReadUpTo {} B vs {} B",
        d5.1,
        d500.1,
        r5.1,
        r500.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_acknowledged_through_a_cassandra_outage_and_all_reach_it_after() {
    let proxy = CassandraProxy::start(required_env("RECEIPTS_TEST_CASSANDRA")).await;
    let tier = Tier::new().await;
    let via_proxy = proxy.addr.to_string();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let node_args = |extra: &[&str]| {
        // These nodes reach Cassandra through the proxy only.
        let mut args = tier.args(&["--flush-interval-ms", "200"]);
        let at = args
            .iter()
            .position(|a| a == "--scylla-nodes")
            .expect("--scylla-nodes");
        args[at + 1] = via_proxy.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let start = |args: Vec<String>| {
        let data = tier.dir.path().join(Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&data).expect("node dir");
        async move { ChildServer::start_with_args(&data, free_port(), &args).await }
    };
    // This deployment's Redis has held every registration for a minute (a
    // fresh one counts from its first use, so that ids minted in the first
    // seconds after it would still be looked up in Cassandra).
    let since = receipts_server::domain::now_millis() - 60_000;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:complete", tier.prefix))
        .arg(since)
        .query_async(&mut tier.redis().await)
        .await
        .expect("set");
    let a = start(node_args(&["--metrics-listen", &metrics.to_string()])).await;
    let b = start(node_args(&[])).await;

    // Before the outage: a direct chat and a group, each with a message.
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let mut direct = Conversation::create(&mut backend_a, 2).await;
    let mut group = Conversation::create(&mut backend_a, 4).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);
    let sender = group.members[0];
    let mut dm = vec![direct.send(&mut backend_a, alice).await];
    let mut gm = vec![group.send(&mut backend_a, sender).await];
    let (mut group_sub, _) = Subscription::open(&mut b.user(sender).await, None).await;

    assert_eq!(
        sample(
            &scrape(metrics).await,
            "receipts_writebehind_persistence_up"
        ),
        1.0
    );
    proxy.cut();
    eventually_metric(
        "node a reports Scylla down",
        metrics,
        "receipts_writebehind_persistence_up",
        |v| v == 0.0,
    )
    .await;
    // Through both nodes, every kind of call Redis can answer succeeds.
    for round in 0..4 {
        let (node, backend) = if round % 2 == 0 {
            (&a, &mut backend_a)
        } else {
            (&b, &mut backend_b)
        };
        assert_eq!(
            health(node.addr).await,
            Some(ServingStatus::Serving),
            "health stays SERVING while only Scylla is down"
        );
        dm.push(direct.send(backend, alice).await);
        gm.push(group.send(backend, sender).await);
        let mut bob_client = node.user(bob).await;
        deliver(&mut bob_client, &dm).await;
        read_up_to(&mut bob_client, direct.id, *dm.last().expect("dm")).await;
        for reader in &group.members[1..] {
            let mut c = node.user(*reader).await;
            deliver(&mut c, &gm).await;
            if round % 2 == 1 {
                read_up_to(&mut c, group.id, *gm.last().expect("gm")).await;
            }
        }
        let mut alice_client = node.user(alice).await;
        receipts_of(&mut alice_client, direct.id, &dm).await;
        alice_client
            .get_unread_counts(pb::GetUnreadCountsRequest {
                conversation_ids: vec![direct.id.to_string(), group.id.to_string()],
            })
            .await
            .expect("unread counts during the outage");
        alice_client
            .get_privacy_settings(pb::GetPrivacySettingsRequest {})
            .await
            .expect("privacy settings during the outage");
    }
    // A member who never touched the setting turns receipts off.
    set_sharing(&mut b.user(group.members[3]).await, false).await;
    // Group windows keep closing: the sender sees the last message's summary.
    let last_gm = gm.last().expect("gm").to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = group_sub.next_receipts().await;
        if r.messages
            .iter()
            .any(|m| m.message_id == last_gm && m.delivered_count == 3)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no group summary during the outage"
        );
    }
    // None of it reached Cassandra yet (the test's own session goes around
    // the proxy).
    assert_eq!(
        tier.scylla
            .message(*dm.last().expect("dm"))
            .await
            .expect("scylla"),
        None,
        "the proxy did not cut the nodes off Cassandra"
    );
    let before_direct = receipts_of(&mut a.user(alice).await, direct.id, &dm).await;
    let before_group = receipts_of(&mut a.user(sender).await, group.id, &gm).await;

    proxy.restore();
    let s = &tier.scylla;
    let readers = group.members.len() - 1;
    eventually("every acknowledged write reaches Cassandra", || async {
        let Ok(Some(d)) = s.conversation(direct.id).await else {
            return false;
        };
        let Ok(Some(g)) = s.conversation(group.id).await else {
            return false;
        };
        let mut deliveries = 0;
        for m in dm.iter().chain(&gm) {
            deliveries += s.deliveries(*m).await.unwrap_or_default().len();
        }
        let bob_wm = d
            .watermarks
            .iter()
            .find(|(u, _)| *u == bob)
            .map(|(_, w)| w.seq);
        d.messages.len() == dm.len()
            && g.messages.len() == gm.len()
            && bob_wm == Some(dm.len() as u64)
            && deliveries == dm.len() + gm.len() * readers
            && s.sharing(group.members[3])
                .await
                .ok()
                .flatten()
                .is_some_and(|(on, _)| !on)
    })
    .await;
    // With the Redis keys gone, both conversations read back the same from
    // Cassandra.
    let mut con = tier.redis().await;
    for k in tier.keys().await {
        if [direct.id, group.id]
            .iter()
            .any(|c| k.contains(&c.simple().to_string()))
        {
            let _: () = redis::cmd("DEL")
                .arg(&k)
                .query_async(&mut con)
                .await
                .expect("del");
        }
    }
    assert_eq!(
        receipts_of(&mut b.user(alice).await, direct.id, &dm).await,
        before_direct
    );
    assert_eq!(
        receipts_of(&mut b.user(sender).await, group.id, &gm).await,
        before_group
    );
}

/// A primary and its replica (owned), a node acknowledging MarkReadUpTo
/// calls against the primary as fast as it can (`wait`: with
/// --redis-wait-replicas 1), the primary killed with kill -9 mid-load and
/// the replica promoted. Returns the last acknowledged read position and the
/// one a node on the promoted replica finds (nothing was flushed to
/// Cassandra, so Redis holds the only copy).
async fn read_position_after_failover(wait: bool) -> (u64, u64) {
    let mut primary = OwnedRedis::start(free_port());
    let replica = OwnedRedis::start_with(
        free_port(),
        &["--replicaof", "127.0.0.1", &primary.port.to_string()],
    );
    let mut replica_con = redis::Client::open(replica.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("replica");
    eventually("the replica is in sync", || {
        let mut con = replica_con.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut con)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        }
    })
    .await;
    let tier = Tier::with_redis(primary.url()).await;
    let mut args = vec!["--flush-interval-ms", "3600000"];
    if wait {
        args.extend([
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "2000",
        ]);
    }
    let node = tier.node_with(&args).await;
    let mut backend = node.backend().await;
    let mut chat = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (chat.members[0], chat.members[1]);
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(chat.send(&mut backend, alice).await);
    }
    let mut reader = node.user(bob).await;
    let conversation = chat.id;
    let writer = tokio::spawn(async move {
        let mut acked = 0u64;
        for (i, m) in ids.iter().enumerate() {
            let r = reader
                .mark_read_up_to(pb::MarkReadUpToRequest {
                    conversation_id: conversation.to_string(),
                    message_id: m.to_string(),
                })
                .await;
            match r {
                Ok(_) => acked = i as u64 + 1,
                Err(_) => break,
            }
        }
        acked
    });
    // Mid-load, a few dozen reads in, the replication link breaks and stays
    // down (the primary now wants a password its replica does not have;
    // connections already open are not affected): what the primary
    // acknowledges from then on is only on the primary. Then it dies.
    sleep(Duration::from_millis(150)).await;
    let mut primary_con = redis::Client::open(primary.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("primary");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("replica-cut-off")
        .query_async(&mut primary_con)
        .await
        .expect("config set");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut primary_con)
        .await
        .expect("client kill");
    sleep(Duration::from_millis(300)).await;
    primary.kill9();
    let acked = writer.await.expect("writer");
    assert!(
        acked > 0 && acked < 300,
        "the kill was not mid-load: {acked} acknowledged"
    );
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut replica_con)
        .await
        .expect("promote");
    let mut promoted = Tier::with_redis(replica.url()).await;
    promoted.prefix = tier.prefix.clone();
    let survivor = promoted.node().await;
    let unread = survivor
        .user(bob)
        .await
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![conversation.to_string()],
        })
        .await
        .expect("unread counts")
        .into_inner();
    (acked, unread.conversations[0].read_up_to_seq as u64)
}

#[tokio::test]
async fn with_redis_wait_replicas_an_acknowledged_write_survives_a_failover() {
    let (acked, kept) = read_position_after_failover(true).await;
    assert!(
        kept >= acked,
        "acknowledged up to seq {acked}, the promoted replica has {kept}"
    );
    // Without it, an acknowledged write that had not reached the replica
    // when the primary died is lost (asynchronous replication): here, every
    // write acknowledged after the link broke.
    let (acked, kept) = read_position_after_failover(false).await;
    println!(
        "without --redis-wait-replicas: acknowledged up to seq {acked}, the promoted replica has {kept} ({} lost)",
        acked.saturating_sub(kept)
    );
    assert!(
        kept < acked,
        "the broken link lost nothing: the test proves nothing"
    );
}

#[tokio::test]
async fn redis_wait_replicas_without_a_replica_fails_writes_as_unavailable_naming_the_flag() {
    // The shared test Redis has no replica.
    let tier = Tier::new().await;
    let node = tier
        .node_with(&[
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "200",
        ])
        .await;
    let mut backend = node.backend().await;
    let r = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: Uuid::now_v7().to_string(),
            member_ids: vec![Uuid::now_v7().to_string(), Uuid::now_v7().to_string()],
        })
        .await;
    let status = r.expect_err("no replica confirms the write");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("--redis-wait-replicas")
            && status.message().contains("0 of 1 replicas"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_failover_mid_load_keeps_every_write_acknowledged_with_wait() {
    let mut cluster = OwnedCluster::start().await;
    let tier = Tier::with_redis(cluster.urls()).await;
    let node = tier
        .node_with(&[
            "--redis-cluster",
            "--redis-wait-replicas",
            "1",
            // Generous: the machine is busy with other tests; a write whose
            // replica has not confirmed it in time is refused (and retried).
            "--redis-wait-timeout-ms",
            "3000",
            // Nothing reaches Cassandra within the test: Redis holds the
            // only copy.
            "--flush-interval-ms",
            "3600000",
        ])
        .await;
    let mut backend = node.backend().await;
    // Conversations spread over the cluster's slots, each with a reader
    // reading message by message as fast as it can.
    const READS: usize = 300;
    let mut chats = Vec::new();
    for _ in 0..6 {
        let mut chat = Conversation::create(&mut backend, 2).await;
        let mut ids = Vec::new();
        for _ in 0..READS {
            ids.push(chat.send(&mut backend, chat.members[0]).await);
        }
        chats.push((chat, ids));
    }
    let mut writers = Vec::new();
    for (chat, ids) in chats {
        let mut reader = node.user(chat.members[1]).await;
        let (conversation, alice) = (chat.id, chat.members[0]);
        writers.push(tokio::spawn(async move {
            // Each message with the time its read was acknowledged.
            let mut acked = Vec::new();
            let mut failures = 0;
            let mut i = 0;
            while i < ids.len() {
                let r = reader
                    .mark_read_up_to(pb::MarkReadUpToRequest {
                        conversation_id: conversation.to_string(),
                        message_id: ids[i].to_string(),
                    })
                    .await;
                match r {
                    Ok(_) => {
                        acked.push((ids[i], receipts_server::domain::now_millis()));
                        i += 1;
                    }
                    // Not acknowledged: retried, as a client would.
                    Err(_) => {
                        failures += 1;
                        assert!(failures < 200, "the node never recovered");
                        sleep(Duration::from_millis(100)).await;
                    }
                }
                sleep(Duration::from_millis(5)).await;
            }
            (conversation, alice, acked, failures)
        }));
    }
    // Mid-load: a planned failover, then a master killed and taken over.
    sleep(Duration::from_millis(300)).await;
    let (r1, m1) = cluster.a_replica_and_its_master(&[]).await;
    cluster.failover(r1, None).await;
    sleep(Duration::from_millis(300)).await;
    let (r2, m2) = cluster.a_replica_and_its_master(&[r1, m1]).await;
    cluster.nodes[m2].kill9();
    cluster.failover(r2, Some("TAKEOVER")).await;
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "the failovers were not mid-load"
    );
    // The promoted master has no replica now, so its writes cannot be
    // confirmed and are refused (UNAVAILABLE, retried) until the old master
    // comes back, as its replica.
    sleep(Duration::from_millis(500)).await;
    cluster.nodes[m2].spawn();
    let mut total_failures = 0;
    for w in writers {
        let (conversation, alice, acked, failures) = w.await.expect("writer");
        total_failures += failures;
        assert_eq!(acked.len(), READS, "every read was eventually acknowledged");
        // A read position is a watermark step with its time: had an
        // acknowledged step been lost, its message would show the (later)
        // time of the next step that covered it.
        let mut sender = node.user(alice).await;
        for chunk in acked.chunks(100) {
            let ids: Vec<Uuid> = chunk.iter().map(|(m, _)| *m).collect();
            let states = receipts_of(&mut sender, conversation, &ids).await;
            for ((m, acked_at), state) in chunk.iter().zip(&states) {
                assert_eq!(state.message_id, m.to_string());
                assert!(
                    state.read_at_ms > 0 && state.read_at_ms <= *acked_at,
                    "the acknowledged read of {m} was lost: read at {} but acknowledged at {acked_at}",
                    state.read_at_ms
                );
            }
        }
    }
    println!("calls refused during the failovers (retried): {total_failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_outage_limit_writes_are_refused_reads_work_and_writes_resume_after() {
    let proxy = CassandraProxy::start(required_env("RECEIPTS_TEST_CASSANDRA")).await;
    let tier = Tier::new().await;
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut args = tier.args(&[
        "--flush-interval-ms",
        "200",
        "--writebehind-max-outage-secs",
        "2",
        "--metrics-listen",
        &metrics.to_string(),
    ]);
    let at = args
        .iter()
        .position(|a| a == "--scylla-nodes")
        .expect("--scylla-nodes");
    args[at + 1] = proxy.addr.to_string();
    let data = tier.dir.path().join("node");
    std::fs::create_dir_all(&data).expect("node dir");
    let node = ChildServer::start_with_args(&data, free_port(), &args).await;
    let mut backend = node.backend().await;
    let mut chat = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (chat.members[0], chat.members[1]);
    let first = chat.send(&mut backend, alice).await;
    let mut bob_client = node.user(bob).await;
    deliver(&mut bob_client, &[first]).await;

    proxy.cut();
    eventually(
        "the node has seen Scylla down for longer than the limit",
        || async {
            sample(
                &scrape(metrics).await,
                "receipts_writebehind_outage_seconds",
            ) > 2.0
        },
    )
    .await;
    // Past the limit: a write is refused, naming the flag, and changes
    // nothing.
    let refused = bob_client
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: chat.id.to_string(),
            message_id: first.to_string(),
        })
        .await
        .expect_err("writes are paused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("--writebehind-max-outage-secs"),
        "{refused:?}"
    );
    // Reads keep working, and show the refused read did not happen.
    let state = receipts_of(&mut node.user(alice).await, chat.id, &[first]).await;
    assert_eq!(tick(&state[0]), pb::Tick::Delivered, "{state:?}");
    // The outage's start is shared through Redis, so every node counts from
    // the same moment.
    let outage_key = format!("{}:scylla_down", tier.prefix);
    let since: Option<i64> = redis::cmd("GET")
        .arg(&outage_key)
        .query_async(&mut tier.redis().await)
        .await
        .expect("get");
    let since = since.expect("the outage start is in Redis");
    assert!(
        receipts_server::domain::now_millis() - since > 2_000,
        "recorded at its start"
    );

    proxy.restore();
    eventually_metric(
        "writes resume once Scylla answers",
        metrics,
        "receipts_writebehind_outage_seconds",
        |v| v == 0.0,
    )
    .await;
    read_up_to(&mut bob_client, chat.id, first).await;
    let state = receipts_of(&mut node.user(alice).await, chat.id, &[first]).await;
    assert_eq!(tick(&state[0]), pb::Tick::Read, "{state:?}");
    let since: Option<i64> = redis::cmd("GET")
        .arg(&outage_key)
        .query_async(&mut tier.redis().await)
        .await
        .expect("get");
    assert_eq!(since, None, "the outage ended for every node");
}
