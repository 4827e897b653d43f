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
    use crate::domain::Tick;
    use uuid::Uuid;

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
}
