//! Graceful shutdown: process signals on the main thread, and each core's local drain signal.
//!
//! SIGTERM or SIGINT starts a drain: every core closes its listeners at once, `/ready` turns
//! 503, idle keep-alive connections close, requests in flight finish and get
//! `Connection: close`, and the process exits 0 once every core is idle or the drain timeout
//! has passed. SIGHUP asks for a TLS certificate reload.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

use slab::Slab;

/// What the main thread's signal handler asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    /// SIGTERM or SIGINT: drain and exit.
    Drain,
    /// SIGHUP: reload the TLS certificate.
    Reload,
}

/// Blocks until the next SIGTERM, SIGINT or SIGHUP.
pub fn signals() -> std::io::Result<impl Iterator<Item = SignalKind>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    Ok(std::iter::from_fn(move || {
        signals.forever().next().map(|s| {
            if s == SIGHUP {
                SignalKind::Reload
            } else {
                SignalKind::Drain
            }
        })
    }))
}

/// One core's drain signal: a flag plus the tasks waiting for it. Not `Send`.
#[derive(Debug, Clone, Default)]
pub struct Drain(Rc<DrainInner>);

#[derive(Debug, Default)]
struct DrainInner {
    started: Cell<bool>,
    waiters: RefCell<Slab<Waker>>,
}

// === impl Drain ===

impl Drain {
    /// Starts the drain and wakes every waiter.
    pub fn start(&self) {
        self.0.started.set(true);
        for waker in self.0.waiters.borrow_mut().drain() {
            waker.wake();
        }
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.0.started.get()
    }

    /// Completes once the drain has started.
    pub fn signaled(&self) -> Signaled {
        Signaled {
            drain: self.clone(),
            key: None,
        }
    }
}

/// Future returned by [`Drain::signaled`].
#[derive(Debug)]
pub struct Signaled {
    drain: Drain,
    key: Option<usize>,
}

impl Future for Signaled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.is_draining() {
            self.key = None;
            return Poll::Ready(());
        }
        let inner = self.drain.0.clone();
        let mut waiters = inner.waiters.borrow_mut();
        match self.key {
            Some(k) if waiters.contains(k) => {
                if !waiters[k].will_wake(cx.waker()) {
                    waiters[k] = cx.waker().clone();
                }
            }
            _ => self.key = Some(waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Signaled {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            let mut waiters = self.drain.0.waiters.borrow_mut();
            if waiters.contains(k) {
                waiters.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[monoio::test_all(timer_enabled = true)]
    async fn waiters_wake_on_start_and_clean_up_on_drop() {
        let drain = Drain::default();
        let waiter = monoio::spawn({
            let d = drain.clone();
            async move { d.signaled().await }
        });
        {
            // A dropped waiter leaves no waker behind.
            let mut f = Box::pin(drain.signaled());
            let _ = monoio::time::timeout(std::time::Duration::from_millis(1), &mut f).await;
        }
        monoio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(drain.0.waiters.borrow().len(), 1);
        drain.start();
        waiter.await;
        assert!(drain.is_draining());
        drain.signaled().await;
    }
}
