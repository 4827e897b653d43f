//! Building receipt events from changed states.
//!
//! A change that covers a run of one sender's messages in the same state
//! (a MarkDelivered of a batch, a read of thousands, a group summary where
//! nothing differs) becomes one range rather than one entry per message,
//! so what a write logs does not grow with the messages it covers. The
//! subscription expands ranges for clients that do not accept them
//! (`api::replay`).

use crate::domain::{ConversationId, EventBody, MessageState, RangeState, Seq, UserId};
use std::collections::BTreeMap;

/// Most messages (or ranges) carried by one event; larger updates are split.
pub const MAX_MESSAGES_PER_EVENT: usize = 500;

/// Whether a store should read the registrations of a change's seq span
/// (`lo..=hi`, `changed` messages) for [`receipt_events`]: only when the
/// change has gaps (other senders' messages may fill them) and the span is
/// dense enough that reading it costs less than the events it saves.
pub fn worth_reading_span(lo: Seq, hi: Seq, changed: usize) -> bool {
    let span = hi.saturating_sub(lo).saturating_add(1);
    span > changed as u64 && span < 8u64.saturating_mul(changed as u64)
}

/// The events that tell each sender of `states` (messages of conversation
/// `c`) their new states: per sender, in seq order, the runs of messages in
/// one state become ranges, and the event is split into chunks of at most
/// [`MAX_MESSAGES_PER_EVENT`] entries. Senders come in id order, so every
/// store logs the same events for the same change.
///
/// A range claims the state of *every* message its sender has in it, so two
/// of a sender's messages share one only if the sender has no other message
/// between them. `registered` lists every registered message `(seq, sender)`
/// from the lowest to the highest seq of `states`, when the store read them;
/// without it, only messages with nothing but other entries of `states`
/// between them share a range.
pub fn receipt_events(
    c: ConversationId,
    group: bool,
    mut states: Vec<MessageState>,
    registered: Option<&[(Seq, UserId)]>,
) -> Vec<(UserId, EventBody)> {
    states.sort_by_key(|s| s.message.seq);
    let seqs: Vec<Seq> = states.iter().map(|s| s.message.seq).collect();
    // Whether `sender` has no message strictly between `a` and `b`.
    let nothing_between = |sender: UserId, a: Seq, b: Seq| -> bool {
        if b <= a.saturating_add(1) {
            return true;
        }
        match registered {
            Some(reg) => {
                let lo = reg.partition_point(|(s, _)| *s <= a);
                let hi = reg.partition_point(|(s, _)| *s < b);
                reg[lo..hi].iter().all(|(_, u)| *u != sender)
            }
            None => {
                let lo = seqs.partition_point(|s| *s <= a);
                let hi = seqs.partition_point(|s| *s < b);
                (hi - lo) as u64 == b - a - 1
            }
        }
    };
    let mut by_sender: BTreeMap<UserId, Vec<MessageState>> = BTreeMap::new();
    for state in states {
        by_sender
            .entry(state.message.sender)
            .or_default()
            .push(state);
    }
    let mut out = Vec::new();
    for (sender, states) in by_sender {
        let mut ranges: Vec<RangeState> = Vec::new();
        for s in &states {
            if let Some(last) = ranges.last_mut()
                && last.aggregate == s.aggregate
                && last.recipients == s.recipients
                && nothing_between(sender, last.to, s.message.seq)
            {
                last.to = s.message.seq;
                continue;
            }
            ranges.push(RangeState {
                from: s.message.seq,
                to: s.message.seq,
                aggregate: s.aggregate,
                recipients: s.recipients.clone(),
            });
        }
        if ranges.len() == states.len() {
            // No run to fold: each message as itself.
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
            continue;
        }
        for chunk in ranges.chunks(MAX_MESSAGES_PER_EVENT) {
            out.push((
                sender,
                EventBody::Ranges {
                    conversation: c,
                    group,
                    ranges: chunk.to_vec(),
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

    /// A state that differs from its neighbours' (so no range folds it).
    fn distinct(seq: u64, sender: u128) -> MessageState {
        let mut s = state(seq, sender);
        s.aggregate.read_count = seq;
        s
    }

    fn range_shape(events: &[(UserId, EventBody)]) -> Vec<(u128, Vec<(Seq, Seq)>)> {
        events
            .iter()
            .map(|(u, body)| match body {
                EventBody::Ranges { ranges, .. } => {
                    (u.as_u128(), ranges.iter().map(|r| (r.from, r.to)).collect())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn one_event_per_sender_in_seq_order_split_into_chunks() {
        let mut states: Vec<MessageState> = (1..=1_001).rev().map(|s| distinct(s, 2)).collect();
        states.push(state(2_000, 1));
        let events = receipt_events(Uuid::from_u128(7), true, states, None);
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

    #[test]
    fn a_run_in_one_state_is_one_range_whatever_its_length() {
        for n in [2u64, 10_000] {
            let states: Vec<MessageState> = (1..=n).map(|s| state(s, 2)).collect();
            let events = receipt_events(Uuid::from_u128(7), false, states, None);
            assert_eq!(range_shape(&events), vec![(2, vec![(1, n)])]);
        }
    }

    #[test]
    fn a_range_never_spans_a_message_of_its_sender_outside_the_change() {
        // Sender 2 has 1, 2, 4, 5; the change names 1, 2, 5 (4 is in
        // another state). Sender 1's message 3 is between.
        let states = vec![state(1, 2), state(2, 2), state(5, 2)];
        let registered: Vec<(Seq, UserId)> = [(1, 2), (2, 2), (3, 1), (4, 2), (5, 2)]
            .iter()
            .map(|&(s, u)| (s, Uuid::from_u128(u)))
            .collect();
        let events = receipt_events(Uuid::from_u128(7), false, states.clone(), Some(&registered));
        assert_eq!(range_shape(&events), vec![(2, vec![(1, 2), (5, 5)])]);
        // Without the registrations, the unknown 3 and 4 end the range too.
        let events = receipt_events(Uuid::from_u128(7), false, states, None);
        assert_eq!(range_shape(&events), vec![(2, vec![(1, 2), (5, 5)])]);
        // Another sender's message between two of them does not end it.
        let states = vec![state(1, 2), state(2, 2), state(4, 2)];
        let registered: Vec<(Seq, UserId)> = [(1, 2), (2, 2), (3, 1), (4, 2)]
            .iter()
            .map(|&(s, u)| (s, Uuid::from_u128(u)))
            .collect();
        let events = receipt_events(Uuid::from_u128(7), false, states.clone(), Some(&registered));
        assert_eq!(range_shape(&events), vec![(2, vec![(1, 4)])]);
        // Nor does one whose state is in the change.
        let mut with_3 = states;
        with_3.push(state(3, 1));
        let events = receipt_events(Uuid::from_u128(7), false, with_3, None);
        assert_eq!(range_shape(&events[1..]), vec![(2, vec![(1, 4)])]);
    }

    #[test]
    fn a_state_change_ends_a_range() {
        let mut states: Vec<MessageState> = (1..=6).map(|s| state(s, 2)).collect();
        states[3].aggregate.delivered_count = 1;
        states[3].aggregate.tick = Tick::Delivered;
        let events = receipt_events(Uuid::from_u128(7), true, states, None);
        assert_eq!(
            range_shape(&events),
            vec![(2, vec![(1, 3), (4, 4), (5, 6)])]
        );
    }

    #[test]
    fn a_span_is_read_only_when_it_has_gaps_and_is_dense() {
        assert!(!worth_reading_span(1, 10, 10), "no gap");
        assert!(worth_reading_span(1, 15, 10), "gaps, dense");
        assert!(!worth_reading_span(1, 1_000, 10), "sparse");
    }
}
