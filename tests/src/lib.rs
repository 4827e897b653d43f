//! Test harness: a real `receiptd` on an ephemeral port (in-process, or as a
//! child process for crash tests) and clients over a real TCP socket.

#![allow(missing_docs)]

use receipts_proto::v1 as pb;
use receipts_server::auth::{Role, mint_token};
use receipts_server::config::ServeArgs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub mod load;
pub mod pki;
pub mod recipients;
pub mod tier;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

pub use pb::receipt_backend_service_client::ReceiptBackendServiceClient;
pub use pb::receipt_service_client::ReceiptServiceClient;
pub use recipients::{all_recipients, list_recipients};

/// The HS256 secret every test server accepts.
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// Adds a bearer token (or nothing) to every call.
#[derive(Clone, Debug)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        Ok(req)
    }
}

/// A user-facing client.
pub type UserClient = ReceiptServiceClient<InterceptedService<Channel, Bearer>>;
/// A backend client.
pub type BackendClient = ReceiptBackendServiceClient<InterceptedService<Channel, Bearer>>;

/// A token for `id` with `role`, valid for an hour.
pub fn token(id: Uuid, role: Role) -> String {
    mint_token(SECRET, id, role, Duration::from_secs(3600)).expect("mint")
}

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

/// Through the Rust SDK: a conversation of `members` and one message from
/// the first of them at seq 1; returns (conversation, message).
pub async fn sdk_chat(backend: &receipts_sdk::BackendClient, members: &[Uuid]) -> (Uuid, Uuid) {
    let (conv, msg) = (Uuid::now_v7(), Uuid::now_v7());
    backend
        .create_conversation(conv, members)
        .await
        .expect("create the conversation");
    backend
        .register_messages(&[receipts_sdk::NewMessage {
            message_id: msg,
            conversation_id: conv,
            seq: 1,
            sender_id: members[0],
            sent_at: None,
            thread_root_message_id: None,
        }])
        .await
        .expect("register the message");
    (conv, msg)
}

/// A conversation created through the backend API, with message helpers.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub id: Uuid,
    pub members: Vec<Uuid>,
    next_seq: i64,
}

impl Conversation {
    /// Creates a conversation with `n` fresh members.
    pub async fn create(backend: &mut BackendClient, n: usize) -> Self {
        let members: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        Self::create_with(backend, members).await
    }

    /// Creates a conversation with the given members.
    pub async fn create_with(backend: &mut BackendClient, members: Vec<Uuid>) -> Self {
        let id = Uuid::now_v7();
        backend
            .create_conversation(pb::CreateConversationRequest {
                conversation_id: id.to_string(),
                member_ids: members.iter().map(Uuid::to_string).collect(),
            })
            .await
            .expect("create conversation");
        Self {
            id,
            members,
            next_seq: 1,
        }
    }

    /// Registers a message from `sender` at the next seq; returns its id.
    pub async fn send(&mut self, backend: &mut BackendClient, sender: Uuid) -> Uuid {
        let id = Uuid::now_v7();
        let seq = self.next_seq;
        self.next_seq += 1;
        backend
            .register_messages(pb::RegisterMessagesRequest {
                messages: vec![registration(id, self.id, seq, sender)],
            })
            .await
            .expect("register message");
        id
    }

    /// Registers `n` messages from `sender` at the next seqs in one call;
    /// returns their ids in seq order.
    pub async fn send_many(
        &mut self,
        backend: &mut BackendClient,
        sender: Uuid,
        n: usize,
    ) -> Vec<Uuid> {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        self.send_ids(backend, sender, &ids).await;
        ids
    }

    /// Registers messages `ids` from `sender` at the next seqs in one call;
    /// returns how many were newly registered.
    pub async fn send_ids(
        &mut self,
        backend: &mut BackendClient,
        sender: Uuid,
        ids: &[Uuid],
    ) -> i64 {
        let seq = self.next_seq;
        self.next_seq += ids.len() as i64;
        backend
            .register_messages(pb::RegisterMessagesRequest {
                messages: ids
                    .iter()
                    .zip(seq..)
                    .map(|(id, seq)| registration(*id, self.id, seq, sender))
                    .collect(),
            })
            .await
            .expect("register messages")
            .into_inner()
            .registered
    }

