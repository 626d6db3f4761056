//! One core's state: owned by its thread, shared by its tasks through `Rc`, never locked.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::Arc,
};

use ringgate_discovery::Topology;
use ringgate_pool::Shard;

use crate::{
    config::Config,
    http::DateCache,
    metrics::{CoreMetrics, Registry},
    request_id::RequestIds,
    rt::Driver,
    shutdown::Drain,
};

/// How long after a request began [`Core::serving_requests`] still says yes.
pub const RECENT_REQUEST: std::time::Duration = std::time::Duration::from_millis(50);

/// What every core shares: the process-wide connection budgets and rate-limit buckets
/// (atomics, locked only when a core meets a tenant or node it has not seen).
#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// Server connections per tenant and node, and per node, on all cores.
    pub budgets: Option<Arc<ringgate_pool::Budgets>>,
    /// Token buckets of the per-tenant rate limit, when `RINGGATE_RATE_LIMIT` is set.
    pub rates: Option<Arc<crate::proxy::rate::RateTable>>,
    /// The `/sql` result cache's invalidation counters, when the cache is on.
    pub cache_generations: Option<Arc<crate::sql::cache::generations::Generations>>,
    /// Every core's inbox of `/sql` requests handed over by other cores (with a database
    /// and more than one core).
    pub hand_offs: Option<Arc<crate::sql::inbox::HandOffs>>,
}

impl Shared {
    /// The shared state for `config`; made once, before the cores start.
    pub fn new(config: &Config) -> Self {
        Self {
            budgets: config
                .database
                .as_ref()
                .map(|d| ringgate_pool::Budgets::for_cores(&d.pool, config.workers)),
            rates: config
                .proxy
                .rate_limit
                .map(|l| crate::proxy::rate::RateTable::new(l.per_second, l.burst)),
            cache_generations: (config.database.is_some() && config.query_cache.max_bytes > 0)
                .then(|| {
                    Arc::new(crate::sql::cache::generations::Generations::new(
                        config.redis.is_some(),
                    ))
                }),
            hand_offs: (config.database.is_some() && config.workers > 1)
                .then(|| crate::sql::inbox::HandOffs::new(config.workers)),
        }
    }
}

