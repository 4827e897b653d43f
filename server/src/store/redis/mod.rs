//! The production tier: Redis as the hot store and real-time bus, ScyllaDB as
//! the persistent store, any number of stateless `receiptd` nodes sharing them.
//!
//! # How a write works
//! 1. Read what the decision needs (pipelined, one slot) together with the
//!    conversation's version.
//! 2. Decide in Rust with the same [`crate::domain`] rules as every store.
//! 3. Commit with one Lua call in the conversation's slot ([`scripts::APPLY`]):
//!    if the version is unchanged, apply the writes, append the events they
//!    cause to the conversation's outbox stream and the changes to persist to
//!    its queue stream, and bump the version; otherwise re-read and retry.
//! 4. Forward the outbox into each addressee's replay log (once, in order:
//!    [`scripts::FORWARD`]) which publishes on the bus; every node hands what it
//!    hears to its local subscribers.
//! 5. A flusher (any node, every `flush_interval` and at shutdown) drains the
//!    queue streams into Scylla, acknowledging (deleting) entries only after
//!    Scylla accepted them. A node that dies leaves its queue, outbox and
//!    group window to the next node's flusher.
//!
//! Hot keys expire `hot_ttl` after their last update; reads that miss fall
//! through to Scylla and re-warm Redis. The queue streams and their index
//! never expire (they are drained). docs/storage.md lists every key and table.

mod counts;
mod keys;
mod scripts;

use super::scylla::{PersistOp, ScyllaOptions, ScyllaPersistence};
use super::{
    ConversationOutcome, ConversationRead, DeliveryResult, MemberChange, MembershipResult,
    NewMessage, ReadResult, ReceiptStore, Replay, ReplayFrom, ResetReason, Snapshot, StoreResult,
    UnreadCount, fold_member_changes,
};
use super::{distinct_registrations, judge_registration};
use crate::domain::{
    self, ConversationId, Cursor, Delivery, Event, EventBody, Membership, Message, MessageId,
    MessageState, Millis, ReadWatermark, RecipientFacts, Seq, UserId,
};
use crate::error::ServiceError;
use crate::fanout::{self, Hub, Windows};
use async_trait::async_trait;
use keys::Keys;
use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A group window lists up to this many messages of one write by id, more
/// as a seq range.
const WINDOW_IDS: usize = 100;
/// Messages and conversations in a reset snapshot.
const SNAPSHOT_MESSAGES: usize = 200;
const SNAPSHOT_CONVERSATIONS: usize = 500;
/// How long a queue registration stays valid for a commit (ms).
const LEASE_MS: u64 = 10_000;
/// Compare-and-apply attempts before giving up with UNAVAILABLE.
const MAX_ATTEMPTS: usize = 64;
/// Locks that serialize one node's writes to a conversation (by stripe).
const WRITE_STRIPES: usize = 256;
/// Conversations with at most this many members are read whole by a write.
const DIRECT_MEMBERS: u64 = 2;
/// Queue entries read per flush round.
const FLUSH_CHUNK: usize = 1000;

/// Settings of the Redis + Scylla store.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://` URLs: one for a single server, the seed nodes of a cluster.
    pub redis_urls: Vec<String>,
    /// Whether the URLs name a Redis Cluster.
    pub cluster: bool,
    /// Key prefix (lets several deployments share one Redis).
    pub prefix: String,
    /// Hot data expires this long after its last update.
    pub hot_ttl: Duration,
    /// Group aggregation window.
    pub group_window: Duration,
    /// Events kept per user in the replay log.
    pub log_retention: u64,
    /// How often queued changes are flushed to Scylla.
    pub flush_interval: Duration,
    /// Writes are refused once Scylla has been unreachable this long, so
    /// that the backlog queued in Redis stays bounded.
    pub max_outage: Duration,
    /// Buffered events per live subscriber.
    pub subscriber_buffer: usize,
    /// The persistent tier.
    pub scylla: ScyllaOptions,
    /// Acknowledge a write only once this many replicas of its Redis
    /// primary have it (`WAIT`), waiting at most this long; `None`: as soon
    /// as the primary has it.
    pub wait_replicas: Option<(u32, Duration)>,
}

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

fn redis_err(e: redis::RedisError) -> ServiceError {
    ServiceError::unavailable_because(redis_failure(&e), e)
}

/// What a caller is told when Redis failed a call: what is wrong, in the
/// service's terms. The driver's text (addresses, protocol details) goes to
/// the log line above, not to clients.
fn redis_failure(e: &redis::RedisError) -> &'static str {
    use redis::{ErrorKind, ServerErrorKind as S};
    if e.code() == Some("OOM") {
        return "the hot store (Redis) is out of memory and refuses writes; retry once it has room";
    }
    match e.kind() {
        ErrorKind::Server(S::BusyLoading) => {
            "the hot store (Redis) is loading its data after a restart; retry with backoff"
        }
        ErrorKind::Server(S::ClusterDown | S::MasterDown | S::TryAgain | S::ReadOnly)
        | ErrorKind::ClusterConnectionNotFound => {
            "the hot store (Redis) is failing over; retry with backoff"
        }
        ErrorKind::AuthenticationFailed | ErrorKind::Server(S::NoPerm) => {
            "the hot store (Redis) refused this node's credentials; retry later"
        }
        _ if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal() =>
        {
            "the hot store (Redis) is unreachable; retry with backoff"
        }
        _ => "the hot store (Redis) failed the call; retry with backoff",
    }
}

/// How long the shared start of a Scylla outage outlives the last probe
/// that failed (probes run every 500 ms).
const OUTAGE_KEY_TTL: Duration = Duration::from_secs(5);

/// How far apart the backend's clock (which mints message ids) and the
/// nodes' clocks may be, for [`Inner::new_id_horizon`].
const CLOCK_SKEW_MS: u64 = 5_000;

/// The creation time of a UUIDv7 (ms since the epoch), `None` for other ids.
fn v7_millis(m: &MessageId) -> Option<u64> {
    if m.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = m.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// Whether id `m`, absent from Redis, is known never to have been
/// registered (see [`Inner::new_id_horizon`]).
fn known_new(m: &MessageId, horizon: Option<u64>) -> bool {
    let now = crate::domain::now_millis().max(0) as u64;
    match (v7_millis(m), horizon) {
        (Some(t), Some(after)) => t > after && t <= now + CLOCK_SKEW_MS,
        _ => false,
    }
}

fn corrupt(what: &str) -> ServiceError {
    ServiceError::internal(format!("corrupt hot data: {what}"))
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("postcard encoding of plain data cannot fail")
}

fn dec<'a, T: serde::Deserialize<'a>>(b: &'a [u8], what: &str) -> StoreResult<T> {
    postcard::from_bytes(b).map_err(|_| corrupt(what))
}

/// The keys of `ids` that `have` lacks, in order.
fn absent<K: Copy + Eq + std::hash::Hash, V>(ids: &[K], have: &HashMap<K, V>) -> Vec<K> {
    ids.iter()
        .filter(|k| !have.contains_key(k))
        .copied()
        .collect()
}

fn hex(u: &Uuid) -> String {
    u.simple().to_string()
}

fn parse_uuid(s: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| corrupt("uuid"))
}

/// Builds one command's arguments.
/// A receipt hash value: when the user got the message, as milliseconds
/// after it was sent. Redis keeps an integer-looking value as an integer in
/// the hash's listpack, and a delay of under ~2.3 hours as a 3-byte one, so
/// a delivery costs a few bytes instead of a 13-digit timestamp (see
/// docs/storage.md for the measured sizes).
fn delivery_value(at: Millis, sent_at: Millis) -> i64 {
    at.saturating_sub(sent_at)
}

fn parse_delivery_value(value: &str, sent_at: Millis) -> Option<Millis> {
    value.parse::<i64>().ok().map(|d| sent_at.saturating_add(d))
}

/// The part of a command's key (its first argument) that Redis Cluster
/// hashes: the text between the first `{` and the next `}` when non-empty,
/// else the whole key. Commands with equal tags share a slot.
fn hash_tag(cmd: &Cmd) -> &[u8] {
    let key = match cmd.args_iter().nth(1) {
        Some(redis::Arg::Simple(key)) => key,
        _ => return &[],
    };
    if let Some(open) = key.iter().position(|b| *b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|b| *b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

macro_rules! rcmd {
    ($($a:expr),+ $(,)?) => {{
        let mut v: Vec<Vec<u8>> = Vec::new();
        $( v.extend(redis::ToRedisArgs::to_redis_args(&$a)); )+
        v
    }};
}

/// Writes decided by a compare-and-apply round.
#[derive(Default)]
struct Plan {
    cmds: Vec<Vec<Vec<u8>>>,
    persist: Vec<PersistOp>,
    /// Events to commit in the outbox: (addressee, body).
    events: Vec<(UserId, EventBody)>,
}

/// What is known of one conversation at one version.
struct View {
    c: ConversationId,
    ver: u64,
    /// Membership version (only grows, survives re-warming).
    mver: u64,
    /// Last recorded write time.
    stamp: Millis,
    /// Current members.
    count: u64,
    members: BTreeMap<UserId, Membership>,
    wms: HashMap<UserId, ReadWatermark>,
    sharing: HashMap<UserId, bool>,
    messages: HashMap<MessageId, Message>,
    deliveries: HashMap<MessageId, HashMap<UserId, Millis>>,
    /// (user, public) -> history entries (seq, at) in seq order.
    hist: HashMap<(UserId, bool), Vec<(Seq, Millis)>>,
}

impl View {
    /// A view that knows nothing yet but the conversation and a version.
    fn bare(c: ConversationId, ver: u64) -> Self {
        View {
            c,
            ver,
            mver: 0,
            stamp: 0,
            count: 0,
            members: BTreeMap::new(),
            wms: HashMap::new(),
            sharing: HashMap::new(),
            messages: HashMap::new(),
            deliveries: HashMap::new(),
            hist: HashMap::new(),
        }
    }

    fn group(&self) -> bool {
        self.count > 2
    }

    fn wm(&self, u: &UserId) -> ReadWatermark {
        self.wms.get(u).copied().unwrap_or_default()
    }

    fn authorize(&self, u: &UserId, field: &str) -> StoreResult<Membership> {
        match self.members.get(u) {
            Some(m) if m.is_current() => Ok(m.clone()),
            _ => Err(ServiceError::PermissionDenied(format!(
                "{field}: caller is not a member of conversation {}",
                self.c
            ))),
        }
    }

    fn first_covering(&self, u: &UserId, public: bool, seq: Seq) -> Option<Millis> {
        self.hist
            .get(&(*u, public))
            .and_then(|h| h.iter().find(|(s, _)| *s >= seq).map(|(_, at)| *at))
    }

    fn delivered_at(&self, m: &MessageId, u: &UserId) -> Option<Millis> {
        self.deliveries.get(m).and_then(|d| d.get(u)).copied()
    }

    /// The state of `m` as `viewer` may see it (the rules are in `domain`).
    fn state(&self, viewer: &UserId, m: &Message, with_recipients: bool) -> MessageState {
        let mut views = Vec::new();
        for (u, membership) in &self.members {
            if !membership.receives(*u, m.sender, m.seq) {
                continue;
            }
            let wm = self.wm(u);
            let facts = RecipientFacts {
                delivered_at: self.delivered_at(&m.id, u),
                read_at: (wm.seq >= m.seq)
                    .then(|| self.first_covering(u, false, m.seq))
                    .flatten(),
                public_read_at: (wm.public_seq >= m.seq)
                    .then(|| self.first_covering(u, true, m.seq))
                    .flatten(),
                sharing: self.sharing.get(u).copied().unwrap_or(true),
            };
            views.push(domain::recipient_view(*viewer, *u, facts));
        }
        MessageState {
            message: *m,
            aggregate: domain::aggregate(&views),
            recipients: if with_recipients { views } else { Vec::new() },
        }
    }
}

/// A parsed `seq`-index entry.
#[derive(Clone, Copy)]
struct Indexed {
    seq: Seq,
    id: MessageId,
    sender: UserId,
}

struct Inner {
    conn: Conn,
    keys: Keys,
    scylla: ScyllaPersistence,
    opts: RedisOptions,
    hub: Arc<Hub>,
    /// Timers of the group windows this node opened (what changed is kept
    /// in Redis, in the window key, so any node can flush it).
    windows: Mutex<Windows>,
    healthy: AtomicBool,
    /// Whether Scylla answered the last probe (for metrics and logs; health
    /// does not depend on it).
    scylla_up: AtomicBool,
    /// When (ms since the epoch) the current Scylla outage began, as this
    /// node's probe saw it; 0 while Scylla answers.
    scylla_down_since: std::sync::atomic::AtomicU64,
    /// Whether this node is subscribed to the bus. Until it is, a local
    /// subscriber would miss events, so the node reports NOT_SERVING (and
    /// ends the streams opened before it subscribed).
    bus_up: AtomicBool,
    bus_url: String,
    /// Changes this node persisted to Scylla (for metrics).
    persisted: std::sync::atomic::AtomicU64,
    /// This node's writes to one conversation queue here instead of
    /// racing each other's compare-and-apply (see [`Inner::lock`]).
    stripes: Box<[tokio::sync::Mutex<()>]>,
}

/// The Redis + Scylla store. Cheap to share behind an `Arc`.
pub struct RedisStore {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.inner.opts.redis_urls)
            .field("cluster", &self.inner.opts.cluster)
            .field("scylla", &self.inner.opts.scylla.nodes)
            .finish()
    }
}

