//! "Read by" a page at a time: which recipients one page of a message's list
//! holds, and the token that continues it.
//!
//! The list is in user-id order (the order of the ids' 16 bytes, which is the
//! order of their canonical text). That order does not depend on anyone's
//! state, so a token (the last user a page covered) survives concurrent
//! reads and deliveries: paging through the whole list sees every recipient
//! exactly once. With a filter, a recipient is listed if its state matched
//! when its page was read; one whose state changes while the client pages
//! is listed at most once.
//!
//! A store examines a bounded number of members per page ([`scan_budget`]),
//! so no call costs more than O(page) whatever the group's size; a page may
//! therefore hold fewer entries than asked for (even none) and still carry a
//! token. Clients page until the token is empty.

use super::{MessageId, RecipientState, RecipientView, UserId};
use crate::error::ServiceError;
use uuid::Uuid;

/// Which recipients a listing keeps, by their state as the viewer may see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientFilter {
    /// Every recipient.
    All,
    /// Those who have read the message (as the viewer may see it).
    Read,
    /// Those who have it and have not read it (as the viewer may see it: a
    /// recipient who does not share read receipts is listed here).
    DeliveredOnly,
    /// Those none of whose devices has it yet.
    NotDelivered,
}

impl RecipientFilter {
    /// Whether a recipient in `state` is listed.
    pub fn keeps(self, state: RecipientState) -> bool {
        match self {
            RecipientFilter::All => true,
            RecipientFilter::Read => state == RecipientState::Read,
            RecipientFilter::DeliveredOnly => state == RecipientState::Delivered,
            RecipientFilter::NotDelivered => state == RecipientState::None,
        }
    }

    fn code(self) -> u8 {
        match self {
            RecipientFilter::All => 0,
            RecipientFilter::Read => 1,
            RecipientFilter::DeliveredOnly => 2,
            RecipientFilter::NotDelivered => 3,
        }
    }
}

/// The page size when the request names none.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The largest page; a larger request is served this many.
pub const MAX_PAGE_SIZE: usize = 500;
/// The most members a filtered page examines.
const MAX_SCAN: usize = 2_000;

/// The page size for a requested one (0: the default; above the maximum:
/// the maximum). A negative size is a bad request.
pub fn page_size(requested: i32) -> Result<usize, ServiceError> {
    match requested {
        n if n < 0 => Err(ServiceError::invalid(
            "page_size",
            format!("must be 0 (the default, {DEFAULT_PAGE_SIZE}) or positive, got {n}"),
        )),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// How many members a store examines for one page of `size`. Without a
/// filter, a quarter more than the page and one: members who are not
/// recipients of the message (its sender, those who joined after it or left
/// before it) are examined too, and this keeps a page full in the common
/// case (the sender alone). With a filter, four pages' worth (at most
/// [`MAX_SCAN`], and never less than the unfiltered budget), so that a
/// sparse filter still makes progress in bounded work.
pub fn scan_budget(size: usize, filter: RecipientFilter) -> usize {
    let all = size.saturating_add(size / 4).saturating_add(1);
    match filter {
        RecipientFilter::All => all,
        _ => size.saturating_mul(4).min(MAX_SCAN).max(all),
    }
}

/// Where a listing continues: after `after`, for the same message and filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken {
    /// The message listed.
    pub message: MessageId,
    /// The filter of the listing.
    pub filter: RecipientFilter,
    /// The last member the previous page covered.
    pub after: UserId,
}

const TOKEN_VERSION: &str = "r1";

impl PageToken {
    /// The opaque text sent to clients.
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_VERSION}.{}.{}.{}",
            self.message.simple(),
            self.filter.code(),
            self.after.simple()
        )
    }

    /// The token in `text`, which must continue a listing of `message` with
    /// `filter` (INVALID_ARGUMENT naming `page_token` otherwise). Empty text
    /// is the first page.
    pub fn decode(
        text: &str,
        message: MessageId,
        filter: RecipientFilter,
    ) -> Result<Option<UserId>, ServiceError> {
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || {
            ServiceError::invalid(
                "page_token",
                "not a token from a ListRecipients response (send it back as it came)",
            )
        };
        let mut parts = text.split('.');
        let (Some(TOKEN_VERSION), Some(m), Some(f), Some(u), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let (m, u) = match (Uuid::try_parse(m), Uuid::try_parse(u)) {
            (Ok(m), Ok(u)) => (m, u),
            _ => return Err(bad()),
        };
        if m != message || f != filter.code().to_string() {
            return Err(ServiceError::invalid(
                "page_token",
                "continues a listing of another message or filter; send the same message_id \
                 and filter as the call that returned it",
            ));
        }
        Ok(Some(u))
    }
}

