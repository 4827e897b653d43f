//! Conversations and the RPC wrappers: [`Conversation`] and the calls a user
//! or the backend makes (deliver, read, receipts, privacy), and
//! [`Subscription`] with helpers over the events it carries.

use crate::{BackendClient, UserClient};
use receipts_proto::v1 as pb;
use std::time::Duration;
use uuid::Uuid;

/// Through the Rust SDK: a conversation of `members` and one message from
/// the first of them at seq 1; returns (conversation, message).
pub async fn sdk_chat(backend: &receipts_sdk::BackendClient, members: &[Uuid]) -> (Uuid, Uuid) {
    let (conv, msg) = (Uuid::now_v7(), Uuid::now_v7());
    backend
        .create_conversation(conv, members)
        .await
        .expect("create the conversation");
    backend
        .register_messages(&[receipts_sdk::NewMessage {
            message_id: msg,
            conversation_id: conv,
            seq: 1,
            sender_id: members[0],
            sent_at: None,
            thread_root_message_id: None,
        }])
        .await
        .expect("register the message");
    (conv, msg)
}

/// A conversation created through the backend API, with message helpers.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub id: Uuid,
    pub members: Vec<Uuid>,
    next_seq: i64,
}

impl Conversation {
    /// Creates a conversation with `n` fresh members.
    pub async fn create(backend: &mut BackendClient, n: usize) -> Self {
        let members: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        Self::create_with(backend, members).await
    }

    /// Creates a conversation with the given members.
    pub async fn create_with(backend: &mut BackendClient, members: Vec<Uuid>) -> Self {
        let id = Uuid::now_v7();
        backend
            .create_conversation(pb::CreateConversationRequest {
                conversation_id: id.to_string(),
                member_ids: members.iter().map(Uuid::to_string).collect(),
            })
            .await
            .expect("create conversation");
        Self {
            id,
            members,
            next_seq: 1,
        }
    }

    /// Registers a message from `sender` at the next seq; returns its id.
    pub async fn send(&mut self, backend: &mut BackendClient, sender: Uuid) -> Uuid {
        let id = Uuid::now_v7();
        let seq = self.next_seq;
        self.next_seq += 1;
        backend
            .register_messages(pb::RegisterMessagesRequest {
                messages: vec![registration(id, self.id, seq, sender)],
            })
            .await
            .expect("register message");
        id
    }

    /// Registers `n` messages from `sender` at the next seqs in one call;
    /// returns their ids in seq order.
    pub async fn send_many(
        &mut self,
        backend: &mut BackendClient,
        sender: Uuid,
        n: usize,
    ) -> Vec<Uuid> {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        self.send_ids(backend, sender, &ids).await;
        ids
    }

    /// Registers messages `ids` from `sender` at the next seqs in one call;
    /// returns how many were newly registered.
    pub async fn send_ids(
        &mut self,
        backend: &mut BackendClient,
        sender: Uuid,
        ids: &[Uuid],
    ) -> i64 {
        let seq = self.next_seq;
        self.next_seq += ids.len() as i64;
        backend
            .register_messages(pb::RegisterMessagesRequest {
                messages: ids
                    .iter()
                    .zip(seq..)
                    .map(|(id, seq)| registration(*id, self.id, seq, sender))
                    .collect(),
            })
            .await
            .expect("register messages")
            .into_inner()
            .registered
    }

    /// The seq the next message will get.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Skips seqs (e.g. after registering messages by hand).
    pub fn set_next_seq(&mut self, seq: i64) {
        self.next_seq = seq;
    }

    /// Removes `user`: it no longer receives from `from_seq` on (it stays
    /// in `members`).
    pub async fn remove_member(&self, backend: &mut BackendClient, user: Uuid, from_seq: i64) {
        backend
            .remove_members(pb::RemoveMembersRequest {
                conversation_id: self.id.to_string(),
                members: vec![pb::MembershipChange {
                    user_id: user.to_string(),
                    from_seq,
                }],
            })
            .await
            .expect("remove a member");
    }

    /// Adds `user` as a member receiving from `from_seq` on (not to
    /// `members`, which stay the ones it was created with).
    pub async fn add_member(&self, backend: &mut BackendClient, user: Uuid, from_seq: i64) {
        backend
            .add_members(pb::AddMembersRequest {
                conversation_id: self.id.to_string(),
                members: vec![pb::MembershipChange {
                    user_id: user.to_string(),
                    from_seq,
                }],
            })
            .await
            .expect("add a member");
    }
}

/// A registration entry.
pub fn registration(
    id: Uuid,
    conversation: Uuid,
    seq: i64,
    sender: Uuid,
) -> pb::MessageRegistration {
    pb::MessageRegistration {
        message_id: id.to_string(),
        conversation_id: conversation.to_string(),
        seq,
        sender_id: sender.to_string(),
        sent_at_ms: 0,
        thread_root_message_id: String::new(),
    }
}

