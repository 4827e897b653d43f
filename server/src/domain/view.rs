//! Visibility under privacy: what one viewer may see of one recipient, and
//! the counts and tick that follow.

use super::{Millis, UserId};
use serde::{Deserialize, Serialize};

/// One recipient's state for a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientState {
    /// No device has it.
    None,
    /// At least one device has it.
    Delivered,
    /// Read (as the viewer may see it).
    Read,
}

/// What one viewer may see of one recipient's state for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientView {
    /// The recipient.
    pub user: UserId,
    /// Its state.
    pub state: RecipientState,
    /// When the message first became delivered for it.
    pub delivered_at: Option<Millis>,
    /// When the first covering read was made, if the viewer may see it.
    pub read_at: Option<Millis>,
}

/// The raw facts about one recipient and one message, as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecipientFacts {
    /// The first MarkDelivered time, if any.
    pub delivered_at: Option<Millis>,
    /// The time of the first read that covered the message (true watermark).
    pub read_at: Option<Millis>,
    /// The time of the first read made while sharing that covered it.
    pub public_read_at: Option<Millis>,
    /// Whether the recipient shares read receipts right now.
    pub sharing: bool,
}

/// Decides what `viewer` may see of `recipient`'s state: the recipient sees its
/// own truth; others see reads only while the recipient shares read receipts,
/// and only reads made while sharing. Read implies delivered, at the earlier
/// of the two times. A false "read" is impossible: without a covering read
/// (`read_at`), nobody sees read.
pub fn recipient_view(viewer: UserId, recipient: UserId, facts: RecipientFacts) -> RecipientView {
    let read_at = if viewer == recipient {
        facts.read_at
    } else if facts.sharing && facts.read_at.is_some() {
        facts.public_read_at
    } else {
        None
    };
    let delivered_at = match (facts.delivered_at, facts.read_at) {
        (Some(d), Some(r)) => Some(d.min(r)),
        (d, r) => d.or(r),
    };
    let state = if read_at.is_some() {
        RecipientState::Read
    } else if delivered_at.is_some() {
        RecipientState::Delivered
    } else {
        RecipientState::None
    };
    RecipientView {
        user: recipient,
        state,
        delivered_at,
        read_at,
    }
}

/// The sender's aggregate tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tick {
    /// Registered; not every recipient has it (or it has no recipient).
    Sent,
    /// Every recipient has it.
    Delivered,
    /// Every recipient has read it.
    Read,
}

impl Tick {
    /// The tick of a message with `total` recipients of whom `delivered`
    /// have it and `read` have read it. Without recipients it stays `Sent`.
    pub fn of(total: u64, delivered: u64, read: u64) -> Tick {
        if total > 0 && read == total {
            Tick::Read
        } else if total > 0 && delivered == total {
            Tick::Delivered
        } else {
            Tick::Sent
        }
    }
}

/// Counts and tick of one message, from its recipients' views.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    /// The tick.
    pub tick: Tick,
    /// Recipients that have it.
    pub delivered_count: u64,
    /// Recipients that have read it (as the viewer may see it).
    pub read_count: u64,
    /// All recipients.
    pub recipients_total: u64,
    /// When the last recipient got it, once all have.
    pub delivered_at: Option<Millis>,
    /// When the last recipient read it, once all have.
    pub read_at: Option<Millis>,
}

/// Aggregates recipients' views into counts and the sender's tick. A message
/// without recipients stays `Sent`: "everyone has read it" is not shown for a
/// message nobody else can see.
pub fn aggregate(views: &[RecipientView]) -> Aggregate {
    let total = views.len() as u64;
    let delivered: Vec<Millis> = views.iter().filter_map(|v| v.delivered_at).collect();
    let read: Vec<Millis> = views.iter().filter_map(|v| v.read_at).collect();
    let all_delivered = total > 0 && delivered.len() as u64 == total;
    let all_read = total > 0 && read.len() as u64 == total;
    Aggregate {
        tick: Tick::of(total, delivered.len() as u64, read.len() as u64),
        delivered_count: delivered.len() as u64,
        read_count: read.len() as u64,
        recipients_total: total,
        delivered_at: all_delivered
            .then(|| delivered.iter().copied().max())
            .flatten(),
        read_at: all_read.then(|| read.iter().copied().max()).flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn facts(
        delivered: Option<Millis>,
        read: Option<Millis>,
        public: Option<Millis>,
        sharing: bool,
    ) -> RecipientFacts {
        RecipientFacts {
            delivered_at: delivered,
            read_at: read,
            public_read_at: public,
            sharing,
        }
    }

    #[test]
    fn others_never_see_read_without_a_covering_read() {
        let me = Uuid::from_u128(1);
        let other = Uuid::from_u128(2);
        let v = recipient_view(me, other, facts(Some(1), None, Some(5), true));
        assert_eq!(v.state, RecipientState::Delivered);
        assert_eq!(v.read_at, None);
    }

    #[test]
    fn read_implies_delivered_at_the_earlier_time() {
        let me = Uuid::from_u128(1);
        let v = recipient_view(me, me, facts(None, Some(7), None, false));
        assert_eq!(v.state, RecipientState::Read);
        assert_eq!(v.delivered_at, Some(7));
        let v = recipient_view(me, me, facts(Some(9), Some(7), None, false));
        assert_eq!(v.delivered_at, Some(7));
    }

    #[test]
    fn private_recipient_looks_delivered_to_others_but_read_to_itself() {
        let me = Uuid::from_u128(1);
        let other = Uuid::from_u128(2);
        let f = facts(Some(1), Some(2), Some(2), false);
        assert_eq!(
            recipient_view(me, other, f).state,
            RecipientState::Delivered
        );
        assert_eq!(recipient_view(other, other, f).state, RecipientState::Read);
    }

    #[test]
    fn aggregate_without_recipients_stays_sent() {
        assert_eq!(aggregate(&[]).tick, Tick::Sent);
    }

    proptest! {
        /// Counts never exceed the total, and read never exceeds delivered.
        #[test]
        fn aggregate_counts_are_consistent(spec in proptest::collection::vec((proptest::option::of(0i64..9), proptest::option::of(0i64..9), any::<bool>()), 0..20)) {
            let viewer = Uuid::from_u128(1000);
            let views: Vec<RecipientView> = spec.iter().enumerate().map(|(i, (d, r, sharing))| {
                recipient_view(viewer, Uuid::from_u128(i as u128), facts(*d, *r, *r, *sharing))
            }).collect();
            let a = aggregate(&views);
            prop_assert!(a.read_count <= a.delivered_count);
            prop_assert!(a.delivered_count <= a.recipients_total);
            if a.tick == Tick::Read { prop_assert_eq!(a.read_count, a.recipients_total); }
        }
    }
}
