//! Subscriptions that survive the network.

use crate::types::*;
use crate::{Client, Error, proto};
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use uuid::Uuid;

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// New absolute states of messages you sent, in one conversation. Apply
    /// them as they come: repeated or reordered states converge. More fields
    /// may come (match with `..`).
    #[non_exhaustive]
    Receipts {
        /// The conversation.
        conversation_id: Uuid,
        /// Group (aggregated over a short window) or direct (pushed at once).
        group: bool,
        /// The messages' current states.
        messages: Vec<MessageReceipts>,
        /// States shared by runs of your messages, applied before
        /// `messages`: only on subscriptions opened with
        /// [`SubscribeOptions::accept_ranges`] (empty otherwise). Apply each
        /// to the messages you hold with [`MessageReceipts::apply_range`].
        ranges: Vec<ReceiptRange>,
    },
    /// Your own read position moved (on any of your devices).
    Watermark(Watermark),
    /// The server could not resume from the cursor: repaint from this
    /// snapshot, then carry on (events continue after it).
    Reset(Snapshot),
    /// Caught up: everything missed was replayed (`replayed` events), what
    /// follows is live. Sent after every (re)connection.
    Live {
        /// Events replayed on this connection.
        replayed: u64,
    },
    /// The connection dropped; the subscription reconnects after a backoff
    /// and resumes from its cursor. Informational: nothing is lost.
    Reconnecting {
        /// Consecutive failed attempts so far.
        attempt: u32,
        /// Why the connection ended.
        reason: String,
    },
}

