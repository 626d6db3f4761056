//! The optional fleet-wide per-tenant rate limit (`RINGGATE_GLOBAL_RATE_LIMIT`), counted in
//! Redis so that every ringgate instance sharing it enforces one limit together.
//!
//! Requests never wait for Redis. Each instance counts a tenant's admitted requests in
//! per-second keys `ringgate:ratelimit:<tenant>:<unix second>` (`INCRBY`, expiring after
//! [`KEY_TTL_SECS`]). A core admits a request against a sliding-window estimate: the
//! previous second's total weighted by how much of it still lies within the last second,
//! plus the current second's total as Redis last reported it, plus what this core admitted
//! since. One task per active tenant and core reports new admissions at once, then at most
//! every [`SYNC_PERIOD`] (sooner once [`early_report_at`] are waiting), and reads back the
//! fleet's totals for the current and the previous second.
//!
//! So the limit is approximate: the fleet may overshoot by what other cores admit before
//! they see each other's reports. While Redis cannot answer, each core goes on counting on
//! its own (so an instance admits at most its cores times the limit); the admissions whose
//! report failed are dropped and counted in `ringgate_rate_limit_sync_failures_total`.
//! Windows follow the wall clock: instances should run NTP.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    time::Duration,
};

use local_sync::oneshot;
use monoio::time::Instant;
use ringgate_redis::{RedisError, RedisHandle};
use tracing::warn;

use crate::{
    cache::{Cache, Weigh},
    clock::unix_millis,
    metrics::Registry,
};

/// Redis key prefix of the per-second counters.
pub const KEY_PREFIX: &str = "ringgate:ratelimit:";
/// How long a counter outlives its second (the next second still reads it).
pub const KEY_TTL_SECS: u64 = 5;
/// Shortest time between two reports of one tenant from one core.
pub const SYNC_PERIOD: Duration = Duration::from_millis(10);
/// After a failed report, the next waits this long (Redis is down or failing over).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// At most one warning per core this often about failed reports.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Bytes of tenant windows tracked per core (some 50,000 tenants). Windows do not expire
/// by age (a busy tenant's window must persist); cold tenants are evicted first.
const TENANTS_BYTES: u64 = 8 << 20;

/// The Redis key counting `tenant`'s requests in `second`.
pub fn redis_key(tenant: &str, second: u64) -> String {
    format!("{KEY_PREFIX}{tenant}:{second}")
}

/// What one core knows of one tenant's recent requests across the fleet.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Window {
    /// The current second (Unix time).
    pub second: u64,
    /// The fleet's total for the previous second, as last known.
    pub previous: u64,
    /// The fleet's total for the current second, as Redis last reported it.
    pub reported: u64,
    /// Admitted here and sent to Redis, no answer yet.
    pub sending: u64,
    /// Admitted here and not yet sent.
    pub unsent: u64,
    /// A report task is running.
    pub syncing: bool,
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted.
    Admit {
        /// No report task runs for this tenant: start one.
        start_sync: bool,
        /// This core admitted [`early_report_at`] or more since its last report: report
        /// now instead of at the end of the sync period.
        report_now: bool,
    },
    /// Over the limit.
    Refuse,
}

/// Unreported admissions after which a core reports at once: 2.5% of the limit (at least
/// one), so that cores which do not yet see each other's admissions overshoot by little.
pub fn early_report_at(limit: f64) -> u64 {
    ((limit / 40.0) as u64).max(1)
}

// === impl Window ===

impl Window {
    /// Moves the window to the second of `now_ms`: a second later, the current total becomes
    /// the previous one; further, both start over.
    fn advance(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second == self.second {
            return;
        }
        let current = self.reported + self.sending + self.unsent;
        self.previous = if second == self.second + 1 {
            current
        } else {
            0
        };
        self.second = second;
        self.reported = 0;
        self.sending = 0;
        self.unsent = 0;
    }

    /// The sliding-window estimate of the fleet's requests in the second before `now_ms`.
    fn estimate(&self, now_ms: u64) -> f64 {
        let into = (now_ms % 1000) as f64 / 1000.0;
        self.previous as f64 * (1.0 - into) + (self.reported + self.sending + self.unsent) as f64
    }

    /// Admits one request at `now_ms` unless that would take the estimate over `limit`.
    pub fn admit(&mut self, now_ms: u64, limit: f64) -> Admission {
        self.advance(now_ms);
        if self.estimate(now_ms) + 1.0 > limit {
            return Admission::Refuse;
        }
        self.unsent += 1;
        let start_sync = !self.syncing;
        self.syncing = true;
        Admission::Admit {
            start_sync,
            report_now: self.unsent >= early_report_at(limit),
        }
    }

