//! Configuration from environment variables only.
//!
//! [`Config::from_strings`] reads every variable through the [`Strings`] trait, so tests pass
//! a `HashMap` and never touch the process environment. Every bad variable is logged and the
//! first is returned as an [`EnvError`] naming the variable and the expected form; `main`
//! turns that into exit code 64. [`VARS`] is the one table of every variable's name,
//! default and help: parsing takes its defaults from it and `ringgate --help` prints it.
//!
//! This module owns [`Config`], the reading (`Reader`) and its errors; each concern's
//! variables, settings and parsing live in a submodule: [`serving`] (listeners, limits,
//! logging), [`database`] (topology, pools, control database), [`sql`] (the Data API),
//! [`upstreams`] (Redis and the reverse proxy).

pub mod database;
pub mod parse;
pub mod redact;
pub mod secret_file;
pub mod serving;
pub mod sql;
pub mod upstreams;
pub mod vars;

#[cfg(test)]
mod tests;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tracing::error;

pub use self::{database::*, redact::*, serving::*, sql::*, upstreams::*, vars::*};

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

/// Everything the gateway reads at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Plain HTTP listener; `None` when `RINGGATE_LISTEN=off`.
    pub listen: Option<SocketAddr>,
    /// HTTPS listener, when configured.
    pub tls: Option<TlsListen>,
    /// Number of cores to run ([`ENV_WORKERS`]; default: available parallelism).
    pub workers: usize,
    /// Pin each core's thread to a CPU ([`ENV_PIN_CORES`]).
    pub pin_cores: bool,
    /// io driver ([`ENV_IO_DRIVER`]).
    pub driver: DriverChoice,
    /// Per-connection limits.
    pub http: HttpLimits,
    /// Longest graceful drain ([`ENV_DRAIN_TIMEOUT`]).
    pub drain_timeout: Duration,
    /// Database pools, when `DATABASE_URL` is set.
    pub database: Option<DatabaseConfig>,
    /// `/sql` limits.
    pub sql: SqlLimits,
    /// How long a write waits for a leader ([`ENV_FAILOVER_WAIT`]).
    pub failover_wait: Duration,
    /// The `/sql` result cache.
    pub query_cache: CacheConfig,
    /// Log filter ([`ENV_LOG`]).
    pub log_filter: String,
    /// Log format ([`ENV_LOG_FORMAT`]).
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
        let listen = r.value(ENV_LISTEN, serving::listen_or_off);
        let tls_listen = r.parse(ENV_TLS_LISTEN, parse::addr);
        let tls_cert = r.string(ENV_TLS_CERT);
        let tls_key = r.string(ENV_TLS_KEY);
        let workers = r.parse(ENV_WORKERS, parse::count);
        let pin_cores = r.value(ENV_PIN_CORES, parse::boolean);
        let driver = r.value(ENV_IO_DRIVER, serving::driver);
        let http = r.http_limits();
        let drain_timeout = r.value(ENV_DRAIN_TIMEOUT, parse::duration);
        let log_filter = r.value(ENV_LOG, parse::text);
        let log_format = r.value(ENV_LOG_FORMAT, serving::log_format);

        let database = r.database();
        let sql = r.sql_limits();
        let failover_wait = r.value(ENV_FAILOVER_WAIT, parse::duration);
        let query_cache = r.query_cache();
        let admin_token = r.parse(ENV_ADMIN_TOKEN, serving::admin_token);
        let pg_listen = r.value(ENV_PG_LISTEN, serving::listen_or_off);
        let pg_tls = r.value(ENV_PG_TLS, serving::pg_require_tls);
        let pg_tls_auth = r.value(ENV_PG_TLS_AUTH, serving::pg_tls_cleartext);
        let pg_shared_reads = r.value(ENV_PG_SHARED_READS, parse::boolean);
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
        let pg = pg_listen.map(|addr| PgListen {
            addr,
            require_tls: pg_tls,
            tls_cleartext: pg_tls_auth,
            shared_reads: pg_shared_reads,
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
            pin_cores,
            driver,
            http,
            drain_timeout,
            database,
            sql,
            failover_wait,
            query_cache,
            log_filter,
            log_format,
            redis,
            key_login,
            proxy,
            admin_token,
            pg,
        })
    }
}

/// Collects values and errors while reading variables.
struct Reader<'a> {
    strings: &'a dyn Strings,
    errors: Vec<EnvError>,
}

/// What `read` makes of an environment with nothing set: the settings' defaults.
fn unset<T>(read: impl FnOnce(&mut Reader<'_>) -> T) -> T {
    read(&mut Reader {
        strings: &HashMap::new(),
        errors: Vec::new(),
    })
}

impl Reader<'_> {
    /// The value of `name`, `None` when unset or unreadable (then recorded).
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

    /// The value of `name` parsed by `f`, or `None` when unset or not valid (then recorded).
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

    /// The value of `name` parsed by `f`, or its default in [`VARS`] when unset or not
    /// valid (then recorded).
    fn value<T>(
        &mut self,
        name: &'static str,
        f: impl Fn(&str) -> Result<T, parse::ParseError>,
    ) -> T {
        self.parse(name, &f).unwrap_or_else(|| default_of(name, f))
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
