//! Key names. Every key of one conversation carries the hash tag `{<conv>}`
//! and every key of one user the tag `{u<user>}`, so a Redis Cluster keeps each
//! group of keys in one slot and a Lua script may touch all of them at once.
//! See docs/storage.md for what each key holds and how long it lives.

use crate::domain::{ConversationId, Message, MessageId, Seq, ThreadRoot, UserId};

/// The meta hash's field holding `u`'s read watermark in the main timeline
/// (`seq:public_seq`): beside the membership, so that a write's view reads
/// both with the version in one `HMGET`, and a read's commit writes it in
/// the script's own `HSET` of the version.
pub fn watermark_field(u: &UserId) -> String {
    format!("w:{}", u.simple())
}

/// A read-history entry of the `h` key: `user ‖ kind ‖ seq ‖ ms` (kind 0:
/// the true watermark, 1: the public one), so that one member's entries of
/// one kind are a lexicographic range ordered by seq.
pub fn history_entry(u: &UserId, public: bool, seq: u64, at: i64) -> Vec<u8> {
    let mut e = history_prefix(u, public);
    e.extend_from_slice(&seq.to_be_bytes());
    e.extend_from_slice(&(at.max(0) as u64).to_be_bytes());
    e
}

/// The first bytes of every history entry of `u` and `public`.
pub fn history_prefix(u: &UserId, public: bool) -> Vec<u8> {
    let mut e = Vec::with_capacity(33);
    e.extend_from_slice(u.as_bytes());
    e.push(u8::from(public));
    e
}

/// `(seq, ms)` of a history entry.
pub fn parse_history_entry(e: &[u8]) -> Option<(u64, i64)> {
    let seq = u64::from_be_bytes(e.get(17..25)?.try_into().ok()?);
    let at = u64::from_be_bytes(e.get(25..33)?.try_into().ok()?);
    (e.len() == 33).then_some((seq, at as i64))
}

/// A history entry of a thread's position: `user ‖ kind ‖ root seq ‖ seq ‖
/// ms` (kind 2: the true position, 3: the public one), in the same key as
/// the main timeline's (whose kinds 0 and 1 sort before), so that one
/// member's entries of one kind in one thread are a range ordered by seq.
pub fn thread_history_entry(u: &UserId, public: bool, root: Seq, seq: u64, at: i64) -> Vec<u8> {
    let mut e = thread_history_prefix(u, public, root);
    e.extend_from_slice(&seq.to_be_bytes());
    e.extend_from_slice(&(at.max(0) as u64).to_be_bytes());
    e
}

/// The first bytes of every history entry of `u`, `public` and thread `root`.
pub fn thread_history_prefix(u: &UserId, public: bool, root: Seq) -> Vec<u8> {
    let mut e = Vec::with_capacity(41);
    e.extend_from_slice(u.as_bytes());
    e.push(2 + u8::from(public));
    e.extend_from_slice(&root.to_be_bytes());
    e
}

/// `(seq, ms)` of a [`thread_history_entry`].
pub fn parse_thread_history_entry(e: &[u8]) -> Option<(u64, i64)> {
    let seq = u64::from_be_bytes(e.get(25..33)?.try_into().ok()?);
    let at = u64::from_be_bytes(e.get(33..41)?.try_into().ok()?);
    (e.len() == 41).then_some((seq, at as i64))
}

/// A member of the seq index as conversations written before `sb` hold it
/// (`P:{C}:sq`, scored by seq; read only to write it again, `seqs.rs`):
/// message ‖ sender, raw, and for a message in a thread its root's seq (8
/// bytes, big-endian).
pub fn seq_member(m: &MessageId, sender: &UserId, thread: Option<Seq>) -> Vec<u8> {
    let mut e = Vec::with_capacity(40);
    e.extend_from_slice(m.as_bytes());
    e.extend_from_slice(sender.as_bytes());
    if let Some(root) = thread {
        e.extend_from_slice(&root.to_be_bytes());
    }
    e
}

