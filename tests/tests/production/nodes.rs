//! Nodes sharing the tier: writes and events across nodes, kills, SIGTERM,
//! expired hot data, a Redis restart, a whole group at once.

use super::*;

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
            delivered += delivered_in_scylla(s, *m).await.unwrap_or_default().len();
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
    assert_eq!(
        delivered_in_scylla(&tier.scylla, m)
            .await
            .expect("scylla")
            .len(),
        1
    );
}

#[tokio::test]
async fn expired_hot_data_reads_through_from_cassandra() {
    let tier = Tier::new().await;
    let (node, mut backend, mut group) = short_lived(&tier).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    let m1 = group.send(&mut backend, alice).await;
    let m2 = group.send(&mut backend, alice).await;
    let m3 = group.send(&mut backend, alice).await;
    deliver(&mut node.user(bob).await, &[m1, m2]).await;
    read_up_to(&mut node.user(bob).await, group.id, m1).await;
    deliver(&mut node.user(carol).await, &[m1]).await;
    let mut alice_client = node.user(alice).await;
    let before = receipts_of(&mut alice_client, group.id, &[m1, m2, m3]).await;

    // Everything is flushed by the time the hot keys are gone.
    until_expired(&tier, group.id).await;
    let tag = group.id.simple().to_string();

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
        delivered_in_scylla(&tier.scylla, m1)
            .await
            .is_ok_and(|d| d.len() == 1)
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
            ..Default::default()
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

/// Every recipient of a 200-member group marks the same message delivered
/// and read at once, half of them through each of two nodes: no call is
/// refused as contended, every write is kept, and the sender's summary, the
/// counts and the paged per-recipient list agree on 199 of 199.
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
    let full = all_recipients(&mut sender_client, group.id, m).await;
    assert_eq!(full.len(), 199);
    assert!(
        full.iter()
            .all(|r| r.delivered_at_ms > 0 && r.read_at_ms >= r.delivered_at_ms),
        "every delivery and read kept, read never before delivered"
    );
    let full = receipt(&mut sender_client, group.id, m).await;
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

/// A conversation's keys share one lifetime (docs/storage.md, "Redis
/// keys"): a member who read once and then stayed quiet keeps its exact
/// read while the others keep the conversation busy past the hot TTL, and
/// every key of the conversation and of its members carries an expiry
/// (queues aside, which are drained instead).
#[tokio::test]
async fn a_quiet_readers_read_outlives_the_hot_ttl_while_the_conversation_is_busy() {
    let tier = Tier::new().await;
    let node = tier
        .node_with(&["--hot-ttl-secs", "2", "--flush-interval-ms", "500"])
        .await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    let first = group.send(&mut backend, alice).await;
    read_up_to(&mut node.user(bob).await, group.id, first).await;
    let mut alice_client = node.user(alice).await;
    let bob_entry = |r: &pb::MessageReceipts| {
        r.recipients
            .iter()
            .find(|x| x.user_id == bob.to_string())
            .cloned()
            .expect("bob is a recipient")
    };
    let before = bob_entry(&receipt(&mut alice_client, group.id, first).await);
    assert_eq!(before.state, pb::RecipientState::Read as i32);
    // Three seconds (past the 2 s TTL) of writes by the others only.
    let mut carol_client = node.user(carol).await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let m = group.send(&mut backend, alice).await;
        deliver(&mut carol_client, &[m]).await;
        sleep(Duration::from_millis(150)).await;
    }
    let after = bob_entry(&receipt(&mut alice_client, group.id, first).await);
    assert_eq!(
        (after.state, after.read_at_ms),
        (before.state, before.read_at_ms),
        "bob's read and its exact time are kept"
    );
    // A subscription made a replay log for carol that no event reached yet.
    let (_sub, _) = Subscription::open(&mut node.user(carol).await, None).await;
    let mut tags = vec![format!("{{{}}}", group.id.simple())];
    tags.extend(group.members.iter().map(|u| format!("{{u{}}}", u.simple())));
    assert_keys_expire(&tier, &tags).await;
}

/// Every key of `tier` with one of `tags` (queues aside, which are drained
/// instead) carries an expiry, and the conversation's keys were found.
async fn assert_keys_expire(tier: &Tier, tags: &[String]) {
    let mut con = tier.redis().await;
    let mut checked = 0;
    for key in tier.keys().await {
        if !tags.iter().any(|t| key.contains(t.as_str())) || key.ends_with(":q") {
            continue;
        }
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .expect("PTTL");
        // -2: the key went away since the scan (a drained stream); -1: a
        // key without an expiry, which must never happen.
        assert_ne!(ttl, -1, "{key} has no expiry");
        checked += u64::from(ttl > 0);
    }
    assert!(
        checked >= 8,
        "the conversation's keys were found: {checked}"
    );
}

