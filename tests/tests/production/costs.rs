//! What calls and messages cost Redis: bytes per message, commands per
//! call, O(1) writes whatever a call covers or the group's size.

use super::*;

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
