//! Per-user protection: write and subscribe rates (GCRA through `governor`,
//! one bucket per user) and a cap on open subscriptions.
//!
//! All limits are per node: behind a load balancer with N nodes a user may
//! reach N times the rate, which is still bounded and keeps the check free of
//! cross-node coordination. Service-role callers (the messaging backend) are
//! not limited here; the node-wide concurrency limit protects against them.

use crate::config::ServeArgs;
use crate::domain::UserId;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

/// The per-user limits of one node.
#[derive(Debug)]
pub(crate) struct UserQuotas {
    writes: Option<(DefaultKeyedRateLimiter<UserId>, u32, u32)>,
    subscribes: Option<(DefaultKeyedRateLimiter<UserId>, u32, u32)>,
    max_subscriptions: usize,
    /// std Mutex: held only to bump a count, never across an await.
    open: Mutex<HashMap<UserId, usize>>,
    metrics: Arc<Metrics>,
}

fn limiter(per_sec: u32, burst: usize) -> Option<DefaultKeyedRateLimiter<UserId>> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX)).unwrap_or(rate);
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

fn wait_ms(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u128 {
    not_until
        .wait_time_from(DefaultClock::default().now())
        .as_millis()
        .max(1)
}

impl UserQuotas {
    pub(crate) fn new(c: &ServeArgs, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            writes: limiter(c.user_writes_per_sec, c.user_write_burst as usize)
                .map(|l| (l, c.user_writes_per_sec, c.user_write_burst)),
            subscribes: limiter(c.user_subscribes_per_sec, c.user_subscribe_burst as usize)
                .map(|l| (l, c.user_subscribes_per_sec, c.user_subscribe_burst)),
            max_subscriptions: c.max_subscriptions_per_user,
            open: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Takes one write from `user`'s budget, or RESOURCE_EXHAUSTED saying
    /// when to retry.
    pub(crate) fn write(&self, user: UserId) -> Result<(), ServiceError> {
        let Some((limiter, rate, burst)) = &self.writes else {
            return Ok(());
        };
        limiter.check_key(&user).map_err(|not_until| {
            self.metrics.reject("user_write_rate");
            ServiceError::ResourceExhausted(format!(
                "rate limit: at most {rate} writes/s per user with bursts of {burst} (--user-writes-per-sec); retry in {} ms",
                wait_ms(&not_until)
            ))
        })
    }

    /// Opens a subscription for `user`: under the cap on open streams, then
    /// within the opening rate. The slot is released when dropped.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        user: UserId,
    ) -> Result<SubscriptionSlot, ServiceError> {
        {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let n = open.entry(user).or_insert(0);
            if *n >= self.max_subscriptions {
                self.metrics.reject("user_subscriptions");
                return Err(ServiceError::ResourceExhausted(format!(
                    "too many open subscriptions: {} for this user on this node (--max-subscriptions-per-user); close one first",
                    self.max_subscriptions
                )));
            }
            *n += 1;
        }
        let mut slot = SubscriptionSlot {
            quotas: self.clone(),
            user,
            active: false,
        };
        if let Some((limiter, rate, burst)) = &self.subscribes
            && let Err(not_until) = limiter.check_key(&user)
        {
            self.metrics.reject("user_subscribe_rate");
            return Err(ServiceError::ResourceExhausted(format!(
                "rate limit: at most {rate} new subscriptions/s per user with bursts of {burst} (--user-subscribes-per-sec); retry in {} ms",
                wait_ms(&not_until)
            )));
        }
        self.metrics.subscriptions_active.inc();
        self.metrics.subscriptions_opened.inc();
        slot.active = true;
        Ok(slot)
    }

    /// Forgets users whose buckets are full again, so memory follows the
    /// active users rather than every user ever seen.
    pub(crate) fn housekeep(&self) {
        for l in [
            self.writes.as_ref().map(|w| &w.0),
            self.subscribes.as_ref().map(|s| &s.0),
        ]
        .into_iter()
        .flatten()
        {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// One open subscription of a user; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct SubscriptionSlot {
    quotas: Arc<UserQuotas>,
    user: UserId,
    /// Counted in the active-subscriptions gauge.
    active: bool,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut open = self.quotas.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
        if self.active {
            self.quotas.metrics.subscriptions_active.dec();
        }
    }
}
