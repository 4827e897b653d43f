//! Messages registered together: one field of the conversation's messages
//! hash per bucket of ids (docs/storage.md, "Redis keys", `mr`); the seq
//! index packed by bucket of seqs (`sb`), and packed from the form written
//! before it (`sq`); a short conversation's messages in its seq index
//! alone.

use super::*;

/// A registration of several messages minted together keeps them as
/// records of one bucket field, not a field each; every lookup by id finds
/// them (MarkDelivered in the conversation and by id alone, MarkReadUpTo,
/// GetReceipts, registering them again), and so does the conversation
/// re-warmed from Cassandra after its hot keys expired, which writes them
/// back into buckets.
#[tokio::test]
async fn messages_registered_together_share_a_bucket_field_and_are_found_by_id() {
    let tier = Tier::new().await;
    let (node, mut backend, mut group) = short_lived(&tier).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    // A conversation keeps a messages hash past 128 messages (a smaller
    // one's seq index holds its messages, below): filled first with ids
    // that are not UUIDv7 (a field each, left out of what is looked at).
    let filler: Vec<Uuid> = (0..129).map(|_| Uuid::new_v4()).collect();
    assert_eq!(group.send_ids(&mut backend, alice, &filler).await, 129);
    let filler: HashSet<Vec<u8>> = filler.iter().map(|u| u.as_bytes().to_vec()).collect();
    let sent = ids_of_one_millisecond(20);
    let minted = *sent[0].as_bytes();
    let first = group.next_seq();
    assert_eq!(group.send_ids(&mut backend, alice, &sent).await, 20);
    let alone = group.send(&mut backend, alice).await;
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let messages_hash = keys.messages(&group.id);
    let fields = || async {
        let mut con = tier.redis().await;
        let fields: Vec<Vec<u8>> = redis::cmd("HKEYS")
            .arg(&messages_hash)
            .query_async(&mut con)
            .await
            .expect("HKEYS");
        let (buckets, own): (Vec<_>, Vec<_>) = fields
            .into_iter()
            .filter(|f| !filler.contains(f))
            .partition(|f| f.len() == 6);
        (buckets, own)
    };
    let (buckets, own) = fields().await;
    assert_eq!(buckets, [minted[..6].to_vec()], "one bucket");
    assert_eq!(
        own,
        [alone.as_bytes().to_vec()],
        "a message alone has its own field"
    );

    // Registered again with the same content: nothing new. With another
    // seq: refused, naming the message.
    let again = |seq_shift: i64| pb::RegisterMessagesRequest {
        messages: sent
            .iter()
            .enumerate()
            .map(|(i, m)| registration(*m, group.id, first + i as i64 + seq_shift, alice))
            .collect(),
    };
    let n = backend
        .register_messages(again(0))
        .await
        .expect("same content")
        .into_inner()
        .registered;
    assert_eq!(n, 0);
    let refused = backend
        .register_messages(again(100))
        .await
        .expect_err("another seq for a registered id");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");

    let mut bob_client = node.user(bob).await;
    deliver_in(&mut bob_client, group.id, &sent[..10]).await;
    deliver(&mut bob_client, &sent[10..]).await;
    read_up_to(&mut bob_client, group.id, sent[4]).await;
    deliver(&mut node.user(carol).await, &[sent[19], alone]).await;
    let mut alice_client = node.user(alice).await;
    let all: Vec<Uuid> = sent.iter().copied().chain([alone]).collect();
    let before = receipts_of(&mut alice_client, group.id, &all).await;
    assert_eq!(before.len(), 21);
    let counts = |rs: &[pb::MessageReceipts]| -> Vec<(i64, i64)> {
        rs.iter()
            .map(|r| (r.delivered_count, r.read_count))
            .collect()
    };
    let mut expected = vec![(1, 1); 5];
    expected.extend(vec![(1, 0); 14]);
    expected.extend([(2, 0), (1, 0)]);
    assert_eq!(counts(&before), expected);

    // After the hot keys expired, a read re-warms from Cassandra.
    until_expired(&tier, group.id).await;
    let after = receipts_of(&mut alice_client, group.id, &all).await;
    assert_eq!(after, before, "read through from Cassandra, unchanged");
    // The re-warm groups the messages by bucket: the one registered alone
    // shares its bucket with the others if minted in the same millisecond.
    let (buckets, own) = fields().await;
    assert!(!buckets.is_empty(), "the re-warm writes buckets");
    assert!(own.len() <= 1, "{own:?}");
    // Writes by id go on from the re-warmed state.
    read_up_to(&mut bob_client, group.id, sent[19]).await;
    let r = receipt(&mut alice_client, group.id, sent[19]).await;
    assert_eq!((r.delivered_count, r.read_count), (2, 1));
}

