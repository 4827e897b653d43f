//! Unit tests of the embedded store: rows written, formats migrated.

use super::*;
use redb::ReadableTableMetadata as _;

const STATE_TABLES: [Def; 11] = [
    CONVS,
    MEMBERS,
    USER_CONVS,
    MESSAGES,
    CONV_MSGS,
    SENDER_MSGS,
    RUNS,
    WATERMARKS,
    READ_HIST,
    PUBLIC_HIST,
    PRIVACY,
];

fn state_rows(store: &EmbeddedStore) -> u64 {
    let txn = store.db.begin_read().expect("read");
    STATE_TABLES
        .iter()
        .map(|def| txn.open_table(*def).expect("table").len().expect("len"))
        .sum()
}

/// Rows in the event log, and their total size in bytes.
fn event_rows(store: &EmbeddedStore) -> (u64, usize) {
    let txn = store.db.begin_read().expect("read");
    let events = txn.open_table(EVENTS).expect("events");
    let bytes = events
        .iter()
        .expect("iter")
        .map(|e| e.expect("row").1.value().len())
        .sum();
    (events.len().expect("len"), bytes)
}

fn options() -> EmbeddedOptions {
    EmbeddedOptions {
        group_window: Duration::from_millis(50),
        log_retention: 1_000_000,
        subscriber_buffer: 16,
        cache_bytes: 16 << 20,
        indexed_above: INDEXED_ABOVE,
    }
}

/// A new message of `c` at `seq` from `sender`.
fn message(c: ConversationId, seq: Seq, sender: UserId, sent_at: Millis) -> Message {
    Message {
        id: Uuid::now_v7(),
        conversation: c,
        seq,
        sender,
        sent_at,
    }
}

async fn conversation_with(
    store: &EmbeddedStore,
    n: u64,
) -> (ConversationId, UserId, UserId, MessageId) {
    let (c, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store
        .create_conversation(c, vec![a, b])
        .await
        .expect("create");
    let mut last = Uuid::nil();
    let msgs: Vec<Message> = (1..=n)
        .map(|seq| {
            last = Uuid::now_v7();
            Message {
                id: last,
                conversation: c,
                seq,
                sender: a,
                sent_at: 1,
            }
        })
        .collect();
    for chunk in msgs.chunks(1000) {
        store
            .register_messages(chunk.to_vec())
            .await
            .expect("register");
    }
    (c, a, b, last)
}

/// The seed design's watermark: a read costs the same number of stored
/// rows whether it covers one message or thousands.
#[tokio::test]
async fn mark_read_up_to_writes_the_same_rows_for_1_or_5000_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let mut deltas = Vec::new();
    let mut events = Vec::new();
    for n in [1, 5000] {
        let (c, _, reader, last) = conversation_with(&store, n).await;
        let before = state_rows(&store);
        let (events_before, _) = event_rows(&store);
        let r = store
            .mark_read_up_to(reader, c, last, 10)
            .await
            .expect("read");
        assert_eq!(r.read_up_to, n);
        deltas.push(state_rows(&store) - before);
        events.push(event_rows(&store).0 - events_before);
    }
    assert_eq!(deltas[0], deltas[1], "rows written: {deltas:?}");
    assert_eq!(
        deltas[0], 3,
        "watermark, history entry, public history entry"
    );
    assert_eq!(
        events,
        vec![2, 2],
        "the reader's watermark and the sender's receipts, however many messages"
    );
    store.shutdown().await;
}

/// A read accepted earlier but applied after a delivery must not be
/// recorded as earlier than that delivery.
#[tokio::test]
async fn recorded_times_follow_commit_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, a, b, m) = conversation_with(&store, 1).await;
    let d = store
        .mark_delivered(b, Named::ids([m]), 1_000)
        .await
        .expect("deliver");
    assert_eq!(d[0].delivered_at, Some(1_000));
    store.mark_read_up_to(b, c, m, 900).await.expect("read");
    let s = store.receipts(a, c, vec![m], true).await.expect("receipts");
    let r = s[0].recipients[0];
    assert_eq!((r.delivered_at, r.read_at), (Some(1_000), Some(1_000)));
    store.shutdown().await;
}

