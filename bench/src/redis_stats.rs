//! `--redis-url`: what the server under test asks of its Redis in the
//! measured window. `INFO commandstats`, `INFO memory` and `DBSIZE` are read
//! just before and just after the window; the differences give Redis
//! commands per receipts RPC and memory growth per registered message.
//!
//! Redis counts every command it runs, wherever it comes from: the server's
//! message registration and background work (flushes, fan-out) are in the
//! count, and so is each command a Lua script runs (besides the EVALSHA).
//! Other clients of the same Redis would be too; the tool's own reads are
//! taken out.

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How the memory growth per message must be read.
pub const MEMORY_NOTE: &str =
    "Redis memory growth per registered message (includes logs/outbox/queues not yet drained)";

/// A standalone Redis (or one node), connected.
pub struct Probe {
    conn: MultiplexedConnection,
    /// Where it is, as redis-benchmark needs it.
    pub target: Target,
}

/// The address and credentials of a Redis, from its URL.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` or the socket path, and the database: for reports
    /// (no credentials).
    pub name: String,
    pub addr: ConnectionAddr,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// One command's counters in `INFO commandstats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandStat {
    pub calls: u64,
    /// CPU time Redis spent in the command, µs.
    pub usec: u64,
}

/// What Redis reports at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    commands: BTreeMap<String, CommandStat>,
    used_memory: u64,
    keys: u64,
}

/// The calls one [`Probe::snapshot`] adds to the next snapshot's counts:
/// Redis updates a command's counters after running it, so a snapshot's
/// first `INFO commandstats` is not in its own reading but its `INFO
/// memory` and `DBSIZE` are in the next one, and so is that INFO.
const OWN_CALLS: [(&str, u64); 2] = [("info", 2), ("dbsize", 1)];

impl Probe {
    /// Connects and checks that Redis answers.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .with_context(|| format!("--redis-url {url:?} is not a Redis URL"))?;
        let info = client.get_connection_info();
        let addr = info.addr().clone();
        let settings = info.redis_settings();
        let target = Target {
            name: format!("{addr}/{}", settings.db()),
            addr,
            db: settings.db(),
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("cannot reach Redis at {} (--redis-url)", target.name))?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .with_context(|| format!("Redis at {} does not answer PING", target.name))?;
        Ok(Self { conn, target })
    }

    /// Reads the counters, the memory and the key count, in that order
    /// (see [`OWN_CALLS`]).
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let stats: String = self.query(redis::cmd("INFO").arg("commandstats")).await?;
        let memory: String = self.query(redis::cmd("INFO").arg("memory")).await?;
        let keys: u64 = self.query(&redis::cmd("DBSIZE")).await?;
        let commands = parse_commandstats(&stats);
        let used_memory = info_field(&memory, "used_memory")
            .with_context(|| format!("no used_memory in INFO memory from {}", self.target.name))?;
        Ok(Snapshot {
            commands,
            used_memory,
            keys,
        })
    }

    /// Runs one command (for the tool's own keys).
    pub async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> anyhow::Result<T> {
        cmd.query_async(&mut self.conn)
            .await
            .with_context(|| format!("Redis at {}", self.target.name))
    }
}

/// Parses `INFO commandstats` (`cmdstat_hset:calls=20001,usec=5016,...`;
/// subcommands appear as `cmdstat_config|get`). Other lines are skipped.
pub fn parse_commandstats(info: &str) -> BTreeMap<String, CommandStat> {
    let mut out = BTreeMap::new();
    for line in info.lines().map(str::trim) {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let mut stat = CommandStat::default();
        for (key, value) in fields.split(',').filter_map(|f| f.split_once('=')) {
            match key {
                "calls" => stat.calls = value.parse().unwrap_or(0),
                "usec" => stat.usec = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        out.insert(name.to_ascii_lowercase(), stat);
    }
    out
}

/// The integer field `name` of an INFO reply (`used_memory:1038320`).
pub fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.parse().ok())
}

