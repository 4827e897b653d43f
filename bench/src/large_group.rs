//! `--large-groups 2000,10000`: what one call costs in a group of each size,
//! call by call with nothing else running, to show which costs stay flat as
//! the group grows and which grow with it (DESIGN.md §5: writes O(1),
//! counts O(log n), a page of "read by" O(page)).
//!
//! Per size: a group of that many members and `--large-group-rounds`
//! messages from its first member; then, one kind at a time, each round on
//! its own message: MarkDelivered and MarkReadUpTo by a recipient,
//! GetReceipts (counts) and one ListRecipients page of 50 by the sender, and
//! the sender's whole paged list (500 a page). With `--redis-url`, the
//! Redis commands and Redis CPU (`INFO commandstats`) of each call as well,
//! and of the group window flush that follows the reads (the sender's
//! summary). Latencies are wall times on this machine: compare sizes within
//! one run, never across machines.

use crate::redis_stats::{Probe, parse_commandstats};
use crate::workload::Auth;
use futures::StreamExt;
use receipts_sdk::{Client, NewMessage, RecipientFilter};
use serde::Serialize;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One kind of call at one group size.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub members: usize,
    pub call: &'static str,
    pub rounds: usize,
    pub p50_ms: f64,
    pub max_ms: f64,
    /// Redis commands per call (inside scripts included), with --redis-url.
    pub redis_commands: Option<f64>,
    /// Redis CPU per call (µs, `INFO commandstats`), with --redis-url.
    pub redis_usec: Option<f64>,
}

/// Commands and µs Redis has counted so far (the probe's own INFO calls
/// left out).
async fn redis_totals(probe: &mut Option<Probe>) -> anyhow::Result<Option<(u64, u64)>> {
    let Some(p) = probe else {
        return Ok(None);
    };
    let info: String = p.query(redis::cmd("INFO").arg("commandstats")).await?;
    let stats = parse_commandstats(&info);
    let (calls, usec) = stats
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .fold((0, 0), |(c, u), (_, s)| (c + s.calls, u + s.usec));
    Ok(Some((calls, usec)))
}

struct Measure {
    times: Vec<Duration>,
    before: Option<(u64, u64)>,
}

impl Measure {
    async fn start(probe: &mut Option<Probe>) -> anyhow::Result<Self> {
        Ok(Self {
            times: Vec::new(),
            before: redis_totals(probe).await?,
        })
    }

    async fn finish(
        mut self,
        probe: &mut Option<Probe>,
        members: usize,
        call: &'static str,
    ) -> anyhow::Result<Row> {
        let after = redis_totals(probe).await?;
        // Per call; the window's flush (no calls) counts as one.
        let n = self.times.len().max(1);
        self.times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let per = |f: fn((u64, u64)) -> u64| match (self.before, after) {
            (Some(b), Some(a)) => Some((f(a) - f(b)) as f64 / n as f64),
            _ => None,
        };
        Ok(Row {
            members,
            call,
            rounds: self.times.len(),
            p50_ms: self.times.get(n / 2).copied().map(ms).unwrap_or_default(),
            max_ms: self.times.last().copied().map(ms).unwrap_or_default(),
            redis_commands: per(|t| t.0),
            redis_usec: per(|t| t.1),
        })
    }
}

macro_rules! timed {
    ($m:expr, $e:expr) => {{
        let t = Instant::now();
        let out = $e;
        $m.times.push(t.elapsed());
        out
    }};
}

