//! DESIGN.md §2 "Threads": a message may belong to a thread of its
//! conversation; a member has a read position in the main timeline and one
//! per thread, and every rule holds per thread. Over a real socket and
//! through the Rust SDK, on every store (`RECEIPTS_TEST_STORE`; CI runs it
//! on Redis and on the Redis Cluster too). Through Cassandra:
//! `threads_expire_from_redis_and_read_back_from_cassandra` in
//! `tests/tests/production/nodes.rs`.

use receipts_proto::v1 as pb;
use receipts_sdk::{Client, NewMessage};
use receipts_server::auth::Role;
use receipts_tests::*;
use std::time::Duration;
use tonic::Code;
use uuid::Uuid;

/// A group of three (`a` sends, `b` and `c` receive) with, in seq order:
/// `m1` (main), `t2` (thread under `m1`), `m3` (main), `t4` (thread under
/// `m1`), all from `a`.
struct Threaded {
    conv: Conversation,
    a: Uuid,
    b: Uuid,
    c: Uuid,
    m1: Uuid,
    t2: Uuid,
    m3: Uuid,
    t4: Uuid,
}

fn in_thread(id: Uuid, conv: Uuid, seq: i64, sender: Uuid, root: Uuid) -> pb::MessageRegistration {
    pb::MessageRegistration {
        thread_root_message_id: root.to_string(),
        ..registration(id, conv, seq, sender)
    }
}

async fn register(
    backend: &mut BackendClient,
    messages: Vec<pb::MessageRegistration>,
) -> Result<i64, tonic::Status> {
    backend
        .register_messages(pb::RegisterMessagesRequest { messages })
        .await
        .map(|r| r.into_inner().registered)
}

async fn threaded(s: &TestServer) -> Threaded {
    let mut backend = s.backend().await;
    let mut conv = Conversation::create(&mut backend, 3).await;
    let (a, b, c) = (conv.members[0], conv.members[1], conv.members[2]);
    let m1 = conv.send(&mut backend, a).await;
    let (t2, t4) = (Uuid::now_v7(), Uuid::now_v7());
    register(&mut backend, vec![in_thread(t2, conv.id, 2, a, m1)])
        .await
        .expect("thread message");
    conv.set_next_seq(3);
    let m3 = conv.send(&mut backend, a).await;
    register(&mut backend, vec![in_thread(t4, conv.id, 4, a, m1)])
        .await
        .expect("thread message");
    conv.set_next_seq(5);
    Threaded {
        conv,
        a,
        b,
        c,
        m1,
        t2,
        m3,
        t4,
    }
}

/// Read counts of `ids` as `viewer` sees them.
async fn read_counts(client: &mut UserClient, conv: Uuid, ids: &[Uuid]) -> Vec<i64> {
    let mut out = Vec::new();
    for id in ids {
        out.push(counts_only(client, conv, *id).await.read_count);
    }
    out
}

async fn unread(client: &mut UserClient, conv: Uuid) -> pb::ConversationUnread {
    client
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![conv.to_string()],
        })
        .await
        .expect("unread counts")
        .into_inner()
        .conversations
        .remove(0)
}

