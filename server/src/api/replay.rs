//! What a replay shows: the states of now, not of when they were logged.
//!
//! The log keeps each event as it was computed at commit time. A subscriber
//! resuming later must see what it may see *now*: a recipient who read a
//! message and then turned read receipts off appears delivered, not read
//! (DESIGN.md §3, privacy: "turning it off takes effect at once"). So the
//! states of a replay are computed again, when they are sent, by the same
//! store call (and the same domain rules) that answers GetReceipts; the log
//! only says *which* messages changed since the cursor.
//!
//! States only move forward and are absolute, so a state newer than the
//! replay's head is harmless: the live event that follows carries the same
//! or a newer state.
//!
//! Ranges (`EventBody::Ranges`) name seqs, not messages. A subscriber that
//! accepts them gets them refreshed the same way (the states of its messages
//! in each range, folded again); one that does not gets each range expanded
//! into the messages it covers, live as in replay, so it sees exactly what it
//! would have seen had the write logged one entry per message.

use crate::domain::{
    ConversationId, Event, EventBody, MessageId, MessageState, RangeState, Seq, UserId,
};
use crate::error::ServiceError;
use crate::fanout::{self, MAX_MESSAGES_PER_EVENT};
use crate::store::{ReceiptStore, StoreResult};
use std::collections::{BTreeMap, HashMap};

/// The message states a replay showed, until a live event repeats them.
///
/// A replay shows the states of *now* ([`refresh`]), so a write committed
/// between reading the log and refreshing it is already in the replay, and its
/// live event (past the replay's head) would show the same states again. Live
/// events drop the messages whose state is exactly one the replay showed
/// (DESIGN.md §3: no gap, no duplicate); an event left with no message is not
/// sent. A different state, newer or older, is sent as before. The states
/// are held for the stream's life (at most `--max-replay` of them), and a live
/// event that repeats none of them is sent without a copy.
#[derive(Default)]
pub(crate) struct Replayed(HashMap<MessageId, MessageState>);

impl Replayed {
    pub(crate) fn of(events: &[Event]) -> Self {
        let mut shown = HashMap::new();
        for e in events {
            if let EventBody::Receipts { messages, .. } = &e.body {
                for m in messages {
                    shown.insert(m.message.id, m.clone());
                }
            }
        }
        Self(shown)
    }

