//! The variable table: every environment variable ringgate reads, with its default and
//! what it means, in `--help` order. It is the one place a default is written: parsing
//! takes each default from here ([`default_of`]), `ringgate --help` prints it
//! ([`help_text`]) and a test holds README's table to it.

use std::{fmt, time::Duration};

use ringgate_pool::config as pool;

use super::{parse::ParseError, *};

/// One environment variable: its name, its default and what it means.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    /// The variable's name.
    pub name: &'static str,
    /// What holds when it is unset.
    pub default: VarDefault,
    /// What it means, for `--help`.
    pub help: &'static str,
}

/// What a variable holds when it is unset. It is shown (`Display`) as it would be written
/// in the environment, and that text is what [`default_of`] parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarDefault {
    /// Nothing: the setting is off, or required by another one.
    Unset,
    /// Computed from something else; the phrase says from what.
    Derived(&'static str),
    /// A value written as in the environment: an address, a word, a path.
    Text(&'static str),
    /// A duration, shown as `250ms`, `30s` or `1h`.
    Duration(Duration),
    /// A byte size, shown as `16KiB`, `1MiB` or a plain number of bytes.
    Bytes(u64),
    /// A number.
    Count(usize),
}

impl fmt::Display for VarDefault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VarDefault::Unset => f.write_str("(unset)"),
            VarDefault::Derived(s) | VarDefault::Text(s) => f.write_str(s),
            VarDefault::Duration(d) if d.subsec_nanos() != 0 => write!(f, "{}ms", d.as_millis()),
            VarDefault::Duration(d) => match d.as_secs() {
                s if s != 0 && s % 3600 == 0 => write!(f, "{}h", s / 3600),
                s => write!(f, "{s}s"),
            },
            VarDefault::Bytes(b) => {
                let unit = [("GiB", 30), ("MiB", 20), ("KiB", 10)]
                    .into_iter()
                    .find(|(_, shift)| b != 0 && b % (1 << shift) == 0);
                match unit {
                    Some((unit, shift)) => write!(f, "{}{unit}", b >> shift),
                    None => write!(f, "{b}"),
                }
            }
            VarDefault::Count(n) => write!(f, "{n}"),
        }
    }
}

