//! ringgate: a thread-per-core gateway in front of a multi-tenant PostgreSQL platform.
//!
//! This crate is the binary's library: it owns serving (one monoio runtime per core, each
//! with its own SO_REUSEPORT listener), HTTP/1.1, routing, configuration from the
//! environment, metrics and graceful shutdown. Pools, discovery and TLS loading live in the
//! `ringgate-pool`, `ringgate-discovery` and `ringgate-tls` crates.
//!
//! [`Gateway::start`] binds the listeners and starts the cores; tests drive it in-process
//! the same way `main` does.
//!
//! # Layout
//! - [`config`]: environment variables, `--help`.
//! - [`admin`]: token-protected status endpoints and page.
//! - [`rt`]: driver choice (io_uring or epoll), runtimes, CPU pinning.
//! - [`server`]: listeners, accept loops, the per-core control loop.
//! - [`per_core`]: one core's state (config snapshot, pools, caches, metrics).
//! - [`conn`]: one client connection: HTTP/1.1 keep-alive, limits, timeouts.
//! - [`transport`], [`tls_stream`], [`io_buf`], [`deadline`]: waiting for bytes without a
//!   buffer, TLS over buffers lent while data moves, the per-core pool that lends them, and
//!   the per-core timer of connections' waits.
//! - [`http`]: request head parsing, body framing, response encoding.
//! - [`router`]: routes and handlers.
//! - [`metrics`]: per-core Prometheus metrics.
//! - [`cache`]: the one bounded per-core cache type (bytes and TTL).
//! - [`projects`]: project config from the control database, cached per core.
//! - [`sessions`]: API keys from Redis, cached per core.
//! - [`proxy`]: the reverse proxy to workers.
//! - [`wire`]: the PostgreSQL wire-protocol front end (`RINGGATE_PG_LISTEN`).
//! - [`parked`]: idle keep-alive connections parked off their tasks.
//! - [`control`]: messages from the main thread to a core.
//! - [`shutdown`]: signals and the drain.
//! - [`error`](mod@error): request errors and their HTTP mapping.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![deny(unsafe_code)]

pub mod admin;
pub mod cache;
pub mod clock;
pub mod config;
pub mod conn;
pub mod control;
pub mod deadline;
pub mod error;
pub mod handshake;
pub mod http;
pub mod io_buf;
pub mod metrics;
pub mod parked;
pub mod per_core;
pub mod projects;
pub mod proxy;
pub mod request_id;
pub mod router;
pub mod rt;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod socket_peek;
pub mod sql;
pub mod tls_stream;
pub mod transport;
pub mod wire;

use std::{net::SocketAddr, sync::Arc, thread::JoinHandle};

use tracing::{error, info, warn};

use crate::{
    config::Config,
    control::Control,
    metrics::Registry,
    rt::Driver,
    server::{bind_reuseport, CoreListeners, CoreReport},
};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] ringgate_tls::Error),
    /// No runtime could be built.
    #[error(transparent)]
    Runtime(#[from] rt::RtError),
    /// A core thread could not be spawned.
    #[error("cannot spawn core thread: {0}")]
    Thread(std::io::Error),
}

/// A running gateway: its cores, their control channels and the bound addresses.
#[derive(Debug)]
pub struct Gateway {
    cores: Vec<(flume::Sender<Control>, JoinHandle<CoreReport>)>,
    certs: Option<ringgate_tls::CertStore>,
    registry: Arc<Registry>,
    driver: Driver,
    plain_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    pg_addr: Option<SocketAddr>,
}

/// What [`start_topology`] hands the cores: the first topology, and when it follows
/// Patroni, the handle that asks for re-resolution and the leader's lease.
struct TopologyStart {
    first: Arc<ringgate_discovery::Topology>,
    resolve: Option<ringgate_discovery::watch::Resolve>,
    lease_gate: Option<Arc<ringgate_discovery::lease::LeaseGate>>,
}