    /// The seq the next message will get.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Skips seqs (e.g. after registering messages by hand).
    pub fn set_next_seq(&mut self, seq: i64) {
        self.next_seq = seq;
    }

    /// Removes `user`: it no longer receives from `from_seq` on (it stays
    /// in `members`).
    pub async fn remove_member(&self, backend: &mut BackendClient, user: Uuid, from_seq: i64) {
        backend
            .remove_members(pb::RemoveMembersRequest {
                conversation_id: self.id.to_string(),
                members: vec![pb::MembershipChange {
                    user_id: user.to_string(),
                    from_seq,
                }],
            })
            .await
            .expect("remove a member");
    }

    /// Adds `user` as a member receiving from `from_seq` on (not to
    /// `members`, which stay the ones it was created with).
    pub async fn add_member(&self, backend: &mut BackendClient, user: Uuid, from_seq: i64) {
        backend
            .add_members(pb::AddMembersRequest {
                conversation_id: self.id.to_string(),
                members: vec![pb::MembershipChange {
                    user_id: user.to_string(),
                    from_seq,
                }],
            })
            .await
            .expect("add a member");
    }
}

/// A registration entry.
pub fn registration(
    id: Uuid,
    conversation: Uuid,
    seq: i64,
    sender: Uuid,
) -> pb::MessageRegistration {
    pb::MessageRegistration {
        message_id: id.to_string(),
        conversation_id: conversation.to_string(),
        seq,
        sender_id: sender.to_string(),
        sent_at_ms: 0,
        thread_root_message_id: String::new(),
    }
}

/// Marks delivered.
pub async fn deliver(client: &mut UserClient, ids: &[Uuid]) -> pb::MarkDeliveredResponse {
    client
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: ids.iter().map(Uuid::to_string).collect(),
            ..Default::default()
        })
        .await
        .expect("mark delivered")
        .into_inner()
}

/// Marks read up to `message`.
pub async fn read_up_to(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
) -> pb::MarkReadUpToResponse {
    try_read_up_to(client, conversation, message)
        .await
        .expect("mark read")
}

/// MarkReadUpTo, refused or not.
pub async fn try_read_up_to(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
) -> Result<pb::MarkReadUpToResponse, tonic::Status> {
    client
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: conversation.to_string(),
            message_id: message.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The receipts of one message (with recipients) as `client` sees them.
pub async fn receipt(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
) -> pb::MessageReceipts {
    receipt_with(client, conversation, message, true).await
}

/// The receipts of one message without the per-recipient list (counts only).
pub async fn counts_only(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
) -> pb::MessageReceipts {
    receipt_with(client, conversation, message, false).await
}

async fn receipt_with(
    client: &mut UserClient,
    conversation: Uuid,
    message: Uuid,
    include_recipients: bool,
) -> pb::MessageReceipts {
    client
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: conversation.to_string(),
            message_ids: vec![message.to_string()],
            include_recipients,
        })
        .await
        .expect("get receipts")
        .into_inner()
        .messages
        .remove(0)
}

/// Sets whether `client`'s user shares read receipts.
pub async fn set_sharing(client: &mut UserClient, on: bool) {
    client
        .update_privacy_settings(pb::UpdatePrivacySettingsRequest {
            settings: Some(pb::PrivacySettings {
                send_read_receipts: on,
            }),
        })
        .await
        .expect("update privacy");
}

