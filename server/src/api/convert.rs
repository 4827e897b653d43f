//! Decoding requests (with field-naming validation) and encoding responses.

use crate::domain::{self, Millis};
use crate::error::ServiceError;
use receipts_proto::v1 as pb;
use uuid::Uuid;

/// A field's name in an error: a `&str`, or a closure that builds it
/// (`messages[7].seq`) only when the field is wrong, so that a batch of valid
/// entries formats nothing.
pub(crate) trait Field {
    fn name(self) -> String;
}

impl Field for &str {
    fn name(self) -> String {
        self.to_string()
    }
}

impl<F: FnOnce() -> String> Field for F {
    fn name(self) -> String {
        self()
    }
}

/// Parses a required UUID field.
pub(crate) fn uuid(field: impl Field, value: &str) -> Result<Uuid, ServiceError> {
    if value.is_empty() {
        return Err(ServiceError::invalid(field.name(), "required"));
    }
    Uuid::parse_str(value)
        .map_err(|_| ServiceError::invalid(field.name(), format!("{value:?} is not a valid UUID")))
}

/// Parses a repeated UUID field with size limits.
pub(crate) fn uuids(field: &str, values: &[String], max: usize) -> Result<Vec<Uuid>, ServiceError> {
    check_len(field, values.len(), max)?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| uuid(|| format!("{field}[{i}]"), v))
        .collect()
}

/// Parses MarkDelivered's messages: `message_ids` (ids alone), then
/// `conversations` (ids in the conversation named for them), distinct, in
/// request order. An id named alone and in a conversation keeps the
/// conversation; one named in two conversations is rejected.
pub(crate) fn named_messages(
    r: &pb::MarkDeliveredRequest,
    max: usize,
) -> Result<Vec<crate::store::Named>, ServiceError> {
    use crate::store::Named;
    use std::collections::hash_map::{Entry, HashMap};
    let in_conversations: usize = r.conversations.iter().map(|c| c.message_ids.len()).sum();
    let total = r.message_ids.len() + in_conversations;
    let field = if r.conversations.is_empty() {
        "message_ids"
    } else {
        "message_ids and conversations"
    };
    check_len(field, total, max)?;
    let mut out: Vec<Named> = Vec::with_capacity(total);
    // Where each distinct id stands in `out`.
    let mut at: HashMap<Uuid, usize> = HashMap::with_capacity(total);
    for (i, v) in r.message_ids.iter().enumerate() {
        let id = uuid(|| format!("message_ids[{i}]"), v)?;
        if let Entry::Vacant(e) = at.entry(id) {
            e.insert(out.len());
            out.push(Named {
                id,
                conversation: None,
            });
        }
    }
    for (i, c) in r.conversations.iter().enumerate() {
        let conversation = uuid(
            || format!("conversations[{i}].conversation_id"),
            &c.conversation_id,
        )?;
        if c.message_ids.is_empty() {
            return Err(ServiceError::invalid(
                format!("conversations[{i}].message_ids"),
                "must not be empty",
            ));
        }
        for (j, v) in c.message_ids.iter().enumerate() {
            let id = uuid(|| format!("conversations[{i}].message_ids[{j}]"), v)?;
            let named = match at.entry(id) {
                Entry::Vacant(e) => {
                    e.insert(out.len());
                    out.push(Named {
                        id,
                        conversation: Some(conversation),
                    });
                    continue;
                }
                Entry::Occupied(e) => &mut out[*e.get()],
            };
            match named.conversation {
                Some(other) if other != conversation => {
                    return Err(ServiceError::invalid(
                        format!("conversations[{i}].message_ids[{j}]"),
                        format!(
                            "message {id} is named in conversation {other} as well; \
                             a message belongs to one conversation"
                        ),
                    ));
                }
                _ => named.conversation = Some(conversation),
            }
        }
    }
    Ok(out)
}

/// Rejects empty and over-limit batches.
pub(crate) fn check_len(field: &str, len: usize, max: usize) -> Result<(), ServiceError> {
    if len == 0 {
        return Err(ServiceError::invalid(field, "must not be empty"));
    }
    if len > max {
        return Err(ServiceError::invalid(
            field,
            format!("{len} entries is over the limit of {max}"),
        ));
    }
    Ok(())
}

/// Parses a seq (≥ 1).
pub(crate) fn seq(field: impl Field, value: i64) -> Result<u64, ServiceError> {
    if value < 1 {
        return Err(ServiceError::invalid(
            field.name(),
            format!("must be at least 1, got {value}"),
        ));
    }
    Ok(value as u64)
}

fn ms(v: Option<Millis>) -> i64 {
    v.unwrap_or(0)
}

/// Encodes a tick.
pub(crate) fn tick(t: domain::Tick) -> pb::Tick {
    match t {
        domain::Tick::Sent => pb::Tick::Sent,
        domain::Tick::Delivered => pb::Tick::Delivered,
        domain::Tick::Read => pb::Tick::Read,
    }
}

/// Encodes a message state.
pub(crate) fn message_state(s: &domain::MessageState) -> pb::MessageReceipts {
    let a = &s.aggregate;
    pb::MessageReceipts {
        message_id: s.message.id.to_string(),
        conversation_id: s.message.conversation.to_string(),
        seq: s.message.seq as i64,
        sender_id: s.message.sender.to_string(),
        sent_at_ms: s.message.sent_at,
        tick: tick(a.tick) as i32,
        delivered_count: a.delivered_count as i64,
        read_count: a.read_count as i64,
        recipients_total: a.recipients_total as i64,
        delivered_at_ms: ms(a.delivered_at),
        read_at_ms: ms(a.read_at),
        recipients: s.recipients.iter().map(recipient).collect(),
        recipients_next_page_token: String::new(),
    }
}

