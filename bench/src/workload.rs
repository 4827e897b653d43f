//! The traffic: conversations of several sizes, users with several devices
//! (each its own connection), senders subscribed to their receipts, and
//! rounds in which the backend registers a batch of messages and every
//! recipient marks the batch delivered from one of its devices, then reads
//! up to its last message ("scrolls").
//!
//! Propagation is the time from issuing a write to the first event on the
//! sender's stream whose counts include it: the k-th delivery (or read)
//! issued for a batch is seen when an event reports at least k recipients.
//! With concurrent writers the k-th issued may not be the k-th committed, so
//! a single value can be early by the gap between two writers; the
//! distribution is what counts.

use crate::stats::Stats;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use receipts_sdk::{BackendClient, Client, Event, NewMessage, RetryPolicy, SubscribeOptions};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use uuid::Uuid;

/// How clients authenticate.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Dev-mode headers (a `receiptd --dev-mode` on loopback).
    Dev,
    /// HS256 tokens minted from this secret.
    Secret(String),
}

impl Auth {
    pub(crate) fn user(&self, url: &str, id: Uuid) -> anyhow::Result<Client> {
        let b = Client::builder(url).retry(RetryPolicy::none());
        let b = match self {
            Auth::Dev => b.dev_user(id),
            Auth::Secret(s) => b.token(token(s, id, receipts_server::auth::Role::User)?),
        };
        Ok(b.connect_lazy()?)
    }

    pub(crate) fn service(&self, url: &str) -> anyhow::Result<Client> {
        self.service_with_timeout(url, std::time::Duration::from_secs(10))
    }

    /// A backend client whose calls may take up to `timeout` (creating a
    /// group of 10,000 takes seconds).
    pub(crate) fn service_with_timeout(
        &self,
        url: &str,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Client> {
        let id = Uuid::now_v7();
        let b = Client::builder(url)
            .retry(RetryPolicy::none())
            .timeout(timeout);
        let b = match self {
            Auth::Dev => b.dev_service(id),
            Auth::Secret(s) => b.token(token(s, id, receipts_server::auth::Role::Service)?),
        };
        Ok(b.connect_lazy()?)
    }
}

fn token(secret: &str, id: Uuid, role: receipts_server::auth::Role) -> anyhow::Result<String> {
    receipts_server::auth::mint_token(secret, id, role, std::time::Duration::from_secs(86_400))
        .map_err(|e| anyhow::anyhow!("minting a token: {e}"))
}

/// A kind of conversation and its share of the rounds.
#[derive(Clone, Debug)]
pub struct Kind {
    /// `direct` or `group<N>`.
    pub label: String,
    /// Members, the sender included.
    pub members: usize,
    /// How many conversations of this kind exist.
    pub count: usize,
    /// Relative weight when picking the next round's conversation.
    pub weight: u32,
}

struct Conversation {
    id: Uuid,
    group: bool,
    sender: Uuid,
    recipients: Vec<Uuid>,
    next_seq: u64,
}

/// One receipts RPC to make.
pub enum Op {
    Deliver {
        client: Client,
        /// Named in MarkDelivered's conversation form, unless `None`.
        conversation: Option<Uuid>,
        ids: Vec<Uuid>,
        round: Arc<Round>,
    },
    Read {
        client: Client,
        conversation: Uuid,
        last: Uuid,
        round: Arc<Round>,
    },
}

/// The writes issued for one batch, and how many the sender has seen.
pub struct Round {
    group: bool,
    recipients: usize,
    inner: Mutex<RoundState>,
}

#[derive(Default)]
struct RoundState {
    delivers: Vec<Option<Instant>>,
    reads: Vec<Option<Instant>>,
    seen_delivers: usize,
    seen_reads: usize,
}

impl Round {
    /// Notes a write issued at `at` (`None` outside the window).
    fn issued(&self, read: bool, at: Option<Instant>) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if read {
            s.reads.push(at);
        } else {
            s.delivers.push(at);
        }
    }

    /// Resolves the writes an event with these counts includes. True once
    /// every write of the round was seen.
    fn seen(&self, delivered: u64, read: u64, stats: &Stats) -> bool {
        let now = Instant::now();
        let h = if self.group {
            &stats.propagation_group
        } else {
            &stats.propagation_direct
        };
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *s;
        for (issued, seen, count) in [
            (&s.delivers, &mut s.seen_delivers, delivered as usize),
            (&s.reads, &mut s.seen_reads, read as usize),
        ] {
            while *seen < count.min(issued.len()) {
                if let Some(t) = issued[*seen] {
                    h.record(now - t);
                }
                *seen += 1;
            }
        }
        s.seen_delivers >= self.recipients && s.seen_reads >= self.recipients
    }
}

