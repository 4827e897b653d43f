//! A conversation's view at one version: what a call has loaded of it, and
//! the state of a message as one viewer may see it (the rules are in
//! `domain`). Loading is in `load.rs` and `threads.rs`.

use super::*;

/// What is known of one conversation at one version.
pub(super) struct View {
    pub(super) c: ConversationId,
    pub(super) ver: u64,
    /// Membership version (only grows, survives re-warming).
    pub(super) mver: u64,
    /// Last recorded write time.
    pub(super) stamp: Millis,
    /// Current members.
    pub(super) count: u64,
    pub(super) members: BTreeMap<UserId, Membership>,
    pub(super) wms: HashMap<UserId, ReadWatermark>,
    pub(super) sharing: HashMap<UserId, bool>,
    pub(super) messages: HashMap<MessageId, Message>,
    /// The bytes each messages-hash bucket field read so far holds (0 for
    /// an absent one): how much a registration may still append to it
    /// (`keys::message_writes`).
    pub(super) bucket_bytes: HashMap<Vec<u8>, usize>,
    /// Delivery runs, by member and bucket, as far as loaded.
    pub(super) runs: RunBuckets,
    /// (user, public) -> history entries (seq, at) in seq order.
    pub(super) hist: HashMap<(UserId, bool), Vec<(Seq, Millis)>>,
    /// `(s, rows)`: every seq-index entry after seq `s`, read with the view
    /// (see [`Inner::read_facts`]); ranges above `s` are answered from it.
    pub(super) tail: Option<(Seq, Vec<Indexed>)>,
    /// Whether the conversation holds any thread message (the meta hash's
    /// `th`): without, nothing thread-related is read.
    pub(super) has_threads: bool,
    /// The seq index's form (the meta hash's `sb`); a view of one written
    /// before `sb` ([`SeqForm::Legacy`]) is written again before it is used
    /// ([`Inner::pack_seq_index`]).
    pub(super) seq_form: seqs::SeqForm,
    /// The threads of the loaded messages that are in one.
    pub(super) threads: HashMap<MessageId, ThreadRoot>,
    /// Members' positions in threads, as far as loaded: (root seq, user).
    pub(super) twms: HashMap<(Seq, UserId), ReadWatermark>,
    /// (root seq, user, public) -> the thread's history entries (seq, at)
    /// in seq order, as far as loaded.
    pub(super) thist: HashMap<(Seq, UserId, bool), Vec<(Seq, Millis)>>,
    /// (timeline, user, public) -> the lowest seq a history in `hist` or
    /// `thist` was loaded from: asked for from lower, the part below is
    /// loaded and put in front (entries added by the write are kept).
    pub(super) hist_from: HashMap<(domain::Timeline, UserId, bool), Seq>,
    /// The thread index (`threads_of`), once read in this view.
    pub(super) thread_index: Option<Vec<(ThreadRoot, Vec<Indexed>)>>,
    /// The writer's counting prefix, once read (a delivery moves it).
    pub(super) prefix: Option<PrefixFacts>,
}

/// A simple member's delivered prefix (`tz`) and the messages just after
/// it (`prefix.rs`).
#[derive(Clone, Debug, Default)]
pub(super) struct PrefixFacts {
    /// Its prefix; `None`: not a simple member, nothing to keep.
    pub(super) prefix: Option<Seq>,
    /// The first seq-index entries after the prefix
    /// ([`prefix::PREFIX_WALK`]).
    pub(super) after: Vec<domain::Later>,
}

impl View {
    /// A view that knows nothing yet but the conversation and a version.
    pub(super) fn bare(c: ConversationId, ver: u64) -> Self {
        View {
            c,
            ver,
            mver: 0,
            stamp: 0,
            count: 0,
            members: BTreeMap::new(),
            wms: HashMap::new(),
            sharing: HashMap::new(),
            messages: HashMap::new(),
            bucket_bytes: HashMap::new(),
            runs: RunBuckets::default(),
            hist: HashMap::new(),
            tail: None,
            has_threads: false,
            // Not read: as for a timed index, lookups by id go through
            // `scripts::MESSAGES`, which reads the form with the values.
            seq_form: seqs::SeqForm::Timed,
            threads: HashMap::new(),
            twms: HashMap::new(),
            thist: HashMap::new(),
            hist_from: HashMap::new(),
            thread_index: None,
            prefix: None,
        }
    }

    /// The timeline of `m` (a loaded message): its thread's root seq, or
    /// the main timeline.
    pub(super) fn timeline(&self, m: &Message) -> domain::Timeline {
        self.threads.get(&m.id).map_or(domain::MAIN, |r| r.seq)
    }

