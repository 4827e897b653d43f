//! What calls and messages cost Redis: bytes per message, commands per
//! call, O(1) writes whatever a call covers or the group's size.

use super::*;

/// Redis bytes per message of a 20-member group whose every recipient
/// delivered and read 100 messages, registered one per call: the issue's
/// measure (docs/storage.md, "Measured bytes per message"). Its keys stay
/// in Redis's compact encodings (listpacks of at most 128 entries).
#[tokio::test]
async fn memory_per_message_in_a_20_member_group() {
    memory_per_message(100, 1).await;
}

/// The same with 1,000 messages, registered 100 per call: the per-message
/// sorted set and hash are past 128 entries, in Redis's larger encodings
/// (skip list, hash table), as a long conversation's are.
#[tokio::test]
async fn memory_per_message_in_a_long_conversation() {
    memory_per_message(1_000, 100).await;
}

/// Builds a 20-member group with `messages` messages (registered `per_call`
/// at a time), has all 19 recipients deliver (in batches of 50) and read
/// them, lets queues drain, and prints `MEMORY USAGE … SAMPLES 0` summed
/// over every key, per message.
async fn memory_per_message(messages: usize, per_call: usize) {
    let tier = Tier::new().await;
    let node = tier.node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 20).await;
    let sender = group.members[0];
    let mut sent = Vec::new();
    while sent.len() < messages {
        if per_call == 1 {
            sent.push(group.send(&mut backend, sender).await);
        } else {
            let n = per_call.min(messages - sent.len());
            sent.extend(group.send_many(&mut backend, sender, n).await);
        }
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
    let last_seq = messages as u64;
    eventually("the queues drain", || async {
        tier.scylla.runs(group.id).await.is_ok_and(|runs| {
            runs.iter()
                .filter(|(_, r)| r.covers(last_seq))
                .map(|(u, _)| *u)
                .collect::<HashSet<_>>()
                .len()
                == 19
        })
    })
    .await;
    sleep(Duration::from_millis(500)).await;

    let mut con = tier.redis().await;
    let tag = group.id.simple().to_string();
    let runs_key = format!("{{{tag}}}:d");
    let (mut homes, mut runs, mut rest) = (0u64, 0u64, 0u64);
    let mut by_key: BTreeMap<String, u64> = BTreeMap::new();
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
        assert!(
            !(key.contains(&tag) && key.contains(":r:")),
            "no receipt hash per message: {key}"
        );
        if ids.iter().any(|id| key.contains(id.as_str())) {
            homes += bytes; // a home key (ids that are not UUIDv7)
        } else if key.starts_with(&format!("{}:{{i", tier.prefix)) {
            homes += bytes; // the id index (only this test's ids)
        } else if key.ends_with(&runs_key) {
            runs += bytes;
        } else if key.contains(&tag) {
            rest += bytes; // index, messages hash, watermarks, histories, caches
        }
        if let Some((_, suffix)) = key.split_once(&format!("{{{tag}}}:")) {
            *by_key.entry(suffix.chars().take(2).collect()).or_default() += bytes;
        }
    }
    eprintln!(
        "redis memory of the conversation's keys ({messages} messages), by key (histories by kind): {by_key:?}"
    );
    let n = messages as u64;
    eprintln!(
        "redis memory, 20-member group, {messages} messages ({per_call} per registration), all \
         delivered and read: per message {} B id index + {} B delivery runs + {} B rest of the \
         conversation's keys = {} B per message (seed estimate: ~200 B)",
        homes / n,
        runs / n,
        rest / n,
        (homes + runs + rest) / n
    );
    assert!(runs > 0, "the runs hash exists");
}

/// Calls of each Redis command so far (`INFO commandstats`), by name.
/// Id-index keys per second of UUIDv7 time (`store::redis::keys`).
const ID_INDEX_SHARDS: u64 = receipts_server::store::redis::keys::ID_INDEX_SHARDS as u64;

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

