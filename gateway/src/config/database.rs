//! Database settings: the fixed topology (`DATABASE_URL`), the Patroni sources, the
//! control database, TLS to PostgreSQL and the pool limits.

use std::time::Duration;

use ringgate_pool::url::{parse_pg_url, PgUrl};
use tracing::error;

use super::{parse, Reader};

/// Connection URL of the primary (fixed topology): `postgres://user:password@host:port/db`.
pub const ENV_DATABASE_URL: &str = "DATABASE_URL";
/// Connection URL of a read replica (fixed topology).
pub const ENV_READ_REPLICA_URL: &str = "READ_REPLICA_URL";
/// Tenant pools cached per core.
pub const ENV_MAX_TENANT_POOLS: &str = "RINGGATE_MAX_TENANT_POOLS";
/// A tenant pool unused this long is closed.
pub const ENV_POOL_IDLE_TTL: &str = "RINGGATE_POOL_IDLE_TTL";
/// How long a request waits for a pooled connection.
pub const ENV_POOL_TIMEOUT: &str = "RINGGATE_POOL_TIMEOUT";
/// Server connections one tenant may hold to one node.
pub const ENV_POOL_MAX_PER_TENANT: &str = "RINGGATE_POOL_MAX_PER_TENANT";
/// Server connections ringgate may hold to one node.
pub const ENV_POOL_MAX_TOTAL: &str = "RINGGATE_POOL_MAX_TOTAL";
/// Idle connections a recently used pool keeps warm.
pub const ENV_POOL_MIN_WARM: &str = "RINGGATE_POOL_MIN_WARM";
/// Connect plus startup timeout for server connections.
pub const ENV_POOL_CONNECT_TIMEOUT: &str = "RINGGATE_POOL_CONNECT_TIMEOUT";
/// Replicas further behind than this take no reads.
pub const ENV_MAX_REPLICA_LAG: &str = "RINGGATE_MAX_REPLICA_LAG";
/// `statement_timeout` on every server connection.
pub const ENV_SQL_STATEMENT_TIMEOUT: &str = "RINGGATE_SQL_STATEMENT_TIMEOUT";
/// TLS to PostgreSQL: `disable`, `require` or `verify-full`.
pub const ENV_PG_SSLMODE: &str = "RINGGATE_PG_SSLMODE";
/// PEM root certificates for `verify-full`.
pub const ENV_PG_SSLROOTCERT: &str = "RINGGATE_PG_SSLROOTCERT";
/// etcd endpoints holding Patroni's DCS keys.
pub const ENV_ETCD_ENDPOINTS: &str = "RINGGATE_ETCD_ENDPOINTS";
/// Patroni REST base URLs (fallback source).
pub const ENV_PATRONI_URLS: &str = "RINGGATE_PATRONI_URLS";
/// Patroni's `scope`.
pub const ENV_PATRONI_SCOPE: &str = "RINGGATE_PATRONI_SCOPE";
/// Patroni's DCS `namespace`.
pub const ENV_PATRONI_NAMESPACE: &str = "RINGGATE_PATRONI_NAMESPACE";
/// How often the topology sources are read.
pub const ENV_TOPOLOGY_INTERVAL: &str = "RINGGATE_TOPOLOGY_INTERVAL";
/// How often the leader's Patroni is asked whether it still leads, or `off`.
pub const ENV_LEADER_PROBE: &str = "RINGGATE_LEADER_PROBE";
/// Default of [`ENV_LEADER_PROBE`]: a leader that stops answering stops receiving writes
/// within four intervals (1 s) of its last answer.
pub const DEFAULT_LEADER_PROBE: Duration = Duration::from_millis(250);
/// How long a write waits for a leader during failover.
pub const ENV_FAILOVER_WAIT: &str = "RINGGATE_FAILOVER_WAIT";
/// Default of [`ENV_FAILOVER_WAIT`]: the local backend's failover under synchronous mode
/// (lease TTL 6 s, promotion, then a synchronous standby assigned) took 16-17 s after a
/// frozen leader (bench/RESULTS.md), so 15 s failed writes a little longer wait would
/// have carried.
pub const DEFAULT_FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// The control database holding `ringgate.projects`.
pub const ENV_CONTROL_DATABASE_URL: &str = "RINGGATE_CONTROL_DATABASE_URL";
/// How long a project's row is cached per core.
pub const ENV_PROJECT_CACHE_TTL: &str = "RINGGATE_PROJECT_CACHE_TTL";

/// The fixed topology and pool limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// The primary (`DATABASE_URL`); the topology when no Patroni source is set.
    pub primary: Option<PgUrl>,
    /// A read replica (`READ_REPLICA_URL`).
    pub replica: Option<PgUrl>,
    /// Patroni topology sources (`RINGGATE_ETCD_ENDPOINTS` / `RINGGATE_PATRONI_URLS`);
    /// when set, the topology follows Patroni and `DATABASE_URL` is not needed.
    pub patroni: Option<ringgate_discovery::watch::Sources>,
    /// How often the Patroni sources are read ([`ENV_TOPOLOGY_INTERVAL`]).
    pub topology_interval: Duration,
    /// Control database credentials (`RINGGATE_CONTROL_DATABASE_URL`); enables project checks.
    pub control: Option<ringgate_pool::Credentials>,
    /// Project cache TTL ([`ENV_PROJECT_CACHE_TTL`]).
    pub project_cache_ttl: Duration,
    /// Pool limits and timeouts.
    pub pool: ringgate_pool::Config,
}

