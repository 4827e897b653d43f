//! A client-side receipt state: what a UI renders, kept current by a
//! subscription.

use crate::subscribe::{Event, SubscribeOptions};
use crate::types::{Cursor, MessageReceipts, Watermark};
use crate::{Client, Error};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;
use uuid::Uuid;

/// The receipts of the messages you sent, and your read position per
/// conversation, as the server last told them: every app's "apply absolute
/// states, replace everything on a reset, remember each message's seq"
/// in one place, so that a UI only renders.
///
/// Feed it with [`ReceiptState::track`] (what GetReceipts returned, e.g.
/// when a conversation opens) and [`ReceiptState::follow`] (a subscription
/// that asks for ranges and applies every event), or apply events yourself
/// with [`ReceiptState::apply`]. Read it with [`ReceiptState::message`] and
/// [`ReceiptState::conversation`]; [`ReceiptState::changes`] tells when to
/// repaint. Cheap to clone: clones share one state.
///
/// The rules it applies: every state is absolute, so the latest one wins;
/// a range applies to the messages it holds whose seq falls in it (a message
/// it does not hold yet gets its state from `track` or a later event); a
/// reset replaces everything with the server's snapshot.
#[derive(Clone, Debug)]
pub struct ReceiptState {
    inner: Arc<Mutex<Inner>>,
    version: Arc<watch::Sender<u64>>,
}

#[derive(Debug, Default)]
struct Inner {
    messages: HashMap<Uuid, MessageReceipts>,
    /// (conversation, seq) → message: what ranges apply to.
    by_seq: BTreeMap<(Uuid, u64), Uuid>,
    /// By (conversation, thread root): `None` is the main timeline.
    watermarks: HashMap<(Uuid, Option<Uuid>), Watermark>,
    cursor: Option<Cursor>,
}

impl Inner {
    fn put(&mut self, m: MessageReceipts) -> bool {
        self.by_seq.insert((m.conversation_id, m.seq), m.message_id);
        match self.messages.get(&m.message_id) {
            Some(old) if *old == m => false,
            _ => {
                self.messages.insert(m.message_id, m);
                true
            }
        }
    }
}

