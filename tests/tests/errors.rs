//! DESIGN.md §6: every error path, each rule as its own test. Each test checks
//! the status code, that the message names the offending field, and that the
//! rejected call changed nothing.

use receipts_proto::v1 as pb;
use receipts_server::auth::{Claims, Role, mint_token};
use receipts_tests::*;
use std::time::Duration;
use tonic::{Code, Status};
use uuid::Uuid;

/// Values that are not UUIDs, and the empty string (a missing required id).
const BAD_IDS: [&str; 5] = [
    "not-a-uuid",
    "",
    "018f3a2e-6c1d-7cc0-9a41-3d5f2b7e8a1",
    "018f3a2e-6c1d-7cc0-9a41-3d5f2b7e8a10x",
    "018f3a2e-6c1d-7cc0-9a41-3d5f2b7e8a1g",
];

/// Asserts that `result` failed with `code` and a message naming every one of
/// `names`; returns the status.
#[track_caller]
fn expect_err<T>(result: Result<tonic::Response<T>, Status>, code: Code, names: &[&str]) -> Status {
    let status = match result {
        Ok(_) => panic!("expected {code:?} naming {names:?}, got Ok"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    for name in names {
        assert!(
            status.message().contains(name),
            "{code:?} message {:?} does not name {name:?}",
            status.message()
        );
    }
    status
}

fn ids(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

fn change(user: impl ToString, from_seq: i64) -> pb::MembershipChange {
    pb::MembershipChange {
        user_id: user.to_string(),
        from_seq,
    }
}

/// Adds arbitrary metadata to every call (dev headers, odd authorization).
#[derive(Clone, Debug)]
struct Meta(Vec<(&'static str, String)>);

impl tonic::service::Interceptor for Meta {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        for (k, v) in &self.0 {
            req.metadata_mut()
                .insert(*k, v.parse().expect("ascii metadata"));
        }
        Ok(req)
    }
}

type MetaUserClient = ReceiptServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Meta>,
>;

async fn meta_client(s: &TestServer, meta: &[(&'static str, &str)]) -> MetaUserClient {
    ReceiptServiceClient::with_interceptor(
        s.channel().await,
        Meta(meta.iter().map(|(k, v)| (*k, (*v).to_string())).collect()),
    )
}

/// Signs `claims` with `secret` (HS256), like a real issuer would.
fn sign(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Everything an error test may disturb, as the members see it.
#[derive(Debug, PartialEq)]
struct Observed {
    /// Per viewer: its view of the messages, or the code it was refused with.
    receipts: Vec<Result<Vec<pb::MessageReceipts>, Code>>,
    unread: Vec<Vec<pb::ConversationUnread>>,
    sharing: Vec<bool>,
}

/// A server with some state worth protecting:
/// - `group` (a, b, c): a sent `msgs` (seqs 1..=3); b has msgs[0] delivered,
///   c has read up to msgs[1];
/// - `other` (b, d): b sent `other_msg` (seq 1);
/// - d is not a member of `group`.
struct World {
    s: TestServer,
    group: Conversation,
    other: Conversation,
    msgs: Vec<Uuid>,
    other_msg: Uuid,
    a: Uuid,
    b: Uuid,
    c: Uuid,
    d: Uuid,
}

impl World {
    async fn new() -> Self {
        let s = TestServer::start().await;
        let mut backend = s.backend().await;
        let mut group = Conversation::create(&mut backend, 3).await;
        let (a, b, c) = (group.members[0], group.members[1], group.members[2]);
        let d = Uuid::now_v7();
        let mut msgs = Vec::new();
        for _ in 0..3 {
            msgs.push(group.send(&mut backend, a).await);
        }
        let mut other = Conversation::create_with(&mut backend, vec![b, d]).await;
        let other_msg = other.send(&mut backend, b).await;
        deliver(&mut s.user(b).await, &[msgs[0]]).await;
        read_up_to(&mut s.user(c).await, group.id, msgs[1]).await;
        Self {
            s,
            group,
            other,
            msgs,
            other_msg,
            a,
            b,
            c,
            d,
        }
    }

    async fn user(&self, u: Uuid) -> UserClient {
        self.s.user(u).await
    }

    async fn backend(&self) -> BackendClient {
        self.s.backend().await
    }

    async fn observe(&self) -> Observed {
        let mut receipts = Vec::new();
        for (viewer, conversation, messages) in [
            (self.a, self.group.id, self.msgs.clone()),
            (self.b, self.group.id, self.msgs.clone()),
            (self.c, self.group.id, self.msgs.clone()),
            (self.b, self.other.id, vec![self.other_msg]),
            (self.d, self.other.id, vec![self.other_msg]),
        ] {
            let view = self
                .user(viewer)
                .await
                .get_receipts(pb::GetReceiptsRequest {
                    conversation_id: conversation.to_string(),
                    message_ids: ids(&messages),
                    include_recipients: true,
                })
                .await;
            receipts.push(view.map(|r| r.into_inner().messages).map_err(|s| s.code()));
        }
        let mut unread = Vec::new();
        let mut sharing = Vec::new();
        for u in [self.a, self.b, self.c, self.d] {
            let mut client = self.user(u).await;
            unread.push(
                client
                    .get_unread_counts(pb::GetUnreadCountsRequest {
                        conversation_ids: ids(&[self.group.id, self.other.id]),
                    })
                    .await
                    .expect("unread counts")
                    .into_inner()
                    .conversations,
            );
            sharing.push(
                client
                    .get_privacy_settings(pb::GetPrivacySettingsRequest {})
                    .await
                    .expect("privacy")
                    .into_inner()
                    .settings
                    .expect("settings")
                    .send_read_receipts,
            );
        }
        Observed {
            receipts,
            unread,
            sharing,
        }
    }

    /// Asserts that none of `messages` is registered anywhere (b is a member
    /// of both conversations; an unknown id is NOT_FOUND, not "elsewhere").
    async fn assert_unregistered(&self, messages: &[Uuid]) {
        let mut b = self.user(self.b).await;
        for m in messages {
            let r = b
                .get_receipts(pb::GetReceiptsRequest {
                    conversation_id: self.group.id.to_string(),
                    message_ids: vec![m.to_string()],
                    include_recipients: false,
                })
                .await;
            expect_err(r, Code::NotFound, &[&m.to_string()]);
        }
    }

    /// The current member count of `conversation`, via a no-op AddMembers of
    /// an existing member.
    async fn member_count(&self, conversation: Uuid, existing: Uuid) -> i64 {
        let r = self
            .backend()
            .await
            .add_members(pb::AddMembersRequest {
                conversation_id: conversation.to_string(),
                members: vec![change(existing, 1)],
            })
            .await
            .expect("no-op add")
            .into_inner();
        assert_eq!(r.added, 0, "{existing} was expected to be a member");
        r.member_count
    }
}

// ---------------------------------------------------------------------------
// Malformed and missing ids, in every id field of every RPC.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mark_delivered_with_malformed_message_id_is_invalid_argument_naming_the_field() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut c = w.user(w.c).await;
    for bad in BAD_IDS {
        let r = c
            .mark_delivered(pb::MarkDeliveredRequest {
                message_ids: vec![w.msgs[2].to_string(), bad.into()],
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

/// Registers `[valid, bad]` where `bad` is a valid entry spoiled by `spoil`,
/// expecting `code` naming `field`; the valid entry must not be registered.
async fn register_rejected(
    w: &World,
    spoil: impl Fn(&mut pb::MessageRegistration),
    code: Code,
    names: &[&str],
) {
    let before = w.observe().await;
    let (good, bad) = (Uuid::now_v7(), Uuid::now_v7());
    let mut spoiled = registration(bad, w.group.id, 5, w.a);
    spoil(&mut spoiled);
    let r = w
        .backend()
        .await
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![registration(good, w.group.id, 4, w.a), spoiled],
        })
        .await;
    expect_err(r, code, names);
    w.assert_unregistered(&[good, bad]).await;
    assert_eq!(w.observe().await, before, "last_seq and counts unchanged");
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

// ---------------------------------------------------------------------------
// Empty batches.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Over-limit batches (default limits), made of valid UUIDs.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Out-of-range numbers and missing messages.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Non-members and messages of other conversations.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Registration and membership conflicts.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Authentication and roles.
// ---------------------------------------------------------------------------

/// Tries a write as a client with bad credentials, expecting `code` naming
/// `names`, and checks that nothing changed.
async fn refused_as(w: &World, mut client: UserClient, code: Code, names: &[&str]) {
    let before = w.observe().await;
    let r = client
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: w.msgs[2].to_string(),
        })
        .await;
    expect_err(r, code, names);
    let r = client
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: ids(&w.msgs),
        })
        .await;
    expect_err(r, code, names);
    let r = client
        .update_privacy_settings(pb::UpdatePrivacySettingsRequest {
            settings: Some(pb::PrivacySettings {
                send_read_receipts: false,
            }),
        })
        .await;
    expect_err(r, code, names);
    let r = client
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: w.group.id.to_string(),
            message_ids: ids(&w.msgs),
            include_recipients: true,
        })
        .await;
    expect_err(r, code, names);
    let r = client
        .subscribe_receipts(pb::SubscribeReceiptsRequest::default())
        .await;
    expect_err(r, code, names);
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn calls_without_a_token_are_unauthenticated() {
    let w = World::new().await;
    let client = w.s.user_with_token(None).await;
    refused_as(&w, client, Code::Unauthenticated, &["authorization"]).await;
    let mut backend =
        ReceiptBackendServiceClient::with_interceptor(w.s.channel().await, Bearer(None));
    let r = backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![registration(Uuid::now_v7(), w.group.id, 4, w.a)],
        })
        .await;
    expect_err(r, Code::Unauthenticated, &["authorization"]);
}

#[tokio::test]
async fn token_signed_with_another_secret_is_unauthenticated() {
    let w = World::new().await;
    let forged = mint_token(
        "some-other-secret-0123456789",
        w.b,
        Role::User,
        Duration::from_secs(3600),
    )
    .expect("mint");
    let client = w.s.user_with_token(Some(forged)).await;
    refused_as(
        &w,
        client,
        Code::Unauthenticated,
        &["authorization", "signature"],
    )
    .await;
}

#[tokio::test]
async fn expired_token_is_unauthenticated() {
    let w = World::new().await;
    let now = now_secs();
    let expired = sign(
        &Claims {
            sub: w.b.to_string(),
            role: Role::User,
            exp: now - 600,
            iat: Some(now - 4200),
            nbf: None,
            iss: None,
            aud: None,
        },
        SECRET,
    );
    let client = w.s.user_with_token(Some(expired)).await;
    refused_as(
        &w,
        client,
        Code::Unauthenticated,
        &["authorization", "expired"],
    )
    .await;
}

#[tokio::test]
async fn garbage_bearer_token_is_unauthenticated() {
    let w = World::new().await;
    let client = w.s.user_with_token(Some("xyz".into())).await;
    refused_as(&w, client, Code::Unauthenticated, &["authorization"]).await;
    let mut basic = meta_client(&w.s, &[("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")]).await;
    let r = basic
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await;
    expect_err(r, Code::Unauthenticated, &["authorization", "Bearer"]);
}

#[tokio::test]
async fn token_whose_sub_is_not_a_uuid_is_unauthenticated() {
    let w = World::new().await;
    let token = sign(
        &Claims {
            sub: "alice".into(),
            role: Role::User,
            exp: now_secs() + 3600,
            iat: None,
            nbf: None,
            iss: None,
            aud: None,
        },
        SECRET,
    );
    let client = w.s.user_with_token(Some(token)).await;
    refused_as(&w, client, Code::Unauthenticated, &["authorization", "sub"]).await;
}

#[tokio::test]
async fn user_token_calling_the_backend_service_is_permission_denied() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = ReceiptBackendServiceClient::with_interceptor(
        w.s.channel().await,
        Bearer(Some(token(w.a, Role::User))),
    );
    let fresh_conversation = Uuid::now_v7();
    let fresh_message = Uuid::now_v7();
    let names = ["service"];
    let r = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: fresh_conversation.to_string(),
            member_ids: ids(&[w.a, w.d]),
        })
        .await;
    expect_err(r, Code::PermissionDenied, &names);
    let r = backend
        .add_members(pb::AddMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(w.d, 1)],
        })
        .await;
    expect_err(r, Code::PermissionDenied, &names);
    let r = backend
        .remove_members(pb::RemoveMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(w.b, 2)],
        })
        .await;
    expect_err(r, Code::PermissionDenied, &names);
    let r = backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![registration(fresh_message, w.group.id, 4, w.a)],
        })
        .await;
    expect_err(r, Code::PermissionDenied, &names);
    assert_eq!(w.observe().await, before);
    w.assert_unregistered(&[fresh_message]).await;
    let created = w
        .backend()
        .await
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: fresh_conversation.to_string(),
            member_ids: ids(&[w.b, w.c]),
        })
        .await
        .expect("create")
        .into_inner()
        .created;
    assert!(created, "the user could not create it");
}