/// The Redis writes of one call, by command (commands run inside the Lua
/// scripts included; the measuring INFO calls excluded).
async fn writes_of<F, Fut>(tier: &Tier, call: F) -> BTreeMap<String, u64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const WRITES: &[&str] = &[
        "hset",
        "hsetnx",
        "hdel",
        "hincrby",
        "zadd",
        "zrem",
        "sadd",
        "srem",
        "expire",
        "del",
        "xadd",
        "xdel",
        "publish",
        "set",
        "pexpireat",
    ];
    let (commands, _) = redis_cost_of(tier, call).await;
    commands
        .into_iter()
        .filter(|(c, _)| WRITES.contains(&c.as_str()))
        .collect()
}

/// The kinds of the Scylla changes the last commit in `conversation` queued
/// (its write-behind queue's newest entry; the measured node flushes
/// nothing): each is one row, or a few for a watermark (its positions and
/// history), whatever the number of messages it covers.
async fn last_queued_ops(tier: &Tier, conversation: Uuid) -> Vec<String> {
    use receipts_server::store::scylla::PersistOp;
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let mut con = tier.redis().await;
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(keys.conv_queue(&conversation))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut con)
        .await
        .expect("XREVRANGE");
    let entry = newest.ids.first().expect("a queued change");
    let bytes: Vec<u8> = entry.get("p").expect("the entry's changes");
    let ops: Vec<PersistOp> = postcard::from_bytes(&bytes).expect("postcard ops");
    ops.iter()
        .map(|op| {
            let debug = format!("{op:?}");
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The Redis writes of one MarkReadUpTo, by command.
async fn read_writes(
    tier: &Tier,
    client: &mut UserClient,
    conversation: Uuid,
    up_to: Uuid,
) -> BTreeMap<String, u64> {
    writes_of(tier, || async {
        read_up_to(client, conversation, up_to).await;
    })
    .await
}

/// A node on a Redis of the test's own (nothing else runs on it), where
/// nothing is flushed and no group window closes within a measurement.
pub(super) async fn measured_node() -> (OwnedRedis, Tier, ChildServer) {
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
        last = group.send_many(&mut backend, alice, 1000).await[999];
    }
    let mut bob_client = node.user(bob).await;
    // The first read also creates bob's replay log: not what is measured.
    read_up_to(&mut bob_client, group.id, first).await;
    let one = read_writes(&tier, &mut bob_client, group.id, second).await;
    let one_rows = last_queued_ops(&tier, group.id).await;
    let many = read_writes(&tier, &mut bob_client, group.id, last).await;
    let many_rows = last_queued_ops(&tier, group.id).await;
    println!("MarkReadUpTo writes, covering 1 message: {one:?}");
    println!("MarkReadUpTo writes, covering 10,000 messages: {many:?}");
    assert_eq!(one, many, "the same writes, command by command");
    // And the same Scylla changes: the watermark (its position and history
    // rows), not a row per message read.
    assert_eq!(one_rows, many_rows, "the same queued Scylla changes");
    assert_eq!(one_rows, ["Watermark"], "{one_rows:?}");
    let total: u64 = one.values().sum();
    assert!(total > 0 && total < 40, "a handful of writes: {one:?}");
    let r = receipt(&mut node.user(alice).await, group.id, last).await;
    assert_eq!(r.read_count, 1, "the read was applied");
}

/// Deliveries are runs: MarkDelivered of 1,000 consecutive messages writes
/// Redis the same commands as of one (one run, one field per bucket of 256
/// seqs in one HSET, one queue entry, the sender's one event), where a
/// receipt hash per message wrote two commands per message.
#[tokio::test]
async fn mark_delivered_writes_the_same_whether_it_covers_one_message_or_a_thousand() {
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    let mut direct = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);
    let warm_up = direct.send(&mut backend, alice).await;
    let one = direct.send(&mut backend, alice).await;
    let batch = direct.send_many(&mut backend, alice, 1000).await;
    let mut bob_client = node.user(bob).await;
    // The first delivery also creates alice's replay log: not what is measured.
    deliver(&mut bob_client, &[warm_up]).await;
    let single = writes_of(&tier, || async {
        deliver(&mut bob_client, &[one]).await;
    })
    .await;
    let single_rows = last_queued_ops(&tier, direct.id).await;
    let thousand = writes_of(&tier, || async {
        let r = deliver(&mut bob_client, &batch).await;
        assert_eq!(r.results.len(), 1000);
    })
    .await;
    let thousand_rows = last_queued_ops(&tier, direct.id).await;
    println!("MarkDelivered writes, 1 message: {single:?}");
    println!("MarkDelivered writes, 1,000 messages: {thousand:?}");
    assert_eq!(single, thousand, "the same writes, command by command");
    // One queued Scylla change each time: the run of the deliveries, one
    // row, not a row per message.
    assert_eq!(single_rows, ["Run"], "one message: {single_rows:?}");
    assert_eq!(thousand_rows, ["Run"], "1,000 messages: {thousand_rows:?}");
    let total: u64 = single.values().sum();
    assert!(total > 0 && total < 40, "a handful of writes: {single:?}");
    let r = receipt(&mut node.user(alice).await, direct.id, batch[999]).await;
    assert_eq!(r.delivered_count, 1, "the deliveries were applied");
}