#[tokio::test]
async fn reopening_keeps_the_epoch_and_the_log_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, _, reader, last) = conversation_with(&store, 3).await;
    store
        .mark_read_up_to(reader, c, last, 10)
        .await
        .expect("read");
    let Replay::Events { head, .. } = store
        .replay(reader, ReplayFrom::Live, 10)
        .await
        .expect("replay")
    else {
        panic!("no cursor, no reset");
    };
    store.shutdown().await;
    drop(store);
    let store = EmbeddedStore::open(dir.path(), options()).expect("reopen");
    let replay = store
        .replay(
            reader,
            ReplayFrom::Cursor(Cursor {
                epoch: head.epoch,
                offset: 0,
            }),
            10,
        )
        .await
        .expect("replay");
    let Replay::Events {
        events,
        head: again,
    } = replay
    else {
        panic!("same epoch must replay, not reset");
    };
    assert_eq!(again, head);
    assert!(
        events
            .iter()
            .any(|e| matches!(e.body, EventBody::Position(p) if p.read_up_to == 3))
    );
    store.shutdown().await;
}
/// A data directory written with the first delivery layout opens with
/// its deliveries intact, moved to the new table.
#[tokio::test]
async fn deliveries_in_the_first_layout_are_moved_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, _, b, m) = conversation_with(&store, 2).await;
    store
        .mark_delivered(b, Named::ids([m]), 1_000)
        .await
        .expect("deliver");
    store.shutdown().await;
    drop(store);
    // Rewrite the delivery as the first layout kept it.
    {
        let db = Database::create(dir.path().join("receipts.redb")).expect("db");
        let txn = db.begin_write().expect("write");
        {
            let mut runs = txn.open_table(RUNS).expect("runs");
            let k = {
                let (k, _) = runs.first().expect("read").expect("one delivery");
                k.value().to_vec()
            };
            runs.remove(k.as_slice()).expect("remove");
            let mut old = txn.open_table(DELIVERED_V1).expect("old");
            old.insert(k2(&m, &b).as_slice(), 1_000i64.to_be_bytes().as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let store = EmbeddedStore::open(dir.path(), options()).expect("reopen");
    let states = store.receipts(b, c, vec![m], true).await.expect("receipts");
    assert_eq!(states[0].recipients[0].delivered_at, Some(1_000));
    let txn = store.db.begin_read().expect("read");
    for old in [DELIVERED_V1, DELIVERED_V2] {
        assert!(txn.open_table(old).is_err(), "the old tables are dropped");
    }
    drop(txn);
    store.shutdown().await;
}

/// Reading facts by range scans (messages close together) and by point
/// reads (messages far apart) gives the same states.
#[tokio::test]
async fn dense_and_sparse_message_sets_get_the_same_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, _, b, _) = conversation_with(&store, 100).await;
    let ids: Vec<MessageId> = store
        .read(move |t| t.messages_between(&c, 1, 100))
        .await
        .expect("messages")
        .into_iter()
        .map(|m| m.id)
        .collect();
    // Delivered: every third message; read up to 40 at t=2000, then 70 at t=3000.
    let delivered: Vec<MessageId> = ids.iter().step_by(3).copied().collect();
    store
        .mark_delivered(b, Named::ids(delivered), 1_000)
        .await
        .expect("deliver");
    store
        .mark_read_up_to(b, c, ids[39], 2_000)
        .await
        .expect("read");
    store
        .mark_read_up_to(b, c, ids[69], 3_000)
        .await
        .expect("read");
    let dense: Vec<MessageId> = ids[30..45].to_vec();
    let sparse = vec![ids[0], ids[38], ids[40], ids[69], ids[70], ids[99]];
    for set in [dense, sparse] {
        let together = store.receipts(b, c, set.clone(), true).await.expect("all");
        for (i, id) in set.iter().enumerate() {
            let alone = store.receipts(b, c, vec![*id], true).await.expect("one");
            assert_eq!(together[i], alone[0], "message {id}");
        }
        for s in &together {
            let r = &s.recipients[0];
            let seq = s.message.seq;
            let delivered = (seq - 1) % 3 == 0;
            let read_at = match seq {
                ..=40 => Some(2_000),
                41..=70 => Some(3_000),
                _ => None,
            };
            assert_eq!(r.read_at, read_at, "seq {seq}");
            let delivered_at = match (delivered, read_at) {
                (true, _) => Some(1_000),
                (false, r) => r,
            };
            assert_eq!(r.delivered_at, delivered_at, "seq {seq}");
        }
    }
    store.shutdown().await;
}