/// An id-index entry left by a registration that never committed (here
/// written by hand, as a field of its own and as a bucket record, naming a
/// conversation that does not hold the message) is replaced by the next
/// registration of that id, also in a batch whose other ids share a
/// bucket: the id is then found in its real conversation by id alone.
#[tokio::test]
async fn an_index_entry_of_a_registration_that_never_committed_is_replaced() {
    let tier = Tier::new().await;
    let node = tier.node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 2).await;
    let elsewhere = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (group.members[0], group.members[1]);
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    use receipts_server::store::redis::keys as k;
    let mut con = tier.redis().await;
    for stale_in_bucket in [false, true] {
        let ids = ids_of_one_millisecond(10);
        let minted = *ids[0].as_bytes();
        let ms = u64::from_be_bytes([
            0, 0, minted[0], minted[1], minted[2], minted[3], minted[4], minted[5],
        ]);
        let stale = ids[3];
        let (secs, shard) = k::id_index_slot(ms);
        let key = keys.id_index(secs, shard);
        let (field, value) = if stale_in_bucket {
            (minted[..6].to_vec(), k::id_record(&stale, &elsewhere.id))
        } else {
            (stale.as_bytes().to_vec(), elsewhere.id.as_bytes().to_vec())
        };
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(field)
            .arg(value)
            .query_async(&mut con)
            .await
            .expect("a stale entry");
        assert_eq!(group.send_ids(&mut backend, alice, &ids).await, 10);
        let r = deliver(&mut node.user(bob).await, &ids).await;
        assert!(
            r.results
                .iter()
                .all(|r| r.outcome == pb::DeliveryOutcome::Recorded as i32),
            "stale entry in a bucket: {stale_in_bucket}: {r:?}"
        );
    }
}

