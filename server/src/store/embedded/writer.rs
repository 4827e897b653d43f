//! The writer thread: queued jobs applied in one transaction, one commit
//! (group commit), and what a job writes.

use super::*;

/// Most jobs committed together.
pub(super) const MAX_BATCH: usize = 512;
/// Most trimmed log entries per commit (keeps commits short).
pub(super) const MAX_TRIM_PER_COMMIT: usize = 4096;
/// State owned by the writer thread.
pub(super) struct WriterState {
    /// The last time stamped on a write: times follow commit order.
    pub(super) last_stamp: Millis,
    pub(super) next_offset: u64,
    pub(super) trimmed_to: u64,
    pub(super) sender_counter: u64,
    pub(super) windows: Windows,
    pub(super) options: EmbeddedOptions,
}

/// A write transaction in progress, shared by the jobs of one batch.
pub(super) struct WriteCtx<'a, 'txn> {
    pub(super) t: &'a mut Tables<Table<'txn, Bytes, Bytes>>,
    pub(super) st: &'a mut WriterState,
    pub(super) events: Vec<Arc<Event>>,
}

/// What a job hands back: called after the commit with its outcome.
pub(super) type Completion = Box<dyn FnOnce(StoreResult<()>) + Send>;
/// A queued write: runs inside the batch transaction and returns its
/// completion, plus whether it failed in storage (which aborts the batch,
/// since the job may have written part of its changes).
pub(super) type Job = Box<dyn FnOnce(&mut WriteCtx<'_, '_>) -> (Completion, bool) + Send>;

impl WriteCtx<'_, '_> {
    /// The time to record for a write accepted at `at`: never earlier than a
    /// write committed before it, so "first time it became true" follows the
    /// order in which writes actually took effect, whatever order concurrent
    /// requests reached the writer in.
    pub(super) fn stamp(&mut self, at: Millis) -> Millis {
        self.st.last_stamp = self.st.last_stamp.max(at);
        self.st.last_stamp
    }

    pub(super) fn emit(&mut self, user: UserId, body: EventBody) -> StoreResult<()> {
        let offset = self.st.next_offset;
        self.st.next_offset += 1;
        put(&mut self.t.events, &k_seq(&user, offset), &encode(&body))?;
        put(&mut self.t.event_index, &offset.to_be_bytes(), &k1(&user))?;
        self.events.push(Arc::new(Event { offset, user, body }));
        Ok(())
    }

    /// Announces that the states of `msgs` in `c` changed: pushed at once in
    /// direct conversations, folded into the group window otherwise.
    pub(super) fn touch(&mut self, c: &ConversationId, msgs: Vec<Message>) -> StoreResult<()> {
        let seqs = msgs.iter().map(|m| m.seq);
        let (Some(lo), Some(hi)) = (seqs.clone().min(), seqs.max()) else {
            return Ok(());
        };
        let group = self
            .t
            .conversation(c)?
            .is_some_and(|meta| meta.member_count > 2);
        if group {
            let w = self.st.windows.touch(*c, lo, hi);
            let v = [w.lo.to_be_bytes(), w.hi.to_be_bytes()].concat();
            put(&mut self.t.pending, &k1(c), &v)?;
            return Ok(());
        }
        let ctx = self.t.context(c)?;
        // The messages in the gaps say whether a range may span them.
        let registered = if fanout::worth_reading_span(lo, hi, msgs.len()) {
            Some(self.t.messages_between(c, lo, hi)?)
        } else {
            None
        };
        let states = self.t.states(&ctx, &msgs, |m| m.sender, true)?;
        self.emit_states(c, states, false, registered.as_deref())
    }

    /// Logs the states of messages of `c` (computed for their senders) as
    /// one event per sender (split into chunks); `registered`, when given,
    /// is every message registered between the lowest and the highest.
    pub(super) fn emit_states(
        &mut self,
        c: &ConversationId,
        states: Vec<domain::MessageState>,
        group: bool,
        registered: Option<&[Message]>,
    ) -> StoreResult<()> {
        let registered: Option<Vec<(Seq, UserId)>> =
            registered.map(|r| r.iter().map(|m| (m.seq, m.sender)).collect());
        for (sender, body) in fanout::receipt_events(*c, group, states, registered.as_deref()) {
            self.emit(sender, body)?;
        }
        Ok(())
    }

    /// A group's window closes: one summary per sender, counted without
    /// reading every member (`counts.rs`).
    pub(super) fn flush_window(&mut self, c: &ConversationId, w: Window) -> StoreResult<()> {
        self.t.pending.remove(k1(c).as_slice()).map_err(storage)?;
        let msgs = self.t.messages_between(c, w.lo, w.hi)?;
        let mut fresh = Vec::new();
        let states = self.t.counted_states(c, &msgs, |m| m.sender, &mut fresh)?;
        self.t.keep_completions(c, &fresh)?;
        self.emit_states(c, states, true, Some(&msgs))
    }