/// What a store examined for one page: the views of the recipients among
/// the members it examined (in user-id order), and the last member it
/// examined when more members may follow (`None`: the list ends here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Examined {
    /// The recipients' views, in user-id order.
    pub views: Vec<RecipientView>,
    /// The last member examined, if the list goes on.
    pub more_after: Option<UserId>,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientPage {
    /// The recipients listed, in user-id order.
    pub recipients: Vec<RecipientView>,
    /// Where the next page starts, if there is one.
    pub next_after: Option<UserId>,
}

/// The page of at most `size` recipients that `filter` keeps among those
/// examined. When more are kept than fit, the page ends at the last one it
/// lists and the next starts after it; otherwise the next starts after the
/// last member examined.
pub fn page(examined: Examined, filter: RecipientFilter, size: usize) -> RecipientPage {
    let mut recipients: Vec<RecipientView> = Vec::with_capacity(size.min(examined.views.len()));
    for v in examined.views {
        if !filter.keeps(v.state) {
            continue;
        }
        if recipients.len() == size {
            let next_after = recipients.last().map(|r| r.user);
            return RecipientPage {
                recipients,
                next_after,
            };
        }
        recipients.push(v);
    }
    RecipientPage {
        recipients,
        next_after: examined.more_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view(u: u128, state: RecipientState) -> RecipientView {
        RecipientView {
            user: Uuid::from_u128(u),
            state,
            delivered_at: (state != RecipientState::None).then_some(1),
            read_at: (state == RecipientState::Read).then_some(2),
        }
    }

    fn state_of(k: u8) -> RecipientState {
        match k % 3 {
            0 => RecipientState::None,
            1 => RecipientState::Delivered,
            _ => RecipientState::Read,
        }
    }

    const FILTERS: [RecipientFilter; 4] = [
        RecipientFilter::All,
        RecipientFilter::Read,
        RecipientFilter::DeliveredOnly,
        RecipientFilter::NotDelivered,
    ];

    #[test]
    fn a_token_continues_only_its_message_and_filter() {
        let (m, u) = (Uuid::from_u128(7), Uuid::from_u128(9));
        let t = PageToken {
            message: m,
            filter: RecipientFilter::Read,
            after: u,
        }
        .encode();
        assert_eq!(
            PageToken::decode(&t, m, RecipientFilter::Read).unwrap(),
            Some(u)
        );
        assert_eq!(
            PageToken::decode("", m, RecipientFilter::Read).unwrap(),
            None
        );
        for (text, message, filter) in [
            (t.as_str(), Uuid::from_u128(8), RecipientFilter::Read),
            (t.as_str(), m, RecipientFilter::All),
            ("r1.x.1.y", m, RecipientFilter::Read),
            ("garbage", m, RecipientFilter::Read),
            (&format!("{t}.extra"), m, RecipientFilter::Read),
        ] {
            let e = PageToken::decode(text, message, filter).unwrap_err();
            assert!(e.to_string().contains("page_token"), "{e}");
        }
    }

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(100_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).unwrap_err().to_string().contains("page_size"));
    }

    proptest! {
        /// Paging through any list with any filter and page size, examining
        /// the budget each time as a store does, lists exactly the kept
        /// recipients, each once, in order, and no page exceeds its size.
        #[test]
        fn paging_lists_every_kept_recipient_once_in_order(
            states in proptest::collection::vec(any::<u8>(), 0..300),
            size in 1usize..40,
            f in 0usize..4,
        ) {
            let filter = FILTERS[f];
            // Members 1..=n; every third is not a recipient (the sender, or
            // one who joined later): examined, never listed.
            let members: Vec<(u128, Option<RecipientView>)> = states.iter().enumerate().map(|(i, k)| {
                let u = i as u128 + 1;
                (u, (!u.is_multiple_of(3)).then(|| view(u, state_of(*k))))
            }).collect();
            let mut after: Option<Uuid> = None;
            let mut listed = Vec::new();
            for _ in 0..=members.len() + 1 {
                let start = members.iter().position(|(u, _)| after.is_none_or(|a| Uuid::from_u128(*u) > a)).unwrap_or(members.len());
                let budget = scan_budget(size, filter);
                let slice = &members[start..(start + budget).min(members.len())];
                let more = start + budget < members.len();
                let examined = Examined {
                    views: slice.iter().filter_map(|(_, v)| *v).collect(),
                    more_after: more.then(|| Uuid::from_u128(slice.last().unwrap().0)),
                };
                let p = page(examined, filter, size);
                prop_assert!(p.recipients.len() <= size);
                listed.extend(p.recipients.iter().map(|v| v.user));
                match p.next_after {
                    Some(n) => { prop_assert!(after.is_none_or(|a| n > a)); after = Some(n) }
                    None => { after = None; break }
                }
            }
            prop_assert!(after.is_none(), "the listing ends");
            let expected: Vec<Uuid> = members.iter().filter_map(|(_, v)| *v).filter(|v| filter.keeps(v.state)).map(|v| v.user).collect();
            prop_assert_eq!(listed, expected);
        }
    }
}
