//! Read positions: the max-merge watermark and what a read makes public.

use super::Seq;
use serde::{Deserialize, Serialize};

/// A user's read position in one conversation.
///
/// Invariant: watermarks only grow, and `public_seq <= seq`. `seq` is the true
/// position (what the user's own devices see); `public_seq` is the highest
/// position reached by a read made while the user shared read receipts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadWatermark {
    /// Everything with a seq up to this is read by the user.
    pub seq: Seq,
    /// Everything up to this was read while the user shared read receipts.
    pub public_seq: Seq,
}

/// A watermark move decided by [`ReadWatermark::advance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatermarkAdvance {
    /// The watermark before.
    pub before: ReadWatermark,
    /// The watermark after.
    pub after: ReadWatermark,
}

impl WatermarkAdvance {
    /// Whether others may learn of this read (it was made while sharing).
    pub fn is_public(&self) -> bool {
        self.after.public_seq > self.before.public_seq
    }

    /// The seq after which this read may change what others see: its true
    /// position before, or the public one when the read is public (it may
    /// reveal reads made while private).
    pub fn changes_after(&self) -> Seq {
        if self.is_public() {
            self.before.public_seq.min(self.before.seq)
        } else {
            self.before.seq
        }
    }

    /// Whether this read changes what others see of a message at `seq` that
    /// it covers (`delivered`: the message was delivered to the reader
    /// before): the message became visibly read (a read made while sharing,
    /// past the public position), or delivered through the read. A private
    /// read of delivered messages changes nothing others see, so it causes
    /// no event.
    pub fn changes(&self, seq: Seq, delivered: bool) -> bool {
        let visible = self.is_public() && seq > self.before.public_seq;
        let newly_delivered = seq > self.before.seq && !delivered;
        visible || newly_delivered
    }
}

impl ReadWatermark {
    /// Max-merge a read up to `to`, made while the user shares read receipts
    /// (`sharing`) or not. A position at or below the current one changes
    /// nothing (late, duplicate and reordered reads are no-ops): a read made
    /// while private stays hidden until the user reads *further* while sharing.
    pub fn advance(self, to: Seq, sharing: bool) -> Option<WatermarkAdvance> {
        if to <= self.seq {
            return None;
        }
        let after = ReadWatermark {
            seq: to,
            public_seq: if sharing { to } else { self.public_seq },
        };
        Some(WatermarkAdvance {
            before: self,
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn watermark_max_merge_ignores_older_and_equal_positions() {
        let wm = ReadWatermark::default();
        let a = wm.advance(5, true).expect("advances");
        assert_eq!(
            a.after,
            ReadWatermark {
                seq: 5,
                public_seq: 5
            }
        );
        assert!(a.after.advance(5, true).is_none());
        assert!(a.after.advance(3, true).is_none());
    }

    #[test]
    fn private_read_does_not_move_public_position_until_reading_further() {
        let wm = ReadWatermark {
            seq: 5,
            public_seq: 5,
        };
        let private = wm.advance(9, false).expect("advances").after;
        assert_eq!(
            private,
            ReadWatermark {
                seq: 9,
                public_seq: 5
            }
        );
        // Sharing again, re-reading the same position reveals nothing.
        assert!(private.advance(9, true).is_none());
        let further = private.advance(10, true).expect("advances");
        assert!(further.is_public());
        assert_eq!(
            further.after,
            ReadWatermark {
                seq: 10,
                public_seq: 10
            }
        );
    }

    proptest! {
        /// Whatever order reads arrive in, the watermark ends at the max and
        /// never decreases along the way.
        #[test]
        fn watermark_is_max_of_reads_in_any_order(reads in proptest::collection::vec((1u64..50, any::<bool>()), 0..40)) {
            let mut wm = ReadWatermark::default();
            for (to, sharing) in &reads {
                let before = wm;
                if let Some(a) = wm.advance(*to, *sharing) { wm = a.after; }
                prop_assert!(wm.seq >= before.seq && wm.public_seq >= before.public_seq);
                prop_assert!(wm.public_seq <= wm.seq);
            }
            prop_assert_eq!(wm.seq, reads.iter().map(|r| r.0).max().unwrap_or(0));
        }
    }
}
