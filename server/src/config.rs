//! Configuration: flags and `RECEIPTS_*` environment variables, validated
//! before any port is bound.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The receipts service.
#[derive(Debug, Parser)]
#[command(
    name = "receiptd",
    version,
    about = "Read receipts over gRPC and gRPC-web"
)]
pub struct Cli {
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

    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "RECEIPTS_DATA_DIR", default_value = "./receipts-data")]
    pub data_dir: PathBuf,

    /// HS256 secret for verifying bearer tokens (and minting with `token`).
    #[arg(long, env = "RECEIPTS_JWT_SECRET", hide_env_values = true)]
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

    /// Treat --redis-urls as the seed nodes of a Redis Cluster.
    #[arg(long, env = "RECEIPTS_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// Prefix of every Redis key (several deployments can share a Redis).
    #[arg(long, env = "RECEIPTS_REDIS_PREFIX", default_value = "rc")]
    pub redis_prefix: String,

    /// Hot data in Redis expires this many seconds after its last update
    /// (reads then fall through to Scylla).
    #[arg(long, env = "RECEIPTS_HOT_TTL_SECS", default_value_t = 86_400)]
    pub hot_ttl_secs: u64,

    /// How often queued changes are flushed from Redis to Scylla (also at
    /// shutdown).
    #[arg(long, env = "RECEIPTS_FLUSH_INTERVAL_MS", default_value_t = 60_000)]
    pub flush_interval_ms: u64,

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

    /// How long Scylla keeps receipts (days).
    #[arg(long, env = "RECEIPTS_RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u64,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "RECEIPTS_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
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
        if self.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return err("--jwt-secret", "must be at least 16 bytes");
        }
        for (key, v) in [
            ("--max-batch", self.max_batch),
            ("--max-get-receipts", self.max_get_receipts),
            ("--max-bulk-conversations", self.max_bulk_conversations),
            ("--max-members", self.max_members),
            ("--subscriber-buffer", self.subscriber_buffer),
            ("--max-replay", self.max_replay),
        ] {
            if v == 0 {
                return err(key, "must be at least 1");
            }
        }
        if self.store == StoreKind::RedisScylla {
            if self.redis_urls.is_empty() {
                return err("--redis-urls", "must name at least one redis:// URL");
            }
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
        }
        if self.cors_origins.is_empty() {
            return err("--cors-origins", "must name at least one origin or *");
        }
        Ok(())
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