/// The default of variable `name`, parsed by `parse` from its text in [`VARS`].
///
/// # Panics
/// When `name` is not in [`VARS`] or its default is not a value `parse` accepts: the
/// table is wrong, which every test that reads an empty environment shows.
pub fn default_of<T>(name: &str, parse: impl FnOnce(&str) -> Result<T, ParseError>) -> T {
    let var = VARS
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{name} is missing from VARS"));
    let text = var.default.to_string();
    parse(&text).unwrap_or_else(|e| panic!("the default of {name}, {text:?}, is not valid: {e}"))
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

/// Every variable ringgate reads, in `--help` order.
pub const VARS: &[Var] = &[
    Var {
        name: ENV_LISTEN,
        default: VarDefault::Text("0.0.0.0:8080"),
        help: "plain HTTP listen address (IP:port), or `off` for TLS only",
    },
    Var {
        name: ENV_TLS_LISTEN,
        default: VarDefault::Unset,
        help: "HTTPS listen address; needs RINGGATE_TLS_CERT and RINGGATE_TLS_KEY",
    },
    Var {
        name: ENV_TLS_CERT,
        default: VarDefault::Unset,
        help: "PEM certificate chain file; reloaded on SIGHUP",
    },
    Var {
        name: ENV_TLS_KEY,
        default: VarDefault::Unset,
        help: "PEM private key file (PKCS#8, PKCS#1 or SEC1); reloaded on SIGHUP",
    },
    Var {
        name: ENV_WORKERS,
        default: VarDefault::Derived("available cores"),
        help: "number of cores: one thread, runtime and listener each",
    },
    Var {
        name: ENV_PIN_CORES,
        default: VarDefault::Text("false"),
        help: "pin core n's thread to the n-th CPU the process may use; for hosts running nothing else busy",
    },
    Var {
        name: ENV_IO_DRIVER,
        default: VarDefault::Text("auto"),
        help: "`auto` (io_uring, epoll when refused), `io_uring` or `epoll`",
    },
    Var {
        name: ENV_MAX_HEADER_BYTES,
        default: VarDefault::Bytes(16 << 10),
        help: "largest request head; larger gets 431",
    },
    Var {
        name: ENV_MAX_BODY_BYTES,
        default: VarDefault::Bytes(1 << 20),
        help: "largest request body; larger gets 413",
    },
    Var {
        name: ENV_HEADER_READ_TIMEOUT,
        default: VarDefault::Duration(Duration::from_secs(10)),
        help: "time to receive a whole request head (slowloris guard); then 408",
    },
    Var {
        name: ENV_BODY_READ_TIMEOUT,
        default: VarDefault::Duration(Duration::from_secs(30)),
        help: "longest pause while a request body arrives; then 408",
    },
    Var {
        name: ENV_RESPONSE_WRITE_TIMEOUT,
        default: VarDefault::Duration(Duration::from_secs(30)),
        help: "longest time one write of a response (or proxied response piece) to the client may take; then the connection is closed",
    },
    Var {
        name: ENV_KEEPALIVE_TIMEOUT,
        default: VarDefault::Duration(Duration::from_secs(60)),
        help: "idle keep-alive connections are closed after this",
    },
    Var {
        name: ENV_MAX_CONNECTIONS_PER_CORE,
        default: VarDefault::Count(16384),
        help: "open client connections per core; over it new ones get 503 and close",
    },
    Var {
        name: ENV_DRAIN_TIMEOUT,
        default: VarDefault::Duration(Duration::from_secs(30)),
        help: "longest graceful drain after SIGTERM/SIGINT",
    },
    Var {
        name: ENV_DATABASE_URL,
        default: VarDefault::Unset,
        help: "primary's URL, postgres://user:password@host:port/database; enables the database pools (fixed topology)",
    },
    Var {
        name: ENV_READ_REPLICA_URL,
        default: VarDefault::Unset,
        help: "a read replica's URL; reads go there when set (needs DATABASE_URL)",
    },
    Var {
        name: ENV_MAX_TENANT_POOLS,
        default: VarDefault::Count(pool::DEFAULT_MAX_TENANT_POOLS),
        help: "tenant pools cached per core; the coldest is evicted and its connections closed",
    },
    Var {
        name: ENV_POOL_IDLE_TTL,
        default: VarDefault::Duration(pool::DEFAULT_IDLE_TTL),
        help: "a tenant pool unused this long is closed",
    },
    Var {
        name: ENV_POOL_TIMEOUT,
        default: VarDefault::Duration(pool::DEFAULT_WAIT_TIMEOUT),
        help: "wait for a pooled connection; then 503 with Retry-After",
    },
    Var {
        name: ENV_POOL_MAX_PER_TENANT,
        default: VarDefault::Count(pool::DEFAULT_MAX_PER_TENANT),
        help: "server connections per tenant per node, for the whole process (any core may use all of them)",
    },
    Var {
        name: ENV_POOL_MAX_TOTAL,
        default: VarDefault::Count(pool::DEFAULT_MAX_TOTAL),
        help: "server connections per node, all tenants, for the whole process",
    },
    Var {
        name: ENV_POOL_MIN_WARM,
        default: VarDefault::Count(pool::DEFAULT_MIN_WARM),
        help: "idle connections a recently used pool keeps open",
    },
    Var {
        name: ENV_POOL_CONNECT_TIMEOUT,
        default: VarDefault::Duration(pool::DEFAULT_CONNECT_TIMEOUT),
        help: "TCP connect plus PostgreSQL startup timeout",
    },
    Var {
        name: ENV_MAX_REPLICA_LAG,
        default: VarDefault::Bytes(pool::DEFAULT_MAX_REPLICA_LAG),
        help: "replicas further behind (bytes of WAL) take no reads",
    },
    Var {
        name: ENV_ETCD_ENDPOINTS,
        default: VarDefault::Unset,
        help: "etcd URLs with Patroni's keys; the topology then follows the DCS leader (DATABASE_URL not needed)",
    },
    Var {
        name: ENV_PATRONI_URLS,
        default: VarDefault::Unset,
        help: "Patroni REST URLs (http://host:8008), read when etcd does not answer",
    },
    Var {
        name: ENV_PATRONI_SCOPE,
        default: VarDefault::Unset,
        help: "Patroni's scope (cluster name); required with RINGGATE_ETCD_ENDPOINTS",
    },
    Var {
        name: ENV_PATRONI_NAMESPACE,
        default: VarDefault::Text("/service/"),
        help: "Patroni's DCS namespace",
    },
    Var {
        name: ENV_LEADER_PROBE,
        default: VarDefault::Duration(DEFAULT_LEADER_PROBE),
        help: "with etcd: how often the leader's Patroni REST API is asked GET /liveness; writes are sent (and awaited) only within four intervals of its last 200, so a frozen or cut-off leader gets no new writes and those on it end outcome_unknown within a second; `off` to gate by the etcd lease alone (when ringgate cannot reach Patroni's REST API)",
    },
    Var {
        name: ENV_TOPOLOGY_INTERVAL,
        default: VarDefault::Duration(Duration::from_millis(200)),
        help: "how often the Patroni sources are read (re-read at once on a read-only leader)",
    },
    Var {
        name: ENV_PG_SSLMODE,
        default: VarDefault::Text("disable"),
        help: "TLS to PostgreSQL: `disable`, `require` (encrypt, no verification) or `verify-full`",
    },
    Var {
        name: ENV_PG_SSLROOTCERT,
        default: VarDefault::Unset,
        help: "PEM root certificates the server's must chain to (needed by verify-full)",
    },
    Var {
        name: ENV_SQL_MAX_QUERY_BYTES,
        default: VarDefault::Bytes(64 << 10),
        help: "longest /sql query text; longer gets 413",
    },
    Var {
        name: ENV_SQL_MAX_PARAMS,
        default: VarDefault::Count(1000),
        help: "most parameters per /sql query; more gets 413",
    },
    Var {
        name: ENV_SQL_MAX_RESPONSE_BYTES,
        default: VarDefault::Bytes(10 << 20),
        help: "largest /sql result; larger gets 507",
    },
    Var {
        name: ENV_SQL_STATEMENT_TIMEOUT,
        default: VarDefault::Duration(pool::DEFAULT_STATEMENT_TIMEOUT),
        help: "statement_timeout on every server connection (0s for none)",
    },
    Var {
        name: ENV_FAILOVER_WAIT,
        default: VarDefault::Duration(DEFAULT_FAILOVER_WAIT),
        help: "a write with no usable leader waits this long for a new one, then 503 (cover the backend's failover: TTL, promotion, synchronous standby)",
    },
    Var {
        name: ENV_CONTROL_DATABASE_URL,
        default: VarDefault::Unset,
        help: "control database with ringgate.projects; when set, /sql checks the project, its database and role",
    },
    Var {
        name: ENV_PROJECT_CACHE_TTL,
        default: VarDefault::Duration(Duration::from_secs(60)),
        help: "how long a project's row (or its absence) is cached per core",
    },
    Var {
        name: ENV_SQL_CACHE_BYTES,
        default: VarDefault::Bytes(32 << 20),
        help: "bytes of /sql responses cached per core (0: no cache); only reads asked for by the Ringgate-Cache header or a ringgate.cache_rules row are cached",
    },
    Var {
        name: ENV_SQL_CACHE_PROJECT_BYTES,
        default: VarDefault::Derived("= bytes / 4"),
        help: "most bytes one project's cached responses take per core (its flood evicts only its own)",
    },
    Var {
        name: ENV_SQL_CACHE_MAX_ENTRY,
        default: VarDefault::Bytes(1 << 20),
        help: "larger /sql responses are not cached",
    },
    Var {
        name: ENV_SQL_CACHE_MAX_TTL,
        default: VarDefault::Duration(Duration::from_secs(3600)),
        help: "longest TTL a Ringgate-Cache header or cache rule may ask for",
    },
    Var {
        name: ENV_SQL_CACHE_DEGRADED_TTL,
        default: VarDefault::Duration(Duration::from_secs(1)),
        help: "with Redis: TTL cap while the invalidation subscription is down (other instances' writes go unseen)",
    },
    Var {
        name: ENV_SQL_CACHE_SETTLE,
        default: VarDefault::Duration(Duration::from_secs(1)),
        help: "a read of tables written through ringgate less than this ago is served but not cached (it may have run on a replica behind the write)",
    },
    Var {
        name: ENV_ADMIN_TOKEN,
        default: VarDefault::Unset,
        help: "bearer token (16+ characters) for /admin, /admin/status, /admin/upstreams; off when unset",
    },
    Var {
        name: ENV_REDIS_SENTINELS,
        default: VarDefault::Unset,
        help: "Sentinel addresses (host:port,...); enables Redis: API keys, worker discovery",
    },
    Var {
        name: ENV_REDIS_MASTER,
        default: VarDefault::Text("mymaster"),
        help: "the master name the Sentinels monitor",
    },
    Var {
        name: ENV_REDIS_PASSWORD,
        default: VarDefault::Unset,
        help: "password of the Redis nodes (requirepass)",
    },
    Var {
        name: ENV_REDIS_TIMEOUT,
        default: VarDefault::Duration(Duration::from_secs(1)),
        help: "connect and response timeout of one Redis attempt",
    },
    Var {
        name: ENV_SESSION_CACHE_TTL,
        default: VarDefault::Duration(Duration::from_secs(5)),
        help: "how long a core keeps a looked-up API key (0s: ask Redis every time)",
    },
    Var {
        name: ENV_KEY_LOGIN_SECRET,
        default: VarDefault::Unset,
        help: "secret (32+ characters) the per-role API-key login passwords derive from; with Redis set, enables API keys (apikey header, Bearer token)",
    },
    Var {
        name: ENV_KEY_LOGIN_PREFIX,
        default: VarDefault::Text(DEFAULT_KEY_LOGIN_PREFIX),
        help: "prefix of the login role of each tenant role (API-key requests log in as <prefix><role>)",
    },
    Var {
        name: ENV_ROUTES,
        default: VarDefault::Unset,
        help: "reverse-proxy routes: /prefix=group,... (longest prefix wins)",
    },
    Var {
        name: ENV_WORKER_UPSTREAMS,
        default: VarDefault::Unset,
        help: "static workers: group=ip:port[*weight],...;group=...",
    },
    Var {
        name: ENV_DISCOVERY_INTERVAL,
        default: VarDefault::Duration(Duration::from_secs(30)),
        help: "rescan of worker registrations in Redis when no announcement arrives",
    },
    Var {
        name: ENV_UPSTREAM_CONNECT_TIMEOUT,
        default: VarDefault::Duration(Duration::from_secs(2)),
        help: "connect timeout to a worker (then the next worker is tried)",
    },
    Var {
        name: ENV_UPSTREAM_IDLE_TIMEOUT,
        default: VarDefault::Duration(Duration::from_secs(30)),
        help: "keep-alive connections to a worker idle longer than this are closed, not reused",
    },
    Var {
        name: ENV_UPSTREAM_IDLE_MAX,
        default: VarDefault::Count(DEFAULT_IDLE_MAX),
        help: "idle keep-alive connections kept per worker and core (more are closed)",
    },
    Var {
        name: ENV_STICKY_GROUPS,
        default: VarDefault::Unset,
        help: "worker groups with cookie-based sticky sessions (group,...)",
    },
    Var {
        name: ENV_RATE_LIMIT,
        default: VarDefault::Unset,
        help: "proxied requests per second per tenant (a valid API key's project, else client IP), for the whole process; over it: 429",
    },
    Var {
        name: ENV_RATE_BURST,
        default: VarDefault::Derived("= rate"),
        help: "token-bucket size per tenant",
    },
    Var {
        name: ENV_GLOBAL_RATE_LIMIT,
        default: VarDefault::Unset,
        help: "proxied requests per second per tenant across every instance sharing the Redis (needs RINGGATE_REDIS_SENTINELS); over it: 429",
    },
    Var {
        name: ENV_UPSTREAM_HEALTH_INTERVAL,
        default: VarDefault::Duration(Duration::from_secs(2)),
        help: "active health check of every worker (0s: off)",
    },
    Var {
        name: ENV_UPSTREAM_HEALTH_PATH,
        default: VarDefault::Text("/health"),
        help: "path the active health check GETs (2xx/3xx = healthy)",
    },
    Var {
        name: ENV_UPSTREAM_RESPONSE_TIMEOUT,
        default: VarDefault::Duration(Duration::from_secs(30)),
        help: "wait for a worker's response head (then 504)",
    },
    Var {
        name: ENV_LOG,
        default: VarDefault::Text("info"),
        help: "log filter, EnvFilter syntax (e.g. `info,ringgate=debug`)",
    },
    Var {
        name: ENV_LOG_FORMAT,
        default: VarDefault::Text("plain"),
        help: "`plain` or `json`",
    },
    Var {
        name: ENV_PG_LISTEN,
        default: VarDefault::Text("off"),
        help: "PostgreSQL protocol listen address (IP:port) for psql, pgbench and drivers (needs RINGGATE_CONTROL_DATABASE_URL); `off` for none",
    },
    Var {
        name: ENV_PG_TLS,
        default: VarDefault::Text("allow"),
        help: "TLS on the PostgreSQL listener (SSLRequest, the HTTPS certificate): `allow` or `require` (plaintext refused)",
    },
    Var {
        name: ENV_PG_TLS_AUTH,
        default: VarDefault::Text("scram"),
        help: "what a PostgreSQL client over TLS (not WebSocket) is asked for: `scram` (SCRAM-SHA-256, -PLUS with channel binding) or `password` (cleartext, one round trip fewer); plaintext clients always get SCRAM",
    },
    Var {
        name: ENV_PG_SHARED_READS,
        default: VarDefault::Text("true"),
        help: "in transaction mode, send autocommit reads of several clients to a busy pool's server connection in one write (each with its own Sync and answer); `false` gives each read a round trip of its own",
    },
];
