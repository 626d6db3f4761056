//! The PostgreSQL wire-protocol front end (`RINGGATE_PG_LISTEN`) end to end: ringgate
//! in-process, psql, pgbench and tokio-postgres as clients, the real cluster behind it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

/// Tests in this binary run in parallel and all open project alpha's server connections
/// (`ringgate/alpha/pg/...`); the test that counts them runs alone.
static ALPHA: RwLock<()> = RwLock::new(());

/// Runs beside the other tests, not beside the one that counts connections.
fn shared() -> RwLockReadGuard<'static, ()> {
    ALPHA.read().unwrap_or_else(|e| e.into_inner())
}

/// Runs alone among this binary's tests.
fn exclusive() -> RwLockWriteGuard<'static, ()> {
    ALPHA.write().unwrap_or_else(|e| e.into_inner())
}

use ringgate_tests::{
    backend::{pg_admin_url, required},
    http::metric_total,
    pg::{alpha, conninfo, error_code, psql, sleep_then_cancel, start_pg, startup_packet},
};

/// A libpq connection string to project alpha as its owner.
fn alpha_conninfo(addr: SocketAddr) -> String {
    let (user, password) = alpha();
    conninfo(
        addr,
        &user,
        &password,
        "tenant_alpha",
        "options=endpoint=alpha",
    )
}

/// Runs pgbench with `args`; its stdout (panics with its output when it fails).
fn pgbench(conninfo: &str, args: &[&str]) -> String {
    let out = Command::new("pgbench")
        .args(args)
        .arg(conninfo)
        .env_remove("PGPASSWORD")
        .output()
        .expect("pgbench is installed");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "pgbench {args:?}: {stdout}\n{stderr}");
    stdout
}

/// A value after `label` in pgbench's report (`tps = 123.4 ...`).
fn report_value(report: &str, label: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in {report}"))
}

/// Runs `f` with a tokio-postgres client through ringgate (or the connect error).
/// [`with_client`] as project alpha's owner.
fn with_alpha<T>(
    addr: SocketAddr,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> T,
) -> Result<T, tokio_postgres::Error> {
    let (user, password) = alpha();
    with_client(addr, &user, &password, "tenant_alpha", "endpoint=alpha", f)
}

fn with_client<T>(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
    options: &str,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> T,
) -> Result<T, tokio_postgres::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut config = tokio_postgres::Config::new();
        config.user(user).password(password).dbname(db);
        if !options.is_empty() {
            config.options(options);
        }
        let (client, conn) = config.connect_raw(tcp, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(conn);
        let out = f(&client).await;
        drop(client);
        let _ = driver.await;
        Ok(out)
    })
}

/// The SQLSTATE of a connect error.
fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a server error: {e}"))
}

