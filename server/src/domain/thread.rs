//! Threads: timelines of a conversation, and read positions per timeline.
//!
//! A conversation has a main timeline and a thread under any of its
//! main-timeline messages (the thread's *root*). A message belongs to one
//! timeline; a member has one read position per timeline it has read in, each
//! a [`super::ReadWatermark`] with its own history, and every rule of a read
//! (max-merge, exact read times, privacy, read implies delivered) applies to
//! a position and the messages of its timeline only. A thread is named by its
//! root's seq inside a store (unique in the conversation) and by the root's id
//! in the API.

use super::{ConversationId, MessageId, Seq};
use serde::{Deserialize, Serialize};

/// A timeline of one conversation: [`MAIN`], or a thread named by its root's
/// seq.
pub type Timeline = Seq;

/// The main timeline.
pub const MAIN: Timeline = 0;

/// The thread a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ThreadRoot {
    /// The root message.
    pub id: MessageId,
    /// Its seq: the thread's [`Timeline`].
    pub seq: Seq,
}

/// Why a message cannot join the thread under a root (see [`judge_root`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootError {
    /// The root is not registered (nor earlier in the same request).
    Unknown,
    /// The root belongs to another conversation.
    OtherConversation,
    /// The root is itself in a thread: threads do not nest.
    InAThread,
    /// The root does not come before the message.
    NotBefore,
}

/// Judges a message at `seq` of `conversation` joining the thread under a
/// root: `root` is the root's registration (conversation, seq, and its own
/// thread), if known. A thread's root is a main-timeline message of the same
/// conversation with a lower seq.
pub fn judge_root(
    conversation: ConversationId,
    seq: Seq,
    root: Option<(ConversationId, Seq, Option<ThreadRoot>)>,
) -> Result<Timeline, RootError> {
    let Some((c, root_seq, root_thread)) = root else {
        return Err(RootError::Unknown);
    };
    if c != conversation {
        return Err(RootError::OtherConversation);
    }
    if root_thread.is_some() {
        return Err(RootError::InAThread);
    }
    if root_seq >= seq {
        return Err(RootError::NotBefore);
    }
    Ok(root_seq)
}

/// Whether a read up to `to` in timeline `read_in` covers the message at
/// `seq` in timeline `of`: only messages of the same timeline, up to `to`.
/// The main timeline's position covers no thread's messages.
pub fn covers(read_in: Timeline, to: Seq, of: Timeline, seq: Seq) -> bool {
    read_in == of && seq <= to
}

/// A member's read position in one timeline, with the unread counts a client
/// shows (own-device sync, MarkReadUpTo's result, reset snapshots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPosition {
    /// The conversation.
    pub conversation: ConversationId,
    /// The thread (its root message); `None` for the main timeline.
    pub thread: Option<MessageId>,
    /// The (true) position.
    pub read_up_to: Seq,
    /// Unread messages in the timeline.
    pub unread: u64,
    /// Unread messages in the whole conversation: [`conversation_unread`].
    pub conversation_unread: u64,
}

/// A conversation's unread count: its main timeline's plus every thread's.
pub fn conversation_unread(main: u64, threads: impl IntoIterator<Item = u64>) -> u64 {
    threads.into_iter().fold(main, u64::saturating_add)
}

/// How many threads an unread listing or a snapshot names per conversation
/// (the highest roots; counts include every thread).
pub const MAX_LISTED_THREADS: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_root_is_an_earlier_main_timeline_message_of_the_same_conversation() {
        let c = Uuid::from_u128(1);
        let other = Uuid::from_u128(2);
        assert_eq!(judge_root(c, 5, Some((c, 3, None))), Ok(3));
        assert_eq!(judge_root(c, 5, None), Err(RootError::Unknown));
        assert_eq!(
            judge_root(c, 5, Some((other, 3, None))),
            Err(RootError::OtherConversation)
        );
        let nested = ThreadRoot {
            id: Uuid::from_u128(9),
            seq: 1,
        };
        assert_eq!(
            judge_root(c, 5, Some((c, 3, Some(nested)))),
            Err(RootError::InAThread)
        );
        assert_eq!(
            judge_root(c, 5, Some((c, 5, None))),
            Err(RootError::NotBefore)
        );
        assert_eq!(
            judge_root(c, 5, Some((c, 7, None))),
            Err(RootError::NotBefore)
        );
    }

    #[test]
    fn a_read_covers_its_own_timeline_only() {
        assert!(covers(MAIN, 10, MAIN, 10));
        assert!(!covers(MAIN, 10, MAIN, 11));
        assert!(!covers(MAIN, 10, 3, 5));
        assert!(covers(3, 10, 3, 5));
        assert!(!covers(3, 10, 4, 5));
        assert!(!covers(3, 10, MAIN, 5));
    }

    #[test]
    fn a_conversation_counts_its_main_timeline_and_every_thread() {
        assert_eq!(conversation_unread(2, [3, 0, 4]), 9);
        assert_eq!(conversation_unread(0, []), 0);
    }
}
