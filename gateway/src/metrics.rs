//! Prometheus metrics, kept per core.
//!
//! Each core writes only its own [`CoreMetrics`] (relaxed atomics on a cache line of its
//! own), so counting costs no contention; `/metrics` on any core reads every core's set and
//! renders them with a `core` label. Process-wide views (topology, workers) live in
//! [`cluster`], the PostgreSQL front end's figures in [`wire`]. Every family is described
//! once as an [`exposition::Family`] next to where its values are read, and written
//! through it: no HELP, TYPE or label set is formatted by hand.

pub mod cluster;
pub mod exposition;
pub mod wire;

use self::exposition::Kind::{Counter, Gauge, Histogram};
pub use self::exposition::{label, Family, Kind, Label};

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

/// The routes requests are counted under. Bounded, so label cardinality is too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    /// `GET /health`.
    Health,
    /// `GET /ready`.
    Ready,
    /// `GET /metrics`.
    Metrics,
    /// `POST /sql`.
    Sql,
    /// `GET /admin/upstreams`.
    Admin,
    /// Proxied to a worker.
    Proxy,
    /// No route matched.
    NotFound,
    /// The request could not be parsed or broke a limit.
    Rejected,
}

impl RouteLabel {
    /// Every route, in label order.
    pub const ALL: [RouteLabel; 8] = [
        RouteLabel::Health,
        RouteLabel::Ready,
        RouteLabel::Metrics,
        RouteLabel::Sql,
        RouteLabel::Admin,
        RouteLabel::Proxy,
        RouteLabel::NotFound,
        RouteLabel::Rejected,
    ];

    /// The `route` label value.
    pub fn label(self) -> &'static str {
        match self {
            RouteLabel::Health => "health",
            RouteLabel::Ready => "ready",
            RouteLabel::Admin => "admin",
            RouteLabel::Proxy => "proxy",
            RouteLabel::Metrics => "metrics",
            RouteLabel::Sql => "sql",
            RouteLabel::NotFound => "not_found",
            RouteLabel::Rejected => "rejected",
        }
    }

    fn index(self) -> usize {
        // Discriminants follow declaration order, which `ALL` repeats.
        self as usize
    }
}

/// Status codes counted individually; anything else is counted as `other`.
const STATUSES: [u16; 22] = [
    200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 414, 422, 429, 431, 500, 501, 502, 503,
    504, 505, 507,
];
const N_STATUS: usize = STATUSES.len() + 1;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const N_BUCKET: usize = BUCKETS.len() + 1;

/// Tenant classes counted by name (from `ringgate.projects.class`); later ones are `other`.
pub const MAX_CLASSES: usize = 8;
/// Class slot of requests whose project has no class (no control database, or refused
/// before the project was known).
pub const UNCLASSIFIED: usize = 0;
const OTHER_CLASS: usize = MAX_CLASSES + 1;
/// Class slots: [`UNCLASSIFIED`], the named classes, then `other`.
pub const N_CLASS: usize = MAX_CLASSES + 2;

/// What the Data API did about failures and failovers, counted per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlEvent {
    /// A write waited for a usable leader (failover in progress).
    WriteHeld,
    /// A statement refused by a read-only member (25006) was rerun on the leader.
    RerunReadOnly,
    /// A statement whose connection broke before it was sent was rerun.
    RerunNotSent,
    /// A statement the server aborted before committing (FATAL 57P01) was rerun.
    RerunAbortedByServer,
    /// A read whose connection broke was rerun.
    RerunRead,
    /// A write whose connection broke after sending: answered `outcome_unknown`.
    OutcomeUnknown,
    /// A write whose leader's lease ran out or passed on before its answer:
    /// `outcome_unknown`, its connection closed.
    OutcomeUnknownLease,
    /// A write committed locally whose synchronous standby never confirmed it:
    /// `outcome_unknown`.
    OutcomeUnknownUnconfirmed,
    /// A write that found no leader within the failover wait.
    WriteNoLeader,
    /// A read sent on a connection busy with other reads of its tenant (pipelined).
    Pipelined,
    /// A statement whose client went away while it ran was cancelled on the server.
    ClientGone,
    /// A request run by another core that held connections of its tenant (counted on the
    /// core that handed it over).
    HandedOff,
}

impl SqlEvent {
    const ALL: [SqlEvent; 12] = [
        SqlEvent::WriteHeld,
        SqlEvent::RerunReadOnly,
        SqlEvent::RerunNotSent,
        SqlEvent::RerunAbortedByServer,
        SqlEvent::RerunRead,
        SqlEvent::OutcomeUnknown,
        SqlEvent::OutcomeUnknownLease,
        SqlEvent::OutcomeUnknownUnconfirmed,
        SqlEvent::WriteNoLeader,
        SqlEvent::Pipelined,
        SqlEvent::ClientGone,
        SqlEvent::HandedOff,
    ];
}

/// Which front end a result-cache event came from (they share one cache per core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// `POST /sql`.
    Sql,
    /// The PostgreSQL wire front end.
    Pg,
}

impl Frontend {
    const ALL: [(Frontend, &'static str); 2] = [(Frontend::Sql, "sql"), (Frontend::Pg, "pg")];
}

/// What the result cache did, counted per core, front end and tenant class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// Served from the cache.
    Hit,
    /// Served the response of the same key's query already in flight (stampede).
    Coalesced,
    /// Asked for, cacheable, and not in the cache: run.
    Miss,
    /// A response stored.
    Store,
    /// An entry found invalidated by a write (removed; also counted as a miss).
    Stale,
    /// A write invalidated the tables it touched.
    Invalidation,
    /// Asked for by the header, but not a cacheable read.
    Uncacheable,
}

impl CacheEvent {
    const ALL: [(CacheEvent, &'static str); 7] = [
        (CacheEvent::Hit, "hit"),
        (CacheEvent::Coalesced, "coalesced"),
        (CacheEvent::Miss, "miss"),
        (CacheEvent::Store, "store"),
        (CacheEvent::Stale, "stale"),
        (CacheEvent::Invalidation, "invalidation"),
        (CacheEvent::Uncacheable, "uncacheable"),
    ];
}

fn status_index(code: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == code)
        .unwrap_or(STATUSES.len())
}

/// The non-zero counters of one status array, with their `status` label values.
fn status_counts(counts: &[AtomicU64; N_STATUS]) -> impl Iterator<Item = (String, u64)> + '_ {
    counts.iter().enumerate().filter_map(|(i, n)| {
        let n = n.load(Relaxed);
        let status = STATUSES
            .get(i)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "other".into());
        (n > 0).then_some((status, n))
    })
}