    /// Takes the admissions to report now: `(second, count)`; a count of 0 ends the task.
    pub fn take_unsent(&mut self, now_ms: u64) -> (u64, u64) {
        self.advance(now_ms);
        let n = std::mem::take(&mut self.unsent);
        self.sending += n;
        if n == 0 {
            self.syncing = false;
        }
        (self.second, n)
    }

    /// Redis counted `sent` more for `second`, which now totals `total` across the fleet.
    pub fn reported(&mut self, second: u64, sent: u64, total: u64) {
        if second == self.second {
            self.sending = self.sending.saturating_sub(sent);
            self.reported = self.reported.max(total);
        } else if second + 1 == self.second {
            self.previous = self.previous.max(total);
        }
    }

    /// Redis counted `total` for the second before `second` across the fleet.
    pub fn previous_was(&mut self, second: u64, total: u64) {
        if second == self.second {
            self.previous = self.previous.max(total);
        }
    }

    /// The report of `sent` admissions for `second` failed: they are dropped.
    pub fn report_failed(&mut self, second: u64, sent: u64) {
        if second == self.second {
            self.sending = self.sending.saturating_sub(sent);
        }
    }
}

/// One core's view of the fleet-wide limit: a window per tenant and the report tasks.
#[derive(Debug)]
pub struct GlobalRateLimit {
    per_second: f64,
    tenants: Cache<Rc<Tenant>>,
    reporter: Rc<Reporter>,
}

// === impl GlobalRateLimit ===

impl GlobalRateLimit {
    /// A limit of `per_second` requests per tenant across the fleet, counted in `redis`.
    pub fn new(
        redis: RedisHandle,
        per_second: f64,
        registry: std::sync::Arc<Registry>,
        core: usize,
    ) -> Self {
        Self {
            per_second,
            tenants: Cache::new(TENANTS_BYTES, Duration::MAX),
            reporter: Rc::new(Reporter {
                redis,
                registry,
                core,
                last_warning: Cell::new(None),
            }),
        }
    }

    /// Whether `tenant` may send one more request now; starts or wakes its report task.
    pub fn admit(&self, tenant: &str) -> bool {
        let now = unix_millis();
        let state = self
            .tenants
            .get_or_try::<()>(tenant, Instant::now(), || Ok(Rc::new(Tenant::default())))
            .unwrap_or_default();
        let admission = state.window.borrow_mut().admit(now, self.per_second);
        let Admission::Admit {
            start_sync,
            report_now,
        } = admission
        else {
            return false;
        };
        if start_sync {
            monoio::spawn(self.reporter.clone().report(tenant.to_string(), state));
        } else if report_now {
            if let Some(wake) = state.wake.take() {
                let _ = wake.send(());
            }
        }
        true
    }
}

/// One tenant on one core: its window and a way to wake its sleeping report task.
#[derive(Default)]
struct Tenant {
    window: RefCell<Window>,
    wake: Cell<Option<oneshot::Sender<()>>>,
}

impl Weigh for Tenant {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// What this core's report tasks share: the Redis handle, where failures are counted,
/// and when one was last logged.
#[derive(Debug)]
struct Reporter {
    redis: RedisHandle,
    registry: std::sync::Arc<Registry>,
    core: usize,
    /// One warning per [`WARN_EVERY`] at most.
    last_warning: Cell<Option<Instant>>,
}

impl Reporter {
    /// Reports `tenant`'s admissions on this core to Redis until none are left to report.
    /// A task whose tenant was evicted meanwhile reports what it still holds, then ends like
    /// any other.
    async fn report(self: Rc<Self>, tenant: String, state: Rc<Tenant>) {
        let window = &state.window;
        loop {
            let (second, n) = window.borrow_mut().take_unsent(unix_millis());
            if n == 0 {
                return;
            }
            let key = redis_key(&tenant, second);
            let previous_key = redis_key(&tenant, second.saturating_sub(1));
            let answer = self
                .redis
                .incr_by_with_expiry(&key, n, KEY_TTL_SECS, &previous_key)
                .await;
            let pause = match answer {
                Ok((total, previous)) => {
                    let mut w = window.borrow_mut();
                    w.reported(second, n, total.max(0) as u64);
                    w.previous_was(second, previous.max(0) as u64);
                    SYNC_PERIOD
                }
                Err(error) => {
                    window.borrow_mut().report_failed(second, n);
                    self.failed(&tenant, &error);
                    RETRY_AFTER_FAILURE
                }
            };
            let (wake, woken) = oneshot::channel();
            state.wake.set(Some(wake));
            let sleep = std::pin::pin!(monoio::time::sleep(pause));
            let _ = futures_util::future::select(sleep, woken).await;
            state.wake.set(None);
        }
    }

