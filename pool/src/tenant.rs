//! One tenant's pool of connections to one node, on one core.
//!
//! # Why not deadpool
//!
//! Until issue 26 this was a deadpool. deadpool wants `Send` futures and a monoio socket is
//! not `Send`, so its `create` spawned the connect and awaited a oneshot; and a future
//! waiting inside deadpool that is dropped half-way (a `monoio::time::timeout` running out)
//! abandons a connection being created for it. So every checkout ran as a spawned task
//! (a task, a boxed future and a timer per request: 18% of the PostgreSQL front end's
//! time in memcpy at 1000 clients), and waiters left stale wakers behind. This pool is
//! `!Send` and belongs to its core:
//! - an idle connection is taken with no allocation, no timer and one clock read;
//! - a checkout that must wait joins a queue ([`crate::waiters`]) it leaves when its future
//!   is dropped, and a connection returned goes straight to the first waiter;
//! - a connect is spawned once per *connection*: it finishes even when the checkout that
//!   asked for it has gone, and the connection then goes to the next waiter or stays idle,
//!   its permit counted once.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    future::Future,
    pin::pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use monoio::time::Instant;
use tracing::debug;

use crate::{
    budget::{try_acquire, Full, Gate, Waiting},
    conn::{connect, Credentials, PgConn, Target},
    error::Error,
    waiters::{Ticket, Waiters},
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

/// A [`PoolKey`] by reference, to look a pool up without building its key. Hashes as the
/// key does (the same fields in the same order; `&str` hashes as `String`).
#[derive(Debug, Clone, Copy, Hash)]
pub struct PoolKeyRef<'a> {
    /// Tenant (project) id.
    pub tenant: &'a str,
    /// Database name.
    pub database: &'a str,
    /// Role name.
    pub role: &'a str,
    /// Node (member) name.
    pub node: &'a str,
}

impl PoolKeyRef<'_> {
    /// The owned key.
    pub fn to_key(&self) -> PoolKey {
        PoolKey {
            tenant: self.tenant.to_string(),
            database: self.database.to_string(),
            role: self.role.to_string(),
            node: self.node.to_string(),
        }
    }
}

impl quick_cache::Equivalent<PoolKey> for PoolKeyRef<'_> {
    fn equivalent(&self, key: &PoolKey) -> bool {
        self.tenant == key.tenant
            && self.database == key.database
            && self.role == key.role
            && self.node == key.node
    }
}

/// The gates a pool's connections count against.
#[derive(Debug, Clone)]
pub struct Gates {
    /// The tenant's connections to the node, on all cores.
    pub tenant: Arc<Gate>,
    /// All connections to the node, on all cores.
    pub node: Arc<Gate>,
    /// The core whose pool holds the connections (marked a holder of both gates).
    pub core: usize,
}

/// A connection another core waits for is given back when it is returned after being on
/// this core this long, even while this core has requests waiting too: the cores take
/// turns instead of the busiest keeping every connection.
pub const SHARE_AFTER: Duration = Duration::from_millis(250);

/// Idle time after which a connection is checked for a session that ended before reuse.
const CHECK_AFTER_IDLE: Duration = Duration::from_millis(20);

/// A connection of a pool, checked out: back to the pool with [`TenantPool::put_back`],
/// closed with [`TenantPool::discard`].
#[derive(Debug)]
pub struct Pooled {
    conn: PgConn,
    created: Instant,
}

impl Pooled {
    /// The connection.
    pub fn conn(&mut self) -> &mut PgConn {
        &mut self.conn
    }

    /// Whether it can no longer be used (see [`PgConn::is_closed`]).
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// How long ago it was opened.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }
}

/// An idle connection and when it was returned.
#[derive(Debug)]
struct Idle {
    conn: Pooled,
    since: Instant,
}

/// What a waiter is served: a connection, or why none comes.
type Served = Result<Pooled, Error>;

