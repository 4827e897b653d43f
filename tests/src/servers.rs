//! Servers and how to reach and observe them: the in-process [`TestServer`],
//! the `receiptd` child process [`ChildServer`], their configuration and
//! backends, and raw probes (health, metrics, HTTP/1.1, a stalled call).

use crate::{
    BackendClient, Bearer, ReceiptBackendServiceClient, ReceiptServiceClient, SECRET, UserClient,
    token,
};
use receipts_proto::v1 as pb;
use receipts_server::auth::Role;
use receipts_server::config::ServeArgs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;
use uuid::Uuid;

/// Settings for a test server in `dir` (dev mode on loopback, and tokens),
/// on the store the run is parameterised with (see [`TestStore`]).
pub fn test_config(dir: &Path) -> ServeArgs {
    let mut c = ServeArgs::for_tests(dir.to_path_buf());
    c.jwt_secret = Some(SECRET.into());
    c.group_window_ms = 100;
    c.shutdown_grace_ms = 2000;
    // Behaviour tests write far faster than a person; tests/tests/protection.rs
    // covers the per-user limits.
    c.user_writes_per_sec = 0;
    c.user_subscribes_per_sec = 0;
    TestStore::from_env().configure(&mut c);
    c
}

/// The store every behaviour test runs against, chosen for the whole run by
/// `RECEIPTS_TEST_STORE`: `embedded` (default), `redis` (a standalone Redis
/// at `RECEIPTS_TEST_REDIS` plus Cassandra at `RECEIPTS_TEST_CASSANDRA`) or
/// `redis-cluster` (the cluster seeds in `RECEIPTS_TEST_REDIS_CLUSTER` plus
/// Cassandra). A missing backend setting fails the test, never skips it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestStore {
    Embedded,
    Redis { urls: Vec<String>, cluster: bool },
}

impl TestStore {
    pub fn from_env() -> Self {
        match std::env::var("RECEIPTS_TEST_STORE").as_deref() {
            Err(_) | Ok("") | Ok("embedded") => Self::Embedded,
            Ok("redis") => Self::Redis {
                urls: vec![required_env("RECEIPTS_TEST_REDIS")],
                cluster: false,
            },
            Ok("redis-cluster") => Self::Redis {
                urls: required_env("RECEIPTS_TEST_REDIS_CLUSTER")
                    .split(',')
                    .map(str::to_string)
                    .collect(),
                cluster: true,
            },
            Ok(other) => {
                panic!("RECEIPTS_TEST_STORE={other}: expected embedded, redis or redis-cluster")
            }
        }
    }

    /// Points `c` at this store; Redis runs get a fresh key prefix per server
    /// (so each test has its own logs and epochs) and share one keyspace.
    pub fn configure(&self, c: &mut ServeArgs) {
        use receipts_server::config::StoreKind;
        let Self::Redis { urls, cluster } = self else {
            return;
        };
        c.store = StoreKind::RedisScylla;
        c.redis_urls = urls.clone();
        c.redis_cluster = *cluster;
        // The test cluster has a replica per master (scripts/backends.sh):
        // its suite acknowledges every write only once a replica has it, so
        // every rule is shown to hold with --redis-wait-replicas too.
        if *cluster {
            c.redis_wait_replicas = 1;
            c.redis_wait_timeout_ms = 5_000;
        }
        c.redis_prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        c.scylla_nodes = vec![required_env("RECEIPTS_TEST_CASSANDRA")];
        c.scylla_keyspace =
            std::env::var("RECEIPTS_TEST_KEYSPACE").unwrap_or_else(|_| "receipts_test".into());
        c.flush_interval_ms = 200;
    }
}

/// An environment variable a backend test needs: panics (fails the test)
/// when it is missing, so a backend that did not start is never skipped.
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the backend this test needs did not start (run scripts/test.sh, which starts it)"
        ),
    }
}

/// Creates the Scylla schema once per test process, before servers start in
/// parallel (each server also runs the idempotent migration).
pub async fn prepare_backends(c: &ServeArgs) {
    use receipts_server::config::StoreKind;
    static SCHEMA: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    if c.store != StoreKind::RedisScylla {
        return;
    }
    SCHEMA
        .get_or_init(|| async {
            receipts_server::store::scylla::ScyllaPersistence::connect(&scylla_options(c))
                .await
                .expect("cassandra reachable and schema created");
        })
        .await;
}

/// `receiptd --jwt-secret … --store redis-scylla <args> config`: its exit
/// code, stderr and stdout.
pub fn production_config(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(receiptd_path())
        .args(["--jwt-secret", SECRET, "--store", "redis-scylla"])
        .args(args)
        .arg("config")
        .output()
        .expect("run receiptd config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The Scylla settings of `c`.
pub fn scylla_options(c: &ServeArgs) -> receipts_server::store::scylla::ScyllaOptions {
    receipts_server::store::scylla::ScyllaOptions {
        nodes: c.scylla_nodes.clone(),
        keyspace: c.scylla_keyspace.clone(),
        replication: c.scylla_replication.clone(),
        retention: Duration::from_secs(c.retention_days * 86_400),
        access: c.scylla_access.clone(),
    }
}

/// A server running inside the test process on `127.0.0.1:0`.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts with the default test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts after `tweak` adjusted the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut ServeArgs)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        prepare_backends(&config).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            receipts_server::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("server run");
        });
        wait_serving(addr).await;
        Self {
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        channel(self.addr).await
    }

    /// A client acting as `user` (with a valid user token).
    pub async fn user(&self, user: Uuid) -> UserClient {
        ReceiptServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token(user, Role::User))),
        )
    }

    /// A client with an arbitrary (or no) token.
    pub async fn user_with_token(&self, token: Option<String>) -> UserClient {
        ReceiptServiceClient::with_interceptor(self.channel().await, Bearer(token))
    }

    /// The messaging backend.
    pub async fn backend(&self) -> BackendClient {
        ReceiptBackendServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token(Uuid::new_v4(), Role::Service))),
        )
    }

    /// Stops gracefully and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Connects to `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