/// A live, resuming stream of [`Event`]s.
///
/// A background task owns the connection. When it drops — server restart,
/// network failure, the server cutting a slow reader off — it reconnects with
/// exponential backoff and jitter and resumes from the cursor of the last
/// event it yielded, so the stream never skips an event and never yields one
/// twice. It ends only with an error reconnecting cannot fix, which it yields
/// first: `PermissionDenied`, `InvalidArgument`, `Tls` (a certificate
/// refused, either way), or `Unauthenticated` when
/// the token cannot change (a fixed token) or a token provider's fresh token
/// was refused too (an expired token is replaced once, on the next attempt).
/// Dropping the `Subscription`
/// cancels the task and closes the connection.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<(Event, Option<Cursor>), Error>>,
    cursor: Option<Cursor>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a subscription is opened ([`Client::subscribe_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Receive changes that cover runs of messages (a batch marked
    /// delivered, a read of thousands) as [`ReceiptRange`]s in
    /// [`Event::Receipts`], keyed by seq, instead of one entry per message.
    /// Worth it for a client that keeps each message's seq (a UI's message
    /// list); without it the server expands every range. Off by default.
    pub accept_ranges: bool,
}

impl SubscribeOptions {
    /// Sets [`SubscribeOptions::accept_ranges`].
    pub fn accept_ranges(mut self, on: bool) -> Self {
        self.accept_ranges = on;
        self
    }
}

impl Subscription {
    pub(crate) fn start(client: Client, cursor: Option<Cursor>, options: SubscribeOptions) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(run(client, cursor.clone(), options, tx));
        Self { rx, cursor, task }
    }

    /// The cursor of the last event this stream yielded (the one you passed
    /// in, before any). Persist it to resume in a later process with
    /// [`Client::subscribe`].
    pub fn cursor(&self) -> Option<&Cursor> {
        self.cursor.as_ref()
    }
}

impl Stream for Subscription {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok((event, cursor)))) => {
                if let Some(c) = cursor {
                    self.cursor = Some(c);
                }
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Errors after which reconnecting cannot help. UNAUTHENTICATED is one when
/// the credentials cannot change (a fixed token, dev mode), or when a token
/// provider's fresh token was refused as well (`refused_before`): each
/// connection attempt asks the provider again, so an expired token is
/// replaced once, but a provider that only hands out bad tokens ends the
/// subscription instead of retrying forever.
fn permanent(e: &Error, client: &Client, refused_before: bool) -> bool {
    match e {
        Error::PermissionDenied(_)
        | Error::InvalidArgument { .. }
        | Error::Config(_)
        | Error::Tls { .. } => true,
        Error::Unauthenticated(_) => !client.credentials_can_change() || refused_before,
        _ => false,
    }
}

fn convert(ev: proto::SubscribeReceiptsResponse) -> Result<Event, Error> {
    use proto::subscribe_receipts_response::Event as E;
    match ev.event {
        Some(E::Receipts(r)) => Ok(Event::Receipts {
            conversation_id: uuid("conversation_id", &r.conversation_id)?,
            group: r.group,
            messages: r
                .messages
                .into_iter()
                .map(MessageReceipts::try_from)
                .collect::<Result<_, _>>()?,
            ranges: r
                .ranges
                .into_iter()
                .map(ReceiptRange::try_from)
                .collect::<Result<_, _>>()?,
        }),
        Some(E::Watermark(w)) => Ok(Event::Watermark(w.try_into()?)),
        Some(E::Reset(r)) => Ok(Event::Reset(r.try_into()?)),
        Some(E::Live(l)) => Ok(Event::Live {
            replayed: l.replayed.max(0) as u64,
        }),
        None => Err(Error::Protocol("event without a body".into())),
    }
}

async fn run(
    client: Client,
    mut cursor: Option<Cursor>,
    options: SubscribeOptions,
    tx: mpsc::Sender<Result<(Event, Option<Cursor>), Error>>,
) {
    let policy = client.retry_policy();
    let mut attempt: u32 = 0;
    // Whether the last attempt ended with UNAUTHENTICATED.
    let mut refused = false;
    loop {
        let reason = match connect(&client, &cursor, options).await {
            Ok(mut stream) => loop {
                // The credentials were accepted.
                refused = false;
                match stream.message().await {
                    Ok(Some(msg)) => {
                        attempt = 0;
                        let next = Cursor(msg.cursor.clone());
                        let event = match convert(msg) {
                            Ok(e) => e,
                            Err(e) => {
                                tracing::warn!(%e, "skipping an event this SDK cannot read");
                                continue;
                            }
                        };
                        // The cursor advances only once the event is handed
                        // over: a reconnect resumes right after it.
                        if tx.send(Ok((event, Some(next.clone())))).await.is_err() {
                            return;
                        }
                        cursor = Some(next);
                    }
                    Ok(None) => break "stream ended".to_string(),
                    Err(status) => {
                        let e = client.error(status);
                        if permanent(&e, &client, refused) {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        refused = matches!(e, Error::Unauthenticated(_));
                        break e.to_string();
                    }
                }
            },
            Err(e) if permanent(&e, &client, refused) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(e) => {
                refused = matches!(e, Error::Unauthenticated(_));
                e.to_string()
            }
        };
        attempt = attempt.saturating_add(1);
        let notice = Event::Reconnecting {
            attempt,
            reason: reason.clone(),
        };
        if tx.send(Ok((notice, None))).await.is_err() {
            return;
        }
        let wait = policy.backoff(attempt.min(16));
        tracing::debug!(%reason, attempt, ?wait, "subscription reconnecting");
        tokio::time::sleep(wait).await;
    }
}

async fn connect(
    client: &Client,
    cursor: &Option<Cursor>,
    options: SubscribeOptions,
) -> Result<tonic::Streaming<proto::SubscribeReceiptsResponse>, Error> {
    let req = proto::SubscribeReceiptsRequest {
        cursor: cursor.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
        accept_ranges: options.accept_ranges,
    };
    let req = client.request(req, false).await?;
    let mut stub = proto::receipt_service_client::ReceiptServiceClient::new(client.channel());
    match stub.subscribe_receipts(req).await {
        Ok(r) => Ok(r.into_inner()),
        Err(status) => Err(client.error(status)),
    }
}
