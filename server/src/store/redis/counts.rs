//! Receipt counts without a scan of the members ("Counting reads" in
//! docs/storage.md).
//!
//! A member whose membership is one open interval from seq `j` is *simple*.
//! Simple members live in sorted sets of the conversation:
//!
//! - `jz`: join seq; `jr`: join seq, only those who share read receipts;
//! - `tz`: the delivered prefix (`prefix.rs`), at least `max(true watermark,
//!   j - 1)`; `rz`: `max(public watermark, j - 1)`, only those who share
//!   read receipts;
//! - `gz`: the few whose deliveries reach past their prefix, scored by the
//!   highest seq delivered past it.
//!
//! The `j - 1` floor is what makes one `ZCOUNT` enough: a member who joined
//! after a message (`j > seq`) always scores at least `seq`, so the members
//! who had message `seq` up to their prefix are `ZCOUNT tz seq +inf - ZCOUNT
//! jz (seq +inf`, and the same with `rz` and `jr` gives the reads others may
//! see. Recipients are `ZCOUNT jz -inf seq`. The sender is taken out with
//! its own entries, and a viewer who is a recipient sees its own true read.
//! Delivered adds the gapped members whose prefix is below `seq`, whose
//! score reaches it, and whose runs cover it. Members who ever left (`cx`)
//! are few and are counted one by one with the domain rules.
//!
//! Everything here is O(log n) in group size per message, plus one read of
//! the runs of the gapped members and of the members who ever left, in the
//! messages' buckets.

use super::*;
use crate::domain::{Aggregate, RecipientState, Tick};

/// The `ZCOUNT`s of one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counted {
    /// `ZCOUNT jz -inf seq`: simple members who joined at or before it.
    pub joined_by: u64,
    /// `ZCOUNT jz (seq +inf`: simple members who joined after it.
    pub joined_after: u64,
    /// `ZCOUNT tz seq +inf`: prefixes that reach it.
    pub prefix_from: u64,
    /// `ZCOUNT rz seq +inf`.
    pub public_from: u64,
    /// `ZCOUNT jr (seq +inf`.
    pub sharing_joined_after: u64,
}

/// One user's own entries (`None`: absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Entries {
    /// Its `jz` score.
    pub join: Option<Seq>,
    /// Its `tz` score (delivered prefix).
    pub prefix: Option<Seq>,
    /// Its `rz` score.
    pub public_score: Option<Seq>,
    /// Its true watermark (the meta hash's `w:` field).
    pub read_up_to: Seq,
}

impl Entries {
    /// A simple member who is a recipient of (member at) `seq`.
    fn member_at(&self, seq: Seq) -> bool {
        self.join.is_some_and(|j| j <= seq)
    }

    fn had(&self, seq: Seq) -> bool {
        self.prefix.is_some_and(|t| t >= seq)
    }

    fn read(&self, seq: Seq) -> bool {
        self.read_up_to >= seq
    }

    fn public_read(&self, seq: Seq) -> bool {
        self.public_score.is_some_and(|r| r >= seq)
    }
}

/// Counts among simple recipients: (total, had it up to their prefix, read
/// as `viewer` sees it). Delivered is the second plus the gapped members
/// whose runs cover the message past their prefix, which the caller counts.
pub(super) fn simple_counts(
    seq: Seq,
    n: Counted,
    sender: Entries,
    viewer: Option<Entries>,
) -> (u64, u64, u64) {
    let sender_in = sender.member_at(seq);
    // The snapshot is atomic, so these never go below zero; saturating keeps
    // a damaged index from panicking a node.
    let total = n.joined_by.saturating_sub(u64::from(sender_in));
    let had = (n.prefix_from.saturating_sub(n.joined_after))
        .saturating_sub(u64::from(sender_in && sender.had(seq)));
    let mut public = (n.public_from.saturating_sub(n.sharing_joined_after))
        .saturating_sub(u64::from(sender_in && sender.public_read(seq)));
    if let Some(v) = viewer.filter(|v| v.member_at(seq)) {
        public = public.saturating_sub(u64::from(v.public_read(seq))) + u64::from(v.read(seq));
    }
    (total, had, public)
}

