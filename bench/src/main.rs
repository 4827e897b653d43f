//! `receipts-bench`: drives realistic receipts traffic against a running
//! `receiptd` (or one it starts) through the Rust SDK, and reports
//! throughput, RPC latency, propagation latency to the sender's stream,
//! errors, and the server's CPU and memory, next to a no-op baseline on the
//! same stack.
//!
//! ```text
//! receipts-bench --spawn target/release/receiptd --duration-secs 20
//! receipts-bench --url http://10.0.0.5:50051 --jwt-secret … --mode open --rate 5000
//! receipts-bench --spawn target/release/receiptd --plot out/run1
//! receipts-bench --spawn target/release/receiptd --server-arg=--store --server-arg=redis-scylla \
//!     --redis-url redis://127.0.0.1:6379 --redis-benchmark /usr/bin/redis-benchmark
//! ```

mod large_group;
mod noop;
mod plot;
mod redis_ceiling;
mod redis_stats;
mod server;
mod stats;
mod workload;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use stats::{Percentiles, Stats};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore, mpsc};
use workload::{Auth, Kind, Op, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// A fixed number of workers, each waiting for its call: the maximum.
    Closed,
    /// Calls started at a fixed rate whatever the latency: latency at a load.
    Open,
}

/// Load generator for receiptd.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The server (ignored with --spawn).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    /// Start this receiptd binary for the run (embedded store in a temporary
    /// directory, dev mode, per-user rate limits off) and stop it after.
    #[arg(long, value_name = "RECEIPTD")]
    spawn: Option<PathBuf>,
    /// An extra flag for the spawned receiptd (repeatable), e.g.
    /// `--server-arg=--group-window-ms=200`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// A local server's process id, to sample its CPU and memory from /proc
    /// (automatic with --spawn).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Authenticate with HS256 tokens from this secret (default: dev-mode
    /// headers).
    #[arg(long, env = "RECEIPTS_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Direct conversations.
    #[arg(long, default_value_t = 100)]
    direct: usize,
    /// Groups as MEMBERS:COUNT, comma separated.
    #[arg(long, default_value = "20:20,500:2", value_delimiter = ',')]
    groups: Vec<String>,
    /// Share of rounds per kind as KIND=WEIGHT (`direct`, or a group size),
    /// comma separated; kinds left out get weight 1.
    #[arg(long, default_value = "direct=6,20=3,500=1", value_delimiter = ',')]
    mix: Vec<String>,
    /// Devices (connections) per recipient.
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// Messages per round: each recipient marks them delivered in one call.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// closed: --concurrency workers as fast as they can; open: --rate.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Workers in closed mode (and connections of the no-op baseline).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Receipts RPCs per second in open mode.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Open mode: calls in flight beyond which a due call is counted as not
    /// started instead of piling up in the client.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Tasks producing rounds (each waits for its batch's registration).
    #[arg(long, default_value_t = 16)]
    generators: usize,
    /// Seeds the choice of conversations, devices and order (generator i
    /// uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the no-op baseline.
    #[arg(long)]
    no_baseline: bool,
    /// MarkDelivered names messages by id alone (the form before the
    /// conversation form), for comparing the two.
    #[arg(long)]
    deliver_by_id: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the run as SVG: PREFIX-throughput.svg (per second of the
    /// measured window) and PREFIX-latency.svg (percentile curves).
    #[arg(long, value_name = "PREFIX")]
    plot: Option<PathBuf>,
    /// The Redis the server under test uses (one standalone server or one
    /// node), e.g. `receiptd --store redis-scylla`'s: its INFO commandstats,
    /// INFO memory and DBSIZE are read just before and just after the
    /// measured window, for Redis commands per receipts RPC and memory
    /// growth per registered message.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Instead of the load run: what one call costs in a group of each of
    /// these sizes (comma separated), call by call with nothing else running
    /// (see `large_group.rs`); with --redis-url, its Redis commands and CPU.
    #[arg(long, value_name = "SIZES", value_delimiter = ',')]
    large_groups: Vec<usize>,
    /// Calls of each kind per size in --large-groups.
    #[arg(long, default_value_t = 30)]
    large_group_rounds: usize,
    /// The server's --group-window-ms, for --large-groups (it waits three
    /// windows for the summary's flush).
    #[arg(long, default_value_t = 1000)]
    large_group_window_ms: u64,
    /// After the run, this redis-benchmark binary is run against
    /// --redis-url with --concurrency clients (`-t hset,get`, HGETALL, HMGET,
    /// ZRANGEBYSCORE on small keys under `bench:`), for the Redis ceiling in
    /// receipts RPC/s.
    #[arg(long, value_name = "PATH", requires = "redis_url")]
    redis_benchmark: Option<PathBuf>,
    /// Requests per redis-benchmark test (`-n`).
    #[arg(long, default_value_t = 100_000)]
    redis_benchmark_requests: u64,
}