#[derive(Debug, Default)]
struct State {
    /// First returned, first out (see bench/RESULTS.md, "Pool order").
    idle: VecDeque<Idle>,
    waiters: Waiters<Served>,
    /// Connections open or being opened: idle, checked out, or on their way to a waiter.
    open: usize,
    /// Connects in flight.
    opening: usize,
    closed: bool,
}

/// The connections of one [`PoolKey`] on one core, with its last use. Its connections
/// count against the process-wide gates of its tenant and node, so one core may hold all
/// of a tenant's connections while the others need none.
#[derive(Debug)]
pub struct TenantPool {
    key: PoolKey,
    target: Arc<Target>,
    gates: Gates,
    ping_after_idle: Duration,
    last_used: Cell<Instant>,
    state: RefCell<State>,
    /// Waiters of this pool asking other cores for permits of the tenant's gate, and of
    /// the node's.
    on_tenant: Cell<usize>,
    on_node: Cell<usize>,
    /// Waiters of this pool waiting short on the tenant's gate ([`Gate::wait_short`]).
    on_short: Cell<usize>,
}

/// Whether a request waiting on a gate asks other cores for its permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// It waits for a permit freed anyway.
    No,
    /// Any core holding a connection it no longer needs gives it back ([`Gate::wait`]).
    Any,
    /// Cores holding more than an even share give back ([`Gate::wait_short`]).
    Share,
}

/// What wakes a waiter.
enum Event {
    Served(Served),
    /// An idle connection to check before use.
    Idle(Idle),
    TimedOut,
}

// === impl TenantPool ===

impl TenantPool {
    /// A pool for `target` counted against `gates` (at most the tenant's limit, which is
    /// process-wide).
    pub fn new(key: PoolKey, target: Target, gates: Gates, ping_after_idle: Duration) -> Self {
        Self {
            key,
            target: Arc::new(target),
            gates,
            ping_after_idle,
            last_used: Cell::new(Instant::now()),
            state: RefCell::default(),
            on_tenant: Cell::new(0),
            on_node: Cell::new(0),
            on_short: Cell::new(0),
        }
    }

    /// The key.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// The credentials its connections use.
    pub fn credentials(&self) -> &Credentials {
        &self.target.credentials
    }

    /// When a connection was last checked out.
    pub fn last_used(&self) -> Instant {
        self.last_used.get()
    }

    /// Marks the pool as used now.
    pub fn touch(&self) {
        self.last_used.set(Instant::now());
    }

    /// Connections open now (idle, in use, and being opened).
    pub fn size(&self) -> usize {
        self.state.borrow().open
    }

    /// Connections checked out (or being opened) right now.
    pub fn in_use(&self) -> usize {
        let s = self.state.borrow();
        s.open - s.idle.len()
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        self.state.borrow().idle.len()
    }

    /// Checkouts waiting in this pool's queue now.
    pub fn waiters(&self) -> usize {
        self.state.borrow().waiters.len()
    }

    /// The gates its connections count against.
    pub fn gates(&self) -> &Gates {
        &self.gates
    }

    /// Checks out a connection, waiting at most `wait` for one: an idle one of this
    /// pool, a new one when the tenant's and the node's gates have room, else the first of
    /// a connection returned here or a permit given back on any core. Dropping the future
    /// leaves the queue; a connection being opened for it goes to the next waiter or
    /// stays idle.
    pub async fn get(self: &Rc<Self>, wait: Duration) -> Result<Pooled, Error> {
        if self.gates.tenant.limit() == 0 {
            return Err(self.exhausted(Duration::ZERO));
        }
        let now = Instant::now();
        self.last_used.set(now);
        if let Some(conn) = self.take_fresh(now)? {
            self.mark_idle();
            return Ok(conn);
        }
        // Boxed: the wait's state (a timer among it) would otherwise be carried by every
        // caller's future, and most checkouts find an idle connection above.
        Box::pin(self.wait_for(now, wait)).await
    }

