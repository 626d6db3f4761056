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

/// Runs `sql` with psql against `url` (unaligned, tuples only, stop on error).
fn run_psql(url: &str, sql: &str) -> std::process::Output {
    std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "2")
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql is installed (postgresql-client)")
}

/// Runs `sql` with psql against `url` and returns its output; panics with psql's message
/// on failure.
pub fn psql(url: &str, sql: &str) -> String {
    let out = run_psql(url, sql);
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

/// Runs `compose/cluster ARGS` (path from `RINGGATE_CLUSTER`) and returns its stdout.
pub fn cluster(args: &[&str]) -> String {
    let out = std::process::Command::new(required("RINGGATE_CLUSTER"))
        .args(args)
        .output()
        .expect("run compose/cluster");
    assert!(
        out.status.success(),
        "compose/cluster {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `GET url` (plain http://host:port/path) → status and body.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let addr: std::net::SocketAddr = hostport.parse().ok()?;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// `redis-cli -h host -p port [-a password] ARGS` → stdout, `None` on failure.
pub fn redis_cli(hostport: &str, password: Option<&str>, args: &[&str]) -> Option<String> {
    let (host, port) = hostport.split_once(':')?;
    let mut cmd = std::process::Command::new("redis-cli");
    cmd.args(["-h", host, "-p", port, "--no-auth-warning"]);
    if let Some(p) = password {
        cmd.args(["-a", p]);
    }
    let out = cmd.args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.starts_with("ERR") && !text.is_empty()).then_some(text)
}

/// psql that returns `None` instead of panicking (for probing during failover).
pub fn try_psql(url: &str, sql: &str) -> Option<String> {
    let out = run_psql(url, sql);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Direct superuser URL of one PostgreSQL member (`host:port`, as in `RINGGATE_PG_NODES`
/// or Patroni's member list), with the password of `RINGGATE_TEST_PG_URL`.
pub fn pg_node_url(host_port: &str) -> String {
    let admin = pg_admin_url();
    let (scheme, rest) = admin.split_once("://").expect("a postgresql:// URL");
    let (userinfo, _) = rest.rsplit_once('@').expect("user and password in the URL");
    format!("{scheme}://{userinfo}@{host_port}/postgres")
}

/// Exclusive lock for tests that mutate the cluster (kill, isolate, ...): held until the
/// returned file is dropped, across test binaries and processes. The lock file lives in
/// `compose/.run/` next to the launcher's state.
#[allow(clippy::incompatible_msrv)] // File::lock: Rust 1.89; the toolchain here is newer
pub fn chaos_lock() -> std::fs::File {
    let launcher = std::path::PathBuf::from(required("RINGGATE_CLUSTER"));
    let path = launcher
        .parent()
        .expect("compose/")
        .join(".run")
        .join("chaos.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}

/// `compose/cluster up`: heals isolated nodes, resumes paused ones, starts stopped ones and
/// waits until the whole cluster is healthy again. Returns the launcher's error output on
/// failure (no panic, so it is safe in `Drop` while a test unwinds).
pub fn repair_cluster() -> Result<(), String> {
    let out = std::process::Command::new(required("RINGGATE_CLUSTER"))
        .arg("up")
        .env_remove("RINGGATE_SYNCHRONOUS_MODE")
        .output()
        .map_err(|e| format!("run compose/cluster up: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits until both replicas have replayed everything the leader had written when this was
/// called, asking each replica itself (`pg_last_wal_replay_lsn()`): the leader's
/// `pg_stat_replication.replay_lsn` only moves with the standby's next status message,
/// which may come a whole `wal_receiver_status_interval` later. Panics after `limit`.
pub fn wait_replicas_caught_up(limit: std::time::Duration) {
    let lsn = psql(&pg_admin_url(), "select pg_current_wal_lsn()");
    let sql = format!("select pg_is_in_recovery() and pg_last_wal_replay_lsn() >= '{lsn}'");
    let nodes = required("RINGGATE_PG_NODES");
    let start = std::time::Instant::now();
    loop {
        let caught_up = nodes
            .split(',')
            .filter(|node| try_psql(&pg_node_url(node), &sql).as_deref() == Some("t"))
            .count();
        if caught_up == 2 {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "only {caught_up} of 2 replicas replayed up to {lsn} within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The Redis master's `host:port`, as the first answering Sentinel names it.
pub fn redis_master_addr() -> String {
    let master = required("RINGGATE_REDIS_MASTER");
    required("RINGGATE_REDIS_SENTINELS")
        .split(',')
        .find_map(|s| {
            redis_cli(s, None, &["SENTINEL", "get-master-addr-by-name", &master])
                .map(|o| o.replace('\n', ":"))
        })
        .expect("a Sentinel names the Redis master")
}

/// Runs a Redis command on the master (with the cluster's password); panics on failure.
pub fn redis_master(args: &[&str]) -> String {
    let password = required("RINGGATE_REDIS_PASSWORD");
    let master = redis_master_addr();
    redis_cli(&master, Some(&password), args)
        .unwrap_or_else(|| panic!("redis {args:?} on {master} failed"))
}

/// A Neon connection string for project `alpha` with tenant_alpha's owner credentials
/// (from `RINGGATE_TEST_ALPHA_URL`).
pub fn alpha_conn_string() -> String {
    let alpha = required("RINGGATE_TEST_ALPHA_URL");
    let creds = alpha
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .expect("user and password in RINGGATE_TEST_ALPHA_URL")
        .to_string();
    format!("postgresql://{creds}@alpha.ringgate.test/tenant_alpha")
}

/// A chaos test's hold on the cluster: the exclusive [`chaos_lock`], a healthy cluster to
/// start from, and a repaired one left behind (also when the test fails).
#[derive(Debug)]
pub struct Chaos {
    _lock: std::fs::File,
}

impl Chaos {
    /// Takes the lock and repairs the cluster; panics when it cannot be made healthy.
    pub fn begin() -> Self {
        let lock = chaos_lock();
        repair_cluster().unwrap_or_else(|e| panic!("the cluster is not healthy: {e}"));
        Chaos { _lock: lock }
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        let start = std::time::Instant::now();
        match repair_cluster() {
            Ok(()) => eprintln!(
                "cluster healthy again ({:.1}s)",
                start.elapsed().as_secs_f64()
            ),
            Err(e) if std::thread::panicking() => eprintln!("repairing the cluster failed: {e}"),
            Err(e) => panic!("repairing the cluster failed: {e}"),
        }
    }
}

/// Stores an API-key session on the Redis master and waits until both replicas have it.
pub fn put_session(api_key: &str, session: &serde_json::Value) {
    let key = ringgate::sessions::redis_key(api_key);
    redis_master(&["SET", &key, &session.to_string(), "EX", "600"]);
    let password = required("RINGGATE_REDIS_PASSWORD");
    assert_eq!(
        redis_cli(
            &redis_master_addr(),
            Some(&password),
            &["WAIT", "2", "2000"]
        )
        .as_deref(),
        Some("2"),
        "both Redis replicas have the session"
    );
}

/// Patroni members `compose/cluster status` shows up: running (the leader, or a replica
/// before it streams) or streaming (Patroni 3.0.4 and later say so for a replica that does).
pub fn members_up(status: &str) -> usize {
    status
        .lines()
        .filter(|l| {
            l.contains("timeline=") && (l.contains(" running ") || l.contains(" streaming "))
        })
        .count()
}

/// Runs the part of `compose/config/bootstrap.sql` from the line starting `from` up to
/// (not including) the line starting `until` (or the end) in the control database, as
/// psql does at `compose/cluster up`: the running cluster may have been bootstrapped by an
/// older version of the file. Idempotent. Runs as `role` when given (else as the admin).
pub fn apply_bootstrap_part(from: &str, until: Option<&str>, role: Option<&str>) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/config/bootstrap.sql");
    let sql = std::fs::read_to_string(&path).unwrap();
    let at = sql
        .find(from)
        .unwrap_or_else(|| panic!("bootstrap.sql has {from:?}"));
    let end = until
        .and_then(|u| sql[at..].find(u).map(|e| at + e))
        .unwrap_or(sql.len());
    let file = std::env::temp_dir().join(format!(
        "ringgate-bootstrap-{}-{at}.sql",
        std::process::id()
    ));
    let set_role = role.map(|r| format!("SET ROLE {r};\n")).unwrap_or_default();
    std::fs::write(&file, format!("{set_role}{}", &sql[at..end])).unwrap();
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &pg_admin_url()])
        .args([
            "-c",
            "\\connect ringgate_control",
            "-f",
            file.to_str().unwrap(),
        ])
        .output()
        .expect("psql is installed");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "applying bootstrap.sql from {from:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
