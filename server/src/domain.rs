//! The receipt rules, once, as pure functions over plain data.
//!
//! Stores persist what these functions decide and never re-decide it: the
//! embedded store calls them inside its write transaction, and any other store
//! must call the same functions (see `docs/semantics.md` for the rules in prose).

use serde::{Deserialize, Serialize};
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

/// One period of membership: the member is a recipient of messages with
/// `from <= seq < until` (`until == None`: still a member).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInterval {
    /// First seq the member receives.
    pub from: Seq,
    /// First seq the member no longer receives, if it left.
    pub until: Option<Seq>,
}

/// A member's whole history in one conversation: disjoint intervals in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Intervals in ascending order; only the last may be open.
    pub intervals: Vec<MemberInterval>,
}

/// Why a membership change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipError {
    /// A removal's `from_seq` is not after the seq the member joined at.
    LeaveBeforeJoin,
    /// A (re)join's `from_seq` is before the seq the member last left at.
    JoinBeforeLeave,
}

impl Membership {
    /// A membership starting at `from`.
    pub fn joined(from: Seq) -> Self {
        Self {
            intervals: vec![MemberInterval { from, until: None }],
        }
    }

    /// Whether the user was a member at `seq`.
    pub fn contains(&self, seq: Seq) -> bool {
        self.intervals
            .iter()
            .any(|i| i.from <= seq && i.until.is_none_or(|u| seq < u))
    }

    /// Whether the user is a member now (its last interval is open).
    pub fn is_current(&self) -> bool {
        self.intervals.last().is_some_and(|i| i.until.is_none())
    }

    /// Joins (again) from `from`. Returns `Ok(false)` if already a member.
    pub fn join(&mut self, from: Seq) -> Result<bool, MembershipError> {
        match self.intervals.last() {
            Some(last) if last.until.is_none() => Ok(false),
            Some(last) if last.until.is_some_and(|u| from < u) => {
                Err(MembershipError::JoinBeforeLeave)
            }
            _ => {
                self.intervals.push(MemberInterval { from, until: None });
                Ok(true)
            }
        }
    }

    /// Leaves from `from` on. Returns `Ok(false)` if not a member now.
    pub fn leave(&mut self, from: Seq) -> Result<bool, MembershipError> {
        match self.intervals.last_mut() {
            Some(last) if last.until.is_none() => {
                if from <= last.from {
                    return Err(MembershipError::LeaveBeforeJoin);
                }
                last.until = Some(from);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A user's read position in one conversation.
///
/// Invariant: watermarks only grow, and `public_seq <= seq`. `seq` is the true
/// position (what the user's own devices see); `public_seq` is the highest
/// position reached by a read made while the user shared read receipts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadWatermark {
    /// Everything with a seq up to this is read by the user.
    pub seq: Seq,
    /// Everything up to this was read while the user shared read receipts.
    pub public_seq: Seq,
}

/// A watermark move decided by [`ReadWatermark::advance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatermarkAdvance {
    /// The watermark before.
    pub before: ReadWatermark,
    /// The watermark after.
    pub after: ReadWatermark,
}

impl WatermarkAdvance {
    /// Whether others may learn of this read (it was made while sharing).
    pub fn is_public(&self) -> bool {
        self.after.public_seq > self.before.public_seq
    }
}

impl ReadWatermark {
    /// Max-merge a read up to `to`, made while the user shares read receipts
    /// (`sharing`) or not. A position at or below the current one changes
    /// nothing (late, duplicate and reordered reads are no-ops): a read made
    /// while private stays hidden until the user reads *further* while sharing.
    pub fn advance(self, to: Seq, sharing: bool) -> Option<WatermarkAdvance> {
        if to <= self.seq {
            return None;
        }
        let after = ReadWatermark {
            seq: to,
            public_seq: if sharing { to } else { self.public_seq },
        };
        Some(WatermarkAdvance {
            before: self,
            after,
        })
    }
}

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

/// A registered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// Its position.
    pub seq: Seq,
    /// Its sender.
    pub sender: UserId,
    /// When it was sent.
    pub sent_at: Millis,
}

/// The receipt state of one message as one viewer may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    /// The message.
    pub message: Message,
    /// Counts and tick.
    pub aggregate: Aggregate,
    /// Per-recipient views (empty when not asked for).
    pub recipients: Vec<RecipientView>,
}

/// What a subscriber is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// Absolute states of messages the subscriber sent in one conversation.
    Receipts {
        /// The conversation.
        conversation: ConversationId,
        /// Whether it is a group (aggregated) or direct (pushed at once).
        group: bool,
        /// The messages' current states.
        messages: Vec<MessageState>,
    },
    /// The subscriber's own read watermark moved.
    Watermark {
        /// The conversation.
        conversation: ConversationId,
        /// The new (true) watermark.
        read_up_to: Seq,
        /// The unread count after the move.
        unread: u64,
    },
}

/// An event in the replay log, addressed to one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its position in the log (global, strictly increasing).
    pub offset: u64,
    /// Whom it is for.
    pub user: UserId,
    /// What happened.
    pub body: EventBody,
}

/// A resume position: the log epoch and the offset of the last event seen.
///
/// The epoch changes whenever the log behind it may have lost entries, so a
/// cursor from another epoch is never trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The log's epoch.
    pub epoch: u64,
    /// Everything up to and including this offset was delivered.
    pub offset: u64,
}

const CURSOR_VERSION: u8 = 1;

