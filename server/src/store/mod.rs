//! Storage: the [`ReceiptStore`] contract and its backends.
//!
//! # Contract (every backend)
//! - A write either commits whole or changes nothing; a write that returned
//!   `Ok` survives a crash of the process (and, for distributed backends, of
//!   the node).
//! - Validation (unknown ids, membership, conflicts) happens inside the same
//!   atomic step as the write, so a rejected call changes nothing.
//! - State only moves forward: delivered and read never revert, watermarks are
//!   max-merged (see [`crate::domain`], whose functions decide every rule).
//! - A write commits the [`Event`]s it causes to the replay log atomically with
//!   the state change (directly for direct conversations, through a durable
//!   pending window for groups), then hands them to the [`Hub`] for live
//!   delivery. Event offsets only grow within an epoch; the epoch changes if
//!   the log may have lost entries.
//! - Every method is batch-friendly: one call per request, however many ids
//!   the request carries.

pub mod embedded;
pub mod observed;
pub mod redis;
pub mod scylla;
pub mod scylla_access;

use crate::domain::{
    ConversationId, Cursor, Event, MemberChangeKind, MessageId, MessageState, Millis, Seq, UserId,
};
pub use crate::domain::{ReplayFrom, ResetReason};
use crate::error::{ServiceError, Source};
use crate::fanout::Hub;
use async_trait::async_trait;
use std::sync::Arc;

/// Result of a store call.
pub type StoreResult<T> = Result<T, ServiceError>;

/// What MarkDelivered did for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Newly delivered.
    Recorded,
    /// Already delivered or read.
    AlreadyDelivered,
    /// The caller sent it or was not a member at its seq.
    NotARecipient,
}

/// The request field naming a conversation in MarkDelivered's conversation
/// form (for errors).
pub const CONVERSATION_FIELD: &str = "conversations.conversation_id";

/// A message MarkDelivered names: by id alone, or with the conversation the
/// caller named for it (then the store finds it in that conversation and
/// needs no lookup of the id's conversation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Named {
    /// The message.
    pub id: MessageId,
    /// The conversation the caller named for it.
    pub conversation: Option<ConversationId>,
}

impl Named {
    /// Messages named by id alone.
    pub fn ids(ids: impl IntoIterator<Item = MessageId>) -> Vec<Self> {
        ids.into_iter()
            .map(|id| Self {
                id,
                conversation: None,
            })
            .collect()
    }

    /// The request field that named the message (for errors).
    pub fn field(&self) -> &'static str {
        match self.conversation {
            None => "message_ids",
            Some(_) => "conversations.message_ids",
        }
    }

    /// NOT_FOUND for this message: unknown, or not in the conversation named
    /// for it.
    pub fn not_found(&self) -> ServiceError {
        match self.conversation {
            None => ServiceError::not_found(self.field(), "message", self.id),
            Some(c) => ServiceError::not_found(
                self.field(),
                "message",
                format!("{} in conversation {c}", self.id),
            ),
        }
    }
}

/// One MarkDelivered result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryResult {
    /// The message.
    pub message: MessageId,
    /// What happened.
    pub outcome: DeliveryOutcome,
    /// When it became delivered for the caller.
    pub delivered_at: Option<Millis>,
}

impl DeliveryResult {
    /// The caller is not a recipient of `message`.
    pub fn not_a_recipient(message: MessageId) -> Self {
        Self {
            message,
            outcome: DeliveryOutcome::NotARecipient,
            delivered_at: None,
        }
    }

    /// `message` was delivered to the caller already, first at `at`.
    pub fn already(message: MessageId, at: Millis) -> Self {
        Self {
            message,
            outcome: DeliveryOutcome::AlreadyDelivered,
            delivered_at: Some(at),
        }
    }

    /// `message` became delivered to the caller at `at`.
    pub fn recorded(message: MessageId, at: Millis) -> Self {
        Self {
            message,
            outcome: DeliveryOutcome::Recorded,
            delivered_at: Some(at),
        }
    }
}

