//! Deadlines for the waits of client connections, kept by one timer task per core.
//!
//! Every idle connection waits with a deadline (keep-alive, header timeout). monoio's
//! `Sleep` is 640 bytes (its timer entry is cache-padded), and inline in each connection's
//! task it was a third of what an idle plain connection cost. Here a wait is an entry in a
//! per-core ordered map (its deadline and waker: tens of bytes), and one task per core
//! ([`Deadlines::run`]) sleeps until the earliest deadline and wakes the waits that are due.
//! A wait that ends first (bytes arrived) removes its entry, so the map holds the waits in
//! progress and nothing else.
//!
//! Written here rather than taken from a crate: the timer must run on the core's monoio
//! runtime, and the timer crates that fit (tokio's, `async-io`'s) bring their own reactor.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use monoio::time::Instant;

/// How long the timer task sleeps when no deadline is pending (it wakes earlier for one).
const IDLE_NAP: Duration = Duration::from_secs(3600);

/// One core's deadlines; clones share them (an `Rc`: they never leave the core).
#[derive(Clone, Default)]
pub struct Deadlines(Rc<Inner>);

#[derive(Default)]
struct Inner {
    /// Pending waits by (deadline, sequence number).
    waits: RefCell<BTreeMap<(Instant, u64), Waker>>,
    seq: Cell<u64>,
    /// When the timer task will wake next; `None` while it is not sleeping.
    timer_at: Cell<Option<Instant>>,
    /// The timer task's waker, and whether it must recompute its wake-up.
    timer: RefCell<Option<Waker>>,
    kicked: Cell<bool>,
}

impl std::fmt::Debug for Deadlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlines")
            .field("pending", &self.pending())
            .finish()
    }
}

// === impl Deadlines ===

impl Deadlines {
    /// A wait that completes at `at` (at once if `at` has passed).
    pub fn until(&self, at: Instant) -> Deadline {
        Deadline {
            deadlines: self.clone(),
            at,
            seq: None,
        }
    }

    /// `fut`'s output, or `None` if `limit` passes first (when `fut` is dropped).
    pub async fn within<F: Future>(&self, limit: Duration, fut: F) -> Option<F::Output> {
        let timer = self.until(Instant::now() + limit);
        let fut = std::pin::pin!(fut);
        match futures_util::future::select(fut, timer).await {
            futures_util::future::Either::Left((out, _)) => Some(out),
            futures_util::future::Either::Right(_) => None,
        }
    }

    /// Waits registered and not yet due.
    pub fn pending(&self) -> usize {
        self.0.waits.borrow().len()
    }

    /// Wakes the waits due at `now`; returns the next deadline.
    fn fire(&self, now: Instant) -> Option<Instant> {
        let mut waits = self.0.waits.borrow_mut();
        while let Some(entry) = waits.first_entry() {
            if entry.key().0 > now {
                return Some(entry.key().0);
            }
            entry.remove().wake();
        }
        None
    }

    /// The core's timer task: runs until the runtime ends.
    pub async fn run(self) {
        loop {
            let next = self.fire(Instant::now());
            let at = next.unwrap_or_else(|| Instant::now() + IDLE_NAP);
            self.0.timer_at.set(Some(at));
            let mut sleep = std::pin::pin!(monoio::time::sleep_until(at));
            std::future::poll_fn(|cx| {
                if self.0.kicked.replace(false) {
                    return Poll::Ready(());
                }
                *self.0.timer.borrow_mut() = Some(cx.waker().clone());
                sleep.as_mut().poll(cx)
            })
            .await;
            self.0.timer_at.set(None);
        }
    }

    /// A wait at `at` was registered: wake the timer task if it sleeps past `at`.
    fn registered(&self, at: Instant) {
        if self.0.timer_at.get().is_some_and(|t| at < t) {
            self.0.kicked.set(true);
            if let Some(w) = self.0.timer.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// A wait for a deadline, from [`Deadlines::until`]. Registered when first polled pending,
/// removed when dropped.
#[must_use = "a deadline does nothing unless awaited"]
pub struct Deadline {
    deadlines: Deadlines,
    at: Instant,
    seq: Option<u64>,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.at {
            this.unregister();
            return Poll::Ready(());
        }
        let inner = &this.deadlines.0;
        if let Some(seq) = this.seq {
            if let Some(w) = inner.waits.borrow_mut().get_mut(&(this.at, seq)) {
                if !w.will_wake(cx.waker()) {
                    w.clone_from(cx.waker());
                }
                return Poll::Pending;
            }
        }
        let seq = inner.seq.get();
        inner.seq.set(seq + 1);
        inner
            .waits
            .borrow_mut()
            .insert((this.at, seq), cx.waker().clone());
        this.seq = Some(seq);
        this.deadlines.registered(this.at);
        Poll::Pending
    }
}

impl Deadline {
    fn unregister(&mut self) {
        if let Some(seq) = self.seq.take() {
            self.deadlines.0.waits.borrow_mut().remove(&(self.at, seq));
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[monoio::test(timer_enabled = true)]
    async fn waits_end_at_their_deadlines_in_order_and_dropped_ones_leave_nothing() {
        let d = Deadlines::default();
        monoio::spawn(d.clone().run());
        let start = Instant::now();
        // Registered late first, then earlier: the timer wakes for the earlier one.
        let late = monoio::spawn(d.until(start + Duration::from_millis(80)));
        monoio::time::sleep(Duration::from_millis(5)).await;
        d.until(start + Duration::from_millis(30)).await;
        let early = start.elapsed();
        assert!(early >= Duration::from_millis(30), "{early:?}");
        assert!(early < Duration::from_millis(75), "woke late: {early:?}");
        late.await;
        assert!(start.elapsed() >= Duration::from_millis(80));
        // A wait cut short (as when bytes arrive first) leaves no entry behind.
        let cut = monoio::select! {
            _ = d.until(Instant::now() + Duration::from_secs(60)) => false,
            _ = monoio::time::sleep(Duration::from_millis(5)) => true,
        };
        assert!(cut);
        assert_eq!(d.pending(), 0);
        // A deadline already past completes at once.
        d.until(start).await;
    }
}
