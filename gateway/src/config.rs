//! Configuration from environment variables only.
//!
//! [`Config::from_strings`] reads every variable through the [`Strings`] trait, so tests pass
//! a `HashMap` and never touch the process environment. Every bad variable is logged and the
//! first is returned as an [`EnvError`] naming the variable and the expected form; `main`
//! turns that into exit code 64. [`VARS`] documents each variable for `ringgate --help`.

pub mod parse;
pub mod secret_file;
pub mod sql;
pub mod upstreams;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use ringgate_pool::url::{parse_pg_url, PgUrl};
use tracing::error;

pub use self::{
    sql::{CacheConfig, SqlLimits},
    upstreams::*,
};

/// Plain HTTP listen address, or `off`.
pub const ENV_LISTEN: &str = "RINGGATE_LISTEN";
/// HTTPS listen address; unset means no TLS listener.
pub const ENV_TLS_LISTEN: &str = "RINGGATE_TLS_LISTEN";
/// PEM certificate chain for the HTTPS listener.
pub const ENV_TLS_CERT: &str = "RINGGATE_TLS_CERT";
/// PEM private key for the HTTPS listener.
pub const ENV_TLS_KEY: &str = "RINGGATE_TLS_KEY";
/// Number of cores (runtimes) to run.
pub const ENV_WORKERS: &str = "RINGGATE_WORKERS";
/// Whether each core's thread is pinned to one CPU.
pub const ENV_PIN_CORES: &str = "RINGGATE_PIN_CORES";
/// Which I/O driver to use: `auto`, `io_uring` or `epoll`.
pub const ENV_IO_DRIVER: &str = "RINGGATE_IO_DRIVER";
/// Largest request head accepted.
pub const ENV_MAX_HEADER_BYTES: &str = "RINGGATE_MAX_HEADER_BYTES";
/// Largest request body accepted.
pub const ENV_MAX_BODY_BYTES: &str = "RINGGATE_MAX_BODY_BYTES";
/// Time allowed to receive a whole request head.
pub const ENV_HEADER_READ_TIMEOUT: &str = "RINGGATE_HEADER_READ_TIMEOUT";
/// Longest pause allowed while a request body arrives.
pub const ENV_BODY_READ_TIMEOUT: &str = "RINGGATE_BODY_READ_TIMEOUT";
/// Longest time one write of a response to the client may take.
pub const ENV_RESPONSE_WRITE_TIMEOUT: &str = "RINGGATE_RESPONSE_WRITE_TIMEOUT";
/// How long an idle keep-alive connection is kept.
pub const ENV_KEEPALIVE_TIMEOUT: &str = "RINGGATE_KEEPALIVE_TIMEOUT";
/// Open client connections allowed per core.
pub const ENV_MAX_CONNECTIONS_PER_CORE: &str = "RINGGATE_MAX_CONNECTIONS_PER_CORE";
/// Longest graceful drain after SIGTERM.
pub const ENV_DRAIN_TIMEOUT: &str = "RINGGATE_DRAIN_TIMEOUT";
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
/// The control database holding `ringgate.projects`.
pub const ENV_CONTROL_DATABASE_URL: &str = "RINGGATE_CONTROL_DATABASE_URL";
/// How long a project's row is cached per core.
pub const ENV_PROJECT_CACHE_TTL: &str = "RINGGATE_PROJECT_CACHE_TTL";
/// Bytes of `/sql` responses cached per core (0: no cache).
pub const ENV_SQL_CACHE_BYTES: &str = "RINGGATE_SQL_CACHE_BYTES";
/// Most bytes one project's cached responses may take per core.
pub const ENV_SQL_CACHE_PROJECT_BYTES: &str = "RINGGATE_SQL_CACHE_PROJECT_BYTES";
/// Largest `/sql` response cached.
pub const ENV_SQL_CACHE_MAX_ENTRY: &str = "RINGGATE_SQL_CACHE_MAX_ENTRY";
/// Longest TTL a request header or rule may ask for.
pub const ENV_SQL_CACHE_MAX_TTL: &str = "RINGGATE_SQL_CACHE_MAX_TTL";
/// TTL cap while the Redis invalidation subscription is down.
pub const ENV_SQL_CACHE_DEGRADED_TTL: &str = "RINGGATE_SQL_CACHE_DEGRADED_TTL";
/// A read of tables written less than this ago is not cached.
pub const ENV_SQL_CACHE_SETTLE: &str = "RINGGATE_SQL_CACHE_SETTLE";
/// TLS to PostgreSQL: `disable`, `require` or `verify-full`.
pub const ENV_PG_SSLMODE: &str = "RINGGATE_PG_SSLMODE";
/// PEM root certificates for `verify-full`.
pub const ENV_PG_SSLROOTCERT: &str = "RINGGATE_PG_SSLROOTCERT";
/// Longest query text accepted by `/sql`.
pub const ENV_SQL_MAX_QUERY_BYTES: &str = "RINGGATE_SQL_MAX_QUERY_BYTES";
/// Most parameters per query.
pub const ENV_SQL_MAX_PARAMS: &str = "RINGGATE_SQL_MAX_PARAMS";
/// Largest `/sql` response body.
pub const ENV_SQL_MAX_RESPONSE_BYTES: &str = "RINGGATE_SQL_MAX_RESPONSE_BYTES";
/// `statement_timeout` on every server connection.
pub const ENV_SQL_STATEMENT_TIMEOUT: &str = "RINGGATE_SQL_STATEMENT_TIMEOUT";
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
/// `RINGGATE_ADMIN_TOKEN`: bearer token for `/admin`; admin endpoints are off without it.
pub const ENV_ADMIN_TOKEN: &str = "RINGGATE_ADMIN_TOKEN";
/// Log filter in `tracing_subscriber::EnvFilter` syntax.
pub const ENV_LOG: &str = "RINGGATE_LOG";
/// Log format: `plain` or `json`.
pub const ENV_LOG_FORMAT: &str = "RINGGATE_LOG_FORMAT";
/// PostgreSQL protocol listen address (off by default).
pub const ENV_PG_LISTEN: &str = "RINGGATE_PG_LISTEN";
/// TLS on the PostgreSQL listener: `allow` (default) or `require`.
pub const ENV_PG_TLS: &str = "RINGGATE_PG_TLS";
/// What the PostgreSQL listener asks a TLS client for: `scram` (default) or `password`.
pub const ENV_PG_TLS_AUTH: &str = "RINGGATE_PG_TLS_AUTH";

/// Variables whose values are secrets: never shown in a log line or an error, only named.
/// Passwords inside URLs (`DATABASE_URL`, ...) are hidden by [`shown`] for every variable.
pub const SECRET_VARS: &[&str] = &[ENV_ADMIN_TOKEN, ENV_KEY_LOGIN_SECRET, ENV_REDIS_PASSWORD];

/// What stands for a hidden value.
const HIDDEN: &str = "<hidden>";

/// `value` of `name` as it may be logged or put in an error: nothing of a secret
/// variable, and of every URL in it (comma-separated lists too) neither the user
/// information (`user:password@`) nor the query (`?password=...`).
pub fn shown(name: &str, value: &str) -> String {
    if SECRET_VARS.contains(&name) {
        return HIDDEN.to_string();
    }
    let url = |item: &str| -> String {
        let Some((scheme, rest)) = item.split_once("://") else {
            return item.to_string();
        };
        let rest = match rest.rfind('@') {
            Some(at) => format!("{HIDDEN}@{}", &rest[at + 1..]),
            None => rest.to_string(),
        };
        match rest.find('?') {
            Some(q) => format!("{scheme}://{}?{HIDDEN}", &rest[..q]),
            None => format!("{scheme}://{rest}"),
        }
    };
    value.split(',').map(url).collect::<Vec<_>>().join(",")
}

