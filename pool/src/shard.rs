//! One core's pools: the pool cache, the process-wide budgets they count against, the
//! topology it routes by, and per-member outstanding counts. Owned by the core; nothing
//! here is locked on the request path (the budgets' gates are atomics, touched when a
//! server connection opens or closes).

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use monoio::time::Instant;
use ringgate_discovery::{
    lease::{LeaseGate, LeaseState},
    Member, Role, Topology,
};
use tracing::{debug, info, warn};

use crate::{
    budget::Budgets,
    config::Config,
    conn::{Credentials, PgConn, Target},
    error::Error,
    pool_cache::PoolCache,
    route::{self, Intent},
    tenant::{Gates, PoolKey, PoolKeyRef, Pooled, TenantPool},
};

/// Counters describing one shard, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Pools cached now.
    pub pools: usize,
    /// Server connections open now (all pools).
    pub connections: usize,
    /// Connections checked out now.
    pub in_use: usize,
    /// Pools evicted for capacity.
    pub evicted_capacity: u64,
    /// Pools closed after the idle TTL.
    pub evicted_idle: u64,
    /// Pools closed because their node left or changed role.
    pub evicted_topology: u64,
    /// Idle connections closed beyond the warm minimum.
    pub trimmed_connections: u64,
    /// Checkouts that timed out waiting.
    pub wait_timeouts: u64,
    /// Epoch of the topology routed by.
    pub topology_epoch: u64,
    /// Whether that topology is stale (no source answered).
    pub topology_stale: bool,
}

/// Requests in flight per member on this core.
type Outstanding = Rc<RefCell<HashMap<Rc<str>, usize>>>;

/// One core's tenant pools.
pub struct Shard {
    core: usize,
    config: Config,
    cache: RefCell<PoolCache>,
    topology: RefCell<Arc<Topology>>,
    budgets: Arc<Budgets>,
    demand: Arc<crate::budget::Demand>,
    outstanding: Outstanding,
    on_stale: RefCell<Option<Box<dyn Fn()>>>,
    stats: Cell<ShardStats>,
    storm: RefCell<StormWatch>,
    /// The leader's lease when the topology follows Patroni through etcd.
    lease_gate: RefCell<Option<Arc<LeaseGate>>>,
    /// Counts hand-offs, so the holders of a tenant's connections take turns.
    turn: Cell<usize>,
}

/// A core to hand a request to: it holds connections of the request's tenant on `node`.
#[derive(Debug)]
pub struct HandOff {
    /// The core.
    pub core: usize,
    /// The member the request was routed to here (the other core should use it too).
    pub node: String,
    /// Counts the request as handed to the core until dropped (keep it until answered).
    pub handed: crate::budget::Handed,
}

/// Pools evicted within one upkeep round (about a second) that make an eviction storm.
pub const STORM_EVICTIONS: u64 = 10;
/// Storm warnings are this far apart at least; rounds in between are summed.
const STORM_LOG_EVERY: Duration = Duration::from_secs(10);

/// Notices eviction storms (many tenant pools closed per second: a cache too small for the
/// tenants in use, or a topology change) so each gets one warning with its figures.
#[derive(Debug, Default)]
pub struct StormWatch {
    seen: u64,
    last_warned: Option<Instant>,
    unreported: u64,
}

impl StormWatch {
    /// Folds in the eviction total after one upkeep round; returns the evictions to report
    /// when this round is a storm and no warning went out in the last ten seconds.
    pub fn round(&mut self, evicted_total: u64, now: Instant) -> Option<u64> {
        let fresh = evicted_total.saturating_sub(self.seen);
        self.seen = evicted_total;
        if fresh < STORM_EVICTIONS {
            return None;
        }
        self.unreported += fresh;
        if self
            .last_warned
            .is_some_and(|t| now.duration_since(t) < STORM_LOG_EVERY)
        {
            return None;
        }
        self.last_warned = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("core", &self.core)
            .field("pools", &self.cache.borrow().len())
            .finish_non_exhaustive()
    }
}

// === impl Shard ===