/// The caller's read position in one timeline after a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// The (true) watermark.
    pub read_up_to: Seq,
    /// Whether this call moved it.
    pub advanced: bool,
    /// Unread messages in the timeline after the call.
    pub unread: u64,
    /// The thread read (its root); `None` for the main timeline.
    pub thread: Option<MessageId>,
    /// Unread messages in the whole conversation after the call (main
    /// timeline plus threads).
    pub conversation_unread: u64,
}

impl ReadResult {
    /// A result in the main timeline of a store without threads, where the
    /// conversation's unread count is the timeline's.
    pub fn main(read_up_to: Seq, advanced: bool, unread: u64) -> Self {
        Self {
            read_up_to,
            advanced,
            unread,
            thread: None,
            conversation_unread: unread,
        }
    }
}

/// Outcome for one conversation of a bulk call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversationOutcome {
    /// Done.
    Ok,
    /// No such conversation.
    NotFound,
    /// The caller is not a member.
    PermissionDenied,
}

/// One MarkConversationsRead result: a conversation's (`read.thread` is
/// `None`; `read` is its main timeline's, `advanced` if any timeline moved) or
/// a thread's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConversationRead {
    /// The conversation.
    pub conversation: ConversationId,
    /// Whether it could be marked.
    pub outcome: ConversationOutcome,
    /// The result when it could.
    pub read: ReadResult,
}

/// One GetUnreadCounts result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadCount {
    /// The conversation.
    pub conversation: ConversationId,
    /// Whether it could be counted.
    pub outcome: ConversationOutcome,
    /// Unread messages: the main timeline's and every thread's.
    pub unread: u64,
    /// The caller's watermark in the main timeline.
    pub read_up_to: Seq,
    /// The highest registered seq.
    pub last_seq: Seq,
    /// Unread messages of the main timeline.
    pub main_unread: u64,
    /// The threads with unread messages, highest root first (at most
    /// [`crate::domain::MAX_LISTED_THREADS`]).
    pub threads: Vec<ThreadUnread>,
}

impl UnreadCount {
    /// Nothing counted yet: `outcome` for `conversation`.
    pub fn empty(conversation: ConversationId, outcome: ConversationOutcome) -> Self {
        Self {
            conversation,
            outcome,
            unread: 0,
            read_up_to: 0,
            last_seq: 0,
            main_unread: 0,
            threads: Vec::new(),
        }
    }
}

/// The unread count of one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadUnread {
    /// The thread's root.
    pub root: MessageId,
    /// Unread messages of the thread.
    pub unread: u64,
    /// The caller's position in it.
    pub read_up_to: Seq,
    /// The highest seq registered in it.
    pub last_seq: Seq,
}

/// A membership change request for one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberChange {
    /// The user.
    pub user: UserId,
    /// First seq it applies to.
    pub from_seq: Seq,
}

/// The result of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipResult {
    /// Users whose membership changed.
    pub changed: u64,
    /// Current members after the call.
    pub member_count: u64,
}

/// The state a client needs to repaint after a reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The caller's most recent sent messages, newest first.
    pub recent_messages: Vec<MessageState>,
    /// The caller's position and unread count in the main timeline of each
    /// conversation, each followed by its positions in that conversation's
    /// threads (those it read in, the highest roots first, at most
    /// [`crate::domain::MAX_LISTED_THREADS`]).
    pub watermarks: Vec<crate::domain::ReadPosition>,
}

/// What a subscriber gets before going live.
#[derive(Clone, Debug)]
pub enum Replay {
    /// Missed events (not yet coalesced), then live after `head`.
    Events {
        /// Events after the cursor, in log order.
        events: Vec<Event>,
        /// The log position the replay reaches.
        head: Cursor,
    },
    /// The cursor cannot be honoured: repaint from the snapshot.
    Reset {
        /// Why.
        reason: ResetReason,
        /// Current state.
        snapshot: Snapshot,
        /// The log position the snapshot reflects.
        head: Cursor,
    },
}

/// A registered message, as the backend describes it.
pub type NewMessage = crate::domain::Message;

