//! gRPC handlers: decode and validate → authorize → call the store → encode.

pub(crate) mod convert;
pub(crate) mod quota;
mod replay;

use crate::auth::{AuthOutcome, Identity, Role};
use crate::config::ServeArgs;
use crate::domain::{self, Cursor};
use crate::error::ServiceError;
use crate::metrics::{EventLabels, Metrics, ReasonLabels};
use crate::store::{self, MemberChange, ReceiptStore, Replay, ReplayFrom};
use convert::{check_len, uuid, uuids};
use quota::UserQuotas;
use receipts_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Limits and knobs the handlers need.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most ids per write batch.
    pub max_batch: usize,
    /// Most ids per GetReceipts.
    pub max_get_receipts: usize,
    /// Most conversations per bulk call.
    pub max_bulk_conversations: usize,
    /// Most initial members.
    pub max_members: usize,
    /// Most events per replay.
    pub max_replay: usize,
}

impl From<&ServeArgs> for Limits {
    fn from(c: &ServeArgs) -> Self {
        Self {
            max_batch: c.max_batch,
            max_get_receipts: c.max_get_receipts,
            max_bulk_conversations: c.max_bulk_conversations,
            max_members: c.max_members,
            max_replay: c.max_replay,
        }
    }
}

/// Both services share this state.
#[derive(Clone, Debug)]
pub struct Api {
    store: Arc<dyn ReceiptStore>,
    limits: Limits,
    quotas: Arc<UserQuotas>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

impl Api {
    /// Handlers over `store` with the limits of `config`; `shutdown` flips
    /// to true when streams must end.
    pub fn new(
        store: Arc<dyn ReceiptStore>,
        config: &ServeArgs,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            limits: Limits::from(config),
            quotas: UserQuotas::new(config, metrics.clone()),
            metrics,
            shutdown,
        }
    }

    /// Frees per-user limiter state of idle users; call now and then.
    pub fn housekeep(&self) {
        self.quotas.housekeep();
    }

    /// The caller, who must be a user, after taking one write from their
    /// budget.
    fn writer<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let me = user(req)?;
        self.quotas.write(me.id)?;
        Ok(me)
    }

    /// One page of `message`'s recipients, as `viewer` may see them: the
    /// store examines a bounded number of members, `domain` picks the page.
    async fn recipient_page(
        &self,
        viewer: domain::UserId,
        conversation: domain::ConversationId,
        message: domain::MessageId,
        filter: domain::RecipientFilter,
        size: usize,
        after: Option<domain::UserId>,
    ) -> Result<domain::RecipientPage, ServiceError> {
        let examined = self
            .store
            .recipients(
                viewer,
                conversation,
                message,
                after,
                domain::scan_budget(size, filter),
            )
            .await?;
        Ok(domain::page(examined, filter, size))
    }
}

/// The page token that continues a listing after `next` (empty: the list is
/// complete).
fn token(
    message: domain::MessageId,
    filter: domain::RecipientFilter,
    next: Option<domain::UserId>,
) -> String {
    next.map(|after| {
        domain::PageToken {
            message,
            filter,
            after,
        }
        .encode()
    })
    .unwrap_or_default()
}

/// Counts the events of one stream batch and, for live direct receipts,
/// how long the receipt took to get here: a direct conversation's event
/// carries the write's own time as its newest delivered/read time.
fn observe_event(metrics: &Metrics, body: &domain::EventBody, live: bool) {
    use domain::EventBody as B;
    let source = if live { "live" } else { "replay" };
    let (group, aggregates): (bool, Vec<&domain::Aggregate>) = match body {
        B::Receipts {
            group, messages, ..
        } => (*group, messages.iter().map(|m| &m.aggregate).collect()),
        B::Ranges { group, ranges, .. } => (*group, ranges.iter().map(|r| &r.aggregate).collect()),
        B::Watermark { .. } | B::Position(_) => {
            let labels = EventLabels {
                kind: "watermark",
                conversation: "-",
                source,
            };
            metrics.events.get_or_create(&labels).inc();
            return;
        }
    };
    if live && !group {
        let newest = aggregates
            .iter()
            .flat_map(|a| [a.delivered_at, a.read_at])
            .flatten()
            .max();
        if let Some(at) = newest {
            let age = domain::now_millis().saturating_sub(at).max(0);
            metrics.propagation_seconds.observe(age as f64 / 1000.0);
        }
    }
    let labels = EventLabels {
        kind: "receipts",
        conversation: if group { "group" } else { "direct" },
        source,
    };
    metrics.events.get_or_create(&labels).inc();
}