/// "Read up to X in thread T" covers T's messages up to X and nothing
/// outside T; reading the main timeline reads no thread.
#[tokio::test]
async fn a_read_covers_its_own_timeline_only() {
    let s = TestServer::start().await;
    let t = threaded(&s).await;
    let mut b = s.user(t.b).await;
    let mut a = s.user(t.a).await;
    let all = [t.m1, t.t2, t.m3, t.t4];

    let main = read_up_to(&mut b, t.conv.id, t.m3).await;
    assert_eq!(main.read_up_to_seq, 3);
    assert_eq!(main.thread_root_message_id, "", "the main timeline moved");
    assert_eq!(main.unread_count, 0, "nothing unread in the main timeline");
    assert_eq!(main.conversation_unread_count, 2, "both thread messages");
    assert_eq!(read_counts(&mut a, t.conv.id, &all).await, [1, 0, 1, 0]);
    assert_eq!(
        counts_only(&mut a, t.conv.id, t.t2).await.delivered_count,
        0,
        "a main-timeline read does not deliver a thread message"
    );

    let thread = read_up_to(&mut b, t.conv.id, t.t2).await;
    assert_eq!(thread.read_up_to_seq, 2);
    assert!(thread.advanced, "the thread's position is its own");
    assert_eq!(thread.thread_root_message_id, t.m1.to_string());
    assert_eq!(thread.unread_count, 1, "t4 is still unread in the thread");
    assert_eq!(thread.conversation_unread_count, 1);
    assert_eq!(read_counts(&mut a, t.conv.id, &all).await, [1, 1, 1, 0]);
    let t2 = receipt(&mut a, t.conv.id, t.t2).await;
    let by_b = t2
        .recipients
        .iter()
        .find(|r| r.user_id == t.b.to_string())
        .expect("b is a recipient");
    assert_eq!(by_b.state, pb::RecipientState::Read as i32);
    assert!(by_b.read_at_ms > 0 && by_b.delivered_at_ms == by_b.read_at_ms);

    // Late, duplicate or lower reads change nothing, per timeline.
    let again = read_up_to(&mut b, t.conv.id, t.t2).await;
    assert!(!again.advanced);
    let lower = read_up_to(&mut b, t.conv.id, t.m1).await;
    assert!(!lower.advanced, "main is at 3 already");
    assert_eq!(lower.read_up_to_seq, 3);

    // The whole thread, then: every message is read, and the tick is read
    // once c reads too.
    read_up_to(&mut b, t.conv.id, t.t4).await;
    let mut c = s.user(t.c).await;
    read_up_to(&mut c, t.conv.id, t.t4).await;
    let t4 = counts_only(&mut a, t.conv.id, t.t4).await;
    assert_eq!((t4.read_count, t4.tick), (2, pb::Tick::Read as i32));
    let m3 = counts_only(&mut a, t.conv.id, t.m3).await;
    assert_eq!(m3.read_count, 1, "c's thread read leaves the main timeline");
}

