//! The server under test: optionally started by the tool, and sampled from
//! /proc (CPU time and resident memory) when it runs on this machine.

use anyhow::{Context, bail};
use serde::Serialize;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `receiptd` the tool started (embedded store, dev mode, per-user rate
/// limits off: one process plays thousands of users). Killed on drop.
pub struct Spawned {
    pub url: String,
    pub pid: u32,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Spawned {
    pub async fn start(bin: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let child = Command::new(bin)
            .args(["--dev-mode", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--user-writes-per-sec",
                "0",
                "--user-subscribes-per-sec",
                "0",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let pid = child.id();
        let mut me = Self {
            url,
            pid,
            child,
            _dir: dir,
        };
        me.wait_serving().await?;
        Ok(me)
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("receiptd exited at start-up: {status}");
            }
            if crate::noop::serving(&self.url).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("receiptd did not become SERVING within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time and memory of a local process at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    at: Instant,
    cpu_secs: f64,
    rss_kib: u64,
}

/// What the server used over the measurement window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    /// Cores busy on average (CPU seconds per wall second).
    pub cpu_cores: f64,
    /// Resident memory at the end, and the peak so far, in MiB.
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Samples process `pid`, if it is visible in /proc.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(Sample {
        at: Instant::now(),
        cpu_secs: ticks / clock_ticks(),
        rss_kib: status_kib(pid, "VmRSS:")?,
    })
}

/// Usage between two samples.
pub fn usage(pid: u32, from: Sample, to: Sample) -> Usage {
    let wall = (to.at - from.at).as_secs_f64().max(1e-9);
    Usage {
        cpu_cores: (to.cpu_secs - from.cpu_secs) / wall,
        rss_mib: to.rss_kib as f64 / 1024.0,
        peak_rss_mib: status_kib(pid, "VmHWM:").unwrap_or(to.rss_kib) as f64 / 1024.0,
    }
}
