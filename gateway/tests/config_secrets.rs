//! No secret appears in what reading the configuration logs, returns as an error, or
//! shows in `Debug`. Its own test binary, the only test in it: tracing caches per
//! callsite whether anything listens, process-wide, and a callsite first hit by another
//! test's thread (no subscriber there) could hide this test's log lines (seen as "nothing
//! logged" about one run in ten while it lived among the config unit tests).

use std::collections::HashMap;

use ringgate::config::*;

fn read(pairs: &[(&'static str, &'static str)]) -> Result<Config, EnvError> {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    Config::from_strings(&map)
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