/// Ids an earlier release registered (its id index: 16 shards a second,
/// an id's own field in the shard of its last byte, its millisecond's
/// bucket in the shard of the millisecond, keys named `{iS.N}`) are found
/// there by id alone while its keys live: a node looks there too for the
/// ids minted before the mark the first node of this layout wrote
/// (`ix-layout`: now, in a Redis that held registrations; 0 in one that
/// held none, as every other test's, which then reads one layout alone).
#[tokio::test]
async fn ids_in_the_id_index_layout_before_are_found_while_it_lives() {
    use receipts_server::store::redis::keys as k;
    let tier = Tier::new().await;
    let keys = k::Keys::new(&tier.prefix);
    let mut con = tier.redis().await;
    // A Redis in which an earlier release registered messages: it wrote
    // the completeness mark.
    let _: () = redis::cmd("SET")
        .arg(keys.complete_since())
        .arg(1)
        .query_async(&mut con)
        .await
        .expect("SET");
    let node = tier.node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (group.members[0], group.members[1]);
    let single = group.send(&mut backend, alice).await;
    let batch = ids_of_one_millisecond(10);
    assert_eq!(group.send_ids(&mut backend, alice, &batch).await, 10);
    let since: u64 = redis::cmd("GET")
        .arg(keys.id_layout_since())
        .query_async(&mut con)
        .await
        .expect("the layout's mark");
    assert!(since > 1_700_000_000_000, "now, not 0: {since}");
    // Their entries moved where the earlier release put them.
    let ms_of = |m: &Uuid| {
        let b = m.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    };
    let (mut moved, mut index_keys) = (0, HashSet::new());
    for m in batch.iter().chain([&single]) {
        let ms = ms_of(m);
        let (secs, shard) = k::id_index_slot(ms);
        let key = keys.id_index(secs, shard);
        let [own, bucket] = k::legacy_id_slots(m, ms);
        for (field, (secs, shard)) in [
            (m.as_bytes().to_vec(), own),
            (k::message_bucket(m).to_vec(), bucket),
        ] {
            let value: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(&key)
                .arg(&field)
                .query_async(&mut con)
                .await
                .expect("HGET");
            let Some(value) = value else { continue };
            let legacy = keys.legacy_id_index(secs, shard);
            let _: () = redis::pipe()
                .cmd("HDEL")
                .arg(&key)
                .arg(&field)
                .ignore()
                .cmd("HSET")
                .arg(&legacy)
                .arg(&field)
                .arg(value)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&legacy)
                .arg(60_000)
                .ignore()
                .query_async(&mut con)
                .await
                .expect("moved");
            moved += 1;
        }
        index_keys.insert(key);
    }
    for key in index_keys {
        let left: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut con)
            .await
            .expect("EXISTS");
        assert!(!left, "nothing left in the layout: {key}");
    }
    assert_eq!(moved, 2, "the single's own field and the batch's bucket");
    let r = deliver(&mut node.user(bob).await, &[single]).await;
    assert_eq!(r.results[0].outcome, pb::DeliveryOutcome::Recorded as i32);
    let r = deliver(&mut node.user(bob).await, &batch).await;
    assert!(
        r.results
            .iter()
            .all(|r| r.outcome == pb::DeliveryOutcome::Recorded as i32),
        "{r:?}"
    );
    // Registered again: known (found in the layout before), nothing new;
    // in another conversation: refused, as that conversation does not
    // hold it (only the index knows where it is).
    let again = pb::RegisterMessagesRequest {
        messages: vec![registration(single, group.id, 1, alice)],
    };
    let n = backend
        .register_messages(again)
        .await
        .expect("again")
        .into_inner()
        .registered;
    assert_eq!(n, 0);
    let other = Conversation::create(&mut backend, 2).await;
    let elsewhere = pb::RegisterMessagesRequest {
        messages: vec![registration(batch[0], other.id, 1, other.members[0])],
    };
    let refused = backend
        .register_messages(elsewhere)
        .await
        .expect_err("an id registered in another conversation");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
}

/// [`receipts_of`] for any number of ids, 100 (the request's limit) at a
/// time.
async fn receipts_of_all(
    client: &mut UserClient,
    conversation: Uuid,
    ids: &[Uuid],
) -> Vec<pb::MessageReceipts> {
    let mut out = Vec::new();
    for chunk in ids.chunks(100) {
        out.extend(receipts_of(client, conversation, chunk).await);
    }
    out
}

/// `(unread, read up to, last seq)` of `conversation` for `client`.
async fn unread_of(client: &mut UserClient, conversation: Uuid) -> (i64, i64, i64) {
    let c = client
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![conversation.to_string()],
        })
        .await
        .expect("unread counts")
        .into_inner()
        .conversations
        .remove(0);
    (c.unread_count, c.read_up_to_seq, c.last_seq)
}

