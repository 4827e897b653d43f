//! Groups' members on the production tier: the member list (`P:{C}:ml`)
//! that pages a message's recipients, kept only past
//! `keys::UNLISTED_MAX` members, and a group of 10,000.

use super::*;

/// Every recipient of `m`, listed in pages of `size` (as a client pages).
async fn listed_in_pages(client: &mut UserClient, group: Uuid, m: Uuid, size: i32) -> Vec<String> {
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let all = pb::RecipientFilter::Unspecified;
        let page = list_recipients(client, group, m, all, size, &token)
            .await
            .expect("list recipients");
        assert!(page.recipients.len() <= size as usize, "a page at most");
        listed.extend(page.recipients.into_iter().map(|r| r.user_id));
        if page.next_page_token.is_empty() {
            return listed;
        }
        token = page.next_page_token;
    }
}

/// The meta hash's `ml` (the member list is complete), the list's size and
/// its remaining lifetime.
async fn member_list_of(tier: &Tier, group: Uuid) -> (Option<String>, u64, i64) {
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    redis::pipe()
        .cmd("HGET")
        .arg(keys.meta(&group))
        .arg("ml")
        .cmd("ZCARD")
        .arg(keys.member_list(&group))
        .cmd("PTTL")
        .arg(keys.member_list(&group))
        .query_async(&mut tier.redis().await)
        .await
        .expect("the list")
}

/// A group of at most `keys::UNLISTED_MAX` members keeps no member list:
/// its pages of recipients are read from the meta hash, complete and in
/// user-id order, also after members joined and left (whose changes
/// add them to a partial list, which the pages do not use).
#[tokio::test]
async fn a_small_group_lists_its_recipients_without_a_member_list() {
    let (_redis, tier, node) = super::costs::measured_node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 7).await;
    let sender = group.members[0];
    group.send(&mut backend, sender).await;
    let m = group.send(&mut backend, sender).await;
    assert_eq!(member_list_of(&tier, group.id).await, (None, 0, -2));
    let mut client = node.user(sender).await;
    let mut expected: Vec<String> = group.members[1..].iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(listed_in_pages(&mut client, group.id, m, 2).await, expected);
    assert_eq!(
        member_list_of(&tier, group.id).await,
        (None, 0, -2),
        "a page builds no list"
    );
    // One joins at the message's seq (a recipient), one who had it leaves
    // after it (still a recipient), one leaves at it (no longer one).
    let joined = Uuid::now_v7();
    group.add_member(&mut backend, joined, 2).await;
    group.remove_member(&mut backend, group.members[1], 3).await;
    group.remove_member(&mut backend, group.members[2], 2).await;
    expected.push(joined.to_string());
    expected.retain(|u| *u != group.members[2].to_string());
    expected.sort();
    for size in [1, 2, 500] {
        assert_eq!(
            listed_in_pages(&mut client, group.id, m, size).await,
            expected,
            "pages of {size}"
        );
    }
    let (complete, size, _) = member_list_of(&tier, group.id).await;
    assert_eq!((complete, size), (None, 3), "the changed members alone");
}

/// A small group that grows past `keys::UNLISTED_MAX` members through
/// membership changes (which listed only themselves) has its list built by
/// the first page, complete, and marked so.
#[tokio::test]
async fn a_group_grown_past_the_unlisted_size_builds_its_member_list() {
    let (_redis, tier, node) = super::costs::measured_node().await;
    let mut backend = node.backend().await;
    let n = receipts_server::store::redis::keys::UNLISTED_MAX;
    let mut group = Conversation::create(&mut backend, n).await;
    let sender = group.members[0];
    let joined: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    for u in &joined {
        group.add_member(&mut backend, *u, 1).await;
    }
    let m = group.send(&mut backend, sender).await;
    let (complete, size, _) = member_list_of(&tier, group.id).await;
    assert_eq!((complete, size), (None, 2), "the two changes alone");
    let mut client = node.user(sender).await;
    let mut expected: Vec<String> = group.members[1..]
        .iter()
        .chain(&joined)
        .map(Uuid::to_string)
        .collect();
    expected.sort();
    assert_eq!(listed_in_pages(&mut client, group.id, m, 7).await, expected);
    let (complete, size, ttl) = member_list_of(&tier, group.id).await;
    assert_eq!((complete.as_deref(), size), (Some("1"), n as u64 + 2));
    assert!(ttl > 0, "the list expires with the conversation: {ttl}");
    assert_eq!(
        listed_in_pages(&mut client, group.id, m, 500).await,
        expected
    );
}

