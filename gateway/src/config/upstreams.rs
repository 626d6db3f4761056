//! Redis (through Sentinel), API-key sessions, upstream workers and proxy routes.

use std::time::Duration;

use ringgate_redis::{workers, RedisConfig};

use super::{parse, Reader};

/// `RINGGATE_REDIS_SENTINELS`: Sentinel addresses.
pub const ENV_REDIS_SENTINELS: &str = "RINGGATE_REDIS_SENTINELS";
/// `RINGGATE_REDIS_MASTER`: the Sentinel master name.
pub const ENV_REDIS_MASTER: &str = "RINGGATE_REDIS_MASTER";
/// `RINGGATE_REDIS_PASSWORD`: password of the Redis nodes.
pub const ENV_REDIS_PASSWORD: &str = "RINGGATE_REDIS_PASSWORD";
/// `RINGGATE_REDIS_TIMEOUT`: connect/response timeout of one Redis attempt.
pub const ENV_REDIS_TIMEOUT: &str = "RINGGATE_REDIS_TIMEOUT";
/// `RINGGATE_SESSION_CACHE_TTL`: how long a core keeps a looked-up API key.
pub const ENV_SESSION_CACHE_TTL: &str = "RINGGATE_SESSION_CACHE_TTL";
/// `RINGGATE_KEY_LOGIN_SECRET`: the secret API-key login passwords are derived from;
/// enables API keys.
pub const ENV_KEY_LOGIN_SECRET: &str = "RINGGATE_KEY_LOGIN_SECRET";
/// `RINGGATE_KEY_LOGIN_PREFIX`: the prefix of the login role of each tenant role.
pub const ENV_KEY_LOGIN_PREFIX: &str = "RINGGATE_KEY_LOGIN_PREFIX";
/// Variables of the shared authenticator login, replaced by per-role key logins: a set one
/// stops the start (an operator who upgrades learns that the fence changed).
pub const REMOVED_AUTHENTICATOR_VARS: [&str; 2] = [
    "RINGGATE_AUTHENTICATOR_USER",
    "RINGGATE_AUTHENTICATOR_PASSWORD",
];
/// Default of [`ENV_KEY_LOGIN_PREFIX`]; the bootstrap's `ringgate_private.key_login_prefix`
/// must agree.
pub const DEFAULT_KEY_LOGIN_PREFIX: &str = "ringgate_key_";
/// Shortest accepted key-login secret.
const MIN_KEY_LOGIN_SECRET: usize = 32;
/// `RINGGATE_WORKER_UPSTREAMS`: static workers.
pub const ENV_WORKER_UPSTREAMS: &str = "RINGGATE_WORKER_UPSTREAMS";
/// `RINGGATE_DISCOVERY_INTERVAL`: worker rescan period.
pub const ENV_DISCOVERY_INTERVAL: &str = "RINGGATE_DISCOVERY_INTERVAL";
/// `RINGGATE_ROUTES`: path prefix → worker group.
pub const ENV_ROUTES: &str = "RINGGATE_ROUTES";
/// `RINGGATE_UPSTREAM_CONNECT_TIMEOUT`: connect timeout to a worker.
pub const ENV_UPSTREAM_CONNECT_TIMEOUT: &str = "RINGGATE_UPSTREAM_CONNECT_TIMEOUT";
/// `RINGGATE_UPSTREAM_RESPONSE_TIMEOUT`: wait for a worker's response head.
pub const ENV_UPSTREAM_RESPONSE_TIMEOUT: &str = "RINGGATE_UPSTREAM_RESPONSE_TIMEOUT";

