//! Opening a data directory of an earlier format.
//!
//! Until 2026-12 the store was one redb file, `receipts.redb`. A directory
//! that still has one is moved to fjall when it opens ([`from_redb`]): the
//! redb file's own older layouts are converted first, in a redb transaction
//! ([`migrate_to_runs`]); then every table is copied row by row (the keys and
//! values are the same bytes in both engines), the copy is made durable with
//! a marker in `meta`, and the redb file is renamed `receipts.redb.migrated`,
//! kept for the operator to delete. A crash at any point repeats the copy
//! from the start on the next open (it rewrites the same rows); once the
//! marker is durable, only the rename is left to do.

use super::*;
use redb::{ReadableDatabase as _, ReadableTable, Table, TableDefinition};

type Bytes = &'static [u8];
type Def = TableDefinition<'static, Bytes, Bytes>;

/// The redb file of the earlier format, in the data directory.
pub(super) const REDB_FILE: &str = "receipts.redb";
/// What the redb file is renamed to once its rows are in fjall.
pub(super) const REDB_MIGRATED: &str = "receipts.redb.migrated";
/// Set in `meta` once every row of the redb file is copied.
pub(super) const META_FROM_REDB: &[u8] = b"migrated_from_redb";
/// Rows copied per fjall transaction.
const COPY_CHUNK: usize = 50_000;

pub(super) fn def(t: Tb) -> Def {
    TableDefinition::new(t.name())
}
/// The second layout of deliveries (`conv ‖ user ‖ seq` → time, one row per
/// message per recipient), folded into runs.
pub(super) const DELIVERED_V2: Def = TableDefinition::new("delivered_by_recipient");
/// The first layout of deliveries (`msg ‖ user`), folded into runs.
pub(super) const DELIVERED_V1: Def = TableDefinition::new("delivered");

fn get_bytes<T: ReadableTable<Bytes, Bytes>>(t: &T, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    Ok(t.get(key).map_err(storage)?.map(|g| g.value().to_vec()))
}

/// Moves the redb file in `dir`, if there is one, into `engine`.
pub(super) fn from_redb(dir: &Path, engine: &Engine) -> StoreResult<()> {
    let file = dir.join(REDB_FILE);
    if !file.exists() {
        return Ok(());
    }
    let done = engine.read().get(Tb::Meta, META_FROM_REDB)?.is_some();
    if !done {
        let db = redb::Database::create(&file).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        migrate_to_runs(&txn)?;
        txn.commit().map_err(storage)?;
        let txn = db.begin_read().map_err(storage)?;
        let mut rows = 0u64;
        for t in Tb::ALL {
            let table = match txn.open_table(def(t)) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(storage(e)),
            };
            let mut w = engine.write();
            let mut in_chunk = 0;
            for entry in table.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                w.put(t, k.value(), v.value())?;
                rows += 1;
                in_chunk += 1;
                if in_chunk == COPY_CHUNK {
                    w.commit()?;
                    w = engine.write();
                    in_chunk = 0;
                }
            }
            w.commit()?;
        }
        let mut w = engine.write();
        w.put(Tb::Meta, META_FROM_REDB, &rows.to_be_bytes())?;
        w.commit()?;
        tracing::info!(
            rows,
            "embedded store: the redb file's rows are now in fjall"
        );
    }
    std::fs::rename(&file, dir.join(REDB_MIGRATED)).map_err(storage)?;
    Ok(())
}

/// Folds deliveries kept one row per message per recipient into runs and
/// drops the old tables: the second layout ([`DELIVERED_V2`],
/// `conv ‖ user ‖ seq`) and the first ([`DELIVERED_V1`], `msg ‖ user`, small
/// and old, so it is re-keyed in memory). Consecutive rows of one member with
/// the same time join when nothing but the member's own messages lies between
/// them (the recipient seqs in between are then all in the run); anything
/// else starts a new run, which is never wrong, only less compact.
fn migrate_to_runs(txn: &redb::WriteTransaction) -> StoreResult<()> {
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
        let conv_msgs = txn.open_table(def(Tb::ConvMsgs)).map_err(storage)?;
        let mut runs = txn.open_table(def(Tb::Runs)).map_err(storage)?;
        if has_v1 {
            let old = txn.open_table(DELIVERED_V1).map_err(storage)?;
            let messages = txn.open_table(def(Tb::Messages)).map_err(storage)?;
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
                let (_, m) = e.map_err(storage)?;
                if uuid_at(m.value(), 16) != u {
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
            runs.insert(k3(&c, &u, run.first).as_slice(), run_value(&run).as_slice())
                .map_err(storage)?;
            self.written += 1;
        }
        Ok(())
    }
}