/// Polls grpc.health.v1 until the receipts service reports SERVING.
pub async fn wait_serving(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
            let req = tonic_health::pb::HealthCheckRequest {
                service: "receipts.v1.ReceiptService".into(),
            };
            let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if let Ok(resp) = health.check(req).await
                && resp.get_ref().status == serving
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server at {addr} never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `receiptd` child process (for crash and restart tests); killed on drop.
#[derive(Debug)]
pub struct ChildServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Option<std::process::Child>,
}

/// Where cargo put the `receiptd` binary (built by the test command).
pub fn receiptd_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("receiptd");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p receipts-server --bin receiptd`",
        bin.display()
    );
    bin
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl ChildServer {
    /// Starts `receiptd` on `port` with `data_dir` and waits until SERVING.
    pub async fn start(data_dir: &Path, port: u16) -> Self {
        Self::start_with_args(data_dir, port, &[]).await
    }

    /// Like [`ChildServer::start`], with extra command-line flags.
    pub async fn start_with_args(data_dir: &Path, port: u16, extra: &[String]) -> Self {
        Self::start_with_env(data_dir, port, extra, &[]).await
    }

    /// Like [`ChildServer::start_with_args`], with extra environment
    /// variables. Per-user rate limits are off (through the environment, so
    /// a flag can turn them back on): tests write faster than people.
    pub async fn start_with_env(
        data_dir: &Path,
        port: u16,
        extra: &[String],
        env: &[(&str, String)],
    ) -> Self {
        let server = Self::spawn(data_dir, port, extra, env);
        wait_serving(server.addr).await;
        server
    }

    /// Starts `receiptd` as [`ChildServer::start_with_env`] does, without
    /// waiting for it (for a listener the plain-text probe cannot reach).
    pub fn spawn(data_dir: &Path, port: u16, extra: &[String], env: &[(&str, String)]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = std::process::Command::new(receiptd_path())
            .env("RECEIPTS_USER_WRITES_PER_SEC", "0")
            .env("RECEIPTS_USER_SUBSCRIBES_PER_SEC", "0")
            // Short group windows keep tests fast; a flag in `extra` wins.
            .env("RECEIPTS_GROUP_WINDOW_MS", "100")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(extra)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--jwt-secret")
            .arg(SECRET)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn receiptd");
        Self {
            addr,
            data_dir: data_dir.to_path_buf(),
            child: Some(child),
        }
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Waits for the process to exit on its own; returns the exit status.
    pub fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take()?.wait().ok()
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = c.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        c.wait().ok()
    }

    pub async fn user(&self, user: Uuid) -> UserClient {
        ReceiptServiceClient::with_interceptor(
            channel(self.addr).await,
            Bearer(Some(token(user, Role::User))),
        )
    }

    pub async fn backend(&self) -> BackendClient {
        ReceiptBackendServiceClient::with_interceptor(
            channel(self.addr).await,
            Bearer(Some(token(Uuid::new_v4(), Role::Service))),
        )
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `GET /metrics` from a `--metrics-listen` address: the response body.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics port reachable");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: receipts\r\nConnection: close\r\n\r\n")
        .await
        .expect("send scrape");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read scrape");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "scrape answered {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "scrape content type: {head}"
    );
    body.to_string()
}

/// The value of the sample `series` (name plus labels exactly as rendered,
/// e.g. `receipts_resets_total{reason="expired"}`), 0 if absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().expect("numeric sample"))
        })
        .unwrap_or(0.0)
}

/// Starts a unary call whose request message never arrives, so the server
/// holds it in flight (a slow or stuck client) until the handle is aborted.
/// Authenticated as `user`, so it gets past the interceptor.
pub fn stalled_call(addr: SocketAddr, user: Uuid) -> tokio::task::JoinHandle<tonic::Status> {
    tokio::spawn(async move {
        let mut grpc = tonic::client::Grpc::new(channel(addr).await);
        grpc.ready().await.expect("ready");
        let mut req = tonic::Request::new(futures::stream::pending::<pb::GetReceiptsRequest>());
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token(user, Role::User))
                .parse()
                .expect("ascii"),
        );
        let path = http::uri::PathAndQuery::from_static("/receipts.v1.ReceiptService/GetReceipts");
        let codec =
            tonic_prost::ProstCodec::<pb::GetReceiptsRequest, pb::GetReceiptsResponse>::default();
        match grpc.client_streaming(req, path, codec).await {
            Ok(_) => tonic::Status::ok("answered"),
            Err(s) => s,
        }
    })
}

/// Sends raw bytes (an HTTP/1.1 request) to `addr` and returns everything
/// the server sent until it closed the connection (10 s at most).
pub async fn http1_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    out
}
