//! Helpers shared by ringgate's integration and HA tests.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod backend;
pub mod gateway;
pub mod http;
pub mod pg;
pub mod wire;
pub mod worker;

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `limit`. Tests wait
/// for a state this way instead of sleeping for a time that a loaded machine may overrun.
pub fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