/// A conversation whose seq index was written before buckets (a member
/// per message in `sq`, no `sb` in the meta hash; here rewritten by hand
/// from the buckets) answers as before, and its first view packs it: `sb`
/// holds every message again (with its thread root), `sq` is gone, every
/// key keeps an expiry, and writes go on from there (a new message in the
/// last bucket, deliveries and a read across buckets).
#[tokio::test]
async fn a_seq_index_written_before_buckets_is_packed_by_the_first_view() {
    let tier = Tier::new().await;
    let node = tier.node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    // More than 128: packed, a member per bucket of 64 seqs.
    let mut sent = group.send_many(&mut backend, alice, 130).await;
    // A thread under the second message, at seq 131; carol's message at 132.
    let reply = Uuid::now_v7();
    let mut r = registration(reply, group.id, group.next_seq(), bob);
    r.thread_root_message_id = sent[1].to_string();
    backend
        .register_messages(pb::RegisterMessagesRequest { messages: vec![r] })
        .await
        .expect("a thread reply");
    group.set_next_seq(group.next_seq() + 1);
    sent.push(group.send(&mut backend, carol).await);
    let mut bob_client = node.user(bob).await;
    deliver_in(&mut bob_client, group.id, &sent[..66]).await;
    read_up_to(&mut bob_client, group.id, sent[9]).await;

    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let (sb, sq, meta) = (
        keys.seq_buckets(&group.id),
        keys.legacy_seqs(&group.id),
        keys.meta(&group.id),
    );
    let mut con = tier.redis().await;
    let buckets = members_with_scores(&mut con, &sb).await;
    assert_eq!(
        buckets.iter().map(|(_, b)| *b).collect::<Vec<_>>(),
        [0, 64, 128],
        "seqs 1..=63, 64..=127 and 128..=132"
    );
    // Each bucket's records: seq mod 64 (128 set in a thread) ‖ id ‖
    // sender ‖ the root's seq (in a thread), as `sq` members by seq.
    let mut legacy: Vec<(u64, Vec<u8>)> = Vec::new();
    for (value, b) in &buckets {
        let mut rest = &value[..];
        while let Some(&k) = rest.first() {
            let len = if k & 0x80 != 0 { 41 } else { 33 };
            let id = Uuid::from_slice(&rest[1..17]).expect("id");
            let sender = Uuid::from_slice(&rest[17..33]).expect("sender");
            let root = (len == 41).then(|| u64::from_be_bytes(rest[33..41].try_into().unwrap()));
            let member = receipts_server::store::redis::keys::seq_member(&id, &sender, root);
            legacy.push((b / 64 * 64 + u64::from(k & 0x3f), member));
            rest = &rest[len..];
        }
    }
    assert_eq!(legacy.len(), 132);
    assert!(
        legacy.iter().any(|(s, m)| *s == 131 && m.len() == 40),
        "the reply is in a thread"
    );

    let mut alice_client = node.user(alice).await;
    let mut carol_client = node.user(carol).await;
    let all: Vec<Uuid> = sent.iter().copied().chain([reply]).collect();
    let before = receipts_of_all(&mut alice_client, group.id, &all).await;
    let unread_before = unread_of(&mut carol_client, group.id).await;
    // Alice's 130 and the reply in the thread; carol's own is not unread.
    assert_eq!(unread_before, (131, 0, 132));

    let ttl: i64 = redis::cmd("PTTL")
        .arg(&meta)
        .query_async(&mut con)
        .await
        .expect("PTTL");
    assert!(ttl > 0);
    let mut z = redis::cmd("ZADD");
    z.arg(&sq);
    for (seq, member) in &legacy {
        z.arg(*seq).arg(member.as_slice());
    }
    let _: () = redis::pipe()
        .atomic()
        .add_command(z)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&sq)
        .arg(ttl)
        .ignore()
        .cmd("DEL")
        .arg(&sb)
        .ignore()
        .cmd("HDEL")
        .arg(&meta)
        .arg("sb")
        .ignore()
        .query_async(&mut con)
        .await
        .expect("the seq index as written before buckets");

    assert_eq!(unread_of(&mut carol_client, group.id).await, unread_before);
    let after = receipts_of_all(&mut alice_client, group.id, &all).await;
    assert_eq!(after, before, "the same answers from the packed index");
    let exists: (bool, bool, bool) = redis::pipe()
        .cmd("EXISTS")
        .arg(&sq)
        .cmd("EXISTS")
        .arg(&sb)
        .cmd("HEXISTS")
        .arg(&meta)
        .arg("sb")
        .query_async(&mut con)
        .await
        .expect("EXISTS");
    assert_eq!(
        exists,
        (false, true, true),
        "packed once, by the first view"
    );
    let repacked = members_with_scores(&mut con, &sb).await;
    assert_eq!(repacked.len(), 3);
    assert_eq!(
        repacked.iter().map(|(v, _)| v.len()).sum::<usize>(),
        buckets.iter().map(|(v, _)| v.len()).sum::<usize>(),
        "every record again"
    );

    // Writes go on: a new message (seq 133) in the last bucket, deliveries
    // and a read across the buckets.
    sent.push(group.send(&mut backend, alice).await);
    let others: Vec<Uuid> = sent[..130].iter().chain(&sent[131..]).copied().collect();
    deliver_in(&mut carol_client, group.id, &others).await;
    read_up_to(&mut carol_client, group.id, sent[130]).await;
    // Seq 133 and the reply are unread.
    assert_eq!(unread_of(&mut carol_client, group.id).await, (2, 132, 133));
    let r = receipt(&mut alice_client, group.id, sent[65]).await;
    assert_eq!((r.delivered_count, r.read_count), (2, 1));
    let r = receipt(&mut alice_client, group.id, sent[131]).await;
    assert_eq!((r.delivered_count, r.read_count), (1, 0));
    for key in tier.keys().await {
        if key.contains(&group.id.simple().to_string()) && !key.ends_with(":q") {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut con)
                .await
                .expect("PTTL");
            // -2: gone since it was listed (a window flushed, say).
            assert!(ttl > 0 || ttl == -2, "{key} has an expiry: {ttl}");
        }
    }
}