/// Redis in the measured window.
#[derive(Clone, Debug, Serialize)]
pub struct WindowStats {
    /// `host:port/db` of the Redis read.
    pub server: String,
    /// Receipts RPCs that succeeded in the window.
    pub receipts_rpcs: u64,
    /// Messages the tool registered in the window.
    pub messages_registered: u64,
    /// Commands Redis ran in the window, the tool's own INFO and DBSIZE
    /// taken out.
    pub commands: u64,
    pub own_commands_excluded: u64,
    pub commands_per_receipts_rpc: Option<f64>,
    /// Redis CPU time inside commands per receipts RPC, µs (a script's
    /// commands count in the script's time and in their own).
    pub command_usec_per_receipts_rpc: Option<f64>,
    /// The most called commands, most first (at most 8).
    pub top_commands: Vec<TopCommand>,
    pub used_memory_before_bytes: u64,
    pub used_memory_after_bytes: u64,
    pub used_memory_growth_bytes: i64,
    /// See `memory_note`.
    pub used_memory_growth_per_registered_message_bytes: Option<f64>,
    pub memory_note: &'static str,
    pub keys_before: u64,
    pub keys_after: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopCommand {
    pub command: String,
    pub calls: u64,
    pub per_receipts_rpc: Option<f64>,
}

/// Compares two snapshots taken by [`Probe::snapshot`], one after the
/// other, around a window with `receipts_rpcs` RPCs and `registered`
/// messages.
pub fn window(
    server: &str,
    before: &Snapshot,
    after: &Snapshot,
    receipts_rpcs: u64,
    registered: u64,
) -> WindowStats {
    let mut delta: BTreeMap<&str, CommandStat> = after
        .commands
        .iter()
        .map(|(name, a)| {
            let b = before.commands.get(name).copied().unwrap_or_default();
            let d = CommandStat {
                calls: a.calls.saturating_sub(b.calls),
                usec: a.usec.saturating_sub(b.usec),
            };
            (name.as_str(), d)
        })
        .collect();
    let mut own = 0;
    for (name, calls) in OWN_CALLS {
        if let Some(d) = delta.get_mut(name) {
            let taken = calls.min(d.calls);
            // Their CPU time too, at the command's average over the window.
            d.usec -= d.usec * taken / d.calls.max(1);
            d.calls -= taken;
            own += taken;
        }
    }
    let per_rpc = |n: u64| (receipts_rpcs > 0).then(|| n as f64 / receipts_rpcs as f64);
    let commands = delta.values().map(|d| d.calls).sum();
    let usec = delta.values().map(|d| d.usec).sum();
    let mut top: Vec<(&str, CommandStat)> =
        delta.into_iter().filter(|(_, d)| d.calls > 0).collect();
    top.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(b.0)));
    let growth = after.used_memory as i64 - before.used_memory as i64;
    WindowStats {
        server: server.to_string(),
        receipts_rpcs,
        messages_registered: registered,
        commands,
        own_commands_excluded: own,
        commands_per_receipts_rpc: per_rpc(commands),
        command_usec_per_receipts_rpc: per_rpc(usec),
        top_commands: top
            .into_iter()
            .take(8)
            .map(|(name, d)| TopCommand {
                command: name.to_string(),
                calls: d.calls,
                per_receipts_rpc: per_rpc(d.calls),
            })
            .collect(),
        used_memory_before_bytes: before.used_memory,
        used_memory_after_bytes: after.used_memory,
        used_memory_growth_bytes: growth,
        used_memory_growth_per_registered_message_bytes: (registered > 0)
            .then(|| growth as f64 / registered as f64),
        memory_note: MEMORY_NOTE,
        keys_before: before.keys,
        keys_after: after.keys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `INFO commandstats` from Redis 7.0 (CRLF line ends, subcommands).
    const COMMANDSTATS: &str = "# Commandstats\r\n\
        cmdstat_config|get:calls=4,usec=24,usec_per_call=6.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_hset:calls=20001,usec=5016,usec_per_call=0.25,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_evalsha:calls=120,usec=9000,usec_per_call=75.00,rejected_calls=0,failed_calls=2\r\n\
        cmdstat_info:calls=7,usec=310,usec_per_call=44.29,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_dbsize:calls=1,usec=1,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_get:calls=20000,usec=2538,usec_per_call=0.13,rejected_calls=0,failed_calls=0\r\n";

    /// The start of `INFO memory` from Redis 7.0.
    const MEMORY: &str = "# Memory\r\n\
        used_memory:1038320\r\n\
        used_memory_human:1013.98K\r\n\
        used_memory_rss:7503872\r\n\
        used_memory_rss_human:7.16M\r\n\
        used_memory_peak:1181648\r\n";

    fn snapshot(commands: &str, used_memory: u64, keys: u64) -> Snapshot {
        Snapshot {
            commands: parse_commandstats(commands),
            used_memory,
            keys,
        }
    }

    #[test]
    fn commandstats_parse_calls_and_usec_per_command_and_subcommand() {
        let stats = parse_commandstats(COMMANDSTATS);
        assert_eq!(stats.len(), 6);
        assert_eq!(
            stats["hset"],
            CommandStat {
                calls: 20001,
                usec: 5016
            }
        );
        assert_eq!(stats["config|get"].calls, 4);
        assert_eq!(stats["evalsha"].usec, 9000);
        assert!(parse_commandstats("# Commandstats\r\n\r\n").is_empty());
    }

    #[test]
    fn info_field_reads_an_exact_field_name() {
        assert_eq!(info_field(MEMORY, "used_memory"), Some(1_038_320));
        assert_eq!(info_field(MEMORY, "used_memory_rss"), Some(7_503_872));
        assert_eq!(info_field(MEMORY, "used_memory_human"), None);
        assert_eq!(info_field(MEMORY, "maxmemory"), None);
    }

    #[test]
    fn window_takes_out_the_tools_own_calls_and_divides_by_rpcs() {
        let before = snapshot(COMMANDSTATS, 1_000_000, 10);
        let after = snapshot(
            "# Commandstats\r\n\
            cmdstat_config|get:calls=4,usec=24,usec_per_call=6.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_hset:calls=20401,usec=5416,usec_per_call=0.25,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_evalsha:calls=320,usec=24000,usec_per_call=75.00,rejected_calls=0,failed_calls=2\r\n\
            cmdstat_info:calls=9,usec=400,usec_per_call=44.44,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_dbsize:calls=2,usec=2,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_get:calls=20000,usec=2538,usec_per_call=0.13,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_xadd:calls=100,usec=500,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n",
            1_200_000,
            60,
        );
        let w = window("127.0.0.1:6379/0", &before, &after, 200, 50);
        // 400 HSET + 200 EVALSHA + 100 XADD; 2 INFO and 1 DBSIZE were the tool's.
        assert_eq!(w.commands, 700);
        assert_eq!(w.own_commands_excluded, 3);
        assert_eq!(w.commands_per_receipts_rpc, Some(3.5));
        let top: Vec<(&str, u64)> = w
            .top_commands
            .iter()
            .map(|t| (t.command.as_str(), t.calls))
            .collect();
        assert_eq!(top, [("hset", 400), ("evalsha", 200), ("xadd", 100)]);
        assert_eq!(w.used_memory_growth_bytes, 200_000);
        assert_eq!(
            w.used_memory_growth_per_registered_message_bytes,
            Some(4000.0)
        );
        assert_eq!((w.keys_before, w.keys_after), (10, 60));
    }

    #[test]
    fn window_without_rpcs_or_messages_has_no_ratios() {
        let s = snapshot(COMMANDSTATS, 5, 0);
        let w = window("x", &s, &s, 0, 0);
        assert_eq!(w.commands, 0);
        assert_eq!(w.commands_per_receipts_rpc, None);
        assert_eq!(w.used_memory_growth_per_registered_message_bytes, None);
        assert!(w.top_commands.is_empty());
    }
}
