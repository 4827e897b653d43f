//! The production tier: Redis as the hot store and real-time bus, ScyllaDB as
//! the persistent store, any number of stateless `receiptd` nodes sharing them.
//!
//! # How a write works
//! 1. Read what the decision needs (one script call for the common writes)
//!    together with the conversation's version.
//! 2. Decide in Rust with the same [`crate::domain`] rules as every store.
//! 3. Commit with one Lua call in the conversation's slot ([`scripts::APPLY`]):
//!    if the version is unchanged, apply the writes, append the changes to
//!    persist to its queue stream, and bump the version; otherwise re-read
//!    and retry. On a single Redis server the same call forwards the events
//!    the writes cause (step 4) when the conversation's outbox is empty;
//!    otherwise, and on a cluster, it appends them to the outbox.
//! 4. Forward the events into each addressee's replay log (once, in order),
//!    which publishes on the bus; every node hands what it hears to its local
//!    subscribers. From the outbox: [`scripts::FORWARD`], one call per
//!    addressee, all sent together, on a cluster. The commit returns its
//!    outbox entry ids and the outbox's length, so the outbox is read back
//!    only when older entries wait.
//! 5. A flusher (any node, every `flush_interval` and at shutdown) drains the
//!    queue streams into Scylla, acknowledging (deleting) entries only after
//!    Scylla accepted them. A node that dies leaves its queue, outbox and
//!    group window to the next node's flusher.
//!
//! Hot keys expire `hot_ttl` after their last update; a conversation's keys
//! share one lifetime, refreshed all at once by the commit script at most
//! every quarter TTL ([`scripts::APPLY`]). Reads that miss fall through to
//! Scylla and re-warm Redis. The queue streams and their index never expire
//! (they are drained). docs/storage.md lists every key and table.
//!
//! Files: `conn.rs` (connections, failures in the service's terms), `load.rs`
//! (reading facts into a view), `ids.rs` (where a message id lives: the id
//! index and home keys), `commit.rs` (compare-and-apply commits of
//! plans), `window.rs` (group windows, the events of a change), `log.rs` (the
//! replay log, snapshots, the bus), `persist.rs` (write-behind to Scylla, the
//! outage budget, health), `store.rs` (the `ReceiptStore` calls), `counts.rs`
//! (counting indexes), `runs.rs` (deliveries as runs), `keys.rs`,
//! `scripts.rs`; this file holds the shared types and opening.

mod counts;
pub mod keys;
/// The Lua scripts; public so that the integration tests can run them
/// against a real Redis (their Rust callers are this module's).
pub mod scripts;
mod threads;
mod view;