fn run_rows(store: &EmbeddedStore) -> Vec<Run> {
    let txn = store.db.begin_read().expect("read");
    let runs = txn.open_table(RUNS).expect("runs");
    runs.iter()
        .expect("iter")
        .map(|e| {
            let (k, v) = e.expect("row");
            run_from(k.value(), v.value())
        })
        .collect()
}

/// A MarkDelivered costs one stored row whether it covers one message or
/// ten thousand, and messages of the caller's own in between do not
/// split it.
#[tokio::test]
async fn mark_delivered_writes_the_same_rows_for_1_or_10000_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let mut deltas = Vec::new();
    let mut events = Vec::new();
    for n in [1u64, 10_000] {
        let (c, a, b, _) = conversation_with(&store, 0).await;
        // a sends every message but each tenth, which b sends.
        let msgs: Vec<Message> = (1..=n)
            .map(|seq| message(c, seq, if seq % 10 == 0 { b } else { a }, 1))
            .collect();
        for chunk in msgs.chunks(1000) {
            store
                .register_messages(chunk.to_vec())
                .await
                .expect("register");
        }
        let before = state_rows(&store);
        let (events_before, bytes_before) = event_rows(&store);
        let all: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
        let results = store
            .mark_delivered(b, Named::ids(all), 1_000)
            .await
            .expect("deliver");
        let recorded = results
            .iter()
            .filter(|r| r.outcome == DeliveryOutcome::Recorded)
            .count() as u64;
        assert_eq!(recorded, n - n / 10);
        deltas.push(state_rows(&store) - before);
        let (events_after, bytes_after) = event_rows(&store);
        events.push((events_after - events_before, bytes_after - bytes_before));
        let states = store
            .receipts(a, c, vec![msgs[0].id, msgs[msgs.len() - 1].id], true)
            .await
            .expect("receipts");
        assert!(
            states
                .iter()
                .all(|s| s.message.sender == b || s.recipients[0].delivered_at == Some(1_000))
        );
    }
    assert_eq!(deltas, vec![1, 1], "rows written for 1 and 10,000 messages");
    // One event for the sender either way: a single message, or one range
    // over its 9,000 (b's own messages in between do not split it).
    assert_eq!(
        events.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![1, 1],
        "events logged for 1 and 10,000 messages: {events:?}"
    );
    assert!(
        events[1].1 <= 2 * events[0].1,
        "the event for 10,000 messages is no larger than a few single ones: {events:?}"
    );
    store.shutdown().await;
}

/// A message registered at a seq inside a run written before it existed
/// is not delivered by that run; the messages around it stay delivered.
#[tokio::test]
async fn a_message_registered_late_inside_a_run_is_not_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, a, b, _) = conversation_with(&store, 0).await;
    let msg = |seq| message(c, seq, a, 1);
    let early: Vec<Message> = [1, 2, 4, 5].into_iter().map(msg).collect();
    store
        .register_messages(early.clone())
        .await
        .expect("register");
    store
        .mark_delivered(b, Named::ids(early.iter().map(|m| m.id)), 1_000)
        .await
        .expect("deliver");
    assert_eq!(run_rows(&store).len(), 1, "1..=5 is one run");
    let late = msg(3);
    store
        .register_messages(vec![late])
        .await
        .expect("register late");
    let ids: Vec<MessageId> = early.iter().map(|m| m.id).chain([late.id]).collect();
    let states = store.receipts(b, c, ids, true).await.expect("receipts");
    for s in &states {
        let expected = (s.message.seq != 3).then_some(1_000);
        assert_eq!(
            s.recipients[0].delivered_at, expected,
            "seq {}",
            s.message.seq
        );
    }
    // Delivering it now joins nothing (another time) and overlaps nothing.
    let r = store
        .mark_delivered(b, Named::ids([late.id]), 2_000)
        .await
        .expect("deliver late");
    assert_eq!(r[0].outcome, DeliveryOutcome::Recorded);
    let runs = run_rows(&store);
    assert_eq!(runs.len(), 3, "{runs:?}");
    for w in runs.windows(2) {
        assert!(w[0].last < w[1].first, "{runs:?}");
    }
    store.shutdown().await;
}