/// A gapped member as a count reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Gapped {
    pub user: UserId,
    /// Its `gz` score: nothing past it is delivered.
    pub beyond: Seq,
    /// Its prefix (`None`: no longer simple).
    pub prefix: Option<Seq>,
}

impl Gapped {
    /// Whether it has `seq` (not its own) past its prefix: `covered` tells
    /// whether one of its runs covers it.
    fn has_past_prefix(&self, seq: Seq, covered: impl Fn() -> bool) -> bool {
        self.prefix
            .is_some_and(|p| domain::delivered_past_prefix(p, self.beyond, seq, covered))
    }

    /// Its prefix reached its score: it no longer belongs in the set.
    fn covered(&self) -> bool {
        self.prefix.is_some_and(|p| p >= self.beyond)
    }
}

/// What is needed of a member who ever left.
pub(super) struct Complex {
    pub user: UserId,
    pub membership: Membership,
    pub wm: ReadWatermark,
    pub sharing: bool,
}

/// Counts among complex recipients: (total, delivered, read as `viewer`
/// sees it), by the domain rules.
pub(super) fn complex_counts(
    m: &Message,
    viewer: &UserId,
    complex: &[Complex],
    deliveries: &HashMap<UserId, Millis>,
) -> (u64, u64, u64) {
    let (mut total, mut delivered, mut read) = (0, 0, 0);
    for c in complex {
        if !c.membership.receives(c.user, m.sender, m.seq) {
            continue;
        }
        // Counts need no times: any value stands for "some time".
        let facts = RecipientFacts {
            delivered_at: deliveries.get(&c.user).copied(),
            read_at: (c.wm.seq >= m.seq).then_some(0),
            public_read_at: (c.wm.public_seq >= m.seq).then_some(0),
            sharing: c.sharing,
        };
        let v = domain::recipient_view(*viewer, c.user, facts);
        total += 1;
        delivered += u64::from(v.state != RecipientState::None);
        read += u64::from(v.state == RecipientState::Read);
    }
    (total, delivered, read)
}

/// A completion time cached in the receipt hash (`ad` / `ar`), valid while
/// the membership version is the one it was computed at: once every
/// recipient has (publicly read) a message, each of their first times is
/// fixed, so only a change of recipients can change the last of them.
/// Privacy toggles cannot: they hide reads but never change when the public
/// ones were made, and reads made while private never count for others.
///
/// The cache holds one field per kind and bucket of seqs
/// ([`keys::COMPLETION_BUCKET`]): the tag and `#`, then a
/// [`keys::completion_entry`] per message. A field with another tag is
/// stale as a whole.
fn cached(value: Option<&Vec<u8>>, tag: &str, m: &Message) -> Option<Millis> {
    let offset = m.seq % keys::COMPLETION_BUCKET;
    keys::completion_entries(value?, tag)?
        .into_iter()
        .find(|(o, _)| *o == offset)
        .map(|(_, d)| m.sent_at.saturating_add(d))
}

/// The cache field of `m` for completion `kind` (`d` or `r`).
fn cache_field(kind: char, m: &Message) -> String {
    format!("{kind}:{}", m.seq / keys::COMPLETION_BUCKET)
}

/// `m`'s entry in its cache field (`None`: too far from the send to
/// cache).
fn cache_entry(m: &Message, at: Millis) -> Option<Vec<u8>> {
    keys::completion_entry(
        m.seq % keys::COMPLETION_BUCKET,
        at.saturating_sub(m.sent_at),
    )
}

fn score(v: &Value) -> StoreResult<Option<Seq>> {
    let s: Option<f64> = redis::from_redis_value_ref(v).map_err(|e| redis_err(e.into()))?;
    Ok(s.map(|s| s.max(0.0) as Seq))
}

fn list(v: &Value) -> StoreResult<&[Value]> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(corrupt("count reply")),
    }
}

fn get<T: redis::FromRedisValue>(v: Option<&Value>) -> StoreResult<T> {
    redis::from_redis_value_ref(v.ok_or_else(|| corrupt("count reply"))?)
        .map_err(|e| redis_err(e.into()))
}

