//! Registration and membership conflicts.

use super::*;

#[tokio::test]
async fn reregistering_a_message_id_with_other_content_is_already_exists_and_registers_none() {
    let w = World::new().await;
    let taken = w.msgs[0].to_string();
    // (what differs, conversation, seq, sender) of a registration reusing msgs[0]'s id.
    let cases = [
        ("another seq", w.group.id, 5, w.a),
        ("another sender", w.group.id, 1, w.b),
        ("another conversation", w.other.id, 2, w.b),
    ];
    for (case, conversation, seq, sender) in cases {
        eprintln!("case: {case}");
        register_rejected(
            &w,
            |m| {
                m.message_id.clone_from(&taken);
                m.conversation_id = conversation.to_string();
                m.seq = seq;
                m.sender_id = sender.to_string();
            },
            Code::AlreadyExists,
            &["messages[1].message_id", &taken],
        )
        .await;
    }
    // The original is intact.
    let r = receipt(&mut w.user(w.a).await, w.group.id, w.msgs[0]).await;
    assert_eq!((r.seq, r.sender_id), (1, w.a.to_string()));
}

#[tokio::test]
async fn registering_at_a_seq_already_used_is_already_exists_naming_the_seq() {
    let w = World::new().await;
    register_rejected(
        &w,
        |m| m.seq = 2,
        Code::AlreadyExists,
        &["messages[1].seq", &w.msgs[1].to_string()],
    )
    .await;
}

#[tokio::test]
async fn a_batch_using_one_seq_twice_is_invalid_argument_and_registers_none() {
    let w = World::new().await;
    register_rejected(
        &w,
        |m| m.seq = 4,
        Code::InvalidArgument,
        &["messages[1].seq"],
    )
    .await;
}

#[tokio::test]
async fn registering_from_a_sender_not_a_member_at_that_seq_is_failed_precondition() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    // g joins at seq 10; c leaves at seq 5.
    let g = Uuid::now_v7();
    backend
        .add_members(pb::AddMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(g, 10)],
        })
        .await
        .expect("add g");
    backend
        .remove_members(pb::RemoveMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(w.c, 5)],
        })
        .await
        .expect("remove c");
    for (case, sender, seq) in [
        ("never a member", w.d, 5),
        ("joins later", g, 5),
        ("left before", w.c, 5),
        ("left before, later seq", w.c, 11),
    ] {
        eprintln!("case: {case}");
        register_rejected(
            &w,
            |m| {
                m.sender_id = sender.to_string();
                m.seq = seq;
            },
            Code::FailedPrecondition,
            &["messages[1].sender_id", &sender.to_string()],
        )
        .await;
    }
}

#[tokio::test]
async fn reregistering_identical_content_succeeds_and_counts_zero() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let before = w.observe().await;
    let again = backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![
                registration(w.msgs[0], w.group.id, 1, w.a),
                registration(w.msgs[1], w.group.id, 2, w.a),
            ],
        })
        .await
        .expect("identical re-registration is accepted")
        .into_inner();
    assert_eq!(again.registered, 0);
    assert_eq!(w.observe().await, before, "sent times and states kept");
    // Mixed with a new one, only the new one counts.
    let fresh = Uuid::now_v7();
    let mixed = backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![
                registration(w.msgs[2], w.group.id, 3, w.a),
                registration(fresh, w.group.id, 4, w.b),
            ],
        })
        .await
        .expect("register")
        .into_inner();
    assert_eq!(mixed.registered, 1);
}

#[tokio::test]
async fn creating_an_existing_conversation_with_other_members_is_already_exists() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = w.backend().await;
    for members in [
        vec![w.a, w.b],
        vec![w.a, w.b, w.c, w.d],
        vec![w.a, w.b, w.d],
    ] {
        let r = backend
            .create_conversation(pb::CreateConversationRequest {
                conversation_id: w.group.id.to_string(),
                member_ids: ids(&members),
            })
            .await;
        expect_err(r, Code::AlreadyExists, &["conversation_id"]);
    }
    assert_eq!(w.observe().await, before, "members unchanged");
    // The same members, in any order, are an idempotent no-op.
    let same = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: w.group.id.to_string(),
            member_ids: ids(&[w.c, w.a, w.b]),
        })
        .await
        .expect("same members")
        .into_inner();
    assert!(!same.created);
}

#[tokio::test]
async fn creating_a_conversation_with_a_duplicate_member_is_invalid_argument_naming_it() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let id = Uuid::now_v7();
    let r = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: id.to_string(),
            member_ids: ids(&[w.a, w.d, w.a]),
        })
        .await;
    expect_err(
        r,
        Code::InvalidArgument,
        &["member_ids[2]", &w.a.to_string()],
    );
    let created = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: id.to_string(),
            member_ids: ids(&[w.a, w.d]),
        })
        .await
        .expect("create")
        .into_inner()
        .created;
    assert!(created, "the rejected call created nothing");
}

#[tokio::test]
async fn removing_a_member_from_a_seq_not_after_its_join_is_failed_precondition() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let g = Uuid::now_v7();
    backend
        .add_members(pb::AddMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(g, 5)],
        })
        .await
        .expect("add g at 5");
    let before = w.observe().await;
    for (case, user, from) in [
        ("initial member, at its join", w.b, 1),
        ("added member, at its join", g, 5),
        ("added member, before its join", g, 3),
    ] {
        eprintln!("case: {case}");
        let r = backend
            .remove_members(pb::RemoveMembersRequest {
                conversation_id: w.group.id.to_string(),
                members: vec![change(w.c, 4), change(user, from)],
            })
            .await;
        expect_err(
            r,
            Code::FailedPrecondition,
            &["members[1].from_seq", "joined"],
        );
    }
    assert_eq!(w.observe().await, before, "c was not removed either");
    assert_eq!(w.member_count(w.group.id, w.c).await, 4);
}

#[tokio::test]
async fn rejoining_before_the_seq_a_member_left_at_is_failed_precondition() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    backend
        .remove_members(pb::RemoveMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(w.c, 3)],
        })
        .await
        .expect("remove c at 3");
    let before = w.observe().await;
    let r = backend
        .add_members(pb::AddMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(w.d, 4), change(w.c, 2)],
        })
        .await;
    expect_err(r, Code::FailedPrecondition, &["members[1].from_seq"]);
    assert_eq!(w.observe().await, before, "d was not added either");
    assert_eq!(w.member_count(w.group.id, w.a).await, 2);
}