fn kinds(args: &Args) -> anyhow::Result<Vec<Kind>> {
    let mut weights = BTreeMap::new();
    for m in &args.mix {
        let (k, w) = m
            .split_once('=')
            .with_context(|| format!("--mix {m:?}: want KIND=WEIGHT"))?;
        let w: u32 = w.parse().with_context(|| format!("--mix {m:?}: weight"))?;
        weights.insert(k.to_string(), w);
    }
    let mut out = Vec::new();
    if args.direct > 0 {
        out.push(Kind {
            label: "direct".into(),
            members: 2,
            count: args.direct,
            weight: *weights.get("direct").unwrap_or(&1),
        });
    }
    for g in &args.groups {
        if g.is_empty() {
            continue;
        }
        let (size, count) = g
            .split_once(':')
            .with_context(|| format!("--groups {g:?}: want MEMBERS:COUNT"))?;
        let members: usize = size.parse().with_context(|| format!("--groups {g:?}"))?;
        let count: usize = count.parse().with_context(|| format!("--groups {g:?}"))?;
        if members < 3 {
            bail!("--groups {g:?}: a group has at least 3 members");
        }
        if count > 0 {
            out.push(Kind {
                label: format!("group{members}"),
                members,
                count,
                weight: *weights.get(size).unwrap_or(&1),
            });
        }
    }
    if out.iter().all(|k| k.weight == 0) {
        bail!("no conversations to load: check --direct, --groups and --mix");
    }
    Ok(out)
}

/// The run in one line, for plot titles.
fn run_label(args: &Args, kinds: &[Kind]) -> String {
    let mode = match args.mode {
        Mode::Closed => format!("closed loop, {} workers", args.concurrency),
        Mode::Open => format!("open loop at {} RPC/s", args.rate),
    };
    let mix: Vec<String> = kinds
        .iter()
        .map(|k| format!("{}×{} weight {}", k.count, k.label, k.weight))
        .collect();
    format!(
        "{mode}; mix {}; batch {}; {} s measured, seed {}",
        mix.join(", "),
        args.batch,
        args.duration_secs,
        args.seed
    )
}

/// The report, for people (a table) and machines (JSON).
#[derive(Debug, Serialize)]
struct Report {
    mode: Mode,
    target_rate: Option<f64>,
    concurrency: usize,
    /// Seconds of warm-up: the `*_per_second` series start with them.
    warmup_secs: f64,
    seconds: f64,
    seed: u64,
    kinds: Vec<String>,
    connections: usize,
    receipts_rpcs: u64,
    /// Messages the backend registered in the window.
    messages_registered: u64,
    receipts_rpc_per_sec: f64,
    receipt_events_per_sec: f64,
    message_states_per_sec: f64,
    rpc_latency: Percentiles,
    rpc_latency_by_method: BTreeMap<&'static str, Percentiles>,
    propagation_direct: Percentiles,
    propagation_group: Percentiles,
    errors: BTreeMap<String, u64>,
    not_started: u64,
    server: Option<server::Usage>,
    /// Successful receipts RPCs, receipt events and the message states they
    /// carried, per second since the start (warm-up included).
    throughput_per_second: Vec<u64>,
    receipt_events_per_second: Vec<u64>,
    message_states_per_second: Vec<u64>,
    noop: Option<Baseline>,
    /// The SVG files written (--plot).
    plots: Vec<String>,
    redis: Option<RedisReport>,
}