    /// `events` without what the replay already showed (see [`Replayed`]),
    /// or `None` when they repeat nothing (the common case: nothing copied).
    pub(crate) fn drop_repeats(&mut self, events: &[Event]) -> Option<Vec<Event>> {
        let repeats = |e: &Event| match &e.body {
            EventBody::Receipts { messages, .. } => messages
                .iter()
                .any(|m| self.0.get(&m.message.id) == Some(m)),
            _ => false,
        };
        if !events.iter().any(repeats) {
            return None;
        }
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let mut e = e.clone();
            if let EventBody::Receipts { messages, .. } = &mut e.body {
                messages.retain(|m| match self.0.get(&m.message.id) {
                    Some(shown) if shown == m => {
                        self.0.remove(&m.message.id);
                        false
                    }
                    _ => true,
                });
                if messages.is_empty() {
                    continue;
                }
            }
            out.push(e);
        }
        Some(out)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Replaces the message states of coalesced `events` with their current
/// states as `viewer` may see them. A message the viewer may no longer see
/// (it left the conversation, or the message is gone) is dropped from the
/// replay, as GetReceipts would refuse it; an event left with no message is
/// dropped whole (its offset is covered by a later event or the head).
///
/// Ranges are refreshed one event at a time ([`ranges`]); an event may then
/// become several, all with its offset (see [`stream_offsets`]).
pub(crate) async fn refresh(
    store: &dyn ReceiptStore,
    viewer: UserId,
    events: Vec<Event>,
    accept_ranges: bool,
) -> StoreResult<Vec<Event>> {
    // One store call per conversation (and kind: direct events carry the
    // per-recipient list, group summaries only counts).
    let mut wanted: BTreeMap<(ConversationId, bool), Vec<MessageId>> = BTreeMap::new();
    for e in &events {
        if let EventBody::Receipts {
            conversation,
            group,
            messages,
        } = &e.body
        {
            wanted
                .entry((*conversation, *group))
                .or_default()
                .extend(messages.iter().map(|m| m.message.id));
        }
    }
    let mut now: HashMap<MessageId, MessageState> = HashMap::new();
    for ((conversation, group), ids) in wanted {
        for state in current(store, viewer, conversation, ids, !group).await? {
            now.insert(state.message.id, state);
        }
    }
    let mut out = Vec::with_capacity(events.len());
    for mut e in events {
        match &mut e.body {
            EventBody::Receipts { messages, .. } => {
                *messages = messages
                    .iter()
                    .filter_map(|m| now.get(&m.message.id).cloned())
                    .collect();
                if !messages.is_empty() {
                    out.push(e);
                }
            }
            EventBody::Ranges { .. } => {
                let (offset, user) = (e.offset, e.user);
                for body in ranges(store, viewer, e.body, accept_ranges).await? {
                    out.push(Event { offset, user, body });
                }
            }
            EventBody::Watermark { .. } | EventBody::Position(_) => out.push(e),
        }
    }
    Ok(out)
}

/// What a live event becomes on a stream: `None` when it goes as it is, or,
/// for a subscriber that does not accept ranges, the messages its ranges
/// cover (as of now). Nothing is copied for an event that goes as it is.
pub(crate) async fn live(
    store: &dyn ReceiptStore,
    viewer: UserId,
    event: &Event,
    accept_ranges: bool,
) -> StoreResult<Option<Vec<Event>>> {
    if accept_ranges || !matches!(event.body, EventBody::Ranges { .. }) {
        return Ok(None);
    }
    Ok(Some(
        ranges(store, viewer, event.body.clone(), false)
            .await?
            .into_iter()
            .map(|body| Event {
                offset: event.offset,
                user: event.user,
                body,
            })
            .collect(),
    ))
}

/// The current states behind a `Ranges` body, as bodies for one subscriber:
/// folded into ranges again (`accept_ranges`), else one entry per message,
/// in chunks of at most [`MAX_MESSAGES_PER_EVENT`]. Any other body is
/// returned as it is.
async fn ranges(
    store: &dyn ReceiptStore,
    viewer: UserId,
    body: EventBody,
    accept_ranges: bool,
) -> StoreResult<Vec<EventBody>> {
    let EventBody::Ranges {
        conversation,
        group,
        ranges,
    } = body
    else {
        return Ok(vec![body]);
    };
    let mut out = Vec::new();
    let mut messages: Vec<MessageState> = Vec::new();
    for r in &ranges {
        let (states, registered) = range_states(store, viewer, conversation, group, r).await?;
        if accept_ranges {
            // Folded range by range: between two ranges the viewer may have
            // messages in other states, which no range may claim.
            out.extend(
                fanout::receipt_events(conversation, group, states, Some(&registered))
                    .into_iter()
                    .map(|(_, body)| body),
            );
        } else {
            messages.extend(states);
        }
    }
    for chunk in messages.chunks(MAX_MESSAGES_PER_EVENT) {
        out.push(EventBody::Receipts {
            conversation,
            group,
            messages: chunk.to_vec(),
        });
    }
    Ok(out)
}

/// The current states of the viewer's messages in `r`, and those messages
/// as `(seq, sender)`.
async fn range_states(
    store: &dyn ReceiptStore,
    viewer: UserId,
    conversation: ConversationId,
    group: bool,
    r: &RangeState,
) -> StoreResult<(Vec<MessageState>, Vec<(Seq, UserId)>)> {
    let mine: Vec<(Seq, MessageId)> = store
        .registered_between(conversation, r.from, r.to)
        .await?
        .into_iter()
        .filter(|(_, _, sender)| *sender == viewer)
        .map(|(seq, id, _)| (seq, id))
        .collect();
    if mine.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let ids = mine.iter().map(|(_, id)| *id).collect();
    let states = current(store, viewer, conversation, ids, !group).await?;
    Ok((states, mine.iter().map(|(seq, _)| (*seq, viewer)).collect()))
}

/// The stream position to send with each of `events` (in stream order): its
/// own offset, except where one logged event became several (a range
/// expanded in chunks): all but the last of those carry the position before
/// the event, so a client that stops between them resumes at its start.
pub(crate) fn stream_offsets(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| match events.get(i + 1) {
            Some(next) if next.offset == e.offset => e.offset.saturating_sub(1),
            _ => e.offset,
        })
        .collect()
}

