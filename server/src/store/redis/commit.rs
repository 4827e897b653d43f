//! Writing plans: compare-and-apply commits of what the domain decided, the
//! outbox they leave, and reads applied to a view.

use super::*;

pub(super) enum Applied {
    /// Applied: the replies of the last commands the caller asked for, and
    /// whether the events given to the commit were forwarded by it.
    Done {
        replies: Vec<Value>,
        forwarded: bool,
    },
    Conflict,
    LeaseExpired,
}

pub(super) fn contended(c: &ConversationId) -> ServiceError {
    ServiceError::unavailable(format!(
        "conversation {c} is too contended right now; retry"
    ))
}

/// A commit's queue registration (see [`Inner::registration`]).
pub(super) enum Registration {
    /// The commit leaves no work in a queue.
    None,
    /// Registered at this time (ms, Redis clock), before the commit.
    At(u64),
    /// To register by the commit script itself: this queue.
    Inline(String),
}

/// An event committed to a conversation's outbox, to forward.
pub(super) struct OutboxEntry {
    /// Its stream entry id.
    pub id: String,
    /// Its addressee.
    pub user: UserId,
    /// The encoded event.
    pub body: Vec<u8>,
}

/// An encoded event and its addressee.
pub(super) type Event = (UserId, Vec<u8>);

/// `items` grouped by addressee, in the order each first appears, each
/// addressee's in their order.
fn by_addressee<T>(items: impl IntoIterator<Item = (UserId, T)>) -> Vec<(UserId, Vec<T>)> {
    let mut out: Vec<(UserId, Vec<T>)> = Vec::new();
    for (u, item) in items {
        match out.iter_mut().find(|(a, _)| *a == u) {
            Some((_, mine)) => mine.push(item),
            None => out.push((u, vec![item])),
        }
    }
    out
}

/// `cmds` with every command of more than [`scripts::MAX_ARGS`] arguments
/// whose reply is not among the last `replies` split into several of the
/// same command, each under the limit: `HSET` and `ZADD` (without options)
/// by field or member pairs, `SADD`, `SREM`, `ZREM` and `HDEL` by members.
/// The same writes in the same atomic step; other commands are left as
/// they are.
fn split_long(cmds: Vec<Vec<Vec<u8>>>, replies: usize) -> Vec<Vec<Vec<u8>>> {
    let kept_from = cmds.len().saturating_sub(replies);
    let mut out = Vec::with_capacity(cmds.len());
    for (i, cmd) in cmds.into_iter().enumerate() {
        if cmd.len() <= scripts::MAX_ARGS || i >= kept_from {
            out.push(cmd);
            continue;
        }
        let name = cmd[0].to_ascii_uppercase();
        let step = match name.as_slice() {
            b"HSET" => 2,
            // A plain ZADD starts with a score; one with options is kept.
            b"ZADD" if std::str::from_utf8(&cmd[2]).is_ok_and(|s| s.parse::<f64>().is_ok()) => 2,
            b"SADD" | b"SREM" | b"ZREM" | b"HDEL" => 1,
            _ => {
                out.push(cmd);
                continue;
            }
        };
        let (head, rest) = cmd.split_at(2);
        if rest.len() % step != 0 {
            out.push(cmd);
            continue;
        }
        let per = (scripts::MAX_ARGS - 2) / step * step;
        for part in rest.chunks(per) {
            let mut c = head.to_vec();
            c.extend_from_slice(part);
            out.push(c);
        }
    }
    out
}