    /// The first idle connection when it needs no check (returned moments ago and not
    /// closed); those found closed are dropped.
    fn take_fresh(&self, now: Instant) -> Result<Option<Pooled>, Error> {
        let mut s = self.state.borrow_mut();
        if s.closed {
            return Err(Error::Closed);
        }
        loop {
            let Some(first) = s.idle.front() else {
                return Ok(None);
            };
            if now.saturating_duration_since(first.since) > CHECK_AFTER_IDLE {
                return Ok(None);
            }
            let idle = s.idle.pop_front().expect("looked at");
            if !idle.conn.conn.is_closed() {
                return Ok(Some(idle.conn));
            }
            s.open -= 1;
        }
    }

    /// The slow path: waits in the queue until served, an idle connection turns up (to
    /// check), or the deadline.
    async fn wait_for(self: &Rc<Self>, started: Instant, wait: Duration) -> Result<Pooled, Error> {
        let deadline = started + wait;
        let me = Queued::join(self);
        let mut gate: Option<GateWait<'_>> = None;
        let mut connecting = false;
        let mut sleep = pin!(monoio::time::sleep_until(deadline));
        loop {
            let event = std::future::poll_fn(|cx| {
                match self.poll_wait(me.ticket, &mut gate, &mut connecting, cx) {
                    Poll::Ready(e) => Poll::Ready(e),
                    Poll::Pending => sleep.as_mut().poll(cx).map(|()| Event::TimedOut),
                }
            })
            .await;
            let idle = match event {
                Event::Served(r) => {
                    if r.is_ok() {
                        self.mark_idle();
                    }
                    return r;
                }
                Event::TimedOut => {
                    return Err(self.timed_out(gate.as_ref().map(|w| &w.wait), started))
                }
                Event::Idle(idle) => idle,
            };
            let idle_for = Instant::now().saturating_duration_since(idle.since);
            let mut back = PutBack {
                pool: self,
                idle: Some(idle),
            };
            let checked = {
                let conn = &back.idle.as_ref().expect("set above").conn;
                let mut check = pin!(self.check(conn, idle_for));
                std::future::poll_fn(|cx| match check.as_mut().poll(cx) {
                    Poll::Ready(ok) => Poll::Ready(Some(ok)),
                    Poll::Pending => sleep.as_mut().poll(cx).map(|()| None),
                })
                .await
            };
            match checked {
                Some(true) => {
                    let idle = back.idle.take().expect("set above");
                    self.mark_idle();
                    return Ok(idle.conn);
                }
                Some(false) => self.discard(back.idle.take().expect("set above").conn),
                // The check outlived the wait: the connection goes back (or, a ping
                // abandoned, is closed).
                None => return Err(self.timed_out(gate.as_ref().map(|w| &w.wait), started)),
            }
        }
    }

    /// Whether an idle connection may be used: open, its session not ended while idle
    /// (looked for after [`CHECK_AFTER_IDLE`]), and answering a ping after the pool's
    /// `ping_after_idle`.
    async fn check(&self, conn: &Pooled, idle_for: Duration) -> bool {
        if conn.conn.is_closed() {
            return false;
        }
        if idle_for > CHECK_AFTER_IDLE && conn.conn.ended_while_idle().await {
            debug!(node = %self.key.node, "server ended the session while idle");
            return false;
        }
        if idle_for > self.ping_after_idle {
            if let Err(error) = conn.conn.simple("").await {
                debug!(node = %self.key.node, %error, "an idle connection failed its ping");
                return false;
            }
        }
        true
    }