/// `(message, sender, thread root's seq)` of a [`seq_member`].
pub fn parse_seq_member(e: &[u8]) -> Option<(MessageId, UserId, Option<Seq>)> {
    let thread = match e.len() {
        32 => None,
        40 => Some(u64::from_be_bytes(e[32..40].try_into().ok()?)),
        _ => return None,
    };
    Some((
        MessageId::from_slice(&e[..16]).ok()?,
        UserId::from_slice(&e[16..32]).ok()?,
        thread,
    ))
}

/// A messages-hash value: what the field (the raw id) and the key (the
/// conversation) do not say. A message in a thread has its root after it
/// (root id ‖ root seq, 24 bytes), which a reader of the first part alone
/// (postcard ignores what follows) does not see.
pub fn message_value(m: &Message, thread: Option<ThreadRoot>) -> Vec<u8> {
    let mut v = super::enc(&(m.seq, m.sender, m.sent_at));
    if let Some(root) = thread {
        v.extend_from_slice(root.id.as_bytes());
        v.extend_from_slice(&root.seq.to_be_bytes());
    }
    v
}

/// The messages-hash field that holds a bucket of messages: the first 6
/// bytes of their ids, for UUIDv7 ids the millisecond they were minted in
/// (a batch minted in a loop is one or two buckets; consecutive batches are
/// others).
pub const MESSAGE_BUCKET_BYTES: usize = 6;

/// The bucket field of message `id` ([`MESSAGE_BUCKET_BYTES`]).
pub fn message_bucket(id: &MessageId) -> &[u8] {
    &id.as_bytes()[..MESSAGE_BUCKET_BYTES]
}

/// How many messages of one bucket a call registers at least for them to
/// share the bucket's field: fewer keep a field each. A record is about 37
/// bytes, so two already pass Redis's `hash-max-listpack-value` (64) and
/// make the whole hash a hash table (about 90 B per field instead of about
/// 50 in the listpack): a conversation of messages registered one or a
/// few at a time keeps the compact encoding.
pub const MESSAGE_BUCKET_MIN: usize = 8;

/// The most bytes of records a bucket field holds. A bucket of UUIDv7 ids
/// spans one millisecond of minting, so this bounds only a burst (an import of ids
/// minted at once): past it, messages keep a field each, and a lookup never
/// reads more than this for one bucket.
pub const MESSAGE_BUCKET_MAX_BYTES: usize = 4096;

/// The messages-hash writes for newly registered messages ([`MessageWrites`]).
/// UUIDv7 messages that share a bucket with at least
/// [`MESSAGE_BUCKET_MIN`] - 1 others of the same call are appended to the
/// bucket's field as records (the rest of the id, 10 bytes ‖ the value's
/// length, 1 byte ‖ the [`message_value`]), while the field stays within
/// [`MESSAGE_BUCKET_MAX_BYTES`] (`held`: the bytes a bucket field holds
/// already); every other message gets a field of its own (the raw id). So a
/// batch costs about its records' bytes (one field per millisecond of ids). Readers
/// look a message up in both ([`find_in_bucket`]).
pub fn message_writes(
    msgs: &[(Message, Option<ThreadRoot>)],
    held: impl Fn(&[u8]) -> usize,
) -> MessageWrites {
    let mut by_bucket: std::collections::BTreeMap<&[u8], Vec<&(Message, Option<ThreadRoot>)>> =
        std::collections::BTreeMap::new();
    let mut out = MessageWrites::default();
    for m in msgs {
        if super::v7_millis(&m.0.id).is_some() {
            by_bucket
                .entry(message_bucket(&m.0.id))
                .or_default()
                .push(m);
        } else {
            out.own
                .push((m.0.id.as_bytes().to_vec(), message_value(&m.0, m.1)));
        }
    }
    for (bucket, in_bucket) in by_bucket {
        let mut records = Vec::new();
        let room = MESSAGE_BUCKET_MAX_BYTES.saturating_sub(held(bucket));
        for (m, thread) in in_bucket.iter().copied() {
            let value = message_value(m, *thread);
            let record_len = 16 - MESSAGE_BUCKET_BYTES + 1 + value.len();
            if in_bucket.len() < MESSAGE_BUCKET_MIN || records.len() + record_len > room {
                out.own.push((m.id.as_bytes().to_vec(), value));
                continue;
            }
            records.extend_from_slice(&m.id.as_bytes()[MESSAGE_BUCKET_BYTES..]);
            records.push(value.len() as u8);
            records.extend_from_slice(&value);
        }
        if !records.is_empty() {
            out.appends.push((bucket.to_vec(), records));
        }
    }
    out
}

