//! The client and its calls; how it is configured and connected is in
//! `builder.rs`.

use crate::backend::BackendClient;
use crate::batch::{DeliveredBatcher, ReadMarker};
use crate::builder::{Auth, ClientBuilder, Interceptor, RetryPolicy};
use crate::subscribe::{SubscribeOptions, Subscription};
use crate::trace::TraceSource;
use crate::types::*;
use crate::{Error, proto};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use uuid::Uuid;

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) endpoint: String,
    pub(crate) auth: Auth,
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) trace: Option<TraceSource>,
    pub(crate) interceptors: Vec<Interceptor>,
}

/// A Receipts client. Cheap to clone: clones share one connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    inner: Arc<Inner>,
}

type UserStub = proto::receipt_service_client::ReceiptServiceClient<Channel>;

pub(crate) fn ids(v: &[Uuid]) -> Vec<String> {
    v.iter().map(Uuid::to_string).collect()
}

impl Client {
    pub(crate) fn new(channel: Channel, inner: Inner) -> Self {
        Self {
            channel,
            inner: Arc::new(inner),
        }
    }

    /// A builder for the server at `endpoint`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// A request carrying credentials (and the call deadline if `deadline`).
    pub(crate) async fn request<T>(
        &self,
        msg: T,
        deadline: bool,
    ) -> Result<tonic::Request<T>, Error> {
        let mut req = tonic::Request::new(msg);
        if deadline {
            req.set_timeout(self.inner.timeout);
        }
        let md = req.metadata_mut();
        let value = |s: String| {
            s.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                .map_err(|_| Error::Config("credential is not a valid header value".into()))
        };
        match &self.inner.auth {
            Auth::None => {}
            Auth::Token { provider: p, .. } => {
                let token = p.token().await?;
                md.insert("authorization", value(format!("Bearer {token}"))?);
            }
            Auth::Dev { user, service } => {
                md.insert("x-receipts-user", value(user.to_string())?);
                if *service {
                    md.insert("x-receipts-role", value("service".into())?);
                }
            }
        }
        if let Some(cx) = self.inner.trace.as_ref().and_then(|t| (t.0)()) {
            cx.check().map_err(Error::Config)?;
            md.insert("traceparent", value(cx.traceparent)?);
            if let Some(state) = cx.tracestate {
                md.insert("tracestate", value(state)?);
            }
        }
        if self.inner.interceptors.is_empty() {
            return Ok(req);
        }
        let (md, ext, msg) = req.into_parts();
        let mut probe = tonic::Request::from_parts(md, ext, ());
        for i in &self.inner.interceptors {
            probe = (i.0)(probe).map_err(|s| self.error(s))?;
        }
        let (md, ext, ()) = probe.into_parts();
        Ok(tonic::Request::from_parts(md, ext, msg))
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Whether a new attempt may carry other credentials than the last
    /// one: only a token provider can hand out a fresh token.
    pub(crate) fn credentials_can_change(&self) -> bool {
        matches!(self.inner.auth, Auth::Token { fixed: false, .. })
    }

    /// The typed error for a failed call of this client.
    pub(crate) fn error(&self, status: tonic::Status) -> Error {
        Error::from_call(status, &self.inner.endpoint)
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry
    }

    /// Runs a unary call with credentials, deadline and retries.
    pub(crate) async fn unary<Req, Resp, F, Fut>(&self, msg: Req, call: F) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let policy = self.inner.retry;
        let mut attempt = 1;
        loop {
            let req = self.request(msg.clone(), true).await?;
            match call(self.channel.clone(), req).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => {
                    let err = self.error(status);
                    if !err.is_transient() || attempt >= policy.max_attempts {
                        return Err(err);
                    }
                    let wait = policy.backoff(attempt);
                    tracing::debug!(%err, attempt, ?wait, "transient failure; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Acknowledges that one of your devices has these messages (≤ 1000),
    /// named by id alone. Returns one result per distinct message, in order.
    /// All messages are checked first: an unknown one fails the call and
    /// records nothing. Prefer [`Client::mark_delivered_in`] when you know
    /// the conversation: the server then needs no lookup of each message's
    /// conversation.
    pub async fn mark_delivered(&self, message_ids: &[Uuid]) -> Result<Vec<Delivery>, Error> {
        let named: Vec<(Option<Uuid>, Uuid)> = message_ids.iter().map(|m| (None, *m)).collect();
        self.mark_delivered_named(&named).await
    }

    /// Acknowledges that one of your devices has these messages of
    /// `conversation_id` (≤ 1000). Returns one result per distinct message,
    /// in order. All messages are checked first: one that is not in the
    /// conversation is NOT_FOUND, and the call then records nothing.
    pub async fn mark_delivered_in(
        &self,
        conversation_id: Uuid,
        message_ids: &[Uuid],
    ) -> Result<Vec<Delivery>, Error> {
        let named: Vec<(Option<Uuid>, Uuid)> = message_ids
            .iter()
            .map(|m| (Some(conversation_id), *m))
            .collect();
        self.mark_delivered_named(&named).await
    }

    /// MarkDelivered of messages each named alone or with its conversation:
    /// those with a conversation go in `conversations` (grouped, first-seen
    /// order); results come back in the order of `named`.
    pub(crate) async fn mark_delivered_named(
        &self,
        named: &[(Option<Uuid>, Uuid)],
    ) -> Result<Vec<Delivery>, Error> {
        let mut req = proto::MarkDeliveredRequest::default();
        let mut group: HashMap<Uuid, usize> = HashMap::new();
        for (conversation, message) in named {
            match conversation {
                None => req.message_ids.push(message.to_string()),
                Some(c) => {
                    let i = *group.entry(*c).or_insert_with(|| {
                        req.conversations.push(proto::ConversationMessageIds {
                            conversation_id: c.to_string(),
                            message_ids: Vec::new(),
                        });
                        req.conversations.len() - 1
                    });
                    req.conversations[i].message_ids.push(message.to_string());
                }
            }
        }
        let resp = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).mark_delivered(r).await
            })
            .await?;
        let mut by_id: HashMap<Uuid, Delivery> = resp
            .results
            .into_iter()
            .map(|r| {
                let d = Delivery {
                    message_id: uuid("message_id", &r.message_id)?,
                    outcome: match proto::DeliveryOutcome::try_from(r.outcome) {
                        Ok(proto::DeliveryOutcome::Recorded) => DeliveryOutcome::Recorded,
                        Ok(proto::DeliveryOutcome::NotARecipient) => DeliveryOutcome::NotARecipient,
                        _ => DeliveryOutcome::AlreadyDelivered,
                    },
                    delivered_at: time(r.delivered_at_ms),
                };
                Ok((d.message_id, d))
            })
            .collect::<Result<_, Error>>()?;
        // One result per distinct message, in the caller's order.
        Ok(named.iter().filter_map(|(_, m)| by_id.remove(m)).collect())
    }

    /// Marks everything in `conversation_id` up to and including `message_id`
    /// read. Late or repeated calls are harmless no-ops.
    pub async fn mark_read_up_to(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
    ) -> Result<ReadPosition, Error> {
        let req = proto::MarkReadUpToRequest {
            conversation_id: conversation_id.to_string(),
            message_id: message_id.to_string(),
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).mark_read_up_to(r).await
            })
            .await?;
        Ok(ReadPosition {
            read_up_to_seq: r.read_up_to_seq.max(0) as u64,
            advanced: r.advanced,
            unread_count: r.unread_count.max(0) as u64,
            thread_root_message_id: optional_uuid(
                "thread_root_message_id",
                &r.thread_root_message_id,
            )?,
            conversation_unread_count: conversation_unread(
                r.unread_count,
                r.conversation_unread_count,
            ),
        })
    }

    /// The receipt state of messages of one conversation (≤ 100): ticks and
    /// counts ("15 of 20 read"), without per-recipient entries (see
    /// [`Client::get_receipts_with_recipients`]).
    pub async fn get_receipts(
        &self,
        conversation_id: Uuid,
        message_ids: &[Uuid],
    ) -> Result<Vec<MessageReceipts>, Error> {
        self.receipts(conversation_id, message_ids, false).await
    }

    /// Like [`Client::get_receipts`], with each recipient's state and times
    /// (as you may see them) in [`MessageReceipts::recipients`].
    pub async fn get_receipts_with_recipients(
        &self,
        conversation_id: Uuid,
        message_ids: &[Uuid],
    ) -> Result<Vec<MessageReceipts>, Error> {
        self.receipts(conversation_id, message_ids, true).await
    }

    async fn receipts(
        &self,
        conversation_id: Uuid,
        message_ids: &[Uuid],
        with_recipients: bool,
    ) -> Result<Vec<MessageReceipts>, Error> {
        let req = proto::GetReceiptsRequest {
            conversation_id: conversation_id.to_string(),
            message_ids: ids(message_ids),
            include_recipients: with_recipients,
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).get_receipts(r).await
            })
            .await?;
        r.messages
            .into_iter()
            .map(MessageReceipts::try_from)
            .collect()
    }

    /// One page of a message's recipients with their states ("read by",
    /// "delivered to"), as you may see them, in user-id order: `page_size`
    /// at most (0: 50; above 500: 500), after `page_token` (`None`: the first
    /// page; else the previous page's `next_page_token`, with the same
    /// message and filter). The order does not depend on anyone's state, so
    /// paging to the end lists every recipient the filter keeps once, even
    /// while others read. See [`Client::all_recipients`].
    pub async fn list_recipients(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
        filter: RecipientFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<RecipientPage, Error> {
        let req = proto::ListRecipientsRequest {
            conversation_id: conversation_id.to_string(),
            message_id: message_id.to_string(),
            filter: filter.wire() as i32,
            page_size: page_size.min(i32::MAX as u32) as i32,
            page_token: page_token.unwrap_or_default().to_string(),
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).list_recipients(r).await
            })
            .await?;
        RecipientPage::try_from(r)
    }

    /// Every recipient of a message the filter keeps: [`Client::list_recipients`]
    /// page after page (500 at a time) until the list ends. One call per 500
    /// members of the group; prefer pages for a list a user scrolls.
    pub async fn all_recipients(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
        filter: RecipientFilter,
    ) -> Result<Vec<RecipientReceipt>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .list_recipients(conversation_id, message_id, filter, 500, token.as_deref())
                .await?;
            out.extend(page.recipients);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// Unread badges for up to 500 conversations, one result each.
    pub async fn unread_counts(
        &self,
        conversation_ids: &[Uuid],
    ) -> Result<Vec<UnreadCount>, Error> {
        let req = proto::GetUnreadCountsRequest {
            conversation_ids: ids(conversation_ids),
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).get_unread_counts(r).await
            })
            .await?;
        r.conversations
            .into_iter()
            .map(|c| {
                Ok(UnreadCount {
                    conversation_id: uuid("conversation_id", &c.conversation_id)?,
                    outcome: outcome(c.outcome),
                    unread_count: c.unread_count.max(0) as u64,
                    read_up_to_seq: c.read_up_to_seq.max(0) as u64,
                    last_seq: c.last_seq.max(0) as u64,
                    main_unread_count: c.main_unread_count.max(0) as u64,
                    threads: c
                        .threads
                        .into_iter()
                        .map(|t| {
                            Ok(ThreadUnread {
                                thread_root_message_id: uuid(
                                    "thread_root_message_id",
                                    &t.thread_root_message_id,
                                )?,
                                unread_count: t.unread_count.max(0) as u64,
                                read_up_to_seq: t.read_up_to_seq.max(0) as u64,
                                last_seq: t.last_seq.max(0) as u64,
                            })
                        })
                        .collect::<Result<_, Error>>()?,
                })
            })
            .collect()
    }

    /// Marks up to 500 conversations read up to their latest message, in
    /// their main timeline and every thread.
    pub async fn mark_conversations_read(
        &self,
        conversation_ids: &[Uuid],
    ) -> Result<Vec<ConversationRead>, Error> {
        self.mark_read(proto::MarkConversationsReadRequest {
            conversation_ids: ids(conversation_ids),
            threads: Vec::new(),
        })
        .await
    }

    /// Marks up to 500 threads, each `(conversation, root message)`, read up
    /// to their latest message; one result each, with
    /// `thread_root_message_id` set.
    pub async fn mark_threads_read(
        &self,
        threads: &[(Uuid, Uuid)],
    ) -> Result<Vec<ConversationRead>, Error> {
        self.mark_read(proto::MarkConversationsReadRequest {
            conversation_ids: Vec::new(),
            threads: threads
                .iter()
                .map(|(c, root)| proto::ThreadRef {
                    conversation_id: c.to_string(),
                    thread_root_message_id: root.to_string(),
                })
                .collect(),
        })
        .await
    }

    async fn mark_read(
        &self,
        req: proto::MarkConversationsReadRequest,
    ) -> Result<Vec<ConversationRead>, Error> {
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).mark_conversations_read(r).await
            })
            .await?;
        r.results
            .into_iter()
            .map(|c| {
                Ok(ConversationRead {
                    conversation_id: uuid("conversation_id", &c.conversation_id)?,
                    outcome: outcome(c.outcome),
                    read_up_to_seq: c.read_up_to_seq.max(0) as u64,
                    advanced: c.advanced,
                    thread_root_message_id: optional_uuid(
                        "thread_root_message_id",
                        &c.thread_root_message_id,
                    )?,
                })
            })
            .collect()
    }

    /// Whether others see your reads.
    pub async fn read_receipts(&self) -> Result<ReadReceipts, Error> {
        let r = self
            .unary(proto::GetPrivacySettingsRequest {}, |ch, r| async move {
                UserStub::new(ch).get_privacy_settings(r).await
            })
            .await?;
        Ok(ReadReceipts::from_sending(
            r.settings.is_none_or(|s| s.send_read_receipts),
        ))
    }

    /// Shares your reads with others or keeps them private (effective at
    /// once; reads made while private stay hidden until you read further
    /// while sharing). Returns the setting now in force.
    pub async fn set_read_receipts(&self, setting: ReadReceipts) -> Result<ReadReceipts, Error> {
        let req = proto::UpdatePrivacySettingsRequest {
            settings: Some(proto::PrivacySettings {
                send_read_receipts: setting == ReadReceipts::Shared,
            }),
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).update_privacy_settings(r).await
            })
            .await?;
        Ok(ReadReceipts::from_sending(
            r.settings.is_none_or(|s| s.send_read_receipts),
        ))
    }

    /// Subscribes to your receipts, from `cursor` (or from now). The stream
    /// reconnects by itself and resumes where it left off; see
    /// [`Subscription`].
    pub fn subscribe(&self, cursor: Option<Cursor>) -> Subscription {
        self.subscribe_with(cursor, SubscribeOptions::default())
    }

    /// [`Client::subscribe`] with options, e.g. to receive ranges:
    /// `client.subscribe_with(None, SubscribeOptions::default().accept_ranges(true))`.
    pub fn subscribe_with(
        &self,
        cursor: Option<Cursor>,
        options: SubscribeOptions,
    ) -> Subscription {
        Subscription::start(self.clone(), cursor, options)
    }

    /// A read marker that sends at most one MarkReadUpTo per conversation per
    /// second ([`ReadMarker::DEFAULT_INTERVAL`]; see [`ReadMarker`]).
    pub fn read_marker(&self) -> ReadMarker {
        self.read_marker_every(ReadMarker::DEFAULT_INTERVAL)
    }

    /// A read marker that sends at most one MarkReadUpTo per conversation per
    /// `interval`.
    pub fn read_marker_every(&self, interval: Duration) -> ReadMarker {
        ReadMarker::start(self.clone(), interval)
    }

    /// A batcher that groups MarkDelivered calls: a batch is sent when it has
    /// [`DeliveredBatcher::DEFAULT_MAX_BATCH`] messages or
    /// [`DeliveredBatcher::DEFAULT_MAX_DELAY`] after its first (see
    /// [`DeliveredBatcher`]).
    pub fn delivered_batcher(&self) -> DeliveredBatcher {
        self.delivered_batcher_with(
            DeliveredBatcher::DEFAULT_MAX_BATCH,
            DeliveredBatcher::DEFAULT_MAX_DELAY,
        )
    }

    /// A batcher that sends a batch when it has `max_batch` messages (at most
    /// 1000) or `max_delay` after its first.
    pub fn delivered_batcher_with(
        &self,
        max_batch: usize,
        max_delay: Duration,
    ) -> DeliveredBatcher {
        DeliveredBatcher::start(self.clone(), max_batch, max_delay)
    }

    /// The messaging backend's calls (need a `service` token).
    pub fn backend(&self) -> BackendClient {
        BackendClient::new(self.clone())
    }
}
