//! What one agent may cost a process, whatever number of connections it
//! spreads the work over, and how many heavy reads (snapshots, replay
//! pages) the process runs at once.
//!
//! The per-connection limits (subscribes 5/s, frames 200/s) multiply by the
//! agent's connections (20): a review stalled a process for everyone with one
//! agent re-subscribing to a ticket of large notes over 20 connections, and
//! made ~2,700 presence writes a second with idle/viewing flips. These
//! budgets are per agent, and the read slots bound the work of all agents
//! together, so that snapshots and replays never hold the whole pool.

use std::future::Future;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Settings;

/// Subscribes an agent may make at once above its rate, in seconds of rate.
const SUBSCRIBE_BURST_SECONDS: u32 = 10;

/// Presence changes an agent may make at once above its rate, in seconds of rate.
const PRESENCE_BURST_SECONDS: u32 = 5;

/// Past this many agents remembered, the ones whose budget is full again
/// are forgotten (a full budget is the same as none).
const KEYS_MAX: usize = 10_000;

/// The per-agent budgets and the read slots of one process.
pub struct Budgets {
    subscribes: DefaultKeyedRateLimiter<i64>,
    presence: DefaultKeyedRateLimiter<i64>,
    clock: DefaultClock,
    reads: Arc<Semaphore>,
    read_wait: Duration,
}

impl Budgets {
    /// Budgets from the settings; a quarter of the pool (at least two) may
    /// run heavy reads at once, and a read waits for a slot at most as long
    /// as for the database itself.
    pub fn new(settings: &Settings) -> Budgets {
        let quota = |per_second: u32, burst_seconds: u32| {
            let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(per_second.saturating_mul(burst_seconds))
                .unwrap_or(NonZeroU32::MIN);
            Quota::per_second(rate).allow_burst(burst)
        };
        Budgets {
            subscribes: RateLimiter::keyed(quota(
                settings.agent_subscribes_per_second,
                SUBSCRIBE_BURST_SECONDS,
            )),
            presence: RateLimiter::keyed(quota(
                settings.agent_presence_per_second,
                PRESENCE_BURST_SECONDS,
            )),
            clock: DefaultClock::default(),
            reads: Arc::new(Semaphore::new(read_slots(settings.pool_size))),
            read_wait: settings.db_timeout(),
        }
    }

    /// Charge one subscribe to `agent`; false when its budget is spent.
    pub fn subscribe(&self, agent: i64) -> bool {
        self.charge(&self.subscribes, agent).is_ok()
    }

    /// Charge one presence write to `agent`; when its budget is spent, the
    /// moment the next one is allowed.
    pub fn presence(&self, agent: i64) -> Result<(), Instant> {
        self.charge(&self.presence, agent)
    }

    fn charge(&self, limiter: &DefaultKeyedRateLimiter<i64>, agent: i64) -> Result<(), Instant> {
        if limiter.len() > KEYS_MAX {
            limiter.retain_recent();
        }
        limiter
            .check_key(&agent)
            .map_err(|not_until| Instant::now() + not_until.wait_time_from(self.clock.now()))
    }

    /// Until when a heavy read waits for a slot, if it starts waiting now.
    pub fn read_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.read_wait
    }

    /// A slot for one heavy read (a snapshot, a page of a replay), waited
    /// for in turn (first come, first served) until `deadline`; `None` when
    /// none came free by then. The wait borrows nothing, so that a session
    /// can serve its other tickets while it waits.
    pub fn read_slot_by(
        &self,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Option<OwnedSemaphorePermit>> + 'static {
        let reads = self.reads.clone();
        async move {
            tokio::time::timeout_at(deadline, reads.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        }
    }
}

/// Heavy reads at once: a quarter of the pool, at least two, so that HTTP
/// requests and live fan-out always find connections.
fn read_slots(pool_size: u16) -> usize {
    (usize::from(pool_size) / 4).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_subscribes_are_shared_by_its_connections_and_others_are_untouched() {
        let mut settings = Settings::defaults();
        settings.agent_subscribes_per_second = 2;
        let budgets = Budgets::new(&settings);
        let allowed = (0..100).filter(|_| budgets.subscribe(7)).count();
        assert_eq!(allowed, 20, "a burst of ten seconds' worth, then refusals");
        assert!(budgets.subscribe(8), "another agent has its own budget");
    }

    #[test]
    fn a_spent_presence_budget_says_when_to_try_again() {
        let mut settings = Settings::defaults();
        settings.agent_presence_per_second = 4;
        let budgets = Budgets::new(&settings);
        for _ in 0..20 {
            assert!(budgets.presence(1).is_ok());
        }
        let again = budgets.presence(1).expect_err("the burst is spent");
        let wait = again.saturating_duration_since(Instant::now());
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(250),
            "one change per 250 ms: {wait:?}"
        );
    }

    #[test]
    fn read_slots_leave_most_of_the_pool_to_everything_else() {
        assert_eq!(read_slots(1), 2);
        assert_eq!(read_slots(16), 4);
        assert_eq!(read_slots(100), 25);
    }
}