/// A node remembers which conversations it last saw direct (at most two
/// members) and has their view read the whole meta hash at once. The
/// memory is a hint: here a direct chat the node knows as such gets a third
/// member, and the next view, hinted, still answers as a group's (the
/// member's own fields, picked out of the hash in the script), after which
/// the node reads the group's view by its fields alone.
#[tokio::test]
async fn a_direct_chat_that_becomes_a_group_is_viewed_as_a_group() {
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    let mut chat = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (chat.members[0], chat.members[1]);
    let carol = Uuid::now_v7();
    let m1 = chat.send(&mut backend, alice).await;
    let mut bob_client = node.user(bob).await;
    let (direct, _) = redis_cost_of(&tier, || async {
        read_up_to(&mut bob_client, chat.id, m1).await;
    })
    .await;
    chat.add_member(&mut backend, carol, 2).await;
    let m2 = chat.send(&mut backend, alice).await;
    let m3 = chat.send(&mut backend, alice).await;
    let (hinted, _) = redis_cost_of(&tier, || async {
        let r = read_up_to(&mut bob_client, chat.id, m2).await;
        assert_eq!((r.read_up_to_seq, r.unread_count), (2, 1), "{r:?}");
    })
    .await;
    let (group, _) = redis_cost_of(&tier, || async {
        let r = read_up_to(&mut bob_client, chat.id, m3).await;
        assert_eq!((r.read_up_to_seq, r.unread_count), (3, 0), "{r:?}");
    })
    .await;
    println!("direct: {direct:?}\nhinted, now a group: {hinted:?}\ngroup: {group:?}");
    assert_eq!(
        hinted.get("hgetall"),
        Some(&1),
        "the stale hint read the whole hash: {hinted:?}"
    );
    assert_eq!(
        group.get("hgetall"),
        None,
        "then the group's view reads its fields alone: {group:?}"
    );
    // A group's read leaves its counting to the window: carol's delivery
    // and the counts are the group's.
    deliver_in(&mut node.user(carol).await, chat.id, &[m2, m3]).await;
    let r = receipt(&mut node.user(alice).await, chat.id, m3).await;
    assert_eq!((r.delivered_count, r.read_count), (2, 1), "{r:?}");
}