/// A data directory with one delivery row per message per recipient opens
/// with the same states, its deliveries folded into runs.
#[tokio::test]
async fn deliveries_one_row_per_message_are_folded_into_runs_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, a, b, _) = conversation_with(&store, 0).await;
    // seqs 1..=9 from a, but 5 from b (b's own message).
    let msgs: Vec<Message> = (1..=9)
        .map(|seq| message(c, seq, if seq == 5 { b } else { a }, 1))
        .collect();
    store
        .register_messages(msgs.clone())
        .await
        .expect("register");
    store.shutdown().await;
    drop(store);
    // b's deliveries as the second layout kept them: 1..=4 and 6 at one
    // time, 7 at another, 9 at the first again (8 undelivered).
    let rows = [
        (1, 10),
        (2, 10),
        (3, 10),
        (4, 10),
        (6, 10),
        (7, 20),
        (9, 10),
    ];
    {
        let db = Database::create(dir.path().join("receipts.redb")).expect("db");
        let txn = db.begin_write().expect("write");
        {
            let mut old = txn.open_table(DELIVERED_V2).expect("old");
            for (seq, at) in rows {
                old.insert(
                    k3(&c, &b, seq).as_slice(),
                    (at as i64).to_be_bytes().as_slice(),
                )
                .expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    let store = EmbeddedStore::open(dir.path(), options()).expect("reopen");
    let runs: Vec<(Seq, Seq, Millis)> = run_rows(&store)
        .iter()
        .map(|r| (r.first, r.last, r.at))
        .collect();
    assert_eq!(runs, vec![(1, 6, 10), (7, 7, 20), (9, 9, 10)]);
    let ids: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
    let states = store.receipts(a, c, ids, true).await.expect("receipts");
    for s in states.iter().filter(|s| s.message.sender == a) {
        let expected = rows
            .iter()
            .find(|r| r.0 == s.message.seq)
            .map(|r| r.1 as Millis);
        assert_eq!(
            s.recipients[0].delivered_at, expected,
            "seq {}",
            s.message.seq
        );
    }
    let txn = store.db.begin_read().expect("read");
    assert!(
        txn.open_table(DELIVERED_V2).is_err(),
        "the old table is dropped"
    );
    drop(txn);
    store.shutdown().await;
}

/// Every layout of `conversation_messages` rows reads back as whole
/// messages: one message written before rows carried the sent time (looked
/// up by id), one message, and a run of a registered batch, read from its
/// start or from inside it.
#[tokio::test]
async fn messages_by_seq_read_every_row_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, a, b, _) = conversation_with(&store, 0).await;
    let msgs: Vec<Message> = (1..=6)
        .map(|seq| message(c, seq, if seq == 6 { b } else { a }, 100 + seq as Millis))
        .collect();
    // 1 and 2 one by one, 3..=5 in one call (one run), 6 from another sender.
    for batch in [&msgs[0..1], &msgs[1..2], &msgs[2..6]] {
        store
            .register_messages(batch.to_vec())
            .await
            .expect("register");
    }
    let first = msgs[0];
    store
        .write(move |ctx| {
            let old = k2(&first.id, &first.sender);
            put(&mut ctx.t.conv_msgs, &k_seq(&c, 1), &old)
        })
        .await
        .expect("rewrite as the old row");
    let (rows, read, inside, at4, last, unread) = store
        .read(move |t| {
            let rows = t.conv_msgs.len().map_err(storage)?;
            Ok((
                rows,
                t.messages_between(&c, 1, 6)?,
                t.messages_between(&c, 4, 4)?,
                t.message_at(&c, 4)?,
                t.last_seq(&c)?,
                t.unread(&c, &b, 3, &Membership::joined(1))?,
            ))
        })
        .await
        .expect("messages");
    assert_eq!(rows, 4, "1, 2, the run 3..=5, and 6");
    assert_eq!(read, msgs, "whole messages, in seq order");
    assert_eq!(inside, vec![msgs[3]]);
    assert_eq!(at4, Some(msgs[3].id));
    assert_eq!(last, 6);
    assert_eq!(unread, 2, "4 and 5 from a; 6 is b's own");
    store.shutdown().await;
}