/// Unread counts per thread and per conversation (main plus threads), and
/// MarkConversationsRead by thread and by conversation.
#[tokio::test]
async fn unread_counts_and_bulk_reads_per_thread() {
    let s = TestServer::start().await;
    let t = threaded(&s).await;
    let mut c = s.user(t.c).await;
    let u = unread(&mut c, t.conv.id).await;
    assert_eq!((u.unread_count, u.main_unread_count), (4, 2));
    assert_eq!(u.last_seq, 4);
    assert_eq!(u.threads.len(), 1);
    let th = &u.threads[0];
    assert_eq!(th.thread_root_message_id, t.m1.to_string());
    assert_eq!((th.unread_count, th.read_up_to_seq, th.last_seq), (2, 0, 4));

    // The sender has nothing unread anywhere.
    let mut a = s.user(t.a).await;
    let ua = unread(&mut a, t.conv.id).await;
    assert_eq!((ua.unread_count, ua.main_unread_count), (0, 0));
    assert!(ua.threads.is_empty(), "only threads with unread messages");

    let out = c
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: Vec::new(),
            threads: vec![pb::ThreadRef {
                conversation_id: t.conv.id.to_string(),
                thread_root_message_id: t.m1.to_string(),
            }],
        })
        .await
        .expect("mark thread read")
        .into_inner()
        .results;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, pb::ConversationOutcome::Ok as i32);
    assert_eq!(out[0].thread_root_message_id, t.m1.to_string());
    assert_eq!((out[0].read_up_to_seq, out[0].advanced), (4, true));
    let u = unread(&mut c, t.conv.id).await;
    assert_eq!((u.unread_count, u.main_unread_count), (2, 2));
    assert!(u.threads.is_empty());
    assert_eq!(
        read_counts(&mut a, t.conv.id, &[t.m1, t.t2, t.m3, t.t4]).await,
        [0, 1, 0, 1]
    );

    // A new thread message is unread in the thread and the conversation.
    let mut backend = s.backend().await;
    let t5 = Uuid::now_v7();
    register(&mut backend, vec![in_thread(t5, t.conv.id, 5, t.b, t.m1)])
        .await
        .expect("thread message");
    let u = unread(&mut c, t.conv.id).await;
    assert_eq!((u.unread_count, u.main_unread_count), (3, 2));
    assert_eq!(u.threads[0].unread_count, 1);
    assert_eq!(u.threads[0].read_up_to_seq, 4);

    // A conversation is marked read in every timeline.
    let out = c
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: vec![t.conv.id.to_string()],
            threads: Vec::new(),
        })
        .await
        .expect("mark conversation read")
        .into_inner()
        .results;
    assert_eq!(out[0].thread_root_message_id, "");
    assert_eq!(
        out[0].read_up_to_seq, 3,
        "the main timeline up to its own latest message, m3"
    );
    assert!(out[0].advanced);
    let u = unread(&mut c, t.conv.id).await;
    assert_eq!((u.unread_count, u.main_unread_count), (0, 0));
    assert!(u.threads.is_empty());

    // Threads that are not: unknown roots, a root of another conversation,
    // a thread message named as a root, a foreign conversation.
    let other = Conversation::create(&mut backend, 2).await;
    let results = c
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: Vec::new(),
            threads: [
                (t.conv.id, Uuid::now_v7()),
                (t.conv.id, t.t2),
                (other.id, t.m1),
            ]
            .iter()
            .map(|(c, r)| pb::ThreadRef {
                conversation_id: c.to_string(),
                thread_root_message_id: r.to_string(),
            })
            .collect(),
        })
        .await
        .expect("bulk")
        .into_inner()
        .results;
    let outcomes: Vec<i32> = results.iter().map(|r| r.outcome).collect();
    // A malformed thread is the caller's error, and nothing is marked.
    let mut b = s.user(t.b).await;
    let bad = b
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: vec![t.conv.id.to_string()],
            threads: vec![pb::ThreadRef {
                conversation_id: t.conv.id.to_string(),
                thread_root_message_id: "nope".into(),
            }],
        })
        .await
        .expect_err("malformed");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("threads[0].thread_root_message_id"));
    assert_eq!(unread(&mut b, t.conv.id).await.unread_count, 4);
    assert_eq!(
        outcomes,
        [
            pb::ConversationOutcome::NotFound as i32,
            pb::ConversationOutcome::NotFound as i32,
            pb::ConversationOutcome::PermissionDenied as i32,
        ]
    );
}