/// The view script's reply is the same with the node's hint ("2+": read
/// the whole meta hash at once) as without it ("2"), byte for byte, for a
/// missing hash, one without a member count, a direct chat's, and a group's
/// with and without the optional fields.
#[tokio::test]
async fn the_hinted_view_answers_as_the_unhinted_one() {
    let (_redis, tier, _node) = measured_node().await;
    let mut con = tier.redis().await;
    let (a, b, c) = ("aa".repeat(16), "bb".repeat(16), "cc".repeat(16));
    let m = |u: &str| format!("m:{u}");
    let w = |u: &str| format!("w:{u}");
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        ("absent", vec![]),
        ("no member count", vec![("v".into(), "3".into())]),
        (
            "direct",
            vec![
                ("v".into(), "3".into()),
                ("mv".into(), "1".into()),
                ("n".into(), "2".into()),
                (m(&a), "x".into()),
                (m(&b), "y".into()),
                (w(&a), "1:1".into()),
            ],
        ),
        (
            "group, sparse",
            vec![
                ("v".into(), "3".into()),
                ("n".into(), "3".into()),
                (m(&b), "y".into()),
                (m(&c), "z".into()),
            ],
        ),
        (
            "group, every field",
            vec![
                ("v".into(), "3".into()),
                ("mv".into(), "2".into()),
                ("t".into(), "7".into()),
                ("n".into(), "3".into()),
                (m(&a), "x".into()),
                (m(&b), "y".into()),
                (m(&c), "z".into()),
                ("th".into(), "1".into()),
                (w(&a), "4:2".into()),
                (w(&b), "1:1".into()),
                ("sb".into(), "2".into()),
            ],
        ),
    ];
    for (i, (what, fields)) in cases.iter().enumerate() {
        let key = format!("{}:{{view-test-{i}}}:cw", tier.prefix);
        if !fields.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            for (f, v) in fields {
                hset.arg(f).arg(v);
            }
            let _: () = hset.query_async(&mut con).await.expect("HSET");
        }
        let mut replies = Vec::new();
        for limit in ["2", "2+"] {
            let reply: redis::Value = receipts_server::store::redis::scripts::VIEW
                .key(&key)
                .arg(&a)
                .arg(limit)
                .arg("")
                .arg("")
                .invoke_async(&mut con)
                .await
                .expect("VIEW");
            replies.push(reply);
        }
        assert_eq!(replies[0], replies[1], "{what}");
    }
}

/// MarkDelivered naming the conversation reads nothing of the id index:
/// the same commands as naming ids alone, less the index reads (one HMGET
/// per index key the ids fall in, and the completeness marker's GET).
#[tokio::test]
async fn mark_delivered_in_the_conversation_reads_no_id_index() {
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    let mut direct = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);
    let warm_up = direct.send(&mut backend, alice).await;
    let batches = [
        direct.send_many(&mut backend, alice, 100).await,
        direct.send_many(&mut backend, alice, 100).await,
    ];
    let mut bob_client = node.user(bob).await;
    deliver(&mut bob_client, &[warm_up]).await;
    let (by_id, _) = redis_cost_of(&tier, || async {
        deliver(&mut bob_client, &batches[0]).await;
    })
    .await;
    let (in_conversation, _) = redis_cost_of(&tier, || async {
        deliver_in(&mut bob_client, direct.id, &batches[1]).await;
    })
    .await;
    println!("MarkDelivered of 100 by id: {by_id:?}");
    println!("MarkDelivered of 100 in the conversation: {in_conversation:?}");
    let calls = |c: &BTreeMap<String, u64>, name: &str| c.get(name).copied().unwrap_or(0);
    let index_reads = calls(&by_id, "hmget") - calls(&in_conversation, "hmget");
    assert!(
        (1..=2 * ID_INDEX_SHARDS).contains(&index_reads),
        "one HMGET per index key ({ID_INDEX_SHARDS} per second of ids): {index_reads}"
    );
    assert_eq!(calls(&by_id, "get"), calls(&in_conversation, "get") + 1);
    let without_index = |c: &BTreeMap<String, u64>| {
        let mut c = c.clone();
        c.remove("get");
        c.remove("hmget");
        c
    };
    assert_eq!(without_index(&by_id), without_index(&in_conversation));
    let r = receipt(&mut node.user(alice).await, direct.id, batches[1][99]).await;
    assert_eq!(r.delivered_count, 1, "the deliveries were applied");
}

