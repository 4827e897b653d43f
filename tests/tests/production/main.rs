//! The production tier across real processes: several `receiptd` nodes
//! (`--store redis-scylla`) sharing a real Redis and a real Cassandra, killed
//! with `kill -9`, with hot data expired and Redis restarted under them.
//!
//! Needs `RECEIPTS_TEST_REDIS` and `RECEIPTS_TEST_CASSANDRA` (set by
//! `eval "$(scripts/backends.sh env)"`, which `scripts/test.sh` does); fails,
//! never skips, without them. The Redis-restart test starts its own
//! `redis-server` (from Debian's package) so it can kill it.
//!
//! One file per concern: `buckets.rs` (messages registered together),
//! `nodes.rs` (nodes sharing the tier, kills, restarts,
//! expiry), `members.rs` (member lists, recipient pages, a group of
//! 10,000), `costs.rs` (what a call and a message cost Redis), `outages.rs`
//! (Cassandra outages, Redis failovers).

use pb::subscribe_receipts_response::Event as E;
use receipts_proto::v1 as pb;
use receipts_server::domain::Cursor;
use receipts_tests::tier::*;
use receipts_tests::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::{Instant, sleep};
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

mod buckets;
mod costs;
mod members;
mod nodes;
mod outages;
mod writebehind;

fn tick(m: &pb::MessageReceipts) -> pb::Tick {
    pb::Tick::try_from(m.tick).expect("tick")
}

/// The receipts of `ids`, with recipients.
async fn receipts_of(
    client: &mut UserClient,
    conversation: Uuid,
    ids: &[Uuid],
) -> Vec<pb::MessageReceipts> {
    client
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: conversation.to_string(),
            message_ids: ids.iter().map(Uuid::to_string).collect(),
            include_recipients: true,
        })
        .await
        .expect("get receipts")
        .into_inner()
        .messages
}

/// MarkDelivered of `ids`, naming their conversation; all recorded.
async fn deliver_in(client: &mut UserClient, conversation: Uuid, ids: &[Uuid]) {
    let r = client
        .mark_delivered(pb::MarkDeliveredRequest {
            conversations: vec![pb::ConversationMessageIds {
                conversation_id: conversation.to_string(),
                message_ids: ids.iter().map(Uuid::to_string).collect(),
            }],
            ..Default::default()
        })
        .await
        .expect("mark delivered")
        .into_inner();
    assert!(
        r.results
            .iter()
            .all(|r| r.outcome == pb::DeliveryOutcome::Recorded as i32)
    );
}

/// `n` UUIDv7 ids of one millisecond (a batch minted in a loop may straddle
/// two), differing in their last byte.
fn ids_of_one_millisecond(n: u8) -> Vec<Uuid> {
    let minted = *Uuid::now_v7().as_bytes();
    (0..n)
        .map(|i| {
            let mut b = minted;
            b[15] = i;
            Uuid::from_bytes(b)
        })
        .collect()
}

/// A node whose hot data lives 3 s after its last update (flushing every
/// 100 ms), its backend client, and a group of 3 created through it.
async fn short_lived(tier: &Tier) -> (ChildServer, BackendClient, Conversation) {
    let node = tier
        .node_with(&["--hot-ttl-secs", "3", "--flush-interval-ms", "100"])
        .await;
    let mut backend = node.backend().await;
    let group = Conversation::create(&mut backend, 3).await;
    (node, backend, group)
}

/// Waits until none of `c`'s hot keys is left in Redis (expired, as Redis
/// would evict them).
async fn until_expired(tier: &Tier, c: Uuid) {
    let tag = c.simple().to_string();
    eventually("the conversation's hot keys expire", || async {
        !tier.keys().await.iter().any(|k| k.contains(&tag))
    })
    .await;
}