    pub(super) fn flush_due_windows(&mut self, all: bool) -> StoreResult<()> {
        for (c, w) in self.st.windows.take_due(all) {
            self.flush_window(&c, w)?;
        }
        Ok(())
    }

    pub(super) fn trim(&mut self) -> StoreResult<()> {
        let head = self.st.next_offset.saturating_sub(1);
        let keep_from = head.saturating_sub(self.st.options.log_retention);
        if keep_from <= self.st.trimmed_to {
            return Ok(());
        }
        let upto = keep_from.min(self.st.trimmed_to + MAX_TRIM_PER_COMMIT as u64);
        let lo = (self.st.trimmed_to + 1).to_be_bytes();
        let hi = upto.to_be_bytes();
        let doomed: Vec<(u64, Uuid)> = self
            .t
            .event_index
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(storage)?
            .map(|e| e.map(|(k, v)| (u64_at(k.value(), 0), uuid_at(v.value(), 0))))
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        for (offset, user) in doomed {
            self.t
                .event_index
                .remove(offset.to_be_bytes().as_slice())
                .map_err(storage)?;
            self.t
                .events
                .remove(k_seq(&user, offset).as_slice())
                .map_err(storage)?;
        }
        self.st.trimmed_to = upto;
        put(&mut self.t.meta, META_TRIMMED_TO, &upto.to_be_bytes())
    }

    pub(super) fn save_counters(&mut self) -> StoreResult<()> {
        put(
            &mut self.t.meta,
            META_NEXT_OFFSET,
            &self.st.next_offset.to_be_bytes(),
        )?;
        put(
            &mut self.t.meta,
            META_SENDER_COUNTER,
            &self.st.sender_counter.to_be_bytes(),
        )
    }

    /// Stores the deliveries of the seqs in `new` by `u` in `c` at `at` as
    /// runs (the grouping is [`domain::runs_of`]'s): one row per run, however
    /// many messages it covers.
    pub(super) fn record_runs(
        &mut self,
        c: &ConversationId,
        u: &UserId,
        membership: &Membership,
        mut new: Vec<Seq>,
        at: Millis,
    ) -> StoreResult<()> {
        new.sort_unstable();
        let (Some(&lo), Some(&hi)) = (new.first(), new.last()) else {
            return Ok(());
        };
        // Reading the registered messages in between lets runs span the
        // member's own messages; for a sparse set it would cost more than
        // the rows it saves.
        let registered: Option<Vec<(Seq, UserId)>> =
            if hi - lo < DENSE_SPAN_PER_MESSAGE.saturating_mul(new.len() as u64) {
                let msgs = self.t.messages_between(c, lo, hi)?;
                Some(msgs.into_iter().map(|m| (m.seq, m.sender)).collect())
            } else {
                None
            };
        let mut runs = domain::runs_of(*u, membership, &new, registered.as_deref(), at);
        if let Some(first) = runs.first_mut()
            && let Some(prev) = self.t.run_covering(c, u, lo.saturating_sub(1))?
            && prev.continued_by(first)
        {
            first.first = prev.first;
        }
        for run in &runs {
            // Runs inside the new one cover none of the member's recipient
            // seqs (any such seq ends a run), only pieces left by a split:
            // they go, so that runs stay disjoint.
            let (from, to) = (k3(c, u, run.first.saturating_add(1)), k3(c, u, run.last));
            self.t
                .runs
                .retain_in(from.as_slice()..=to.as_slice(), |_, _| false)
                .map_err(storage)?;
            put_run(&mut self.t.runs, c, u, run)?;
        }
        Ok(())
    }

    /// A message registered at `seq` below messages already registered in
    /// `c`: every member's run that covers `seq` was written before the
    /// message existed, so it is split around it.
    pub(super) fn split_runs_at(&mut self, c: &ConversationId, seq: Seq) -> StoreResult<()> {
        for (u, _) in self.t.members(c)? {
            let Some(run) = self.t.run_covering(c, &u, seq)? else {
                continue;
            };
            self.t
                .runs
                .remove(k3(c, &u, run.first).as_slice())
                .map_err(storage)?;
            let (left, right) = run.without(seq);
            for piece in left.iter().chain(right.iter()) {
                put_run(&mut self.t.runs, c, &u, piece)?;
            }
        }
        Ok(())
    }

