//! Handing a request to the core that holds its tenant's connections (Seastar's way).
//!
//! A tenant's connection limit is process-wide, so with more cores than connections some
//! cores hold none. A request on such a core (none idle here, the tenant at its limit, and
//! another core holding its connections on the member it routes to: see
//! [`Shard::hand_off_target`](ringgate_pool::Shard::hand_off_target)) is sent whole to that
//! core: the parsed request goes over the target's inbox (a flume channel, runtime-agnostic)
//! and the response comes back on a oneshot. The target runs it exactly as one of its own
//! (retries, the leader's lease, `outcome_unknown`), on its own pool, and never hands it on.
//! Connections stay where they are; a reconnect happens only when no core holds one.
//!
//! Draining: a core that stops refuses new hand-offs and first waits for those sent to it
//! (counted by the senders before they look whether it is open, so neither side misses the
//! other), so a request handed over is answered by its target.

use std::{
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use monoio::time::Instant;
use parking_lot::Mutex;
use ringgate_pool::Intent;
use tracing::debug;

use super::{outcome_unknown, request::SqlRequest, Ctx, Unknown};
use crate::{http::Response, metrics::SqlEvent, per_core::Core, router::ClientSocket};

/// A request handed to another core, and where its answer goes. `Send`: it crosses threads.
pub struct Job {
    sql: SqlRequest,
    /// The member the sending core routed it to; the target uses it for reads too.
    node: String,
    /// The client's socket, to cancel the statement if the client goes away.
    client: Option<ClientSocket>,
    answer: futures_channel::oneshot::Sender<Response>,
}

/// Every core's inbox for handed requests.
#[derive(Debug)]
pub struct HandOffs {
    inboxes: Box<[Inbox]>,
}

#[derive(Debug)]
struct Inbox {
    tx: flume::Sender<Job>,
    /// Taken once by the core it belongs to.
    rx: Mutex<Option<flume::Receiver<Job>>>,
    /// Requests sent here and not yet answered (or about to be sent).
    inbound: AtomicUsize,
    /// Set when the core stops taking hand-offs.
    closed: AtomicBool,
}

// === impl HandOffs ===

impl HandOffs {
    /// Inboxes for `cores` cores.
    pub fn new(cores: usize) -> Arc<Self> {
        Arc::new(Self {
            inboxes: (0..cores)
                .map(|_| {
                    let (tx, rx) = flume::unbounded();
                    Inbox {
                        tx,
                        rx: Mutex::new(Some(rx)),
                        inbound: AtomicUsize::new(0),
                        closed: AtomicBool::new(false),
                    }
                })
                .collect(),
        })
    }

    /// Core `core`'s inbox receiver (`None` after the first call).
    fn take(&self, core: usize) -> Option<flume::Receiver<Job>> {
        self.inboxes.get(core)?.rx.lock().take()
    }
}

/// Counts a request as inbound to a core until dropped.
struct Inbound<'a>(&'a Inbox);

impl<'a> Inbound<'a> {
    /// `None` when the core no longer takes hand-offs.
    fn enter(inbox: &'a Inbox) -> Option<Self> {
        // SeqCst with `close`: either this sees the core closed, or the core sees this
        // request inbound and waits for it.
        inbox.inbound.fetch_add(1, Ordering::SeqCst);
        let entered = Self(inbox);
        (!inbox.closed.load(Ordering::SeqCst)).then_some(entered)
    }
}

impl Drop for Inbound<'_> {
    fn drop(&mut self) {
        self.0.inbound.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `sql` on another core when [`Ctx`]'s core should hand it over; `None`: run it here.
pub(super) async fn run_elsewhere(ctx: &Ctx, sql: &SqlRequest, intent: Intent) -> Option<Response> {
    let offs = ctx.memo.shared.hand_offs.as_ref()?;
    if ctx.handed {
        return None;
    }
    let target = ctx
        .db
        .hand_off_target(&sql.tenant.project, &sql.tenant.credentials, intent)?;
    let inbox = offs.inboxes.get(target.core)?;
    let _inbound = Inbound::enter(inbox)?;
    // Counted against the target until answered, so other cores pick less busy ones.
    let _handed = target.handed;
    let (answer, response) = futures_channel::oneshot::channel();
    let job = Job {
        sql: sql.clone(),
        node: target.node,
        client: ctx.client,
        answer,
    };
    // Refused only when the target's inbox is gone (its core stopped): run it here.
    inbox.tx.send(job).ok()?;
    ctx.event(SqlEvent::HandedOff);
    Some(match response.await {
        Ok(r) => r,
        // The target dropped it unanswered: only when its core was cut off at the end
        // of a drain, with the request possibly under way.
        Err(_) => match intent {
            Intent::Write => {
                ctx.event(SqlEvent::OutcomeUnknown);
                outcome_unknown(Unknown::ConnectionLost)
            }
            Intent::Read => super::response::unavailable(
                "backend_unavailable",
                "the core running the statement stopped",
                1,
            ),
        },
    })
}

/// Serves the requests other cores hand to `core`, each as its own task, until the
/// runtime stops.
pub async fn serve(core: Rc<Core>) {
    let Some(rx) = core.shared.hand_offs.as_ref().and_then(|h| h.take(core.id)) else {
        return;
    };
    while let Ok(job) = rx.recv_async().await {
        monoio::spawn(run_job(core.clone(), job));
    }
}

async fn run_job(core: Rc<Core>, job: Job) {
    // The sender went away (its client's connection was cut): nothing to run for.
    if job.answer.is_canceled() {
        return;
    }
    let Some(db) = core.db.clone() else { return };
    let ctx = Ctx::handed(&core, db, job.client, job.node);
    let response = ctx.run_here(&job.sql).await;
    let _ = job.answer.send(response);
}

/// Stops taking hand-offs on `core` and waits (until `deadline`) for those already sent to
/// it to be answered. Call when the core drains, before it closes its pools.
pub async fn close(core: &Core, deadline: Instant) {
    let Some(inbox) = core
        .shared
        .hand_offs
        .as_ref()
        .and_then(|h| h.inboxes.get(core.id))
    else {
        return;
    };
    inbox.closed.store(true, Ordering::SeqCst);
    while inbox.inbound.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    let left = inbox.inbound.load(Ordering::SeqCst);
    if left > 0 {
        debug!(
            core = core.id,
            left, "drain deadline passed with handed requests unanswered"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>() {}

    #[test]
    fn a_job_and_its_answer_cross_threads() {
        is_send::<Job>();
        is_send::<Response>();
    }

    #[test]
    fn a_closed_inbox_takes_no_request_and_one_entered_first_is_waited_for() {
        let offs = HandOffs::new(2);
        let inbox = &offs.inboxes[1];
        let entered = Inbound::enter(inbox).expect("open");
        inbox.closed.store(true, Ordering::SeqCst);
        assert_eq!(inbox.inbound.load(Ordering::SeqCst), 1, "the closer waits");
        assert!(Inbound::enter(inbox).is_none());
        drop(entered);
        assert_eq!(inbox.inbound.load(Ordering::SeqCst), 0);
        assert!(offs.take(1).is_some() && offs.take(1).is_none());
    }
}
