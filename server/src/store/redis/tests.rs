//! Unit tests of the Redis store's pure helpers.

#[test]
fn redis_failures_are_told_in_the_services_terms_without_driver_text() {
    let refused = redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connect 10.0.0.7:6379",
    ));
    let said = super::redis_failure(&refused);
    assert_eq!(
        said,
        "the hot store (Redis) is unreachable; retry with backoff"
    );
    let other = redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "Response type not convertible",
        "value was 10.0.0.7".to_string(),
    ));
    let said = super::redis_failure(&other);
    assert_eq!(
        said,
        "the hot store (Redis) failed the call; retry with backoff"
    );
    for e in [refused, other] {
        let message = super::redis_err(e).to_string();
        assert!(!message.contains("10.0.0.7"), "{message}");
    }
}

#[test]
fn only_recent_v7_ids_minted_after_the_horizon_are_known_new() {
    let now = crate::domain::now_millis() as u64;
    let v7_at = |ms: u64| {
        let ts =
            uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
        uuid::Uuid::new_v7(ts)
    };
    let horizon = Some(now - 60_000);
    assert!(known_new(&v7_at(now), horizon));
    assert!(known_new(&v7_at(now + CLOCK_SKEW_MS - 10), horizon));
    // Minted before the horizon, or too far in the future: ask Scylla.
    assert!(!known_new(&v7_at(now - 61_000), horizon));
    assert!(!known_new(&v7_at(now + CLOCK_SKEW_MS + 1_000), horizon));
    // Not a v7, or no horizon: ask Scylla.
    assert!(!known_new(&uuid::Uuid::new_v4(), horizon));
    assert!(!known_new(&v7_at(now), None));
    assert_eq!(v7_millis(&v7_at(now)), Some(now));
}

use super::*;

#[test]
fn hash_tags_follow_the_cluster_rule() {
    let tag = |key: &str| hash_tag(redis::cmd("GET").arg(key)).to_vec();
    assert_eq!(tag("rc:{abc}:w"), b"abc");
    assert_eq!(tag("rc:{abc}:r:{def}"), b"abc", "only the first tag counts");
    assert_eq!(
        tag("rc:{}:x"),
        b"rc:{}:x",
        "an empty tag hashes the whole key"
    );
    assert_eq!(tag("rc:{open"), b"rc:{open");
    assert_eq!(tag("rc:bus"), b"rc:bus");
    assert_eq!(hash_tag(&redis::cmd("PING")), b"");
}

#[test]
fn bus_messages_round_trip() {
    let u = Uuid::now_v7();
    let body = EventBody::Watermark {
        conversation: Uuid::now_v7(),
        read_up_to: 7,
        unread: 2,
    };
    let mut payload = format!("{}:{}:{}:", hex(&u), 42u64, 9u64).into_bytes();
    payload.extend(enc(&body));
    let BusMessage::Event(epoch, event) = parse_bus(&payload) else {
        panic!("an event");
    };
    assert_eq!(epoch, 42);
    assert_eq!(event.offset, 9);
    assert_eq!(event.user, u);
    assert_eq!(event.body, body);
    assert!(matches!(parse_bus(b"nonsense"), BusMessage::Garbage));
    // A body this node cannot decode (a variant it does not know) names
    // the user whose streams must resume.
    let mut newer = format!("{}:{}:{}:", hex(&u), 42u64, 10u64).into_bytes();
    newer.extend([200u8, 1, 2, 3]);
    assert!(matches!(parse_bus(&newer), BusMessage::Unreadable(x) if x == u));
}

#[test]
fn log_entries_keep_colons_in_the_body() {
    let u = Uuid::now_v7();
    let body = EventBody::Watermark {
        conversation: Uuid::from_bytes([b':'; 16]),
        read_up_to: 58,
        unread: 58,
    };
    let mut row = b"12:".to_vec();
    row.extend(enc(&body));
    let e = parse_log_entry(&u, &row).unwrap();
    assert_eq!(e.offset, 12);
    assert_eq!(e.body, body);
}

#[test]
fn an_id_index_entry_outlives_its_minting_and_its_registration_by_the_ttl() {
    let ttl = 86_400_000;
    let minted = 1_800_000_000_123;
    let second = minted / 1000;
    // Registered right after minting: the TTL from the end of its second.
    let expiry = id_index_expiry(second, minted + 5, ttl);
    assert!(expiry >= minted + ttl + CLOCK_SKEW_MS);
    assert!(expiry <= minted + 1000 + ttl + CLOCK_SKEW_MS);
    // Registered (or re-cached from Scylla) a day later: the TTL from then.
    let late = minted + 2 * ttl;
    assert_eq!(
        id_index_expiry(second, late, ttl),
        late + ttl + CLOCK_SKEW_MS
    );
    // Writes into one second's key agree, whichever node makes them.
    assert_eq!(
        id_index_expiry(second, minted, ttl),
        id_index_expiry(second, minted + 800, ttl)
    );
}

