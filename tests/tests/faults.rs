//! The fault suite: load driven through the Rust SDK while real processes
//! are killed and backends go away, and after each fault, the promise of
//! docs/reliability.md checked from outside:
//!
//! - **0 acknowledged writes lost**: every registration, delivery (with the
//!   time its acknowledgement reported) and read position a call
//!   acknowledged is there afterwards; on the production tier also after
//!   every Redis key is gone, read back from Cassandra alone.
//! - **subscribers resume with 0 gaps and 0 duplicates**: no event is
//!   yielded twice (offsets strictly increase within an epoch), and every
//!   subscriber's last known state of every message and read position equals
//!   what the server answers at the end.
//! - **failures are clear**: a call refused during a fault fails with
//!   UNAVAILABLE, never INTERNAL and never by hanging into the client's
//!   deadline.
//!
//! The short form (a few cycles, one outage of each kind) runs in the test
//! command; `scripts/faults.sh` runs the long form (`RECEIPTS_FAULTS=long`:
//! 20 kill -9 cycles, Redis down 30 s, Cassandra down 60 s, a 30-minute
//! soak). Needs `RECEIPTS_TEST_CASSANDRA` (fails, never skips, without it);
//! the production-tier tests start their own `redis-server`s.

use futures::StreamExt;
use rand::Rng;
use receipts_sdk::{Client, Event, NewMessage, RetryPolicy, Tick};
use receipts_server::auth::Role;
use receipts_server::domain::Cursor;
use receipts_tests::tier::*;
use receipts_tests::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::{Instant, sleep};
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

/// How hard to push: the short form by default, the long one with
/// `RECEIPTS_FAULTS=long` (single values can be overridden, see
/// `scripts/faults.sh`).
#[derive(Clone, Copy, Debug)]
struct Scale {
    kill_cycles: usize,
    node_kills: usize,
    redis_down: Duration,
    cassandra_down: Duration,
    soak: Duration,
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn scale() -> Scale {
    let long = match std::env::var("RECEIPTS_FAULTS").as_deref() {
        Ok("long") => true,
        Ok("short") | Err(_) => false,
        Ok(other) => panic!("RECEIPTS_FAULTS={other:?}: expected short or long"),
    };
    let (cycles, kills, redis, cassandra, soak) = if long {
        (20, 5, 30, 60, 1800)
    } else {
        (3, 1, 5, 8, 40)
    };
    Scale {
        kill_cycles: env_num("RECEIPTS_FAULTS_KILL_CYCLES", cycles) as usize,
        node_kills: env_num("RECEIPTS_FAULTS_NODE_KILLS", kills) as usize,
        redis_down: Duration::from_secs(env_num("RECEIPTS_FAULTS_REDIS_DOWN_SECS", redis)),
        cassandra_down: Duration::from_secs(env_num(
            "RECEIPTS_FAULTS_CASSANDRA_DOWN_SECS",
            cassandra,
        )),
        soak: Duration::from_secs(env_num("RECEIPTS_SOAK_SECS", soak)),
    }
}

/// The client deadline: a call that runs into it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(10);

fn client(url: &str, user: Uuid, role: Role, retry: RetryPolicy) -> Client {
    Client::builder(url)
        .token(token(user, role))
        .timeout(DEADLINE)
        .connect_timeout(Duration::from_secs(2))
        .retry(retry)
        .connect_lazy()
        .expect("client")
}

/// One conversation of the load: its first member sends every message.
#[derive(Clone, Debug)]
struct Chat {
    id: Uuid,
    sender: Uuid,
    recipients: Vec<Uuid>,
    /// The node (index into the endpoints) its users talk to.
    node: usize,
}

/// What the server acknowledged.
#[derive(Debug, Default)]
struct Acked {
    /// Registered messages per conversation, `(id, seq)` in seq order.
    messages: HashMap<Uuid, Vec<(Uuid, u64)>>,
    /// The delivery time an acknowledgement reported, per (user, message).
    delivered: HashMap<(Uuid, Uuid), SystemTime>,
    /// The highest acknowledged read position per (conversation, user).
    read: HashMap<(Uuid, Uuid), u64>,
    /// Acknowledged writes in total.
    writes: u64,
    /// Refused calls by what the client saw.
    failures: BTreeMap<String, u64>,
    /// The first message seen for each kind of failure.
    examples: BTreeMap<String, String>,
    /// Acknowledgements that contradict an earlier one (a lost write that a
    /// later call revealed while the load ran).
    contradictions: Vec<String>,
}

impl Acked {
    fn fail(&mut self, e: &receipts_sdk::Error) {
        let kind = match e.code() {
            Some(code) => format!("{code:?}"),
            None => format!("client: {e}"),
        };
        self.examples
            .entry(kind.clone())
            .or_insert_with(|| e.to_string());
        *self.failures.entry(kind).or_default() += 1;
    }

