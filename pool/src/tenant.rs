//! One tenant's pool of connections to one node.

use std::{
    cell::{Cell, RefCell},
    sync::Arc,
    task::{Poll, Waker},
    time::Duration,
};

use deadpool::managed::{Object, Pool, PoolError, Timeouts};
use monoio::time::Instant;

use crate::{
    budget::Waiting,
    conn::{Credentials, Target},
    error::Error,
    manager::{Gates, PgManager},
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

/// A deadpool of connections for one [`PoolKey`] on one core, with its last use. Its
/// connections count against the process-wide gates of its tenant and node, so one core
/// may hold all of a tenant's connections while the others need none.
#[derive(Debug)]
pub struct TenantPool {
    key: PoolKey,
    credentials: Credentials,
    pool: Pool<PgManager>,
    gates: Gates,
    last_used: Cell<Instant>,
    /// Requests of this pool getting a connection now.
    waiting: Cell<usize>,
    /// Those of them waiting for a permit of the tenant's gate, and of the node's.
    on_tenant: Cell<usize>,
    on_node: Cell<usize>,
    /// Their wakers, woken when a connection of this pool is returned or dropped.
    returned: RefCell<Vec<Waker>>,
}

/// A connection another core waits for is given back when it is returned after being on
/// this core this long, even while this core has requests waiting too: the cores take
/// turns instead of the busiest keeping every connection.
pub const SHARE_AFTER: Duration = Duration::from_millis(250);

/// Takes an idle connection or opens one when a permit is free, never waiting inside
/// deadpool: the waiting is ours (for a permit of any core, or a local return).
const NOW: Timeouts = Timeouts {
    wait: Some(Duration::ZERO),
    create: None,
    recycle: None,
};

// === impl TenantPool ===

impl TenantPool {
    /// A pool for `target` counted against `gates` (at most the tenant's limit, which is
    /// process-wide).
    pub fn new(key: PoolKey, target: Target, gates: Gates, ping_after_idle: Duration) -> Self {
        let credentials = target.credentials.clone();
        let limit = gates.tenant.limit();
        let manager = PgManager::new(target, key.tenant.clone(), gates.clone(), ping_after_idle);
        let pool = Pool::builder(manager)
            .max_size(limit.max(1))
            .build()
            .expect("no runtime-dependent options are set");
        Self {
            key,
            credentials,
            pool,
            gates,
            last_used: Cell::new(Instant::now()),
            waiting: Cell::new(0),
            on_tenant: Cell::new(0),
            on_node: Cell::new(0),
            returned: RefCell::new(Vec::new()),
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

    /// Checks out a connection, waiting at most `wait` for one: an idle one of this
    /// pool, a new one when the tenant's and the node's gates have room, else the first of
    /// a connection returned here or a permit given back on any core.
    pub async fn get(&self, wait: Duration) -> Result<Object<PgManager>, Error> {
        if self.gates.tenant.limit() == 0 {
            return Err(self.exhausted(Duration::ZERO));
        }
        self.touch();
        let started = Instant::now();
        let deadline = started + wait;
        let mut waiting: Option<GateWait<'_>> = None;
        let _local = LocalWait::new(self);
        loop {
            // Each attempt runs as its own task: when the wait times out, a connection
            // being opened for it is not abandoned half-way; it finishes and stays idle.
            let pool = self.pool.clone();
            let attempt = monoio::spawn(async move { pool.timeout_get(&NOW).await });
            let left = deadline.saturating_duration_since(Instant::now());
            let full = match monoio::time::timeout(left, attempt).await {
                Ok(Ok(conn)) => {
                    self.mark_idle();
                    return Ok(conn);
                }
                Ok(Err(PoolError::Backend(Error::Exhausted { .. }))) => Some(&self.gates.tenant),
                Ok(Err(PoolError::Backend(Error::Budget { .. }))) => Some(&self.gates.node),
                Ok(Err(PoolError::Backend(e))) => return Err(e),
                Ok(Err(PoolError::Closed)) => return Err(Error::Closed),
                // Every connection this pool may have is checked out here.
                Ok(Err(_)) => None,
                Err(_) => return Err(self.timed_out(waiting.as_ref().map(|w| &w.wait), started)),
            };
            match (full, &waiting) {
                (Some(gate), Some(w))
                    if Arc::ptr_eq(gate, w.wait.gate()) && w.asks() == self.asks_others(gate) => {}
                (Some(gate), _) => waiting = Some(GateWait::new(self, gate)),
                (None, _) => waiting = None,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let woken = self.woken(waiting.as_mut().map(|w| &mut w.wait));
            // The timer's own wake may look like a wake-up to `woken`: check the clock.
            if monoio::time::timeout(left, woken).await.is_err() || Instant::now() >= deadline {
                return Err(self.timed_out(waiting.as_ref().map(|w| &w.wait), started));
            }
        }
    }

    /// Whether a request waiting for a permit of `gate` asks other cores to give theirs
    /// back (closing an idle connection so this core can open one): for the node's gate
    /// (other tenants' connections), and for the tenant's while this core holds none of
    /// the tenant's connections to the node. A core that holds some waits for them (or a
    /// permit freed anyway) without moving a connection: the gateway hands requests to the
    /// cores holding connections, so a core holding none waits here only when that could
    /// not be done (another core took the last permit between the look and the connect).
    fn asks_others(&self, gate: &Arc<crate::budget::Gate>) -> bool {
        !Arc::ptr_eq(gate, &self.gates.tenant) || !gate.holders().contains(self.gates.core)
    }

    /// The gates its connections count against.
    pub fn gates(&self) -> &Gates {
        &self.gates
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        self.pool.status().available
    }

    /// Sleeps until a connection of this pool is returned or, when `waiting`, a permit of
    /// its gate is given back on any core; at once when either happened meanwhile.
    async fn woken(&self, mut waiting: Option<&mut Waiting>) {
        let mut slept = false;
        std::future::poll_fn(|cx| {
            if slept {
                return Poll::Ready(());
            }
            self.returned.borrow_mut().push(cx.waker().clone());
            if let Some(w) = waiting.as_deref_mut() {
                w.register(cx.waker());
                if w.gate().has_room() {
                    return Poll::Ready(());
                }
            }
            if self.pool.status().available > 0 {
                return Poll::Ready(());
            }
            slept = true;
            Poll::Pending
        })
        .await
    }

    /// Tells the tenant's gate whether this core has an idle connection of it now, so
    /// other cores hand requests to a core that can run them at once.
    fn mark_idle(&self) {
        self.gates
            .tenant
            .mark_idle(self.gates.core, self.pool.status().available > 0);
    }

    /// A connection of this pool was returned or dropped: wakes this core's waiters.
    pub fn returned(&self) {
        self.mark_idle();
        let wakers = std::mem::take(&mut *self.returned.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }

    /// Whether a connection being returned should be closed instead, so its permit goes to
    /// a request waiting on another core: when requests elsewhere wait for the tenant's (or
    /// the node's) permits, and this pool has no waiter of its own or has held the
    /// connection for [`SHARE_AFTER`].
    pub fn give_back(&self, conn: &Object<PgManager>) -> bool {
        self.wanted_elsewhere()
            && (self.waiting.get() == 0 || Object::metrics(conn).age() >= SHARE_AFTER)
    }

    /// Whether requests on other cores (or of other pools) wait for this pool's gates.
    pub fn wanted_elsewhere(&self) -> bool {
        self.gates.tenant.waiting() > self.on_tenant.get()
            || self.gates.node.waiting() > self.on_node.get()
    }

    fn timed_out(&self, waiting: Option<&Waiting>, started: Instant) -> Error {
        match waiting {
            Some(w) if Arc::ptr_eq(w.gate(), &self.gates.node) => Error::Budget {
                node: self.key.node.clone(),
                limit: self.gates.node.limit(),
            },
            _ => self.exhausted(started.elapsed()),
        }
    }

    fn exhausted(&self, waited: Duration) -> Error {
        Error::Exhausted {
            tenant: self.key.tenant.clone(),
            node: self.key.node.clone(),
            limit: self.gates.tenant.limit(),
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
        self.mark_idle();
        result.removed.len()
    }

    /// Closes the pool: idle connections close now, in-use ones when returned.
    pub fn close(&self) {
        self.pool.close();
        self.gates.tenant.mark_idle(self.gates.core, false);
    }

    /// Whether [`TenantPool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }
}

/// Counts a request as waiting in its pool until dropped.
struct LocalWait<'a>(&'a TenantPool);

impl<'a> LocalWait<'a> {
    fn new(pool: &'a TenantPool) -> Self {
        pool.waiting.set(pool.waiting.get() + 1);
        Self(pool)
    }
}

impl Drop for LocalWait<'_> {
    fn drop(&mut self) {
        self.0.waiting.set(self.0.waiting.get() - 1);
    }
}

/// A request of a pool waiting on one of its gates; when it asks other cores to give
/// permits back, counted in the pool until dropped (so the pool does not give its own
/// connections away to it).
struct GateWait<'a> {
    wait: Waiting,
    counter: Option<&'a Cell<usize>>,
}

impl<'a> GateWait<'a> {
    fn new(pool: &'a TenantPool, gate: &Arc<crate::budget::Gate>) -> Self {
        if !pool.asks_others(gate) {
            return Self {
                wait: gate.watch(),
                counter: None,
            };
        }
        let counter = if Arc::ptr_eq(gate, &pool.gates.tenant) {
            &pool.on_tenant
        } else {
            &pool.on_node
        };
        counter.set(counter.get() + 1);
        Self {
            wait: gate.wait(),
            counter: Some(counter),
        }
    }

    fn asks(&self) -> bool {
        self.counter.is_some()
    }
}

impl Drop for GateWait<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.counter {
            c.set(c.get() - 1);
        }
    }
}
