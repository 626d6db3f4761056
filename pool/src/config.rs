//! Pool limits and timeouts. Plain data: the gateway fills it from the environment.

use std::time::Duration;

/// Settings for every core's pools. Limits are process-wide: every core counts against the
/// same [`crate::budget::Budgets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Tenant pools cached per core (default 100). Over it the coldest pool is evicted.
    pub max_tenant_pools: usize,
    /// A pool unused this long is closed (default 300 s).
    pub idle_ttl: Duration,
    /// Server connections one tenant may hold to one node, process-wide (default 10).
    pub max_per_tenant: usize,
    /// Server connections ringgate may hold to one node, process-wide (default 200).
    pub max_total: usize,
    /// Idle connections a recently used pool keeps warm (default 1).
    pub min_warm: usize,
    /// Idle connections beyond the warm minimum are closed after this (default 60 s).
    pub conn_idle_timeout: Duration,
    /// How long a request waits for a connection (default 5 s); then 503.
    pub wait_timeout: Duration,
    /// TCP connect plus startup timeout (default 5 s).
    pub connect_timeout: Duration,
    /// An idle connection is pinged before reuse when idle longer than this (default 1 s).
    pub ping_after_idle: Duration,
    /// Replicas further behind than this many bytes take no reads (default 16 MiB).
    pub max_replica_lag: u64,
    /// Prepared statements kept per connection (default 256).
    pub statement_cache: usize,
    /// `statement_timeout` set on every server connection (default 30 s; zero for none).
    pub statement_timeout: Duration,
    /// TLS to PostgreSQL (default none: plaintext).
    pub tls: Option<crate::tls::PgTls>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_tenant_pools: 100,
            idle_ttl: Duration::from_secs(300),
            max_per_tenant: 10,
            max_total: 200,
            min_warm: 1,
            conn_idle_timeout: Duration::from_secs(60),
            wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ping_after_idle: Duration::from_secs(1),
            max_replica_lag: 16 << 20,
            statement_cache: 256,
            statement_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}