impl Shard {
    /// Core `core`, counting its connections against `budgets` (shared by every core,
    /// made by [`Budgets::new`] from the same config), routing by `topology`.
    pub fn new(
        core: usize,
        budgets: Arc<Budgets>,
        config: Config,
        topology: Arc<Topology>,
    ) -> Rc<Self> {
        Rc::new(Self {
            core,
            cache: RefCell::new(PoolCache::new(config.max_tenant_pools)),
            config,
            topology: RefCell::new(topology),
            demand: budgets.demand(),
            budgets,
            outstanding: Rc::default(),
            on_stale: RefCell::new(None),
            stats: Cell::new(ShardStats::default()),
            storm: RefCell::new(StormWatch::default()),
            lease_gate: RefCell::new(None),
            turn: Cell::new(core),
        })
    }

    /// Gates writes on the leader's lease (see [`ringgate_discovery::lease`]).
    pub fn set_lease_gate(&self, gate: Arc<LeaseGate>) {
        *self.lease_gate.borrow_mut() = Some(gate);
    }

    /// The topology routed by now.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// Called when a supposed primary turns out read-only, to ask for re-resolution.
    pub fn on_stale(&self, f: impl Fn() + 'static) {
        *self.on_stale.borrow_mut() = Some(Box::new(f));
    }

    /// One tenant's connection limit per node (process-wide: one core may use all of it).
    pub fn tenant_limit(&self) -> usize {
        self.config.max_per_tenant
    }

    /// Resolves when a request on some core starts waiting for a tenant's or a node's
    /// permits: time to run [`Shard::give_back_wanted`].
    pub async fn wanted(&self) {
        self.demand.signalled().await
    }

    /// The process-wide budgets this core counts against.
    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    /// How long a checkout waits for a connection of an exhausted pool.
    pub fn wait_timeout(&self) -> Duration {
        self.config.wait_timeout
    }

    /// Counts a wait for one of `tenant`'s read connections that timed out outside
    /// [`Shard::checkout`] (a read queued behind busy connections), and describes it.
    pub fn reads_exhausted(&self, tenant: &str, waited: Duration) -> Error {
        self.bump(|s| s.wait_timeouts += 1);
        Error::Exhausted {
            tenant: tenant.to_string(),
            node: "the read members".to_string(),
            limit: self.tenant_limit(),
            waited_ms: waited.as_millis() as u64,
        }
    }

    /// Checks out a connection for `tenant` on the member `intent` routes to.
    pub async fn checkout(
        self: &Rc<Self>,
        tenant: &str,
        credentials: &Credentials,
        intent: Intent,
    ) -> Result<Checkout, Error> {
        self.checkout_on(tenant, credentials, intent, None).await
    }

    /// [`Shard::checkout`], on the member named `prefer` when it may serve `intent` (a read
    /// handed over by a core that chose that member for the connections held here).
    pub async fn checkout_on(
        self: &Rc<Self>,
        tenant: &str,
        credentials: &Credentials,
        intent: Intent,
        prefer: Option<&str>,
    ) -> Result<Checkout, Error> {
        let topology = self.topology();
        let member = self.route(&topology, intent, prefer)?;
        let pool = self.pool_for(tenant, credentials, member);
        let guard = OutstandingGuard::new(&self.outstanding, &member.name);
        let conn = pool.get(self.config.wait_timeout).await.inspect_err(|e| {
            if matches!(e, Error::Exhausted { .. }) {
                self.bump(|s| s.wait_timeouts += 1);
            }
        })?;
        let lease = match (member.role, self.lease_gate.borrow().as_ref()) {
            (Role::Leader, Some(gate)) if topology.lease_generation != 0 => Some(Lease {
                gate: gate.clone(),
                generation: topology.lease_generation,
            }),
            _ => None,
        };
        Ok(Checkout {
            conn: Some(conn),
            pool,
            role: member.role,
            lease,
            _guard: guard,
        })
    }

