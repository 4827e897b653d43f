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
    /// Per-recipient states, when asked for (and in direct-chat events): at
    /// most the first 50 by user id (see `recipients_next_page_token`).
    pub recipients: Vec<RecipientReceipt>,
    /// Set when the list may go on past `recipients`: pass it to
    /// [`crate::Client::list_recipients`] (with this message and
    /// [`RecipientFilter::All`]) for the rest.
    pub recipients_next_page_token: Option<String>,
}

/// Which recipients [`crate::Client::list_recipients`] lists, by their state
/// as you may see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RecipientFilter {
    /// Every recipient.
    #[default]
    All,
    /// Those who read the message (as you may see it).
    Read,
    /// Those who have it and have not read it (as you may see it: a
    /// recipient with read receipts off is listed here).
    DeliveredOnly,
    /// Those none of whose devices has it yet.
    NotDelivered,
}

impl RecipientFilter {
    pub(crate) fn wire(self) -> proto::RecipientFilter {
        match self {
            RecipientFilter::All => proto::RecipientFilter::Unspecified,
            RecipientFilter::Read => proto::RecipientFilter::Read,
            RecipientFilter::DeliveredOnly => proto::RecipientFilter::DeliveredOnly,
            RecipientFilter::NotDelivered => proto::RecipientFilter::NotDelivered,
        }
    }
}

/// One page of a message's recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientPage {
    /// The recipients the filter keeps, in user-id order. A page may hold
    /// fewer than asked for (even none) while more follow, with a filter or
    /// without (a page examines a bounded number of members, recipients or
    /// not): page until `next_page_token` is `None`.
    pub recipients: Vec<RecipientReceipt>,
    /// The token for the next page; `None` when the list is complete.
    pub next_page_token: Option<String>,
}

impl MessageReceipts {
    /// Applies a range from [`crate::Event::Receipts`] if it covers this
    /// message's seq: the message takes the range's state (tick, counts,
    /// times, recipients). Returns whether it did. The range must come from
    /// an event of this message's conversation.
    pub fn apply_range(&mut self, range: &ReceiptRange) -> bool {
        if !range.covers(self.seq) {
            return false;
        }
        self.tick = range.tick;
        self.delivered_count = range.delivered_count;
        self.read_count = range.read_count;
        self.recipients_total = range.recipients_total;
        self.delivered_at = range.delivered_at;
        self.read_at = range.read_at;
        self.recipients = range.recipients.clone();
        // The range's list replaces the one the token continued.
        self.recipients_next_page_token = None;
        true
    }
}

/// One state shared by a run of your messages in one conversation: every
/// message you sent there with `from_seq <= seq <= to_seq` is in it. Only
/// subscriptions that ask for ranges ([`crate::SubscribeOptions`]) get them;
/// apply one with [`MessageReceipts::apply_range`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiptRange {
    /// The first seq covered.
    pub from_seq: u64,
    /// The last seq covered (inclusive).
    pub to_seq: u64,
    /// The aggregate tick of each message in it.
    pub tick: Tick,
    /// Recipients that have each message.
    pub delivered_count: u64,
    /// Recipients that read each message (as you may see it).
    pub read_count: u64,
    /// All recipients of each message.
    pub recipients_total: u64,
    /// When the last recipient got them, once all have.
    pub delivered_at: Option<SystemTime>,
    /// When the last recipient read them, once all have.
    pub read_at: Option<SystemTime>,
    /// Per-recipient states (direct chats).
    pub recipients: Vec<RecipientReceipt>,
}