impl RedisStore {
    /// Connects to Redis and Scylla (creating Scylla's schema if needed) and
    /// starts the bus listener, the window timer, the flusher and the health
    /// probe.
    pub async fn open(opts: RedisOptions) -> StoreResult<Self> {
        let group_window = opts.group_window;
        let conn = if opts.cluster {
            let client =
                redis::cluster::ClusterClient::new(opts.redis_urls.clone()).map_err(redis_err)?;
            Conn::Cluster(client.get_async_connection().await.map_err(redis_err)?)
        } else {
            let url = opts
                .redis_urls
                .first()
                .ok_or_else(|| ServiceError::internal("no redis url"))?;
            let client = redis::Client::open(url.as_str()).map_err(redis_err)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_number_of_retries(2);
            Conn::Single(
                client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(redis_err)?,
            )
        };
        let scylla = ScyllaPersistence::connect(&opts.scylla).await?;
        let hub = Hub::new(opts.subscriber_buffer);
        let inner = Arc::new(Inner {
            conn,
            keys: Keys::new(&opts.prefix),
            scylla,
            bus_url: opts.redis_urls[0].clone(),
            opts,
            hub,
            windows: Mutex::new(Windows::new(group_window)),
            healthy: AtomicBool::new(true),
            scylla_up: AtomicBool::new(true),
            scylla_down_since: std::sync::atomic::AtomicU64::new(0),
            bus_up: AtomicBool::new(false),
            persisted: std::sync::atomic::AtomicU64::new(0),
            stripes: (0..WRITE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        let (stop, _) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(bus_loop(inner.clone(), stop.subscribe())),
            tokio::spawn(window_loop(inner.clone(), stop.subscribe())),
            tokio::spawn(flush_loop(inner.clone(), stop.subscribe())),
            tokio::spawn(health_loop(inner.clone(), stop.subscribe())),
        ];
        // Serve once subscribed to the bus, so that no stream opened on a
        // fresh node is ended at once by the bus coming up. (If it takes
        // longer, health reports NOT_SERVING until it is up.)
        let deadline = Instant::now() + Duration::from_secs(5);
        while !inner.bus_up.load(Ordering::Acquire) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self {
            inner,
            stop,
            tasks: Mutex::new(tasks),
        })
    }

    /// Drains every queue into Scylla now (what the flusher does on its
    /// interval). Returns how many entries were persisted.
    pub async fn flush_all(&self) -> StoreResult<u64> {
        self.inner.flush_all().await
    }
}

impl Inner {
    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    fn ttl(&self) -> u64 {
        self.opts.hot_ttl.as_secs().max(1)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        cmd.query_async(&mut self.conn()).await.map_err(redis_err)
    }

    /// Runs a pipeline. Every pipeline here is either all reads (every
    /// reply kept, in order) or all writes (every command `.ignore()`d, read
    /// as `()`); on a Redis Cluster a pipeline whose keys span several hash
    /// tags is split into one pipeline per tag, run concurrently, and the
    /// replies put back in command order, which is only right for those two
    /// shapes.
    async fn pipe<T: redis::FromRedisValue>(&self, p: &Pipeline) -> StoreResult<T> {
        if p.is_empty() {
            // Redis rejects an empty pipeline; its answer is an empty list.
            return T::from_redis_value(Value::Array(Vec::new())).map_err(|e| redis_err(e.into()));
        }
        if matches!(self.conn, Conn::Cluster(_)) {
            let mut groups: Vec<(Pipeline, Vec<usize>)> = Vec::new();
            let mut by_tag: HashMap<&[u8], usize> = HashMap::new();
            for (i, cmd) in p.cmd_iter().enumerate() {
                let g = *by_tag.entry(hash_tag(cmd)).or_insert_with(|| {
                    groups.push((redis::pipe(), Vec::new()));
                    groups.len() - 1
                });
                groups[g].0.add_command(cmd.clone());
                groups[g].1.push(i);
            }
            if groups.len() > 1 {
                let replies = futures::future::try_join_all(groups.iter().map(|(sub, _)| {
                    let mut conn = self.conn();
                    async move { sub.query_async::<Vec<Value>>(&mut conn).await }
                }))
                .await
                .map_err(redis_err)?;
                let mut all = vec![Value::Nil; p.len()];
                for ((_, at), values) in groups.iter().zip(replies) {
                    for (i, v) in at.iter().zip(values) {
                        all[*i] = v;
                    }
                }
                return T::from_redis_value(Value::Array(all)).map_err(|e| redis_err(e.into()));
            }
        }
        p.query_async(&mut self.conn()).await.map_err(redis_err)
    }

    // ----- reading -----------------------------------------------------

    /// The conversation's meta and watermarks, re-warmed from Scylla on a
    /// miss. `None`: no such conversation.
    async fn view(&self, c: &ConversationId) -> StoreResult<Option<View>> {
        for _ in 0..3 {
            let mut p = redis::pipe();
            p.hgetall(self.keys.meta(c))
                .hgetall(self.keys.watermarks(c));
            let (meta, wms): (HashMap<String, Vec<u8>>, HashMap<String, String>) =
                self.pipe(&p).await?;
            if meta.contains_key("n") {
                return Ok(Some(parse_view(c, meta, wms)?));
            }
            if !self.rewarm(c).await? {
                return Ok(None);
            }
        }
        Err(ServiceError::unavailable(format!(
            "conversation {c} could not be loaded into redis"
        )))
    }