/// The server's Redis (--redis-url, --redis-benchmark).
#[derive(Debug, Serialize)]
struct RedisReport {
    window: redis_stats::WindowStats,
    benchmark: Option<redis_ceiling::Ceiling>,
}

#[derive(Debug, Serialize)]
struct Baseline {
    rpc_per_sec: f64,
    /// Successful no-op RPCs per second since the baseline's start.
    throughput_per_second: Vec<u64>,
    latency: Percentiles,
    errors: BTreeMap<String, u64>,
    /// Receipts RPC cost over no-op RPC cost: the no-op's RPCs per second
    /// over the receipts' (closed mode, same concurrency).
    cost_ratio: Option<f64>,
    /// Receipts p50 latency over the no-op's.
    p50_ratio: f64,
}

async fn drive(args: &Args, wl: Workload, stats: Arc<Stats>) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Op>(4096);
    let generator = tokio::spawn(wl.generate(args.seed, args.generators, tx, stats.clone()));
    let end = stats.window.1;
    match args.mode {
        Mode::Closed => {
            let rx = Arc::new(Mutex::new(rx));
            let mut workers = Vec::new();
            for _ in 0..args.concurrency.max(1) {
                let (rx, stats) = (rx.clone(), stats.clone());
                workers.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        let Some(op) = rx.lock().await.recv().await else {
                            return;
                        };
                        op.run(&stats).await;
                    }
                }));
            }
            for w in workers {
                w.await?;
            }
        }
        Mode::Open => {
            let mut rx = rx;
            let in_flight = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
            let started = Instant::now();
            let mut issued = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while Instant::now() < end {
                tick.tick().await;
                let due = (started.elapsed().as_secs_f64() * args.rate) as u64;
                while issued < due {
                    issued += 1;
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        if stats.measuring(Instant::now()) {
                            stats.not_started.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    };
                    let Some(op) = rx.recv().await else { break };
                    let stats = stats.clone();
                    tokio::spawn(async move {
                        op.run(&stats).await;
                        drop(permit);
                    });
                }
            }
            // Let the calls in flight finish (they are measured).
            let _ = in_flight
                .acquire_many(args.max_in_flight.max(1) as u32)
                .await;
        }
    }
    generator.abort();
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_millis(100), generator).await {
        return Err(e.context("registering messages"));
    }
    Ok(())
}

fn progress(stats: Arc<Stats>, label: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.tick().await;
        loop {
            every.tick().await;
            let t = stats.started.elapsed().as_secs();
            let last = stats.timeline.get(t.saturating_sub(1) as usize);
            let phase = if Instant::now() < stats.window.0 {
                "warm-up"
            } else {
                "measuring"
            };
            let errors: u64 = stats
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .sum();
            eprintln!(
                "{label} {t:>4}s {phase:<9} {last:>8} RPC/s  {:>9} ok  {errors} errors  p99 {:.2} ms",
                stats.ok.load(Ordering::Relaxed),
                stats.rpc.percentiles().p99_ms
            );
        }
    })
}

