//! Group windows: a group's changes are summed up over a tumbling interval
//! and pushed as one summary per sender with absolute counts (DESIGN.md,
//! "Real time and offline").
//!
//! A window opens at a conversation's first change and closes its interval
//! later, whatever comes in between (tumbling, not sliding: a busy group still
//! gets a summary every interval). It remembers the seq range that changed,
//! so the summary covers exactly the messages that may have moved.

use crate::domain::{ConversationId, Seq};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// One open window: the changed seqs `lo..=hi`, and when it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The lowest changed seq.
    pub lo: Seq,
    /// The highest changed seq.
    pub hi: Seq,
    /// When the window closes.
    pub deadline: Instant,
}

/// The open windows of one node (or one writer).
#[derive(Clone, Debug)]
pub struct Windows {
    interval: Duration,
    open: HashMap<ConversationId, Window>,
}

impl Windows {
    /// Windows that stay open for `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            open: HashMap::new(),
        }
    }

    /// Records a change of `lo..=hi` in `c`: opens `c`'s window if none is
    /// open (closing one interval from now) or widens the open one. Returns
    /// the window as it now stands.
    pub fn touch(&mut self, c: ConversationId, lo: Seq, hi: Seq) -> Window {
        let interval = self.interval;
        let w = self.open.entry(c).or_insert_with(|| Window {
            lo,
            hi,
            deadline: Instant::now() + interval,
        });
        w.lo = w.lo.min(lo);
        w.hi = w.hi.max(hi);
        *w
    }

    /// Puts back a window that was open before a restart or a failed flush;
    /// it closes at `deadline` (now, for one left open by a crash).
    pub fn restore(&mut self, c: ConversationId, window: Window) {
        let w = self.open.entry(c).or_insert(window);
        w.lo = w.lo.min(window.lo);
        w.hi = w.hi.max(window.hi);
        w.deadline = w.deadline.min(window.deadline);
    }

    /// When the next window closes, if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|w| w.deadline).min()
    }

    /// Takes the windows that have closed by now (every open one if `all`,
    /// at shutdown).
    pub fn take_due(&mut self, all: bool) -> Vec<(ConversationId, Window)> {
        let now = Instant::now();
        let due: Vec<ConversationId> = self
            .open
            .iter()
            .filter(|(_, w)| all || w.deadline <= now)
            .map(|(c, _)| *c)
            .collect();
        due.into_iter()
            .filter_map(|c| self.open.remove(&c).map(|w| (c, w)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const C: ConversationId = Uuid::from_u128(1);
    const D: ConversationId = Uuid::from_u128(2);

    #[tokio::test(start_paused = true)]
    async fn a_window_tumbles_one_interval_after_its_first_change() {
        let mut w = Windows::new(Duration::from_secs(1));
        let first = w.touch(C, 5, 6);
        tokio::time::advance(Duration::from_millis(600)).await;
        // Later changes widen the range but do not move the deadline.
        let again = w.touch(C, 2, 4);
        assert_eq!((again.lo, again.hi, again.deadline), (2, 6, first.deadline));
        w.touch(D, 9, 9);
        assert!(w.take_due(false).is_empty());
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(w.take_due(false), vec![(C, again)]);
        // The next change opens a new window, one interval from now.
        let next = w.touch(C, 7, 7);
        assert_eq!(next.deadline, Instant::now() + Duration::from_secs(1));
        assert_eq!(
            w.next_deadline(),
            Some(first.deadline + Duration::from_millis(600))
        );
        let mut all = w.take_due(true);
        all.sort_by_key(|(c, _)| *c);
        assert_eq!(all.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![C, D]);
        assert_eq!(w.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restored_window_keeps_the_earlier_deadline_and_the_wider_range() {
        let mut w = Windows::new(Duration::from_secs(1));
        w.touch(C, 5, 6);
        let now = Instant::now();
        w.restore(
            C,
            Window {
                lo: 1,
                hi: 3,
                deadline: now,
            },
        );
        assert_eq!(
            w.take_due(false),
            vec![(
                C,
                Window {
                    lo: 1,
                    hi: 6,
                    deadline: now
                }
            )]
        );
    }
}
