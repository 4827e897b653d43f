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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// What this build is.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// Why something happened (a reset, a rejection).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

/// How an attempt ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub(crate) result: &'static str,
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
    tls_reloads: Family<ResultLabels, Counter>,
    writebehind_queues: Gauge,
    writebehind_oldest_seconds: Gauge<f64, AtomicU64>,
    writebehind_persisted: Counter,
    writebehind_persistence_up: Gauge,
    writebehind_outage_seconds: Gauge<f64, AtomicU64>,
    writebehind_persisted_seen: AtomicU64,
    process: Process,
}

/// The process's own figures (Prometheus's standard `process_*` names),
/// sampled from /proc at each scrape.
#[derive(Debug, Default)]
struct Process {
    cpu_seconds: Counter<f64, AtomicU64>,
    cpu_seconds_seen: Mutex<f64>,
    resident_memory_bytes: Gauge,
    virtual_memory_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time_seconds: Gauge,
    threads: Gauge,
}

impl Process {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "process_cpu",
            "Total user and system CPU time spent",
            Unit::Seconds,
            self.cpu_seconds.clone(),
        );
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory size",
            Unit::Bytes,
            self.resident_memory_bytes.clone(),
        );
        r.register_with_unit(
            "process_virtual_memory",
            "Virtual memory size",
            Unit::Bytes,
            self.virtual_memory_bytes.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors",
            self.open_fds.clone(),
        );
        r.register(
            "process_max_fds",
            "Maximum open file descriptors (soft limit)",
            self.max_fds.clone(),
        );
        r.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            self.start_time_seconds.clone(),
        );
        r.register(
            "process_threads",
            "OS threads in the process",
            self.threads.clone(),
        );
    }

    /// Reads /proc/self; a figure that cannot be read keeps its last value.
    #[cfg(target_os = "linux")]
    fn sample(&self) {
        let Ok(me) = procfs::process::Process::myself() else {
            return;
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let mut seen = self
                .cpu_seconds_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cpu > *seen {
                self.cpu_seconds.inc_by(cpu - *seen);
                *seen = cpu;
            }
            let rss = stat.rss.saturating_mul(procfs::page_size());
            self.resident_memory_bytes.set(rss as i64);
            self.virtual_memory_bytes.set(stat.vsize as i64);
            self.threads.set(stat.num_threads);
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = boot as f64 + stat.starttime as f64 / ticks;
                self.start_time_seconds.set(start as i64);
            }
        }
        if let Ok(n) = me.fd_count() {
            self.open_fds.set(n as i64);
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(n) = limits.max_open_files.soft_limit
        {
            self.max_fds.set(n as i64);
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn sample(&self) {}
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Metrics {
    /// Counts a reload of the TLS files.
    pub(crate) fn tls_reloaded(&self, result: &'static str) {
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A fresh set of metrics with every family registered.
    pub fn new() -> Arc<Self> {
        let mut m = Self {
            registry: Registry::default(),
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
            tls_reloads: Family::default(),
            writebehind_queues: Gauge::default(),
            writebehind_oldest_seconds: Gauge::default(),
            writebehind_persisted: Counter::default(),
            writebehind_persistence_up: Gauge::default(),
            writebehind_outage_seconds: Gauge::default(),
            writebehind_persisted_seen: AtomicU64::new(0),
            process: Process::default(),
        };
        m.process.register(&mut m.registry);
        let build_info: Family<BuildLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: crate::COMMIT,
            })
            .set(1);
        let r = m.registry.sub_registry_with_prefix("receipts");
        r.register(
            "build_info",
            "Always 1: the version and commit of this build",
            build_info,
        );
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
            "Client connections the server closed or refused, by reason (idle, first_request_timeout, limit, tls_handshake)",
            m.connections_closed.clone(),
        );
        r.register(
            "tls_reloads",
            "Reloads of the listener's TLS files (SIGHUP or a file change), by result (ok, error: the previous certificate stays)",
            m.tls_reloads.clone(),
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
        m.create_known_series();
        Arc::new(m)
    }

    /// Creates, at zero, the series whose label values are known in advance
    /// (docs/operations.md lists them), so a dashboard or an alert sees 0
    /// rather than nothing before the first occurrence.
    fn create_known_series(&self) {
        let reasons: [(&Family<ReasonLabels, Counter>, &[&'static str]); 5] = [
            (
                &self.subscriptions_ended,
                &[
                    "client_gone",
                    "shutdown",
                    "slow_subscriber",
                    "source_closed",
                    "store_error",
                ],
            ),
            (&self.replays, &["events", "reset"]),
            (
                &self.resets,
                &["expired", "epoch_changed", "invalid", "too_large"],
            ),
            (
                &self.rejected,
                &[
                    "overloaded",
                    "deadline",
                    "message_too_large",
                    "connection_share",
                    "user_write_rate",
                    "user_subscriptions",
                    "user_subscribe_rate",
                ],
            ),
            (
                &self.connections_closed,
                &["first_request_timeout", "idle", "limit", "tls_handshake"],
            ),
        ];
        for (family, values) in reasons {
            for reason in values {
                let _ = family.get_or_create(&ReasonLabels { reason });
            }
        }
        for result in ["ok", "error"] {
            let _ = self.tls_reloads.get_or_create(&ResultLabels { result });
        }
        for source in ["live", "replay"] {
            for (kind, conversation) in [
                ("receipts", "direct"),
                ("receipts", "group"),
                ("watermark", "-"),
            ] {
                let _ = self.events.get_or_create(&EventLabels {
                    kind,
                    conversation,
                    source,
                });
            }
        }
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
        self.process.sample();
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
