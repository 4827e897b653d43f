//! The per-user event log behind cursors, reset snapshots, and the bus
//! that carries committed events to every node.

use super::*;

pub(super) fn parse_log_entry(u: &UserId, row: &[u8]) -> StoreResult<Event> {
    let colon = row
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| corrupt("log entry"))?;
    let offset = std::str::from_utf8(&row[..colon])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt("log offset"))?;
    Ok(Event {
        offset,
        user: *u,
        body: dec(&row[colon + 1..], "log event")?,
    })
}

/// A bus message `<user>:<epoch>:<offset>:<event>`, parsed.
#[derive(Debug)]
pub(super) enum BusMessage {
    /// An event to hand to the addressee's local subscribers.
    Event(u64, Event),
    /// For this user, but its event does not decode (a newer node's
    /// format): the user's streams must resume rather than move past it.
    Unreadable(UserId),
    /// Not a bus message at all.
    Garbage,
}

/// Parses a bus message `<user>:<epoch>:<offset>:<event>`.
pub(super) fn parse_bus(payload: &[u8]) -> BusMessage {
    let mut parts = payload.splitn(4, |b| *b == b':');
    let Some(user) = parts
        .next()
        .and_then(|p| std::str::from_utf8(p).ok())
        .and_then(|p| Uuid::parse_str(p).ok())
    else {
        return BusMessage::Garbage;
    };
    let rest = (|| {
        let epoch = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let body = postcard::from_bytes(parts.next()?).ok()?;
        Some((epoch, Event { offset, user, body }))
    })();
    match rest {
        Some((epoch, event)) => BusMessage::Event(epoch, event),
        None => BusMessage::Unreadable(user),
    }
}

/// Listens on the bus and hands events to local subscribers. After a lost
/// connection, every local subscriber is ended with a resumable status: it
/// resumes from its cursor and replays what the bus may have dropped (or gets
/// a reset if the log's epoch changed, e.g. Redis restarted empty).
pub(super) async fn bus_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    use futures::StreamExt as _;
    let mut first = true;
    loop {
        let connected = async {
            let client = inner.opts.access.client(&inner.bus_url)?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(inner.keys.bus()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match connected {
            Ok(pubsub) => {
                if !first {
                    tracing::warn!("event bus reconnected; ending local streams so they resume");
                }
                inner.hub.disconnect_all();
                inner.bus_up.store(true, Ordering::Release);
                first = false;
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                            match parse_bus(&payload) {
                                BusMessage::Event(_epoch, event) => {
                                    inner.hub.publish(&[Arc::new(event)]);
                                }
                                BusMessage::Unreadable(user) => {
                                    tracing::warn!(
                                        %user,
                                        "event bus: an event this node cannot read (a newer node's format?); \
                                         ending the user's streams so they resume from their cursors"
                                    );
                                    inner.hub.disconnect(user);
                                }
                                BusMessage::Garbage => {
                                    tracing::warn!("event bus: a message that is not an event; ignored");
                                }
                            }
                        }
                        _ = stopped(&mut stop) => return,
                    }
                }
                tracing::warn!("event bus connection lost");
                inner.bus_up.store(false, Ordering::Release);
                inner.hub.disconnect_all();
            }
            Err(e) => tracing::warn!(error = %e, "event bus: cannot connect"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

impl Inner {
    pub(super) async fn log_head(&self, u: &UserId) -> StoreResult<(u64, u64, u64)> {
        let (epoch, next, trim): (String, u64, u64) = scripts::LOG_HEAD
            .key(self.keys.log_meta(u))
            .key(self.keys.log(u))
            .arg(fresh_epoch())
            .arg(self.ttl())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok((epoch.parse().map_err(|_| corrupt("epoch"))?, next, trim))
    }

    pub(super) async fn events_after(
        &self,
        u: &UserId,
        after: u64,
        max: usize,
    ) -> StoreResult<Vec<Event>> {
        let rows: Vec<Vec<u8>> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.log(u))
                    .arg(format!("({after}"))
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(max),
            )
            .await?;
        rows.iter().map(|r| parse_log_entry(u, r)).collect()
    }

    pub(super) async fn snapshot(&self, u: &UserId) -> StoreResult<Snapshot> {
        let sent: Vec<String> = self
            .query(
                redis::cmd("ZREVRANGE")
                    .arg(self.keys.sent(u))
                    .arg(0)
                    .arg(SNAPSHOT_MESSAGES as i64 - 1),
            )
            .await?;
        let mut recent: Vec<(ConversationId, MessageId)> = Vec::new();
        if sent.is_empty() {
            for m in self.scylla.recent_sent(*u, SNAPSHOT_MESSAGES).await? {
                recent.push((m.conversation, m.id));
            }
        } else {
            for s in sent {
                let (c, m) = s.split_once(':').ok_or_else(|| corrupt("sent index"))?;
                recent.push((parse_uuid(c)?, parse_uuid(m)?));
            }
        }
        let mut states: HashMap<MessageId, MessageState> = HashMap::new();
        let mut by_conv: BTreeMap<ConversationId, Vec<MessageId>> = BTreeMap::new();
        for (c, m) in &recent {
            by_conv.entry(*c).or_default().push(*m);
        }
        // A group's view here is the caller's part only (`view_for`): its
        // states are counted, and its watermark is the caller's.
        for (c, ids) in &by_conv {
            let Some(mut v) = self.view_for(c, u).await? else {
                continue;
            };
            if v.group() {
                self.ensure_messages(&mut v, ids).await?;
                let msgs: Vec<Message> = ids
                    .iter()
                    .filter_map(|m| v.messages.get(m))
                    .copied()
                    .collect();
                let aggregates = self
                    .counts_in(&v, Some(*u), &msgs, &mut BTreeSet::new())
                    .await?;
                for state in counted_states(msgs, aggregates) {
                    states.insert(state.message.id, state);
                }
            } else {
                self.prepare_states(&mut v, ids).await?;
                for m in ids {
                    if let Some(msg) = v.messages.get(m) {
                        states.insert(*m, v.state(u, msg, false));
                    }
                }
            }
        }
        let recent_messages = recent
            .iter()
            .filter_map(|(_, m)| states.remove(m))
            .collect();
        let mut convs: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.keys.user_conversations(u)))
            .await?;
        if convs.is_empty() {
            convs = self
                .scylla
                .user_conversations(*u)
                .await?
                .iter()
                .map(hex)
                .collect();
        }
        convs.sort();
        let mut watermarks = Vec::new();
        // The limit is on conversations (each with its thread positions).
        let mut listed = 0;
        for c in convs {
            if listed >= SNAPSHOT_CONVERSATIONS {
                break;
            }
            let c = parse_uuid(&c)?;
            let Some(mut v) = self.view_for(&c, u).await? else {
                continue;
            };
            let Some(membership) = v.members.get(u).filter(|m| m.is_current()).cloned() else {
                continue;
            };
            let wm = v.wm(u);
            let unread = self.unread(&c, u, wm.seq, &membership).await?;
            let threads = self.unread_by_timeline(&mut v, u, &membership).await?;
            watermarks.extend(crate::store::snapshot_positions(
                c,
                (wm.seq, unread),
                &threads,
            ));
            listed += 1;
        }
        Ok(Snapshot {
            recent_messages,
            watermarks,
        })
    }
}