#[test]
#[ignore = "needs compose/cluster"]
fn psql_runs_queries_describes_tables_and_transactions() {
    let _alpha = shared();
    let (g, addr) = start_pg(&[]);
    let (user, password) = alpha();
    let c = alpha_conninfo(addr);
    let (ok, out, err) = psql(&c, &["-c", "select count(*) > 0 from items"]);
    assert!(ok, "{err}");
    assert_eq!(out, "t");
    let (ok, out, err) = psql(&c, &["-c", "\\d items"]);
    assert!(ok, "{err}");
    assert!(out.contains("price|numeric(10,2)"), "{out}");
    // A transaction spans several statements on one server connection.
    let (ok, out, err) = psql(
        &c,
        &[
            "-c",
            "begin",
            "-c",
            "create temp table wire_t(x int) on commit drop",
            "-c",
            "insert into wire_t values (1), (2)",
            "-c",
            "select sum(x) from wire_t",
            "-c",
            "commit",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "3"), "{out}");
    // COPY out and in.
    let (ok, out, err) = psql(
        &c,
        &["-c", "copy (select 1 as a union all select 2) to stdout"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "1\n2");
    let (ok, out, err) = psql(
        &c,
        &[
            "-c",
            "begin",
            "-c",
            "create temp table wire_copy(x int) on commit drop",
            "-c",
            "\\copy wire_copy from program 'seq 1 1000'",
            "-c",
            "select count(*) from wire_copy",
            "-c",
            "commit",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "1000"), "{out}");
    // The database name alone picks the project.
    let (ok, out, err) = psql(
        &conninfo(addr, &user, &password, "alpha", ""),
        &["-c", "select current_database()"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "tenant_alpha");
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn pgbench_select_only_in_simple_extended_and_prepared_modes() {
    let _alpha = shared();
    let (g, addr) = start_pg(&[]);
    let c = alpha_conninfo(addr);
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let report = pgbench(&c, &["-S", "-M", mode, "-c", "8", "-j", "2", "-T", "3"]);
        let tps = report_value(&report, "tps = ");
        assert!(tps > 50.0, "{mode}: {report}");
        assert!(
            report.contains("number of failed transactions: 0 "),
            "{mode}: {report}"
        );
        eprintln!("pgbench -S -M {mode}: {tps:.0} tps");
    }
    let http = g.plain_addr().unwrap();
    assert!(metric_total(http, "ringgate_pg_transactions_total") > 1000);
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn hundred_clients_share_few_server_connections_with_prepared_statements() {
    let _alpha = exclusive();
    let (g, addr) = start_pg(&[("RINGGATE_POOL_MAX_PER_TENANT", "5")]);
    let c = alpha_conninfo(addr);
    let count_servers = || -> usize {
        ringgate_tests::backend::psql(
            &pg_admin_url(),
            "select count(*) from pg_stat_activity where application_name like 'ringgate/alpha/pg/%'",
        )
        .parse()
        .unwrap()
    };
    let before = count_servers();
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let report = pgbench(
        &c,
        &["-S", "-M", "prepared", "-c", "100", "-j", "2", "-T", "4"],
    );
    assert!(
        report.contains("number of failed transactions: 0 "),
        "{report}"
    );
    assert!(report_value(&report, "tps = ") > 50.0, "{report}");
    // Server connections of gateways from earlier tests in this process may still be
    // open: counted before the run and left out.
    let now = count_servers();
    assert!(
        now.saturating_sub(before) <= 5,
        "100 clients on {} server connections (limit 5)",
        now.saturating_sub(before)
    );
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn wrong_password_unknown_project_and_another_projects_role_are_refused() {
    let _alpha = shared();
    let (g, addr) = start_pg(&[]);
    let (user, password) = alpha();
    let e = with_client(
        addr,
        &user,
        "wrong",
        "tenant_alpha",
        "endpoint=alpha",
        async |_| (),
    )
    .unwrap_err();
    assert_eq!(code(&e), "28P01", "{e}");
    let e = with_client(addr, &user, &password, "no_such_project", "", async |_| ()).unwrap_err();
    assert_eq!(code(&e), "3D000", "{e}");
    let beta = ringgate_pool::url::parse_pg_url(&required("RINGGATE_TEST_BETA_URL")).unwrap();
    let (bu, bp) = (beta.credentials.user, beta.credentials.password);
    let e = with_client(
        addr,
        &bu,
        &bp,
        "tenant_alpha",
        "endpoint=alpha",
        async |_| (),
    )
    .unwrap_err();
    assert_eq!(code(&e), "28000", "{e}");
    // Its own project, but another's database.
    let e = with_client(
        addr,
        &bu,
        &bp,
        "tenant_alpha",
        "endpoint=beta",
        async |_| (),
    )
    .unwrap_err();
    assert_eq!(code(&e), "3D000", "{e}");
    // And the right credentials get in.
    let n = with_client(addr, &bu, &bp, "tenant_beta", "endpoint=beta", async |c| {
        c.query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    })
    .unwrap();
    assert_eq!(n, bu);
    let http = g.plain_addr().unwrap();
    assert_eq!(metric_total(http, "ringgate_pg_refused_total"), 4);
    assert_eq!(metric_total(http, "ringgate_pg_clients_total"), 1);
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn session_features_are_refused_and_session_sets_replayed() {
    let _alpha = shared();
    let (g, addr) = start_pg(&[]);
    with_alpha(addr, async |c| {
        for sql in ["LISTEN wire_test", "select pg_advisory_lock(42)"] {
            let e = c.simple_query(sql).await.unwrap_err();
            assert_eq!(code(&e), "0A000", "{sql}: {e}");
        }
        // Extended protocol (a named statement), parameters, and a session SET that later
        // transactions (on whichever server connection) still see.
        let stmt = c.prepare("select $1::int + 1").await.unwrap();
        c.simple_query("set application_name = 'wire-replayed'")
            .await
            .unwrap();
        for i in 0..5 {
            let row = c.query_one(&stmt, &[&i]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), i + 1);
            let row = c.query_one("show application_name", &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), "wire-replayed");
        }
        // A transaction that fails is rolled back and the session goes on.
        let e = c.simple_query("begin; select 1/0").await.unwrap_err();
        assert_eq!(code(&e), "22012");
        c.simple_query("rollback").await.unwrap();
        assert_eq!(
            c.query_one("select 7", &[]).await.unwrap().get::<_, i32>(0),
            7
        );
    })
    .unwrap();
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_cancel_request_stops_the_running_statement() {
    let _alpha = shared();
    let (g, addr) = start_pg(&[("RINGGATE_WORKERS", "2")]);
    with_alpha(addr, async |c| {
        let (r, took) = sleep_then_cancel(c, addr, 20).await;
        let e = r.unwrap_err();
        assert_eq!(code(&e), "57014", "{e}");
        assert!(took < Duration::from_secs(10));
        // The session is still usable.
        assert_eq!(
            c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
            1
        );
    })
    .unwrap();
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_transaction_whose_server_died_gets_08007_and_the_client_goes_on() {
    let _alpha = shared();
    let (g, addr) = start_pg(&[("RINGGATE_POOL_MAX_PER_TENANT", "1")]);
    with_alpha(addr, async |c| {
        c.simple_query("begin").await.unwrap();
        let pid = backend_pid(c).await;
        ringgate_tests::backend::psql(
            &pg_admin_url(),
            &format!("select pg_terminate_backend({pid})"),
        );
        let e = c.simple_query("select 1").await.unwrap_err();
        assert_eq!(code(&e), "08007", "{e}");
        // The client connection is still usable, on another server connection.
        let other = backend_pid(c).await;
        assert_ne!(other, pid);
        // A pooled (idle) server connection the server ends is not handed out: the next
        // statement runs on a fresh one, without an error.
        ringgate_tests::backend::psql(
            &pg_admin_url(),
            &format!("select pg_terminate_backend({other})"),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ringgate_tests::backend::psql(
            &pg_admin_url(),
            &format!("select count(*) from pg_stat_activity where pid = {other}"),
        ) != "0"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "backend {other} still there"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let third = backend_pid(c).await;
        assert_ne!(third, other);
    })
    .unwrap();
    g.drain();
}

/// The server process of the connection running the statement (simple protocol: no
/// statement for the driver to close afterwards).
async fn backend_pid(c: &tokio_postgres::Client) -> String {
    let rows = c.simple_query("select pg_backend_pid()").await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap()
}

/// Writes `packet` on a fresh connection and reads what comes back until the server closes.
fn raw_exchange(addr: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(packet).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
#[ignore = "needs compose/cluster"]
fn oversized_and_malformed_startup_get_a_fatal_error() {
    let _alpha = shared();
    let (g, addr) = start_pg(&[]);
    // Oversized: refused from its length alone, before any of it is read.
    let mut huge = 1_000_000u32.to_be_bytes().to_vec();
    huge.extend_from_slice(&196_608u32.to_be_bytes());
    assert_eq!(error_code(&raw_exchange(addr, &huge)), "08P01");
    // No user.
    let p = startup_packet(196_608, &[("database", "tenant_alpha")]);
    assert_eq!(error_code(&raw_exchange(addr, &p)), "28000");
    // Protocol 2.
    let p = startup_packet(0x0002_0000, &[("user", "x")]);
    assert_eq!(error_code(&raw_exchange(addr, &p)), "0A000");
    // Unterminated parameters.
    let mut p = startup_packet(196_608, &[("user", "x")]);
    p.truncate(p.len() - 2);
    let len = (p.len() as u32).to_be_bytes();
    p[..4].copy_from_slice(&len);
    assert_eq!(error_code(&raw_exchange(addr, &p)), "08P01");
    // GSSENCRequest is declined; SSLRequest too when no certificate is configured.
    for code in [80_877_104u32, 80_877_103] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = 8u32.to_be_bytes().to_vec();
        req.extend_from_slice(&code.to_be_bytes());
        s.write_all(&req).unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"N");
    }
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn tls_sessions_use_the_https_certificate_and_require_refuses_plaintext() {
    let _alpha = shared();
    let ca = required("RINGGATE_TEST_PG_CA");
    let dir = Path::new(&ca).parent().unwrap();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (g, addr) = start_pg(&[
        ("RINGGATE_TLS_LISTEN", "127.0.0.1:0"),
        ("RINGGATE_TLS_CERT", cert),
        ("RINGGATE_TLS_KEY", key),
        ("RINGGATE_PG_TLS", "require"),
    ]);
    let (user, password) = alpha();
    let c = conninfo(
        addr,
        &user,
        &password,
        "tenant_alpha",
        "options=endpoint=alpha sslmode=require",
    );
    let (ok, out, err) = psql(&c, &["-c", "select 1"]);
    assert!(ok, "{err}");
    assert_eq!(out, "1");
    let plain = conninfo(
        addr,
        &user,
        &password,
        "tenant_alpha",
        "options=endpoint=alpha sslmode=disable",
    );
    let (ok, _, err) = psql(&plain, &["-c", "select 1"]);
    assert!(!ok);
    assert!(err.contains("requires TLS"), "{err}");
    g.drain();
}