    /// Serializes this node's writes to the conversations `cs` (every
    /// conversation write path holds it from its first read to its commit).
    ///
    /// Correctness does not depend on it: the version check in
    /// [`scripts::APPLY`] still decides, and nodes still race each other.
    /// It is about cost. Without it, N concurrent writes to one
    /// conversation on one node (a 500-member group's members all marking
    /// the same batch delivered) make N − 1 of them fail the version
    /// check, re-read and retry: O(N²) reads and commits instead of O(N).
    /// The locks are striped by conversation id and taken in stripe order,
    /// so holding several cannot deadlock.
    async fn lock<'a>(
        &'a self,
        cs: impl IntoIterator<Item = &'a ConversationId>,
    ) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
        let mut stripes: Vec<usize> = cs
            .into_iter()
            .map(|c| (c.as_u128() % WRITE_STRIPES as u128) as usize)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }

    /// What a write by `u` needs of `c`, in one round trip. A direct
    /// conversation's view is whole (its events carry whole states). A
    /// group's holds only `u`'s membership and watermark, with the
    /// conversation's version, stamp and member count: a group write by one
    /// member decides from that member's data alone and leaves the counting
    /// to the window, so it reads O(1) data however large the group.
    async fn view_for(&self, c: &ConversationId, u: &UserId) -> StoreResult<Option<View>> {
        let reply: Vec<Value> = scripts::VIEW
            .key(self.keys.meta(c))
            .key(self.keys.watermarks(c))
            .arg(hex(u))
            .arg(DIRECT_MEMBERS)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let parse = |e: redis::ParsingError| redis_err(e.into());
        let mut it = reply.into_iter();
        let kind = it
            .next()
            .map(i64::from_redis_value)
            .transpose()
            .map_err(parse)?;
        let (meta, wms) = (it.next(), it.next());
        match (kind, meta, wms) {
            (Some(1), Some(meta), Some(wms)) => Ok(Some(parse_view(
                c,
                HashMap::from_redis_value(meta).map_err(parse)?,
                HashMap::from_redis_value(wms).map_err(parse)?,
            )?)),
            (Some(2), Some(fields), Some(wm)) => {
                let values: Vec<Option<Vec<u8>>> = Vec::from_redis_value(fields).map_err(parse)?;
                let mut meta = HashMap::new();
                let names = ["v".to_string(), "mv".into(), "t".into(), "n".into()];
                let member = format!("m:{}", hex(u));
                for (f, v) in names.into_iter().chain([member]).zip(values) {
                    if let Some(v) = v {
                        meta.insert(f, v);
                    }
                }
                let mut own = HashMap::new();
                if let Some(wm) = Option::<String>::from_redis_value(wm).map_err(parse)? {
                    own.insert(hex(u), wm);
                }
                Ok(Some(parse_view(c, meta, own)?))
            }
            _ => self.view(c).await,
        }
    }

    /// Loads a conversation from Scylla into Redis. `false`: Scylla has none.
    async fn rewarm(&self, c: &ConversationId) -> StoreResult<bool> {
        let Some(img) = self.scylla.conversation(*c).await? else {
            return Ok(false);
        };
        tracing::debug!(conversation = %c, messages = img.messages.len(), "re-warming from scylla");
        let k = &self.keys;
        let ttl = self.ttl();
        let mut plan = Plan::default();
        let count = img.members.iter().filter(|(_, m)| m.is_current()).count() as u64;
        let mut meta = rcmd!["HSET", k.meta(c), "n", count, "mv", img.version, "t", 0i64];
        for (u, m) in &img.members {
            meta.extend(rcmd![format!("m:{}", hex(u)), enc(m)]);
        }
        plan.cmds.push(meta);
        let mut hist_keys = Vec::new();
        let wms: HashMap<UserId, ReadWatermark> = img.watermarks.iter().copied().collect();
        for (u, wm) in &wms {
            plan.cmds.push(rcmd![
                "HSET",
                k.watermarks(c),
                hex(u),
                format!("{}:{}", wm.seq, wm.public_seq)
            ]);
        }
        let users: Vec<UserId> = img.members.iter().map(|(u, _)| *u).collect();
        let sharing = self.sharing_of(&users).await?;
        for ((u, m), (shares, _)) in img.members.iter().zip(sharing) {
            let wm = wms.get(u).copied().unwrap_or_default();
            plan.cmds.extend(index_member(k, c, u, m, wm, shares));
        }
        for (u, public, seq, at) in &img.history {
            let key = k.history(c, u, *public);
            plan.cmds
                .push(rcmd!["ZADD", key.clone(), *seq, format!("{seq}:{at}")]);
            hist_keys.push(key);
        }
        for chunk in img.messages.chunks(200) {
            let mut z = rcmd!["ZADD", k.seqs(c)];
            let mut h = rcmd!["HSET", k.messages(c)];
            for m in chunk {
                z.extend(rcmd![m.seq, format!("{}:{}", hex(&m.id), hex(&m.sender))]);
                h.extend(rcmd![hex(&m.id), enc(m)]);
            }
            plan.cmds.push(z);
            plan.cmds.push(h);
        }
        hist_keys.sort();
        hist_keys.dedup();
        for key in k.conversation_state(c).into_iter().chain(hist_keys) {
            plan.cmds.push(rcmd!["EXPIRE", key, ttl]);
        }
        // Only if still absent (version 0): a concurrent re-warm or write wins.
        match self.apply(c, 0, 0, plan.cmds).await? {
            Applied::Done | Applied::Conflict => Ok(true),
            Applied::LeaseExpired => Ok(true),
        }
    }

    async fn ensure_sharing(&self, view: &mut View, users: &[UserId]) -> StoreResult<()> {
        let missing = absent(users, &view.sharing);
        if missing.is_empty() {
            return Ok(());
        }
        let values = self.sharing_of(&missing).await?;
        for (u, s) in missing.into_iter().zip(values) {
            view.sharing.insert(u, s.0);
        }
        Ok(())
    }

    /// (sharing, version) per user; re-warmed from Scylla on a miss.
    async fn sharing_of(&self, users: &[UserId]) -> StoreResult<Vec<(bool, u64)>> {
        let mut p = redis::pipe();
        for u in users {
            p.cmd("HMGET").arg(self.keys.sharing(u)).arg("s").arg("v");
        }
        let rows: Vec<(Option<String>, Option<u64>)> = self.pipe(&p).await?;
        let mut out = Vec::with_capacity(users.len());
        for (u, row) in users.iter().zip(rows) {
            match row {
                (Some(s), Some(v)) => out.push((s == "1", v)),
                _ => {
                    let persisted = self.scylla.sharing(*u).await?;
                    let (s, v) = persisted.unwrap_or((true, 0));
                    // Re-warm only if still absent; a concurrent change wins.
                    // "Never set" is cached too (the default at version 0),
                    // so that a user who never changed the setting is not
                    // asked of Scylla on every call, nor during its outage.
                    {
                        let mut p = redis::pipe();
                        p.cmd("HSETNX")
                            .arg(self.keys.sharing(u))
                            .arg("v")
                            .arg(v)
                            .ignore()
                            .cmd("HSETNX")
                            .arg(self.keys.sharing(u))
                            .arg("s")
                            .arg(if s { "1" } else { "0" })
                            .ignore()
                            .cmd("EXPIRE")
                            .arg(self.keys.sharing(u))
                            .arg(self.ttl())
                            .ignore();
                        self.pipe::<()>(&p).await?;
                    }
                    out.push((s, v));
                }
            }
        }
        Ok(out)
    }

    /// Loads messages by id (they must belong to `view`'s conversation).
    async fn ensure_messages(&self, view: &mut View, ids: &[MessageId]) -> StoreResult<()> {
        let missing = absent(ids, &view.messages);
        if missing.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.messages(&view.c));
        for m in &missing {
            cmd.arg(hex(m));
        }
        let rows: Vec<Option<Vec<u8>>> = self.query(&cmd).await?;
        for row in rows.into_iter().flatten() {
            let m: Message = dec(&row, "message")?;
            view.messages.insert(m.id, m);
        }
        Ok(())
    }

    /// Those of `ids` that are messages of the view whose deliveries it has
    /// not loaded yet (the messages loaded first).
    async fn without_deliveries(
        &self,
        view: &mut View,
        ids: &[MessageId],
    ) -> StoreResult<Vec<MessageId>> {
        self.ensure_messages(view, ids).await?;
        Ok(ids
            .iter()
            .filter(|m| !view.deliveries.contains_key(m) && view.messages.contains_key(m))
            .copied()
            .collect())
    }

    /// Loads the receipt hashes of `ids`, re-warming expired ones from Scylla.
    async fn ensure_deliveries(&self, view: &mut View, ids: &[MessageId]) -> StoreResult<()> {
        // Delivery times are stored relative to the send time.
        let missing = self.without_deliveries(view, ids).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for m in &missing {
            p.hgetall(self.keys.receipt(&view.c, m));
        }
        let rows: Vec<HashMap<Vec<u8>, String>> = self.pipe(&p).await?;
        for (m, row) in missing.into_iter().zip(rows) {
            let sent_at = view.messages[&m].sent_at;
            let mut d = HashMap::new();
            if !row.contains_key(b"_".as_slice()) {
                // Expired (or never touched): what Scylla has, merged back.
                let persisted = self.scylla.deliveries(m).await?;
                let key = self.keys.receipt(&view.c, &m);
                let mut p = redis::pipe();
                for (u, at) in &persisted {
                    p.cmd("HSETNX")
                        .arg(&key)
                        .arg(u.as_bytes().as_slice())
                        .arg(delivery_value(*at, sent_at))
                        .ignore();
                }
                p.cmd("HSET").arg(&key).arg("_").arg("1").ignore();
                p.cmd("EXPIRE").arg(&key).arg(self.ttl()).ignore();
                self.pipe::<()>(&p).await?;
                for (u, at) in persisted {
                    d.insert(u, at);
                }
            }
            for (field, value) in row {
                if field.len() != 16 {
                    continue;
                }
                let u = Uuid::from_slice(&field).map_err(|_| corrupt("receipt field"))?;
                let at = parse_delivery_value(&value, sent_at)
                    .ok_or_else(|| corrupt("receipt value"))?;
                let e = d.entry(u).or_insert(at);
                *e = (*e).min(at);
            }
            view.deliveries.insert(m, d);
        }
        Ok(())
    }

    /// `c`'s view for a write by `u` with `msgs` loaded; names the first
    /// message that is not there.
    async fn delivery_view(
        &self,
        c: &ConversationId,
        u: &UserId,
        msgs: &[MessageId],
    ) -> StoreResult<View> {
        let Some(mut view) = self.view_for(c, u).await? else {
            return Err(ServiceError::not_found("message_ids", "message", msgs[0]));
        };
        self.ensure_messages(&mut view, msgs).await?;
        if let Some(m) = msgs.iter().find(|m| !view.messages.contains_key(m)) {
            return Err(ServiceError::not_found("message_ids", "message", m));
        }
        Ok(view)
    }

    /// Loads `u`'s own deliveries of `ids`: O(1) per message where
    /// [`Self::ensure_deliveries`] reads every member's. A receipt hash that
    /// is not in Redis is re-warmed whole.
    async fn ensure_own_deliveries(
        &self,
        view: &mut View,
        ids: &[MessageId],
        u: &UserId,
    ) -> StoreResult<()> {
        let missing = self.without_deliveries(view, ids).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for m in &missing {
            p.cmd("HMGET")
                .arg(self.keys.receipt(&view.c, m))
                .arg("_")
                .arg(u.as_bytes().as_slice());
        }
        let rows: Vec<(Option<String>, Option<String>)> = self.pipe(&p).await?;
        let mut cold = Vec::new();
        for (m, (loaded, value)) in missing.into_iter().zip(rows) {
            if loaded.is_none() {
                cold.push(m);
                continue;
            }
            let mut d = HashMap::new();
            if let Some(value) = value {
                let at = parse_delivery_value(&value, view.messages[&m].sent_at)
                    .ok_or_else(|| corrupt("receipt value"))?;
                d.insert(*u, at);
            }
            view.deliveries.insert(m, d);
        }
        self.ensure_deliveries(view, &cold).await
    }

    /// Loads read histories from `min_seq` on for `users`.
    async fn ensure_history(
        &self,
        view: &mut View,
        users: &[UserId],
        min_seq: Seq,
    ) -> StoreResult<()> {
        let wanted: Vec<(UserId, bool)> = users
            .iter()
            .flat_map(|u| [(*u, false), (*u, true)])
            .filter(|(u, public)| {
                let wm = view.wm(u);
                let top = if *public { wm.public_seq } else { wm.seq };
                top >= min_seq && !view.hist.contains_key(&(*u, *public))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for (u, public) in &wanted {
            p.cmd("ZRANGEBYSCORE")
                .arg(self.keys.history(&view.c, u, *public))
                .arg(min_seq)
                .arg("+inf");
        }
        let rows: Vec<Vec<String>> = self.pipe(&p).await?;
        for (key, row) in wanted.into_iter().zip(rows) {
            let mut entries = Vec::with_capacity(row.len());
            for e in row {
                let (s, at) = e.split_once(':').ok_or_else(|| corrupt("history"))?;
                entries.push((
                    s.parse().map_err(|_| corrupt("history seq"))?,
                    at.parse().map_err(|_| corrupt("history time"))?,
                ));
            }
            view.hist.insert(key, entries);
        }
        Ok(())
    }

    /// Loads everything needed to compute the states of `ids`.
    async fn prepare_states(&self, view: &mut View, ids: &[MessageId]) -> StoreResult<()> {
        self.ensure_messages(view, ids).await?;
        self.ensure_deliveries(view, ids).await?;
        let members: Vec<UserId> = view.members.keys().copied().collect();
        self.ensure_sharing(view, &members).await?;
        let min_seq = ids
            .iter()
            .filter_map(|m| view.messages.get(m).map(|m| m.seq))
            .min()
            .unwrap_or(Seq::MAX);
        self.ensure_history(view, &members, min_seq).await
    }

    /// A message of `c` by id: from Redis, else from Scylla. (A message's
    /// home is recorded just before its conversation commits, so a home
    /// without the message is a registration that never committed.)
    async fn find_message(
        &self,
        c: &ConversationId,
        m: &MessageId,
    ) -> StoreResult<Option<Message>> {
        let hot: Option<Vec<u8>> = self
            .query(redis::cmd("HGET").arg(self.keys.messages(c)).arg(hex(m)))
            .await?;
        match hot {
            Some(b) => Ok(Some(dec(&b, "message")?)),
            None => self.scylla.message(*m).await,
        }
    }

    /// Every one of `ids` was loaded into `view`; else the first missing one
    /// is named: another conversation's message, or an unknown one.
    async fn check_found(&self, view: &View, ids: &[MessageId]) -> StoreResult<()> {
        let missing = absent(ids, &view.messages);
        if missing.is_empty() {
            return Ok(());
        }
        let homes = self.homes(&missing).await?;
        let (id, home) = (missing[0], homes[0]);
        Err(match home {
            Some(_) => ServiceError::invalid(
                "message_ids",
                format!("message {id} belongs to another conversation"),
            ),
            None => ServiceError::not_found("message_ids", "message", id),
        })
    }

    /// `(seq, id, sender)` for seqs in `lo..=hi`.
    async fn between(&self, c: &ConversationId, lo: Seq, hi: Seq) -> StoreResult<Vec<Indexed>> {
        if lo > hi {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, f64)> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.seqs(c))
                    .arg(lo)
                    .arg(hi)
                    .arg("WITHSCORES"),
            )
            .await?;
        rows.into_iter()
            .map(|(member, score)| {
                let (id, sender) = member.split_once(':').ok_or_else(|| corrupt("seq index"))?;
                Ok(Indexed {
                    seq: score as Seq,
                    id: parse_uuid(id)?,
                    sender: parse_uuid(sender)?,
                })
            })
            .collect()
    }

    async fn last_seq(&self, c: &ConversationId) -> StoreResult<Seq> {
        let rows: Vec<(String, f64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys.seqs(c))
                    .arg(-1)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        Ok(rows.first().map_or(0, |(_, s)| *s as Seq))
    }

    /// Messages others sent after `wm` while `membership` covered them.
    async fn unread(
        &self,
        c: &ConversationId,
        u: &UserId,
        wm: Seq,
        membership: &Membership,
    ) -> StoreResult<u64> {
        Ok(self
            .between(c, wm.saturating_add(1), Seq::MAX)
            .await?
            .iter()
            .filter(|m| membership.receives(*u, m.sender, m.seq))
            .count() as u64)
    }

    /// The time after which a UUIDv7 message id without a home key in Redis
    /// is known to be unregistered, or `None` when no miss needs it.
    ///
    /// A home key lives the hot TTL from its registration, and a message id
    /// is minted before it is registered. So an id minted less than the hot
    /// TTL ago (minus [`CLOCK_SKEW_MS`]) whose home key is absent was never
    /// registered, provided this Redis held every registration since then:
    /// the id must also be minted after `complete_since`, which is written
    /// when this Redis first served us and again (later) whenever Redis lost
    /// its data. Such ids need no Scylla lookup, so registering new messages
    /// keeps working while Scylla is down. Other ids (not v7, older, or from
    /// before a Redis data loss) are looked up in Scylla as before.
    async fn new_id_horizon(
        &self,
        ids: &[MessageId],
        rows: &[Option<String>],
        since: Option<u64>,
    ) -> StoreResult<Option<u64>> {
        if ids
            .iter()
            .zip(rows)
            .all(|(m, row)| row.is_some() || v7_millis(m).is_none())
        {
            return Ok(None);
        }
        let now = crate::domain::now_millis().max(0) as u64;
        let since = match since {
            Some(t) => t,
            None => {
                // First use, or Redis lost its data: complete from now on.
                let key = self.keys.complete_since();
                let _: Option<String> = self
                    .query(redis::cmd("SET").arg(&key).arg(now).arg("NX"))
                    .await?;
                self.query::<Option<u64>>(redis::cmd("GET").arg(&key))
                    .await?
                    .unwrap_or(now)
            }
        };
        let ttl_ms = self.ttl().saturating_mul(1000);
        Ok(Some(since.max(now.saturating_sub(ttl_ms)) + CLOCK_SKEW_MS))
    }

    /// The conversation a message belongs to (re-warmed from Scylla).
    async fn homes(&self, ids: &[MessageId]) -> StoreResult<Vec<Option<ConversationId>>> {
        let mut p = redis::pipe();
        for m in ids {
            p.get(self.keys.message_home(m));
        }
        // The completeness marker rides in the same round trip.
        p.get(self.keys.complete_since());
        let mut rows: Vec<Option<String>> = self.pipe(&p).await?;
        let since = rows.pop().flatten().and_then(|t| t.parse::<u64>().ok());
        let new_after = self.new_id_horizon(ids, &rows, since).await?;
        // Misses (new ids, or expired homes) are looked up in Scylla
        // concurrently: a registration of a batch of new messages misses on
        // every one of them, unless Redis can tell they are new.
        let lookups = ids.iter().zip(rows).map(|(m, row)| async move {
            if let Some(c) = row {
                return Ok(Some(parse_uuid(&c)?));
            }
            if known_new(m, new_after) {
                return Ok(None);
            }
            let Some(msg) = self.scylla.message(*m).await? else {
                return Ok(None);
            };
            let _: () = self
                .query(
                    redis::cmd("SET")
                        .arg(self.keys.message_home(m))
                        .arg(hex(&msg.conversation))
                        .arg("EX")
                        .arg(self.ttl()),
                )
                .await?;
            Ok(Some(msg.conversation))
        });
        futures::future::try_join_all(lookups).await
    }

    // ----- writing -----------------------------------------------------

    /// Registers a queue as holding work; returns the registration time.
    async fn register(&self, queue: &str) -> StoreResult<u64> {
        scripts::REGISTER
            .key(self.keys.queue_index())
            .arg(queue)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    /// Keeps the start of a Scylla outage in Redis, shared by the nodes: the
    /// first node whose probe fails records it (`SET NX`), every node that
    /// fails reads it and keeps it alive (it expires `OUTAGE_KEY_TTL` after
    /// the last failing probe, so a key left by nodes that died cannot start
    /// a later outage early), and a node that reaches Scylla again ends it
    /// (its flusher drains the queues, so the backlog stops growing). While
    /// Scylla answers, this sends nothing.
    async fn share_outage(&self, scylla_ok: bool) {
        let key = self.keys.scylla_down_since();
        if scylla_ok {
            if self.scylla_down_since.swap(0, Ordering::AcqRel) != 0
                && let Err(e) = self.query::<()>(redis::cmd("DEL").arg(&key)).await
            {
                tracing::debug!(error = %e, "could not clear the shared outage start");
            }
            return;
        }
        let now = domain::now_millis().max(1) as u64;
        let since = self
            .query::<Option<u64>>(redis::cmd("SET").arg(&key).arg(now).arg("NX").arg("GET"))
            .await
            .ok()
            .map(|was| was.unwrap_or(now));
        let ttl = OUTAGE_KEY_TTL.as_millis() as u64;
        if let Err(e) = self
            .query::<()>(redis::cmd("PEXPIRE").arg(&key).arg(ttl))
            .await
        {
            tracing::debug!(error = %e, "could not keep the shared outage start");
        }
        match since {
            Some(since) => self.scylla_down_since.store(since, Ordering::Release),
            None => {
                let _ = self.scylla_down_since.compare_exchange(
                    0,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
    }

    /// How long Scylla has been unreachable, as the nodes recorded it (zero
    /// while this node reaches it).
    fn outage(&self) -> Duration {
        match self.scylla_down_since.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            since => {
                Duration::from_millis((domain::now_millis().max(0) as u64).saturating_sub(since))
            }
        }
    }

    /// Every write queues a change for Scylla: past `max_outage` of Scylla
    /// being unreachable, writes are refused so that the backlog in Redis
    /// stops growing. Nothing is applied; reads keep working.
    fn backlog_room(&self) -> StoreResult<()> {
        let outage = self.outage();
        if outage <= self.opts.max_outage {
            return Ok(());
        }
        Err(ServiceError::unavailable(format!(
            "writes are paused: the persistent store (Scylla) has been unreachable for {} s, \
                 longer than --writebehind-max-outage-secs ({}), and changes waiting for it stay \
                 bounded; reads keep working, and writes resume when Scylla answers",
            outage.as_secs(),
            self.opts.max_outage.as_secs()
        )))
    }

    /// Compare-and-apply on the hash `versioned` (see [`scripts::APPLY`]).
    async fn apply_on(
        &self,
        versioned: String,
        expected: u64,
        registered: u64,
        cmds: Vec<Vec<Vec<u8>>>,
    ) -> StoreResult<Applied> {
        self.backlog_room()?;
        let mut inv = scripts::APPLY.key(&versioned);
        inv.arg(expected)
            .arg(registered)
            .arg(LEASE_MS)
            .arg(cmds.len());
        for c in &cmds {
            inv.arg(c.len());
            for a in c {
                inv.arg(a.as_slice());
            }
        }
        let r: i64 = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(match r {
            -1 => Applied::Conflict,
            -2 => Applied::LeaseExpired,
            _ => {
                self.wait_replicas(&versioned).await?;
                Applied::Done
            }
        })
    }

    /// With `--redis-wait-replicas N`: waits until N replicas of the
    /// primary holding `key` have every write sent to it so far (`WAIT`), so
    /// that an acknowledged write survives a failover to one of them. The
    /// node's connection to that primary is multiplexed, so the WAIT covers
    /// the commit just made (sent before it on the same connection), and
    /// also holds up the calls behind it for one replication round trip:
    /// that is the setting's cost.
    async fn wait_replicas(&self, key: &str) -> StoreResult<()> {
        let Some((n, timeout)) = self.opts.wait_replicas else {
            return Ok(());
        };
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(n).arg(timeout.as_millis() as u64);
        let acked: i64 = match self.conn() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await.map_err(redis_err)?,
            Conn::Cluster(mut c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await
                    .map_err(redis_err)?;
                redis::FromRedisValue::from_redis_value(v).map_err(|e| redis_err(e.into()))?
            }
        };
        if acked < i64::from(n) {
            tracing::warn!(
                acked,
                wanted = n,
                "redis replicas did not confirm a write in time"
            );
            return Err(ServiceError::unavailable(format!(
                "write applied on the Redis primary but confirmed by {acked} of {n} replicas within {} ms (--redis-wait-replicas); its outcome is unknown and retrying is safe: writes are idempotent",
                timeout.as_millis()
            )));
        }
        Ok(())
    }

    async fn apply(
        &self,
        c: &ConversationId,
        expected: u64,
        registered: u64,
        cmds: Vec<Vec<Vec<u8>>>,
    ) -> StoreResult<Applied> {
        self.apply_on(self.keys.meta(c), expected, registered, cmds)
            .await
    }

    /// Commits a plan decided at `view.ver`: the writes, the outbox entries
    /// and the queue entries, atomically. `Ok(false)`: the version moved.
    async fn commit(&self, view: &View, mut plan: Plan) -> StoreResult<bool> {
        let c = view.c;
        let k = &self.keys;
        let ttl = self.ttl();
        let has_events = !plan.events.is_empty();
        for (u, body) in &plan.events {
            plan.cmds.push(rcmd![
                "XADD",
                k.outbox(&c),
                "*",
                "u",
                hex(u),
                "b",
                enc(body)
            ]);
        }
        if has_events {
            // Forwarded within moments; the expiry only reclaims the key of
            // a conversation that went quiet.
            plan.cmds.push(rcmd!["EXPIRE", k.outbox(&c), ttl]);
        }
        // The conversation's queue is registered for Scylla writes and for
        // events alike: if this node dies before forwarding, the next drain
        // of that queue (on any node) forwards the outbox.
        let registered = if plan.persist.is_empty() && !has_events {
            0
        } else {
            let q = k.conv_queue(&c);
            if !plan.persist.is_empty() {
                plan.cmds
                    .push(rcmd!["XADD", q.clone(), "*", "p", enc(&plan.persist)]);
            }
            self.register(&q).await?
        };
        for key in k.conversation_state(&c) {
            plan.cmds.push(rcmd!["EXPIRE", key, ttl]);
        }
        let applied = self
            .apply(&c, view.ver, registered, std::mem::take(&mut plan.cmds))
            .await?;
        match applied {
            Applied::Done => {
                if has_events {
                    self.forward(&c).await?;
                }
                Ok(true)
            }
            Applied::Conflict | Applied::LeaseExpired => Ok(false),
        }
    }

    /// Moves committed outbox entries of `c` into their addressees' logs, in
    /// order and at most once each, then deletes them from the outbox.
    async fn forward(&self, c: &ConversationId) -> StoreResult<()> {
        loop {
            let entries: redis::streams::StreamRangeReply = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(self.keys.outbox(c))
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(500),
                )
                .await?;
            if entries.ids.is_empty() {
                return Ok(());
            }
            let mut done = Vec::with_capacity(entries.ids.len());
            for entry in &entries.ids {
                let user: String = entry.get("u").ok_or_else(|| corrupt("outbox user"))?;
                let body: Vec<u8> = entry.get("b").ok_or_else(|| corrupt("outbox body"))?;
                let u = parse_uuid(&user)?;
                let _: (i64, i64, String) = scripts::FORWARD
                    .key(self.keys.log_meta(&u))
                    .key(self.keys.log(&u))
                    .arg(hex(c))
                    .arg(&entry.id)
                    .arg(body)
                    .arg(self.opts.log_retention.max(1))
                    .arg(self.ttl())
                    .arg(fresh_epoch())
                    .arg(self.keys.bus())
                    .arg(user)
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(redis_err)?;
                done.push(entry.id.clone());
            }
            let mut cmd = redis::cmd("XDEL");
            cmd.arg(self.keys.outbox(c));
            for id in &done {
                cmd.arg(id);
            }
            let _: i64 = self.query(&cmd).await?;
        }
    }

    /// Announces that the states of `msgs` changed (the view already holds the
    /// new state): events now for direct conversations, the group window
    /// otherwise.
    async fn touch(&self, view: &mut View, plan: &mut Plan, msgs: &[Indexed]) -> StoreResult<bool> {
        if msgs.is_empty() {
            return Ok(false);
        }
        if view.group() {
            // A few messages by id; more (a read or a membership change
            // covering many) as one seq range, so the write stays one small
            // command however many messages it covers. The range may hold
            // messages whose state did not change: their summary repeats
            // absolute counts, which is harmless.
            let mut cmd = rcmd!["HSET", self.keys.window(&view.c)];
            if msgs.len() <= WINDOW_IDS {
                for m in msgs {
                    cmd.extend(rcmd![hex(&m.id), "1"]);
                }
            } else {
                let lo = msgs.iter().map(|m| m.seq).min().unwrap_or(0);
                let hi = msgs.iter().map(|m| m.seq).max().unwrap_or(0);
                cmd.extend(rcmd![format!("r:{lo}:{hi}"), "1"]);
            }
            plan.cmds.push(cmd);
            plan.cmds
                .push(rcmd!["EXPIRE", self.keys.window(&view.c), self.ttl()]);
            return Ok(true);
        }
        let ids: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
        self.prepare_states(view, &ids).await?;
        emit_states(view, plan, &ids, false);
        Ok(false)
    }

    /// Opens (or keeps) this node's timer for `c`'s group window.
    fn schedule_window(&self, c: ConversationId) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        w.touch(c, 0, 0);
    }

    /// Flushes `c`'s group window: one summary per sender with absolute counts.
    async fn flush_window(&self, c: &ConversationId) -> StoreResult<()> {
        let _serial = self.lock([c]).await;
        for _ in 0..MAX_ATTEMPTS {
            // Counts come from the indexes; nothing here reads every member.
            let (ver, n): (Option<u64>, Option<u64>) = self
                .query(redis::cmd("HMGET").arg(self.keys.meta(c)).arg("v").arg("n"))
                .await?;
            let ver = match (ver, n) {
                (ver, Some(_)) => ver.unwrap_or(0),
                _ => match self.view(c).await? {
                    Some(view) => view.ver,
                    None => return Ok(()),
                },
            };
            let touched: HashMap<String, String> = self
                .query(redis::cmd("HGETALL").arg(self.keys.window(c)))
                .await?;
            if touched.is_empty() {
                return Ok(());
            }
            let mut ids: Vec<MessageId> = Vec::new();
            for field in touched.keys() {
                match field.strip_prefix("r:").and_then(|r| r.split_once(':')) {
                    Some((lo, hi)) => {
                        let lo = lo.parse().map_err(|_| corrupt("window range"))?;
                        let hi = hi.parse().map_err(|_| corrupt("window range"))?;
                        ids.extend(self.between(c, lo, hi).await?.iter().map(|m| m.id));
                    }
                    None => ids.push(parse_uuid(field)?),
                }
            }
            let ids = dedup(ids);
            let mut view = View::bare(*c, ver);
            self.ensure_messages(&mut view, &ids).await?;
            let msgs: Vec<Message> = ids
                .iter()
                .filter_map(|m| view.messages.get(m))
                .copied()
                .collect();
            let mut states = Vec::with_capacity(msgs.len());
            for chunk in msgs.chunks(fanout::MAX_MESSAGES_PER_EVENT) {
                let aggregates = self.aggregates(c, None, chunk).await?;
                states.extend(counted_states(chunk.to_vec(), aggregates));
            }
            let mut plan = Plan::default();
            plan.cmds.push(rcmd!["DEL", self.keys.window(c)]);
            emit(&mut plan, *c, true, states);
            if self.commit(&view, plan).await? {
                return Ok(());
            }
            backoff().await;
        }
        Err(contended(c))
    }

    /// Applies a read by `u` up to `to` to the view and the plan.
    async fn apply_read(
        &self,
        view: &mut View,
        plan: &mut Plan,
        u: &UserId,
        membership: &Membership,
        to: Seq,
        at: Millis,
    ) -> StoreResult<(ReadResult, bool)> {
        let c = view.c;
        let wm = view.wm(u);
        let sharing = self.sharing_of(&[*u]).await?[0].0;
        view.sharing.insert(*u, sharing);
        let Some(adv) = wm.advance(to, sharing) else {
            return Ok((
                ReadResult {
                    read_up_to: wm.seq,
                    advanced: false,
                    unread: self.unread(&c, u, wm.seq, membership).await?,
                },
                false,
            ));
        };
        let (before, after) = (adv.before, adv.after);
        let k = &self.keys;
        plan.cmds.push(rcmd![
            "HSET",
            k.watermarks(&c),
            hex(u),
            format!("{}:{}", after.seq, after.public_seq)
        ]);
        plan.cmds
            .extend(index_member(k, &c, u, membership, after, sharing));
        plan.cmds.push(rcmd![
            "ZADD",
            k.history(&c, u, false),
            after.seq,
            format!("{}:{at}", after.seq)
        ]);
        plan.cmds
            .push(rcmd!["EXPIRE", k.history(&c, u, false), self.ttl()]);
        if adv.is_public() {
            plan.cmds.push(rcmd![
                "ZADD",
                k.history(&c, u, true),
                after.seq,
                format!("{}:{at}", after.seq)
            ]);
            plan.cmds
                .push(rcmd!["EXPIRE", k.history(&c, u, true), self.ttl()]);
        }
        plan.persist.push(PersistOp::Watermark {
            conversation: c,
            user: *u,
            watermark: after,
            public_advanced: adv.is_public(),
            at,
        });
        // Histories must be loaded before the view changes (it is the old state
        // plus this advancement).
        let first = if adv.is_public() {
            before.public_seq.min(before.seq)
        } else {
            before.seq
        };
        let candidates = self.between(&c, first + 1, after.seq).await?;
        let group = view.group();
        if !group {
            // A direct conversation's events carry whole states, computed
            // from the view; a group's summary is counted later.
            let ids: Vec<MessageId> = candidates.iter().map(|m| m.id).collect();
            self.ensure_deliveries(view, &ids).await?;
            let members: Vec<UserId> = view.members.keys().copied().collect();
            let min_seq = candidates.first().map_or(Seq::MAX, |m| m.seq);
            self.ensure_history(view, &members, min_seq).await?;
        }
        view.wms.insert(*u, after);
        let h = view.hist.entry((*u, false)).or_default();
        h.push((after.seq, at));
        if adv.is_public() {
            view.hist
                .entry((*u, true))
                .or_default()
                .push((after.seq, at));
        }
        let unread = self.unread(&c, u, after.seq, membership).await?;
        plan.events.push((
            *u,
            EventBody::Watermark {
                conversation: c,
                read_up_to: after.seq,
                unread,
            },
        ));
        let mut changed = Vec::new();
        for m in candidates {
            if !membership.receives(*u, m.sender, m.seq) {
                continue;
            }
            let visible = adv.is_public() && m.seq > before.public_seq;
            // In a group, a message already delivered is windowed too: its
            // summary has absolute counts, so one more is harmless, and
            // knowing would mean reading every covered receipt hash.
            let newly_delivered =
                m.seq > before.seq && (group || view.delivered_at(&m.id, u).is_none());
            if visible || newly_delivered {
                changed.push(m);
            }
        }
        let windowed = self.touch(view, plan, &changed).await?;
        Ok((
            ReadResult {
                read_up_to: after.seq,
                advanced: true,
                unread,
            },
            windowed,
        ))
    }

    /// Brings `u`'s entries in the counting indexes of every conversation it
    /// is in up to its sharing setting, so counts follow the setting "at once"
    /// (before `set_sharing` returns). Each conversation is a compare-and-
    /// apply that reads the setting after the conversation's version, so a
    /// concurrent read or toggle cannot leave a stale entry behind.
    async fn reindex_sharing(&self, u: &UserId) -> StoreResult<()> {
        let hot: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.keys.user_conversations(u)))
            .await?;
        let mut convs: BTreeSet<ConversationId> = hot
            .iter()
            .map(|c| parse_uuid(c))
            .collect::<StoreResult<_>>()?;
        // Scylla adds conversations whose membership set entry expired. While
        // it is down the Redis set is what there is: indexing those is
        // better than leaving every index as it was (the setting itself is
        // already committed, and cold conversations are indexed from it when
        // they are re-warmed).
        match self.scylla.user_conversations(*u).await {
            Ok(more) => convs.extend(more),
            Err(e) => tracing::warn!(
                error = %e.report(),
                "privacy re-index: scylla unavailable; indexing the conversations Redis knows"
            ),
        }
        let field = format!("m:{}", hex(u));
        'conv: for c in convs {
            let _serial = self.lock([&c]).await;
            for _ in 0..MAX_ATTEMPTS {
                let mut p = redis::pipe();
                p.cmd("HMGET")
                    .arg(self.keys.meta(&c))
                    .arg("v")
                    .arg("n")
                    .arg(&field);
                p.cmd("HGET").arg(self.keys.watermarks(&c)).arg(hex(u));
                // (version, member count, membership), watermark.
                type Row = ((Option<u64>, Option<u64>, Option<Vec<u8>>), Option<String>);
                let ((ver, n, membership), wm): Row = self.pipe(&p).await?;
                // Not in Redis: a re-warm indexes it from the setting.
                let (Some(_), Some(membership)) = (n, membership) else {
                    continue 'conv;
                };
                let membership: Membership = dec(&membership, "membership")?;
                let wm = wm
                    .as_deref()
                    .map(parse_watermark)
                    .transpose()?
                    .unwrap_or_default();
                let sharing = self.sharing_of(&[*u]).await?[0].0;
                let cmds = index_member(&self.keys, &c, u, &membership, wm, sharing);
                if let Applied::Done = self.apply(&c, ver.unwrap_or(0), 0, cmds).await? {
                    continue 'conv;
                }
                backoff().await;
            }
            return Err(contended(&c));
        }
        Ok(())
    }

    // ----- the log and the bus -----------------------------------------

    async fn log_head(&self, u: &UserId) -> StoreResult<(u64, u64, u64)> {
        let (epoch, next, trim): (String, u64, u64) = scripts::LOG_HEAD
            .key(self.keys.log_meta(u))
            .key(self.keys.log(u))
            .arg(fresh_epoch())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok((epoch.parse().map_err(|_| corrupt("epoch"))?, next, trim))
    }

    async fn events_after(&self, u: &UserId, after: u64, max: usize) -> StoreResult<Vec<Event>> {
        let rows: Vec<Vec<u8>> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.log(u))
                    .arg(format!("({after}"))
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(max),
            )
            .await?;
        rows.iter().map(|r| parse_log_entry(u, r)).collect()
    }

    async fn snapshot(&self, u: &UserId) -> StoreResult<Snapshot> {
        let sent: Vec<String> = self
            .query(
                redis::cmd("ZREVRANGE")
                    .arg(self.keys.sent(u))
                    .arg(0)
                    .arg(SNAPSHOT_MESSAGES as i64 - 1),
            )
            .await?;
        let mut recent: Vec<(ConversationId, MessageId)> = Vec::new();
        if sent.is_empty() {
            for m in self.scylla.recent_sent(*u, SNAPSHOT_MESSAGES).await? {
                recent.push((m.conversation, m.id));
            }
        } else {
            for s in sent {
                let (c, m) = s.split_once(':').ok_or_else(|| corrupt("sent index"))?;
                recent.push((parse_uuid(c)?, parse_uuid(m)?));
            }
        }
        let mut states: HashMap<MessageId, MessageState> = HashMap::new();
        let mut by_conv: BTreeMap<ConversationId, Vec<MessageId>> = BTreeMap::new();
        for (c, m) in &recent {
            by_conv.entry(*c).or_default().push(*m);
        }
        // A group's view here is the caller's part only (`view_for`): its
        // states are counted, and its watermark is the caller's.
        for (c, ids) in &by_conv {
            let Some(mut v) = self.view_for(c, u).await? else {
                continue;
            };
            if v.group() {
                self.ensure_messages(&mut v, ids).await?;
                let msgs: Vec<Message> = ids
                    .iter()
                    .filter_map(|m| v.messages.get(m))
                    .copied()
                    .collect();
                let aggregates = self.aggregates(c, Some(*u), &msgs).await?;
                for state in counted_states(msgs, aggregates) {
                    states.insert(state.message.id, state);
                }
            } else {
                self.prepare_states(&mut v, ids).await?;
                for m in ids {
                    if let Some(msg) = v.messages.get(m) {
                        states.insert(*m, v.state(u, msg, false));
                    }
                }
            }
        }
        let recent_messages = recent
            .iter()
            .filter_map(|(_, m)| states.remove(m))
            .collect();
        let mut convs: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.keys.user_conversations(u)))
            .await?;
        if convs.is_empty() {
            convs = self
                .scylla
                .user_conversations(*u)
                .await?
                .iter()
                .map(hex)
                .collect();
        }
        convs.sort();
        let mut watermarks = Vec::new();
        for c in convs {
            if watermarks.len() >= SNAPSHOT_CONVERSATIONS {
                break;
            }
            let c = parse_uuid(&c)?;
            let Some(v) = self.view_for(&c, u).await? else {
                continue;
            };
            let Some(membership) = v.members.get(u).filter(|m| m.is_current()) else {
                continue;
            };
            let wm = v.wm(u);
            watermarks.push((c, wm.seq, self.unread(&c, u, wm.seq, membership).await?));
        }
        Ok(Snapshot {
            recent_messages,
            watermarks,
        })
    }

    // ----- flushing to Scylla ------------------------------------------

    async fn flush_all(&self) -> StoreResult<u64> {
        let queues: Vec<(String, f64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys.queue_index())
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let mut total = 0;
        for (queue, score) in queues {
            let n = self.flush_queue(&queue, score).await?;
            self.persisted.fetch_add(n, Ordering::Relaxed);
            total += n;
        }
        Ok(total)
    }

    /// Drains one queue into Scylla (under a lock, so nodes do not double the
    /// work), then finishes what a dead node may have left in the
    /// conversation's outbox and window.
    async fn flush_queue(&self, queue: &str, score: f64) -> StoreResult<u64> {
        let lock = self.keys.flush_lock(queue);
        let token = Uuid::new_v4().to_string();
        let got: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(&lock)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000),
            )
            .await?;
        if got.is_none() {
            return Ok(0);
        }
        let result = self.drain(queue, score).await;
        let _: i64 = scripts::UNLOCK
            .key(&lock)
            .arg(&token)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        result
    }

    async fn drain(&self, queue: &str, score: f64) -> StoreResult<u64> {
        let mut total = 0u64;
        loop {
            let entries: redis::streams::StreamRangeReply = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(queue)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(FLUSH_CHUNK),
                )
                .await?;
            if entries.ids.is_empty() {
                break;
            }
            let mut ops = Vec::new();
            for e in &entries.ids {
                let bytes: Vec<u8> = e.get("p").ok_or_else(|| corrupt("queue entry"))?;
                ops.extend(dec::<Vec<PersistOp>>(&bytes, "queue entry")?);
            }
            self.scylla.apply(&ops).await?;
            total += ops.len() as u64;
            let mut drop = scripts::XDEL_DROP.key(queue);
            for e in &entries.ids {
                drop.arg(&e.id);
            }
            let _: i64 = drop
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_err)?;
        }
        let drained_at = std::time::Instant::now();
        if let Some(c) = self.keys.queue_conversation(queue) {
            self.forward(&c).await?;
            self.flush_window(&c).await?;
        }
        if drained_at.elapsed() > Duration::from_millis(LEASE_MS / 2) {
            // A writer holding a registration from before the drain may have
            // appended since; keep the queue registered, the next round
            // drains and forgets it.
            return Ok(total);
        }
        let _: i64 = scripts::UNREGISTER
            .key(self.keys.queue_index())
            .arg(queue)
            .arg(score as u64)
            .arg(LEASE_MS)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(total)
    }

    async fn ping(&self) -> bool {
        let redis_ok = tokio::time::timeout(
            Duration::from_secs(2),
            self.query::<String>(&redis::cmd("PING")),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let scylla_ok = tokio::time::timeout(Duration::from_secs(2), self.scylla.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        let was = self.scylla_up.swap(scylla_ok, Ordering::AcqRel);
        // With Redis down too, it falls back to this node's own clock.
        self.share_outage(scylla_ok).await;
        if was != scylla_ok {
            if scylla_ok {
                tracing::info!("scylla reachable again; queued changes drain on the next flush");
            } else {
                tracing::warn!(
                    "scylla unreachable: calls Redis can answer keep working, changes queue in Redis"
                );
            }
        }
        // Health follows Redis alone: while Scylla is down, every call Redis
        // can answer still works, so the node must stay in rotation.
        redis_ok
    }
}

enum Applied {
    Done,
    Conflict,
    LeaseExpired,
}

fn contended(c: &ConversationId) -> ServiceError {
    ServiceError::unavailable(format!(
        "conversation {c} is too contended right now; retry"
    ))
}

async fn backoff() {
    let ms = rand::random_range(1..8u64);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn fresh_epoch() -> u64 {
    // Below 2^53 so Lua's numbers never round it (it is kept as text anyway).
    rand::random_range(1..(1u64 << 53))
}

fn parse_view(
    c: &ConversationId,
    meta: HashMap<String, Vec<u8>>,
    wms: HashMap<String, String>,
) -> StoreResult<View> {
    let num = |f: &str| -> StoreResult<u64> {
        meta.get(f)
            .map(|b| {
                std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .map(|v| v.max(0) as u64)
                    .ok_or_else(|| corrupt("meta number"))
            })
            .transpose()
            .map(|v| v.unwrap_or(0))
    };
    let mut members = BTreeMap::new();
    for (f, v) in &meta {
        if let Some(u) = f.strip_prefix("m:") {
            members.insert(parse_uuid(u)?, dec(v, "membership")?);
        }
    }
    let mut watermarks = HashMap::new();
    for (u, v) in wms {
        watermarks.insert(parse_uuid(&u)?, parse_watermark(&v)?);
    }
    Ok(View {
        c: *c,
        ver: num("v")?,
        mver: num("mv")?,
        stamp: num("t")? as Millis,
        count: num("n")?,
        members,
        wms: watermarks,
        sharing: HashMap::new(),
        messages: HashMap::new(),
        deliveries: HashMap::new(),
        hist: HashMap::new(),
    })
}

/// A watermarks-hash value: `seq:public_seq`.
fn parse_watermark(v: &str) -> StoreResult<ReadWatermark> {
    let (s, p) = v.split_once(':').ok_or_else(|| corrupt("watermark"))?;
    Ok(ReadWatermark {
        seq: s.parse().map_err(|_| corrupt("watermark"))?,
        public_seq: p.parse().map_err(|_| corrupt("watermark"))?,
    })
}

fn parse_log_entry(u: &UserId, row: &[u8]) -> StoreResult<Event> {
    let colon = row
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| corrupt("log entry"))?;
    let offset = std::str::from_utf8(&row[..colon])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt("log offset"))?;
    Ok(Event {
        offset,
        user: *u,
        body: dec(&row[colon + 1..], "log event")?,
    })
}