impl ReceiptRange {
    /// Whether the range covers `seq`.
    pub fn covers(&self, seq: u64) -> bool {
        self.from_seq <= seq && seq <= self.to_seq
    }
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
    /// Your unread count in the timeline read (the main one, or the thread).
    pub unread_count: u64,
    /// The thread read (its root message); `None` for the main timeline.
    pub thread_root_message_id: Option<Uuid>,
    /// Your unread count in the whole conversation: main timeline plus
    /// threads.
    pub conversation_unread_count: u64,
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
    /// Messages others sent after your read position in their timeline:
    /// the main timeline's and every thread's.
    pub unread_count: u64,
    /// Your watermark in the main timeline.
    pub read_up_to_seq: u64,
    /// The highest registered seq.
    pub last_seq: u64,
    /// The main timeline's unread messages alone.
    pub main_unread_count: u64,
    /// The threads with unread messages, highest root first (at most 100;
    /// all are in `unread_count`).
    pub threads: Vec<ThreadUnread>,
}

/// The unread badge of one thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadUnread {
    /// The thread's root message.
    pub thread_root_message_id: Uuid,
    /// Messages of the thread others sent after your position in it.
    pub unread_count: u64,
    /// Your position in the thread (0 before any read).
    pub read_up_to_seq: u64,
    /// The highest seq registered in the thread.
    pub last_seq: u64,
}

/// One result of MarkConversationsRead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationRead {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Whether it could be marked.
    pub outcome: ConversationOutcome,
    /// Your watermark after the call (the main timeline's, or the
    /// thread's).
    pub read_up_to_seq: u64,
    /// Whether it moved (for a conversation: any of its timelines).
    pub advanced: bool,
    /// The thread, for a result of [`crate::Client::mark_threads_read`].
    pub thread_root_message_id: Option<Uuid>,
}

/// Your read position in one conversation (pushed when any of your devices
/// reads, and in reset snapshots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Your read watermark in the timeline.
    pub read_up_to_seq: u64,
    /// Your unread count in the timeline.
    pub unread_count: u64,
    /// The thread (its root message); `None` for the main timeline.
    pub thread_root_message_id: Option<Uuid>,
    /// Your unread count in the whole conversation (main timeline plus
    /// threads).
    pub conversation_unread_count: u64,
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
    /// The thread it belongs to (its root: an earlier main-timeline message
    /// of the conversation); `None` for the main timeline.
    pub thread_root_message_id: Option<Uuid>,
}

impl NewMessage {
    /// This message, in the thread under `root`.
    pub fn in_thread(self, root: Uuid) -> Self {
        Self {
            thread_root_message_id: Some(root),
            ..self
        }
    }
}

/// A conversation's unread count as a server sends it beside a timeline's:
/// a server from before threads sends 0, and the timeline is the
/// conversation then.
pub(crate) fn conversation_unread(timeline: i64, conversation: i64) -> u64 {
    match conversation {
        0 => timeline.max(0) as u64,
        n => n.max(0) as u64,
    }
}

