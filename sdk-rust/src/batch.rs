//! Client-side batching: the read marker and the delivered batcher.
//!
//! Both run a small background task. Marks are kept until sent; a failed send
//! is retried on the next tick (marks are idempotent, so re-sending is safe).
//! `flush()` sends now and waits; `close()` flushes and stops; dropping the
//! handle flushes in the background. Nothing handed over is lost unless the
//! process exits before the background flush completes — call `close()`
//! during orderly shutdown.

use crate::{Client, Error};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// A command to a batching task: an item to batch, or a request to send
/// everything now.
enum Cmd<T> {
    Item(T),
    Flush(oneshot::Sender<Result<(), Error>>),
}

/// The handle side shared by the batchers: a channel into the task, and the
/// task itself. Dropping it closes the channel, which makes the task flush
/// what is pending and exit.
#[derive(Debug)]
struct Worker<T> {
    tx: Option<mpsc::UnboundedSender<Cmd<T>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    name: &'static str,
}

impl<T: Send + 'static> Worker<T> {
    fn start<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(mpsc::UnboundedReceiver<Cmd<T>>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx: Some(tx),
            task: Some(tokio::spawn(run(rx))),
            name,
        }
    }

    fn send(&self, item: T) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Cmd::Item(item));
        }
    }

    async fn flush(&self) -> Result<(), Error> {
        let (done, wait) = oneshot::channel();
        if let Some(tx) = &self.tx {
            let _ = tx.send(Cmd::Flush(done));
        }
        wait.await
            .map_err(|_| Error::Config(format!("{} stopped", self.name)))?
    }

    async fn close(mut self) -> Result<(), Error> {
        let result = self.flush().await;
        self.tx.take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        result
    }
}

/// A conversation's read position to send.
#[derive(Debug)]
struct ReadMark {
    conversation: Uuid,
    thread: Option<Uuid>,
    message: Uuid,
    seq: u64,
}

/// Turns a stream of "this message is now visible" into at most one
/// MarkReadUpTo per timeline (a conversation's main timeline, or one of its
/// threads) per interval, always for the highest seq seen. Made by
/// [`Client::read_marker`].
///
/// ```no_run
/// # async fn demo(client: receipts_sdk::Client, chat: uuid::Uuid, msgs: Vec<(uuid::Uuid, u64)>) -> Result<(), receipts_sdk::Error> {
/// let marker = client.read_marker();
/// for (message, seq) in msgs {
///     marker.mark(chat, message, seq); // cheap: no network call here
/// }
/// marker.close().await?; // one MarkReadUpTo for the highest seq
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReadMarker {
    worker: Worker<ReadMark>,
}

impl ReadMarker {
    /// The interval the SDK recommends: at most one MarkReadUpTo per
    /// conversation per second.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    pub(crate) fn start(client: Client, interval: Duration) -> Self {
        Self {
            worker: Worker::start("read marker", move |rx| read_task(client, interval, rx)),
        }
    }

    /// Notes that `message` (at `seq`) of `conversation`'s main timeline is
    /// visible. Lower seqs than one already noted in the main timeline are
    /// ignored. A message of a thread goes to [`ReadMarker::mark_in_thread`].
    pub fn mark(&self, conversation: Uuid, message: Uuid, seq: u64) {
        self.worker.send(ReadMark {
            conversation,
            thread: None,
            message,
            seq,
        });
    }

    /// Notes that `message` (at `seq`) of the thread under `root` in
    /// `conversation` is visible. Each thread keeps its own highest seq,
    /// apart from the main timeline's: a read in a thread reads nothing
    /// outside it, so it never stands in for a main-timeline read (nor the
    /// other way round).
    pub fn mark_in_thread(&self, conversation: Uuid, root: Uuid, message: Uuid, seq: u64) {
        self.worker.send(ReadMark {
            conversation,
            thread: Some(root),
            message,
            seq,
        });
    }

    /// Sends everything pending now and waits for the answers.
    pub async fn flush(&self) -> Result<(), Error> {
        self.worker.flush().await
    }

    /// Flushes and stops the marker.
    pub async fn close(self) -> Result<(), Error> {
        self.worker.close().await
    }
}

async fn read_task(
    client: Client,
    interval: Duration,
    mut rx: mpsc::UnboundedReceiver<Cmd<ReadMark>>,
) {
    let mut pending: HashMap<(Uuid, Option<Uuid>), (u64, Uuid)> = HashMap::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Item(ReadMark { conversation, thread, message, seq })) => {
                    let e = pending.entry((conversation, thread)).or_insert((seq, message));
                    if seq > e.0 {
                        *e = (seq, message);
                    }
                }
                Some(Cmd::Flush(done)) => {
                    let _ = done.send(flush_reads(&client, &mut pending).await);
                }
                None => {
                    if let Err(e) = flush_reads(&client, &mut pending).await {
                        tracing::warn!(%e, "read marker: final flush failed");
                    }
                    return;
                }
            },
            _ = ticker.tick() => {
                if let Err(e) = flush_reads(&client, &mut pending).await {
                    tracing::warn!(%e, "read marker: flush failed; will retry");
                }
            }
        }
    }
}