/// The histogram bucket `elapsed` falls in.
fn bucket(elapsed: Duration) -> usize {
    let secs = elapsed.as_secs_f64();
    BUCKETS
        .iter()
        .position(|&le| secs <= le)
        .unwrap_or(BUCKETS.len())
}

/// Writes one histogram series of `family` from a core's bucket counters.
fn write_histogram(
    o: &mut String,
    family: &Family,
    labels: &[&dyn std::fmt::Display],
    buckets: &[AtomicU64; N_BUCKET],
    sum_us: u64,
) -> std::fmt::Result {
    let counts: Vec<u64> = buckets.iter().map(|b| b.load(Relaxed)).collect();
    family.histogram_series(o, labels, &BUCKETS, &counts, sum_us as f64 / 1e6)
}

/// One core's counters. Written only by that core.
#[repr(align(128))]
#[derive(Debug)]
pub struct CoreMetrics {
    requests: [[AtomicU64; N_STATUS]; RouteLabel::ALL.len()],
    latency_buckets: [[AtomicU64; N_BUCKET]; RouteLabel::ALL.len()],
    latency_sum_us: [AtomicU64; RouteLabel::ALL.len()],
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    connections_rejected: AtomicU64,
    connections_burst: AtomicU64,
    io_buffers_lent: AtomicU64,
    io_buffers_pooled: AtomicU64,
    tls_handshake_failures: AtomicU64,
    tls_handshakes_paced: AtomicU64,
    tls_handshakes_abandoned: AtomicU64,
    rate_limited: AtomicU64,
    rate_limited_global: AtomicU64,
    rate_limit_sync_failures: AtomicU64,
    requests_cut: AtomicU64,
    pool: [AtomicU64; POOL_GAUGES.len()],
    pool_wait_buckets: [AtomicU64; N_BUCKET],
    pool_wait_sum_us: AtomicU64,
    sql_requests: [[AtomicU64; N_STATUS]; N_CLASS],
    sql_events: [AtomicU64; SqlEvent::ALL.len()],
    sql_write_hold_us: AtomicU64,
    sql_cache: [[[AtomicU64; CacheEvent::ALL.len()]; N_CLASS]; Frontend::ALL.len()],
    sql_cache_bytes: [AtomicU64; N_CLASS],
    sql_cache_evictions: [AtomicU64; N_CLASS],
    /// `(group, workers, healthy)` as of the last health round (off the hot path).
    upstreams: std::sync::RwLock<Vec<(String, u64, u64)>>,
    /// Server connections per database member, as of the last pool upkeep.
    pool_nodes: std::sync::RwLock<Vec<(String, u64)>>,
    /// The PostgreSQL front end's figures.
    pub wire: wire::WireMetrics,
}

/// Pool figures each core publishes once a second, in [`CoreMetrics::set_pool`]'s order.
const POOL_GAUGES: [Family; 9] = [
    Family::new(
        Gauge,
        "ringgate_pool_tenant_pools",
        CORE,
        "Tenant pools cached.",
    ),
    Family::new(
        Gauge,
        "ringgate_pool_server_connections",
        CORE,
        "Server connections open (idle and in use).",
    ),
    Family::new(
        Gauge,
        "ringgate_pool_connections_in_use",
        CORE,
        "Server connections checked out.",
    ),
    Family::new(
        Counter,
        "ringgate_pool_evictions_capacity_total",
        CORE,
        "Tenant pools evicted because the cache was full.",
    ),
    Family::new(
        Counter,
        "ringgate_pool_evictions_idle_total",
        CORE,
        "Tenant pools closed after the idle TTL.",
    ),
    Family::new(
        Counter,
        "ringgate_pool_evictions_topology_total",
        CORE,
        "Tenant pools closed because their node left or changed role.",
    ),
    Family::new(
        Counter,
        "ringgate_pool_wait_timeouts_total",
        CORE,
        "Requests that timed out waiting for a connection.",
    ),
    Family::new(
        Gauge,
        "ringgate_topology_epoch",
        CORE,
        "Epoch of the database topology this core routes by.",
    ),
    Family::new(
        Gauge,
        "ringgate_topology_stale",
        CORE,
        "1 when no topology source answered and the last topology is kept.",
    ),
];

impl Default for CoreMetrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_us: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_rejected: AtomicU64::new(0),
            connections_burst: AtomicU64::new(0),
            io_buffers_lent: AtomicU64::new(0),
            io_buffers_pooled: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            tls_handshakes_paced: AtomicU64::new(0),
            tls_handshakes_abandoned: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            rate_limited_global: AtomicU64::new(0),
            rate_limit_sync_failures: AtomicU64::new(0),
            requests_cut: AtomicU64::new(0),
            pool: std::array::from_fn(|_| AtomicU64::new(0)),
            pool_wait_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            pool_wait_sum_us: AtomicU64::new(0),
            sql_requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            sql_events: std::array::from_fn(|_| AtomicU64::new(0)),
            sql_write_hold_us: AtomicU64::new(0),
            sql_cache: std::array::from_fn(|_| {
                std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            }),
            sql_cache_bytes: std::array::from_fn(|_| AtomicU64::new(0)),
            sql_cache_evictions: std::array::from_fn(|_| AtomicU64::new(0)),
            upstreams: std::sync::RwLock::new(Vec::new()),
            pool_nodes: std::sync::RwLock::new(Vec::new()),
            wire: wire::WireMetrics::default(),
        }
    }
}