impl Cursor {
    /// The opaque text form given to clients.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let mut bytes = [0u8; 17];
        bytes[0] = CURSOR_VERSION;
        bytes[1..9].copy_from_slice(&self.epoch.to_be_bytes());
        bytes[9..].copy_from_slice(&self.offset.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a cursor produced by [`Cursor::encode`].
    pub fn decode(text: &str) -> Option<Cursor> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        if bytes.len() != 17 || bytes[0] != CURSOR_VERSION {
            return None;
        }
        Some(Cursor {
            epoch: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[9..].try_into().ok()?),
        })
    }
}

/// Coalesces replayed events: keeps the latest state per message and per
/// watermark, then regroups what is left by source event, in log order. Each
/// returned event keeps its source offset, so a client that stops after any of
/// them and resumes from its cursor misses nothing: every dropped item was
/// superseded by a later one that is still ahead of that cursor.
pub fn coalesce(events: Vec<Event>) -> Vec<Event> {
    use std::collections::HashMap;
    let mut latest_msg: HashMap<MessageId, u64> = HashMap::new();
    let mut latest_wm: HashMap<ConversationId, u64> = HashMap::new();
    for e in &events {
        match &e.body {
            EventBody::Receipts { messages, .. } => {
                for m in messages {
                    latest_msg.insert(m.message.id, e.offset);
                }
            }
            EventBody::Watermark { conversation, .. } => {
                latest_wm.insert(*conversation, e.offset);
            }
        }
    }
    events
        .into_iter()
        .filter_map(|mut e| {
            let keep = match &mut e.body {
                EventBody::Receipts { messages, .. } => {
                    messages.retain(|m| latest_msg.get(&m.message.id) == Some(&e.offset));
                    !messages.is_empty()
                }
                EventBody::Watermark { conversation, .. } => {
                    latest_wm.get(conversation) == Some(&e.offset)
                }
            };
            keep.then_some(e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn watermark_max_merge_ignores_older_and_equal_positions() {
        let wm = ReadWatermark::default();
        let a = wm.advance(5, true).expect("advances");
        assert_eq!(
            a.after,
            ReadWatermark {
                seq: 5,
                public_seq: 5
            }
        );
        assert!(a.after.advance(5, true).is_none());
        assert!(a.after.advance(3, true).is_none());
    }

    #[test]
    fn private_read_does_not_move_public_position_until_reading_further() {
        let wm = ReadWatermark {
            seq: 5,
            public_seq: 5,
        };
        let private = wm.advance(9, false).expect("advances").after;
        assert_eq!(
            private,
            ReadWatermark {
                seq: 9,
                public_seq: 5
            }
        );
        // Sharing again, re-reading the same position reveals nothing.
        assert!(private.advance(9, true).is_none());
        let further = private.advance(10, true).expect("advances");
        assert!(further.is_public());
        assert_eq!(
            further.after,
            ReadWatermark {
                seq: 10,
                public_seq: 10
            }
        );
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

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            epoch: 42,
            offset: 7,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not-a-cursor"), None);
        assert_eq!(Cursor::decode(""), None);
    }

    #[test]
    fn membership_intervals_decide_recipients() {
        let mut m = Membership::joined(1);
        assert!(m.contains(1) && m.contains(100));
        assert_eq!(m.leave(1), Err(MembershipError::LeaveBeforeJoin));
        assert_eq!(m.leave(10), Ok(true));
        assert!(m.contains(9) && !m.contains(10));
        assert_eq!(m.join(5), Err(MembershipError::JoinBeforeLeave));
        assert_eq!(m.join(20), Ok(true));
        assert!(!m.contains(15) && m.contains(20));
        assert_eq!(m.join(30), Ok(false));
    }

    fn state(id: u128, read: u64) -> MessageState {
        MessageState {
            message: Message {
                id: Uuid::from_u128(id),
                conversation: Uuid::from_u128(99),
                seq: id as u64,
                sender: Uuid::from_u128(1),
                sent_at: 0,
            },
            aggregate: Aggregate {
                tick: Tick::Sent,
                delivered_count: 0,
                read_count: read,
                recipients_total: 5,
                delivered_at: None,
                read_at: None,
            },
            recipients: vec![],
        }
    }

    fn receipts(offset: u64, msgs: Vec<MessageState>) -> Event {
        Event {
            offset,
            user: Uuid::from_u128(1),
            body: EventBody::Receipts {
                conversation: Uuid::from_u128(99),
                group: true,
                messages: msgs,
            },
        }
    }

    #[test]
    fn coalesce_keeps_latest_state_per_message_in_log_order() {
        let out = coalesce(vec![
            receipts(1, vec![state(10, 1), state(11, 1)]),
            receipts(2, vec![state(10, 2)]),
            receipts(3, vec![state(12, 1)]),
        ]);
        let offsets: Vec<u64> = out.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![1, 2, 3]);
        match &out[0].body {
            EventBody::Receipts { messages, .. } => {
                assert_eq!(messages.len(), 1);
                assert_eq!(messages[0].message.id, Uuid::from_u128(11));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    proptest! {
        /// Whatever order reads arrive in, the watermark ends at the max and
        /// never decreases along the way.
        #[test]
        fn watermark_is_max_of_reads_in_any_order(reads in proptest::collection::vec((1u64..50, any::<bool>()), 0..40)) {
            let mut wm = ReadWatermark::default();
            for (to, sharing) in &reads {
                let before = wm;
                if let Some(a) = wm.advance(*to, *sharing) { wm = a.after; }
                prop_assert!(wm.seq >= before.seq && wm.public_seq >= before.public_seq);
                prop_assert!(wm.public_seq <= wm.seq);
            }
            prop_assert_eq!(wm.seq, reads.iter().map(|r| r.0).max().unwrap_or(0));
        }

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
