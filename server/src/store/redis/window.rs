//! Group windows in Redis (any node can flush one) and the events of a
//! change; the timers and the event shapes are `fanout`'s.

use super::*;

pub(super) async fn window_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
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

/// Computes the states of `ids` for their senders and adds one event per
/// sender (split into chunks) to the plan; `registered` as in
/// [`fanout::receipt_events`].
pub(super) fn emit_states(
    view: &View,
    plan: &mut Plan,
    ids: &[MessageId],
    group: bool,
    registered: Option<&[(Seq, UserId)]>,
) {
    let states = ids
        .iter()
        .filter_map(|m| view.messages.get(m))
        .map(|m| view.state(&m.sender, m, !group))
        .collect();
    emit(plan, view.c, group, states, registered);
}

/// Adds the events that tell the senders of `states` their new states.
pub(super) fn emit(
    plan: &mut Plan,
    c: ConversationId,
    group: bool,
    states: Vec<MessageState>,
    registered: Option<&[(Seq, UserId)]>,
) {
    plan.events
        .extend(fanout::receipt_events(c, group, states, registered));
}

/// Counts-only states of `msgs` (see `counts.rs`).
pub(super) fn counted_states(
    msgs: Vec<Message>,
    aggregates: Vec<domain::Aggregate>,
) -> Vec<MessageState> {
    msgs.into_iter()
        .zip(aggregates)
        .map(|(message, aggregate)| MessageState {
            message,
            aggregate,
            recipients: Vec::new(),
        })
        .collect()
}

impl Inner {
    /// Announces that the states of `msgs` changed (the view already holds the
    /// new state): events now for direct conversations, the group window
    /// otherwise.
    pub(super) async fn touch(
        &self,
        view: &mut View,
        plan: &mut Plan,
        msgs: &[Indexed],
    ) -> StoreResult<bool> {
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
            return Ok(true);
        }
        let ids: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
        self.prepare_states(view, &ids).await?;
        // The messages in the gaps say whether a range may span them.
        let lo = msgs.iter().map(|m| m.seq).min().unwrap_or(0);
        let hi = msgs.iter().map(|m| m.seq).max().unwrap_or(0);
        let registered: Option<Vec<(Seq, UserId)>> =
            if fanout::worth_reading_span(lo, hi, msgs.len()) {
                let span = self.between(&view.c, lo, hi).await?;
                Some(span.iter().map(|m| (m.seq, m.sender)).collect())
            } else {
                None
            };
        emit_states(view, plan, &ids, false, registered.as_deref());
        Ok(false)
    }

    /// Opens (or keeps) this node's timer for `c`'s group window.
    pub(super) fn schedule_window(&self, c: ConversationId) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        w.touch(c, 0, 0);
    }

    /// Flushes `c`'s group window: one summary per sender with absolute counts.
    pub(super) async fn flush_window(&self, c: &ConversationId) -> StoreResult<()> {
        let _serial = self.lock([c]).await;
        for _ in 0..MAX_ATTEMPTS {
            // A group's counts come from the indexes; nothing here reads
            // every member.
            let (ver, n, sb): (Option<u64>, Option<u64>, Option<Vec<u8>>) = self
                .query(
                    redis::cmd("HMGET")
                        .arg(self.keys.meta(c))
                        .arg("v")
                        .arg("n")
                        .arg("sb"),
                )
                .await?;
            // A seq index written before `sb` is written again first
            // (`seqs.rs`): the ranges below read `sb`.
            if n.is_some() && sb.is_none() {
                self.view(c).await?;
                continue;
            }
            // A group that has shrunk to a direct chat since the window
            // opened keeps no delivered prefixes (`prefix.rs`): its summary
            // is computed from the full view, as its counts are.
            let full = match (ver, n) {
                (_, Some(n)) if n > DIRECT_MEMBERS => None,
                _ => match self.view(c).await? {
                    Some(view) => Some(view),
                    None => return Ok(()),
                },
            };
            let counted = full.is_none();
            let mut view = full.unwrap_or_else(|| View {
                seq_form: seqs::SeqForm::of(sb.as_deref()),
                ..View::bare(*c, ver.unwrap_or(0))
            });
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
            self.ensure_messages(&mut view, &ids).await?;
            let msgs: Vec<Message> = ids
                .iter()
                .filter_map(|m| view.messages.get(m))
                .copied()
                .collect();
            let mut states = Vec::with_capacity(msgs.len());
            let mut covered = BTreeSet::new();
            if counted {
                for chunk in msgs.chunks(fanout::MAX_MESSAGES_PER_EVENT) {
                    let aggregates = self.counts_in(&view, None, chunk, &mut covered).await?;
                    states.extend(counted_states(chunk.to_vec(), aggregates));
                }
            } else {
                let ids: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
                self.prepare_states(&mut view, &ids).await?;
                states.extend(msgs.iter().map(|m| view.state(&m.sender, m, false)));
            }
            let mut plan = Plan::default();
            plan.cmds.push(rcmd!["DEL", self.keys.window(c)]);
            // Gapped members the counts found covered leave `gz`, at the
            // version read before counting (`prefix.rs`).
            if !covered.is_empty() {
                let mut zrem = rcmd!["ZREM", self.keys.gapped(c)];
                for u in &covered {
                    zrem.extend(rcmd![hex(u)]);
                }
                plan.cmds.push(zrem);
            }
            emit(&mut plan, *c, true, states, None);
            if self.commit(&view, plan).await? {
                return Ok(());
            }
            backoff().await;
        }
        Err(contended(c))
    }
}