/// A write's events reach their addressees' logs inside its commit on a
/// single Redis server (the commit script forwards them when the outbox is
/// empty: they never enter it, and there is no forward call), and the
/// outbox is not read back, nor its length: the previous commit recorded
/// that it is empty (`o` in the meta hash). A direct MarkReadUpTo has two addressees (the
/// reader's own devices and the sender). On a cluster the forward is one
/// call per addressee, sent together (`redis_cluster_…` tests).
#[tokio::test]
async fn a_write_forwards_its_events_in_its_commit() {
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    let mut direct = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);
    let warm = direct.send(&mut backend, alice).await;
    let m = direct.send(&mut backend, alice).await;
    let mut bob_client = node.user(bob).await;
    // Creates both replay logs: not measured.
    read_up_to(&mut bob_client, direct.id, warm).await;
    let (read, _) = redis_cost_of(&tier, || async {
        read_up_to(&mut bob_client, direct.id, m).await;
    })
    .await;
    println!("direct MarkReadUpTo: {read:?}");
    let calls = |name: &str| read.get(name).copied().unwrap_or(0);
    assert_eq!(calls("xrange"), 0, "the outbox is not read back: {read:?}");
    assert_eq!(calls("xlen"), 0, "the outbox is known empty: {read:?}");
    // Both members' sharing settings and delivery runs; the commit's
    // version check; each addressee's log meta. The message (once: a read
    // of one message does not look it up again among those it covers) is
    // in the seq index of a conversation this small, read whole (no
    // messages hash: `seqs::SeqForm::Timed`).
    assert_eq!(calls("hmget"), 6, "the facts, each read once: {read:?}");
    assert_eq!(calls("zrange"), 1, "the message, once: {read:?}");
    // The view's meta hash: read whole at once, since this node's last view
    // of the chat found it direct (not the member's fields first, then the
    // whole hash).
    assert_eq!(calls("hgetall"), 1, "the meta hash, once: {read:?}");
    assert_eq!(calls("publish"), 2, "two events: {read:?}");
    // HINCRBY runs once per addressee's log (its next offset).
    assert_eq!(calls("hincrby"), 2, "one append per addressee: {read:?}");
    // The one XADD is the Scylla queue's; the events skip the outbox.
    assert_eq!(
        calls("xadd"),
        1,
        "the events never enter the outbox: {read:?}"
    );
    assert_eq!(
        calls("xdel"),
        0,
        "nothing to delete from the outbox: {read:?}"
    );
    assert_eq!(
        calls("evalsha"),
        2,
        "the read script and the commit: {read:?}"
    );
    let r = receipt(&mut node.user(alice).await, direct.id, m).await;
    assert_eq!(tick(&r), pb::Tick::Read);
}

/// The calls one call makes to Redis, in order, by command name (`MONITOR`;
/// the commands scripts run and the node's health PINGs left out). Each is
/// one round trip, unless sent together with others.
async fn redis_calls_of<F, Fut>(tier: &Tier, call: F) -> Vec<String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt as _;
    const END: &str = "end-of-measured-calls";
    let client = redis::Client::open(tier.redis_url.as_str()).expect("redis url");
    let monitor = client.get_async_monitor().await.expect("MONITOR");
    let mut lines = Box::pin(monitor.into_on_message::<String>());
    call().await;
    let mut con = tier.redis().await;
    let _: String = redis::cmd("ECHO")
        .arg(END)
        .query_async(&mut con)
        .await
        .expect("ECHO");
    let mut calls = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next())
            .await
            .expect("MONITOR sees the end marker")
            .expect("MONITOR stream");
        if line.contains(END) {
            return calls;
        }
        let Some(name) = line.split('"').nth(1) else {
            continue;
        };
        if line.contains(" lua]") || name.eq_ignore_ascii_case("PING") {
            continue;
        }
        calls.push(name.to_uppercase());
    }
}