    fn unclear_failures(&self) -> Vec<(&String, &u64)> {
        self.failures
            .iter()
            .filter(|(k, _)| k.as_str() != "Unavailable")
            .collect()
    }
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    /// Last known `(tick, delivered, read)` per message.
    states: HashMap<Uuid, (Tick, u64, u64)>,
    /// Last known own read position per conversation.
    watermarks: HashMap<Uuid, u64>,
    events: u64,
    duplicates: Vec<String>,
    resets: u64,
    reconnects: u64,
    last: Option<Cursor>,
    /// Set when the subscription ended (it must not).
    ended: Option<String>,
    /// Whether it went live at least once.
    live: bool,
}

impl Seen {
    /// Checks an event's cursor against the previous one: within an epoch,
    /// offsets only grow.
    fn cursor(&mut self, what: &str, cursor: Option<&receipts_sdk::Cursor>) {
        let Some(c) = cursor.and_then(|c| Cursor::decode(c.as_str())) else {
            self.duplicates.push(format!("{what}: no readable cursor"));
            return;
        };
        if let Some(prev) = self.last
            && prev.epoch == c.epoch
            && c.offset <= prev.offset
        {
            self.duplicates.push(format!(
                "{what} at offset {} after {}",
                c.offset, prev.offset
            ));
        }
        self.last = Some(c);
    }

    fn record(&mut self, m: &receipts_sdk::MessageReceipts) {
        self.states
            .insert(m.message_id, (m.tick, m.delivered_count, m.read_count));
    }
}

/// The load: conversations, their writers and subscribers, and what was
/// acknowledged and seen.
struct Load {
    chats: Vec<Chat>,
    endpoints: Arc<Vec<String>>,
    acked: Arc<Mutex<Acked>>,
    seen: Vec<Arc<Mutex<Seen>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    subscribers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Creates `direct` direct chats and `groups` groups of 5 (spread over
    /// the endpoints), subscribes each sender and one recipient per chat,
    /// and starts writing: each chat registers messages and its recipients
    /// deliver and read them, every `pace`.
    async fn start(endpoints: Vec<String>, direct: usize, groups: usize, pace: Duration) -> Self {
        let endpoints = Arc::new(endpoints);
        let mut chats = Vec::new();
        for i in 0..direct + groups {
            let size = if i < direct { 2 } else { 5 };
            let members: Vec<Uuid> = (0..size).map(|_| Uuid::now_v7()).collect();
            let chat = Chat {
                id: Uuid::now_v7(),
                sender: members[0],
                recipients: members[1..].to_vec(),
                node: i % endpoints.len(),
            };
            let backend = client(
                &endpoints[chat.node],
                Uuid::new_v4(),
                Role::Service,
                RetryPolicy::default(),
            )
            .backend();
            backend
                .create_conversation(chat.id, &members)
                .await
                .expect("create conversation");
            chats.push(chat);
        }
        let mut load = Self {
            chats,
            endpoints,
            acked: Arc::default(),
            seen: Vec::new(),
            stop: Arc::default(),
            tasks: Vec::new(),
            subscribers: Vec::new(),
        };
        for chat in load.chats.clone() {
            for user in [chat.sender, chat.recipients[0]] {
                let seen = Arc::new(Mutex::new(Seen::default()));
                load.seen.push(seen.clone());
                load.subscribers.push(tokio::spawn(subscriber(
                    load.endpoints[chat.node].clone(),
                    chat.clone(),
                    user,
                    load.acked.clone(),
                    seen,
                )));
            }
        }
        // Live before the first write, so that every change is an event.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !load.seen.iter().all(|s| s.lock().expect("seen").live) {
            assert!(Instant::now() < deadline, "subscriptions did not go live");
            sleep(Duration::from_millis(20)).await;
        }
        for chat in load.chats.clone() {
            load.tasks.push(tokio::spawn(writer(
                load.endpoints[chat.node].clone(),
                chat,
                load.acked.clone(),
                load.stop.clone(),
                pace,
            )));
        }
        load
    }

    fn writes(&self) -> u64 {
        self.acked.lock().expect("acked").writes
    }