/// Marks delivered.
pub async fn deliver(client: &mut UserClient, ids: &[Uuid]) -> pb::MarkDeliveredResponse {
    client
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: ids.iter().map(Uuid::to_string).collect(),
            ..Default::default()
        })
        .await
        .expect("mark delivered")
        .into_inner()
}

/// Marks read up to `message`.
pub async fn read_up_to(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
) -> pb::MarkReadUpToResponse {
    try_read_up_to(client, conversation, message)
        .await
        .expect("mark read")
}

/// MarkReadUpTo, refused or not.
pub async fn try_read_up_to(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
) -> Result<pb::MarkReadUpToResponse, tonic::Status> {
    client
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: conversation.to_string(),
            message_id: message.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The receipts of one message (with recipients) as `client` sees them.
pub async fn receipt(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
) -> pb::MessageReceipts {
    receipt_with(client, conversation, message, true).await
}

/// The receipts of one message without the per-recipient list (counts only).
pub async fn counts_only(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
) -> pb::MessageReceipts {
    receipt_with(client, conversation, message, false).await
}

async fn receipt_with(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
    include_recipients: bool,
) -> pb::MessageReceipts {
    client
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: conversation.to_string(),
            message_ids: vec![message.to_string()],
            include_recipients,
        })
        .await
        .expect("get receipts")
        .into_inner()
        .messages
        .remove(0)
}

/// Sets whether `client`'s user shares read receipts.
pub async fn set_sharing(client: &mut UserClient, on: bool) {
    client
        .update_privacy_settings(pb::UpdatePrivacySettingsRequest {
            settings: Some(pb::PrivacySettings {
                send_read_receipts: on,
            }),
        })
        .await
        .expect("update privacy");
}

/// An open subscription.
pub struct Subscription {
    pub stream: tonic::Streaming<pb::SubscribeReceiptsResponse>,
    /// The cursor of the last event received.
    pub cursor: String,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl Subscription {
    /// Subscribes (optionally from `cursor`) and reads up to the `live` marker,
    /// returning the replayed events.
    pub async fn open(
        client: &mut UserClient,
        cursor: Option<String>,
    ) -> (Self, Vec<pb::SubscribeReceiptsResponse>) {
        Self::open_with(client, cursor, false).await
    }

    /// Like [`Subscription::open`], as a client that applies ranges itself
    /// (`accept_ranges`) or not.
    pub async fn open_with(
        client: &mut UserClient,
        cursor: Option<String>,
        accept_ranges: bool,
    ) -> (Self, Vec<pb::SubscribeReceiptsResponse>) {
        let stream = client
            .subscribe_receipts(pb::SubscribeReceiptsRequest {
                cursor: cursor.clone().unwrap_or_default(),
                accept_ranges,
            })
            .await
            .expect("subscribe")
            .into_inner();
        let mut sub = Self {
            stream,
            cursor: cursor.unwrap_or_default(),
        };
        let mut replayed = Vec::new();
        loop {
            let ev = sub.next().await.expect("event before live marker");
            if matches!(
                ev.event,
                Some(pb::subscribe_receipts_response::Event::Live(_))
            ) {
                return (sub, replayed);
            }
            replayed.push(ev);
        }
    }

    /// The next event, or `None` if none arrives within 5 s.
    pub async fn next(&mut self) -> Option<pb::SubscribeReceiptsResponse> {
        self.next_within(Duration::from_secs(5)).await
    }

    /// The next event within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<pb::SubscribeReceiptsResponse> {
        match tokio::time::timeout(wait, self.stream.message()).await {
            Ok(Ok(Some(ev))) => {
                self.cursor = ev.cursor.clone();
                Some(ev)
            }
            _ => None,
        }
    }

    /// Waits for the next receipts event and returns its messages.
    pub async fn next_receipts(&mut self) -> pb::ConversationReceipts {
        loop {
            let ev = self.next().await.expect("expected a receipts event");
            if let Some(pb::subscribe_receipts_response::Event::Receipts(r)) = ev.event {
                return r;
            }
        }
    }
}

/// The newest (delivered count, read count, tick) of each message in a run
/// of events.
pub fn latest_states(
    events: &[pb::SubscribeReceiptsResponse],
) -> std::collections::BTreeMap<String, (i64, i64, i32)> {
    let mut out = std::collections::BTreeMap::new();
    for ev in events {
        if let Some(pb::subscribe_receipts_response::Event::Receipts(r)) = &ev.event {
            for m in &r.messages {
                out.insert(
                    m.message_id.clone(),
                    (m.delivered_count, m.read_count, m.tick),
                );
            }
        }
    }
    out
}

/// The log offset of an event's cursor.
pub fn event_offset(ev: &pb::SubscribeReceiptsResponse) -> u64 {
    receipts_server::domain::Cursor::decode(&ev.cursor)
        .expect("cursor")
        .offset
}
