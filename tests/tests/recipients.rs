//! DESIGN.md §3: "who read it" for large groups is paged, in a stable order,
//! with a page token that survives concurrent reads, and no response grows
//! with the group. ListRecipients and GetReceipts' bounded recipient list,
//! over a real socket, on every store (`RECEIPTS_TEST_STORE`).

use receipts_proto::v1 as pb;
use receipts_tests::*;
use uuid::Uuid;

/// Every page of a listing, to the end: the users of each page.
async fn pages(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
    filter: pb::RecipientFilter,
    page_size: i32,
) -> Vec<Vec<pb::RecipientReceipt>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_recipients(client, conversation, message, filter, page_size, &token)
            .await
            .expect("list recipients");
        assert!(
            page.recipients.len() <= page_size as usize,
            "a page holds at most page_size"
        );
        out.push(page.recipients);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
        assert!(out.len() < 1_000, "the listing ends");
    }
}

fn users(rs: &[pb::RecipientReceipt]) -> Vec<Uuid> {
    rs.iter()
        .map(|r| Uuid::parse_str(&r.user_id).expect("user id"))
        .collect()
}

fn state(r: &pb::RecipientReceipt) -> pb::RecipientState {
    pb::RecipientState::try_from(r.state).expect("state")
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

/// Paging through a group's list lists every recipient once, in user-id
/// order, each page at most its size, and the sender (not a recipient)
/// never; the states are those GetReceipts' counts add up.
#[tokio::test]
async fn pages_list_every_recipient_once_in_user_id_order() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 12).await;
    let sender = c.members[0];
    let m = c.send(&mut backend, sender).await;
    for &u in &c.members[1..5] {
        deliver(&mut s.user(u).await, &[m]).await;
    }
    for &u in &c.members[1..3] {
        read_up_to(&mut s.user(u).await, c.id, m).await;
    }
    let mut viewer = s.user(sender).await;
    let all = pages(&mut viewer, c.id, m, pb::RecipientFilter::Unspecified, 5).await;
    assert_eq!(all.len(), 3, "11 recipients in pages of 5");
    let listed: Vec<pb::RecipientReceipt> = all.concat();
    assert_eq!(users(&listed), sorted(c.members[1..].to_vec()));
    let count = |st| listed.iter().filter(|r| state(r) == st).count();
    assert_eq!(
        (
            count(pb::RecipientState::Read),
            count(pb::RecipientState::Delivered),
            count(pb::RecipientState::None)
        ),
        (2, 2, 7)
    );
    for r in &listed {
        let read = state(r) == pb::RecipientState::Read;
        assert_eq!(r.read_at_ms > 0, read, "a read time only when read");
        assert_eq!(r.delivered_at_ms > 0, state(r) != pb::RecipientState::None);
    }
    let counts = counts_only(&mut viewer, c.id, m).await;
    assert_eq!((counts.read_count, counts.delivered_count), (2, 4));
}

/// Each filter lists exactly the recipients in its state, in order, and
/// together they are the whole list.
#[tokio::test]
async fn filters_list_only_the_recipients_in_their_state() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 9).await;
    let sender = c.members[0];
    let m = c.send(&mut backend, sender).await;
    let (readers, delivered) = (&c.members[1..4], &c.members[4..6]);
    for &u in readers {
        read_up_to(&mut s.user(u).await, c.id, m).await;
    }
    for &u in delivered {
        deliver(&mut s.user(u).await, &[m]).await;
    }
    let mut viewer = s.user(c.members[8]).await;
    for (filter, expected) in [
        (pb::RecipientFilter::Read, readers.to_vec()),
        (pb::RecipientFilter::DeliveredOnly, delivered.to_vec()),
        (
            pb::RecipientFilter::NotDelivered,
            vec![c.members[6], c.members[7], c.members[8]],
        ),
    ] {
        for size in [1, 2, 50] {
            let listed = pages(&mut viewer, c.id, m, filter, size).await.concat();
            assert_eq!(
                users(&listed),
                sorted(expected.clone()),
                "{filter:?}, {size}"
            );
        }
    }
}

/// A token is a position in user-id order, not in a state's list: reads
/// made between pages neither repeat nor skip anyone in the full list, and
/// the read filter picks up readers that are still ahead of the token.
#[tokio::test]
async fn a_page_token_survives_concurrent_reads() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 10).await;
    let sender = c.members[0];
    let m = c.send(&mut backend, sender).await;
    let recipients = sorted(c.members[1..].to_vec());
    let mut viewer = s.user(sender).await;

    let all = pb::RecipientFilter::Unspecified;
    let first = list_recipients(&mut viewer, c.id, m, all, 4, "")
        .await
        .unwrap();
    assert_eq!(users(&first.recipients), recipients[..4]);
    // Everyone reads between the pages.
    for &u in &recipients {
        read_up_to(&mut s.user(u).await, c.id, m).await;
    }
    let mut listed = first.recipients.clone();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = list_recipients(&mut viewer, c.id, m, all, 4, &token)
            .await
            .unwrap();
        assert!(
            page.recipients
                .iter()
                .all(|r| state(r) == pb::RecipientState::Read)
        );
        listed.extend(page.recipients);
        token = page.next_page_token;
    }
    assert_eq!(users(&listed), recipients, "each once, in order");

    // The read filter: the first page before anyone after it read.
    let m2 = c.send(&mut backend, sender).await;
    read_up_to(&mut s.user(recipients[0]).await, c.id, m2).await;
    let read = pb::RecipientFilter::Read;
    let first = list_recipients(&mut viewer, c.id, m2, read, 1, "")
        .await
        .unwrap();
    assert_eq!(users(&first.recipients), vec![recipients[0]]);
    for &u in &recipients[5..] {
        read_up_to(&mut s.user(u).await, c.id, m2).await;
    }
    let mut listed = first.recipients;
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = list_recipients(&mut viewer, c.id, m2, read, 1, &token)
            .await
            .unwrap();
        listed.extend(page.recipients);
        token = page.next_page_token;
    }
    let mut expected = vec![recipients[0]];
    expected.extend(&recipients[5..]);
    assert_eq!(users(&listed), expected);
}