#[tokio::test]
async fn service_token_calling_user_calls_is_permission_denied() {
    let w = World::new().await;
    let service = w.s.user_with_token(Some(token(w.b, Role::Service))).await;
    refused_as(&w, service.clone(), Code::PermissionDenied, &["user"]).await;
    let mut service = service;
    let r = service
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: ids(&[w.group.id]),
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["user"]);
    let r = service
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: ids(&[w.group.id]),
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["user"]);
    let r = service
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await;
    expect_err(r, Code::PermissionDenied, &["user"]);
}

#[tokio::test]
async fn dev_header_is_unauthenticated_when_dev_mode_is_off() {
    let s = TestServer::start_with(|c| c.dev_mode = false).await;
    let mut backend = s.backend().await;
    let mut conv = Conversation::create(&mut backend, 2).await;
    let (a, b) = (conv.members[0], conv.members[1]);
    let m = conv.send(&mut backend, a).await;
    let mut dev = meta_client(&s, &[("x-receipts-user", &b.to_string())]).await;
    let r = dev
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: conv.id.to_string(),
            message_id: m.to_string(),
        })
        .await;
    expect_err(r, Code::Unauthenticated, &["x-receipts-user", "dev mode"]);
    let r = receipt(&mut s.user(a).await, conv.id, m).await;
    assert_eq!((r.delivered_count, r.read_count), (0, 0));
}

