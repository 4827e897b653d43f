//! The persistent tier (`store::scylla`) against a real Cassandra or ScyllaDB.
//!
//! Needs `RECEIPTS_TEST_CASSANDRA=host:port`; fails (never skips) without it:
//!
//! ```sh
//! scripts/backends.sh install && scripts/backends.sh start-cassandra
//! eval "$(scripts/backends.sh env)"
//! cargo test -p receipts-tests --test scylla_persistence
//! ```
//!
//! Every test works in its own fresh keyspace, dropped at the end.

use receipts_server::domain::{
    MemberInterval, Membership, Message, ReadWatermark, Run, ThreadRoot,
};
use receipts_server::store::scylla::{
    ConversationImage, PersistOp, ScyllaOptions, ScyllaPersistence,
};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;
use uuid::Uuid;

const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A fresh keyspace on the test backend; dropped by [`TestKeyspace::drop_keyspace`].
struct TestKeyspace {
    store: ScyllaPersistence,
    raw: Session,
    name: String,
}

fn backend_address() -> String {
    let addr = std::env::var("RECEIPTS_TEST_CASSANDRA").unwrap_or_else(|_| {
        panic!(
            "RECEIPTS_TEST_CASSANDRA (host:port of a Cassandra or ScyllaDB node) is not set; \
             run `scripts/backends.sh start-cassandra && eval \"$(scripts/backends.sh env)\"`"
        )
    });
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|sock| TcpStream::connect_timeout(&sock, Duration::from_secs(5)).is_ok());
    assert!(
        reachable,
        "RECEIPTS_TEST_CASSANDRA={addr} is not reachable; start it with \
         `scripts/backends.sh start-cassandra`"
    );
    addr
}

impl TestKeyspace {
    async fn new() -> Self {
        let addr = backend_address();
        let name = format!("receipts_test_{}", Uuid::new_v4().simple());
        let options = ScyllaOptions {
            nodes: vec![addr.clone()],
            keyspace: name.clone(),
            retention: RETENTION,
            ..ScyllaOptions::default()
        };
        let store = ScyllaPersistence::connect(&options)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr} (keyspace {name}): {e}"));
        let raw = SessionBuilder::new()
            .known_node(&addr)
            .build()
            .await
            .expect("raw CQL session");
        Self { store, raw, name }
    }

    async fn drop_keyspace(self) {
        self.raw
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.name), ())
            .await
            .expect("drop test keyspace");
    }
}

/// Ids of one scenario, fresh per run so several runs share a keyspace.
#[derive(Clone, Copy)]
struct Ids {
    conversation: Uuid,
    alice: Uuid,
    bob: Uuid,
    carol: Uuid,
    messages: [Uuid; 5],
}

impl Ids {
    fn new() -> Self {
        Self {
            conversation: Uuid::new_v4(),
            alice: Uuid::new_v4(),
            bob: Uuid::new_v4(),
            carol: Uuid::new_v4(),
            messages: std::array::from_fn(|_| Uuid::new_v4()),
        }
    }

    fn message(&self, i: usize) -> Message {
        Message {
            id: self.messages[i],
            conversation: self.conversation,
            seq: i as u64 + 1,
            sender: self.alice,
            sent_at: 1_000 + i as i64 * 10,
        }
    }
}

fn membership(intervals: &[(u64, Option<u64>)]) -> Membership {
    Membership {
        intervals: intervals
            .iter()
            .map(|&(from, until)| MemberInterval { from, until })
            .collect(),
    }
}