/// Parses a bus message `<user>:<epoch>:<offset>:<event>`.
fn parse_bus(payload: &[u8]) -> Option<(u64, Event)> {
    let mut parts = payload.splitn(4, |b| *b == b':');
    let user = Uuid::parse_str(std::str::from_utf8(parts.next()?).ok()?).ok()?;
    let epoch = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let body = postcard::from_bytes(parts.next()?).ok()?;
    Some((epoch, Event { offset, user, body }))
}

/// Computes the states of `ids` for their senders and adds one event per
/// sender (split into chunks) to the plan.
fn emit_states(view: &View, plan: &mut Plan, ids: &[MessageId], group: bool) {
    let states = ids
        .iter()
        .filter_map(|m| view.messages.get(m))
        .map(|m| view.state(&m.sender, m, !group))
        .collect();
    emit(plan, view.c, group, states);
}

/// Adds the events that tell the senders of `states` their new states.
fn emit(plan: &mut Plan, c: ConversationId, group: bool, states: Vec<MessageState>) {
    plan.events.extend(fanout::receipt_events(c, group, states));
}

/// Counts-only states of `msgs` (see `counts.rs`).
fn counted_states(msgs: Vec<Message>, aggregates: Vec<domain::Aggregate>) -> Vec<MessageState> {
    msgs.into_iter()
        .zip(aggregates)
        .map(|(message, aggregate)| MessageState {
            message,
            aggregate,
            recipients: Vec::new(),
        })
        .collect()
}

