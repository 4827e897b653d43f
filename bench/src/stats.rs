//! What a run measures: latency histograms (HdrHistogram, microseconds),
//! counts by outcome, and a per-second timeline.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A latency distribution (1 µs .. 1 h, 3 significant digits).
#[derive(Debug)]
pub struct Latency(Mutex<Histogram<u64>>);

impl Default for Latency {
    fn default() -> Self {
        Self(Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        ))
    }
}

/// Percentiles of a [`Latency`], in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = self.0.lock().unwrap_or_else(|e| e.into_inner()).record(us);
    }

    pub fn percentiles(&self) -> Percentiles {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// Everything one phase (the receipts load, or the no-op baseline) records
/// inside its measurement window.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub window: (Instant, Instant),
    pub rpc: Latency,
    pub rpc_by_method: BTreeMap<&'static str, Latency>,
    pub propagation_direct: Latency,
    pub propagation_group: Latency,
    pub ok: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Receipt events received on the senders' streams, and the message
    /// states they carried.
    pub events: AtomicU64,
    pub message_states: AtomicU64,
    /// Successful RPCs per second since `started`.
    pub timeline: Mutex<Vec<u64>>,
    /// Ops the open loop could not start because too many were in flight.
    pub not_started: AtomicU64,
}

impl Stats {
    pub fn new(methods: &[&'static str], warmup: Duration, duration: Duration) -> Self {
        let started = Instant::now();
        Self {
            started,
            window: (started + warmup, started + warmup + duration),
            rpc: Latency::default(),
            rpc_by_method: methods.iter().map(|m| (*m, Latency::default())).collect(),
            propagation_direct: Latency::default(),
            propagation_group: Latency::default(),
            ok: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            events: AtomicU64::new(0),
            message_states: AtomicU64::new(0),
            timeline: Mutex::new(Vec::new()),
            not_started: AtomicU64::new(0),
        }
    }

    /// Whether `t` falls in the measurement window (after warm-up).
    pub fn measuring(&self, t: Instant) -> bool {
        t >= self.window.0 && t < self.window.1
    }

    /// Records one finished RPC issued at `issued`.
    pub fn rpc_done(&self, method: &'static str, issued: Instant, outcome: Result<(), String>) {
        let now = Instant::now();
        if outcome.is_ok() {
            let second = now.duration_since(self.started).as_secs() as usize;
            let mut t = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() <= second {
                t.resize(second + 1, 0);
            }
            t[second] += 1;
        }
        if !self.measuring(issued) {
            return;
        }
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let took = now - issued;
                self.rpc.record(took);
                if let Some(h) = self.rpc_by_method.get(method) {
                    h.record(took);
                }
            }
            Err(code) => {
                *self
                    .errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(code)
                    .or_default() += 1;
            }
        }
    }

    pub fn window_secs(&self) -> f64 {
        (self.window.1 - self.window.0).as_secs_f64()
    }
}
