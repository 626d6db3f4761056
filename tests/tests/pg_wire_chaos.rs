//! The PostgreSQL front end through a failover: the leader's postmaster is SIGKILLed under
//! pgbench and a client loop that records every insert whose commit was acknowledged.
//! Nothing acknowledged may be missing from the final leader; the only failures allowed
//! are `08007` (outcome unknown) for statements in flight at the fault, counted.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ringgate_tests::{
    backend::{cluster, psql, required, unique, wait_replicas_caught_up, Chaos},
    gateway::start_following_patroni,
    wire::{code, connect, conninfo, ensure_schema},
};

/// Client loops recording acknowledged ids.
const CLIENTS: i64 = 8;

/// What one client loop saw.
#[derive(Debug, Default)]
struct Tally {
    /// Ids whose insert (autocommit, prepared) returned OK.
    acked: Vec<i64>,
    /// Failed inserts by SQLSTATE (or `connection` for a lost client connection).
    failed: BTreeMap<String, usize>,
    /// When the last insert was acknowledged.
    last_ack: Option<Instant>,
}

/// Inserts ids `client * 1e9 + k` through ringgate until `stop`, reconnecting when the
/// client connection is lost.
async fn client_loop(addr: SocketAddr, table: String, client: i64, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let mut k = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let Ok((c, _)) = connect(addr, "alpha").await else {
            *tally.failed.entry("connect".into()).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let stmt = match c
            .prepare(&format!("insert into {table} (id) values ($1)"))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                *tally
                    .failed
                    .entry(format!("prepare {}", code(&e)))
                    .or_default() += 1;
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            let id = client * 1_000_000_000 + k;
            k += 1;
            match c.execute(&stmt, &[&id]).await {
                Ok(_) => {
                    tally.acked.push(id);
                    tally.last_ack = Some(Instant::now());
                }
                Err(e) if e.is_closed() => {
                    *tally.failed.entry("connection".into()).or_default() += 1;
                    break;
                }
                Err(e) => *tally.failed.entry(code(&e)).or_default() += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tally
}

#[test]
#[ignore = "needs compose/cluster (chaos: kills the leader's postmaster)"]
fn chaos_wire_leader_kill_under_pgbench() {
    // Patroni restarts the postmaster where it was (the leader stays, after a restart).
    under_pgbench("kill-postmaster");
}

#[test]
#[ignore = "needs compose/cluster (chaos: kills the leader's node)"]
fn chaos_wire_leader_node_kill_under_pgbench() {
    // The whole node (PostgreSQL and Patroni): a replica takes over once the lease ends.
    under_pgbench("kill");
}

/// pgbench and the client loops through the front end while `compose/cluster FAULT
/// <leader>` runs; the accounting.
fn under_pgbench(fault: &str) {
    let _chaos = Chaos::begin();
    ensure_schema();
    let admin = required("RINGGATE_TEST_ALPHA_URL");
    let table = unique("wire_chaos_");
    psql(
        &admin,
        &format!("create table {table} (id bigint not null)"),
    );
    wait_replicas_caught_up(Duration::from_secs(10));
    let control = required("RINGGATE_CONTROL_DATABASE_URL");
    let (g, _) = start_following_patroni(&[
        ("RINGGATE_WORKERS", "2"),
        ("RINGGATE_CONTROL_DATABASE_URL", &control),
        ("RINGGATE_PG_LISTEN", "127.0.0.1:0"),
    ]);
    let addr = g.pg_addr().expect("PostgreSQL listener");
    let leader = cluster(&["leader"]);

    // pgbench: 8 clients, prepared, inserting negative random ids into the same table.
    let script = std::env::temp_dir().join(format!("{table}.sql"));
    std::fs::write(
        &script,
        format!("\\set id -1 * random(1, 999999999999)\ninsert into {table} (id) values (:id);\n"),
    )
    .unwrap();
    let pgbench = std::process::Command::new("pgbench")
        .args([
            "-n", "-M", "prepared", "-c", "8", "-j", "2", "-T", "30", "-f",
        ])
        .arg(&script)
        .arg(conninfo(addr, "alpha"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let loops = {
        let (stop, table) = (stop.clone(), table.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let tasks: Vec<_> = (1..=CLIENTS)
                        .map(|c| tokio::spawn(client_loop(addr, table.clone(), c, stop.clone())))
                        .collect();
                    let mut all = Vec::new();
                    for t in tasks {
                        all.push(t.await.unwrap());
                    }
                    all
                })
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    let fault_at = Instant::now();
    cluster(&[fault, &leader]);
    // Lease expiry, election, promotion, and writes on the new leader for a while.
    std::thread::sleep(Duration::from_secs(22));
    stop.store(true, Ordering::Relaxed);
    let tallies = loops.join().unwrap();
    let bench = pgbench.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&script);
    g.drain();
    ringgate_tests::backend::repair_cluster()
        .unwrap_or_else(|e| panic!("the cluster did not recover: {e}"));

    let rows: Vec<i64> = psql(&admin, &format!("select id from {table}"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    psql(&admin, &format!("drop table {table}"));
    let on_leader: HashSet<i64> = rows.iter().copied().collect();
    let acked: Vec<i64> = tallies
        .iter()
        .flat_map(|t| t.acked.iter().copied())
        .collect();
    let lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| !on_leader.contains(id))
        .collect();
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tallies {
        for (k, n) in &t.failed {
            *failed.entry(k.clone()).or_default() += n;
        }
    }
    let report = String::from_utf8_lossy(&bench.stdout);
    let errors = String::from_utf8_lossy(&bench.stderr);
    let processed: usize = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(['/', ' ']).next()?.parse().ok())
        .unwrap_or(0);
    let bench_rows = rows.iter().filter(|id| **id < 0).count();
    let mut bench_failed: BTreeMap<String, usize> = BTreeMap::new();
    // "client N script 0 aborted in command 1 query 0: ERROR:  ..." (or no ERROR: the
    // connection was lost); the summary "Run was aborted" is not a client.
    for l in errors
        .lines()
        .filter(|l| l.contains("client") && l.contains("aborted"))
    {
        let why = l
            .split_once("ERROR:")
            .map_or("connection", |(_, m)| m.trim());
        *bench_failed.entry(why.to_string()).or_default() += 1;
    }
    eprintln!(
        "{fault}: leader {leader} -> {}; client loops: {} acknowledged, {} lost, failed {failed:?}; \
         pgbench: {processed} committed, {bench_rows} of its rows on the leader, aborted clients {bench_failed:?}; {:.1}s after the fault",
        cluster(&["leader"]),
        acked.len(),
        lost.len(),
        fault_at.elapsed().as_secs_f64(),
    );
    assert!(lost.is_empty(), "acknowledged inserts lost: {lost:?}");
    assert_eq!(rows.len(), on_leader.len(), "an id is on the leader twice");
    assert!(
        processed <= bench_rows,
        "pgbench counted {processed} commits, {bench_rows} rows are on the leader\n{report}\n{errors}"
    );
    for (why, n) in &failed {
        assert!(
            why == "08007" || why == "connection",
            "{n} inserts failed with {why} (only 08007 and lost connections at the fault are expected): {failed:?}"
        );
    }
    for why in bench_failed.keys() {
        assert!(
            why == "connection" || why.starts_with("the server connection was lost"),
            "a pgbench client aborted on {why:?}\n{errors}"
        );
    }
    // Writes went on after the failover, on every client loop.
    assert!(acked.len() > 100, "only {} acknowledged", acked.len());
    for (i, t) in tallies.iter().enumerate() {
        assert!(
            t.last_ack
                .is_some_and(|at| at > fault_at + Duration::from_secs(5)),
            "client loop {i} acknowledged nothing after the failover"
        );
    }
}

#[test]
#[ignore = "needs compose/cluster (chaos: freezes the leader)"]
fn chaos_wire_a_statement_in_flight_when_the_leader_freezes_gets_08007() {
    let _chaos = Chaos::begin();
    ensure_schema();
    let control = required("RINGGATE_CONTROL_DATABASE_URL");
    let (g, _) = start_following_patroni(&[
        ("RINGGATE_CONTROL_DATABASE_URL", &control),
        ("RINGGATE_PG_LISTEN", "127.0.0.1:0"),
    ]);
    let addr = g.pg_addr().expect("PostgreSQL listener");
    let leader = cluster(&["leader"]);
    ringgate_tests::wire::block_on(async {
        let (c, _) = connect(addr, "alpha").await.unwrap();
        c.batch_execute("begin").await.unwrap();
        c.batch_execute("select txid_current()").await.unwrap();
        // The statement is in flight on the leader when it freezes: its answer cannot be
        // trusted once the leader stops answering its probe / its lease runs out.
        let freeze = {
            let leader = leader.clone();
            tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(500));
                cluster(&["pause", &leader]);
                Instant::now()
            })
        };
        let e = c.simple_query("select pg_sleep(5)").await.unwrap_err();
        let frozen_at = freeze.await.unwrap();
        assert_eq!(code(&e), "08007", "{e}");
        let after = frozen_at.elapsed();
        assert!(
            after < Duration::from_secs(10),
            "answered {after:?} after the freeze (the lease or the probe should end it)"
        );
        // The client goes on: its next statement waits for the new leader.
        let started = Instant::now();
        c.batch_execute("select txid_current()").await.unwrap();
        eprintln!(
            "08007 {:.2}s after the freeze; the next statement ran {:.2}s later on {}",
            after.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            cluster(&["leader"])
        );
    });
    g.drain();
}
