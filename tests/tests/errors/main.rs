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

mod access;
mod auth;
mod conflicts;
mod empty;
mod health;

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

mod ids;
mod in_conversation;
mod limits;
mod missing;
mod recipients;
