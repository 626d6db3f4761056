//! Shared round trips (`RINGGATE_PG_SHARED_READS`): autocommit reads of several clients
//! sent to a busy pool's server connection in one write. Each client gets its own answer
//! and its own errors, on one core and on sixteen; writes and transactions of other
//! clients keep their own connections and lose nothing; a cancel reaches only the read it
//! was sent for; a connection lost under a batch answers every read in it `08007` and
//! leaves each client's session usable.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use ringgate_tests::{
    backend::{pg_admin_url, psql},
    http::{metric_total, metric_total_where},
    pg::{self, RawPg},
    wire::{alpha_project, block_on, code, connect, start_pg_with_replica},
};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Polls `cond` (which may block briefly) until it holds, letting the clients' tasks run.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < end,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first column of the first row of a simple query's answer.
fn first_value(rows: &[SimpleQueryMessage]) -> Option<String> {
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// What one client's steps came to: reads answered right, errors seen where expected,
/// rows it was told were inserted.
#[derive(Default, Debug)]
struct Tally {
    reads: u64,
    errors: u64,
    inserted: u64,
}

/// One client's mix: extended-protocol reads (some slow enough that the two server
/// connections stay busy), simple-protocol reads, reads that fail (division by zero),
/// autocommit inserts and interactive transactions; each answer checked as it comes.
async fn client_steps(c: &Client, table: &str, id: i32, steps: i32) -> Tally {
    let mut t = Tally::default();
    for n in 0..steps {
        match n % 10 {
            3 => {
                let e = c
                    .query_one("select 1 / ($1::int - $1::int)", &[&n])
                    .await
                    .unwrap_err();
                assert_eq!(code(&e), "22012", "client {id} step {n}: {e}");
                t.errors += 1;
            }
            5 => {
                c.execute(&format!("insert into {table} values ($1, $2)"), &[&id, &n])
                    .await
                    .unwrap();
                t.inserted += 1;
            }
            7 => {
                let rows = c
                    .simple_query(&format!("select {id} * 1000 + {n}"))
                    .await
                    .unwrap();
                assert_eq!(first_value(&rows), Some((id * 1000 + n).to_string()));
                t.reads += 1;
            }
            9 => {
                c.batch_execute("begin").await.unwrap();
                c.execute(&format!("insert into {table} values ($1, $2)"), &[&id, &n])
                    .await
                    .unwrap();
                let row = c
                    .query_one(
                        &format!("select count(*)::int from {table} where client = $1"),
                        &[&id],
                    )
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0) as u64, t.inserted + 1);
                c.batch_execute("commit").await.unwrap();
                t.inserted += 1;
            }
            _ => {
                let row = c
                    .query_one(
                        "select $1::int * 1000 + $2::int, pg_sleep(0.002)::text",
                        &[&id, &n],
                    )
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), id * 1000 + n, "client {id}");
                t.reads += 1;
            }
        }
    }
    t
}

/// 40 clients of one project on two server connections, on `workers` cores, sharing on
/// or off: every answer is the client's own, every insert acknowledged is in the table,
/// and reads were shared exactly when on (on one core, where the clients must queue).
fn many_clients_on_two_connections(workers: &str, shared: &str) -> u64 {
    // A project and a table of its own: the three runs may go at once.
    let project = format!("wire_shared_{workers}_{shared}");
    let table = format!("{project}_log");
    alpha_project(&project, "transaction", false);
    let (g, http, addr) = start_pg_with_replica(&[
        ("RINGGATE_WORKERS", workers),
        ("RINGGATE_POOL_MAX_PER_TENANT", "2"),
        ("RINGGATE_PG_SHARED_READS", shared),
    ]);
    let (clients, steps) = (40, 30);
    let tallies = block_on(async {
        let (setup, _) = connect(addr, &project).await.unwrap();
        setup
            .batch_execute(&format!(
                "create table if not exists {table} (client int, n int); truncate {table}"
            ))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for id in 0..clients {
            let (project, table) = (project.clone(), table.clone());
            tasks.push(tokio::spawn(async move {
                let (c, _) = connect(addr, &project).await.unwrap();
                client_steps(&c, &table, id, steps).await
            }));
        }
        let mut tallies = Vec::new();
        for t in tasks {
            let done = tokio::time::timeout(Duration::from_secs(60), t).await;
            tallies.push(done.expect("a client's steps within 60 s").unwrap());
        }
        let row = setup
            .query_one(&format!("select count(*)::int from {table}"), &[])
            .await
            .unwrap();
        let acknowledged: u64 = tallies.iter().map(|t| t.inserted).sum();
        assert_eq!(
            row.get::<_, i32>(0) as u64,
            acknowledged,
            "rows in the table"
        );
        tallies
    });
    let reads: u64 = tallies.iter().map(|t| t.reads + t.errors).sum();
    assert_eq!(reads, clients as u64 * (steps as u64 * 8 / 10));
    let shared_reads = metric_total(http, "ringgate_pg_shared_reads_total");
    assert!(
        shared_reads <= reads,
        "{shared_reads} shared of {reads} reads"
    );
    assert_eq!(metric_total(http, "ringgate_pg_shared_reads_waiting"), 0);
    g.drain();
    shared_reads
}

