//! Domain types: what the SDK returns instead of raw protobuf.

use crate::Error;
use crate::proto;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The sender's aggregate tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Tick {
    /// ✓ — registered; not every recipient has it yet.
    Sent,
    /// ✓✓ — every recipient has it on at least one device.
    Delivered,
    /// blue ✓✓ — every recipient has read it (as you may see it).
    Read,
}

/// One recipient's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecipientState {
    /// No device has it.
    None,
    /// At least one device has it.
    Delivered,
    /// Read (and visible to you).
    Read,
}

/// One recipient's state for a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientReceipt {
    /// The recipient.
    pub user_id: Uuid,
    /// Its state.
    pub state: RecipientState,
    /// When it first had the message.
    pub delivered_at: Option<SystemTime>,
    /// When it read the message (if you may see it).
    pub read_at: Option<SystemTime>,
}

/// The receipt state of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageReceipts {
    /// The message.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Its position in the conversation.
    pub seq: u64,
    /// Its sender.
    pub sender_id: Uuid,
    /// When it was sent.
    pub sent_at: Option<SystemTime>,
    /// The aggregate tick.
    pub tick: Tick,
    /// Recipients that have it.
    pub delivered_count: u64,
    /// Recipients that read it (as you may see it).
    pub read_count: u64,
    /// All recipients ("2 of 3 read": `read_count` of `recipients_total`).
    pub recipients_total: u64,
    /// When the last recipient got it, once all have.
    pub delivered_at: Option<SystemTime>,
    /// When the last recipient read it, once all have.
    pub read_at: Option<SystemTime>,
    /// Per-recipient states, when asked for (and in direct-chat events).
    pub recipients: Vec<RecipientReceipt>,
}

/// What MarkDelivered did for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// Newly delivered.
    Recorded,
    /// Already delivered or read: nothing changed.
    AlreadyDelivered,
    /// You sent it, or were not a member at its seq: nothing changed.
    NotARecipient,
}

/// One MarkDelivered result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message.
    pub message_id: Uuid,
    /// What happened.
    pub outcome: DeliveryOutcome,
    /// When it became delivered for you.
    pub delivered_at: Option<SystemTime>,
}

/// Your read position after MarkReadUpTo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPosition {
    /// Your read watermark (a seq).
    pub read_up_to_seq: u64,
    /// Whether this call moved it.
    pub advanced: bool,
    /// Your unread count in the conversation.
    pub unread_count: u64,
}

/// The outcome for one conversation of a bulk call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConversationOutcome {
    /// Processed.
    Ok,
    /// No such conversation.
    NotFound,
    /// You are not a member.
    PermissionDenied,
}

/// An unread badge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadCount {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Whether it could be counted.
    pub outcome: ConversationOutcome,
    /// Messages others sent after your watermark.
    pub unread_count: u64,
    /// Your watermark.
    pub read_up_to_seq: u64,
    /// The highest registered seq.
    pub last_seq: u64,
}

/// One result of MarkConversationsRead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationRead {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Whether it could be marked.
    pub outcome: ConversationOutcome,
    /// Your watermark after the call.
    pub read_up_to_seq: u64,
    /// Whether it moved.
    pub advanced: bool,
}

/// Your read position in one conversation (pushed when any of your devices
/// reads, and in reset snapshots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Your read watermark.
    pub read_up_to_seq: u64,
    /// Your unread count.
    pub unread_count: u64,
}

/// Why the server could not resume from your cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResetReason {
    /// The cursor was trimmed from the log.
    CursorExpired,
    /// The log's epoch changed (it may have lost entries).
    EpochChanged,
    /// The cursor was not understood.
    CursorInvalid,
    /// Too much was missed to replay.
    ReplayTooLarge,
    /// A reason this SDK version does not know.
    Unknown,
}

/// What to repaint after a reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Why.
    pub reason: ResetReason,
    /// Your most recent sent messages, newest first.
    pub recent_messages: Vec<MessageReceipts>,
    /// Your watermark and unread count per conversation.
    pub watermarks: Vec<Watermark>,
}

/// A resume position. Opaque: store [`Cursor::as_str`] and give it back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Cursor(pub(crate) String);