/// The current states of `ids`, leaving out those the viewer cannot see.
async fn current(
    store: &dyn ReceiptStore,
    viewer: UserId,
    conversation: ConversationId,
    ids: Vec<MessageId>,
    include_recipients: bool,
) -> StoreResult<Vec<MessageState>> {
    match store
        .receipts(viewer, conversation, ids.clone(), include_recipients)
        .await
    {
        Ok(states) => Ok(states),
        // No longer a member, or the conversation is gone: nothing to show.
        Err(ServiceError::PermissionDenied(_)) => Ok(Vec::new()),
        Err(ServiceError::NotFound {
            what: "conversation",
            ..
        }) => Ok(Vec::new()),
        // One unknown message fails the whole call: ask one by one.
        Err(ServiceError::NotFound { .. }) if ids.len() > 1 => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                match store
                    .receipts(viewer, conversation, vec![id], include_recipients)
                    .await
                {
                    Ok(states) => out.extend(states),
                    Err(ServiceError::NotFound { .. } | ServiceError::PermissionDenied(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        }
        Err(ServiceError::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event_tests::{receipts, state};

    /// What `shown` lets through of `live`.
    fn after(shown: &mut Replayed, live: &[Event]) -> Vec<Event> {
        shown.drop_repeats(live).unwrap_or_else(|| live.to_vec())
    }

    fn ids(events: &[Event]) -> Vec<Vec<u128>> {
        events
            .iter()
            .map(|e| match &e.body {
                EventBody::Receipts { messages, .. } => {
                    messages.iter().map(|m| m.message.id.as_u128()).collect()
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// The race of a resume: the replay was refreshed after a read of 3..=5
    /// committed, so it already shows them read; the read's live event
    /// (0..=5 read) then sends only what the replay did not show. A state
    /// that differs is sent, and a repeat is dropped once only.
    #[test]
    fn live_events_drop_exactly_the_states_a_replay_showed() {
        let replay = vec![receipts(4, vec![state(3, 1), state(4, 1), state(5, 1)])];
        let mut shown = Replayed::of(&replay);
        let live = vec![receipts(
            7,
            (0..=5)
                .map(|id| state(id, u64::from(id != 4) * 2))
                .collect(),
        )];
        // 3 and 5: read by 2 in the live event, by 1 in the replay: sent.
        assert_eq!(ids(&after(&mut shown, &live)), vec![vec![0, 1, 2, 3, 4, 5]]);
        let live = vec![
            receipts(8, vec![state(3, 1), state(4, 1), state(5, 1)]),
            receipts(8, vec![state(6, 1)]),
        ];
        assert_eq!(ids(&after(&mut shown, &live)), vec![vec![6]]);
        assert!(shown.is_empty());
        // Once matched, the same state is sent again (it can only be a new
        // event the client has not seen).
        assert_eq!(
            ids(&after(&mut shown, &[receipts(9, vec![state(3, 1)])])),
            vec![vec![3]]
        );
    }
}
