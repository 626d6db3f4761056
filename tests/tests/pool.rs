//! ringgate-pool against a real PostgreSQL (the compose/ cluster's leader).

use std::{rc::Rc, sync::Arc, time::Duration};

use monoio::time::sleep;
use ringgate_discovery::Topology;
use ringgate_pool::{
    url::{parse_pg_url, PgUrl},
    Budgets, Config, Error, Intent, PoolKey, Shard,
};
use ringgate_tests::{
    backend::{backends_named, pg_admin_url, psql, required, unique},
    eventually_async,
};

const NEEDS: &str = "needs compose backend (compose/cluster up)";

/// The first value of the first row of `sql`, parsed from the server's text.
async fn value<T: std::str::FromStr>(
    c: &ringgate_pool::PgConn,
    sql: &str,
    params: &[Option<String>],
) -> Result<T, ringgate_pool::PgError>
where
    T::Err: std::fmt::Debug,
{
    let r = c.query(sql, params, 1 << 20).await.result?;
    let text = r.rows[0][0].as_deref().expect("not NULL");
    Ok(text.parse().expect("parses"))
}

fn admin() -> PgUrl {
    parse_pg_url(&pg_admin_url()).expect("RINGGATE_TEST_PG_URL is a postgres URL")
}

/// A one-core shard on a fixed topology pointing at `primary` (and `replica`).
fn shard(config: Config, primary: &PgUrl, replica: Option<&PgUrl>) -> Rc<Shard> {
    let topology = Topology::fixed(
        (primary.addr, primary.host.clone()),
        replica.map(|r| (r.addr, r.host.clone())),
    );
    Shard::new(0, Budgets::new(&config), config, Arc::new(topology))
}

