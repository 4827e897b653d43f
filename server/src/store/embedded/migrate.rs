//! Opening a data directory of an earlier format: its rows are converted in
//! the opening transaction.

use super::*;

/// Folds deliveries kept one row per message per recipient into runs and
/// drops the old tables: the second layout ([`DELIVERED_V2`],
/// `conv ‖ user ‖ seq`) and the first ([`DELIVERED_V1`], `msg ‖ user`, small
/// and old, so it is re-keyed in memory). Consecutive rows of one member with
/// the same time join when nothing but the member's own messages lies between
/// them (the recipient seqs in between are then all in the run); anything
/// else starts a new run, which is never wrong, only less compact.
pub(super) fn migrate_to_runs(txn: &redb::WriteTransaction) -> StoreResult<()> {
    use redb::TableHandle as _;
    let names: HashSet<String> = txn
        .list_tables()
        .map_err(storage)?
        .map(|t| t.name().to_string())
        .collect();
    let (has_v1, has_v2) = (
        names.contains(DELIVERED_V1.name()),
        names.contains(DELIVERED_V2.name()),
    );
    if !has_v1 && !has_v2 {
        return Ok(());
    }
    let mut fold = Fold::default();
    {
        let conv_msgs = txn.open_table(CONV_MSGS).map_err(storage)?;
        let mut runs = txn.open_table(RUNS).map_err(storage)?;
        if has_v1 {
            let old = txn.open_table(DELIVERED_V1).map_err(storage)?;
            let messages = txn.open_table(MESSAGES).map_err(storage)?;
            let mut rows: BTreeMap<[u8; 40], i64> = BTreeMap::new();
            for entry in old.iter().map_err(storage)? {
                let (k, at) = entry.map_err(storage)?;
                let (m, u) = (uuid_at(k.value(), 0), uuid_at(k.value(), 16));
                let Some(b) = get_bytes(&messages, &k1(&m))? else {
                    return Err(corrupt(format!("delivery of unknown message {m}")));
                };
                let msg: Message = decode(&b)?;
                rows.insert(k3(&msg.conversation, &u, msg.seq), i64_val(at.value()));
            }
            for (k, at) in rows {
                fold.push(&conv_msgs, &mut runs, &k, at)?;
            }
        }
        if has_v2 {
            let old = txn.open_table(DELIVERED_V2).map_err(storage)?;
            for entry in old.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                fold.push(&conv_msgs, &mut runs, k.value(), i64_val(v.value()))?;
            }
        }
        fold.finish(&mut runs)?;
    }
    for (exists, def) in [(has_v1, DELIVERED_V1), (has_v2, DELIVERED_V2)] {
        if exists {
            txn.delete_table(def).map_err(storage)?;
        }
    }
    tracing::info!(
        deliveries = fold.moved,
        runs = fold.written,
        "embedded store: deliveries folded into runs"
    );
    Ok(())
}

/// The state of [`migrate_to_runs`]: the run being built.
#[derive(Default)]
pub(super) struct Fold {
    pub(super) open: Option<(ConversationId, UserId, Run)>,
    pub(super) moved: u64,
    pub(super) written: u64,
}

impl Fold {
    /// Adds the delivery `conv ‖ user ‖ seq` (`key`) at `at`; keys come in order.
    pub(super) fn push(
        &mut self,
        conv_msgs: &impl ReadableTable<Bytes, Bytes>,
        runs: &mut Table<'_, Bytes, Bytes>,
        key: &[u8],
        at: Millis,
    ) -> StoreResult<()> {
        let (c, u, seq) = (uuid_at(key, 0), uuid_at(key, 16), u64_at(key, 32));
        self.moved += 1;
        if let Some((oc, ou, run)) = &mut self.open
            && *oc == c
            && *ou == u
            && run.at == at
        {
            // Only the member's own messages in between?
            let (lo, hi) = (k_seq(&c, run.last + 1), k_seq(&c, seq));
            let mut own_only = true;
            for e in conv_msgs
                .range(lo.as_slice()..hi.as_slice())
                .map_err(storage)?
            {
                let (k, m) = e.map_err(storage)?;
                if Registered::of(k.value(), m.value())?.sender != u {
                    own_only = false;
                    break;
                }
            }
            if own_only {
                run.last = seq;
                return Ok(());
            }
        }
        self.finish(runs)?;
        self.open = Some((
            c,
            u,
            Run {
                first: seq,
                last: seq,
                at,
            },
        ));
        Ok(())
    }

    /// Writes the run being built, if any.
    pub(super) fn finish(&mut self, runs: &mut Table<'_, Bytes, Bytes>) -> StoreResult<()> {
        if let Some((c, u, run)) = self.open.take() {
            put_run(runs, &c, &u, &run)?;
            self.written += 1;
        }
        Ok(())
    }
}