    /// The member `intent` routes to (`prefer` when it may serve it).
    fn route<'t>(
        &self,
        topology: &'t Topology,
        intent: Intent,
        prefer: Option<&str>,
    ) -> Result<&'t Member, Error> {
        if let Some(m) = prefer
            .and_then(|name| route::preferred(topology, intent, name, self.config.max_replica_lag))
        {
            return Ok(m);
        }
        let outstanding = self.outstanding.borrow();
        route::choose_from(
            topology,
            intent,
            self.config.max_replica_lag,
            self.core,
            |n| outstanding.get(n).copied().unwrap_or(0),
        )
        .ok_or(Error::NoPrimary)
    }

    /// Where a request of `tenant` with `intent` should run: `None` here, or another core
    /// holding the tenant's connections on the member it routes to, when this core has no
    /// idle connection there and the tenant (or the member) is at its limit. The holder
    /// with the fewest requests per connection takes it (this core among them when it
    /// holds some: then `None`), counting requests handed to it and not yet answered and,
    /// unless it marked an idle connection, its own connections as busy. Lock-free: one look at the pool's idle count and at the gates' atomics.
    pub fn hand_off_target(
        &self,
        tenant: &str,
        credentials: &Credentials,
        intent: Intent,
    ) -> Option<HandOff> {
        let topology = self.topology();
        let member = self.route(&topology, intent, None).ok()?;
        let pool = self.pool_for(tenant, credentials, member);
        if pool.idle() > 0 {
            return None;
        }
        let gates = pool.gates();
        if gates.tenant.has_room() && gates.node.has_room() {
            return None;
        }
        let holders = gates.tenant.holders();
        if !holders.any_but(self.core) {
            return None;
        }
        let turn = self.turn.get();
        self.turn.set(turn.wrapping_add(1));
        // The holder with the fewest requests per connection: those handed to it and not
        // yet answered, plus its own connections when it has none idle (as it last
        // marked). Ties go by turns, so equal holders share the requests.
        let mut candidates: Vec<usize> = holders.iter().collect();
        if candidates.is_empty() {
            return None;
        }
        let at = turn % candidates.len();
        candidates.rotate_left(at);
        let load = |c: usize| {
            let held = holders.count(c).max(1);
            let busy = if c != self.core && gates.tenant.idle().contains(c) {
                0
            } else {
                held
            };
            (gates.tenant.handed(c) + busy, held)
        };
        let core = candidates.into_iter().min_by(|&a, &b| {
            let ((la, ha), (lb, hb)) = (load(a), load(b));
            (la * hb).cmp(&(lb * ha))
        })?;
        (core != self.core).then(|| HandOff {
            core,
            node: member.name.clone(),
            handed: gates.tenant.hand_to(core),
        })
    }

    /// How many of `tenant`'s reads this core may run at once, each on a connection of its
    /// own: the tenant's limit while the member reads route to (`prefer` when it may serve
    /// them) has room, else the connections this core holds there (at least one). The
    /// gateway pipelines further reads onto those connections rather than wait for more.
    pub fn read_slots(
        &self,
        tenant: &str,
        credentials: &Credentials,
        prefer: Option<&str>,
    ) -> usize {
        let topology = self.topology();
        let Ok(member) = self.route(&topology, Intent::Read, prefer) else {
            return self.config.max_per_tenant;
        };
        let pool = self.pool_for(tenant, credentials, member);
        let gates = pool.gates();
        if gates.tenant.has_room() && gates.node.has_room() {
            self.config.max_per_tenant.max(1)
        } else {
            pool.size().clamp(1, self.config.max_per_tenant.max(1))
        }
    }

    /// The cached pool for this tenant on `member`, created (and cached) when missing or
    /// when the credentials changed.
    fn pool_for(&self, tenant: &str, credentials: &Credentials, member: &Member) -> Rc<TenantPool> {
        // Looked up by reference: a pool found allocates nothing.
        let wanted = PoolKeyRef {
            tenant,
            database: &credentials.database,
            role: &credentials.user,
            node: &member.name,
        };
        let mut cache = self.cache.borrow_mut();
        if let Some(pool) = cache.get(&wanted) {
            if pool.credentials() == credentials && !pool.is_closed() {
                return pool;
            }
        }
        let key = wanted.to_key();
        if let Some(old) = cache.remove(&key) {
            old.close();
        }
        let target = self.target_for(tenant, credentials, member);
        let gates = Gates {
            tenant: self.budgets.tenant(budget_of(tenant), &member.name),
            node: self.budgets.node(&member.name),
            core: self.core,
        };
        let pool = Rc::new(TenantPool::new(
            key,
            target,
            gates,
            self.config.ping_after_idle,
        ));
        let evicted = cache.insert(pool.clone());
        drop(cache);
        if !evicted.is_empty() {
            debug!(
                core = self.core,
                evicted = evicted.len(),
                "tenant pools evicted for capacity"
            );
            self.bump(|s| s.evicted_capacity += evicted.len() as u64);
            for p in evicted {
                p.close();
            }
        }
        pool
    }

    /// How this core connects to `member` for `tenant`.
    fn target_for(&self, tenant: &str, credentials: &Credentials, member: &Member) -> Target {
        Target {
            addr: member.addr,
            node: member.name.clone(),
            credentials: credentials.clone(),
            application_name: format!("ringgate/{tenant}/core{}", self.core),
            connect_timeout: self.config.connect_timeout,
            statement_cache: self.config.statement_cache,
            options: startup_options(&self.config, member.role),
            tls: self.config.tls.clone(),
            host: member.host.clone(),
        }
    }

    /// Opens an unpooled connection to the current leader that forwards `NOTIFY` payloads
    /// (one per listener; not counted in the budgets). The caller issues `LISTEN`.
    pub async fn listen(
        &self,
        credentials: &Credentials,
    ) -> Result<(tokio_postgres::Client, crate::conn::Notifications), Error> {
        let leader = self.topology().leader.clone().ok_or(Error::NoPrimary)?;
        crate::conn::connect_listening(&self.target_for("listen", credentials, &leader)).await
    }

    /// Adopts a new topology: pools on members that left or changed role are closed (they
    /// take no new requests; in-use connections finish and are dropped).
    pub fn set_topology(&self, topology: Arc<Topology>) {
        let roles: HashMap<&str, Role> = topology
            .members()
            .map(|m| (m.name.as_str(), m.role))
            .collect();
        let old = self.topology.replace(topology.clone());
        let old_roles: HashMap<&str, Role> =
            old.members().map(|m| (m.name.as_str(), m.role)).collect();
        let old_addrs: HashMap<&str, _> =
            old.members().map(|m| (m.name.as_str(), m.addr)).collect();
        let changed = |k: &PoolKey| {
            let now = roles.get(k.node.as_str());
            now.is_none()
                || now != old_roles.get(k.node.as_str())
                || topology.member(&k.node).map(|m| m.addr)
                    != old_addrs.get(k.node.as_str()).copied()
        };
        let closed = self.cache.borrow_mut().remove_where(changed);
        if !closed.is_empty() {
            info!(
                core = self.core,
                pools = closed.len(),
                epoch = topology.epoch,
                "closing pools on members that left or changed role"
            );
            self.bump(|s| s.evicted_topology += closed.len() as u64);
        }
        for p in closed {
            p.close();
        }
    }

    /// A supposed primary answered "read-only transaction" (25006): distrust the topology
    /// until the source re-resolves it.
    pub fn report_read_only(&self, node: &str) {
        let current = self.topology();
        if current.leader.as_ref().is_some_and(|l| l.name == node) {
            warn!(
                core = self.core,
                node, "leader is read-only; marking topology stale and asking for re-resolution"
            );
            // Keep routing by it until the source publishes a new snapshot: a fixed
            // topology has no other leader to offer, and writes it refuses are not applied.
            let mut stale = (*current).clone();
            stale.stale = true;
            *self.topology.borrow_mut() = Arc::new(stale);
            if let Some(f) = self.on_stale.borrow().as_ref() {
                f();
            }
        }
    }

    /// Periodic upkeep: closes pools idle for the TTL and idle connections beyond the warm
    /// minimum. Call about once a second.
    pub fn maintain(&self) {
        let now = Instant::now();
        let expired = self
            .cache
            .borrow_mut()
            .expire_idle(now, self.config.idle_ttl);
        if !expired.is_empty() {
            debug!(
                core = self.core,
                pools = expired.len(),
                "closing idle tenant pools"
            );
            self.bump(|s| s.evicted_idle += expired.len() as u64);
        }
        for p in expired {
            p.close();
        }
        let s = self.stats();
        let total = s.evicted_capacity + s.evicted_idle + s.evicted_topology;
        if let Some(n) = self.storm.borrow_mut().round(total, now) {
            warn!(
                core = self.core,
                evicted = n,
                evicted_capacity_total = s.evicted_capacity,
                evicted_idle_total = s.evicted_idle,
                evicted_topology_total = s.evicted_topology,
                pools = s.pools,
                max_pools = self.config.max_tenant_pools,
                "tenant pool eviction storm: {n} pools closed since the last warning; \
                 if capacity evictions dominate, more tenants are active than \
                 RINGGATE_MAX_TENANT_POOLS holds"
            );
        }
        let mut trimmed = 0;
        for p in self.cache.borrow().pools() {
            // Another core waits for this tenant's (or this node's) permits: give every
            // idle connection back, the warm one too.
            trimmed += if p.wanted_elsewhere() {
                p.trim_idle(0, Duration::ZERO)
            } else {
                p.trim_idle(self.config.min_warm, self.config.conn_idle_timeout)
            };
        }
        if trimmed > 0 {
            self.bump(|s| s.trimmed_connections += trimmed as u64);
        }
    }

    /// Closes the idle connections of pools whose permits requests elsewhere wait for (the
    /// part of [`Shard::maintain`] to run at once when [`Shard::wanted`] resolves).
    pub fn give_back_wanted(&self) {
        let mut trimmed = 0;
        for p in self.cache.borrow().pools() {
            if p.wanted_elsewhere() {
                trimmed += p.trim_idle(0, Duration::ZERO);
            }
        }
        if trimmed > 0 {
            debug!(
                core = self.core,
                trimmed, "idle connections given back to other cores"
            );
            self.bump(|s| s.trimmed_connections += trimmed as u64);
        }
    }

    /// Closes every pool (on shutdown).
    pub fn close_all(&self) {
        for p in self.cache.borrow_mut().remove_where(|_| true) {
            p.close();
        }
    }

    /// Server connections open per member (idle and in use), sorted by member name.
    pub fn connections_by_node(&self) -> Vec<(String, u64)> {
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for p in self.cache.borrow().pools() {
            *by.entry(p.key().node.clone()).or_default() += p.size() as u64;
        }
        by.into_iter().collect()
    }

    /// Current counters.
    pub fn stats(&self) -> ShardStats {
        let mut s = self.stats.get();
        let cache = self.cache.borrow();
        s.pools = cache.len();
        s.connections = cache.pools().map(|p| p.size()).sum();
        s.in_use = cache.pools().map(|p| p.in_use()).sum();
        let t = self.topology.borrow();
        s.topology_epoch = t.epoch;
        s.topology_stale = t.stale;
        s
    }

    /// Whether a pool for this key is cached.
    pub fn has_pool(&self, key: &PoolKey) -> bool {
        self.cache.borrow().pools().any(|p| p.key() == key)
    }

    fn bump(&self, f: impl FnOnce(&mut ShardStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }
}