#[test]
#[ignore = "needs compose/cluster"]
fn reads_of_many_clients_share_round_trips_and_each_gets_its_own_answer() {
    let shared = many_clients_on_two_connections("1", "true");
    assert!(shared > 0, "no read was shared");
}

#[test]
#[ignore = "needs compose/cluster"]
fn shared_reads_on_sixteen_cores_answer_each_client_its_own() {
    // The runners per core are the core's share of the tenant's two connections: one.
    many_clients_on_two_connections("16", "true");
}

#[test]
#[ignore = "needs compose/cluster"]
fn with_shared_reads_off_each_read_has_a_round_trip_of_its_own() {
    assert_eq!(many_clients_on_two_connections("1", "false"), 0);
}

#[test]
#[ignore = "needs compose/cluster"]
fn named_statements_are_shared_and_prepared_on_each_connection_that_lacks_them() {
    alpha_project("wire_shared_named", "transaction", false);
    let (g, http, addr) = start_pg_with_replica(&[
        ("RINGGATE_WORKERS", "1"),
        ("RINGGATE_POOL_MAX_PER_TENANT", "2"),
    ]);
    block_on(async {
        let mut tasks = Vec::new();
        for id in 0..40i32 {
            tasks.push(tokio::spawn(async move {
                let (c, _) = connect(addr, "wire_shared_named").await.unwrap();
                // Three texts among the clients: a batch prepares several statements on a
                // connection, and reads of one the batch prepares wait for the next.
                let text = format!(
                    "select $1::int * 1000 + $2::int + {}, pg_sleep(0.002)::text",
                    id % 3
                );
                let st = c.prepare(&text).await.unwrap();
                for n in 0..20i32 {
                    let row = c.query_one(&st, &[&id, &n]).await.unwrap();
                    assert_eq!(row.get::<_, i32>(0), id * 1000 + n + id % 3, "client {id}");
                }
            }));
        }
        for t in tasks {
            let done = tokio::time::timeout(Duration::from_secs(60), t).await;
            done.expect("a client's reads within 60 s").unwrap();
        }
    });
    assert!(metric_total(http, "ringgate_pg_shared_reads_total") > 0);
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_named_statement_whose_prepare_fails_on_a_new_connection_is_prepared_again_later() {
    alpha_project("wire_shared_reprepare", "transaction", false);
    let (g, _, addr) = start_pg_with_replica(&[
        ("RINGGATE_WORKERS", "1"),
        ("RINGGATE_POOL_MAX_PER_TENANT", "1"),
    ]);
    block_on(async {
        let (c, _) = connect(addr, "wire_shared_reprepare").await.unwrap();
        c.batch_execute("drop table if exists wire_shared_gone; create table wire_shared_gone (x int); insert into wire_shared_gone values (7)")
            .await
            .unwrap();
        let st = c.prepare("select x from wire_shared_gone").await.unwrap();
        assert_eq!(c.query_one(&st, &[]).await.unwrap().get::<_, i32>(0), 7);
        // The table goes and the server connection with it: the next connection lacks the
        // statement, and preparing it there fails (the table is gone).
        c.batch_execute("drop table wire_shared_gone")
            .await
            .unwrap();
        let pid: i32 = psql(
            &pg_admin_url(),
            "select pid from pg_stat_activity where application_name like 'ringgate/wire_shared_reprepare/pg/%'",
        )
        .trim()
        .parse()
        .unwrap();
        psql(
            &pg_admin_url(),
            &format!("select pg_terminate_backend({pid})"),
        );
        // Gone before the next statement: a pooled connection the server ended is
        // skipped at checkout, one it is still ending is not (then 08007).
        let gone = format!("select count(*) from pg_stat_activity where pid = {pid}");
        until("the backend gone", Duration::from_secs(5), || {
            psql(&pg_admin_url(), &gone).trim() == "0"
        })
        .await;
        let e = c.query_one(&st, &[]).await.unwrap_err();
        assert_eq!(code(&e), "42P01", "{e}");
        // Back again: the statement is prepared anew, not taken as already there.
        c.batch_execute(
            "create table wire_shared_gone (x int); insert into wire_shared_gone values (8)",
        )
        .await
        .unwrap();
        assert_eq!(c.query_one(&st, &[]).await.unwrap().get::<_, i32>(0), 8);
        c.batch_execute("drop table wire_shared_gone")
            .await
            .unwrap();
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_core_busy_with_shared_reads_lets_its_connections_go_to_a_core_that_waits() {
    // Two permits, two cores. On core 0 one client holds a connection in a transaction and
    // thirty keep its queue of reads full, so its runner could hand the other connection on
    // forever; core 1's pool, unused, is closed after a second (so core 0 takes both
    // permits). When core 1 then waits for a permit, that connection goes back after its
    // batch (and is closed so the permit moves) instead of to the next read.
    let (g, http, addr) = start_pg_with_replica(&[
        ("RINGGATE_WORKERS", "2"),
        ("RINGGATE_POOL_MAX_PER_TENANT", "2"),
        ("RINGGATE_POOL_IDLE_TTL", "1s"),
    ]);
    let (mut on0, mut on1) = (Vec::new(), Vec::new());
    for _ in 0..400 {
        if on0.len() >= 31 && !on1.is_empty() {
            break;
        }
        let c = RawPg::alpha(addr);
        match c.core() {
            0 if on0.len() < 31 => on0.push(c),
            1 if on1.is_empty() => on1.push(c),
            _ => {}
        }
    }
    assert!(on0.len() == 31 && on1.len() == 1, "clients on each core");
    let mut holder = on0.pop().unwrap();
    assert_eq!(pg::status(&holder.exchange(&pg::query("begin"))), b'T');
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = on0
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    let answer = c.exchange(&pg::query("select pg_sleep(0.002)"));
                    assert_eq!(pg::status(&answer), b'I');
                }
            })
        })
        .collect();
    let held = |core: &str| {
        let label = format!("core=\"{core}\"");
        metric_total_where(http, "ringgate_pool_server_connections", &label)
    };
    ringgate_testkit::eventually(
        "core 0 holds both connections",
        Duration::from_secs(10),
        || held("0") == 2 && held("1") == 0,
    );
    let started = std::time::Instant::now();
    let answer = on1[0].exchange(&pg::query("select 41 + 1"));
    let waited = started.elapsed();
    stop.store(true, SeqCst);
    holder.exchange(&pg::query("commit"));
    for b in busy {
        b.join().unwrap();
    }
    assert!(
        answer.windows(2).any(|w| w == b"42"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The pool's wait is 5 s: an answer well before it came from a permit that moved.
    assert!(waited < Duration::from_secs(2), "core 1 waited {waited:?}");
    g.drain();
}

/// The server process running `select pg_sleep(30)` for `project`, once it runs.
fn sleeping_backend(project: &str) -> Option<i32> {
    let pid = psql(
        &pg_admin_url(),
        &format!(
            "select pid from pg_stat_activity where application_name like 'ringgate/{project}/pg/%' \
             and state = 'active' and query = 'select pg_sleep(30)'"
        ),
    );
    pid.trim().parse().ok()
}

/// Sends the CancelRequest of `c`'s session to `at`.
async fn cancel(c: &Client, at: SocketAddr) {
    let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    c.cancel_token()
        .cancel_query_raw(tcp, tokio_postgres::NoTls)
        .await
        .unwrap();
}

/// Holds the project's one server connection with an open transaction (so the reads that
/// follow queue), then queues `select pg_sleep(30)` and `select 2` from two more clients,
/// in that order, and commits: the two go to the server in one write. Returns the holder
/// and the two clients with their pending answers.
async fn two_reads_in_one_batch(
    addr: SocketAddr,
    http: SocketAddr,
    project: &str,
) -> (
    Client,
    Arc<Client>,
    tokio::task::JoinHandle<Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>>,
    Arc<Client>,
    tokio::task::JoinHandle<Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>>,
) {
    let shared_before = metric_total(http, "ringgate_pg_shared_reads_total");
    // All three connect first: a session's start takes the connection for a moment.
    let (holder, _) = connect(addr, project).await.unwrap();
    let slow = Arc::new(connect(addr, project).await.unwrap().0);
    let quick = Arc::new(connect(addr, project).await.unwrap().0);
    holder.batch_execute("begin").await.unwrap();
    holder.simple_query("select 1").await.unwrap();
    let waiting = || metric_total(http, "ringgate_pg_shared_reads_waiting");
    let s = slow.clone();
    let slow_answer = tokio::spawn(async move { s.simple_query("select pg_sleep(30)").await });
    until("the slow read queued", Duration::from_secs(5), || {
        waiting() == 1
    })
    .await;
    let q = quick.clone();
    let quick_answer = tokio::spawn(async move { q.simple_query("select 2").await });
    until("the quick read queued", Duration::from_secs(5), || {
        waiting() == 2
    })
    .await;
    holder.batch_execute("commit").await.unwrap();
    until("the batch sent", Duration::from_secs(5), || {
        sleeping_backend(project).is_some()
    })
    .await;
    assert_eq!(
        metric_total(http, "ringgate_pg_shared_reads_total") - shared_before,
        2
    );
    (holder, slow, slow_answer, quick, quick_answer)
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_cancel_reaches_only_its_own_shared_read_and_a_lost_connection_answers_each_08007() {
    alpha_project("wire_shared_cancel", "transaction", false);
    let (g, http, addr) = start_pg_with_replica(&[
        ("RINGGATE_WORKERS", "1"),
        ("RINGGATE_POOL_MAX_PER_TENANT", "1"),
    ]);
    block_on(async {
        let project = "wire_shared_cancel";
        let (_holder, slow, slow_answer, quick, quick_answer) =
            two_reads_in_one_batch(addr, http, project).await;
        // The quick read waits behind the slow one on the server: its cancel finds it
        // not running and is dropped (it does not stop the slow read of another client).
        cancel(&quick, addr).await;
        tokio::time::sleep(Duration::from_millis(500)).await; // a window in which nothing may change
        assert!(!quick_answer.is_finished() && !slow_answer.is_finished());
        assert!(sleeping_backend(project).is_some(), "the slow read runs on");
        // The slow read's own cancel stops it; the quick read is answered next.
        let started = std::time::Instant::now();
        cancel(&slow, addr).await;
        let e = slow_answer.await.unwrap().unwrap_err();
        assert_eq!(code(&e), "57014", "{e}");
        let rows = quick_answer.await.unwrap().unwrap();
        assert_eq!(first_value(&rows).as_deref(), Some("2"));
        assert!(started.elapsed() < Duration::from_secs(10));

        // The server connection under a batch is terminated: both reads are answered
        // 08007 (outcome unknown), and both sessions go on on a new connection.
        let (_holder, slow, slow_answer, quick, quick_answer) =
            two_reads_in_one_batch(addr, http, project).await;
        let pid = sleeping_backend(project).unwrap();
        psql(
            &pg_admin_url(),
            &format!("select pg_terminate_backend({pid})"),
        );
        for answer in [slow_answer, quick_answer] {
            let e = answer.await.unwrap().unwrap_err();
            assert_eq!(code(&e), "08007", "{e}");
        }
        for c in [slow, quick] {
            let rows = c.simple_query("select 41 + 1").await.unwrap();
            assert_eq!(first_value(&rows).as_deref(), Some("42"));
        }
    });
    g.drain();
}
