//! `receipts-engines`: the embedded store's write pattern replayed on two
//! storage engines, redb (a copy-on-write B-tree, what the store uses) and
//! fjall (a log-structured merge tree with a journal), back to back in one
//! run, with an fsync at every commit on both.
//!
//! It is the measurement behind the choice of engine (docs/storage-embedded.md
//! and BENCHMARKS.md): the same keys, values, point reads, range scans and
//! group commits the store makes for a round of direct-chat traffic with
//! batches of messages, without gRPC or the rest of the server around them,
//! so the difference is the engine's.
//!
//! A round, in one of `--conversations` direct chats (A sends, B receives):
//! 1. the backend registers `--batch` messages: per message, two point reads
//!    (is the id known, is the seq taken) and three rows (by id, by
//!    conversation and seq, by sender);
//! 2. B marks them delivered: a point read per message (its id), one range
//!    scan of B's runs, one run row, and the sender's event (`--event-bytes`,
//!    the states of the batch) with its index row;
//! 3. B reads up to the last one: the watermark, two history rows, and two
//!    events (B's watermark, A's states) with their index rows.
//!
//! Jobs are committed `--jobs-per-commit` at a time (the writer's group
//! commit), each commit durable before the next begins.

use anyhow::Result;
use clap::Parser;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "The embedded store's write pattern on redb and on fjall, back to back")]
struct Args {
    /// Rounds per engine and run.
    #[arg(long, default_value_t = 1_000)]
    rounds: u64,
    /// Messages per round.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Direct chats the rounds go round.
    #[arg(long, default_value_t = 200)]
    conversations: u64,
    /// Jobs (registrations, deliveries, reads) per commit.
    #[arg(long, default_value_t = 12)]
    jobs_per_commit: usize,
    /// Bytes of a receipts event carrying a batch's states.
    #[arg(long, default_value_t = 9_000)]
    event_bytes: usize,
    /// Runs per engine, alternating (redb, fjall, redb, fjall, ...).
    #[arg(long, default_value_t = 2)]
    runs: usize,
}

/// What the store asks of an engine.
trait Engine {
    fn get(&mut self, table: usize, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The last row with a key in `lo..=hi` (a run covering a seq).
    fn last_in(&mut self, table: usize, lo: &[u8], hi: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]) -> Result<()>;
    /// Makes everything put so far durable (fsync) and visible.
    fn commit(&mut self) -> Result<()>;
}

const TABLES: [&str; 9] = [
    "messages",
    "conversation_messages",
    "sender_messages",
    "delivery_runs",
    "watermarks",
    "read_history",
    "public_read_history",
    "events",
    "event_index",
];
const MESSAGES: usize = 0;
const CONV_MSGS: usize = 1;
const SENDER_MSGS: usize = 2;
const RUNS: usize = 3;
const WATERMARKS: usize = 4;
const READ_HIST: usize = 5;
const PUBLIC_HIST: usize = 6;
const EVENTS: usize = 7;
const EVENT_INDEX: usize = 8;

mod redb_engine {
    use super::*;
    use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

    type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

    pub struct Redb {
        db: Database,
        txn: Option<WriteTransaction>,
    }

    fn def(t: usize) -> Def {
        TableDefinition::new(TABLES[t])
    }

    impl Redb {
        pub fn open(path: &std::path::Path) -> Result<Self> {
            let db = redb::Builder::new()
                .set_cache_size(256 << 20)
                .create(path.join("bench.redb"))?;
            Ok(Self { db, txn: None })
        }

        fn txn(&mut self) -> Result<&mut WriteTransaction> {
            if self.txn.is_none() {
                let mut txn = self.db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                self.txn = Some(txn);
            }
            Ok(self.txn.as_mut().expect("just set"))
        }
    }

    impl Engine for Redb {
        fn get(&mut self, table: usize, key: &[u8]) -> Result<Option<Vec<u8>>> {
            let t = self.txn()?.open_table(def(table))?;
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        }
        fn last_in(&mut self, table: usize, lo: &[u8], hi: &[u8]) -> Result<Option<Vec<u8>>> {
            let t = self.txn()?.open_table(def(table))?;
            let mut range = t.range(lo..=hi)?;
            Ok(match range.next_back() {
                Some(e) => Some(e?.1.value().to_vec()),
                None => None,
            })
        }
        fn put(&mut self, table: usize, key: &[u8], value: &[u8]) -> Result<()> {
            let mut t = self.txn()?.open_table(def(table))?;
            t.insert(key, value)?;
            Ok(())
        }
        fn commit(&mut self) -> Result<()> {
            if let Some(txn) = self.txn.take() {
                txn.commit()?;
            }
            Ok(())
        }
    }
}

mod fjall_engine {
    use super::*;
    use fjall::{
        KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase,
        SingleWriterTxKeyspace, SingleWriterWriteTx as WriteTransaction,
    };

    pub struct Fjall {
        /// Leaked for the run: a write transaction borrows its database.
        db: &'static SingleWriterTxDatabase,
        tables: Vec<SingleWriterTxKeyspace>,
        txn: Option<WriteTransaction<'static>>,
    }

    impl Fjall {
        pub fn open(path: &std::path::Path) -> Result<Self> {
            let db = SingleWriterTxDatabase::builder(path.join("bench.fjall"))
                .cache_size(256 << 20)
                .open()?;
            let db: &'static SingleWriterTxDatabase = Box::leak(Box::new(db));
            let tables = TABLES
                .iter()
                .map(|name| db.keyspace(name, KeyspaceCreateOptions::default))
                .collect::<fjall::Result<Vec<_>>>()?;
            Ok(Self {
                db,
                tables,
                txn: None,
            })
        }