/// The registration rules of a thread's root, each refusal naming the field
/// and changing nothing; a root registered earlier in the same request.
#[tokio::test]
async fn a_root_is_an_earlier_main_timeline_message_of_the_conversation() {
    let s = TestServer::start().await;
    let t = threaded(&s).await;
    let mut backend = s.backend().await;
    let other = Conversation::create_with(&mut backend, vec![t.a, t.b]).await;
    let mut o = other.clone();
    let foreign = o.send(&mut backend, t.a).await;
    let field = "messages[0].thread_root_message_id";
    let cases: Vec<(Uuid, i64, Code, &str)> = vec![
        (Uuid::now_v7(), 5, Code::NotFound, "not found"),
        (foreign, 5, Code::InvalidArgument, "another conversation"),
        (t.t2, 5, Code::InvalidArgument, "threads do not nest"),
        (t.m3, 3, Code::InvalidArgument, "does not come before"),
    ];
    for (root, seq, code, says) in cases {
        let id = Uuid::now_v7();
        let err = register(&mut backend, vec![in_thread(id, t.conv.id, seq, t.a, root)])
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(field), "{err:?}");
        assert!(err.message().contains(says), "{err:?}");
        let mut a = s.user(t.a).await;
        let looked = a
            .get_receipts(pb::GetReceiptsRequest {
                conversation_id: t.conv.id.to_string(),
                message_ids: vec![id.to_string()],
                include_recipients: false,
            })
            .await
            .expect_err("not registered");
        assert_eq!(looked.code(), Code::NotFound);
    }
    let bad = register(
        &mut backend,
        vec![pb::MessageRegistration {
            thread_root_message_id: "not-a-uuid".into(),
            ..registration(Uuid::now_v7(), t.conv.id, 9, t.a)
        }],
    )
    .await
    .expect_err("malformed");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains(field));

    // A root in the same request counts only if it comes earlier, in
    // whatever conversations (the stores order their work by conversation).
    for (root_first, code) in [(true, Code::InvalidArgument), (false, Code::NotFound)] {
        let (root, reply) = (Uuid::now_v7(), Uuid::now_v7());
        let mut o = Conversation::create_with(&mut backend, vec![t.a, t.b]).await;
        let root_entry = registration(root, o.id, o.next_seq(), t.a);
        o.set_next_seq(o.next_seq() + 1);
        let reply_entry = in_thread(reply, t.conv.id, 20, t.a, root);
        let batch = match root_first {
            true => vec![root_entry, reply_entry],
            false => vec![reply_entry, root_entry],
        };
        let err = register(&mut backend, batch).await.expect_err("refused");
        assert_eq!(err.code(), code, "root first: {root_first}: {err:?}");
    }

    // A root and its thread in one request; the same again is a no-op; the
    // same message in another thread is refused.
    let (root, reply) = (Uuid::now_v7(), Uuid::now_v7());
    let batch = vec![
        registration(root, t.conv.id, 10, t.a),
        in_thread(reply, t.conv.id, 11, t.b, root),
    ];
    assert_eq!(
        register(&mut backend, batch.clone()).await.expect("batch"),
        2
    );
    assert_eq!(register(&mut backend, batch).await.expect("again"), 0);
    let moved = register(
        &mut backend,
        vec![in_thread(reply, t.conv.id, 11, t.b, t.m1)],
    )
    .await
    .expect_err("another thread");
    assert_eq!(moved.code(), Code::AlreadyExists);
    let mut c = s.user(t.c).await;
    let u = unread(&mut c, t.conv.id).await;
    assert_eq!(u.threads.len(), 2, "two threads with unread messages");
    assert_eq!(
        u.threads[0].thread_root_message_id,
        root.to_string(),
        "the highest root first"
    );
}

/// Privacy per thread: a read made while private stays hidden until the
/// reader reads further in that thread (not in another timeline), while its
/// own devices see it.
#[tokio::test]
async fn reads_made_while_private_stay_hidden_per_thread() {
    let s = TestServer::start().await;
    let t = threaded(&s).await;
    let mut b = s.user(t.b).await;
    let mut a = s.user(t.a).await;
    set_sharing(&mut b, false).await;
    read_up_to(&mut b, t.conv.id, t.t2).await;
    let seen = counts_only(&mut a, t.conv.id, t.t2).await;
    assert_eq!((seen.read_count, seen.delivered_count), (0, 1));
    assert_eq!(counts_only(&mut b, t.conv.id, t.t2).await.read_count, 1);
    set_sharing(&mut b, true).await;
    assert_eq!(counts_only(&mut a, t.conv.id, t.t2).await.read_count, 0);
    // Reading further in the main timeline reveals nothing of the thread.
    read_up_to(&mut b, t.conv.id, t.m3).await;
    assert_eq!(counts_only(&mut a, t.conv.id, t.t2).await.read_count, 0);
    // Reading further in the thread, while sharing, reveals the thread up to
    // there (as in the main timeline).
    read_up_to(&mut b, t.conv.id, t.t4).await;
    assert_eq!(read_counts(&mut a, t.conv.id, &[t.t2, t.t4]).await, [1, 1]);
}

