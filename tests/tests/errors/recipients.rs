//! ListRecipients: every bad request is named, and nothing changes.

use super::*;

fn request(w: &World, message: Uuid) -> pb::ListRecipientsRequest {
    pb::ListRecipientsRequest {
        conversation_id: w.group.id.to_string(),
        message_id: message.to_string(),
        ..Default::default()
    }
}

/// `user`'s ListRecipients of `req` fails with `code` naming `names`, and
/// nothing any member can observe changed.
async fn rejected(
    w: &World,
    user: Uuid,
    req: pb::ListRecipientsRequest,
    code: Code,
    names: &[&str],
) {
    let before = w.observe().await;
    let r = w.user(user).await.list_recipients(req).await;
    expect_err(r, code, names);
    assert_eq!(w.observe().await, before, "nothing changed");
}

/// A token from a real first page of `msgs[0]` with `filter`.
async fn token(w: &World, filter: pb::RecipientFilter) -> String {
    let mut req = request(w, w.msgs[0]);
    req.filter = filter as i32;
    req.page_size = 1;
    let page = w
        .user(w.a)
        .await
        .list_recipients(req)
        .await
        .expect("first page")
        .into_inner();
    assert!(
        !page.next_page_token.is_empty(),
        "two recipients, pages of one"
    );
    page.next_page_token
}

#[tokio::test]
async fn bad_ids_are_invalid_argument_naming_the_field() {
    let w = World::new().await;
    for bad in BAD_IDS {
        let mut req = request(&w, w.msgs[0]);
        req.conversation_id = bad.to_string();
        rejected(&w, w.a, req, Code::InvalidArgument, &["conversation_id"]).await;
        let mut req = request(&w, w.msgs[0]);
        req.message_id = bad.to_string();
        rejected(&w, w.a, req, Code::InvalidArgument, &["message_id"]).await;
    }
}

#[tokio::test]
async fn unknown_or_foreign_messages_and_conversations_are_named() {
    let w = World::new().await;
    let unknown = Uuid::now_v7();
    let name = unknown.to_string();
    rejected(
        &w,
        w.a,
        request(&w, unknown),
        Code::NotFound,
        &["message_id", &name],
    )
    .await;
    // b is a member of both; the other conversation's message is not the
    // group's.
    let name = w.other_msg.to_string();
    rejected(
        &w,
        w.b,
        request(&w, w.other_msg),
        Code::InvalidArgument,
        &["message_id", &name, "another conversation"],
    )
    .await;
    let mut req = request(&w, w.msgs[0]);
    req.conversation_id = unknown.to_string();
    rejected(&w, w.a, req, Code::NotFound, &["conversation_id"]).await;
}

#[tokio::test]
async fn a_non_member_is_permission_denied() {
    let w = World::new().await;
    rejected(
        &w,
        w.d,
        request(&w, w.msgs[0]),
        Code::PermissionDenied,
        &["conversation_id"],
    )
    .await;
}

#[tokio::test]
async fn a_negative_page_size_or_an_unknown_filter_is_invalid_argument() {
    let w = World::new().await;
    for size in [-1, i32::MIN] {
        let mut req = request(&w, w.msgs[0]);
        req.page_size = size;
        rejected(&w, w.a, req, Code::InvalidArgument, &["page_size"]).await;
    }
    let mut req = request(&w, w.msgs[0]);
    req.filter = 99;
    rejected(&w, w.a, req, Code::InvalidArgument, &["filter", "99"]).await;
}

#[tokio::test]
async fn a_token_that_is_not_one_or_continues_another_listing_is_invalid_argument() {
    let w = World::new().await;
    for bad in ["garbage", "r1.x.0.y", "r1"] {
        let mut req = request(&w, w.msgs[0]);
        req.page_token = bad.to_string();
        rejected(&w, w.a, req, Code::InvalidArgument, &["page_token"]).await;
    }
    let t = token(&w, pb::RecipientFilter::Unspecified).await;
    // Another filter, another message.
    let mut req = request(&w, w.msgs[0]);
    req.page_token = t.clone();
    req.filter = pb::RecipientFilter::Read as i32;
    rejected(
        &w,
        w.a,
        req,
        Code::InvalidArgument,
        &["page_token", "filter"],
    )
    .await;
    let mut req = request(&w, w.msgs[1]);
    req.page_token = t.clone();
    rejected(
        &w,
        w.a,
        req,
        Code::InvalidArgument,
        &["page_token", "message_id"],
    )
    .await;
    // The token itself works where it belongs.
    let mut req = request(&w, w.msgs[0]);
    req.page_token = t;
    w.user(w.a)
        .await
        .list_recipients(req)
        .await
        .expect("the token continues its own listing");
}