fn reset_reason(r: store::ResetReason) -> &'static str {
    match r {
        store::ResetReason::Expired => "expired",
        store::ResetReason::EpochChanged => "epoch_changed",
        store::ResetReason::Invalid => "invalid",
        store::ResetReason::TooLarge => "too_large",
    }
}

fn identity<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<AuthOutcome>()
        .ok_or_else(|| Status::unauthenticated("missing credentials"))?
        .identity()
}

fn user<T>(req: &Request<T>) -> Result<Identity, Status> {
    let id = identity(req)?;
    match id.role {
        Role::User => Ok(id),
        Role::Service => Err(Status::permission_denied(
            "this call is for users; a service token cannot act as a user",
        )),
    }
}

fn service<T>(req: &Request<T>) -> Result<Identity, Status> {
    let id = identity(req)?;
    match id.role {
        Role::Service => Ok(id),
        Role::User => Err(Status::permission_denied(
            "only the messaging backend (service role) may call ReceiptBackendService",
        )),
    }
}

type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeReceiptsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::receipt_service_server::ReceiptService for Api {
    async fn mark_delivered(
        &self,
        req: Request<pb::MarkDeliveredRequest>,
    ) -> Result<Response<pb::MarkDeliveredResponse>, Status> {
        let me = self.writer(&req)?;
        let named = convert::named_messages(req.get_ref(), self.limits.max_batch)?;
        let results = self
            .store
            .mark_delivered(me.id, named, domain::now_millis())
            .await?;
        Ok(Response::new(pb::MarkDeliveredResponse {
            results: results
                .into_iter()
                .map(|r| pb::DeliveryResult {
                    message_id: r.message.to_string(),
                    outcome: match r.outcome {
                        store::DeliveryOutcome::Recorded => pb::DeliveryOutcome::Recorded,
                        store::DeliveryOutcome::AlreadyDelivered => {
                            pb::DeliveryOutcome::AlreadyDelivered
                        }
                        store::DeliveryOutcome::NotARecipient => pb::DeliveryOutcome::NotARecipient,
                    } as i32,
                    delivered_at_ms: r.delivered_at.unwrap_or(0),
                })
                .collect(),
        }))
    }

    async fn mark_read_up_to(
        &self,
        req: Request<pb::MarkReadUpToRequest>,
    ) -> Result<Response<pb::MarkReadUpToResponse>, Status> {
        let me = self.writer(&req)?;
        let r = req.get_ref();
        let conversation = uuid("conversation_id", &r.conversation_id)?;
        let message = uuid("message_id", &r.message_id)?;
        let out = self
            .store
            .mark_read_up_to(me.id, conversation, message, domain::now_millis())
            .await?;
        Ok(Response::new(pb::MarkReadUpToResponse {
            read_up_to_seq: out.read_up_to as i64,
            advanced: out.advanced,
            unread_count: out.unread as i64,
            thread_root_message_id: convert::thread_id(out.thread),
            conversation_unread_count: out.conversation_unread as i64,
        }))
    }

    async fn get_receipts(
        &self,
        req: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        let me = user(&req)?;
        let r = req.get_ref();
        let conversation = uuid("conversation_id", &r.conversation_id)?;
        let ids = uuids("message_ids", &r.message_ids, self.limits.max_get_receipts)?;
        // Counts come from the store's counting; recipients (when asked
        // for) from the first page of each message's list, so that no
        // response grows with the group.
        let states = self.store.receipts(me.id, conversation, ids, false).await?;
        let mut messages = Vec::with_capacity(states.len());
        for s in &states {
            let mut m = convert::message_state(s);
            if r.include_recipients {
                let (id, filter) = (s.message.id, domain::RecipientFilter::All);
                let size = domain::DEFAULT_PAGE_SIZE;
                let page = self
                    .recipient_page(me.id, conversation, id, filter, size, None)
                    .await?;
                m.recipients = page.recipients.iter().map(convert::recipient).collect();
                m.recipients_next_page_token = token(id, filter, page.next_after);
            }
            messages.push(m);
        }
        Ok(Response::new(pb::GetReceiptsResponse { messages }))
    }

    async fn list_recipients(
        &self,
        req: Request<pb::ListRecipientsRequest>,
    ) -> Result<Response<pb::ListRecipientsResponse>, Status> {
        let me = user(&req)?;
        let r = req.get_ref();
        let conversation = uuid("conversation_id", &r.conversation_id)?;
        let message = uuid("message_id", &r.message_id)?;
        let filter = convert::recipient_filter(r.filter)?;
        let size = domain::page_size(r.page_size)?;
        let after = domain::PageToken::decode(&r.page_token, message, filter)?;
        let page = self
            .recipient_page(me.id, conversation, message, filter, size, after)
            .await?;
        Ok(Response::new(pb::ListRecipientsResponse {
            recipients: page.recipients.iter().map(convert::recipient).collect(),
            next_page_token: token(message, filter, page.next_after),
        }))
    }

    type SubscribeReceiptsStream = EventStream;

    async fn subscribe_receipts(
        &self,
        req: Request<pb::SubscribeReceiptsRequest>,
    ) -> Result<Response<Self::SubscribeReceiptsStream>, Status> {
        let me = user(&req)?;
        if *self.shutdown.borrow() {
            // Draining: do not open new streams; the client retries elsewhere
            // (or here, after the restart) with its cursor.
            return Err(Status::unavailable(
                "server shutting down; resume from your last cursor",
            ));
        }
        let slot = self.quotas.subscribe(me.id)?;
        // An unparseable cursor is not a client error worth failing on: the
        // client gets a reset with a snapshot, exactly like an expired one.
        let from = ReplayFrom::parse(&req.get_ref().cursor);
        let accept_ranges = req.get_ref().accept_ranges;
        // Register for live events before reading the log: nothing committed
        // in between can fall through the crack.
        let mut live = self.store.hub().subscribe(me.id);
        let replay = match self
            .store
            .replay(me.id, from, self.limits.max_replay)
            .await?
        {
            // Coalesced, then shown as the caller may see it now.
            Replay::Events { events, head } => Replay::Events {
                events: replay::refresh(
                    &*self.store,
                    me.id,
                    domain::coalesce(events),
                    accept_ranges,
                )
                .await?,
                head,
            },
            reset => reset,
        };
        // A tiny hand-off: the bounded buffer that matters is the hub's
        // (`--subscriber-buffer`), so a slow reader is detected there.
        let (tx, rx) = mpsc::channel::<Result<pb::SubscribeReceiptsResponse, Status>>(1);
        let mut shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        let resumed = from != ReplayFrom::Live;
        let store = self.store.clone();
        let viewer = me.id;
        tokio::spawn(async move {
            use pb::subscribe_receipts_response::Event as E;
            // Held for the stream's life: counts against the user's cap.
            let _slot = slot;
            let ended = |reason| {
                metrics
                    .subscriptions_ended
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
            };
            let (head, first, mut in_replay) = match replay {
                Replay::Events {
                    events: coalesced,
                    head,
                } => {
                    if resumed {
                        metrics
                            .replays
                            .get_or_create(&ReasonLabels { reason: "events" })
                            .inc();
                    }
                    let mut out = Vec::with_capacity(coalesced.len());
                    let offsets = replay::stream_offsets(&coalesced);
                    for (e, offset) in coalesced.iter().zip(offsets) {
                        observe_event(&metrics, &e.body, false);
                        out.push(pb::SubscribeReceiptsResponse {
                            cursor: Cursor {
                                epoch: head.epoch,
                                offset,
                            }
                            .encode(),
                            event: Some(convert::event(&e.body)),
                        });
                    }
                    (head, out, replay::Replayed::of(&coalesced))
                }
                Replay::Reset {
                    reason,
                    snapshot,
                    head,
                } => {
                    metrics
                        .replays
                        .get_or_create(&ReasonLabels { reason: "reset" })
                        .inc();
                    metrics
                        .resets
                        .get_or_create(&ReasonLabels {
                            reason: reset_reason(reason),
                        })
                        .inc();
                    let ev = pb::SubscribeReceiptsResponse {
                        cursor: head.encode(),
                        event: Some(E::Reset(convert::reset(reason, &snapshot))),
                    };
                    (head, vec![ev], replay::Replayed::default())
                }
            };
            let replayed = first.len() as i64;
            for ev in first {
                if tx.send(Ok(ev)).await.is_err() {
                    ended("client_gone");
                    return;
                }
            }
            let live_marker = pb::SubscribeReceiptsResponse {
                cursor: head.encode(),
                event: Some(E::Live(pb::StreamLive { replayed })),
            };
            if tx.send(Ok(live_marker)).await.is_err() {
                ended("client_gone");
                return;
            }
            let mut last = head.offset;
            loop {
                tokio::select! {
                    ev = live.events.recv() => {
                        let Some(ev) = ev else {
                            let status = if live.overflowed() {
                                ended("slow_subscriber");
                                Status::resource_exhausted(
                                    "subscriber too slow: event buffer full; resume from your last cursor",
                                )
                            } else {
                                ended("source_closed");
                                Status::unavailable("event source closed; resume from your last cursor")
                            };
                            let _ = tx.send(Err(status)).await;
                            return;
                        };
                        if ev.offset <= last {
                            continue;
                        }
                        last = ev.offset;
                        let expanded = match replay::live(&*store, viewer, &ev, accept_ranges).await {
                            Ok(expanded) => expanded,
                            Err(e) => {
                                ended("store_error");
                                let _ = tx.send(Err(e.into_status())).await;
                                return;
                            }
                        };
                        let shown = expanded.as_deref().unwrap_or(std::slice::from_ref(&*ev));
                        let unrepeated = if in_replay.is_empty() {
                            None
                        } else {
                            in_replay.drop_repeats(shown)
                        };
                        let shown = unrepeated.as_deref().unwrap_or(shown);
                        let offsets = replay::stream_offsets(shown);
                        for (e, offset) in shown.iter().zip(offsets) {
                            observe_event(&metrics, &e.body, true);
                            let msg = pb::SubscribeReceiptsResponse {
                                cursor: Cursor { epoch: head.epoch, offset }.encode(),
                                event: Some(convert::event(&e.body)),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                ended("client_gone");
                                return;
                            }
                        }
                    }
                    _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => {
                        ended("shutdown");
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "server shutting down; resume from your last cursor",
                            )))
                            .await;
                        return;
                    }
                    _ = tx.closed() => {
                        ended("client_gone");
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_unread_counts(
        &self,
        req: Request<pb::GetUnreadCountsRequest>,
    ) -> Result<Response<pb::GetUnreadCountsResponse>, Status> {
        let me = user(&req)?;
        let ids = uuids(
            "conversation_ids",
            &req.get_ref().conversation_ids,
            self.limits.max_bulk_conversations,
        )?;
        let counts = self.store.unread_counts(me.id, ids).await?;
        Ok(Response::new(pb::GetUnreadCountsResponse {
            conversations: counts
                .into_iter()
                .map(|c| pb::ConversationUnread {
                    conversation_id: c.conversation.to_string(),
                    outcome: convert::outcome(c.outcome) as i32,
                    unread_count: c.unread as i64,
                    read_up_to_seq: c.read_up_to as i64,
                    last_seq: c.last_seq as i64,
                    main_unread_count: c.main_unread as i64,
                    threads: c
                        .threads
                        .iter()
                        .map(|t| pb::ThreadUnread {
                            thread_root_message_id: t.root.to_string(),
                            unread_count: t.unread as i64,
                            read_up_to_seq: t.read_up_to as i64,
                            last_seq: t.last_seq as i64,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn mark_conversations_read(
        &self,
        req: Request<pb::MarkConversationsReadRequest>,
    ) -> Result<Response<pb::MarkConversationsReadResponse>, Status> {
        let me = self.writer(&req)?;
        let r = req.get_ref();
        let max = self.limits.max_bulk_conversations;
        // Either list may be empty, not both; each has the bulk limit.
        if r.conversation_ids.is_empty() && r.threads.is_empty() {
            return Err(ServiceError::invalid(
                "conversation_ids",
                "must not be empty (name at least one conversation, or a thread in `threads`)",
            )
            .into());
        }
        let ids = match r.conversation_ids.len() {
            0 => Vec::new(),
            _ => uuids("conversation_ids", &r.conversation_ids, max)?,
        };
        if !r.threads.is_empty() {
            check_len("threads", r.threads.len(), max)?;
        }
        let threads = r
            .threads
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let f = |name: &'static str| move || format!("threads[{i}].{name}");
                Ok((
                    uuid(f("conversation_id"), &t.conversation_id)?,
                    uuid(f("thread_root_message_id"), &t.thread_root_message_id)?,
                ))
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let results = self
            .store
            .mark_conversations_read(me.id, ids, threads, domain::now_millis())
            .await?;
        Ok(Response::new(pb::MarkConversationsReadResponse {
            results: results
                .into_iter()
                .map(|r| pb::ConversationReadResult {
                    conversation_id: r.conversation.to_string(),
                    outcome: convert::outcome(r.outcome) as i32,
                    read_up_to_seq: r.read.read_up_to as i64,
                    advanced: r.read.advanced,
                    thread_root_message_id: convert::thread_id(r.read.thread),
                })
                .collect(),
        }))
    }

    async fn get_privacy_settings(
        &self,
        req: Request<pb::GetPrivacySettingsRequest>,
    ) -> Result<Response<pb::GetPrivacySettingsResponse>, Status> {
        let me = user(&req)?;
        let sharing = self.store.sharing(me.id).await?;
        Ok(Response::new(pb::GetPrivacySettingsResponse {
            settings: Some(pb::PrivacySettings {
                send_read_receipts: sharing,
            }),
        }))
    }

    async fn update_privacy_settings(
        &self,
        req: Request<pb::UpdatePrivacySettingsRequest>,
    ) -> Result<Response<pb::UpdatePrivacySettingsResponse>, Status> {
        let me = self.writer(&req)?;
        let settings = req
            .get_ref()
            .settings
            .as_ref()
            .ok_or_else(|| ServiceError::invalid("settings", "required"))?;
        let sharing = self
            .store
            .set_sharing(me.id, settings.send_read_receipts)
            .await?;
        Ok(Response::new(pb::UpdatePrivacySettingsResponse {
            settings: Some(pb::PrivacySettings {
                send_read_receipts: sharing,
            }),
        }))
    }
}

fn member_changes(
    field: &str,
    changes: &[pb::MembershipChange],
    max: usize,
) -> Result<Vec<MemberChange>, ServiceError> {
    check_len(field, changes.len(), max)?;
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(MemberChange {
                user: uuid(|| format!("{field}[{i}].user_id"), &c.user_id)?,
                from_seq: convert::seq(|| format!("{field}[{i}].from_seq"), c.from_seq)?,
            })
        })
        .collect()
}

#[tonic::async_trait]
impl pb::receipt_backend_service_server::ReceiptBackendService for Api {
    async fn create_conversation(
        &self,
        req: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::CreateConversationResponse>, Status> {
        service(&req)?;
        let r = req.get_ref();
        let conversation = uuid("conversation_id", &r.conversation_id)?;
        let members = uuids("member_ids", &r.member_ids, self.limits.max_members)?;
        let mut seen = std::collections::HashSet::new();
        for (i, m) in members.iter().enumerate() {
            if !seen.insert(*m) {
                return Err(ServiceError::invalid(
                    format!("member_ids[{i}]"),
                    format!("{m} is listed twice"),
                )
                .into());
            }
        }
        let created = self
            .store
            .create_conversation(conversation, members)
            .await?;
        Ok(Response::new(pb::CreateConversationResponse { created }))
    }

    async fn add_members(
        &self,
        req: Request<pb::AddMembersRequest>,
    ) -> Result<Response<pb::AddMembersResponse>, Status> {
        service(&req)?;
        let r = req.get_ref();
        let conversation = uuid("conversation_id", &r.conversation_id)?;
        let changes = member_changes("members", &r.members, self.limits.max_batch)?;
        let out = self.store.add_members(conversation, changes).await?;
        Ok(Response::new(pb::AddMembersResponse {
            added: out.changed as i64,
            member_count: out.member_count as i64,
        }))
    }

    async fn remove_members(
        &self,
        req: Request<pb::RemoveMembersRequest>,
    ) -> Result<Response<pb::RemoveMembersResponse>, Status> {
        service(&req)?;
        let r = req.get_ref();
        let conversation = uuid("conversation_id", &r.conversation_id)?;
        let changes = member_changes("members", &r.members, self.limits.max_batch)?;
        let out = self.store.remove_members(conversation, changes).await?;
        Ok(Response::new(pb::RemoveMembersResponse {
            removed: out.changed as i64,
            member_count: out.member_count as i64,
        }))
    }

    async fn register_messages(
        &self,
        req: Request<pb::RegisterMessagesRequest>,
    ) -> Result<Response<pb::RegisterMessagesResponse>, Status> {
        service(&req)?;
        let msgs = &req.get_ref().messages;
        check_len("messages", msgs.len(), self.limits.max_batch)?;
        let now = domain::now_millis();
        let mut out = Vec::with_capacity(msgs.len());
        let mut roots = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            let f = |name: &'static str| move || format!("messages[{i}].{name}");
            if m.sent_at_ms < 0 {
                return Err(
                    ServiceError::invalid(f("sent_at_ms")(), "must not be negative").into(),
                );
            }
            out.push(domain::Message {
                id: uuid(f("message_id"), &m.message_id)?,
                conversation: uuid(f("conversation_id"), &m.conversation_id)?,
                seq: convert::seq(f("seq"), m.seq)?,
                sender: uuid(f("sender_id"), &m.sender_id)?,
                sent_at: if m.sent_at_ms == 0 { now } else { m.sent_at_ms },
            });
            roots.push(convert::optional_uuid(
                f("thread_root_message_id"),
                &m.thread_root_message_id,
            )?);
        }
        let registered = if roots.iter().any(Option::is_some) {
            self.store.register_in_threads(out, roots).await?
        } else {
            self.store.register_messages(out).await?
        };
        Ok(Response::new(pb::RegisterMessagesResponse {
            registered: registered as i64,
        }))
    }
}