/// MarkDelivered naming the conversation reads every fact of the
/// conversation it needs in one call (`DELIVERY_VIEW`: the view, the
/// messages, the delivery runs at their seqs; three sequential calls
/// before), then commits, registering its queue in the same script (a
/// single Redis server, as here). In a group that is all: two calls (the
/// events come later, from the window). In a direct chat the event carries
/// whole states, so the two members' sharing settings are read too (one
/// pipeline: they live in the users' slots), and the event is forwarded
/// after the commit (one call that also deletes it from the outbox).
#[tokio::test]
async fn a_delivery_reads_its_facts_in_one_call() {
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    for size in [2, 5] {
        let mut chat = Conversation::create(&mut backend, size).await;
        let (alice, bob) = (chat.members[0], chat.members[1]);
        let warm = chat.send(&mut backend, alice).await;
        // Seqs 16,330 to 16,429: over two runs buckets (256 seqs each) and
        // from two-byte to three-byte varints at 16,384, where the script
        // finds each message's seq and bucket.
        chat.set_next_seq(16_330);
        let batch = chat.send_many(&mut backend, alice, 100).await;
        let mut bob_client = node.user(bob).await;
        // Loads the scripts and the sharing settings: not measured. (Not in
        // the group: it would open a window that could close mid-measure.)
        if size == 2 {
            deliver_in(&mut bob_client, chat.id, &[warm]).await;
        }
        let calls = redis_calls_of(&tier, || async {
            deliver_in(&mut bob_client, chat.id, &batch).await;
        })
        .await;
        println!("MarkDelivered of 100 in a conversation of {size}: {calls:?}");
        assert_eq!(calls, ["EVALSHA", "EVALSHA"]);
        let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
        let registered: Option<f64> = redis::cmd("ZSCORE")
            .arg(keys.queue_index())
            .arg(keys.conv_queue(&chat.id))
            .query_async(&mut tier.redis().await)
            .await
            .expect("ZSCORE");
        assert!(registered.is_some(), "the commit registered the queue");
        let r = receipt(&mut node.user(alice).await, chat.id, batch[99]).await;
        assert_eq!(r.delivered_count, 1, "the deliveries were applied");
    }
}

/// MarkReadUpTo reads the conversation's facts in one call (`READ_VIEW`:
/// the view, the target message, the seq index after the reader's
/// watermark, from which both the messages the read covers and the unread
/// count after it are found, and the reader's sharing setting, in the same
/// atomic step as the conversation's version on a single Redis server; in a
/// direct chat also both members' settings and delivery runs, for the
/// event's whole states). Then the commit, which registers the queue and
/// forwards the events too on a single Redis server: two calls, group or
/// direct, from nine and thirteen.
#[tokio::test]
async fn a_read_reads_its_facts_in_one_call() {
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 5).await;
    let (alice, bob) = (group.members[0], group.members[1]);
    group.send_many(&mut backend, alice, 21).await;
    let target = group.send(&mut backend, alice).await;
    group.send_many(&mut backend, alice, 5).await;
    let mut bob_client = node.user(bob).await;
    // Loads the script and the sharing setting: not measured. (In another
    // group: a read here would open a window that could close mid-measure.)
    let mut other = Conversation::create_with(&mut backend, group.members.clone()).await;
    let m = other.send(&mut backend, alice).await;
    read_up_to(&mut bob_client, other.id, m).await;
    let calls = redis_calls_of(&tier, || async {
        let r = read_up_to(&mut bob_client, group.id, target).await;
        assert_eq!((r.read_up_to_seq, r.unread_count), (22, 5));
    })
    .await;
    println!("MarkReadUpTo in a group of 5: {calls:?}");
    assert_eq!(calls, ["EVALSHA", "EVALSHA"]);
    let mut direct = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (direct.members[0], direct.members[1]);
    let first = direct.send(&mut backend, alice).await;
    // Seqs 250 to 259, the read up to 258: its messages are in two runs
    // buckets (256 seqs each), which the script finds from the range.
    direct.set_next_seq(250);
    let batch = direct.send_many(&mut backend, alice, 10).await;
    let target = batch[8];
    let mut bob_client = node.user(bob).await;
    read_up_to(&mut bob_client, direct.id, first).await;
    let calls = redis_calls_of(&tier, || async {
        let r = read_up_to(&mut bob_client, direct.id, target).await;
        assert_eq!((r.read_up_to_seq, r.unread_count), (258, 1));
    })
    .await;
    println!("MarkReadUpTo in a direct chat: {calls:?}");
    assert_eq!(calls, ["EVALSHA", "EVALSHA"]);
    let r = receipt(&mut node.user(alice).await, direct.id, target).await;
    assert_eq!(tick(&r), pb::Tick::Read);
}

