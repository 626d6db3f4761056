//! Addresses of the compose/ backend, taken from the environment `compose/cluster up` prints.
//!
//! Every helper panics when its variable is unset: a test that needs the backend must never
//! pass silently without it.

/// Reads `name` from the environment or panics with a message that says how to set it.
pub fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this test needs the compose backend. \
             Run `eval \"$(compose/cluster up)\"` first (see README.md)."
        ),
    }
}

/// Admin URL of the current leader (through HAProxy's primary port): `RINGGATE_TEST_PG_URL`.
pub fn pg_admin_url() -> String {
    required("RINGGATE_TEST_PG_URL")
}

/// Runs `sql` with psql against `url` and returns its unaligned, tuples-only output.
/// Panics with psql's message on failure.
pub fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql is installed (postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Server connections whose `application_name` starts with `prefix`, per `pg_stat_activity`.
pub fn backends_named(prefix: &str) -> usize {
    let sql = format!(
        "select count(*) from pg_stat_activity where application_name like '{}%'",
        prefix.replace('\'', "''")
    );
    psql(&pg_admin_url(), &sql).parse().expect("a count")
}

/// A name unique to this test run, for tenants and application names.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:x}", std::process::id())
}