pub(super) async fn backoff() {
    let ms = rand::random_range(1..8u64);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl Inner {
    /// Registers a queue as holding work; returns the registration time.
    pub(super) async fn register(&self, queue: &str) -> StoreResult<u64> {
        scripts::REGISTER
            .key(self.keys.queue_index())
            .arg(queue)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    /// Compare-and-apply on the hash `versioned` (see [`scripts::APPLY`]);
    /// `lifetime`: the keys that share its expiry (none for a hash that
    /// is not a conversation's); `registered`: the queue registration (see
    /// [`Registration`]); `replies`: how many of the last commands' replies
    /// [`Applied::Done`] carries; `events`: a conversation's events for the
    /// script to forward itself, with its outbox (only on a single Redis
    /// server, see [`scripts::APPLY`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply_on(
        &self,
        versioned: String,
        lifetime: &[String],
        registered: Registration,
        expected: u64,
        cmds: Vec<Vec<Vec<u8>>>,
        replies: usize,
        events: Option<(&ConversationId, &[Event])>,
    ) -> StoreResult<Applied> {
        self.backlog_room()?;
        let cmds = split_long(cmds, replies);
        let mut inv = scripts::APPLY.key(&versioned);
        for key in lifetime {
            inv.key(key);
        }
        let ttl_ms = self.ttl().saturating_mul(1000);
        let registered_at = match &registered {
            Registration::At(t) => *t,
            Registration::None | Registration::Inline(_) => 0,
        };
        inv.arg(expected)
            .arg(registered_at)
            .arg(LEASE_MS)
            .arg(crate::domain::now_millis())
            .arg(self.ttl())
            .arg(ttl_ms / LIFETIME_REFRESHES)
            .arg(cmds.len())
            .arg(replies.min(cmds.len()));
        for c in &cmds {
            inv.arg(c.len());
            for a in c {
                inv.arg(a.as_slice());
            }
        }
        match &registered {
            Registration::Inline(queue) => inv.arg(self.keys.queue_index()).arg(queue),
            Registration::None | Registration::At(_) => inv.arg("").arg(""),
        };
        if let Some((c, events)) = events.filter(|(_, e)| !e.is_empty()) {
            let by_user = by_addressee(events.iter().map(|(u, body)| (*u, body)));
            inv.arg(self.keys.outbox(c))
                .arg(hex(c))
                .arg(self.opts.log_retention.max(1))
                .arg(fresh_epoch())
                .arg(self.keys.bus())
                .arg(by_user.len());
            for (u, bodies) in &by_user {
                inv.arg(hex(u))
                    .arg(self.keys.log_meta(u))
                    .arg(self.keys.log(u))
                    .arg(bodies.len());
                for body in bodies {
                    inv.arg(body.as_slice());
                }
            }
        }
        let r: Value = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(match r {
            Value::Int(-1) => Applied::Conflict,
            Value::Int(-2) => Applied::LeaseExpired,
            Value::Array(done) if done.len() == 3 => {
                let (Value::Array(replies), Value::Int(forwarded)) = (&done[1], &done[2]) else {
                    return Err(corrupt("commit reply"));
                };
                self.wait_replicas(&versioned).await?;
                Applied::Done {
                    replies: replies.clone(),
                    forwarded: *forwarded == 1,
                }
            }
            _ => return Err(corrupt("commit reply")),
        })
    }

    /// With `--redis-wait-replicas N`: waits until N replicas of the
    /// primary holding `key` have every write sent to it so far (`WAIT`), so
    /// that an acknowledged write survives a failover to one of them. The
    /// node's connection to that primary is multiplexed, so the WAIT covers
    /// the commit just made (sent before it on the same connection), and
    /// also holds up the calls behind it for one replication round trip:
    /// that is the setting's cost.
    pub(super) async fn wait_replicas(&self, key: &str) -> StoreResult<()> {
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

    /// [`Self::apply_on`] for conversation `c`, whose keys share one
    /// lifetime.
    pub(super) async fn apply(
        &self,
        c: &ConversationId,
        expected: u64,
        registered: Registration,
        cmds: Vec<Vec<Vec<u8>>>,
        replies: usize,
        events: &[Event],
    ) -> StoreResult<Applied> {
        let lifetime = self.keys.conversation_state(c);
        self.apply_on(
            self.keys.meta(c),
            &lifetime,
            registered,
            expected,
            cmds,
            replies,
            Some((c, events)),
        )
        .await
    }

    /// How a commit that leaves work in `queue` registers it: on a single
    /// Redis server, inside the commit script (no round trip of its own,
    /// and atomic with the commit); on a cluster, where the queue index is
    /// in another slot, first, on its own (the commit then checks that the
    /// registration is within the lease).
    pub(super) async fn registration(&self, queue: String) -> StoreResult<Registration> {
        Ok(match self.conn {
            Conn::Single(_) => Registration::Inline(queue),
            Conn::Cluster(_) => Registration::At(self.register(&queue).await?),
        })
    }

    /// Commits a plan decided at `view.ver`: the writes, the outbox entries
    /// and the queue entries, atomically, and forwards the events. On a
    /// single Redis server the commit script forwards them itself when the
    /// outbox is empty (one round trip for the whole write); else, on a
    /// cluster, and with `--redis-wait-replicas` (events only after the
    /// replicas have the write), they go to the outbox and are forwarded
    /// from there.
    /// `Ok(false)`: the version moved.
    pub(super) async fn commit(&self, view: &View, mut plan: Plan) -> StoreResult<bool> {
        let c = view.c;
        let k = &self.keys;
        let events: Vec<(UserId, Vec<u8>)> = plan
            .events
            .iter()
            .map(|(u, body)| (*u, enc(body)))
            .collect();
        // The conversation's queue is registered for Scylla writes and for
        // events alike: if this node dies before forwarding, the next drain
        // of that queue (on any node) forwards the outbox.
        let registered = if plan.persist.is_empty() && events.is_empty() {
            Registration::None
        } else {
            let q = k.conv_queue(&c);
            if !plan.persist.is_empty() {
                plan.cmds
                    .push(rcmd!["XADD", q.clone(), "*", "p", enc(&plan.persist)]);
            }
            self.registration(q).await?
        };
        // With `--redis-wait-replicas` the events are published only after
        // the replicas confirmed the commit (the forward after the WAIT), so
        // that no subscriber sees an event of a write a failover may lose.
        let inline = matches!(self.conn, Conn::Single(_)) && self.opts.wait_replicas.is_none();
        // On a cluster the events go last, followed by the outbox's length:
        // the commit hands back their entry ids, and whether anything older
        // waits.
        let replies = if inline || events.is_empty() {
            0
        } else {
            // The outbox may hold entries from now on: a commit that
            // forwards inline must look at it (`o` in `scripts::APPLY`).
            // Folded into the commit's own HSET of the meta hash.
            plan.cmds.push(rcmd!["HSET", k.meta(&c), "o", "1"]);
            let outbox = k.outbox(&c);
            for (u, body) in &events {
                plan.cmds.push(rcmd![
                    "XADD",
                    outbox.clone(),
                    "*",
                    "u",
                    hex(u),
                    "b",
                    body.clone()
                ]);
            }
            plan.cmds.push(rcmd!["XLEN", outbox]);
            events.len() + 1
        };
        let applied = self
            .apply(
                &c,
                view.ver,
                registered,
                std::mem::take(&mut plan.cmds),
                replies,
                if inline { &events } else { &[] },
            )
            .await?;
        let replies = match applied {
            Applied::Done {
                forwarded: true, ..
            } => return Ok(true),
            Applied::Done { replies, .. } => replies,
            Applied::Conflict | Applied::LeaseExpired => return Ok(false),
        };
        if events.is_empty() {
            return Ok(true);
        }
        if inline {
            // Behind entries of an earlier commit, in the outbox: forward in
            // outbox order, from the start.
            return self.forward(&c).await.map(|()| true);
        }
        let waiting: usize = redis::from_redis_value(replies[events.len()].clone())
            .map_err(|_| corrupt("outbox length"))?;
        if waiting > events.len() {
            // Entries of an earlier commit wait (a node died before
            // forwarding them, or is forwarding them now): forward in outbox
            // order, from the start.
            return self.forward(&c).await.map(|()| true);
        }
        let mut entries = Vec::with_capacity(events.len());
        for ((u, body), id) in events.into_iter().zip(&replies) {
            let id: String =
                redis::from_redis_value(id.clone()).map_err(|_| corrupt("outbox entry id"))?;
            entries.push(OutboxEntry { id, user: u, body });
        }
        self.forward_entries(&c, &entries).await?;
        Ok(true)
    }

    /// Moves committed outbox entries of `c` into their addressees' logs, in
    /// order and at most once each, then deletes them from the outbox.
    ///
    /// It stops at a short page rather than reading the outbox again until
    /// it is empty: an entry appended after the read is forwarded by the
    /// commit that appended it (or, if that node dies, by the next drain of
    /// the conversation's queue, which the commit registered), and an entry
    /// forwarded twice is skipped by [`scripts::FORWARD`].
    pub(super) async fn forward(&self, c: &ConversationId) -> StoreResult<()> {
        const PAGE: usize = 500;
        loop {
            let page: redis::streams::StreamRangeReply = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(self.keys.outbox(c))
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(PAGE),
                )
                .await?;
            let mut entries = Vec::with_capacity(page.ids.len());
            for entry in &page.ids {
                let user: String = entry.get("u").ok_or_else(|| corrupt("outbox user"))?;
                let body: Vec<u8> = entry.get("b").ok_or_else(|| corrupt("outbox body"))?;
                entries.push(OutboxEntry {
                    id: entry.id.clone(),
                    user: parse_uuid(&user)?,
                    body,
                });
            }
            self.forward_entries(c, &entries).await?;
            if entries.len() < PAGE {
                return Ok(());
            }
        }
    }

    /// Forwards outbox entries of `c` (in outbox order) into their
    /// addressees' logs ([`scripts::FORWARD`]), then deletes them from the
    /// outbox. On a single Redis server that is one call, atomic. On a
    /// cluster each addressee's log is in its own slot: one call per
    /// addressee, all sent at once (the connection pipelines them: one round
    /// trip however many events), then the XDEL once every call succeeded.
    /// An entry that was already forwarded is skipped by its addressee's log,
    /// so a commit and a drain forwarding the same entries race harmlessly.
    /// The logs of different users are unrelated, so only each user's own
    /// entries need their order, which one call keeps.
    pub(super) async fn forward_entries(
        &self,
        c: &ConversationId,
        entries: &[OutboxEntry],
    ) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let by_user = by_addressee(entries.iter().map(|e| (e.user, e)));
        let (conv, now) = (hex(c), crate::domain::now_millis());
        let refresh = self.ttl().saturating_mul(1000) / LIFETIME_REFRESHES;
        let call = |users: &[(UserId, Vec<&OutboxEntry>)], outbox: bool| {
            let mut inv = scripts::FORWARD.prepare_invoke();
            for (u, _) in users {
                inv.key(self.keys.log_meta(u)).key(self.keys.log(u));
            }
            if outbox {
                inv.key(self.keys.outbox(c));
            }
            inv.arg(&conv)
                .arg(self.opts.log_retention.max(1))
                .arg(self.ttl())
                .arg(fresh_epoch())
                .arg(self.keys.bus())
                .arg(now)
                .arg(refresh)
                .arg(users.len());
            for (u, mine) in users {
                inv.arg(hex(u)).arg(mine.len());
                for e in mine {
                    inv.arg(&e.id).arg(e.body.as_slice());
                }
            }
            let mut conn = self.conn();
            async move { inv.invoke_async::<i64>(&mut conn).await }
        };
        if let Conn::Single(_) = self.conn {
            call(&by_user, true).await.map_err(redis_err)?;
            return Ok(());
        }
        futures::future::try_join_all(
            by_user
                .iter()
                .map(|one| call(std::slice::from_ref(one), false)),
        )
        .await
        .map_err(redis_err)?;
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(self.keys.outbox(c));
        for e in entries {
            cmd.arg(&e.id);
        }
        let _: i64 = self.query(&cmd).await?;
        Ok(())
    }

    /// Applies a read by `u` up to `to` to the view and the plan.
    pub(super) async fn apply_read(
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
        // Read with the view on a single Redis server, else now: after the
        // view's version either way, so a toggle's re-index (a commit at a
        // later version) cannot be undone by this commit.
        self.ensure_sharing(view, &[*u]).await?;
        let sharing = view.sharing[u];
        let Some(adv) = wm.advance(to, sharing) else {
            let unread = self.unread_in(view, u, wm.seq, membership).await?;
            let p = self
                .position_after(view, u, membership, None, wm.seq, unread)
                .await?;
            return Ok((read_result(p, false), false));
        };
        let after = adv.after;
        self.plan_read(plan, &c, domain::MAIN, u, &adv, at);
        plan.cmds
            .extend(index_read(&self.keys, &c, u, membership, after, sharing));
        // Histories must be loaded before the view changes (it is the old state
        // plus this advancement).
        let first = adv.changes_after();
        // The main timeline's messages: a read there covers no thread's.
        let mut candidates = self.between_in(view, first + 1, after.seq).await?;
        candidates.retain(|m| m.thread.is_none());
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
        view.push_read(domain::MAIN, u, &adv, at);
        let unread = self.unread_in(view, u, after.seq, membership).await?;
        let p = self
            .position_after(view, u, membership, None, after.seq, unread)
            .await?;
        plan.events.push((*u, EventBody::Position(p)));
        let changed = changed_by(view, &candidates, u, membership, &adv);
        let windowed = self.touch(view, plan, &changed).await?;
        Ok((read_result(p, true), windowed))
    }

    /// Marks `c` read for `u` up to the latest message: every timeline
    /// (the main one up to its latest message, each thread up to its own),
    /// or with `thread` that thread alone (`NotFound` unless its root is a
    /// main-timeline message of `c`). One compare-and-apply.
    pub(super) async fn mark_timelines_read(
        &self,
        u: &UserId,
        c: ConversationId,
        thread: Option<MessageId>,
        at: Millis,
    ) -> StoreResult<ConversationRead> {
        let refused = |outcome| ConversationRead {
            conversation: c,
            outcome,
            read: ReadResult {
                thread,
                ..ReadResult::main(0, false, 0)
            },
        };
        let field = match thread {
            None => "conversation_ids",
            Some(_) => "threads.conversation_id",
        };
        let _serial = self.lock([&c]).await;
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut view) = self.view_for(&c, u).await? else {
                return Ok(refused(ConversationOutcome::NotFound));
            };
            let Ok(membership) = view.authorize(u, field) else {
                return Ok(refused(ConversationOutcome::PermissionDenied));
            };
            let at = at.max(view.stamp);
            let mut plan = Plan::default();
            plan.cmds.push(rcmd!["HSET", self.keys.meta(&c), "t", at]);
            let mut windowed = false;
            let read = match thread {
                Some(root) => {
                    self.ensure_messages(&mut view, &[root]).await?;
                    let root_seq = match view.messages.get(&root) {
                        Some(m) if !view.threads.contains_key(&root) => m.seq,
                        _ => return Ok(refused(ConversationOutcome::NotFound)),
                    };
                    let root = ThreadRoot {
                        id: root,
                        seq: root_seq,
                    };
                    let last = self
                        .thread_between(&c, root_seq, 1, Seq::MAX)
                        .await?
                        .last()
                        .map_or(0, |m| m.seq);
                    let (read, w) = self
                        .apply_thread_read(&mut view, &mut plan, u, &membership, root, last, at)
                        .await?;
                    windowed |= w;
                    read
                }
                None => {
                    let mut moved = false;
                    if view.has_threads {
                        if view.thread_index.is_none() {
                            view.thread_index = Some(self.threads_of(&c).await?);
                        }
                        for (root, msgs) in view.thread_index.clone().unwrap_or_default() {
                            let last = msgs.last().map_or(0, |m| m.seq);
                            let (read, w) = self
                                .apply_thread_read(
                                    &mut view,
                                    &mut plan,
                                    u,
                                    &membership,
                                    root,
                                    last,
                                    at,
                                )
                                .await?;
                            moved |= read.advanced;
                            windowed |= w;
                        }
                    }
                    let last = self.last_main_seq(&c).await?;
                    let (mut read, w) = self
                        .apply_read(&mut view, &mut plan, u, &membership, last, at)
                        .await?;
                    windowed |= w;
                    read.advanced |= moved;
                    read
                }
            };
            if !read.advanced || self.commit(&view, plan).await? {
                if windowed {
                    self.schedule_window(c);
                }
                return Ok(ConversationRead {
                    conversation: c,
                    outcome: ConversationOutcome::Ok,
                    read,
                });
            }
            backoff().await;
        }
        Err(contended(&c))
    }

    /// The writes of `u`'s read `adv` at `at` in `timeline` of `c`: the
    /// position (the meta hash's `w:` field, or `tw` for a thread), its history entries (true,
    /// and public if it was) and the Scylla change under the timeline's
    /// scope ([`crate::store::thread_scope`]). The main timeline's counting
    /// entries are the caller's ([`index_read`]).
    fn plan_read(
        &self,
        plan: &mut Plan,
        c: &ConversationId,
        timeline: domain::Timeline,
        u: &UserId,
        adv: &domain::WatermarkAdvance,
        at: Millis,
    ) {
        let (k, after) = (&self.keys, adv.after);
        let position = format!("{}:{}", after.seq, after.public_seq);
        let entry = |public| match timeline {
            domain::MAIN => keys::history_entry(u, public, after.seq, at),
            root => keys::thread_history_entry(u, public, root, after.seq, at),
        };
        plan.cmds.push(match timeline {
            domain::MAIN => rcmd!["HSET", k.meta(c), keys::watermark_field(u), position],
            root => rcmd![
                "HSET",
                k.thread_positions(c),
                threads::thread_position_field(u, root),
                position
            ],
        });
        let mut z = rcmd!["ZADD", k.history(c), 0, entry(false)];
        if adv.is_public() {
            z.extend(rcmd![0, entry(true)]);
        }
        plan.cmds.push(z);
        plan.persist.push(PersistOp::Watermark {
            conversation: crate::store::thread_scope(c, timeline),
            user: *u,
            watermark: after,
            public_advanced: adv.is_public(),
            at,
        });
    }

    /// `u`'s position in one timeline (`thread`: `None` for the main one)
    /// at `read_up_to` with `unread` messages after it, and the
    /// conversation's unread count (the main timeline's plus every
    /// thread's: nothing more to read without threads).
    pub(super) async fn position_after(
        &self,
        view: &mut View,
        u: &UserId,
        membership: &Membership,
        thread: Option<ThreadRoot>,
        read_up_to: Seq,
        unread: u64,
    ) -> StoreResult<domain::ReadPosition> {
        let conversation_unread = if view.has_threads {
            let threads = self.unread_by_timeline(view, u, membership).await?;
            let main = match thread {
                None => unread,
                Some(_) => {
                    let wm = view.wm(u);
                    self.unread(&view.c, u, wm.seq, membership).await?
                }
            };
            // The timeline just read counts as the caller says: the plan
            // is not committed yet.
            let others = threads
                .iter()
                .filter(|t| Some(t.root) != thread.map(|r| r.id))
                .map(|t| t.unread);
            let own = if thread.is_some() { unread } else { 0 };
            domain::conversation_unread(main, others.chain([own]))
        } else {
            unread
        };
        Ok(domain::ReadPosition {
            conversation: view.c,
            thread: thread.map(|t| t.id),
            read_up_to,
            unread,
            conversation_unread,
        })
    }

    /// Applies a read by `u` up to `to` in the thread under `root` to the
    /// view and the plan: the thread's position and history (the rules are
    /// [`ReadWatermark::advance`] and [`domain::covers`]), as
    /// [`Self::apply_read`] does for the main timeline.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply_thread_read(
        &self,
        view: &mut View,
        plan: &mut Plan,
        u: &UserId,
        membership: &Membership,
        root: ThreadRoot,
        to: Seq,
        at: Millis,
    ) -> StoreResult<(ReadResult, bool)> {
        let c = view.c;
        self.ensure_thread_positions(view, root.seq, &[*u]).await?;
        self.ensure_sharing(view, &[*u]).await?;
        let sharing = view.sharing[u];
        let wm = view.position(u, root.seq);
        let Some(adv) = wm.advance(to, sharing) else {
            let after = self
                .thread_between(&c, root.seq, wm.seq + 1, Seq::MAX)
                .await?;
            let unread = load::count_unread(&after, u, membership, Some(root.seq));
            let p = self
                .position_after(view, u, membership, Some(root), wm.seq, unread)
                .await?;
            return Ok((read_result(p, false), false));
        };
        let after = adv.after;
        self.plan_read(plan, &c, root.seq, u, &adv, at);
        let first = adv.changes_after();
        let in_thread = self
            .thread_between(&c, root.seq, first + 1, Seq::MAX)
            .await?;
        let candidates: Vec<Indexed> = in_thread
            .iter()
            .filter(|m| domain::covers(root.seq, after.seq, root.seq, m.seq))
            .copied()
            .collect();
        let group = view.group();
        if !group {
            // Histories are loaded before the view changes (as for the main
            // timeline): the events carry whole states.
            let ids: Vec<MessageId> = candidates.iter().map(|m| m.id).collect();
            self.ensure_deliveries(view, &ids).await?;
            let members: Vec<UserId> = view.members.keys().copied().collect();
            let min_seq = candidates.first().map_or(Seq::MAX, |m| m.seq);
            self.ensure_thread_reads(view, root.seq, &members, min_seq)
                .await?;
        }
        view.twms.insert((root.seq, *u), after);
        view.push_read(root.seq, u, &adv, at);
        let later: Vec<Indexed> = in_thread
            .iter()
            .filter(|m| m.seq > after.seq)
            .copied()
            .collect();
        let unread = load::count_unread(&later, u, membership, Some(root.seq));
        let p = self
            .position_after(view, u, membership, Some(root), after.seq, unread)
            .await?;
        plan.events.push((*u, EventBody::Position(p)));
        let changed = changed_by(view, &candidates, u, membership, &adv);
        let windowed = self.touch(view, plan, &changed).await?;
        Ok((read_result(p, true), windowed))
    }

    /// Brings `u`'s entries in the counting indexes of every conversation it
    /// is in up to its sharing setting, so counts follow the setting "at once"
    /// (before `set_sharing` returns). Each conversation is a compare-and-
    /// apply that reads the setting after the conversation's version, so a
    /// concurrent read or toggle cannot leave a stale entry behind.
    pub(super) async fn reindex_sharing(&self, u: &UserId) -> StoreResult<()> {
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
                    .arg(&field)
                    .arg(keys::watermark_field(u));
                // (version, member count, membership, watermark).
                type Row = ((Option<u64>, Option<u64>, Option<Vec<u8>>, Option<String>),);
                let ((ver, n, membership, wm),): Row = self.pipe(&p).await?;
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
                // Already listed if the list is complete (every member
                // ever is in it): a re-index leaves it.
                let cmds = index_member(&self.keys, &c, u, &membership, wm, sharing, false);
                let applied = self
                    .apply(&c, ver.unwrap_or(0), Registration::None, cmds, 0, &[])
                    .await?;
                if let Applied::Done { .. } = applied {
                    continue 'conv;
                }
                backoff().await;
            }
            return Err(contended(&c));
        }
        Ok(())
    }
}

