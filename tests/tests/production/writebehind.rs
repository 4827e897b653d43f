//! The write-behind to Cassandra on a single Redis server: queue
//! registration by the commit, and drains that forget only empty queues.

use super::*;

/// A commit registers its conversation's queue for the flushers only when
/// the meta hash does not say it is registered (`q`), and a drain forgets a
/// queue only when it is empty, dropping `q` in the same atomic step
/// (docs/storage.md, "How a write flows"). Writes go on while a flusher
/// drains every 20 ms, so commits land between a drain's last read and its
/// forgetting: every one of them still reaches Cassandra, nothing is left
/// in the queue, and once the writes stop the queue is forgotten, its mark
/// with it, and the next write registers it again (it reaches Cassandra).
#[tokio::test]
async fn writes_during_drains_reach_cassandra_and_a_drained_queue_is_registered_again() {
    let tier = Tier::new().await;
    let node = tier.node_with(&["--flush-interval-ms", "20"]).await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob) = (group.members[0], group.members[1]);
    let sent = group.send_many(&mut backend, alice, 120).await;
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let (queue, meta) = (keys.conv_queue(&group.id), keys.meta(&group.id));
    let outbox = keys.outbox(&group.id);
    // Meanwhile, over and over in one atomic step: a queue holding entries,
    // in its stream or in the conversation's outbox (whose events a drain
    // forwards), must be registered.
    let stop = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn({
        let (stop, mut con) = (stop.clone(), tier.redis().await);
        let (index, queue, outbox) = (keys.queue_index(), queue.clone(), outbox.clone());
        async move {
            let (mut holding, mut stranded) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let (left, registered): (u64, Option<f64>) = redis::Script::new(
                    "return {redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[3]), \
                     redis.call('ZSCORE', KEYS[2], ARGV[1])}",
                )
                .key(&queue)
                .key(&index)
                .key(&outbox)
                .arg(&queue)
                .invoke_async(&mut con)
                .await
                .expect("the queue's state");
                if left > 0 {
                    holding += 1;
                    stranded += u64::from(registered.is_none());
                }
            }
            (holding, stranded)
        }
    });
    let mut bob_client = node.user(bob).await;
    for m in &sent {
        deliver(&mut bob_client, &[*m]).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (holding, stranded) = watch.await.expect("watcher");
    assert!(holding > 0, "the queue was seen holding entries");
    assert_eq!(
        stranded, 0,
        "of {holding} looks at a queue holding entries, {stranded} found it unregistered"
    );
    for m in &sent {
        eventually("every delivery reaches Cassandra", || async {
            delivered_in_scylla(&tier.scylla, *m)
                .await
                .is_ok_and(|d| d.len() == 1)
        })
        .await;
    }
    let state = || async {
        let mut con = tier.redis().await;
        let registered: Option<f64> = redis::cmd("ZSCORE")
            .arg(keys.queue_index())
            .arg(&queue)
            .query_async(&mut con)
            .await
            .expect("ZSCORE");
        let mark: Option<String> = redis::cmd("HGET")
            .arg(&meta)
            .arg("q")
            .query_async(&mut con)
            .await
            .expect("HGET");
        let left: u64 = redis::cmd("XLEN")
            .arg(&queue)
            .query_async(&mut con)
            .await
            .expect("XLEN");
        (registered.is_some(), mark.is_some(), left)
    };
    eventually("the drained queue is forgotten, with its mark", || async {
        state().await == (false, false, 0)
    })
    .await;
    // Only a registered queue is drained: the next write reaching
    // Cassandra is its registration (a stale mark would strand it).
    let last = group.send(&mut backend, alice).await;
    deliver(&mut bob_client, &[last]).await;
    eventually("the next write reaches Cassandra", || async {
        delivered_in_scylla(&tier.scylla, last)
            .await
            .is_ok_and(|d| d.len() == 1)
    })
    .await;
    eventually("and its queue is forgotten again", || async {
        state().await == (false, false, 0)
    })
    .await;
}