#[test]
fn ids_are_grouped_by_index_key_and_only_v7_ids_go_to_the_index() {
    let keys = keys::Keys::new("p");
    let v7 = |ms: u64, last: u8| {
        let mut b = *uuid::Uuid::now_v7().as_bytes();
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[15] = last;
        uuid::Uuid::from_bytes(b)
    };
    let t = 1_800_000_000_000;
    let ids = [
        v7(t + 3, 1),
        uuid::Uuid::new_v4(),
        v7(t + 995, 2),  // same second, 995 % 8 == 3: same key
        v7(t + 1003, 1), // next second
        v7(t + 4, 1),
        v7(t + 3, 9), // the same millisecond, another last byte: same key
    ];
    let (groups, plain) = keys.id_index_groups(&ids);
    let got: Vec<(String, Vec<usize>)> = groups;
    assert_eq!(
        got,
        [
            ("p:{i1800000000:3}".to_string(), vec![0, 2, 5]),
            ("p:{i1800000001:3}".to_string(), vec![3]),
            ("p:{i1800000000:4}".to_string(), vec![4]),
        ]
    );
    assert_eq!(plain, [1]);
    // The layout before: an id's own field by its last byte, its bucket
    // by its millisecond, of 16 shards, in keys named apart.
    assert_eq!(
        keys::legacy_id_slots(&ids[5], t + 3),
        [(1_800_000_000, 9), (1_800_000_000, 3)]
    );
    assert_eq!(keys.legacy_id_index(1_800_000_000, 9), "p:{i1800000000.9}");
}

#[test]
fn seq_members_and_message_values_round_trip_raw() {
    let c = uuid::Uuid::now_v7();
    let m = crate::domain::Message {
        id: uuid::Uuid::now_v7(),
        conversation: c,
        seq: 1 << 40,
        sender: uuid::Uuid::new_v4(),
        sent_at: 1_800_000_000_123,
    };
    let root = crate::domain::ThreadRoot {
        id: uuid::Uuid::now_v7(),
        seq: 7,
    };
    for thread in [None, Some(root)] {
        let member = keys::seq_member(&m.id, &m.sender, thread.map(|t| t.seq));
        assert!(
            member.len() <= 64,
            "fits a listpack entry: {}",
            member.len()
        );
        assert_eq!(
            keys::parse_seq_member(&member),
            Some((m.id, m.sender, thread.map(|t| t.seq)))
        );
        assert_eq!(keys::parse_seq_member(&member[1..]), None);
        let value = keys::message_value(&m, thread);
        assert!(value.len() <= 64, "fits a listpack entry: {}", value.len());
        assert_eq!(
            keys::parse_message_entry(&c, &m.id, &value),
            Some((m, thread))
        );
        // A reader of the first part alone (a node before threads) sees the
        // message itself.
        assert_eq!(keys::parse_message_value(&c, &m.id, &value), Some(m));
        assert_eq!(keys::parse_message_value(&c, &m.id, &value[..3]), None);
        assert_eq!(
            keys::parse_message_entry(&c, &m.id, &value[..value.len() - 1]),
            None
        );
    }
    let entry = keys::thread_member(root.seq, m.seq, &m.id, &m.sender);
    assert!(entry.len() <= 64, "fits a listpack entry: {}", entry.len());
    assert_eq!(
        keys::parse_thread_member(&entry),
        Some((root.seq, m.seq, m.id, m.sender))
    );
    let h = keys::thread_history_entry(&m.sender, true, root.seq, m.seq, 42);
    assert_eq!(keys::parse_thread_history_entry(&h), Some((m.seq, 42)));
    assert!(h.starts_with(&keys::thread_history_prefix(&m.sender, true, root.seq)));
}

