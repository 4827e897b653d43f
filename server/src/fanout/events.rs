//! Building receipt events from changed states.

use crate::domain::{ConversationId, EventBody, MessageState, UserId};
use std::collections::BTreeMap;

/// Most messages carried by one event; larger updates are split.
pub const MAX_MESSAGES_PER_EVENT: usize = 500;

/// The events that tell each sender of `states` (messages of conversation
/// `c`) their new states: one per sender, in seq order, split into chunks of
/// at most [`MAX_MESSAGES_PER_EVENT`] messages. Senders come in id order, so
/// every store logs the same events for the same change.
pub fn receipt_events(
    c: ConversationId,
    group: bool,
    mut states: Vec<MessageState>,
) -> Vec<(UserId, EventBody)> {
    states.sort_by_key(|s| s.message.seq);
    let mut by_sender: BTreeMap<UserId, Vec<MessageState>> = BTreeMap::new();
    for state in states {
        by_sender
            .entry(state.message.sender)
            .or_default()
            .push(state);
    }
    let mut out = Vec::new();
    for (sender, states) in by_sender {
        for chunk in states.chunks(MAX_MESSAGES_PER_EVENT) {
            out.push((
                sender,
                EventBody::Receipts {
                    conversation: c,
                    group,
                    messages: chunk.to_vec(),
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Aggregate, Message, Tick};
    use uuid::Uuid;

    fn state(seq: u64, sender: u128) -> MessageState {
        MessageState {
            message: Message {
                id: Uuid::from_u128(1000 + seq as u128),
                conversation: Uuid::from_u128(7),
                seq,
                sender: Uuid::from_u128(sender),
                sent_at: 1,
            },
            aggregate: Aggregate {
                tick: Tick::Sent,
                delivered_count: 0,
                read_count: 0,
                recipients_total: 1,
                delivered_at: None,
                read_at: None,
            },
            recipients: Vec::new(),
        }
    }

    #[test]
    fn one_event_per_sender_in_seq_order_split_into_chunks() {
        let mut states: Vec<MessageState> = (1..=1_001).rev().map(|s| state(s, 2)).collect();
        states.push(state(2_000, 1));
        let events = receipt_events(Uuid::from_u128(7), true, states);
        let shape: Vec<(u128, usize, u64)> = events
            .iter()
            .map(|(u, body)| match body {
                EventBody::Receipts { messages, .. } => {
                    assert!(
                        messages
                            .windows(2)
                            .all(|w| w[0].message.seq < w[1].message.seq)
                    );
                    (u.as_u128(), messages.len(), messages[0].message.seq)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            vec![(1, 1, 2_000), (2, 500, 1), (2, 500, 501), (2, 1, 1_001)]
        );
    }
}