/// A registration call of consecutive messages from one sender writes one
/// row by seq and one by sender, however many messages it holds; a message
/// registered later in a gap below them is found in its place.
#[tokio::test]
async fn a_registered_batch_is_one_row_by_seq_and_one_by_sender() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, a, b, _) = conversation_with(&store, 0).await;
    let rows = |store: &EmbeddedStore| {
        let txn = store.db.begin_read().expect("read");
        [CONV_MSGS, SENDER_MSGS, MESSAGES]
            .map(|def| txn.open_table(def).expect("table").len().expect("len"))
    };
    // 2..=101 from a in one call; seq 1 stays free.
    let batch: Vec<Message> = (2..=101)
        .map(|seq| message(c, seq, a, seq as Millis))
        .collect();
    store
        .register_messages(batch.clone())
        .await
        .expect("register");
    assert_eq!(rows(&store), [1, 1, 100]);
    let late = message(c, 1, b, 1);
    store
        .register_messages(vec![late])
        .await
        .expect("register late");
    assert_eq!(rows(&store), [2, 2, 101]);
    let read = store
        .read(move |t| t.messages_between(&c, 1, 101))
        .await
        .expect("messages");
    let mut all = vec![late];
    all.extend(batch.iter().copied());
    assert_eq!(read, all);
    // Registering the batch again changes nothing; a different message at
    // a seq inside the run is refused.
    assert_eq!(
        store.register_messages(batch.clone()).await.expect("again"),
        0
    );
    let clash = message(c, 50, a, 50);
    assert!(store.register_messages(vec![clash]).await.is_err());
    assert_eq!(rows(&store), [2, 2, 101]);
    // The snapshot of a sender lists its recent messages from the run.
    let snapshot = store.read(move |t| t.snapshot(&a)).await.expect("snapshot");
    assert_eq!(snapshot.recent_messages.len(), 100);
    assert_eq!(snapshot.recent_messages[0].message, batch[99]);
    store.shutdown().await;
}

/// Whether an id is new is decided two ways: above the highest registered
/// id (no lookup) or by a lookup. Both find the same answers, before and
/// after a reopen: new ids are registered, the same message again changes
/// nothing, a different message under a known id is refused, deliveries
/// find it.
#[tokio::test]
async fn an_id_is_judged_the_same_above_and_below_the_highest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let with_id = |id: u128, seq: Seq| Message {
        id: Uuid::from_u128(id),
        conversation: c,
        seq,
        sender: a,
        sent_at: 7,
    };
    let (high, low) = (with_id(u128::MAX - 1, 1), with_id(5, 2));
    let moved = Message { seq: 3, ..low };
    {
        let store = EmbeddedStore::open(dir.path(), options()).expect("open");
        store
            .create_conversation(c, vec![a, b])
            .await
            .expect("create");
        assert_eq!(store.register_messages(vec![high]).await.expect("high"), 1);
        // Below the highest id: looked up, not there, registered.
        assert_eq!(store.register_messages(vec![low]).await.expect("low"), 1);
        // The same message is no change, another is refused.
        assert_eq!(store.register_messages(vec![low]).await.expect("same"), 0);
        let refused = store.register_messages(vec![moved]).await;
        assert!(
            matches!(refused, Err(ServiceError::AlreadyExists { .. })),
            "{refused:?}"
        );
        let d = store
            .mark_delivered(b, Named::ids([low.id]), 10)
            .await
            .expect("deliver");
        assert_eq!(d[0].outcome, DeliveryOutcome::Recorded);
        store.shutdown().await;
    }
    // Reopened: the same answers from what was committed.
    let store = EmbeddedStore::open(dir.path(), options()).expect("reopen");
    assert_eq!(store.register_messages(vec![low]).await.expect("same"), 0);
    let refused = store.register_messages(vec![moved]).await;
    assert!(
        matches!(refused, Err(ServiceError::AlreadyExists { .. })),
        "{refused:?}"
    );
    let d = store
        .mark_delivered(b, Named::ids([low.id, high.id]), 20)
        .await
        .expect("deliver");
    assert_eq!(d[0].outcome, DeliveryOutcome::AlreadyDelivered);
    assert_eq!(d[0].delivered_at, Some(10));
    assert_eq!(d[1].outcome, DeliveryOutcome::Recorded);
    // An id never registered, above and below the highest, is not found.
    for id in [Uuid::max(), Uuid::from_u128(6)] {
        let missing = store.mark_delivered(b, Named::ids([id]), 30).await;
        assert!(
            matches!(missing, Err(ServiceError::NotFound { .. })),
            "{missing:?}"
        );
    }
    store.shutdown().await;
}