/// A registration writes the id index once per index key its ids fall in
/// (an HSET and a PEXPIREAT; a UUIDv7 id's key is its second and its
/// millisecond), or, for 8 or more ids of one millisecond, once in all (their
/// bucket field), and everything else once: the seq index, the messages
/// hash, the queue entry, the sender's recent list. So 100 ids minted in
/// one millisecond cost the writes of one.
#[tokio::test]
async fn a_registration_writes_the_id_index_once_per_bucket_or_index_key_and_the_rest_once() {
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    let mut direct = Conversation::create(&mut backend, 2).await;
    let alice = direct.members[0];
    direct.send(&mut backend, alice).await;
    let mut register = |ids: Vec<Uuid>| {
        let seq = direct.next_seq();
        direct.set_next_seq(seq + ids.len() as i64);
        pb::RegisterMessagesRequest {
            messages: ids
                .iter()
                .enumerate()
                .map(|(i, id)| registration(*id, direct.id, seq + i as i64, alice))
                .collect(),
        }
    };
    // Ids of one millisecond: 100 of them, and 7 (below the bucket minimum).
    let (one, hundred) = (
        register(vec![Uuid::now_v7()]),
        register(ids_of_one_millisecond(100)),
    );
    let seven = register(ids_of_one_millisecond(7));
    let mut writes = Vec::new();
    for (request, what) in [
        (one, "register 1"),
        (hundred, "register 100"),
        (seven, "register 7"),
    ] {
        writes.push(
            writes_of(&tier, || async {
                backend.register_messages(request).await.expect(what);
            })
            .await,
        );
    }
    let [single, many, few] = &writes[..] else {
        unreachable!()
    };
    println!("RegisterMessages writes, 1 message: {single:?}");
    println!("RegisterMessages writes, 100 messages of one millisecond: {many:?}");
    println!("RegisterMessages writes, 7 messages of one millisecond: {few:?}");
    let calls = |c: &BTreeMap<String, u64>, name: &str| c.get(name).copied().unwrap_or(0);
    assert_eq!(many.get("set"), None, "no key per message");
    assert_eq!(calls(single, "pexpireat"), 1, "one index key");
    assert_eq!(many, single, "one bucket field: the writes of one message");
    // Below the minimum, a field each, in the one index key of their
    // millisecond: one HSET and one PEXPIREAT, as for one message.
    assert_eq!(calls(few, "pexpireat"), 1, "one index key: {few:?}");
    assert_eq!(few, single, "a field each, in one key");
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
        // Creates bob's replay log, loads the sharing setting and the
        // scripts: not measured.
        deliver(&mut bob_client, &[warm]).await;
        read_up_to(&mut bob_client, group.id, warm).await;
        // Naming the conversation: by id alone, the id-index lookup is one
        // HMGET or two (the id's own field and its millisecond's bucket
        // share a key one time in 16), whatever the group.
        let delivered = redis_cost_of(&tier, || async {
            deliver_in(&mut bob_client, group.id, &[m]).await;
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
    // The warm-up's commit registered the queue and marked it so in the
    // meta hash: these commits register nothing (no TIME, no ZADD to the
    // flushers' index).
    for (what, cost) in [("MarkDelivered", &d5.0), ("MarkReadUpTo", &r5.0)] {
        assert_eq!(
            cost.get("time"),
            None,
            "{what} in a registered queue registers nothing: {cost:?}"
        );
        // And the warm-up's commit forwarded its events and recorded that
        // the outbox is empty: no XLEN.
        assert_eq!(cost.get("xlen"), None, "{what} reads no outbox: {cost:?}");
    }
    // A read rewrites only the index entries its watermark scores (no SREM
    // of the complex members' set: the membership did not change), and the
    // meta hash's fields, the watermark among them, go in the commit's one
    // HSET of the version: one HSET for the window, one for the meta hash.
    // A delivery adds the runs' HSET. The view reads the watermark with the
    // version (one HMGET of the meta hash, no HGET).
    assert_eq!(
        r5.0.get("srem"),
        None,
        "a read leaves `cx` alone: {:?}",
        r5.0
    );
    assert_eq!(
        r5.0.get("hset"),
        Some(&2),
        "HSETs of a group read: {:?}",
        r5.0
    );
    assert_eq!(
        d5.0.get("hset"),
        Some(&3),
        "HSETs of a group delivery: {:?}",
        d5.0
    );
    assert_eq!(
        d5.0.get("hget"),
        None,
        "the view reads the watermark in its HMGET: {:?}",
        d5.0
    );
    assert!(
        d500.1 <= d5.1 + 100 && r500.1 <= r5.1 + 100,
        "the same bytes read: MarkDelivered {} B vs {} B, MarkReadUpTo {} B vs {} B",
        d5.1,
        d500.1,
        r5.1,
        r500.1
    );
}

/// A completion time ("read by everyone at") is computed once, when a
/// message first completes, and then read from the completion cache: one
/// field per 64 seqs (`P:{C}:a`, docs/storage.md). Here the cached entry of
/// one message is changed by hand, and GetReceipts then answers with the
/// changed time (it read the cache, not the view); the other message of
/// the same field, whose entry is dropped, is computed again and added
/// beside the first, which stays as it was.
#[tokio::test]
async fn completion_times_are_read_from_the_cache_by_bucket() {
    use receipts_server::store::redis::keys;
    let (_redis, tier, node) = measured_node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 4).await;
    let sender = group.members[0];
    let sent = group.send_many(&mut backend, sender, 2).await;
    for u in &group.members[1..] {
        let mut client = node.user(*u).await;
        deliver(&mut client, &sent).await;
        read_up_to(&mut client, group.id, sent[1]).await;
    }
    let mut sender_client = node.user(sender).await;
    let first = counts_only(&mut sender_client, group.id, sent[0]).await;
    assert_eq!((first.read_count, first.recipients_total), (3, 3));
    assert!(first.read_at_ms > 0, "read by everyone: {first:?}");
    let cache = keys::Keys::new(&tier.prefix).completions(&group.id);
    let mut redis = tier.redis().await;
    let field: Vec<u8> = redis::cmd("HGET")
        .arg(&cache)
        .arg("r:0")
        .query_async(&mut redis)
        .await
        .expect("the read completions of seqs 0..64 are cached in one field");
    let hash = field.iter().position(|b| *b == b'#').expect("tag#entries");
    let tag = String::from_utf8(field[..hash].to_vec()).expect("the tag");
    let entries = keys::completion_entries(&field, &tag).expect("this tag's");
    let ms = entries
        .iter()
        .find(|(offset, _)| *offset == 1)
        .expect("seq 1 is cached")
        .1;
    let mut changed = format!("{tag}#").into_bytes();
    changed.extend(keys::completion_entry(1, ms + 7).expect("an entry"));
    let _: () = redis::cmd("HSET")
        .arg(&cache)
        .arg("r:0")
        .arg(&changed)
        .query_async(&mut redis)
        .await
        .expect("HSET");
    let again = counts_only(&mut sender_client, group.id, sent[0]).await;
    assert_eq!(
        again.read_at_ms,
        first.read_at_ms + 7,
        "read from the cache"
    );
    let second = counts_only(&mut sender_client, group.id, sent[1]).await;
    let computed = receipt(&mut node.user(sender).await, group.id, sent[1]).await;
    assert_eq!(second.read_at_ms, computed.read_at_ms);
    assert!(second.read_at_ms > 0);
    let field: Vec<u8> = redis::cmd("HGET")
        .arg(&cache)
        .arg("r:0")
        .query_async(&mut redis)
        .await
        .expect("HGET");
    let entries = keys::completion_entries(&field, &tag).expect("this tag's");
    assert_eq!(
        entries[0],
        (1, ms + 7),
        "seq 1 stays as it was: {entries:?}"
    );
    assert_eq!(entries.len(), 2, "seq 2 added beside it: {entries:?}");
    assert_eq!(entries[1].0, 2, "{entries:?}");
    assert_eq!(
        second.read_at_ms,
        second.sent_at_ms + entries[1].1,
        "as cached"
    );
}
