//! A wrapper that gives every store call a tracing span (a child of the
//! RPC's span, so it is exported with the trace) and records its latency
//! and errors in [`Metrics`]. It decides nothing: each call is passed through
//! unchanged, so both backends get the same instrumentation from one place.

use super::{
    Backlog, ConversationRead, DeliveryResult, MemberChange, MembershipResult, Named, NewMessage,
    ReadResult, ReceiptStore, Replay, ReplayFrom, StoreResult, UnreadCount,
};
use crate::domain::{
    ConversationId, MemberChangeKind, MessageId, MessageState, Millis, Seq, UserId,
};
use crate::fanout::Hub;
use crate::metrics::{Metrics, StoreErrorLabels, StoreLabels};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

/// Instrumented access to an inner store.
#[derive(Debug)]
pub struct ObservedStore {
    inner: Arc<dyn ReceiptStore>,
    metrics: Arc<Metrics>,
}

impl ObservedStore {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn ReceiptStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn observe<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let span = tracing::info_span!(
            "store",
            otel.name = op,
            store.op = op,
            error.kind = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = call.instrument(span.clone()).await;
        self.metrics
            .store_seconds
            .get_or_create(&StoreLabels { op })
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            let kind = e.kind();
            span.record("error.kind", kind);
            self.metrics
                .store_errors
                .get_or_create(&StoreErrorLabels { op, kind })
                .inc();
        }
        result
    }
}

#[async_trait]
impl ReceiptStore for ObservedStore {
    async fn create_conversation(
        &self,
        conversation: ConversationId,
        members: Vec<UserId>,
    ) -> StoreResult<bool> {
        self.observe(
            "create_conversation",
            self.inner.create_conversation(conversation, members),
        )
        .await
    }

    async fn change_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
        kind: MemberChangeKind,
    ) -> StoreResult<MembershipResult> {
        let op = match kind {
            MemberChangeKind::Join => "add_members",
            MemberChangeKind::Leave => "remove_members",
        };
        self.observe(op, self.inner.change_members(conversation, changes, kind))
            .await
    }

    async fn register_messages(&self, messages: Vec<NewMessage>) -> StoreResult<u64> {
        self.observe("register_messages", self.inner.register_messages(messages))
            .await
    }

    async fn register_in_threads(
        &self,
        messages: Vec<NewMessage>,
        roots: Vec<Option<MessageId>>,
    ) -> StoreResult<u64> {
        self.observe(
            "register_messages",
            self.inner.register_in_threads(messages, roots),
        )
        .await
    }

    async fn mark_delivered(
        &self,
        user: UserId,
        messages: Vec<Named>,
        at: Millis,
    ) -> StoreResult<Vec<DeliveryResult>> {
        self.observe(
            "mark_delivered",
            self.inner.mark_delivered(user, messages, at),
        )
        .await
    }

    async fn mark_read_up_to(
        &self,
        user: UserId,
        conversation: ConversationId,
        message: MessageId,
        at: Millis,
    ) -> StoreResult<ReadResult> {
        self.observe(
            "mark_read_up_to",
            self.inner.mark_read_up_to(user, conversation, message, at),
        )
        .await
    }

    async fn mark_conversations_read(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
        threads: Vec<(ConversationId, MessageId)>,
        at: Millis,
    ) -> StoreResult<Vec<ConversationRead>> {
        self.observe(
            "mark_conversations_read",
            self.inner
                .mark_conversations_read(user, conversations, threads, at),
        )
        .await
    }

    async fn set_sharing(&self, user: UserId, sharing: bool) -> StoreResult<bool> {
        self.observe("set_sharing", self.inner.set_sharing(user, sharing))
            .await
    }

    async fn sharing(&self, user: UserId) -> StoreResult<bool> {
        self.observe("sharing", self.inner.sharing(user)).await
    }

    async fn receipts(
        &self,
        viewer: UserId,
        conversation: ConversationId,
        messages: Vec<MessageId>,
        include_recipients: bool,
    ) -> StoreResult<Vec<MessageState>> {
        self.observe(
            "receipts",
            self.inner
                .receipts(viewer, conversation, messages, include_recipients),
        )
        .await
    }

    async fn recipients(
        &self,
        viewer: UserId,
        conversation: ConversationId,
        message: MessageId,
        after: Option<UserId>,
        budget: usize,
    ) -> StoreResult<crate::domain::Examined> {
        self.observe(
            "recipients",
            self.inner
                .recipients(viewer, conversation, message, after, budget),
        )
        .await
    }

    async fn registered_between(
        &self,
        conversation: ConversationId,
        from: Seq,
        to: Seq,
    ) -> StoreResult<Vec<(Seq, MessageId, UserId)>> {
        self.observe(
            "registered_between",
            self.inner.registered_between(conversation, from, to),
        )
        .await
    }

    async fn unread_counts(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
    ) -> StoreResult<Vec<UnreadCount>> {
        self.observe(
            "unread_counts",
            self.inner.unread_counts(user, conversations),
        )
        .await
    }

    async fn replay(&self, user: UserId, from: ReplayFrom, max: usize) -> StoreResult<Replay> {
        self.observe("replay", self.inner.replay(user, from, max))
            .await
    }

    fn hub(&self) -> &Arc<Hub> {
        self.inner.hub()
    }

    async fn healthy(&self) -> bool {
        self.inner.healthy().await
    }

    async fn backlog(&self) -> StoreResult<Option<Backlog>> {
        self.observe("backlog", self.inner.backlog()).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}