/// The budget a tenant's connections count against: its project, the part before a `/`
/// (`alpha/pg`, the PostgreSQL front end's pools, counts against `alpha` like `/sql`'s), so
/// one project has one budget whichever front end opened its connections.
pub fn budget_of(tenant: &str) -> &str {
    tenant
        .split_once('/')
        .map_or(tenant, |(project, _)| project)
}

/// Settings every connection starts with: the statement timeout, and on replicas,
/// read-only transactions by default.
fn startup_options(config: &Config, role: Role) -> String {
    let mut o = String::new();
    if !config.statement_timeout.is_zero() {
        o.push_str(&format!(
            "-c statement_timeout={}",
            config.statement_timeout.as_millis()
        ));
    }
    if role == Role::Replica {
        o.push_str(" -c default_transaction_read_only=on");
    }
    o.trim().to_string()
}

/// A checked-out connection; returns to its pool on drop, or is closed when a request on
/// another core waits for its permit (see [`TenantPool::give_back`]).
#[derive(Debug)]
pub struct Checkout {
    /// `None` only while dropping.
    conn: Option<Pooled>,
    pool: Rc<TenantPool>,
    role: Role,
    lease: Option<Lease>,
    _guard: OutstandingGuard,
}

/// The lease a leader connection was routed under.
#[derive(Debug, Clone)]
pub struct Lease {
    gate: Arc<LeaseGate>,
    generation: u64,
}

