//! `--redis-benchmark`: what the server's Redis serves to `redis-benchmark`
//! at the closed loop's concurrency, for simple commands like the ones the
//! store sends (no EVALSHA), turned into a ceiling in receipts RPC/s:
//! the mean requests/s over those commands ÷ Redis commands per receipts RPC.

use crate::redis_stats::Probe;
use anyhow::{Context, bail};
use redis::ConnectionAddr;
use serde::Serialize;
use std::path::Path;
use std::process::Output;

/// The key redis-benchmark's own HSET test writes (`-t hset`).
const BENCHMARK_HSET_KEY: &str = "myhash";

/// One redis-benchmark test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchResult {
    /// The test's name: `HSET`, `GET`, or a custom command line.
    pub command: String,
    pub requests_per_sec: f64,
}

/// The ceiling Redis puts on receipts RPCs.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    pub clients: usize,
    pub requests_per_test: u64,
    pub results: Vec<BenchResult>,
    pub mean_requests_per_sec: f64,
    /// `mean_requests_per_sec` ÷ Redis commands per receipts RPC (none when
    /// the window had no Redis commands).
    pub ceiling_receipts_rpc_per_sec: Option<f64>,
    /// The ceiling over the receipts RPC/s achieved.
    pub ceiling_over_achieved: Option<f64>,
}

/// Checks that `bin --version` runs, before any load.
pub async fn check(bin: &Path) -> anyhow::Result<()> {
    output(bin, &["--version".to_string()]).await.map(|_| ())
}

