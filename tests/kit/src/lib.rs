//! Fixtures shared by the tests of every ringgate crate: waits that poll for a state
//! instead of sleeping, and a raw HTTP/1.1 response reader. It depends on no ringgate crate,
//! so that the gateway's own tests can use it as well as `ringgate-tests`.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod http;

use std::time::{Duration, Instant};

/// How often [`eventually`] and [`eventually_async`] look again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Panics naming `what` once `end` (`limit` after the wait began) has passed.
#[track_caller]
fn not_past(what: &str, limit: Duration, end: Instant) {
    assert!(
        Instant::now() < end,
        "timed out after {limit:?} waiting for: {what}"
    );
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `limit`. Tests wait
/// for a state this way instead of sleeping for a time that a loaded machine may overrun.
#[track_caller]
pub fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        not_past(what, limit, end);
        std::thread::sleep(POLL_EVERY);
    }
}

/// [`eventually`] inside a monoio runtime: it waits on the runtime's timer, so the tasks
/// that bring the state about (a pool closing connections, a spawned checkout) run
/// meanwhile.
pub async fn eventually_async(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        not_past(what, limit, end);
        monoio::time::sleep(POLL_EVERY).await;
    }
}

/// How often [`wait_for`] looks again: its polls run commands (psql, redis-cli, etcdctl).
const POLL_COMMAND_EVERY: Duration = Duration::from_millis(100);

/// Polls `f` every 100 ms until it returns `Some`: that value and how long it took;
/// panics naming `what` after `limit`. For waits whose duration a test reports (a
/// failover, a master switch).
#[track_caller]
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        not_past(what, limit, start + limit);
        std::thread::sleep(POLL_COMMAND_EVERY);
    }
}