/// A secret setting: its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(HIDDEN)
    }
}

/// Documentation of one environment variable, shown by `ringgate --help`.
#[derive(Debug, Clone, Copy)]
pub struct VarDoc {
    /// The variable's name.
    pub name: &'static str,
    /// Its default, as written in the environment.
    pub default: &'static str,
    /// What it means.
    pub help: &'static str,
}

/// Every variable ringgate reads, in `--help` order.
pub const VARS: &[VarDoc] = &[
    VarDoc {
        name: ENV_LISTEN,
        default: "0.0.0.0:8080",
        help: "plain HTTP listen address (IP:port), or `off` for TLS only",
    },
    VarDoc {
        name: ENV_TLS_LISTEN,
        default: "(unset)",
        help: "HTTPS listen address; needs RINGGATE_TLS_CERT and RINGGATE_TLS_KEY",
    },
    VarDoc {
        name: ENV_TLS_CERT,
        default: "(unset)",
        help: "PEM certificate chain file; reloaded on SIGHUP",
    },
    VarDoc {
        name: ENV_TLS_KEY,
        default: "(unset)",
        help: "PEM private key file (PKCS#8, PKCS#1 or SEC1); reloaded on SIGHUP",
    },
    VarDoc {
        name: ENV_WORKERS,
        default: "available cores",
        help: "number of cores: one thread, runtime and listener each",
    },
    VarDoc {
        name: ENV_PIN_CORES,
        default: "false",
        help: "pin core n's thread to the n-th CPU the process may use; for hosts running nothing else busy",
    },
    VarDoc {
        name: ENV_IO_DRIVER,
        default: "auto",
        help: "`auto` (io_uring, epoll when refused), `io_uring` or `epoll`",
    },
    VarDoc {
        name: ENV_MAX_HEADER_BYTES,
        default: "16KiB",
        help: "largest request head; larger gets 431",
    },
    VarDoc {
        name: ENV_MAX_BODY_BYTES,
        default: "1MiB",
        help: "largest request body; larger gets 413",
    },
    VarDoc {
        name: ENV_HEADER_READ_TIMEOUT,
        default: "10s",
        help: "time to receive a whole request head (slowloris guard); then 408",
    },
    VarDoc {
        name: ENV_BODY_READ_TIMEOUT,
        default: "30s",
        help: "longest pause while a request body arrives; then 408",
    },
    VarDoc {
        name: ENV_RESPONSE_WRITE_TIMEOUT,
        default: "30s",
        help: "longest time one write of a response (or proxied response piece) to the client may take; then the connection is closed",
    },
    VarDoc {
        name: ENV_KEEPALIVE_TIMEOUT,
        default: "60s",
        help: "idle keep-alive connections are closed after this",
    },
    VarDoc {
        name: ENV_MAX_CONNECTIONS_PER_CORE,
        default: "16384",
        help: "open client connections per core; over it new ones get 503 and close",
    },
    VarDoc {
        name: ENV_DRAIN_TIMEOUT,
        default: "30s",
        help: "longest graceful drain after SIGTERM/SIGINT",
    },
    VarDoc { name: ENV_DATABASE_URL, default: "(unset)", help: "primary's URL, postgres://user:password@host:port/database; enables the database pools (fixed topology)" },
    VarDoc { name: ENV_READ_REPLICA_URL, default: "(unset)", help: "a read replica's URL; reads go there when set (needs DATABASE_URL)" },
    VarDoc { name: ENV_MAX_TENANT_POOLS, default: "100", help: "tenant pools cached per core; the coldest is evicted and its connections closed" },
    VarDoc { name: ENV_POOL_IDLE_TTL, default: "300s", help: "a tenant pool unused this long is closed" },
    VarDoc { name: ENV_POOL_TIMEOUT, default: "5s", help: "wait for a pooled connection; then 503 with Retry-After" },
    VarDoc { name: ENV_POOL_MAX_PER_TENANT, default: "10", help: "server connections per tenant per node, for the whole process (any core may use all of them)" },
    VarDoc { name: ENV_POOL_MAX_TOTAL, default: "200", help: "server connections per node, all tenants, for the whole process" },
    VarDoc { name: ENV_POOL_MIN_WARM, default: "1", help: "idle connections a recently used pool keeps open" },
    VarDoc { name: ENV_POOL_CONNECT_TIMEOUT, default: "5s", help: "TCP connect plus PostgreSQL startup timeout" },
    VarDoc { name: ENV_MAX_REPLICA_LAG, default: "16MiB", help: "replicas further behind (bytes of WAL) take no reads" },
    VarDoc { name: ENV_ETCD_ENDPOINTS, default: "(unset)", help: "etcd URLs with Patroni's keys; the topology then follows the DCS leader (DATABASE_URL not needed)" },
    VarDoc { name: ENV_PATRONI_URLS, default: "(unset)", help: "Patroni REST URLs (http://host:8008), read when etcd does not answer" },
    VarDoc { name: ENV_PATRONI_SCOPE, default: "(unset)", help: "Patroni's scope (cluster name); required with RINGGATE_ETCD_ENDPOINTS" },
    VarDoc { name: ENV_PATRONI_NAMESPACE, default: "/service/", help: "Patroni's DCS namespace" },
    VarDoc { name: ENV_LEADER_PROBE, default: "250ms", help: "with etcd: how often the leader's Patroni REST API is asked GET /liveness; writes are sent (and awaited) only within four intervals of its last 200, so a frozen or cut-off leader gets no new writes and those on it end outcome_unknown within a second; `off` to gate by the etcd lease alone (when ringgate cannot reach Patroni's REST API)" },
    VarDoc { name: ENV_TOPOLOGY_INTERVAL, default: "200ms", help: "how often the Patroni sources are read (re-read at once on a read-only leader)" },
    VarDoc { name: ENV_PG_SSLMODE, default: "disable", help: "TLS to PostgreSQL: `disable`, `require` (encrypt, no verification) or `verify-full`" },
    VarDoc { name: ENV_PG_SSLROOTCERT, default: "(unset)", help: "PEM root certificates the server's must chain to (needed by verify-full)" },
    VarDoc { name: ENV_SQL_MAX_QUERY_BYTES, default: "64KiB", help: "longest /sql query text; longer gets 413" },
    VarDoc { name: ENV_SQL_MAX_PARAMS, default: "1000", help: "most parameters per /sql query; more gets 413" },
    VarDoc { name: ENV_SQL_MAX_RESPONSE_BYTES, default: "10MiB", help: "largest /sql result; larger gets 507" },
    VarDoc { name: ENV_SQL_STATEMENT_TIMEOUT, default: "30s", help: "statement_timeout on every server connection (0s for none)" },
    VarDoc { name: ENV_FAILOVER_WAIT, default: "30s", help: "a write with no usable leader waits this long for a new one, then 503 (cover the backend's failover: TTL, promotion, synchronous standby)" },
    VarDoc { name: ENV_CONTROL_DATABASE_URL, default: "(unset)", help: "control database with ringgate.projects; when set, /sql checks the project, its database and role" },
    VarDoc { name: ENV_PROJECT_CACHE_TTL, default: "60s", help: "how long a project's row (or its absence) is cached per core" },
    VarDoc { name: ENV_SQL_CACHE_BYTES, default: "32MiB", help: "bytes of /sql responses cached per core (0: no cache); only reads asked for by the Ringgate-Cache header or a ringgate.cache_rules row are cached" },
    VarDoc { name: ENV_SQL_CACHE_PROJECT_BYTES, default: "= bytes / 4", help: "most bytes one project's cached responses take per core (its flood evicts only its own)" },
    VarDoc { name: ENV_SQL_CACHE_MAX_ENTRY, default: "1MiB", help: "larger /sql responses are not cached" },
    VarDoc { name: ENV_SQL_CACHE_MAX_TTL, default: "1h", help: "longest TTL a Ringgate-Cache header or cache rule may ask for" },
    VarDoc { name: ENV_SQL_CACHE_DEGRADED_TTL, default: "1s", help: "with Redis: TTL cap while the invalidation subscription is down (other instances' writes go unseen)" },
    VarDoc { name: ENV_SQL_CACHE_SETTLE, default: "1s", help: "a read of tables written through ringgate less than this ago is served but not cached (it may have run on a replica behind the write)" },
    VarDoc { name: ENV_ADMIN_TOKEN, default: "(unset)", help: "bearer token (16+ characters) for /admin, /admin/status, /admin/upstreams; off when unset" },
    VarDoc { name: ENV_REDIS_SENTINELS, default: "(unset)", help: "Sentinel addresses (host:port,...); enables Redis: API keys, worker discovery" },
    VarDoc { name: ENV_REDIS_MASTER, default: "mymaster", help: "the master name the Sentinels monitor" },
    VarDoc { name: ENV_REDIS_PASSWORD, default: "(unset)", help: "password of the Redis nodes (requirepass)" },
    VarDoc { name: ENV_REDIS_TIMEOUT, default: "1s", help: "connect and response timeout of one Redis attempt" },
    VarDoc { name: ENV_SESSION_CACHE_TTL, default: "5s", help: "how long a core keeps a looked-up API key (0s: ask Redis every time)" },
    VarDoc { name: ENV_KEY_LOGIN_SECRET, default: "(unset)", help: "secret (32+ characters) the per-role API-key login passwords derive from; with Redis set, enables API keys (apikey header, Bearer token)" },
    VarDoc { name: ENV_KEY_LOGIN_PREFIX, default: "ringgate_key_", help: "prefix of the login role of each tenant role (API-key requests log in as <prefix><role>)" },
    VarDoc { name: ENV_ROUTES, default: "(unset)", help: "reverse-proxy routes: /prefix=group,... (longest prefix wins)" },
    VarDoc { name: ENV_WORKER_UPSTREAMS, default: "(unset)", help: "static workers: group=ip:port[*weight],...;group=..." },
    VarDoc { name: ENV_DISCOVERY_INTERVAL, default: "30s", help: "rescan of worker registrations in Redis when no announcement arrives" },
    VarDoc { name: ENV_UPSTREAM_CONNECT_TIMEOUT, default: "2s", help: "connect timeout to a worker (then the next worker is tried)" },
    VarDoc { name: ENV_UPSTREAM_IDLE_TIMEOUT, default: "30s", help: "keep-alive connections to a worker idle longer than this are closed, not reused" },
    VarDoc { name: ENV_UPSTREAM_IDLE_MAX, default: "1024", help: "idle keep-alive connections kept per worker and core (more are closed)" },
    VarDoc { name: ENV_STICKY_GROUPS, default: "(unset)", help: "worker groups with cookie-based sticky sessions (group,...)" },
    VarDoc { name: ENV_RATE_LIMIT, default: "(unset)", help: "proxied requests per second per tenant (a valid API key's project, else client IP), for the whole process; over it: 429" },
    VarDoc { name: ENV_RATE_BURST, default: "= rate", help: "token-bucket size per tenant" },
    VarDoc { name: ENV_GLOBAL_RATE_LIMIT, default: "(unset)", help: "proxied requests per second per tenant across every instance sharing the Redis (needs RINGGATE_REDIS_SENTINELS); over it: 429" },
    VarDoc { name: ENV_UPSTREAM_HEALTH_INTERVAL, default: "2s", help: "active health check of every worker (0s: off)" },
    VarDoc { name: ENV_UPSTREAM_HEALTH_PATH, default: "/health", help: "path the active health check GETs (2xx/3xx = healthy)" },
    VarDoc { name: ENV_UPSTREAM_RESPONSE_TIMEOUT, default: "30s", help: "wait for a worker's response head (then 504)" },
    VarDoc {
        name: ENV_LOG,
        default: "info",
        help: "log filter, EnvFilter syntax (e.g. `info,ringgate=debug`)",
    },
    VarDoc {
        name: ENV_LOG_FORMAT,
        default: "plain",
        help: "`plain` or `json`",
    },
    VarDoc {
        name: ENV_PG_LISTEN,
        default: "off",
        help: "PostgreSQL protocol listen address (IP:port) for psql, pgbench and drivers (needs RINGGATE_CONTROL_DATABASE_URL); `off` for none",
    },
    VarDoc {
        name: ENV_PG_TLS,
        default: "allow",
        help: "TLS on the PostgreSQL listener (SSLRequest, the HTTPS certificate): `allow` or `require` (plaintext refused)",
    },
    VarDoc {
        name: ENV_PG_TLS_AUTH,
        default: "scram",
        help: "what a PostgreSQL client over TLS (not WebSocket) is asked for: `scram` (SCRAM-SHA-256, -PLUS with channel binding) or `password` (cleartext, one round trip fewer); plaintext clients always get SCRAM",
    },
];

