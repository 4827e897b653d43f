//! Live delivery of committed events to connected subscribers on this node.
//!
//! The store appends events to its durable log and then hands them to the
//! [`Hub`], which copies each into the bounded buffer of every subscriber of
//! the addressed user. A subscriber whose buffer is full is cut off (its
//! stream ends with a resumable status) instead of growing memory.

use crate::domain::{Event, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Connected subscribers by user.
#[derive(Debug)]
pub struct Hub {
    /// std Mutex: nothing awaits while it is held (sends are `try_send`).
    subscribers: Mutex<HashMap<UserId, Vec<Slot>>>,
    buffer: usize,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    tx: mpsc::Sender<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
}

/// One subscriber's end: events for its user, in log order.
#[derive(Debug)]
pub struct Subscription {
    /// Events as they are committed.
    pub events: mpsc::Receiver<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
    id: u64,
    user: UserId,
    hub: Arc<Hub>,
}

impl Subscription {
    /// True once the hub cut this subscriber off because its buffer was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.user, self.id);
    }
}

impl Hub {
    /// A hub whose subscribers each buffer at most `buffer` events.
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            subscribers: Mutex::new(HashMap::new()),
            buffer: buffer.max(1),
            next_id: AtomicU64::new(1),
        })
    }

    /// Registers a subscriber for `user`. Register before reading the replay
    /// log, so nothing committed in between is missed.
    pub fn subscribe(self: &Arc<Self>, user: UserId) -> Subscription {
        let (tx, rx) = mpsc::channel(self.buffer);
        let overflowed = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(user).or_default().push(Slot {
            id,
            tx,
            overflowed: overflowed.clone(),
        });
        Subscription {
            events: rx,
            overflowed,
            id,
            user,
            hub: self.clone(),
        }
    }

    /// Number of open subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Delivers committed events. Never blocks: a full subscriber is dropped
    /// and marked overflowed.
    pub fn publish(&self, events: &[Arc<Event>]) {
        if events.is_empty() {
            return;
        }
        let mut subs = self.lock();
        for event in events {
            let Some(slots) = subs.get_mut(&event.user) else {
                continue;
            };
            slots.retain(|slot| match slot.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.overflowed.store(true, Ordering::Release);
                    tracing::warn!(user = %event.user, "subscriber too slow; ending its stream");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if slots.is_empty() {
                subs.remove(&event.user);
            }
        }
    }

    /// Ends every subscriber's stream (resumable): used when the source of
    /// live events may have dropped some, so clients resume from their
    /// cursors and replay from the log.
    pub fn disconnect_all(&self) {
        self.lock().clear();
    }

    /// Ends `user`'s streams (resumable): used when an event for `user`
    /// could not be handed over (e.g. it came from a newer node in a format
    /// this one cannot read), so its subscribers resume from their cursors
    /// instead of moving past it.
    pub fn disconnect(&self, user: UserId) {
        self.lock().remove(&user);
    }

    fn remove(&self, user: UserId, id: u64) {
        let mut subs = self.lock();
        if let Some(slots) = subs.get_mut(&user) {
            slots.retain(|s| s.id != id);
            if slots.is_empty() {
                subs.remove(&user);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<Slot>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::error::TryRecvError;
    use uuid::Uuid;

    #[test]
    fn disconnecting_a_user_ends_its_streams_and_no_one_elses() {
        let hub = Hub::new(4);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut sa = hub.subscribe(a);
        let mut sb = hub.subscribe(b);
        hub.disconnect(a);
        assert!(matches!(
            sa.events.try_recv(),
            Err(TryRecvError::Disconnected)
        ));
        assert!(matches!(sb.events.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(hub.subscriber_count(), 1);
    }
}