/// [`message_writes`]: `(field, value)` pairs to set, and `(bucket field,
/// records)` pairs to append.
#[derive(Debug, Default)]
pub struct MessageWrites {
    /// Raw id -> [`message_value`], for a message with a field of its own.
    pub own: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bucket field -> records to append.
    pub appends: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The [`message_value`] of `id` in a bucket field's records, if there.
pub fn find_in_bucket<'a>(records: &'a [u8], id: &MessageId) -> Option<&'a [u8]> {
    let rest = &id.as_bytes()[MESSAGE_BUCKET_BYTES..];
    let mut at = 0;
    while at + rest.len() < records.len() {
        let len = records[at + rest.len()] as usize;
        let value = records.get(at + rest.len() + 1..at + rest.len() + 1 + len)?;
        if &records[at..at + rest.len()] == rest {
            return Some(value);
        }
        at += rest.len() + 1 + len;
    }
    None
}

/// The message `id` of `c` from its [`message_value`].
pub fn parse_message_value(c: &ConversationId, id: &MessageId, v: &[u8]) -> Option<Message> {
    parse_message_entry(c, id, v).map(|(m, _)| m)
}

/// The message `id` of `c` and its thread from its [`message_value`].
pub fn parse_message_entry(
    c: &ConversationId,
    id: &MessageId,
    v: &[u8],
) -> Option<(Message, Option<ThreadRoot>)> {
    let ((seq, sender, sent_at), rest): ((u64, UserId, i64), &[u8]) =
        postcard::take_from_bytes(v).ok()?;
    let thread = match rest.len() {
        0 => None,
        24 => Some(ThreadRoot {
            id: MessageId::from_slice(&rest[..16]).ok()?,
            seq: u64::from_be_bytes(rest[16..24].try_into().ok()?),
        }),
        _ => return None,
    };
    Some((
        Message {
            id: *id,
            conversation: *c,
            seq,
            sender,
            sent_at,
        },
        thread,
    ))
}

/// A thread-index member ([`Keys::thread_messages`]): `root seq ‖ seq ‖
/// message ‖ sender`, raw (48 bytes, a listpack entry), so that a thread's
/// messages are one lexicographic range in seq order.
pub fn thread_member(root: Seq, seq: Seq, m: &MessageId, sender: &UserId) -> Vec<u8> {
    let mut e = Vec::with_capacity(48);
    e.extend_from_slice(&root.to_be_bytes());
    e.extend_from_slice(&seq.to_be_bytes());
    e.extend_from_slice(m.as_bytes());
    e.extend_from_slice(sender.as_bytes());
    e
}

/// `(root seq, seq, message, sender)` of a [`thread_member`].
pub fn parse_thread_member(e: &[u8]) -> Option<(Seq, Seq, MessageId, UserId)> {
    if e.len() != 48 {
        return None;
    }
    Some((
        u64::from_be_bytes(e[..8].try_into().ok()?),
        u64::from_be_bytes(e[8..16].try_into().ok()?),
        MessageId::from_slice(&e[16..32]).ok()?,
        UserId::from_slice(&e[32..48]).ok()?,
    ))
}

/// Up to this many members ever, a conversation keeps no member list
/// ([`Keys::member_list`]; a 20-member group's cost ~870 B, 9 B a message
/// over 100 messages): a page of recipients reads the meta hash's `m:`
/// fields, at most this many, and sorts them. Past it the list is built,
/// once, and a page is O(page). 128 is where Redis keeps a sorted set in a
/// listpack (`zset-max-listpack-entries`), whose range reads scan it too.
pub const UNLISTED_MAX: usize = 128;

/// Seqs per field of the completion cache ([`Keys::completions`]).
pub const COMPLETION_BUCKET: u64 = 64;

