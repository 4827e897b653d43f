//! The Lua scripts: small, generic and slot-local. The rules live in Rust
//! (`crate::domain`); Redis only checks versions and applies writes
//! atomically, and reads what counting needs in one consistent step.

use super::seqs::SEQ_BUCKET;
use redis::Script;
use std::sync::LazyLock;

/// The most arguments one command given to [`APPLY`] may have: the script
/// runs it with `unpack`, and Lua's stack takes at most 8,000 values (a
/// command of a 10,000-member group's memberships failed with "too many
/// results to unpack"). Longer writes are split into several commands.
pub const MAX_ARGS: usize = 2_000;

/// Compare-and-apply. KEYS[1]: a hash whose field `v` is the version;
/// KEYS[2..]: the keys that share its lifetime (a conversation's; none for
/// other hashes). ARGV: expected version, queue registration time in ms (0:
/// none), lease in ms, now (ms, the node's clock), the TTL (s), how often
/// the lifetime is refreshed (ms), number of commands, how many of the last
/// commands' replies to return, then each command as its argument count
/// followed by its arguments (all keys in KEYS[1]'s slot; a short `HSET`
/// of KEYS[1] itself whose reply is not asked for is folded into the
/// script's own `HSET` of the version, one command for both: at most 64
/// folded values, far below what Lua's `unpack` takes, written before any
/// later `HSET` of KEYS[1] that is not folded; callers keep each
/// command under [`MAX_ARGS`] arguments for the same reason; two commands
/// are the script's own: `HAPPEND key field bytes [field bytes …]`, which
/// appends to hash fields, for the messages hash's buckets
/// (`keys::message_writes`), and `ZAPPEND key score old bytes [score old
/// bytes …]`, which replaces the sorted-set member `old` (empty: none) by
/// `old ‖ bytes` at `score`, adding before it removes so that the key is
/// never emptied and keeps its expiry, for the seq index's buckets
/// (`seqs.rs`; `old` is the member the caller read at the version it
/// commits at)); then a queue
/// index and a queue to register in it now (Redis clock) in the same atomic
/// step, or two empty strings: only on a single Redis server, where one
/// script may touch the index too (on a cluster it lives in another slot, so
/// the caller registers first and passes the registration time). That
/// registration is skipped while KEYS[1]'s `q` (when a commit last made it,
/// the node's clock) is within the lease of now: a drain forgets a queue
/// only when it is empty, and drops `q` in the same atomic step
/// ([`FORGET_DRAINED`]), so a `q` means registered. (Registering again at
/// least once per lease keeps a queue safe from a node of an earlier
/// release, whose drain forgets a queue registered longer than two leases
/// ago without looking at `q`.) Then,
/// optionally, the write's events to forward in the same step (again only on
/// a single Redis server, where the addressees' logs may be touched too):
/// the conversation's outbox, its hex id, the log retention, a fresh epoch,
/// the bus channel, the number of addressees and per addressee its hex id,
/// log meta hash, log, number of events and their payloads. When the outbox
/// is empty they are forwarded at once ([`FORWARD_TO`], with the TTL and the
/// refresh interval above) and never enter it; when it holds entries (a node
/// died before forwarding them, or is forwarding them now), they are
/// appended to it behind those, for the caller to forward in order. An
/// addressee whose log cannot take them (an error inside `forward_to`, caught
/// with `pcall`: Redis does not roll a script back, so an error must not
/// end it between the commands and the version) has its events appended to
/// the outbox too. Whether the outbox may hold entries is KEYS[1]'s `o`
/// (`0`: empty; set by this step, `1` whenever an event enters the outbox,
/// `0` when every event was forwarded), so a write into an empty outbox's
/// conversation does not read the outbox (`XLEN`) at all: only when `o` is
/// not `0`, which includes a meta hash without it (written by an earlier
/// release, whose nodes must be stopped before this release starts, as for
/// the seq index: docs/operations.md). A commit that appends events to the
/// outbox itself (a cluster, `--redis-wait-replicas`) sets `o` to `1` with
/// its `HSET` of KEYS[1]. Returns `{new version, {those replies}, 1 if every event
/// was forwarded, else 0}`, -1 if the version moved (the caller re-reads and
/// retries) or -2 if the queue registration is older than the lease (the
/// caller registers again).
///
/// Lifetime: when the hash's `x` (the last refresh) is older than the
/// refresh interval, every lifetime key gets the TTL and `x` becomes now.
/// The hash's `e` then records which lifetime keys exist and so carry the
/// expiry: `<ttl>:` and one `1` or `0` per key, in KEYS order. Between
/// refreshes a commit sends an EXPIRE only for a key it wrote that `e` does
/// not mark (a key created since), or that one of its commands may have
/// emptied (a command other than those that only add, unless it replied 0:
/// nothing removed; an emptied key is deleted, and writing it again would
/// create it without an expiry); each such EXPIRE updates the key's mark.
/// A mark made under another TTL (nodes started with different
/// `--hot-ttl-secs`) counts for nothing. The hash
/// itself gets its expiry only at a refresh (it exists then: the HSET of `v`
/// comes first).
///
/// So a conversation's keys live between the TTL minus the interval and the
/// TTL after its last write, and no key is left without one: a marked key's
/// expiry was set at or after the hash's own (at the same refresh, or
/// later), so while the hash lives (and with it `e`) no marked key has
/// expired (`maxmemory-policy noeviction`, as docs/deploy.md requires, so
/// none is evicted either); and writes to these keys outside this script set
/// their own expiry. In the common case a commit sends no EXPIRE at all.
pub static APPLY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{FORWARD_TO}{}",
        r#"