/// The first topology, and when it follows Patroni, a watcher publishing to every core.
fn start_topology(
    config: &Config,
    cores: Vec<flume::Sender<Control>>,
    registry: Arc<Registry>,
) -> Result<TopologyStart, StartError> {
    let Some(db) = &config.database else {
        return Ok(TopologyStart {
            first: Arc::default(),
            resolve: None,
            lease_gate: None,
        });
    };
    if let Some(sources) = &db.patroni {
        let view = registry.clone();
        let publish = move |t: Arc<ringgate_discovery::Topology>| {
            view.cluster().topology_is(t.clone());
            for tx in &cores {
                let _ = tx.send(Control::Topology(t.clone()));
            }
        };
        let watcher =
            ringgate_discovery::watch::spawn(sources.clone(), db.topology_interval, publish)
                .map_err(StartError::Thread)?;
        registry.cluster().topology_is(watcher.first.clone());
        return Ok(TopologyStart {
            first: watcher.first,
            resolve: Some(watcher.resolve),
            lease_gate: Some(watcher.gate),
        });
    }
    let fixed = match &db.primary {
        Some(p) => ringgate_discovery::Topology::fixed(
            (p.addr, p.host.clone()),
            db.replica.as_ref().map(|r| (r.addr, r.host.clone())),
        ),
        None => ringgate_discovery::Topology::default(),
    };
    let fixed = Arc::new(fixed);
    registry.cluster().topology_is(fixed.clone());
    Ok(TopologyStart {
        first: fixed,
        resolve: None,
        lease_gate: None,
    })
}

/// The Redis side thread when Redis is configured (its worker watch publishing to every
/// core); otherwise the static workers, sent to every core once.
fn start_redis(
    config: &Config,
    cores: Vec<flume::Sender<Control>>,
    registry: Arc<Registry>,
    cache: Option<Arc<sql::cache::generations::Generations>>,
) -> Result<Option<ringgate_redis::RedisHandle>, StartError> {
    let view = registry.clone();
    let cancel_cores = cores.clone();
    let publish = move |set: Arc<ringgate_redis::workers::WorkerSet>| {
        view.cluster().workers_are(set.clone());
        for tx in &cores {
            let _ = tx.send(Control::Workers(set.clone()));
        }
    };
    let Some(settings) = &config.redis else {
        let fixed = config.proxy.static_workers.clone();
        publish(Arc::new(ringgate_redis::workers::WorkerSet::from_workers(
            fixed,
        )));
        return Ok(None);
    };
    let watch = ringgate_redis::WorkerWatch {
        fixed: config.proxy.static_workers.clone(),
        interval: config.proxy.discovery_interval,
        publish: Box::new(publish),
    };
    let observe: ringgate_redis::MasterObserver =
        Box::new(move |addr: &str| registry.redis_master_is(addr));
    // Other instances' cache invalidations.
    let mut subscriptions: Vec<_> = cache
        .map(|g| {
            let state = g.clone();
            ringgate_redis::Subscription {
                channel: sql::cache::generations::CHANNEL.to_string(),
                on_message: Box::new(move |m: &str| g.apply_message(m)),
                on_state: Box::new(move |up| state.set_linked(up)),
            }
        })
        .into_iter()
        .collect();
    // Other instances' PostgreSQL cancel requests, handed to the core the key names.
    if config.pg.is_some() {
        subscriptions.push(wire::cancel::subscription(cancel_cores));
    }
    let handle = ringgate_redis::spawn_with(
        settings.redis.clone(),
        Some(watch),
        Some(observe),
        subscriptions,
    )
    .map_err(StartError::Thread)?;
    info!(
        sentinels = settings.redis.sentinels.len(),
        master = %settings.redis.master,
        "Redis through Sentinel"
    );
    Ok(Some(handle))
}

/// How the drain ended, summed over cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainReport {
    /// Requests cut off by the drain timeout.
    pub cut_requests: usize,
    /// Connections still open at the drain timeout.
    pub cut_connections: usize,
}

// === impl Gateway ===

