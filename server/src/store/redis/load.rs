//! Reading facts: a conversation's view at one version, loaded (and
//! re-warmed from Scylla) as far as a call needs it.

use super::*;

/// Sharing settings read from Scylla at once when Redis has none of them
/// (see [`Inner::sharing_of`]).
const SHARING_READS_IN_FLIGHT: usize = 64;

pub(super) use super::view::{PrefixFacts, View};

/// A view from the meta hash's fields (all of them, or those a group write
/// reads), watermarks included (`w:<member>`).
pub(super) fn parse_view(c: &ConversationId, meta: HashMap<String, Vec<u8>>) -> StoreResult<View> {
    let num = |f: &str| -> StoreResult<u64> {
        meta.get(f)
            .map(|b| {
                std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .map(|v| v.max(0) as u64)
                    .ok_or_else(|| corrupt("meta number"))
            })
            .transpose()
            .map(|v| v.unwrap_or(0))
    };
    let mut members = BTreeMap::new();
    let mut watermarks = HashMap::new();
    for (f, v) in &meta {
        if let Some(u) = f.strip_prefix("m:") {
            members.insert(parse_uuid(u)?, dec(v, "membership")?);
        } else if let Some(u) = f.strip_prefix("w:") {
            let v = std::str::from_utf8(v).map_err(|_| corrupt("watermark"))?;
            watermarks.insert(parse_uuid(u)?, parse_watermark(v)?);
        }
    }
    Ok(View {
        mver: num("mv")?,
        stamp: num("t")? as Millis,
        count: num("n")?,
        members,
        wms: watermarks,
        has_threads: meta.contains_key("th"),
        seq_form: seqs::SeqForm::of(meta.get("sb").map(Vec::as_slice)),
        ..View::bare(*c, num("v")?)
    })
}

fn parse_err(e: redis::ParsingError) -> ServiceError {
    redis_err(e.into())
}

/// The next part of a script's reply.
fn next_part<T: FromRedisValue>(it: &mut impl Iterator<Item = Value>) -> StoreResult<T> {
    T::from_redis_value(it.next().ok_or_else(|| corrupt("view reply"))?).map_err(parse_err)
}

/// The view in a [`scripts::VIEW`] reply (its first two parts, taken from
/// `it`) for a write by `u`; `None` when the conversation is not in Redis.
pub(super) fn parse_view_reply(
    c: &ConversationId,
    u: &UserId,
    it: &mut impl Iterator<Item = Value>,
) -> StoreResult<Option<View>> {
    let kind = it
        .next()
        .map(i64::from_redis_value)
        .transpose()
        .map_err(parse_err)?;
    if kind == Some(0) {
        return Ok(None);
    }
    match (kind, it.next()) {
        (Some(1), Some(meta)) => Ok(Some(parse_view(
            c,
            HashMap::from_redis_value(meta).map_err(parse_err)?,
        )?)),
        (Some(2), Some(fields)) => {
            let values: Vec<Option<Vec<u8>>> = Vec::from_redis_value(fields).map_err(parse_err)?;
            let mut meta = HashMap::new();
            let member = format!("m:{}", hex(u));
            let names = [
                "v".to_string(),
                "mv".into(),
                "t".into(),
                "n".into(),
                member,
                "th".into(),
                keys::watermark_field(u),
                "sb".into(),
            ];
            for (f, v) in names.into_iter().zip(values) {
                if let Some(v) = v {
                    meta.insert(f, v);
                }
            }
            Ok(Some(parse_view(c, meta)?))
        }
        _ => Err(corrupt("view reply")),
    }
}

/// The commands that write [`keys::message_writes`] into `c`'s messages
/// hash: an `HSET` of the messages alone in their bucket, and an `HAPPEND`
/// (a command of the commit script, [`scripts::APPLY`]: appends to a hash
/// field) of each bucket's records.
pub(super) fn message_cmds(
    k: &Keys,
    c: &ConversationId,
    keys::MessageWrites { own, appends }: keys::MessageWrites,
) -> Vec<Vec<Vec<u8>>> {
    let mut cmds = Vec::new();
    for (name, pairs) in [("HSET", own), ("HAPPEND", appends)] {
        if pairs.is_empty() {
            continue;
        }
        let mut cmd = rcmd![name, k.messages(c)];
        for (field, value) in pairs {
            cmd.push(field);
            cmd.push(value);
        }
        cmds.push(cmd);
    }
    cmds
}