/// An optional id field: empty is `None`.
pub(crate) fn optional_uuid(field: &str, s: &str) -> Result<Option<Uuid>, Error> {
    if s.is_empty() {
        return Ok(None);
    }
    uuid(field, s).map(Some)
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

/// A tick from the wire; an unknown value reads as the least, `Sent`.
fn tick_of(t: i32) -> Tick {
    match proto::Tick::try_from(t) {
        Ok(proto::Tick::Delivered) => Tick::Delivered,
        Ok(proto::Tick::Read) => Tick::Read,
        _ => Tick::Sent,
    }
}

fn recipients_of(rs: Vec<proto::RecipientReceipt>) -> Result<Vec<RecipientReceipt>, Error> {
    rs.into_iter()
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
        .collect()
}

impl TryFrom<proto::MessageReceipts> for MessageReceipts {
    type Error = Error;
    fn try_from(m: proto::MessageReceipts) -> Result<Self, Error> {
        Ok(MessageReceipts {
            message_id: uuid("message_id", &m.message_id)?,
            conversation_id: uuid("conversation_id", &m.conversation_id)?,
            seq: m.seq.max(0) as u64,
            sender_id: uuid("sender_id", &m.sender_id)?,
            sent_at: time(m.sent_at_ms),
            tick: tick_of(m.tick),
            delivered_count: m.delivered_count.max(0) as u64,
            read_count: m.read_count.max(0) as u64,
            recipients_total: m.recipients_total.max(0) as u64,
            delivered_at: time(m.delivered_at_ms),
            read_at: time(m.read_at_ms),
            recipients: recipients_of(m.recipients)?,
            recipients_next_page_token: token(m.recipients_next_page_token),
        })
    }
}

/// A page token as the server sent it (`None` for the empty one: the end).
pub(crate) fn token(t: String) -> Option<String> {
    (!t.is_empty()).then_some(t)
}

impl TryFrom<proto::ListRecipientsResponse> for RecipientPage {
    type Error = Error;
    fn try_from(r: proto::ListRecipientsResponse) -> Result<Self, Error> {
        Ok(RecipientPage {
            recipients: recipients_of(r.recipients)?,
            next_page_token: token(r.next_page_token),
        })
    }
}

impl TryFrom<proto::ReceiptRange> for ReceiptRange {
    type Error = Error;
    fn try_from(r: proto::ReceiptRange) -> Result<Self, Error> {
        if r.from_seq < 1 || r.to_seq < r.from_seq {
            return Err(Error::Protocol(format!(
                "range {}..={} is not a range of seqs",
                r.from_seq, r.to_seq
            )));
        }
        Ok(ReceiptRange {
            from_seq: r.from_seq as u64,
            to_seq: r.to_seq as u64,
            tick: tick_of(r.tick),
            delivered_count: r.delivered_count.max(0) as u64,
            read_count: r.read_count.max(0) as u64,
            recipients_total: r.recipients_total.max(0) as u64,
            delivered_at: time(r.delivered_at_ms),
            read_at: time(r.read_at_ms),
            recipients: recipients_of(r.recipients)?,
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
            thread_root_message_id: optional_uuid(
                "thread_root_message_id",
                &w.thread_root_message_id,
            )?,
            conversation_unread_count: conversation_unread(
                w.unread_count,
                w.conversation_unread_count,
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_range(from_seq: i64, to_seq: i64) -> proto::ReceiptRange {
        proto::ReceiptRange {
            from_seq,
            to_seq,
            tick: proto::Tick::Delivered as i32,
            delivered_count: 1,
            read_count: 0,
            recipients_total: 1,
            delivered_at_ms: 5_000,
            read_at_ms: 0,
            recipients: Vec::new(),
        }
    }

    #[test]
    fn a_range_applies_to_the_messages_it_covers_only() {
        let range = ReceiptRange::try_from(wire_range(3, 5)).expect("range");
        let mut m = MessageReceipts {
            message_id: Uuid::nil(),
            conversation_id: Uuid::nil(),
            seq: 2,
            sender_id: Uuid::nil(),
            sent_at: None,
            tick: Tick::Sent,
            delivered_count: 0,
            read_count: 0,
            recipients_total: 1,
            delivered_at: None,
            read_at: None,
            recipients: Vec::new(),
            recipients_next_page_token: None,
        };
        assert!(!m.apply_range(&range));
        assert_eq!(m.tick, Tick::Sent);
        for seq in [3, 5] {
            m.seq = seq;
            m.tick = Tick::Sent;
            assert!(m.apply_range(&range));
            assert_eq!((m.tick, m.delivered_count), (Tick::Delivered, 1));
            assert_eq!(m.delivered_at, time(5_000));
        }
        m.seq = 6;
        assert!(!m.apply_range(&range));
    }

    #[test]
    fn a_range_that_is_not_one_is_a_protocol_error() {
        for (from, to) in [(0, 3), (5, 4), (-1, 2)] {
            assert!(matches!(
                ReceiptRange::try_from(wire_range(from, to)),
                Err(Error::Protocol(_))
            ));
        }
    }
}