/// The storage contract (see the module docs).
#[async_trait]
pub trait ReceiptStore: Send + Sync + std::fmt::Debug + 'static {
    /// Creates a conversation whose members are members from seq 1. Returns
    /// `false` if it already existed with the same members.
    async fn create_conversation(
        &self,
        conversation: ConversationId,
        members: Vec<UserId>,
    ) -> StoreResult<bool>;

    /// Adds or removes members from the given seqs (all checked before any
    /// is written).
    async fn change_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
        kind: MemberChangeKind,
    ) -> StoreResult<MembershipResult>;

    /// Adds members from the given seqs.
    async fn add_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
    ) -> StoreResult<MembershipResult> {
        self.change_members(conversation, changes, MemberChangeKind::Join)
            .await
    }

    /// Removes members from the given seqs.
    async fn remove_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
    ) -> StoreResult<MembershipResult> {
        self.change_members(conversation, changes, MemberChangeKind::Leave)
            .await
    }

    /// Registers messages in the main timeline (all or nothing). Returns
    /// how many were new.
    async fn register_messages(&self, messages: Vec<NewMessage>) -> StoreResult<u64> {
        self.register_in_threads(messages, Vec::new()).await
    }

    /// Registers messages (all or nothing), of which some may belong to
    /// threads: `roots[i]` names the root of `messages[i]`'s thread (`None`
    /// or absent: the main timeline; the rule is
    /// [`crate::domain::judge_root`]). Returns how many were new.
    async fn register_in_threads(
        &self,
        messages: Vec<NewMessage>,
        roots: Vec<Option<MessageId>>,
    ) -> StoreResult<u64>;

    /// Records deliveries by `user` of distinct messages (all checked before
    /// any is written); results in the order of `messages`.
    async fn mark_delivered(
        &self,
        user: UserId,
        messages: Vec<Named>,
        at: Millis,
    ) -> StoreResult<Vec<DeliveryResult>>;

    /// Moves `user`'s watermark in `conversation` up to `message`.
    async fn mark_read_up_to(
        &self,
        user: UserId,
        conversation: ConversationId,
        message: MessageId,
        at: Millis,
    ) -> StoreResult<ReadResult>;

    /// Marks conversations (every timeline) and then single threads
    /// (`(conversation, root)`) read up to their last message, one result
    /// each, in that order. A thread the store does not hold is `NotFound`.
    async fn mark_conversations_read(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
        threads: Vec<(ConversationId, MessageId)>,
        at: Millis,
    ) -> StoreResult<Vec<ConversationRead>>;

    /// Sets whether `user` shares read receipts; returns the setting.
    async fn set_sharing(&self, user: UserId, sharing: bool) -> StoreResult<bool>;

    /// Whether `user` shares read receipts (default true).
    async fn sharing(&self, user: UserId) -> StoreResult<bool>;

    /// Message states as `viewer` may see them.
    async fn receipts(
        &self,
        viewer: UserId,
        conversation: ConversationId,
        messages: Vec<MessageId>,
        include_recipients: bool,
    ) -> StoreResult<Vec<MessageState>>;

    /// What one page of `message`'s recipient list examines: the members of
    /// `conversation` after `after` in user-id order, at most `budget` of
    /// them, and the views (as `viewer` may see them) of those who are
    /// recipients of the message (see [`domain::Examined`]; the page itself
    /// is [`domain::page`]'s). Access and errors as in [`Self::receipts`].
    async fn recipients(
        &self,
        viewer: UserId,
        conversation: ConversationId,
        message: MessageId,
        after: Option<UserId>,
        budget: usize,
    ) -> StoreResult<crate::domain::Examined>;

    /// The messages registered in `conversation` with `from <= seq <= to`,
    /// as `(seq, id, sender)` in seq order (none for an unknown
    /// conversation). Internal: callers check access with [`Self::receipts`].
    async fn registered_between(
        &self,
        conversation: ConversationId,
        from: Seq,
        to: Seq,
    ) -> StoreResult<Vec<(Seq, MessageId, UserId)>>;

    /// Unread counts, one result per conversation.
    async fn unread_counts(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
    ) -> StoreResult<Vec<UnreadCount>>;

    /// Events for `user` after the cursor (at most `max`), or a reset. From
    /// the live position: no events and the current head.
    async fn replay(&self, user: UserId, from: ReplayFrom, max: usize) -> StoreResult<Replay>;

    /// The live side of the event log on this node.
    fn hub(&self) -> &Arc<Hub>;

    /// Whether every backend the store needs is reachable right now (drives
    /// the health service).
    async fn healthy(&self) -> bool {
        true
    }

    /// Write-behind state for metrics: `None` for a store without a
    /// write-behind tier (the embedded store writes through).
    async fn backlog(&self) -> StoreResult<Option<Backlog>> {
        Ok(None)
    }

    /// Flushes pending work (group windows) and stops background tasks.
    async fn shutdown(&self);
}

