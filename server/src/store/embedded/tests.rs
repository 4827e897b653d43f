//! Unit tests of the embedded store: rows written, formats migrated.

use super::*;
use migrate::{DELIVERED_V1, DELIVERED_V2, REDB_FILE, REDB_MIGRATED, def};
use redb::{ReadableDatabase as _, ReadableTable as _};

/// Every table but the event log, its index, open windows and counters.
fn state_tables() -> impl Iterator<Item = Tb> {
    Tb::ALL
        .into_iter()
        .filter(|t| !matches!(t, Tb::Meta | Tb::Events | Tb::EventIndex | Tb::Pending))
}

fn state_rows(store: &EmbeddedStore) -> u64 {
    let t = store.db.read();
    state_tables().map(|tb| t.all(tb).count() as u64).sum()
}

/// Rows in the event log, and their total size in bytes.
fn event_rows(store: &EmbeddedStore) -> (u64, usize) {
    let t = store.db.read();
    let rows: Vec<Row> = t.all(Tb::Events).map(|e| e.expect("row")).collect();
    (rows.len() as u64, rows.iter().map(|(_, v)| v.len()).sum())
}

/// Turns the data directory of a stopped store into the earlier format:
/// every row in a `receipts.redb` file, and no fjall directory.
fn make_redb_directory(dir: &Path) {
    {
        let engine = Engine::open(&dir.join(DATA_DIR), 1 << 20).expect("fjall");
        let t = engine.read();
        let db = redb::Database::create(dir.join(REDB_FILE)).expect("redb");
        let txn = db.begin_write().expect("write");
        for tb in Tb::ALL {
            let mut table = txn.open_table(def(tb)).expect("table");
            for e in t.all(tb) {
                let (k, v) = e.expect("row");
                table.insert(&*k, &*v).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    std::fs::remove_dir_all(dir.join(DATA_DIR)).expect("remove fjall");
}

/// Runs `f` on a write transaction of the redb file in `dir`.
fn in_redb(dir: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(dir.join(REDB_FILE)).expect("redb");
    let txn = db.begin_write().expect("write");
    f(&txn);
    txn.commit().expect("commit");
}

fn options() -> EmbeddedOptions {
    EmbeddedOptions {
        group_window: Duration::from_millis(50),
        log_retention: 1_000_000,
        subscriber_buffer: 16,
        cache_bytes: 16 << 20,
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
        .mark_delivered(b, vec![m], 1_000)
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
            .any(|e| matches!(e.body, EventBody::Watermark { read_up_to: 3, .. }))
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
        .mark_delivered(b, vec![m], 1_000)
        .await
        .expect("deliver");
    store.shutdown().await;
    drop(store);
    // Rewrite the delivery as the first layout kept it, in a redb file.
    make_redb_directory(dir.path());
    in_redb(dir.path(), |txn| {
        let mut runs = txn.open_table(def(Tb::Runs)).expect("runs");
        let k = {
            let (k, _) = runs.first().expect("read").expect("one delivery");
            k.value().to_vec()
        };
        runs.remove(k.as_slice()).expect("remove");
        let mut old = txn.open_table(DELIVERED_V1).expect("old");
        old.insert(k2(&m, &b).as_slice(), 1_000i64.to_be_bytes().as_slice())
            .expect("insert");
    });
    let store = EmbeddedStore::open(dir.path(), options()).expect("reopen");
    let states = store.receipts(b, c, vec![m], true).await.expect("receipts");
    assert_eq!(states[0].recipients[0].delivered_at, Some(1_000));
    let db = redb::Database::open(dir.path().join(REDB_MIGRATED)).expect("kept");
    let txn = db.begin_read().expect("read");
    for old in [DELIVERED_V1, DELIVERED_V2] {
        assert!(txn.open_table(old).is_err(), "the old tables are dropped");
    }
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
        .mark_delivered(b, delivered, 1_000)
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
    store
        .db
        .read()
        .all(Tb::Runs)
        .map(|e| {
            let (k, v) = e.expect("row");
            run_from(&k, &v)
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
        let results = store.mark_delivered(b, all, 1_000).await.expect("deliver");
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
        .mark_delivered(b, early.iter().map(|m| m.id).collect(), 1_000)
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
        .mark_delivered(b, vec![late.id], 2_000)
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
    make_redb_directory(dir.path());
    in_redb(dir.path(), |txn| {
        let mut old = txn.open_table(DELIVERED_V2).expect("old");
        for (seq, at) in rows {
            old.insert(
                k3(&c, &b, seq).as_slice(),
                (at as i64).to_be_bytes().as_slice(),
            )
            .expect("insert");
        }
    });
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
    let db = redb::Database::open(dir.path().join(REDB_MIGRATED)).expect("kept");
    let txn = db.begin_read().expect("read");
    assert!(
        txn.open_table(DELIVERED_V2).is_err(),
        "the old table is dropped"
    );
    store.shutdown().await;
}

/// `conversation_messages` rows written before they carried the sent time
/// still give whole messages (looked up by id).
#[tokio::test]
async fn messages_by_seq_read_rows_with_and_without_the_sent_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, a, _, _) = conversation_with(&store, 0).await;
    let msgs: Vec<Message> = (1..=2)
        .map(|seq| message(c, seq, a, 100 + seq as Millis))
        .collect();
    store
        .register_messages(msgs.clone())
        .await
        .expect("register");
    let first = msgs[0];
    store
        .write(move |ctx| {
            let old = k2(&first.id, &first.sender);
            ctx.t.put(Tb::ConvMsgs, &k_seq(&c, 1), &old)
        })
        .await
        .expect("rewrite as the old row");
    let read = store
        .read(move |t| t.messages_between(&c, 1, 2))
        .await
        .expect("messages");
    assert_eq!(
        read.iter().map(|m| m.sent_at).collect::<Vec<_>>(),
        vec![101, 102]
    );
    store.shutdown().await;
}

/// A data directory of the redb format opens with every fact, cursor and
/// counter it had, and the redb file is kept aside, renamed.
#[tokio::test]
async fn a_redb_data_directory_is_moved_to_fjall_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, a, b, last) = conversation_with(&store, 20).await;
    let ids: Vec<MessageId> = store
        .read(move |t| t.messages_between(&c, 1, 20))
        .await
        .expect("messages")
        .into_iter()
        .map(|m| m.id)
        .collect();
    store
        .mark_delivered(b, ids[..12].to_vec(), 1_000)
        .await
        .expect("deliver");
    store
        .mark_read_up_to(b, c, ids[4], 2_000)
        .await
        .expect("read");
    store.set_sharing(b, false).await.expect("privacy");
    let before = store
        .receipts(a, c, ids.clone(), true)
        .await
        .expect("receipts");
    let Replay::Events { head, .. } = store.replay(a, ReplayFrom::Live, 100).await.expect("head")
    else {
        panic!("live replay gives events");
    };
    let epoch = store.epoch;
    store.shutdown().await;
    drop(store);

    make_redb_directory(dir.path());
    let store = EmbeddedStore::open(dir.path(), options()).expect("migrate");
    assert!(
        dir.path().join(REDB_MIGRATED).exists(),
        "the redb file is kept"
    );
    assert!(!dir.path().join(REDB_FILE).exists());
    assert_eq!(store.epoch, epoch, "cursors stay valid");
    let after = store
        .receipts(a, c, ids.clone(), true)
        .await
        .expect("receipts");
    assert_eq!(format!("{before:?}"), format!("{after:?}"));
    assert!(!store.sharing(b).await.expect("privacy"));
    // The log continues where it was: a cursor from before replays the
    // events written after the move, and nothing it already had.
    store
        .mark_read_up_to(b, c, last, 3_000)
        .await
        .expect("read after the move");
    let Replay::Events { events, .. } = store
        .replay(a, ReplayFrom::Cursor(head), 100)
        .await
        .expect("replay")
    else {
        panic!("a cursor from before the move replays");
    };
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e.offset > head.offset), "{events:?}");
    store.shutdown().await;
}