/// The counting indexes' entries for one member (see "Counting reads" in
/// docs/storage.md): a member with one open interval from `j` is *simple* and
/// lives in the sorted sets, scored so that one `ZCOUNT` each counts reads;
/// anyone else (a member who left, even if back) is listed in `cx` and
/// counted one by one.
fn index_member(
    keys: &Keys,
    c: &ConversationId,
    u: &UserId,
    membership: &Membership,
    wm: ReadWatermark,
    sharing: bool,
) -> Vec<Vec<Vec<u8>>> {
    let member = hex(u);
    let (jz, tz, rz, jr) = (
        keys.joins(c),
        keys.true_readers(c),
        keys.readers(c),
        keys.sharing_joins(c),
    );
    match simple_join(membership) {
        Some(j) => {
            let floor = j.saturating_sub(1);
            let mut cmds = vec![
                rcmd!["ZADD", jz, j, member.clone()],
                rcmd!["ZADD", tz, wm.seq.max(floor), member.clone()],
                rcmd!["SREM", keys.complex(c), member.clone()],
            ];
            if sharing {
                cmds.push(rcmd!["ZADD", rz, wm.public_seq.max(floor), member.clone()]);
                cmds.push(rcmd!["ZADD", jr, j, member]);
            } else {
                cmds.push(rcmd!["ZREM", rz, member.clone()]);
                cmds.push(rcmd!["ZREM", jr, member]);
            }
            cmds
        }
        None => vec![
            rcmd!["ZREM", jz, member.clone()],
            rcmd!["ZREM", tz, member.clone()],
            rcmd!["ZREM", rz, member.clone()],
            rcmd!["ZREM", jr, member.clone()],
            rcmd!["SADD", keys.complex(c), member],
        ],
    }
}