/// What waits between the tiers of a write-behind store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// Queues registered as holding unpersisted changes (a drained queue
    /// stays registered for a short lease before it is forgotten).
    pub queues: u64,
    /// Age of the oldest queue's latest registration: grows without bound
    /// when persisting stalls.
    pub oldest_registration_age: std::time::Duration,
    /// Changes this node has persisted since it started.
    pub persisted_total: u64,
    /// Whether the persistent tier answered the last probe.
    pub persistence_up: bool,
    /// How long the persistent tier has been unreachable (zero while it
    /// answers); writes are refused past `--writebehind-max-outage-secs`.
    pub outage: std::time::Duration,
}

/// Folds membership changes, in request order, over the current memberships
/// (`current(user)`, empty for a stranger): the users whose membership
/// changed, with their new membership and the seq it changed at. A change
/// the membership rules refuse is FAILED_PRECONDITION naming its entry.
/// Both stores validate with this before they write anything.
pub(crate) fn fold_member_changes(
    changes: &[MemberChange],
    kind: MemberChangeKind,
    mut current: impl FnMut(&UserId) -> Result<crate::domain::Membership, ServiceError>,
) -> Result<std::collections::BTreeMap<UserId, (crate::domain::Membership, Seq)>, ServiceError> {
    use crate::domain::MembershipError;
    let mut updated = std::collections::BTreeMap::new();
    for (i, ch) in changes.iter().enumerate() {
        let mut ms = match updated.get(&ch.user) {
            Some((m, _)) => crate::domain::Membership::clone(m),
            None => current(&ch.user)?,
        };
        let reason = match kind.apply(&mut ms, ch.from_seq) {
            Ok(true) => {
                updated.insert(ch.user, (ms, ch.from_seq));
                continue;
            }
            Ok(false) => continue,
            Err(MembershipError::LeaveBeforeJoin) => "must be after the seq the member joined at",
            Err(MembershipError::JoinBeforeLeave) => {
                "must not be before the seq the member last left at"
            }
        };
        return Err(ServiceError::FailedPrecondition {
            field: format!("members[{i}].from_seq"),
            reason: reason.into(),
        });
    }
    Ok(updated)
}

/// The distinct registrations of a batch with their request index, in
/// request order: an id repeated with identical content counts once; an id
/// repeated with other content, or a (conversation, seq) used twice, is
/// INVALID_ARGUMENT naming the later entry. Pure; both stores start here.
pub(crate) fn distinct_registrations(
    messages: &[NewMessage],
    root: impl Fn(usize) -> Option<MessageId>,
) -> Result<Vec<(usize, NewMessage)>, ServiceError> {
    use std::collections::HashMap;
    let mut seen_seq: HashMap<(ConversationId, Seq), MessageId> = HashMap::new();
    let mut seen_id: HashMap<MessageId, (NewMessage, Option<MessageId>)> = HashMap::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        if let Some(prev) = seen_id.get(&m.id) {
            if *prev != (*m, root(i)) {
                return Err(ServiceError::invalid(
                    format!("messages[{i}].message_id"),
                    "appears twice in the batch with different content",
                ));
            }
            continue;
        }
        seen_id.insert(m.id, (*m, root(i)));
        if let Some(other) = seen_seq.insert((m.conversation, m.seq), m.id) {
            return Err(ServiceError::invalid(
                format!("messages[{i}].seq"),
                format!("seq {} is also used by {other} in this batch", m.seq),
            ));
        }
        out.push((i, *m));
    }
    Ok(out)
}

