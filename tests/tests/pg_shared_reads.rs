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
    time::{Duration, Instant},
};

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use ringgate_tests::{
    backend::{pg_admin_url, psql},
    http::{metric_total, metric_total_where},
    pg::{self, alpha, bind, describe_execute_sync, frontend, parse, startup_packet, RawPg},
    wire::{alpha_project, block_on, code, connect, server_connections, start_pg_with_replica},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinHandle,
};
use tokio_postgres::{types::Type, Client, SimpleQueryMessage};

/// Reads sent together with others' (counter).
const SHARED: &str = "ringgate_pg_shared_reads_total";
/// Reads queued now (gauge).
const WAITING: &str = "ringgate_pg_shared_reads_waiting";

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

#[test]
#[ignore = "needs compose/cluster"]
fn a_read_followed_by_a_message_of_no_length_is_refused_and_the_core_goes_on() {
    // A whole unnamed read, then in the same packet a "Sync" whose length (0) is shorter
    // than its own length field: the framing error is the client's alone; the core that
    // read it serves the next client.
    let (g, _, addr) = start_pg_with_replica(&[("RINGGATE_WORKERS", "1")]);
    for len in [0u32, 3] {
        let mut bad = RawPg::alpha(addr);
        let mut bytes = parse("", "select 1");
        bytes.extend(bind("", &[], 0));
        bytes.extend(frontend(b'E', b"\0\0\0\0\0"));
        bytes.push(b'S');
        bytes.extend_from_slice(&len.to_be_bytes());
        let got = bad.send_until_closed(&bytes);
        let (tag, body) = got.last().expect("an answer before the close");
        assert_eq!(*tag, b'E', "{got:?}");
        assert_eq!(pg::error_code(&frontend(b'E', body)), "08P01");
        let mut next = RawPg::alpha(addr);
        let answer = next.exchange(&pg::query("select 41 + 1"));
        assert!(answer.windows(2).any(|w| w == b"42"));
    }
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_long_read_does_not_hold_up_the_reads_queued_behind_it_while_connections_are_idle() {
    // Four cores and four connections: each core's share is one runner. A read of three
    // seconds holds core 0's; a read queued behind it has waited past 100 ms when the
    // next read comes, which then starts a runner of its own on an idle connection and
    // takes the queued read along.
    let (g, http, addr) = start_pg_with_replica(&[
        ("RINGGATE_WORKERS", "4"),
        ("RINGGATE_POOL_MAX_PER_TENANT", "4"),
    ]);
    let mut on0 = Vec::new();
    for _ in 0..400 {
        if on0.len() == 3 {
            break;
        }
        let c = RawPg::alpha(addr);
        if c.core() == 0 {
            on0.push(c);
        }
    }
    assert_eq!(on0.len(), 3, "three clients on core 0");
    let (mut long, mut queued, mut third) = (on0.remove(0), on0.remove(0), on0.remove(0));
    let started = Instant::now();
    let long = std::thread::spawn(move || long.exchange(&pg::query("select pg_sleep(3)")));
    ringgate_testkit::eventually("the long read runs", Duration::from_secs(5), || {
        running_backend("alpha", "select pg_sleep(3)").is_some()
    });
    let waiting = move || metric_total(http, "ringgate_pg_shared_reads_waiting");
    let queued = std::thread::spawn(move || {
        let answer = queued.exchange(&pg::query("select 'queued'"));
        (answer, started.elapsed())
    });
    ringgate_testkit::eventually("the read queued", Duration::from_secs(5), || waiting() == 1);
    std::thread::sleep(Duration::from_millis(150)); // past STARVED_AFTER, on purpose
    let answer = third.exchange(&pg::query("select 'third'"));
    assert!(answer.windows(5).any(|w| w == b"third"));
    let (answer, took) = queued.join().unwrap();
    assert!(answer.windows(6).any(|w| w == b"queued"));
    assert!(
        took < Duration::from_secs(2),
        "the queued read took {took:?}"
    );
    let answer = long.join().unwrap();
    assert_eq!(pg::status(&answer), b'I');
    g.drain();
}

/// A client of project beta (tenant beta's database and role) through ringgate.
async fn connect_beta(addr: SocketAddr) -> Client {
    let url = ringgate_tests::backend::required("RINGGATE_TEST_BETA_URL");
    let url = ringgate_pool::url::parse_pg_url(&url).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .user(&url.credentials.user)
        .password(&url.credentials.password)
        .dbname("tenant_beta")
        .options("endpoint=beta")
        .connect_raw(tcp, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[test]
#[ignore = "needs compose/cluster"]
fn reads_of_two_tenants_queued_on_one_core_never_share_a_batch() {
    // One core, one connection per tenant, each held by a transaction; three reads of
    // each tenant queue meanwhile. When both commit, each tenant's reads go in a batch on
    // its own connection: every client is answered as its own role, in its own database.
    alpha_project("wire_shared_tenants", "transaction", false);
    let (g, http, addr) = start_pg_with_replica(&[
        ("RINGGATE_WORKERS", "1"),
        ("RINGGATE_POOL_MAX_PER_TENANT", "1"),
    ]);
    block_on(async {
        let alpha_holder = connect(addr, "wire_shared_tenants").await.unwrap().0;
        let beta_holder = connect_beta(addr).await;
        let mut clients = Vec::new();
        for i in 0..6 {
            let c = match i % 2 {
                0 => connect(addr, "wire_shared_tenants").await.unwrap().0,
                _ => connect_beta(addr).await,
            };
            clients.push((i % 2, Arc::new(c)));
        }
        for h in [&alpha_holder, &beta_holder] {
            h.batch_execute("begin").await.unwrap();
            h.simple_query("select 1").await.unwrap();
        }
        let before = metric_total(http, "ringgate_pg_shared_reads_total");
        let mut answers = Vec::new();
        for (n, (tenant, c)) in clients.iter().enumerate() {
            let c = c.clone();
            answers.push((
                *tenant,
                tokio::spawn(async move {
                    let rows = c
                        .simple_query("select current_user || '/' || current_database()")
                        .await
                        .unwrap();
                    first_value(&rows).unwrap()
                }),
            ));
            let queued = || metric_total(http, "ringgate_pg_shared_reads_waiting");
            until("the read queued", Duration::from_secs(5), || {
                queued() == n as u64 + 1
            })
            .await;
        }
        for h in [&alpha_holder, &beta_holder] {
            h.batch_execute("commit").await.unwrap();
        }
        for (tenant, answer) in answers {
            let who = tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .expect("answered")
                .unwrap();
            let want = ["alpha_owner/tenant_alpha", "beta_owner/tenant_beta"][tenant];
            assert_eq!(who, want);
        }
        // Two batches of three: shared, but never across the tenants.
        assert_eq!(
            metric_total(http, "ringgate_pg_shared_reads_total") - before,
            6
        );
    });
    g.drain();
}

/// The server process running `select pg_sleep(30)` for `project`, once it runs.
fn sleeping_backend(project: &str) -> Option<i32> {
    running_backend(project, "select pg_sleep(30)")
}

/// The server process running `sql` for `project`, once it runs.
fn running_backend(project: &str, sql: &str) -> Option<i32> {
    let pid = psql(
        &pg_admin_url(),
        &format!(
            "select pid from pg_stat_activity where application_name like 'ringgate/{project}/pg/%' \
             and state = 'active' and query = '{}'",
            sql.replace('\'', "''")
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

// ---------------------------------------------------------------------------------------
// The boundaries of a batch: answers, slow and vanishing clients, session state, the
// read/write split, a connection lost mid-batch, a drain.
// ---------------------------------------------------------------------------------------

/// Starts ringgate on one core with one server connection for `project` (made with
/// `mode` and `split`), so that reads queue behind a transaction holding it.
fn one_connection(
    project: &str,
    mode: &str,
    split: bool,
) -> (ringgate::Gateway, SocketAddr, SocketAddr) {
    alpha_project(project, mode, split);
    start_pg_with_replica(&[
        ("RINGGATE_WORKERS", "1"),
        ("RINGGATE_POOL_MAX_PER_TENANT", "1"),
    ])
}

/// Opens a transaction on `holder` (taking the project's one server connection).
async fn hold(holder: &Client) {
    holder.batch_execute("begin").await.unwrap();
    holder.simple_query("select 1").await.unwrap();
}

/// Waits until `n` reads are queued.
async fn queued(http: SocketAddr, n: u64) {
    until(&format!("{n} reads queued"), Duration::from_secs(5), || {
        metric_total(http, WAITING) == n
    })
    .await;
}

/// Server connections held by transaction-mode sessions now.
fn servers_held(http: SocketAddr) -> u64 {
    metric_total_where(
        http,
        "ringgate_pg_class_server_connections",
        "mode=\"transaction\"",
    )
}

/// After a batch: nothing queued, no server connection held, at most the project's one
/// server connection open, and a transaction of `c` runs (the connection was given back).
async fn nothing_left(http: SocketAddr, project: &str, c: &Client) {
    until("no read queued", Duration::from_secs(5), || {
        metric_total(http, WAITING) == 0
    })
    .await;
    until("no server connection held", Duration::from_secs(5), || {
        servers_held(http) == 0
    })
    .await;
    assert!(
        server_connections(project) <= 1,
        "a server connection leaked"
    );
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        c.batch_execute("begin").await.unwrap();
        let rows = c.simple_query("select 40 + 2").await.unwrap();
        c.batch_execute("commit").await.unwrap();
        rows
    })
    .await
    .expect("a transaction gets the project's connection");
    assert_eq!(first_value(&done).as_deref(), Some("42"));
}

/// A client speaking the protocol message by message: for unnamed extended reads in text
/// or binary result format, and for clients that stop reading or leave mid-answer.
struct Raw {
    s: tokio::net::TcpStream,
}

impl Raw {
    /// Connects to `project` as alpha's owner (SCRAM), with a receive buffer of `rcvbuf`
    /// bytes when given (a client that stops reading then holds up its sender quickly).
    async fn connect(addr: SocketAddr, project: &str, rcvbuf: Option<usize>) -> Raw {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n).unwrap();
        }
        sock.connect(&addr.into()).unwrap();
        sock.set_nonblocking(true).unwrap();
        let std: std::net::TcpStream = sock.into();
        let mut raw = Raw {
            s: tokio::net::TcpStream::from_std(std).unwrap(),
        };
        let (user, password) = alpha();
        let options = format!("endpoint={project}");
        let startup = startup_packet(
            196_608,
            &[
                ("user", &user),
                ("database", "tenant_alpha"),
                ("options", &options),
            ],
        );
        raw.send(&startup).await;
        let (tag, body) = raw.message().await;
        assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut first = b"SCRAM-SHA-256\0".to_vec();
        first.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
        first.extend_from_slice(scram.message());
        raw.send(&frontend(b'p', &first)).await;
        let (tag, body) = raw.message().await;
        assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
        scram.update(&body[4..]).unwrap();
        raw.send(&frontend(b'p', scram.message())).await;
        loop {
            let (tag, body) = raw.message().await;
            assert_ne!(tag, b'E', "{}", String::from_utf8_lossy(&body));
            if tag == b'Z' {
                return raw;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next backend message (type and body).
    async fn message(&mut self) -> (u8, Vec<u8>) {
        let read = async {
            let mut head = [0u8; 5];
            self.s.read_exact(&mut head).await?;
            let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len - 4];
            self.s.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>((head[0], body))
        };
        tokio::time::timeout(Duration::from_secs(15), read)
            .await
            .expect("a message within 15 s")
            .expect("the session is open")
    }

    /// Every message up to and including `ReadyForQuery`.
    async fn answer(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let m = self.message().await;
            let ready = m.0 == b'Z';
            out.push(m);
            if ready {
                return out;
            }
        }
    }
}

/// The columns of a `DataRow` body (`None` for NULL).
fn columns(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(body[at..at + len as usize].to_vec()));
            at += len as usize;
        }
    }
    out
}