fn key(tenant: &str, url: &PgUrl, node: &str) -> PoolKey {
    PoolKey {
        tenant: tenant.into(),
        database: url.credentials.database.clone(),
        role: url.credentials.user.clone(),
        node: node.into(),
    }
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn test_connection_pool_lru_eviction() {
    let _ = NEEDS;
    let url = admin();
    let run = unique("lru");
    let shard = shard(
        Config {
            max_tenant_pools: 5,
            ..Config::default()
        },
        &url,
        None,
    );
    let hot = format!("{run}hot");
    for i in 0..30 {
        // The hot tenant is used between every new cold tenant.
        for tenant in [hot.clone(), format!("{run}cold{i}")] {
            let mut c = shard
                .checkout(&tenant, &url.credentials, Intent::Write)
                .await
                .expect("checkout");
            c.conn().simple("select 1").await.expect("query");
        }
        let stats = shard.stats();
        assert!(
            stats.pools <= 5,
            "capacity bound holds: {} pools cached",
            stats.pools
        );
    }
    assert!(
        shard.has_pool(&key(&hot, &url, "primary")),
        "the recently used tenant survives"
    );
    let cold_cached = (0..30)
        .filter(|i| shard.has_pool(&key(&format!("{run}cold{i}"), &url, "primary")))
        .count();
    assert!(
        cold_cached <= 4,
        "one-hit tenants go first: {cold_cached} of 30 still cached"
    );
    assert!(shard.stats().evicted_capacity >= 25, "{:?}", shard.stats());
    // Evicted pools close their server connections: at most one per cached pool remains.
    eventually_async(
        "evicted pools' backends gone",
        Duration::from_secs(5),
        || backends_named(&format!("ringgate/{run}")) <= 5,
    )
    .await;
    assert_eq!(
        backends_named(&format!("ringgate/{hot}/")),
        1,
        "the hot tenant keeps its connection"
    );
    shard.close_all();
    eventually_async("all backends gone", Duration::from_secs(5), || {
        backends_named(&format!("ringgate/{run}")) == 0
    })
    .await;
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn test_connection_pool_ttl_eviction() {
    let url = admin();
    let run = unique("ttl");
    let config = Config {
        idle_ttl: Duration::from_millis(800),
        ..Config::default()
    };
    let shard = shard(config, &url, None);
    let (busy, idle) = (format!("{run}busy"), format!("{run}idle"));
    for tenant in [&busy, &idle] {
        let mut c = shard
            .checkout(tenant, &url.credentials, Intent::Write)
            .await
            .unwrap();
        c.conn().simple("select 1").await.unwrap();
    }
    assert_eq!(backends_named(&format!("ringgate/{run}")), 2);
    // Keep one tenant busy for two TTLs while maintenance runs.
    for _ in 0..16 {
        let mut c = shard
            .checkout(&busy, &url.credentials, Intent::Write)
            .await
            .unwrap();
        c.conn().simple("select 1").await.unwrap();
        drop(c);
        shard.maintain();
        // A sleep: it paces the busy tenant's use across the TTL (the case under test).
        sleep(Duration::from_millis(100)).await;
    }
    assert!(
        shard.has_pool(&key(&busy, &url, "primary")),
        "a pool in use does not expire"
    );
    assert!(
        !shard.has_pool(&key(&idle, &url, "primary")),
        "an idle pool expires after the TTL"
    );
    assert!(shard.stats().evicted_idle >= 1);
    eventually_async(
        "idle tenant's backend closed",
        Duration::from_secs(5),
        || backends_named(&format!("ringgate/{idle}/")) == 0,
    )
    .await;
    assert_eq!(backends_named(&format!("ringgate/{busy}/")), 1);
    shard.close_all();
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn tenant_limit_is_never_exceeded_and_exhaustion_times_out() {
    let url = admin();
    let tenant = unique("budget");
    let config = Config {
        max_per_tenant: 4,
        wait_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let shard = shard(config, &url, None);
    // Sample pg_stat_activity from another thread while 20 tasks compete for 4 connections.
    let prefix = format!("ringgate/{tenant}/");
    let sampler = {
        let prefix = prefix.clone();
        std::thread::spawn(move || {
            (0..40)
                .map(|_| {
                    // A sleep: the sampling period over the run, not a wait for a state.
                    std::thread::sleep(Duration::from_millis(25));
                    backends_named(&prefix)
                })
                .max()
                .unwrap()
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (shard, tenant, creds) = (shard.clone(), tenant.clone(), url.credentials.clone());
        tasks.push(monoio::spawn(async move {
            for _ in 0..5 {
                match shard.checkout(&tenant, &creds, Intent::Write).await {
                    Ok(mut c) => {
                        c.conn().simple("select pg_sleep(0.01)").await.unwrap();
                    }
                    Err(Error::Exhausted { .. }) => {}
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let max_seen = sampler.join().unwrap();
    assert!(
        max_seen <= 4,
        "at most 4 server connections, saw {max_seen}"
    );
    assert!(max_seen >= 1);
    // Hold all four; the fifth waits the wait timeout and names the limit.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            shard
                .checkout(&tenant, &url.credentials, Intent::Write)
                .await
                .unwrap(),
        );
    }
    let started = std::time::Instant::now();
    match shard
        .checkout(&tenant, &url.credentials, Intent::Write)
        .await
    {
        Err(e @ Error::Exhausted { limit: 4, .. }) => {
            assert!(e.to_string().contains(&tenant), "{e}")
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "waited the timeout"
    );
    drop(held);
    assert!(
        shard
            .checkout(&tenant, &url.credentials, Intent::Write)
            .await
            .is_ok(),
        "free again"
    );
    shard.close_all();
}

/// A caller that gives up on its statement (a lapsed lease, a request that timed out) has
/// it cancelled on the server, and the connection is not reused.
#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn an_abandoned_statement_is_cancelled_and_its_connection_not_reused() {
    let url = admin();
    let tenant = unique("abandon");
    let shard = shard(Config::default(), &url, None);
    let marker = unique("abandoned_sleep_");
    let mut c = shard
        .checkout(&tenant, &url.credentials, Intent::Write)
        .await
        .unwrap();
    let sql = format!("select pg_sleep(30) as {marker}");
    let gave_up = monoio::time::timeout(
        Duration::from_millis(300),
        c.conn().query(&sql, &[], 1 << 20),
    )
    .await;
    assert!(gave_up.is_err(), "the statement was still running");
    assert!(
        c.conn().is_closed(),
        "an abandoned connection is not reused"
    );
    let running = || {
        psql(
            &pg_admin_url(),
            &format!(
                "select count(*) from pg_stat_activity where state = 'active' \
                 and query like '%{marker}%' and pid <> pg_backend_pid()"
            ),
        ) == "1"
    };
    eventually_async(
        "the abandoned statement is cancelled",
        Duration::from_secs(5),
        || !running(),
    )
    .await;
    drop(c);
    shard.close_all();
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn dead_connections_are_replaced_and_statements_cached() {
    let url = admin();
    let tenant = unique("dead");
    let shard = shard(Config::default(), &url, None);
    let mut c = shard
        .checkout(&tenant, &url.credentials, Intent::Write)
        .await
        .unwrap();
    let pid: i32 = value(c.conn(), "select pg_backend_pid()", &[])
        .await
        .unwrap();
    // Every statement is cached, `select pg_backend_pid()` included.
    let cached = c.conn().cached_statements();
    for _ in 0..3 {
        let n: i32 = value(c.conn(), "select $1::int + 1", &[Some("41".into())])
            .await
            .unwrap();
        assert_eq!(n, 42);
    }
    assert_eq!(c.conn().cached_statements(), cached + 1);
    let prepared: i64 = value(
        c.conn(),
        "select count(*) from pg_prepared_statements where statement = 'select $1::int + 1'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(prepared, 1, "prepared once per connection, reused after");
    drop(c);
    psql(
        &pg_admin_url(),
        &format!("select pg_terminate_backend({pid})"),
    );
    // The backend leaves pg_stat_activity as it exits, after telling the client why (and
    // the psql calls outlast the 20 ms after which the pool checks an idle connection).
    eventually_async(
        "the terminated backend gone",
        Duration::from_secs(5),
        || {
            psql(
                &pg_admin_url(),
                &format!("select count(*) from pg_stat_activity where pid = {pid}"),
            ) == "0"
        },
    )
    .await;
    let mut c = shard
        .checkout(&tenant, &url.credentials, Intent::Write)
        .await
        .unwrap();
    let new_pid: i32 = value(c.conn(), "select pg_backend_pid()", &[])
        .await
        .expect("the next request succeeds");
    assert_ne!(
        pid, new_pid,
        "a fresh connection replaced the terminated one"
    );
    drop(c);
    shard.close_all();
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn bad_credentials_and_dead_server_are_clear_errors() {
    let url = admin();
    let mut wrong = url.credentials.clone();
    wrong.password = "definitely-wrong".into();
    let s = shard(Config::default(), &url, None);
    let err = s.checkout("t", &wrong, Intent::Write).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    let dead = PgUrl {
        addr: "127.0.0.1:1".parse().unwrap(),
        ..url.clone()
    };
    let s = shard(Config::default(), &dead, None);
    let err = s
        .checkout("t", &url.credentials, Intent::Write)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

/// Whether the connection is on a standby.
async fn in_recovery(
    shard: &Rc<Shard>,
    tenant: &str,
    creds: &ringgate_pool::Credentials,
) -> (bool, String) {
    let mut c = shard.checkout(tenant, creds, Intent::Read).await.unwrap();
    let r = value::<String>(c.conn(), "select pg_is_in_recovery()", &[])
        .await
        .unwrap()
        == "t";
    (r, c.node().to_string())
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn test_read_replica_routing() {
    let primary = parse_pg_url(&required("DATABASE_URL")).unwrap();
    let replica = parse_pg_url(&required("READ_REPLICA_URL")).unwrap();
    let s = shard(Config::default(), &primary, Some(&replica));
    let tenant = unique("rr");
    for _ in 0..3 {
        assert_eq!(
            in_recovery(&s, &tenant, &primary.credentials).await,
            (true, "replica".into()),
            "reads use the replica"
        );
    }
    let mut w = s
        .checkout(&tenant, &primary.credentials, Intent::Write)
        .await
        .unwrap();
    let r = value::<String>(w.conn(), "select pg_is_in_recovery()", &[])
        .await
        .unwrap()
        == "t";
    assert!(!r && w.node() == "primary", "writes use the primary");
    drop(w);
    s.close_all();
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn test_read_replica_fallback() {
    let primary = parse_pg_url(&required("DATABASE_URL")).unwrap();
    let s = shard(Config::default(), &primary, None);
    let tenant = unique("rf");
    assert_eq!(
        in_recovery(&s, &tenant, &primary.credentials).await,
        (false, "primary".into()),
        "without a replica, reads use the primary"
    );
    s.close_all();
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn topology_change_closes_pools_and_read_only_primary_marks_stale() {
    let url = admin();
    let tenant = unique("topo");
    let s = shard(Config::default(), &url, None);
    let mut c = s
        .checkout(&tenant, &url.credentials, Intent::Write)
        .await
        .unwrap();
    c.conn().simple("select 1").await.unwrap();
    drop(c);
    assert_eq!(backends_named(&format!("ringgate/{tenant}/")), 1);
    // The primary moves elsewhere (here: nowhere reachable): its pool closes, writes go to the new one.
    let moved = Topology {
        epoch: 2,
        ..Topology::fixed(("127.0.0.1:1".parse().unwrap(), "gone".into()), None)
    };
    s.set_topology(Arc::new(moved));
    assert!(!s.has_pool(&key(&tenant, &url, "primary")));
    eventually_async("old pool's backend closed", Duration::from_secs(5), || {
        backends_named(&format!("ringgate/{tenant}/")) == 0
    })
    .await;
    // A read-only answer from the supposed primary drops it as leader and asks to re-resolve.
    let asked = Rc::new(std::cell::Cell::new(0));
    let a = asked.clone();
    s.on_stale(move || a.set(a.get() + 1));
    s.report_read_only("primary");
    assert_eq!(asked.get(), 1);
    assert!(s.topology().stale, "topology marked stale");
    s.report_read_only("not-the-leader");
    assert_eq!(asked.get(), 1, "only the leader's refusal counts");
    // With no leader at all, writes have nowhere to go.
    s.set_topology(Arc::new(Topology {
        epoch: 3,
        leader: None,
        replicas: vec![],
        stale: true,
        lease_generation: 0,
    }));
    assert!(matches!(
        s.checkout(&tenant, &url.credentials, Intent::Write).await,
        Err(Error::NoPrimary)
    ));
}

/// Whether the checked-out connection is encrypted, per the server.
async fn server_sees_tls(
    shard: &Rc<Shard>,
    tenant: &str,
    creds: &ringgate_pool::Credentials,
) -> Result<bool, Error> {
    let mut c = shard.checkout(tenant, creds, Intent::Write).await?;
    let ssl = value::<String>(
        c.conn(),
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        &[],
    )
    .await
    .map_err(Error::Pg)?;
    Ok(ssl == "t")
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn tls_to_postgres_require_and_verify_full() {
    let url = admin();
    let tenant = unique("tls");
    let plain = shard(Config::default(), &url, None);
    assert!(
        !server_sees_tls(&plain, &tenant, &url.credentials)
            .await
            .unwrap(),
        "plaintext by default"
    );
    let ca = std::path::PathBuf::from(required("RINGGATE_TEST_PG_CA"));
    let verified = ringgate_pool::tls::verify_full(&ca).expect("the cluster's CA loads");
    let s = shard(
        Config {
            tls: Some(verified),
            ..Config::default()
        },
        &url,
        None,
    );
    assert!(
        server_sees_tls(&s, &tenant, &url.credentials)
            .await
            .unwrap(),
        "verify-full encrypts"
    );
    let s = shard(
        Config {
            tls: Some(ringgate_pool::tls::require().unwrap()),
            ..Config::default()
        },
        &url,
        None,
    );
    assert!(
        server_sees_tls(&s, &tenant, &url.credentials)
            .await
            .unwrap(),
        "require encrypts"
    );
    // A certificate from another CA is refused under verify-full.
    let dir = std::env::temp_dir().join(unique("otherca"));
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(dir.join("k.pem"))
        .arg("-out")
        .arg(dir.join("ca.pem"))
        .output()
        .unwrap();
    assert!(status.status.success());
    let other = ringgate_pool::tls::verify_full(&dir.join("ca.pem")).unwrap();
    let s = shard(
        Config {
            tls: Some(other),
            ..Config::default()
        },
        &url,
        None,
    );
    let err = server_sees_tls(&s, &tenant, &url.credentials)
        .await
        .unwrap_err();
    let detail = format!("{err:?}");
    assert!(
        detail.contains("InvalidCertificate"),
        "refused for its certificate: {detail}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn idle_connections_are_trimmed_to_the_warm_minimum() {
    let url = admin();
    let tenant = unique("warm");
    let config = Config {
        min_warm: 1,
        conn_idle_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let s = shard(config, &url, None);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            s.checkout(&tenant, &url.credentials, Intent::Write)
                .await
                .unwrap(),
        );
    }
    drop(held);
    assert_eq!(backends_named(&format!("ringgate/{tenant}/")), 3);
    // A sleep: outliving the idle timeout (300 ms) is the case under test.
    sleep(Duration::from_millis(400)).await;
    s.maintain();
    assert_eq!(s.stats().trimmed_connections, 2, "{:?}", s.stats());
    eventually_async(
        "idle connections beyond the warm one closed",
        Duration::from_secs(5),
        || backends_named(&format!("ringgate/{tenant}/")) == 1,
    )
    .await;
    // The warm connection still serves at once.
    let mut c = s
        .checkout(&tenant, &url.credentials, Intent::Write)
        .await
        .unwrap();
    c.conn().simple("select 1").await.unwrap();
    drop(c);
    s.close_all();
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn node_budget_is_never_exceeded_across_tenants() {
    let url = admin();
    let run = unique("node");
    let config = Config {
        max_total: 3,
        max_per_tenant: 2,
        wait_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let s = shard(config, &url, None);
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..3 {
        for _ in 0..2 {
            match s
                .checkout(&format!("{run}t{i}"), &url.credentials, Intent::Write)
                .await
            {
                Ok(c) => held.push(c),
                Err(Error::Budget { limit: 3, .. }) => refused += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }
    assert_eq!(held.len(), 3, "the node budget caps all tenants together");
    assert_eq!(refused, 3);
    assert_eq!(backends_named(&format!("ringgate/{run}")), 3);
    drop(held);
    s.close_all();
}

#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn test_a_host_name_is_looked_up_again_on_connect() {
    // DATABASE_URL named `localhost`; the address it had at start is stale now (nothing
    // answers at 10.255.255.1): a connect must look the name up again, not dial the old one.
    let mut url = admin();
    url.host = "localhost".into();
    url.addr = std::net::SocketAddr::new([10, 255, 255, 1].into(), url.addr.port());
    let shard = shard(
        Config {
            connect_timeout: Duration::from_secs(2),
            ..Config::default()
        },
        &url,
        None,
    );
    let mut c = shard
        .checkout(&unique("moved"), &url.credentials, Intent::Write)
        .await
        .expect("connected to localhost's current address");
    c.conn().simple("select 1").await.expect("query");
}

/// Two cores' shards sharing one process-wide budget (on one thread here; the wake across
/// threads is the budget's unit test): one core may take all of a tenant's connections, a
/// request on the other waits for one, gets it when the first core returns one, and the
/// tenant never has more than its limit.
#[monoio::test_all(timer_enabled = true)]
#[ignore = "needs compose backend (compose/cluster up)"]
async fn a_tenant_limit_is_process_wide_and_follows_demand_across_cores() {
    let url = admin();
    let tenant = unique("cores");
    let config = Config {
        max_per_tenant: 3,
        wait_timeout: Duration::from_secs(3),
        ..Config::default()
    };
    let topology = Arc::new(Topology::fixed((url.addr, url.host.clone()), None));
    let budgets = Budgets::new(&config);
    let a = Shard::new(0, budgets.clone(), config.clone(), topology.clone());
    let b = Shard::new(1, budgets.clone(), config.clone(), topology);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            a.checkout(&tenant, &url.credentials, Intent::Write)
                .await
                .unwrap(),
        );
    }
    assert_eq!(backends_named(&format!("ringgate/{tenant}/core0")), 3);
    let node = held[0].node().to_string();
    let waiting = {
        let (b, tenant, creds) = (b.clone(), tenant.clone(), url.credentials.clone());
        monoio::spawn(async move {
            let c = b.checkout(&tenant, &creds, Intent::Write).await;
            (c, std::time::Instant::now())
        })
    };
    eventually_async(
        "core 1's request waiting for a permit",
        Duration::from_secs(2),
        || budgets.tenant(&tenant, &node).waiting() == 1,
    )
    .await;
    assert_eq!(budgets.tenant_used(&tenant, &node), 3);
    // Core 0 returns one with no request of its own waiting: it is closed, and its permit
    // goes to core 1 once the server has let the backend go.
    let given_back = std::time::Instant::now();
    drop(held.pop());
    let (c, got) = waiting.await;
    let mut c = c.expect("core 1 got the permit core 0 gave back");
    assert!(got >= given_back, "core 1 did not wait for core 0's permit");
    c.conn().simple("select 1").await.unwrap();
    assert_eq!(backends_named(&format!("ringgate/{tenant}/core1")), 1);
    assert_eq!(backends_named(&format!("ringgate/{tenant}/")), 3);
    assert_eq!(budgets.tenant_used(&tenant, &node), 3);
    drop(c);
    drop(held);
    a.close_all();
    b.close_all();
    eventually_async("every connection closed", Duration::from_secs(5), || {
        budgets.tenant_used(&tenant, &node) == 0
            && backends_named(&format!("ringgate/{tenant}/")) == 0
    })
    .await;
}