/// A small deterministic generator for the random sequences below.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Every main-timeline message's counts from the counting index equal the
/// counts from every member's facts, for every viewer who ever was a member.
fn assert_counts_match(store: &EmbeddedStore, c: &ConversationId, users: &[UserId], at: &str) {
    let txn = store.db.begin_read().expect("read");
    let run = || -> StoreResult<()> {
        let t = open_tables!(txn);
        let last = t.last_seq(c)?;
        let msgs = t.messages_between(c, 1, last)?;
        let threads = t.threads_between(c, 1, last)?;
        let main: Vec<Message> = msgs
            .into_iter()
            .filter(|m| !threads.contains_key(&m.seq))
            .collect();
        let ctx = t.context(c)?;
        for v in users {
            let indexed = t.counted_states(c, &main, |_| *v, &mut Vec::new())?;
            let full = t.states(&ctx, &main, |_| *v, false)?;
            for (a, b) in indexed.iter().zip(&full) {
                assert_eq!(
                    a.aggregate, b.aggregate,
                    "{at}: seq {} sent by {} seen by {v}",
                    a.message.seq, a.message.sender
                );
            }
            assert_eq!(indexed.len(), full.len());
        }
        Ok(())
    };
    run().expect("count");
}

/// The counting index (`counts.rs`) against a scan of every member, after
/// each step of random sequences of every write that moves it: appended,
/// late and thread registrations, deliveries, reads in both timelines,
/// privacy toggles, members joining, leaving and joining again, a direct
/// chat becoming a group; then once more after the index is dropped and
/// built again at open.
#[tokio::test]
async fn counts_from_the_index_equal_a_scan_of_every_member() {
    for seed in 1..=40u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        // Windows close at once: their summaries keep completion times,
        // which the checks then read.
        let options = EmbeddedOptions {
            group_window: Duration::from_millis(1),
            indexed_above: 2,
            ..options()
        };
        let mut store = EmbeddedStore::open(dir.path(), options.clone()).expect("open");
        let mut rng = Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let users: Vec<UserId> = (0..7).map(|_| Uuid::now_v7()).collect();
        let c = Uuid::now_v7();
        // Odd seeds start as a direct chat, which keeps no index until it
        // has a third member (in this test).
        let first = if seed % 2 == 1 { 2 } else { 4 };
        store
            .create_conversation(c, users[..first].to_vec())
            .await
            .expect("create");
        let mut current: Vec<UserId> = users[..first].to_vec();
        let mut main: Vec<Message> = Vec::new();
        let mut all: Vec<Message> = Vec::new();
        let mut gaps: Vec<Seq> = Vec::new();
        let mut last: Seq = 0;
        for step in 0..70 {
            let pick =
                |rng: &mut Xorshift, from: &[UserId]| from[rng.below(from.len() as u64) as usize];
            match rng.below(12) {
                0..=2 => {
                    // One to three messages in one call: appended, late
                    // (at a seq left free) or in a thread.
                    let mut batch = Vec::new();
                    let mut roots = Vec::new();
                    for _ in 0..=rng.below(3) {
                        let sender = pick(&mut rng, &current);
                        let late = rng.below(4) == 0 && !gaps.is_empty();
                        let seq = if late {
                            gaps.remove(rng.below(gaps.len() as u64) as usize)
                        } else {
                            if rng.below(3) == 0 {
                                gaps.push(last + 1);
                                last += 1;
                            }
                            last += 1;
                            last
                        };
                        batch.push(message(c, seq, sender, 1));
                        roots.push(
                            main.iter()
                                .filter(|r| r.seq < seq)
                                .nth(rng.below(8) as usize)
                                .filter(|_| rng.below(4) == 0)
                                .map(|r| r.id),
                        );
                    }
                    if store
                        .register_in_threads(batch.clone(), roots.clone())
                        .await
                        .is_ok()
                    {
                        for (m, root) in batch.into_iter().zip(roots) {
                            if root.is_none() {
                                main.push(m);
                            }
                            all.push(m);
                        }
                    }
                }
                3..=5 if !all.is_empty() => {
                    let u = pick(&mut rng, &users);
                    let n = 1 + rng.below(4) as usize;
                    let start = rng.below(all.len() as u64) as usize;
                    let ids: Vec<MessageId> =
                        all.iter().skip(start).take(n).map(|m| m.id).collect();
                    let _ = store.mark_delivered(u, Named::ids(ids), 10 + step).await;
                }
                6 | 7 if !all.is_empty() => {
                    let u = pick(&mut rng, &users);
                    let m = all[rng.below(all.len() as u64) as usize];
                    let _ = store.mark_read_up_to(u, c, m.id, 10 + step).await;
                }
                8 => {
                    let u = pick(&mut rng, &users);
                    let on = rng.below(2) == 0;
                    store.set_sharing(u, on).await.expect("sharing");
                }
                9 => {
                    let u = pick(&mut rng, &users);
                    let from = 1 + rng.below(last + 1);
                    let ch = vec![MemberChange {
                        user: u,
                        from_seq: from,
                    }];
                    if store.add_members(c, ch).await.is_ok() && !current.contains(&u) {
                        current.push(u);
                    }
                }
                10 if current.len() > 2 => {
                    // From a seq that may already be registered: the
                    // recipients of those messages change.
                    let u = pick(&mut rng, &current);
                    let ch = vec![MemberChange {
                        user: u,
                        from_seq: 1 + rng.below(last + 1),
                    }];
                    if store.remove_members(c, ch).await.is_ok() {
                        current.retain(|x| *x != u);
                    }
                }
                11 => {
                    let u = pick(&mut rng, &current);
                    let _ = store
                        .mark_conversations_read(u, vec![c], Vec::new(), 10 + step)
                        .await;
                }
                _ => {}
            }
            assert_counts_match(&store, &c, &users, &format!("seed {seed} step {step}"));
        }
        // A data directory from before the index: built at open, the same.
        {
            let txn = store.db.begin_write().expect("write");
            for def in [COUNT_INDEX, PREFIXES, APART] {
                txn.delete_table(def).expect("drop");
            }
            txn.open_table(META)
                .expect("meta")
                .remove(b"count_index_v1".as_slice())
                .expect("marker");
            txn.commit().expect("commit");
        }
        store.shutdown().await;
        drop(store);
        store = EmbeddedStore::open(dir.path(), options).expect("reopen");
        assert_counts_match(&store, &c, &users, &format!("seed {seed} rebuilt"));
        store.shutdown().await;
    }
}

