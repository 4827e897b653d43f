//! The receipt rules, once, as pure functions over plain data.
//!
//! Stores persist what these functions decide and never re-decide it: the
//! embedded store calls them inside its write transaction, and any other store
//! must call the same functions (see `docs/semantics.md` for the rules in prose).

use uuid::Uuid;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;
/// A user (recipient, sender or member).
pub type UserId = Uuid;
/// A conversation.
pub type ConversationId = Uuid;
/// A message.
pub type MessageId = Uuid;
/// A message's position in its conversation (≥ 1).
pub type Seq = u64;

/// The current wall-clock time in milliseconds.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or_default()
}

mod counting;
mod cursor;
mod delivery;
mod event;
#[cfg(test)]
pub(crate) use event::tests as event_tests;
mod membership;
mod read;
mod recipients;
mod thread;
mod view;

pub use counting::{
    Counts, Later, Party, PrefixIndex, Prefixes, SortedPrefixes, advance_delivered, count,
    delivered_past_prefix, prefix_after_late, standing,
};
pub use cursor::{Cursor, ReplayFrom, ResetReason, replay_start, too_large};
pub use delivery::{Delivery, Run, Runs, judge as judge_delivery, runs_of};
pub use event::{Event, EventBody, Message, MessageState, RangeState, coalesce};
pub use membership::{MemberChangeKind, MemberInterval, Membership, MembershipError};
pub use read::{ReadWatermark, WatermarkAdvance};
pub use recipients::{
    DEFAULT_PAGE_SIZE, Examined, MAX_PAGE_SIZE, PageToken, RecipientFilter, RecipientPage, page,
    page_size, scan_budget,
};
pub use thread::{
    MAIN, MAX_LISTED_THREADS, ReadPosition, RootError, ThreadRoot, Timeline, conversation_unread,
    covers, judge_root,
};
pub use view::{
    Aggregate, RecipientFacts, RecipientState, RecipientView, Tick, aggregate, recipient_view,
};
