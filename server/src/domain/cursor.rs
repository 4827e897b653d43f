//! Resume positions, and whether a subscriber can resume from one.

/// A resume position: the log epoch and the offset of the last event seen.
///
/// The epoch changes whenever the log behind it may have lost entries, so a
/// cursor from another epoch is never trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The log's epoch.
    pub epoch: u64,
    /// Everything up to and including this offset was delivered.
    pub offset: u64,
}

const CURSOR_VERSION: u8 = 1;

impl Cursor {
    /// The opaque text form given to clients.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let mut bytes = [0u8; 17];
        bytes[0] = CURSOR_VERSION;
        bytes[1..9].copy_from_slice(&self.epoch.to_be_bytes());
        bytes[9..].copy_from_slice(&self.offset.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a cursor produced by [`Cursor::encode`].
    pub fn decode(text: &str) -> Option<Cursor> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        if bytes.len() != 17 || bytes[0] != CURSOR_VERSION {
            return None;
        }
        Some(Cursor {
            epoch: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[9..].try_into().ok()?),
        })
    }
}

/// Why a cursor cannot be honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// Trimmed from the log.
    Expired,
    /// From another epoch.
    EpochChanged,
    /// Unparseable, or ahead of the log.
    Invalid,
    /// More missed events than a replay may carry.
    TooLarge,
}

/// Where a subscriber asks to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayFrom {
    /// No cursor: the live position.
    Live,
    /// After this cursor.
    Cursor(Cursor),
    /// A cursor that could not be parsed: always a reset.
    Unparseable,
}

impl ReplayFrom {
    /// From the cursor text a client sent (empty: live).
    pub fn parse(text: &str) -> Self {
        if text.is_empty() {
            return Self::Live;
        }
        Cursor::decode(text).map_or(Self::Unparseable, Self::Cursor)
    }
}

/// Where a replay starts: after `offset`, or a reset for `reason`.
///
/// The rule (DESIGN.md, "Replay and cursors"): a cursor is honoured only if it
/// comes from the log's current epoch, is not ahead of the log's head, and
/// nothing after it was trimmed; anything else resets. The caller then reads at
/// most `max + 1` events after the cursor and asks [`too_large`].
pub fn replay_start(
    from: Cursor,
    epoch: u64,
    head: u64,
    trimmed_to: u64,
) -> Result<u64, ResetReason> {
    if from.epoch != epoch {
        Err(ResetReason::EpochChanged)
    } else if from.offset > head {
        Err(ResetReason::Invalid)
    } else if from.offset < trimmed_to {
        Err(ResetReason::Expired)
    } else {
        Ok(from.offset)
    }
}

/// Whether `missed` events are more than one replay may carry (`max`): the
/// subscriber is then reset with a snapshot instead.
pub fn too_large(missed: usize, max: usize) -> bool {
    missed > max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            epoch: 42,
            offset: 7,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not-a-cursor"), None);
        assert_eq!(Cursor::decode(""), None);
    }

    #[test]
    fn only_a_cursor_of_this_epoch_inside_the_kept_log_resumes() {
        let at = |epoch, offset| Cursor { epoch, offset };
        assert_eq!(replay_start(at(1, 5), 1, 9, 3), Ok(5));
        assert_eq!(replay_start(at(1, 9), 1, 9, 3), Ok(9));
        assert_eq!(replay_start(at(1, 3), 1, 9, 3), Ok(3));
        assert_eq!(
            replay_start(at(2, 5), 1, 9, 3),
            Err(ResetReason::EpochChanged)
        );
        assert_eq!(replay_start(at(1, 10), 1, 9, 3), Err(ResetReason::Invalid));
        assert_eq!(replay_start(at(1, 2), 1, 9, 3), Err(ResetReason::Expired));
        assert!(!too_large(10, 10));
        assert!(too_large(11, 10));
    }
}
