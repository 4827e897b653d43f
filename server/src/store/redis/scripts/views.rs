//! The scripts that read what one call needs of a conversation in one
//! step: its view, the messages a write names (from the messages hash or a
//! timed seq index), the delivery runs at their seqs, a page of members.

use super::super::seqs::SEQ_BUCKET;
use redis::Script;
use std::sync::LazyLock;

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
    -- A timed index holds every thread's root (`seqs::timeable`).
    if not id_at[root] then error('corrupt seq index: a thread message without its root') end
    found[id] = found[id] .. id_at[root] .. be8(root)
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