/// The message types of an answer, `D` runs counted: e.g. `1 2 T D*7 C Z`.
fn shape(answer: &[(u8, Vec<u8>)]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut rows = 0;
    for (tag, _) in answer {
        if *tag == b'D' {
            rows += 1;
            continue;
        }
        if rows > 0 {
            out.push(format!("D*{rows}"));
            rows = 0;
        }
        out.push((*tag as char).to_string());
    }
    out.join(" ")
}

/// The rows of a simple query's answer, as text.
fn text_rows(rows: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// One of the reads of [`answers_in_one_batch_never_cross_clients`] on a tokio-postgres
/// client: each checks every row it gets is its own (its number is in each).
async fn own_read(kind: usize, c: Arc<Client>) {
    match kind {
        // A big answer in text format: one 4 MB value.
        0 => {
            let rows = text_rows(
                &c.simple_query("select 0, repeat('x', 4000000)")
                    .await
                    .unwrap(),
            );
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0][0], "0");
            assert_eq!(rows[0][1].len(), 4_000_000);
            assert!(rows[0][1].bytes().all(|b| b == b'x'));
        }
        // Three rows, text (simple protocol).
        1 => {
            let rows = text_rows(
                &c.simple_query("select 1000 + g from generate_series(1, 3) g")
                    .await
                    .unwrap(),
            );
            assert_eq!(rows, [["1001"], ["1002"], ["1003"]]);
        }
        // 500 rows in binary format (an unnamed extended read).
        2 => {
            let rows = c
                .query_typed(
                    "select $1::int4 * 100000 + g, $2::text from generate_series(1, 500) g",
                    &[(&2i32, Type::INT4), (&"two", Type::TEXT)],
                )
                .await
                .unwrap();
            assert_eq!(rows.len(), 500);
            for (g, r) in rows.iter().enumerate() {
                assert_eq!(r.get::<_, i32>(0), 200_000 + g as i32 + 1);
                assert_eq!(r.get::<_, &str>(1), "two");
            }
        }
        // No rows.
        3 => {
            let rows = c
                .query_typed("select $1::int4 where false", &[(&3i32, Type::INT4)])
                .await
                .unwrap();
            assert!(rows.is_empty());
        }
        // An error of its own.
        4 => {
            let e = c
                .query_typed("select 1 / ($1::int4 - 4)", &[(&4i32, Type::INT4)])
                .await
                .unwrap_err();
            assert_eq!(code(&e), "22012", "{e}");
        }
        // 50 wide rows in binary format (5 MB).
        5 => {
            let rows = c
                .query_typed(
                    "select $1::int4 * 1000 + g, repeat('w', 100000) from generate_series(1, 50) g",
                    &[(&5i32, Type::INT4)],
                )
                .await
                .unwrap();
            assert_eq!(rows.len(), 50);
            for (g, r) in rows.iter().enumerate() {
                assert_eq!(r.get::<_, i32>(0), 5000 + g as i32 + 1);
                let wide: &str = r.get(1);
                assert!(wide.len() == 100_000 && wide.bytes().all(|b| b == b'w'));
            }
        }
        _ => unreachable!(),
    }
}