/// Everything one core's tasks share.
pub struct Core {
    /// Core number, from 0.
    pub id: usize,
    /// The io driver this core runs.
    pub driver: Driver,
    /// Configuration read at start.
    pub config: Arc<Config>,
    /// All cores' metrics; this core writes only its own.
    pub registry: Arc<Registry>,
    /// This core's drain signal.
    pub drain: Drain,
    /// The TLS config for the current certificate, swapped on reload.
    pub tls: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// The pace of this core's TLS handshakes.
    pub handshakes: crate::handshake::pace::HandshakePace,
    /// Request id generator.
    pub request_ids: RequestIds,
    /// Cached `date` header.
    pub date: DateCache,
    /// This core's database pools, when a database is configured.
    pub db: Option<Rc<Shard>>,
    /// Project rows, when a control database is configured.
    pub projects: Option<crate::projects::ProjectCache>,
    /// API-key sessions, when Redis is configured.
    pub sessions: Option<crate::sessions::SessionCache>,
    /// Redis, when configured: a `CancelRequest` for a session of another instance is
    /// published there (see [`crate::wire::cancel`]).
    pub redis: Option<ringgate_redis::RedisHandle>,
    /// What all cores share (budgets, rate buckets).
    pub shared: Shared,
    /// The fleet-wide per-tenant rate limit, when `RINGGATE_GLOBAL_RATE_LIMIT` is set.
    pub global_rate: Option<crate::proxy::global_rate::GlobalRateLimit>,
    /// Workers and connections to them (the reverse proxy).
    pub upstreams: crate::proxy::upstreams::Upstreams,
    /// `/sql` memo tables (query classification, connection strings).
    pub sql_memo: crate::sql::memo::SqlMemo,
    /// The `/sql` result cache, when on (a database and `RINGGATE_SQL_CACHE_BYTES` > 0).
    pub query_cache: Option<crate::sql::cache::local::QueryCache>,
    /// `/sql` reads waiting to be pipelined onto a busy connection, by tenant.
    pub read_queues: crate::sql::pipeline::ReadQueues,
    /// I/O buffers client connections borrow while bytes move.
    pub buffers: crate::io_buf::BufPool,
    /// Deadlines of client connections' waits (keep-alive, header and body timeouts).
    pub deadlines: crate::deadline::Deadlines,
    /// Client connections keeping a read (and its buffer) armed after a response.
    pub in_grace: Cell<usize>,
    /// Idle keep-alive connections parked off their tasks (`None`: the epoll set could not
    /// be created, and idle connections wait in their tasks).
    pub parked: Option<crate::parked::Parked<Idle>>,
    /// PostgreSQL sessions begun on this core (numbers their cancel keys).
    pg_sessions: Cell<u32>,
    connections: Cell<usize>,
    in_flight: Cell<usize>,
    /// When the latest request began.
    last_request: Cell<monoio::time::Instant>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("id", &self.id)
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

// === impl Core ===

impl Core {
    /// A core with no connections yet; `shared` is the same for every core (see
    /// [`Shared::new`]).
    pub fn new(
        id: usize,
        driver: Driver,
        config: Arc<Config>,
        registry: Arc<Registry>,
        topology: Arc<Topology>,
        redis: Option<ringgate_redis::RedisHandle>,
        shared: Shared,
    ) -> Rc<Self> {
        let global_rate = match (&redis, config.proxy.global_rate_limit) {
            (Some(handle), Some(per_second)) => {
                Some(crate::proxy::global_rate::GlobalRateLimit::new(
                    handle.clone(),
                    per_second as f64,
                    registry.clone(),
                    id,
                ))
            }
            _ => None,
        };
        let query_cache = shared.cache_generations.clone().map(|g| {
            crate::sql::cache::local::QueryCache::new(config.query_cache.clone(), g, redis.clone())
        });
        let sessions = match (redis.clone(), &config.redis) {
            (Some(handle), Some(r)) => Some(crate::sessions::SessionCache::new(
                handle,
                r.session_cache_ttl,
            )),
            _ => None,
        };
        let db = config.database.as_ref().map(|d| {
            let budgets = shared
                .budgets
                .clone()
                .unwrap_or_else(|| ringgate_pool::Budgets::new(&d.pool));
            Shard::new(id, budgets, d.pool.clone(), topology.clone())
        });
        let projects = config.database.as_ref().and_then(|d| {
            d.control.clone().map(|c| {
                crate::projects::ProjectCache::new(c, d.project_cache_ttl, registry.clone())
            })
        });
        let buffers =
            crate::io_buf::BufPool::with_metrics(crate::io_buf::DEFAULT_KEEP, registry.clone(), id);
        Rc::new(Self {
            id,
            driver,
            config,
            registry,
            drain: Drain::default(),
            tls: RefCell::new(None),
            handshakes: Default::default(),
            request_ids: RequestIds::new(),
            date: DateCache::default(),
            db,
            projects,
            sessions,
            redis,
            shared,
            global_rate,
            upstreams: Default::default(),
            sql_memo: Default::default(),
            query_cache,
            read_queues: Default::default(),
            buffers,
            deadlines: Default::default(),
            in_grace: Cell::new(0),
            parked: crate::parked::Parked::new()
                .inspect_err(|error| tracing::warn!(%error, "idle connections will not be parked"))
                .ok(),
            pg_sessions: Cell::new(0),
            connections: Cell::new(0),
            in_flight: Cell::new(0),
            last_request: Cell::new(monoio::time::Instant::now()),
        })
    }

    /// A number for a new PostgreSQL session on this core (its cancel key's).
    pub fn next_pg_session(&self) -> u32 {
        let n = self.pg_sessions.get().wrapping_add(1);
        self.pg_sessions.set(n);
        n
    }

    /// This core's metrics.
    pub fn metrics(&self) -> &CoreMetrics {
        self.registry.core(self.id)
    }

    /// Open client connections on this core.
    pub fn connections(&self) -> usize {
        self.connections.get()
    }

    /// Requests between a complete head and a written response on this core.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Counts a connection until the guard drops.
    pub fn track_connection(self: &Rc<Self>) -> ConnectionGuard {
        self.connections.set(self.connections.get() + 1);
        self.metrics().connection_opened();
        ConnectionGuard(self.clone())
    }

    /// Counts a request in flight until the guard drops; `now` is when it began.
    pub fn track_request(self: &Rc<Self>, now: monoio::time::Instant) -> RequestGuard {
        self.in_flight.set(self.in_flight.get() + 1);
        self.last_request.set(now);
        RequestGuard(self.clone())
    }

    /// Whether this core is serving requests: one is in flight, or one began within
    /// [`RECENT_REQUEST`] (between the requests of a steady stream, none may be in flight).
    pub fn serving_requests(&self) -> bool {
        self.in_flight.get() > 0 || self.last_request.get().elapsed() < RECENT_REQUEST
    }
}

/// A plain client connection parked while idle (see [`crate::parked`]): what its task
/// resumes with.
#[derive(Debug)]
pub struct Idle {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The connection's place in the core's count.
    pub guard: ConnectionGuard,
    /// When its last response was written (a request soon after makes it busy again).
    pub done_at: monoio::time::Instant,
}

/// Decrements the connection count on drop.
#[derive(Debug)]
pub struct ConnectionGuard(Rc<Core>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
        self.0.metrics().connection_closed();
    }
}

/// Decrements the in-flight count on drop.
#[derive(Debug)]
pub struct RequestGuard(Rc<Core>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}