/// The same allocator as receiptd: with glibc's, a third of the load tool's
/// samples were malloc and free, CPU taken from the server it measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kinds = kinds(&args)?;
    // Everything that can fail without load fails before it.
    if let Some(dir) = args.plot.as_deref().and_then(Path::parent)
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        bail!("--plot: directory {} does not exist", dir.display());
    }
    let probe = match &args.redis_url {
        Some(u) => Some(redis_stats::Probe::connect(u).await?),
        None => None,
    };
    if let Some(bin) = &args.redis_benchmark {
        redis_ceiling::check(bin).await?;
    }
    let spawned = match &args.spawn {
        Some(bin) => Some(server::Spawned::start(bin, &args.server_args).await?),
        None => None,
    };
    let url = spawned.as_ref().map_or(args.url.clone(), |s| s.url.clone());
    let pid = spawned.as_ref().map(|s| s.pid).or(args.server_pid);
    let auth = match &args.jwt_secret {
        Some(s) => Auth::Secret(s.clone()),
        None => Auth::Dev,
    };
    if !args.large_groups.is_empty() {
        let rows = large_group::run(
            &url,
            &auth,
            &args.large_groups,
            args.large_group_rounds,
            Duration::from_millis(args.large_group_window_ms),
            probe,
        )
        .await?;
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&rows)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    eprintln!(
        "setting up {} on {url} …",
        kinds
            .iter()
            .map(|k| format!("{}×{}", k.count, k.label))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let wl = Workload::setup(
        &url,
        &auth,
        kinds.clone(),
        args.devices,
        args.batch,
        args.deliver_by_id,
    )
    .await?;
    let connections = wl.connections();
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let duration = Duration::from_secs_f64(args.duration_secs);
    let stats = Arc::new(Stats::new(
        &["MarkDelivered", "MarkReadUpTo"],
        warmup,
        duration,
    ));
    let subscribers = wl.subscribe(stats.clone()).await;
    let ticker = progress(stats.clone(), "receipts");
    // Sample the server over exactly the measurement window.
    let sampler = pid.map(|pid| {
        let window = stats.window;
        tokio::spawn(async move {
            tokio::time::sleep_until(window.0.into()).await;
            let from = server::sample(pid);
            tokio::time::sleep_until(window.1.into()).await;
            let to = server::sample(pid);
            from.zip(to).map(|(a, b)| server::usage(pid, a, b))
        })
    });
    // Read the server's Redis around exactly the measurement window.
    let redis_window = probe.map(|mut probe| {
        let window = stats.window;
        tokio::spawn(async move {
            tokio::time::sleep_until(window.0.into()).await;
            let before = probe.snapshot().await?;
            tokio::time::sleep_until(window.1.into()).await;
            let after = probe.snapshot().await?;
            anyhow::Ok((probe, before, after))
        })
    });
    drive(&args, wl, stats.clone()).await?;
    ticker.abort();
    let usage = match sampler {
        Some(s) => s.await?,
        None => None,
    };
    // A failure from here on still lets the report out, then fails the run.
    let mut failure = None;
    let redis_snapshots = match redis_window.map(|w| async { w.await? }) {
        Some(w) => w
            .await
            .map_err(|e| failure = Some(e.context("reading Redis statistics (--redis-url)")))
            .ok(),
        None => None,
    };
    // Late events still resolve propagation for a moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for s in subscribers {
        s.abort();
    }

    let secs = stats.window_secs();
    let ok = stats.ok.load(Ordering::Relaxed);
    let mut report = Report {
        mode: args.mode,
        target_rate: (args.mode == Mode::Open).then_some(args.rate),
        concurrency: args.concurrency,
        warmup_secs: args.warmup_secs,
        seconds: secs,
        seed: args.seed,
        kinds: kinds
            .iter()
            .map(|k| format!("{}×{} (weight {})", k.count, k.label, k.weight))
            .collect(),
        connections,
        receipts_rpcs: ok,
        messages_registered: stats.registered.load(Ordering::Relaxed),
        receipts_rpc_per_sec: ok as f64 / secs,
        receipt_events_per_sec: stats.events.load(Ordering::Relaxed) as f64 / secs,
        message_states_per_sec: stats.message_states.load(Ordering::Relaxed) as f64 / secs,
        rpc_latency: stats.rpc.percentiles(),
        rpc_latency_by_method: stats
            .rpc_by_method
            .iter()
            .map(|(m, h)| (*m, h.percentiles()))
            .collect(),
        propagation_direct: stats.propagation_direct.percentiles(),
        propagation_group: stats.propagation_group.percentiles(),
        errors: stats
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        not_started: stats.not_started.load(Ordering::Relaxed),
        server: usage,
        throughput_per_second: stats.timeline.to_vec(),
        receipt_events_per_second: stats.events_timeline.to_vec(),
        message_states_per_second: stats.message_states_timeline.to_vec(),
        noop: None,
        plots: Vec::new(),
        redis: None,
    };

    let mut noop_stats = None;
    if !args.no_baseline {
        let base = Arc::new(Stats::new(
            &["noop"],
            warmup.min(Duration::from_secs(1)),
            duration,
        ));
        let ticker = progress(base.clone(), "no-op   ");
        noop::run(&url, args.concurrency.max(1), base.clone()).await?;
        ticker.abort();
        let n = base.ok.load(Ordering::Relaxed);
        let latency = base.rpc.percentiles();
        let rps = n as f64 / base.window_secs();
        report.noop = Some(Baseline {
            rpc_per_sec: rps,
            throughput_per_second: base.timeline.to_vec(),
            cost_ratio: (args.mode == Mode::Closed && report.receipts_rpc_per_sec > 0.0)
                .then(|| rps / report.receipts_rpc_per_sec),
            p50_ratio: report.rpc_latency.p50_ms / latency.p50_ms.max(1e-6),
            latency,
            errors: base
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        });
        noop_stats = Some(base);
    }
    // The server is done with; redis-benchmark gets the machine to itself.
    drop(spawned);

    if let Some((mut probe, before, after)) = redis_snapshots {
        let window = redis_stats::window(
            &probe.target.name,
            &before,
            &after,
            report.receipts_rpcs,
            report.messages_registered,
        );
        let benchmark = match &args.redis_benchmark {
            Some(bin) => redis_ceiling::run(
                bin,
                &mut probe,
                args.concurrency,
                args.redis_benchmark_requests,
                window.commands_per_receipts_rpc,
                report.receipts_rpc_per_sec,
            )
            .await
            .map_err(|e| failure = Some(e))
            .ok(),
            None => None,
        };
        report.redis = Some(RedisReport { window, benchmark });
    }
    if let Some(prefix) = &args.plot {
        report.plots = plots(
            prefix,
            &run_label(&args, &kinds),
            &stats,
            noop_stats.as_deref(),
        )?;
    }

    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if report.receipts_rpcs == 0 {
        bail!("no receipts RPC succeeded in the measurement window");
    }
    Ok(())
}

