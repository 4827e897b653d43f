//! Configuration: one typed struct ([`ServeArgs`]) from flags, `RECEIPTS_*`
//! environment variables and an optional TOML file (`--config`), in that
//! order of precedence, validated before any port is bound.
//!
//! The file's keys are the flag names without the leading dashes
//! (`group-window-ms = 500`; `group_window_ms` is accepted too); list flags
//! take a TOML array. An unknown key, or a value of the wrong type, is an
//! error naming the key. docs/configuration.md lists every key.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod load;
pub use load::{LoadError, Loaded, Setting, Source, load, reference_table};

/// The receipts service.
#[derive(Debug, Parser)]
#[command(
    name = "receiptd",
    version = crate::VERSION,
    about = "Read receipts over gRPC and gRPC-web"
)]
pub struct Cli {
    /// A TOML file of settings (keys are the flag names); flags and
    /// environment variables override it.
    #[arg(long, env = "RECEIPTS_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Mint a signed HS256 token for local use, printed on stdout.
    Token(TokenArgs),
    /// Print the effective configuration as a TOML file (secrets left out,
    /// each value's source in a comment), then check it: exit 0 if valid,
    /// 64 with the reason otherwise.
    Config,
    /// Ask a running receiptd (by default this configuration's `--listen`,
    /// with TLS when `--tls-cert` is set) whether it is serving, over
    /// grpc.health.v1: exit 0 if SERVING, 1 otherwise (for container health
    /// checks and `exec` probes).
    Health(crate::probe::HealthArgs),
}

/// `receiptd token` arguments.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user (or service) id the token speaks for (`sub`).
    #[arg(long)]
    pub sub: uuid::Uuid,
    /// `user` or `service`.
    #[arg(long, default_value = "user")]
    pub role: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
}