/// `RINGGATE_UPSTREAM_IDLE_TIMEOUT`: how long a keep-alive connection to a worker may idle.
pub const ENV_UPSTREAM_IDLE_TIMEOUT: &str = "RINGGATE_UPSTREAM_IDLE_TIMEOUT";
/// Env var: most idle keep-alive connections kept per worker and core.
pub const ENV_UPSTREAM_IDLE_MAX: &str = "RINGGATE_UPSTREAM_IDLE_MAX";
/// `RINGGATE_STICKY_GROUPS`: worker groups with cookie-based sticky sessions.
pub const ENV_STICKY_GROUPS: &str = "RINGGATE_STICKY_GROUPS";
/// `RINGGATE_RATE_LIMIT`: proxied requests per second per tenant.
pub const ENV_RATE_LIMIT: &str = "RINGGATE_RATE_LIMIT";
/// `RINGGATE_RATE_BURST`: burst per tenant.
pub const ENV_RATE_BURST: &str = "RINGGATE_RATE_BURST";
/// `RINGGATE_GLOBAL_RATE_LIMIT`: proxied requests per second per tenant across every
/// instance sharing the Redis.
pub const ENV_GLOBAL_RATE_LIMIT: &str = "RINGGATE_GLOBAL_RATE_LIMIT";
/// `RINGGATE_UPSTREAM_HEALTH_INTERVAL`: active health check period.
pub const ENV_UPSTREAM_HEALTH_INTERVAL: &str = "RINGGATE_UPSTREAM_HEALTH_INTERVAL";
/// `RINGGATE_UPSTREAM_HEALTH_PATH`: active health check path.
pub const ENV_UPSTREAM_HEALTH_PATH: &str = "RINGGATE_UPSTREAM_HEALTH_PATH";

/// A per-tenant token bucket, for all cores together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Eq for RateLimit {}

/// Redis and what uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Sentinels, master name, password, timeouts.
    pub redis: RedisConfig,
    /// How long a core keeps a looked-up session ([`ENV_SESSION_CACHE_TTL`]; 0 disables the cache).
    pub session_cache_ttl: Duration,
}

/// How API-key requests log in (`RINGGATE_KEY_LOGIN_*`): each tenant role `r` has its own
/// login role `<prefix>r`, `NOINHERIT` and granted `r` alone, whose password is
/// `hex(HMAC-SHA256(secret, r))`. The control database's trigger on `ringgate.projects`
/// creates and fences these roles (compose/config/bootstrap.sql); ringgate only derives the
/// password, so no per-tenant password is stored anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyLogin {
    /// Prefix of the login roles (default [`DEFAULT_KEY_LOGIN_PREFIX`]).
    pub prefix: String,
    /// The shared secret (32+ characters).
    pub secret: String,
}

impl std::fmt::Debug for KeyLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLogin")
            .field("prefix", &self.prefix)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl KeyLogin {
    /// The login role and password for tenant role `role`, or `None` when the login's name
    /// would exceed PostgreSQL's 63 bytes.
    pub fn login_for(&self, role: &str) -> Option<(String, String)> {
        let user = format!("{}{role}", self.prefix);
        if user.len() > 63 {
            return None;
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.secret.as_bytes());
        let tag = ring::hmac::sign(&key, role.as_bytes());
        Some((user, hex::encode(tag.as_ref())))
    }
}

/// One entry of `RINGGATE_ROUTES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    /// Path prefix, starting with `/`; matched on whole segments.
    pub prefix: String,
    /// Worker group that serves it.
    pub group: String,
}

