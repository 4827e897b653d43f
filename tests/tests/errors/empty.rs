//! Empty batches.

use super::*;

#[tokio::test]
async fn mark_delivered_with_no_message_ids_is_invalid_argument() {
    let w = World::new().await;
    let r = w
        .user(w.b)
        .await
        .mark_delivered(pb::MarkDeliveredRequest::default())
        .await;
    expect_err(r, Code::InvalidArgument, &["message_ids", "empty"]);
}

#[tokio::test]
async fn get_receipts_with_no_message_ids_is_invalid_argument() {
    let w = World::new().await;
    let r = w
        .user(w.a)
        .await
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: w.group.id.to_string(),
            message_ids: Vec::new(),
            include_recipients: true,
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["message_ids", "empty"]);
}

#[tokio::test]
async fn get_unread_counts_with_no_conversation_ids_is_invalid_argument() {
    let w = World::new().await;
    let r = w
        .user(w.b)
        .await
        .get_unread_counts(pb::GetUnreadCountsRequest::default())
        .await;
    expect_err(r, Code::InvalidArgument, &["conversation_ids", "empty"]);
}

#[tokio::test]
async fn mark_conversations_read_with_no_conversation_ids_is_invalid_argument() {
    let w = World::new().await;
    let before = w.observe().await;
    let r = w
        .user(w.b)
        .await
        .mark_conversations_read(pb::MarkConversationsReadRequest::default())
        .await;
    expect_err(r, Code::InvalidArgument, &["conversation_ids", "empty"]);
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn register_messages_with_no_messages_is_invalid_argument() {
    let w = World::new().await;
    let before = w.observe().await;
    let r = w
        .backend()
        .await
        .register_messages(pb::RegisterMessagesRequest::default())
        .await;
    expect_err(r, Code::InvalidArgument, &["messages", "empty"]);
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn add_members_with_no_members_is_invalid_argument() {
    let w = World::new().await;
    let r = w
        .backend()
        .await
        .add_members(pb::AddMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: Vec::new(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["members", "empty"]);
    assert_eq!(w.member_count(w.group.id, w.a).await, 3);
}

#[tokio::test]
async fn remove_members_with_no_members_is_invalid_argument() {
    let w = World::new().await;
    let r = w
        .backend()
        .await
        .remove_members(pb::RemoveMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: Vec::new(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["members", "empty"]);
    assert_eq!(w.member_count(w.group.id, w.a).await, 3);
}

#[tokio::test]
async fn create_conversation_with_no_members_is_invalid_argument_and_creates_nothing() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let id = Uuid::now_v7();
    let r = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: id.to_string(),
            member_ids: Vec::new(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["member_ids", "empty"]);
    let r = backend
        .add_members(pb::AddMembersRequest {
            conversation_id: id.to_string(),
            members: vec![change(w.a, 1)],
        })
        .await;
    expect_err(r, Code::NotFound, &["conversation_id"]);
}