/// Runs the scenario for every size; prints a table and returns the rows.
pub async fn run(
    url: &str,
    auth: &Auth,
    sizes: &[usize],
    rounds: usize,
    window: Duration,
    mut probe: Option<Probe>,
) -> anyhow::Result<Vec<Row>> {
    let backend = auth
        .service_with_timeout(url, Duration::from_secs(300))?
        .backend();
    let mut rows = Vec::new();
    for &size in sizes {
        anyhow::ensure!(
            size > rounds,
            "a group of {size} has too few members for {rounds} rounds"
        );
        eprintln!("setting up a group of {size} …");
        let members: Vec<Uuid> = (0..size).map(|_| Uuid::now_v7()).collect();
        let conv = Uuid::now_v7();
        let t = Instant::now();
        backend.create_conversation(conv, &members).await?;
        eprintln!("  created in {:.2} s", t.elapsed().as_secs_f64());
        let sender = members[0];
        let msgs: Vec<NewMessage> = (1..=rounds as u64)
            .map(|seq| NewMessage {
                message_id: Uuid::now_v7(),
                conversation_id: conv,
                seq,
                sender_id: sender,
                sent_at: None,
                thread_root_message_id: None,
            })
            .collect();
        backend.register_messages(&msgs).await?;
        let ids: Vec<Uuid> = msgs.iter().map(|m| m.message_id).collect();
        let readers: Vec<Client> = members[1..=rounds]
            .iter()
            .map(|u| auth.user(url, *u))
            .collect::<anyhow::Result<_>>()?;
        let me = auth.user(url, sender)?;
        // Connect and load what a first call loads (not measured).
        me.get_receipts(conv, &ids[..1]).await?;

        let mut m = Measure::start(&mut probe).await?;
        for (r, id) in readers.iter().zip(&ids) {
            timed!(m, r.mark_delivered_in(conv, &[*id]).await?);
        }
        rows.push(m.finish(&mut probe, size, "MarkDelivered").await?);

        // Each reader reads up to its own message: one watermark move each.
        let mut m = Measure::start(&mut probe).await?;
        for (r, id) in readers.iter().zip(&ids) {
            timed!(m, r.mark_read_up_to(conv, *id).await?);
        }
        rows.push(m.finish(&mut probe, size, "MarkReadUpTo").await?);

        // The window's flush: nothing else runs, so what Redis does until
        // it has closed is the sender's summary of those reads.
        let m = Measure::start(&mut probe).await?;
        tokio::time::sleep(window * 3).await;
        rows.push(
            m.finish(&mut probe, size, "window flush (one summary)")
                .await?,
        );

        let mut m = Measure::start(&mut probe).await?;
        for id in &ids {
            timed!(m, me.get_receipts(conv, &[*id]).await?);
        }
        rows.push(m.finish(&mut probe, size, "GetReceipts (counts)").await?);

        // All the round's messages at once: what a window's summary counts
        // (the embedded store's summary runs inside its writer, where no
        // call can time it; this is the same counting, `counted_states`).
        let mut m = Measure::start(&mut probe).await?;
        for _ in 0..rounds.min(10) {
            timed!(m, me.get_receipts(conv, &ids).await?);
        }
        rows.push(
            m.finish(&mut probe, size, "GetReceipts (counts), all at once")
                .await?,
        );

        let mut m = Measure::start(&mut probe).await?;
        for id in &ids {
            timed!(
                m,
                me.list_recipients(conv, *id, RecipientFilter::All, 50, None)
                    .await?
            );
        }
        rows.push(
            m.finish(&mut probe, size, "ListRecipients, one page of 50")
                .await?,
        );

        let mut m = Measure::start(&mut probe).await?;
        for id in ids.iter().take(3) {
            let all = timed!(m, me.all_recipients(conv, *id, RecipientFilter::All).await?);
            anyhow::ensure!(
                all.len() == size - 1,
                "listed {} of {}",
                all.len(),
                size - 1
            );
        }
        rows.push(
            m.finish(&mut probe, size, "the whole list, 500 a page")
                .await?,
        );

        // A thread under the first message: one reply per reader, each
        // reader reading the thread up to its reply; then the counts of a
        // reply (on the production tier, from every member's position in
        // the thread: docs/storage.md, "Threads").
        let replies: Vec<NewMessage> = (0..rounds as u64)
            .map(|i| {
                NewMessage {
                    message_id: Uuid::now_v7(),
                    conversation_id: conv,
                    seq: rounds as u64 + 1 + i,
                    sender_id: sender,
                    sent_at: None,
                    thread_root_message_id: None,
                }
                .in_thread(ids[0])
            })
            .collect();
        backend.register_messages(&replies).await?;
        let mut m = Measure::start(&mut probe).await?;
        for (r, reply) in readers.iter().zip(&replies) {
            timed!(m, r.mark_read_up_to(conv, reply.message_id).await?);
        }
        rows.push(
            m.finish(&mut probe, size, "MarkReadUpTo in a thread")
                .await?,
        );
        tokio::time::sleep(window * 3).await;
        let mut m = Measure::start(&mut probe).await?;
        for reply in &replies {
            timed!(m, me.get_receipts(conv, &[reply.message_id]).await?);
        }
        rows.push(
            m.finish(&mut probe, size, "GetReceipts (counts), thread")
                .await?,
        );

        // Every recipient has the round's messages, as a device that comes
        // online marks what it fetched (set up 32 calls at a time, not
        // measured): a count of the last one needs the time the last
        // recipient got it, which the stores keep once the window's
        // summary computed it. (Had each member marked only the last one,
        // every member would have a hole before it and be counted one by
        // one: docs/model.md, "Counts in O(log n)".)
        let last = ids[rounds - 1];
        let everyone = futures::stream::iter(members[1..].iter().map(|u| {
            let (client, ids) = (auth.user(url, *u), &ids);
            async move {
                client?.mark_delivered_in(conv, ids).await?;
                anyhow::Ok(())
            }
        }))
        .buffer_unordered(32)
        .collect::<Vec<anyhow::Result<()>>>()
        .await;
        everyone.into_iter().collect::<anyhow::Result<()>>()?;
        tokio::time::sleep(window * 3).await;
        let mut m = Measure::start(&mut probe).await?;
        for _ in 0..rounds {
            let got = timed!(m, me.get_receipts(conv, &[last]).await?);
            anyhow::ensure!(
                got.first().is_some_and(|s| s.delivered_at.is_some()),
                "the last message is not delivered to all"
            );
        }
        rows.push(
            m.finish(&mut probe, size, "GetReceipts, delivered to all")
                .await?,
        );
    }
    println!(
        "{:>8}  {:<32} {:>6} {:>10} {:>10} {:>14} {:>14}",
        "members", "call", "rounds", "p50 ms", "max ms", "Redis cmds", "Redis µs"
    );
    for r in &rows {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        // The window's flush is not a call: no latency of its own.
        let ms = |v: f64| {
            if r.rounds == 0 {
                "-".to_string()
            } else {
                format!("{v:.2}")
            }
        };
        println!(
            "{:>8}  {:<32} {:>6} {:>10} {:>10} {:>14} {:>14}",
            r.members,
            r.call,
            r.rounds,
            ms(r.p50_ms),
            ms(r.max_ms),
            opt(r.redis_commands),
            opt(r.redis_usec)
        );
    }
    Ok(rows)
}
