//! Over-limit batches (default limits), made of valid UUIDs.

use super::*;

#[tokio::test]
async fn mark_delivered_over_1000_ids_is_invalid_argument_and_records_nothing() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let fresh: Vec<Uuid> = (0..1001).map(|_| Uuid::now_v7()).collect();
    for (chunk, first_seq) in [(&fresh[..1000], 4), (&fresh[1000..], 1004)] {
        let messages = chunk
            .iter()
            .zip(first_seq..)
            .map(|(id, seq)| registration(*id, w.group.id, seq, w.a))
            .collect();
        backend
            .register_messages(pb::RegisterMessagesRequest { messages })
            .await
            .expect("register");
    }
    let mut b = w.user(w.b).await;
    let r = b
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: ids(&fresh),
            ..Default::default()
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["message_ids", "1001", "1000"]);
    let r = receipt(&mut b, w.group.id, fresh[0]).await;
    assert_eq!(r.delivered_count, 0, "nothing was recorded");
    // Exactly at the limit is accepted, and every delivery is new.
    let ok = deliver(&mut b, &fresh[..1000]).await;
    assert!(
        ok.results
            .iter()
            .all(|r| r.outcome == pb::DeliveryOutcome::Recorded as i32)
    );
}

#[tokio::test]
async fn register_messages_over_1000_is_invalid_argument_and_registers_none() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = w.backend().await;
    let fresh: Vec<Uuid> = (0..1001).map(|_| Uuid::now_v7()).collect();
    let all: Vec<_> = fresh
        .iter()
        .zip(4..)
        .map(|(id, seq)| registration(*id, w.group.id, seq, w.a))
        .collect();
    let r = backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: all.clone(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["messages", "1001", "1000"]);
    w.assert_unregistered(&[fresh[0], fresh[500], fresh[1000]])
        .await;
    assert_eq!(w.observe().await, before, "last_seq unchanged");
    let ok = backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: all[..1000].to_vec(),
        })
        .await
        .expect("1000 is within the limit")
        .into_inner();
    assert_eq!(
        ok.registered, 1000,
        "none was registered by the rejected call"
    );
}

#[tokio::test]
async fn add_members_over_1000_is_invalid_argument_and_adds_nobody() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let users: Vec<Uuid> = (0..1001).map(|_| Uuid::now_v7()).collect();
    let r = backend
        .add_members(pb::AddMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: users.iter().map(|u| change(u, 4)).collect(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["members", "1001", "1000"]);
    assert_eq!(w.member_count(w.group.id, w.a).await, 3);
    let ok = backend
        .add_members(pb::AddMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: users[..1000].iter().map(|u| change(u, 4)).collect(),
        })
        .await
        .expect("1000 is within the limit")
        .into_inner();
    assert_eq!((ok.added, ok.member_count), (1000, 1003));
}

#[tokio::test]
async fn remove_members_over_1000_is_invalid_argument_and_removes_nobody() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut members = vec![change(w.b, 4), change(w.c, 4)];
    members.extend((0..999).map(|_| change(Uuid::now_v7(), 4)));
    let r = w
        .backend()
        .await
        .remove_members(pb::RemoveMembersRequest {
            conversation_id: w.group.id.to_string(),
            members,
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["members", "1001", "1000"]);
    assert_eq!(w.observe().await, before, "b and c are still members");
    assert_eq!(w.member_count(w.group.id, w.b).await, 3);
}

#[tokio::test]
async fn get_receipts_over_100_ids_is_invalid_argument() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let fresh: Vec<Uuid> = (0..101).map(|_| Uuid::now_v7()).collect();
    backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: fresh
                .iter()
                .zip(4..)
                .map(|(id, seq)| registration(*id, w.group.id, seq, w.a))
                .collect(),
        })
        .await
        .expect("register");
    let mut a = w.user(w.a).await;
    let get = |n: usize| pb::GetReceiptsRequest {
        conversation_id: w.group.id.to_string(),
        message_ids: ids(&fresh[..n]),
        include_recipients: false,
    };
    let r = a.get_receipts(get(101)).await;
    expect_err(r, Code::InvalidArgument, &["message_ids", "101", "100"]);
    let ok = a
        .get_receipts(get(100))
        .await
        .expect("100 is within the limit");
    assert_eq!(ok.into_inner().messages.len(), 100);
}

/// The group plus `n - 1` unknown (but valid) conversation ids.
fn bulk(w: &World, n: usize) -> Vec<String> {
    let mut v = vec![w.group.id.to_string()];
    v.extend((1..n).map(|_| Uuid::now_v7().to_string()));
    v
}

#[tokio::test]
async fn get_unread_counts_over_500_conversations_is_invalid_argument() {
    let w = World::new().await;
    let mut b = w.user(w.b).await;
    let r = b
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: bulk(&w, 501),
        })
        .await;
    expect_err(
        r,
        Code::InvalidArgument,
        &["conversation_ids", "501", "500"],
    );
    let ok = b
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: bulk(&w, 500),
        })
        .await
        .expect("500 is within the limit")
        .into_inner();
    assert_eq!(ok.conversations.len(), 500);
}

#[tokio::test]
async fn mark_conversations_read_over_500_conversations_is_invalid_argument_and_marks_none() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut b = w.user(w.b).await;
    let r = b
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: bulk(&w, 501),
            threads: Vec::new(),
        })
        .await;
    expect_err(
        r,
        Code::InvalidArgument,
        &["conversation_ids", "501", "500"],
    );
    assert_eq!(w.observe().await, before, "the group stays unread for b");
    let ok = b
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: bulk(&w, 500),
            threads: Vec::new(),
        })
        .await
        .expect("500 is within the limit")
        .into_inner();
    assert_eq!(ok.results.len(), 500);
    assert!(ok.results[0].advanced, "the rejected call did not mark it");
    assert_eq!(ok.results[0].read_up_to_seq, 3);
}

#[tokio::test]
async fn create_conversation_over_10000_members_is_invalid_argument_and_creates_nothing() {
    let w = World::new().await;
    let mut backend = w.backend().await;
    let id = Uuid::now_v7();
    let members: Vec<Uuid> = (0..10_001).map(|_| Uuid::now_v7()).collect();
    let r = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: id.to_string(),
            member_ids: ids(&members),
        })
        .await;
    expect_err(r, Code::InvalidArgument, &["member_ids", "10001", "10000"]);
    let created = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: id.to_string(),
            member_ids: ids(&members[..2]),
        })
        .await
        .expect("create")
        .into_inner()
        .created;
    assert!(created, "the id was still free");
}