// === impl CoreMetrics ===

impl CoreMetrics {
    /// Publishes this core's view of the worker groups: `(group, workers, healthy)`.
    pub fn set_upstreams(&self, groups: Vec<(String, u64, u64)>) {
        *self.upstreams.write().unwrap_or_else(|e| e.into_inner()) = groups;
    }

    /// Publishes this core's server connections per database member.
    pub fn set_pool_nodes(&self, nodes: Vec<(String, u64)>) {
        *self.pool_nodes.write().unwrap_or_else(|e| e.into_inner()) = nodes;
    }

    /// Counts one `/sql` answer for a tenant class slot (see [`Registry::class_slot`]).
    pub fn sql_answered(&self, class: usize, status: u16) {
        self.sql_requests[class.min(OTHER_CLASS)][status_index(status)].fetch_add(1, Relaxed);
    }

    /// Counts a Data API failure-handling event.
    pub fn sql_event(&self, event: SqlEvent) {
        self.sql_events[event as usize].fetch_add(1, Relaxed);
    }

    /// Counts a `/sql` result-cache event for a tenant class slot.
    pub fn sql_cache(&self, class: usize, event: CacheEvent) {
        self.cache_event(Frontend::Sql, class, event);
    }

    /// Counts a result-cache event of `front` for a tenant class slot.
    pub fn cache_event(&self, front: Frontend, class: usize, event: CacheEvent) {
        self.sql_cache[front as usize][class.min(OTHER_CLASS)][event as usize]
            .fetch_add(1, Relaxed);
    }

    /// How many times `event` was counted, over every front end and class.
    pub fn sql_cache_events(&self, event: CacheEvent) -> u64 {
        self.sql_cache
            .iter()
            .flatten()
            .map(|c| c[event as usize].load(Relaxed))
            .sum()
    }