/// The raw reads of [`answers_in_one_batch_never_cross_clients`]: 6, an unnamed extended
/// read with text results; 7, one with binary results.
async fn own_raw_read(kind: usize, mut raw: Raw) -> Raw {
    match kind {
        6 => {
            let mut m = parse("", "select 6000 + g, $1::text from generate_series(1, 7) g");
            m.extend(bind("", &["six"], 0));
            m.extend(describe_execute_sync());
            raw.send(&m).await;
            let answer = raw.answer().await;
            assert_eq!(shape(&answer), "1 2 T D*7 C Z");
            let rows: Vec<_> = answer.iter().filter(|(t, _)| *t == b'D').collect();
            for (g, (_, body)) in rows.iter().enumerate() {
                let cols = columns(body);
                assert_eq!(cols[0].as_deref(), Some(format!("{}", 6001 + g).as_bytes()));
                assert_eq!(cols[1].as_deref(), Some(&b"six"[..]));
            }
        }
        7 => {
            let mut m = parse("", "select 7::int8 * $1::int8, 'seven'::text");
            m.extend(bind("", &["1000"], 1));
            m.extend(describe_execute_sync());
            raw.send(&m).await;
            let answer = raw.answer().await;
            assert_eq!(shape(&answer), "1 2 T D*1 C Z");
            let cols = columns(&answer[3].1);
            assert_eq!(cols[0].as_deref(), Some(&7000i64.to_be_bytes()[..]));
            assert_eq!(cols[1].as_deref(), Some(&b"seven"[..]));
        }
        _ => unreachable!(),
    }
    raw
}