    /// Waits until `n` more writes were acknowledged (the load recovered).
    async fn progress(&self, n: u64, within: Duration) {
        let start = self.writes();
        let deadline = Instant::now() + within;
        while self.writes() < start + n {
            assert!(
                Instant::now() < deadline,
                "the load made no progress within {within:?} ({} writes acknowledged, {:?} refused)",
                self.writes() - start,
                self.acked.lock().expect("acked").failures
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the writers (subscribers keep listening).
    async fn stop_writing(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks.drain(..) {
            t.await.expect("writer");
        }
    }

    /// Every acknowledged write, as `endpoint` answers now. Returns the
    /// problems found.
    async fn lost(&self, endpoint: &str) -> Vec<String> {
        // A snapshot: the lock is not held across calls.
        let acked = {
            let a = self.acked.lock().expect("acked");
            Acked {
                messages: a.messages.clone(),
                delivered: a.delivered.clone(),
                read: a.read.clone(),
                contradictions: a.contradictions.clone(),
                ..Acked::default()
            }
        };
        let mut lost = acked.contradictions.clone();
        for chat in &self.chats {
            let sender = client(endpoint, chat.sender, Role::User, RetryPolicy::default());
            let messages = acked.messages.get(&chat.id).cloned().unwrap_or_default();
            for chunk in messages.chunks(100) {
                let ids: Vec<Uuid> = chunk.iter().map(|(m, _)| *m).collect();
                let states = answered(|| sender.get_receipts_with_recipients(chat.id, &ids)).await;
                for &(m, seq) in chunk {
                    let Some(state) = states.iter().find(|s| s.message_id == m) else {
                        lost.push(format!("registered message {m} (seq {seq}) is gone"));
                        continue;
                    };
                    for r in &chat.recipients {
                        let Some(got) = state.recipients.iter().find(|x| x.user_id == *r) else {
                            lost.push(format!("{m}: recipient {r} missing"));
                            continue;
                        };
                        let read = acked.read.get(&(chat.id, *r)).is_some_and(|w| *w >= seq);
                        if read && got.state != receipts_sdk::RecipientState::Read {
                            lost.push(format!("{m} (seq {seq}): {r}'s acknowledged read is lost"));
                        }
                        if let Some(at) = acked.delivered.get(&(*r, m))
                            && got.delivered_at != Some(*at)
                        {
                            lost.push(format!(
                                "{m}: {r}'s acknowledged delivery at {at:?} shows {:?}",
                                got.delivered_at
                            ));
                        }
                    }
                }
            }
            for r in &chat.recipients {
                let Some(want) = acked.read.get(&(chat.id, *r)) else {
                    continue;
                };
                let c = client(endpoint, *r, Role::User, RetryPolicy::default());
                let ids = [chat.id];
                let u = answered(|| c.unread_counts(&ids)).await;
                if u[0].read_up_to_seq < *want {
                    lost.push(format!(
                        "{r} in {}: read position {} < acknowledged {want}",
                        chat.id, u[0].read_up_to_seq
                    ));
                }
            }
        }
        lost
    }

    /// Waits (up to 20 s) until every subscriber's last known states equal
    /// what `endpoint` answers; returns what still differs.
    async fn stale(&self, endpoint: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stale = self.stale_now(endpoint).await;
            if stale.is_empty() || Instant::now() > deadline {
                return stale;
            }
            sleep(Duration::from_millis(250)).await;
        }
    }

    async fn stale_now(&self, endpoint: &str) -> Vec<String> {
        let messages = self.acked.lock().expect("acked").messages.clone();
        let mut stale = Vec::new();
        for (i, chat) in self.chats.iter().enumerate() {
            let ids: Vec<Uuid> = messages
                .get(&chat.id)
                .map(|v| v.iter().map(|(m, _)| *m).collect())
                .unwrap_or_default();
            let sender = client(endpoint, chat.sender, Role::User, RetryPolicy::default());
            let seen = self.seen[2 * i].lock().expect("seen").states.clone();
            for chunk in ids.chunks(100) {
                let Ok(states) = sender.get_receipts(chat.id, chunk).await else {
                    stale.push(format!("GetReceipts in {} failed", chat.id));
                    continue;
                };
                for s in states {
                    let want = (s.tick, s.delivered_count, s.read_count);
                    let got = seen
                        .get(&s.message_id)
                        .copied()
                        .unwrap_or((Tick::Sent, 0, 0));
                    if got != want {
                        stale.push(format!(
                            "sender of {} sees {} as {got:?}, the server says {want:?}",
                            chat.id, s.message_id
                        ));
                    }
                }
            }
            let reader = chat.recipients[0];
            let c = client(endpoint, reader, Role::User, RetryPolicy::default());
            let want = match c.unread_counts(&[chat.id]).await {
                Ok(u) => u[0].read_up_to_seq,
                Err(e) => {
                    stale.push(format!("unread counts of {reader}: {e}"));
                    continue;
                }
            };
            let got = self.seen[2 * i + 1]
                .lock()
                .expect("seen")
                .watermarks
                .get(&chat.id)
                .copied()
                .unwrap_or(0);
            if got != want {
                stale.push(format!(
                    "{reader} sees its read position in {} at {got}, the server says {want}",
                    chat.id
                ));
            }
        }
        stale
    }

    /// Stops writing, checks every promise against `endpoint`, prints one
    /// line of figures, and fails on any lost write, stale subscriber,
    /// duplicate or unclear failure.
    async fn verify(mut self, fault: &str, endpoint: &str, resets_allowed: bool) -> Self {
        self.stop_writing().await;
        let lost = self.lost(endpoint).await;
        let stale = self.stale(endpoint).await;
        let (mut events, mut duplicates, mut resets, mut reconnects) = (0, Vec::new(), 0, 0);
        for s in &self.seen {
            let s = s.lock().expect("seen");
            events += s.events;
            duplicates.extend(s.duplicates.iter().cloned());
            duplicates.extend(s.ended.iter().map(|e| format!("subscription ended: {e}")));
            resets += s.resets;
            reconnects += s.reconnects;
        }
        let acked = self.acked.lock().expect("acked");
        let messages: usize = acked.messages.values().map(Vec::len).sum();
        println!(
            "faults: {fault}: {} acknowledged writes ({messages} messages), {} lost; \
             subscribers: {events} events, {} duplicates, {} stale, {resets} resets, \
             {reconnects} reconnects; refused calls: {:?}",
            acked.writes,
            lost.len(),
            duplicates.len(),
            stale.len(),
            acked.failures
        );
        assert!(acked.writes > 0, "{fault}: nothing was acknowledged");
        assert!(
            lost.is_empty(),
            "{fault}: acknowledged writes lost: {lost:#?}"
        );
        assert!(
            duplicates.is_empty(),
            "{fault}: duplicates: {duplicates:#?}"
        );
        assert!(
            stale.is_empty(),
            "{fault}: subscribers with a gap: {stale:#?}"
        );
        assert!(
            acked.unclear_failures().is_empty(),
            "{fault}: calls failed other than UNAVAILABLE: {:?}, for example {:#?}",
            acked.failures,
            acked.examples
        );
        assert!(
            resets_allowed || resets == 0,
            "{fault}: {resets} subscribers had to reset"
        );
        drop(acked);
        self
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks.iter().chain(&self.subscribers) {
            t.abort();
        }
    }
}

/// One chat's writes until `stop`: register 1–3 messages (retried until
/// acknowledged), then each recipient delivers what it has not acknowledged
/// yet and, every other round, reads up to the newest.
async fn writer(
    url: String,
    chat: Chat,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    pace: Duration,
) {
    let backend = client(&url, Uuid::new_v4(), Role::Service, RetryPolicy::none()).backend();
    let readers: Vec<(Uuid, Client)> = chat
        .recipients
        .iter()
        .map(|r| (*r, client(&url, *r, Role::User, RetryPolicy::none())))
        .collect();
    let mut next_seq = 1u64;
    let mut round = 0u64;
    while !stop.load(Ordering::Acquire) {
        round += 1;
        let n = rand::rng().random_range(1..=3u64);
        let batch: Vec<NewMessage> = (0..n)
            .map(|i| NewMessage {
                message_id: Uuid::now_v7(),
                conversation_id: chat.id,
                seq: next_seq + i,
                sender_id: chat.sender,
                sent_at: None,
            })
            .collect();
        // The same ids and seqs until acknowledged: registration is
        // idempotent.
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            match backend.register_messages(&batch).await {
                Ok(_) => {
                    let mut a = acked.lock().expect("acked");
                    a.writes += 1;
                    a.messages
                        .entry(chat.id)
                        .or_default()
                        .extend(batch.iter().map(|m| (m.message_id, m.seq)));
                    break;
                }
                Err(e) => {
                    acked.lock().expect("acked").fail(&e);
                    sleep(Duration::from_millis(100)).await;
                }
            }
        }
        next_seq += n;
        let messages = acked.lock().expect("acked").messages[&chat.id].clone();
        let newest = *messages.last().expect("a message");
        for (r, c) in &readers {
            // What it has not acknowledged yet, and two it has (at random):
            // a repeat must report the first delivery time, so a lost
            // delivery shows while the load runs.
            let todo: Vec<Uuid> = {
                let a = acked.lock().expect("acked");
                let mut ids: Vec<Uuid> = messages
                    .iter()
                    .rev()
                    .take(20)
                    .filter(|(m, _)| !a.delivered.contains_key(&(*r, *m)))
                    .map(|(m, _)| *m)
                    .collect();
                for _ in 0..2 {
                    let (m, _) = messages[rand::rng().random_range(0..messages.len())];
                    if a.delivered.contains_key(&(*r, m)) && !ids.contains(&m) {
                        ids.push(m);
                    }
                }
                ids
            };
            if !todo.is_empty() {
                match c.mark_delivered(&todo).await {
                    Ok(results) => {
                        let mut a = acked.lock().expect("acked");
                        a.writes += 1;
                        for d in results {
                            let Some(at) = d.delivered_at else { continue };
                            let first = *a.delivered.entry((*r, d.message_id)).or_insert(at);
                            if first != at {
                                a.contradictions.push(format!(
                                    "{r} delivered {} at {first:?}, later acknowledged as {at:?}",
                                    d.message_id
                                ));
                            }
                        }
                    }
                    Err(e) => acked.lock().expect("acked").fail(&e),
                }
            }
            if round.is_multiple_of(2) {
                match c.mark_read_up_to(chat.id, newest.0).await {
                    Ok(p) => {
                        let mut a = acked.lock().expect("acked");
                        a.writes += 1;
                        let w = a.read.get(&(chat.id, *r)).copied().unwrap_or(0);
                        if p.read_up_to_seq < w {
                            let msg = format!(
                                "{r} read up to {w} in {}, later acknowledged at {}",
                                chat.id, p.read_up_to_seq
                            );
                            a.contradictions.push(msg);
                        }
                        a.read.insert((chat.id, *r), w.max(p.read_up_to_seq));
                    }
                    Err(e) => acked.lock().expect("acked").fail(&e),
                }
            }
        }
        sleep(pace).await;
    }
}

/// A user's resuming subscription (the SDK's), recording what it yields. On
/// a reset it repaints its chat from GetReceipts, as an app does.
async fn subscriber(
    url: String,
    chat: Chat,
    user: Uuid,
    acked: Arc<Mutex<Acked>>,
    seen: Arc<Mutex<Seen>>,
) {
    let c = client(&url, user, Role::User, RetryPolicy::default());
    let mut sub = c.subscribe(None);
    while let Some(ev) = sub.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                seen.lock().expect("seen").ended = Some(format!("{user}: {e}"));
                return;
            }
        };
        let reset = {
            let mut s = seen.lock().expect("seen");
            match &ev {
                Event::Receipts { messages, .. } => {
                    s.events += 1;
                    s.cursor("receipts", sub.cursor());
                    for m in messages {
                        s.record(m);
                    }
                }
                Event::Watermark(w) => {
                    s.events += 1;
                    s.cursor("watermark", sub.cursor());
                    s.watermarks.insert(w.conversation_id, w.read_up_to_seq);
                }
                Event::Reset(snapshot) => {
                    s.events += 1;
                    s.resets += 1;
                    s.last = None;
                    s.cursor("reset", sub.cursor());
                    for m in &snapshot.recent_messages {
                        s.record(m);
                    }
                    for w in &snapshot.watermarks {
                        s.watermarks.insert(w.conversation_id, w.read_up_to_seq);
                    }
                }
                Event::Reconnecting { .. } => s.reconnects += 1,
                Event::Live { .. } => s.live = true,
                other => panic!("an event this suite does not know: {other:?}"),
            }
            matches!(ev, Event::Reset(_))
        };
        if reset {
            repaint(&c, &chat, user, &acked, &seen).await;
        }
    }
}