/// Between two refreshes of a conversation's lifetime a commit sends an
/// EXPIRE only for keys it creates or may have emptied (docs/storage.md,
/// "Redis keys"). A group window's key is deleted when the window closes and
/// created again by the next delivery: it gets its expiry back, and so does
/// every key created after the conversation's first commit. The hot TTL is
/// a day here, so no refresh happens within the test.
#[tokio::test]
async fn keys_created_or_emptied_between_refreshes_keep_an_expiry() {
    let (_redis, tier, node) = super::costs::measured_node().await;
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    let m1 = group.send(&mut backend, alice).await;
    let window = keys.window(&group.id);
    let redis = tier.redis().await;
    let pttl = |key: String| {
        let mut con = redis.clone();
        async move {
            redis::cmd("PTTL")
                .arg(&key)
                .query_async::<i64>(&mut con)
                .await
                .expect("PTTL")
        }
    };
    deliver(&mut node.user(bob).await, &[m1]).await;
    assert!(
        pttl(window.clone()).await > 0,
        "the window key has an expiry"
    );
    // The window closes (2 s) and its key is deleted.
    let until = Instant::now() + Duration::from_secs(10);
    while pttl(window.clone()).await != -2 {
        assert!(Instant::now() < until, "the window closed");
        sleep(Duration::from_millis(100)).await;
    }
    deliver(&mut node.user(carol).await, &[m1]).await;
    assert!(
        pttl(window.clone()).await > 0,
        "the window key, created again, has an expiry"
    );
    read_up_to(&mut node.user(bob).await, group.id, m1).await;
    group.send(&mut backend, alice).await;
    assert_keys_expire(&tier, &[format!("{{{}}}", group.id.simple())]).await;
}

/// Events a node committed but could not forward (here: one addressee's log
/// is broken for a moment; a node dying after its commit on a cluster would
/// leave them too) are forwarded by the next write in the conversation,
/// before that write's own and in order; then the outbox is empty. Each
/// addressee gets each event once. On a single Redis server the commit
/// forwards the events itself: the broken log's event is kept in the outbox
/// and the other addressee's is forwarded at once.
#[tokio::test]
async fn events_left_in_the_outbox_are_forwarded_first_and_in_order() {
    let (_redis, tier, node) = super::costs::measured_node().await;
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let mut backend = node.backend().await;
    let mut direct = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);
    let m1 = direct.send(&mut backend, alice).await;
    let m2 = direct.send(&mut backend, alice).await;
    let mut redis = tier.redis().await;
    // Alice's log meta is not a hash: forwarding to her fails.
    let meta = keys.log_meta(&alice);
    let _: () = redis::cmd("SET")
        .arg(&meta)
        .arg("broken")
        .query_async(&mut redis)
        .await
        .expect("SET");
    // The outbox is known empty (as a commit that forwarded everything
    // records it): the read's commit forwards without looking at it.
    let conv_meta = keys.meta(&direct.id);
    let _: () = redis::cmd("HSET")
        .arg(&conv_meta)
        .arg("o")
        .arg("0")
        .query_async(&mut redis)
        .await
        .expect("HSET");
    let mut bob_client = node.user(bob).await;
    let failed = try_read_up_to(&mut bob_client, direct.id, m1)
        .await
        .expect_err("forwarding to alice fails after the commit");
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    let outbox = format!("{}:{{{}}}:o", tier.prefix, direct.id.simple());
    let waiting: u64 = outbox_len(&mut redis, &outbox).await;
    assert_eq!(waiting, 1, "alice's event of the read waits in the outbox");
    // The commit recorded that the outbox holds entries. A meta hash
    // without the record (written by an earlier release) means the same:
    // the next commit looks at the outbox (`XLEN`) before forwarding.
    let may_wait: Option<String> = redis::cmd("HGET")
        .arg(&conv_meta)
        .arg("o")
        .query_async(&mut redis)
        .await
        .expect("HGET");
    assert_eq!(may_wait.as_deref(), Some("1"), "the outbox is marked");
    let _: () = redis::cmd("HDEL")
        .arg(&conv_meta)
        .arg("o")
        .query_async(&mut redis)
        .await
        .expect("HDEL");
    let _: () = redis::cmd("DEL")
        .arg(&meta)
        .query_async(&mut redis)
        .await
        .expect("DEL");

    read_up_to(&mut bob_client, direct.id, m2).await;
    let waiting: u64 = outbox_len(&mut redis, &outbox).await;
    assert_eq!(waiting, 0, "everything forwarded");
    // Alice's whole log, from its first offset: the first read, then the second.
    let epoch: u64 = redis::cmd("HGET")
        .arg(&meta)
        .arg("epoch")
        .query_async(&mut redis)
        .await
        .expect("alice's log has an epoch");
    let from = Cursor { epoch, offset: 0 }.encode();
    let (_, replayed) = Subscription::open(&mut node.user(alice).await, Some(from)).await;
    let read: Vec<(String, pb::Tick)> = replayed
        .iter()
        .map(|ev| {
            let Some(E::Receipts(r)) = &ev.event else {
                panic!("expected receipts, got {ev:?}");
            };
            assert_eq!(r.messages.len(), 1, "{r:?}");
            (r.messages[0].message_id.clone(), tick(&r.messages[0]))
        })
        .collect();
    assert_eq!(
        read,
        vec![
            (m1.to_string(), pb::Tick::Read),
            (m2.to_string(), pb::Tick::Read)
        ],
        "the stranded event first, each once"
    );
    // Bob's own devices got each watermark once as well (a replay coalesces
    // them, so the log itself is counted).
    let bob_log: u64 = redis::cmd("ZCARD")
        .arg(keys.log(&bob))
        .query_async(&mut redis)
        .await
        .expect("ZCARD");
    assert_eq!(bob_log, 2, "two watermark syncs, each once");
}

