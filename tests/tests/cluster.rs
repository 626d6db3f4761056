//! The compose/ backend itself: topology as expected, and (HA, `chaos_` tests, run last
//! and one at a time) Patroni and Sentinel failover with the old node rejoining.

use std::time::{Duration, Instant};

use ringgate_tests::backend::{
    cluster, http_get, pg_admin_url, psql, redis_cli, required, try_psql,
};
use serde_json::Value;

fn patroni_members() -> Vec<Value> {
    for url in required("RINGGATE_PATRONI_URLS").split(',') {
        if let Some((200, body)) = http_get(&format!("{url}/cluster")) {
            let v: Value = serde_json::from_str(&body).expect("Patroni /cluster is JSON");
            return v["members"].as_array().cloned().unwrap_or_default();
        }
    }
    panic!("no Patroni member answered /cluster");
}

fn leader_name() -> Option<String> {
    patroni_members()
        .into_iter()
        .find(|m| m["role"] == "leader")
        .and_then(|m| m["name"].as_str().map(String::from))
}

/// The leader's count of replicas actually streaming (Patroni says "running" earlier).
fn streaming_replicas() -> Option<usize> {
    let leader = leader_name()?;
    let m = patroni_members()
        .into_iter()
        .find(|m| m["name"] == leader.as_str())?;
    let url = format!(
        "postgresql://postgres:{}@{}:{}/postgres",
        admin_password(),
        m["host"].as_str()?,
        m["port"]
    );
    try_psql(
        &url,
        "select count(*) from pg_stat_replication where state = 'streaming'",
    )?
    .parse()
    .ok()
}

fn admin_password() -> String {
    let url = pg_admin_url();
    url.split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .and_then(|c| c.split(':').nth(1))
        .unwrap()
        .to_string()
}