/// Why the configuration could not be read. Each variant names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A value did not parse.
    #[error("{name}={value:?} is not valid: expected {expected}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What it held.
        value: String,
        /// The accepted form.
        expected: &'static str,
    },
    /// A value is not valid UTF-8.
    #[error("{name} is not valid UTF-8")]
    NotUnicode {
        /// The variable.
        name: String,
    },
    /// A variable that is no longer read is set.
    #[error("{name} is no longer read: {instead}")]
    Removed {
        /// The variable.
        name: &'static str,
        /// What to set instead.
        instead: &'static str,
    },
    /// A variable another one requires is missing.
    #[error("{name} must be set: {why}")]
    Missing {
        /// The missing variable.
        name: &'static str,
        /// Which setting needs it.
        why: &'static str,
    },
    /// Both a variable and its `_FILE` variant are set.
    #[error("{name} and {name}_FILE are both set: set one of them")]
    ValueAndFile {
        /// The variable (without `_FILE`).
        name: String,
    },
    /// The file a `_FILE` variable names cannot be read.
    #[error("{name}={path:?} cannot be read: {error}")]
    File {
        /// The `_FILE` variable.
        name: String,
        /// The path it holds.
        path: String,
        /// Why it cannot be read.
        error: String,
    },
}

/// A source of configuration strings: the process environment or, in tests, a map.
/// Both read `X_FILE` for every variable `X` ([`secret_file::resolve`]).
pub trait Strings {
    /// The value of `key` (or the content of the file `key_FILE` names), `None` when unset
    /// or empty.
    fn get(&self, key: &str) -> Result<Option<String>, EnvError>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Strings for Env {
    fn get(&self, key: &str) -> Result<Option<String>, EnvError> {
        secret_file::resolve(key, |key| match std::env::var(key) {
            Ok(v) if v.is_empty() => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(EnvError::NotUnicode {
                name: key.to_string(),
            }),
        })
    }
}

impl Strings for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Result<Option<String>, EnvError> {
        secret_file::resolve(key, |key| {
            Ok(HashMap::get(self, key)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string()))
        })
    }
}

