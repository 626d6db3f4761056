//! Pool limits and timeouts. Plain data: the gateway fills it from the environment.

use std::time::Duration;

/// Settings for every core's pools. Limits are process-wide: every core counts against the
/// same [`crate::budget::Budgets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Tenant pools cached per core ([`DEFAULT_MAX_TENANT_POOLS`]). Over it the coldest pool is evicted.
    pub max_tenant_pools: usize,
    /// A pool unused this long is closed ([`DEFAULT_IDLE_TTL`]).
    pub idle_ttl: Duration,
    /// Server connections one tenant may hold to one node, process-wide ([`DEFAULT_MAX_PER_TENANT`]).
    pub max_per_tenant: usize,
    /// Server connections ringgate may hold to one node, process-wide ([`DEFAULT_MAX_TOTAL`]).
    pub max_total: usize,
    /// Idle connections a recently used pool keeps warm ([`DEFAULT_MIN_WARM`]).
    pub min_warm: usize,
    /// Idle connections beyond the warm minimum are closed after this (default 60 s).
    pub conn_idle_timeout: Duration,
    /// How long a request waits for a connection ([`DEFAULT_WAIT_TIMEOUT`]); then 503.
    pub wait_timeout: Duration,
    /// TCP connect plus startup timeout ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// An idle connection is pinged before reuse when idle longer than this (default 1 s).
    pub ping_after_idle: Duration,
    /// Replicas further behind than this many bytes take no reads ([`DEFAULT_MAX_REPLICA_LAG`]).
    pub max_replica_lag: u64,
    /// Prepared statements kept per connection (default 256).
    pub statement_cache: usize,
    /// `statement_timeout` set on every server connection ([`DEFAULT_STATEMENT_TIMEOUT`]; zero for none).
    pub statement_timeout: Duration,
    /// TLS to PostgreSQL (default none: plaintext).
    pub tls: Option<crate::tls::PgTls>,
}

/// Default of [`Config::max_tenant_pools`].
pub const DEFAULT_MAX_TENANT_POOLS: usize = 100;
/// Default of [`Config::idle_ttl`].
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(300);
/// Default of [`Config::max_per_tenant`].
pub const DEFAULT_MAX_PER_TENANT: usize = 10;
/// Default of [`Config::max_total`].
pub const DEFAULT_MAX_TOTAL: usize = 200;
/// Default of [`Config::min_warm`].
pub const DEFAULT_MIN_WARM: usize = 1;
/// Default of [`Config::wait_timeout`].
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of [`Config::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of [`Config::max_replica_lag`].
pub const DEFAULT_MAX_REPLICA_LAG: u64 = 16 << 20;
/// Default of [`Config::statement_timeout`].
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Config {
    fn default() -> Self {
        Self {
            max_tenant_pools: DEFAULT_MAX_TENANT_POOLS,
            idle_ttl: DEFAULT_IDLE_TTL,
            max_per_tenant: DEFAULT_MAX_PER_TENANT,
            max_total: DEFAULT_MAX_TOTAL,
            min_warm: DEFAULT_MIN_WARM,
            conn_idle_timeout: Duration::from_secs(60),
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ping_after_idle: Duration::from_secs(1),
            max_replica_lag: DEFAULT_MAX_REPLICA_LAG,
            statement_cache: 256,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            tls: None,
        }
    }
}
