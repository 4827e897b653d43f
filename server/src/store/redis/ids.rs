//! Where a message id lives: the id index (UUIDv7 ids, by second and
//! shard) and the home keys (other ids), read when a call names messages
//! without their conversation and when RegisterMessages checks that an id
//! is new.

use super::*;

impl Inner {
    /// The time after which a UUIDv7 message id without an entry in the id
    /// index is known to be unregistered, or `None` when no miss needs it.
    ///
    /// An id-index entry lives at least the hot TTL from the id's minting
    /// and from its registration ([`Self::home_cmds`]). So an id minted less
    /// than the hot TTL ago (minus [`CLOCK_SKEW_MS`]) without an entry was
    /// never registered, provided this Redis held every registration since then:
    /// the id must also be minted after `complete_since`, which is written
    /// when this Redis first served us and again (later) whenever Redis lost
    /// its data. Such ids need no Scylla lookup, so registering new messages
    /// keeps working while Scylla is down. Other ids (not v7, older, or from
    /// before a Redis data loss) are looked up in Scylla as before.
    pub(super) async fn new_id_horizon(
        &self,
        ids: &[MessageId],
        rows: &[Option<ConversationId>],
        since: Option<u64>,
    ) -> StoreResult<Option<u64>> {
        if ids
            .iter()
            .zip(rows)
            .all(|(m, row)| row.is_some() || v7_millis(m).is_none())
        {
            return Ok(None);
        }
        let now = crate::domain::now_millis().max(0) as u64;
        let since = match since {
            Some(t) => t,
            None => {
                // First use, or Redis lost its data: complete from now on.
                let key = self.keys.complete_since();
                let _: Option<String> = self
                    .query(redis::cmd("SET").arg(&key).arg(now).arg("NX"))
                    .await?;
                self.query::<Option<u64>>(redis::cmd("GET").arg(&key))
                    .await?
                    .unwrap_or(now)
            }
        };
        let ttl_ms = self.ttl().saturating_mul(1000);
        Ok(Some(since.max(now.saturating_sub(ttl_ms)) + CLOCK_SKEW_MS))
    }

    /// Since when every registration in this Redis is in the id index's
    /// layout ([`Keys::id_layout_since`]), read once per node. The first
    /// node of this release writes it: now, or 0 when this Redis has no
    /// completeness mark ([`Keys::complete_since`], which the first
    /// registration of a release with the id index writes), so holds no
    /// registration in the layout before. A later value (written anew after
    /// Redis lost its data, and with it the layout before) would only have
    /// the node look there for more ids, so the value read first stays
    /// valid for the node's life.
    async fn id_layout_since(&self) -> StoreResult<u64> {
        if let Some(t) = self.id_layout.get() {
            return Ok(*t);
        }
        let key = self.keys.id_layout_since();
        let complete: Option<u64> = self
            .query(redis::cmd("GET").arg(self.keys.complete_since()))
            .await?;
        let now = crate::domain::now_millis().max(0) as u64;
        let mark = if complete.is_some() { now } else { 0 };
        let _: Option<String> = self
            .query(redis::cmd("SET").arg(&key).arg(mark).arg("NX"))
            .await?;
        let since: Option<u64> = self.query(redis::cmd("GET").arg(&key)).await?;
        Ok(*self.id_layout.get_or_init(|| since.unwrap_or(mark)))
    }

