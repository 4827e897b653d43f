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
            EventBody::Watermark { .. } => out.push(e),
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