/// The reverse proxy's routes, workers and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Routes, longest prefix first.
    pub routes: Vec<ProxyRoute>,
    /// Workers from `RINGGATE_WORKER_UPSTREAMS`.
    pub static_workers: Vec<workers::Worker>,
    /// Worker rescan period ([`ENV_DISCOVERY_INTERVAL`]).
    pub discovery_interval: Duration,
    /// Connect timeout ([`ENV_UPSTREAM_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Response-head timeout ([`ENV_UPSTREAM_RESPONSE_TIMEOUT`]).
    pub response_timeout: Duration,
    /// Longest idle time of a pooled worker connection ([`ENV_UPSTREAM_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Most idle connections kept per worker and core ([`DEFAULT_IDLE_MAX`]); more are closed.
    pub idle_max: usize,
    /// Groups with sticky sessions.
    pub sticky_groups: Vec<String>,
    /// Per-tenant rate limit, when set.
    pub rate_limit: Option<RateLimit>,
    /// Per-tenant requests per second across every instance sharing the Redis, when set.
    pub global_rate_limit: Option<usize>,
    /// Active health check period ([`ENV_UPSTREAM_HEALTH_INTERVAL`]; `None` when `0s`).
    pub health_interval: Option<Duration>,
    /// Active health check path ([`ENV_UPSTREAM_HEALTH_PATH`]).
    pub health_path: String,
}

/// Default of [`ProxyConfig::idle_max`]: one idle connection per client connection a core
/// typically holds, so a busy core does not close and reopen worker connections.
pub const DEFAULT_IDLE_MAX: usize = 1024;

const SENTINELS: &str = "a comma-separated list of host:port Sentinel addresses";
const ROUTES: &str = "a comma-separated list of /prefix=group";
const WORKERS: &str = "group=ip:port[*weight][,ip:port...][;group=...]";