/// Writes PREFIX-throughput.svg and PREFIX-latency.svg; returns their paths.
fn plots(
    prefix: &Path,
    run: &str,
    stats: &Stats,
    noop: Option<&Stats>,
) -> anyhow::Result<Vec<String>> {
    let path = |suffix: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let line = |label: &str, points| plot::Line {
        label: label.to_string(),
        points,
    };
    let mut throughput = vec![
        line("receipts RPC/s", stats.window_series(&stats.timeline)),
        line(
            "receipt events/s on the senders' streams",
            stats.window_series(&stats.events_timeline),
        ),
        line(
            "message states/s in those events",
            stats.window_series(&stats.message_states_timeline),
        ),
    ];
    if let Some(b) = noop {
        throughput.push(line(
            "no-op RPC/s (Health/Check baseline)",
            b.window_series(&b.timeline),
        ));
    }
    let latency: Vec<plot::Line> = [
        ("receipts RPC", &stats.rpc),
        ("propagation, direct", &stats.propagation_direct),
        ("propagation, group", &stats.propagation_group),
    ]
    .into_iter()
    .map(|(label, h)| line(label, h.percentile_curve(4, 80)))
    .filter(|l| !l.points.is_empty())
    .collect();
    let (t, l) = (path("-throughput.svg"), path("-latency.svg"));
    plot::throughput(&t, run, &throughput)?;
    plot::latency(&l, run, &latency, 4)?;
    Ok(vec![t.display().to_string(), l.display().to_string()])
}

fn row(name: &str, p: &Percentiles) {
    println!(
        "  {name:<22} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        p.count, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
    );
}

