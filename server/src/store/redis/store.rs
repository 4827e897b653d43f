//! The contract: `ReceiptStore` on the production tier, each call as
//! load facts, let the domain decide, commit the plan.

use super::*;

#[async_trait]
impl ReceiptStore for RedisStore {
    async fn create_conversation(
        &self,
        conversation: ConversationId,
        members: Vec<UserId>,
    ) -> StoreResult<bool> {
        let s = &self.inner;
        let members = dedup(members);
        let c = conversation;
        for _ in 0..MAX_ATTEMPTS {
            if let Some(view) = s.view(&c).await? {
                let existing: HashSet<UserId> = view
                    .members
                    .iter()
                    .filter(|(_, m)| m.is_current())
                    .map(|(u, _)| *u)
                    .collect();
                if existing == members.iter().copied().collect() {
                    return Ok(false);
                }
                return Err(ServiceError::AlreadyExists {
                    field: "conversation_id".into(),
                    reason: format!("conversation {c} exists with other members"),
                });
            }
            let image: Vec<(UserId, Membership)> = members
                .iter()
                .map(|u| (*u, Membership::joined(1)))
                .collect();
            let mut plan = Plan::default();
            let mut meta = rcmd![
                "HSET",
                s.keys.meta(&c),
                "n",
                members.len() as u64,
                "mv",
                1u64,
                "t",
                0i64,
                // No deliveries yet: the gapped set is complete (empty).
                "dp",
                1u64,
                // The seq index holds one message per member, with its
                // send time and no messages hash, until it grows
                // (`seqs.rs`).
                "sb",
                seqs::SeqForm::Timed.mark()
            ];
            // A large group's members all go in the member list below; a
            // small one's pages read the meta hash (`keys::UNLISTED_MAX`).
            let listed = members.len() > keys::UNLISTED_MAX;
            if listed {
                meta.extend(rcmd!["ml", 1u64]);
            }
            for (u, m) in &image {
                meta.extend(rcmd![format!("m:{}", hex(u)), enc(m)]);
            }
            plan.cmds.push(meta);
            // A new conversation has no runs to re-warm from Scylla.
            plan.cmds.push(rcmd!["HSET", s.keys.runs(&c), "_", "1"]);
            let sharing = s.sharing_of(&members).await?;
            for ((u, m), (shares, _)) in image.iter().zip(sharing) {
                plan.cmds.extend(index_member(
                    &s.keys,
                    &c,
                    u,
                    m,
                    ReadWatermark::default(),
                    shares,
                    listed,
                ));
            }
            plan.persist.push(PersistOp::Conversation {
                conversation: c,
                members: image,
                version: 1,
            });
            if s.commit(&View::bare(c, 0), plan).await? {
                let mut p = redis::pipe();
                for u in &members {
                    p.sadd(s.keys.user_conversations(u), hex(&c))
                        .ignore()
                        .expire(s.keys.user_conversations(u), s.ttl() as i64)
                        .ignore();
                }
                s.pipe::<()>(&p).await?;
                return Ok(true);
            }
            backoff().await;
        }
        Err(contended(&c))
    }

