//! # Receipts for Rust services
//!
//! The Rust SDK of Receipts: mark messages
//! delivered and read, read ticks and counts, and follow them live, without
//! touching generated code or raw tonic.
//!
//! ## From an empty project to live ticks
//!
//! ```toml
//! [dependencies]
//! receipts-sdk = { path = "…/sdk-rust" }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! futures = "0.3"
//! uuid = { version = "1", features = ["v7"] }
//! ```
//!
//! **Connect.** A [`Client`] is built once and cloned freely (clones share one
//! HTTP/2 connection). Authenticate with a JWT ([`ClientBuilder::token`]) or a
//! refreshing [`TokenProvider`]; against a local `receiptd --dev-mode`,
//! [`ClientBuilder::dev_user`] is enough.
//!
//! **Register, mark, read ticks, subscribe, handle a reset** — the whole tour:
//!
//! ```
//! use futures::StreamExt;
//! use receipts_sdk::{Client, Event, NewMessage, Tick};
//! use uuid::Uuid;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = receipts_tests::TestServer::start().await;
//! # let url = server.url();
//! let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
//!
//! // The messaging backend (service role) creates the chat and registers a message.
//! let backend = Client::builder(&url).dev_service(Uuid::now_v7()).connect().await?.backend();
//! let chat = Uuid::now_v7();
//! backend.create_conversation(chat, &[alice, bob]).await?;
//! let hello = Uuid::now_v7();
//! backend
//!     .register_messages(&[NewMessage {
//!         message_id: hello,
//!         conversation_id: chat,
//!         seq: 1,
//!         sender_id: alice,
//!         sent_at: None,
//!         thread_root_message_id: None,
//!     }])
//!     .await?;
//!
//! // Alice follows her receipts.
//! let alice_client = Client::builder(&url).dev_user(alice).connect().await?;
//! let mut ticks = alice_client.subscribe(None);
//! assert!(matches!(ticks.next().await, Some(Ok(Event::Live { .. }))));
//!
//! // Bob's device receives the message, and Bob reads it.
//! let bob_client = Client::builder(&url).dev_user(bob).connect().await?;
//! bob_client.mark_delivered_in(chat, &[hello]).await?;
//! bob_client.mark_read_up_to(chat, hello).await?;
//!
//! // Alice sees two ticks, then blue ticks.
//! let mut seen = Vec::new();
//! while seen.last() != Some(&Tick::Read) {
//!     match ticks.next().await.expect("stream goes on")? {
//!         Event::Receipts { messages, .. } => seen.extend(messages.iter().map(|m| m.tick)),
//!         // After a long absence the server may not be able to replay what was
//!         // missed: repaint from the snapshot it sends, then carry on.
//!         Event::Reset(snapshot) => println!("repaint {} messages", snapshot.recent_messages.len()),
//!         _ => {}
//!     }
//! }
//! assert_eq!(seen, [Tick::Delivered, Tick::Read]);
//!
//! // Counts for a "2 of 3 read" label are always there.
//! let state = &alice_client.get_receipts(chat, &[hello]).await?[0];
//! assert_eq!((state.read_count, state.recipients_total), (1, 1));
//!
//! // Keep the cursor to resume later with no gap and no duplicate.
//! let cursor = ticks.cursor().cloned();
//! # let _ = cursor;
//! # Ok(()) }
//! ```
//!
//! ## Behaviour on a flaky network
//!
//! - **Retries.** Unary calls are retried on transient failures (UNAVAILABLE,
//!   RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, transport errors) with exponential
//!   backoff and jitter ([`RetryPolicy`]). That is safe for *every* call:
//!   receipt writes are idempotent by design — states only move forward,
//!   watermarks only grow, registering the same message twice is a no-op.
//! - **Deadlines.** Each unary call carries a deadline ([`ClientBuilder::timeout`]).
//! - **Subscriptions** ([`Subscription`]) reconnect by themselves and resume from
//!   the last cursor they yielded; the server replays what was missed,
//!   coalesced. When it cannot, the stream yields [`Event::Reset`] with a
//!   snapshot. Dropping the stream cancels it.
//! - **Errors** are one enum, [`Error`], decoded in one place; the server's
//!   status is kept ([`Error::status`]) and INVALID_ARGUMENT names the field.
//!
//! ## A receipt state for a UI
//!
//! [`ReceiptState`] holds the states of the messages you sent and your read
//! positions, kept current by [`ReceiptState::follow`] (a subscription that
//! asks for ranges and applies every event, resets included) and fed by
//! [`ReceiptState::track`] with what GetReceipts returns. A UI reads
//! [`ReceiptState::conversation`] and repaints on [`ReceiptState::changes`];
//! [`ReceiptState::seq`] gives the read marker its seq.
//!
//! ## Ranges
//!
//! A change over many messages (a batch marked delivered, a read of
//! thousands) is one entry per message on a default subscription. A client
//! that keeps each message's seq can ask for it as ranges instead —
//! [`Client::subscribe_with`] with [`SubscribeOptions::accept_ranges`] — and
//! gets [`ReceiptRange`]s in [`Event::Receipts`]: one state for every message
//! it sent in `from_seq..=to_seq`, applied to what it holds with
//! [`MessageReceipts::apply_range`] (before the event's `messages`). The
//! stream then costs the same for 1 or 10,000 messages.
//!
//! ## Batching
//!
//! [`ReadMarker`] turns "message became visible" calls into at most one
//! MarkReadUpTo per conversation per interval (default in the docs: 1 s);
//! [`DeliveredBatcher`] groups MarkDelivered calls by size and time. Both flush
//! on demand, on `close()`, and on drop.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod backend;
mod batch;
mod builder;
mod client;
mod error;
mod state;
mod subscribe;
mod tls;
mod trace;
mod types;

pub use backend::BackendClient;
pub use batch::{DeliveredBatcher, ReadMarker};
pub use builder::{ClientBuilder, Interceptor, RetryPolicy, TokenProvider, token_fn};
pub use client::Client;
pub use error::Error;
pub use state::ReceiptState;
pub use subscribe::{Event, SubscribeOptions, Subscription};
pub use tls::ClientTls;
pub use trace::TraceContext;
pub use types::{
    ConversationOutcome, ConversationRead, Cursor, Delivery, DeliveryOutcome, MembershipChanged,
    MessageReceipts, NewMessage, ReadPosition, ReadReceipts, ReceiptRange, RecipientFilter,
    RecipientPage, RecipientReceipt, RecipientState, ResetReason, Snapshot, ThreadUnread, Tick,
    UnreadCount, Watermark,
};

/// The generated protobuf types and tonic clients, for what this crate does not
/// wrap. Prefer the typed API above.
pub mod proto {
    pub use receipts_proto::v1::*;
}