/// The completion cache's entry for the seq at `offset` in its bucket
/// (below [`COMPLETION_BUCKET`]) that completed `ms` after its send: one
/// byte of the offset (its low 6 bits) and of the length of what follows
/// less one (its high 2 bits), then `ms` zigzag-encoded, big-endian, in 1
/// to 4 bytes: 3 bytes in all for a completion within 32 s of the send, 4
/// within 2 h 20 min, where the text `;<offset>:<ms>` took 8 to 11. `None`
/// when `ms` needs more than 4 bytes (a completion 24 days from its send,
/// either way): such a time is computed each time, not cached.
pub fn completion_entry(offset: u64, ms: i64) -> Option<Vec<u8>> {
    debug_assert!(offset < COMPLETION_BUCKET);
    let z = u32::try_from((ms << 1) ^ (ms >> 63)).ok()?;
    let len = (4 - z.leading_zeros() as usize / 8).max(1);
    let mut e = Vec::with_capacity(1 + len);
    e.push(offset as u8 | ((len as u8 - 1) << 6));
    e.extend_from_slice(&z.to_be_bytes()[4 - len..]);
    Some(e)
}

/// The entries of a completion-cache field (`<tag>#` then
/// [`completion_entry`]s) as `(offset, ms after send)`, if its tag is
/// `tag`; `None` for a field of another tag (stale as a whole) or of the
/// text form of earlier releases (`<tag>;…`, which has no `#`).
pub fn completion_entries(value: &[u8], tag: &str) -> Option<Vec<(u64, i64)>> {
    let entries = value.strip_prefix(tag.as_bytes())?.strip_prefix(b"#")?;
    let mut out = Vec::new();
    let mut p = 0;
    while let Some(&head) = entries.get(p) {
        let len = usize::from(head >> 6) + 1;
        let bytes = entries.get(p + 1..p + 1 + len)?;
        let z = bytes.iter().fold(0u32, |z, b| (z << 8) | u32::from(*b));
        let ms = i64::from(z >> 1) ^ -i64::from(z & 1);
        out.push((u64::from(head & 63), ms));
        p += 1 + len;
    }
    Some(out)
}

/// Shards of the id index per second of UUIDv7 time: a second's
/// registrations spread over this many keys (and Cluster slots), by the
/// millisecond the ids were minted in. 8: each key holds at most 125
/// milliseconds, so a second keeps its keys listpacks up to 512
/// registrations a key (`hash-max-listpack-entries`), about 4,000 a
/// second over the deployment, and a quiet second costs 8 keys' overhead
/// (~100 B each), not 16.
pub const ID_INDEX_SHARDS: u8 = 8;

/// The id-index key coordinates of the UUIDv7 ids minted in millisecond
/// `ms`: its second, and a shard by the millisecond, so that an id's own
/// field and its millisecond's bucket field are in one key (one `HMGET`
/// reads both).
pub fn id_index_slot(ms: u64) -> (u64, u8) {
    (ms / 1000, (ms % u64::from(ID_INDEX_SHARDS)) as u8)
}

/// Shards per second of the id index as releases before
/// [`Keys::id_layout_since`] wrote it ([`Keys::legacy_id_index`]).
pub const LEGACY_ID_INDEX_SHARDS: u8 = 16;

/// Where releases before [`Keys::id_layout_since`] put a UUIDv7 id minted
/// at `ms`: its own field in the shard of its last byte, its bucket in the
/// shard of its millisecond (both of [`LEGACY_ID_INDEX_SHARDS`]).
pub fn legacy_id_slots(m: &MessageId, ms: u64) -> [(u64, u8); 2] {
    let n = LEGACY_ID_INDEX_SHARDS;
    [
        (ms / 1000, m.as_bytes()[15] % n),
        (ms / 1000, (ms % u64::from(n)) as u8),
    ]
}

/// An id-index record of a bucket field ([`id_record`]): the id's last 10
/// bytes and the raw conversation id.
pub const ID_RECORD_BYTES: usize = 16 - MESSAGE_BUCKET_BYTES + 16;

/// How many ids of one millisecond a registration writes at least for
/// them to share an id-index bucket field, as for the messages hash
/// ([`MESSAGE_BUCKET_MIN`]).
pub const ID_BUCKET_MIN: usize = MESSAGE_BUCKET_MIN;