impl Lease {
    /// The lease's state now: whether an answer arriving now is trusted.
    pub fn state(&self) -> LeaseState {
        self.gate.check(self.generation)
    }

    /// Whether a write may be sent now: the lease holds and the leader answers its probe.
    pub fn may_send(&self) -> bool {
        self.gate.may_send(self.generation)
    }
}

impl Checkout {
    /// The connection.
    pub fn conn(&mut self) -> &mut PgConn {
        self.conn.as_mut().expect("taken only on drop").conn()
    }

    /// The member it is on.
    pub fn node(&self) -> &str {
        &self.pool.key().node
    }

    /// That member's role when routed.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader's lease this connection was routed under; `None` for replicas and for a
    /// fixed topology (no lease to go by).
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Checkouts waiting in its pool's queue now.
    pub fn pool_waiters(&self) -> usize {
        self.pool.waiters()
    }

    /// Whether another core waits for this connection's permit: returning it now closes
    /// it so the permit moves ([`TenantPool::give_back`]).
    pub fn wanted_elsewhere(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| self.pool.give_back(c))
    }

    /// Drops the connection instead of returning it (its state is unknown).
    pub fn discard(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.discard(conn);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.pool.give_back(&conn) {
                self.pool.discard(conn);
            } else {
                self.pool.put_back(conn);
            }
        }
    }
}