/// Which io driver the cores run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    /// io_uring or fail at start.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object a line.
    Json,
}

/// The HTTPS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Limits applied to every client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request head in bytes (default 16 KiB); over it → 431.
    pub max_header_bytes: usize,
    /// Largest request body in bytes (default 1 MiB); over it → 413.
    pub max_body_bytes: usize,
    /// Time allowed for a whole request head (default 10 s).
    pub header_read_timeout: Duration,
    /// Longest pause while a body arrives (default 30 s).
    pub body_read_timeout: Duration,
    /// Longest time one write to the client may take (default 30 s); then it is closed.
    pub response_write_timeout: Duration,
    /// Idle keep-alive lifetime (default 60 s).
    pub keepalive_timeout: Duration,
    /// Open connections per core (default 16384).
    pub max_connections_per_core: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 << 10,
            max_body_bytes: 1 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            response_write_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            max_connections_per_core: 16384,
        }
    }
}

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
    /// How often the Patroni sources are read (default 200 ms).
    pub topology_interval: Duration,
    /// Control database credentials (`RINGGATE_CONTROL_DATABASE_URL`); enables project checks.
    pub control: Option<ringgate_pool::Credentials>,
    /// Project cache TTL (default 60 s).
    pub project_cache_ttl: Duration,
    /// Pool limits and timeouts.
    pub pool: ringgate_pool::Config,
}

/// Everything the gateway reads at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Plain HTTP listener; `None` when `RINGGATE_LISTEN=off`.
    pub listen: Option<SocketAddr>,
    /// HTTPS listener, when configured.
    pub tls: Option<TlsListen>,
    /// Number of cores to run (default: available parallelism).
    pub workers: usize,
    /// Pin each core's thread to a CPU (default false).
    pub pin_cores: bool,
    /// io driver (default auto).
    pub driver: DriverChoice,
    /// Per-connection limits.
    pub http: HttpLimits,
    /// Longest graceful drain (default 30 s).
    pub drain_timeout: Duration,
    /// Database pools, when `DATABASE_URL` is set.
    pub database: Option<DatabaseConfig>,
    /// `/sql` limits.
    pub sql: SqlLimits,
    /// How long a write waits for a leader (default [`DEFAULT_FAILOVER_WAIT`]).
    pub failover_wait: Duration,
    /// The `/sql` result cache.
    pub query_cache: CacheConfig,
    /// Log filter (default `info`).
    pub log_filter: String,
    /// Log format (default plain).
    pub log_format: LogFormat,
    /// Redis through Sentinel, when `RINGGATE_REDIS_SENTINELS` is set.
    pub redis: Option<RedisSettings>,
    /// The API-key logins, when `RINGGATE_KEY_LOGIN_SECRET` is set.
    pub key_login: Option<KeyLogin>,
    /// Reverse-proxy routes and workers.
    pub proxy: ProxyConfig,
    /// Bearer token for the admin endpoints (off when `None`).
    pub admin_token: Option<Secret>,
    /// The PostgreSQL protocol listener (`RINGGATE_PG_LISTEN`), off when `None`.
    pub pg: Option<PgListen>,
}