#[test]
#[ignore = "needs compose/cluster"]
fn answers_in_one_batch_never_cross_clients() {
    // Eight reads of eight clients in one batch: a 4 MB answer, 5 MB of wide rows, text
    // and binary results, simple and extended protocol, no rows, an error. Each client
    // gets exactly its own answer, with the big one first, in the middle and last.
    let project = "wire_shared_cross";
    let (g, http, addr) = one_connection(project, "transaction", false);
    block_on(async {
        let holder = connect(addr, project).await.unwrap().0;
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(Arc::new(connect(addr, project).await.unwrap().0));
        }
        let mut raws = [
            Some(Raw::connect(addr, project, None).await),
            Some(Raw::connect(addr, project, None).await),
        ];
        for round in 0..3 {
            let before = metric_total(http, SHARED);
            hold(&holder).await;
            let mut tasks: Vec<JoinHandle<Option<(usize, Raw)>>> = Vec::new();
            for n in 0..8 {
                let kind = (n + 8 - 3 * round) % 8;
                tasks.push(match kind {
                    0..=5 => {
                        let c = clients[kind].clone();
                        tokio::spawn(async move {
                            own_read(kind, c).await;
                            None
                        })
                    }
                    _ => {
                        let raw = raws[kind - 6].take().unwrap();
                        tokio::spawn(async move { Some((kind, own_raw_read(kind, raw).await)) })
                    }
                });
                queued(http, n as u64 + 1).await;
            }
            holder.batch_execute("commit").await.unwrap();
            for t in tasks {
                let done = tokio::time::timeout(Duration::from_secs(10), t).await;
                if let Some((kind, raw)) = done.expect("answered within 10 s").unwrap() {
                    raws[kind - 6] = Some(raw);
                }
            }
            assert_eq!(metric_total(http, SHARED) - before, 8, "round {round}");
            assert_eq!(metric_total(http, WAITING), 0);
        }
        nothing_left(http, project, &holder).await;
    });
    g.drain();
}

/// `rows` rows of 1 MB each, the row's number first.
fn megabytes(rows: usize) -> Vec<u8> {
    ringgate_tests::pg::query(&format!(
        "select g, repeat('x', 1000000) from generate_series(1, {rows}) g"
    ))
}

/// Reads [`megabytes`]' answer in full and checks it.
async fn read_megabytes(raw: &mut Raw, rows: usize) {
    let answer = raw.answer().await;
    assert_eq!(shape(&answer), format!("T D*{rows} C Z"));
    for (g, (_, body)) in answer.iter().filter(|(t, _)| *t == b'D').enumerate() {
        let cols = columns(body);
        assert_eq!(cols[0].as_deref(), Some(format!("{}", g + 1).as_bytes()));
        let x = cols[1].as_deref().unwrap();
        assert!(x.len() == 1_000_000 && x.iter().all(|&b| b == b'x'));
    }
}

