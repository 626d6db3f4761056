//! The pace of one core's TLS handshakes: a virtual clock that keeps their public-key work
//! to a share of the core's time (see [`super`] for why and how).

use std::{cell::Cell, time::Duration};

use monoio::time::Instant;

/// The share of a core's time handshakes may take while requests are in flight.
pub const HANDSHAKE_SHARE: f64 = 0.5;
/// The share of a core's time handshakes may take while it serves no request. Below 1, so
/// that handshakes run back to back still stop for the event loop now and then.
pub const IDLE_SHARE: f64 = 2.0 / 3.0;
/// How far the pace's clock may run ahead of real time: a few handshakes at once never
/// wait.
pub const PACE_BURST: Duration = Duration::from_millis(2);
/// The public-key work of one handshake before any was measured.
const FIRST_ESTIMATE: Duration = Duration::from_micros(200);
/// One core's pace for handshakes' public-key work: a virtual clock (`free_at`) that each
/// handshake moves on by its cost divided by the share it runs at ([`HANDSHAKE_SHARE`] while
/// the core serves requests, [`IDLE_SHARE`] while it does not); see the module's text.
#[derive(Debug)]
pub struct HandshakePace {
    free_at: Cell<Instant>,
    /// Running estimate of one handshake's public-key work, reserved at entry.
    estimate: Cell<Duration>,
}

impl Default for HandshakePace {
    fn default() -> Self {
        Self {
            free_at: Cell::new(Instant::now()),
            estimate: Cell::new(FIRST_ESTIMATE),
        }
    }
}

/// A handshake's reserved slot; [`HandshakePace::spent`] settles it with the real cost.
#[derive(Debug)]
#[must_use]
pub struct Slot {
    reserved: Duration,
    share: f64,
    /// How long the handshake waits for it (`None`: it starts at once).
    pub wait: Option<Duration>,
}

impl HandshakePace {
    /// Reserves a slot for one handshake and returns when it may do its public-key work:
    /// at once while the pace's clock is less than [`PACE_BURST`] ahead, else when its
    /// slot comes. `busy` (requests in flight) paces at [`HANDSHAKE_SHARE`], otherwise at
    /// [`IDLE_SHARE`].
    pub async fn enter(&self, busy: bool) -> Slot {
        let slot = self.reserve(Instant::now(), busy);
        if let Some(wait) = slot.wait {
            monoio::time::sleep(wait).await;
        }
        slot
    }

    /// The reservation [`enter`](Self::enter) makes at `now`, and how long it must wait.
    fn reserve(&self, now: Instant, busy: bool) -> Slot {
        let share = if busy { HANDSHAKE_SHARE } else { IDLE_SHARE };
        let reserved = self.estimate.get();
        let slot = self.free_at.get().max(now);
        self.free_at.set(slot + reserved.div_f64(share));
        Slot {
            reserved,
            share,
            wait: slot
                .checked_duration_since(now + PACE_BURST)
                .filter(|w| !w.is_zero()),
        }
    }