/// A conversation's history as the hot tier would queue it, including
/// duplicates, and the state every order of applying it must converge to.
fn scenario(ids: Ids) -> (Vec<PersistOp>, ConversationImage) {
    let c = ids.conversation;
    let members_v1 = vec![
        (ids.alice, membership(&[(1, None)])),
        (ids.bob, membership(&[(1, None)])),
    ];
    let members_v2 = vec![
        (ids.alice, membership(&[(1, None)])),
        (ids.bob, membership(&[(1, None)])),
        (ids.carol, membership(&[(3, None)])),
    ];
    let members_v3 = vec![
        (ids.alice, membership(&[(1, None)])),
        (ids.bob, membership(&[(1, None)])),
        (ids.carol, membership(&[(3, Some(5))])),
    ];
    let wm = |seq, public_seq| ReadWatermark { seq, public_seq };
    let mut ops = vec![
        PersistOp::Conversation {
            conversation: c,
            members: members_v1,
            version: 1,
        },
        PersistOp::Conversation {
            conversation: c,
            members: members_v2,
            version: 2,
        },
        PersistOp::Conversation {
            conversation: c,
            members: members_v3.clone(),
            version: 3,
        },
    ];
    ops.extend((0..5).map(|i| PersistOp::Message(ids.message(i))));
    // Bob's first delivery of message 0 was at 1_200; later re-deliveries lose.
    for at in [1_300, 1_200, 1_250] {
        ops.push(PersistOp::Delivered {
            conversation: c,
            message: ids.messages[0],
            user: ids.bob,
            at,
        });
    }
    ops.push(PersistOp::Delivered {
        conversation: c,
        message: ids.messages[0],
        user: ids.carol,
        at: 1_400,
    });
    ops.push(PersistOp::Delivered {
        conversation: c,
        message: ids.messages[1],
        user: ids.bob,
        at: 1_500,
    });
    // Deliveries as runs: Bob's run over 2..=5 was split when a message was
    // registered late at 4 (removed, two pieces); Carol's stands.
    let bob_run = Run {
        first: 2,
        last: 5,
        at: 1_600,
    };
    for _ in 0..2 {
        ops.push(PersistOp::Run {
            conversation: c,
            user: ids.bob,
            run: bob_run,
        });
    }
    ops.push(PersistOp::RunRemoved {
        conversation: c,
        user: ids.bob,
        run: bob_run,
    });
    for (first, last) in [(2, 3), (5, 5)] {
        ops.push(PersistOp::Run {
            conversation: c,
            user: ids.bob,
            run: Run {
                first,
                last,
                ..bob_run
            },
        });
    }
    ops.push(PersistOp::Run {
        conversation: c,
        user: ids.carol,
        run: Run {
            first: 3,
            last: 4,
            at: 1_700,
        },
    });
    // Bob reads to 2 while sharing, to 4 while private, to 5 while sharing; the
    // read to 4 is also replayed with a later time (which must lose).
    let read = |seq, public_seq, public_advanced, at| PersistOp::Watermark {
        conversation: c,
        user: ids.bob,
        watermark: wm(seq, public_seq),
        public_advanced,
        at,
    };
    ops.push(read(2, 2, true, 2_000));
    ops.push(read(4, 2, false, 2_100));
    ops.push(read(4, 2, false, 2_900));
    ops.push(read(5, 5, true, 2_200));
    // Carol reads to 3 while private only.
    ops.push(PersistOp::Watermark {
        conversation: c,
        user: ids.carol,
        watermark: wm(3, 0),
        public_advanced: false,
        at: 2_300,
    });
    // Messages 4 and 5 are in the thread under message 2; Carol reads the
    // thread to 5 while sharing (twice, the later time losing): the thread's
    // position is kept under its scope, apart from her main one.
    let root = ThreadRoot {
        id: ids.messages[1],
        seq: 2,
    };
    for seq in [4, 5] {
        ops.push(PersistOp::ThreadMessage {
            conversation: c,
            seq,
            root,
        });
    }
    for at in [3_000, 3_500] {
        ops.push(PersistOp::Watermark {
            conversation: receipts_server::store::thread_scope(&c, 2),
            user: ids.carol,
            watermark: wm(5, 5),
            public_advanced: true,
            at,
        });
    }
    // Sharing: version 3 (off) is the newest even though it is not last.
    ops.push(PersistOp::Sharing {
        user: ids.bob,
        sharing: true,
        version: 1,
    });
    ops.push(PersistOp::Sharing {
        user: ids.bob,
        sharing: false,
        version: 3,
    });
    ops.push(PersistOp::Sharing {
        user: ids.bob,
        sharing: true,
        version: 2,
    });

    let mut watermarks = vec![(ids.bob, wm(5, 5)), (ids.carol, wm(3, 0))];
    watermarks.sort_by_key(|(user, _)| *user);
    let mut history = vec![
        (ids.bob, false, 2, 2_000),
        (ids.bob, false, 4, 2_100),
        (ids.bob, false, 5, 2_200),
        (ids.bob, true, 2, 2_000),
        (ids.bob, true, 5, 2_200),
        (ids.carol, false, 3, 2_300),
    ];
    history.sort();
    let expected = ConversationImage {
        members: members_v3,
        version: 3,
        messages: (0..5).map(|i| ids.message(i)).collect(),
        watermarks,
        history,
        threads: vec![(4, root), (5, root)],
        thread_watermarks: vec![(2, ids.carol, wm(5, 5))],
        thread_history: vec![
            (2, ids.carol, false, 5, 3_000),
            (2, ids.carol, true, 5, 3_000),
        ],
    };
    (ops, expected)
}