impl Reader<'_> {
    /// `RINGGATE_ETCD_ENDPOINTS`, `RINGGATE_PATRONI_URLS`, scope and namespace.
    pub(super) fn patroni(&mut self) -> Option<ringgate_discovery::watch::Sources> {
        const URLS: &str = "comma-separated URLs like http://127.0.0.1:2379";
        let list = |r: &mut Self, name: &'static str| -> Vec<String> {
            let Some(s) = r.string(name) else {
                return vec![];
            };
            let urls: Vec<String> = s
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            if urls.is_empty()
                || urls
                    .iter()
                    .any(|u| ringgate_discovery::http::base_addr(u).is_err())
            {
                r.invalid(name, s, URLS);
                return vec![];
            }
            urls
        };
        let etcd = list(self, ENV_ETCD_ENDPOINTS);
        let patroni = list(self, ENV_PATRONI_URLS);
        let leader_probe = self.value(ENV_LEADER_PROBE, parse::interval_or_off);
        let scope = self.string(ENV_PATRONI_SCOPE);
        let namespace = self.value(ENV_PATRONI_NAMESPACE, parse::text);
        if etcd.is_empty() && patroni.is_empty() {
            return None;
        }
        let scope = match scope {
            Some(s) => s,
            None if etcd.is_empty() => String::new(),
            None => {
                self.missing(ENV_PATRONI_SCOPE, "RINGGATE_ETCD_ENDPOINTS is set");
                return None;
            }
        };
        Some(ringgate_discovery::watch::Sources {
            etcd,
            patroni,
            namespace,
            scope,
            timeout: Duration::from_millis(500),
            leader_probe,
        })
    }

    /// `RINGGATE_PG_SSLMODE` and `RINGGATE_PG_SSLROOTCERT`.
    pub(super) fn pg_tls(&mut self) -> Option<ringgate_pool::tls::PgTls> {
        let mode = self.value(ENV_PG_SSLMODE, |s| match s.trim() {
            m @ ("disable" | "require" | "verify-full") => Ok(m.to_string()),
            _ => Err(parse::ParseError {
                expected: "disable, require or verify-full",
            }),
        });
        let root = self.string(ENV_PG_SSLROOTCERT);
        match (mode.as_str(), root) {
            ("disable", _) => None,
            ("require", _) => match ringgate_pool::tls::require() {
                Ok(t) => Some(t),
                Err(e) => {
                    self.invalid(
                        ENV_PG_SSLMODE,
                        "require".into(),
                        "a TLS configuration rustls accepts",
                    );
                    error!("{e}");
                    None
                }
            },
            (_, None) => {
                self.missing(ENV_PG_SSLROOTCERT, "RINGGATE_PG_SSLMODE=verify-full");
                None
            }
            (_, Some(root)) => match ringgate_pool::tls::verify_full(std::path::Path::new(&root)) {
                Ok(t) => Some(t),
                Err(e) => {
                    error!("{e}");
                    self.invalid(
                        ENV_PG_SSLROOTCERT,
                        root,
                        "a readable PEM file with at least one certificate",
                    );
                    None
                }
            },
        }
    }

    /// `DATABASE_URL`, `READ_REPLICA_URL` and the pool limits.
    pub(super) fn database(&mut self) -> Option<DatabaseConfig> {
        const URL: &str = "a URL like postgres://user:password@host:5432/database";
        let url = |r: &mut Self, name: &'static str| {
            let s = r.string(name)?;
            match parse_pg_url(&s) {
                Ok(u) => Some(u),
                Err(e) => {
                    // The parser's reasons name options and hosts, never values.
                    r.invalid(name, s, URL);
                    error!("{name}: {e}");
                    None
                }
            }
        };
        let primary = url(self, ENV_DATABASE_URL);
        let replica = url(self, ENV_READ_REPLICA_URL);
        let pool = ringgate_pool::Config {
            max_tenant_pools: self.value(ENV_MAX_TENANT_POOLS, parse::count),
            idle_ttl: self.value(ENV_POOL_IDLE_TTL, parse::duration),
            wait_timeout: self.value(ENV_POOL_TIMEOUT, parse::duration),
            max_per_tenant: self.value(ENV_POOL_MAX_PER_TENANT, parse::count),
            max_total: self.value(ENV_POOL_MAX_TOTAL, parse::count),
            min_warm: self.value(ENV_POOL_MIN_WARM, |s| {
                s.trim().parse().map_err(|_| parse::ParseError {
                    expected: "a whole number",
                })
            }),
            connect_timeout: self.value(ENV_POOL_CONNECT_TIMEOUT, parse::duration),
            max_replica_lag: self.value(ENV_MAX_REPLICA_LAG, parse::bytes) as u64,
            statement_timeout: self.value(ENV_SQL_STATEMENT_TIMEOUT, parse::duration),
            ..ringgate_pool::Config::default()
        };
        let pool = ringgate_pool::Config {
            tls: self.pg_tls(),
            ..pool
        };
        let patroni = self.patroni();
        let control = url(self, ENV_CONTROL_DATABASE_URL).map(|u| u.credentials);
        let project_cache_ttl = self.value(ENV_PROJECT_CACHE_TTL, parse::duration);
        let topology_interval = self.value(ENV_TOPOLOGY_INTERVAL, parse::duration);
        match (primary, replica) {
            (primary, replica) if primary.is_some() || patroni.is_some() => Some(DatabaseConfig {
                primary,
                replica,
                patroni,
                topology_interval,
                control,
                project_cache_ttl,
                pool,
            }),
            (None, Some(_)) => {
                self.missing(ENV_DATABASE_URL, "READ_REPLICA_URL is set");
                None
            }
            _ => None,
        }
    }
}