async fn outbox_len(redis: &mut redis::aio::MultiplexedConnection, outbox: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(outbox)
        .query_async(redis)
        .await
        .expect("XLEN")
}

/// Threads on the production tier: registered replies, a read in the thread
/// and the thread's unread count are flushed to Cassandra with the
/// conversation and read back, unchanged, once Redis has lost the hot keys;
/// writes go on in the thread from the re-warmed state.
#[tokio::test]
async fn threads_expire_from_redis_and_read_back_from_cassandra() {
    let tier = Tier::new().await;
    let node = tier
        .node_with(&["--hot-ttl-secs", "3", "--flush-interval-ms", "100"])
        .await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    let root = group.send(&mut backend, alice).await;
    let (t2, t3) = (Uuid::now_v7(), Uuid::now_v7());
    let in_thread = |id, seq| pb::MessageRegistration {
        thread_root_message_id: root.to_string(),
        ..registration(id, group.id, seq, alice)
    };
    backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![in_thread(t2, 2), in_thread(t3, 3)],
        })
        .await
        .expect("register replies");
    group.set_next_seq(4);
    let m4 = group.send(&mut backend, alice).await;
    let read = read_up_to(&mut node.user(bob).await, group.id, t2).await;
    assert_eq!(read.thread_root_message_id, root.to_string());
    assert_eq!((read.unread_count, read.conversation_unread_count), (1, 3));
    let mut alice_client = node.user(alice).await;
    let all = [root, t2, t3, m4];
    let before = receipts_of(&mut alice_client, group.id, &all).await;
    let reads: Vec<i64> = before.iter().map(|m| m.read_count).collect();
    assert_eq!(reads, [0, 1, 0, 0], "bob read the thread up to t2 only");
    let unread = |client: UserClient| async move {
        let mut client = client;
        client
            .get_unread_counts(pb::GetUnreadCountsRequest {
                conversation_ids: vec![group.id.to_string()],
            })
            .await
            .expect("unread")
            .into_inner()
            .conversations
            .remove(0)
    };
    let bob_before = unread(node.user(bob).await).await;
    assert_eq!(
        (bob_before.unread_count, bob_before.main_unread_count),
        (3, 2)
    );

    let tag = group.id.simple().to_string();
    eventually("the conversation's hot keys expire", || async {
        !tier.keys().await.iter().any(|k| k.contains(&tag))
    })
    .await;
    let after = receipts_of(&mut alice_client, group.id, &all).await;
    assert_eq!(after, before, "read through from Cassandra, unchanged");
    assert_eq!(unread(node.user(bob).await).await, bob_before);
    // Writes go on in the thread from the re-warmed state.
    read_up_to(&mut node.user(carol).await, group.id, t3).await;
    read_up_to(&mut node.user(bob).await, group.id, t3).await;
    let t3_now = receipt(&mut alice_client, group.id, t3).await;
    assert_eq!((t3_now.read_count, tick(&t3_now)), (2, pb::Tick::Read));
    let m4_now = receipt(&mut alice_client, group.id, m4).await;
    assert_eq!(m4_now.read_count, 0, "thread reads leave the main timeline");
}