/// Own-device sync carries thread positions: live, and in a reset's
/// snapshot.
#[tokio::test]
async fn a_thread_read_reaches_the_readers_other_devices() {
    let s = TestServer::start().await;
    let t = threaded(&s).await;
    let mut device = s.user(t.b).await;
    let (mut sub, _) = Subscription::open(&mut device, None).await;
    let mut b = s.user(t.b).await;
    read_up_to(&mut b, t.conv.id, t.t2).await;
    let sync = loop {
        let ev = sub.next().await.expect("an event");
        if let Some(pb::subscribe_receipts_response::Event::Watermark(w)) = ev.event {
            break w;
        }
    };
    assert_eq!(sync.conversation_id, t.conv.id.to_string());
    assert_eq!(sync.thread_root_message_id, t.m1.to_string());
    assert_eq!((sync.read_up_to_seq, sync.unread_count), (2, 1));
    assert_eq!(sync.conversation_unread_count, 3, "m1, m3 and t4");

    // A cursor that cannot be honoured: the snapshot has both positions.
    let reset = device
        .subscribe_receipts(pb::SubscribeReceiptsRequest {
            cursor: "garbled".into(),
            accept_ranges: false,
        })
        .await
        .expect("subscribe")
        .into_inner()
        .message()
        .await
        .expect("stream")
        .expect("an event");
    let Some(pb::subscribe_receipts_response::Event::Reset(reset)) = reset.event else {
        panic!("expected a reset, got {reset:?}");
    };
    let mine: Vec<(String, i64, i64)> = reset
        .watermarks
        .iter()
        .filter(|w| w.conversation_id == t.conv.id.to_string())
        .map(|w| {
            (
                w.thread_root_message_id.clone(),
                w.read_up_to_seq,
                w.unread_count,
            )
        })
        .collect();
    assert_eq!(
        mine,
        [(String::new(), 0, 2), (t.m1.to_string(), 2, 1)],
        "the main timeline, then the thread"
    );
}

/// The Rust SDK: registering into a thread, the read marker keeping each
/// timeline apart, unread counts per thread, and marking a thread read.
#[tokio::test]
async fn the_rust_sdk_reads_threads() {
    let s = TestServer::start().await;
    let url = s.url();
    let connect = |user: Uuid, role: Role| {
        let url = url.clone();
        async move {
            Client::builder(url)
                .token(token(user, role))
                .connect()
                .await
                .expect("connect")
        }
    };
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let backend = connect(Uuid::now_v7(), Role::Service).await.backend();
    let conv = Uuid::now_v7();
    backend
        .create_conversation(conv, &[a, b])
        .await
        .expect("create");
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let msg = |i: usize| NewMessage {
        message_id: ids[i],
        conversation_id: conv,
        seq: i as u64 + 1,
        sender_id: a,
        sent_at: None,
        thread_root_message_id: None,
    };
    // seqs: 1 main (root), 2 and 3 in its thread, 4 main.
    backend
        .register_messages(&[
            msg(0),
            msg(1).in_thread(ids[0]),
            msg(2).in_thread(ids[0]),
            msg(3),
        ])
        .await
        .expect("register");
    let client = connect(b, Role::User).await;
    let marker = client.read_marker_every(Duration::from_secs(3600));
    // The thread's higher seq does not stand in for the main timeline's.
    marker.mark_in_thread(conv, ids[0], ids[2], 3);
    marker.mark(conv, ids[0], 1);
    marker.flush().await.expect("flush");
    let counts = client.unread_counts(&[conv]).await.expect("unread");
    assert_eq!(counts[0].read_up_to_seq, 1, "main read up to seq 1");
    assert_eq!(
        (counts[0].unread_count, counts[0].main_unread_count),
        (1, 1),
        "only seq 4 is unread"
    );
    assert!(counts[0].threads.is_empty(), "the thread is read");
    let read = client.mark_read_up_to(conv, ids[3]).await.expect("read");
    assert_eq!(read.thread_root_message_id, None);
    assert_eq!(read.conversation_unread_count, 0);

    let c2 = Uuid::now_v7();
    backend
        .create_conversation(c2, &[a, b])
        .await
        .expect("create");
    let (root, reply) = (Uuid::now_v7(), Uuid::now_v7());
    backend
        .register_messages(&[
            NewMessage {
                message_id: root,
                conversation_id: c2,
                seq: 1,
                sender_id: a,
                sent_at: None,
                thread_root_message_id: None,
            },
            NewMessage {
                message_id: reply,
                conversation_id: c2,
                seq: 2,
                sender_id: a,
                sent_at: None,
                thread_root_message_id: None,
            }
            .in_thread(root),
        ])
        .await
        .expect("register");
    let counts = client.unread_counts(&[c2]).await.expect("unread");
    assert_eq!(counts[0].threads.len(), 1);
    assert_eq!(counts[0].threads[0].thread_root_message_id, root);
    let marked = client.mark_threads_read(&[(c2, root)]).await.expect("mark");
    assert_eq!(marked[0].thread_root_message_id, Some(root));
    assert!(marked[0].advanced);
    let counts = client.unread_counts(&[c2]).await.expect("unread");
    assert_eq!(
        (counts[0].unread_count, counts[0].main_unread_count),
        (1, 1)
    );
    marker.close().await.expect("close");
}