    /// One look at the pool for the waiter `me`; registers its wakers when there is
    /// nothing to do but wait: for its own connect, a connection returned here, or a
    /// permit given back on any core.
    fn poll_wait<'a>(
        self: &'a Rc<Self>,
        me: Ticket,
        gate: &mut Option<GateWait<'a>>,
        connecting: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Event> {
        loop {
            {
                let mut s = self.state.borrow_mut();
                if let Some(got) = s.waiters.take(me) {
                    return Poll::Ready(Event::Served(got));
                }
                if s.closed {
                    return Poll::Ready(Event::Served(Err(Error::Closed)));
                }
                if let Some(idle) = s.idle.pop_front() {
                    return Poll::Ready(Event::Idle(idle));
                }
                s.waiters.set_waker(me, cx.waker());
                if *connecting {
                    return Poll::Pending;
                }
            }
            let full = match try_acquire(&self.gates.tenant, &self.gates.node, self.gates.core) {
                Ok(permit) => {
                    *gate = None;
                    *connecting = true;
                    self.open(me, permit);
                    return Poll::Pending;
                }
                Err(Full::Tenant) => &self.gates.tenant,
                Err(Full::Node) => &self.gates.node,
            };
            let keep = gate.as_ref().is_some_and(|w| {
                Arc::ptr_eq(full, w.wait.gate()) && w.asks == self.asks_others(full)
            });
            if !keep {
                *gate = Some(GateWait::new(self, full));
            }
            let w = gate.as_mut().expect("set above");
            w.wait.register(cx.waker());
            if !w.wait.gate().has_room() {
                return Poll::Pending;
            }
            // A permit was given back meanwhile: try again.
        }
    }

    /// Opens a connection for the waiter `me` under `permit`, in a task of its own: it
    /// finishes even if `me` leaves, and then goes to the next waiter or stays idle.
    fn open(self: &Rc<Self>, me: Ticket, permit: crate::budget::Permit) {
        {
            let mut s = self.state.borrow_mut();
            s.open += 1;
            s.opening += 1;
        }
        let pool = Rc::downgrade(self);
        let target = self.target.clone();
        monoio::spawn(async move {
            let result = connect(&target, permit).await;
            // A pool dropped meanwhile (evicted): the connection closes with its permit.
            if let Some(pool) = pool.upgrade() {
                pool.connected(me, result);
            }
        });
    }

    /// A connect for `me` ended: the connection goes to `me` (or, gone, the next waiter,
    /// else it stays idle); an error goes to `me` only.
    fn connected(&self, me: Ticket, result: Result<PgConn, Error>) {
        let mut s = self.state.borrow_mut();
        s.opening -= 1;
        match result {
            Ok(conn) => {
                drop(s);
                let conn = Pooled {
                    conn,
                    created: Instant::now(),
                };
                self.hand_over(conn, Some(me));
            }
            Err(e) => {
                s.open -= 1;
                if let Err(Err(error)) = s.waiters.serve(me, Err(e)) {
                    debug!(node = %self.key.node, %error, "a connect for a request gone failed");
                }
            }
        }
    }

    /// Returns a checked-out connection: to the first waiter, else idle (closed when it
    /// broke or the pool closed).
    pub fn put_back(&self, conn: Pooled) {
        self.hand_over(conn, None);
    }

    /// Closes a checked-out connection (its state is unknown, or its permit is wanted on
    /// another core); its permit is given back when the server has closed it.
    pub fn discard(&self, conn: Pooled) {
        self.state.borrow_mut().open -= 1;
        drop(conn);
    }

    fn hand_over(&self, conn: Pooled, to: Option<Ticket>) {
        if conn.conn.is_closed() {
            return self.discard(conn);
        }
        let mut s = self.state.borrow_mut();
        if s.closed {
            s.open -= 1;
            drop(s);
            return drop(conn);
        }
        let mut rest = Err(Ok(conn));
        if let Some(t) = to {
            rest = s.waiters.serve(t, rest.unwrap_err());
        }
        if let Err(got) = rest {
            rest = s.waiters.serve_first(got);
        }
        if let Err(Ok(conn)) = rest {
            s.idle.push_back(Idle {
                conn,
                since: Instant::now(),
            });
            drop(s);
            self.mark_idle();
        }
    }

