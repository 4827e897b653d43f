//! Write-behind to Scylla: draining the queues, the outage budget shared
//! through Redis, and the health probe.

use super::*;

pub(super) async fn flush_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.opts.flush_interval) => {}
            _ = stopped(&mut stop) => return,
        }
        match inner.flush_all().await {
            Ok(n) if n > 0 => tracing::debug!(persisted = n, "flushed to scylla"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.report(), "flush to scylla failed; will retry"),
        }
    }
}

pub(super) async fn health_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        let ok = inner.ping().await;
        let was = inner.healthy.swap(ok, Ordering::AcqRel);
        if was != ok {
            if ok {
                tracing::info!("redis reachable again");
            } else {
                tracing::warn!("redis is unreachable");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

impl Inner {
    /// Keeps the start of a Scylla outage in Redis, shared by the nodes: the
    /// first node whose probe fails records it (`SET NX`), every node that
    /// fails reads it and keeps it alive (it expires `OUTAGE_KEY_TTL` after
    /// the last failing probe, so a key left by nodes that died cannot start
    /// a later outage early), and a node that reaches Scylla again ends it
    /// (its flusher drains the queues, so the backlog stops growing). While
    /// Scylla answers, this sends nothing.
    pub(super) async fn share_outage(&self, scylla_ok: bool) {
        let key = self.keys.scylla_down_since();
        if scylla_ok {
            if self.scylla_down_since.swap(0, Ordering::AcqRel) != 0
                && let Err(e) = self.query::<()>(redis::cmd("DEL").arg(&key)).await
            {
                tracing::debug!(error = %e, "could not clear the shared outage start");
            }
            return;
        }
        let now = domain::now_millis().max(1) as u64;
        let since = self
            .query::<Option<u64>>(redis::cmd("SET").arg(&key).arg(now).arg("NX").arg("GET"))
            .await
            .ok()
            .map(|was| was.unwrap_or(now));
        let ttl = OUTAGE_KEY_TTL.as_millis() as u64;
        if let Err(e) = self
            .query::<()>(redis::cmd("PEXPIRE").arg(&key).arg(ttl))
            .await
        {
            tracing::debug!(error = %e, "could not keep the shared outage start");
        }
        match since {
            Some(since) => self.scylla_down_since.store(since, Ordering::Release),
            None => {
                let _ = self.scylla_down_since.compare_exchange(
                    0,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
    }

    /// How long Scylla has been unreachable, as the nodes recorded it (zero
    /// while this node reaches it).
    pub(super) fn outage(&self) -> Duration {
        match self.scylla_down_since.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            since => {
                Duration::from_millis((domain::now_millis().max(0) as u64).saturating_sub(since))
            }
        }
    }

    /// Every write queues a change for Scylla: past `max_outage` of Scylla
    /// being unreachable, writes are refused so that the backlog in Redis
    /// stops growing. Nothing is applied; reads keep working.
    pub(super) fn backlog_room(&self) -> StoreResult<()> {
        let outage = self.outage();
        if outage <= self.opts.max_outage {
            return Ok(());
        }
        Err(ServiceError::unavailable(format!(
            "writes are paused: the persistent store (Scylla) has been unreachable for {} s, \
                 longer than --writebehind-max-outage-secs ({}), and changes waiting for it stay \
                 bounded; reads keep working, and writes resume when Scylla answers",
            outage.as_secs(),
            self.opts.max_outage.as_secs()
        )))
    }

    pub(super) async fn flush_all(&self) -> StoreResult<u64> {
        let queues: Vec<(String, f64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys.queue_index())
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let mut total = 0;
        for (queue, score) in queues {
            let n = self.flush_queue(&queue, score).await?;
            self.persisted.fetch_add(n, Ordering::Relaxed);
            total += n;
        }
        Ok(total)
    }

    /// Drains one queue into Scylla (under a lock, so nodes do not double the
    /// work), then finishes what a dead node may have left in the
    /// conversation's outbox and window.
    pub(super) async fn flush_queue(&self, queue: &str, score: f64) -> StoreResult<u64> {
        let lock = self.keys.flush_lock(queue);
        let token = Uuid::new_v4().to_string();
        let got: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(&lock)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000),
            )
            .await?;
        if got.is_none() {
            return Ok(0);
        }
        let result = self.drain(queue, score).await;
        let _: i64 = scripts::UNLOCK
            .key(&lock)
            .arg(&token)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        result
    }

    pub(super) async fn drain(&self, queue: &str, score: f64) -> StoreResult<u64> {
        let mut total = 0u64;
        loop {
            let entries: redis::streams::StreamRangeReply = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(queue)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(FLUSH_CHUNK),
                )
                .await?;
            if entries.ids.is_empty() {
                break;
            }
            let mut ops = Vec::new();
            for e in &entries.ids {
                let bytes: Vec<u8> = e.get("p").ok_or_else(|| corrupt("queue entry"))?;
                ops.extend(dec::<Vec<PersistOp>>(&bytes, "queue entry")?);
            }
            self.scylla.apply(&ops).await?;
            total += ops.len() as u64;
            let mut drop = scripts::XDEL_DROP.key(queue);
            for e in &entries.ids {
                drop.arg(&e.id);
            }
            let _: i64 = drop
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_err)?;
        }
        let drained_at = std::time::Instant::now();
        if let Some(c) = self.keys.queue_conversation(queue) {
            self.forward(&c).await?;
            self.flush_window(&c).await?;
        }
        if drained_at.elapsed() > Duration::from_millis(LEASE_MS / 2) {
            // A writer holding a registration from before the drain may have
            // appended since; keep the queue registered, the next round
            // drains and forgets it.
            return Ok(total);
        }
        // On a single Redis server the commit registers its queue itself
        // and skips that while the owner hash says it is registered: only
        // a queue found empty in the same atomic step (its stream, and a
        // conversation's outbox, which the registration also covers) is
        // forgotten, with that mark. On a cluster a writer registers before its commit, so
        // a registration newer than the one seen, or within the lease, may
        // still be committing.
        let owner = self.keys.queue_owner(queue);
        let _: i64 = match (&self.conn, owner) {
            (Conn::Single(_), Some(owner)) => {
                let mut forget = scripts::FORGET_DRAINED.prepare_invoke();
                forget.key(self.keys.queue_index()).key(queue).key(owner);
                if let Some(c) = self.keys.queue_conversation(queue) {
                    forget.key(self.keys.outbox(&c));
                }
                forget.arg(queue).invoke_async(&mut self.conn()).await
            }
            _ => {
                scripts::UNREGISTER
                    .key(self.keys.queue_index())
                    .arg(queue)
                    .arg(score as u64)
                    .arg(LEASE_MS)
                    .invoke_async(&mut self.conn())
                    .await
            }
        }
        .map_err(redis_err)?;
        Ok(total)
    }

    pub(super) async fn ping(&self) -> bool {
        let redis_ok = tokio::time::timeout(
            Duration::from_secs(2),
            self.query::<String>(&redis::cmd("PING")),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let scylla_ok = tokio::time::timeout(Duration::from_secs(2), self.scylla.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        let was = self.scylla_up.swap(scylla_ok, Ordering::AcqRel);
        // With Redis down too, it falls back to this node's own clock.
        self.share_outage(scylla_ok).await;
        if was != scylla_ok {
            if scylla_ok {
                tracing::info!("scylla reachable again; queued changes drain on the next flush");
            } else {
                tracing::warn!(
                    "scylla unreachable: calls Redis can answer keep working, changes queue in Redis"
                );
            }
        }
        // Health follows Redis alone: while Scylla is down, every call Redis
        // can answer still works, so the node must stay in rotation.
        redis_ok
    }
}
