//! The compose/ backend itself: topology as expected, and (HA, `chaos_` tests) Patroni and
//! Sentinel failover with the old node rejoining, isolation, synchronous mode.
//!
//! Every test holds `chaos_lock()` (so they never overlap, also across test binaries) and
//! every `chaos_` test repairs the cluster when it ends, pass or fail (`Chaos`).

use std::time::{Duration, Instant};

use ringgate_tests::{
    backend::{
        chaos_lock, cluster, http_get, pg_admin_url, pg_node_url, psql, redis_cli, required,
        try_psql, unique, wait_replicas_caught_up, Chaos,
    },
    wait_for,
};
use serde_json::Value;

fn patroni_urls() -> Vec<String> {
    required("RINGGATE_PATRONI_URLS")
        .split(',')
        .map(String::from)
        .collect()
}

/// Patroni's member list, as the first member that answers sees it (`skip`: members not to ask).
fn members_skipping(skip: &str) -> Vec<Value> {
    for url in patroni_urls() {
        if !skip.is_empty() && url.contains(&member_host_of(skip)) {
            continue;
        }
        if let Some((200, body)) = http_get(&format!("{url}/cluster")) {
            let v: Value = serde_json::from_str(&body).expect("Patroni /cluster is JSON");
            return v["members"].as_array().cloned().unwrap_or_default();
        }
    }
    Vec::new()
}

fn patroni_members() -> Vec<Value> {
    let m = members_skipping("");
    assert!(!m.is_empty(), "no Patroni member answered /cluster");
    m
}

/// The address pgN listens on, from `RINGGATE_PG_NODES` (in member order).
fn member_host_of(name: &str) -> String {
    let i: usize = name.trim_start_matches("pg").parse().expect("pgN");
    let node = required("RINGGATE_PG_NODES")
        .split(',')
        .nth(i - 1)
        .expect("three nodes")
        .to_string();
    node.split(':').next().unwrap().to_string()
}

fn member<'a>(members: &'a [Value], name: &str) -> Option<&'a Value> {
    members.iter().find(|m| m["name"] == name)
}

fn host_port(m: &Value) -> String {
    format!("{}:{}", m["host"].as_str().unwrap_or_default(), m["port"])
}

/// A replica in Patroni's `/cluster` (3.0.4 calls the synchronous one `sync_standby`).
fn is_replica(m: &Value) -> bool {
    matches!(m["role"].as_str(), Some("replica" | "sync_standby"))
}

fn leader_of(members: &[Value]) -> Option<String> {
    members
        .iter()
        .find(|m| m["role"] == "leader")
        .and_then(|m| m["name"].as_str().map(String::from))
}

/// Names of the replicas streaming from the current leader (its `pg_stat_replication`;
/// Patroni 3.0 says "running" before a replica streams).
fn streaming_from_leader(skip: &str) -> Option<Vec<String>> {
    let members = members_skipping(skip);
    let leader = member(&members, &leader_of(&members)?)?.clone();
    let out = try_psql(
        &pg_node_url(&host_port(&leader)),
        "select application_name from pg_stat_replication where state = 'streaming' order by 1",
    )?;
    Some(out.lines().map(String::from).collect())
}

fn timeline(members: &[Value], name: &str) -> Option<u64> {
    member(members, name)?["timeline"].as_u64()
}

fn sentinels() -> Vec<String> {
    required("RINGGATE_REDIS_SENTINELS")
        .split(',')
        .map(String::from)
        .collect()
}