#[tokio::test]
async fn dev_header_is_accepted_on_a_dev_mode_loopback_server() {
    let w = World::new().await;
    let mut dev = meta_client(&w.s, &[("x-receipts-user", &w.b.to_string())]).await;
    let read = dev
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: w.msgs[2].to_string(),
        })
        .await
        .expect("dev header accepted")
        .into_inner();
    assert_eq!(read.read_up_to_seq, 3);
    let r = receipt(&mut w.user(w.a).await, w.group.id, w.msgs[2]).await;
    assert_eq!(r.read_count, 1, "b's read, made through the dev header");
    // A dev header that is not a UUID is still refused.
    let mut bad = meta_client(&w.s, &[("x-receipts-user", "bob")]).await;
    let r = bad
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await;
    expect_err(r, Code::Unauthenticated, &["x-receipts-user"]);
}

#[tokio::test]
async fn a_bad_token_is_not_rescued_by_a_dev_header() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut both = meta_client(
        &w.s,
        &[
            ("authorization", "Bearer xyz"),
            ("x-receipts-user", &w.b.to_string()),
        ],
    )
    .await;
    let r = both
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: w.msgs[2].to_string(),
        })
        .await;
    expect_err(r, Code::Unauthenticated, &["authorization"]);
    assert_eq!(w.observe().await, before);
}