impl Inner {
    /// [`Self::aggregates`] for messages loaded in `loaded` (whose threads it
    /// knows). A thread's messages are not in the counting indexes (which
    /// hold main-timeline positions): they are counted from every member's
    /// position in the thread, O(members) per thread (docs/storage.md,
    /// "Threads"). `covered` gets the gapped members the count found
    /// covered (see [`Self::aggregates`]).
    pub(super) async fn counts_in(
        &self,
        loaded: &View,
        viewer: Option<UserId>,
        msgs: &[Message],
        covered: &mut BTreeSet<UserId>,
    ) -> StoreResult<Vec<Aggregate>> {
        let c = &loaded.c;
        let (in_threads, main): (Vec<&Message>, Vec<&Message>) = msgs
            .iter()
            .partition(|m| loaded.threads.contains_key(&m.id));
        if in_threads.is_empty() {
            return self.aggregates(c, viewer, msgs, covered).await;
        }
        let main: Vec<Message> = main.into_iter().copied().collect();
        let mut counted: HashMap<MessageId, Aggregate> = main
            .iter()
            .map(|m| m.id)
            .zip(self.aggregates(c, viewer, &main, covered).await?)
            .collect();
        let Some(mut view) = self.view(c).await? else {
            return Err(ServiceError::not_found(
                "conversation_id",
                "conversation",
                c,
            ));
        };
        let ids: Vec<MessageId> = in_threads.iter().map(|m| m.id).collect();
        self.prepare_states(&mut view, &ids).await?;
        for m in in_threads {
            let v = viewer.unwrap_or(m.sender);
            counted.insert(m.id, view.state(&v, m, false).aggregate);
        }
        Ok(msgs.iter().map(|m| counted[&m.id]).collect())
    }

    /// The aggregates of `msgs` (all of conversation `c`), each as `viewer`
    /// sees it, or as its sender does when `viewer` is `None`. The
    /// conversation must exist in Redis (callers loaded or re-warmed it).
    ///
    /// `covered` gets the gapped members whose prefix has reached their
    /// score (a read or a later delivery took it there): they no longer
    /// belong in `gz`. A caller that commits at the version it read before
    /// counting (the window's summary) takes them out in that commit; the
    /// others leave them for it (they cost a count a little, never a wrong
    /// number).
    pub(super) async fn aggregates(
        &self,
        c: &ConversationId,
        viewer: Option<UserId>,
        msgs: &[Message],
        covered: &mut BTreeSet<UserId>,
    ) -> StoreResult<Vec<Aggregate>> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let mut own: Vec<UserId> = msgs.iter().map(|m| m.sender).chain(viewer).collect();
        own.sort();
        own.dedup();
        let bs: Vec<u32> = msgs
            .iter()
            .map(|m| bucket(m.seq))
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        // Runs that expired are re-warmed from Scylla, and a gapped set
        // never built (keys written before it, or re-warmed) is built; then
        // everything is read again in one consistent step.
        let mut reply = self.count_snapshot(c, &own, &bs, msgs).await?;
        for _ in 0..3 {
            let top = list(&reply)?;
            if top.get(7) == Some(&Value::Int(0)) {
                self.rewarm_runs(c).await?;
            } else {
                let (_, dp, v): (Option<String>, Option<String>, Option<u64>) = get(top.first())?;
                if dp.is_some() {
                    break;
                }
                // Keys that expired since the caller looked are re-warmed
                // first: a build must not commit into a missing meta hash.
                let v = match v {
                    Some(v) => v,
                    None => match self.view(c).await? {
                        Some(view) => view.ver,
                        None => {
                            return Err(ServiceError::not_found(
                                "conversation_id",
                                "conversation",
                                c,
                            ));
                        }
                    },
                };
                self.build_gapped(c, v).await?;
            }
            reply = self.count_snapshot(c, &own, &bs, msgs).await?;
        }
        let top = list(&reply)?;
        let (mv, dp, _): (Option<String>, Option<String>, Option<u64>) = get(top.first())?;
        if dp.is_none() {
            return Err(ServiceError::unavailable(format!(
                "the counting indexes of conversation {c} could not be built (concurrent writes)"
            )));
        }
        let tag = mv.unwrap_or_default();
        let complex_ids: Vec<String> = get(top.get(1))?;
        let complex_users: Vec<UserId> = complex_ids
            .iter()
            .map(|u| parse_uuid(u))
            .collect::<StoreResult<_>>()?;
        let memberships: Vec<Option<Vec<u8>>> = get(top.get(2))?;
        let wms: Vec<Option<String>> = get(top.get(3))?;
        let own_wms: Vec<Option<String>> = get(top.get(11))?;
        let mut entries: HashMap<UserId, Entries> = HashMap::new();
        for (u, w) in own.iter().zip(own_wms) {
            let read_up_to = match w {
                Some(w) => parse_watermark(&w)?.seq,
                None => 0,
            };
            entries.insert(
                *u,
                Entries {
                    read_up_to,
                    ..Entries::default()
                },
            );
        }
        for (which, row) in top.iter().skip(4).take(3).enumerate() {
            for (u, v) in own.iter().zip(list(row)?) {
                let e = entries.get_mut(u).expect("listed");
                let s = score(v)?;
                match which {
                    0 => e.join = s,
                    1 => e.prefix = s,
                    _ => e.public_score = s,
                }
            }
        }
        // The gapped members whose score reaches the lowest seq asked
        // about, with their prefixes, and their runs and the complex
        // members' in the messages' buckets.
        let scored: Vec<(String, f64)> = get(top.get(8))?;
        let prefixes: Vec<Option<f64>> = get(top.get(9))?;
        let gapped: Vec<Gapped> = scored
            .iter()
            .zip(prefixes)
            .map(|((u, b), p)| {
                Ok(Gapped {
                    user: parse_uuid(u)?,
                    beyond: b.max(0.0) as Seq,
                    prefix: seq_score(p),
                })
            })
            .collect::<StoreResult<_>>()?;
        let values: Vec<Option<Vec<u8>>> = get(top.get(10))?;
        let mut runs = RunBuckets::default();
        let mut values = values.into_iter();
        for u in gapped.iter().map(|g| &g.user).chain(&complex_users) {
            for b in &bs {
                runs.insert(*u, *b, values.next().flatten().as_deref())?;
            }
        }
        let sharing = self.sharing_of(&complex_users).await?;
        let mut complex = Vec::new();
        for (((u, m), w), (shares, _)) in
            complex_users.iter().zip(memberships).zip(wms).zip(sharing)
        {
            let Some(m) = m else { continue };
            complex.push(Complex {
                user: *u,
                membership: dec(&m, "membership")?,
                wm: w
                    .as_deref()
                    .map(parse_watermark)
                    .transpose()?
                    .unwrap_or_default(),
                sharing: shares,
            });
        }