/// After a reset: the chat's states fetched anew (retried until answered).
async fn repaint(c: &Client, chat: &Chat, user: Uuid, acked: &Mutex<Acked>, seen: &Mutex<Seen>) {
    let ids: Vec<Uuid> = acked
        .lock()
        .expect("acked")
        .messages
        .get(&chat.id)
        .map(|v| v.iter().map(|(m, _)| *m).collect())
        .unwrap_or_default();
    loop {
        let result: Result<(), receipts_sdk::Error> = async {
            if user == chat.sender {
                for chunk in ids.chunks(100) {
                    let states = c.get_receipts(chat.id, chunk).await?;
                    let mut s = seen.lock().expect("seen");
                    for m in &states {
                        s.record(m);
                    }
                }
            } else {
                let u = c.unread_counts(&[chat.id]).await?;
                seen.lock()
                    .expect("seen")
                    .watermarks
                    .insert(chat.id, u[0].read_up_to_seq);
            }
            Ok(())
        }
        .await;
        if result.is_ok() {
            return;
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// A verification call's answer, retried for up to 30 s: the checks run
/// after the fault healed, and a call that still fails then is not a lost
/// write but a service that did not recover (and fails the test as such).
async fn answered<T, F, Fut>(call: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, receipts_sdk::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(250)).await,
            Err(e) => panic!("the service did not answer a verification call within 30 s: {e}"),
        }
    }
}