    /// Applies a read by `u` up to `to` in one timeline of `c` (`thread`:
    /// `None` for the main one; the rules are [`ReadWatermark::advance`] and
    /// [`domain::covers`]).
    pub(super) fn apply_read(
        &mut self,
        u: &UserId,
        c: &ConversationId,
        membership: &Membership,
        thread: Option<ThreadRoot>,
        to: Seq,
        at: Millis,
    ) -> StoreResult<ReadResult> {
        let timeline = thread.map_or(domain::MAIN, |t| t.seq);
        let hist = scope(c, timeline);
        let wm = self.t.watermark(&hist, u)?;
        let sharing = self.t.sharing(u)?;
        let result = |p: domain::ReadPosition, advanced| ReadResult {
            read_up_to: p.read_up_to,
            advanced,
            unread: p.unread,
            thread: p.thread,
            conversation_unread: p.conversation_unread,
        };
        let Some(adv) = wm.advance(to, sharing) else {
            let p = self.t.read_position(c, u, thread, membership)?;
            return Ok(result(p, false));
        };
        let WatermarkAdvance { before, after } = adv;
        let v = [after.seq.to_be_bytes(), after.public_seq.to_be_bytes()].concat();
        put(&mut self.t.watermarks, &k2(&hist, u), &v)?;
        if thread.is_none() {
            self.t.index_read(c, u, after, sharing)?;
        }
        put(
            &mut self.t.read_hist,
            &k3(&hist, u, after.seq),
            &at.to_be_bytes(),
        )?;
        if adv.is_public() {
            put(
                &mut self.t.public_hist,
                &k3(&hist, u, after.seq),
                &at.to_be_bytes(),
            )?;
        }
        let p = self.t.read_position(c, u, thread, membership)?;
        self.emit(*u, EventBody::Position(p))?;
        // What others may notice: reads that became visible, and messages that
        // became delivered through this read. Nothing else, so a private read
        // of already-delivered messages sends no event at all.
        let mut changed = Vec::new();
        let first = adv.changes_after();
        // Deliveries of the newly read messages, in one range scan.
        let delivered = self.t.runs_between(c, u, before.seq + 1, after.seq)?;
        let threads = self.t.threads_between(c, first + 1, after.seq)?;
        for m in self.t.messages_between(c, first + 1, after.seq)? {
            let of = threads.get(&m.seq).map_or(domain::MAIN, |t| t.seq);
            if !domain::covers(timeline, after.seq, of, m.seq)
                || !membership.receives(*u, m.sender, m.seq)
            {
                continue;
            }
            if adv.changes(m.seq, delivered.delivered_at(m.seq).is_some()) {
                changed.push(m);
            }
        }
        self.touch(c, changed)?;
        Ok(result(p, true))
    }
}

pub(super) fn writer_loop(
    db: Arc<Database>,
    hub: Arc<Hub>,
    mut st: WriterState,
    rx: std_mpsc::Receiver<Job>,
) {
    let mut closed = false;
    loop {
        let mut jobs: Vec<Job> = Vec::new();
        if !closed {
            let first = match st.windows.next_deadline() {
                None => rx
                    .recv()
                    .map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d.into_std().saturating_duration_since(Instant::now())),
            };
            match first {
                Ok(job) => jobs.push(job),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => closed = true,
            }
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        let saved = (
            st.next_offset,
            st.trimmed_to,
            st.sender_counter,
            st.windows.clone(),
        );
        let (completions, events, commit) = run_batch(&db, &mut st, jobs, closed);
        if commit.is_ok() {
            hub.publish(&events);
        } else {
            // Nothing of the batch is stored: forget its in-memory effects.
            (st.next_offset, st.trimmed_to, st.sender_counter, st.windows) = saved;
        }
        for done in completions {
            done(match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(ServiceError::unavailable_because(
                    "the embedded store could not commit (see the server log: a full disk or an \
                     I/O error); nothing of the write was applied, retry",
                    e.clone(),
                )),
            });
        }
        if closed {
            break;
        }
    }
}

pub(super) type BatchOutcome = (Vec<Completion>, Vec<Arc<Event>>, Result<(), String>);

pub(super) fn run_batch(
    db: &Database,
    st: &mut WriterState,
    jobs: Vec<Job>,
    flush_all: bool,
) -> BatchOutcome {
    let mut completions = Vec::with_capacity(jobs.len());
    let result = (|| -> StoreResult<Vec<Arc<Event>>> {
        let txn = db.begin_write().map_err(storage)?;
        let events = {
            let mut t = open_tables!(txn);
            let mut ctx = WriteCtx {
                t: &mut t,
                st,
                events: Vec::new(),
            };
            let mut fatal = false;
            for job in jobs {
                let (done, failed) = job(&mut ctx);
                completions.push(done);
                fatal |= failed;
            }
            if fatal {
                return Err(ServiceError::unavailable(
                    "a write in the batch failed in storage",
                ));
            }
            ctx.flush_due_windows(flush_all)?;
            ctx.trim()?;
            ctx.save_counters()?;
            ctx.events
        };
        txn.commit().map_err(storage)?;
        Ok(events)
    })();
    match result {
        Ok(events) => (completions, events, Ok(())),
        Err(e) => (completions, Vec::new(), Err(e.to_string())),
    }
}