local meta = redis.call('HMGET', KEYS[1], 'v', 'x', 'e', 'q', 'o')
local v = tonumber(meta[1] or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
local reg = tonumber(ARGV[2])
if reg > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now - reg > tonumber(ARGV[3]) then return -2 end
end
local adds = {HSET = true, HSETNX = true, HINCRBY = true, ZADD = true, SADD = true, XADD = true,
  HAPPEND = true, ZAPPEND = true}
local reads = {XLEN = true}
local shared = {}
for j = 2, #KEYS do shared[KEYS[j]] = j - 1 end
local written = {}
local ncmds = tonumber(ARGV[7])
local kept_from = ncmds - tonumber(ARGV[8]) + 1
local replies = {}
local own = {}
local i = 9
for c = 1, ncmds do
  local n = tonumber(ARGV[i])
  local name = string.upper(ARGV[i + 1])
  local key = ARGV[i + 2]
  local r
  if name == 'HSET' and key == KEYS[1] and c < kept_from and #own + n - 2 <= 64 then
    for j = i + 3, i + n do own[#own + 1] = ARGV[j] end
  else
    if name == 'HSET' and key == KEYS[1] and #own > 0 then
      -- Fields folded so far go first: a later HSET of the same field wins.
      redis.call('HSET', KEYS[1], unpack(own))
      own = {}
    end
    if name == 'HAPPEND' then
      for j = i + 3, i + n, 2 do
        local f = ARGV[j]
        redis.call('HSET', key, f, (redis.call('HGET', key, f) or '') .. ARGV[j + 1])
      end
      r = 1
    elseif name == 'ZAPPEND' then
      for j = i + 3, i + n, 3 do
        local old = ARGV[j + 1]
        redis.call('ZADD', key, ARGV[j], old .. ARGV[j + 2])
        if old ~= '' then redis.call('ZREM', key, old) end
      end
      r = 1
    else
      r = redis.call(unpack(ARGV, i + 1, i + n))
    end
  end
  if shared[key] and not reads[name] then
    if adds[name] then
      if written[key] == nil then written[key] = true end
    elseif r ~= 0 then
      written[key] = false
    end
  end
  if c >= kept_from then replies[#replies + 1] = r end
  i = i + n + 1
end
local now, ttl = tonumber(ARGV[4]), ARGV[5]
if ARGV[i] ~= '' then
  local q = tonumber(meta[4] or '')
  if not q or math.abs(now - q) >= tonumber(ARGV[3]) then
    local t = redis.call('TIME')
    local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZADD', ARGV[i], 'GT', at, ARGV[i + 1])
    own[#own + 1] = 'q'
    own[#own + 1] = now
  end
end
i = i + 2
local forwarded = 0
if ARGV[i] then
  local outbox = ARGV[i]
  local groups = {}
  local a = i + 6
  for u = 1, tonumber(ARGV[i + 5]) do
    local k = tonumber(ARGV[a + 3])
    groups[u] = {user = ARGV[a], meta = ARGV[a + 1], log = ARGV[a + 2], ids = {},
      bodies = {unpack(ARGV, a + 4, a + 3 + k)}}
    a = a + 4 + k
  end
  local waits = meta[5] ~= '0' and redis.call('XLEN', outbox) > 0
  forwarded = 1
  for _, g in ipairs(groups) do
    if waits or not pcall(forward_to, ARGV[i + 1], tonumber(ARGV[i + 2]), ttl, ARGV[i + 3],
        ARGV[i + 4], now, tonumber(ARGV[6]), {g}) then
      for _, body in ipairs(g.bodies) do
        redis.call('XADD', outbox, '*', 'u', g.user, 'b', body)
      end
      if shared[outbox] and written[outbox] == nil then written[outbox] = true end
      forwarded = 0
    end
  end
  local o = forwarded == 1 and '0' or '1'
  if meta[5] ~= o then
    own[#own + 1] = 'o'
    own[#own + 1] = o
  end
end
local tag = ttl .. ':'
if #KEYS > 1 and now - tonumber(meta[2] or '0') >= tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[1], 'v', v + 1, 'x', now, unpack(own))
  local marks = {}
  for j = 2, #KEYS do marks[j - 1] = redis.call('EXPIRE', KEYS[j], ttl) == 1 and '1' or '0' end
  redis.call('HSET', KEYS[1], 'e', tag .. table.concat(marks))
elseif #KEYS > 1 then
  local e = meta[3]
  local marks = {}
  local valid = e and string.sub(e, 1, #tag) == tag
  for j = 1, #KEYS - 1 do
    marks[j] = valid and string.sub(e, #tag + j, #tag + j) == '1' and '1' or '0'
  end
  local changed = false
  for key, only_added in pairs(written) do
    local j = shared[key]
    if key ~= KEYS[1] and (not only_added or marks[j] ~= '1') then
      local mark = redis.call('EXPIRE', key, ttl) == 1 and '1' or '0'
      if mark ~= marks[j] then marks[j], changed = mark, true end
    end
  end
  if changed or not valid then
    redis.call('HSET', KEYS[1], 'v', v + 1, 'e', tag .. table.concat(marks), unpack(own))
  else
    redis.call('HSET', KEYS[1], 'v', v + 1, unpack(own))
  end
else
  redis.call('HSET', KEYS[1], 'v', v + 1, unpack(own))
end
return {v + 1, replies, forwarded}
"#
    ))
});

/// Appends outbox entries of one conversation to their addressees' replay
/// logs, each once and in order. KEYS: each addressee's log meta hash and
/// log, then optionally the conversation's outbox. ARGV: conversation,
/// retention (events), ttl (s), a fresh epoch to use for a log that has
/// none, bus channel, now (ms, the node's clock), how often a log's expiry
/// is refreshed (ms), the number of addressees, then per addressee its hex
/// id, its number of entries and each entry as its outbox id and its
/// payload, in outbox order. Entries at or before the last one forwarded
/// from the conversation to that log (`f:<conv>`) are skipped, so
/// forwarding twice is harmless. Each appended entry is `PUBLISH`ed on the
/// bus. With the outbox key, the entries are then deleted from it (`XDEL`)
/// in the same atomic step: on a single Redis server, where one script may
/// touch every key; on a cluster a call covers one addressee (its slot) and
/// the caller deletes after every call succeeded. Returns how many entries
/// were appended.
///
/// A log's two keys share one lifetime, as a conversation's do (see
/// [`APPLY`]): both get the TTL when the meta hash's `x` is older than the
/// refresh interval (always when the log is new: it has no `x`), so an
/// event costs no EXPIRE in the common case.
pub static FORWARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{FORWARD_TO}{}",
        r#"
local users = tonumber(ARGV[8])
local a = 9
local groups = {}
local ids = {}
for u = 1, users do
  local g = {meta = KEYS[2 * u - 1], log = KEYS[2 * u], user = ARGV[a], ids = {}, bodies = {}}
  local k = tonumber(ARGV[a + 1])
  for i = a + 2, a + 1 + 2 * k, 2 do
    g.ids[#g.ids + 1] = ARGV[i]
    g.bodies[#g.bodies + 1] = ARGV[i + 1]
    ids[#ids + 1] = ARGV[i]
  end
  a = a + 2 + 2 * k
  groups[u] = g
end
local total = forward_to(ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5],
  tonumber(ARGV[6]), tonumber(ARGV[7]), groups)
if #KEYS > 2 * users and #ids > 0 then
  redis.call('XDEL', KEYS[#KEYS], unpack(ids))
end
return total
"#
    ))
});

/// The forwarding of [`FORWARD`] as a Lua function, which [`APPLY`] uses
/// too: `forward_to(conv, retention, ttl, fresh epoch, bus, now, refresh
/// interval, groups)`, where each group is one addressee's `{meta = its log
/// meta hash, log = its log, user = its hex id, ids = the entries' outbox
/// ids, bodies = their payloads}`, in outbox order. A group with no ids holds
/// events that were never in the outbox (forwarded by the commit that made
/// them): each is appended, and `f:<conv>` is left as it is. Returns how
/// many entries were appended.
const FORWARD_TO: &str = r#"
local function cmp(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then if am < bm then return -1 else return 1 end end
  if as ~= bs then if as < bs then return -1 else return 1 end end
  return 0
end
local function forward_to(conv, keep, ttl, fresh_epoch, bus, now, refresh, groups)
  local total = 0
  for _, g in ipairs(groups) do
    local h = redis.call('HMGET', g.meta, 'epoch', 'f:' .. conv, 'x')
    local epoch, f, x = h[1], h[2], h[3]
    if not epoch then
      redis.call('DEL', g.log)
      epoch = fresh_epoch
      redis.call('HSET', g.meta, 'epoch', epoch, 'next', 0, 'trim', 0)
      f, x = false, false
    end
    local fresh = {}
    for i, body in ipairs(g.bodies) do
      local id = g.ids[i]
      if not id then
        fresh[#fresh + 1] = body
      elseif not f or cmp(id, f) > 0 then
        fresh[#fresh + 1] = body
        f = id
      end
    end
    if #fresh > 0 then
      local last = redis.call('HINCRBY', g.meta, 'next', #fresh)
      local first = last - #fresh
      local z = {}
      for j, body in ipairs(fresh) do
        z[#z + 1] = first + j
        z[#z + 1] = tostring(first + j) .. ':' .. body
      end
      redis.call('ZADD', g.log, unpack(z))
      if last > keep then
        local cut = last - keep
        redis.call('ZREMRANGEBYSCORE', g.log, '-inf', cut)
        redis.call('HSET', g.meta, 'trim', cut)
      end
      local fields = {}
      if f then fields[#fields + 1] = 'f:' .. conv; fields[#fields + 1] = f end
      local refreshed = now - tonumber(x or '0') >= refresh
      if refreshed then fields[#fields + 1] = 'x'; fields[#fields + 1] = now end
      if #fields > 0 then redis.call('HSET', g.meta, unpack(fields)) end
      if refreshed then
        redis.call('EXPIRE', g.meta, ttl)
        redis.call('EXPIRE', g.log, ttl)
      end
      for j, body in ipairs(fresh) do
        redis.call('PUBLISH', bus, g.user .. ':' .. epoch .. ':' .. tostring(first + j) .. ':' .. body)
      end
      total = total + #fresh
    end
  end
  return total
end
"#;

/// Gives a user's log an epoch if it has none. KEYS: meta, log. ARGV: fresh
/// epoch, ttl (s). Returns {epoch, next, trim}. A meta hash made here gets
/// the TTL (and no `x`, so the first event refreshes both keys).
pub static LOG_HEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('DEL', KEYS[2])
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'next', 0, 'trim', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {epoch, redis.call('HGET', KEYS[1], 'next'), redis.call('HGET', KEYS[1], 'trim')}
"#,
    )
});

/// Registers a queue as holding work. KEYS: the index. ARGV: queue key.
/// Returns the registration time (ms, Redis clock).
pub static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'GT', now, ARGV[1])
return now
"#,
    )
});

/// Forgets a drained queue if nobody registered it since `score` and the
/// registration is older than twice the lease. KEYS: the index. ARGV: queue,
/// score seen, lease (ms).
pub static UNREGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(s) == tonumber(ARGV[2]) and tonumber(s) < now - 2 * tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"#,
    )
});

/// Forgets a drained queue on a single Redis server, where the commit
/// registers its queue itself ([`APPLY`]) and skips that while the queue's
/// owner hash (a conversation's meta hash, a user's sharing hash) says it is
/// registered (`q`). KEYS: the index, the queue stream, the owner hash, and
/// for a conversation's queue its outbox, whose entries the registration
/// covers too (a drain forwards what a dead node left there; a commit with
/// events and nothing to persist, such as a window's summary, registers the
/// queue for that alone). ARGV: the queue. Only a queue with no entry left,
/// in the stream or the outbox, is forgotten, and its owner's `q` goes with
/// it in the same atomic step: so every entry a commit appended to either is
/// in a registered queue, whatever the timing of the drain. Returns 1 if
/// forgotten.
pub static FORGET_DRAINED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('XLEN', KEYS[2]) > 0 then return 0 end
if KEYS[4] and redis.call('XLEN', KEYS[4]) > 0 then return 0 end
redis.call('HDEL', KEYS[3], 'q')
return redis.call('ZREM', KEYS[1], ARGV[1])
"#,
    )
});