    /// The bytes this core's result cache held when it last changed.
    pub fn sql_cache_bytes(&self) -> u64 {
        self.sql_cache_bytes.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The bytes this core's result cache holds and the entries it evicted for room, per
    /// tenant class slot.
    pub fn set_sql_cache_size(&self, bytes: &[u64], evictions: &[u64]) {
        for (slot, b) in self.sql_cache_bytes.iter().zip(bytes) {
            slot.store(*b, Relaxed);
        }
        for (slot, e) in self.sql_cache_evictions.iter().zip(evictions) {
            slot.store(*e, Relaxed);
        }
    }

    /// A write waited `held` for a leader before it could run (or gave up).
    pub fn write_held(&self, held: Duration) {
        self.sql_event(SqlEvent::WriteHeld);
        self.sql_write_hold_us
            .fetch_add(held.as_micros() as u64, Relaxed);
    }

    /// How many times `event` was counted.
    pub fn sql_events(&self, event: SqlEvent) -> u64 {
        self.sql_events[event as usize].load(Relaxed)
    }

    /// A pool checkout took `waited` (connection ready, timed out or failed).
    pub fn pool_waited(&self, waited: Duration) {
        let b = bucket(waited);
        self.pool_wait_buckets[b].fetch_add(1, Relaxed);
        self.pool_wait_sum_us
            .fetch_add(waited.as_micros() as u64, Relaxed);
    }

    /// Counts one finished request.
    pub fn observe(&self, route: RouteLabel, status: u16, elapsed: Duration) {
        let r = route.index();
        self.requests[r][status_index(status)].fetch_add(1, Relaxed);
        self.latency_buckets[r][bucket(elapsed)].fetch_add(1, Relaxed);
        self.latency_sum_us[r].fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// A connection was accepted and is being served.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    /// A served connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// A connection was refused because the core is at its connection limit.
    pub fn connection_rejected(&self) {
        self.connections_rejected.fetch_add(1, Relaxed);
    }

    /// A connection was taken from the backlog in a burst, right after another accept.
    pub fn connection_accepted_in_burst(&self) {
        self.connections_burst.fetch_add(1, Relaxed);
    }

    /// Publishes the core's I/O buffer counts ([`crate::io_buf::BufPool`]).
    pub fn set_io_buffers(&self, lent: u64, pooled: u64) {
        self.io_buffers_lent.store(lent, Relaxed);
        self.io_buffers_pooled.store(pooled, Relaxed);
    }

    /// A TLS handshake failed.
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    /// A TLS handshake waited for its slot ([`crate::handshake`]).
    pub fn tls_handshake_paced(&self) {
        self.tls_handshakes_paced.fetch_add(1, Relaxed);
    }

    /// A client left while its TLS handshake waited; no public-key work was done for it.
    pub fn tls_handshake_abandoned(&self) {
        self.tls_handshakes_abandoned.fetch_add(1, Relaxed);
    }

    /// A proxied request refused by the per-tenant rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }

    /// A proxied request refused by the fleet-wide limit (counted in `rate_limited` too).
    pub fn rate_limited_global(&self) {
        self.rate_limited_global.fetch_add(1, Relaxed);
    }

    /// A report of admissions to Redis for the fleet-wide limit failed.
    pub fn rate_limit_sync_failed(&self) {
        self.rate_limit_sync_failures.fetch_add(1, Relaxed);
    }

    /// Requests still in flight when the drain deadline passed.
    pub fn requests_cut(&self, n: u64) {
        self.requests_cut.fetch_add(n, Relaxed);
    }

    /// Publishes this core's pool figures.
    pub fn set_pool(&self, s: &ringgate_pool::ShardStats) {
        let values = [
            s.pools as u64,
            s.connections as u64,
            s.in_use as u64,
            s.evicted_capacity,
            s.evicted_idle,
            s.evicted_topology,
            s.wait_timeouts,
            s.topology_epoch,
            s.topology_stale as u64,
        ];
        for (slot, v) in self.pool.iter().zip(values) {
            slot.store(v, Relaxed);
        }
    }

    /// Currently open connections.
    pub fn open_connections(&self) -> u64 {
        self.connections_open.load(Relaxed)
    }

    /// Requests counted for `route` and `status` so far.
    pub fn requests(&self, route: RouteLabel, status: u16) -> u64 {
        self.requests[route.index()][status_index(status)].load(Relaxed)
    }
}

/// A per-core figure: its family (labels `core`, `driver`) and how to read it.
type PerCoreMetric = (Family, fn(&CoreMetrics) -> u64);

/// Label names of per-core families.
const CORE: &[&str] = &["core"];

const BUILD_INFO: Family = Family::new(
    Gauge,
    "ringgate_build_info",
    &["version", "driver"],
    "Build information.",
);
const DRAINING: Family = Family::new(
    Gauge,
    "ringgate_draining",
    &[],
    "1 while the process drains after SIGTERM.",
);
const REDIS_MASTER_CHANGES: Family = Family::new(
    Counter,
    "ringgate_redis_master_changes_total",
    &[],
    "Redis master changes seen (Sentinel failovers).",
);
const REDIS_MASTER_KNOWN: Family = Family::new(
    Gauge,
    "ringgate_redis_master_known",
    &[],
    "1 once a Redis master is resolved (0 also when Redis is not configured).",
);
const HTTP_REQUESTS: Family = Family::new(
    Counter,
    "ringgate_http_requests_total",
    &["core", "route", "status"],
    "HTTP requests served, by core, route and status.",
);
const HTTP_REQUEST_DURATION: Family = Family::new(
    Histogram,
    "ringgate_http_request_duration_seconds",
    &["core", "route"],
    "Time from a complete request head to the response written.",
);

/// The per-core figures every core has, with the io driver as a label.
const PER_CORE: [PerCoreMetric; 13] = {
    const L: &[&str] = &["core", "driver"];
    [
        (
            Family::new(Gauge, "ringgate_connections_open", L, "Client connections open."),
            |m| m.connections_open.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_connections_accepted_total",
                L,
                "Client connections accepted.",
            ),
            |m| m.connections_total.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_connections_rejected_total",
                L,
                "Connections refused at the per-core limit.",
            ),
            |m| m.connections_rejected.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_connections_accepted_in_bursts_total",
                L,
                "Connections taken from the backlog without waiting, right after another accept.",
            ),
            |m| m.connections_burst.load(Relaxed),
        ),
        (
            Family::new(
Gauge,
                "ringgate_io_buffers_lent",
                L,
                "I/O buffers lent to client connections now (idle connections hold none).",
            ),
            |m| m.io_buffers_lent.load(Relaxed),
        ),
        (
            Family::new(
Gauge,
                "ringgate_io_buffers_pooled",
                L,
                "I/O buffers kept in the core's pool for reuse.",
            ),
            |m| m.io_buffers_pooled.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_tls_handshake_failures_total",
                L,
                "TLS handshakes that failed.",
            ),
            |m| m.tls_handshake_failures.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_tls_handshakes_paced_total",
                L,
                "TLS handshakes that waited for their slot (more than a burst of them arrived at once).",
            ),
            |m| m.tls_handshakes_paced.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_tls_handshakes_abandoned_total",
                L,
                "TLS handshakes whose client left while they waited (no public-key work done; also counted as failed).",
            ),
            |m| m.tls_handshakes_abandoned.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_rate_limited_total",
                L,
                "Proxied requests refused with 429 by the per-tenant rate limit.",
            ),
            |m| m.rate_limited.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_rate_limited_global_total",
                L,
                "Proxied requests refused with 429 by the fleet-wide limit counted in Redis.",
            ),
            |m| m.rate_limited_global.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_rate_limit_sync_failures_total",
                L,
                "Reports to Redis for the fleet-wide rate limit that failed (their requests were counted on the core alone).",
            ),
            |m| m.rate_limit_sync_failures.load(Relaxed),
        ),
        (
            Family::new(
Counter,
                "ringgate_drain_requests_cut_total",
                L,
                "Requests cut off by the drain deadline.",
            ),
            |m| m.requests_cut.load(Relaxed),
        ),
    ]
};

const UPSTREAM_WORKERS: Family = Family::new(
    Gauge,
    "ringgate_upstream_workers",
    &["core", "group"],
    "Workers known per group, as each core sees them.",
);
const UPSTREAM_HEALTHY_WORKERS: Family = Family::new(
    Gauge,
    "ringgate_upstream_healthy_workers",
    &["core", "group"],
    "Workers a core considers healthy (active and passive checks), per group.",
);
const POOL_SERVER_CONNECTS: Family = Family::new(
Counter,
    "ringgate_pool_server_connects_total",
    &[],
    "Server connections opened (or tried) on all cores: a permit taken from a tenant's and a member's budget. Against requests served, how often connections moved between cores.",
);
const TLS_RELOADS: Family = Family::new(
    Counter,
    "ringgate_tls_reloads_total",
    &["result"],
    "Certificate reloads, by result.",
);
const POOL_NODE_CONNECTIONS: Family = Family::new(
    Gauge,
    "ringgate_pool_node_connections",
    &["core", "node"],
    "Server connections open per database member.",
);
const POOL_WAIT: Family = Family::new(
    Histogram,
    "ringgate_pool_wait_seconds",
    CORE,
    "Time a request waited for a pooled server connection (including connecting).",
);

/// Every core's metrics plus process-wide state, shared read-only between cores.
#[derive(Debug)]
pub struct Registry {
    cores: Vec<CoreMetrics>,
    driver: &'static str,
    draining: AtomicBool,
    tls_reloads: AtomicU64,
    tls_reload_failures: AtomicU64,
    /// The process-wide connection budgets, once the database is configured.
    budgets: std::sync::OnceLock<Arc<ringgate_pool::Budgets>>,
    redis_master: std::sync::RwLock<Option<String>>,
    redis_master_changes: AtomicU64,
    classes: std::sync::RwLock<Vec<String>>,
    cluster: cluster::ClusterView,
}