    /// Counts a failed report and logs it (at most once per [`WARN_EVERY`]).
    fn failed(&self, tenant: &str, error: &RedisError) {
        self.registry.core(self.core).rate_limit_sync_failed();
        let now = Instant::now();
        if self
            .last_warning
            .get()
            .is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY)
        {
            return;
        }
        self.last_warning.set(Some(now));
        warn!(
            core = self.core,
            tenant = %tenant,
            %error,
            "global rate limit: could not report to Redis; counting on this core alone"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(w: &mut Window, now_ms: u64, tries: usize, limit: f64) -> usize {
        (0..tries)
            .filter(|_| matches!(w.admit(now_ms, limit), Admission::Admit { .. }))
            .count()
    }

    #[test]
    fn admits_up_to_the_limit_within_a_second_and_starts_one_report() {
        let mut w = Window::default();
        assert_eq!(
            w.admit(10_000, 5.0),
            Admission::Admit {
                start_sync: true,
                report_now: true
            }
        );
        assert_eq!(
            w.admit(10_001, 5.0),
            Admission::Admit {
                start_sync: false,
                report_now: true
            }
        );
        assert_eq!(admitted(&mut w, 10_002, 10, 5.0), 3);
        assert_eq!(w.admit(10_999, 5.0), Admission::Refuse);
    }

    #[test]
    fn other_instances_counts_reported_by_redis_take_from_the_limit() {
        let mut w = Window::default();
        assert!(matches!(w.admit(20_000, 10.0), Admission::Admit { .. }));
        let (second, n) = w.take_unsent(20_000);
        assert_eq!((second, n), (20, 1));
        // The fleet had admitted 8 others in this second.
        w.reported(second, n, 9);
        assert_eq!(admitted(&mut w, 20_010, 10, 10.0), 1);
    }

    #[test]
    fn admissions_in_flight_count_until_redis_answers() {
        let mut w = Window::default();
        assert_eq!(admitted(&mut w, 30_000, 3, 3.0), 3);
        let (second, n) = w.take_unsent(30_001);
        assert_eq!(n, 3);
        // Sent, not yet answered: still counted.
        assert_eq!(w.admit(30_002, 3.0), Admission::Refuse);
        w.reported(second, n, 3);
        assert_eq!(w.admit(30_003, 3.0), Admission::Refuse);
    }

    #[test]
    fn the_previous_second_weighs_less_as_the_current_one_goes_on() {
        let mut w = Window::default();
        assert_eq!(admitted(&mut w, 40_000, 10, 10.0), 10);
        // Early in the next second almost all of the previous one still counts.
        assert_eq!(admitted(&mut w, 41_050, 10, 10.0), 0);
        // Halfway, half of it does.
        assert_eq!(admitted(&mut w, 41_500, 10, 10.0), 5);
        // Two seconds on, nothing of it.
        assert_eq!(admitted(&mut w, 43_000, 20, 10.0), 10);
    }

    #[test]
    fn a_failed_report_drops_its_admissions_and_the_task_ends_when_nothing_is_left() {
        let mut w = Window::default();
        assert_eq!(admitted(&mut w, 50_000, 4, 4.0), 4);
        let (second, n) = w.take_unsent(50_000);
        w.report_failed(second, n);
        // Counting on this core alone: the dropped admissions no longer count.
        assert_eq!(admitted(&mut w, 50_100, 10, 4.0), 4);
        let (_, n) = w.take_unsent(50_100);
        assert_eq!(n, 4);
        let (_, n) = w.take_unsent(50_200);
        assert_eq!(n, 0);
        assert!(!w.syncing);
        assert!(matches!(
            w.admit(51_900, 4.0),
            Admission::Admit {
                start_sync: true,
                ..
            }
        ));
    }

    #[test]
    fn a_late_answer_for_the_previous_second_raises_its_total() {
        let mut w = Window::default();
        assert!(matches!(w.admit(60_900, 10.0), Admission::Admit { .. }));
        let (second, n) = w.take_unsent(60_900);
        assert!(matches!(w.admit(61_000, 10.0), Admission::Admit { .. }));
        // The answer for second 60 arrives in second 61: the fleet had 10 then.
        w.reported(second, n, 10);
        assert_eq!(w.previous, 10);
        assert_eq!(w.admit(61_001, 10.0), Admission::Refuse);
    }

    #[test]
    fn large_limits_report_early_after_a_share_of_the_limit() {
        assert_eq!(early_report_at(10.0), 1);
        assert_eq!(early_report_at(4000.0), 100);
        let mut w = Window::default();
        let report_now = |a| {
            matches!(
                a,
                Admission::Admit {
                    report_now: true,
                    ..
                }
            )
        };
        let early: Vec<bool> = (0..100)
            .map(|_| report_now(w.admit(70_000, 4000.0)))
            .collect();
        assert_eq!(early.iter().filter(|e| **e).count(), 1);
        assert!(early[99]);
    }

    #[test]
    fn redis_keys_name_the_tenant_and_the_second() {
        assert_eq!(redis_key("alpha", 17), "ringgate:ratelimit:alpha:17");
    }
}