/// A deterministic shuffle (xorshift), so a failure reproduces.
fn shuffled<T: Clone>(items: &[T], mut seed: u64) -> Vec<T> {
    let mut out = items.to_vec();
    for i in (1..out.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    out
}

/// The image with rows in a canonical order (the store returns clustering
/// order, which for uuids is not byte order).
fn canonical(mut image: ConversationImage) -> ConversationImage {
    image.watermarks.sort_by_key(|(user, _)| *user);
    image.history.sort();
    image
        .thread_watermarks
        .sort_by_key(|(root, user, _)| (*root, *user));
    image.thread_history.sort();
    image
}

#[tokio::test]
async fn replayed_and_reordered_ops_converge_to_the_domain_result() {
    let ks = TestKeyspace::new().await;
    for (run, order) in [
        "in order",
        "reversed",
        "shuffled",
        "shuffled in replayed chunks",
    ]
    .into_iter()
    .enumerate()
    {
        let ids = Ids::new();
        let (ops, expected) = scenario(ids);
        match run {
            0 => ks.store.apply(&ops).await.expect("apply"),
            1 => {
                let reversed: Vec<_> = ops.iter().rev().cloned().collect();
                ks.store.apply(&reversed).await.expect("apply");
            }
            2 => ks
                .store
                .apply(&shuffled(&ops, 0x9e37_79b9))
                .await
                .expect("apply"),
            _ => {
                // A flush that failed halfway and was retried, out of order.
                let ops = shuffled(&ops, 42);
                let chunks: Vec<_> = ops.chunks(4).collect();
                for chunk in chunks.iter().rev() {
                    ks.store.apply(chunk).await.expect("apply");
                }
                for chunk in &chunks {
                    ks.store.apply(chunk).await.expect("replay");
                }
            }
        }
        let image = ks
            .store
            .conversation(ids.conversation)
            .await
            .expect("read conversation")
            .unwrap_or_else(|| panic!("{order}: conversation not persisted"));
        assert_eq!(canonical(image), expected, "{order}: conversation image");

        let mut deliveries = ks
            .store
            .deliveries(ids.messages[0])
            .await
            .expect("deliveries");
        deliveries.sort();
        let mut want = vec![(ids.bob, 1_200), (ids.carol, 1_400)];
        want.sort();
        assert_eq!(deliveries, want, "{order}: the earliest delivery wins");

        let mut runs = ks.store.runs(ids.conversation).await.expect("runs");
        runs.sort_by_key(|(u, r)| (*u, r.first));
        let run = |first, last, at| Run { first, last, at };
        let mut want = vec![
            (ids.bob, run(2, 3, 1_600)),
            (ids.bob, run(5, 5, 1_600)),
            (ids.carol, run(3, 4, 1_700)),
        ];
        want.sort_by_key(|(u, r)| (*u, r.first));
        assert_eq!(
            runs, want,
            "{order}: a removed run stays removed, its pieces stand"
        );

        assert_eq!(
            ks.store.sharing(ids.bob).await.expect("sharing"),
            Some((false, 3)),
            "{order}: the highest sharing version wins"
        );
        assert_eq!(
            ks.store.message(ids.messages[2]).await.expect("message"),
            Some(ids.message(2)),
            "{order}: message by id"
        );
        for user in [ids.alice, ids.bob, ids.carol] {
            assert_eq!(
                ks.store
                    .user_conversations(user)
                    .await
                    .expect("user conversations"),
                vec![ids.conversation],
                "{order}: every member, even a former one, keeps the conversation"
            );
        }
    }
    ks.drop_keyspace().await;
}

#[tokio::test]
async fn watermarks_never_move_back_when_older_reads_arrive_later() {
    let ks = TestKeyspace::new().await;
    let ids = Ids::new();
    let read = |seq, public_seq, public_advanced, at| PersistOp::Watermark {
        conversation: ids.conversation,
        user: ids.bob,
        watermark: ReadWatermark { seq, public_seq },
        public_advanced,
        at,
    };
    // Each flush on its own: the newest first, then older ones one by one.
    for op in [
        read(9, 6, false, 900),
        read(7, 6, true, 700),
        read(3, 3, true, 300),
    ] {
        ks.store.apply(&[op]).await.expect("apply");
    }
    let image = ks
        .store
        .conversation(ids.conversation)
        .await
        .expect("read")
        .expect("persisted");
    assert_eq!(
        image.watermarks,
        vec![(
            ids.bob,
            ReadWatermark {
                seq: 9,
                public_seq: 6
            }
        )]
    );
    ks.drop_keyspace().await;
}

#[tokio::test]
async fn recent_sent_is_newest_first_and_limited() {
    let ks = TestKeyspace::new().await;
    let ids = Ids::new();
    // Applied oldest-last, in two flushes, so storage order is not insertion order.
    let ops: Vec<_> = (0..5)
        .rev()
        .map(|i| PersistOp::Message(ids.message(i)))
        .collect();
    ks.store.apply(&ops[..2]).await.expect("apply");
    ks.store.apply(&ops[2..]).await.expect("apply");

    let all = ks.store.recent_sent(ids.alice, 10).await.expect("recent");
    let want: Vec<_> = (0..5).rev().map(|i| ids.message(i)).collect();
    assert_eq!(all, want);
    let two = ks.store.recent_sent(ids.alice, 2).await.expect("recent");
    assert_eq!(two, want[..2].to_vec());
    assert!(
        ks.store
            .recent_sent(ids.bob, 10)
            .await
            .expect("recent")
            .is_empty()
    );
    ks.drop_keyspace().await;
}

#[tokio::test]
async fn every_write_carries_the_retention_ttl() {
    let ks = TestKeyspace::new().await;
    let ids = Ids::new();
    let (ops, _) = scenario(ids);
    ks.store.apply(&ops).await.expect("apply");

    let checks = [
        (
            "receipts",
            "delivered_at",
            format!("message = {}", ids.messages[0]),
        ),
        ("messages", "seq", format!("id = {}", ids.messages[0])),
        (
            "conversation_messages",
            "id",
            format!("conversation = {}", ids.conversation),
        ),
        ("sender_messages", "seq", format!("sender = {}", ids.alice)),
        (
            "conversations",
            "members",
            format!("conversation = {}", ids.conversation),
        ),
        (
            "watermarks",
            "seq",
            format!("conversation = {}", ids.conversation),
        ),
        (
            "watermarks",
            "public_seq",
            format!("conversation = {}", ids.conversation),
        ),
        (
            "watermark_history",
            "at",
            format!("conversation = {}", ids.conversation),
        ),
        ("sharing", "sharing", format!("user = {}", ids.bob)),
        (
            "delivery_runs",
            "removed",
            format!(
                "conversation = {} AND user = {} AND first = 2 AND last = 5",
                ids.conversation, ids.bob
            ),
        ),
    ];
    for (table, column, filter) in checks {
        let cql = format!(
            "SELECT TTL({column}) FROM {}.{table} WHERE {filter}",
            ks.name
        );
        let result = ks
            .raw
            .query_unpaged(cql.as_str(), ())
            .await
            .unwrap_or_else(|e| panic!("{cql}: {e}"))
            .into_rows_result()
            .expect("rows");
        let ttls: Vec<Option<i32>> = result
            .rows::<(Option<i32>,)>()
            .expect("ttl rows")
            .map(|row| row.expect("ttl row").0)
            .collect();
        assert!(!ttls.is_empty(), "{cql}: no rows");
        for ttl in ttls {
            let ttl = ttl.unwrap_or_else(|| panic!("{cql}: no TTL"));
            assert!(
                ttl > 0 && ttl as u64 <= RETENTION.as_secs(),
                "{cql}: TTL {ttl} outside (0, {}]",
                RETENTION.as_secs()
            );
        }
    }
    ks.drop_keyspace().await;
}

#[tokio::test]
async fn unknown_ids_read_as_absent_and_ping_answers() {
    let ks = TestKeyspace::new().await;
    ks.store.ping().await.expect("ping");
    let nobody = Uuid::new_v4();
    assert_eq!(ks.store.conversation(nobody).await.expect("read"), None);
    assert_eq!(ks.store.message(nobody).await.expect("read"), None);
    assert!(ks.store.deliveries(nobody).await.expect("read").is_empty());
    assert_eq!(ks.store.sharing(nobody).await.expect("read"), None);
    assert!(
        ks.store
            .user_conversations(nobody)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        ks.store
            .recent_sent(nobody, 5)
            .await
            .expect("read")
            .is_empty()
    );
    ks.drop_keyspace().await;
}

#[tokio::test]
async fn connecting_twice_to_the_same_keyspace_is_harmless() {
    let ks = TestKeyspace::new().await;
    let options = ScyllaOptions {
        nodes: vec![backend_address()],
        keyspace: ks.name.clone(),
        retention: RETENTION,
        ..ScyllaOptions::default()
    };
    // Two more nodes starting at once against the existing schema.
    let (a, b) = tokio::join!(
        ScyllaPersistence::connect(&options),
        ScyllaPersistence::connect(&options)
    );
    let (a, b) = (a.expect("connect a"), b.expect("connect b"));
    let ids = Ids::new();
    a.apply(&[PersistOp::Message(ids.message(0))])
        .await
        .expect("apply");
    assert_eq!(
        b.message(ids.messages[0]).await.expect("read"),
        Some(ids.message(0))
    );
    ks.drop_keyspace().await;
}