    /// Whether a request waiting for a permit of `gate` asks other cores to give theirs
    /// back (closing an idle connection so this core can open one): for the node's gate
    /// (other tenants' connections), and for the tenant's while this core holds none of
    /// the tenant's connections to the node. A core that holds some waits for them (or a
    /// permit freed anyway) without moving a connection: the gateway hands requests to the
    /// cores holding connections, so a core holding none waits here only when that could
    /// not be done (another core took the last permit between the look and the connect).
    /// Also while this pool itself holds none: the core's permits may all be in the
    /// tenant's other pools (another role or database), whose idle connections nothing
    /// else would give back.
    ///
    /// Otherwise, when another core has an idle connection of the tenant, it asks for it
    /// ([`Ask::Any`]): nothing there uses it. And when this core holds fewer than an even
    /// share of the tenant's permits among the cores holding them, it asks for its share
    /// ([`Ask::Share`]):
    /// a PostgreSQL client's transactions cannot be handed to another core, so without
    /// this the core that took the permits first kept them (measured: 15 of 16 server
    /// connections on one core of two, each with 500 pgbench clients, 6x the
    /// transactions of the other).
    fn asks_others(&self, gate: &Arc<Gate>) -> Ask {
        let holders = gate.holders();
        if !Arc::ptr_eq(gate, &self.gates.tenant)
            || !holders.contains(self.gates.core)
            || self.size() == 0
        {
            return Ask::Any;
        }
        // This core holds some (above), so it is among the holders.
        if holders.count(self.gates.core) < gate.limit() / holders.len().max(1) {
            Ask::Share
        } else if gate.idle().nth_except(0, self.gates.core).is_some() {
            // Another core has a connection idle while this one waits: its permit moves
            // (a PostgreSQL client's transaction cannot be handed to that core).
            Ask::Any
        } else {
            Ask::No
        }
    }

    /// Whether this core holds more than an even share of the tenant's permits among the
    /// cores holding them (rounded up, so an uneven split does not swing back and forth).
    fn above_share(&self) -> bool {
        let gate = &self.gates.tenant;
        let holders = gate.holders();
        holders.count(self.gates.core) > gate.limit().div_ceil(holders.len().max(1))
    }

    /// Tells the tenant's gate whether this core has an idle connection of it now, so
    /// other cores hand requests to a core that can run them at once.
    fn mark_idle(&self) {
        self.gates
            .tenant
            .mark_idle(self.gates.core, self.idle() > 0);
    }

    /// Whether a connection being returned should be closed instead, so its permit goes to
    /// a request waiting on another core: when requests elsewhere wait for the tenant's (or
    /// the node's) permits, and this pool has no waiter of its own or has held the
    /// connection for [`SHARE_AFTER`].
    ///
    /// Also when a core below an even share of the tenant's permits waits for one and
    /// this core is above its share (see [`TenantPool::asks_others`]), once the connection
    /// is [`SHARE_AFTER`] old.
    pub fn give_back(&self, conn: &Pooled) -> bool {
        let wanted = self.wanted_elsewhere() && (self.waiters() == 0 || conn.age() >= SHARE_AFTER);
        let short_elsewhere = self.gates.tenant.short() > self.on_short.get();
        wanted || (short_elsewhere && conn.age() >= SHARE_AFTER && self.above_share())
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

    /// Closes idle connections unused for `idle_for`, keeping at least `keep` idle ones
    /// (the most recently returned).
    pub fn trim_idle(&self, keep: usize, idle_for: Duration) -> usize {
        let now = Instant::now();
        let mut s = self.state.borrow_mut();
        let idle = std::mem::take(&mut s.idle);
        let kept_from = idle.len().saturating_sub(keep);
        let mut closed = Vec::new();
        for (i, e) in idle.into_iter().enumerate() {
            if i >= kept_from || now.saturating_duration_since(e.since) < idle_for {
                s.idle.push_back(e);
            } else {
                closed.push(e);
            }
        }
        s.open -= closed.len();
        drop(s);
        self.mark_idle();
        closed.len()
    }

    /// Closes the pool: idle connections close now, in-use ones when returned, and its
    /// waiters are answered [`Error::Closed`].
    pub fn close(&self) {
        let idle = {
            let mut s = self.state.borrow_mut();
            s.closed = true;
            let idle = std::mem::take(&mut s.idle);
            s.open -= idle.len();
            while s.waiters.serve_first(Err(Error::Closed)).is_ok() {}
            idle
        };
        drop(idle);
        self.gates.tenant.mark_idle(self.gates.core, false);
    }

    /// Whether [`TenantPool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }
}

/// A checkout's place in its pool's queue; leaving it (the future dropped) passes on a
/// connection it was served and did not take.
struct Queued<'a> {
    pool: &'a TenantPool,
    ticket: Ticket,
}