/// Privacy applies to every page exactly as to counts: a recipient who does
/// not share read receipts is listed as delivered (no read time) to others,
/// as read to itself, and not under the read filter for others.
#[tokio::test]
async fn privacy_applies_to_every_page() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 4).await;
    let (sender, private, open) = (c.members[0], c.members[1], c.members[2]);
    let m = c.send(&mut backend, sender).await;
    let mut private_client = s.user(private).await;
    set_sharing(&mut private_client, false).await;
    read_up_to(&mut private_client, c.id, m).await;
    read_up_to(&mut s.user(open).await, c.id, m).await;

    let mut viewer = s.user(sender).await;
    let all = pages(&mut viewer, c.id, m, pb::RecipientFilter::Unspecified, 1)
        .await
        .concat();
    let of = |u: Uuid| all.iter().find(|r| r.user_id == u.to_string()).unwrap();
    assert_eq!(state(of(private)), pb::RecipientState::Delivered);
    assert_eq!(of(private).read_at_ms, 0);
    assert_eq!(state(of(open)), pb::RecipientState::Read);
    let read = pages(&mut viewer, c.id, m, pb::RecipientFilter::Read, 1)
        .await
        .concat();
    assert_eq!(users(&read), vec![open]);
    let delivered = pages(&mut viewer, c.id, m, pb::RecipientFilter::DeliveredOnly, 1)
        .await
        .concat();
    assert_eq!(users(&delivered), vec![private]);

    let own = pages(&mut private_client, c.id, m, pb::RecipientFilter::Read, 50)
        .await
        .concat();
    assert_eq!(sorted(users(&own)), sorted(vec![private, open]));
}

/// GetReceipts lists at most 50 recipients per message and hands over the
/// rest to ListRecipients with a token; a small group's list is whole.
#[tokio::test]
async fn get_receipts_lists_one_page_and_names_the_rest() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 61).await;
    let sender = c.members[0];
    let m = c.send(&mut backend, sender).await;
    let mut viewer = s.user(sender).await;
    let r = receipt(&mut viewer, c.id, m).await;
    assert_eq!(r.recipients_total, 60);
    assert_eq!(r.recipients.len(), 50);
    assert!(!r.recipients_next_page_token.is_empty());
    let recipients = sorted(c.members[1..].to_vec());
    assert_eq!(users(&r.recipients), recipients[..50]);
    let rest = list_recipients(
        &mut viewer,
        c.id,
        m,
        pb::RecipientFilter::Unspecified,
        50,
        &r.recipients_next_page_token,
    )
    .await
    .unwrap();
    assert_eq!(users(&rest.recipients), recipients[50..]);
    assert!(rest.next_page_token.is_empty());

    let mut small = Conversation::create(&mut backend, 3).await;
    let m = small.send(&mut backend, small.members[0]).await;
    let r = receipt(&mut s.user(small.members[0]).await, small.id, m).await;
    assert_eq!(r.recipients.len(), 2);
    assert!(r.recipients_next_page_token.is_empty());
}

/// Recipients are the members at the message's seq minus its sender, page
/// by page as in GetReceipts: one who joined later or left before is not
/// listed; one who left later is.
#[tokio::test]
async fn pages_list_the_members_at_the_message_seq() {
    let s = TestServer::start().await;
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 4).await;
    let (sender, leaver) = (c.members[0], c.members[3]);
    let m1 = c.send(&mut backend, sender).await;
    let newcomer = Uuid::now_v7();
    backend
        .add_members(pb::AddMembersRequest {
            conversation_id: c.id.to_string(),
            members: vec![pb::MembershipChange {
                user_id: newcomer.to_string(),
                from_seq: 2,
            }],
        })
        .await
        .unwrap();
    c.remove_member(&mut backend, leaver, 2).await;
    let m2 = c.send(&mut backend, sender).await;
    let mut viewer = s.user(c.members[1]).await;
    let all = pb::RecipientFilter::Unspecified;
    let first = pages(&mut viewer, c.id, m1, all, 1).await.concat();
    assert_eq!(users(&first), sorted(c.members[1..4].to_vec()));
    let second = pages(&mut viewer, c.id, m2, all, 1).await.concat();
    assert_eq!(
        users(&second),
        sorted(vec![c.members[1], c.members[2], newcomer])
    );
    for (m, listed) in [(m1, &first), (m2, &second)] {
        let counts = counts_only(&mut viewer, c.id, m).await;
        assert_eq!(counts.recipients_total as usize, listed.len());
    }
}