/// Decodes a recipient filter; an unknown value is INVALID_ARGUMENT.
pub(crate) fn recipient_filter(value: i32) -> Result<domain::RecipientFilter, ServiceError> {
    use domain::RecipientFilter as F;
    match pb::RecipientFilter::try_from(value) {
        Ok(pb::RecipientFilter::Unspecified) => Ok(F::All),
        Ok(pb::RecipientFilter::Read) => Ok(F::Read),
        Ok(pb::RecipientFilter::DeliveredOnly) => Ok(F::DeliveredOnly),
        Ok(pb::RecipientFilter::NotDelivered) => Ok(F::NotDelivered),
        Err(_) => Err(ServiceError::invalid(
            "filter",
            format!("{value} is not a RecipientFilter"),
        )),
    }
}

/// Encodes a range of messages in one state.
pub(crate) fn range_state(r: &domain::RangeState) -> pb::ReceiptRange {
    let a = &r.aggregate;
    pb::ReceiptRange {
        from_seq: r.from as i64,
        to_seq: r.to as i64,
        tick: tick(a.tick) as i32,
        delivered_count: a.delivered_count as i64,
        read_count: a.read_count as i64,
        recipients_total: a.recipients_total as i64,
        delivered_at_ms: ms(a.delivered_at),
        read_at_ms: ms(a.read_at),
        recipients: r.recipients.iter().map(recipient).collect(),
    }
}

/// Encodes one recipient's state.
pub(crate) fn recipient(r: &domain::RecipientView) -> pb::RecipientReceipt {
    pb::RecipientReceipt {
        user_id: r.user.to_string(),
        state: match r.state {
            domain::RecipientState::None => pb::RecipientState::None,
            domain::RecipientState::Delivered => pb::RecipientState::Delivered,
            domain::RecipientState::Read => pb::RecipientState::Read,
        } as i32,
        delivered_at_ms: ms(r.delivered_at),
        read_at_ms: ms(r.read_at),
    }
}

/// Encodes a bulk outcome.
pub(crate) fn outcome(o: crate::store::ConversationOutcome) -> pb::ConversationOutcome {
    use crate::store::ConversationOutcome as O;
    match o {
        O::Ok => pb::ConversationOutcome::Ok,
        O::NotFound => pb::ConversationOutcome::NotFound,
        O::PermissionDenied => pb::ConversationOutcome::PermissionDenied,
    }
}

/// Encodes an event body for the stream.
pub(crate) fn event(body: &domain::EventBody) -> pb::subscribe_receipts_response::Event {
    use pb::subscribe_receipts_response::Event as E;
    match body {
        domain::EventBody::Receipts {
            conversation,
            group,
            messages,
        } => E::Receipts(pb::ConversationReceipts {
            conversation_id: conversation.to_string(),
            group: *group,
            messages: messages.iter().map(message_state).collect(),
            ranges: Vec::new(),
        }),
        domain::EventBody::Watermark {
            conversation,
            read_up_to,
            unread,
        } => E::Watermark(watermark(&domain::ReadPosition {
            conversation: *conversation,
            thread: None,
            read_up_to: *read_up_to,
            unread: *unread,
            // Logged before threads: the conversation's count is the
            // timeline's.
            conversation_unread: *unread,
        })),
        domain::EventBody::Position(p) => E::Watermark(watermark(p)),
        domain::EventBody::Ranges {
            conversation,
            group,
            ranges,
        } => E::Receipts(pb::ConversationReceipts {
            conversation_id: conversation.to_string(),
            group: *group,
            messages: Vec::new(),
            ranges: ranges.iter().map(range_state).collect(),
        }),
    }
}

/// Encodes a read position (a watermark sync).
pub(crate) fn watermark(p: &domain::ReadPosition) -> pb::WatermarkSync {
    pb::WatermarkSync {
        conversation_id: p.conversation.to_string(),
        read_up_to_seq: p.read_up_to as i64,
        unread_count: p.unread as i64,
        thread_root_message_id: thread_id(p.thread),
        conversation_unread_count: p.conversation_unread as i64,
    }
}

/// A thread's root in the API: empty for the main timeline.
pub(crate) fn thread_id(root: Option<Uuid>) -> String {
    root.map(|r| r.to_string()).unwrap_or_default()
}

/// Parses an optional UUID field (empty: `None`).
pub(crate) fn optional_uuid(field: impl Field, value: &str) -> Result<Option<Uuid>, ServiceError> {
    if value.is_empty() {
        return Ok(None);
    }
    uuid(field, value).map(Some)
}

/// Encodes a reset.
pub(crate) fn reset(
    reason: crate::store::ResetReason,
    snapshot: &crate::store::Snapshot,
) -> pb::ReceiptsReset {
    use crate::store::ResetReason as R;
    pb::ReceiptsReset {
        reason: match reason {
            R::Expired => pb::ResetReason::CursorExpired,
            R::EpochChanged => pb::ResetReason::EpochChanged,
            R::Invalid => pb::ResetReason::CursorInvalid,
            R::TooLarge => pb::ResetReason::ReplayTooLarge,
        } as i32,
        recent_messages: snapshot.recent_messages.iter().map(message_state).collect(),
        watermarks: snapshot.watermarks.iter().map(watermark).collect(),
    }
}