/// How many of `after` (the messages after a position, in the seq index
/// or a thread's) of one timeline (`thread`: its root's seq, `None` for the
/// main one) are unread by `u`: those others sent while `membership` covered
/// them.
pub(super) fn count_unread(
    after: &[Indexed],
    u: &UserId,
    membership: &Membership,
    thread: Option<Seq>,
) -> u64 {
    after
        .iter()
        .filter(|m| m.thread == thread && membership.receives(*u, m.sender, m.seq))
        .count() as u64
}

/// A watermark as the meta hash keeps it (`w:<member>`): `seq:public_seq`.
pub(super) fn parse_watermark(v: &str) -> StoreResult<ReadWatermark> {
    let (s, p) = v.split_once(':').ok_or_else(|| corrupt("watermark"))?;
    Ok(ReadWatermark {
        seq: s.parse().map_err(|_| corrupt("watermark"))?,
        public_seq: p.parse().map_err(|_| corrupt("watermark"))?,
    })
}

impl Inner {
    /// The conversation's meta and watermarks, re-warmed from Scylla on a
    /// miss. `None`: no such conversation.
    pub(super) async fn view(&self, c: &ConversationId) -> StoreResult<Option<View>> {
        for _ in 0..3 {
            let meta: HashMap<String, Vec<u8>> = self
                .query(redis::cmd("HGETALL").arg(self.keys.meta(c)))
                .await?;
            if meta.contains_key("n") {
                let view = parse_view(c, meta)?;
                if view.seq_form == seqs::SeqForm::Legacy {
                    self.pack_seq_index(&view).await?;
                    continue;
                }
                return Ok(Some(view));
            }
            if !self.rewarm(c).await? {
                return Ok(None);
            }
        }
        Err(ServiceError::unavailable(format!(
            "conversation {c} could not be loaded into redis"
        )))
    }

