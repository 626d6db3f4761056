//! The PostgreSQL front end's pooling per project: session mode, the read/write split,
//! one connection budget with `/sql`, cancel keys across cores, per-class metrics, and
//! many clients on few server connections. Each test uses projects of its own (on tenant
//! alpha's database and role), so counts of server connections are its own.

use std::time::Duration;

use ringgate_tests::{
    backend::{alpha_conn_string, pg_admin_url, psql},
    http::{metric_total, metric_total_where, post_sql},
    pg::sleep_then_cancel,
    wire::{
        alpha_project, block_on, code, connect, connect_watching, conninfo, server_connections,
        start_pg_with_replica, Unasked,
    },
};
use serde_json::json;

/// `pg_is_in_recovery()` on the server connection that runs the statement, simple protocol.
async fn in_recovery(c: &tokio_postgres::Client, sql: &str) -> bool {
    let rows = c.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
            _ => None,
        })
        .expect("a row")
}

/// The server process of the connection running the statement (simple protocol: no
/// statement for the driver to close afterwards, in a transaction of its own).
async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    let rows = c.simple_query("select pg_backend_pid()").await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .expect("a row")
}

#[test]
#[ignore = "needs compose/cluster"]
fn session_mode_keeps_one_server_connection_for_session_features() {
    alpha_project("wire_session", "session", false);
    alpha_project("wire_txn", "transaction", false);
    let (g, _, addr) = start_pg_with_replica(&[]);
    let channel = "wire_session_channel";
    let first_pid = block_on(async {
        let (c, mut notes) = connect(addr, "wire_session").await.unwrap();
        let pid = backend_pid(&c).await;
        // Everything that transaction mode refuses (or that needs one session).
        c.batch_execute(&format!("LISTEN {channel}")).await.unwrap();
        c.batch_execute("create temp table wire_tmp (x int); insert into wire_tmp values (41)")
            .await
            .unwrap();
        c.batch_execute("PREPARE wire_p AS select x + 1 from wire_tmp")
            .await
            .unwrap();
        let row = c.query_one("EXECUTE wire_p", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        let row = c
            .query_one("select pg_try_advisory_lock(4242)", &[])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0));
        c.batch_execute(
            "begin; declare wire_c cursor with hold for select generate_series(1, 3); commit",
        )
        .await
        .unwrap();
        let rows = c.query("fetch 2 from wire_c", &[]).await.unwrap();
        assert_eq!(rows.len(), 2);
        // Another session (not through ringgate) sees the lock held and can notify.
        let held = psql(
            &ringgate_tests::backend::required("RINGGATE_TEST_ALPHA_URL"),
            "select count(*) from pg_locks where locktype = 'advisory' and objid = 4242 and granted",
        );
        assert_eq!(held, "1");
        psql(
            &ringgate_tests::backend::required("RINGGATE_TEST_ALPHA_URL"),
            &format!("notify {channel}, 'hello'"),
        );
        // Delivered (while the session is idle, at the latest with its next answer).
        assert_eq!(
            backend_pid(&c).await,
            pid,
            "one server connection throughout"
        );
        let n = tokio::time::timeout(Duration::from_secs(5), notes.recv())
            .await
            .expect("the notification arrives")
            .unwrap();
        assert_eq!((n.channel(), n.payload()), (channel, "hello"));
        pid
    });
    // Back in the pool after DISCARD ALL: the next session (on the same server connection:
    // the pool keeps it warm) finds no temp table, no lock, no prepared statement.
    block_on(async {
        let (c, _) = connect(addr, "wire_session").await.unwrap();
        let pid = backend_pid(&c).await;
        let e = c.simple_query("select * from wire_tmp").await.unwrap_err();
        assert_eq!(code(&e), "42P01", "{e}");
        let e = c.simple_query("EXECUTE wire_p").await.unwrap_err();
        assert_eq!(code(&e), "26000", "{e}");
        let row = c
            .query_one(
                "select count(*) from pg_locks where locktype = 'advisory' and objid = 4242",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 0, "the lock went with the session");
        println!("first session on backend {first_pid}, second on {pid}");
    });
    // Transaction mode refuses what needs a session.
    block_on(async {
        let (c, _) = connect(addr, "wire_txn").await.unwrap();
        for sql in [
            "LISTEN wire_x",
            "PREPARE wire_q AS select 1",
            "select pg_advisory_lock(1)",
        ] {
            let e = c.simple_query(sql).await.unwrap_err();
            assert_eq!(code(&e), "0A000", "{sql}: {e}");
        }
    });
    g.drain();
}

