//! deadpool's `Manager` for connections on the core's monoio runtime.
//!
//! deadpool wants `Send` futures; a monoio socket is not `Send`. So `create` spawns the
//! connect on the local runtime and awaits a `Send` oneshot for the result: the future
//! deadpool sees holds only the receiver.

use std::{sync::Arc, time::Duration};

use deadpool::managed::{Metrics, RecycleError, RecycleResult};

use crate::{
    conn::{connect, Budget, PgConn, Target},
    error::Error,
};

/// Creates and recycles connections to one target, within one core's budget.
#[derive(Debug)]
pub struct PgManager {
    target: Arc<Target>,
    budget: Arc<Budget>,
    ping_after_idle: Duration,
}

impl PgManager {
    /// A manager for `target` counting connections against `budget`.
    pub fn new(target: Target, budget: Arc<Budget>, ping_after_idle: Duration) -> Self {
        Self {
            target: Arc::new(target),
            budget,
            ping_after_idle,
        }
    }

    /// The target's node name.
    pub fn node(&self) -> &str {
        &self.target.node
    }
}

impl deadpool::managed::Manager for PgManager {
    type Type = PgConn;
    type Error = Error;

    async fn create(&self) -> Result<PgConn, Error> {
        let Some(permit) = self.budget.try_acquire() else {
            return Err(Error::Budget {
                node: self.target.node.clone(),
                limit: self.budget.limit(),
            });
        };
        let (tx, rx) = futures_channel::oneshot::channel();
        let target = self.target.clone();
        monoio::spawn(async move {
            let _ = tx.send(connect(&target, permit).await);
        });
        rx.await.unwrap_or(Err(Error::Closed))
    }

    async fn recycle(&self, conn: &mut PgConn, metrics: &Metrics) -> RecycleResult<Error> {
        if conn.is_closed() {
            return Err(RecycleError::message("server closed the connection"));
        }
        // A connection idle for a while may have been killed without us noticing yet.
        if metrics.last_used() > self.ping_after_idle {
            conn.client()
                .simple_query("")
                .await
                .map_err(|e| RecycleError::Backend(Error::Backend(e)))?;
        }
        Ok(())
    }
}