/// A short conversation's seq index is a member per message, which Redis
/// keeps in a listpack (in a direct chat and in a group); the registration that takes it past 128 packs it
/// into a member per bucket of 64 seqs, and every answer stays the same
/// across it.
#[tokio::test]
async fn the_seq_index_is_a_member_per_message_until_it_passes_128_then_packed() {
    let tier = Tier::new().await;
    let node = tier.node().await;
    let mut backend = node.backend().await;
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let con = tier.redis().await;
    // A direct chat (whose read reads the range and its messages in Lua)
    // and a group.
    for size in [2, 3] {
        let mut group = Conversation::create(&mut backend, size).await;
        let (alice, bob) = (group.members[0], group.members[1]);
        let sb = keys.seq_buckets(&group.id);
        let shape = || {
            let mut p = redis::pipe();
            p.cmd("ZCARD")
                .arg(&sb)
                .cmd("OBJECT")
                .arg("ENCODING")
                .arg(&sb);
            let mut con = con.clone();
            async move {
                let r: (u64, String) = p.query_async(&mut con).await.expect("ZCARD");
                r
            }
        };
        let mut sent = group.send_many(&mut backend, alice, 100).await;
        sent.push(group.send(&mut backend, alice).await);
        assert_eq!(shape().await, (101, "listpack".to_string()));
        let mut bob_client = node.user(bob).await;
        deliver_in(&mut bob_client, group.id, &sent[..90]).await;
        read_up_to(&mut bob_client, group.id, sent[49]).await;
        let mut alice_client = node.user(alice).await;
        let before = receipts_of_all(&mut alice_client, group.id, &sent).await;
        assert_eq!(unread_of(&mut bob_client, group.id).await, (51, 50, 101));

        sent.extend(group.send_many(&mut backend, alice, 40).await);
        assert_eq!(
            shape().await,
            (3, "skiplist".to_string()),
            "seqs 1..=141 in three buckets"
        );
        let after = receipts_of_all(&mut alice_client, group.id, &sent[..101]).await;
        assert_eq!(after, before);
        assert_eq!(unread_of(&mut bob_client, group.id).await, (91, 50, 141));
        deliver_in(&mut bob_client, group.id, &sent[90..]).await;
        read_up_to(&mut bob_client, group.id, sent[139]).await;
        assert_eq!(unread_of(&mut bob_client, group.id).await, (1, 140, 141));
        for m in [sent[0], sent[100], sent[140]] {
            let r = receipt(&mut alice_client, group.id, m).await;
            let read = i64::from(m != sent[140]);
            assert_eq!((r.delivered_count, r.read_count), (1, read), "{m}");
        }
    }
}