/// The record of `(m, c)` in an id-index bucket field: `m`'s last 10
/// bytes ‖ `c`, raw ([`ID_RECORD_BYTES`]).
pub fn id_record(m: &MessageId, c: &ConversationId) -> Vec<u8> {
    let mut r = Vec::with_capacity(ID_RECORD_BYTES);
    r.extend_from_slice(&m.as_bytes()[MESSAGE_BUCKET_BYTES..]);
    r.extend_from_slice(c.as_bytes());
    r
}

/// The conversation of `m` in an id-index bucket field's records, if there
/// (the first record of `m`).
pub fn find_id_record(records: &[u8], m: &MessageId) -> Option<ConversationId> {
    let tail = &m.as_bytes()[MESSAGE_BUCKET_BYTES..];
    records
        .chunks_exact(ID_RECORD_BYTES)
        .find(|r| &r[..tail.len()] == tail)
        .and_then(|r| ConversationId::from_slice(&r[tail.len()..]).ok())
}

/// Key builder for one namespace prefix (several deployments, or tests, can
/// share one Redis).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (`--redis-prefix`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    fn conv(&self, c: &ConversationId, suffix: &str) -> String {
        format!("{}:{{{}}}:{suffix}", self.prefix, c.simple())
    }

    fn user(&self, u: &UserId, suffix: &str) -> String {
        format!("{}:{{u{}}}:{suffix}", self.prefix, u.simple())
    }

    /// Hash: `v` version, `t` last stamp, `n` current member count,
    /// `m:<user>` membership, `w:<user>` the member's read watermark in the
    /// main timeline ([`watermark_field`]), `x` when the conversation's
    /// keys' expiry was last refreshed. (`cw`, not the earlier `c`, `cm` or
    /// `cn`: a conversation kept in an earlier layout, with its messages by
    /// hex ids or its watermarks in a hash of their own, is re-warmed from
    /// Scylla.)
    pub fn meta(&self, c: &ConversationId) -> String {
        self.conv(c, "cw")
    }
    /// Sorted set: the *simple* members (see [`Keys::complex`]) who share
    /// read receipts, scored by `max(public watermark, join seq - 1)`.
    pub fn readers(&self, c: &ConversationId) -> String {
        self.conv(c, "rz")
    }
    /// Sorted set: every simple member, scored by its delivered prefix: a
    /// seq up to which it has every main-timeline message it receives
    /// (delivered or read), at least `max(true watermark, join seq - 1)`
    /// (`counts.rs`). (Named for what it held first, the true watermark,
    /// which is still a valid prefix: a conversation written before keeps
    /// its entries.)
    pub fn prefixes(&self, c: &ConversationId) -> String {
        self.conv(c, "tz")
    }
    /// Sorted set: the simple members with a delivery past their prefix
    /// (a gap below it), scored by the highest seq delivered past it; they
    /// are counted one by one for the seqs between (`counts.rs`). Complete
    /// once the meta hash's `dp` is set.
    pub fn gapped(&self, c: &ConversationId) -> String {
        self.conv(c, "gz")
    }
    /// Sorted set: every simple member, scored by its join seq.
    pub fn joins(&self, c: &ConversationId) -> String {
        self.conv(c, "jz")
    }
    /// Sorted set: the simple members who share read receipts, by join seq.
    pub fn sharing_joins(&self, c: &ConversationId) -> String {
        self.conv(c, "jr")
    }
    /// Set: the members whose membership is not one open interval (they left
    /// at least once). They are counted one by one.
    pub fn complex(&self, c: &ConversationId) -> String {
        self.conv(c, "cx")
    }
    /// Sorted set: the seq index, a member per bucket of seqs (its
    /// messages' records, `seqs.rs`) scored by the bucket.
    pub fn seq_buckets(&self, c: &ConversationId) -> String {
        self.conv(c, "sb")
    }
    /// Sorted set: the seq index as conversations written before
    /// [`Self::seq_buckets`] hold it, [`seq_member`]s (raw message ‖
    /// sender) scored by seq; packed by the first view of one.
    pub fn legacy_seqs(&self, c: &ConversationId) -> String {
        self.conv(c, "sq")
    }
    /// Hash: raw message id -> [`message_value`] (seq, sender, sent time),
    /// and bucket fields for messages registered together
    /// ([`message_writes`]).
    pub fn messages(&self, c: &ConversationId) -> String {
        self.conv(c, "mr")
    }
    /// Hash: delivery runs, `<user ‖ bucket>` -> the member's runs that
    /// overlap the bucket, plus `_` once loaded from Scylla (`runs.rs`).
    pub fn runs(&self, c: &ConversationId) -> String {
        self.conv(c, "d")
    }
    /// Hash: completion times, cached, by bucket of [`COMPLETION_BUCKET`]
    /// seqs: `d:<bucket>` / `r:<bucket>` -> `mv`, `#`, then a
    /// [`completion_entry`] (the seq's offset in the bucket, the ms after
    /// send; 3 or 4 bytes) for each message of the bucket that every
    /// recipient had / had read (see `counts.rs`). One field per 64
    /// messages, not one per message: past 128 fields Redis keeps a hash as
    /// a hash table, ~100 B per field.
    pub fn completions(&self, c: &ConversationId) -> String {
        self.conv(c, "a")
    }
    /// Sorted set, by member (all scores 0): every member's read history,
    /// `user ‖ kind ‖ seq ‖ ms` (see `load.rs`, [`history_entry`]).
    pub fn history(&self, c: &ConversationId) -> String {
        self.conv(c, "h")
    }
    /// The conversation's keys that share its lifetime: each expires the
    /// hot TTL after the last refresh, which the commit script makes at
    /// most every quarter TTL for all of them at once (`scripts::APPLY`).
    /// The queue is not one of them: it never expires.
    pub fn conversation_state(&self, c: &ConversationId) -> [String; 18] {
        [
            self.meta(c),
            self.readers(c),
            self.prefixes(c),
            self.joins(c),
            self.sharing_joins(c),
            self.complex(c),
            // Gone once packed into `sb` (below); an EXPIRE of a missing key
            // does nothing.
            self.legacy_seqs(c),
            self.messages(c),
            self.runs(c),
            self.completions(c),
            self.history(c),
            self.outbox(c),
            self.window(c),
            // Last: keys added later, so that the marks of the keys before
            // them (`e`, one per key in this order) keep their places.
            self.member_list(c),
            self.thread_messages(c),
            self.thread_positions(c),
            self.gapped(c),
            self.seq_buckets(c),
        ]
    }
    /// Sorted set, by member (all scores 0): the messages of every thread,
    /// [`thread_member`]s, so that a thread's messages after a position are
    /// one `ZRANGEBYLEX`.
    pub fn thread_messages(&self, c: &ConversationId) -> String {
        self.conv(c, "tq")
    }
    /// Hash: `<user>:<root seq>` → `seq:public_seq`, each member's read
    /// position in each thread it read in (the main timeline's are in
    /// [`Keys::watermarks`]).
    pub fn thread_positions(&self, c: &ConversationId) -> String {
        self.conv(c, "tw")
    }
    /// Sorted set, by member (all scores 0): every member ever, as hex ids,
    /// so that a page of a message's recipients is one `ZRANGEBYLEX` in
    /// user-id order. Complete once the meta hash's `ml` is set
    /// (`scripts::MEMBERS_AFTER` builds it from the meta hash the first time
    /// a page is asked of a conversation of more than [`UNLISTED_MAX`]
    /// members ever). A smaller conversation created or re-warmed by this
    /// release has none, or the members whose membership changed since
    /// (unused): its pages are taken from the meta hash's `m:` fields. One
    /// written by an earlier release keeps its complete list and `ml`.
    pub fn member_list(&self, c: &ConversationId) -> String {
        self.conv(c, "ml")
    }
    /// Stream: events committed with the state, not yet in users' logs.
    pub fn outbox(&self, c: &ConversationId) -> String {
        self.conv(c, "o")
    }
    /// Stream: changes not yet persisted to Scylla.
    pub fn conv_queue(&self, c: &ConversationId) -> String {
        self.conv(c, "q")
    }
    /// Hash: messages touched in the open group window.
    pub fn window(&self, c: &ConversationId) -> String {
        self.conv(c, "g")
    }
    /// Hash: raw message id → raw conversation id, and a millisecond's
    /// bucket field → its ids' records ([`id_record`]), for the UUIDv7 ids
    /// minted in one second (`secs`), one of [`ID_INDEX_SHARDS`] by the
    /// millisecond (see [`id_index_slot`]).
    pub fn id_index(&self, secs: u64, shard: u8) -> String {
        format!("{}:{{i{secs}:{shard}}}", self.prefix)
    }
    /// The id index as releases before [`Self::id_layout_since`] wrote it
    /// ([`legacy_id_slots`]): read for ids minted before that time, until
    /// its keys expire.
    pub fn legacy_id_index(&self, secs: u64, shard: u8) -> String {
        format!("{}:{{i{secs}.{shard}}}", self.prefix)
    }
    /// String: since when (ms since the epoch) every registration in this
    /// Redis is in the id index as [`Self::id_index`] lays it out (written
    /// once, `SET NX`, by the first node of that release; 0 when this Redis
    /// held no registration then, see `Inner::id_layout_since`). An id
    /// minted before it (less the clock skew) may be in
    /// [`Self::legacy_id_index`].
    pub fn id_layout_since(&self) -> String {
        format!("{}:ix-layout", self.prefix)
    }
    /// `ids` by where [`super::Inner::homes`] finds them: the id-index keys
    /// of the UUIDv7 ones, each with the positions of its ids (in order of
    /// first appearance), and the positions of the others (home keys).
    pub fn id_index_groups(&self, ids: &[MessageId]) -> (Vec<(String, Vec<usize>)>, Vec<usize>) {
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        let mut by_slot: std::collections::HashMap<(u64, u8), usize> =
            std::collections::HashMap::new();
        let mut plain = Vec::new();
        for (i, m) in ids.iter().enumerate() {
            let Some(ms) = super::v7_millis(m) else {
                plain.push(i);
                continue;
            };
            let (secs, shard) = id_index_slot(ms);
            let g = *by_slot.entry((secs, shard)).or_insert_with(|| {
                groups.push((self.id_index(secs, shard), Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        (groups, plain)
    }
    /// String: the conversation a message whose id is not a UUIDv7 belongs to.
    pub fn message_home(&self, m: &MessageId) -> String {
        format!("{}:{{m{}}}:home", self.prefix, m.simple())
    }
    /// Hash: `s` sharing flag, `v` its version.
    pub fn sharing(&self, u: &UserId) -> String {
        self.user(u, "sh")
    }
    /// [`Self::sharing`]'s key as the text before and after the hex user id,
    /// for a script that reads the settings of users it finds.
    pub fn sharing_around_id(&self) -> (String, String) {
        let nil = UserId::nil();
        let key = self.sharing(&nil);
        let at = key
            .find(&nil.simple().to_string())
            .expect("the key holds the id");
        (key[..at].to_string(), key[at + 32..].to_string())
    }
    /// Stream: user-level changes not yet persisted to Scylla.
    pub fn user_queue(&self, u: &UserId) -> String {
        self.user(u, "q")
    }
    /// Set: conversations the user belongs to.
    pub fn user_conversations(&self, u: &UserId) -> String {
        self.user(u, "cv")
    }
    /// Sorted set: `<conv>:<message>` the user sent, scored by sent time.
    pub fn sent(&self, u: &UserId) -> String {
        self.user(u, "sent")
    }
    /// Hash: `epoch`, `next` (last offset), `trim` (highest trimmed offset),
    /// `f:<conv>` (last outbox entry forwarded from that conversation).
    pub fn log_meta(&self, u: &UserId) -> String {
        self.user(u, "e")
    }
    /// Sorted set: the user's replay log, scored by offset.
    pub fn log(&self, u: &UserId) -> String {
        self.user(u, "l")
    }
    /// Sorted set: queues with unpersisted work, scored by last registration.
    pub fn queue_index(&self) -> String {
        format!("{}:queues", self.prefix)
    }
    /// Lock for flushing one queue.
    pub fn flush_lock(&self, queue: &str) -> String {
        format!("{queue}:lock")
    }
    /// String: when (ms since the epoch) the current Scylla outage began, as
    /// the first node that saw it recorded it; kept alive by failing probes
    /// (5 s expiry) and deleted by a node that reaches Scylla again.
    pub fn scylla_down_since(&self) -> String {
        format!("{}:scylla_down", self.prefix)
    }
    /// String: since when (ms since the epoch) this Redis has held every
    /// message registered through it in the id index. Written once (SET NX);
    /// gone when Redis lost its data, and then written anew with a later
    /// time. (Named anew with the id index: registrations before it are in
    /// home keys only, so their ids must not be judged new.)
    pub fn complete_since(&self) -> String {
        format!("{}:complete-ix", self.prefix)
    }
    /// Pub/sub channel for events.
    pub fn bus(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    /// The hash a queue's commits are versioned on, which also records
    /// whether the queue is registered (`q`): a conversation's meta hash for
    /// [`Keys::conv_queue`], a user's sharing hash for [`Keys::user_queue`].
    pub fn queue_owner(&self, queue: &str) -> Option<String> {
        let tag = queue
            .strip_prefix(&self.prefix)?
            .strip_prefix(':')?
            .strip_suffix(":q")?;
        let id = tag.strip_prefix('{')?.strip_suffix('}')?;
        let suffix = if id.starts_with('u') { "sh" } else { "cw" };
        Some(format!("{}:{tag}:{suffix}", self.prefix))
    }

    /// Parses the conversation out of a queue key built by [`Keys::conv_queue`].
    pub fn queue_conversation(&self, queue: &str) -> Option<ConversationId> {
        let rest = queue.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        let rest = rest.strip_suffix("}:q")?;
        if rest.starts_with('u') {
            return None;
        }
        uuid::Uuid::parse_str(rest).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_entries_read_back_what_was_written() {
        let times = [
            0,
            1,
            -1,
            32_767,
            32_768,
            -32_768,
            8_388_607,
            2_147_483_647,
            -2_147_483_648,
        ];
        let mut field = b"17#".to_vec();
        for (offset, ms) in times.iter().enumerate() {
            field.extend(completion_entry(offset as u64, *ms).expect("fits"));
        }
        let read = completion_entries(&field, "17").expect("this tag");
        let expected: Vec<(u64, i64)> = times
            .iter()
            .enumerate()
            .map(|(o, ms)| (o as u64, *ms))
            .collect();
        assert_eq!(read, expected);
        // 3 bytes within 32 s of the send, 4 within 2 h 20 min, 5 past it.
        assert_eq!(completion_entry(63, 32_767).map(|e| e.len()), Some(3));
        assert_eq!(completion_entry(63, 32_768).map(|e| e.len()), Some(4));
        assert_eq!(completion_entry(63, 8_388_608).map(|e| e.len()), Some(5));
        assert_eq!(completion_entry(0, 2_147_483_648), None, "not cached");
        assert_eq!(completion_entry(0, i64::MAX), None);
        assert_eq!(completion_entry(0, i64::MIN), None);
        assert_eq!(completion_entries(&field, "1"), None, "another tag");
        assert_eq!(completion_entries(b"17;3:250", "17"), None, "the text form");
        let cut = &field[..field.len() - 1];
        assert_eq!(completion_entries(cut, "17"), None, "a cut entry");
    }

    #[test]
    fn conversation_keys_share_one_hash_tag() {
        let k = Keys::new("rc");
        let c = uuid::Uuid::now_v7();
        let u = uuid::Uuid::now_v7();
        let tag = format!("{{{}}}", c.simple());
        for key in k
            .conversation_state(&c)
            .into_iter()
            .chain([k.conv_queue(&c)])
        {
            assert!(key.contains(&tag), "{key}");
        }
        assert_eq!(k.queue_conversation(&k.conv_queue(&c)), Some(c));
        assert_eq!(k.queue_conversation(&k.user_queue(&u)), None);
        assert_eq!(k.queue_owner(&k.conv_queue(&c)), Some(k.meta(&c)));
        assert_eq!(k.queue_owner(&k.user_queue(&u)), Some(k.sharing(&u)));
        assert_eq!(k.queue_owner("other:{x}:q"), None);
    }
}