/// A large conversation whose keys were written before the member list
/// (`ml`) existed (no `ml` in its meta hash, no list) still lists every
/// recipient: the first ListRecipients builds the list from the meta hash,
/// with the conversation's remaining lifetime, and marks it complete.
#[tokio::test]
async fn recipients_of_a_conversation_written_before_the_member_list_are_all_listed() {
    let (_redis, tier, node) = super::costs::measured_node().await;
    let mut backend = node.backend().await;
    let n = receipts_server::store::redis::keys::UNLISTED_MAX + 2;
    let mut group = Conversation::create(&mut backend, n).await;
    let sender = group.members[0];
    let m = group.send(&mut backend, sender).await;
    let (complete, size, _) = member_list_of(&tier, group.id).await;
    assert_eq!((complete.as_deref(), size), (Some("1"), n as u64), "listed");
    let keys = receipts_server::store::redis::keys::Keys::new(&tier.prefix);
    let _: () = redis::pipe()
        .cmd("HDEL")
        .arg(keys.meta(&group.id))
        .arg("ml")
        .ignore()
        .cmd("DEL")
        .arg(keys.member_list(&group.id))
        .ignore()
        .query_async(&mut tier.redis().await)
        .await
        .expect("as the previous release left it");
    let mut client = node.user(sender).await;
    let mut expected: Vec<String> = group.members[1..].iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(
        listed_in_pages(&mut client, group.id, m, 50).await,
        expected
    );
    let (complete, size, ttl) = member_list_of(&tier, group.id).await;
    assert_eq!((complete.as_deref(), size), (Some("1"), n as u64));
    assert!(ttl > 0, "the list expires with the conversation: {ttl}");
}

/// A group of 10,000 members (`--max-members`' default) works on the
/// production tier: its creation writes one command of 20,000 membership
/// fields, which the commit splits (Lua's `unpack` takes at most 8,000
/// values), and its members' settings come from Scylla concurrently; a
/// read, the counts and a page of its recipients follow.
#[tokio::test]
async fn a_group_of_ten_thousand_members_is_created_and_served() {
    let tier = Tier::new().await;
    let node = tier.node().await;
    let mut backend = node.backend().await;
    let mut group = Conversation::create(&mut backend, 10_000).await;
    let sender = group.members[0];
    let m = group.send(&mut backend, sender).await;
    let mut reader = node.user(group.members[1]).await;
    read_up_to(&mut reader, group.id, m).await;
    let mut sender_client = node.user(sender).await;
    let counts = counts_only(&mut sender_client, group.id, m).await;
    assert_eq!(
        (
            counts.read_count,
            counts.delivered_count,
            counts.recipients_total
        ),
        (1, 1, 9_999)
    );
    let page = list_recipients(
        &mut sender_client,
        group.id,
        m,
        pb::RecipientFilter::Read,
        10,
        "",
    )
    .await
    .expect("a page");
    let mut listed = page.recipients;
    let mut token = page.next_page_token;
    while !token.is_empty() {
        let next = list_recipients(
            &mut sender_client,
            group.id,
            m,
            pb::RecipientFilter::Read,
            10,
            &token,
        )
        .await
        .expect("a page");
        listed.extend(next.recipients);
        token = next.next_page_token;
    }
    assert_eq!(
        listed.iter().map(|r| r.user_id.clone()).collect::<Vec<_>>(),
        vec![group.members[1].to_string()]
    );
}