/// Up to 128 messages a conversation keeps no messages hash: its seq
/// index's records carry what the hash would (`seqs::SeqForm::Timed`: the
/// send time after each record), and every lookup by id finds the messages
/// there: GetReceipts (with the send times given at registration, also a
/// tiny one and one of an id that is not UUIDv7), MarkDelivered by id alone
/// and in the conversation, MarkReadUpTo in the main timeline and in a
/// thread, registering them again, a reply to a reply (refused: its root
/// is found in a thread). A re-warm from Cassandra writes the same form;
/// the registration that passes 128 writes the hash, with every message and
/// an expiry, and every answer stays the same.
#[tokio::test]
async fn a_short_conversation_finds_its_messages_in_its_seq_index_until_it_passes_128() {
    let tier = Tier::new().await;
    let (node, mut backend, mut group) = short_lived(&tier).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let (mr, meta) = (keys.messages(&group.id), keys.meta(&group.id));
    let con = tier.redis().await;
    let form = || {
        let mut p = redis::pipe();
        p.cmd("HGET").arg(&meta).arg("sb").cmd("EXISTS").arg(&mr);
        let mut con = con.clone();
        async move {
            let r: (Option<String>, bool) = p.query_async(&mut con).await.expect("form");
            r
        }
    };
    let (first, second, reply) = (Uuid::now_v7(), Uuid::new_v4(), Uuid::now_v7());
    let seq = group.next_seq();
    let mut regs = vec![
        registration(first, group.id, seq, alice),
        registration(second, group.id, seq + 1, bob),
        registration(reply, group.id, seq + 2, carol),
    ];
    regs[0].sent_at_ms = 1_600_000_000_123;
    regs[1].sent_at_ms = 42;
    regs[2].thread_root_message_id = first.to_string();
    let register = |messages: Vec<pb::MessageRegistration>| {
        let mut backend = backend.clone();
        async move {
            backend
                .register_messages(pb::RegisterMessagesRequest { messages })
                .await
                .map(|r| r.into_inner().registered)
        }
    };
    assert_eq!(register(regs.clone()).await.expect("register"), 3);
    group.set_next_seq(seq + 3);
    assert_eq!(form().await, (Some("3".into()), false), "timed, no hash");
    assert_eq!(register(regs.clone()).await.expect("again"), 0);
    let mut moved = regs[1].clone();
    moved.seq = seq + 10;
    let refused = register(vec![moved]).await.expect_err("another seq");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    let mut nested = registration(Uuid::now_v7(), group.id, seq + 3, alice);
    nested.thread_root_message_id = reply.to_string();
    let refused = register(vec![nested])
        .await
        .expect_err("a reply to a reply");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("threads do not nest"),
        "{refused:?}"
    );

    let mut bob_client = node.user(bob).await;
    let mut carol_client = node.user(carol).await;
    deliver(&mut bob_client, &[first]).await;
    deliver_in(&mut carol_client, group.id, &[first, second]).await;
    read_up_to(&mut carol_client, group.id, first).await;
    read_up_to(&mut bob_client, group.id, reply).await;
    let mut alice_client = node.user(alice).await;
    let ids = [first, second, reply];
    let before = receipts_of(&mut alice_client, group.id, &ids).await;
    let facts = |rs: &[pb::MessageReceipts]| -> Vec<(i64, String, i64, i64, i64)> {
        rs.iter()
            .map(|r| {
                let sent = if r.sent_at_ms > 1_700_000_000_000 {
                    -1
                } else {
                    r.sent_at_ms
                };
                (
                    r.seq,
                    r.sender_id.clone(),
                    sent,
                    r.delivered_count,
                    r.read_count,
                )
            })
            .collect()
    };
    let expected = vec![
        (seq, alice.to_string(), 1_600_000_000_123, 2, 1),
        (seq + 1, bob.to_string(), 42, 1, 0),
        // Sent now (no time given); read by bob in its thread.
        (seq + 2, carol.to_string(), -1, 1, 1),
    ];
    assert_eq!(facts(&before), expected);

    // After the hot keys expired, a read re-warms from Cassandra: the same
    // form, the same answers; writes go on from it.
    until_expired(&tier, group.id).await;
    assert_eq!(receipts_of(&mut alice_client, group.id, &ids).await, before);
    assert_eq!(form().await, (Some("3".into()), false), "re-warmed timed");
    deliver_in(&mut alice_client, group.id, &[second]).await;
    let r = receipt(&mut alice_client, group.id, second).await;
    assert_eq!((r.delivered_count, r.sent_at_ms), (2, 42));

    // Past 128: the hash is written with every message, and lives as long
    // as the conversation.
    let more = group.send_many(&mut backend, alice, 126).await;
    assert_eq!(
        form().await,
        (Some("2".into()), true),
        "packed, with the hash"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&mr)
        .query_async(&mut con.clone())
        .await
        .expect("PTTL");
    assert!(ttl > 0, "the hash has an expiry: {ttl}");
    let after = receipts_of(&mut alice_client, group.id, &ids).await;
    let mut now = expected.clone();
    now[1].3 = 2;
    assert_eq!(facts(&after), now, "the same messages from the hash");
    let all: Vec<Uuid> = ids.iter().chain(&more).copied().collect();
    assert_eq!(
        receipts_of_all(&mut alice_client, group.id, &all)
            .await
            .len(),
        129
    );
    deliver(&mut alice_client, &[reply]).await;
    read_up_to(&mut alice_client, group.id, reply).await;
    let r = receipt(&mut node.user(carol).await, group.id, reply).await;
    assert_eq!((r.delivered_count, r.read_count), (2, 2));
}