fn print_table(r: &Report) {
    println!();
    println!(
        "receipts-bench: {:?} mode, {} s measured, seed {}, {} connections",
        r.mode, r.seconds, r.seed, r.connections
    );
    println!("  load: {}", r.kinds.join(", "));
    println!(
        "  receipts RPC/s {:.0}   receipt events/s {:.0}   message states/s {:.0}",
        r.receipts_rpc_per_sec, r.receipt_events_per_sec, r.message_states_per_sec
    );
    println!(
        "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p95", "p99", "max"
    );
    row("receipts RPC", &r.rpc_latency);
    for (m, p) in &r.rpc_latency_by_method {
        row(m, p);
    }
    row("propagation, direct", &r.propagation_direct);
    row("propagation, group", &r.propagation_group);
    if let Some(b) = &r.noop {
        row("no-op RPC", &b.latency);
        print!(
            "  no-op RPC/s {:.0}; receipts/no-op p50 latency {:.2}×",
            b.rpc_per_sec, b.p50_ratio
        );
        match b.cost_ratio {
            Some(c) => println!("; receipts RPC cost / no-op RPC cost {c:.2}×"),
            None => println!(),
        }
    }
    if let Some(s) = &r.server {
        println!(
            "  server: {:.2} cores, RSS {:.1} MiB (peak {:.1} MiB)",
            s.cpu_cores, s.rss_mib, s.peak_rss_mib
        );
    }
    if r.errors.is_empty() {
        println!("  errors: none");
    } else {
        println!("  errors: {:?}", r.errors);
    }
    if r.not_started > 0 {
        println!(
            "  not started (client at --max-in-flight): {}",
            r.not_started
        );
    }
    if let Some(redis) = &r.redis {
        print_redis(redis);
    }
    if !r.plots.is_empty() {
        println!("  plots: {}", r.plots.join(", "));
    }
}

fn print_redis(r: &RedisReport) {
    let w = &r.window;
    let two = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}"));
    println!(
        "  Redis {} in the window ({} receipts RPCs, {} messages registered; the tool's own {} INFO/DBSIZE calls left out):",
        w.server, w.receipts_rpcs, w.messages_registered, w.own_commands_excluded
    );
    println!(
        "    Redis commands per receipts RPC {} ({} commands; Redis CPU in commands {} µs per RPC)",
        two(w.commands_per_receipts_rpc),
        w.commands,
        two(w.command_usec_per_receipts_rpc)
    );
    if !w.top_commands.is_empty() {
        println!(
            "    {:<22} {:>10} {:>9}",
            "top commands", "calls", "per RPC"
        );
        for t in &w.top_commands {
            println!(
                "    {:<22} {:>10} {:>9}",
                t.command,
                t.calls,
                two(t.per_receipts_rpc)
            );
        }
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "    used_memory {:.2} → {:.2} MiB ({:+} bytes), keys {} → {}",
        mib(w.used_memory_before_bytes),
        mib(w.used_memory_after_bytes),
        w.used_memory_growth_bytes,
        w.keys_before,
        w.keys_after
    );
    println!(
        "    {}: {}",
        redis_stats::MEMORY_NOTE,
        w.used_memory_growth_per_registered_message_bytes
            .map_or_else(
                || "n/a (no message registered)".to_string(),
                |b| format!("{b:.0} bytes")
            )
    );
    let Some(b) = &r.benchmark else { return };
    println!(
        "  redis-benchmark, {} clients, {} requests per test:",
        b.clients, b.requests_per_test
    );
    for t in &b.results {
        println!(
            "    {:<48} {:>9.0} requests/s",
            t.command, t.requests_per_sec
        );
    }
    println!(
        "    {:<48} {:>9.0} requests/s",
        "mean", b.mean_requests_per_sec
    );
    match b.ceiling_receipts_rpc_per_sec {
        Some(c) => println!(
            "    the Redis ceiling in receipts RPC/s: {c:.0} (mean ÷ {} commands per RPC); ceiling / achieved {}×",
            two(w.commands_per_receipts_rpc),
            two(b.ceiling_over_achieved)
        ),
        None => println!(
            "    the Redis ceiling in receipts RPC/s: n/a (no Redis commands per receipts RPC in the window)"
        ),
    }
}