impl Cursor {
    /// The cursor as text, to persist.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A cursor from persisted text.
    pub fn from_string(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

/// A message the backend registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Its id (UUIDv7 recommended).
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Its position (≥ 1), assigned by the backend.
    pub seq: u64,
    /// Its sender (a member at `seq`).
    pub sender_id: Uuid,
    /// When it was sent; `None` means "now".
    pub sent_at: Option<SystemTime>,
}

pub(crate) fn time(ms: i64) -> Option<SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms as u64))
}

pub(crate) fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn uuid(field: &str, s: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(s).map_err(|_| Error::Protocol(format!("{field}: {s:?} is not a UUID")))
}

pub(crate) fn outcome(v: i32) -> ConversationOutcome {
    match proto::ConversationOutcome::try_from(v) {
        Ok(proto::ConversationOutcome::NotFound) => ConversationOutcome::NotFound,
        Ok(proto::ConversationOutcome::PermissionDenied) => ConversationOutcome::PermissionDenied,
        _ => ConversationOutcome::Ok,
    }
}

impl TryFrom<proto::MessageReceipts> for MessageReceipts {
    type Error = Error;
    fn try_from(m: proto::MessageReceipts) -> Result<Self, Error> {
        let tick = match proto::Tick::try_from(m.tick) {
            Ok(proto::Tick::Delivered) => Tick::Delivered,
            Ok(proto::Tick::Read) => Tick::Read,
            _ => Tick::Sent,
        };
        let recipients = m
            .recipients
            .into_iter()
            .map(|r| {
                Ok(RecipientReceipt {
                    user_id: uuid("user_id", &r.user_id)?,
                    state: match proto::RecipientState::try_from(r.state) {
                        Ok(proto::RecipientState::Read) => RecipientState::Read,
                        Ok(proto::RecipientState::Delivered) => RecipientState::Delivered,
                        _ => RecipientState::None,
                    },
                    delivered_at: time(r.delivered_at_ms),
                    read_at: time(r.read_at_ms),
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(MessageReceipts {
            message_id: uuid("message_id", &m.message_id)?,
            conversation_id: uuid("conversation_id", &m.conversation_id)?,
            seq: m.seq.max(0) as u64,
            sender_id: uuid("sender_id", &m.sender_id)?,
            sent_at: time(m.sent_at_ms),
            tick,
            delivered_count: m.delivered_count.max(0) as u64,
            read_count: m.read_count.max(0) as u64,
            recipients_total: m.recipients_total.max(0) as u64,
            delivered_at: time(m.delivered_at_ms),
            read_at: time(m.read_at_ms),
            recipients,
        })
    }
}

impl TryFrom<proto::WatermarkSync> for Watermark {
    type Error = Error;
    fn try_from(w: proto::WatermarkSync) -> Result<Self, Error> {
        Ok(Watermark {
            conversation_id: uuid("conversation_id", &w.conversation_id)?,
            read_up_to_seq: w.read_up_to_seq.max(0) as u64,
            unread_count: w.unread_count.max(0) as u64,
        })
    }
}

impl TryFrom<proto::ReceiptsReset> for Snapshot {
    type Error = Error;
    fn try_from(r: proto::ReceiptsReset) -> Result<Self, Error> {
        Ok(Snapshot {
            reason: match proto::ResetReason::try_from(r.reason) {
                Ok(proto::ResetReason::CursorExpired) => ResetReason::CursorExpired,
                Ok(proto::ResetReason::EpochChanged) => ResetReason::EpochChanged,
                Ok(proto::ResetReason::CursorInvalid) => ResetReason::CursorInvalid,
                Ok(proto::ResetReason::ReplayTooLarge) => ResetReason::ReplayTooLarge,
                _ => ResetReason::Unknown,
            },
            recent_messages: r
                .recent_messages
                .into_iter()
                .map(MessageReceipts::try_from)
                .collect::<Result<_, _>>()?,
            watermarks: r
                .watermarks
                .into_iter()
                .map(Watermark::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Whether others see your reads (your own devices always do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadReceipts {
    /// Others see your reads ("read" ticks).
    Shared,
    /// Others see the messages as delivered, not read.
    Private,
}

impl ReadReceipts {
    pub(crate) fn from_sending(sending: bool) -> Self {
        if sending { Self::Shared } else { Self::Private }
    }
}

/// The outcome of adding or removing members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MembershipChanged {
    /// Members added (or removed) by this call; the others already were
    /// (or were not) members.
    pub changed: u64,
    /// Current members afterwards.
    pub member_count: u64,
}