/// Parses `RINGGATE_ROUTES`: `/prefix=group[,/prefix=group...]`, longest prefix first.
pub fn parse_routes(s: &str) -> Result<Vec<ProxyRoute>, parse::ParseError> {
    let err = parse::ParseError { expected: ROUTES };
    let mut routes = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (prefix, group) = entry.split_once('=').ok_or(err.clone())?;
        let (prefix, group) = (prefix.trim(), group.trim());
        if !prefix.starts_with('/') || group.is_empty() {
            return Err(err);
        }
        routes.push(ProxyRoute {
            prefix: prefix.trim_end_matches('/').to_string(),
            group: group.to_string(),
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(routes)
}

impl Reader<'_> {
    /// `RINGGATE_REDIS_*` and `RINGGATE_SESSION_CACHE_TTL`; `None` without Sentinels.
    pub(super) fn redis(&mut self) -> Option<RedisSettings> {
        let sentinels = self.parse(ENV_REDIS_SENTINELS, |s| {
            let list: Vec<String> = s
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            let valid = !list.is_empty()
                && list
                    .iter()
                    .all(|a| ringgate_redis::sentinel::split_addr(a).is_some());
            if valid {
                Ok(list)
            } else {
                Err(parse::ParseError {
                    expected: SENTINELS,
                })
            }
        });
        let master = self.value(ENV_REDIS_MASTER, parse::text);
        let password = self.string(ENV_REDIS_PASSWORD);
        let timeout = self.value(ENV_REDIS_TIMEOUT, parse::duration);
        let session_cache_ttl = self.value(ENV_SESSION_CACHE_TTL, parse::duration);
        let sentinels = sentinels?;
        Some(RedisSettings {
            redis: RedisConfig {
                sentinels,
                master,
                password,
                timeout,
                failover_wait: Duration::from_secs(15),
            },
            session_cache_ttl,
        })
    }

    /// `RINGGATE_KEY_LOGIN_SECRET` / `_PREFIX`; `None` without a secret. The removed
    /// `RINGGATE_AUTHENTICATOR_*` variables are refused by name.
    pub(super) fn key_login(&mut self) -> Option<KeyLogin> {
        for name in REMOVED_AUTHENTICATOR_VARS {
            if self.string(name).is_some() {
                self.removed(
                    name,
                    "API keys log in as one role per tenant role now; set RINGGATE_KEY_LOGIN_SECRET (README, API keys)",
                );
            }
        }
        let prefix = self.value(ENV_KEY_LOGIN_PREFIX, |s| {
            let ok = !s.is_empty()
                && s.len() <= 30
                && s.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            match ok {
                true => Ok(s.to_string()),
                false => Err(parse::ParseError {
                    expected: "a lowercase identifier prefix of at most 30 characters",
                }),
            }
        });
        let secret = self.string(ENV_KEY_LOGIN_SECRET)?;
        if secret.len() < MIN_KEY_LOGIN_SECRET {
            self.invalid(
                ENV_KEY_LOGIN_SECRET,
                "<redacted>".into(),
                "a secret of at least 32 characters",
            );
            return None;
        }
        Some(KeyLogin { prefix, secret })
    }

    /// `RINGGATE_ROUTES`, `RINGGATE_WORKER_UPSTREAMS` and the upstream timeouts.
    pub(super) fn proxy(&mut self) -> ProxyConfig {
        let routes = self.parse(ENV_ROUTES, parse_routes).unwrap_or_default();
        let static_workers = self
            .parse(ENV_WORKER_UPSTREAMS, |s| {
                workers::parse_static(s).map_err(|_| parse::ParseError { expected: WORKERS })
            })
            .unwrap_or_default();
        let positive = |s: &str| match s.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
            _ => Err(parse::ParseError {
                expected: "a positive number of requests per second",
            }),
        };
        let rate = self.parse(ENV_RATE_LIMIT, positive);
        let burst = self.parse(ENV_RATE_BURST, positive);
        let rate_limit = rate.map(|per_second| RateLimit {
            per_second,
            burst: burst.unwrap_or(per_second),
        });
        let global_rate_limit = self.parse(ENV_GLOBAL_RATE_LIMIT, parse::count);
        let health_interval = self.value(ENV_UPSTREAM_HEALTH_INTERVAL, parse::duration);
        let health_path = self.value(ENV_UPSTREAM_HEALTH_PATH, |s| {
            if s.starts_with('/') && !s.contains(char::is_whitespace) {
                Ok(s.to_string())
            } else {
                Err(parse::ParseError {
                    expected: "an absolute path like /health",
                })
            }
        });
        let sticky_groups = self
            .string(ENV_STICKY_GROUPS)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        ProxyConfig {
            idle_timeout: self.value(ENV_UPSTREAM_IDLE_TIMEOUT, parse::duration),
            idle_max: self.value(ENV_UPSTREAM_IDLE_MAX, parse::count),
            sticky_groups,
            rate_limit,
            global_rate_limit,
            health_interval: (!health_interval.is_zero()).then_some(health_interval),
            health_path,
            routes,
            static_workers,
            discovery_interval: self.value(ENV_DISCOVERY_INTERVAL, parse::duration),
            connect_timeout: self.value(ENV_UPSTREAM_CONNECT_TIMEOUT, parse::duration),
            response_timeout: self.value(ENV_UPSTREAM_RESPONSE_TIMEOUT, parse::duration),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_sort_longest_prefix_first() {
        let r = parse_routes("/=web, /api/=api,/api/v2=api2").unwrap();
        let prefixes: Vec<&str> = r.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(prefixes, ["/api/v2", "/api", ""]);
        assert!(parse_routes("api=x").is_err());
        assert!(parse_routes("/api=").is_err());
        assert!(parse_routes("/api").is_err());
    }
}

#[cfg(test)]
mod env_tests {
    use std::collections::HashMap;

    use crate::config::{
        Config, EnvError, KeyLogin, DEFAULT_KEY_LOGIN_PREFIX, REMOVED_AUTHENTICATOR_VARS,
    };

    fn read(pairs: &[(&'static str, &'static str)]) -> Result<Config, EnvError> {
        Config::from_strings(&pairs.iter().copied().collect::<HashMap<_, _>>())
    }

    fn named(r: Result<Config, EnvError>) -> &'static str {
        match r {
            Err(
                EnvError::Invalid { name, .. }
                | EnvError::Missing { name, .. }
                | EnvError::Removed { name, .. },
            ) => name,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn bad_redis_and_proxy_settings_name_their_variable() {
        assert_eq!(
            named(read(&[("RINGGATE_REDIS_SENTINELS", "nohostport")])),
            "RINGGATE_REDIS_SENTINELS"
        );
        let secret = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            named(read(&[("RINGGATE_KEY_LOGIN_SECRET", secret)])),
            "RINGGATE_REDIS_SENTINELS"
        );
        let sentinels = ("RINGGATE_REDIS_SENTINELS", "127.0.0.1:26379");
        assert_eq!(
            named(read(&[sentinels, ("RINGGATE_KEY_LOGIN_SECRET", "short")])),
            "RINGGATE_KEY_LOGIN_SECRET"
        );
        assert_eq!(
            named(read(&[sentinels, ("RINGGATE_KEY_LOGIN_PREFIX", "Bad-")])),
            "RINGGATE_KEY_LOGIN_PREFIX"
        );
        for removed in REMOVED_AUTHENTICATOR_VARS {
            assert_eq!(named(read(&[sentinels, (removed, "x")])), removed);
        }
        assert_eq!(
            named(read(&[("RINGGATE_ROUTES", "api=x")])),
            "RINGGATE_ROUTES"
        );
        assert_eq!(
            named(read(&[("RINGGATE_WORKER_UPSTREAMS", "api=localhost:1")])),
            "RINGGATE_WORKER_UPSTREAMS"
        );
        assert_eq!(
            named(read(&[("RINGGATE_ADMIN_TOKEN", "short")])),
            "RINGGATE_ADMIN_TOKEN"
        );
        assert_eq!(
            named(read(&[("RINGGATE_DISCOVERY_INTERVAL", "soon")])),
            "RINGGATE_DISCOVERY_INTERVAL"
        );
        for bad in ["0", "-1", "many"] {
            assert_eq!(
                named(read(&[("RINGGATE_UPSTREAM_IDLE_MAX", bad)])),
                "RINGGATE_UPSTREAM_IDLE_MAX"
            );
        }
    }

    #[test]
    fn idle_worker_connections_default_and_override() {
        assert_eq!(
            read(&[]).unwrap().proxy.idle_max,
            crate::config::DEFAULT_IDLE_MAX
        );
        let c = read(&[("RINGGATE_UPSTREAM_IDLE_MAX", "8")]).unwrap();
        assert_eq!(c.proxy.idle_max, 8);
    }

    #[test]
    fn redis_settings_have_defaults() {
        let c = read(&[("RINGGATE_REDIS_SENTINELS", "127.0.0.1:26379")]).unwrap();
        let r = c.redis.unwrap();
        assert_eq!(r.redis.master, "mymaster");
        assert_eq!(r.session_cache_ttl, std::time::Duration::from_secs(5));
        assert!(c.key_login.is_none());
        assert_eq!(
            c.proxy.discovery_interval,
            std::time::Duration::from_secs(30)
        );
    }

    #[test]
    fn a_key_login_is_the_prefixed_role_with_a_password_derived_from_the_secret() {
        let login = KeyLogin {
            prefix: DEFAULT_KEY_LOGIN_PREFIX.into(),
            secret: "0123456789abcdef0123456789abcdef".into(),
        };
        let (user, password) = login.login_for("alpha_owner").unwrap();
        assert_eq!(user, "ringgate_key_alpha_owner");
        // The same HMAC the bootstrap's trigger computes with pgcrypto (value from
        // `select encode(hmac('alpha_owner', secret, 'sha256'), 'hex')` on the cluster).
        assert_eq!(
            password,
            "76e4079f5a43fc00526620ba70b843e7b6746b3dd1dfb948cb7029f9d404d394"
        );
        assert_ne!(login.login_for("beta_owner").unwrap().1, password);
        assert_eq!(login.login_for(&"r".repeat(51)), None);
        assert!(!format!("{login:?}").contains("0123456789abcdef"));
    }
}
