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

use crate::domain::{ConversationId, Event, EventBody, MessageId, MessageState, UserId};
use crate::error::ServiceError;
use crate::store::{ReceiptStore, StoreResult};
use std::collections::{BTreeMap, HashMap};

/// Replaces the message states of coalesced `events` with their current
/// states as `viewer` may see them. A message the viewer may no longer see
/// (it left the conversation, or the message is gone) is dropped from the
/// replay, as GetReceipts would refuse it; an event left with no message is
/// dropped whole (its offset is covered by a later event or the head).
pub(crate) async fn refresh(
    store: &dyn ReceiptStore,
    viewer: UserId,
    events: Vec<Event>,
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
    Ok(events
        .into_iter()
        .filter_map(|mut e| {
            if let EventBody::Receipts { messages, .. } = &mut e.body {
                *messages = messages
                    .iter()
                    .filter_map(|m| now.get(&m.message.id).cloned())
                    .collect();
                if messages.is_empty() {
                    return None;
                }
            }
            Some(e)
        })
        .collect())
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