/// A direct chat's live events after a bulk read of every timeline carry the
/// states GetReceipts gives: the reads that moved each timeline, with their
/// exact times, whatever the order the timelines were read in.
#[tokio::test]
async fn a_bulk_read_in_a_direct_chat_pushes_the_states_get_receipts_gives() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut chat = Conversation::create(&mut backend, 2).await;
    let (a, b) = (chat.members[0], chat.members[1]);
    let s1 = chat.send(&mut backend, b).await;
    let s2 = chat.send(&mut backend, b).await;
    let s3 = chat.send(&mut backend, b).await;
    let s4 = Uuid::now_v7();
    register(&mut backend, vec![in_thread(s4, chat.id, 4, b, s1)])
        .await
        .expect("reply");
    chat.set_next_seq(5);
    let s5 = chat.send(&mut backend, b).await;
    let s6 = chat.send(&mut backend, b).await;
    let mut reader = s.user(a).await;
    set_sharing(&mut reader, false).await;
    read_up_to(&mut reader, chat.id, s2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    read_up_to(&mut reader, chat.id, s5).await;
    set_sharing(&mut reader, true).await;
    let mut sender = s.user(b).await;
    // As a client that applies ranges: the live states as the write built
    // them (a client that does not gets them recomputed from the store).
    let (mut sub, _) = Subscription::open_with(&mut sender, None, true).await;
    reader
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: vec![chat.id.to_string()],
            threads: Vec::new(),
        })
        .await
        .expect("bulk read");
    let all = [s1, s2, s3, s4, s5, s6];
    // (delivered_at, read_at, tick) by seq, as pushed.
    let mut pushed = std::collections::BTreeMap::new();
    while let Some(ev) = sub.next_within(Duration::from_millis(500)).await {
        if let Some(pb::subscribe_receipts_response::Event::Receipts(r)) = ev.event {
            for range in r.ranges {
                for seq in range.from_seq..=range.to_seq {
                    pushed.insert(seq, (range.delivered_at_ms, range.read_at_ms, range.tick));
                }
            }
            for m in r.messages {
                pushed.insert(m.seq, (m.delivered_at_ms, m.read_at_ms, m.tick));
            }
        }
    }
    for (seq, id) in (1..).zip(all) {
        let now = receipt(&mut sender, chat.id, id).await;
        if let Some(live) = pushed.get(&seq) {
            assert_eq!(
                *live,
                (now.delivered_at_ms, now.read_at_ms, now.tick),
                "seq {seq}: the live state is the stored one"
            );
        }
    }
    assert!(
        pushed.contains_key(&1) && pushed.contains_key(&4) && pushed.contains_key(&6),
        "the main timeline's reads, revealed, and the thread reply changed: {pushed:?}"
    );
}