/// A message at a seq past 2^53 (which the API takes: any positive i64)
/// would not read back exactly from a timed seq index (Lua's numbers are
/// doubles): its registration packs the index and writes the messages
/// hash, and every answer names its seq exactly.
#[tokio::test]
async fn a_seq_past_what_lua_reads_exactly_keeps_the_messages_hash() {
    let tier = Tier::new().await;
    let node = tier.node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob) = (group.members[0], group.members[1]);
    let first = group.send(&mut backend, alice).await;
    let far = (1i64 << 53) + 3;
    group.set_next_seq(far);
    let last = group.send(&mut backend, alice).await;
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let (sb, mr): (Option<String>, bool) = redis::pipe()
        .cmd("HGET")
        .arg(keys.meta(&group.id))
        .arg("sb")
        .cmd("EXISTS")
        .arg(keys.messages(&group.id))
        .query_async(&mut tier.redis().await)
        .await
        .expect("form");
    assert_eq!(
        (sb.as_deref(), mr),
        (Some("2"), true),
        "packed, with the hash"
    );
    let mut bob_client = node.user(bob).await;
    deliver(&mut bob_client, &[last]).await;
    let got = receipts_of(&mut node.user(alice).await, group.id, &[first, last]).await;
    let seqs: Vec<(i64, i64, i64)> = got
        .iter()
        .map(|r| (r.seq, r.delivered_count, r.read_count))
        .collect();
    assert_eq!(seqs, [(1, 0, 0), (far, 1, 0)]);
}

/// Every member of the sorted set `key` with its score, in score order.
async fn members_with_scores(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<(Vec<u8>, u64)> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(con)
        .await
        .expect("ZRANGE")
}
