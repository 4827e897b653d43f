//! Prometheus metrics: what is recorded, and the `/metrics` endpoint.
//!
//! One [`Metrics`] per server (no global registry, so several servers in one
//! test process do not mix their numbers). The names and labels are listed in
//! docs/operations.md; the text is OpenMetrics, which Prometheus scrapes.

use crate::store::ReceiptStore;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A gRPC call's service, method and final status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RpcLabels {
    pub(crate) grpc_service: &'static str,
    pub(crate) grpc_method: &'static str,
    pub(crate) grpc_code: &'static str,
}

/// A gRPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub(crate) grpc_service: &'static str,
    pub(crate) grpc_method: &'static str,
}

/// A store operation and, for errors, the error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreLabels {
    pub(crate) op: &'static str,
}

/// A store error by operation and kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreErrorLabels {
    pub(crate) op: &'static str,
    pub(crate) kind: &'static str,
}

/// Events written to subscriber streams.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventLabels {
    /// `receipts` or `watermark`.
    pub(crate) kind: &'static str,
    /// `direct` or `group` (receipts), `-` (watermark).
    pub(crate) conversation: &'static str,
    /// `live` or `replay`.
    pub(crate) source: &'static str,
}

/// Why something happened (a reset, a rejection).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

/// Every metric the server records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) rpcs: Family<RpcLabels, Counter>,
    pub(crate) rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub(crate) store_seconds: Family<StoreLabels, Histogram, fn() -> Histogram>,
    pub(crate) store_errors: Family<StoreErrorLabels, Counter>,
    pub(crate) events: Family<EventLabels, Counter>,
    pub(crate) propagation_seconds: Histogram,
    pub(crate) subscriptions_active: Gauge,
    pub(crate) subscriptions_opened: Counter,
    pub(crate) subscriptions_ended: Family<ReasonLabels, Counter>,
    pub(crate) replays: Family<ReasonLabels, Counter>,
    pub(crate) resets: Family<ReasonLabels, Counter>,
    pub(crate) rejected: Family<ReasonLabels, Counter>,
    pub(crate) connections_open: Gauge,
    pub(crate) connections_closed: Family<ReasonLabels, Counter>,
    writebehind_queues: Gauge,
    writebehind_oldest_seconds: Gauge<f64, AtomicU64>,
    writebehind_persisted: Counter,
    writebehind_persistence_up: Gauge,
    writebehind_outage_seconds: Gauge<f64, AtomicU64>,
    writebehind_persisted_seen: AtomicU64,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Metrics {
    /// A fresh set of metrics with every family registered.
    pub fn new() -> Arc<Self> {
        let mut m = Self {
            registry: Registry::with_prefix("receipts"),
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(latency_histogram),
            store_seconds: Family::new_with_constructor(latency_histogram),
            store_errors: Family::default(),
            events: Family::default(),
            propagation_seconds: latency_histogram(),
            subscriptions_active: Gauge::default(),
            subscriptions_opened: Counter::default(),
            subscriptions_ended: Family::default(),
            replays: Family::default(),
            resets: Family::default(),
            rejected: Family::default(),
            connections_open: Gauge::default(),
            connections_closed: Family::default(),
            writebehind_queues: Gauge::default(),
            writebehind_oldest_seconds: Gauge::default(),
            writebehind_persisted: Counter::default(),
            writebehind_persistence_up: Gauge::default(),
            writebehind_outage_seconds: Gauge::default(),
            writebehind_persisted_seen: AtomicU64::new(0),
        };
        let r = &mut m.registry;
        r.register(
            "grpc_server_handled",
            "gRPC calls finished, by service, method and status code",
            m.rpcs.clone(),
        );
        r.register_with_unit(
            "grpc_server_handling",
            "Time from request to final status of unary gRPC calls",
            Unit::Seconds,
            m.rpc_seconds.clone(),
        );
        r.register_with_unit(
            "store_call",
            "Time spent in store operations (both stores), errors included",
            Unit::Seconds,
            m.store_seconds.clone(),
        );
        r.register(
            "store_errors",
            "Store operations that failed, by operation and error kind",
            m.store_errors.clone(),
        );
        r.register(
            "events_sent",
            "Events written to subscriber streams, by kind, conversation type and source",
            m.events.clone(),
        );
        r.register_with_unit(
            "propagation",
            "Direct conversations: time from a receipt write to its event on the sender's stream",
            Unit::Seconds,
            m.propagation_seconds.clone(),
        );
        r.register(
            "subscriptions_active",
            "Open SubscribeReceipts streams on this node",
            m.subscriptions_active.clone(),
        );
        r.register(
            "subscriptions_opened",
            "SubscribeReceipts streams opened",
            m.subscriptions_opened.clone(),
        );
        r.register(
            "subscriptions_ended",
            "SubscribeReceipts streams ended, by reason",
            m.subscriptions_ended.clone(),
        );
        r.register(
            "replays",
            "Subscriptions that resumed from a cursor, by outcome (events or reset)",
            m.replays.clone(),
        );
        r.register(
            "resets",
            "Resets with a snapshot sent, by reason",
            m.resets.clone(),
        );
        r.register(
            "rejected",
            "Calls refused by protection (overload, deadline, rate and size limits), by reason",
            m.rejected.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open on this node",
            m.connections_open.clone(),
        );
        r.register(
            "connections_closed",
            "Client connections the server closed or refused, by reason (idle, first_request_timeout, limit)",
            m.connections_closed.clone(),
        );
        r.register(
            "writebehind_queues",
            "Production tier: queues holding changes not yet persisted to Scylla",
            m.writebehind_queues.clone(),
        );
        r.register_with_unit(
            "writebehind_oldest",
            "Production tier: age of the longest-waiting queue's last registration",
            Unit::Seconds,
            m.writebehind_oldest_seconds.clone(),
        );
        r.register(
            "writebehind_persisted",
            "Production tier: changes this node persisted to Scylla",
            m.writebehind_persisted.clone(),
        );
        r.register(
            "writebehind_persistence_up",
            "Production tier: 1 while Scylla answers this node's probe, 0 while it does not (changes then queue in Redis)",
            m.writebehind_persistence_up.clone(),
        );
        r.register_with_unit(
            "writebehind_outage",
            "Production tier: how long this node has seen Scylla unreachable (0 while it answers); writes are refused past --writebehind-max-outage-secs",
            Unit::Seconds,
            m.writebehind_outage_seconds.clone(),
        );
        Arc::new(m)
    }

    /// Counts a refusal by protection.
    pub(crate) fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Samples what the store reports, then renders every metric.
    pub async fn render(&self, store: &dyn ReceiptStore) -> String {
        // A slow backend must not hang the scrape: keep the last sample.
        if let Ok(Ok(Some(b))) = tokio::time::timeout(Duration::from_secs(2), store.backlog()).await
        {
            self.writebehind_queues.set(b.queues as i64);
            self.writebehind_oldest_seconds
                .set(b.oldest_registration_age.as_secs_f64());
            let seen = self
                .writebehind_persisted_seen
                .swap(b.persisted_total, Ordering::AcqRel);
            self.writebehind_persisted
                .inc_by(b.persisted_total.saturating_sub(seen));
            self.writebehind_persistence_up
                .set(i64::from(b.persistence_up));
            self.writebehind_outage_seconds.set(b.outage.as_secs_f64());
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<dyn ReceiptStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (metrics, store) = (metrics.clone(), store.clone());
            async move {
                let body = metrics.render(&*store).await;
                ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