/// A read's result from the position it left.
fn read_result(p: domain::ReadPosition, advanced: bool) -> ReadResult {
    ReadResult {
        read_up_to: p.read_up_to,
        advanced,
        unread: p.unread,
        thread: p.thread,
        conversation_unread: p.conversation_unread,
    }
}

/// The messages of `candidates` (covered by `u`'s read `adv`) whose state
/// others see changed ([`domain::WatermarkAdvance::changes`]). In a group, a
/// message already delivered counts as changed too: its summary has absolute
/// counts, so one more is harmless, and knowing would mean reading the
/// reader's runs.
fn changed_by(
    view: &View,
    candidates: &[Indexed],
    u: &UserId,
    membership: &Membership,
    adv: &domain::WatermarkAdvance,
) -> Vec<Indexed> {
    candidates
        .iter()
        .filter(|m| membership.receives(*u, m.sender, m.seq))
        .filter(|m| {
            let delivered = !view.group() && view.runs.delivered_at(u, m.seq).is_some();
            adv.changes(m.seq, delivered)
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod split_tests {
    use super::*;

    fn args(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn long_variadic_commands_are_split_under_the_limit_and_keep_every_argument() {
        let fields: Vec<String> = (0..3_000).map(|i| format!("f{i}")).collect();
        let mut hset = args(&["HSET", "k"]);
        for f in &fields {
            hset.extend(args(&[f, "v"]));
        }
        let short = args(&["HSET", "k", "a", "b"]);
        let mut kept = args(&["SADD", "s"]);
        kept.extend(fields.iter().map(|f| f.as_bytes().to_vec()));
        let out = split_long(vec![hset.clone(), short.clone(), kept.clone()], 1);
        let parts: Vec<&Vec<Vec<u8>>> = out.iter().filter(|c| c[1] == b"k").collect();
        assert!(parts.len() > 2, "the long HSET is split");
        assert!(parts.iter().all(|c| c.len() <= scripts::MAX_ARGS));
        let rejoined: Vec<Vec<u8>> = parts
            .iter()
            .flat_map(|c| {
                if c.len() == 4 && c[2] == b"a" {
                    vec![]
                } else {
                    c[2..].to_vec()
                }
            })
            .collect();
        assert_eq!(rejoined, hset[2..].to_vec(), "every pair, in order");
        assert!(out.contains(&short));
        assert_eq!(
            out.last(),
            Some(&kept),
            "a command whose reply is kept stays whole"
        );
        let mut gt = args(&["ZADD", "z", "GT"]);
        for f in &fields {
            gt.extend(args(&["1", f]));
        }
        assert_eq!(
            split_long(vec![gt.clone()], 0),
            vec![gt],
            "options: left whole"
        );
    }
}
