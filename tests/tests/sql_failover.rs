//! The Data API riding through a Patroni failover (HA tests: run last, one at a time).
//!
//! ringgate runs with the fixed topology `DATABASE_URL` (HAProxy's leader port) and
//! `READ_REPLICA_URL`; the leader's Patroni and postmaster are SIGKILLed with the launcher.

use std::time::{Duration, Instant};

use ringgate_tests::{
    backend::{
        alpha_conn_string, cluster, psql, required, try_psql, unique, wait_replicas_caught_up,
    },
    gateway::start,
    http::{request, Resp},
};
use serde_json::json;

fn sql(addr: std::net::SocketAddr, query: &str) -> Resp {
    let cs = alpha_conn_string();
    let body = json!({ "query": query }).to_string();
    request(
        addr,
        "POST",
        "/sql",
        &[
            ("Neon-Connection-String", &cs),
            ("Neon-Raw-Text-Output", "true"),
        ],
        body.as_bytes(),
    )
}

/// The Patroni leader, `None` while there is none.
fn current_leader() -> Option<String> {
    let out = std::process::Command::new(required("RINGGATE_CLUSTER"))
        .arg("leader")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Kills the current leader; restores the cluster when dropped, even if the test fails.
struct KilledLeader(String);

impl KilledLeader {
    fn kill() -> Self {
        let old = cluster(&["leader"]);
        cluster(&["kill", &old]);
        KilledLeader(old)
    }
}

impl Drop for KilledLeader {
    fn drop(&mut self) {
        restore(&self.0);
    }
}

/// Waits for a new leader, restarts `old` and waits until the cluster is whole again: three
/// members running, HAProxy with one leader and two replicas, and a write through 5433.
fn restore(old: &str) {
    let end = Instant::now() + Duration::from_secs(120);
    while current_leader().as_deref().is_none_or(|l| l == old) {
        assert!(Instant::now() < end, "no new leader after killing {old}");
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster(&["start", old]);
    while Instant::now() < end {
        let status = cluster(&["status"]);
        let writable = try_psql(
            &required("RINGGATE_TEST_PG_URL"),
            "select pg_is_in_recovery()",
        )
        .as_deref()
            == Some("f");
        if ringgate_tests::backend::members_up(&status) >= 3
            && status.contains("primary UP=1 replicas UP=2")
            && writable
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("cluster did not recover after restarting {old}");
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_sql_writes_wait_for_the_new_leader_and_reads_continue() {
    let (g, addr) = start(&[
        ("DATABASE_URL", &required("DATABASE_URL")),
        ("READ_REPLICA_URL", &required("READ_REPLICA_URL")),
        ("RINGGATE_FAILOVER_WAIT", "30s"),
    ]);
    let table = unique("failover_t");
    assert_eq!(
        sql(
            addr,
            &format!("create table {table} (id serial primary key, v text)")
        )
        .status,
        200
    );
    assert_eq!(
        sql(addr, &format!("insert into {table} (v) values ('before')")).status,
        200
    );
    wait_replicas_caught_up(Duration::from_secs(10));
    let killed = Instant::now();
    let leader = KilledLeader::kill();
    // Reads keep working from the replicas while the leader is gone.
    let read = sql(addr, "select count(*) as n from items");
    assert_eq!(
        read.status,
        200,
        "a read during the failover: {:?}",
        read.json()
    );
    // A write that has not been sent waits for the new leader instead of failing.
    let write = sql(
        addr,
        &format!("insert into {table} (v) values ('during') returning id"),
    );
    let took = killed.elapsed();
    assert_eq!(
        write.status,
        200,
        "the write waited for the new leader: {:?}",
        write.json()
    );
    eprintln!(
        "write after leader kill answered in {:.1}s",
        took.as_secs_f64()
    );
    // Read it back on the new leader (a replica may not have replayed it yet).
    let rows = psql(
        &required("RINGGATE_TEST_ALPHA_URL"),
        &format!("select string_agg(v, ',' order by id) from {table}"),
    );
    assert_eq!(rows, "before,during");
    g.drain();
    drop(leader);
    psql(
        &required("RINGGATE_TEST_ALPHA_URL"),
        &format!("drop table {table}"),
    );
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_sql_write_in_flight_when_the_leader_dies_is_outcome_unknown() {
    let (g, addr) = start(&[
        ("DATABASE_URL", &required("DATABASE_URL")),
        ("RINGGATE_FAILOVER_WAIT", "30s"),
    ]);
    let table = unique("unknown_t");
    assert_eq!(
        sql(addr, &format!("create table {table} (id int)")).status,
        200
    );
    wait_replicas_caught_up(Duration::from_secs(10));
    let slow = {
        let q = format!("insert into {table} select 1 from pg_sleep(5)");
        std::thread::spawn(move || sql(addr, &q))
    };
    std::thread::sleep(Duration::from_millis(1500));
    let leader = KilledLeader::kill();
    let r = slow.join().unwrap();
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["code"], "outcome_unknown");
    assert_eq!(r.header("retry-after"), Some("1"));
    g.drain();
    drop(leader);
    psql(
        &required("RINGGATE_TEST_ALPHA_URL"),
        &format!("drop table if exists {table}"),
    );
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_sql_with_patroni_topology_follows_the_new_leader() {
    let (g, addr) =
        ringgate_tests::gateway::start_following_patroni(&[("RINGGATE_FAILOVER_WAIT", "30s")]);
    let table = unique("patroni_t");
    assert_eq!(
        sql(
            addr,
            &format!("create table {table} (id serial primary key, v text)")
        )
        .status,
        200
    );
    // Reads go straight to a replica member (no HAProxy in between) once Patroni reports
    // the replicas on the leader's timeline (after an earlier failover that takes a moment).
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let r = sql(addr, "select pg_is_in_recovery()::text as r");
        if r.json()["rows"][0]["r"] == "true" {
            break;
        }
        assert!(
            Instant::now() < end,
            "reads never reached a replica: {:?}",
            r.json()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_replicas_caught_up(Duration::from_secs(10));
    let killed = Instant::now();
    let leader = KilledLeader::kill();
    let write = sql(
        addr,
        &format!("insert into {table} (v) values ('after') returning id"),
    );
    assert_eq!(write.status, 200, "{:?}", write.json());
    eprintln!(
        "write after leader kill (Patroni topology) answered in {:.1}s",
        killed.elapsed().as_secs_f64()
    );
    // Metrics are published once a second: the epoch moves, and the old leader's pool was
    // closed when the topology changed.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let text =
            String::from_utf8_lossy(&request(addr, "GET", "/metrics", &[], b"").body).to_string();
        let moved = !text.contains("ringgate_topology_epoch{core=\"0\"} 1\n")
            && text.contains("ringgate_topology_epoch{core=\"0\"}");
        let closed = !text.contains("ringgate_pool_evictions_topology_total{core=\"0\"} 0\n");
        if moved && closed {
            break;
        }
        assert!(
            Instant::now() < end,
            "topology metrics did not move: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    g.drain();
    drop(leader);
    psql(
        &required("RINGGATE_TEST_ALPHA_URL"),
        &format!("drop table {table}"),
    );
}
