//! deadpool's `Manager` for connections on the core's monoio runtime.
//!
//! deadpool wants `Send` futures; a monoio socket is not `Send`. So `create` spawns the
//! connect on the local runtime and awaits a `Send` oneshot for the result: the future
//! deadpool sees holds only the receiver.

use std::{sync::Arc, time::Duration};

use deadpool::managed::{Metrics, RecycleError, RecycleResult};

use crate::{
    budget::{try_acquire, Full, Gate},
    conn::{connect, PgConn, Target},
    error::Error,
};

/// Idle time after which a connection is checked for a session that ended before reuse.
const CHECK_AFTER_IDLE: Duration = Duration::from_millis(20);

/// Creates and recycles connections to one target, within the process-wide budgets of its
/// tenant and its node.
#[derive(Debug)]
pub struct PgManager {
    target: Arc<Target>,
    tenant: String,
    gates: Gates,
    ping_after_idle: Duration,
}

/// The gates a pool's connections count against.
#[derive(Debug, Clone)]
pub struct Gates {
    /// The tenant's connections to the node, on all cores.
    pub tenant: Arc<Gate>,
    /// All connections to the node, on all cores.
    pub node: Arc<Gate>,
}

impl PgManager {
    /// A manager for `target` counting `tenant`'s connections against `gates`.
    pub fn new(target: Target, tenant: String, gates: Gates, ping_after_idle: Duration) -> Self {
        Self {
            target: Arc::new(target),
            tenant,
            gates,
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
        let permit = match try_acquire(&self.gates.tenant, &self.gates.node) {
            Ok(p) => p,
            Err(Full::Tenant) => {
                return Err(Error::Exhausted {
                    tenant: self.tenant.clone(),
                    node: self.target.node.clone(),
                    limit: self.gates.tenant.limit(),
                    waited_ms: 0,
                })
            }
            Err(Full::Node) => {
                return Err(Error::Budget {
                    node: self.target.node.clone(),
                    limit: self.gates.node.limit(),
                })
            }
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
        // A session the server ended while the connection sat idle (a terminate, a
        // shutdown, a crash): looked for without waiting. Skipped for a connection given
        // back moments ago (under load), where statements check before writes anyway.
        if metrics.last_used() > CHECK_AFTER_IDLE && conn.ended_while_idle().await {
            return Err(RecycleError::message("server ended the session while idle"));
        }
        // A connection idle for a while may have been killed without us noticing yet.
        if metrics.last_used() > self.ping_after_idle {
            conn.simple("")
                .await
                .map_err(|e| RecycleError::Backend(Error::Pg(e)))?;
        }
        Ok(())
    }
}