/// Deletes flushed entries from a queue stream and drops the stream once it
/// is empty, so idle conversations leave no key behind. KEYS: the stream.
/// ARGV: entry ids. Returns how many entries were deleted.
pub static XDEL_DROP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = redis.call('XDEL', KEYS[1], unpack(ARGV))
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return n
"#,
    )
});

/// Releases a lock if still held with `token`. KEYS: lock. ARGV: token.
pub static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// A consistent snapshot of what counting the receipts of some messages
/// needs (see `counts.rs`), read in one atomic step so that a write cannot
/// land between two of its parts. KEYS: the conversation's meta hash, `cx`,
/// `jz`, `tz` (the delivered prefixes), `rz`, `jr`, its runs hash, its completions hash, `gz` (the gapped set). ARGV: the number
/// of "own" users, their hex ids (senders and viewer), the number of run
/// buckets, the buckets (4 bytes each), the seqs per completion-cache field,
/// then each message's seq. Returns `{{mv, dp, v}, complex hex ids, {their
/// m: fields}, {their watermarks}, {own jz scores}, {own tz scores}, {own rz
/// scores}, runs loaded (0/1), {gapped members scored at least the lowest
/// seq asked about, with their scores}, {their tz scores}, {the runs fields
/// of those members then of the complex ones, bucket by bucket}, {own
/// watermarks}, {{the completion-cache fields of the messages' buckets,
/// d:<b> and r:<b>}, {their values}}, per message: {5 ZCOUNTs}}`.
pub static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local meta, cx, jz, tz, rz, jr, d, a, gz =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local function chunked(cmd, key, list, prefix)
  local out = {}
  for i = 1, #list, 1000 do
    local part = {}
    for j = i, math.min(i + 999, #list) do part[#part + 1] = (prefix or '') .. list[j] end
    local r = redis.call(cmd, key, unpack(part))
    for _, v in ipairs(r) do out[#out + 1] = v end
  end
  return out
end
local function raw(h)
  return (h:gsub('..', function(c) return string.char(tonumber(c, 16)) end))
end
local n_own = tonumber(ARGV[1])
local own = {}
for i = 1, n_own do own[i] = ARGV[1 + i] end
local n_buckets = tonumber(ARGV[2 + n_own])
local bs = {}
for i = 1, n_buckets do bs[i] = ARGV[2 + n_own + i] end
local csize = tonumber(ARGV[3 + n_own + n_buckets])
local first_seq = 4 + n_own + n_buckets
local low = ARGV[first_seq]
for i = first_seq, #ARGV do
  if tonumber(ARGV[i]) < tonumber(low) then low = ARGV[i] end
end
local complex = redis.call('SMEMBERS', cx)
local gapped = redis.call('ZRANGEBYSCORE', gz, low, '+inf', 'WITHSCORES')
local gapped_ids, fields = {}, {}
for i = 1, #gapped, 2 do
  gapped_ids[#gapped_ids + 1] = gapped[i]
  local r = raw(gapped[i])
  for _, b in ipairs(bs) do fields[#fields + 1] = r .. b end
end
for _, h in ipairs(complex) do
  local r = raw(h)
  for _, b in ipairs(bs) do fields[#fields + 1] = r .. b end
end
local out = {
  redis.call('HMGET', meta, 'mv', 'dp', 'v'),
  complex,
  chunked('HMGET', meta, complex, 'm:'),
  chunked('HMGET', meta, complex, 'w:'),
  chunked('ZMSCORE', jz, own),
  chunked('ZMSCORE', tz, own),
  chunked('ZMSCORE', rz, own),
  redis.call('HEXISTS', d, '_'),
  gapped,
  chunked('ZMSCORE', tz, gapped_ids),
  chunked('HMGET', d, fields),
  chunked('HMGET', meta, own, 'w:'),
}
local cfields, seen = {}, {}
for i = first_seq, #ARGV do
  local b = tostring(math.floor(tonumber(ARGV[i]) / csize))
  if not seen[b] then
    seen[b] = true
    cfields[#cfields + 1] = 'd:' .. b
    cfields[#cfields + 1] = 'r:' .. b
  end
end
out[#out + 1] = {cfields, chunked('HMGET', a, cfields)}
for i = first_seq, #ARGV do
  local s = ARGV[i]
  out[#out + 1] = {
    redis.call('ZCOUNT', jz, '-inf', s),
    redis.call('ZCOUNT', jz, '(' .. s, '+inf'),
    redis.call('ZCOUNT', tz, s, '+inf'),
    redis.call('ZCOUNT', rz, s, '+inf'),
    redis.call('ZCOUNT', jr, '(' .. s, '+inf'),
  }
end
return out
"#,
    )
});

/// Adds completion times to the cache (`keys::completions`). KEYS: the
/// completions hash. ARGV: the TTL (s), the membership version (the tag),
/// then pairs of a field (`d:<bucket>` or `r:<bucket>`) and an entry
/// (`keys::completion_entry`: its first byte's low 6 bits are the seq's
/// offset in the bucket, its high 2 the length of what follows less one).
/// A field whose tag is another version (or that is in an earlier
/// release's text form, `<tag>;…`) is replaced by `<tag>#` and the entry;
/// an entry whose offset the field holds already is left as it is (a
/// completion time, once every recipient is in, does not change while the
/// membership version stays). The hash gets the TTL (it shares its
/// conversation's lifetime, and this write is outside the commit script).
/// Returns the number of entries added.
pub static CACHE_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local head = ARGV[2] .. '#'
local added = 0
for i = 3, #ARGV, 2 do
  local field, entry = ARGV[i], ARGV[i + 1]
  local v = redis.call('HGET', KEYS[1], field)
  if not v or string.sub(v, 1, #head) ~= head then v = head end
  local offset = string.byte(entry, 1) % 64
  local p, found = #head + 1, false
  while p <= #v do
    local b = string.byte(v, p)
    if b % 64 == offset then
      found = true
      break
    end
    p = p + 2 + math.floor(b / 64)
  end
  if not found then
    redis.call('HSET', KEYS[1], field, v .. entry)
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return added
"#,
    )
});

/// What a write by one member needs of a conversation, in one round trip.
/// KEYS: the conversation's meta hash (which holds the watermarks too, as
/// `w:<member>`). ARGV: the member's hex id, the largest member count read
/// in full (followed by `+` when the caller expects the conversation to be
/// that small: the script then reads the whole hash at once, one command
/// instead of two, and picks the fields out itself if it is larger after
/// all; the reply is the same), and the sharing keys' prefix and suffix around a hex user id
/// (see [`VIEW_OF`]; unused here). Returns `{0}` if the conversation is not
/// in Redis; `{1, meta}` (the meta hash as a flat field/value list) if it
/// has at most that many members; otherwise `{2, {v, mv, t, n, m:<member>,
/// th, w:<member>, sb}}`, which is all a group write by that member depends on
/// (`th`: whether it has threads; `sb`: its seq index is in buckets,
/// `seqs.rs`).
pub static VIEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{VIEW_OF}\nreturn view_of()")));

/// [`VIEW`] as a Lua function `view_of()` (its reply, with the same KEYS[1],
/// ARGV[1] and ARGV[2]), which the scripts that read more for one
/// write start with, and four helpers for them: `members_of(view)`, the hex
/// ids of a view read in full (`{1, …}`), `own_watermark(view)`, the
/// member's (ARGV[1]) watermark in a view (nil without one),
/// `timed_index(view, seq index)`, the index if the conversation's is timed
/// (for `messages_at`), and
/// `sharing_of(users)`, the
/// sharing settings of those users as `{users, {s, v, s, v, …}}` (false
/// where absent). The settings live in the users' own keys, which ARGV[3]
/// and ARGV[4] name around a hex id: on a single Redis server, where one
/// script may read any key, so that the setting is read in the same atomic
/// step as the conversation's version. On a cluster they are in other slots:
/// ARGV[3] is empty and `sharing_of` reads nothing (the caller reads them
/// after the view, as before).
const VIEW_OF: &str = r#"
local function members_of(view)
  local members = {}
  local meta = view[2]
  for i = 1, #meta, 2 do
    if string.sub(meta[i], 1, 2) == 'm:' then members[#members + 1] = string.sub(meta[i], 3) end
  end
  return members
end
local function sharing_of(users)
  if ARGV[3] == '' then return {{}, {}} end
  local values = {}
  for _, u in ipairs(users) do
    local h = redis.call('HMGET', ARGV[3] .. u .. ARGV[4], 's', 'v')
    values[#values + 1] = h[1]
    values[#values + 1] = h[2]
  end
  return {users, values}
end
local function view_of()
  local whole = tonumber(string.match(ARGV[2], '^%d+'))
  local fields
  if string.sub(ARGV[2], -1) == '+' then
    local meta = redis.call('HGETALL', KEYS[1])
    local at = {}
    for i = 1, #meta, 2 do at[meta[i]] = meta[i + 1] end
    local n = at['n']
    if not n then return {0} end
    if tonumber(n) <= whole then return {1, meta} end
    fields = {at['v'] or false, at['mv'] or false, at['t'] or false, n,
      at['m:' .. ARGV[1]] or false, at['th'] or false, at['w:' .. ARGV[1]] or false,
      at['sb'] or false}
    return {2, fields}
  end
  fields = redis.call('HMGET', KEYS[1], 'v', 'mv', 't', 'n', 'm:' .. ARGV[1], 'th',
    'w:' .. ARGV[1], 'sb')
  local n = fields[4]
  if not n then return {0} end
  if tonumber(n) <= whole then
    return {1, redis.call('HGETALL', KEYS[1])}
  end
  return {2, fields}
end
-- The seq index `key` if the view's conversation has a timed one (its
-- meta hash's `sb` is 3: no messages hash, `seqs::SeqForm::Timed`), else
-- false: the third argument of `messages_at`.
local function timed_index(view, key)
  local form
  if view[1] == 2 then
    form = view[2][8]
  else
    local meta = view[2]
    for i = 1, #meta, 2 do
      if meta[i] == 'sb' then form = meta[i + 1] end
    end
  end
  return form == '3' and key
end
local function own_watermark(view)
  if view[1] == 2 then return view[2][7] or nil end
  local meta, own = view[2], 'w:' .. ARGV[1]
  for i = 1, #meta, 2 do
    if meta[i] == own then return meta[i + 1] end
  end
  return nil
end
"#;

/// What a MarkDelivered by one member needs of a conversation, in one round
/// trip: [`VIEW`]'s reply, then the named messages and the delivery-runs
/// fields at their seqs. KEYS: the conversation's meta hash, messages
/// hash, runs hash. ARGV: `VIEW`'s four, the seqs per runs
/// bucket, then the raw ids of the messages. Returns `{0}` if the
/// conversation is not in Redis; else `VIEW`'s two parts, then `{the
/// messages' values}` (false where unknown), `runs_at` ([`RUNS_AT`]) the
/// messages' seqs of every member of a view read in full or of the caller
/// alone in a group, `sharing_of` the members of a view read in full
/// (none otherwise: a group delivery does not need them), and the caller's
/// prefix facts: `{its prefix (false if it has none: not a simple member,
/// or not a group, whose counts do not use prefixes),
/// the seq index's members in the two buckets from the prefix's next seq,
/// WITHSCORES}` (KEYS 4 and 5: the prefixes, the seq index; its records
/// after the prefix are walked in Rust, at most `prefix::PREFIX_WALK` of them).
pub static DELIVERY_VIEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{VIEW_OF}{RUNS_AT}{MESSAGES_AT}local seq_bucket = {SEQ_BUCKET}\n{}",
        r#"
local out = view_of()
if out[1] == 0 then return out end
local members = {ARGV[1]}
if out[1] == 1 then members = members_of(out) end
local values = messages_at(KEYS[2], {unpack(ARGV, 6)}, timed_index(out, KEYS[5]))
local seqs = {}
for i = 1, #ARGV - 5 do
  seqs[#seqs + 1] = values[i] and seq_of(values[i])
end
out[3] = values
local runs = runs_at(KEYS[3], tonumber(ARGV[5]), members, seqs)
out[4], out[5], out[6] = runs[1], runs[2], runs[3]
local sharing = sharing_of(out[1] == 1 and members or {})
out[7], out[8] = sharing[1], sharing[2]
local prefix = out[1] == 2 and redis.call('ZSCORE', KEYS[4], ARGV[1])
local after = {}
if prefix then
  local start = math.floor((tonumber(prefix) + 1) / seq_bucket) * seq_bucket
  after = redis.call('ZRANGEBYSCORE', KEYS[5], start, start + 2 * seq_bucket - 1, 'WITHSCORES')
end
out[9] = {prefix or false, after}
return out
"#
    ))
});

/// Lua helpers for the scripts that read delivery runs with a view:
/// `seq_of(value)`, the seq at the start of a messages-hash value
/// (`keys::message_value`: postcard, a varint; nil if it is cut short), and
/// `runs_at(runs hash, seqs per bucket, members, seqs)`: `{the buckets of
/// the seqs (nil entries skipped), the members, {the runs hash's '_', then
/// each member's field at every bucket, member by member}}`. A field is `raw
/// user ‖ bucket` (4 bytes, big-endian), as `runs::field` makes it.
const RUNS_AT: &str = r#"
local function seq_of(v)
  local s, mul = 0, 1
  for i = 1, 10 do
    local b = string.byte(v, i)
    if not b then return nil end
    s = s + (b % 128) * mul
    if b < 128 then return s end
    mul = mul * 128
  end
  return nil
end
local function runs_at(key, size, members, seqs)
  local seen, buckets = {}, {}
  for i = 1, table.maxn(seqs) do
    local s = seqs[i]
    if s then
      local b = math.floor(s / size)
      if not seen[b] then seen[b] = true; buckets[#buckets + 1] = b end
    end
  end
  local fields = {'_'}
  for _, m in ipairs(members) do
    local r = (m:gsub('..', function(c) return string.char(tonumber(c, 16)) end))
    for _, b in ipairs(buckets) do
      fields[#fields + 1] = r .. string.char(math.floor(b / 16777216) % 256,
        math.floor(b / 65536) % 256, math.floor(b / 256) % 256, b % 256)
    end
  end
  return {buckets, members, redis.call('HMGET', key, unpack(fields))}
end
"#;

/// Appends records to an id-index bucket field (`keys::id_record`:
/// 26 bytes each; a call's records are of distinct ids), skipping those it
/// holds already (none to look for in a new field), unless that would take
/// the field past a size. KEYS[1]: the index key. ARGV: its expiry (ms,
/// `PEXPIREAT`, set with each write as for the index's other fields), the
/// most bytes the field may hold, the field, the records. Returns 1 if
/// they are in the field, 0 if it is full (the caller writes them a field
/// each).
pub static INDEX_APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HGET', KEYS[1], ARGV[3]) or ''
if cur == '' then
  if #ARGV[4] > tonumber(ARGV[2]) then return 0 end
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
  return 1
end
local have, add = {}, {}
for p = 1, #cur, 26 do have[string.sub(cur, p, p + 25)] = true end
local recs = ARGV[4]
for p = 1, #recs, 26 do
  local r = string.sub(recs, p, p + 25)
  if not have[r] then
    add[#add + 1] = r
    have[r] = true
  end
end
if #cur + 26 * #add > tonumber(ARGV[2]) then return 0 end
if #add > 0 then redis.call('HSET', KEYS[1], ARGV[3], cur .. table.concat(add)) end
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// Lua helper for the scripts that look messages up by id:
/// `messages_at(messages hash, raw ids, seq index or false)`, each id's
/// messages-hash value (false where absent) from its own field or from its
/// bucket's records (`keys::message_writes`: the id's first 6 bytes name
/// the bucket; a record is the id's other 10 bytes, the value's length in
/// one byte, the value), in one `HMGET` of the ids and their distinct
/// buckets (1,000 fields at a time). Given the seq index (a conversation
/// whose index is `seqs::SeqForm::Timed`: no messages hash), the values are
/// made from its records instead (`timed_values`), in one `ZRANGE` of its
/// at most 128 members.
const MESSAGES_AT: &str = r#"
local function varint(n)
  local out = {}
  repeat
    local b = n % 128
    n = (n - b) / 128
    if n > 0 then b = b + 128 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end
local function be8(n)
  local out = {}
  for j = 8, 1, -1 do
    out[j] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end
-- A record's send time (`seqs::record`): a zigzag varint of the time less
-- the id's base (`seqs::time_base`: its first 6 bytes as ms if its version
-- nibble is 7, else 0), written back as postcard writes the time (an i64:
-- a zigzag varint of the time itself).
local function sent_time(id, bytes)
  local z, mul = 0, 1
  for i = 1, #bytes do
    z = z + (string.byte(bytes, i) % 128) * mul
    mul = mul * 128
  end
  local t = (z % 2 == 0) and z / 2 or -(z + 1) / 2
  if math.floor(string.byte(id, 7) / 16) == 7 then
    local base = 0
    for j = 1, 6 do base = base * 256 + string.byte(id, j) end
    t = t + base
  end
  return varint(t >= 0 and 2 * t or -2 * t - 1)
end
-- A timed index is one record per member, scored by its seq
-- (`seqs::record`): flags (128: in a thread, 64: timed) and seq mod 64 ‖
-- id ‖ sender ‖ root seq (8 bytes, big-endian; in a thread) ‖ the send
-- time (`sent_time`). `keys::message_value` is postcard `(seq, sender,
-- time)` (varints, 16 then the sender's 16 bytes) ‖ root id ‖ root seq for
-- a thread message.
local function timed_values(sb, ids)
  local want, found, roots, id_at = {}, {}, {}, {}
  for _, id in ipairs(ids) do want[id] = true end
  local rows = redis.call('ZRANGE', sb, 0, -1, 'WITHSCORES')
  for i = 1, #rows, 2 do
    local v, seq = rows[i], tonumber(rows[i + 1])
    local k, id = string.byte(v, 1), string.sub(v, 2, 17)
    id_at[seq] = id
    if want[id] and k % 128 >= 64 then
      local at = 34
      if k >= 128 then
        local root = 0
        for j = 34, 41 do root = root * 256 + string.byte(v, j) end
        roots[id] = root
        at = 42
      end
      found[id] = varint(seq) .. '\16' .. string.sub(v, 18, 33) .. sent_time(id, string.sub(v, at))
    end
  end
  for id, root in pairs(roots) do
    -- A root missing from the index leaves the value cut: corrupt.
    if id_at[root] then found[id] = found[id] .. id_at[root] .. be8(root) end
  end
  local out = {}
  for i, id in ipairs(ids) do out[i] = found[id] or false end
  return out
end
local function messages_at(key, ids, sb)
  if sb then return timed_values(sb, ids) end
  local fields, at = {}, {}
  for i, id in ipairs(ids) do fields[i] = id end
  for _, id in ipairs(ids) do
    local b = string.sub(id, 1, 6)
    if not at[b] then
      fields[#fields + 1] = b
      at[b] = #fields
    end
  end
  local values = {}
  for i = 1, #fields, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, #part do values[i + j - 1] = part[j] end
  end
  local parsed, found = {}, {}
  for i, id in ipairs(ids) do
    local v = values[i]
    if not v then
      local b = string.sub(id, 1, 6)
      local records = parsed[b]
      if not records then
        records = {}
        local r = values[at[b]]
        if r then
          local p = 1
          while p + 10 <= #r do
            local len = string.byte(r, p + 10)
            records[string.sub(r, p, p + 9)] = string.sub(r, p + 11, p + 10 + len)
            p = p + 11 + len
          end
        end
        parsed[b] = records
      end
      v = records[string.sub(id, 7)] or false
    end
    found[i] = v
  end
  return found
end
"#;

/// Messages by id, as [`MESSAGES_AT`] finds them: KEYS: the conversation's
/// meta hash, messages hash, seq index. ARGV: raw ids. Returns their
/// messages-hash values (false where absent), from the seq index when the
/// meta hash names it timed (`sb` = 3), read in the same step.
pub static MESSAGES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{MESSAGES_AT}{}",
        r#"
local timed = redis.call('HGET', KEYS[1], 'sb') == '3' and KEYS[3]
return messages_at(KEYS[2], ARGV, timed)
"#
    ))
});

/// What a MarkReadUpTo by one member needs of a conversation, in one round
/// trip: [`VIEW`]'s reply, the target message, and the seq index after the
/// member's lower watermark (the messages the read may cover and those that
/// stay unread after it, in one range). KEYS: the conversation's meta hash,
/// messages hash, seq index, runs hash. ARGV: `VIEW`'s
/// four, the target's raw id, the seqs per runs bucket. Returns `{0}` if the
/// conversation is not in Redis; else `VIEW`'s two parts, then the
/// target's messages-hash value (false if unknown), the seq the range starts
/// after (the smaller of the member's two watermarks, as text; 0 without
/// one), the range (the seq index's buckets from the one of the seq after
/// it, `ZRANGEBYSCORE … WITHSCORES`: the caller keeps the seqs after it),
/// `sharing_of` the members
/// of a view read in full, or the reader alone; then, for a view read in full
/// (a direct chat, whose events carry whole states), `runs_at` every member
/// at the seqs of the range up to the target's and `{raw id, messages-hash
/// value (false if absent), …}` of those messages (empty lists, the runs'
/// without the `'_'`, otherwise).
pub static READ_VIEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{VIEW_OF}{RUNS_AT}{MESSAGES_AT}local seq_bucket = {SEQ_BUCKET}\n{}",
        r#"
local out = view_of()
if out[1] == 0 then return out end
local wm = own_watermark(out)
local from = '0'
if wm then
  local s, p = string.match(wm, '^(%d+):(%d+)$')
  if s then
    if tonumber(s) <= tonumber(p) then from = s else from = p end
  end
end
local timed = timed_index(out, KEYS[3])
out[3] = messages_at(KEYS[2], {ARGV[5]}, timed)[1]
out[4] = from
out[5] = redis.call('ZRANGEBYSCORE', KEYS[3],
  math.floor((tonumber(from) + 1) / seq_bucket) * seq_bucket, '+inf', 'WITHSCORES')
local members = out[1] == 1 and members_of(out) or {ARGV[1]}
local sharing = sharing_of(members)
out[6], out[7] = sharing[1], sharing[2]
local target = out[3] and seq_of(out[3])
if out[1] == 1 and target then
  local seqs, ids = {}, {}
  local range, after = out[5], tonumber(from)
  -- A member's records (`seqs::record`), in the bucket of its score: seq
  -- mod seq_bucket, with 128 for a thread message (8 more bytes) and 64
  -- for a timed one (a varint after the rest) ‖ id ‖ sender.
  for i = 1, #range, 2 do
    local v = range[i]
    local base = math.floor(tonumber(range[i + 1]) / seq_bucket) * seq_bucket
    local p = 1
    while p <= #v do
      local k = string.byte(v, p)
      local s = base + k % 64
      if s > after and s <= target then
        seqs[#seqs + 1] = s
        ids[#ids + 1] = string.sub(v, p + 1, p + 16)
      end
      p = p + (k >= 128 and 41 or 33)
      if k % 128 >= 64 then
        while (string.byte(v, p) or 0) >= 128 do p = p + 1 end
        p = p + 1
      end
    end
  end
  local runs = runs_at(KEYS[4], tonumber(ARGV[6]), members, seqs)
  out[8], out[9], out[10] = runs[1], runs[2], runs[3]
  -- The target's value was read above: the others' only (none, for a
  -- read of one message).
  local others, slot = {}, {}
  for j = 1, #ids do
    if ids[j] ~= ARGV[5] then
      others[#others + 1] = ids[j]
      slot[#others] = j
    end
  end
  local values = {}
  if #others > 0 then
    local found = messages_at(KEYS[2], others, timed)
    for i = 1, #others do values[slot[i]] = found[i] end
  end
  local covered = {}
  for j = 1, #ids do
    covered[#covered + 1] = ids[j]
    if ids[j] == ARGV[5] then
      covered[#covered + 1] = out[3]
    else
      covered[#covered + 1] = values[j]
    end
  end
  out[11] = covered
else
  out[8], out[9], out[10], out[11] = {}, {}, {}, {}
end
return out
"#
    ))
});

/// One page's members of a conversation, in user-id order: KEYS: the meta
/// hash, the member list (`keys::member_list`). ARGV: the hex id to start
/// after ('' for the first page), how many, [`keys::UNLISTED_MAX`].
/// Returns `false` if the conversation is not in Redis; else `{hex ids,
/// their memberships (the meta hash's `m:<id>`)}`: from the list, the
/// page and one more (so the caller knows whether the list goes on); for
/// a conversation without a complete list of at most `UNLISTED_MAX`
/// members ever, every member, in no order (the caller sorts and pages:
/// Lua's string order follows the server's locale, not bytes).
///
/// The list is complete once the meta hash's `ml` is set. A conversation
/// without `ml` (a small one, or one whose keys were written before the
/// list existed) may have members missing from the list: past
/// `UNLISTED_MAX` members the first call builds it from the meta hash's
/// `m:` fields, with the meta hash's remaining lifetime, and sets `ml`, in
/// the same atomic step. From then on every membership commit adds its
/// member (`index_member`), and a re-warm writes every member.
pub static MEMBERS_AFTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'ml') ~= '1' then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl == -2 then return false end
  local ids, fields = {}, {}
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 2) == 'm:' then
      ids[#ids + 1] = string.sub(f, 3)
      fields[#fields + 1] = f
    end
  end
  if #ids <= tonumber(ARGV[3]) then
    if #ids == 0 then return {{}, {}} end
    return {ids, redis.call('HMGET', KEYS[1], unpack(fields))}
  end
  for i = 1, #ids, 1000 do
    local add = {}
    for j = i, math.min(i + 999, #ids) do
      add[#add + 1] = 0
      add[#add + 1] = ids[j]
    end
    redis.call('ZADD', KEYS[2], unpack(add))
  end
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  redis.call('HSET', KEYS[1], 'ml', '1')
end
local from = '-'
if ARGV[1] ~= '' then from = '(' .. ARGV[1] end
local ids = redis.call('ZRANGEBYLEX', KEYS[2], from, '+', 'LIMIT', 0, tonumber(ARGV[2]) + 1)
if #ids == 0 then return {{}, {}} end
local fields = {}
for i, id in ipairs(ids) do fields[i] = 'm:' .. id end
return {ids, redis.call('HMGET', KEYS[1], unpack(fields))}
"#,
    )
});