        let (fields, values): (Vec<String>, Vec<Option<Vec<u8>>>) = get(top.get(12))?;
        let cache: HashMap<String, Vec<u8>> = fields
            .into_iter()
            .zip(values)
            .filter_map(|(f, v)| Some((f, v?)))
            .collect();
        let mut out = Vec::with_capacity(msgs.len());
        let mut full = Vec::new();
        for (m, row) in msgs.iter().zip(top.iter().skip(13)) {
            let row = list(row)?;
            let mut n = [0u64; 5];
            for (i, slot) in n.iter_mut().enumerate() {
                *slot = get(row.get(i))?;
            }
            let counted = Counted {
                joined_by: n[0],
                joined_after: n[1],
                prefix_from: n[2],
                public_from: n[3],
                sharing_joined_after: n[4],
            };
            // Delivered past a prefix: gapped recipients whose runs cover
            // it (a run is only ever recorded for a recipient).
            let past_prefix = gapped
                .iter()
                .filter(|g| {
                    g.user != m.sender
                        && g.has_past_prefix(m.seq, || runs.covering(&g.user, m.seq).is_some())
                })
                .count() as u64;
            let deliveries: HashMap<UserId, Millis> = complex_users
                .iter()
                .filter_map(|u| runs.delivered_at(u, m.seq).map(|at| (*u, at)))
                .collect();
            let (ad, ar) = (
                cached(cache.get(&cache_field('d', m)), &tag, m),
                cached(cache.get(&cache_field('r', m)), &tag, m),
            );

            let v = viewer.unwrap_or(m.sender);
            let viewer_entries = (v != m.sender).then(|| entries[&v]);
            let (t1, d1, r1) = simple_counts(m.seq, counted, entries[&m.sender], viewer_entries);
            let (t2, d2, r2) = complex_counts(m, &v, &complex, &deliveries);
            let (total, delivered, read) = (t1 + t2, d1 + past_prefix + d2, r1 + r2);
            let all_delivered = total > 0 && delivered == total;
            let all_read = total > 0 && read == total;
            let viewer_recipient = v != m.sender
                && (viewer_entries.is_some_and(|e| e.member_at(m.seq))
                    || complex
                        .iter()
                        .any(|x| x.user == v && x.membership.receives(v, m.sender, m.seq)));
            if (all_delivered && ad.is_none()) || (all_read && (viewer_recipient || ar.is_none())) {
                full.push(out.len());
            }
            out.push(Aggregate {
                tick: Tick::of(total, delivered, read),
                delivered_count: delivered,
                read_count: read,
                recipients_total: total,
                delivered_at: ad.filter(|_| all_delivered),
                read_at: ar.filter(|_| all_read),
            });
        }
        if !full.is_empty() {
            self.complete(c, viewer, msgs, &full, &tag, &mut out)
                .await?;
        }
        covered.extend(gapped.iter().filter(|g| g.covered()).map(|g| g.user));
        Ok(out)
    }

    async fn count_snapshot(
        &self,
        c: &ConversationId,
        own: &[UserId],
        bs: &[u32],
        msgs: &[Message],
    ) -> StoreResult<Value> {
        let k = &self.keys;
        let mut inv = scripts::COUNT.prepare_invoke();
        inv.key(k.meta(c))
            .key(k.complex(c))
            .key(k.joins(c))
            .key(k.prefixes(c))
            .key(k.readers(c))
            .key(k.sharing_joins(c))
            .key(k.runs(c))
            .key(k.completions(c))
            .key(k.gapped(c));
        inv.arg(own.len());
        for u in own {
            inv.arg(hex(u));
        }
        inv.arg(bs.len());
        for b in bs {
            inv.arg(b.to_be_bytes().as_slice());
        }
        inv.arg(keys::COMPLETION_BUCKET);
        for m in msgs {
            inv.arg(m.seq);
        }
        inv.invoke_async(&mut self.conn()).await.map_err(redis_err)
    }

    /// Completion times the cache did not have: computed from the whole view
    /// (O(n), once per message and membership change), then
    /// cached. A viewer who is a recipient sees its own true read, so its
    /// `read_at` is neither taken from nor put in the cache.
    async fn complete(
        &self,
        c: &ConversationId,
        viewer: Option<UserId>,
        msgs: &[Message],
        which: &[usize],
        tag: &str,
        out: &mut [Aggregate],
    ) -> StoreResult<()> {
        let Some(mut view) = self.view(c).await? else {
            return Ok(());
        };
        let ids: Vec<MessageId> = which.iter().map(|i| msgs[*i].id).collect();
        self.prepare_states(&mut view, &ids).await?;
        let mut put = scripts::CACHE_PUT.prepare_invoke();
        put.key(self.keys.completions(c)).arg(self.ttl()).arg(tag);
        for i in which {
            let m = &msgs[*i];
            let v = viewer.unwrap_or(m.sender);
            let state = view.state(&v, m, false);
            let viewer_recipient = view
                .members
                .get(&v)
                .is_some_and(|x| x.receives(v, m.sender, m.seq));
            if let Some(e) = state
                .aggregate
                .delivered_at
                .and_then(|at| cache_entry(m, at))
            {
                put.arg(cache_field('d', m)).arg(e);
            }
            let read_at = state.aggregate.read_at.filter(|_| !viewer_recipient);
            if let Some(e) = read_at.and_then(|at| cache_entry(m, at)) {
                put.arg(cache_field('r', m)).arg(e);
            }
            out[*i] = state.aggregate;
        }
        let _: i64 = put
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One simple member: join seq, true and public watermarks, whether it
    /// shares, how far its deliveries reach without a gap (its prefix is at
    /// least that), and whether it has a delivery past its prefix (then every
    /// seq past it is delivered, up to the gapped score 14).
    #[derive(Clone, Copy, Debug)]
    struct Member {
        j: Seq,
        wm: Seq,
        public: Seq,
        shares: bool,
        prefix: Seq,
        gap: bool,
    }

    fn members() -> impl Strategy<Value = Vec<Member>> {
        proptest::collection::vec(
            (
                1u64..12,
                0u64..14,
                0u64..14,
                any::<bool>(),
                0u64..14,
                any::<bool>(),
            )
                .prop_map(|(j, a, b, shares, d, gap)| {
                    let (wm, public) = (a.max(b), a.min(b));
                    Member {
                        j,
                        wm,
                        public,
                        shares,
                        prefix: d.max(wm).max(j - 1),
                        gap,
                    }
                }),
            1..12,
        )
    }

    fn entries(m: &Member) -> Entries {
        Entries {
            join: Some(m.j),
            prefix: Some(m.prefix),
            public_score: m.shares.then_some(m.public.max(m.j - 1)),
            read_up_to: m.wm,
        }
    }

    fn gapped(i: usize, m: &Member) -> Option<Gapped> {
        m.gap.then_some(Gapped {
            user: Uuid::from_u128(i as u128),
            beyond: 14,
            prefix: Some(m.prefix),
        })
    }

    proptest! {
        /// The ZCOUNT arithmetic, with the gapped members counted one by
        /// one, equals counting member by member.
        #[test]
        fn index_counts_equal_a_scan(ms in members(), seq in 1u64..13, sender in 0usize..12, viewer in 0usize..12) {
            let sender = sender % ms.len();
            let viewer = viewer % ms.len();
            let count = |f: &dyn Fn(&Member) -> bool| ms.iter().filter(|m| f(m)).count() as u64;
            let n = Counted {
                joined_by: count(&|m| m.j <= seq),
                joined_after: count(&|m| m.j > seq),
                prefix_from: count(&|m| m.prefix >= seq),
                public_from: count(&|m| m.shares && m.public.max(m.j - 1) >= seq),
                sharing_joined_after: count(&|m| m.shares && m.j > seq),
            };
            // What the caller adds: gapped members whose runs cover the seq
            // past their prefix (runs are only recorded for recipients).
            let past = ms
                .iter()
                .enumerate()
                .filter(|(i, m)| *i != sender && m.j <= seq)
                .filter_map(|(i, m)| gapped(i, m))
                .filter(|g| g.has_past_prefix(seq, || true))
                .count() as u64;
            let (total, had, public) = simple_counts(
                seq,
                n,
                entries(&ms[sender]),
                (viewer != sender).then(|| entries(&ms[viewer])),
            );
            let got = (total, had + past, public);
            let mut want = (0, 0, 0);
            for (i, m) in ms.iter().enumerate() {
                if i == sender || m.j > seq {
                    continue;
                }
                want.0 += 1;
                want.1 += u64::from(m.prefix >= seq || m.gap);
                let read = if i == viewer { m.wm >= seq } else { m.shares && m.public >= seq };
                want.2 += u64::from(read);
            }
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn cached_times_need_the_current_versions() {
        let m = |seq: Seq| Message {
            id: MessageId::nil(),
            conversation: ConversationId::nil(),
            seq,
            sender: UserId::nil(),
            sent_at: 1_000,
        };
        // Seqs 70 and 75 share the bucket of 64..128; 6 is in another.
        assert_eq!(cache_field('d', &m(70)), "d:1");
        assert_eq!(cache_field('d', &m(6)), "d:0");
        let mut v = b"3#".to_vec();
        v.extend(cache_entry(&m(70), 1_234).unwrap());
        v.extend(cache_entry(&m(75), 1_500).unwrap());
        // Offset 6 with 2 bytes (zigzag 468), offset 11 with 2 (1,000).
        assert_eq!(v, b"3#\x46\x01\xd4\x4b\x03\xe8");
        assert_eq!(cached(Some(&v), "3", &m(70)), Some(1_234));
        assert_eq!(cached(Some(&v), "3", &m(75)), Some(1_500));
        assert_eq!(cached(Some(&v), "3", &m(71)), None, "not cached");
        assert_eq!(cached(Some(&v), "4", &m(70)), None, "another version");
        assert_eq!(cached(Some(&v), "", &m(70)), None, "another version");
        let text = b"3;6:234;11:500".to_vec();
        assert_eq!(cached(Some(&text), "3", &m(70)), None, "an earlier form");
        assert_eq!(cached(None, "3", &m(70)), None);
    }
}