/// Everything `receiptd` serves with.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (gRPC and gRPC-web on one port).
    #[arg(long, env = "RECEIPTS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// PEM certificate chain (leaf first) for TLS on --listen (gRPC and
    /// gRPC-web); needs --tls-key. Reloaded on SIGHUP and when the file
    /// changes.
    #[arg(long, env = "RECEIPTS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "RECEIPTS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: every connection must present a client
    /// certificate they issued (mutual TLS, for service callers); needs
    /// --tls-cert.
    #[arg(long, env = "RECEIPTS_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "RECEIPTS_DATA_DIR", default_value = "./receipts-data")]
    pub data_dir: PathBuf,

    /// HS256 secret for verifying bearer tokens (and minting with `token`:
    /// `receiptd token --jwt-secret <secret> --sub <uuid>`).
    #[arg(
        long,
        env = "RECEIPTS_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM file with an RSA or EC public key for verifying RS256/ES256 tokens.
    #[arg(long, env = "RECEIPTS_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` claim, if set.
    #[arg(long, env = "RECEIPTS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, if set.
    #[arg(long, env = "RECEIPTS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed between the token issuer and this node, in
    /// seconds, when checking `exp`, `nbf` and `iat` (at most 300).
    #[arg(long, env = "RECEIPTS_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,

    /// DEVELOPMENT ONLY: trust the `x-receipts-user` (and `x-receipts-role`)
    /// metadata instead of a token. Refused unless listening on loopback.
    #[arg(long, env = "RECEIPTS_DEV_MODE", default_value_t = false)]
    pub dev_mode: bool,

    /// Group aggregation window in milliseconds (10..=2000).
    #[arg(long, env = "RECEIPTS_GROUP_WINDOW_MS", default_value_t = 1000)]
    pub group_window_ms: u64,

    /// Most ids in one MarkDelivered, RegisterMessages, AddMembers or
    /// RemoveMembers call.
    #[arg(long, env = "RECEIPTS_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,

    /// Most message ids in one GetReceipts call.
    #[arg(long, env = "RECEIPTS_MAX_GET_RECEIPTS", default_value_t = 100)]
    pub max_get_receipts: usize,

    /// Most conversation ids in GetUnreadCounts / MarkConversationsRead.
    #[arg(long, env = "RECEIPTS_MAX_BULK_CONVERSATIONS", default_value_t = 500)]
    pub max_bulk_conversations: usize,

    /// Most members in CreateConversation.
    #[arg(long, env = "RECEIPTS_MAX_MEMBERS", default_value_t = 10000)]
    pub max_members: usize,

    /// Events buffered per subscriber before its stream is ended (resumable).
    #[arg(long, env = "RECEIPTS_SUBSCRIBER_BUFFER", default_value_t = 1024)]
    pub subscriber_buffer: usize,

    /// Events kept in the replay log behind cursors.
    #[arg(long, env = "RECEIPTS_LOG_RETENTION", default_value_t = 1_000_000)]
    pub log_retention: u64,

    /// Embedded store: memory for caching the data file's pages (MiB). The
    /// process's memory levels off near this plus its working set, however
    /// large the data grows (docs/reliability.md, the soak).
    #[arg(long, env = "RECEIPTS_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,

    /// Most events one replay may carry before a reset is sent instead.
    #[arg(long, env = "RECEIPTS_MAX_REPLAY", default_value_t = 10_000)]
    pub max_replay: usize,

    /// Origins allowed for browser (gRPC-web) calls, comma separated; `*`
    /// allows any origin.
    #[arg(
        long,
        env = "RECEIPTS_CORS_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// On SIGTERM/SIGINT, how long open calls and streams (e.g. health
    /// watches) may take to finish before connections are closed.
    #[arg(long, env = "RECEIPTS_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Where state lives: `embedded` (one process, a local data directory)
    /// or `redis-scylla` (Redis hot store and bus, ScyllaDB persistence, many
    /// stateless nodes).
    #[arg(long, env = "RECEIPTS_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,

    /// Redis URL(s), comma separated: one server, or seed nodes of a Redis
    /// Cluster (with --redis-cluster).
    #[arg(
        long,
        env = "RECEIPTS_REDIS_URLS",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_urls: Vec<String>,

    /// Redis ACL user (Redis 6+), for every URL; a user in a URL wins.
    #[arg(long, env = "RECEIPTS_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// Redis password (of --redis-username, or of `requirepass`), for every
    /// URL; a password in a URL wins.
    #[arg(long, env = "RECEIPTS_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// PEM CA certificates that rediss:// servers must be issued by (instead
    /// of the system's roots).
    #[arg(long, env = "RECEIPTS_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,

    /// PEM client certificate for rediss:// servers that verify clients
    /// (`tls-auth-clients yes`); needs --redis-tls-key.
    #[arg(long, env = "RECEIPTS_REDIS_TLS_CERT", value_name = "FILE")]
    pub redis_tls_cert: Option<PathBuf>,

    /// PEM private key of --redis-tls-cert.
    #[arg(long, env = "RECEIPTS_REDIS_TLS_KEY", value_name = "FILE")]
    pub redis_tls_key: Option<PathBuf>,

    /// Treat --redis-urls as the seed nodes of a Redis Cluster.
    #[arg(long, env = "RECEIPTS_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// Acknowledge a write only once this many replicas of its Redis
    /// primary confirmed it (WAIT), so that it survives a failover to one of
    /// them; 0 acknowledges as soon as the primary has it.
    #[arg(long, env = "RECEIPTS_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// With --redis-wait-replicas: how long a write waits for its replicas
    /// before the call fails with UNAVAILABLE (the write may still have been
    /// applied; retrying is safe).
    #[arg(long, env = "RECEIPTS_REDIS_WAIT_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_wait_timeout_ms: u64,

    /// Prefix of every Redis key (several deployments can share a Redis).
    #[arg(long, env = "RECEIPTS_REDIS_PREFIX", default_value = "rc")]
    pub redis_prefix: String,

    /// Hot data in Redis expires this many seconds after its last update
    /// (a conversation's keys, and a replay log's, together: between 3/4 of
    /// it and all of it after the last write; reads then fall through to
    /// Scylla); at least three times --flush-interval-ms.
    #[arg(long, env = "RECEIPTS_HOT_TTL_SECS", default_value_t = 86_400)]
    pub hot_ttl_secs: u64,

    /// How often queued changes are flushed from Redis to Scylla (also at
    /// shutdown).
    #[arg(long, env = "RECEIPTS_FLUSH_INTERVAL_MS", default_value_t = 60_000)]
    pub flush_interval_ms: u64,

    /// Once this node has seen Scylla unreachable for this many seconds,
    /// writes are refused (UNAVAILABLE) until it answers again; reads keep
    /// working. Bounds the write-behind backlog in Redis to what the write
    /// rate adds in this time (docs/storage.md, "While Scylla is down").
    #[arg(
        long,
        env = "RECEIPTS_WRITEBEHIND_MAX_OUTAGE_SECS",
        default_value_t = 3600
    )]
    pub writebehind_max_outage_secs: u64,

    /// Scylla (or Cassandra) contact points, `host:port`, comma separated.
    #[arg(
        long,
        env = "RECEIPTS_SCYLLA_NODES",
        value_delimiter = ',',
        default_value = "127.0.0.1:9042"
    )]
    pub scylla_nodes: Vec<String>,

    /// Scylla keyspace (created with its tables at start-up if missing).
    #[arg(long, env = "RECEIPTS_SCYLLA_KEYSPACE", default_value = "receipts")]
    pub scylla_keyspace: String,

    /// Replication of a keyspace created at start-up, as a CQL map.
    #[arg(
        long,
        env = "RECEIPTS_SCYLLA_REPLICATION",
        default_value = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )]
    pub scylla_replication: String,

    /// Scylla credentials and TLS (`--scylla-username`, `--scylla-tls*`).
    #[command(flatten)]
    pub scylla_access: crate::store::scylla_access::ScyllaAccess,

    /// How long Scylla keeps receipts (days).
    #[arg(long, env = "RECEIPTS_RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u64,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "RECEIPTS_LOG_JSON", default_value_t = false)]
    pub log_json: bool,

    /// Serve Prometheus metrics at `http://<addr>/metrics` (off unless set;
    /// e.g. `0.0.0.0:9464`). Keep it off the public network.
    #[arg(long, env = "RECEIPTS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Longest a unary call may run on the server (the caller's
    /// `grpc-timeout` applies when shorter); past it the call gets
    /// DEADLINE_EXCEEDED.
    #[arg(long, env = "RECEIPTS_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Most receipts calls in flight on this node; beyond it calls are shed
    /// at once with UNAVAILABLE (clients back off and retry). Streams count
    /// only while they open.
    #[arg(long, env = "RECEIPTS_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Of --max-concurrent-requests, the most one client connection may
    /// hold; beyond it that connection's calls are shed with UNAVAILABLE, so
    /// one connection cannot starve the others.
    #[arg(long, env = "RECEIPTS_MAX_CALLS_PER_CONNECTION", default_value_t = 128)]
    pub max_calls_per_connection: usize,

    /// Most concurrent HTTP/2 streams one connection may open (the
    /// SETTINGS_MAX_CONCURRENT_STREAMS the server announces).
    #[arg(
        long,
        env = "RECEIPTS_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 256
    )]
    pub max_streams_per_connection: u32,

    /// Most client connections open on this node; past it new connections
    /// are closed at once.
    #[arg(long, env = "RECEIPTS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// A new connection must start its first call within this time (an idle
    /// TCP connection or a half-sent HTTP/2 preface or HTTP/1.1 header is
    /// closed); a call without valid credentials over HTTP/1.1 has this long
    /// to send its body before it is answered.
    #[arg(long, env = "RECEIPTS_HEADER_TIMEOUT_MS", default_value_t = 5_000)]
    pub header_timeout_ms: u64,

    /// A connection with no call in flight for this long is closed (clients
    /// reconnect on their next call).
    #[arg(long, env = "RECEIPTS_IDLE_TIMEOUT_MS", default_value_t = 300_000)]
    pub idle_timeout_ms: u64,

    /// Interval of HTTP/2 keepalive pings to clients (0: off); a client that
    /// does not answer within --keepalive-timeout-ms is disconnected.
    #[arg(long, env = "RECEIPTS_KEEPALIVE_INTERVAL_MS", default_value_t = 30_000)]
    pub keepalive_interval_ms: u64,

    /// How long a keepalive ping may wait for its answer.
    #[arg(long, env = "RECEIPTS_KEEPALIVE_TIMEOUT_MS", default_value_t = 10_000)]
    pub keepalive_timeout_ms: u64,

    /// Largest request message in bytes; a larger one gets
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "RECEIPTS_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub max_message_bytes: usize,

    /// Writes (MarkDelivered, MarkReadUpTo, MarkConversationsRead,
    /// UpdatePrivacySettings) per second one user may make on this node,
    /// sustained; 0 turns the limit off. Service-role calls are not limited.
    #[arg(long, env = "RECEIPTS_USER_WRITES_PER_SEC", default_value_t = 50)]
    pub user_writes_per_sec: u32,

    /// Writes one user may make in a burst above the sustained rate.
    #[arg(long, env = "RECEIPTS_USER_WRITE_BURST", default_value_t = 100)]
    pub user_write_burst: u32,

    /// Subscriptions one user may open per second on this node, sustained;
    /// 0 turns the limit off.
    #[arg(long, env = "RECEIPTS_USER_SUBSCRIBES_PER_SEC", default_value_t = 2)]
    pub user_subscribes_per_sec: u32,

    /// Subscriptions one user may open in a burst above the sustained rate
    /// (all devices reconnecting at once after a network change).
    #[arg(long, env = "RECEIPTS_USER_SUBSCRIBE_BURST", default_value_t = 20)]
    pub user_subscribe_burst: u32,

    /// Open subscriptions one user may hold on this node (one per device).
    #[arg(
        long,
        env = "RECEIPTS_MAX_SUBSCRIPTIONS_PER_USER",
        default_value_t = 20
    )]
    pub max_subscriptions_per_user: usize,
}

