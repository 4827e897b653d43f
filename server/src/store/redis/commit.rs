//! Writing plans: compare-and-apply commits of what the domain decided, the
//! outbox they leave, and reads applied to a view.

use super::*;

pub(super) enum Applied {
    Done,
    Conflict,
    LeaseExpired,
}

pub(super) fn contended(c: &ConversationId) -> ServiceError {
    ServiceError::unavailable(format!(
        "conversation {c} is too contended right now; retry"
    ))
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
    /// is not a conversation's).
    pub(super) async fn apply_on(
        &self,
        versioned: String,
        lifetime: &[String],
        expected: u64,
        registered: u64,
        cmds: Vec<Vec<Vec<u8>>>,
    ) -> StoreResult<Applied> {
        self.backlog_room()?;
        let mut inv = scripts::APPLY.key(&versioned);
        for key in lifetime {
            inv.key(key);
        }
        let ttl_ms = self.ttl().saturating_mul(1000);
        inv.arg(expected)
            .arg(registered)
            .arg(LEASE_MS)
            .arg(crate::domain::now_millis())
            .arg(self.ttl())
            .arg(ttl_ms / LIFETIME_REFRESHES)
            .arg(cmds.len());
        for c in &cmds {
            inv.arg(c.len());
            for a in c {
                inv.arg(a.as_slice());
            }
        }
        let r: i64 = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(match r {
            -1 => Applied::Conflict,
            -2 => Applied::LeaseExpired,
            _ => {
                self.wait_replicas(&versioned).await?;
                Applied::Done
            }
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

    pub(super) async fn apply(
        &self,
        c: &ConversationId,
        expected: u64,
        registered: u64,
        cmds: Vec<Vec<Vec<u8>>>,
    ) -> StoreResult<Applied> {
        let lifetime = self.keys.conversation_state(c);
        self.apply_on(self.keys.meta(c), &lifetime, expected, registered, cmds)
            .await
    }

    /// Commits a plan decided at `view.ver`: the writes, the outbox entries
    /// and the queue entries, atomically. `Ok(false)`: the version moved.
    pub(super) async fn commit(&self, view: &View, mut plan: Plan) -> StoreResult<bool> {
        let c = view.c;
        let k = &self.keys;
        let has_events = !plan.events.is_empty();
        for (u, body) in &plan.events {
            plan.cmds.push(rcmd![
                "XADD",
                k.outbox(&c),
                "*",
                "u",
                hex(u),
                "b",
                enc(body)
            ]);
        }
        // The conversation's queue is registered for Scylla writes and for
        // events alike: if this node dies before forwarding, the next drain
        // of that queue (on any node) forwards the outbox.
        let registered = if plan.persist.is_empty() && !has_events {
            0
        } else {
            let q = k.conv_queue(&c);
            if !plan.persist.is_empty() {
                plan.cmds
                    .push(rcmd!["XADD", q.clone(), "*", "p", enc(&plan.persist)]);
            }
            self.register(&q).await?
        };
        let applied = self
            .apply(&c, view.ver, registered, std::mem::take(&mut plan.cmds))
            .await?;
        match applied {
            Applied::Done => {
                if has_events {
                    self.forward(&c).await?;
                }
                Ok(true)
            }
            Applied::Conflict | Applied::LeaseExpired => Ok(false),
        }
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
            let entries: redis::streams::StreamRangeReply = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(self.keys.outbox(c))
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(PAGE),
                )
                .await?;
            if entries.ids.is_empty() {
                return Ok(());
            }
            let mut done = Vec::with_capacity(entries.ids.len());
            for entry in &entries.ids {
                let user: String = entry.get("u").ok_or_else(|| corrupt("outbox user"))?;
                let body: Vec<u8> = entry.get("b").ok_or_else(|| corrupt("outbox body"))?;
                let u = parse_uuid(&user)?;
                let _: (i64, i64, String) = scripts::FORWARD
                    .key(self.keys.log_meta(&u))
                    .key(self.keys.log(&u))
                    .arg(hex(c))
                    .arg(&entry.id)
                    .arg(body)
                    .arg(self.opts.log_retention.max(1))
                    .arg(self.ttl())
                    .arg(fresh_epoch())
                    .arg(self.keys.bus())
                    .arg(user)
                    .arg(crate::domain::now_millis())
                    .arg(self.ttl().saturating_mul(1000) / LIFETIME_REFRESHES)
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(redis_err)?;
                done.push(entry.id.clone());
            }
            let mut cmd = redis::cmd("XDEL");
            cmd.arg(self.keys.outbox(c));
            for id in &done {
                cmd.arg(id);
            }
            let _: i64 = self.query(&cmd).await?;
            if done.len() < PAGE {
                return Ok(());
            }
        }
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
        let sharing = self.sharing_of(&[*u]).await?[0].0;
        view.sharing.insert(*u, sharing);
        let Some(adv) = wm.advance(to, sharing) else {
            return Ok((
                ReadResult {
                    read_up_to: wm.seq,
                    advanced: false,
                    unread: self.unread(&c, u, wm.seq, membership).await?,
                },
                false,
            ));
        };
        let (before, after) = (adv.before, adv.after);
        let k = &self.keys;
        plan.cmds.push(rcmd![
            "HSET",
            k.watermarks(&c),
            hex(u),
            format!("{}:{}", after.seq, after.public_seq)
        ]);
        plan.cmds
            .extend(index_member(k, &c, u, membership, after, sharing));
        let mut z = rcmd![
            "ZADD",
            k.history(&c),
            0,
            keys::history_entry(u, false, after.seq, at)
        ];
        if adv.is_public() {
            z.extend(rcmd![0, keys::history_entry(u, true, after.seq, at)]);
        }
        plan.cmds.push(z);
        plan.persist.push(PersistOp::Watermark {
            conversation: c,
            user: *u,
            watermark: after,
            public_advanced: adv.is_public(),
            at,
        });
        // Histories must be loaded before the view changes (it is the old state
        // plus this advancement).
        let first = if adv.is_public() {
            before.public_seq.min(before.seq)
        } else {
            before.seq
        };
        let candidates = self.between(&c, first + 1, after.seq).await?;
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
        let h = view.hist.entry((*u, false)).or_default();
        h.push((after.seq, at));
        if adv.is_public() {
            view.hist
                .entry((*u, true))
                .or_default()
                .push((after.seq, at));
        }
        let unread = self.unread(&c, u, after.seq, membership).await?;
        plan.events.push((
            *u,
            EventBody::Watermark {
                conversation: c,
                read_up_to: after.seq,
                unread,
            },
        ));
        let mut changed = Vec::new();
        for m in candidates {
            if !membership.receives(*u, m.sender, m.seq) {
                continue;
            }
            let visible = adv.is_public() && m.seq > before.public_seq;
            // In a group, a message already delivered is windowed too: its
            // summary has absolute counts, so one more is harmless, and
            // knowing would mean reading the reader's runs.
            let newly_delivered =
                m.seq > before.seq && (group || view.runs.delivered_at(u, m.seq).is_none());
            if visible || newly_delivered {
                changed.push(m);
            }
        }
        let windowed = self.touch(view, plan, &changed).await?;
        Ok((
            ReadResult {
                read_up_to: after.seq,
                advanced: true,
                unread,
            },
            windowed,
        ))
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
                    .arg(&field);
                p.cmd("HGET").arg(self.keys.watermarks(&c)).arg(hex(u));
                // (version, member count, membership), watermark.
                type Row = ((Option<u64>, Option<u64>, Option<Vec<u8>>), Option<String>);
                let ((ver, n, membership), wm): Row = self.pipe(&p).await?;
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
                let cmds = index_member(&self.keys, &c, u, &membership, wm, sharing);
                if let Applied::Done = self.apply(&c, ver.unwrap_or(0), 0, cmds).await? {
                    continue 'conv;
                }
                backoff().await;
            }
            return Err(contended(&c));
        }
        Ok(())
    }
}