    /// The conversation a message belongs to (re-warmed from Scylla): UUIDv7
    /// ids from the id index (one HMGET per index key: an id's own field and
    /// its millisecond's bucket are in one key; an id minted before
    /// [`Self::id_layout_since`] is looked for in the layout before as
    /// well), others from their home key.
    pub(super) async fn homes(
        &self,
        ids: &[MessageId],
    ) -> StoreResult<Vec<Option<ConversationId>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Each UUIDv7 id has two places: a field of its own, or a record in
        // the bucket field of its millisecond (`write_homes`), both in one
        // key; two more for an id that may be in the layout before. One
        // HMGET per index key, each field asked once.
        let layout_since = self.id_layout_since().await?;
        // The layout before is written no more: its last key expires by
        // the mark plus the TTL, a second and twice the clock skew.
        let ttl_ms = self.ttl().saturating_mul(1000);
        let legacy_until = layout_since + ttl_ms + 2 * CLOCK_SKEW_MS + 1000;
        let legacy_lives = (crate::domain::now_millis().max(0) as u64) < legacy_until;
        let (groups, plain) = self.keys.id_index_groups(ids);
        let mut lookups: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        let mut asked: HashMap<(usize, Vec<u8>), usize> = HashMap::new();
        let mut ask = |key: String, field: Vec<u8>| -> (usize, usize) {
            let g = *by_key.entry(key.clone()).or_insert_with(|| {
                lookups.push((key, Vec::new()));
                lookups.len() - 1
            });
            let f = *asked.entry((g, field.clone())).or_insert_with(|| {
                lookups[g].1.push(field);
                lookups[g].1.len() - 1
            });
            (g, f)
        };
        // Per id: (lookup, field) of its own field and of its bucket's, in
        // the layout and then in the layout before.
        type Place = Vec<((usize, usize), (usize, usize))>;
        let mut places: Vec<Option<Place>> = vec![None; ids.len()];
        for (key, at) in groups {
            for i in at {
                let m = &ids[i];
                let (own, bucket) = (m.as_bytes().to_vec(), keys::message_bucket(m).to_vec());
                let mut place = vec![(
                    ask(key.clone(), own.clone()),
                    ask(key.clone(), bucket.clone()),
                )];
                let ms = v7_millis(m).unwrap_or(0);
                if legacy_lives && ms < layout_since.saturating_add(CLOCK_SKEW_MS) {
                    let [o, b] = keys::legacy_id_slots(m, ms);
                    place.push((
                        ask(self.keys.legacy_id_index(o.0, o.1), own),
                        ask(self.keys.legacy_id_index(b.0, b.1), bucket),
                    ));
                }
                places[i] = Some(place);
            }
        }
        let mut p = redis::pipe();
        for (key, fields) in &lookups {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(key);
            for f in fields {
                cmd.arg(f.as_slice());
            }
            p.add_command(cmd);
        }
        for i in &plain {
            p.get(self.keys.message_home(&ids[*i]));
        }
        // The completeness marker rides in the same round trip.
        p.get(self.keys.complete_since());
        let mut replies: Vec<Value> = self.pipe(&p).await?;
        let parse = |e: redis::ParsingError| redis_err(e.into());
        let since = replies
            .pop()
            .map(Option::<u64>::from_redis_value)
            .transpose()
            .map_err(parse)?
            .flatten();
        let mut rows: Vec<Option<ConversationId>> = vec![None; ids.len()];
        let mut replies = replies.into_iter();
        let mut values: Vec<Vec<Option<Vec<u8>>>> = Vec::with_capacity(lookups.len());
        for _ in &lookups {
            values.push(
                replies
                    .next()
                    .map(Vec::from_redis_value)
                    .transpose()
                    .map_err(parse)?
                    .unwrap_or_default(),
            );
        }
        let value = |(g, f): (usize, usize)| {
            values
                .get(g)
                .and_then(|v| v.get(f))
                .and_then(|v| v.as_deref())
        };
        for (i, place) in places.iter().enumerate() {
            let Some(place) = place else { continue };
            for (own, bucket) in place {
                rows[i] = match value(*own) {
                    Some(b) => {
                        Some(ConversationId::from_slice(b).map_err(|_| corrupt("id index"))?)
                    }
                    None => value(*bucket).and_then(|r| keys::find_id_record(r, &ids[i])),
                };
                if rows[i].is_some() {
                    break;
                }
            }
        }
        for i in &plain {
            let v: Option<String> = replies
                .next()
                .map(Option::<String>::from_redis_value)
                .transpose()
                .map_err(parse)?
                .flatten();
            rows[*i] = v.map(|c| parse_uuid(&c)).transpose()?;
        }
        let new_after = self.new_id_horizon(ids, &rows, since).await?;
        // Misses (new ids, or expired entries) are looked up in Scylla
        // concurrently: a registration of a batch of new messages misses on
        // every one of them, unless Redis can tell they are new.
        let lookups = ids.iter().zip(rows).map(|(m, row)| async move {
            if row.is_some() {
                return Ok(row);
            }
            if known_new(m, new_after) {
                return Ok(None);
            }
            let Some(msg) = self.scylla.message(*m).await? else {
                return Ok(None);
            };
            self.write_homes(&[(*m, msg.conversation)], |_| true)
                .await?;
            Ok(Some(msg.conversation))
        });
        futures::future::try_join_all(lookups).await
    }

    /// Makes `(message, conversation)` pairs findable by [`Self::homes`].
    /// UUIDv7 ids of one millisecond, [`keys::ID_BUCKET_MIN`] or more, are
    /// records of that millisecond's bucket field ([`scripts::INDEX_APPEND`],
    /// up to [`keys::MESSAGE_BUCKET_MAX_BYTES`]: one key, one field, for a
    /// batch minted in a loop); the others go by [`Self::home_cmds`], and
    /// so does every id for which `replaces` holds. A lookup reads an id's
    /// own field before its bucket, and a bucket keeps the first record of
    /// an id, so an id the index already places (an entry left by a
    /// registration that never committed) must be replaced through its own
    /// field: the caller says which.
    pub(super) async fn write_homes(
        &self,
        pairs: &[(MessageId, ConversationId)],
        replaces: impl Fn(&MessageId) -> bool,
    ) -> StoreResult<()> {
        let mut by_ms: BTreeMap<u64, Vec<(MessageId, ConversationId)>> = BTreeMap::new();
        let mut own = Vec::new();
        for (m, c) in pairs {
            match v7_millis(m).filter(|_| !replaces(m)) {
                Some(ms) => by_ms.entry(ms).or_default().push((*m, *c)),
                None => own.push((*m, *c)),
            }
        }
        let ttl_ms = self.ttl().saturating_mul(1000);
        let now = crate::domain::now_millis().max(0) as u64;
        let mut appends = Vec::new();
        for (ms, in_ms) in by_ms {
            if in_ms.len() < keys::ID_BUCKET_MIN {
                own.extend(in_ms);
                continue;
            }
            let (secs, shard) = keys::id_index_slot(ms);
            let mut inv = scripts::INDEX_APPEND.prepare_invoke();
            inv.key(self.keys.id_index(secs, shard))
                .arg(id_index_expiry(secs, now, ttl_ms))
                .arg(keys::MESSAGE_BUCKET_MAX_BYTES)
                .arg(keys::message_bucket(&in_ms[0].0))
                .arg(
                    in_ms
                        .iter()
                        .flat_map(|(m, c)| keys::id_record(m, c))
                        .collect::<Vec<u8>>(),
                );
            appends.push((inv, in_ms));
        }
        let kept = futures::future::try_join_all(appends.iter().map(|(inv, _)| {
            let mut conn = self.conn();
            async move { inv.invoke_async::<i64>(&mut conn).await }
        }))
        .await
        .map_err(redis_err)?;
        for ((_, in_ms), kept) in appends.into_iter().zip(kept) {
            if kept == 0 {
                own.extend(in_ms);
            }
        }
        let mut p = redis::pipe();
        for cmd in self.home_cmds(&own) {
            p.add_command(cmd).ignore();
        }
        self.pipe::<()>(&p).await
    }

    /// The writes that make `(message, conversation)` pairs findable by
    /// [`Self::homes`] a field each: for UUIDv7 ids, one HSET and one
    /// PEXPIREAT per id index key; for others, a home key each.
    ///
    /// An index key lives until the later of its second plus the hot TTL and
    /// now plus the hot TTL (plus [`CLOCK_SKEW_MS`]), so every entry outlives
    /// both its id's minting and its registration by the TTL: what
    /// [`Self::new_id_horizon`] relies on.
    fn home_cmds(&self, pairs: &[(MessageId, ConversationId)]) -> Vec<Cmd> {
        let ids: Vec<MessageId> = pairs.iter().map(|(m, _)| *m).collect();
        let (groups, plain) = self.keys.id_index_groups(&ids);
        let ttl_ms = self.ttl().saturating_mul(1000);
        let now = crate::domain::now_millis().max(0) as u64;
        let mut out = Vec::with_capacity(groups.len() * 2 + plain.len());
        for (key, at) in groups {
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            let mut second = 0;
            for i in at {
                let (m, c) = &pairs[i];
                second = v7_millis(m).unwrap_or(0) / 1000;
                hset.arg(m.as_bytes().as_slice())
                    .arg(c.as_bytes().as_slice());
            }
            let mut expire = redis::cmd("PEXPIREAT");
            expire.arg(&key).arg(id_index_expiry(second, now, ttl_ms));
            out.push(hset);
            out.push(expire);
        }
        for i in plain {
            let (m, c) = &pairs[i];
            let mut set = redis::cmd("SET");
            set.arg(self.keys.message_home(m))
                .arg(hex(c))
                .arg("EX")
                .arg(self.ttl());
            out.push(set);
        }
        out
    }
}