/// Runs redis-benchmark against `probe`'s Redis with `clients` connections
/// and `requests` requests per test: `-t hset,get`, then HGETALL and HMGET
/// on a small hash and ZRANGEBYSCORE on a small sorted set, both made under
/// `bench:` for the run and deleted after it (and so is redis-benchmark's
/// own `myhash`, unless it was there before).
pub async fn run(
    bin: &Path,
    probe: &mut Probe,
    clients: usize,
    requests: u64,
    commands_per_rpc: Option<f64>,
    achieved_rpc_per_sec: f64,
) -> anyhow::Result<Ceiling> {
    let prefix = format!("bench:receipts-bench:{}", std::process::id());
    let (hash, zset) = (format!("{prefix}:hash"), format!("{prefix}:zset"));
    let had_myhash: bool = probe
        .query(redis::cmd("EXISTS").arg(BENCHMARK_HSET_KEY))
        .await?;
    // Shaped like a receipts state: a few small fields, a short index.
    let mut fill_hash = redis::cmd("HSET");
    fill_hash.arg(&hash);
    for i in 0..8 {
        fill_hash.arg(format!("f{i}")).arg(1_700_000_000_000u64 + i);
    }
    probe.query::<u64>(&fill_hash).await?;
    let mut fill_zset = redis::cmd("ZADD");
    fill_zset.arg(&zset);
    for i in 0..16 {
        fill_zset.arg(i).arg(format!("m{i}"));
    }
    probe.query::<u64>(&fill_zset).await?;

    // (a name for a custom command's results, the test's arguments)
    let tests: [(Option<&str>, Vec<String>); 4] = [
        (None, words(&["-t", "hset,get"])),
        (Some("HGETALL 8-field hash"), words(&["HGETALL", &hash])),
        (
            Some("HMGET 4 of 8 fields"),
            words(&["HMGET", &hash, "f0", "f1", "f2", "f3"]),
        ),
        (
            Some("ZRANGEBYSCORE 10 of 16"),
            words(&["ZRANGEBYSCORE", &zset, "0", "+inf", "LIMIT", "0", "10"]),
        ),
    ];
    let common = common_args(probe, clients, requests)?;
    let mut results = Vec::new();
    let mut failure = None;
    for (name, test) in &tests {
        eprintln!("redis-benchmark {} …", test.join(" "));
        let args: Vec<String> = common.iter().chain(test).cloned().collect();
        match output(bin, &args).await {
            Ok(out) => results.extend(
                parse_csv(&String::from_utf8_lossy(&out.stdout))
                    .into_iter()
                    .map(|r| BenchResult {
                        command: name.map_or(r.command, str::to_string),
                        ..r
                    }),
            ),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }

    let mut clean = redis::cmd("DEL");
    clean.arg(&hash).arg(&zset);
    if !had_myhash {
        clean.arg(BENCHMARK_HSET_KEY);
    }
    probe.query::<u64>(&clean).await?;
    if let Some(e) = failure {
        return Err(e);
    }
    if results.len() < tests.len() + 1 {
        bail!(
            "redis-benchmark printed {} results, want {} (HSET, GET and 3 custom commands)",
            results.len(),
            tests.len() + 1
        );
    }
    let mean = results.iter().map(|r| r.requests_per_sec).sum::<f64>() / results.len() as f64;
    let ceiling = commands_per_rpc.filter(|c| *c > 0.0).map(|c| mean / c);
    Ok(Ceiling {
        clients,
        requests_per_test: requests,
        results,
        mean_requests_per_sec: mean,
        ceiling_receipts_rpc_per_sec: ceiling,
        ceiling_over_achieved: ceiling
            .filter(|_| achieved_rpc_per_sec > 0.0)
            .map(|c| c / achieved_rpc_per_sec),
    })
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// Where and how to connect, and the load shape, as redis-benchmark flags.
fn common_args(probe: &Probe, clients: usize, requests: u64) -> anyhow::Result<Vec<String>> {
    let t = &probe.target;
    let mut args = match &t.addr {
        ConnectionAddr::Tcp(host, port) => {
            vec!["-h".into(), host.clone(), "-p".into(), port.to_string()]
        }
        ConnectionAddr::Unix(path) => vec!["-s".into(), path.display().to_string()],
        other => bail!("--redis-benchmark: {other} is not a plain TCP or Unix socket address"),
    };
    if t.db != 0 {
        args.extend(["--dbnum".into(), t.db.to_string()]);
    }
    if let Some(p) = &t.password {
        args.extend(["-a".into(), p.clone()]);
    }
    if let Some(u) = &t.username {
        args.extend(["--user".into(), u.clone()]);
    }
    args.extend(words(&[
        "-c",
        &clients.max(1).to_string(),
        "-n",
        &requests.to_string(),
        "-q",
        "--csv",
    ]));
    Ok(args)
}

/// Runs `bin args`, failing with its stderr when it fails.
async fn output(bin: &Path, args: &[String]) -> anyhow::Result<Output> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .output()
        .await
        .with_context(|| format!("--redis-benchmark {}: cannot run it", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            bin.display(),
            args.last().map_or("", String::as_str),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Parses `redis-benchmark -q --csv` output: one `"test","rps",...` line per
/// test (Redis 6 prints only those two fields; Redis 7 adds latencies and a
/// `"test","rps",...` header before each test). Lines whose second field is
/// not a number are skipped, and so is anything else it prints.
pub fn parse_csv(out: &str) -> Vec<BenchResult> {
    out.split(['\r', '\n'])
        .filter_map(|line| {
            let fields = csv_fields(line.trim());
            let requests_per_sec = fields.get(1)?.parse::<f64>().ok()?;
            Some(BenchResult {
                command: fields.into_iter().next()?,
                requests_per_sec,
            })
        })
        .collect()
}

/// The fields of one CSV line: quoted (`""` is a quote) or bare.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    while chars.peek().is_some() {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => break,
                    c => field.push(c),
                }
            }
            // Up to the next separator.
            for c in chars.by_ref() {
                if c == ',' {
                    break;
                }
            }
        } else {
            for c in chars.by_ref() {
                if c == ',' {
                    break;
                }
                field.push(c);
            }
        }
        fields.push(field.trim().to_string());
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_7_csv_with_a_header_per_test() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
            \"GET\",\"79051.38\",\"0.219\",\"0.072\",\"0.207\",\"0.287\",\"0.551\",\"2.639\"\n\
            \"HSET\",\"81632.65\",\"0.208\",\"0.048\",\"0.207\",\"0.263\",\"0.335\",\"1.703\"\n\
            \"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
            \"HGETALL bench:t:hash\",\"96153.84\",\"0.180\",\"0.064\",\"0.175\",\"0.271\",\"0.415\",\"0.807\"\n";
        assert_eq!(
            parse_csv(out),
            [
                BenchResult {
                    command: "GET".into(),
                    requests_per_sec: 79051.38
                },
                BenchResult {
                    command: "HSET".into(),
                    requests_per_sec: 81632.65
                },
                BenchResult {
                    command: "HGETALL bench:t:hash".into(),
                    requests_per_sec: 96153.84
                },
            ]
        );
    }

    #[test]
    fn parses_redis_6_csv_progress_lines_and_crlf() {
        let out = "HSET: rps=51234.0 (overall: 50000.0) avg_msec=0.5\r\
            \"PING_INLINE\",\"86956.52\"\r\n\
            \r\n\
            WARNING: Could not fetch server CONFIG\r\n\
            \"ZRANGEBYSCORE k 0 +inf LIMIT 0 10\",\"70000.00\"\r\n";
        let got: Vec<(String, f64)> = parse_csv(out)
            .into_iter()
            .map(|r| (r.command, r.requests_per_sec))
            .collect();
        assert_eq!(
            got,
            [
                ("PING_INLINE".to_string(), 86956.52),
                ("ZRANGEBYSCORE k 0 +inf LIMIT 0 10".to_string(), 70000.0)
            ]
        );
    }

    #[test]
    fn csv_fields_handle_quotes_commas_and_bare_fields() {
        assert_eq!(
            csv_fields(r#""a,b","say ""hi""",3"#),
            ["a,b", r#"say "hi""#, "3"]
        );
        assert_eq!(csv_fields("x,1.5"), ["x", "1.5"]);
        assert!(csv_fields("").is_empty());
    }
}