async fn flush_reads(
    client: &Client,
    pending: &mut HashMap<(Uuid, Option<Uuid>), (u64, Uuid)>,
) -> Result<(), Error> {
    let mut first_error = None;
    for ((conversation, thread), (seq, message)) in std::mem::take(pending) {
        if let Err(e) = client.mark_read_up_to(conversation, message).await {
            if e.is_transient() {
                // Keep it for the next tick unless something newer came in.
                pending
                    .entry((conversation, thread))
                    .or_insert((seq, message));
            }
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Groups MarkDelivered calls: a batch goes out when it holds `max_batch`
/// messages or `max_delay` after its first message, whichever comes first.
/// Made by [`Client::delivered_batcher`].
///
/// ```no_run
/// # async fn demo(client: receipts_sdk::Client, arrived: Vec<(uuid::Uuid, uuid::Uuid)>) -> Result<(), receipts_sdk::Error> {
/// use std::time::Duration;
/// let batcher = client.delivered_batcher_with(100, Duration::from_millis(200));
/// for (conversation, message) in arrived {
///     batcher.deliver_in(conversation, message);
/// }
/// batcher.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DeliveredBatcher {
    worker: Worker<Named>,
}

/// A message to acknowledge, with its conversation when known.
type Named = (Option<Uuid>, Uuid);

impl DeliveredBatcher {
    /// Messages per batch unless told otherwise.
    pub const DEFAULT_MAX_BATCH: usize = 100;
    /// How long a batch waits for more after its first message unless told
    /// otherwise.
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(200);

    pub(crate) fn start(client: Client, max_batch: usize, max_delay: Duration) -> Self {
        let max_batch = max_batch.clamp(1, 1000);
        Self {
            worker: Worker::start("delivered batcher", move |rx| {
                delivered_task(client, max_batch, max_delay, rx)
            }),
        }
    }

    /// Notes that `message` arrived on this device. Prefer
    /// [`DeliveredBatcher::deliver_in`] when you know its conversation.
    pub fn deliver(&self, message: Uuid) {
        self.worker.send((None, message));
    }

    /// Notes that `message` of `conversation` arrived on this device; it is
    /// sent in the conversation form of MarkDelivered, which spares the
    /// server a lookup of the message's conversation.
    pub fn deliver_in(&self, conversation: Uuid, message: Uuid) {
        self.worker.send((Some(conversation), message));
    }

    /// Sends everything pending now and waits for the answers.
    pub async fn flush(&self) -> Result<(), Error> {
        self.worker.flush().await
    }

    /// Flushes and stops the batcher.
    pub async fn close(self) -> Result<(), Error> {
        self.worker.close().await
    }
}

async fn delivered_task(
    client: Client,
    max_batch: usize,
    max_delay: Duration,
    mut rx: mpsc::UnboundedReceiver<Cmd<Named>>,
) {
    let mut pending: Vec<Named> = Vec::new();
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Item(m)) => {
                    if seen.insert(m.1) {
                        pending.push(m);
                    }
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + max_delay);
                    if pending.len() >= max_batch {
                        let _ = send_delivered(&client, &mut pending, &mut seen, max_batch).await;
                        deadline = (!pending.is_empty()).then(|| tokio::time::Instant::now() + max_delay);
                    }
                }
                Some(Cmd::Flush(done)) => {
                    let r = send_delivered(&client, &mut pending, &mut seen, max_batch).await;
                    deadline = (!pending.is_empty()).then(|| tokio::time::Instant::now() + max_delay);
                    let _ = done.send(r);
                }
                None => {
                    if let Err(e) = send_delivered(&client, &mut pending, &mut seen, max_batch).await {
                        tracing::warn!(%e, "delivered batcher: final flush failed");
                    }
                    return;
                }
            },
            _ = timer => {
                if let Err(e) = send_delivered(&client, &mut pending, &mut seen, max_batch).await {
                    tracing::warn!(%e, "delivered batcher: flush failed; will retry");
                }
                deadline = (!pending.is_empty()).then(|| tokio::time::Instant::now() + max_delay);
            }
        }
    }
}

async fn send_delivered(
    client: &Client,
    pending: &mut Vec<Named>,
    seen: &mut HashSet<Uuid>,
    max_batch: usize,
) -> Result<(), Error> {
    while !pending.is_empty() {
        let n = pending.len().min(max_batch);
        let batch: Vec<Named> = pending[..n].to_vec();
        match client.mark_delivered_named(&batch).await {
            Ok(_) => {
                pending.drain(..n);
                for (_, m) in &batch {
                    seen.remove(m);
                }
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                // A permanent error (an unknown id, say) would fail forever:
                // drop the batch and report it.
                pending.drain(..n);
                for (_, m) in &batch {
                    seen.remove(m);
                }
                return Err(e);
            }
        }
    }
    Ok(())
}