/// If the redb file is still there after its rows were copied (a crash
/// before the rename), the next open only renames it: it never copies old
/// rows over newer writes.
#[tokio::test]
async fn a_redb_file_left_after_the_copy_is_not_copied_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let (c, _, b, last) = conversation_with(&store, 3).await;
    let first = store
        .read(move |t| t.messages_between(&c, 1, 1))
        .await
        .expect("messages")[0]
        .id;
    store
        .mark_read_up_to(b, c, first, 500)
        .await
        .expect("read before the move");
    store.shutdown().await;
    drop(store);
    make_redb_directory(dir.path());
    let store = EmbeddedStore::open(dir.path(), options()).expect("migrate");
    store
        .mark_read_up_to(b, c, last, 1_000)
        .await
        .expect("read");
    store.shutdown().await;
    drop(store);
    std::fs::rename(dir.path().join(REDB_MIGRATED), dir.path().join(REDB_FILE)).expect("put back");
    let store = EmbeddedStore::open(dir.path(), options()).expect("reopen");
    let counts = store.unread_counts(b, vec![c]).await.expect("unread");
    assert_eq!(
        counts[0].read_up_to, 3,
        "the read made after the move stays"
    );
    assert!(!dir.path().join(REDB_FILE).exists());
    store.shutdown().await;
}
