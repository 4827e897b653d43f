//! MarkDelivered's conversation form (`conversations`): every wrong entry is
//! named, and the whole call then records nothing.

use super::*;

fn in_conversation(conversation: Uuid, messages: &[Uuid]) -> pb::ConversationMessageIds {
    pb::ConversationMessageIds {
        conversation_id: conversation.to_string(),
        message_ids: ids(messages),
    }
}

fn by_conversation(entries: Vec<pb::ConversationMessageIds>) -> pb::MarkDeliveredRequest {
    pb::MarkDeliveredRequest {
        conversations: entries,
        ..Default::default()
    }
}

/// `user`'s MarkDelivered of `req` fails with `code` naming `names`, and
/// nothing any member can observe changed.
async fn rejected(
    w: &World,
    user: Uuid,
    req: pb::MarkDeliveredRequest,
    code: Code,
    names: &[&str],
) {
    let before = w.observe().await;
    let r = w.user(user).await.mark_delivered(req).await;
    expect_err(r, code, names);
    assert_eq!(w.observe().await, before, "nothing was recorded");
}

#[tokio::test]
async fn a_message_named_in_a_conversation_it_is_not_in_is_not_found_and_records_none() {
    let w = World::new().await;
    // b is a member of both conversations; msgs[2] is the group's, named
    // under the other conversation, after valid entries.
    let req = by_conversation(vec![
        in_conversation(w.other.id, &[w.other_msg]),
        in_conversation(w.group.id, &[w.msgs[1]]),
        in_conversation(w.other.id, &[w.msgs[2]]),
    ]);
    let (msg, other) = (w.msgs[2].to_string(), w.other.id.to_string());
    let names = ["conversations.message_ids", msg.as_str(), other.as_str()];
    rejected(&w, w.b, req, Code::NotFound, &names).await;
}

#[tokio::test]
async fn an_unknown_conversation_is_not_found_naming_it_and_records_none() {
    let w = World::new().await;
    let unknown = Uuid::now_v7();
    let req = pb::MarkDeliveredRequest {
        message_ids: ids(&[w.msgs[2]]),
        conversations: vec![in_conversation(unknown, &[w.msgs[1]])],
    };
    let conversation = unknown.to_string();
    let names = ["conversations.conversation_id", conversation.as_str()];
    rejected(&w, w.c, req, Code::NotFound, &names).await;
}

#[tokio::test]
async fn a_message_named_in_two_conversations_is_invalid_naming_the_second() {
    let w = World::new().await;
    let req = by_conversation(vec![
        in_conversation(w.group.id, &[w.msgs[1], w.msgs[2]]),
        in_conversation(w.other.id, &[w.other_msg, w.msgs[2]]),
    ]);
    let msg = w.msgs[2].to_string();
    let names = ["conversations[1].message_ids[1]", &msg, "one conversation"];
    rejected(&w, w.b, req, Code::InvalidArgument, &names).await;
}

#[tokio::test]
async fn bad_ids_in_the_conversation_form_are_invalid_naming_the_entry() {
    let w = World::new().await;
    for bad in BAD_IDS {
        let mut entry = in_conversation(w.group.id, &[w.msgs[1]]);
        entry.conversation_id = bad.into();
        let req = by_conversation(vec![in_conversation(w.group.id, &[w.msgs[2]]), entry]);
        let name = "conversations[1].conversation_id";
        let why = if bad.is_empty() { "required" } else { bad };
        rejected(&w, w.c, req, Code::InvalidArgument, &[name, why]).await;

        let mut entry = in_conversation(w.group.id, &[w.msgs[1]]);
        entry.message_ids.push(bad.into());
        let name = "conversations[0].message_ids[1]";
        rejected(
            &w,
            w.c,
            by_conversation(vec![entry]),
            Code::InvalidArgument,
            &[name],
        )
        .await;
    }
    let req = by_conversation(vec![
        in_conversation(w.group.id, &[w.msgs[2]]),
        in_conversation(w.group.id, &[]),
    ]);
    let names = ["conversations[1].message_ids", "must not be empty"];
    rejected(&w, w.c, req, Code::InvalidArgument, &names).await;
}

#[tokio::test]
async fn a_non_member_naming_the_conversation_is_permission_denied_and_records_nothing() {
    let w = World::new().await;
    let req = by_conversation(vec![
        in_conversation(w.other.id, &[w.other_msg]),
        in_conversation(w.group.id, &[w.msgs[0]]),
    ]);
    rejected(&w, w.d, req, Code::PermissionDenied, &["conversations"]).await;
}

/// A non-member naming a conversation gets PERMISSION_DENIED whatever the
/// ids are: it cannot probe which messages the conversation holds.
#[tokio::test]
async fn a_non_member_learns_nothing_of_a_conversations_messages() {
    let w = World::new().await;
    for probe in [w.msgs[0], w.other_msg, Uuid::now_v7()] {
        let req = by_conversation(vec![in_conversation(w.group.id, &[probe])]);
        rejected(&w, w.d, req, Code::PermissionDenied, &["conversations"]).await;
    }
}

#[tokio::test]
async fn the_limit_counts_the_ids_of_both_forms() {
    let w = World::new().await;
    let req = pb::MarkDeliveredRequest {
        message_ids: ids(&[w.msgs[2]; 401]),
        conversations: vec![in_conversation(w.group.id, &[w.msgs[2]; 600])],
    };
    let names = ["message_ids and conversations", "1001", "1000"];
    rejected(&w, w.c, req, Code::InvalidArgument, &names).await;
}