/// Each Sentinel's view of the master, `host:port` (None when it does not answer).
fn sentinel_masters() -> Vec<Option<String>> {
    sentinels()
        .iter()
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

/// Sentinel's `SENTINEL master NAME` reply as a map.
fn sentinel_master_fields(sentinel: &str) -> std::collections::HashMap<String, String> {
    let reply = redis_cli(
        sentinel,
        None,
        &["SENTINEL", "master", &required("RINGGATE_REDIS_MASTER")],
    )
    .unwrap_or_default();
    let lines: Vec<&str> = reply.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect()
}

const CHAOS_TABLE: &str =
    "create table if not exists chaos_writes (id bigserial primary key, note text, at timestamptz default now())";

/// Writes `note` on the leader and waits until both replicas have replayed it, so a crash of
/// the leader cannot lose it even with asynchronous replication.
fn write_replicated(note: &str) {
    let admin = pg_admin_url();
    psql(&admin, CHAOS_TABLE);
    psql(
        &admin,
        &format!("insert into chaos_writes (note) values ('{note}')"),
    );
    wait_replicas_caught_up(Duration::from_secs(10));
}

fn has_note(url: &str, note: &str) -> bool {
    try_psql(
        url,
        &format!("select count(*) from chaos_writes where note = '{note}'"),
    )
    .as_deref()
        == Some("1")
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn cluster_topology_is_as_expected() {
    let _lock = chaos_lock();
    // Patroni: three members, one leader, two replicas streaming from it.
    let members = patroni_members();
    assert_eq!(members.len(), 3, "{members:?}");
    let leader = leader_of(&members).expect("a leader");
    assert_eq!(members.iter().filter(|m| is_replica(m)).count(), 2);
    let mut replicas: Vec<String> = members
        .iter()
        .filter(|m| is_replica(m))
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    replicas.sort();
    assert_eq!(
        streaming_from_leader(""),
        Some(replicas),
        "both replicas stream from the leader"
    );
    let nodes = required("RINGGATE_PG_NODES");
    assert_eq!(nodes.split(',').count(), 3);
    for m in &members {
        assert!(nodes.contains(&host_port(m)), "{m} is in RINGGATE_PG_NODES");
    }
    assert_eq!(cluster(&["leader"]), leader);
    // etcd: three members, all healthy, and the same list everywhere.
    let endpoints = required("RINGGATE_ETCD_ENDPOINTS");
    assert_eq!(endpoints, required("RINGGATE_TEST_ETCD_URLS"));
    for url in endpoints.split(',') {
        let (status, body) = http_get(&format!("{url}/health")).expect("etcd answers");
        assert_eq!(status, 200);
        assert!(body.contains("\"health\":\"true\""), "{url}: {body}");
    }
    let list = std::process::Command::new("etcdctl")
        .args(["--endpoints", &endpoints, "member", "list"])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl is installed (etcd-client)");
    assert!(list.status.success());
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 3);
    // Patroni keeps its keys under namespace/scope.
    let prefix = format!(
        "{}{}/leader",
        required("RINGGATE_PATRONI_NAMESPACE"),
        required("RINGGATE_PATRONI_SCOPE")
    );
    let key = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &endpoints,
            "get",
            "--print-value-only",
            &prefix,
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl");
    assert_eq!(String::from_utf8_lossy(&key.stdout).trim(), leader);
    // Redis: three Sentinels that agree, see each other and both replicas.
    let masters = sentinel_masters();
    assert_eq!(masters.len(), 3);
    assert!(
        masters.iter().all(|m| m.is_some() && *m == masters[0]),
        "Sentinels agree: {masters:?}"
    );
    for s in sentinels() {
        let f = sentinel_master_fields(&s);
        assert_eq!(f["num-other-sentinels"], "2", "{s}: {f:?}");
        assert_eq!(f["num-slaves"], "2", "{s}: {f:?}");
        assert_eq!(f["flags"], "master", "{s}: {f:?}");
    }
    let master = masters[0].clone().unwrap();
    let info = redis_cli(
        &master,
        Some(&required("RINGGATE_REDIS_PASSWORD")),
        &["INFO", "replication"],
    )
    .expect("the master answers with the password");
    assert!(info.contains("role:master"), "{info}");
    assert_eq!(info.matches("state=online").count(), 2, "{info}");
    assert!(
        redis_cli(&master, None, &["GET", "x"]).is_none_or(|r| r.starts_with("NOAUTH")),
        "Redis requires the password"
    );
    // HAProxy: 5433 reaches the leader, 5434 a replica.
    assert_eq!(psql(&pg_admin_url(), "select pg_is_in_recovery()"), "f");
    assert_eq!(
        psql(&required("READ_REPLICA_URL"), "select pg_is_in_recovery()"),
        "t"
    );
    assert_eq!(
        psql(&required("DATABASE_URL"), "select current_user"),
        "ringgate_app"
    );
    // Bootstrap made the tenants and the control table.
    assert_eq!(
        psql(
            &required("RINGGATE_CONTROL_DATABASE_URL"),
            "select string_agg(project_id || '=' || database, ',' order by project_id) from ringgate.projects \
             where project_id in ('alpha', 'beta')"
        ),
        "alpha=tenant_alpha,beta=tenant_beta"
    );
    assert_eq!(
        psql(
            &required("RINGGATE_TEST_ALPHA_URL"),
            "select count(*) from items"
        ),
        "100"
    );
    assert_eq!(
        psql(
            &required("RINGGATE_TEST_BETA_URL"),
            "select count(*) from items"
        ),
        "50"
    );
    // A tenant's role cannot open the other tenant's database.
    let cross = required("RINGGATE_TEST_ALPHA_URL").replace("/tenant_alpha", "/tenant_beta");
    assert_eq!(
        try_psql(&cross, "select 1"),
        None,
        "alpha_owner must not connect to tenant_beta"
    );
    let cross = required("RINGGATE_TEST_BETA_URL").replace("/tenant_beta", "/tenant_alpha");
    assert_eq!(
        try_psql(&cross, "select 1"),
        None,
        "beta_owner must not connect to tenant_alpha"
    );
    assert!(required("DATABASE_URL").contains(&required("RINGGATE_PG_APP_PASSWORD")));
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_patroni_leader_kill_fails_over_and_rejoins() {
    let _chaos = Chaos::begin();
    let old = cluster(&["leader"]);
    let before = unique("before_kill");
    write_replicated(&before);
    let timeline_before = timeline(&patroni_members(), &old).unwrap();

    let killed = Instant::now();
    cluster(&["kill", &old]);
    // Poll everything at once: when is a new leader named, when does it take a write
    // directly, when through HAProxy's primary port?
    let (mut elected, mut direct, mut haproxy) = (None, None, None);
    let mut new = String::new();
    while (elected.is_none() || direct.is_none() || haproxy.is_none())
        && killed.elapsed() < Duration::from_secs(60)
    {
        let members = members_skipping(&old);
        if let Some(l) = leader_of(&members).filter(|l| *l != old) {
            elected.get_or_insert(killed.elapsed());
            new = l;
            let url = pg_node_url(&host_port(member(&members, &new).unwrap()));
            if direct.is_none()
                && try_psql(&url, "insert into chaos_writes (note) values ('direct')").is_some()
            {
                direct = Some(killed.elapsed());
            }
        }
        if haproxy.is_none()
            && try_psql(
                &pg_admin_url(),
                "insert into chaos_writes (note) values ('haproxy')",
            )
            .is_some()
        {
            haproxy = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elected = elected.expect("a new leader within 60s");
    let direct = direct.expect("the new leader takes writes within 60s");
    let haproxy = haproxy.expect("HAProxy's primary port takes writes within 60s");
    assert!(
        has_note(&pg_admin_url(), &before),
        "a write replicated before the crash survives"
    );
    wait_for(
        "the new leader on a new timeline",
        Duration::from_secs(10),
        || (timeline(&members_skipping(&old), &new)? > timeline_before).then_some(()),
    );
    eprintln!(
        "patroni failover: {old} SIGKILLed; {new} leader after {:.1}s, writable directly after {:.1}s, \
         through HAProxy 5433 after {:.1}s",
        elected.as_secs_f64(),
        direct.as_secs_f64(),
        haproxy.as_secs_f64()
    );

    let after = unique("after_kill");
    psql(
        &pg_admin_url(),
        &format!("insert into chaos_writes (note) values ('{after}')"),
    );
    cluster(&["start", &old]);
    let (_, rejoined) = wait_for(
        "the old leader streaming as a replica",
        Duration::from_secs(90),
        || {
            let members = patroni_members();
            let m = member(&members, &old)?;
            (is_replica(m) && streaming_from_leader("")?.contains(&old)).then_some(())
        },
    );
    eprintln!(
        "patroni rejoin: {old} streaming from {new} {:.1}s after its restart",
        rejoined.as_secs_f64()
    );
    let old_url = pg_node_url(&host_port(member(&patroni_members(), &old).unwrap()));
    assert_eq!(psql(&old_url, "select pg_is_in_recovery()"), "t");
    wait_for(
        "the old leader to replay the new leader's writes",
        Duration::from_secs(10),
        || has_note(&old_url, &after).then_some(()),
    );
    assert_eq!(psql(&pg_admin_url(), "select pg_is_in_recovery()"), "f");
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_patroni_isolated_leader_is_replaced_and_rejoins_after_heal() {
    let _chaos = Chaos::begin();
    let old = cluster(&["leader"]);
    let before = unique("before_isolate");
    write_replicated(&before);
    let timeline_before = timeline(&patroni_members(), &old).unwrap();

    let cut = Instant::now();
    cluster(&["isolate", &old]);
    let (new, elected) = wait_for(
        "a new leader while the old one is isolated",
        Duration::from_secs(60),
        || leader_of(&members_skipping(&old)).filter(|l| *l != old),
    );
    let (_, writable) = wait_for(
        "a write through HAProxy's primary port",
        Duration::from_secs(60),
        || {
            try_psql(
                &pg_admin_url(),
                "insert into chaos_writes (note) values ('isolated') returning inet_server_addr()",
            )
            .filter(|a| *a == member_host_of(&new))
        },
    );
    // The isolated member is unreachable: its REST API does not answer.
    let old_rest = patroni_urls()
        .into_iter()
        .find(|u| u.contains(&member_host_of(&old)))
        .unwrap();
    assert!(http_get(&format!("{old_rest}/health")).is_none());
    assert!(has_note(&pg_admin_url(), &before));
    eprintln!(
        "patroni isolation: {old} cut off; {new} leader after {:.1}s, writable through HAProxy \
         after {:.1}s",
        elected.as_secs_f64(),
        (elected + writable).as_secs_f64()
    );

    let healed = Instant::now();
    cluster(&["heal", &old]);
    let rejoined = || {
        let members = patroni_members();
        let m = member(&members, &old)?;
        (is_replica(m)
            && timeline(&members, &old)? > timeline_before
            && streaming_from_leader("")?.contains(&old))
        .then_some(())
    };
    let start = Instant::now();
    let mut back = false;
    while start.elapsed() < Duration::from_secs(45) && !back {
        back = rejoined().is_some();
        std::thread::sleep(Duration::from_millis(200));
    }
    if !back {
        // Patroni 3.0 sometimes loops on "timeline is not a child of this server's
        // history" instead of rewinding a former leader that kept taking writes while cut
        // off; the operator's fix is a reinit. Reported, so a regression stays visible.
        eprintln!("patroni heal: {old} did not rejoin on its own within 45 s; reinit");
        cluster(&["reinit", &old]);
        wait_for(
            "the old leader streaming as a replica after reinit",
            Duration::from_secs(90),
            rejoined,
        );
    }
    eprintln!(
        "patroni heal: {old} streaming from {new} {:.1}s after heal (total {:.1}s)",
        healed.elapsed().as_secs_f64(),
        cut.elapsed().as_secs_f64()
    );
    assert_eq!(cluster(&["leader"]), new);
}

/// Turns synchronous mode on again (the backend's default) when dropped.
struct SyncOn;

impl Drop for SyncOn {
    fn drop(&mut self) {
        let _ = std::process::Command::new(required("RINGGATE_CLUSTER"))
            .args(["sync", "on"])
            .status();
    }
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_synchronous_mode_switches_on_and_off() {
    let _chaos = Chaos::begin();
    let sync_states = || {
        try_psql(
            &pg_admin_url(),
            "select string_agg(sync_state, ',' order by sync_state) from pg_stat_replication",
        )
    };
    let _on = SyncOn;
    cluster(&["sync", "on"]);
    let (_, took) = wait_for("one synchronous standby", Duration::from_secs(20), || {
        let s = sync_states()?;
        (s.split(',').filter(|x| *x == "sync").count() == 1).then_some(s)
    });
    eprintln!(
        "synchronous_mode on: a sync standby after {:.1}s",
        took.as_secs_f64()
    );
    psql(&pg_admin_url(), CHAOS_TABLE);
    psql(
        &pg_admin_url(),
        "insert into chaos_writes (note) values ('synchronous')",
    );
    cluster(&["sync", "off"]);
    wait_for("no synchronous standby", Duration::from_secs(20), || {
        (sync_states()? == "async,async").then_some(())
    });
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_redis_master_kill_promotes_a_replica_and_it_rejoins() {
    let _chaos = Chaos::begin();
    let password = required("RINGGATE_REDIS_PASSWORD");
    let old = cluster(&["redis-master"]);
    let old_addr = sentinel_masters()[0].clone().unwrap();
    let key = unique("chaos:");
    redis_cli(&old_addr, Some(&password), &["SET", &key, "kept"]).expect("write to the master");
    // WAIT 2 replicas: the write is on both before the crash.
    assert_eq!(
        redis_cli(&old_addr, Some(&password), &["WAIT", "2", "2000"]).as_deref(),
        Some("2")
    );
    cluster(&["kill", &old]);
    let (new_addr, agreed) = wait_for(
        "Sentinels to agree on a new master",
        Duration::from_secs(30),
        || {
            let m = sentinel_masters();
            (m.iter().all(|x| x.is_some() && *x == m[0])
                && m[0].as_deref() != Some(old_addr.as_str()))
            .then(|| m[0].clone().unwrap())
        },
    );
    let (_, writable) = wait_for("a write on the new master", Duration::from_secs(10), || {
        redis_cli(&new_addr, Some(&password), &["SET", "chaos:after", "1"]).filter(|r| r == "OK")
    });
    let new = cluster(&["redis-master"]);
    eprintln!(
        "redis failover: {old} ({old_addr}) SIGKILLed; Sentinels agree on {new} ({new_addr}) after \
         {:.1}s, writable after {:.1}s",
        agreed.as_secs_f64(),
        (agreed + writable).as_secs_f64()
    );
    assert_eq!(
        redis_cli(&new_addr, Some(&password), &["GET", &key]).as_deref(),
        Some("kept"),
        "the write survived"
    );
    cluster(&["start", &old]);
    let (_, rejoined) = wait_for(
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
        "redis rejoin: {old} replica of {new} {:.1}s after its restart",
        rejoined.as_secs_f64()
    );
    assert_eq!(
        redis_cli(&old_addr, Some(&password), &["GET", &key]).as_deref(),
        Some("kept")
    );
    wait_for(
        "the new master's write on the old one",
        Duration::from_secs(10),
        || redis_cli(&old_addr, Some(&password), &["GET", "chaos:after"]).filter(|v| v == "1"),
    );
    assert_eq!(cluster(&["redis-master"]), new);
}