    /// `u`'s position in `timeline` (a thread's as far as loaded).
    pub(super) fn position(&self, u: &UserId, timeline: domain::Timeline) -> ReadWatermark {
        if timeline == domain::MAIN {
            return self.wm(u);
        }
        self.twms.get(&(timeline, *u)).copied().unwrap_or_default()
    }

    /// The time of `u`'s first advancement in `timeline` that reached `seq`.
    pub(super) fn covering(
        &self,
        u: &UserId,
        timeline: domain::Timeline,
        public: bool,
        seq: Seq,
    ) -> Option<Millis> {
        if timeline == domain::MAIN {
            return self.first_covering(u, public, seq);
        }
        self.thist
            .get(&(timeline, *u, public))
            .and_then(|h| h.iter().find(|(s, _)| *s >= seq).map(|(_, at)| *at))
    }

    /// When `u`'s read covered `m` (true position), if it did.
    pub(super) fn read_at(&self, u: &UserId, m: &Message) -> Option<Millis> {
        let timeline = self.timeline(m);
        (self.position(u, timeline).seq >= m.seq)
            .then(|| self.covering(u, timeline, false, m.seq))
            .flatten()
    }

    /// Adds `u`'s read `adv` at `at` in `timeline` to the histories held
    /// (true, and public if it was). Every stored entry is at or below the
    /// position before the read, so what is held is then complete above it
    /// ([`View::hist_from`]): a later load for higher seqs reads nothing.
    pub(super) fn push_read(
        &mut self,
        timeline: domain::Timeline,
        u: &UserId,
        adv: &domain::WatermarkAdvance,
        at: Millis,
    ) {
        let kinds = [(false, adv.before.seq), (true, adv.before.public_seq)];
        for (public, before) in kinds {
            if public && !adv.is_public() {
                continue;
            }
            let held = match timeline {
                domain::MAIN => self.hist.entry((*u, public)).or_default(),
                _ => self.thist.entry((timeline, *u, public)).or_default(),
            };
            held.push((adv.after.seq, at));
            let from = self
                .hist_from
                .entry((timeline, *u, public))
                .or_insert(Seq::MAX);
            *from = (*from).min(before.saturating_add(1));
        }
    }

    /// Adds the message `id` from its messages-hash value.
    pub(super) fn put_message(&mut self, id: &MessageId, value: &[u8]) -> StoreResult<Message> {
        let (m, thread) =
            keys::parse_message_entry(&self.c, id, value).ok_or_else(|| corrupt("message"))?;
        self.messages.insert(m.id, m);
        if let Some(root) = thread {
            self.threads.insert(m.id, root);
        }
        Ok(m)
    }

    pub(super) fn group(&self) -> bool {
        self.count > 2
    }

    pub(super) fn wm(&self, u: &UserId) -> ReadWatermark {
        self.wms.get(u).copied().unwrap_or_default()
    }

    pub(super) fn authorize(&self, u: &UserId, field: &str) -> StoreResult<Membership> {
        match self.members.get(u) {
            Some(m) if m.is_current() => Ok(m.clone()),
            _ => Err(ServiceError::PermissionDenied(format!(
                "{field}: caller is not a member of conversation {}",
                self.c
            ))),
        }
    }

    pub(super) fn first_covering(&self, u: &UserId, public: bool, seq: Seq) -> Option<Millis> {
        self.hist
            .get(&(*u, public))
            .and_then(|h| h.iter().find(|(s, _)| *s >= seq).map(|(_, at)| *at))
    }

    /// When a run delivered `m` to `u` (its bucket must be loaded).
    pub(super) fn delivered_at(&self, m: &Message, u: &UserId) -> Option<Millis> {
        self.runs.delivered_at(u, m.seq)
    }

    /// The state of `m` as `viewer` may see it (the rules are in `domain`).
    pub(super) fn state(
        &self,
        viewer: &UserId,
        m: &Message,
        with_recipients: bool,
    ) -> MessageState {
        let mut views = Vec::new();
        let timeline = self.timeline(m);
        for (u, membership) in &self.members {
            if !membership.receives(*u, m.sender, m.seq) {
                continue;
            }
            let wm = self.position(u, timeline);
            let facts = RecipientFacts {
                delivered_at: self.delivered_at(m, u),
                read_at: (wm.seq >= m.seq)
                    .then(|| self.covering(u, timeline, false, m.seq))
                    .flatten(),
                public_read_at: (wm.public_seq >= m.seq)
                    .then(|| self.covering(u, timeline, true, m.seq))
                    .flatten(),
                sharing: self.sharing.get(u).copied().unwrap_or(true),
            };
            views.push(domain::recipient_view(*viewer, *u, facts));
        }
        MessageState {
            message: *m,
            aggregate: domain::aggregate(&views),
            recipients: if with_recipients { views } else { Vec::new() },
        }
    }
}
