//! Messages registered together: one field of the conversation's messages
//! hash per bucket of ids (docs/storage.md, "Redis keys", `mr`).

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
        let (buckets, own): (Vec<_>, Vec<_>) = fields.into_iter().partition(|f| f.len() == 6);
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
        let (key, field, value) = if stale_in_bucket {
            let (secs, shard) = k::id_bucket_slot(ms);
            (
                keys.id_index(secs, shard),
                minted[..6].to_vec(),
                k::id_record(&stale, &elsewhere.id),
            )
        } else {
            let (secs, shard) = k::id_index_slot(&stale, ms);
            (
                keys.id_index(secs, shard),
                stale.as_bytes().to_vec(),
                elsewhere.id.as_bytes().to_vec(),
            )
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