/// A delivery's walk reads 64 seqs at a time and at most 1,024: a member
/// whose runs are split by thread messages it has not marked walks 1,024
/// seqs, is gapped for what it has past them, and its next delivery walks
/// on. The counts stay exact throughout.
#[tokio::test]
async fn a_walk_stops_at_its_cap_and_the_next_delivery_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedOptions {
        indexed_above: 2,
        ..options()
    };
    let store = EmbeddedStore::open(dir.path(), options).expect("open");
    let (c, a, b, d) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let users = [a, b, d];
    store
        .create_conversation(c, users.to_vec())
        .await
        .expect("create");
    // Odd seqs in the main timeline, even ones replies in the thread of 1.
    let msgs: Vec<Message> = (1..=1_500).map(|seq| message(c, seq, a, 1)).collect();
    let roots: Vec<Option<MessageId>> = msgs
        .iter()
        .map(|m| (m.seq % 2 == 0).then_some(msgs[0].id))
        .collect();
    for (chunk, roots) in msgs.chunks(500).zip(roots.chunks(500)) {
        store
            .register_in_threads(chunk.to_vec(), roots.to_vec())
            .await
            .expect("register");
    }
    let (main, replies): (Vec<Message>, Vec<Message>) = msgs.iter().partition(|m| m.seq % 2 == 1);
    let index_of_b = || {
        let txn = store.db.begin_read().expect("read");
        let read = || -> StoreResult<_> {
            let t = open_tables!(txn);
            Ok((t.scores(&c, &b)?.expect("simple"), t.apart(&c, &b)?))
        };
        read().expect("index")
    };
    store
        .mark_delivered(b, Named::ids(main.iter().map(|m| m.id)), 10)
        .await
        .expect("deliver main");
    let (scores, apart) = index_of_b();
    assert!(
        scores.delivered >= 1_024 && scores.delivered < 1_499,
        "{scores:?}"
    );
    assert_eq!(apart, Some(counts::Apart::Gapped(1_499)));
    assert_counts_match(&store, &c, &users, "after the main timeline");
    store
        .mark_delivered(b, Named::ids(replies.iter().map(|m| m.id)), 20)
        .await
        .expect("deliver replies");
    let (scores, apart) = index_of_b();
    assert_eq!((scores.delivered, apart), (1_500, None));
    assert_counts_match(&store, &c, &users, "after the replies");
    store.shutdown().await;
}