// === impl Registry ===

impl Registry {
    /// A registry for `cores` cores running `driver` (`io_uring` or `epoll`).
    pub fn new(cores: usize, driver: &'static str) -> Arc<Self> {
        Arc::new(Self {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            driver,
            draining: AtomicBool::new(false),
            tls_reloads: AtomicU64::new(0),
            tls_reload_failures: AtomicU64::new(0),
            budgets: std::sync::OnceLock::new(),
            redis_master: std::sync::RwLock::new(None),
            redis_master_changes: AtomicU64::new(0),
            classes: std::sync::RwLock::new(Vec::new()),
            cluster: cluster::ClusterView::default(),
        })
    }

    /// The topology and worker views the discovery threads publish into.
    pub fn cluster(&self) -> &cluster::ClusterView {
        &self.cluster
    }

    /// The counter slot of tenant class `name`: the first [`MAX_CLASSES`] names seen get a
    /// slot each, later ones share `other`, so the label stays bounded. Called when a
    /// project row is loaded, not per request.
    pub fn class_slot(&self, name: &str) -> usize {
        if let Some(i) = self
            .classes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .position(|c| c == name)
        {
            return i + 1;
        }
        let mut classes = self.classes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = classes.iter().position(|c| c == name) {
            return i + 1;
        }
        if classes.len() == MAX_CLASSES {
            return OTHER_CLASS;
        }
        classes.push(name.to_string());
        classes.len()
    }

    /// The class slots that have a label of their own: unclassified, the named classes
    /// seen so far, other.
    fn labelled_slots(&self) -> Vec<usize> {
        let named = self.classes.read().unwrap_or_else(|e| e.into_inner()).len();
        std::iter::once(UNCLASSIFIED)
            .chain(1..=named)
            .chain(std::iter::once(OTHER_CLASS))
            .collect()
    }

    fn class_label(&self, slot: usize) -> String {
        match slot {
            UNCLASSIFIED => "unclassified".into(),
            OTHER_CLASS => "other".into(),
            n => self
                .classes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(n - 1)
                .cloned()
                .unwrap_or_else(|| "other".into()),
        }
    }

    /// Records the Redis master the Sentinels named; a change after the first counts as a
    /// master change (failover or switchover).
    pub fn redis_master_is(&self, addr: &str) {
        let mut m = self.redis_master.write().unwrap_or_else(|e| e.into_inner());
        if m.is_some() {
            self.redis_master_changes.fetch_add(1, Relaxed);
        }
        *m = Some(addr.to_string());
    }

    /// The current Redis master, once resolved.
    pub fn redis_master(&self) -> Option<String> {
        self.redis_master
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Redis master changes seen since start.
    pub fn redis_master_changes(&self) -> u64 {
        self.redis_master_changes.load(Relaxed)
    }

    /// Client connections open on every core.
    pub fn open_connections_total(&self) -> u64 {
        self.cores.iter().map(|m| m.open_connections()).sum()
    }

    /// Whether the process is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Core `n`'s metrics.
    pub fn core(&self, n: usize) -> &CoreMetrics {
        &self.cores[n]
    }

    /// Marks the process as draining.
    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// The connection budgets every core counts against (set once, at start).
    pub fn set_budgets(&self, budgets: Arc<ringgate_pool::Budgets>) {
        let _ = self.budgets.set(budgets);
    }

    /// Server connections opened (or tried) since start, on all cores; 0 without a
    /// database.
    pub fn server_connects(&self) -> u64 {
        self.budgets.get().map_or(0, |b| b.connects())
    }

    /// Counts a TLS reload attempt.
    pub fn tls_reloaded(&self, ok: bool) {
        if ok {
            &self.tls_reloads
        } else {
            &self.tls_reload_failures
        }
        .fetch_add(1, Relaxed);
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let _ = self.render_into(&mut out);
        out
    }

    fn render_into(&self, o: &mut String) -> std::fmt::Result {
        BUILD_INFO.header(o)?;
        BUILD_INFO.sample(o, &[&env!("CARGO_PKG_VERSION"), &self.driver], 1)?;
        DRAINING.single(o, self.draining.load(Relaxed) as u8)?;
        REDIS_MASTER_CHANGES.single(o, self.redis_master_changes.load(Relaxed))?;
        REDIS_MASTER_KNOWN.single(o, self.redis_master().is_some() as u8)?;
        HTTP_REQUESTS.header(o)?;
        for (c, m) in self.cores.iter().enumerate() {
            for route in RouteLabel::ALL {
                for (status, n) in status_counts(&m.requests[route.index()]) {
                    HTTP_REQUESTS.sample(o, &[&c, &route.label(), &status], n)?;
                }
            }
        }
        HTTP_REQUEST_DURATION.header(o)?;
        for (c, m) in self.cores.iter().enumerate() {
            for route in RouteLabel::ALL {
                let r = route.index();
                write_histogram(
                    o,
                    &HTTP_REQUEST_DURATION,
                    &[&c, &route.label()],
                    &m.latency_buckets[r],
                    m.latency_sum_us[r].load(Relaxed),
                )?;
            }
        }
        for (family, get) in PER_CORE {
            family.header(o)?;
            for (c, m) in self.cores.iter().enumerate() {
                family.sample(o, &[&c, &self.driver], get(m))?;
            }
        }
        for (i, family) in POOL_GAUGES.iter().enumerate() {
            family.header(o)?;
            for (c, m) in self.cores.iter().enumerate() {
                family.sample(o, &[&c], m.pool[i].load(Relaxed))?;
            }
        }
        UPSTREAM_WORKERS.header(o)?;
        for (c, m) in self.cores.iter().enumerate() {
            for (group, total, _) in m.upstreams.read().unwrap_or_else(|e| e.into_inner()).iter() {
                UPSTREAM_WORKERS.sample(o, &[&c, group], total)?;
            }
        }
        UPSTREAM_HEALTHY_WORKERS.header(o)?;
        for (c, m) in self.cores.iter().enumerate() {
            for (group, _, healthy) in m.upstreams.read().unwrap_or_else(|e| e.into_inner()).iter()
            {
                UPSTREAM_HEALTHY_WORKERS.sample(o, &[&c, group], healthy)?;
            }
        }
        self.render_sql(o)?;
        wire::render(o, self.cores.iter().map(|m| &m.wire))?;
        wire::render_classes(o, self.cores.iter().map(|m| &m.wire), |slot| {
            self.class_label(slot)
        })?;
        self.render_pool_detail(o)?;
        if self.budgets.get().is_some() {
            POOL_SERVER_CONNECTS.single(o, self.server_connects())?;
        }
        self.cluster.render(o)?;
        TLS_RELOADS.header(o)?;
        TLS_RELOADS.sample(o, &[&"ok"], self.tls_reloads.load(Relaxed))?;
        TLS_RELOADS.sample(o, &[&"error"], self.tls_reload_failures.load(Relaxed))
    }
}

/// A counter family over Data API events (labels `core`, or `core` and `reason`), and
/// each event with its `reason` (empty without one).
type SqlFamily = (Family, &'static [(SqlEvent, &'static str)]);

