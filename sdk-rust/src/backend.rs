//! The messaging backend's calls: conversations, membership, registration.

use crate::client::{Client, ids};
use crate::types::*;
use crate::{Error, proto};
use tonic::transport::Channel;
use uuid::Uuid;

/// The messaging backend's side: conversations, membership, registration.
/// Obtain with [`Client::backend`] on a client with a `service` token.
#[derive(Clone, Debug)]
pub struct BackendClient {
    client: Client,
}

type BackendStub = proto::receipt_backend_service_client::ReceiptBackendServiceClient<Channel>;

impl BackendClient {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// Creates a conversation; `Ok(false)` if it already existed with the same
    /// members.
    pub async fn create_conversation(
        &self,
        conversation_id: Uuid,
        members: &[Uuid],
    ) -> Result<bool, Error> {
        let req = proto::CreateConversationRequest {
            conversation_id: conversation_id.to_string(),
            member_ids: ids(members),
        };
        let r = self
            .client
            .unary(req, |ch, r| async move {
                BackendStub::new(ch).create_conversation(r).await
            })
            .await?;
        Ok(r.created)
    }

    /// Adds members: each receives the messages from `from_seq` on.
    pub async fn add_members(
        &self,
        conversation_id: Uuid,
        members: &[Uuid],
        from_seq: u64,
    ) -> Result<MembershipChanged, Error> {
        let req = proto::AddMembersRequest {
            conversation_id: conversation_id.to_string(),
            members: changes(members, from_seq),
        };
        let r = self
            .client
            .unary(req, |ch, r| async move {
                BackendStub::new(ch).add_members(r).await
            })
            .await?;
        Ok(MembershipChanged {
            changed: r.added.max(0) as u64,
            member_count: r.member_count.max(0) as u64,
        })
    }

    /// Removes members: none receives the messages from `from_seq` on.
    pub async fn remove_members(
        &self,
        conversation_id: Uuid,
        members: &[Uuid],
        from_seq: u64,
    ) -> Result<MembershipChanged, Error> {
        let req = proto::RemoveMembersRequest {
            conversation_id: conversation_id.to_string(),
            members: changes(members, from_seq),
        };
        let r = self
            .client
            .unary(req, |ch, r| async move {
                BackendStub::new(ch).remove_members(r).await
            })
            .await?;
        Ok(MembershipChanged {
            changed: r.removed.max(0) as u64,
            member_count: r.member_count.max(0) as u64,
        })
    }

    /// Registers sent messages, in batches of up to 1000 per call (larger
    /// slices are split). Returns how many were new. Safe to retry.
    pub async fn register_messages(&self, messages: &[NewMessage]) -> Result<u64, Error> {
        let mut registered = 0;
        for chunk in messages.chunks(1000) {
            let req = proto::RegisterMessagesRequest {
                messages: chunk
                    .iter()
                    .map(|m| proto::MessageRegistration {
                        message_id: m.message_id.to_string(),
                        conversation_id: m.conversation_id.to_string(),
                        seq: m.seq as i64,
                        sender_id: m.sender_id.to_string(),
                        sent_at_ms: m.sent_at.map(millis).unwrap_or(0),
                        thread_root_message_id: m
                            .thread_root_message_id
                            .map(|r| r.to_string())
                            .unwrap_or_default(),
                    })
                    .collect(),
            };
            let r = self
                .client
                .unary(req, |ch, r| async move {
                    BackendStub::new(ch).register_messages(r).await
                })
                .await?;
            registered += r.registered.max(0) as u64;
        }
        Ok(registered)
    }
}

fn changes(members: &[Uuid], from_seq: u64) -> Vec<proto::MembershipChange> {
    members
        .iter()
        .map(|u| proto::MembershipChange {
            user_id: u.to_string(),
            from_seq: from_seq as i64,
        })
        .collect()
}
