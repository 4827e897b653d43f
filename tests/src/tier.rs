//! The production tier for tests across real processes: a deployment on the
//! shared Redis and Cassandra ([`Tier`]), a `redis-server` or a Redis
//! Cluster a test owns and may kill, and a proxy that cuts Cassandra off.

use crate::{ChildServer, channel, free_port, required_env};
use receipts_server::store::scylla::{ScyllaOptions, ScyllaPersistence};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::{Instant, sleep};
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

pub const KEYSPACE: &str = "receipts_prod_test";

/// The recipients Cassandra holds as having message `m` delivered, with the
/// time: the members whose persisted delivery runs cover its seq and who
/// receive it (a run may span seqs that are not the member's to receive).
pub async fn delivered_in_scylla(
    s: &ScyllaPersistence,
    m: Uuid,
) -> Result<Vec<(Uuid, i64)>, receipts_server::error::ServiceError> {
    let Some(msg) = s.message(m).await? else {
        return Ok(Vec::new());
    };
    let members = s
        .conversation(msg.conversation)
        .await?
        .map(|image| image.members)
        .unwrap_or_default();
    let mut out: Vec<(Uuid, i64)> = s
        .runs(msg.conversation)
        .await?
        .into_iter()
        .filter(|(u, r)| {
            r.covers(msg.seq)
                && members
                    .iter()
                    .any(|(v, ms)| v == u && ms.receives(*u, msg.sender, msg.seq))
        })
        .map(|(u, r)| (u, r.at))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// One deployment: a key prefix of its own on the shared Redis, the shared
/// test keyspace, and the nodes' (unused) data directories.
pub struct Tier {
    pub redis_url: String,
    pub prefix: String,
    pub dir: TempDir,
    pub scylla: ScyllaPersistence,
}

impl Tier {
    pub async fn new() -> Self {
        Self::with_redis(required_env("RECEIPTS_TEST_REDIS")).await
    }

    pub async fn with_redis(redis_url: String) -> Self {
        let cassandra = required_env("RECEIPTS_TEST_CASSANDRA");
        let scylla = ScyllaPersistence::connect(&ScyllaOptions {
            nodes: vec![cassandra],
            keyspace: KEYSPACE.into(),
            ..ScyllaOptions::default()
        })
        .await
        .expect("Cassandra reachable (schema created)");
        Self {
            redis_url,
            prefix: format!("p{}", &Uuid::new_v4().simple().to_string()[..12]),
            dir: tempfile::tempdir().expect("tempdir"),
            scylla,
        }
    }

    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--store",
            "redis-scylla",
            "--redis-urls",
            &self.redis_url,
            "--redis-prefix",
            &self.prefix,
            "--scylla-nodes",
            &required_env("RECEIPTS_TEST_CASSANDRA"),
            "--scylla-keyspace",
            KEYSPACE,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts a node flushing to Cassandra every 200 ms.
    pub async fn node(&self) -> ChildServer {
        self.node_with(&["--flush-interval-ms", "200"]).await
    }

    /// Starts a node that never flushes on its interval within a test (only
    /// at shutdown), with a 1 s shutdown grace.
    pub async fn shutdown_flushing_node(&self) -> ChildServer {
        self.node_with(&[
            "--flush-interval-ms",
            "3600000",
            "--shutdown-grace-ms",
            "1000",
        ])
        .await
    }

    pub async fn node_with(&self, extra: &[&str]) -> ChildServer {
        let data = self.dir.path().join(Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&data).expect("node dir");
        ChildServer::start_with_args(&data, free_port(), &self.args(extra)).await
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis reachable")
    }

    /// Every key of this deployment.
    pub async fn keys(&self) -> Vec<String> {
        let mut con = self.redis().await;
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .expect("scan");
            out.extend(batch);
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }
}

/// One numeric field of Redis's `INFO section`.
pub async fn redis_info(
    con: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(con)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
}

/// Waits (up to 30 s) until the metric `series` on the metrics endpoint
/// `addr` satisfies `check`.
pub async fn eventually_metric(
    what: &str,
    addr: std::net::SocketAddr,
    series: &str,
    check: impl Fn(f64) -> bool,
) {
    let check = &check;
    eventually(what, || async move {
        check(crate::sample(&crate::scrape(addr).await, series))
    })
    .await;
}

/// Waits (up to 30 s) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// A `redis-server` owned by one test: no persistence (unless `extra` turns
/// it on, e.g. `--appendonly yes`), killed on drop.
pub struct OwnedRedis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl OwnedRedis {
    pub fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// Started with extra arguments (kept for restarts).
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Self {
            port,
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/backends.sh install puts it on PATH)");
        self.child = Some(child);
        wait_port(self.port, true);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false);
    }

    /// A clean stop (SIGTERM: Redis writes its AOF and exits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        wait_port(self.port, false);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn wait_port(port: u16, open: bool) {
    // Generous: a 10 s wait timed out once while the production suite's
    // parallel tests (each with its servers) loaded this 2-core machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() != open {
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} never became {}",
            if open { "open" } else { "closed" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn health(addr: std::net::SocketAddr) -> Option<ServingStatus> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel(addr).await);
    let resp = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "receipts.v1.ReceiptService".into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(resp.into_inner().status).ok()
}

