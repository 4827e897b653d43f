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

    /// The conversation a message belongs to (re-warmed from Scylla): UUIDv7
    /// ids from the id index (one HMGET per index key), others from their
    /// home key.
    pub(super) async fn homes(
        &self,
        ids: &[MessageId],
    ) -> StoreResult<Vec<Option<ConversationId>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (groups, plain) = self.keys.id_index_groups(ids);
        let mut p = redis::pipe();
        for (key, at) in &groups {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(key);
            for i in at {
                cmd.arg(ids[*i].as_bytes().as_slice());
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
        for (_, at) in &groups {
            let values: Vec<Option<Vec<u8>>> = replies
                .next()
                .map(Vec::from_redis_value)
                .transpose()
                .map_err(parse)?
                .unwrap_or_default();
            for (i, v) in at.iter().zip(values) {
                rows[*i] = v
                    .map(|b| ConversationId::from_slice(&b).map_err(|_| corrupt("id index")))
                    .transpose()?;
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
            let mut p = redis::pipe();
            for cmd in self.home_cmds(&[(*m, msg.conversation)]) {
                p.add_command(cmd).ignore();
            }
            self.pipe::<()>(&p).await?;
            Ok(Some(msg.conversation))
        });
        futures::future::try_join_all(lookups).await
    }

    /// The writes that make `(message, conversation)` pairs findable by
    /// [`Self::homes`]: for UUIDv7 ids, one HSET and one PEXPIREAT per id
    /// index key; for others, a home key each.
    ///
    /// An index key lives until the later of its second plus the hot TTL and
    /// now plus the hot TTL (plus [`CLOCK_SKEW_MS`]), so every entry outlives
    /// both its id's minting and its registration by the TTL: what
    /// [`Self::new_id_horizon`] relies on.
    pub(super) fn home_cmds(&self, pairs: &[(MessageId, ConversationId)]) -> Vec<Cmd> {
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
