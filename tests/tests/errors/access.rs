//! Non-members and messages of other conversations.

use super::*;

#[tokio::test]
async fn mark_delivered_by_a_non_member_is_permission_denied_and_records_nothing() {
    let w = World::new().await;
    let before = w.observe().await;
    // d may deliver `other_msg` but not a message of the group; the whole
    // call is refused, so `other_msg` is not delivered either.
    let r = w
        .user(w.d)
        .await
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: ids(&[w.other_msg, w.msgs[0]]),
            ..Default::default()
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["message_ids"]);
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn mark_read_up_to_by_a_non_member_is_permission_denied_and_reads_nothing() {
    let w = World::new().await;
    let before = w.observe().await;
    let r = w
        .user(w.d)
        .await
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: w.msgs[2].to_string(),
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["conversation_id"]);
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn get_receipts_by_a_non_member_is_permission_denied() {
    let w = World::new().await;
    let r = w
        .user(w.d)
        .await
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: w.group.id.to_string(),
            message_ids: ids(&w.msgs),
            include_recipients: true,
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["conversation_id"]);
}

#[tokio::test]
async fn a_removed_member_may_no_longer_mark_or_get_receipts() {
    let w = World::new().await;
    w.backend()
        .await
        .remove_members(pb::RemoveMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(w.c, 4)],
        })
        .await
        .expect("remove c");
    let before = w.observe().await;
    let mut c = w.user(w.c).await;
    let r = c
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: ids(&[w.msgs[2]]),
            ..Default::default()
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["message_ids"]);
    let r = c
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: w.msgs[2].to_string(),
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["conversation_id"]);
    let r = c
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: w.group.id.to_string(),
            message_ids: ids(&w.msgs),
            include_recipients: false,
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["conversation_id"]);
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn get_unread_counts_reports_not_found_and_permission_denied_per_conversation() {
    let w = World::new().await;
    let unknown = Uuid::now_v7();
    let r = w
        .user(w.d)
        .await
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: ids(&[w.group.id, unknown, w.other.id]),
        })
        .await
        .expect("bulk calls do not fail for one conversation")
        .into_inner();
    let outcomes: Vec<_> = r
        .conversations
        .iter()
        .map(|c| (c.conversation_id.clone(), c.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (
                w.group.id.to_string(),
                pb::ConversationOutcome::PermissionDenied as i32
            ),
            (
                unknown.to_string(),
                pb::ConversationOutcome::NotFound as i32
            ),
            (w.other.id.to_string(), pb::ConversationOutcome::Ok as i32),
        ]
    );
    for refused in &r.conversations[..2] {
        assert_eq!(
            (
                refused.unread_count,
                refused.read_up_to_seq,
                refused.last_seq
            ),
            (0, 0, 0),
            "nothing about a conversation the caller may not see"
        );
    }
    assert_eq!(
        (r.conversations[2].unread_count, r.conversations[2].last_seq),
        (1, 1)
    );
}

#[tokio::test]
async fn mark_conversations_read_reports_not_found_and_permission_denied_and_marks_the_rest() {
    let w = World::new().await;
    let before = w.observe().await;
    let unknown = Uuid::now_v7();
    let r = w
        .user(w.d)
        .await
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: ids(&[w.group.id, unknown, w.other.id]),
            threads: Vec::new(),
        })
        .await
        .expect("bulk calls do not fail for one conversation")
        .into_inner();
    let outcomes: Vec<_> = r
        .results
        .iter()
        .map(|c| (c.conversation_id.clone(), c.outcome, c.advanced))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (
                w.group.id.to_string(),
                pb::ConversationOutcome::PermissionDenied as i32,
                false
            ),
            (
                unknown.to_string(),
                pb::ConversationOutcome::NotFound as i32,
                false
            ),
            (
                w.other.id.to_string(),
                pb::ConversationOutcome::Ok as i32,
                true
            ),
        ]
    );
    // The group is untouched; only d's read of `other` changed.
    let after = w.observe().await;
    assert_eq!(after.receipts[..3], before.receipts[..3]);
    assert_eq!(after.unread[..3], before.unread[..3]);
    assert_eq!(after.unread[3][0], before.unread[3][0]);
    assert_eq!(after.unread[3][1].read_up_to_seq, 1);
    let unknown_counts = w
        .user(w.d)
        .await
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![unknown.to_string()],
        })
        .await
        .expect("unread")
        .into_inner();
    assert_eq!(
        unknown_counts.conversations[0].outcome,
        pb::ConversationOutcome::NotFound as i32
    );
}

#[tokio::test]
async fn mark_read_up_to_with_a_message_of_another_conversation_is_invalid_argument() {
    let w = World::new().await;
    let before = w.observe().await;
    // b is a member of both conversations, and still may not mix them.
    let r = w
        .user(w.b)
        .await
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: w.other_msg.to_string(),
        })
        .await;
    expect_err(
        r,
        Code::InvalidArgument,
        &["message_id", &w.other_msg.to_string()],
    );
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn get_receipts_with_a_message_of_another_conversation_is_invalid_argument() {
    let w = World::new().await;
    let r = w
        .user(w.b)
        .await
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: w.group.id.to_string(),
            message_ids: ids(&[w.msgs[0], w.other_msg]),
            include_recipients: false,
        })
        .await;
    expect_err(
        r,
        Code::InvalidArgument,
        &["message_ids", &w.other_msg.to_string()],
    );
}
