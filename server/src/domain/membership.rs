//! Membership and the recipient rule: who receives a message.

use super::{Seq, UserId};
use serde::{Deserialize, Serialize};

/// One period of membership: the member is a recipient of messages with
/// `from <= seq < until` (`until == None`: still a member).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInterval {
    /// First seq the member receives.
    pub from: Seq,
    /// First seq the member no longer receives, if it left.
    pub until: Option<Seq>,
}

/// A member's whole history in one conversation: disjoint intervals in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Intervals in ascending order; only the last may be open.
    pub intervals: Vec<MemberInterval>,
}

/// Which way a membership change goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChangeKind {
    /// Members join (again) from a seq on.
    Join,
    /// Members leave from a seq on.
    Leave,
}

impl MemberChangeKind {
    /// The conversation's member count after `changed` members moved this way.
    pub fn count_after(self, before: u64, changed: u64) -> u64 {
        match self {
            Self::Join => before + changed,
            Self::Leave => before.saturating_sub(changed),
        }
    }

    /// Applies this change from `from` to `membership`: `Ok(false)` if it
    /// changes nothing (already a member, or not one).
    pub fn apply(self, membership: &mut Membership, from: Seq) -> Result<bool, MembershipError> {
        match self {
            Self::Join => membership.join(from),
            Self::Leave => membership.leave(from),
        }
    }
}

/// Why a membership change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipError {
    /// A removal's `from_seq` is not after the seq the member joined at.
    LeaveBeforeJoin,
    /// A (re)join's `from_seq` is before the seq the member last left at.
    JoinBeforeLeave,
}

impl Membership {
    /// A membership starting at `from`.
    pub fn joined(from: Seq) -> Self {
        Self {
            intervals: vec![MemberInterval { from, until: None }],
        }
    }

    /// Whether the user was a member at `seq`.
    pub fn contains(&self, seq: Seq) -> bool {
        self.intervals
            .iter()
            .any(|i| i.from <= seq && i.until.is_none_or(|u| seq < u))
    }

    /// The recipient rule: `member` (whose membership this is) receives the
    /// message at `seq` sent by `sender` if it was a member at `seq` and is
    /// not the sender. Every store asks this; none re-decides it.
    pub fn receives(&self, member: UserId, sender: UserId, seq: Seq) -> bool {
        member != sender && self.contains(seq)
    }

    /// Whether the user is a member now (its last interval is open).
    pub fn is_current(&self) -> bool {
        self.intervals.last().is_some_and(|i| i.until.is_none())
    }

    /// Joins (again) from `from`. Returns `Ok(false)` if already a member.
    pub fn join(&mut self, from: Seq) -> Result<bool, MembershipError> {
        match self.intervals.last() {
            Some(last) if last.until.is_none() => Ok(false),
            Some(last) if last.until.is_some_and(|u| from < u) => {
                Err(MembershipError::JoinBeforeLeave)
            }
            _ => {
                self.intervals.push(MemberInterval { from, until: None });
                Ok(true)
            }
        }
    }

    /// Leaves from `from` on. Returns `Ok(false)` if not a member now.
    pub fn leave(&mut self, from: Seq) -> Result<bool, MembershipError> {
        match self.intervals.last_mut() {
            Some(last) if last.until.is_none() => {
                if from <= last.from {
                    return Err(MembershipError::LeaveBeforeJoin);
                }
                last.until = Some(from);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_intervals_decide_recipients() {
        let mut m = Membership::joined(1);
        assert!(m.contains(1) && m.contains(100));
        assert_eq!(m.leave(1), Err(MembershipError::LeaveBeforeJoin));
        assert_eq!(m.leave(10), Ok(true));
        assert!(m.contains(9) && !m.contains(10));
        assert_eq!(m.join(5), Err(MembershipError::JoinBeforeLeave));
        assert_eq!(m.join(20), Ok(true));
        assert!(!m.contains(15) && m.contains(20));
        assert_eq!(m.join(30), Ok(false));
    }
}