    async fn change_members(
        &self,
        conversation: ConversationId,
        changes: Vec<MemberChange>,
        kind: MemberChangeKind,
    ) -> StoreResult<MembershipResult> {
        let s = &self.inner;
        let c = conversation;
        let _serial = s.lock([&c]).await;
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut view) = s.view(&c).await? else {
                return Err(ServiceError::not_found(
                    "conversation_id",
                    "conversation",
                    c,
                ));
            };
            let updated = fold_member_changes(&changes, kind, |u| {
                Ok(view.members.get(u).cloned().unwrap_or_default())
            })?;
            let count = kind.count_after(view.count, updated.len() as u64);
            if updated.is_empty() {
                return Ok(MembershipResult {
                    changed: 0,
                    member_count: view.count,
                });
            }
            let mut plan = Plan::default();
            let mver = view.mver + 1;
            let mut meta = rcmd!["HSET", s.keys.meta(&c), "n", count, "mv", mver];
            let mut lowest = Seq::MAX;
            let users: Vec<UserId> = updated.keys().copied().collect();
            let sharing = s.sharing_of(&users).await?;
            let mut index = Vec::new();
            for ((u, (ms, from)), (shares, _)) in updated.iter().zip(sharing) {
                meta.extend(rcmd![format!("m:{}", hex(u)), enc(ms)]);
                // Listed whatever the size: a page that builds the list
                // between this view and its commit must not miss it.
                index.extend(index_member(&s.keys, &c, u, ms, view.wm(u), shares, true));
                view.members.insert(*u, ms.clone());
                lowest = lowest.min(*from);
            }
            plan.cmds.push(meta);
            plan.cmds.extend(index);
            // A direct chat keeps no delivered prefixes (its counts read
            // both members): as it becomes a group, the first count builds
            // its gapped set from the runs (`prefix.rs`).
            if view.count <= DIRECT_MEMBERS && count > DIRECT_MEMBERS {
                plan.cmds.push(rcmd!["HDEL", s.keys.meta(&c), "dp"]);
            }
            view.count = count;
            plan.persist.push(PersistOp::Conversation {
                conversation: c,
                members: view.members.iter().map(|(u, m)| (*u, m.clone())).collect(),
                version: mver,
            });
            // Recipients of already registered messages at or after the change
            // are now different: their counts change.
            let last = s.last_seq(&c).await?;
            let mut windowed = false;
            if lowest <= last {
                let msgs = s.between(&c, lowest, last).await?;
                windowed = s.touch(&mut view, &mut plan, &msgs).await?;
            }
            if s.commit(&view, plan).await? {
                if windowed {
                    s.schedule_window(c);
                }
                let mut p = redis::pipe();
                for u in updated.keys() {
                    p.sadd(s.keys.user_conversations(u), hex(&c))
                        .ignore()
                        .expire(s.keys.user_conversations(u), s.ttl() as i64)
                        .ignore();
                }
                s.pipe::<()>(&p).await?;
                return Ok(MembershipResult {
                    changed: updated.len() as u64,
                    member_count: count,
                });
            }
            backoff().await;
        }
        Err(contended(&c))
    }

    async fn register_in_threads(
        &self,
        messages: Vec<NewMessage>,
        roots: Vec<Option<MessageId>>,
    ) -> StoreResult<u64> {
        let s = &self.inner;
        let root_of = |i: usize| roots.get(i).copied().flatten();
        // Validate the whole batch before writing anything.
        let order = distinct_registrations(&messages, root_of)?;
        let ids: Vec<MessageId> = order.iter().map(|(_, m)| m.id).collect();
        let homes = s.homes(&ids).await?;
        let mut by_conv: BTreeMap<ConversationId, Vec<(usize, Message)>> = BTreeMap::new();
        for (i, m) in &order {
            by_conv.entry(m.conversation).or_default().push((*i, *m));
        }
        let home_of: HashMap<MessageId, Option<ConversationId>> =
            ids.iter().copied().zip(homes).collect();
        // Every message of the batch with its request index, for roots named
        // in it: a root counts only if it comes earlier in the request.
        let in_batch: HashMap<MessageId, (usize, ConversationId, Seq, Option<MessageId>)> = order
            .iter()
            .map(|(i, m)| (m.id, (*i, m.conversation, m.seq, root_of(*i))))
            .collect();
        // Per conversation: validate (all conversations first), then commit.
        let mut plans: Vec<(View, Plan, Vec<Message>)> = Vec::new();
        let mut total = 0;
        let _serial = s.lock(by_conv.keys()).await;
        for attempt in 0..MAX_ATTEMPTS {
            plans.clear();
            for (c, msgs) in &by_conv {
                let (i0, _) = msgs[0];
                let Some(mut view) = s.view(c).await? else {
                    return Err(ServiceError::not_found(
                        format!("messages[{i0}].conversation_id"),
                        "conversation",
                        c,
                    ));
                };
                let mut ids: Vec<MessageId> = msgs.iter().map(|(_, m)| m.id).collect();
                ids.extend(msgs.iter().filter_map(|(i, _)| root_of(*i)));
                s.ensure_messages(&mut view, &ids).await?;
                let seqs: Vec<Seq> = msgs.iter().map(|(_, m)| m.seq).collect();
                let buckets = s
                    .seq_buckets_at(c, &seqs, view.seq_form != seqs::SeqForm::Packed)
                    .await?;
                let mut fresh: Vec<(Message, Option<ThreadRoot>)> = Vec::new();
                for (i, m) in msgs {
                    let root = root_of(*i);
                    let existing = match view.messages.get(&m.id) {
                        Some(e) => Some((*e, view.threads.get(&e.id).map(|t| t.id))),
                        None => match home_of.get(&m.id).copied().flatten() {
                            Some(home) if home != *c => {
                                s.find_message(&home, &m.id).await?.map(|e| (e, None))
                            }
                            _ => None,
                        },
                    };
                    // A new message's thread: its root must be an earlier
                    // main-timeline message of this conversation
                    // (`domain::judge_root`).
                    let thread = match root {
                        Some(r) if existing.is_none() => {
                            let earlier = in_batch.get(&r).filter(|(j, ..)| j < i);
                            let found = match (earlier, view.messages.get(&r)) {
                                (Some((_, rc, rs, rroot)), _) => {
                                    Some((*rc, *rs, rroot.map(|id| ThreadRoot { id, seq: 0 })))
                                }
                                (None, Some(rm)) => {
                                    Some((*c, rm.seq, view.threads.get(&r).copied()))
                                }
                                (None, None) => s.homes(&[r]).await?[0]
                                    .filter(|home| home != c)
                                    .map(|home| (home, 0, None)),
                            };
                            let seq = domain::judge_root(*c, m.seq, found)
                                .map_err(|e| crate::store::root_refused(*i, r, e))?;
                            Some(ThreadRoot { id: r, seq })
                        }
                        _ => None,
                    };
                    let sender_is_member = view
                        .members
                        .get(&m.sender)
                        .is_some_and(|ms| ms.contains(m.seq));
                    if judge_registration(
                        *i,
                        m,
                        root,
                        existing,
                        buckets.taken.get(&m.seq).copied(),
                        sender_is_member,
                    )? {
                        fresh.push((*m, thread));
                    }
                }
                let mut plan = Plan::default();
                if !fresh.is_empty() {
                    let k = &s.keys;
                    let mut tq = rcmd!["ZADD", k.thread_messages(c)];
                    plan.cmds
                        .extend(s.seq_writes(&view, &buckets, &fresh).await?);
                    for (m, thread) in &fresh {
                        plan.persist.push(PersistOp::Message(*m));
                        if let Some(root) = thread {
                            tq.extend(rcmd![
                                0,
                                keys::thread_member(root.seq, m.seq, &m.id, &m.sender)
                            ]);
                            plan.persist.push(PersistOp::ThreadMessage {
                                conversation: *c,
                                seq: m.seq,
                                root: *root,
                            });
                        }
                    }
                    if tq.len() > 2 {
                        plan.cmds.push(tq);
                        plan.cmds.push(rcmd!["HSET", k.meta(c), "th", 1u64]);
                    }
                    // Below the last registered seq, a run written before
                    // this message existed may cover its seq, and a
                    // delivered prefix may pass it.
                    let last = s.last_seq(c).await?;
                    let late: Vec<(Seq, UserId)> = fresh
                        .iter()
                        .filter(|(m, thread)| m.seq < last && thread.is_none())
                        .map(|(m, _)| (m.seq, m.sender))
                        .collect();
                    let fresh: Vec<Message> = fresh.iter().map(|(m, _)| *m).collect();
                    for m in fresh.iter().filter(|m| m.seq < last) {
                        s.split_runs_at(&mut view, &mut plan, m.seq).await?;
                    }
                    plan.cmds.extend(s.runs_cmds(&view));
                    s.prefixes_after_late(&view, &mut plan, &late).await?;
                }
                let fresh: Vec<Message> = fresh.into_iter().map(|(m, _)| m).collect();
                plans.push((view, plan, fresh));
            }
            // Message ids resolve to their conversation before the commit, so
            // a reader never sees a committed id it cannot find.
            let pairs: Vec<(MessageId, ConversationId)> = plans
                .iter()
                .flat_map(|(_, _, fresh)| fresh.iter().map(|m| (m.id, m.conversation)))
                .collect();
            // An id the index placed somewhere (a registration that never
            // committed, since `fresh` says it is not there) is written a
            // field of its own: read before any bucket, it replaces that entry.
            s.write_homes(&pairs, |m| home_of.get(m).copied().flatten().is_some())
                .await?;
            let mut conflict = false;
            let mut committed = Vec::new();
            for (view, plan, fresh) in plans.drain(..) {
                if fresh.is_empty() {
                    continue;
                }
                if s.commit(&view, plan).await? {
                    total += fresh.len() as u64;
                    committed.extend(fresh);
                } else {
                    conflict = true;
                }
            }
            // Each sender's recent messages: one ZADD, trim and expiry per
            // sender, whatever the number of messages.
            let mut by_sender: BTreeMap<UserId, Vec<&Message>> = BTreeMap::new();
            for m in &committed {
                by_sender.entry(m.sender).or_default().push(m);
            }
            let mut p = redis::pipe();
            for (sender, msgs) in &by_sender {
                let key = s.keys.sent(sender);
                let mut add = redis::cmd("ZADD");
                add.arg(&key);
                for m in msgs {
                    add.arg(m.sent_at)
                        .arg(format!("{}:{}", hex(&m.conversation), hex(&m.id)));
                }
                p.add_command(add)
                    .ignore()
                    .cmd("ZREMRANGEBYRANK")
                    .arg(&key)
                    .arg(0)
                    .arg(-(SNAPSHOT_MESSAGES as i64) - 1)
                    .ignore()
                    .expire(&key, s.ttl() as i64)
                    .ignore();
            }
            if !by_sender.is_empty() {
                s.pipe::<()>(&p).await?;
            }
            if !conflict {
                return Ok(total);
            }
            // Some conversation moved: its messages are re-checked (the ones
            // committed are now "already registered, same content").
            let _ = attempt;
            backoff().await;
        }
        Err(ServiceError::unavailable(
            "register: conversations too contended right now; retry",
        ))
    }

    async fn mark_delivered(
        &self,
        user: UserId,
        messages: Vec<Named>,
        at: Millis,
    ) -> StoreResult<Vec<DeliveryResult>> {
        let s = &self.inner;
        let named = dedup(messages);
        // Only messages named by id alone need their conversation looked up.
        let alone: Vec<MessageId> = named
            .iter()
            .filter(|n| n.conversation.is_none())
            .map(|n| n.id)
            .collect();
        let mut homes = s.homes(&alone).await?.into_iter();
        let mut by_conv: BTreeMap<ConversationId, Vec<Named>> = BTreeMap::new();
        for n in &named {
            let home = match n.conversation {
                Some(c) => Some(c),
                None => homes.next().flatten(),
            };
            let Some(c) = home else {
                return Err(n.not_found());
            };
            by_conv.entry(c).or_default().push(*n);
        }
        // Validate every conversation before writing any (a batch within
        // one conversation is validated by its own attempt, under the lock).
        if by_conv.len() > 1 {
            for (c, msgs) in &by_conv {
                let view = s.delivery_view(c, &user, msgs).await?;
                view.authorize(&user, msgs[0].field())?;
            }
        }
        let mut results: HashMap<MessageId, DeliveryResult> = HashMap::new();
        for (c, named) in &by_conv {
            let msgs: Vec<MessageId> = named.iter().map(|n| n.id).collect();
            let msgs = &msgs;
            let _serial = s.lock([c]).await;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut view = s.delivery_view(c, &user, named).await?;
                let membership = view.authorize(&user, named[0].field())?;
                if view.group() {
                    s.ensure_own_deliveries(&mut view, msgs, &user).await?;
                } else {
                    s.ensure_deliveries(&mut view, msgs).await?;
                }
                let min_seq = msgs
                    .iter()
                    .filter_map(|m| view.messages.get(m).map(|m| m.seq))
                    .min()
                    .unwrap_or(Seq::MAX);
                s.ensure_history(&mut view, &[user], min_seq).await?;
                // A thread message's read is the caller's position in its
                // thread.
                let mut roots: BTreeMap<Seq, Seq> = BTreeMap::new();
                for id in msgs {
                    if let (Some(m), Some(root)) = (view.messages.get(id), view.threads.get(id)) {
                        let low = roots.entry(root.seq).or_insert(m.seq);
                        *low = (*low).min(m.seq);
                    }
                }
                for (root, low) in roots {
                    s.ensure_thread_reads(&mut view, root, &[user], low).await?;
                }
                let at = at.max(view.stamp);
                let mut plan = Plan::default();
                plan.cmds.push(rcmd!["HSET", s.keys.meta(c), "t", at]);
                let mut touched = Vec::new();
                let mut new = Vec::new();
                let mut out = Vec::new();
                for id in msgs {
                    let m = view.messages[id];
                    let read_at = view.read_at(&user, &m);
                    let existing = view.delivered_at(&m, &user);
                    match domain::judge_delivery(
                        user,
                        &membership,
                        m.sender,
                        m.seq,
                        existing,
                        read_at,
                    ) {
                        Delivery::NotARecipient => {
                            out.push(DeliveryResult::not_a_recipient(m.id));
                            continue;
                        }
                        Delivery::Already(t) => {
                            out.push(DeliveryResult::already(m.id, t));
                            continue;
                        }
                        Delivery::Record => {}
                    }
                    new.push(m.seq);
                    touched.push(Indexed {
                        seq: m.seq,
                        id: m.id,
                        sender: m.sender,
                        thread: view.threads.get(&m.id).map(|t| t.seq),
                        sent_at: Some(m.sent_at),
                    });
                    out.push(DeliveryResult::recorded(m.id, at));
                }
                new.sort_unstable();
                s.record_runs(&mut view, &mut plan, &user, &membership, &new, at)
                    .await?;
                plan.cmds.extend(s.runs_cmds(&view));
                // Only a group's counts use prefixes; a direct chat that
                // becomes one has its gapped set built again (below).
                if let Some(&top) = new.last().filter(|_| view.group()) {
                    s.ensure_prefix(&mut view, &user).await?;
                    plan.cmds.extend(s.prefix_cmds(&view, &user, top));
                }
                let windowed = s.touch(&mut view, &mut plan, &touched).await?;
                if touched.is_empty() || s.commit(&view, plan).await? {
                    if windowed {
                        s.schedule_window(*c);
                    }
                    for r in out {
                        results.insert(r.message, r);
                    }
                    break;
                }
                if attempt >= MAX_ATTEMPTS {
                    return Err(contended(c));
                }
                backoff().await;
            }
        }
        Ok(named.iter().map(|n| results[&n.id]).collect())
    }

    async fn mark_read_up_to(
        &self,
        user: UserId,
        conversation: ConversationId,
        message: MessageId,
        at: Millis,
    ) -> StoreResult<ReadResult> {
        let s = &self.inner;
        let c = conversation;
        let _serial = s.lock([&c]).await;
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut view) = s.read_facts(&c, &user, &message).await? else {
                return Err(ServiceError::not_found(
                    "conversation_id",
                    "conversation",
                    c,
                ));
            };
            let membership = view.authorize(&user, "conversation_id")?;
            s.ensure_messages(&mut view, &[message]).await?;
            let m = match view.messages.get(&message) {
                Some(m) => *m,
                None => {
                    let home = s.homes(&[message]).await?[0];
                    return Err(match home {
                        Some(_) => ServiceError::invalid(
                            "message_id",
                            format!("message {message} belongs to another conversation"),
                        ),
                        None => ServiceError::not_found("message_id", "message", message),
                    });
                }
            };
            let at = at.max(view.stamp);
            let mut plan = Plan::default();
            plan.cmds.push(rcmd!["HSET", s.keys.meta(&c), "t", at]);
            let (result, windowed) = match view.threads.get(&m.id).copied() {
                Some(root) => {
                    s.apply_thread_read(&mut view, &mut plan, &user, &membership, root, m.seq, at)
                        .await?
                }
                None => {
                    s.apply_read(&mut view, &mut plan, &user, &membership, m.seq, at)
                        .await?
                }
            };
            if !result.advanced {
                return Ok(result);
            }
            if s.commit(&view, plan).await? {
                if windowed {
                    s.schedule_window(c);
                }
                return Ok(result);
            }
            backoff().await;
        }
        Err(contended(&c))
    }

    async fn mark_conversations_read(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
        threads: Vec<(ConversationId, MessageId)>,
        at: Millis,
    ) -> StoreResult<Vec<ConversationRead>> {
        let s = &self.inner;
        let mut out = Vec::new();
        let named = dedup(conversations)
            .into_iter()
            .map(|c| (c, None))
            .chain(dedup(threads).into_iter().map(|(c, r)| (c, Some(r))));
        for (c, thread) in named {
            out.push(s.mark_timelines_read(&user, c, thread, at).await?);
        }
        Ok(out)
    }

    async fn set_sharing(&self, user: UserId, sharing: bool) -> StoreResult<bool> {
        let s = &self.inner;
        for _ in 0..MAX_ATTEMPTS {
            let (_, version) = s.sharing_of(&[user]).await?[0];
            let q = s.keys.user_queue(&user);
            let key = s.keys.sharing(&user);
            let op = PersistOp::Sharing {
                user,
                sharing,
                version: version + 1,
            };
            let registered = s.registration(q.clone()).await?;
            let cmds = vec![
                rcmd!["HSET", key.clone(), "s", if sharing { "1" } else { "0" }],
                rcmd!["XADD", q, "*", "p", enc(&vec![op])],
                rcmd!["EXPIRE", key.clone(), s.ttl()],
            ];
            if let Applied::Done { .. } = s
                .apply_on(key, &[], registered, version, cmds, 0, None)
                .await?
            {
                s.reindex_sharing(&user).await?;
                return Ok(sharing);
            }
            backoff().await;
        }
        Err(ServiceError::unavailable(
            "sharing setting too contended right now; retry",
        ))
    }

    async fn sharing(&self, user: UserId) -> StoreResult<bool> {
        Ok(self.inner.sharing_of(&[user]).await?[0].0)
    }

    async fn receipts(
        &self,
        viewer: UserId,
        conversation: ConversationId,
        messages: Vec<MessageId>,
        include_recipients: bool,
    ) -> StoreResult<Vec<MessageState>> {
        let s = &self.inner;
        let c = conversation;
        let ids = dedup(messages);
        if !include_recipients {
            // A group's counts come from the indexes, without reading every
            // member (direct conversations have two: the view is as cheap).
            let (n, membership): (Option<u64>, Option<Vec<u8>>) = s
                .query(
                    redis::cmd("HMGET")
                        .arg(s.keys.meta(&c))
                        .arg("n")
                        .arg(format!("m:{}", hex(&viewer))),
                )
                .await?;
            if n.is_some_and(|n| n > 2) {
                let mut view = View::bare(c, 0);
                if let Some(m) = membership {
                    view.members.insert(viewer, dec(&m, "membership")?);
                }
                view.authorize(&viewer, "conversation_id")?;
                s.ensure_messages(&mut view, &ids).await?;
                s.check_found(&view, &ids, "message_ids").await?;
                let msgs: Vec<Message> = ids.iter().map(|m| view.messages[m]).collect();
                let aggregates = s
                    .counts_in(&view, Some(viewer), &msgs, &mut BTreeSet::new())
                    .await?;
                return Ok(counted_states(msgs, aggregates));
            }
        }
        let Some(mut view) = s.view(&c).await? else {
            return Err(ServiceError::not_found(
                "conversation_id",
                "conversation",
                c,
            ));
        };
        view.authorize(&viewer, "conversation_id")?;
        s.ensure_messages(&mut view, &ids).await?;
        s.check_found(&view, &ids, "message_ids").await?;
        s.prepare_states(&mut view, &ids).await?;
        Ok(ids
            .iter()
            .map(|m| view.state(&viewer, &view.messages[m], include_recipients))
            .collect())
    }

    async fn recipients(
        &self,
        viewer: UserId,
        conversation: ConversationId,
        message: MessageId,
        after: Option<UserId>,
        budget: usize,
    ) -> StoreResult<domain::Examined> {
        let s = &self.inner;
        let c = conversation;
        let budget = budget.max(1);
        let members = |rewarmed: bool| async move {
            let reply: Option<(Vec<String>, Vec<Option<Vec<u8>>>)> = scripts::MEMBERS_AFTER
                .key(s.keys.meta(&c))
                .key(s.keys.member_list(&c))
                .arg(after.map(|u| hex(&u)).unwrap_or_default())
                .arg(budget)
                .arg(keys::UNLISTED_MAX)
                .invoke_async(&mut s.conn())
                .await
                .map_err(redis_err)?;
            // Not in Redis: loading the view re-warms it from Scylla (once).
            if reply.is_none() && !rewarmed && s.view(&c).await?.is_none() {
                return Err(ServiceError::not_found(
                    "conversation_id",
                    "conversation",
                    c,
                ));
            }
            Ok::<_, ServiceError>(reply)
        };
        let (ids, memberships) = match members(false).await? {
            Some(reply) => reply,
            None => members(true)
                .await?
                .ok_or_else(|| ServiceError::not_found("conversation_id", "conversation", c))?,
        };
        // A small conversation's members come all at once and unordered
        // (`MEMBERS_AFTER`); the list's page is already this.
        let after = after.map(|u| hex(&u)).unwrap_or_default();
        let mut members: Vec<(String, Option<Vec<u8>>)> = ids
            .into_iter()
            .zip(memberships)
            .filter(|(id, _)| *id > after)
            .collect();
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        members.truncate(budget + 1);
        let (ids, memberships): (Vec<String>, Vec<Option<Vec<u8>>>) = members.into_iter().unzip();
        let mut auth = View::bare(c, 0);
        let mine: Option<Vec<u8>> = s
            .query(
                redis::cmd("HGET")
                    .arg(s.keys.meta(&c))
                    .arg(format!("m:{}", hex(&viewer))),
            )
            .await?;
        if let Some(m) = mine {
            auth.members.insert(viewer, dec(&m, "membership")?);
        }
        auth.authorize(&viewer, "conversation_id")?;
        // A view of the page's members alone: their facts are all a page
        // reads, O(page) whatever the group's size.
        let mut view = View::bare(c, 0);
        let more_after = (ids.len() > budget)
            .then(|| parse_uuid(&ids[budget - 1]))
            .transpose()?;
        let mut page = Vec::with_capacity(ids.len().min(budget));
        for (id, m) in ids.iter().zip(memberships).take(budget) {
            let u = parse_uuid(id)?;
            page.push(u);
            // An id the meta hash does not have (the list outlived a meta
            // hash re-warmed from a Scylla that lacks the member) is no
            // member: examined, not listed.
            if let Some(m) = m {
                view.members.insert(u, dec(&m, "membership")?);
            }
        }
        if !page.is_empty() {
            let mut wms = redis::cmd("HMGET");
            wms.arg(s.keys.meta(&c));
            for u in &page {
                wms.arg(keys::watermark_field(u));
            }
            let values: Vec<Option<String>> = s.query(&wms).await?;
            for (u, v) in page.iter().zip(values) {
                if let Some(v) = v {
                    view.wms.insert(*u, parse_watermark(&v)?);
                }
            }
        }
        s.ensure_messages(&mut view, &[message]).await?;
        s.check_found(&view, &[message], "message_id").await?;
        s.prepare_states(&mut view, &[message]).await?;
        let views = view
            .state(&viewer, &view.messages[&message], true)
            .recipients;
        Ok(domain::Examined { views, more_after })
    }

    async fn registered_between(
        &self,
        conversation: ConversationId,
        from: Seq,
        to: Seq,
    ) -> StoreResult<Vec<(Seq, MessageId, UserId)>> {
        let s = &self.inner;
        // Loading the conversation brings its keys back from Scylla after
        // they expired, the seq index with them.
        if s.view(&conversation).await?.is_none() {
            return Ok(Vec::new());
        }
        Ok(s.between(&conversation, from, to)
            .await?
            .into_iter()
            .map(|m| (m.seq, m.id, m.sender))
            .collect())
    }

    async fn unread_counts(
        &self,
        user: UserId,
        conversations: Vec<ConversationId>,
    ) -> StoreResult<Vec<UnreadCount>> {
        let s = &self.inner;
        let mut out = Vec::new();
        for c in dedup(conversations) {
            let mut r = UnreadCount::empty(c, ConversationOutcome::Ok);
            match s.view(&c).await? {
                None => r.outcome = ConversationOutcome::NotFound,
                Some(mut view) => match view.authorize(&user, "conversation_ids") {
                    Ok(membership) => {
                        let wm = view.wm(&user);
                        r.read_up_to = wm.seq;
                        r.last_seq = s.last_seq(&c).await?;
                        r.main_unread = s.unread(&c, &user, wm.seq, &membership).await?;
                        let threads = s.unread_by_timeline(&mut view, &user, &membership).await?;
                        r.unread = domain::conversation_unread(
                            r.main_unread,
                            threads.iter().map(|t| t.unread),
                        );
                        r.threads = threads
                            .into_iter()
                            .filter(|t| t.unread > 0)
                            .take(domain::MAX_LISTED_THREADS)
                            .collect();
                    }
                    Err(_) => r.outcome = ConversationOutcome::PermissionDenied,
                },
            }
            out.push(r);
        }
        Ok(out)
    }

    async fn replay(&self, user: UserId, from: ReplayFrom, max: usize) -> StoreResult<Replay> {
        let s = &self.inner;
        let (epoch, next, trim) = s.log_head(&user).await?;
        let head = Cursor {
            epoch,
            offset: next,
        };
        let cursor = match from {
            ReplayFrom::Live => {
                return Ok(Replay::Events {
                    events: Vec::new(),
                    head,
                });
            }
            ReplayFrom::Unparseable => None,
            ReplayFrom::Cursor(c) => Some(c),
        };
        let start = cursor.map_or(Err(ResetReason::Invalid), |c| {
            domain::replay_start(c, epoch, head.offset, trim)
        });
        let after = match start {
            Ok(after) => after,
            Err(reason) => {
                return Ok(Replay::Reset {
                    reason,
                    snapshot: s.snapshot(&user).await?,
                    head,
                });
            }
        };
        let events = s.events_after(&user, after, max.saturating_add(1)).await?;
        if domain::too_large(events.len(), max) {
            return Ok(Replay::Reset {
                reason: ResetReason::TooLarge,
                snapshot: s.snapshot(&user).await?,
                head,
            });
        }
        let head = Cursor {
            epoch,
            offset: events.last().map_or(next, |e| e.offset.max(next)),
        };
        Ok(Replay::Events { events, head })
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    async fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire) && self.inner.bus_up.load(Ordering::Acquire)
    }

    async fn backlog(&self) -> StoreResult<Option<crate::store::Backlog>> {
        let s = &self.inner;
        let index = s.keys.queue_index();
        let queues: u64 = s.query(redis::cmd("ZCARD").arg(&index)).await?;
        let oldest: Vec<(String, f64)> = s
            .query(
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES"),
            )
            .await?;
        let now: (u64, u64) = s.query(&redis::cmd("TIME")).await?;
        // Redis's clock, like the scores it wrote.
        let now_ms = now.0 * 1000 + now.1 / 1000;
        let age = oldest
            .first()
            .map(|(_, score)| now_ms.saturating_sub(*score as u64))
            .unwrap_or(0);
        Ok(Some(crate::store::Backlog {
            queues,
            oldest_registration_age: Duration::from_millis(age),
            persisted_total: s.persisted.load(Ordering::Relaxed),
            persistence_up: s.scylla_up.load(Ordering::Acquire),
            outage: s.outage(),
        }))
    }

    async fn shutdown(&self) {
        // Flush this node's open group windows and every queued change, then
        // stop the background tasks.
        let open: Vec<ConversationId> = {
            let mut w = self.inner.windows.lock().unwrap_or_else(|e| e.into_inner());
            w.take_due(true).into_iter().map(|(c, _)| c).collect()
        };
        for c in open {
            if let Err(e) = self.inner.flush_window(&c).await {
                tracing::warn!(conversation = %c, error = %e.report(), "window flush at shutdown failed");
            }
        }
        if let Err(e) = self.inner.flush_all().await {
            tracing::warn!(error = %e.report(), "flush to scylla at shutdown failed; another node will finish it");
        }
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}
