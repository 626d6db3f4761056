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

use std::{rc::Rc, sync::atomic::Ordering, time::Duration};

use monoio::time::Instant;
use ringgate_pool::Intent;
use tracing::debug;

use super::inbox::{Inbound, Job};
use super::{outcome_unknown, request::SqlRequest, Ctx, Unknown};
use crate::{http::Response, metrics::SqlEvent, per_core::Core};

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
}