impl Gateway {
    /// Binds the listeners, loads TLS, and starts one runtime thread per core.
    pub fn start(config: Config) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let driver = rt::select_driver(config.driver)?;
        let n = config.workers;
        let certs = match &config.tls {
            Some(t) => Some(ringgate_tls::CertStore::try_new(&t.cert, &t.key)?),
            None => None,
        };
        let bind = |addr: SocketAddr| {
            bind_reuseport(addr, n).map_err(|source| StartError::Bind { addr, source })
        };
        let mut plain = config.listen.map(bind).transpose()?.unwrap_or_default();
        let mut tls = config
            .tls
            .as_ref()
            .map(|t| bind(t.addr))
            .transpose()?
            .unwrap_or_default();
        let plain_addr = plain.first().and_then(|l| l.local_addr().ok());
        let tls_addr = tls.first().and_then(|l| l.local_addr().ok());
        let mut pg = config
            .pg
            .map(|p| bind(p.addr))
            .transpose()?
            .unwrap_or_default();
        let pg_addr = pg.first().and_then(|l| l.local_addr().ok());
        let registry = Registry::new(n, driver.label());
        let channels: Vec<_> = (0..n).map(|_| flume::unbounded::<Control>()).collect();
        let TopologyStart {
            first: topology,
            resolve,
            lease_gate,
        } = start_topology(
            &config,
            channels.iter().map(|(tx, _)| tx.clone()).collect(),
            registry.clone(),
        )?;
        let shared = per_core::Shared::new(&config);
        let redis = start_redis(
            &config,
            channels.iter().map(|(tx, _)| tx.clone()).collect(),
            registry.clone(),
            shared.cache_generations.clone(),
        )?;
        let mut channels = channels;
        let cpus = rt::allowed_cpus();
        if let Some(b) = &shared.budgets {
            registry.set_budgets(b.clone());
        }
        let mut cores = Vec::with_capacity(n);
        for id in (0..n).rev() {
            let listeners = CoreListeners {
                plain: plain.pop(),
                tls: tls.pop(),
                pg: pg.pop(),
            };
            let (tx, rx) = channels.pop().expect("one channel per core");
            let (topology, resolve, redis) = (topology.clone(), resolve.clone(), redis.clone());
            let (lease_gate, shared) = (lease_gate.clone(), shared.clone());
            if let Some(store) = &certs {
                let _ = tx.send(Control::Tls(store.current()));
            }
            let (config, registry, cpus) = (config.clone(), registry.clone(), cpus.clone());
            let handle = std::thread::Builder::new()
                .name(format!("ringgate-core-{id}"))
                .spawn(move || {
                    if config.pin_cores {
                        rt::pin_to_cpu(id, &cpus);
                    }
                    let run = rt::block_on(driver, || {
                        let core = per_core::Core::new(
                            id, driver, config, registry, topology, redis, shared,
                        );
                        if let (Some(db), Some(resolve)) = (&core.db, resolve) {
                            db.on_stale(move || resolve.now());
                        }
                        if let (Some(db), Some(gate)) = (&core.db, lease_gate) {
                            db.set_lease_gate(gate);
                        }
                        server::run_core(core, listeners, rx)
                    });
                    run.unwrap_or_else(|error| {
                        error!(core = id, %error, "core runtime failed to start");
                        CoreReport::default()
                    })
                })
                .map_err(StartError::Thread)?;
            cores.push((tx, handle));
        }
        cores.reverse();
        if let Some(a) = plain_addr {
            info!(addr = %a, cores = n, driver = driver.label(), "listening (http)");
        }
        if let Some(a) = tls_addr {
            info!(addr = %a, cores = n, driver = driver.label(), "listening (https)");
        }
        if let Some(a) = pg_addr {
            info!(addr = %a, cores = n, driver = driver.label(), "listening (postgresql)");
        }
        Ok(Self {
            cores,
            certs,
            registry,
            driver,
            plain_addr,
            tls_addr,
            pg_addr,
        })
    }

    /// The plain HTTP address, when listening.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
    }

    /// The PostgreSQL protocol address, when listening.
    pub fn pg_addr(&self) -> Option<SocketAddr> {
        self.pg_addr
    }

    /// The HTTPS address, when listening.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The driver every core runs.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// All cores' metrics.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Re-reads the TLS files and hands the new config to every core. On failure the old
    /// certificate stays in service.
    pub fn reload_tls(&mut self) -> Result<(), ringgate_tls::Error> {
        let Some(store) = self.certs.as_mut() else {
            return Ok(());
        };
        let result = store.reload();
        self.registry.tls_reloaded(result.is_ok());
        let config = result?;
        for (tx, _) in &self.cores {
            let _ = tx.send(Control::Tls(config.clone()));
        }
        Ok(())
    }

    /// Drains every core and waits for them: listeners close at once, requests in flight
    /// finish (up to the drain timeout), idle connections close.
    pub fn drain(self) -> DrainReport {
        self.registry.set_draining();
        for (tx, _) in &self.cores {
            let _ = tx.send(Control::Drain);
        }
        let mut report = DrainReport::default();
        for (_, handle) in self.cores {
            match handle.join() {
                Ok(r) => {
                    report.cut_requests += r.cut_requests;
                    report.cut_connections += r.cut_connections;
                }
                Err(_) => warn!("a core thread panicked during drain"),
            }
        }
        report
    }
}
