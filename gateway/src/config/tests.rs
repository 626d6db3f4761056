//! Reading the configuration: defaults, values, errors naming their variable, secrets
//! hidden, and the variable table held to the code, `--help` and README.

use std::path::PathBuf;

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
        include_str!("../config.rs"),
        include_str!("database.rs"),
        include_str!("serving.rs"),
        include_str!("sql.rs"),
        include_str!("upstreams.rs"),
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

/// A default in [`VARS`] that is a value, as it would be written in the environment.
fn written_default(v: &Var) -> Option<String> {
    match v.default {
        VarDefault::Unset | VarDefault::Derived(_) => None,
        value => Some(value.to_string()),
    }
}

#[test]
fn the_documented_defaults_are_the_defaults() {
    // Every default `--help` (and README) states, set explicitly, reads as the variable
    // left unset: the table and the code cannot drift apart.
    let written: Vec<(&str, String)> = VARS
        .iter()
        .filter_map(|v| Some((v.name, written_default(v)?)))
        .collect();
    let explicit: HashMap<&str, &str> = written.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert!(explicit.len() > 40, "{} written defaults", explicit.len());
    let unset = format!("{:?}", read(&[]).unwrap());
    let written = format!("{:?}", Config::from_strings(&explicit).unwrap());
    assert_eq!(unset, written);
}

#[test]
fn readme_documents_every_variable_with_its_default() {
    let readme = include_str!("../../../README.md");
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
        let default = v.default.to_string();
        let default = default.trim_start_matches('(').trim_end_matches(')');
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
            shared_reads: true,
        })
    );
    let off = read(&[
        (ENV_PG_LISTEN, "127.0.0.1:6432"),
        (ENV_PG_SHARED_READS, "false"),
        (ENV_DATABASE_URL, "postgres://u:p@127.0.0.1:5432/db"),
        (
            ENV_CONTROL_DATABASE_URL,
            "postgres://u:p@127.0.0.1:5432/control",
        ),
    ])
    .unwrap();
    assert!(!off.pg.unwrap().shared_reads);
    let bad = read(&[(ENV_PG_SHARED_READS, "sometimes")]).unwrap_err();
    assert!(bad.to_string().contains(ENV_PG_SHARED_READS), "{bad}");
}