    /// Settles `slot` with what the handshake's public-key work really took (zero when it
    /// was not done).
    pub fn spent(&self, slot: Slot, took: Duration) {
        let free_at = self.free_at.get();
        self.free_at.set(if took >= slot.reserved {
            free_at + (took - slot.reserved).div_f64(slot.share)
        } else {
            free_at - (slot.reserved - took).div_f64(slot.share)
        });
        if !took.is_zero() {
            // An exponential average over about eight handshakes.
            let e = self.estimate.get();
            self.estimate.set((e * 7 + took) / 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserves `n` slots at the same instant; returns how many may start at once and how
    /// far ahead the pace's clock has moved.
    fn reserve_many(pace: &HandshakePace, now: Instant, n: u32, busy: bool) -> (u32, Duration) {
        let at_once = (0..n)
            .filter(|_| pace.reserve(now, busy).wait.is_none())
            .count() as u32;
        (at_once, pace.free_at.get() - now)
    }

    #[test]
    fn an_idle_core_reserves_handshakes_at_its_idle_share() {
        let pace = HandshakePace::default();
        let now = Instant::now();
        // 100 ClientHellos at one instant on an idle core: only those within the burst
        // start at once; the others wait, so requests arriving meanwhile are not stuck
        // behind all 100.
        let (at_once, ahead) = reserve_many(&pace, now, 100, false);
        assert_eq!(ahead, (FIRST_ESTIMATE * 100).div_f64(IDLE_SHARE));
        let spacing = FIRST_ESTIMATE.div_f64(IDLE_SHARE);
        assert_eq!(
            at_once,
            (PACE_BURST.as_nanos() / spacing.as_nanos()) as u32 + 1
        );
    }

    #[test]
    fn handshakes_run_back_to_back_stop_for_the_event_loop_within_a_bounded_run() {
        // Each handshake enters as the previous one's work ends (one turn of the event
        // loop): real time moves on by the work, the clock by the work over the share.
        for (busy, share) in [(true, HANDSHAKE_SHARE), (false, IDLE_SHARE)] {
            let pace = HandshakePace::default();
            let mut now = Instant::now();
            let mut run = Duration::ZERO;
            loop {
                let slot = pace.reserve(now, busy);
                if slot.wait.is_some() {
                    break;
                }
                now += FIRST_ESTIMATE;
                run += FIRST_ESTIMATE;
                pace.spent(slot, FIRST_ESTIMATE);
                assert!(
                    run < Duration::from_millis(10),
                    "never stops (busy: {busy})"
                );
            }
            let bound = PACE_BURST.div_f64(1.0 / share - 1.0);
            assert!(
                run <= bound + FIRST_ESTIMATE,
                "{run:?} of work in one run (busy: {busy})"
            );
            assert!(
                run + FIRST_ESTIMATE >= bound,
                "{run:?}: stopped early (busy: {busy})"
            );
        }
    }

    #[test]
    fn a_busy_core_reserves_handshakes_at_its_share() {
        let pace = HandshakePace::default();
        let now = Instant::now();
        let (at_once, ahead) = reserve_many(&pace, now, 100, true);
        assert_eq!(ahead, (FIRST_ESTIMATE * 100).div_f64(HANDSHAKE_SHARE));
        assert!(at_once < 10, "{at_once} handshakes started at once");
    }

    #[test]
    fn a_handshake_not_done_gives_its_slot_back() {
        let pace = HandshakePace::default();
        let now = Instant::now();
        let (_, ahead) = reserve_many(&pace, now, 20, true);
        let slot = pace.reserve(now, true);
        pace.spent(slot, Duration::ZERO);
        assert_eq!(pace.free_at.get() - now, ahead);
        assert_eq!(pace.estimate.get(), FIRST_ESTIMATE);
    }

    #[monoio::test(timer_enabled = true)]
    async fn a_busy_core_spreads_handshakes_at_its_share() {
        let pace = HandshakePace::default();
        let start = Instant::now();
        // Each handshake reports 1 ms of work: at a 50% share, 20 of them take about
        // 40 ms of wall time (less the burst), not 0.
        let mut waited = 0;
        for _ in 0..20 {
            let slot = pace.enter(true).await;
            waited += usize::from(slot.wait.is_some());
            pace.spent(slot, Duration::from_millis(1));
        }
        let took = start.elapsed();
        assert!(waited > 0);
        let floor = Duration::from_millis(20).div_f64(HANDSHAKE_SHARE) - PACE_BURST * 2;
        assert!(took >= floor, "20 handshakes of 1 ms passed in {took:?}");
    }

    #[monoio::test(timer_enabled = true)]
    async fn the_estimate_follows_the_measured_cost() {
        let pace = HandshakePace::default();
        for _ in 0..40 {
            let slot = pace.enter(false).await;
            pace.spent(slot, Duration::from_micros(80));
        }
        let e = pace.estimate.get();
        assert!(e < Duration::from_micros(90), "estimate {e:?}");
    }
}