/// The join seq of a member whose membership is one open interval.
fn simple_join(membership: &Membership) -> Option<Seq> {
    match membership.intervals.as_slice() {
        [only] if only.until.is_none() => Some(only.from),
        _ => None,
    }
}

fn dedup<T: Copy + Eq + std::hash::Hash>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|x| seen.insert(*x)).collect()
}

// ----- background tasks ------------------------------------------------

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Listens on the bus and hands events to local subscribers. After a lost
/// connection, every local subscriber is ended with a resumable status: it
/// resumes from its cursor and replays what the bus may have dropped (or gets
/// a reset if the log's epoch changed, e.g. Redis restarted empty).
async fn bus_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    use futures::StreamExt as _;
    let mut first = true;
    loop {
        let connected = async {
            let client = redis::Client::open(inner.bus_url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(inner.keys.bus()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match connected {
            Ok(pubsub) => {
                if !first {
                    tracing::warn!("event bus reconnected; ending local streams so they resume");
                }
                inner.hub.disconnect_all();
                inner.bus_up.store(true, Ordering::Release);
                first = false;
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                            if let Some((_epoch, event)) = parse_bus(&payload) {
                                inner.hub.publish(&[Arc::new(event)]);
                            }
                        }
                        _ = stopped(&mut stop) => return,
                    }
                }
                tracing::warn!("event bus connection lost");
                inner.bus_up.store(false, Ordering::Release);
                inner.hub.disconnect_all();
            }
            Err(e) => tracing::warn!(error = %e, "event bus: cannot connect"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

async fn window_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let tick = (inner.opts.group_window / 10).max(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stopped(&mut stop) => return,
        }
        let due = {
            let mut w = inner.windows.lock().unwrap_or_else(|e| e.into_inner());
            w.take_due(false)
        };
        for (c, _) in due {
            if let Err(e) = inner.flush_window(&c).await {
                tracing::warn!(conversation = %c, error = %e.report(), "group window flush failed; retrying");
                inner.schedule_window(c);
            }
        }
    }
}

async fn flush_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.opts.flush_interval) => {}
            _ = stopped(&mut stop) => return,
        }
        match inner.flush_all().await {
            Ok(n) if n > 0 => tracing::debug!(persisted = n, "flushed to scylla"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.report(), "flush to scylla failed; will retry"),
        }
    }
}