/// Runs `receiptd` with `args` and a clean environment; returns its exit code
/// and stderr.
async fn run_receiptd(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(receiptd_path())
        .args(args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn receiptd");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("receiptd must refuse the configuration and exit, not serve")
        .expect("wait for receiptd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dev_mode_on_a_non_loopback_listen_address_is_refused_with_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (code, stderr) = run_receiptd(&[
        "--dev-mode".as_ref(),
        "--listen".as_ref(),
        "0.0.0.0:0".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ])
    .await;
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert!(stderr.contains("--dev-mode"), "stderr: {stderr}");
    assert!(!data.exists(), "refused before opening the store");
}

#[tokio::test]
async fn receiptd_without_any_authentication_configured_exits_64_naming_jwt_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (code, stderr) = run_receiptd(&[
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ])
    .await;
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert!(stderr.contains("--jwt-secret"), "stderr: {stderr}");
    assert!(!data.exists(), "refused before opening the store");
}

// ---------------------------------------------------------------------------
// Health needs no credentials.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_check_reports_serving_without_a_token() {
    let s = TestServer::start_with(|c| c.dev_mode = false).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "receipts.v1.ReceiptService".into(),
        })
        .await
        .expect("health without a token")
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn health_check_of_an_unknown_service_is_not_found() {
    let s = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "receipts.v1.NoSuchService".into(),
        })
        .await;
    assert_eq!(r.expect_err("unknown service").code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_answers_without_a_token() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let s = TestServer::start_with(|c| c.dev_mode = false).await;
    let mut client = ServerReflectionClient::new(s.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "receipts.v1.ReceiptService".into(),
        )),
    };
    let resp = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection without a token")
        .into_inner()
        .message()
        .await
        .expect("message")
        .expect("one response");
    match resp.message_response {
        Some(MessageResponse::FileDescriptorResponse(f)) => {
            assert!(!f.file_descriptor_proto.is_empty());
        }
        other => panic!("expected a file descriptor, got {other:?}"),
    }
}
