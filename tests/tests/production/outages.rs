//! Outages and failovers: Cassandra down under load and past the outage
//! limit, a Redis primary or cluster node failing over with and without
//! --redis-wait-replicas.

use super::*;

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
        .arg(format!("{}:complete-ix", tier.prefix))
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
            deliveries += delivered_in_scylla(s, *m).await.unwrap_or_default().len();
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
        read_back(&mut b.user(alice).await, direct.id, &dm).await,
        before_direct
    );
    assert_eq!(
        read_back(&mut b.user(sender).await, group.id, &gm).await,
        before_group
    );
}

/// [`receipts_of`] once the node reaches Cassandra again: after the proxy
/// is restored its driver reconnects with backoff, and until then a read
/// that must go to Cassandra is refused with `Unavailable` ("retry with
/// backoff"), which a client retries. Any other refusal fails at once.
async fn read_back(
    client: &mut UserClient,
    conversation: Uuid,
    ids: &[Uuid],
) -> Vec<pb::MessageReceipts> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .get_receipts(pb::GetReceiptsRequest {
                conversation_id: conversation.to_string(),
                message_ids: ids.iter().map(Uuid::to_string).collect(),
                include_recipients: true,
            })
            .await;
        match r {
            Ok(r) => return r.into_inner().messages,
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("get receipts: {e:?}"),
        }
    }
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

/// With `--redis-wait-replicas` no subscriber is shown an event of a write
/// the replicas have not confirmed: the commit leaves its events in the
/// outbox and the node forwards them after the `WAIT` (on a single Redis
/// server without the setting, the commit forwards them itself). Here no
/// replica confirms: the read is refused, its two events wait in the
/// outbox, and neither member's replay log has them. The commit marked the
/// outbox as holding entries (`o` in the meta hash), so the plain node's
/// next write (which forwards in its commit only when the outbox is known
/// empty) looks at the outbox and forwards them first, its own behind them.
#[tokio::test]
async fn with_redis_wait_replicas_events_wait_for_the_replicas() {
    let tier = Tier::new().await;
    // No flush within the test: a flush also forwards what waits in an
    // outbox.
    const NO_FLUSH: [&str; 2] = ["--flush-interval-ms", "3600000"];
    let plain = tier.node_with(&NO_FLUSH).await;
    let mut backend = plain.backend().await;
    let mut direct = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);
    let m = direct.send(&mut backend, alice).await;
    let m2 = direct.send(&mut backend, alice).await;
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let redis = tier.redis().await;
    let count = |cmd: &'static str, key: String| {
        let mut redis = redis.clone();
        async move {
            let n: u64 = redis::cmd(cmd)
                .arg(key)
                .query_async(&mut redis)
                .await
                .expect(cmd);
            n
        }
    };
    let mark = || {
        let mut redis = redis.clone();
        let meta = keys.meta(&direct.id);
        async move {
            let o: Option<String> = redis::cmd("HGET")
                .arg(meta)
                .arg("o")
                .query_async(&mut redis)
                .await
                .expect("HGET");
            o
        }
    };
    // A delivery through the plain node: its commit forwards its events and
    // records that the outbox is empty.
    deliver(&mut plain.user(bob).await, &[m]).await;
    assert_eq!(
        mark().await.as_deref(),
        Some("0"),
        "the outbox is known empty"
    );
    let logs = || async {
        (
            count("ZCARD", keys.log(&alice)).await,
            count("ZCARD", keys.log(&bob)).await,
        )
    };
    let (alice_before, bob_before) = logs().await;
    let waiting = tier
        .node_with(&[
            NO_FLUSH[0],
            NO_FLUSH[1],
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "200",
        ])
        .await;
    let status = try_read_up_to(&mut waiting.user(bob).await, direct.id, m)
        .await
        .expect_err("no replica confirms the read");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("0 of 1 replicas"), "{status:?}");
    let outbox = || count("XLEN", keys.outbox(&direct.id));
    assert_eq!(outbox().await, 2, "the read's events wait in the outbox");
    assert_eq!(
        logs().await,
        (alice_before, bob_before),
        "no event of the read reached a log before the replicas"
    );
    assert_eq!(
        mark().await.as_deref(),
        Some("1"),
        "the commit marked the outbox as holding entries"
    );
    // The plain node's next write looks at the outbox, so its events go
    // behind the waiting ones, and all four are forwarded.
    read_up_to(&mut plain.user(bob).await, direct.id, m2).await;
    assert_eq!(outbox().await, 0, "everything forwarded");
    assert_eq!(
        logs().await,
        (alice_before + 2, bob_before + 2),
        "the waiting read's events, then m2's"
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
    let refused = try_read_up_to(&mut bob_client, chat.id, first)
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
