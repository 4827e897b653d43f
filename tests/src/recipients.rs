//! ListRecipients from the tests: one page, or every page to the end.

use crate::UserClient;
use receipts_proto::v1 as pb;
use uuid::Uuid;

/// One page of ListRecipients, refused or not.
pub async fn list_recipients(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
    filter: pb::RecipientFilter,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListRecipientsResponse, tonic::Status> {
    client
        .list_recipients(pb::ListRecipientsRequest {
            conversation_id: conversation.to_string(),
            message_id: message.to_string(),
            filter: filter as i32,
            page_size,
            page_token: page_token.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every recipient of `message` as `client` sees them: ListRecipients page
/// after page (500 each) to the end.
pub async fn all_recipients(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
) -> Vec<pb::RecipientReceipt> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let all = pb::RecipientFilter::Unspecified;
        let page = list_recipients(client, conversation, message, all, 500, &token)
            .await
            .expect("list recipients");
        out.extend(page.recipients);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}