/// Rounds waiting for their events, by the batch's last message.
/// Open rounds by (conversation, seq of the batch's last message): events
/// name messages by id and seq, ranges by seq.
type Rounds = Arc<Mutex<BTreeMap<(Uuid, u64), Arc<Round>>>>;

/// The whole population, ready to run.
pub struct Workload {
    backend: BackendClient,
    conversations: Vec<Conversation>,
    kinds: Vec<Kind>,
    /// The conversation indexes of each kind.
    by_kind: Vec<Vec<usize>>,
    devices: HashMap<Uuid, Vec<Client>>,
    senders: Vec<Client>,
    rounds: Rounds,
    batch: usize,
    /// MarkDelivered names messages by id alone.
    by_id: bool,
}

impl Workload {
    /// Creates the conversations and the clients (connections are made on
    /// first use).
    pub async fn setup(
        url: &str,
        auth: &Auth,
        kinds: Vec<Kind>,
        devices: usize,
        batch: usize,
        by_id: bool,
    ) -> anyhow::Result<Self> {
        let backend = auth.service(url)?.backend();
        let mut conversations = Vec::new();
        let mut by_kind = Vec::new();
        let mut device_map = HashMap::new();
        let mut senders = Vec::new();
        for kind in &kinds {
            let mut idx = Vec::new();
            for _ in 0..kind.count {
                let members: Vec<Uuid> = (0..kind.members).map(|_| Uuid::now_v7()).collect();
                let id = Uuid::now_v7();
                backend.create_conversation(id, &members).await?;
                for m in &members[1..] {
                    let ds = (0..devices.max(1))
                        .map(|_| auth.user(url, *m))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    device_map.insert(*m, ds);
                }
                senders.push(auth.user(url, members[0])?);
                idx.push(conversations.len());
                conversations.push(Conversation {
                    id,
                    group: kind.members > 2,
                    sender: members[0],
                    recipients: members[1..].to_vec(),
                    next_seq: 1,
                });
            }
            by_kind.push(idx);
        }
        Ok(Self {
            backend,
            conversations,
            kinds,
            by_kind,
            devices: device_map,
            senders,
            rounds: Arc::new(Mutex::new(BTreeMap::new())),
            batch: batch.max(1),
            by_id,
        })
    }

    /// Connections the load uses (devices and senders).
    pub fn connections(&self) -> usize {
        self.devices.values().map(Vec::len).sum::<usize>() + self.senders.len()
    }