async fn health_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        let ok = inner.ping().await;
        let was = inner.healthy.swap(ok, Ordering::AcqRel);
        if was != ok {
            if ok {
                tracing::info!("redis reachable again");
            } else {
                tracing::warn!("redis is unreachable");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

// ----- the contract ----------------------------------------------------

#[async_trait]
impl ReceiptStore for RedisStore {
    async fn create_conversation(
        &self,
        conversation: ConversationId,
        members: Vec<UserId>,
    ) -> StoreResult<bool> {
        let s = &self.inner;
        let members = dedup(members);
        let c = conversation;
        for _ in 0..MAX_ATTEMPTS {
            if let Some(view) = s.view(&c).await? {
                let existing: HashSet<UserId> = view
                    .members
                    .iter()
                    .filter(|(_, m)| m.is_current())
                    .map(|(u, _)| *u)
                    .collect();
                if existing == members.iter().copied().collect() {
                    return Ok(false);
                }
                return Err(ServiceError::AlreadyExists {
                    field: "conversation_id".into(),
                    reason: format!("conversation {c} exists with other members"),
                });
            }
            let image: Vec<(UserId, Membership)> = members
                .iter()
                .map(|u| (*u, Membership::joined(1)))
                .collect();
            let mut plan = Plan::default();
            let mut meta = rcmd![
                "HSET",
                s.keys.meta(&c),
                "n",
                members.len() as u64,
                "mv",
                1u64,
                "t",
                0i64
            ];
            for (u, m) in &image {
                meta.extend(rcmd![format!("m:{}", hex(u)), enc(m)]);
            }
            plan.cmds.push(meta);
            let sharing = s.sharing_of(&members).await?;
            for ((u, m), (shares, _)) in image.iter().zip(sharing) {
                plan.cmds.extend(index_member(
                    &s.keys,
                    &c,
                    u,
                    m,
                    ReadWatermark::default(),
                    shares,
                ));
            }
            plan.persist.push(PersistOp::Conversation {
                conversation: c,
                members: image,
                version: 1,
            });
            if s.commit(&View::bare(c, 0), plan).await? {
                let mut p = redis::pipe();
                for u in &members {
                    p.sadd(s.keys.user_conversations(u), hex(&c))
                        .ignore()
                        .expire(s.keys.user_conversations(u), s.ttl() as i64)
                        .ignore();
                }
                s.pipe::<()>(&p).await?;
                return Ok(true);
            }
            backoff().await;
        }
        Err(contended(&c))
    }

    async fn add_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
    ) -> StoreResult<MembershipResult> {
        self.change_members(conversation, changes, true).await
    }

    async fn remove_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
    ) -> StoreResult<MembershipResult> {
        self.change_members(conversation, changes, false).await
    }

    async fn register_messages(&self, messages: Vec<NewMessage>) -> StoreResult<u64> {
        let s = &self.inner;
        // Validate the whole batch before writing anything.
        let order = distinct_registrations(&messages)?;
        let ids: Vec<MessageId> = order.iter().map(|(_, m)| m.id).collect();
        let homes = s.homes(&ids).await?;
        let mut by_conv: BTreeMap<ConversationId, Vec<(usize, Message)>> = BTreeMap::new();
        for (i, m) in &order {
            by_conv.entry(m.conversation).or_default().push((*i, *m));
        }
        let home_of: HashMap<MessageId, Option<ConversationId>> =
            ids.iter().copied().zip(homes).collect();
        // Per conversation: validate (all conversations first), then commit.
        let mut plans: Vec<(View, Plan, Vec<Message>)> = Vec::new();
        let mut total = 0;
        let _serial = s.lock(by_conv.keys()).await;
        for attempt in 0..MAX_ATTEMPTS {
            plans.clear();
            for (c, msgs) in &by_conv {
                let (i0, _) = msgs[0];
                let Some(mut view) = s.view(c).await? else {
                    return Err(ServiceError::not_found(
                        format!("messages[{i0}].conversation_id"),
                        "conversation",
                        c,
                    ));
                };
                let ids: Vec<MessageId> = msgs.iter().map(|(_, m)| m.id).collect();
                s.ensure_messages(&mut view, &ids).await?;
                let seqs: Vec<Seq> = msgs.iter().map(|(_, m)| m.seq).collect();
                let taken = taken_seqs(s, c, &seqs).await?;
                let mut fresh = Vec::new();
                for (i, m) in msgs {
                    let existing = match view.messages.get(&m.id) {
                        Some(e) => Some(*e),
                        None => match home_of.get(&m.id).copied().flatten() {
                            Some(home) if home != *c => s.find_message(&home, &m.id).await?,
                            _ => None,
                        },
                    };
                    let sender_is_member = view
                        .members
                        .get(&m.sender)
                        .is_some_and(|ms| ms.contains(m.seq));
                    if judge_registration(
                        *i,
                        m,
                        existing,
                        taken.get(&m.seq).copied(),
                        sender_is_member,
                    )? {
                        fresh.push(*m);
                    }
                }
                let mut plan = Plan::default();
                if !fresh.is_empty() {
                    let k = &s.keys;
                    let mut z = rcmd!["ZADD", k.seqs(c)];
                    let mut h = rcmd!["HSET", k.messages(c)];
                    for m in &fresh {
                        z.extend(rcmd![m.seq, format!("{}:{}", hex(&m.id), hex(&m.sender))]);
                        h.extend(rcmd![hex(&m.id), enc(m)]);
                        plan.cmds.push(rcmd!["HSET", k.receipt(c, &m.id), "_", "1"]);
                        plan.cmds
                            .push(rcmd!["EXPIRE", k.receipt(c, &m.id), s.ttl()]);
                        plan.persist.push(PersistOp::Message(*m));
                    }
                    plan.cmds.push(z);
                    plan.cmds.push(h);
                }
                plans.push((view, plan, fresh));
            }
            // Message ids resolve to their conversation before the commit, so
            // a reader never sees a committed id it cannot find.
            let mut p = redis::pipe();
            for (_, _, fresh) in &plans {
                for m in fresh {
                    p.cmd("SET")
                        .arg(s.keys.message_home(&m.id))
                        .arg(hex(&m.conversation))
                        .arg("EX")
                        .arg(s.ttl())
                        .ignore();
                }
            }
            s.pipe::<()>(&p).await?;
            let mut conflict = false;
            let mut committed = Vec::new();
            for (view, plan, fresh) in plans.drain(..) {
                if fresh.is_empty() {
                    continue;
                }
                if s.commit(&view, plan).await? {
                    total += fresh.len() as u64;
                    committed.extend(fresh);
                } else {
                    conflict = true;
                }
            }
            let mut p = redis::pipe();
            for m in &committed {
                p.zadd(
                    s.keys.sent(&m.sender),
                    format!("{}:{}", hex(&m.conversation), hex(&m.id)),
                    m.sent_at,
                )
                .ignore()
                .cmd("ZREMRANGEBYRANK")
                .arg(s.keys.sent(&m.sender))
                .arg(0)
                .arg(-(SNAPSHOT_MESSAGES as i64) - 1)
                .ignore()
                .expire(s.keys.sent(&m.sender), s.ttl() as i64)
                .ignore();
            }
            s.pipe::<()>(&p).await?;
            if !conflict {
                return Ok(total);
            }
            // Some conversation moved: its messages are re-checked (the ones
            // committed are now "already registered, same content").
            let _ = attempt;
            backoff().await;
        }
        Err(ServiceError::unavailable(
            "register: conversations too contended right now; retry",
        ))
    }

    async fn mark_delivered(
        &self,
        user: UserId,
        messages: Vec<MessageId>,
        at: Millis,
    ) -> StoreResult<Vec<DeliveryResult>> {
        let s = &self.inner;
        let ids = dedup(messages);
        let homes = s.homes(&ids).await?;
        let mut by_conv: BTreeMap<ConversationId, Vec<MessageId>> = BTreeMap::new();
        for (id, home) in ids.iter().zip(&homes) {
            let Some(c) = home else {
                return Err(ServiceError::not_found("message_ids", "message", id));
            };
            by_conv.entry(*c).or_default().push(*id);
        }
        // Validate every conversation before writing any (a batch within
        // one conversation is validated by its own attempt, under the lock).
        if by_conv.len() > 1 {
            for (c, msgs) in &by_conv {
                let view = s.delivery_view(c, &user, msgs).await?;
                view.authorize(&user, "message_ids")?;
            }
        }
        let mut results: HashMap<MessageId, DeliveryResult> = HashMap::new();
        for (c, msgs) in &by_conv {
            let _serial = s.lock([c]).await;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut view = s.delivery_view(c, &user, msgs).await?;
                let membership = view.authorize(&user, "message_ids")?;
                if view.group() {
                    s.ensure_own_deliveries(&mut view, msgs, &user).await?;
                } else {
                    s.ensure_deliveries(&mut view, msgs).await?;
                }
                let min_seq = msgs
                    .iter()
                    .filter_map(|m| view.messages.get(m).map(|m| m.seq))
                    .min()
                    .unwrap_or(Seq::MAX);
                s.ensure_history(&mut view, &[user], min_seq).await?;
                let at = at.max(view.stamp);
                let mut plan = Plan::default();
                plan.cmds.push(rcmd!["HSET", s.keys.meta(c), "t", at]);
                let mut touched = Vec::new();
                let mut out = Vec::new();
                for id in msgs {
                    let m = view.messages[id];
                    let read_at = if view.wm(&user).seq >= m.seq {
                        view.first_covering(&user, false, m.seq)
                    } else {
                        None
                    };
                    let existing = view.delivered_at(&m.id, &user);
                    match domain::judge_delivery(
                        user,
                        &membership,
                        m.sender,
                        m.seq,
                        existing,
                        read_at,
                    ) {
                        Delivery::NotARecipient => {
                            out.push(DeliveryResult::not_a_recipient(m.id));
                            continue;
                        }
                        Delivery::Already(t) => {
                            out.push(DeliveryResult::already(m.id, t));
                            continue;
                        }
                        Delivery::Record => {}
                    }
                    let key = s.keys.receipt(c, &m.id);
                    plan.cmds.push(rcmd![
                        "HSET",
                        key.clone(),
                        user.as_bytes().as_slice(),
                        delivery_value(at, m.sent_at)
                    ]);
                    plan.cmds.push(rcmd!["EXPIRE", key, s.ttl()]);
                    plan.persist.push(PersistOp::Delivered {
                        conversation: *c,
                        message: m.id,
                        user,
                        at,
                    });
                    view.deliveries.entry(m.id).or_default().insert(user, at);
                    touched.push(Indexed {
                        seq: m.seq,
                        id: m.id,
                        sender: m.sender,
                    });
                    out.push(DeliveryResult::recorded(m.id, at));
                }
                let windowed = s.touch(&mut view, &mut plan, &touched).await?;
                if touched.is_empty() || s.commit(&view, plan).await? {
                    if windowed {
                        s.schedule_window(*c);
                    }
                    for r in out {
                        results.insert(r.message, r);
                    }
                    break;
                }
                if attempt >= MAX_ATTEMPTS {
                    return Err(contended(c));
                }
                backoff().await;
            }
        }
        Ok(ids.iter().map(|id| results[id]).collect())
    }

    async fn mark_read_up_to(
        &self,
        user: UserId,
        conversation: ConversationId,
        message: MessageId,
        at: Millis,
    ) -> StoreResult<ReadResult> {
        let s = &self.inner;
        let c = conversation;
        let _serial = s.lock([&c]).await;
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut view) = s.view_for(&c, &user).await? else {
                return Err(ServiceError::not_found(
                    "conversation_id",
                    "conversation",
                    c,
                ));
            };
            let membership = view.authorize(&user, "conversation_id")?;
            s.ensure_messages(&mut view, &[message]).await?;
            let m = match view.messages.get(&message) {
                Some(m) => *m,
                None => {
                    let home = s.homes(&[message]).await?[0];
                    return Err(match home {
                        Some(_) => ServiceError::invalid(
                            "message_id",
                            format!("message {message} belongs to another conversation"),
                        ),
                        None => ServiceError::not_found("message_id", "message", message),
                    });
                }
            };
            let at = at.max(view.stamp);
            let mut plan = Plan::default();
            plan.cmds.push(rcmd!["HSET", s.keys.meta(&c), "t", at]);
            let (result, windowed) = s
                .apply_read(&mut view, &mut plan, &user, &membership, m.seq, at)
                .await?;
            if !result.advanced {
                return Ok(result);
            }
            if s.commit(&view, plan).await? {
                if windowed {
                    s.schedule_window(c);
                }
                return Ok(result);
            }
            backoff().await;
        }
        Err(contended(&c))
    }

    async fn mark_conversations_read(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
        at: Millis,
    ) -> StoreResult<Vec<ConversationRead>> {
        let s = &self.inner;
        let mut out = Vec::new();
        'conv: for c in dedup(conversations) {
            let none = ReadResult {
                read_up_to: 0,
                advanced: false,
                unread: 0,
            };
            let _serial = s.lock([&c]).await;
            for _ in 0..MAX_ATTEMPTS {
                let Some(mut view) = s.view_for(&c, &user).await? else {
                    out.push(ConversationRead {
                        conversation: c,
                        outcome: ConversationOutcome::NotFound,
                        read: none,
                    });
                    continue 'conv;
                };
                let Ok(membership) = view.authorize(&user, "conversation_ids") else {
                    out.push(ConversationRead {
                        conversation: c,
                        outcome: ConversationOutcome::PermissionDenied,
                        read: none,
                    });
                    continue 'conv;
                };
                let last = s.last_seq(&c).await?;
                let at = at.max(view.stamp);
                let mut plan = Plan::default();
                plan.cmds.push(rcmd!["HSET", s.keys.meta(&c), "t", at]);
                let (read, windowed) = s
                    .apply_read(&mut view, &mut plan, &user, &membership, last, at)
                    .await?;
                if !read.advanced || s.commit(&view, plan).await? {
                    if windowed {
                        s.schedule_window(c);
                    }
                    out.push(ConversationRead {
                        conversation: c,
                        outcome: ConversationOutcome::Ok,
                        read,
                    });
                    continue 'conv;
                }
                backoff().await;
            }
            return Err(contended(&c));
        }
        Ok(out)
    }

    async fn set_sharing(&self, user: UserId, sharing: bool) -> StoreResult<bool> {
        let s = &self.inner;
        for _ in 0..MAX_ATTEMPTS {
            let (_, version) = s.sharing_of(&[user]).await?[0];
            let q = s.keys.user_queue(&user);
            let key = s.keys.sharing(&user);
            let op = PersistOp::Sharing {
                user,
                sharing,
                version: version + 1,
            };
            let registered = s.register(&q).await?;
            let cmds = vec![
                rcmd!["HSET", key.clone(), "s", if sharing { "1" } else { "0" }],
                rcmd!["XADD", q, "*", "p", enc(&vec![op])],
                rcmd!["EXPIRE", key.clone(), s.ttl()],
            ];
            if let Applied::Done = s.apply_on(key, version, registered, cmds).await? {
                s.reindex_sharing(&user).await?;
                return Ok(sharing);
            }
            backoff().await;
        }
        Err(ServiceError::unavailable(
            "sharing setting too contended right now; retry",
        ))
    }

    async fn sharing(&self, user: UserId) -> StoreResult<bool> {
        Ok(self.inner.sharing_of(&[user]).await?[0].0)
    }

    async fn receipts(
        &self,
        viewer: UserId,
        conversation: ConversationId,
        messages: Vec<MessageId>,
        include_recipients: bool,
    ) -> StoreResult<Vec<MessageState>> {
        let s = &self.inner;
        let c = conversation;
        let ids = dedup(messages);
        if !include_recipients {
            // A group's counts come from the indexes, without reading every
            // member (direct conversations have two: the view is as cheap).
            let (n, membership): (Option<u64>, Option<Vec<u8>>) = s
                .query(
                    redis::cmd("HMGET")
                        .arg(s.keys.meta(&c))
                        .arg("n")
                        .arg(format!("m:{}", hex(&viewer))),
                )
                .await?;
            if n.is_some_and(|n| n > 2) {
                let mut view = View::bare(c, 0);
                if let Some(m) = membership {
                    view.members.insert(viewer, dec(&m, "membership")?);
                }
                view.authorize(&viewer, "conversation_id")?;
                s.ensure_messages(&mut view, &ids).await?;
                s.check_found(&view, &ids).await?;
                let msgs: Vec<Message> = ids.iter().map(|m| view.messages[m]).collect();
                let aggregates = s.aggregates(&c, Some(viewer), &msgs).await?;
                return Ok(counted_states(msgs, aggregates));
            }
        }
        let Some(mut view) = s.view(&c).await? else {
            return Err(ServiceError::not_found(
                "conversation_id",
                "conversation",
                c,
            ));
        };
        view.authorize(&viewer, "conversation_id")?;
        s.ensure_messages(&mut view, &ids).await?;
        s.check_found(&view, &ids).await?;
        s.prepare_states(&mut view, &ids).await?;
        Ok(ids
            .iter()
            .map(|m| view.state(&viewer, &view.messages[m], include_recipients))
            .collect())
    }

    async fn unread_counts(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
    ) -> StoreResult<Vec<UnreadCount>> {
        let s = &self.inner;
        let mut out = Vec::new();
        for c in dedup(conversations) {
            let mut r = UnreadCount {
                conversation: c,
                outcome: ConversationOutcome::Ok,
                unread: 0,
                read_up_to: 0,
                last_seq: 0,
            };
            match s.view(&c).await? {
                None => r.outcome = ConversationOutcome::NotFound,
                Some(view) => match view.authorize(&user, "conversation_ids") {
                    Ok(membership) => {
                        let wm = view.wm(&user);
                        r.read_up_to = wm.seq;
                        r.last_seq = s.last_seq(&c).await?;
                        r.unread = s.unread(&c, &user, wm.seq, &membership).await?;
                    }
                    Err(_) => r.outcome = ConversationOutcome::PermissionDenied,
                },
            }
            out.push(r);
        }
        Ok(out)
    }

    async fn replay(&self, user: UserId, from: ReplayFrom, max: usize) -> StoreResult<Replay> {
        let s = &self.inner;
        let (epoch, next, trim) = s.log_head(&user).await?;
        let head = Cursor {
            epoch,
            offset: next,
        };
        let cursor = match from {
            ReplayFrom::Live => {
                return Ok(Replay::Events {
                    events: Vec::new(),
                    head,
                });
            }
            ReplayFrom::Unparseable => None,
            ReplayFrom::Cursor(c) => Some(c),
        };
        let start = cursor.map_or(Err(ResetReason::Invalid), |c| {
            domain::replay_start(c, epoch, head.offset, trim)
        });
        let after = match start {
            Ok(after) => after,
            Err(reason) => {
                return Ok(Replay::Reset {
                    reason,
                    snapshot: s.snapshot(&user).await?,
                    head,
                });
            }
        };
        let events = s.events_after(&user, after, max.saturating_add(1)).await?;
        if domain::too_large(events.len(), max) {
            return Ok(Replay::Reset {
                reason: ResetReason::TooLarge,
                snapshot: s.snapshot(&user).await?,
                head,
            });
        }
        let head = Cursor {
            epoch,
            offset: events.last().map_or(next, |e| e.offset.max(next)),
        };
        Ok(Replay::Events { events, head })
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    async fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire) && self.inner.bus_up.load(Ordering::Acquire)
    }

    async fn backlog(&self) -> StoreResult<Option<crate::store::Backlog>> {
        let s = &self.inner;
        let index = s.keys.queue_index();
        let queues: u64 = s.query(redis::cmd("ZCARD").arg(&index)).await?;
        let oldest: Vec<(String, f64)> = s
            .query(
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES"),
            )
            .await?;
        let now: (u64, u64) = s.query(&redis::cmd("TIME")).await?;
        // Redis's clock, like the scores it wrote.
        let now_ms = now.0 * 1000 + now.1 / 1000;
        let age = oldest
            .first()
            .map(|(_, score)| now_ms.saturating_sub(*score as u64))
            .unwrap_or(0);
        Ok(Some(crate::store::Backlog {
            queues,
            oldest_registration_age: Duration::from_millis(age),
            persisted_total: s.persisted.load(Ordering::Relaxed),
            persistence_up: s.scylla_up.load(Ordering::Acquire),
            outage: s.outage(),
        }))
    }

    async fn shutdown(&self) {
        // Flush this node's open group windows and every queued change, then
        // stop the background tasks.
        let open: Vec<ConversationId> = {
            let mut w = self.inner.windows.lock().unwrap_or_else(|e| e.into_inner());
            w.take_due(true).into_iter().map(|(c, _)| c).collect()
        };
        for c in open {
            if let Err(e) = self.inner.flush_window(&c).await {
                tracing::warn!(conversation = %c, error = %e.report(), "window flush at shutdown failed");
            }
        }
        if let Err(e) = self.inner.flush_all().await {
            tracing::warn!(error = %e.report(), "flush to scylla at shutdown failed; another node will finish it");
        }
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Which of `seqs` are already used in `c`, and by which message.
async fn taken_seqs(
    s: &Inner,
    c: &ConversationId,
    seqs: &[Seq],
) -> StoreResult<HashMap<Seq, MessageId>> {
    let mut p = redis::pipe();
    for seq in seqs {
        p.cmd("ZRANGEBYSCORE")
            .arg(s.keys.seqs(c))
            .arg(*seq)
            .arg(*seq);
    }
    let rows: Vec<Vec<String>> = s.pipe(&p).await?;
    let mut out = HashMap::new();
    for (seq, row) in seqs.iter().zip(rows) {
        if let Some(member) = row.first() {
            let (id, _) = member.split_once(':').ok_or_else(|| corrupt("seq index"))?;
            out.insert(*seq, parse_uuid(id)?);
        }
    }
    Ok(out)
}

impl RedisStore {
    async fn change_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
        join: bool,
    ) -> StoreResult<MembershipResult> {
        let s = &self.inner;
        let c = conversation;
        let _serial = s.lock([&c]).await;
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut view) = s.view(&c).await? else {
                return Err(ServiceError::not_found(
                    "conversation_id",
                    "conversation",
                    c,
                ));
            };
            let updated = fold_member_changes(&changes, join, |u| {
                Ok(view.members.get(u).cloned().unwrap_or_default())
            })?;
            let count = if join {
                view.count + updated.len() as u64
            } else {
                view.count.saturating_sub(updated.len() as u64)
            };
            if updated.is_empty() {
                return Ok(MembershipResult {
                    changed: 0,
                    member_count: view.count,
                });
            }
            let mut plan = Plan::default();
            let mver = view.mver + 1;
            let mut meta = rcmd!["HSET", s.keys.meta(&c), "n", count, "mv", mver];
            let mut lowest = Seq::MAX;
            let users: Vec<UserId> = updated.keys().copied().collect();
            let sharing = s.sharing_of(&users).await?;
            let mut index = Vec::new();
            for ((u, (ms, from)), (shares, _)) in updated.iter().zip(sharing) {
                meta.extend(rcmd![format!("m:{}", hex(u)), enc(ms)]);
                index.extend(index_member(&s.keys, &c, u, ms, view.wm(u), shares));
                view.members.insert(*u, ms.clone());
                lowest = lowest.min(*from);
            }
            plan.cmds.push(meta);
            plan.cmds.extend(index);
            view.count = count;
            plan.persist.push(PersistOp::Conversation {
                conversation: c,
                members: view.members.iter().map(|(u, m)| (*u, m.clone())).collect(),
                version: mver,
            });
            // Recipients of already registered messages at or after the change
            // are now different: their counts change.
            let last = s.last_seq(&c).await?;
            let mut windowed = false;
            if lowest <= last {
                let msgs = s.between(&c, lowest, last).await?;
                windowed = s.touch(&mut view, &mut plan, &msgs).await?;
            }
            if s.commit(&view, plan).await? {
                if windowed {
                    s.schedule_window(c);
                }
                let mut p = redis::pipe();
                for u in updated.keys() {
                    p.sadd(s.keys.user_conversations(u), hex(&c))
                        .ignore()
                        .expire(s.keys.user_conversations(u), s.ttl() as i64)
                        .ignore();
                }
                s.pipe::<()>(&p).await?;
                return Ok(MembershipResult {
                    changed: updated.len() as u64,
                    member_count: count,
                });
            }
            backoff().await;
        }
        Err(contended(&c))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_failures_are_told_in_the_services_terms_without_driver_text() {
        let refused = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connect 10.0.0.7:6379",
        ));
        let said = super::redis_failure(&refused);
        assert_eq!(
            said,
            "the hot store (Redis) is unreachable; retry with backoff"
        );
        let other = redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "Response type not convertible",
            "value was 10.0.0.7".to_string(),
        ));
        let said = super::redis_failure(&other);
        assert_eq!(
            said,
            "the hot store (Redis) failed the call; retry with backoff"
        );
        for e in [refused, other] {
            let message = super::redis_err(e).to_string();
            assert!(!message.contains("10.0.0.7"), "{message}");
        }
    }

    #[test]
    fn only_recent_v7_ids_minted_after_the_horizon_are_known_new() {
        let now = crate::domain::now_millis() as u64;
        let v7_at = |ms: u64| {
            let ts = uuid::Timestamp::from_unix(
                uuid::NoContext,
                ms / 1000,
                (ms % 1000) as u32 * 1_000_000,
            );
            uuid::Uuid::new_v7(ts)
        };
        let horizon = Some(now - 60_000);
        assert!(known_new(&v7_at(now), horizon));
        assert!(known_new(&v7_at(now + CLOCK_SKEW_MS - 10), horizon));
        // Minted before the horizon, or too far in the future: ask Scylla.
        assert!(!known_new(&v7_at(now - 61_000), horizon));
        assert!(!known_new(&v7_at(now + CLOCK_SKEW_MS + 1_000), horizon));
        // Not a v7, or no horizon: ask Scylla.
        assert!(!known_new(&uuid::Uuid::new_v4(), horizon));
        assert!(!known_new(&v7_at(now), None));
        assert_eq!(v7_millis(&v7_at(now)), Some(now));
    }

    use super::*;

    #[test]
    fn delivery_values_are_delays_after_the_send() {
        let sent = 1_763_000_000_000;
        for at in [sent, sent + 1, sent + 8_000_000, sent - 5] {
            let v = delivery_value(at, sent).to_string();
            assert_eq!(parse_delivery_value(&v, sent), Some(at), "{v}");
        }
        assert_eq!(delivery_value(sent + 250, sent), 250);
        assert_eq!(parse_delivery_value("D:1", sent), None);
    }

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        let tag = |key: &str| hash_tag(redis::cmd("GET").arg(key)).to_vec();
        assert_eq!(tag("rc:{abc}:w"), b"abc");
        assert_eq!(tag("rc:{abc}:r:{def}"), b"abc", "only the first tag counts");
        assert_eq!(
            tag("rc:{}:x"),
            b"rc:{}:x",
            "an empty tag hashes the whole key"
        );
        assert_eq!(tag("rc:{open"), b"rc:{open");
        assert_eq!(tag("rc:bus"), b"rc:bus");
        assert_eq!(hash_tag(&redis::cmd("PING")), b"");
    }

    #[test]
    fn bus_messages_round_trip() {
        let u = Uuid::now_v7();
        let body = EventBody::Watermark {
            conversation: Uuid::now_v7(),
            read_up_to: 7,
            unread: 2,
        };
        let mut payload = format!("{}:{}:{}:", hex(&u), 42u64, 9u64).into_bytes();
        payload.extend(enc(&body));
        let (epoch, event) = parse_bus(&payload).unwrap();
        assert_eq!(epoch, 42);
        assert_eq!(event.offset, 9);
        assert_eq!(event.user, u);
        assert_eq!(event.body, body);
        assert!(parse_bus(b"nonsense").is_none());
    }

    #[test]
    fn log_entries_keep_colons_in_the_body() {
        let u = Uuid::now_v7();
        let body = EventBody::Watermark {
            conversation: Uuid::from_bytes([b':'; 16]),
            read_up_to: 58,
            unread: 58,
        };
        let mut row = b"12:".to_vec();
        row.extend(enc(&body));
        let e = parse_log_entry(&u, &row).unwrap();
        assert_eq!(e.offset, 12);
        assert_eq!(e.body, body);
    }
}
