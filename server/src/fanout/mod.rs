//! Fan-out: who is told what, and when.
//!
//! Stores decide nothing here. They commit facts and hand the states that a
//! write changed to this module, which builds the events (one per sender,
//! split into bounded chunks), holds group windows open for their tumbling
//! interval, and delivers committed events to this node's subscribers
//! ([`Hub`]). A store offers only what needs its storage: a durable event log,
//! the persistence of open windows (so a crash cannot lose a summary) and, in
//! the production tier, the bus between nodes.

mod events;
mod hub;
mod windows;

pub use events::{MAX_MESSAGES_PER_EVENT, receipt_events, worth_reading_span};
pub use hub::{Hub, Subscription};
pub use windows::{Window, Windows};
