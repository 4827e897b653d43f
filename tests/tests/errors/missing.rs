//! Out-of-range numbers and missing messages.

use super::*;

#[tokio::test]
async fn register_messages_with_seq_below_1_is_invalid_argument_and_registers_none() {
    let w = World::new().await;
    for seq in [0, -1, i64::MIN] {
        register_rejected(
            &w,
            |m| m.seq = seq,
            Code::InvalidArgument,
            &["messages[1].seq", "at least 1"],
        )
        .await;
    }
}

#[tokio::test]
async fn register_messages_with_negative_sent_at_is_invalid_argument_and_registers_none() {
    let w = World::new().await;
    for sent_at in [-1, i64::MIN] {
        register_rejected(
            &w,
            |m| m.sent_at_ms = sent_at,
            Code::InvalidArgument,
            &["messages[1].sent_at_ms"],
        )
        .await;
    }
}

#[tokio::test]
async fn add_members_with_from_seq_below_1_is_invalid_argument_and_adds_nobody() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = w.backend().await;
    for seq in [0, -5] {
        let r = backend
            .add_members(pb::AddMembersRequest {
                conversation_id: w.group.id.to_string(),
                members: vec![change(w.d, 1), change(Uuid::now_v7(), seq)],
            })
            .await;
        expect_err(
            r,
            Code::InvalidArgument,
            &["members[1].from_seq", "at least 1"],
        );
    }
    assert_eq!(w.observe().await, before, "d was not added");
    assert_eq!(w.member_count(w.group.id, w.a).await, 3);
}

#[tokio::test]
async fn remove_members_with_from_seq_below_1_is_invalid_argument_and_removes_nobody() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = w.backend().await;
    for seq in [0, -5] {
        let r = backend
            .remove_members(pb::RemoveMembersRequest {
                conversation_id: w.group.id.to_string(),
                members: vec![change(w.b, 2), change(w.c, seq)],
            })
            .await;
        expect_err(
            r,
            Code::InvalidArgument,
            &["members[1].from_seq", "at least 1"],
        );
    }
    assert_eq!(w.observe().await, before, "b was not removed");
    assert_eq!(w.member_count(w.group.id, w.b).await, 3);
}

#[tokio::test]
async fn update_privacy_settings_without_settings_is_invalid_argument_and_keeps_them() {
    let w = World::new().await;
    let mut c = w.user(w.c).await;
    set_sharing(&mut c, false).await;
    let before = w.observe().await;
    let r = c
        .update_privacy_settings(pb::UpdatePrivacySettingsRequest { settings: None })
        .await;
    expect_err(r, Code::InvalidArgument, &["settings", "required"]);
    assert_eq!(
        w.observe().await,
        before,
        "still private, not reset to default"
    );
}

#[tokio::test]
async fn mark_delivered_with_one_unknown_message_is_not_found_and_records_none() {
    let w = World::new().await;
    let before = w.observe().await;
    let unknown = Uuid::now_v7();
    let r = w
        .user(w.c)
        .await
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: vec![
                w.msgs[2].to_string(),
                unknown.to_string(),
                w.msgs[1].to_string(),
            ],
            ..Default::default()
        })
        .await;
    expect_err(r, Code::NotFound, &["message_ids", &unknown.to_string()]);
    assert_eq!(w.observe().await, before, "msgs[2] is not delivered to c");
}

#[tokio::test]
async fn mark_read_up_to_an_unknown_message_is_not_found_naming_message_id() {
    let w = World::new().await;
    let before = w.observe().await;
    let unknown = Uuid::now_v7();
    let r = w
        .user(w.b)
        .await
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: unknown.to_string(),
        })
        .await;
    expect_err(r, Code::NotFound, &["message_id", &unknown.to_string()]);
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn get_receipts_with_one_unknown_message_is_not_found_naming_message_ids() {
    let w = World::new().await;
    let unknown = Uuid::now_v7();
    let r = w
        .user(w.a)
        .await
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: w.group.id.to_string(),
            message_ids: vec![w.msgs[0].to_string(), unknown.to_string()],
            include_recipients: false,
        })
        .await;
    expect_err(r, Code::NotFound, &["message_ids", &unknown.to_string()]);
}

#[tokio::test]
async fn mark_read_up_to_in_an_unknown_conversation_is_not_found_naming_conversation_id() {
    let w = World::new().await;
    let before = w.observe().await;
    let unknown = Uuid::now_v7();
    let r = w
        .user(w.b)
        .await
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: unknown.to_string(),
            message_id: w.msgs[2].to_string(),
        })
        .await;
    expect_err(
        r,
        Code::NotFound,
        &["conversation_id", &unknown.to_string()],
    );
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn get_receipts_in_an_unknown_conversation_is_not_found_naming_conversation_id() {
    let w = World::new().await;
    let unknown = Uuid::now_v7();
    let r = w
        .user(w.a)
        .await
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: unknown.to_string(),
            message_ids: ids(&w.msgs),
            include_recipients: false,
        })
        .await;
    expect_err(
        r,
        Code::NotFound,
        &["conversation_id", &unknown.to_string()],
    );
}

#[tokio::test]
async fn membership_changes_in_an_unknown_conversation_are_not_found_and_create_nothing() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let unknown = Uuid::now_v7();
    let r = backend
        .add_members(pb::AddMembersRequest {
            conversation_id: unknown.to_string(),
            members: vec![change(w.a, 1)],
        })
        .await;
    expect_err(
        r,
        Code::NotFound,
        &["conversation_id", &unknown.to_string()],
    );
    let r = backend
        .remove_members(pb::RemoveMembersRequest {
            conversation_id: unknown.to_string(),
            members: vec![change(w.a, 2)],
        })
        .await;
    expect_err(
        r,
        Code::NotFound,
        &["conversation_id", &unknown.to_string()],
    );
    let unread = w
        .user(w.a)
        .await
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![unknown.to_string()],
        })
        .await
        .expect("unread")
        .into_inner();
    assert_eq!(
        unread.conversations[0].outcome,
        pb::ConversationOutcome::NotFound as i32,
        "the conversation was not created as a side effect"
    );
}

#[tokio::test]
async fn register_messages_in_an_unknown_conversation_is_not_found_and_registers_none() {
    let w = World::new().await;
    let unknown = Uuid::now_v7();
    register_rejected(
        &w,
        |m| m.conversation_id = unknown.to_string(),
        Code::NotFound,
        &["messages[1].conversation_id", &unknown.to_string()],
    )
    .await;
}