/// A quick read of `c`, `select {n}`, answered with `n`.
fn quick(c: &Arc<Client>, n: u32) -> JoinHandle<()> {
    let c = c.clone();
    tokio::spawn(async move {
        let rows = c.simple_query(&format!("select {n}")).await.unwrap();
        assert_eq!(first_value(&rows), Some(n.to_string()));
    })
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_client_that_stops_reading_holds_up_the_others_of_its_batch_briefly() {
    // A client asks for 12 MB and reads none of it (a 4 KiB receive buffer): the reads
    // behind it in its batch are answered within moments (it is waited for 50 ms, then
    // its answer is kept for it), whether it is the batch's runner (queued first) or
    // not; it then reads its whole answer, intact, and its session goes on.
    let project = "wire_shared_slow";
    let (g, http, addr) = one_connection(project, "transaction", false);
    block_on(async {
        let holder = connect(addr, project).await.unwrap().0;
        let mut quicks = Vec::new();
        for _ in 0..4 {
            quicks.push(Arc::new(connect(addr, project).await.unwrap().0));
        }
        for slow_first in [true, false] {
            let mut slow = Raw::connect(addr, project, Some(4096)).await;
            hold(&holder).await;
            let mut answers = Vec::new();
            let mut n = 0;
            for (i, c) in quicks.iter().enumerate() {
                if i == usize::from(!slow_first) {
                    slow.send(&megabytes(12)).await;
                    n += 1;
                    queued(http, n).await;
                }
                answers.push(quick(c, i as u32 + 10));
                n += 1;
                queued(http, n).await;
            }
            let started = Instant::now();
            holder.batch_execute("commit").await.unwrap();
            for a in answers {
                tokio::time::timeout(Duration::from_secs(3), a)
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "a read batched behind a client that does not read (queued \
                             first: {slow_first}) waited over 3 s"
                        )
                    })
                    .unwrap();
            }
            let took = started.elapsed();
            assert!(took < Duration::from_secs(3), "{took:?}");
            // The connection went on without waiting for the slow client (even when it
            // ran the batch): a read after the batch is answered while it still reads
            // nothing.
            tokio::time::timeout(Duration::from_secs(3), quick(&quicks[0], 99))
                .await
                .expect("a read after the batch, while the slow client reads nothing")
                .unwrap();
            read_megabytes(&mut slow, 12).await;
            slow.send(&ringgate_tests::pg::query("select 1")).await;
            assert_eq!(shape(&slow.answer().await), "T D*1 C Z");
        }
        nothing_left(http, project, &holder).await;
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn past_its_cap_a_client_that_stops_reading_holds_up_its_batch_as_documented() {
    // The documented limit: past 16 MiB kept for a client that does not read, the runner
    // waits for it. A 48 MB answer: the read behind it waits until the client reads;
    // then everything arrives, intact.
    let project = "wire_shared_cap";
    let (g, http, addr) = one_connection(project, "transaction", false);
    block_on(async {
        let holder = connect(addr, project).await.unwrap().0;
        let first = Arc::new(connect(addr, project).await.unwrap().0);
        let behind = Arc::new(connect(addr, project).await.unwrap().0);
        let mut slow = Raw::connect(addr, project, Some(4096)).await;
        hold(&holder).await;
        let first_answer = quick(&first, 1);
        queued(http, 1).await;
        slow.send(&megabytes(48)).await;
        queued(http, 2).await;
        let behind_answer = quick(&behind, 3);
        queued(http, 3).await;
        holder.batch_execute("commit").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), first_answer)
            .await
            .expect("the read before the slow one")
            .unwrap();
        // A window in which the read behind the capped client may not be answered.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!behind_answer.is_finished(), "answered past the cap");
        read_megabytes(&mut slow, 48).await;
        tokio::time::timeout(Duration::from_secs(5), behind_answer)
            .await
            .expect("answered once the slow client read")
            .unwrap();
        nothing_left(http, project, &holder).await;
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn owners_that_leave_mid_batch_hold_up_nothing_and_leak_nothing() {
    // In one batch: a quick read (the runner's), one whose client leaves while it is
    // queued, one whose client leaves while its 48 MB answer comes (past the cap: the
    // runner waits for it until it leaves), then two more. The last two are answered,
    // nothing stays queued or held, and the project's one connection serves on.
    let project = "wire_shared_leave";
    let (g, http, addr) = one_connection(project, "transaction", false);
    block_on(async {
        let holder = connect(addr, project).await.unwrap().0;
        let a = Arc::new(connect(addr, project).await.unwrap().0);
        let d = Arc::new(connect(addr, project).await.unwrap().0);
        let e = Arc::new(connect(addr, project).await.unwrap().0);
        let mut gone_queued = Raw::connect(addr, project, None).await;
        let mut gone_answered = Raw::connect(addr, project, Some(4096)).await;
        let before = metric_total(http, SHARED);
        hold(&holder).await;
        let a_answer = quick(&a, 1);
        queued(http, 1).await;
        gone_queued
            .send(&ringgate_tests::pg::query("select 2"))
            .await;
        queued(http, 2).await;
        drop(gone_queued);
        gone_answered.send(&megabytes(48)).await;
        queued(http, 3).await;
        let d_answer = quick(&d, 4);
        queued(http, 4).await;
        let e2 = e.clone();
        let e_answer = tokio::spawn(async move {
            let row = e2
                .query_typed_one("select $1::int4 + 1", &[(&4i32, Type::INT4)])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i32>(0), 5);
        });
        queued(http, 5).await;
        holder.batch_execute("commit").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), a_answer)
            .await
            .expect("the first read")
            .unwrap();
        // Its answer comes: then it leaves.
        assert_eq!(gone_answered.message().await.0, b'T');
        drop(gone_answered);
        for answer in [d_answer, e_answer] {
            tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .expect("a read behind those whose clients left")
                .unwrap();
        }
        assert_eq!(metric_total(http, SHARED) - before, 5);
        nothing_left(http, project, &holder).await;
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn the_runners_own_client_leaving_mid_batch_holds_up_nothing() {
    let project = "wire_shared_runner_leaves";
    let (g, http, addr) = one_connection(project, "transaction", false);
    block_on(async {
        let holder = connect(addr, project).await.unwrap().0;
        let b = Arc::new(connect(addr, project).await.unwrap().0);
        let c = Arc::new(connect(addr, project).await.unwrap().0);
        // The runner (queued first) leaves while its 48 MB answer comes.
        let mut runner = Raw::connect(addr, project, Some(4096)).await;
        hold(&holder).await;
        runner.send(&megabytes(48)).await;
        queued(http, 1).await;
        let answers = [quick(&b, 2), quick(&c, 3)];
        queued(http, 3).await;
        holder.batch_execute("commit").await.unwrap();
        assert_eq!(runner.message().await.0, b'T');
        drop(runner);
        for answer in answers {
            tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .expect("a read of the batch whose runner left")
                .unwrap();
        }
        // The runner leaves before the batch is sent (while it waits for the connection).
        let mut runner = Raw::connect(addr, project, None).await;
        hold(&holder).await;
        runner.send(&ringgate_tests::pg::query("select 1")).await;
        queued(http, 1).await;
        drop(runner);
        let answers = [quick(&b, 4), quick(&c, 5)];
        queued(http, 3).await;
        holder.batch_execute("commit").await.unwrap();
        for answer in answers {
            tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .expect("a read of the batch whose runner left before it was sent")
                .unwrap();
        }
        nothing_left(http, project, &holder).await;
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_sessions_set_never_reaches_the_shared_reads_of_others() {
    // Client A sets its search_path (a session SET, replayed on each connection it gets;
    // never shared); eight others read theirs again and again, sharing round trips on the
    // same two connections: none ever sees A's, A always sees its own.
    let project = "wire_shared_sets";
    alpha_project(project, "transaction", false);
    let (g, http, addr) = start_pg_with_replica(&[
        ("RINGGATE_WORKERS", "1"),
        ("RINGGATE_POOL_MAX_PER_TENANT", "2"),
    ]);
    block_on(async {
        let (probe, _) = connect(addr, project).await.unwrap();
        let plain = first_value(&probe.simple_query("show search_path").await.unwrap()).unwrap();
        assert!(!plain.contains("shared_attack"), "{plain}");
        let (a, _) = connect(addr, project).await.unwrap();
        a.batch_execute("set search_path = shared_attack_a, public")
            .await
            .unwrap();
        let mine = "shared_attack_a, public";
        let a_task = tokio::spawn(async move {
            for n in 0..150 {
                let sql = "select current_setting('search_path'), pg_sleep(0.001)::text";
                let got = first_value(&a.simple_query(sql).await.unwrap());
                assert_eq!(got.as_deref(), Some(mine), "A's own, step {n}");
            }
        });
        let mut others = Vec::new();
        for id in 0..8 {
            let (c, _) = connect(addr, project).await.unwrap();
            let plain = plain.clone();
            others.push(tokio::spawn(async move {
                for n in 0..150 {
                    let got = if n % 2 == 0 {
                        let sql = "select current_setting('search_path'), pg_sleep(0.001)::text";
                        first_value(&c.simple_query(sql).await.unwrap())
                    } else {
                        let row = c
                            .query_typed_one(
                                "select current_setting($1::text), pg_sleep(0.001)::text",
                                &[(&"search_path", Type::TEXT)],
                            )
                            .await
                            .unwrap();
                        Some(row.get::<_, String>(0))
                    };
                    assert_eq!(got.as_deref(), Some(plain.as_str()), "client {id} step {n}");
                }
            }));
        }
        tokio::time::timeout(Duration::from_secs(15), a_task)
            .await
            .unwrap()
            .unwrap();
        for t in others {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .unwrap()
                .unwrap();
        }
        assert!(metric_total(http, SHARED) > 0, "no read was shared");
        assert_eq!(metric_total(http, WAITING), 0);
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_session_mode_project_never_shares() {
    let project = "wire_shared_session_mode";
    alpha_project(project, "session", false);
    let (g, http, addr) = start_pg_with_replica(&[
        ("RINGGATE_WORKERS", "1"),
        ("RINGGATE_POOL_MAX_PER_TENANT", "4"),
    ]);
    block_on(async {
        let mut tasks = Vec::new();
        for id in 0..4i32 {
            let (c, _) = connect(addr, project).await.unwrap();
            tasks.push(tokio::spawn(async move {
                for n in 0..50i32 {
                    let rows = c
                        .simple_query(&format!("select {id} * 1000 + {n}"))
                        .await
                        .unwrap();
                    assert_eq!(first_value(&rows), Some((id * 1000 + n).to_string()));
                    let row = c
                        .query_typed_one("select $1::int4", &[(&n, Type::INT4)])
                        .await
                        .unwrap();
                    assert_eq!(row.get::<_, i32>(0), n);
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .unwrap()
                .unwrap();
        }
    });
    assert_eq!(metric_total(http, SHARED), 0);
    assert_eq!(metric_total(http, WAITING), 0);
    g.drain();
}

/// Whether `rows` (a simple query's) say the server is a replica.
fn in_recovery(rows: &[SimpleQueryMessage]) -> bool {
    first_value(rows).as_deref() == Some("t")
}

#[test]
#[ignore = "needs compose/cluster"]
fn with_the_split_a_batch_runs_on_a_replica_and_its_writing_read_reruns_on_the_leader() {
    // One batch on the replica: plain reads, a read calling a function that writes (the
    // replica refuses it, 25006: it reruns on the leader, unseen), and a read whose rows
    // reach the client before the function that writes is called: that one cannot be
    // rerun unseen (as a relay of its own, it gets the replica's 25006), and no client
    // ever gets a row twice.
    let project = "wire_shared_split";
    let alpha_url = ringgate_tests::backend::required("RINGGATE_TEST_ALPHA_URL");
    psql(
        &alpha_url,
        "create table if not exists shared_split_log (id bigserial primary key, at timestamptz default now());
         create or replace function shared_split_write() returns boolean language sql as
           $$ insert into shared_split_log default values; select pg_is_in_recovery() $$;",
    );
    let (g, http, addr) = one_connection(project, "transaction", true);
    block_on(async {
        let holder = connect(addr, project).await.unwrap().0;
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(Arc::new(connect(addr, project).await.unwrap().0));
        }
        // The function reached the replica before it is called there.
        let deadline = Instant::now() + Duration::from_secs(10);
        let replicated = "select pg_is_in_recovery() and exists \
                          (select 1 from pg_proc where proname = 'shared_split_write')";
        while !in_recovery(&clients[0].simple_query(replicated).await.unwrap()) {
            assert!(Instant::now() < deadline, "the replica lags");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reruns_before = metric_total(http, "ringgate_pg_read_only_reruns_total");
        let shared_before = metric_total(http, SHARED);
        // The holder's READ ONLY transaction holds the project's one replica connection.
        holder.batch_execute("begin read only").await.unwrap();
        assert!(in_recovery(
            &holder
                .simple_query("select pg_is_in_recovery()")
                .await
                .unwrap()
        ));
        let plain = |c: &Arc<Client>| {
            let c = c.clone();
            tokio::spawn(async move {
                let rows = c.simple_query("select pg_is_in_recovery()").await.unwrap();
                assert!(in_recovery(&rows), "a plain read on the replica");
            })
        };
        let first = plain(&clients[0]);
        queued(http, 1).await;
        let c = clients[1].clone();
        let writing = tokio::spawn(async move {
            let rows = c.simple_query("select shared_split_write()").await.unwrap();
            assert!(!in_recovery(&rows), "the writing read reruns on the leader");
            let row = c
                .query_typed_one("select shared_split_write()", &[])
                .await
                .unwrap();
            assert!(!row.get::<_, bool>(0), "extended: on the leader");
        });
        queued(http, 2).await;
        let c = clients[2].clone();
        let rows_then_write = tokio::spawn(async move {
            let sql =
                "select g, repeat('y', 200), case when g = 2000 then shared_split_write() end \
                       from generate_series(1, 2000) g";
            match c.simple_query(sql).await {
                Ok(rows) => {
                    let rows = text_rows(&rows);
                    assert_eq!(rows.len(), 2000, "each row once");
                    assert_eq!(rows[1999][2], "f", "on the leader");
                }
                Err(e) => assert_eq!(code(&e), "25006", "{e}"),
            }
            // The session goes on.
            let rows = c.simple_query("select 7").await.unwrap();
            assert_eq!(first_value(&rows).as_deref(), Some("7"));
        });
        queued(http, 3).await;
        // The same seen message by message: one RowDescription, each row at most once.
        let mut raw = Raw::connect(addr, project, None).await;
        let raw_rows_then_write = tokio::spawn(async move {
            let sql =
                "select g, repeat('y', 200), case when g = 2000 then shared_split_write() end \
                       from generate_series(1, 2000) g";
            raw.send(&ringgate_tests::pg::query(sql)).await;
            let answer = shape(&raw.answer().await);
            assert!(
                answer == "T D*2000 C Z"
                    || (answer.starts_with("T D*") && answer.ends_with(" E Z")),
                "{answer}"
            );
            assert_eq!(answer.matches('T').count(), 1, "{answer}");
        });
        queued(http, 4).await;
        let last = [plain(&clients[3]), plain(&clients[4])];
        queued(http, 6).await;
        holder.batch_execute("commit").await.unwrap();
        for t in [first, writing, rows_then_write, raw_rows_then_write]
            .into_iter()
            .chain(last)
        {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("answered within 10 s")
                .unwrap();
        }
        assert!(metric_total(http, SHARED) - shared_before >= 6);
        assert!(metric_total(http, "ringgate_pg_read_only_reruns_total") - reruns_before >= 2);
        nothing_left(http, project, &holder).await;
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_connection_lost_under_the_second_read_answers_the_first_and_fails_the_rest() {
    // Three reads in one batch; the server connection is terminated while the second
    // runs: the first was answered in full, the second and third get 08007, and all three
    // sessions go on.
    let project = "wire_shared_lost_second";
    let (g, http, addr) = one_connection(project, "transaction", false);
    block_on(async {
        let holder = connect(addr, project).await.unwrap().0;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(Arc::new(connect(addr, project).await.unwrap().0));
        }
        hold(&holder).await;
        let first = quick(&clients[0], 1);
        queued(http, 1).await;
        let c = clients[1].clone();
        let second = tokio::spawn(async move { c.simple_query("select pg_sleep(30)").await });
        queued(http, 2).await;
        let c = clients[2].clone();
        let third = tokio::spawn(async move { c.simple_query("select 3").await });
        queued(http, 3).await;
        holder.batch_execute("commit").await.unwrap();
        until("the second read runs", Duration::from_secs(5), || {
            sleeping_backend(project).is_some()
        })
        .await;
        tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .expect("the first read answered while the second runs")
            .unwrap();
        let pid = sleeping_backend(project).unwrap();
        psql(
            &pg_admin_url(),
            &format!("select pg_terminate_backend({pid})"),
        );
        for answer in [second, third] {
            let e = tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .expect("answered within 10 s")
                .unwrap()
                .unwrap_err();
            assert_eq!(code(&e), "08007", "{e}");
        }
        for (i, c) in clients.iter().enumerate() {
            let rows = c.simple_query(&format!("select {i} + 40")).await.unwrap();
            assert_eq!(first_value(&rows), Some((i + 40).to_string()));
        }
        nothing_left(http, project, &holder).await;
    });
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_drain_answers_every_read_in_flight_or_queued() {
    // 40 reads queued (a batch of 32 and one of 8 to follow), the first running for a
    // second when the drain starts: every one is answered, no connection is cut.
    let project = "wire_shared_drain";
    let (g, http, addr) = one_connection(project, "transaction", false);
    let (running, batch_in_flight) = std::sync::mpsc::channel();
    let clients = std::thread::spawn(move || {
        block_on(async move {
            let holder = connect(addr, project).await.unwrap().0;
            let mut clients = Vec::new();
            for _ in 0..40 {
                clients.push(Arc::new(connect(addr, project).await.unwrap().0));
            }
            hold(&holder).await;
            let mut answers = Vec::new();
            for (i, c) in clients.iter().enumerate() {
                let c = c.clone();
                answers.push(tokio::spawn(async move {
                    let sql = match i {
                        0 => "select pg_sleep(1)::text || 'slept'".to_string(),
                        _ => format!("select {i}"),
                    };
                    (i, c.simple_query(&sql).await)
                }));
                queued(http, i as u64 + 1).await;
            }
            holder.batch_execute("commit").await.unwrap();
            until("the batch runs", Duration::from_secs(5), || {
                running_backend(project, "select pg_sleep(1)::text || 'slept'").is_some()
            })
            .await;
            running.send(()).unwrap();
            let mut out = Vec::new();
            for a in answers {
                let done = tokio::time::timeout(Duration::from_secs(10), a).await;
                out.push(done.expect("answered within 10 s").unwrap());
            }
            out
        })
    });
    batch_in_flight
        .recv_timeout(Duration::from_secs(15))
        .expect("a batch in flight");
    let report = g.drain();
    for (i, answer) in clients.join().unwrap() {
        let rows = answer.unwrap_or_else(|e| panic!("read {i} during the drain: {e}"));
        let want = match i {
            0 => "slept".to_string(),
            _ => i.to_string(),
        };
        assert_eq!(first_value(&rows), Some(want));
    }
    assert_eq!(report.cut_connections, 0);
}