/// An open subscription.
pub struct Subscription {
    pub stream: tonic::Streaming<pb::SubscribeReceiptsResponse>,
    /// The cursor of the last event received.
    pub cursor: String,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl Subscription {
    /// Subscribes (optionally from `cursor`) and reads up to the `live` marker,
    /// returning the replayed events.
    pub async fn open(
        client: &mut UserClient,
        cursor: Option<String>,
    ) -> (Self, Vec<pb::SubscribeReceiptsResponse>) {
        Self::open_with(client, cursor, false).await
    }

    /// Like [`Subscription::open`], as a client that applies ranges itself
    /// (`accept_ranges`) or not.
    pub async fn open_with(
        client: &mut UserClient,
        cursor: Option<String>,
        accept_ranges: bool,
    ) -> (Self, Vec<pb::SubscribeReceiptsResponse>) {
        let stream = client
            .subscribe_receipts(pb::SubscribeReceiptsRequest {
                cursor: cursor.clone().unwrap_or_default(),
                accept_ranges,
            })
            .await
            .expect("subscribe")
            .into_inner();
        let mut sub = Self {
            stream,
            cursor: cursor.unwrap_or_default(),
        };
        let mut replayed = Vec::new();
        loop {
            let ev = sub.next().await.expect("event before live marker");
            if matches!(
                ev.event,
                Some(pb::subscribe_receipts_response::Event::Live(_))
            ) {
                return (sub, replayed);
            }
            replayed.push(ev);
        }
    }

    /// The next event, or `None` if none arrives within 5 s.
    pub async fn next(&mut self) -> Option<pb::SubscribeReceiptsResponse> {
        self.next_within(Duration::from_secs(5)).await
    }

    /// The next event within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<pb::SubscribeReceiptsResponse> {
        match tokio::time::timeout(wait, self.stream.message()).await {
            Ok(Ok(Some(ev))) => {
                self.cursor = ev.cursor.clone();
                Some(ev)
            }
            _ => None,
        }
    }

