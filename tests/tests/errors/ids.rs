//! Malformed and missing ids, in every id field of every RPC.

use super::*;

#[tokio::test]
async fn mark_delivered_with_malformed_message_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut c = w.user(w.c).await;
    for bad in BAD_IDS {
        let r = c
            .mark_delivered(pb::MarkDeliveredRequest {
                message_ids: vec![w.msgs[2].to_string(), bad.into()],
                ..Default::default()
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["message_ids[1]"]);
    }
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn mark_read_up_to_with_malformed_conversation_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut b = w.user(w.b).await;
    for bad in BAD_IDS {
        let r = b
            .mark_read_up_to(pb::MarkReadUpToRequest {
                conversation_id: bad.into(),
                message_id: w.msgs[2].to_string(),
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["conversation_id"]);
    }
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn mark_read_up_to_with_malformed_message_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut b = w.user(w.b).await;
    for bad in BAD_IDS {
        let r = b
            .mark_read_up_to(pb::MarkReadUpToRequest {
                conversation_id: w.group.id.to_string(),
                message_id: bad.into(),
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["message_id"]);
    }
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn missing_ids_are_invalid_argument_saying_required() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut b = w.user(w.b).await;
    let r = b
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: String::new(),
            message_id: w.msgs[2].to_string(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["conversation_id", "required"]);
    let r = b
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: String::new(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["message_id", "required"]);
    let r = b
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: vec![String::new()],
            ..Default::default()
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["message_ids[0]", "required"]);
    let r = w
        .backend()
        .await
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: String::new(),
            member_ids: ids(&[w.a, w.b]),
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["conversation_id", "required"]);
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn get_receipts_with_malformed_conversation_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let mut a = w.user(w.a).await;
    for bad in BAD_IDS {
        let r = a
            .get_receipts(pb::GetReceiptsRequest {
                conversation_id: bad.into(),
                message_ids: ids(&w.msgs),
                include_recipients: true,
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["conversation_id"]);
    }
}

#[tokio::test]
async fn get_receipts_with_malformed_message_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let mut a = w.user(w.a).await;
    for bad in BAD_IDS {
        let r = a
            .get_receipts(pb::GetReceiptsRequest {
                conversation_id: w.group.id.to_string(),
                message_ids: vec![w.msgs[0].to_string(), w.msgs[1].to_string(), bad.into()],
                include_recipients: false,
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["message_ids[2]"]);
    }
}

#[tokio::test]
async fn get_unread_counts_with_malformed_conversation_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let mut b = w.user(w.b).await;
    for bad in BAD_IDS {
        let r = b
            .get_unread_counts(pb::GetUnreadCountsRequest {
                conversation_ids: vec![w.group.id.to_string(), bad.into()],
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["conversation_ids[1]"]);
    }
}

#[tokio::test]
async fn mark_conversations_read_with_malformed_conversation_id_is_invalid_argument_and_marks_none()
{
    let w = World::new().await;
    let before = w.observe().await;
    let mut b = w.user(w.b).await;
    for bad in BAD_IDS {
        let r = b
            .mark_conversations_read(pb::MarkConversationsReadRequest {
                conversation_ids: vec![w.group.id.to_string(), bad.into(), w.other.id.to_string()],
                threads: Vec::new(),
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["conversation_ids[1]"]);
    }
    assert_eq!(
        w.observe().await,
        before,
        "the valid conversations stay unread"
    );
}

#[tokio::test]
async fn create_conversation_with_malformed_conversation_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    for bad in BAD_IDS {
        let r = backend
            .create_conversation(pb::CreateConversationRequest {
                conversation_id: bad.into(),
                member_ids: ids(&[w.a, w.d]),
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["conversation_id"]);
    }
}

#[tokio::test]
async fn create_conversation_with_malformed_member_id_is_invalid_argument_and_creates_nothing() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let id = Uuid::now_v7();
    for bad in BAD_IDS {
        let r = backend
            .create_conversation(pb::CreateConversationRequest {
                conversation_id: id.to_string(),
                member_ids: vec![w.a.to_string(), bad.into(), w.d.to_string()],
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["member_ids[1]"]);
    }
    // As if never asked: the id is still free, for any members.
    let created = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: id.to_string(),
            member_ids: ids(&[w.b, w.c]),
        })
        .await
        .expect("create")
        .into_inner()
        .created;
    assert!(created);
}

#[tokio::test]
async fn add_members_with_malformed_conversation_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = w.backend().await;
    for bad in BAD_IDS {
        let r = backend
            .add_members(pb::AddMembersRequest {
                conversation_id: bad.into(),
                members: vec![change(w.d, 4)],
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["conversation_id"]);
    }
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn add_members_with_malformed_user_id_is_invalid_argument_and_adds_nobody() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = w.backend().await;
    for bad in BAD_IDS {
        let r = backend
            .add_members(pb::AddMembersRequest {
                conversation_id: w.group.id.to_string(),
                members: vec![change(w.d, 1), change(bad, 1)],
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["members[1].user_id"]);
    }
    assert_eq!(w.observe().await, before, "d was not added");
    assert_eq!(w.member_count(w.group.id, w.a).await, 3);
}

#[tokio::test]
async fn remove_members_with_malformed_conversation_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = w.backend().await;
    for bad in BAD_IDS {
        let r = backend
            .remove_members(pb::RemoveMembersRequest {
                conversation_id: bad.into(),
                members: vec![change(w.b, 4)],
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["conversation_id"]);
    }
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn remove_members_with_malformed_user_id_is_invalid_argument_and_removes_nobody() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = w.backend().await;
    for bad in BAD_IDS {
        let r = backend
            .remove_members(pb::RemoveMembersRequest {
                conversation_id: w.group.id.to_string(),
                members: vec![change(w.b, 2), change(bad, 2)],
            })
            .await;
        expect_err(r, Code::InvalidArgument, &["members[1].user_id"]);
    }
    assert_eq!(
        w.observe().await,
        before,
        "b is still a recipient of every message"
    );
    assert_eq!(w.member_count(w.group.id, w.b).await, 3);
}

#[tokio::test]
async fn register_messages_with_malformed_message_id_is_invalid_argument_and_registers_none() {
    let w = World::new().await;
    for bad in BAD_IDS {
        register_rejected(
            &w,
            |m| m.message_id = bad.into(),
            Code::InvalidArgument,
            &["messages[1].message_id"],
        )
        .await;
    }
}

#[tokio::test]
async fn register_messages_with_malformed_conversation_id_is_invalid_argument_and_registers_none() {
    let w = World::new().await;
    for bad in BAD_IDS {
        register_rejected(
            &w,
            |m| m.conversation_id = bad.into(),
            Code::InvalidArgument,
            &["messages[1].conversation_id"],
        )
        .await;
    }
}

#[tokio::test]
async fn register_messages_with_malformed_sender_id_is_invalid_argument_and_registers_none() {
    let w = World::new().await;
    for bad in BAD_IDS {
        register_rejected(
            &w,
            |m| m.sender_id = bad.into(),
            Code::InvalidArgument,
            &["messages[1].sender_id"],
        )
        .await;
    }
}