/// Which store backs the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// One process, durable in --data-dir.
    Embedded,
    /// Redis + ScyllaDB, many nodes.
    RedisScylla,
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {reason}")]
pub struct ConfigError {
    /// The flag (and variable) at fault.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

impl From<crate::tls::TlsError> for ConfigError {
    fn from(e: crate::tls::TlsError) -> Self {
        ConfigError {
            key: e.flag,
            reason: format!("{}: {}", e.path, e.reason),
        }
    }
}

impl ServeArgs {
    /// Checks everything that can be checked before binding.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.into(),
            })
        };
        if !(10..=2000).contains(&self.group_window_ms) {
            return err(
                "--group-window-ms",
                "must be between 10 and 2000 (groups are pushed within 2 s)",
            );
        }
        if self.dev_mode && !self.listen.ip().is_loopback() {
            return err(
                "--dev-mode",
                "dev mode trusts a plain header and is only allowed on a loopback listen address",
            );
        }
        if self.jwt_secret.is_none() && self.jwt_public_key_file.is_none() && !self.dev_mode {
            return err(
                "--jwt-secret",
                "no way to authenticate: set --jwt-secret and/or --jwt-public-key-file (or --dev-mode on loopback)",
            );
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return err("--tls-key", "is needed with --tls-cert"),
            (None, Some(_)) => return err("--tls-cert", "is needed with --tls-key"),
            (None, None) if self.tls_client_ca.is_some() => {
                return err(
                    "--tls-client-ca",
                    "needs --tls-cert and --tls-key (client certificates are asked for over TLS)",
                );
            }
            _ => {}
        }
        // The files are read here too, so `receiptd config` says what the
        // start would fail on.
        if let Some(files) = self.tls_files() {
            crate::tls::load(&files)?;
        }
        if !(8..=1 << 20).contains(&self.cache_mb) {
            return err("--cache-mb", "must be between 8 and 1048576 (MiB)");
        }
        if self.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return err("--jwt-secret", "must be at least 16 bytes");
        }
        if self.redis_wait_replicas > 0 && self.redis_wait_timeout_ms == 0 {
            return err(
                "--redis-wait-timeout-ms",
                "must be at least 1 with --redis-wait-replicas (0 would wait forever)",
            );
        }
        if self.jwt_leeway_secs > 300 {
            return err(
                "--jwt-leeway-secs",
                "must be at most 300 (a larger skew would keep expired tokens alive)",
            );
        }
        for (key, v) in [
            ("--max-batch", self.max_batch),
            ("--max-get-receipts", self.max_get_receipts),
            ("--max-bulk-conversations", self.max_bulk_conversations),
            ("--max-members", self.max_members),
            ("--subscriber-buffer", self.subscriber_buffer),
            ("--max-replay", self.max_replay),
            ("--max-concurrent-requests", self.max_concurrent_requests),
            ("--max-calls-per-connection", self.max_calls_per_connection),
            ("--max-connections", self.max_connections),
            (
                "--max-streams-per-connection",
                self.max_streams_per_connection as usize,
            ),
            ("--header-timeout-ms", self.header_timeout_ms as usize),
            ("--idle-timeout-ms", self.idle_timeout_ms as usize),
            ("--keepalive-timeout-ms", self.keepalive_timeout_ms as usize),
            ("--max-message-bytes", self.max_message_bytes),
            (
                "--max-subscriptions-per-user",
                self.max_subscriptions_per_user,
            ),
        ] {
            if v == 0 {
                return err(key, "must be at least 1");
            }
        }
        if self.request_timeout_ms == 0 {
            return err("--request-timeout-ms", "must be at least 1");
        }
        if self.user_writes_per_sec > 0 && self.user_write_burst < self.user_writes_per_sec {
            return err(
                "--user-write-burst",
                "must be at least --user-writes-per-sec",
            );
        }
        if self.user_subscribes_per_sec > 0
            && self.user_subscribe_burst < self.user_subscribes_per_sec
        {
            return err(
                "--user-subscribe-burst",
                "must be at least --user-subscribes-per-sec",
            );
        }
        if self.store == StoreKind::RedisScylla {
            if self.redis_urls.is_empty() {
                return err("--redis-urls", "must name at least one redis:// URL");
            }
            // What the start would fail on, said before it.
            let mut tls_urls = 0;
            for url in &self.redis_urls {
                let scheme = url.split_once("://").map(|(s, _)| s);
                match scheme {
                    Some("redis" | "unix" | "redis+unix") => {}
                    Some("rediss") => tls_urls += 1,
                    _ => {
                        return err(
                            "--redis-urls",
                            "each URL must start with redis://, rediss:// (TLS) or unix:// (a socket)",
                        );
                    }
                }
            }
            if tls_urls > 0 && tls_urls < self.redis_urls.len() {
                return err(
                    "--redis-urls",
                    "mixes rediss:// and redis://: use TLS for every node or for none",
                );
            }
            let redis_tls_files = [
                ("--redis-tls-ca", &self.redis_tls_ca),
                ("--redis-tls-cert", &self.redis_tls_cert),
                ("--redis-tls-key", &self.redis_tls_key),
            ];
            for (key, file) in redis_tls_files {
                if file.is_some() && tls_urls == 0 {
                    return Err(ConfigError {
                        key,
                        reason: "is only used with rediss:// URLs in --redis-urls".into(),
                    });
                }
            }
            match (&self.redis_tls_cert, &self.redis_tls_key) {
                (Some(_), None) => {
                    return err("--redis-tls-key", "is needed with --redis-tls-cert");
                }
                (None, Some(_)) => {
                    return err("--redis-tls-cert", "is needed with --redis-tls-key");
                }
                _ => {}
            }
            self.redis_tls()?;
            if self.scylla_nodes.is_empty() {
                return err("--scylla-nodes", "must name at least one host:port");
            }
            let ks = &self.scylla_keyspace;
            if ks.is_empty()
                || ks.len() > 48
                || !ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return err(
                    "--scylla-keyspace",
                    "must be 1-48 letters, digits or underscores",
                );
            }
            self.scylla_access.validate()?;
            if self.hot_ttl_secs == 0 {
                return err("--hot-ttl-secs", "must be at least 1");
            }
            if self.flush_interval_ms < 10 {
                return err("--flush-interval-ms", "must be at least 10");
            }
            // Hot data must outlive the flush that persists it: a key that
            // expired before its queued change reached Scylla would re-warm
            // without that change.
            if self.hot_ttl_secs.saturating_mul(1000) < self.flush_interval_ms.saturating_mul(3) {
                return err(
                    "--hot-ttl-secs",
                    "must be at least three times --flush-interval-ms",
                );
            }
            if self.retention_days == 0 {
                return err("--retention-days", "must be at least 1");
            }
            if self.writebehind_max_outage_secs == 0 {
                return err("--writebehind-max-outage-secs", "must be at least 1");
            }
        }
        if self.cors_origins.is_empty() {
            return err("--cors-origins", "must name at least one origin or *");
        }
        Ok(())
    }

    /// The certificates for rediss:// (files read and checked), if any
    /// were given.
    pub fn redis_tls(&self) -> Result<Option<redis::TlsCertificates>, crate::tls::TlsError> {
        use crate::tls::read_pem;
        let root_cert = match &self.redis_tls_ca {
            Some(p) => Some(read_pem(
                "--redis-tls-ca",
                p,
                crate::tls::Pem::Certificates,
            )?),
            None => None,
        };
        let client_tls = match (&self.redis_tls_cert, &self.redis_tls_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem("--redis-tls-cert", cert, crate::tls::Pem::Certificates)?,
                client_key: read_pem("--redis-tls-key", key, crate::tls::Pem::PrivateKey)?,
            }),
            _ => None,
        };
        if root_cert.is_none() && client_tls.is_none() {
            return Ok(None);
        }
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    /// The listener's TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The group window as a duration.
    pub fn group_window(&self) -> Duration {
        Duration::from_millis(self.group_window_ms)
    }

    /// Settings for tests and embedding: loopback, dev mode, the given data
    /// directory, and defaults for the rest.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let cli = Cli::parse_from(["receiptd", "--dev-mode", "--listen", "127.0.0.1:0"]);
        Self {
            data_dir,
            ..cli.serve
        }
    }
}