impl Default for ReceiptState {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiptState {
    /// An empty state.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self, ids: &[Uuid]) {
        if !ids.is_empty() {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Holds `messages` (e.g. what [`Client::get_receipts`] returned),
    /// replacing what it held for them. Returns the ids whose state changed.
    pub fn track(&self, messages: impl IntoIterator<Item = MessageReceipts>) -> Vec<Uuid> {
        let mut inner = self.lock();
        let changed: Vec<Uuid> = messages
            .into_iter()
            .filter_map(|m| {
                let id = m.message_id;
                inner.put(m).then_some(id)
            })
            .collect();
        drop(inner);
        self.changed(&changed);
        changed
    }

    /// Applies one subscription event. Returns what changed: the ids of the
    /// messages whose state changed (a reset: those of the snapshot), or for
    /// a watermark, its conversation's id.
    pub fn apply(&self, event: &Event) -> Vec<Uuid> {
        let mut inner = self.lock();
        let mut changed = Vec::new();
        match event {
            Event::Receipts {
                conversation_id,
                messages,
                ranges,
                ..
            } => {
                for range in ranges {
                    let held: Vec<Uuid> = inner
                        .by_seq
                        .range(
                            (*conversation_id, range.from_seq)..=(*conversation_id, range.to_seq),
                        )
                        .map(|(_, id)| *id)
                        .collect();
                    for id in held {
                        if let Some(m) = inner.messages.get_mut(&id) {
                            let before = m.clone();
                            m.apply_range(range);
                            if *m != before {
                                changed.push(id);
                            }
                        }
                    }
                }
                for m in messages {
                    if inner.put(m.clone()) {
                        changed.push(m.message_id);
                    }
                }
            }
            Event::Watermark(w)
                if inner
                    .watermarks
                    .get(&(w.conversation_id, w.thread_root_message_id))
                    != Some(w) =>
            {
                inner
                    .watermarks
                    .insert((w.conversation_id, w.thread_root_message_id), w.clone());
                // The conversation's unread count is the same for every
                // timeline of it: the newest says it.
                for ((c, _), other) in inner.watermarks.iter_mut() {
                    if *c == w.conversation_id {
                        other.conversation_unread_count = w.conversation_unread_count;
                    }
                }
                changed.push(w.conversation_id);
            }
            Event::Reset(snapshot) => {
                let cursor = inner.cursor.take();
                *inner = Inner {
                    cursor,
                    ..Inner::default()
                };
                for m in &snapshot.recent_messages {
                    changed.push(m.message_id);
                    inner.put(m.clone());
                }
                for w in &snapshot.watermarks {
                    inner
                        .watermarks
                        .insert((w.conversation_id, w.thread_root_message_id), w.clone());
                }
                // Everything was replaced, even with an empty snapshot.
                drop(inner);
                self.version.send_modify(|v| *v += 1);
                return changed;
            }
            _ => {}
        }
        drop(inner);
        self.changed(&changed);
        changed
    }

    /// Subscribes with `client` (asking for ranges) from `cursor`, or from
    /// [`ReceiptState::cursor`] when `None`, and applies every event until
    /// the subscription ends: `Ok` when the stream closed, the error that
    /// ended it otherwise (reconnecting is the subscription's job). The
    /// cursor advances with each event, so a later `follow` resumes where
    /// this one stopped.
    pub async fn follow(&self, client: &Client, cursor: Option<Cursor>) -> Result<(), Error> {
        let from = cursor.or_else(|| self.cursor());
        let mut sub = client.subscribe_with(from, SubscribeOptions::default().accept_ranges(true));
        while let Some(event) = sub.next().await {
            let event = event?;
            self.apply(&event);
            let at = sub.cursor().cloned();
            if at.is_some() {
                self.lock().cursor = at;
            }
        }
        Ok(())
    }

    /// A message's state, if held.
    pub fn message(&self, message_id: Uuid) -> Option<MessageReceipts> {
        self.lock().messages.get(&message_id).cloned()
    }

    /// The held messages of a conversation, in seq order.
    pub fn conversation(&self, conversation_id: Uuid) -> Vec<MessageReceipts> {
        let inner = self.lock();
        inner
            .by_seq
            .range((conversation_id, 0)..=(conversation_id, u64::MAX))
            .filter_map(|(_, id)| inner.messages.get(id).cloned())
            .collect()
    }

    /// A held message's seq: what [`crate::ReadMarker::mark`] needs.
    pub fn seq(&self, message_id: Uuid) -> Option<u64> {
        self.lock().messages.get(&message_id).map(|m| m.seq)
    }

    /// Your read position and unread count in a conversation's main
    /// timeline (with the conversation's unread count, threads included),
    /// once the stream or a snapshot told it.
    pub fn watermark(&self, conversation_id: Uuid) -> Option<Watermark> {
        self.lock()
            .watermarks
            .get(&(conversation_id, None))
            .cloned()
    }

    /// Your read position and unread count in the thread under `root`,
    /// once the stream or a snapshot told it.
    pub fn thread_watermark(&self, conversation_id: Uuid, root: Uuid) -> Option<Watermark> {
        self.lock()
            .watermarks
            .get(&(conversation_id, Some(root)))
            .cloned()
    }

    /// Where [`ReceiptState::follow`] resumes: the cursor of the last event
    /// applied by it. Persist it to resume in a later process.
    pub fn cursor(&self) -> Option<Cursor> {
        self.lock().cursor.clone()
    }

    /// A receiver that changes (`changed().await`) whenever the state does:
    /// repaint then.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(c: Uuid, thread: Option<Uuid>, seq: u64, unread: u64, total: u64) -> Event {
        Event::Watermark(Watermark {
            conversation_id: c,
            read_up_to_seq: seq,
            unread_count: unread,
            thread_root_message_id: thread,
            conversation_unread_count: total,
        })
    }

    #[test]
    fn a_thread_read_moves_the_conversations_count_for_every_timeline() {
        let state = ReceiptState::new();
        let (c, root) = (Uuid::now_v7(), Uuid::now_v7());
        state.apply(&position(c, None, 3, 2, 5));
        state.apply(&position(c, Some(root), 7, 0, 2));
        let main = state.watermark(c).expect("main");
        assert_eq!((main.read_up_to_seq, main.unread_count), (3, 2));
        assert_eq!(main.conversation_unread_count, 2, "the thread read's count");
        let thread = state.thread_watermark(c, root).expect("thread");
        assert_eq!(
            (thread.read_up_to_seq, thread.conversation_unread_count),
            (7, 2)
        );
        assert!(state.thread_watermark(Uuid::now_v7(), root).is_none());
    }
}