    /// Serializes this node's writes to the conversations `cs` (every
    /// conversation write path holds it from its first read to its commit).
    ///
    /// Correctness does not depend on it: the version check in
    /// [`scripts::APPLY`] still decides, and nodes still race each other.
    /// It is about cost. Without it, N concurrent writes to one
    /// conversation on one node (a 500-member group's members all marking
    /// the same batch delivered) make N − 1 of them fail the version
    /// check, re-read and retry: O(N²) reads and commits instead of O(N).
    /// The locks are striped by conversation id and taken in stripe order,
    /// so holding several cannot deadlock.
    pub(super) async fn lock<'a>(
        &'a self,
        cs: impl IntoIterator<Item = &'a ConversationId>,
    ) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
        let mut stripes: Vec<usize> = cs
            .into_iter()
            .map(|c| (c.as_u128() % WRITE_STRIPES as u128) as usize)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }

    /// What a write by `u` needs of `c`, in one round trip. A direct
    /// conversation's view is whole (its events carry whole states). A
    /// group's holds only `u`'s membership and watermark, with the
    /// conversation's version, stamp and member count: a group write by one
    /// member decides from that member's data alone and leaves the counting
    /// to the window, so it reads O(1) data however large the group.
    pub(super) async fn view_for(
        &self,
        c: &ConversationId,
        u: &UserId,
    ) -> StoreResult<Option<View>> {
        let inv = self.view_invocation(&scripts::VIEW, c, u);
        match self.view_script(&inv, c, u).await? {
            Some((view, _)) => Ok(Some(view)),
            None => self.view(c).await,
        }
    }

    /// `script`, whose reply starts with [`scripts::VIEW`]'s, for a write by
    /// `u` to `c`: with `VIEW`'s keys and arguments, to which the caller
    /// adds its own.
    fn view_invocation<'a>(
        &self,
        script: &'a redis::Script,
        c: &ConversationId,
        u: &UserId,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        let small = self
            .small_views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(c);
        inv.key(self.keys.meta(c)).arg(hex(u)).arg(if small {
            format!("{DIRECT_MEMBERS}+")
        } else {
            DIRECT_MEMBERS.to_string()
        });
        match self.conn {
            Conn::Single(_) => {
                let (before, after) = self.keys.sharing_around_id();
                inv.arg(before).arg(after);
            }
            Conn::Cluster(_) => {
                inv.arg("").arg("");
            }
        }
        inv
    }

    /// The sharing settings a view script read beside the view
    /// (`sharing_of` in [`scripts::VIEW_OF`]), into `view`: the settings the
    /// write then reads are those of the version it commits at. A user whose
    /// setting is not in Redis is left out; [`Self::ensure_sharing`]
    /// re-warms it.
    fn take_sharing(view: &mut View, it: &mut impl Iterator<Item = Value>) -> StoreResult<()> {
        let users: Vec<String> = next_part(it)?;
        let values: Vec<Option<String>> = next_part(it)?;
        for (u, sv) in users.iter().zip(values.chunks(2)) {
            if let [Some(s), Some(_)] = sv {
                view.sharing.insert(parse_uuid(u)?, s == "1");
            }
        }
        Ok(())
    }

    /// Runs a [`Self::view_invocation`]: the view and the rest of the
    /// reply, or `None` when Redis does not hold the conversation.
    async fn view_script(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        c: &ConversationId,
        u: &UserId,
    ) -> StoreResult<Option<(View, std::vec::IntoIter<Value>)>> {
        for _ in 0..3 {
            let reply: Vec<Value> = inv
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_err)?;
            let mut it = reply.into_iter();
            match parse_view_reply(c, u, &mut it)? {
                Some(view) if view.seq_form == seqs::SeqForm::Legacy => {
                    self.pack_seq_index(&view).await?;
                }
                view => {
                    if let Some(view) = &view {
                        self.note_view_size(c, view.count);
                    }
                    return Ok(view.map(|view| (view, it)));
                }
            }
        }
        Err(ServiceError::unavailable(format!(
            "conversation {c} could not be loaded into redis"
        )))
    }

    /// Remembers whether `c`'s views are whole (at most [`DIRECT_MEMBERS`]
    /// members), for the next view's hint ([`Inner::small_views`]).
    fn note_view_size(&self, c: &ConversationId, count: u64) {
        let mut small = self.small_views.lock().unwrap_or_else(|e| e.into_inner());
        if count > DIRECT_MEMBERS {
            small.remove(c);
        } else if !small.contains(c) {
            if small.len() >= SMALL_VIEWS_MAX {
                small.clear();
            }
            small.insert(*c);
        }
    }

    /// Loads a conversation from Scylla into Redis. `false`: Scylla has none.
    pub(super) async fn rewarm(&self, c: &ConversationId) -> StoreResult<bool> {
        let Some(img) = self.scylla.conversation(*c).await? else {
            return Ok(false);
        };
        tracing::debug!(conversation = %c, messages = img.messages.len(), "re-warming from scylla");
        let k = &self.keys;
        let mut plan = Plan::default();
        let count = img.members.iter().filter(|(_, m)| m.is_current()).count() as u64;
        let mut meta = rcmd!["HSET", k.meta(c), "n", count, "mv", img.version, "t", 0i64];
        // Every member goes in the member list below, unless there are few
        // enough to page from the meta hash (`keys::UNLISTED_MAX`).
        let listed = img.members.len() > keys::UNLISTED_MAX;
        if listed {
            meta.extend(rcmd!["ml", 1u64]);
        }
        for (u, m) in &img.members {
            meta.extend(rcmd![format!("m:{}", hex(u)), enc(m)]);
        }
        let wms: HashMap<UserId, ReadWatermark> = img.watermarks.iter().copied().collect();
        for (u, wm) in &wms {
            meta.extend(rcmd![
                keys::watermark_field(u),
                format!("{}:{}", wm.seq, wm.public_seq)
            ]);
        }
        plan.cmds.push(meta);
        // Prefixes start again from the watermarks, and the gapped set is
        // built again by the first count (the meta hash has no `dp`): an
        // entry left from before the keys expired may claim more than the
        // facts read back.
        plan.cmds.push(rcmd!["DEL", k.prefixes(c)]);
        plan.cmds.push(rcmd!["DEL", k.gapped(c)]);
        let users: Vec<UserId> = img.members.iter().map(|(u, _)| *u).collect();
        let sharing = self.sharing_of(&users).await?;
        for ((u, m), (shares, _)) in img.members.iter().zip(sharing) {
            let wm = wms.get(u).copied().unwrap_or_default();
            plan.cmds
                .extend(index_member(k, c, u, m, wm, shares, listed));
        }
        for chunk in img.history.chunks(200) {
            let mut z = rcmd!["ZADD", k.history(c)];
            for (u, public, seq, at) in chunk {
                z.extend(rcmd![0, keys::history_entry(u, *public, *seq, *at)]);
            }
            plan.cmds.push(z);
        }
        let threads: HashMap<Seq, ThreadRoot> = img.threads.iter().copied().collect();
        // The seq index is written whole (an index left from before, which
        // may outlive the meta hash by a refresh interval, deleted first),
        // in the form its size calls for.
        plan.cmds.push(rcmd!["DEL", k.legacy_seqs(c)]);
        let with_threads: Vec<(Message, Option<ThreadRoot>)> = img
            .messages
            .iter()
            .map(|m| (*m, threads.get(&m.seq).copied()))
            .collect();
        let (fill, form) = seqs::fill_cmds(k, c, seqs::entries(&with_threads, true));
        plan.cmds.extend(fill);
        // A messages hash left from before (it may outlive the meta hash by
        // a refresh interval) would have its buckets appended to twice; a
        // timed index holds what it would (`seqs::SeqForm::Timed`).
        plan.cmds.push(rcmd!["DEL", k.messages(c)]);
        if form != seqs::SeqForm::Timed {
            plan.cmds.extend(message_cmds(
                k,
                c,
                keys::message_writes(&with_threads, |_| 0),
            ));
        }
        // Threads: the thread index, the positions, their histories, and the
        // meta hash's mark that the conversation has threads.
        let by_seq: HashMap<Seq, &Message> = img.messages.iter().map(|m| (m.seq, m)).collect();
        for chunk in img.threads.chunks(200) {
            let mut z = rcmd!["ZADD", k.thread_messages(c)];
            for (seq, root) in chunk {
                if let Some(m) = by_seq.get(seq) {
                    z.extend(rcmd![
                        0,
                        keys::thread_member(root.seq, *seq, &m.id, &m.sender)
                    ]);
                }
            }
            plan.cmds.push(z);
        }
        if !img.threads.is_empty() {
            plan.cmds.push(rcmd!["HSET", k.meta(c), "th", 1u64]);
        }
        for chunk in img.thread_watermarks.chunks(200) {
            let mut h = rcmd!["HSET", k.thread_positions(c)];
            for (root, u, wm) in chunk {
                h.extend(rcmd![
                    super::threads::thread_position_field(u, *root),
                    format!("{}:{}", wm.seq, wm.public_seq)
                ]);
            }
            plan.cmds.push(h);
        }
        for chunk in img.thread_history.chunks(200) {
            let mut z = rcmd!["ZADD", k.history(c)];
            for (root, u, public, seq, at) in chunk {
                z.extend(rcmd![
                    0,
                    keys::thread_history_entry(u, *public, *root, *seq, *at)
                ]);
            }
            plan.cmds.push(z);
        }
        // The commit script gives every key of the conversation its expiry.
        // Only if still absent (version 0): a concurrent re-warm or write wins.
        match self
            .apply(c, 0, Registration::None, plan.cmds, 0, &[])
            .await?
        {
            Applied::Done { .. } | Applied::Conflict => Ok(true),
            Applied::LeaseExpired => Ok(true),
        }
    }

    pub(super) async fn ensure_sharing(
        &self,
        view: &mut View,
        users: &[UserId],
    ) -> StoreResult<()> {
        let missing = absent(users, &view.sharing);
        if missing.is_empty() {
            return Ok(());
        }
        let values = self.sharing_of(&missing).await?;
        for (u, s) in missing.into_iter().zip(values) {
            view.sharing.insert(u, s.0);
        }
        Ok(())
    }

    /// (sharing, version) per user; re-warmed from Scylla on a miss.
    pub(super) async fn sharing_of(&self, users: &[UserId]) -> StoreResult<Vec<(bool, u64)>> {
        let mut p = redis::pipe();
        for u in users {
            p.cmd("HMGET").arg(self.keys.sharing(u)).arg("s").arg("v");
        }
        let rows: Vec<(Option<String>, Option<u64>)> = self.pipe(&p).await?;
        // Those Redis does not have come from Scylla, concurrently (a new
        // group of 10,000 users would otherwise wait for 10,000 reads one
        // after the other), and are cached in one pipeline.
        let missing: Vec<UserId> = users
            .iter()
            .zip(&rows)
            .filter(|(_, row)| !matches!(row, (Some(_), Some(_))))
            .map(|(u, _)| *u)
            .collect();
        let mut persisted: Vec<Option<(bool, u64)>> = Vec::with_capacity(missing.len());
        for chunk in missing.chunks(SHARING_READS_IN_FLIGHT) {
            let reads = chunk.iter().map(|u| self.scylla.sharing(*u));
            persisted.extend(futures::future::try_join_all(reads).await?);
        }
        let mut fetched: HashMap<UserId, (bool, u64)> = HashMap::with_capacity(missing.len());
        let mut p = redis::pipe();
        for (u, persisted) in missing.iter().zip(persisted) {
            let (s, v) = persisted.unwrap_or((true, 0));
            // Re-warm only if still absent; a concurrent change wins.
            // "Never set" is cached too (the default at version 0), so that
            // a user who never changed the setting is not asked of Scylla on
            // every call, nor during its outage.
            p.cmd("HSETNX")
                .arg(self.keys.sharing(u))
                .arg("v")
                .arg(v)
                .ignore()
                .cmd("HSETNX")
                .arg(self.keys.sharing(u))
                .arg("s")
                .arg(if s { "1" } else { "0" })
                .ignore()
                .cmd("EXPIRE")
                .arg(self.keys.sharing(u))
                .arg(self.ttl())
                .ignore();
            fetched.insert(*u, (s, v));
        }
        if !missing.is_empty() {
            self.pipe::<()>(&p).await?;
        }
        let mut out = Vec::with_capacity(users.len());
        for (u, row) in users.iter().zip(rows) {
            match row {
                (Some(s), Some(v)) => out.push((s == "1", v)),
                _ => out.push(fetched[u]),
            }
        }
        Ok(out)
    }

    /// Loads messages by id (they must belong to `view`'s conversation).
    pub(super) async fn ensure_messages(
        &self,
        view: &mut View,
        ids: &[MessageId],
    ) -> StoreResult<()> {
        let missing = absent(ids, &view.messages);
        if missing.is_empty() {
            return Ok(());
        }
        // A timed index is the messages hash (`seqs::SeqForm::Timed`): the
        // script reads the form again, in the step that reads the values.
        let (rows, buckets) = match view.seq_form {
            seqs::SeqForm::Timed => (self.message_values(&view.c, &missing).await?, Vec::new()),
            _ => self.message_lookup(&view.c, &missing).await?,
        };
        for (id, row) in missing.iter().zip(rows) {
            let Some(row) = row else { continue };
            view.put_message(id, &row)?;
        }
        view.bucket_bytes.extend(buckets);
        Ok(())
    }

    /// The messages-hash values of `ids` (`None` where absent), each from
    /// its own field or its bucket's (`keys::message_writes`), or from the
    /// seq index's records where it is timed: one call of
    /// [`scripts::MESSAGES`].
    pub(super) async fn message_values(
        &self,
        c: &ConversationId,
        ids: &[MessageId],
    ) -> StoreResult<Vec<Option<Vec<u8>>>> {
        let mut inv = scripts::MESSAGES.prepare_invoke();
        inv.key(self.keys.meta(c))
            .key(self.keys.messages(c))
            .key(self.keys.seq_buckets(c));
        for m in ids {
            inv.arg(m.as_bytes().as_slice());
        }
        inv.invoke_async(&mut self.conn()).await.map_err(redis_err)
    }

    /// [`Self::message_values`], and the bytes each bucket field read holds.
    async fn message_lookup(
        &self,
        c: &ConversationId,
        ids: &[MessageId],
    ) -> StoreResult<(Vec<Option<Vec<u8>>>, Vec<(Vec<u8>, usize)>)> {
        let mut buckets: Vec<&[u8]> = ids.iter().map(keys::message_bucket).collect();
        buckets.sort_unstable();
        buckets.dedup();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.messages(c));
        for m in ids {
            cmd.arg(m.as_bytes().as_slice());
        }
        for b in &buckets {
            cmd.arg(*b);
        }
        let mut rows: Vec<Option<Vec<u8>>> = self.query(&cmd).await?;
        let records: HashMap<&[u8], Vec<u8>> = buckets
            .iter()
            .zip(rows.drain(ids.len()..))
            .filter_map(|(b, v)| Some((*b, v?)))
            .collect();
        let values = ids
            .iter()
            .zip(rows)
            .map(|(m, own)| {
                own.or_else(|| {
                    let bucket = records.get(keys::message_bucket(m))?;
                    keys::find_in_bucket(bucket, m).map(<[u8]>::to_vec)
                })
            })
            .collect();
        let sizes = buckets
            .iter()
            .map(|b| (b.to_vec(), records.get(b).map_or(0, Vec::len)))
            .collect();
        Ok((values, sizes))
    }

    /// Loads every member's delivery runs at the seqs of `ids` (the
    /// messages loaded first).
    pub(super) async fn ensure_deliveries(
        &self,
        view: &mut View,
        ids: &[MessageId],
    ) -> StoreResult<()> {
        self.ensure_messages(view, ids).await?;
        let seqs: Vec<Seq> = ids
            .iter()
            .filter_map(|m| view.messages.get(m).map(|m| m.seq))
            .collect();
        let members: Vec<UserId> = view.members.keys().copied().collect();
        self.ensure_runs_at(view, &members, seqs).await
    }

    /// `c`'s view for a write by `u` with `msgs` loaded; names the first
    /// message that is not there.
    pub(super) async fn delivery_view(
        &self,
        c: &ConversationId,
        u: &UserId,
        named: &[Named],
    ) -> StoreResult<View> {
        let by_name = named.iter().any(|n| n.conversation.is_some());
        let Some(mut view) = self.delivery_facts(c, u, named).await? else {
            return Err(match by_name {
                true => ServiceError::not_found(CONVERSATION_FIELD, "conversation", c),
                false => named[0].not_found(),
            });
        };
        // A conversation named by the caller is authorized before its
        // messages are looked at, so that a non-member learns nothing of
        // which messages it holds.
        if by_name {
            view.authorize(u, CONVERSATION_FIELD)?;
        }
        let msgs: Vec<MessageId> = named.iter().map(|n| n.id).collect();
        self.ensure_messages(&mut view, &msgs).await?;
        if let Some(n) = named.iter().find(|n| !view.messages.contains_key(&n.id)) {
            return Err(n.not_found());
        }
        Ok(view)
    }

    /// [`Self::view_for`] with the named messages and the delivery runs at
    /// their seqs loaded, in one round trip ([`scripts::DELIVERY_VIEW`]):
    /// every member's runs in a direct conversation, `u`'s alone in a group,
    /// as MarkDelivered reads them. When Redis does not hold the
    /// conversation or its runs, what it lacks is re-warmed and loaded as
    /// before, one step at a time.
    async fn delivery_facts(
        &self,
        c: &ConversationId,
        u: &UserId,
        named: &[Named],
    ) -> StoreResult<Option<View>> {
        let mut inv = self.view_invocation(&scripts::DELIVERY_VIEW, c, u);
        inv.key(self.keys.messages(c))
            .key(self.keys.runs(c))
            .key(self.keys.prefixes(c))
            .key(self.keys.seq_buckets(c))
            .arg(runs::BUCKET);
        for n in named {
            inv.arg(n.id.as_bytes().as_slice());
        }
        let Some((mut view, mut it)) = self.view_script(&inv, c, u).await? else {
            return self.view(c).await;
        };
        let values: Vec<Option<Vec<u8>>> = next_part(&mut it)?;
        Self::take_runs(&mut view, &mut it)?;
        Self::take_sharing(&mut view, &mut it)?;
        let (prefix, after): (Option<f64>, Vec<(Vec<u8>, f64)>) = next_part(&mut it)?;
        let prefix = seq_score(prefix);
        view.prefix = Some(PrefixFacts {
            prefix,
            after: match prefix {
                Some(d) => prefix::later(&after, d)?,
                None => Vec::new(),
            },
        });
        for (n, value) in named.iter().zip(values) {
            let Some(value) = value else { continue };
            view.put_message(&n.id, &value)?;
        }
        Ok(Some(view))
    }

    /// The delivery runs a view script read (`runs_at` in
    /// [`scripts::RUNS_AT`]: the buckets, the members, the fields), into
    /// `view`. Without the loaded marker the runs are not in Redis: they are
    /// re-warmed by the usual path when the write asks for them. A bucket the
    /// script did not read (a seq past 2^53, which Lua's numbers round) is
    /// read by that path too.
    fn take_runs(view: &mut View, it: &mut impl Iterator<Item = Value>) -> StoreResult<()> {
        let buckets: Vec<u32> = next_part(it)?;
        let members: Vec<String> = next_part(it)?;
        let mut runs: Vec<Option<Vec<u8>>> = next_part(it)?;
        if runs.first().is_some_and(Option::is_some) {
            let mut fields = runs.drain(1..);
            for member in &members {
                let member = parse_uuid(member)?;
                for b in &buckets {
                    let value = fields.next().ok_or_else(|| corrupt("runs reply"))?;
                    view.runs.insert(member, *b, value.as_deref())?;
                }
            }
        }
        Ok(())
    }

    /// [`Self::view_for`] for a read by `u` up to `message`, with that
    /// message loaded and the seq index after `u`'s lower watermark in
    /// [`View::tail`] (and, in a direct chat, the messages the read may cover
    /// and every member's delivery runs over them), in one round trip
    /// ([`scripts::READ_VIEW`]). When Redis
    /// does not hold the conversation, it is re-warmed and loaded as
    /// before.
    pub(super) async fn read_facts(
        &self,
        c: &ConversationId,
        u: &UserId,
        message: &MessageId,
    ) -> StoreResult<Option<View>> {
        let mut inv = self.view_invocation(&scripts::READ_VIEW, c, u);
        inv.key(self.keys.messages(c))
            .key(self.keys.seq_buckets(c))
            .key(self.keys.runs(c))
            .arg(message.as_bytes().as_slice())
            .arg(runs::BUCKET);
        let Some((mut view, mut it)) = self.view_script(&inv, c, u).await? else {
            return self.view(c).await;
        };
        let value: Option<Vec<u8>> = next_part(&mut it)?;
        let from: String = next_part(&mut it)?;
        let rows: Vec<(Vec<u8>, f64)> = next_part(&mut it)?;
        Self::take_sharing(&mut view, &mut it)?;
        Self::take_runs(&mut view, &mut it)?;
        let covered: Vec<Option<Vec<u8>>> = next_part(&mut it)?;
        for pair in covered.chunks(2) {
            let [Some(id), Some(value)] = pair else {
                continue;
            };
            let id = MessageId::from_slice(id).map_err(|_| corrupt("message id"))?;
            view.put_message(&id, value)?;
        }
        if let Some(value) = value {
            view.put_message(message, &value)?;
        }
        // The range starts where the watermark the view holds says it
        // should (a seq Lua's numbers would round is not trusted).
        let wm = view.wm(u);
        let after = wm.seq.min(wm.public_seq);
        if from.parse::<Seq>().ok() == Some(after) {
            let rows = seqs::parse_rows(&rows, after.saturating_add(1), Seq::MAX)?;
            view.tail = Some((after, rows));
        }
        Ok(Some(view))
    }

    /// `(seq, id, sender)` for seqs in `lo..=hi`, from the view's
    /// [`View::tail`] when it covers them, else from Redis.
    pub(super) async fn between_in(
        &self,
        view: &View,
        lo: Seq,
        hi: Seq,
    ) -> StoreResult<Vec<Indexed>> {
        if let Some((after, rows)) = &view.tail
            && lo > *after
        {
            return Ok(rows
                .iter()
                .filter(|m| (lo..=hi).contains(&m.seq))
                .copied()
                .collect());
        }
        self.between(&view.c, lo, hi).await
    }

    /// [`Self::unread`], from the view's [`View::tail`] when it covers it.
    pub(super) async fn unread_in(
        &self,
        view: &View,
        u: &UserId,
        wm: Seq,
        membership: &Membership,
    ) -> StoreResult<u64> {
        let after = self
            .between_in(view, wm.saturating_add(1), Seq::MAX)
            .await?;
        Ok(count_unread(&after, u, membership, None))
    }

    /// Loads `u`'s own delivery runs at the seqs of `ids`: one field per
    /// bucket, where [`Self::ensure_deliveries`] reads every member's.
    pub(super) async fn ensure_own_deliveries(
        &self,
        view: &mut View,
        ids: &[MessageId],
        u: &UserId,
    ) -> StoreResult<()> {
        self.ensure_messages(view, ids).await?;
        let seqs: Vec<Seq> = ids
            .iter()
            .filter_map(|m| view.messages.get(m).map(|m| m.seq))
            .collect();
        self.ensure_runs_at(view, &[*u], seqs).await
    }

    /// Loads read histories in the main timeline from `min_seq` on for
    /// `users`.
    pub(super) async fn ensure_history(
        &self,
        view: &mut View,
        users: &[UserId],
        min_seq: Seq,
    ) -> StoreResult<()> {
        self.ensure_timeline_history(view, domain::MAIN, users, min_seq)
            .await
    }

    /// Loads `users`' read histories in `timeline` from `min_seq` on (those
    /// whose position there reaches it, and not loaded yet): one
    /// `ZRANGEBYLEX` per member and kind, in one round trip.
    pub(super) async fn ensure_timeline_history(
        &self,
        view: &mut View,
        timeline: domain::Timeline,
        users: &[UserId],
        min_seq: Seq,
    ) -> StoreResult<()> {
        let main = timeline == domain::MAIN;
        // Loaded from a seq at or below `min_seq` already: nothing to read.
        let wanted: Vec<(UserId, bool, Option<Seq>)> = users
            .iter()
            .flat_map(|u| [(*u, false), (*u, true)])
            .filter_map(|(u, public)| {
                let wm = view.position(&u, timeline);
                let top = if public { wm.public_seq } else { wm.seq };
                let from = view.hist_from.get(&(timeline, u, public)).copied();
                (top >= min_seq && from.is_none_or(|f| f > min_seq)).then_some((u, public, from))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for (u, public, from) in &wanted {
            let prefix = match main {
                true => keys::history_prefix(u, *public),
                false => keys::thread_history_prefix(u, *public, timeline),
            };
            let mut lo = b"[".to_vec();
            lo.extend(&prefix);
            lo.extend_from_slice(&min_seq.to_be_bytes());
            // Every entry of this member, kind (and thread) is the prefix,
            // a seq and a time: 16 bytes, none above all ones. Below what
            // was loaded before, if anything was.
            let mut hi = b"[".to_vec();
            hi.extend(&prefix);
            match from {
                Some(f) => {
                    hi.extend_from_slice(&(f - 1).to_be_bytes());
                    hi.extend_from_slice(&[0xff; 8]);
                }
                None => hi.extend_from_slice(&[0xff; 16]),
            }
            p.cmd("ZRANGEBYLEX")
                .arg(self.keys.history(&view.c))
                .arg(lo)
                .arg(hi);
        }
        let rows: Vec<Vec<Vec<u8>>> = self.pipe(&p).await?;
        for ((u, public, _), row) in wanted.into_iter().zip(rows) {
            let entries = row
                .iter()
                .map(|e| {
                    match main {
                        true => keys::parse_history_entry(e),
                        false => keys::parse_thread_history_entry(e),
                    }
                    .ok_or_else(|| corrupt("history"))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            let held = match main {
                true => view.hist.entry((u, public)).or_default(),
                false => view.thist.entry((timeline, u, public)).or_default(),
            };
            // The part read is below everything held.
            let later = std::mem::replace(held, entries);
            held.extend(later);
            view.hist_from.insert((timeline, u, public), min_seq);
        }
        Ok(())
    }

    /// Loads everything needed to compute the states of `ids`.
    pub(super) async fn prepare_states(
        &self,
        view: &mut View,
        ids: &[MessageId],
    ) -> StoreResult<()> {
        self.ensure_messages(view, ids).await?;
        self.ensure_deliveries(view, ids).await?;
        let members: Vec<UserId> = view.members.keys().copied().collect();
        self.ensure_sharing(view, &members).await?;
        // Main-timeline messages: the main histories; a thread's message
        // needs none of them.
        let min_seq = ids
            .iter()
            .filter_map(|m| view.messages.get(m))
            .filter(|m| view.timeline(m) == domain::MAIN)
            .map(|m| m.seq)
            .min()
            .unwrap_or(Seq::MAX);
        self.ensure_history(view, &members, min_seq).await?;
        // Messages in threads: every member's position and history in each.
        let mut roots: BTreeMap<Seq, Seq> = BTreeMap::new();
        for id in ids {
            if let (Some(m), Some(root)) = (view.messages.get(id), view.threads.get(id)) {
                let low = roots.entry(root.seq).or_insert(m.seq);
                *low = (*low).min(m.seq);
            }
        }
        for (root, low) in roots {
            self.ensure_thread_reads(view, root, &members, low).await?;
        }
        Ok(())
    }

    /// A message of `c` by id: from Redis, else from Scylla. (A message's
    /// home is recorded just before its conversation commits, so a home
    /// without the message is a registration that never committed.)
    pub(super) async fn find_message(
        &self,
        c: &ConversationId,
        m: &MessageId,
    ) -> StoreResult<Option<Message>> {
        let hot = self.message_values(c, &[*m]).await?.pop().flatten();
        match hot {
            Some(b) => Ok(Some(
                keys::parse_message_value(c, m, &b).ok_or_else(|| corrupt("message"))?,
            )),
            None => self.scylla.message(*m).await,
        }
    }

    /// Every one of `ids` was loaded into `view`; else the first missing one
    /// is named (in `field`): another conversation's message, or an unknown
    /// one.
    pub(super) async fn check_found(
        &self,
        view: &View,
        ids: &[MessageId],
        field: &str,
    ) -> StoreResult<()> {
        let missing = absent(ids, &view.messages);
        if missing.is_empty() {
            return Ok(());
        }
        let homes = self.homes(&missing).await?;
        let (id, home) = (missing[0], homes[0]);
        Err(match home {
            Some(_) => ServiceError::invalid(
                field,
                format!("message {id} belongs to another conversation"),
            ),
            None => ServiceError::not_found(field, "message", id),
        })
    }

    /// Messages others sent after `wm` while `membership` covered them.
    pub(super) async fn unread(
        &self,
        c: &ConversationId,
        u: &UserId,
        wm: Seq,
        membership: &Membership,
    ) -> StoreResult<u64> {
        let after = self.between(c, wm.saturating_add(1), Seq::MAX).await?;
        Ok(count_unread(&after, u, membership, None))
    }
}