impl<'a> Queued<'a> {
    fn join(pool: &'a TenantPool) -> Self {
        let ticket = pool.state.borrow_mut().waiters.join();
        Self { pool, ticket }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut s = self.pool.state.borrow_mut();
        let left = s.waiters.leave(self.ticket);
        // An idle connection this waiter was woken for (one put back unchecked): the next
        // waiter looks at it.
        if !s.idle.is_empty() {
            s.waiters.wake_first();
        }
        drop(s);
        if let Some(Ok(conn)) = left {
            self.pool.hand_over(conn, None);
        }
    }
}

/// An idle connection being checked; put back first in line when the check is dropped.
struct PutBack<'a> {
    pool: &'a TenantPool,
    idle: Option<Idle>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        let Some(idle) = self.idle.take() else {
            return;
        };
        if idle.conn.conn.is_closed() {
            return self.pool.discard(idle.conn);
        }
        let mut s = self.pool.state.borrow_mut();
        if s.closed {
            s.open -= 1;
            drop(s);
            return drop(idle);
        }
        s.idle.push_front(idle);
        s.waiters.wake_first();
    }
}

/// A request of a pool waiting on one of its gates; when it asks other cores to give
/// permits back, counted in the pool until dropped (so the pool does not give its own
/// connections away to it).
struct GateWait<'a> {
    wait: Waiting,
    asks: Ask,
    counter: Option<&'a Cell<usize>>,
}

impl<'a> GateWait<'a> {
    fn new(pool: &'a TenantPool, gate: &Arc<Gate>) -> Self {
        let asks = pool.asks_others(gate);
        let (wait, counter) = match asks {
            Ask::No => (gate.watch(), None),
            Ask::Share => (gate.wait_short(), Some(&pool.on_short)),
            Ask::Any if Arc::ptr_eq(gate, &pool.gates.tenant) => {
                (gate.wait(), Some(&pool.on_tenant))
            }
            Ask::Any => (gate.wait(), Some(&pool.on_node)),
        };
        if let Some(c) = counter {
            c.set(c.get() + 1);
        }
        Self {
            wait,
            asks,
            counter,
        }
    }
}

impl Drop for GateWait<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.counter {
            c.set(c.get() - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn a_key_by_reference_hashes_and_compares_as_the_key() {
        let key = PoolKey {
            tenant: "alpha/pg".into(),
            database: "tenant_alpha".into(),
            role: "alpha_owner".into(),
            node: "pg1".into(),
        };
        let by_ref = PoolKeyRef {
            tenant: "alpha/pg",
            database: "tenant_alpha",
            role: "alpha_owner",
            node: "pg1",
        };
        let h = quick_cache::DefaultHashBuilder::default();
        assert_eq!(h.hash_one(&key), h.hash_one(by_ref));
        assert!(quick_cache::Equivalent::equivalent(&by_ref, &key));
        assert_eq!(by_ref.to_key(), key);
        let other = PoolKeyRef {
            node: "pg2",
            ..by_ref
        };
        assert!(!quick_cache::Equivalent::equivalent(&other, &key));
        // Fields are not run together: ("ab", "c") is not ("a", "bc").
        let shifted = PoolKeyRef {
            tenant: "alpha/pgt",
            database: "enant_alpha",
            ..by_ref
        };
        assert_ne!(h.hash_one(&key), h.hash_one(shifted));
    }
}