/// The PostgreSQL protocol listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgListen {
    /// Listen address.
    pub addr: SocketAddr,
    /// Refuse plaintext sessions (`RINGGATE_PG_TLS=require`; default false).
    pub require_tls: bool,
    /// Ask a TLS client (TCP, not WebSocket) for its cleartext password rather than SCRAM
    /// (`RINGGATE_PG_TLS_AUTH=password`; default false).
    pub tls_cleartext: bool,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_strings(&Env)
    }

    /// Reads every variable from `strings`, logs each bad one and returns the first error.
    pub fn from_strings(strings: &dyn Strings) -> Result<Self, EnvError> {
        let mut r = Reader {
            strings,
            errors: Vec::new(),
        };
        let defaults = HttpLimits::default();
        let listen = r.parse(ENV_LISTEN, |s| {
            if s.trim().eq_ignore_ascii_case("off") {
                Ok(None)
            } else {
                parse::addr(s).map(Some)
            }
        });
        let tls_listen = r.parse(ENV_TLS_LISTEN, parse::addr);
        let tls_cert = r.string(ENV_TLS_CERT);
        let tls_key = r.string(ENV_TLS_KEY);
        let workers = r.parse(ENV_WORKERS, parse::count);
        let pin_cores = r.parse(ENV_PIN_CORES, parse::boolean);
        let driver = r.parse(ENV_IO_DRIVER, |s| match s.trim() {
            "auto" => Ok(DriverChoice::Auto),
            "io_uring" | "iouring" | "uring" => Ok(DriverChoice::IoUring),
            "epoll" | "legacy" => Ok(DriverChoice::Epoll),
            _ => Err(parse::ParseError {
                expected: "auto, io_uring or epoll",
            }),
        });
        let http = HttpLimits {
            max_header_bytes: r
                .parse(ENV_MAX_HEADER_BYTES, parse::bytes)
                .unwrap_or(defaults.max_header_bytes),
            max_body_bytes: r
                .parse(ENV_MAX_BODY_BYTES, parse::bytes)
                .unwrap_or(defaults.max_body_bytes),
            header_read_timeout: r
                .parse(ENV_HEADER_READ_TIMEOUT, parse::duration)
                .unwrap_or(defaults.header_read_timeout),
            body_read_timeout: r
                .parse(ENV_BODY_READ_TIMEOUT, parse::duration)
                .unwrap_or(defaults.body_read_timeout),
            response_write_timeout: r
                .parse(ENV_RESPONSE_WRITE_TIMEOUT, parse::duration)
                .unwrap_or(defaults.response_write_timeout),
            keepalive_timeout: r
                .parse(ENV_KEEPALIVE_TIMEOUT, parse::duration)
                .unwrap_or(defaults.keepalive_timeout),
            max_connections_per_core: r
                .parse(ENV_MAX_CONNECTIONS_PER_CORE, parse::count)
                .unwrap_or(defaults.max_connections_per_core),
        };
        if http.max_header_bytes < 256 {
            r.invalid(
                ENV_MAX_HEADER_BYTES,
                http.max_header_bytes.to_string(),
                "at least 256 bytes",
            );
        }
        let drain_timeout = r.parse(ENV_DRAIN_TIMEOUT, parse::duration);
        let log_filter = r.string(ENV_LOG);
        let log_format = r.parse(ENV_LOG_FORMAT, |s| match s.trim() {
            "plain" | "text" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            _ => Err(parse::ParseError {
                expected: "plain or json",
            }),
        });

        let database = r.database();
        let sql_defaults = SqlLimits::default();
        let sql = SqlLimits {
            max_query_bytes: r
                .parse(ENV_SQL_MAX_QUERY_BYTES, parse::bytes)
                .unwrap_or(sql_defaults.max_query_bytes),
            max_params: r
                .parse(ENV_SQL_MAX_PARAMS, parse::count)
                .unwrap_or(sql_defaults.max_params),
            max_response_bytes: r
                .parse(ENV_SQL_MAX_RESPONSE_BYTES, parse::bytes)
                .unwrap_or(sql_defaults.max_response_bytes),
            ..sql_defaults
        };
        let failover_wait = r.parse(ENV_FAILOVER_WAIT, parse::duration);
        let query_cache = r.query_cache();
        let admin_token = r.parse(ENV_ADMIN_TOKEN, |s| {
            let t = s.trim();
            if t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(Secret(t.to_string()))
            } else {
                Err(parse::ParseError {
                    expected: "at least 16 printable characters without spaces",
                })
            }
        });
        let pg_listen = r.parse(ENV_PG_LISTEN, |s| {
            if s.trim().eq_ignore_ascii_case("off") {
                Ok(None)
            } else {
                parse::addr(s).map(Some)
            }
        });
        let pg_tls = r.parse(ENV_PG_TLS, |s| match s.trim() {
            "allow" | "prefer" => Ok(false),
            "require" => Ok(true),
            _ => Err(parse::ParseError {
                expected: "allow or require",
            }),
        });
        let pg_tls_auth = r.parse(ENV_PG_TLS_AUTH, |s| match s.trim() {
            "scram" => Ok(false),
            "password" => Ok(true),
            _ => Err(parse::ParseError {
                expected: "scram or password",
            }),
        });
        let redis = r.redis();
        let key_login = r.key_login();
        let proxy = r.proxy();
        if key_login.is_some() && redis.is_none() && r.errors.is_empty() {
            r.missing(
                ENV_REDIS_SENTINELS,
                "RINGGATE_KEY_LOGIN_SECRET is set (API keys live in Redis)",
            );
        }
        if proxy.global_rate_limit.is_some() && redis.is_none() && r.errors.is_empty() {
            r.missing(
                ENV_REDIS_SENTINELS,
                "RINGGATE_GLOBAL_RATE_LIMIT is set (the fleet's counts live in Redis)",
            );
        }
        let tls = match (tls_listen, tls_cert, tls_key) {
            (None, _, _) => None,
            (Some(addr), Some(cert), Some(key)) => Some(TlsListen {
                addr,
                cert: cert.into(),
                key: key.into(),
            }),
            (Some(_), None, _) => {
                r.missing(ENV_TLS_CERT, "RINGGATE_TLS_LISTEN is set");
                None
            }
            (Some(_), Some(_), None) => {
                r.missing(ENV_TLS_KEY, "RINGGATE_TLS_LISTEN is set");
                None
            }
        };
        let pg = pg_listen.flatten().map(|addr| PgListen {
            addr,
            require_tls: pg_tls.unwrap_or(false),
            tls_cleartext: pg_tls_auth.unwrap_or(false),
        });
        if pg.is_some_and(|p| p.require_tls) && tls.is_none() && r.errors.is_empty() {
            r.missing(
                ENV_TLS_LISTEN,
                "RINGGATE_PG_TLS=require needs the HTTPS certificate",
            );
        }
        let has_control = database.as_ref().is_some_and(|d| d.control.is_some());
        if pg.is_some() && !has_control && r.errors.is_empty() {
            r.missing(
                ENV_CONTROL_DATABASE_URL,
                "RINGGATE_PG_LISTEN is set (projects and SCRAM verifiers come from it)",
            );
        }
        let listen = listen.unwrap_or(Some(SocketAddr::from(([0, 0, 0, 0], 8080))));
        if listen.is_none() && tls.is_none() && r.errors.is_empty() {
            r.missing(ENV_TLS_LISTEN, "RINGGATE_LISTEN=off leaves no listener");
        }
        if let Some(first) = r.errors.into_iter().next() {
            return Err(first);
        }
        Ok(Config {
            listen,
            tls,
            workers: workers.unwrap_or_else(available_cores),
            pin_cores: pin_cores.unwrap_or(false),
            driver: driver.unwrap_or(DriverChoice::Auto),
            http,
            drain_timeout: drain_timeout.unwrap_or(Duration::from_secs(30)),
            database,
            sql,
            failover_wait: failover_wait.unwrap_or(DEFAULT_FAILOVER_WAIT),
            query_cache,
            log_filter: log_filter.unwrap_or_else(|| "info".to_string()),
            log_format: log_format.unwrap_or(LogFormat::Plain),
            redis,
            key_login,
            proxy,
            admin_token,
            pg,
        })
    }
}

/// The number of CPUs this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Renders `ringgate --help`: usage and one line per variable with its default.
pub fn help_text() -> String {
    let mut out = String::from(
        "ringgate — thread-per-core gateway for a multi-tenant PostgreSQL platform\n\n\
         Usage: ringgate [--help | --version]\n\n\
         Configuration comes from environment variables only. An invalid value stops the\n\
         process with exit code 64 and names the variable. Durations: 250ms, 30s, 5m, 1h.\n\
         Sizes: bytes, or 16KiB, 1MiB, 1GiB. Any variable X can instead be read from a file:\n\
         X_FILE=/run/secrets/x (trimmed content; both set is an error).\n\n\
         Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the TLS certificate.\n\n\
         Environment variables:\n",
    );
    let width = VARS.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for v in VARS {
        out.push_str(&format!(
            "  {:width$}  {} (default: {})\n",
            v.name, v.help, v.default
        ));
    }
    out
}

/// Collects values and errors while reading variables.
struct Reader<'a> {
    strings: &'a dyn Strings,
    errors: Vec<EnvError>,
}

