//! The fault suite's load: direct chats and groups driven through the Rust
//! SDK (registrations retried until acknowledged, deliveries, reads, resuming
//! subscriptions), with what was acknowledged and what subscribers saw kept
//! for the checks in `tests/faults.rs` (docs/reliability.md).

use crate::*;
use futures::StreamExt;
use rand::Rng;
use receipts_sdk::{Client, Event, NewMessage, RetryPolicy, Tick};
use receipts_server::auth::Role;
use receipts_server::domain::Cursor;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::{Instant, sleep};
use uuid::Uuid;

/// How hard to push: the short form by default, the long one with
/// `RECEIPTS_FAULTS=long` (single values can be overridden, see
/// `scripts/faults.sh`).
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub kill_cycles: usize,
    pub node_kills: usize,
    pub redis_down: Duration,
    pub cassandra_down: Duration,
    pub soak: Duration,
}

pub fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

pub fn scale() -> Scale {
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
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn client(url: &str, user: Uuid, role: Role, retry: RetryPolicy) -> Client {
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
pub struct Chat {
    pub id: Uuid,
    pub sender: Uuid,
    pub recipients: Vec<Uuid>,
    /// The node (index into the endpoints) its users talk to.
    pub node: usize,
}

/// What the server acknowledged.
#[derive(Debug, Default)]
pub struct Acked {
    /// Registered messages per conversation, `(id, seq)` in seq order.
    pub messages: HashMap<Uuid, Vec<(Uuid, u64)>>,
    /// The delivery time an acknowledgement reported, per (user, message).
    pub delivered: HashMap<(Uuid, Uuid), SystemTime>,
    /// The highest acknowledged read position per (conversation, user).
    pub read: HashMap<(Uuid, Uuid), u64>,
    /// Acknowledged writes in total.
    pub writes: u64,
    /// Refused calls by what the client saw.
    pub failures: BTreeMap<String, u64>,
    /// The first message seen for each kind of failure.
    pub examples: BTreeMap<String, String>,
    /// Acknowledgements that contradict an earlier one (a lost write that a
    /// later call revealed while the load ran).
    pub contradictions: Vec<String>,
}

impl Acked {
    pub fn fail(&mut self, e: &receipts_sdk::Error) {
        let kind = match e.code() {
            Some(code) => format!("{code:?}"),
            None => format!("client: {e}"),
        };
        self.examples
            .entry(kind.clone())
            .or_insert_with(|| e.to_string());
        *self.failures.entry(kind).or_default() += 1;
    }

    pub fn unclear_failures(&self) -> Vec<(&String, &u64)> {
        self.failures
            .iter()
            .filter(|(k, _)| k.as_str() != "Unavailable")
            .collect()
    }
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Last known `(tick, delivered, read)` per message.
    pub states: HashMap<Uuid, (Tick, u64, u64)>,
    /// Last known own read position per conversation.
    pub watermarks: HashMap<Uuid, u64>,
    pub events: u64,
    pub duplicates: Vec<String>,
    pub resets: u64,
    pub reconnects: u64,
    pub last: Option<Cursor>,
    /// Set when the subscription ended (it must not).
    pub ended: Option<String>,
    /// Whether it went live at least once.
    pub live: bool,
}

impl Seen {
    /// Checks an event's cursor against the previous one: within an epoch,
    /// offsets only grow.
    pub fn cursor(&mut self, what: &str, cursor: Option<&receipts_sdk::Cursor>) {
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

    pub fn record(&mut self, m: &receipts_sdk::MessageReceipts) {
        self.states
            .insert(m.message_id, (m.tick, m.delivered_count, m.read_count));
    }
}

/// The load: conversations, their writers and subscribers, and what was
/// acknowledged and seen.
pub struct Load {
    pub chats: Vec<Chat>,
    pub endpoints: Arc<Vec<String>>,
    pub acked: Arc<Mutex<Acked>>,
    pub seen: Vec<Arc<Mutex<Seen>>>,
    pub stop: Arc<AtomicBool>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub subscribers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Creates `direct` direct chats and `groups` groups of 5 (spread over
    /// the endpoints), subscribes each sender and one recipient per chat,
    /// and starts writing: each chat registers messages and its recipients
    /// deliver and read them, every `pace`.
    pub async fn start(
        endpoints: Vec<String>,
        direct: usize,
        groups: usize,
        pace: Duration,
    ) -> Self {
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

    pub fn writes(&self) -> u64 {
        self.acked.lock().expect("acked").writes
    }

    /// Waits until `n` more writes were acknowledged (the load recovered).
    pub async fn progress(&self, n: u64, within: Duration) {
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
    pub async fn stop_writing(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks.drain(..) {
            t.await.expect("writer");
        }
    }

    /// Every acknowledged write, as `endpoint` answers now. Returns the
    /// problems found.
    pub async fn lost(&self, endpoint: &str) -> Vec<String> {
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
    pub async fn stale(&self, endpoint: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stale = self.stale_now(endpoint).await;
            if stale.is_empty() || Instant::now() > deadline {
                return stale;
            }
            sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn stale_now(&self, endpoint: &str) -> Vec<String> {
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
    pub async fn verify(mut self, fault: &str, endpoint: &str, resets_allowed: bool) -> Self {
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
pub async fn writer(
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
                thread_root_message_id: None,
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
pub async fn subscriber(
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
pub async fn repaint(
    c: &Client,
    chat: &Chat,
    user: Uuid,
    acked: &Mutex<Acked>,
    seen: &Mutex<Seen>,
) {
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
pub async fn answered<T, F, Fut>(call: F) -> T
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
pub fn random_ms(range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rand::rng().random_range(range))
}

pub fn url(node: &ChildServer) -> String {
    format!("http://{}", node.addr)
}