const SQL_REQUESTS: Family = Family::new(
    Counter,
    "ringgate_sql_requests_total",
    &["core", "class", "status"],
    "POST /sql answers by core, tenant class (ringgate.projects.class) and status.",
);

/// The Data API's event families, rendered in this order.
const SQL_EVENT_FAMILIES: [SqlFamily; 6] = {
    const REASON: &[&str] = &["core", "reason"];
    [
        (
            Family::new(
Counter,
                "ringgate_sql_reruns_total",
                REASON,
                "Statements rerun because they provably did not take effect, by reason.",
            ),
            &[
                (SqlEvent::RerunReadOnly, "read_only_member"),
                (SqlEvent::RerunNotSent, "not_sent"),
                (SqlEvent::RerunAbortedByServer, "aborted_by_server"),
                (SqlEvent::RerunRead, "read"),
            ],
        ),
        (
            Family::new(
Counter,
                "ringgate_sql_writes_failed_total",
                REASON,
                "Writes answered with an error because of the backend, by reason (outcome_unknown: may or may not have been applied).",
            ),
            &[
                (SqlEvent::OutcomeUnknown, "outcome_unknown"),
                (SqlEvent::OutcomeUnknownLease, "outcome_unknown_lease_lost"),
                (SqlEvent::OutcomeUnknownUnconfirmed, "outcome_unknown_commit_unconfirmed"),
                (SqlEvent::WriteNoLeader, "no_leader"),
            ],
        ),
        (
            Family::new(
Counter,
                "ringgate_sql_writes_held_total",
                CORE,
                "Writes that waited for a usable leader (during a failover).",
            ),
            &[(SqlEvent::WriteHeld, "")],
        ),
        (
            Family::new(
Counter,
                "ringgate_sql_pipelined_reads_total",
                CORE,
                "Reads sent on a connection busy with other reads of their tenant (pipelined).",
            ),
            &[(SqlEvent::Pipelined, "")],
        ),
        (
            Family::new(
Counter,
                "ringgate_sql_cancelled_client_gone_total",
                CORE,
                "Statements cancelled on the server because their client went away while they ran.",
            ),
            &[(SqlEvent::ClientGone, "")],
        ),
        (
            Family::new(
Counter,
                "ringgate_sql_handed_off_total",
                CORE,
                "Requests handed to another core that held connections of their tenant (the core they arrived on had none idle and the tenant was at its limit).",
            ),
            &[(SqlEvent::HandedOff, "")],
        ),
    ]
};

const SQL_CACHE_EVENTS: Family = Family::new(
Counter,
    "ringgate_sql_cache_events_total",
    &["core", "class", "event", "frontend"],
    "What the result cache did, by core, tenant class, event (hit, coalesced, miss, store, stale, invalidation, uncacheable) and front end (sql: /sql, pg: the PostgreSQL front end).",
);
const SQL_CACHE_BYTES: Family = Family::new(
Gauge,
    "ringgate_sql_cache_bytes",
    &["core", "class"],
    "Bytes of answers the result cache holds (/sql and the PostgreSQL front end share it), by core and tenant class.",
);
const SQL_CACHE_EVICTIONS: Family = Family::new(
Counter,
    "ringgate_sql_cache_evictions_total",
    &["core", "class"],
    "Entries the result cache evicted for room (their project's share or the core's budget), by core and tenant class.",
);
const SQL_WRITE_HOLD: Family = Family::new(
    Counter,
    "ringgate_sql_write_hold_seconds_total",
    CORE,
    "Time writes spent waiting for a usable leader.",
);