    /// Subscribes every sender; their events resolve propagation.
    pub async fn subscribe(&self, stats: Arc<Stats>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for sender in &self.senders {
            // As a client that keeps its messages' seqs: a batch's change
            // arrives as a range.
            let mut sub =
                sender.subscribe_with(None, SubscribeOptions::default().accept_ranges(true));
            // Live before any write, so nothing is missed.
            while let Some(ev) = sub.next().await {
                if matches!(ev, Ok(Event::Live { .. })) {
                    break;
                }
            }
            let (stats, rounds) = (stats.clone(), self.rounds.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = sub.next().await {
                    let Ok(Event::Receipts {
                        conversation_id: c,
                        messages,
                        ranges,
                        ..
                    }) = ev
                    else {
                        continue;
                    };
                    stats.event_seen(messages.len() as u64 + ranges.len() as u64);
                    // (seq span, delivered, read) of each state in the event.
                    let states = messages
                        .iter()
                        .map(|m| (m.seq, m.seq, m.delivered_count, m.read_count))
                        .chain(
                            ranges
                                .iter()
                                .map(|r| (r.from_seq, r.to_seq, r.delivered_count, r.read_count)),
                        );
                    for (from, to, delivered, read) in states {
                        let hits: Vec<((Uuid, u64), Arc<Round>)> = rounds
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .range((c, from)..=(c, to))
                            .map(|(k, r)| (*k, r.clone()))
                            .collect();
                        for (key, r) in hits {
                            if r.seen(delivered, read, &stats) {
                                rounds
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&key);
                            }
                        }
                    }
                }
            }));
        }
        tasks
    }

    /// Produces rounds with `generators` tasks until the receiver goes away.
    /// Each round registers a batch, then queues every recipient's delivery
    /// and read. Generators share every conversation (a conversation's lock
    /// keeps its seqs in order), so the mix holds whatever their number;
    /// several are needed because each waits for its registration.
    pub async fn generate(
        self,
        seed: u64,
        generators: usize,
        ops: mpsc::Sender<Op>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<()> {
        let shared = Arc::new(Generator {
            backend: self.backend,
            conversations: self
                .conversations
                .into_iter()
                .map(tokio::sync::Mutex::new)
                .collect(),
            kinds: self.kinds,
            by_kind: self.by_kind,
            devices: self.devices,
            rounds: self.rounds,
            batch: self.batch,
            by_id: self.by_id,
        });
        let mut tasks = tokio::task::JoinSet::new();
        for g in 0..generators.max(1) {
            let (shared, ops, stats) = (shared.clone(), ops.clone(), stats.clone());
            tasks.spawn(async move { shared.run(seed.wrapping_add(g as u64), ops, &stats).await });
        }
        drop(ops);
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}

/// What the generator tasks share.
struct Generator {
    backend: BackendClient,
    conversations: Vec<tokio::sync::Mutex<Conversation>>,
    kinds: Vec<Kind>,
    by_kind: Vec<Vec<usize>>,
    devices: HashMap<Uuid, Vec<Client>>,
    rounds: Rounds,
    batch: usize,
    by_id: bool,
}

impl Generator {
    async fn run(&self, seed: u64, ops: mpsc::Sender<Op>, stats: &Stats) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(seed);
        let total: u32 = self.kinds.iter().map(|k| k.weight).sum();
        loop {
            let mut pick = rng.random_range(0..total.max(1));
            let kind = self
                .kinds
                .iter()
                .position(|k| {
                    if pick < k.weight {
                        true
                    } else {
                        pick -= k.weight;
                        false
                    }
                })
                .unwrap_or(0);
            let Some(&ci) = self.by_kind[kind].choose(&mut rng) else {
                continue;
            };
            let (ids, conversation, last_seq, group, mut recipients) = {
                let mut c = self.conversations[ci].lock().await;
                let msgs: Vec<NewMessage> = (0..self.batch)
                    .map(|i| NewMessage {
                        message_id: Uuid::now_v7(),
                        conversation_id: c.id,
                        seq: c.next_seq + i as u64,
                        sender_id: c.sender,
                        sent_at: None,
                        thread_root_message_id: None,
                    })
                    .collect();
                self.backend.register_messages(&msgs).await?;
                if stats.measuring(Instant::now()) {
                    stats
                        .registered
                        .fetch_add(msgs.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                c.next_seq += self.batch as u64;
                let ids: Vec<Uuid> = msgs.iter().map(|m| m.message_id).collect();
                let last_seq = msgs.last().expect("batch of at least one").seq;
                (ids, c.id, last_seq, c.group, c.recipients.clone())
            };
            let last = *ids.last().expect("batch of at least one");
            let round = Arc::new(Round {
                group,
                recipients: recipients.len(),
                inner: Mutex::new(RoundState::default()),
            });
            self.rounds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((conversation, last_seq), round.clone());
            recipients.shuffle(&mut rng);
            let device = |rng: &mut StdRng, u: &Uuid| -> Client {
                self.devices[u].choose(rng).expect("a device").clone()
            };
            let mut batch = Vec::with_capacity(recipients.len() * 2);
            for u in &recipients {
                batch.push(Op::Deliver {
                    client: device(&mut rng, u),
                    conversation: (!self.by_id).then_some(conversation),
                    ids: ids.clone(),
                    round: round.clone(),
                });
            }
            for u in &recipients {
                batch.push(Op::Read {
                    client: device(&mut rng, u),
                    conversation,
                    last,
                    round: round.clone(),
                });
            }
            for op in batch {
                if ops.send(op).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

impl Op {
    pub fn method(&self) -> &'static str {
        match self {
            Op::Deliver { .. } => "MarkDelivered",
            Op::Read { .. } => "MarkReadUpTo",
        }
    }

    /// Makes the call and records it.
    pub async fn run(self, stats: &Stats) {
        let method = self.method();
        let issued = Instant::now();
        let in_window = stats.measuring(issued).then_some(issued);
        let out = match self {
            Op::Deliver {
                client,
                conversation,
                ids,
                round,
            } => {
                round.issued(false, in_window);
                match conversation {
                    Some(c) => client.mark_delivered_in(c, &ids).await.map(|_| ()),
                    None => client.mark_delivered(&ids).await.map(|_| ()),
                }
            }
            Op::Read {
                client,
                conversation,
                last,
                round,
            } => {
                round.issued(true, in_window);
                client.mark_read_up_to(conversation, last).await.map(|_| ())
            }
        };
        let out = out.map_err(|e| match e.code() {
            Some(code) => format!("{code:?}"),
            None => format!("client: {e}"),
        });
        stats.rpc_done(method, issued, out);
    }
}