    /// Waits for the next receipts event and returns its messages.
    pub async fn next_receipts(&mut self) -> pb::ConversationReceipts {
        loop {
            let ev = self.next().await.expect("expected a receipts event");
            if let Some(pb::subscribe_receipts_response::Event::Receipts(r)) = ev.event {
                return r;
            }
        }
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

/// The newest (delivered count, read count, tick) of each message in a run
/// of events.
pub fn latest_states(
    events: &[pb::SubscribeReceiptsResponse],
) -> std::collections::BTreeMap<String, (i64, i64, i32)> {
    let mut out = std::collections::BTreeMap::new();
    for ev in events {
        if let Some(pb::subscribe_receipts_response::Event::Receipts(r)) = &ev.event {
            for m in &r.messages {
                out.insert(
                    m.message_id.clone(),
                    (m.delivered_count, m.read_count, m.tick),
                );
            }
        }
    }
    out
}

/// The log offset of an event's cursor.
pub fn event_offset(ev: &pb::SubscribeReceiptsResponse) -> u64 {
    receipts_server::domain::Cursor::decode(&ev.cursor)
        .expect("cursor")
        .offset
}

/// Graceful shutdown, end to end: a sender subscribed on node `a`, a client
/// that never finishes its call, and writes acknowledged just before SIGTERM
/// (one still in its group window). `a` must end the stream with a
/// resumable UNAVAILABLE, flush, and exit 0 within `grace` plus a margin
/// despite the stuck client; the sender then resumes from its last cursor
/// on the node `start_b` starts and sees every acknowledged write exactly
/// once, then live events.
pub async fn shutdown_then_resume_elsewhere<F, Fut>(mut a: ChildServer, grace: Duration, start_b: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ChildServer>,
{
    use pb::subscribe_receipts_response::Event as E;
    let mut backend = a.backend().await;
    let mut group = Conversation::create(&mut backend, 3).await;
    let (alice, bob, carol) = (group.members[0], group.members[1], group.members[2]);
    let dave = Uuid::now_v7();
    let mut direct = Conversation::create_with(&mut backend, vec![alice, dave]).await;
    let g: Vec<Uuid> = vec![
        group.send(&mut backend, alice).await,
        group.send(&mut backend, alice).await,
        group.send(&mut backend, alice).await,
    ];
    let d1 = direct.send(&mut backend, alice).await;

    let mut alice_a = a.user(alice).await;
    let (mut sub, _) = Subscription::open(&mut alice_a, None).await;
    let mut bob_a = a.user(bob).await;
    deliver(&mut bob_a, &[g[0]]).await;
    let first = sub.next().await.expect("the first group summary");
    let mut seen = vec![first];
    // Everything else alice's stream carries, until it ends.
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(30), sub.stream.message()).await {
                Ok(Ok(Some(ev))) => events.push(ev),
                Ok(Ok(None)) => break tonic::Status::ok("ended without a status"),
                Ok(Err(status)) => break status,
                Err(_) => panic!("the stream neither ended nor carried events for 30 s"),
            }
        };
        (events, end)
    });

    let stuck = stalled_call(a.addr, bob);
    // Acknowledged just before the signal: a group read still in its window,
    // and a direct delivery.
    deliver(&mut bob_a, &[g[1]]).await;
    read_up_to(&mut bob_a, group.id, g[1]).await;
    let mut dave_a = a.user(dave).await;
    deliver(&mut dave_a, &[d1]).await;

    let started = tokio::time::Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let status = a.terminate();
        (a, status)
    });
    let (events, end) = collector.await.expect("collector");
    let (_a, status) = exit.await.expect("terminate");
    let status = status.expect("exit status");
    assert!(status.success(), "exit 0 on SIGTERM, got {status:?}");
    assert!(
        started.elapsed() < grace + Duration::from_secs(10),
        "shutdown took {:?} despite a {grace:?} grace",
        started.elapsed()
    );
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(
        end.message().contains("resume from your last cursor"),
        "{}",
        end.message()
    );
    let _ = stuck.await;
    seen.extend(events);
    let cursor = seen.last().expect("events").cursor.clone();

    // Resume elsewhere.
    let b = start_b().await;
    let mut alice_b = b.user(alice).await;
    let (mut sub, replayed) = Subscription::open(&mut alice_b, Some(cursor.clone())).await;
    assert!(
        !replayed
            .iter()
            .any(|e| matches!(e.event, Some(E::Reset(_)))),
        "a resume, not a reset"
    );
    let last_seen = event_offset(seen.last().expect("events"));
    assert!(
        replayed.iter().all(|e| event_offset(e) > last_seen),
        "nothing seen is replayed"
    );
    seen.extend(replayed);
    let mut offsets: Vec<u64> = seen.iter().map(event_offset).collect();
    let n = offsets.len();
    offsets.dedup();
    assert_eq!(offsets.len(), n, "no event twice");

    let states = latest_states(&seen);
    let state = |m: &Uuid| states.get(&m.to_string()).copied();
    let (delivered, read) = (pb::Tick::Delivered as i32, pb::Tick::Read as i32);
    assert_eq!(
        state(&g[0]).map(|s| (s.0, s.1)),
        Some((1, 1)),
        "g0: bob has it and read it"
    );
    assert_eq!(
        state(&g[1]).map(|s| (s.0, s.1)),
        Some((1, 1)),
        "g1: the windowed read"
    );
    assert_eq!(state(&d1).map(|s| s.2), Some(delivered), "d1 delivered");

    // And live on the new node.
    let mut carol_b = b.user(carol).await;
    read_up_to(&mut carol_b, group.id, g[2]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = match tokio::time::timeout(Duration::from_secs(5), sub.stream.message()).await {
            Ok(Ok(Some(ev))) => ev,
            other => panic!("a live event on the new node, got {other:?}"),
        };
        seen.push(ev);
        let states = latest_states(&seen);
        if states.get(&g[2].to_string()).map(|s| s.1) == Some(1)
            && states.get(&g[0].to_string()).map(|s| s.2) == Some(read)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol's read never arrived"
        );
    }
    drop(b);
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