        fn txn(&mut self) -> &mut WriteTransaction<'static> {
            let db = self.db;
            self.txn
                .get_or_insert_with(|| db.write_tx().durability(Some(PersistMode::SyncData)))
        }
    }

    impl Engine for Fjall {
        fn get(&mut self, table: usize, key: &[u8]) -> Result<Option<Vec<u8>>> {
            let ks = self.tables[table].clone();
            Ok(self.txn().get(&ks, key)?.map(|v| v.to_vec()))
        }
        fn last_in(&mut self, table: usize, lo: &[u8], hi: &[u8]) -> Result<Option<Vec<u8>>> {
            let ks = self.tables[table].clone();
            Ok(match self.txn().range(&ks, lo..=hi).next_back() {
                Some(g) => Some(g.into_inner()?.1.to_vec()),
                None => None,
            })
        }
        fn put(&mut self, table: usize, key: &[u8], value: &[u8]) -> Result<()> {
            let ks = self.tables[table].clone();
            self.txn().insert(&ks, key, value);
            Ok(())
        }
        fn commit(&mut self) -> Result<()> {
            if let Some(txn) = self.txn.take() {
                txn.commit()?;
            }
            Ok(())
        }
    }
}

fn uuid(n: u64, salt: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&salt.to_be_bytes());
    b[8..].copy_from_slice(&n.to_be_bytes());
    b
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Plays `args.rounds` rounds on `e`; returns the wall time.
fn play(e: &mut dyn Engine, args: &Args) -> Result<Duration> {
    let started = Instant::now();
    let mut jobs = 0usize;
    let mut offset = 0u64;
    let mut counter = 0u64;
    let event = vec![7u8; args.event_bytes];
    let mut job_done = |e: &mut dyn Engine| -> Result<()> {
        jobs += 1;
        if jobs.is_multiple_of(args.jobs_per_commit) {
            e.commit()?;
        }
        Ok(())
    };
    for round in 0..args.rounds {
        let conv = round % args.conversations;
        let (c, a, b) = (uuid(conv, 1), uuid(conv, 2), uuid(conv, 3));
        let first = round / args.conversations * args.batch + 1;
        let seqs = first..first + args.batch;
        // 1. Registration.
        for seq in seqs.clone() {
            let id = uuid(round * args.batch + seq, 4);
            e.get(MESSAGES, &id)?;
            e.get(CONV_MSGS, &key(&[&c, &seq.to_be_bytes()]))?;
            e.put(MESSAGES, &id, &[1u8; 60])?;
            e.put(CONV_MSGS, &key(&[&c, &seq.to_be_bytes()]), &[2u8; 40])?;
            counter += 1;
            e.put(SENDER_MSGS, &key(&[&a, &counter.to_be_bytes()]), &id)?;
        }
        job_done(e)?;
        // 2. Delivery.
        for seq in seqs.clone() {
            e.get(MESSAGES, &uuid(round * args.batch + seq, 4))?;
        }
        let runs_lo = key(&[&c, &b, &0u64.to_be_bytes()]);
        let runs_hi = key(&[&c, &b, &first.to_be_bytes()]);
        e.last_in(RUNS, &runs_lo, &runs_hi)?;
        e.put(RUNS, &runs_hi, &[3u8; 16])?;
        offset += 1;
        e.put(EVENTS, &key(&[&a, &offset.to_be_bytes()]), &event)?;
        e.put(EVENT_INDEX, &offset.to_be_bytes(), &a)?;
        job_done(e)?;
        // 3. Read.
        let last = first + args.batch - 1;
        e.get(WATERMARKS, &key(&[&c, &b]))?;
        e.last_in(RUNS, &runs_lo, &key(&[&c, &b, &last.to_be_bytes()]))?;
        e.put(WATERMARKS, &key(&[&c, &b]), &[4u8; 16])?;
        e.put(READ_HIST, &key(&[&c, &b, &last.to_be_bytes()]), &[5u8; 8])?;
        e.put(PUBLIC_HIST, &key(&[&c, &b, &last.to_be_bytes()]), &[5u8; 8])?;
        for (user, bytes) in [(&b, 30), (&a, args.event_bytes)] {
            offset += 1;
            e.put(
                EVENTS,
                &key(&[user, &offset.to_be_bytes()]),
                &event[..bytes],
            )?;
            e.put(EVENT_INDEX, &offset.to_be_bytes(), user)?;
        }
        job_done(e)?;
    }
    e.commit()?;
    Ok(started.elapsed())
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "{} rounds of {} messages over {} direct chats, {} jobs per commit, events of {} B, fsync at every commit",
        args.rounds, args.batch, args.conversations, args.jobs_per_commit, args.event_bytes
    );
    println!("| run | engine | time (s) | messages/s (registered, delivered, read) | commits/s |");
    println!("|---|---|---|---|---|");
    let commits = (args.rounds * 3).div_ceil(args.jobs_per_commit as u64) as f64;
    for run in 1..=args.runs {
        for name in ["redb", "fjall"] {
            let dir = tempfile::tempdir()?;
            let mut engine: Box<dyn Engine> = match name {
                "redb" => Box::new(redb_engine::Redb::open(dir.path())?),
                _ => Box::new(fjall_engine::Fjall::open(dir.path())?),
            };
            let took = play(engine.as_mut(), &args)?.as_secs_f64();
            let messages = (args.rounds * args.batch) as f64;
            println!(
                "| {run} | {name} | {took:.2} | {:.0} | {:.0} |",
                messages / took,
                commits / took
            );
        }
    }
    Ok(())
}