fn sentinel_masters() -> Vec<Option<String>> {
    required("RINGGATE_REDIS_SENTINELS")
        .split(',')
        .map(|s| {
            redis_cli(
                s,
                None,
                &[
                    "SENTINEL",
                    "get-master-addr-by-name",
                    &required("RINGGATE_REDIS_MASTER"),
                ],
            )
            .map(|o| o.replace('\n', ":"))
        })
        .collect()
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn cluster_topology_is_as_expected() {
    let members = patroni_members();
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(members.iter().filter(|m| m["role"] == "leader").count(), 1);
    assert_eq!(members.iter().filter(|m| m["role"] == "replica").count(), 2);
    assert_eq!(
        streaming_replicas(),
        Some(2),
        "both replicas stream from the leader"
    );
    for url in required("RINGGATE_ETCD_ENDPOINTS").split(',') {
        let (status, body) = http_get(&format!("{url}/health")).expect("etcd answers");
        assert_eq!(status, 200);
        assert!(body.contains("\"health\":\"true\""), "{url}: {body}");
    }
    let masters = sentinel_masters();
    assert_eq!(masters.len(), 3);
    assert!(
        masters.iter().all(|m| m.is_some() && *m == masters[0]),
        "Sentinels agree: {masters:?}"
    );
    // HAProxy: 5433 reaches the leader, 5434 a replica.
    assert_eq!(psql(&pg_admin_url(), "select pg_is_in_recovery()"), "f");
    assert_eq!(
        psql(&required("READ_REPLICA_URL"), "select pg_is_in_recovery()"),
        "t"
    );
    // Bootstrap made the tenants and the control table.
    assert_eq!(
        psql(
            &required("RINGGATE_CONTROL_DATABASE_URL"),
            "select count(*) from ringgate.projects"
        ),
        "2"
    );
    assert_eq!(
        psql(
            &required("RINGGATE_TEST_ALPHA_URL"),
            "select count(*) from items"
        ),
        "100"
    );
    // A tenant's role cannot open the other tenant's database.
    let cross = required("RINGGATE_TEST_ALPHA_URL").replace("/tenant_alpha", "/tenant_beta");
    assert_eq!(
        try_psql(&cross, "select 1"),
        None,
        "alpha_owner must not connect to tenant_beta"
    );
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_patroni_leader_kill_fails_over_and_rejoins() {
    let old = cluster(&["leader"]);
    psql(&pg_admin_url(), "create table if not exists chaos_writes (id serial primary key, at timestamptz default now())");
    let timeline_before: u64 = patroni_members()
        .iter()
        .find(|m| m["name"] == old.as_str())
        .and_then(|m| m["timeline"].as_u64())
        .unwrap();
    let killed = Instant::now();
    cluster(&["kill", &old]);
    let (new, promoted_after) = wait_until("a new Patroni leader", Duration::from_secs(30), || {
        leader_name().filter(|l| *l != old)
    });
    let (_, writable_after) = wait_until(
        "a write through HAProxy's primary port",
        Duration::from_secs(30),
        || {
            try_psql(
                &pg_admin_url(),
                "insert into chaos_writes default values returning id",
            )
        },
    );
    // Patroni publishes the new timeline with its next member update.
    wait_until(
        "the new leader on a new timeline",
        Duration::from_secs(10),
        || {
            let m = patroni_members()
                .into_iter()
                .find(|m| m["name"] == new.as_str())?;
            (m["timeline"].as_u64()? > timeline_before).then_some(())
        },
    );
    eprintln!(
        "failover: {old} killed; {new} leader after {:.1}s; writes through HAProxy after {:.1}s (from the kill: {:.1}s)",
        promoted_after.as_secs_f64(),
        (promoted_after + writable_after).as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    cluster(&["start", &old]);
    let (_, rejoined) = wait_until(
        "the old leader streaming as a replica",
        Duration::from_secs(90),
        || {
            let m = patroni_members()
                .into_iter()
                .find(|m| m["name"] == old.as_str())?;
            (m["role"] == "replica" && streaming_replicas() == Some(2)).then_some(())
        },
    );
    eprintln!(
        "rejoin: {old} streaming as a replica {:.1}s after restart",
        rejoined.as_secs_f64()
    );
    assert_eq!(psql(&pg_admin_url(), "select pg_is_in_recovery()"), "f");
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_redis_master_kill_promotes_a_replica_and_it_rejoins() {
    let password = required("RINGGATE_REDIS_PASSWORD");
    let old = cluster(&["redis-master"]);
    let old_addr = sentinel_masters()[0].clone().unwrap();
    redis_cli(&old_addr, Some(&password), &["SET", "chaos:key", "kept"])
        .expect("write to the master");
    wait_until(
        "the write to reach both replicas",
        Duration::from_secs(5),
        || {
            let info = redis_cli(&old_addr, Some(&password), &["INFO", "replication"])?;
            (info.matches("state=online").count() == 2 && !info.contains("lag=1")).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    cluster(&["kill", &old]);
    let (new_addr, took) = wait_until(
        "Sentinels to agree on a new master",
        Duration::from_secs(30),
        || {
            let m = sentinel_masters();
            (m.iter().all(|x| x.is_some() && *x == m[0])
                && m[0].as_deref() != Some(old_addr.as_str()))
            .then(|| m[0].clone().unwrap())
        },
    );
    eprintln!(
        "redis failover: {old} ({old_addr}) killed; {new_addr} promoted after {:.1}s",
        took.as_secs_f64()
    );
    assert_eq!(
        redis_cli(&new_addr, Some(&password), &["GET", "chaos:key"]).as_deref(),
        Some("kept"),
        "the write survived"
    );
    cluster(&["start", &old]);
    let (_, rejoined) = wait_until(
        "the old master back as a replica",
        Duration::from_secs(30),
        || {
            let role = redis_cli(&old_addr, Some(&password), &["ROLE"])?;
            (role.starts_with("slave")
                && role.contains(new_addr.split(':').next().unwrap())
                && role.contains("connected"))
            .then_some(())
        },
    );
    eprintln!(
        "redis rejoin: {old} replica of {new_addr} {:.1}s after restart",
        rejoined.as_secs_f64()
    );
    assert_eq!(
        redis_cli(&old_addr, Some(&password), &["GET", "chaos:key"]).as_deref(),
        Some("kept")
    );
}
