//! Messages, their states, and the events that carry them to subscribers.

use super::{Aggregate, ConversationId, MessageId, Millis, RecipientView, Seq, UserId};
use serde::{Deserialize, Serialize};

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

/// One state shared by a run of messages of one sender: the state of every
/// message that sender has in the conversation with `from <= seq <= to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeState {
    /// The first seq covered.
    pub from: Seq,
    /// The last seq covered (inclusive).
    pub to: Seq,
    /// Counts and tick.
    pub aggregate: Aggregate,
    /// Per-recipient views (empty when not asked for).
    pub recipients: Vec<RecipientView>,
}

impl RangeState {
    /// Whether the range covers `seq`.
    pub fn covers(&self, seq: Seq) -> bool {
        self.from <= seq && seq <= self.to
    }
}

/// What a subscriber is told.
///
/// New variants go last: stored events are decoded by position, so a data
/// directory (or a Redis log) written before a variant existed still reads.
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
    /// Like `Receipts`, for a change that covers runs of messages: each
    /// range says the state of every message the subscriber sent in it, so
    /// the event's size does not grow with the messages it covers.
    Ranges {
        /// The conversation.
        conversation: ConversationId,
        /// Whether it is a group (aggregated) or direct (pushed at once).
        group: bool,
        /// Disjoint ranges, in seq order.
        ranges: Vec<RangeState>,
    },
    /// The subscriber's own read position in one timeline (the main one or a
    /// thread) moved; what every store logs since threads (`Watermark` is
    /// still read from older logs).
    Position(super::ReadPosition),
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

/// Coalesces replayed events: keeps the latest state per message (by
/// conversation and seq, whether a message or a range carried it) and per
/// watermark, then regroups what is left by source event, in log order. Each
/// returned event keeps its source offset, so a client that stops after any of
/// them and resumes from its cursor misses nothing: every dropped item was
/// superseded by a later one that is still ahead of that cursor. A range is
/// dropped only when later ranges cover all of it; one partly covered stays
/// whole (its states are absolute, and the later ones are applied after it).
pub fn coalesce(events: Vec<Event>) -> Vec<Event> {
    use std::collections::{HashMap, HashSet};
    let mut later_msgs: HashSet<(ConversationId, Seq)> = HashSet::new();
    let mut later_ranges: HashMap<ConversationId, Covered> = HashMap::new();
    let mut later_wms: HashSet<(ConversationId, Option<MessageId>)> = HashSet::new();
    let mut kept: Vec<Event> = events
        .into_iter()
        .rev()
        .filter_map(|mut e| {
            let keep = match &mut e.body {
                EventBody::Receipts {
                    conversation,
                    messages,
                    ..
                } => {
                    let covered = later_ranges.get(conversation);
                    messages.retain(|m| {
                        let seq = m.message.seq;
                        !covered.is_some_and(|c| c.covers(seq, seq))
                            && later_msgs.insert((*conversation, seq))
                    });
                    !messages.is_empty()
                }
                EventBody::Ranges {
                    conversation,
                    ranges,
                    ..
                } => {
                    let covered = later_ranges.entry(*conversation).or_default();
                    ranges.retain(|r| !covered.covers(r.from, r.to));
                    for r in ranges.iter() {
                        covered.add(r.from, r.to);
                    }
                    !ranges.is_empty()
                }
                EventBody::Watermark { conversation, .. } => {
                    later_wms.insert((*conversation, None))
                }
                EventBody::Position(p) => later_wms.insert((p.conversation, p.thread)),
            };
            keep.then_some(e)
        })
        .collect();
    kept.reverse();
    kept
}

/// A set of seqs kept as disjoint, merged intervals (start -> end).
#[derive(Default)]
struct Covered(std::collections::BTreeMap<Seq, Seq>);

impl Covered {
    /// Whether every seq in `from..=to` is in the set.
    fn covers(&self, from: Seq, to: Seq) -> bool {
        self.0
            .range(..=from)
            .next_back()
            .is_some_and(|(_, &end)| end >= to)
    }

    fn add(&mut self, mut from: Seq, mut to: Seq) {
        if let Some((&s, &e)) = self.0.range(..=from).next_back()
            && e.saturating_add(1) >= from
        {
            from = s;
            to = to.max(e);
        }
        let absorbed: Vec<(Seq, Seq)> = self
            .0
            .range(from..=to.saturating_add(1))
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in absorbed {
            self.0.remove(&s);
            to = to.max(e);
        }
        self.0.insert(from, to);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::Tick;
    use uuid::Uuid;

    /// Message `id` (at seq `id`) of conversation 99, read by `read`.
    pub(crate) fn state(id: u128, read: u64) -> MessageState {
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

    /// An event at `offset` carrying `msgs`.
    pub(crate) fn receipts(offset: u64, msgs: Vec<MessageState>) -> Event {
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

    fn ranges(offset: u64, spans: &[(Seq, Seq)]) -> Event {
        Event {
            offset,
            user: Uuid::from_u128(1),
            body: EventBody::Ranges {
                conversation: Uuid::from_u128(99),
                group: true,
                ranges: spans
                    .iter()
                    .map(|&(from, to)| RangeState {
                        from,
                        to,
                        aggregate: state(0, 1).aggregate,
                        recipients: vec![],
                    })
                    .collect(),
            },
        }
    }

    fn spans(e: &Event) -> Vec<(Seq, Seq)> {
        match &e.body {
            EventBody::Ranges { ranges, .. } => ranges.iter().map(|r| (r.from, r.to)).collect(),
            EventBody::Receipts { messages, .. } => messages
                .iter()
                .map(|m| (m.message.seq, m.message.seq))
                .collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn coalesce_drops_what_later_ranges_cover_and_keeps_the_rest() {
        let out = coalesce(vec![
            receipts(1, vec![state(10, 1), state(30, 1)]),
            ranges(2, &[(1, 5), (8, 12)]),
            ranges(3, &[(3, 20)]),
            receipts(4, vec![state(4, 2)]),
        ]);
        let shape: Vec<(u64, Vec<(Seq, Seq)>)> = out.iter().map(|e| (e.offset, spans(e))).collect();
        assert_eq!(
            shape,
            vec![
                // 10 is covered by 3..=20; 30 is not.
                (1, vec![(30, 30)]),
                // 8..=12 lies inside 3..=20; 1..=5 only partly: kept whole.
                (2, vec![(1, 5)]),
                // A later single message does not drop a range.
                (3, vec![(3, 20)]),
                (4, vec![(4, 4)]),
            ]
        );
    }

    #[test]
    fn covered_intervals_merge_when_they_touch() {
        let mut c = Covered::default();
        c.add(5, 9);
        c.add(1, 3);
        assert!(!c.covers(1, 9), "4 is missing");
        c.add(4, 4);
        assert!(c.covers(1, 9));
        assert!(!c.covers(1, 10));
        c.add(11, 20);
        c.add(10, 10);
        assert!(c.covers(2, 20));
        assert_eq!(c.0.len(), 1);
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
}