/// A TCP proxy in front of Cassandra that a test can cut: while cut, every
/// open connection is closed and new ones are closed at once, as when
/// Cassandra is stopped. Only this test's nodes go through it, so the
/// shared Cassandra stays up for the tests running beside it.
pub struct CassandraProxy {
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CassandraProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (cut, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if *watch.borrow() {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, cut, task }
    }

    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn restore(&self) {
        let _ = self.cut.send(false);
    }
}

impl Drop for CassandraProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Redis Cluster owned by one test: 3 masters with a replica each, so
/// that the test can fail masters over.
pub struct OwnedCluster {
    pub nodes: Vec<OwnedRedis>,
}

impl OwnedCluster {
    pub async fn start() -> Self {
        let nodes: Vec<OwnedRedis> = (0..6)
            .map(|_| {
                OwnedRedis::start_with(
                    free_port(),
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "cluster create: {out:?}");
        let cluster = Self { nodes };
        eventually("the cluster is ok with every replica in sync", || async {
            let mut synced = 0;
            for n in &cluster.nodes {
                let info = cluster.info(n, "replication").await;
                if info.contains("role:master")
                    && info.contains("connected_slaves:1")
                    && info.contains("state=online")
                {
                    synced += 1;
                }
                if !cluster.cluster_info(n).await.contains("cluster_state:ok") {
                    return false;
                }
            }
            synced == 3
        })
        .await;
        cluster
    }

    pub async fn con(&self, n: &OwnedRedis) -> Option<redis::aio::MultiplexedConnection> {
        redis::Client::open(n.url())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()
    }

    pub async fn info(&self, n: &OwnedRedis, section: &str) -> String {
        let Some(mut con) = self.con(n).await else {
            return String::new();
        };
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut con)
            .await
            .unwrap_or_default()
    }

    pub async fn cluster_info(&self, n: &OwnedRedis) -> String {
        let Some(mut con) = self.con(n).await else {
            return String::new();
        };
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut con)
            .await
            .unwrap_or_default()
    }

    /// The index of a replica and of its master.
    pub async fn a_replica_and_its_master(&self, skip: &[usize]) -> (usize, usize) {
        for (i, n) in self.nodes.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            let info = self.info(n, "replication").await;
            let Some(port) = info
                .lines()
                .find_map(|l| l.strip_prefix("master_port:"))
                .and_then(|p| p.trim().parse::<u16>().ok())
            else {
                continue;
            };
            if let Some(m) = self.nodes.iter().position(|m| m.port == port)
                && !skip.contains(&m)
            {
                return (i, m);
            }
        }
        panic!("no replica left to fail over to");
    }

    pub async fn failover(&self, replica: usize, how: Option<&str>) {
        let mut con = self.con(&self.nodes[replica]).await.expect("replica");
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("FAILOVER");
        if let Some(h) = how {
            cmd.arg(h);
        }
        let _: () = cmd.query_async(&mut con).await.expect("cluster failover");
        let n = &self.nodes[replica];
        eventually("the replica took over", || async {
            self.info(n, "replication").await.contains("role:master")
        })
        .await;
    }

    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(OwnedRedis::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
