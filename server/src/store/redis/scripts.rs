//! The Lua scripts: small, generic and slot-local. The rules live in Rust
//! (`crate::domain`); Redis only checks versions and applies writes
//! atomically, and reads what counting needs in one consistent step.

use redis::Script;
use std::sync::LazyLock;

mod views;
pub use views::*;

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