/// One core's pool figures as `/admin` shows them.
#[derive(Debug, Clone)]
pub struct CorePools {
    /// `(metric name, value)` in the order of the `ringgate_pool_*` gauges.
    pub figures: Vec<(&'static str, u64)>,
    /// Server connections per database member.
    pub nodes: Vec<(String, u64)>,
}

impl Registry {
    fn render_sql(&self, o: &mut String) -> std::fmt::Result {
        SQL_REQUESTS.header(o)?;
        for (c, m) in self.cores.iter().enumerate() {
            for (slot, statuses) in m.sql_requests.iter().enumerate() {
                for (status, n) in status_counts(statuses) {
                    SQL_REQUESTS.sample(o, &[&c, &self.class_label(slot), &status], n)?;
                }
            }
        }
        for (family, events) in SQL_EVENT_FAMILIES {
            family.header(o)?;
            for (c, m) in self.cores.iter().enumerate() {
                for (event, reason) in events {
                    let n = m.sql_events(*event);
                    match reason.is_empty() {
                        true => family.sample(o, &[&c], n)?,
                        false => family.sample(o, &[&c, reason], n)?,
                    }
                }
            }
        }
        SQL_CACHE_EVENTS.header(o)?;
        for (c, m) in self.cores.iter().enumerate() {
            for (front, front_name) in Frontend::ALL {
                for (slot, events) in m.sql_cache[front as usize].iter().enumerate() {
                    for (event, name) in CacheEvent::ALL {
                        let n = events[event as usize].load(Relaxed);
                        if n > 0 {
                            let class = self.class_label(slot);
                            SQL_CACHE_EVENTS.sample(o, &[&c, &class, &name, &front_name], n)?;
                        }
                    }
                }
            }
        }
        let slots = self.labelled_slots();
        type PerClass = fn(&CoreMetrics) -> &[AtomicU64; N_CLASS];
        let per_class: [(Family, PerClass); 2] = [
            (SQL_CACHE_BYTES, |m| &m.sql_cache_bytes),
            (SQL_CACHE_EVICTIONS, |m| &m.sql_cache_evictions),
        ];
        for (family, figure) in per_class {
            family.header(o)?;
            for (c, m) in self.cores.iter().enumerate() {
                for &slot in &slots {
                    let class = self.class_label(slot);
                    family.sample(o, &[&c, &class], figure(m)[slot].load(Relaxed))?;
                }
            }
        }
        SQL_WRITE_HOLD.header(o)?;
        for (c, m) in self.cores.iter().enumerate() {
            let held = m.sql_write_hold_us.load(Relaxed) as f64 / 1e6;
            SQL_WRITE_HOLD.sample(o, &[&c], held)?;
        }
        Ok(())
    }

    fn render_pool_detail(&self, o: &mut String) -> std::fmt::Result {
        POOL_NODE_CONNECTIONS.header(o)?;
        for (c, m) in self.cores.iter().enumerate() {
            for (node, n) in m
                .pool_nodes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                POOL_NODE_CONNECTIONS.sample(o, &[&c, node], n)?;
            }
        }
        POOL_WAIT.header(o)?;
        for (c, m) in self.cores.iter().enumerate() {
            write_histogram(
                o,
                &POOL_WAIT,
                &[&c],
                &m.pool_wait_buckets,
                m.pool_wait_sum_us.load(Relaxed),
            )?;
        }
        Ok(())
    }

