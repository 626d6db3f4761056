//! Writes under the leader's lease: a write is sent only while the lease of the leader it
//! was routed to is known to hold, and its answer is trusted only when it arrived while the
//! lease still held (see [`ringgate_discovery::lease`]). A write whose lease runs out or is
//! superseded while it waits for its answer is abandoned at once: its connection is closed
//! and it is answered `outcome_unknown`, even if the server would have reported success
//! later (a frozen leader that resumes commits on a node that will be rewound). So is a
//! write whose leader stopped answering its probe ([`ringgate_discovery::probe`]): its fate
//! is as unknown either way, and its client learns so within a second, not at the end of
//! a lease.

use std::{future::Future, time::Duration};

use monoio::time::sleep;
use ringgate_discovery::lease::LeaseState;
use ringgate_pool::Lease;

/// How often a write in flight looks at the lease between deadlines: a new leader is
/// pushed to the gate within milliseconds of etcd's change, so this bounds how long a write
/// on a deposed leader can keep its client waiting.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// The lease ran out or was superseded, or the leader stopped answering its probe, before
/// the answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLost;

/// Awaits `fut` (a request sent on a leader connection) while `lease` holds; `None` (a
/// replica, or a fixed topology) awaits it unbounded.
pub async fn under_lease<F: Future>(lease: Option<&Lease>, fut: F) -> Result<F::Output, LeaseLost> {
    let Some(lease) = lease else {
        return Ok(fut.await);
    };
    let mut fut = std::pin::pin!(fut);
    loop {
        let left = match lease.state() {
            LeaseState::Valid(left) => left,
            LeaseState::Expired | LeaseState::Superseded => return Err(LeaseLost),
        };
        if !lease.may_send() {
            return Err(LeaseLost);
        }
        monoio::select! {
            out = &mut fut => {
                return match lease.state().is_valid() {
                    true => Ok(out),
                    false => Err(LeaseLost),
                };
            }
            _ = sleep(left.min(CHECK_EVERY)) => {}
        }
    }
}
