//! What a run measures: latency histograms (HdrHistogram, microseconds),
//! counts by outcome, and per-second timelines.

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

    /// The latency (ms) at `points + 1` percentiles spread evenly on a
    /// `1/(1-p)` log scale from p = 0 to p = 1 - 10^-`nines`, as
    /// `(1/(1-p), ms)`; empty when nothing was recorded.
    pub fn percentile_curve(&self, nines: u32, points: u32) -> Vec<(f64, f64)> {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.is_empty() {
            return Vec::new();
        }
        (0..=points)
            .map(|i| {
                let x = 10f64.powf(f64::from(nines) * f64::from(i) / f64::from(points.max(1)));
                let ms = h.value_at_quantile(1.0 - 1.0 / x) as f64 / 1000.0;
                (x, ms)
            })
            .collect()
    }
}

/// Counts per whole second since a phase started (index 0 is the first
/// second), warm-up included.
#[derive(Debug, Default)]
pub struct Timeline(Mutex<Vec<u64>>);

impl Timeline {
    /// Adds `n` to the second `at` falls in.
    pub fn add(&self, started: Instant, at: Instant, n: u64) {
        let second = at.duration_since(started).as_secs() as usize;
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() <= second {
            t.resize(second + 1, 0);
        }
        t[second] += n;
    }

    /// The count of second `second` (0 past the end).
    pub fn get(&self, second: usize) -> u64 {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.get(second).copied().unwrap_or(0)
    }

    pub fn to_vec(&self) -> Vec<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
    /// Messages the backend registered (registration finished in the
    /// window).
    pub registered: AtomicU64,
    /// Successful RPCs per second since `started`.
    pub timeline: Timeline,
    /// Receipt events, and the message states they carried, per second
    /// since `started`.
    pub events_timeline: Timeline,
    pub message_states_timeline: Timeline,
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
            registered: AtomicU64::new(0),
            timeline: Timeline::default(),
            events_timeline: Timeline::default(),
            message_states_timeline: Timeline::default(),
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
            self.timeline.add(self.started, now, 1);
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

    /// Records a receipt event carrying `states` message states, seen now.
    pub fn event_seen(&self, states: u64) {
        let now = Instant::now();
        self.events_timeline.add(self.started, now, 1);
        self.message_states_timeline.add(self.started, now, states);
        if self.measuring(now) {
            self.events.fetch_add(1, Ordering::Relaxed);
            self.message_states.fetch_add(states, Ordering::Relaxed);
        }
    }

    /// The whole seconds of `timeline` inside the measurement window, as
    /// (seconds into the window at the second's middle, count).
    pub fn window_series(&self, timeline: &Timeline) -> Vec<(f64, f64)> {
        let from = (self.window.0 - self.started).as_secs_f64();
        let to = (self.window.1 - self.started).as_secs_f64();
        let counts = timeline.to_vec();
        (from.ceil() as usize..to.floor() as usize)
            .map(|s| {
                let n = counts.get(s).copied().unwrap_or(0);
                (s as f64 + 0.5 - from, n as f64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_series_keeps_the_whole_seconds_inside_the_window() {
        let stats = Stats::new(&[], Duration::from_millis(1500), Duration::from_secs(3));
        let at = |ms| stats.started + Duration::from_millis(ms);
        for (ms, n) in [(200, 7), (1700, 1), (2100, 2), (3999, 3), (4400, 4)] {
            stats.timeline.add(stats.started, at(ms), n);
        }
        // Seconds 2 and 3 lie wholly in 1.5 s .. 4.5 s; 1 and 4 only partly.
        assert_eq!(
            stats.window_series(&stats.timeline),
            [(1.0, 2.0), (2.0, 3.0)]
        );
        assert_eq!(stats.timeline.to_vec(), [7, 1, 2, 3, 4]);
    }

    #[test]
    fn percentile_curve_spans_p0_to_the_last_nine_and_only_grows() {
        let latency = Latency::default();
        assert!(latency.percentile_curve(4, 80).is_empty());
        for ms in 1..=1000 {
            latency.record(Duration::from_millis(ms));
        }
        let curve = latency.percentile_curve(4, 80);
        assert_eq!(curve.len(), 81);
        assert_eq!(curve[0].0, 1.0);
        assert!((curve[80].0 - 10_000.0).abs() < 1e-6);
        assert!((curve[0].1 - 1.0).abs() < 0.01, "{:?}", curve[0]);
        assert!((curve[80].1 - 1000.0).abs() < 1.0, "{:?}", curve[80]);
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