/// Counts a request as outstanding on a member until dropped.
#[derive(Debug)]
struct OutstandingGuard {
    map: Outstanding,
    node: Rc<str>,
}

impl OutstandingGuard {
    /// Allocates only for a member not counted before.
    fn new(map: &Outstanding, node: &str) -> Self {
        let mut m = map.borrow_mut();
        let node = match m.get_key_value(node) {
            Some((k, _)) => k.clone(),
            None => Rc::from(node),
        };
        *m.entry(node.clone()).or_insert(0) += 1;
        drop(m);
        Self {
            map: map.clone(),
            node,
        }
    }
}

impl Drop for OutstandingGuard {
    fn drop(&mut self) {
        if let Some(n) = self.map.borrow_mut().get_mut(&self.node) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projects_front_ends_share_its_budget() {
        assert_eq!(budget_of("alpha/pg"), "alpha");
        assert_eq!(budget_of("alpha"), "alpha");
        assert_eq!(budget_of("ringgate-control"), "ringgate-control");
    }

    #[test]
    fn a_storm_is_warned_once_per_ten_seconds_with_its_sum() {
        let t0 = Instant::now();
        let mut w = StormWatch::default();
        assert_eq!(w.round(3, t0), None, "a few evictions are no storm");
        assert_eq!(w.round(3 + 25, t0 + Duration::from_secs(1)), Some(25));
        assert_eq!(
            w.round(28 + 40, t0 + Duration::from_secs(2)),
            None,
            "within ten seconds: summed, not logged"
        );
        assert_eq!(w.round(68 + 2, t0 + Duration::from_secs(3)), None);
        assert_eq!(
            w.round(70 + 12, t0 + Duration::from_secs(12)),
            Some(52),
            "the next warning carries what was not reported"
        );
    }
}
