//! One tenant's pool of connections to one node.

use std::{cell::Cell, sync::Arc, time::Duration};

use deadpool::managed::{Object, Pool, PoolError};
use monoio::time::Instant;

use crate::{
    conn::{Budget, Credentials, Target},
    error::Error,
    manager::PgManager,
};

/// What a pool is for: a tenant's role on a database on one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Tenant (project) id.
    pub tenant: String,
    /// Database name.
    pub database: String,
    /// Role name.
    pub role: String,
    /// Node (member) name.
    pub node: String,
}

/// A bounded deadpool of connections for one [`PoolKey`], with its last use.
#[derive(Debug)]
pub struct TenantPool {
    key: PoolKey,
    credentials: Credentials,
    pool: Pool<PgManager>,
    limit: usize,
    last_used: Cell<Instant>,
}

// === impl TenantPool ===

impl TenantPool {
    /// A pool of at most `limit` connections to `target`.
    pub fn new(
        key: PoolKey,
        target: Target,
        budget: Arc<Budget>,
        limit: usize,
        ping_after_idle: Duration,
    ) -> Self {
        let credentials = target.credentials.clone();
        let manager = PgManager::new(target, budget, ping_after_idle);
        let pool = Pool::builder(manager)
            .max_size(limit.max(1))
            .build()
            .expect("no runtime-dependent options are set");
        Self {
            key,
            credentials,
            pool,
            limit,
            last_used: Cell::new(Instant::now()),
        }
    }

    /// The key.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// The credentials its connections use.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// When a connection was last checked out.
    pub fn last_used(&self) -> Instant {
        self.last_used.get()
    }

    /// Marks the pool as used now.
    pub fn touch(&self) {
        self.last_used.set(Instant::now());
    }

    /// Connections currently open (idle and in use).
    pub fn size(&self) -> usize {
        self.pool.status().size
    }

    /// Connections checked out right now.
    pub fn in_use(&self) -> usize {
        let s = self.pool.status();
        s.size.saturating_sub(s.available)
    }

    /// Checks out a connection, waiting at most `wait` for one to free up.
    pub async fn get(&self, wait: Duration) -> Result<Object<PgManager>, Error> {
        if self.limit == 0 {
            return Err(self.exhausted(Duration::ZERO));
        }
        self.touch();
        let started = Instant::now();
        // The checkout runs as its own task: when the wait times out, a connection being
        // opened for it is not abandoned half-way (which would let deadpool open another
        // beyond the limit); it finishes and returns to the pool idle.
        let pool = self.pool.clone();
        let checkout = monoio::spawn(async move { pool.get().await });
        match monoio::time::timeout(wait, checkout).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(PoolError::Backend(e))) => Err(e),
            Ok(Err(PoolError::Closed)) => Err(Error::Closed),
            Ok(Err(_)) | Err(_) => Err(self.exhausted(started.elapsed())),
        }
    }

    fn exhausted(&self, waited: Duration) -> Error {
        Error::Exhausted {
            tenant: self.key.tenant.clone(),
            node: self.key.node.clone(),
            limit: self.limit,
            waited_ms: waited.as_millis() as u64,
        }
    }

    /// Closes idle connections unused for `idle_for`, keeping at least `keep` idle ones.
    pub fn trim_idle(&self, keep: usize, idle_for: Duration) -> usize {
        let mut kept = 0;
        let result = self.pool.retain(|_, metrics| {
            if kept < keep || metrics.last_used() < idle_for {
                kept += 1;
                true
            } else {
                false
            }
        });
        result.removed.len()
    }

    /// Closes the pool: idle connections close now, in-use ones when returned.
    pub fn close(&self) {
        self.pool.close();
    }

    /// Whether [`TenantPool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }
}