/// Waits (polling, up to 10 s) until server process `pid` runs a statement containing
/// `text`.
async fn running(pid: i32, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let sql = format!(
        "select count(*) from pg_stat_activity where pid = {pid} and state = 'active' and query like '%{text}%'"
    );
    while psql(&pg_admin_url(), &sql) != "1" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend {pid} never ran {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_session_mode_client_is_closed_when_its_server_connection_dies() {
    alpha_project("wire_session_lost", "session", false);
    let (g, _, addr) = start_pg_with_replica(&[]);
    block_on(async {
        let (c, _) = connect(addr, "wire_session_lost").await.unwrap();
        c.batch_execute("create temp table wire_gone (x int)")
            .await
            .unwrap();
        let pid = backend_pid(&c).await;
        // Killed while a statement runs: its outcome is unknown.
        let c = std::sync::Arc::new(c);
        let sleeping = tokio::spawn({
            let c = c.clone();
            async move { c.simple_query("select pg_sleep(30)").await }
        });
        running(pid, "pg_sleep").await;
        psql(
            &pg_admin_url(),
            &format!("select pg_terminate_backend({pid})"),
        );
        let e = sleeping.await.unwrap().unwrap_err();
        assert_eq!(code(&e), "08007", "{e}");
        // The session's state is gone: it is not silently continued on another connection.
        let e = c.simple_query("select 1").await.unwrap_err();
        assert!(e.is_closed() || code(&e) == "08006", "{e}");
    });
    g.drain();
}

/// What the server sends a client unasked next, within 5 s (the client sending nothing).
async fn next_unasked(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Unasked>) -> Unasked {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivered while the client sends nothing")
        .expect("the connection task is running")
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_session_mode_client_gets_notifications_while_idle_and_is_closed_when_its_connection_dies() {
    alpha_project("wire_session_idle", "session", false);
    let (g, _, addr) = start_pg_with_replica(&[]);
    let channel = "wire_idle_channel";
    let alpha_url = ringgate_tests::backend::required("RINGGATE_TEST_ALPHA_URL");
    block_on(async {
        let (a, mut unasked) = connect_watching(addr, "wire_session_idle").await.unwrap();
        a.batch_execute(&format!("LISTEN {channel}")).await.unwrap();
        let pid = backend_pid(&a).await;
        // A notification from a session outside ringgate, then one from another client
        // of ringgate: each reaches the idle client without a statement of its own.
        psql(&alpha_url, &format!("notify {channel}, 'from outside'"));
        assert_eq!(
            next_unasked(&mut unasked).await,
            Unasked::Notification(channel.into(), "from outside".into())
        );
        let (b, _) = connect(addr, "wire_session_idle").await.unwrap();
        b.execute("select pg_notify($1, $2)", &[&channel, &"from b"])
            .await
            .unwrap();
        assert_eq!(
            next_unasked(&mut unasked).await,
            Unasked::Notification(channel.into(), "from b".into())
        );
        // The session goes on, on its own server connection, still listening.
        assert_eq!(backend_pid(&a).await, pid);
        let row = a.query_one("select $1::int + 1", &[&41]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        psql(&alpha_url, &format!("notify {channel}, 'again'"));
        assert_eq!(
            next_unasked(&mut unasked).await,
            Unasked::Notification(channel.into(), "again".into())
        );
        // Its server connection killed while it is idle: told at once, FATAL 08006.
        psql(
            &pg_admin_url(),
            &format!("select pg_terminate_backend({pid})"),
        );
        assert_eq!(
            next_unasked(&mut unasked).await,
            Unasked::Ended(Some("08006".into()))
        );
        assert!(a.is_closed());
        // The other client is unaffected.
        assert_eq!(backend_pid(&b).await, backend_pid(&b).await);
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn read_split_runs_reads_on_a_replica_and_writes_on_the_leader() {
    alpha_project("wire_split", "transaction", true);
    alpha_project("wire_nosplit", "transaction", false);
    let alpha_url = ringgate_tests::backend::required("RINGGATE_TEST_ALPHA_URL");
    psql(
        &alpha_url,
        "create table if not exists wire_split_log (id bigserial primary key, at timestamptz default now());
         create or replace function wire_split_write() returns boolean language sql as
           $$ insert into wire_split_log default values; select pg_is_in_recovery() $$;",
    );
    let (g, http, addr) = start_pg_with_replica(&[]);
    block_on(async {
        let (c, _) = connect(addr, "wire_split").await.unwrap();
        // The function reached the replica before it is called there.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !in_recovery(
            &c,
            "select pg_is_in_recovery() and exists (select 1 from pg_proc where proname = 'wire_split_write')",
        )
        .await
        {
            assert!(std::time::Instant::now() < deadline, "the replica lags");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Reads: simple, extended, and a READ ONLY transaction, on a replica.
        assert!(in_recovery(&c, "select pg_is_in_recovery()").await);
        let row = c
            .query_one("select pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "an extended-protocol read");
        for begin in ["BEGIN READ ONLY", "START TRANSACTION READ ONLY"] {
            c.batch_execute(begin).await.unwrap();
            assert!(
                in_recovery(&c, "select pg_is_in_recovery()").await,
                "{begin}"
            );
            // The client's own read-only transaction: its 25006 is its own (not rerun).
            let e = c
                .simple_query("insert into wire_split_log default values")
                .await
                .unwrap_err();
            assert_eq!(code(&e), "25006", "{e}");
            c.batch_execute("rollback").await.unwrap();
        }
        // Writes and transactions begun read-write: the leader.
        assert!(
            !in_recovery(
                &c,
                "insert into wire_split_log default values returning pg_is_in_recovery()"
            )
            .await
        );
        c.batch_execute("begin").await.unwrap();
        assert!(!in_recovery(&c, "select pg_is_in_recovery()").await);
        c.batch_execute("commit").await.unwrap();
        // A bare BEGIN is placed by the next statement: SET TRANSACTION READ ONLY there.
        c.batch_execute("begin").await.unwrap();
        c.batch_execute("set transaction read only").await.unwrap();
        assert!(in_recovery(&c, "select pg_is_in_recovery()").await);
        let e = c
            .simple_query("insert into wire_split_log default values")
            .await
            .unwrap_err();
        assert_eq!(code(&e), "25006", "{e}");
        c.batch_execute("rollback").await.unwrap();
        c.batch_execute("start transaction").await.unwrap();
        let id = in_recovery(
            &c,
            "insert into wire_split_log default values returning pg_is_in_recovery()",
        )
        .await;
        assert!(!id, "a write after a bare BEGIN: the leader");
        c.batch_execute("commit").await.unwrap();
        // A function that writes, called in an autocommit SELECT (classified a read): the
        // replica refuses it (25006) and it reruns on the leader, unseen by the client.
        assert!(!in_recovery(&c, "select wire_split_write()").await);
        let row = c.query_one("select wire_split_write()", &[]).await.unwrap();
        assert!(
            !row.get::<_, bool>(0),
            "extended protocol: rerun on the leader"
        );
    });
    assert!(metric_total(http, "ringgate_pg_read_only_reruns_total") >= 2);
    // Split off: everything on the leader.
    block_on(async {
        let (c, _) = connect(addr, "wire_nosplit").await.unwrap();
        assert!(!in_recovery(&c, "select pg_is_in_recovery()").await);
        c.batch_execute("BEGIN READ ONLY").await.unwrap();
        assert!(!in_recovery(&c, "select pg_is_in_recovery()").await);
        c.batch_execute("commit").await.unwrap();
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_project_has_one_connection_budget_across_sql_and_the_wire_front_end() {
    // Project alpha: /sql's tenant `alpha`, the front end's pools `alpha/pg`.
    let (g, http, addr) = start_pg_with_replica(&[
        ("RINGGATE_POOL_MAX_PER_TENANT", "1"),
        ("RINGGATE_POOL_TIMEOUT", "1s"),
        ("RINGGATE_FAILOVER_WAIT", "1s"),
    ]);
    let write = json!({"query": "select txid_current()", "params": []});
    block_on(async {
        let (c, _) = connect(addr, "alpha").await.unwrap();
        c.batch_execute("begin").await.unwrap();
        backend_pid(&c).await;
        // The project's one leader connection is in the front end's transaction.
        let (status, code) = post_sql(http, &alpha_conn_string(), &write);
        assert_ne!(status, 200, "/sql got a second connection: {code}");
        c.batch_execute("commit").await.unwrap();
        // Idle now: /sql's wait makes the front end give it back.
        let (status, code) = post_sql(http, &alpha_conn_string(), &write);
        assert_eq!(status, 200, "{code}");
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn cancel_requests_reach_sessions_on_other_cores() {
    alpha_project("wire_cancel", "transaction", false);
    let (g, _, addr) = start_pg_with_replica(&[("RINGGATE_WORKERS", "16")]);
    // Each CancelRequest lands on a core SO_REUSEPORT picks: with 16 cores, three in a row
    // all on the session's own core is a 1 in 4096 chance.
    for _ in 0..3 {
        block_on(async {
            let (c, _) = connect(addr, "wire_cancel").await.unwrap();
            let (r, took) = sleep_then_cancel(&c, addr, 30).await;
            let e = r.unwrap_err();
            assert_eq!(code(&e), "57014", "{e}");
            assert!(took < Duration::from_secs(20));
        });
    }
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn cancel_requests_reach_a_session_mode_clients_statements_on_its_kept_connection() {
    alpha_project("wire_cancel_session", "session", false);
    let (g, _, addr) = start_pg_with_replica(&[("RINGGATE_WORKERS", "2")]);
    block_on(async {
        let (c, _) = connect(addr, "wire_cancel_session").await.unwrap();
        // The first statement and then the next ones, on the connection the session keeps.
        for _ in 0..3 {
            let (r, took) = sleep_then_cancel(&c, addr, 30).await;
            let e = r.unwrap_err();
            assert_eq!(code(&e), "57014", "{e}");
            assert!(took < Duration::from_secs(20));
        }
        let row = c.query_one("select 41 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42, "the session goes on");
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_cancel_request_reaches_a_session_through_another_instance_sharing_redis() {
    alpha_project("wire_cancel", "transaction", false);
    let vars = [
        "RINGGATE_REDIS_SENTINELS",
        "RINGGATE_REDIS_MASTER",
        "RINGGATE_REDIS_PASSWORD",
    ];
    let owned: Vec<(&str, String)> = vars
        .iter()
        .map(|v| (*v, ringgate_tests::backend::required(v)))
        .collect();
    let redis: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, _, addr_a) = start_pg_with_replica(&redis);
    let (b, _, addr_b) = start_pg_with_replica(&redis);
    block_on(async {
        let (c, _) = connect(addr_a, "wire_cancel").await.unwrap();
        let token = c.cancel_token();
        // Sent to instance B until the statement ends (B subscribes to the channel a
        // moment after it starts).
        let cancel = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let tcp = tokio::net::TcpStream::connect(addr_b).await.unwrap();
                token
                    .cancel_query_raw(tcp, tokio_postgres::NoTls)
                    .await
                    .unwrap();
            }
        };
        let started = std::time::Instant::now();
        let r = tokio::select! {
            r = c.simple_query("select pg_sleep(30)") => r,
            () = cancel => unreachable!(),
        };
        let e = r.unwrap_err();
        assert_eq!(code(&e), "57014", "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
    });
    a.drain();
    b.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn metrics_count_clients_server_connections_by_mode_transactions_and_waits() {
    alpha_project("wire_metrics_s", "session", false);
    let (g, http, addr) = start_pg_with_replica(&[]);
    let class = "class=\"standard\"";
    block_on(async {
        let (s, _) = connect(addr, "wire_metrics_s").await.unwrap();
        let (t, _) = connect(addr, "alpha").await.unwrap();
        s.batch_execute("select 1").await.unwrap();
        t.batch_execute("select 1").await.unwrap();
        assert_eq!(
            metric_total_where(http, "ringgate_pg_class_clients", class),
            2
        );
        // The session-mode client holds its connection between statements; the
        // transaction-mode one holds none.
        let servers = |mode: &str| {
            metric_total_where(
                http,
                "ringgate_pg_class_server_connections",
                &format!("{class},mode=\"{mode}\""),
            )
        };
        assert_eq!(servers("session"), 1);
        assert_eq!(servers("transaction"), 0);
        t.batch_execute("begin").await.unwrap();
        assert_eq!(servers("transaction"), 1);
        t.batch_execute("commit").await.unwrap();
        // Three transactions, in either mode.
        assert!(metric_total_where(http, "ringgate_pg_class_transactions_total", class) >= 3);
    });
    let metrics = ringgate_tests::http::request(http, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("ringgate_pg_class_checkout_wait_seconds_total{class=\"standard\"}"),
        "{metrics}"
    );
    // The clients left: the gauges go back to 0 (once ringgate has seen them go).
    ringgate_tests::eventually(
        "no client or server connection counted",
        Duration::from_secs(5),
        || {
            metric_total_where(http, "ringgate_pg_class_clients", class) == 0
                && metric_total_where(http, "ringgate_pg_class_server_connections", class) == 0
        },
    );
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_thousand_clients_share_ten_server_connections_with_prepared_statements() {
    alpha_project("wire_many", "transaction", false);
    let (g, _, addr) = start_pg_with_replica(&[
        ("RINGGATE_POOL_MAX_PER_TENANT", "10"),
        // The budget is process-wide: sixteen cores' pools share the ten connections.
        ("RINGGATE_WORKERS", "16"),
        ("RINGGATE_POOL_TIMEOUT", "30s"),
    ]);
    let c = conninfo(addr, "wire_many");
    // A prepared statement with a parameter, no tables (other tests own pgbench's).
    let script =
        std::env::temp_dir().join(format!("ringgate-wire-many-{}.sql", std::process::id()));
    std::fs::write(&script, "\\set n random(1, 1000000)\nselect :n::int + 1;\n").unwrap();
    let mut run = std::process::Command::new("pgbench")
        .args([
            "-n", "-M", "prepared", "-c", "1000", "-j", "4", "-t", "5", "-f",
        ])
        .arg(&script)
        .arg(&c)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Server connections, sampled while the clients run.
    let mut most = 0;
    while run.try_wait().unwrap().is_none() {
        most = most.max(server_connections("wire_many"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&script);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("number of failed transactions: 0 "),
        "{report}"
    );
    assert!(
        report.contains("number of transactions actually processed: 5000/5000"),
        "{report}"
    );
    let servers = most.max(server_connections("wire_many"));
    eprintln!(
        "1000 clients, 5000 prepared transactions: at most {servers} server connections seen; tps line: {}",
        report.lines().find(|l| l.starts_with("tps")).unwrap_or("-")
    );
    assert!(
        (1..=10).contains(&servers),
        "1000 clients on {servers} server connections (limit 10)"
    );
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_parse_an_error_skipped_is_not_taken_for_prepared_by_another_client() {
    use std::io::Write as _;

    use ringgate_tests::pg::{alpha, read_message, scram, startup_packet};

    alpha_project("wire_parse", "transaction", false);
    // One server connection: both clients use it in turn.
    let (g, _, addr) = start_pg_with_replica(&[("RINGGATE_POOL_MAX_PER_TENANT", "1")]);
    let text = "select 42 as wire_parse_skipped";
    let (user, password) = alpha();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(&startup_packet(
        196_608,
        &[
            ("user", &user),
            ("database", "tenant_alpha"),
            ("options", "endpoint=wire_parse"),
        ],
    ))
    .unwrap();
    assert_eq!(read_message(&mut s).unwrap().0, b'R');
    let binding = postgres_protocol::authentication::sasl::ChannelBinding::unsupported();
    assert_eq!(scram(&mut s, "SCRAM-SHA-256", &password, binding).0, b'R');
    while read_message(&mut s).unwrap().0 != b'Z' {}
    // One pipeline: a Parse that fails, then one the server skips (to the Sync).
    let parse = |name: &str, sql: &str| {
        let mut body = format!("{name}\0{sql}\0").into_bytes();
        body.extend_from_slice(&0i16.to_be_bytes());
        ringgate_tests::pg::frontend(b'P', &body)
    };
    let mut pipeline = parse("a", "selec 1");
    pipeline.extend(parse("b", text));
    pipeline.extend(ringgate_tests::pg::frontend(b'S', b""));
    s.write_all(&pipeline).unwrap();
    let mut codes = Vec::new();
    loop {
        let (tag, body) = read_message(&mut s).unwrap();
        match tag {
            b'E' => codes.push(ringgate_tests::pg::error_fields(&body).0),
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(codes, ["42601"]);
    // Another client prepares the skipped statement's text on the same server connection:
    // it is prepared there, not taken for already there.
    block_on(async {
        let (c, _) = connect(addr, "wire_parse").await.unwrap();
        let row = c.query_one(text, &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    });
    drop(s);
    g.drain();
}