use super::scylla::{PersistOp, ScyllaOptions, ScyllaPersistence};
use super::{
    CONVERSATION_FIELD, ConversationOutcome, ConversationRead, DeliveryResult, MemberChange,
    MembershipResult, Named, NewMessage, ReadResult, ReceiptStore, Replay, ReplayFrom, ResetReason,
    Snapshot, StoreResult, UnreadCount, fold_member_changes,
};
use super::{distinct_registrations, judge_registration};
use crate::domain::{
    self, ConversationId, Cursor, Delivery, Event, EventBody, MemberChangeKind, Membership,
    Message, MessageId, MessageState, Millis, ReadWatermark, RecipientFacts, Seq, ThreadRoot,
    UserId,
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
/// A conversation's keys get their expiry refreshed (all at once) at most
/// this many times per hot TTL: a key lives at least 3/4 of the TTL after
/// the last write to its conversation, and at most the TTL.
const LIFETIME_REFRESHES: u64 = 4;
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
    /// Credentials and TLS for every URL.
    pub access: RedisAccess,
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

/// A failure to connect at start-up: the operator is told the driver's
/// reason (a refused certificate, a wrong password, a refused connection),
/// which a client's status leaves out.
fn open_err(e: redis::RedisError) -> ServiceError {
    tracing::error!("cannot connect to Redis: {e}");
    redis_err(e)
}

/// How this node reaches Redis: an ACL user and password, and the
/// certificates for `rediss://`, applied to every URL (and, on a cluster,
/// to the nodes it discovers). A user or password written in a URL wins.
#[derive(Clone, Default)]
pub struct RedisAccess {
    /// ACL user.
    pub username: Option<String>,
    /// Password (never printed).
    pub password: Option<String>,
    /// A CA and/or a client certificate for `rediss://`; `None`: the
    /// system's roots.
    pub tls: Option<redis::TlsCertificates>,
}

impl std::fmt::Debug for RedisAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAccess")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisAccess {
    /// A client of the server at `url`.
    pub fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        crate::tls::install_default_provider();
        use redis::IntoConnectionInfo;
        let info = url.into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let (None, Some(u)) = (settings.username(), &self.username) {
            settings = settings.set_username(u);
        }
        if let (None, Some(p)) = (settings.password(), &self.password) {
            settings = settings.set_password(p);
        }
        let info = info.set_redis_settings(settings);
        match &self.tls {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
            None => redis::Client::open(info),
        }
    }

    /// A client of the cluster seeded by `urls`.
    pub fn cluster(&self, urls: &[String]) -> redis::RedisResult<redis::cluster::ClusterClient> {
        crate::tls::install_default_provider();
        use redis::IntoConnectionInfo;
        // The cluster client takes its credentials from the first URL unless
        // told otherwise; as for a single server, the URL's win.
        let first = match urls.first() {
            Some(url) => Some(url.as_str().into_connection_info()?),
            None => None,
        };
        let in_url = |f: fn(&redis::RedisConnectionInfo) -> Option<&str>| {
            first
                .as_ref()
                .is_some_and(|i| f(i.redis_settings()).is_some())
        };
        let mut b = redis::cluster::ClusterClientBuilder::new(urls.to_vec());
        if let (false, Some(u)) = (in_url(redis::RedisConnectionInfo::username), &self.username) {
            b = b.username(u);
        }
        if let (false, Some(p)) = (in_url(redis::RedisConnectionInfo::password), &self.password) {
            b = b.password(p);
        }
        if let Some(certs) = &self.tls {
            b = b.certs(certs.clone());
        }
        b.build()
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

/// When (ms since the epoch) an id-index key of UUIDv7 second `second`
/// written at `now` expires: the hot TTL (`ttl_ms`) after the later of the
/// second's end and `now`, plus [`CLOCK_SKEW_MS`]. So each entry outlives
/// both its id's minting and its registration by the TTL, whichever key
/// write came last ([`Inner::new_id_horizon`] relies on it).
fn id_index_expiry(second: u64, now: u64, ttl_ms: u64) -> u64 {
    ((second + 1) * 1000).max(now) + ttl_ms + CLOCK_SKEW_MS
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
macro_rules! rcmd {
    ($($a:expr),+ $(,)?) => {{
        let mut v: Vec<Vec<u8>> = Vec::new();
        $( v.extend(redis::ToRedisArgs::to_redis_args(&$a)); )+
        v
    }};
}

mod commit;
mod conn;
mod ids;
mod load;
mod log;
mod persist;
mod prefix;
mod runs;
mod seqs;
mod store;
#[cfg(test)]
mod tests;
mod window;

use commit::*;
use conn::*;
use load::*;
use log::*;
use persist::*;
use prefix::*;
use runs::*;
use window::*;

/// Writes decided by a compare-and-apply round.
#[derive(Default)]
struct Plan {
    cmds: Vec<Vec<Vec<u8>>>,
    persist: Vec<PersistOp>,
    /// Events to commit in the outbox: (addressee, body).
    events: Vec<(UserId, EventBody)>,
}

/// A parsed `seq`-index entry.
#[derive(Clone, Copy)]
struct Indexed {
    seq: Seq,
    id: MessageId,
    sender: UserId,
    /// The seq of its thread's root; `None` in the main timeline.
    thread: Option<Seq>,
    /// When it was sent, where known (a record of a [`seqs::SeqForm::Timed`]
    /// index holds it).
    sent_at: Option<Millis>,
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
    /// Conversations whose last view on this node had at most
    /// [`DIRECT_MEMBERS`] members: their view scripts read the whole meta
    /// hash at once (`HGETALL`) instead of the member's fields first
    /// (`view_of` in [`scripts::VIEW_OF`]). A hint only: the script checks
    /// the member count and answers the same either way, so a stale or
    /// missing hint costs one command, never a wrong view. Bounded: emptied
    /// when it reaches [`SMALL_VIEWS_MAX`] conversations.
    small_views: Mutex<HashSet<ConversationId>>,
    /// [`Keys::id_layout_since`], once read ([`Inner::id_layout_since`]).
    id_layout: std::sync::OnceLock<u64>,
}

/// The most conversations [`Inner::small_views`] remembers (about 9 MB of
/// hash set at the bound; emptied, not shrunk, when reached).
const SMALL_VIEWS_MAX: usize = 1 << 18;

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
            let client = opts.access.cluster(&opts.redis_urls).map_err(open_err)?;
            Conn::Cluster(client.get_async_connection().await.map_err(open_err)?)
        } else {
            let url = opts
                .redis_urls
                .first()
                .ok_or_else(|| ServiceError::internal("no redis url"))?;
            let client = opts.access.client(url).map_err(open_err)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_number_of_retries(2);
            Conn::Single(
                client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(open_err)?,
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
            small_views: Mutex::new(HashSet::new()),
            id_layout: std::sync::OnceLock::new(),
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

fn fresh_epoch() -> u64 {
    // Below 2^53 so Lua's numbers never round it (it is kept as text anyway).
    rand::random_range(1..(1u64 << 53))
}

/// The counting indexes' entries for one member (see "Counting reads" in
/// docs/storage.md): a member with one open interval from `j` is *simple* and
/// lives in the sorted sets, scored so that one `ZCOUNT` each counts reads;
/// anyone else (a member who left, even if back) is listed in `cx` and
/// counted one by one. With `listed`, the member goes in the member list
/// (`ml`), for the recipient pages (`keys::UNLISTED_MAX`).
fn index_member(
    keys: &Keys,
    c: &ConversationId,
    u: &UserId,
    membership: &Membership,
    wm: ReadWatermark,
    sharing: bool,
    listed: bool,
) -> Vec<Vec<Vec<u8>>> {
    let member = hex(u);
    let mut cmds = Vec::new();
    if listed {
        cmds.push(rcmd!["ZADD", keys.member_list(c), 0, member.clone()]);
    }
    match simple_join(membership) {
        Some(j) => {
            cmds.push(rcmd!["ZADD", keys.joins(c), j, member.clone()]);
            cmds.push(rcmd!["SREM", keys.complex(c), member]);
            cmds.extend(index_read(keys, c, u, membership, wm, sharing));
            cmds
        }
        None => {
            cmds.extend([
                rcmd!["ZREM", keys.joins(c), member.clone()],
                rcmd!["ZREM", keys.prefixes(c), member.clone()],
                rcmd!["ZREM", keys.gapped(c), member.clone()],
                rcmd!["ZREM", keys.readers(c), member.clone()],
                rcmd!["ZREM", keys.sharing_joins(c), member.clone()],
                rcmd!["SADD", keys.complex(c), member],
            ]);
            cmds
        }
    }
}

/// The counting indexes' entries a read by `u` changes: of those
/// [`index_member`] writes, only the ones scored by the watermark, and the
/// sharing pair (`rz`, `jr`) with them, so that a read after a re-index that
/// did not finish still leaves both as the setting says. The join seq (`jz`)
/// and the list of complex members (`cx`) follow the membership alone, which
/// a read does not change; a complex member has no scored entries.
fn index_read(
    keys: &Keys,
    c: &ConversationId,
    u: &UserId,
    membership: &Membership,
    wm: ReadWatermark,
    sharing: bool,
) -> Vec<Vec<Vec<u8>>> {
    let Some(j) = simple_join(membership) else {
        return Vec::new();
    };
    let member = hex(u);
    let floor = j.saturating_sub(1);
    // The delivered prefix is at least the watermark (read implies
    // delivered), and may be further: `GT` keeps the larger. A simple
    // member's join seq never changes, so the floor is the one it had.
    let mut cmds = vec![rcmd![
        "ZADD",
        keys.prefixes(c),
        "GT",
        wm.seq.max(floor),
        member.clone()
    ]];
    if sharing {
        cmds.push(rcmd![
            "ZADD",
            keys.readers(c),
            wm.public_seq.max(floor),
            member.clone()
        ]);
        cmds.push(rcmd!["ZADD", keys.sharing_joins(c), j, member]);
    } else {
        cmds.push(rcmd!["ZREM", keys.readers(c), member.clone()]);
        cmds.push(rcmd!["ZREM", keys.sharing_joins(c), member]);
    }
    cmds
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

/// Resolves once the store is told to stop (background tasks select on it).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