/// A random wait in `range` (milliseconds).
fn random_ms(range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rand::rng().random_range(range))
}

fn url(node: &ChildServer) -> String {
    format!("http://{}", node.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_kill_9_at_random_moments_loses_no_acknowledged_write() {
    let scale = scale();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut node = ChildServer::start(dir.path(), port).await;
    let load = Load::start(vec![url(&node)], 3, 3, Duration::from_millis(20)).await;
    for _ in 0..scale.kill_cycles {
        load.progress(20, Duration::from_secs(30)).await;
        sleep(random_ms(0..1500)).await;
        node.kill9();
        sleep(random_ms(0..300)).await;
        node = ChildServer::start(dir.path(), port).await;
    }
    load.progress(20, Duration::from_secs(30)).await;
    let fault = format!("embedded, {} kill -9 cycles", scale.kill_cycles);
    load.verify(&fault, &url(&node), false).await;
}

/// A production tier on a Redis this test owns (AOF, as operators run it)
/// and the shared Cassandra (through a proxy the test can cut), with
/// `nodes` nodes flushing every 200 ms.
struct Production {
    redis: OwnedRedis,
    proxy: CassandraProxy,
    tier: Tier,
    nodes: Vec<ChildServer>,
    ports: Vec<u16>,
    metrics: Vec<std::net::SocketAddr>,
}

impl Production {
    async fn start(nodes: usize) -> Self {
        let redis = OwnedRedis::start_with(
            free_port(),
            &["--appendonly", "yes", "--appendfsync", "everysec"],
        );
        let proxy = CassandraProxy::start(required_env("RECEIPTS_TEST_CASSANDRA")).await;
        let tier = Tier::with_redis(redis.url()).await;
        let mut p = Self {
            redis,
            proxy,
            tier,
            nodes: Vec::new(),
            ports: (0..nodes).map(|_| free_port()).collect(),
            metrics: (0..nodes)
                .map(|_| format!("127.0.0.1:{}", free_port()).parse().expect("addr"))
                .collect(),
        };
        for i in 0..nodes {
            let n = p.start_node(i).await;
            p.nodes.push(n);
        }
        p
    }

    async fn start_node(&self, i: usize) -> ChildServer {
        let mut args = self.tier.args(&[
            "--flush-interval-ms",
            "200",
            "--metrics-listen",
            &self.metrics[i].to_string(),
        ]);
        let at = args
            .iter()
            .position(|a| a == "--scylla-nodes")
            .expect("--scylla-nodes");
        args[at + 1] = self.proxy.addr.to_string();
        let data = self.tier.dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&data).expect("node dir");
        ChildServer::start_with_args(&data, self.ports[i], &args).await
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(url).collect()
    }

    /// Waits until no change waits for Cassandra, drops every Redis key, and
    /// checks every acknowledged write again: now read from Cassandra.
    async fn verify_in_cassandra(&self, load: &Load, fault: &str) {
        let metrics = self.metrics[0];
        eventually_metric(
            "the write-behind backlog drained",
            metrics,
            "receipts_writebehind_queues",
            |v| v == 0.0,
        )
        .await;
        let mut con = self.tier.redis().await;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut con)
            .await
            .expect("flushall");
        let lost = load.lost(&self.urls()[1 % self.nodes.len()]).await;
        println!(
            "faults: {fault}: read back from Cassandra alone: {} lost",
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "{fault}: acknowledged writes not in Cassandra: {lost:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_node_kill_9_loses_no_acknowledged_write() {
    let scale = scale();
    let mut p = Production::start(2).await;
    let load = Load::start(p.urls(), 2, 2, Duration::from_millis(20)).await;
    for _ in 0..scale.node_kills {
        load.progress(20, Duration::from_secs(30)).await;
        sleep(random_ms(0..1000)).await;
        p.nodes[0].kill9();
        sleep(random_ms(200..1000)).await;
        p.nodes[0] = p.start_node(0).await;
    }
    load.progress(20, Duration::from_secs(30)).await;
    let fault = format!(
        "production, kill -9 of one of two nodes x{}",
        scale.node_kills
    );
    let load = load.verify(&fault, &p.urls()[1], false).await;
    p.verify_in_cassandra(&load, &fault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_redis_restart_and_crash_with_aof_lose_no_acknowledged_write() {
    let mut p = Production::start(2).await;
    let load = Load::start(p.urls(), 2, 2, Duration::from_millis(20)).await;
    load.progress(30, Duration::from_secs(30)).await;
    // A clean restart: Redis writes its AOF as it stops.
    tokio::task::block_in_place(|| p.redis.stop());
    tokio::task::block_in_place(|| p.redis.spawn());
    load.progress(30, Duration::from_secs(30)).await;
    // The process crashes: Redis writes each reply's changes to the AOF
    // file before it replies (with `everysec` it fsyncs once a second), so
    // what it answered survives the process. A machine crash is another
    // matter: docs/reliability.md.
    sleep(random_ms(0..500)).await;
    tokio::task::block_in_place(|| p.redis.kill9());
    tokio::task::block_in_place(|| p.redis.spawn());
    load.progress(30, Duration::from_secs(30)).await;
    let fault = "production, Redis restart, then kill -9 of the Redis process (AOF everysec)";
    let load = load.verify(fault, &p.urls()[0], false).await;
    p.verify_in_cassandra(&load, fault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_redis_down_fails_calls_clearly_and_recovers() {
    let scale = scale();
    let mut p = Production::start(2).await;
    let load = Load::start(p.urls(), 2, 2, Duration::from_millis(20)).await;
    load.progress(30, Duration::from_secs(30)).await;
    tokio::task::block_in_place(|| p.redis.stop());
    let down = Instant::now();
    let before = load.writes();
    // Clear failures, fast: health leaves rotation, calls fail UNAVAILABLE.
    for node in &p.nodes {
        let addr = node.addr;
        eventually("health is NOT_SERVING while Redis is down", || async move {
            health(addr).await != Some(ServingStatus::Serving)
        })
        .await;
    }
    let probe = client(
        &p.urls()[0],
        Uuid::now_v7(),
        Role::User,
        RetryPolicy::none(),
    );
    let started = Instant::now();
    let e = probe
        .unread_counts(&[Uuid::now_v7()])
        .await
        .expect_err("Redis is down");
    let refused_in = started.elapsed();
    assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e}");
    // It says what is down, not the driver's text.
    assert!(e.to_string().contains("hot store (Redis)"), "{e}");
    assert!(
        refused_in < Duration::from_secs(5),
        "a call while Redis is down took {refused_in:?}"
    );
    sleep(scale.redis_down.saturating_sub(down.elapsed())).await;
    let during = load.writes() - before;
    tokio::task::block_in_place(|| p.redis.spawn());
    load.progress(30, Duration::from_secs(30)).await;
    println!(
        "faults: production, Redis down {:?}: {during} writes acknowledged while down, \
         a call failed UNAVAILABLE in {refused_in:?}",
        scale.redis_down,
    );
    let fault = format!("production, Redis down {:?}", scale.redis_down);
    let load = load.verify(&fault, &p.urls()[0], false).await;
    p.verify_in_cassandra(&load, &fault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_cassandra_down_keeps_acknowledging_and_loses_nothing() {
    let scale = scale();
    let p = Production::start(2).await;
    let load = Load::start(p.urls(), 2, 2, Duration::from_millis(20)).await;
    load.progress(30, Duration::from_secs(30)).await;
    // A Redis vouches for new message ids only once it has held every
    // registration for longer than the allowed clock skew (5 s, see "While
    // Scylla is down" in docs/storage.md); before, they are looked up in
    // Scylla. A deployment's Redis is that old; this one is made to be.
    let mut con = p.tier.redis().await;
    let since: i64 = redis::cmd("GET")
        .arg(format!("{}:complete", p.tier.prefix))
        .query_async(&mut con)
        .await
        .expect("the completeness marker");
    let age = receipts_server::domain::now_millis() - since;
    sleep(Duration::from_millis(
        6_000u64.saturating_sub(age.max(0) as u64),
    ))
    .await;
    let memory_before = redis_info(&mut con, "memory", "used_memory").await;
    p.proxy.cut();
    let down = Instant::now();
    let metrics = p.metrics[0];
    eventually_metric(
        "the node reports Scylla down",
        metrics,
        "receipts_writebehind_persistence_up",
        |v| v == 0.0,
    )
    .await;
    // Writes keep being acknowledged through the outage.
    let before = load.writes();
    while down.elapsed() < scale.cassandra_down {
        load.progress(10, Duration::from_secs(10)).await;
    }
    let during = load.writes() - before;
    let backlog = sample(&scrape(metrics).await, "receipts_writebehind_queues");
    let grown = redis_info(&mut con, "memory", "used_memory")
        .await
        .saturating_sub(memory_before);
    p.proxy.restore();
    println!(
        "faults: production, Cassandra down {:?}: {during} writes acknowledged while down, \
         {backlog} queues waiting at the end, Redis grew by {grown} B ({} B per write)",
        scale.cassandra_down,
        grown / during.max(1)
    );
    let fault = format!("production, Cassandra down {:?}", scale.cassandra_down);
    let load = load.verify(&fault, &p.urls()[0], false).await;
    p.verify_in_cassandra(&load, &fault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_redis_cluster_master_failover_loses_no_acknowledged_write() {
    let mut cluster = OwnedCluster::start().await;
    let tier = Tier::with_redis(cluster.urls()).await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            tier.node_with(&[
                "--redis-cluster",
                "--redis-wait-replicas",
                "1",
                "--redis-wait-timeout-ms",
                "3000",
                "--flush-interval-ms",
                "200",
            ])
            .await,
        );
    }
    let urls: Vec<String> = nodes.iter().map(url).collect();
    let load = Load::start(urls.clone(), 2, 2, Duration::from_millis(20)).await;
    load.progress(30, Duration::from_secs(30)).await;
    // A planned failover, then a master killed and taken over.
    let (r1, m1) = cluster.a_replica_and_its_master(&[]).await;
    cluster.failover(r1, None).await;
    load.progress(10, Duration::from_secs(30)).await;
    let (r2, m2) = cluster.a_replica_and_its_master(&[r1, m1]).await;
    tokio::task::block_in_place(|| cluster.nodes[m2].kill9());
    cluster.failover(r2, Some("TAKEOVER")).await;
    sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| cluster.nodes[m2].spawn());
    load.progress(30, Duration::from_secs(30)).await;
    // A promoted replica keeps the epoch of the data it holds; a subscriber
    // may still be told to reset if its log's key moved: allowed, never a
    // silent gap.
    load.verify(
        "production, Redis Cluster master failover (planned and kill -9)",
        &urls[0],
        true,
    )
    .await;
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_soak_memory_levels_off() {
    let scale = scale();
    let dir = tempfile::tempdir().expect("tempdir");
    // The page cache (--cache-mb, default 256 MiB) fills as the data grows
    // and reads touch it; a small one fills within minutes, so that what
    // grows beyond it shows within the soak.
    const CACHE_MB: u64 = 32;
    let args = ["--cache-mb".to_string(), CACHE_MB.to_string()];
    let node = ChildServer::start_with_args(dir.path(), free_port(), &args).await;
    let pid = node.pid().expect("pid");
    let every = (scale.soak / 40).max(Duration::from_secs(1));
    let start = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut writes = 0;
    // Fresh conversations and users every period: the data keeps growing,
    // the caches and per-user logs must not.
    let period = (scale.soak / 6).max(Duration::from_secs(10));
    while start.elapsed() < scale.soak {
        let load = Load::start(vec![url(&node)], 4, 4, Duration::from_millis(50)).await;
        let until = (start.elapsed() + period).min(scale.soak);
        while start.elapsed() < until {
            samples.push((start.elapsed(), rss_kib(pid)));
            sleep(every.min(scale.soak.saturating_sub(start.elapsed()))).await;
        }
        let load = load
            .verify("embedded soak (one period)", &url(&node), false)
            .await;
        writes += load.writes();
    }
    samples.push((start.elapsed(), rss_kib(pid)));
    // The first third warms up (the page cache fills); the middle and last
    // thirds are compared.
    let third = samples.len() / 3;
    let middle = samples[third..2 * third]
        .iter()
        .map(|s| s.1)
        .max()
        .expect("samples");
    let last = samples[2 * third..]
        .iter()
        .map(|s| s.1)
        .max()
        .expect("samples");
    println!(
        "faults: soak {:?} (--cache-mb {CACHE_MB}), {writes} acknowledged writes, data file {} MiB; \
         RSS (MiB) over time:",
        scale.soak,
        std::fs::metadata(dir.path().join("receipts.redb")).map_or(0, |m| m.len() >> 20)
    );
    for (at, kib) in &samples {
        println!(
            "  {:>6.0} s  {:>7.1}",
            at.as_secs_f64(),
            *kib as f64 / 1024.0
        );
    }
    println!(
        "faults: soak: peak RSS {:.1} MiB in the middle third, {:.1} MiB in the last",
        middle as f64 / 1024.0,
        last as f64 / 1024.0
    );
    // Levelled off: the last third may not exceed the middle third's peak by
    // more than 20 % plus 8 MiB. Each period ends with a verification that
    // reads back every message it wrote, which lifts RSS for a while (up to
    // 20 % in the 30-minute run); a leak that follows the data (which grows
    // by half from the middle third to the end) would exceed it.
    assert!(
        last <= middle + middle / 5 + 8 * 1024,
        "memory still grows: {middle} KiB peak in the middle third, {last} KiB in the last"
    );
}