#[test]
fn messages_registered_together_share_a_bucket_field_and_are_found_in_it() {
    let c = uuid::Uuid::now_v7();
    let in_bucket = |prefix: [u8; 6], last: u8| {
        let mut b = *uuid::Uuid::now_v7().as_bytes();
        b[..6].copy_from_slice(&prefix);
        b[15] = last;
        uuid::Uuid::from_bytes(b)
    };
    let message = |id, seq| crate::domain::Message {
        id,
        conversation: c,
        seq,
        sender: uuid::Uuid::new_v4(),
        sent_at: 1_800_000_000_123 + seq as i64,
    };
    let root = crate::domain::ThreadRoot {
        id: uuid::Uuid::now_v7(),
        seq: 7,
    };
    let min = keys::MESSAGE_BUCKET_MIN;
    // A bucket of `min` (one in a thread), one of `min - 1`, and an id that
    // is not UUIDv7 in the first bucket's bytes.
    let mut msgs: Vec<_> = (0..min)
        .map(|i| (message(in_bucket([1; 6], i as u8), 10 + i as u64), None))
        .collect();
    msgs[2].1 = Some(root);
    msgs[2].0.seq = 1 << 40;
    msgs.extend((0..min - 1).map(|i| (message(in_bucket([2; 6], i as u8), 100 + i as u64), None)));
    let mut v4 = *uuid::Uuid::new_v4().as_bytes();
    v4[..6].copy_from_slice(&[1; 6]);
    msgs.push((message(uuid::Uuid::from_bytes(v4), 200), None));
    let keys::MessageWrites { own, appends } = keys::message_writes(&msgs, |_| 0);
    // Fewer than `min` together, and ids that are not UUIDv7, keep a field
    // each.
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = msgs[min..]
        .iter()
        .map(|(m, thread)| (m.id.as_bytes().to_vec(), keys::message_value(m, *thread)))
        .collect();
    let mut own = own;
    own.sort();
    expected.sort();
    assert_eq!(own, expected);
    let [(bucket, records)] = &appends[..] else {
        panic!("one bucket: {appends:?}");
    };
    assert_eq!(bucket.as_slice(), &[1; 6]);
    for (m, thread) in &msgs[..min] {
        assert_eq!(keys::message_bucket(&m.id), bucket.as_slice());
        let value = keys::find_in_bucket(records, &m.id).expect("in its bucket");
        assert_eq!(
            keys::parse_message_entry(&c, &m.id, value),
            Some((*m, *thread))
        );
    }
    assert_eq!(keys::find_in_bucket(records, &in_bucket([1; 6], 200)), None);
    // Records cut short are not misread.
    let last = &msgs[min - 1].0.id;
    assert_eq!(
        keys::find_in_bucket(&records[..records.len() - 1], last),
        None
    );
    // A bucket appended to again holds both calls' records, up to the most
    // it may hold; the rest keep a field each.
    let later: Vec<_> = (0..min)
        .map(|i| {
            (
                message(in_bucket([1; 6], 100 + i as u8), 300 + i as u64),
                None,
            )
        })
        .collect();
    let more = keys::message_writes(&later, |_| records.len());
    let both = [records.clone(), more.appends[0].1.clone()].concat();
    for (m, _) in msgs[..min].iter().chain(&later) {
        assert!(keys::find_in_bucket(&both, &m.id).is_some());
    }
    let full = keys::message_writes(&later, |_| keys::MESSAGE_BUCKET_MAX_BYTES - 100);
    let appended = full.appends.first().map_or(&[][..], |(_, r)| r.as_slice());
    assert!(
        !appended.is_empty() && appended.len() <= 100,
        "{}",
        appended.len()
    );
    let in_bucket_now = later
        .iter()
        .filter(|(m, _)| keys::find_in_bucket(appended, &m.id).is_some())
        .count();
    assert!(in_bucket_now > 0 && !full.own.is_empty());
    assert_eq!(in_bucket_now + full.own.len(), min);
}

#[test]
fn id_index_records_find_their_conversation() {
    let ms = 1_800_000_000_123u64;
    let ids: Vec<uuid::Uuid> = (0..3u8)
        .map(|i| {
            let mut b = *uuid::Uuid::now_v7().as_bytes();
            b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
            b[15] = i;
            uuid::Uuid::from_bytes(b)
        })
        .collect();
    let convs: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let records: Vec<u8> = ids
        .iter()
        .zip(&convs)
        .flat_map(|(m, c)| keys::id_record(m, c))
        .collect();
    assert_eq!(records.len(), 3 * keys::ID_RECORD_BYTES);
    for (m, c) in ids.iter().zip(&convs) {
        assert_eq!(keys::message_bucket(m), &ms.to_be_bytes()[2..]);
        assert_eq!(keys::find_id_record(&records, m), Some(*c));
    }
    let mut other = *ids[0].as_bytes();
    other[15] = 9;
    assert_eq!(
        keys::find_id_record(&records, &uuid::Uuid::from_bytes(other)),
        None
    );
    // Every id of one millisecond is in one key.
    assert_eq!(keys::id_index_slot(ms), (ms / 1000, (ms % 8) as u8));
}