/// Judges registration `i` against what the store holds: the message
/// already registered under its id (with its thread root), the message
/// holding its seq, and whether its sender is a member at that seq; `root`
/// is the thread root the registration names. `Ok(true)`: new; `Ok(false)`:
/// an identical re-registration (accepted, counts zero); otherwise the
/// status naming the field.
pub(crate) fn judge_registration(
    i: usize,
    m: &NewMessage,
    root: Option<MessageId>,
    existing: Option<(NewMessage, Option<MessageId>)>,
    seq_taken_by: Option<MessageId>,
    sender_is_member: bool,
) -> Result<bool, ServiceError> {
    let field = |f: &str| format!("messages[{i}].{f}");
    if let Some((existing, existing_root)) = existing {
        let same = existing.conversation == m.conversation
            && existing.seq == m.seq
            && existing.sender == m.sender
            && existing_root == root;
        if same {
            return Ok(false);
        }
        return Err(ServiceError::AlreadyExists {
            field: field("message_id"),
            reason: format!("message {} is registered with other content", m.id),
        });
    }
    if let Some(other) = seq_taken_by {
        return Err(ServiceError::AlreadyExists {
            field: field("seq"),
            reason: format!(
                "seq {} of conversation {} is message {}",
                m.seq, m.conversation, other
            ),
        });
    }
    if !sender_is_member {
        return Err(ServiceError::FailedPrecondition {
            field: field("sender_id"),
            reason: format!(
                "sender {} is not a member of conversation {} at seq {}",
                m.sender, m.conversation, m.seq
            ),
        });
    }
    Ok(true)
}

/// The status for registration `i` whose thread root `root` was refused by
/// [`crate::domain::judge_root`].
pub(crate) fn root_refused(i: usize, root: MessageId, e: crate::domain::RootError) -> ServiceError {
    use crate::domain::RootError;
    let field = format!("messages[{i}].thread_root_message_id");
    let reason = match e {
        RootError::Unknown => return ServiceError::not_found(field, "message", root),
        RootError::OtherConversation => format!("message {root} belongs to another conversation"),
        RootError::InAThread => {
            format!("message {root} is itself in a thread, and threads do not nest")
        }
        RootError::NotBefore => {
            format!("message {root} does not come before this message (its seq is not lower)")
        }
    };
    ServiceError::invalid(field, reason)
}

/// Where a timeline's read positions are kept by a store that keys them by
/// conversation: the conversation's id for the main timeline, and for the
/// thread under the root at `root_seq` an id derived from the conversation
/// and that seq (a name-based UUID, version 5), so that a thread's positions
/// and histories use the main timeline's tables, rows and code.
pub fn thread_scope(c: &ConversationId, timeline: crate::domain::Timeline) -> uuid::Uuid {
    if timeline == crate::domain::MAIN {
        *c
    } else {
        uuid::Uuid::new_v5(c, &timeline.to_be_bytes())
    }
}

/// A reset snapshot's positions in conversation `c`: the main timeline's
/// (`main`: position and unread count), then the positions in the threads
/// the user read in (at most [`crate::domain::MAX_LISTED_THREADS`]), each
/// with the conversation's unread count. Both stores build snapshots with it.
pub(crate) fn snapshot_positions(
    c: ConversationId,
    main: (Seq, u64),
    threads: &[ThreadUnread],
) -> Vec<crate::domain::ReadPosition> {
    use crate::domain::ReadPosition;
    let total = crate::domain::conversation_unread(main.1, threads.iter().map(|t| t.unread));
    let position = |thread, read_up_to, unread| ReadPosition {
        conversation: c,
        thread,
        read_up_to,
        unread,
        conversation_unread: total,
    };
    let read_in = threads.iter().filter(|t| t.read_up_to > 0);
    std::iter::once(position(None, main.0, main.1))
        .chain(
            read_in
                .take(crate::domain::MAX_LISTED_THREADS)
                .map(|t| position(Some(t.root), t.read_up_to, t.unread)),
        )
        .collect()
}