    /// Every core's pool figures as last published (at most a second old), by core.
    pub fn pools_by_core(&self) -> Vec<CorePools> {
        self.cores
            .iter()
            .map(|m| CorePools {
                figures: POOL_GAUGES
                    .iter()
                    .zip(&m.pool)
                    .map(|(family, v)| (family.name, v.load(Relaxed)))
                    .collect(),
                nodes: m
                    .pool_nodes
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names a worker group, tenant class, database member or colour may have.
    const HOSTILE: &[&str] = &[
        "quote\"d",
        "back\\slash",
        "new\nline",
        "\\\"",
        "trailing\\",
        "} 1\nfake_metric{a=\"b\"} 2",
        "car\riage",
        "tab\there",
        "ünïcødé ☃",
        "a,b=c",
        "",
    ];

    /// `promtool check metrics` (Debian's prometheus package) accepts `text`.
    fn promtool_accepts(text: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (apt-get install prometheus)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Exit 1: the text does not parse; 3: lint findings (naming, duplicates).
        assert!(
            out.status.success(),
            "promtool check metrics: {:?}: {said}\n{text}",
            out.status.code()
        );
    }

    #[test]
    fn hostile_label_values_are_escaped_everywhere_promtool_accepts_the_output() {
        use ringgate_discovery::{Member, Role, Topology};
        use ringgate_redis::workers::Worker;
        let reg = Registry::new(2, "epoll");
        let groups: Vec<(String, u64, u64)> =
            HOSTILE.iter().map(|g| (g.to_string(), 2, 1)).collect();
        reg.core(0).set_upstreams(groups.clone());
        reg.core(1).set_upstreams(groups);
        reg.core(0)
            .set_pool_nodes(HOSTILE.iter().map(|n| (n.to_string(), 1)).collect());
        for class in HOSTILE {
            let slot = reg.class_slot(class);
            reg.core(0).sql_answered(slot, 200);
            reg.core(1).cache_event(Frontend::Pg, slot, CacheEvent::Hit);
            reg.core(1).sql_cache(slot, CacheEvent::Invalidation);
        }
        reg.core(1).set_sql_cache_size(&[7; N_CLASS], &[3; N_CLASS]);
        let member = |i: usize, name: &str, role| Member {
            name: name.into(),
            addr: format!("127.0.1.{}:5432", i + 1).parse().unwrap(),
            host: "h".into(),
            role,
            healthy: true,
            lag_bytes: Some(7),
            timeline: Some(2),
            api: None,
        };
        reg.cluster().topology_is(std::sync::Arc::new(Topology {
            leader: Some(member(0, HOSTILE[0], Role::Leader)),
            replicas: HOSTILE[1..]
                .iter()
                .enumerate()
                .map(|(i, n)| member(i + 1, n, Role::Replica))
                .collect(),
            ..Topology::default()
        }));
        let workers = HOSTILE.iter().enumerate().map(|(i, g)| Worker {
            group: g.to_string(),
            addr: format!("127.0.3.{}:80", i + 1).parse().unwrap(),
            weight: 1,
            colour: Some(g.to_string()),
        });
        let mut set = ringgate_redis::workers::WorkerSet::from_workers(workers);
        for g in HOSTILE {
            set.colour_weights
                .entry(g.to_string())
                .or_default()
                .insert(g.to_string(), 50);
        }
        reg.cluster().workers_are(std::sync::Arc::new(set));
        let text = reg.render();
        assert!(!text.contains("\nfake_metric"), "{text}");
        assert!(text.contains("group=\"quote\\\"d\""), "{text}");
        assert!(text.contains("group=\"new\\nline\""), "{text}");
        promtool_accepts(&text);
    }

    #[test]
    fn label_escapes_backslash_quote_and_line_feed_only() {
        assert_eq!(label("plain").to_string(), "plain");
        assert_eq!(label("a\"b\\c\nd\re").to_string(), "a\\\"b\\\\c\\nd\re");
        assert_eq!(label("ü\n").to_string(), "ü\\n");
    }

    #[test]
    fn renders_counters_histograms_and_gauges_per_core() {
        let reg = Registry::new(2, "epoll");
        reg.core(1)
            .observe(RouteLabel::Health, 200, Duration::from_micros(300));
        reg.core(1)
            .observe(RouteLabel::NotFound, 404, Duration::from_millis(2));
        reg.core(0)
            .observe(RouteLabel::Rejected, 418, Duration::from_millis(2));
        reg.core(0).connection_opened();
        let text = reg.render();
        assert!(
            text.contains(
                "ringgate_http_requests_total{core=\"1\",route=\"health\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "ringgate_http_requests_total{core=\"0\",route=\"rejected\",status=\"other\"} 1"
        ));
        assert!(text.contains("ringgate_http_request_duration_seconds_bucket{core=\"1\",route=\"health\",le=\"0.00025\"} 0"));
        assert!(text.contains("ringgate_http_request_duration_seconds_bucket{core=\"1\",route=\"health\",le=\"0.0005\"} 1"));
        assert!(text.contains(
            "ringgate_http_request_duration_seconds_count{core=\"1\",route=\"not_found\"} 1"
        ));
        assert!(text.contains("ringgate_connections_open{core=\"0\",driver=\"epoll\"} 1"));
        assert!(text.contains("ringgate_connections_open{core=\"1\",driver=\"epoll\"} 0"));
    }

    #[test]
    fn cache_figures_are_per_class_and_front_end() {
        let reg = Registry::new(1, "epoll");
        let (gold, free) = (reg.class_slot("gold"), reg.class_slot("free"));
        let m = reg.core(0);
        m.sql_cache(gold, CacheEvent::Hit);
        m.cache_event(Frontend::Pg, gold, CacheEvent::Hit);
        m.cache_event(Frontend::Pg, gold, CacheEvent::Hit);
        m.cache_event(Frontend::Pg, free, CacheEvent::Invalidation);
        let mut bytes = [0; N_CLASS];
        let mut evictions = [0; N_CLASS];
        (bytes[gold], bytes[free], evictions[free]) = (100, 20, 4);
        m.set_sql_cache_size(&bytes, &evictions);
        assert_eq!(m.sql_cache_bytes(), 120);
        assert_eq!(m.sql_cache_events(CacheEvent::Hit), 3);
        let text = reg.render();
        for line in [
            "ringgate_sql_cache_events_total{core=\"0\",class=\"gold\",event=\"hit\",frontend=\"sql\"} 1",
            "ringgate_sql_cache_events_total{core=\"0\",class=\"gold\",event=\"hit\",frontend=\"pg\"} 2",
            "ringgate_sql_cache_events_total{core=\"0\",class=\"free\",event=\"invalidation\",frontend=\"pg\"} 1",
            "ringgate_sql_cache_bytes{core=\"0\",class=\"gold\"} 100",
            "ringgate_sql_cache_bytes{core=\"0\",class=\"free\"} 20",
            "ringgate_sql_cache_bytes{core=\"0\",class=\"unclassified\"} 0",
            "ringgate_sql_cache_evictions_total{core=\"0\",class=\"free\"} 4",
            "ringgate_sql_cache_evictions_total{core=\"0\",class=\"other\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Only labelled slots are shown: no second `other` from unused slots.
        assert_eq!(
            text.matches("ringgate_sql_cache_bytes{core=\"0\",class=\"other\"}")
                .count(),
            1
        );
        promtool_accepts(&text);
    }

    #[test]
    fn tenant_classes_are_bounded_and_sql_events_counted() {
        let reg = Registry::new(1, "epoll");
        let gold = reg.class_slot("gold");
        assert_eq!(reg.class_slot("gold"), gold, "a class keeps its slot");
        for i in 0..20 {
            reg.class_slot(&format!("c{i}"));
        }
        assert_eq!(reg.class_slot("late"), OTHER_CLASS);
        let m = reg.core(0);
        m.sql_answered(gold, 200);
        m.sql_answered(reg.class_slot("late"), 503);
        m.sql_answered(UNCLASSIFIED, 400);
        m.sql_event(SqlEvent::RerunAbortedByServer);
        m.write_held(Duration::from_millis(1500));
        m.pool_waited(Duration::from_millis(3));
        m.set_pool_nodes(vec![("pg1".into(), 4)]);
        let text = reg.render();
        for line in [
            "ringgate_sql_requests_total{core=\"0\",class=\"gold\",status=\"200\"} 1",
            "ringgate_sql_requests_total{core=\"0\",class=\"other\",status=\"503\"} 1",
            "ringgate_sql_requests_total{core=\"0\",class=\"unclassified\",status=\"400\"} 1",
            "ringgate_sql_reruns_total{core=\"0\",reason=\"aborted_by_server\"} 1",
            "ringgate_sql_writes_failed_total{core=\"0\",reason=\"outcome_unknown\"} 0",
            "ringgate_sql_writes_held_total{core=\"0\"} 1",
            "ringgate_sql_write_hold_seconds_total{core=\"0\"} 1.5",
            "ringgate_pool_node_connections{core=\"0\",node=\"pg1\"} 4",
            "ringgate_pool_wait_seconds_bucket{core=\"0\",le=\"0.005\"} 1",
            "ringgate_pool_wait_seconds_count{core=\"0\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