impl Reader<'_> {
    /// `RINGGATE_ETCD_ENDPOINTS`, `RINGGATE_PATRONI_URLS`, scope and namespace.
    fn patroni(&mut self) -> Option<ringgate_discovery::watch::Sources> {
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
        let leader_probe = self
            .parse(ENV_LEADER_PROBE, parse::interval_or_off)
            .unwrap_or(Some(DEFAULT_LEADER_PROBE));
        let scope = self.string(ENV_PATRONI_SCOPE);
        let namespace = self
            .string(ENV_PATRONI_NAMESPACE)
            .unwrap_or_else(|| "/service/".into());
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
    fn pg_tls(&mut self) -> Option<ringgate_pool::tls::PgTls> {
        let mode = self.parse(ENV_PG_SSLMODE, |s| match s.trim() {
            m @ ("disable" | "require" | "verify-full") => Ok(m.to_string()),
            _ => Err(parse::ParseError {
                expected: "disable, require or verify-full",
            }),
        });
        let root = self.string(ENV_PG_SSLROOTCERT);
        match (mode.as_deref(), root) {
            (None | Some("disable"), _) => None,
            (Some("require"), _) => match ringgate_pool::tls::require() {
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
            (Some(_), None) => {
                self.missing(ENV_PG_SSLROOTCERT, "RINGGATE_PG_SSLMODE=verify-full");
                None
            }
            (Some(_), Some(root)) => {
                match ringgate_pool::tls::verify_full(std::path::Path::new(&root)) {
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
                }
            }
        }
    }

    /// `DATABASE_URL`, `READ_REPLICA_URL` and the pool limits.
    fn database(&mut self) -> Option<DatabaseConfig> {
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
        let d = ringgate_pool::Config::default();
        let pool = ringgate_pool::Config {
            max_tenant_pools: self
                .parse(ENV_MAX_TENANT_POOLS, parse::count)
                .unwrap_or(d.max_tenant_pools),
            idle_ttl: self
                .parse(ENV_POOL_IDLE_TTL, parse::duration)
                .unwrap_or(d.idle_ttl),
            wait_timeout: self
                .parse(ENV_POOL_TIMEOUT, parse::duration)
                .unwrap_or(d.wait_timeout),
            max_per_tenant: self
                .parse(ENV_POOL_MAX_PER_TENANT, parse::count)
                .unwrap_or(d.max_per_tenant),
            max_total: self
                .parse(ENV_POOL_MAX_TOTAL, parse::count)
                .unwrap_or(d.max_total),
            min_warm: self
                .parse(ENV_POOL_MIN_WARM, |s| {
                    s.trim().parse().map_err(|_| parse::ParseError {
                        expected: "a whole number",
                    })
                })
                .unwrap_or(d.min_warm),
            connect_timeout: self
                .parse(ENV_POOL_CONNECT_TIMEOUT, parse::duration)
                .unwrap_or(d.connect_timeout),
            max_replica_lag: self
                .parse(ENV_MAX_REPLICA_LAG, parse::bytes)
                .map(|b| b as u64)
                .unwrap_or(d.max_replica_lag),
            statement_timeout: self
                .parse(ENV_SQL_STATEMENT_TIMEOUT, parse::duration)
                .unwrap_or(d.statement_timeout),
            ..d
        };
        let pool = ringgate_pool::Config {
            tls: self.pg_tls(),
            ..pool
        };
        let patroni = self.patroni();
        let control = url(self, ENV_CONTROL_DATABASE_URL).map(|u| u.credentials);
        let project_cache_ttl = self
            .parse(ENV_PROJECT_CACHE_TTL, parse::duration)
            .unwrap_or(Duration::from_secs(60));
        let topology_interval = self
            .parse(ENV_TOPOLOGY_INTERVAL, parse::duration)
            .unwrap_or(Duration::from_millis(200));
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

    fn query_cache(&mut self) -> CacheConfig {
        let d = CacheConfig::default();
        let max_bytes = self
            .parse(ENV_SQL_CACHE_BYTES, parse::bytes)
            .map_or(d.max_bytes, |b| b as u64);
        CacheConfig {
            max_bytes,
            project_bytes: self
                .parse(ENV_SQL_CACHE_PROJECT_BYTES, parse::bytes)
                .map_or(max_bytes / 4, |b| b as u64),
            max_entry: self
                .parse(ENV_SQL_CACHE_MAX_ENTRY, parse::bytes)
                .map_or(d.max_entry, |b| b as u64),
            max_ttl: self
                .parse(ENV_SQL_CACHE_MAX_TTL, parse::duration)
                .unwrap_or(d.max_ttl),
            degraded_ttl: self
                .parse(ENV_SQL_CACHE_DEGRADED_TTL, parse::duration)
                .unwrap_or(d.degraded_ttl),
            settle: self
                .parse(ENV_SQL_CACHE_SETTLE, parse::duration)
                .unwrap_or(d.settle),
        }
    }

    fn string(&mut self, name: &'static str) -> Option<String> {
        match self.strings.get(name) {
            Ok(v) => v,
            Err(e) => {
                error!("{e}");
                self.errors.push(e);
                None
            }
        }
    }

    fn parse<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&str) -> Result<T, parse::ParseError>,
    ) -> Option<T> {
        let s = self.string(name)?;
        match f(&s) {
            Ok(v) => Some(v),
            Err(e) => {
                self.invalid(name, s, e.expected);
                None
            }
        }
    }

    /// Records a bad value; what is logged and kept of it is [`shown`], never a secret.
    fn invalid(&mut self, name: &'static str, value: String, expected: &'static str) {
        let value = shown(name, &value);
        error!("{name}={value:?} is not valid: expected {expected}");
        self.errors.push(EnvError::Invalid {
            name,
            value,
            expected,
        });
    }

    fn removed(&mut self, name: &'static str, instead: &'static str) {
        error!("{name} is no longer read: {instead}");
        self.errors.push(EnvError::Removed { name, instead });
    }

    fn missing(&mut self, name: &'static str, why: &'static str) {
        error!("{name} must be set: {why}");
        self.errors.push(EnvError::Missing { name, why });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&'static str, &'static str)]) -> Result<Config, EnvError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        Config::from_strings(&map)
    }

    #[test]
    fn defaults() {
        let c = read(&[]).unwrap();
        assert_eq!(c.listen, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(c.tls, None);
        assert_eq!(c.http, HttpLimits::default());
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.driver, DriverChoice::Auto);
        assert_eq!(c.workers, available_cores());
        assert!(!c.pin_cores);
        assert_eq!(c.log_format, LogFormat::Plain);
    }

    #[test]
    fn values_are_read() {
        let c = read(&[
            (ENV_LISTEN, "127.0.0.1:0"),
            (ENV_WORKERS, "3"),
            (ENV_IO_DRIVER, "epoll"),
            (ENV_MAX_BODY_BYTES, "2MiB"),
            (ENV_HEADER_READ_TIMEOUT, "250ms"),
            (ENV_DRAIN_TIMEOUT, "5s"),
            (ENV_LOG_FORMAT, "json"),
        ])
        .unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.workers, 3);
        assert_eq!(c.driver, DriverChoice::Epoll);
        assert_eq!(c.http.max_body_bytes, 2 << 20);
        assert_eq!(c.http.header_read_timeout, Duration::from_millis(250));
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn invalid_value_names_variable_and_form() {
        let err = read(&[(ENV_DRAIN_TIMEOUT, "30")]).unwrap_err();
        assert_eq!(
            err,
            EnvError::Invalid {
                name: ENV_DRAIN_TIMEOUT,
                value: "30".into(),
                expected: "a duration like 250ms, 30s, 5m or 1h"
            }
        );
        assert!(err.to_string().contains("RINGGATE_DRAIN_TIMEOUT"));
        for (name, bad) in [
            (ENV_LISTEN, "8080"),
            (ENV_WORKERS, "0"),
            (ENV_IO_DRIVER, "kqueue"),
            (ENV_MAX_HEADER_BYTES, "16"),
            (ENV_MAX_BODY_BYTES, "lots"),
            (ENV_PIN_CORES, "maybe"),
            (ENV_LOG_FORMAT, "xml"),
            (ENV_KEEPALIVE_TIMEOUT, "1d"),
            (ENV_MAX_CONNECTIONS_PER_CORE, "-1"),
        ] {
            match read(&[(name, bad)]) {
                Err(EnvError::Invalid { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}={bad}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn tls_needs_cert_and_key() {
        let err = read(&[(ENV_TLS_LISTEN, "127.0.0.1:0")]).unwrap_err();
        assert!(matches!(
            err,
            EnvError::Missing {
                name: ENV_TLS_CERT,
                ..
            }
        ));
        let err = read(&[(ENV_TLS_LISTEN, "127.0.0.1:0"), (ENV_TLS_CERT, "c.pem")]).unwrap_err();
        assert!(matches!(
            err,
            EnvError::Missing {
                name: ENV_TLS_KEY,
                ..
            }
        ));
        let c = read(&[
            (ENV_TLS_LISTEN, "127.0.0.1:0"),
            (ENV_TLS_CERT, "c.pem"),
            (ENV_TLS_KEY, "k.pem"),
        ])
        .unwrap();
        assert_eq!(c.tls.unwrap().cert, PathBuf::from("c.pem"));
    }

    #[test]
    fn database_urls_and_pool_limits() {
        assert_eq!(read(&[]).unwrap().database, None);
        let c = read(&[
            (ENV_DATABASE_URL, "postgres://app:pw@127.0.0.1:5433/db"),
            (ENV_READ_REPLICA_URL, "postgres://app:pw@127.0.0.1:5434/db"),
            (ENV_POOL_TIMEOUT, "250ms"),
            (ENV_MAX_TENANT_POOLS, "7"),
        ])
        .unwrap();
        let d = c.database.unwrap();
        assert_eq!(d.primary.unwrap().addr.port(), 5433);
        assert_eq!(d.replica.unwrap().addr.port(), 5434);
        assert_eq!(d.pool.wait_timeout, Duration::from_millis(250));
        assert_eq!(d.pool.max_tenant_pools, 7);
        let err = read(&[(ENV_DATABASE_URL, "mysql://root:hunter2@db/x")]).unwrap_err();
        assert!(matches!(
            err,
            EnvError::Invalid {
                name: ENV_DATABASE_URL,
                ..
            }
        ));
        assert!(
            !err.to_string().contains("hunter2"),
            "password not echoed: {err}"
        );
        let err = read(&[(ENV_READ_REPLICA_URL, "postgres://a@127.0.0.1/db")]).unwrap_err();
        assert!(matches!(
            err,
            EnvError::Missing {
                name: ENV_DATABASE_URL,
                ..
            }
        ));
        let err = read(&[
            (ENV_DATABASE_URL, "postgres://a@127.0.0.1/db"),
            (ENV_POOL_TIMEOUT, "5"),
        ])
        .unwrap_err();
        assert!(matches!(
            err,
            EnvError::Invalid {
                name: ENV_POOL_TIMEOUT,
                ..
            }
        ));
    }

    #[test]
    fn patroni_sources() {
        let c = read(&[
            (
                ENV_ETCD_ENDPOINTS,
                "http://127.0.2.1:2379,http://127.0.2.2:2379",
            ),
            (ENV_PATRONI_SCOPE, "ringgate"),
        ])
        .unwrap();
        let d = c
            .database
            .expect("a Patroni source enables the pools without DATABASE_URL");
        let p = d.patroni.unwrap();
        assert_eq!(
            (p.etcd.len(), p.scope.as_str(), p.namespace.as_str()),
            (2, "ringgate", "/service/")
        );
        assert_eq!(d.topology_interval, Duration::from_millis(200));
        let err = read(&[(ENV_ETCD_ENDPOINTS, "http://127.0.2.1:2379")]).unwrap_err();
        assert!(
            matches!(
                err,
                EnvError::Missing {
                    name: ENV_PATRONI_SCOPE,
                    ..
                }
            ),
            "{err}"
        );
        let err = read(&[(ENV_PATRONI_URLS, "127.0.1.1:8008")]).unwrap_err();
        assert!(
            matches!(
                err,
                EnvError::Invalid {
                    name: ENV_PATRONI_URLS,
                    ..
                }
            ),
            "{err}"
        );
        assert!(read(&[(ENV_PATRONI_URLS, "http://127.0.1.1:8008")])
            .unwrap()
            .database
            .is_some());
    }

    #[test]
    fn postgres_tls_modes() {
        let db = (ENV_DATABASE_URL, "postgres://a:b@127.0.0.1/db");
        assert_eq!(read(&[db]).unwrap().database.unwrap().pool.tls, None);
        assert!(read(&[db, (ENV_PG_SSLMODE, "require")])
            .unwrap()
            .database
            .unwrap()
            .pool
            .tls
            .is_some());
        let err = read(&[db, (ENV_PG_SSLMODE, "verify-full")]).unwrap_err();
        assert!(
            matches!(
                err,
                EnvError::Missing {
                    name: ENV_PG_SSLROOTCERT,
                    ..
                }
            ),
            "{err}"
        );
        let err = read(&[
            db,
            (ENV_PG_SSLMODE, "verify-full"),
            (ENV_PG_SSLROOTCERT, "/no/such/ca.pem"),
        ])
        .unwrap_err();
        assert!(
            matches!(
                err,
                EnvError::Invalid {
                    name: ENV_PG_SSLROOTCERT,
                    ..
                }
            ),
            "{err}"
        );
        let err = read(&[db, (ENV_PG_SSLMODE, "prefer")]).unwrap_err();
        assert!(
            matches!(
                err,
                EnvError::Invalid {
                    name: ENV_PG_SSLMODE,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn listen_off_needs_tls() {
        let err = read(&[(ENV_LISTEN, "off")]).unwrap_err();
        assert!(matches!(
            err,
            EnvError::Missing {
                name: ENV_TLS_LISTEN,
                ..
            }
        ));
    }

    #[test]
    fn global_rate_limit_needs_redis_and_a_positive_count() {
        let sentinels = (ENV_REDIS_SENTINELS, "127.0.4.1:26379");
        let limit = |v| (ENV_GLOBAL_RATE_LIMIT, v);
        assert_eq!(read(&[]).unwrap().proxy.global_rate_limit, None);
        assert_eq!(
            read(&[sentinels, limit("500")])
                .unwrap()
                .proxy
                .global_rate_limit,
            Some(500)
        );
        let err = read(&[limit("500")]).unwrap_err();
        assert!(
            matches!(
                err,
                EnvError::Missing {
                    name: ENV_REDIS_SENTINELS,
                    ..
                }
            ),
            "{err}"
        );
        for bad in ["0", "-5", "2.5", "lots"] {
            let err = read(&[sentinels, limit(bad)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    EnvError::Invalid {
                        name: ENV_GLOBAL_RATE_LIMIT,
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    /// Log lines written while `f` runs, with what it returns.
    fn logged<T>(f: impl FnOnce() -> T) -> (String, T) {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<std::sync::RwLock<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.write().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&sink.0.read().unwrap()).into_owned();
        (text, out)
    }

    #[test]
    fn secrets_never_appear_in_logs_errors_or_debug_output() {
        // Each case: the variables set, and the secret that must not be shown. Invalid
        // values first (logged and returned as errors), then valid ones (Debug of the config).
        let db = (ENV_DATABASE_URL, "postgres://app:pw-db-ok@127.0.0.1/db");
        let sentinels = (ENV_REDIS_SENTINELS, "127.0.4.1:26379");
        let invalid: &[(&[(&str, &str)], &str)] = &[
            (&[(ENV_ADMIN_TOKEN, "tok3n secret with spaces")], "tok3n"),
            (&[(ENV_ADMIN_TOKEN, "short-t0ken")], "short-t0ken"),
            (
                &[(ENV_KEY_LOGIN_SECRET, "k3y-login-too-short")],
                "k3y-login",
            ),
            (
                &[(ENV_DATABASE_URL, "mysql://root:pw-mysql@db/x")],
                "pw-mysql",
            ),
            (
                &[(ENV_DATABASE_URL, "postgres://app:pw-nohost@")],
                "pw-nohost",
            ),
            (
                &[(
                    ENV_DATABASE_URL,
                    "postgres://app:pw-p@ss@127.0.0.1/db?sslmode=bogus",
                )],
                "pw-p",
            ),
            (
                &[(
                    ENV_DATABASE_URL,
                    "postgres://127.0.0.1/db?password=pw-query&sslmode=no",
                )],
                "pw-query",
            ),
            (
                &[
                    db,
                    (
                        ENV_READ_REPLICA_URL,
                        "postgres://app:pw-replica@/db?sslmode=x",
                    ),
                ],
                "pw-replica",
            ),
            (
                &[
                    db,
                    (
                        ENV_CONTROL_DATABASE_URL,
                        "postgres://ctl:pw-control@h:notaport/db",
                    ),
                ],
                "pw-control",
            ),
            (
                &[(
                    ENV_ETCD_ENDPOINTS,
                    "http://root:pw-etcd@127.0.0.1:2379,nonsense",
                )],
                "pw-etcd",
            ),
            (
                &[(ENV_PATRONI_URLS, "http://u:pw-patroni@127.0.0.1:8008,:::")],
                "pw-patroni",
            ),
            (
                &[
                    (ENV_REDIS_PASSWORD, "pw-redis-bad"),
                    (ENV_REDIS_SENTINELS, "nonsense"),
                ],
                "pw-redis-bad",
            ),
        ];
        for (vars, secret) in invalid {
            let (log, result) = logged(|| read(vars));
            let err = result.expect_err(secret);
            assert!(
                log.contains("is not valid"),
                "{secret}: nothing logged: {log}"
            );
            for shown in [log, err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains(secret), "{secret} shown: {shown}");
            }
        }
        let valid: &[(&[(&str, &str)], &str)] = &[
            (
                &[(ENV_ADMIN_TOKEN, "adm1n-token-0123456789")],
                "adm1n-token",
            ),
            (
                &[
                    (ENV_KEY_LOGIN_SECRET, "kls-0123456789abcdef0123456789abcdef"),
                    sentinels,
                ],
                "kls-0123",
            ),
            (
                &[(ENV_REDIS_PASSWORD, "pw-redis-ok"), sentinels],
                "pw-redis-ok",
            ),
            (&[db], "pw-db-ok"),
            (
                &[
                    db,
                    (ENV_READ_REPLICA_URL, "postgres://r:pw-rep-ok@127.0.0.1/db"),
                ],
                "pw-rep-ok",
            ),
            (
                &[
                    db,
                    (
                        ENV_CONTROL_DATABASE_URL,
                        "postgres://c:pw-ctl-ok@127.0.0.1/db",
                    ),
                ],
                "pw-ctl-ok",
            ),
        ];
        for (vars, secret) in valid {
            let (log, config) = logged(|| read(vars));
            let config = config.expect(secret);
            for shown in [log, format!("{config:?}")] {
                assert!(!shown.contains(secret), "{secret} shown: {shown}");
            }
        }
    }

    #[test]
    fn shown_values_keep_what_helps_and_hide_credentials() {
        assert_eq!(shown(ENV_ADMIN_TOKEN, "x"), "<hidden>");
        assert_eq!(shown(ENV_DRAIN_TIMEOUT, "30"), "30");
        assert_eq!(
            shown(ENV_DATABASE_URL, "postgres://a:b@c@host:5432/db?password=x"),
            "postgres://<hidden>@host:5432/db?<hidden>"
        );
        assert_eq!(
            shown(ENV_ETCD_ENDPOINTS, "http://u:p@e1:2379,http://e2:2379"),
            "http://<hidden>@e1:2379,http://e2:2379"
        );
    }

    #[test]
    fn every_variable_is_documented() {
        let source = [
            include_str!("config.rs"),
            include_str!("config/upstreams.rs"),
        ]
        .concat();
        let names: Vec<&str> = VARS.iter().map(|v| v.name).collect();
        for line in source.lines().filter(|l| l.starts_with("pub const ENV_")) {
            let value = line.split('"').nth(1).expect("a string constant");
            assert!(
                names.contains(&value),
                "{value} is read but missing from VARS (--help)"
            );
        }
    }

    /// A default written in [`VARS`] (the `--help` table) that is a value, not a phrase.
    fn written_default(v: &VarDoc) -> Option<&'static str> {
        let phrase = v.default.starts_with('(') || v.default.starts_with("= ");
        (!phrase && v.default != "available cores").then_some(v.default)
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        // Every default `--help` (and README) states, set explicitly, reads as the variable
        // left unset: the table and the code cannot drift apart.
        let explicit: HashMap<&str, &str> = VARS
            .iter()
            .filter_map(|v| Some((v.name, written_default(v)?)))
            .collect();
        assert!(explicit.len() > 40, "{} written defaults", explicit.len());
        let unset = format!("{:?}", read(&[]).unwrap());
        let written = format!("{:?}", Config::from_strings(&explicit).unwrap());
        assert_eq!(unset, written);
    }

    #[test]
    fn readme_documents_every_variable_with_its_default() {
        let readme = include_str!("../../README.md");
        let rows: HashMap<&str, &str> = readme
            .lines()
            .filter_map(|l| {
                let mut cells = l.strip_prefix("| `")?.splitn(3, " | ");
                let name = cells.next()?.strip_suffix('`')?;
                Some((name, cells.next()?.trim_matches('`')))
            })
            .filter(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .collect();
        for v in VARS {
            let documented = rows
                .get(v.name)
                .unwrap_or_else(|| panic!("{} is missing from README's table", v.name));
            let default = v.default.trim_start_matches('(').trim_end_matches(')');
            assert_eq!(*documented, default, "README's default of {}", v.name);
        }
        for name in rows.keys() {
            let removed = REMOVED_AUTHENTICATOR_VARS.contains(name);
            assert!(
                removed || VARS.iter().any(|v| v.name == *name),
                "README documents {name}, which ringgate does not read"
            );
        }
    }

    #[test]
    fn help_lists_every_variable() {
        let help = help_text();
        for v in VARS {
            assert!(help.contains(v.name), "{} missing from --help", v.name);
        }
    }

    #[test]
    fn the_pg_listener_is_off_by_default_and_checked_when_on() {
        assert_eq!(read(&[]).unwrap().pg, None);
        assert_eq!(read(&[(ENV_PG_LISTEN, "off")]).unwrap().pg, None);
        let bad = read(&[(ENV_PG_LISTEN, "nowhere")]).unwrap_err();
        assert!(bad.to_string().contains(ENV_PG_LISTEN), "{bad}");
        let bad = read(&[(ENV_PG_TLS, "maybe")]).unwrap_err();
        assert!(bad.to_string().contains(ENV_PG_TLS), "{bad}");
        let bad = read(&[(ENV_PG_TLS_AUTH, "md5")]).unwrap_err();
        assert!(bad.to_string().contains(ENV_PG_TLS_AUTH), "{bad}");
        let no_control = read(&[(ENV_PG_LISTEN, "127.0.0.1:6432")]).unwrap_err();
        assert!(
            no_control.to_string().contains(ENV_CONTROL_DATABASE_URL),
            "{no_control}"
        );
        let c = read(&[
            (ENV_PG_LISTEN, "127.0.0.1:6432"),
            (ENV_DATABASE_URL, "postgres://u:p@127.0.0.1:5432/db"),
            (
                ENV_CONTROL_DATABASE_URL,
                "postgres://u:p@127.0.0.1:5432/control",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.pg,
            Some(PgListen {
                addr: "127.0.0.1:6432".parse().unwrap(),
                require_tls: false,
                tls_cleartext: false,
            })
        );
    }
}
