//! HA under load (issue 8, CI form): constant mixed `/sql` traffic from a scheduled load
//! generator while the Patroni leader is SIGKILLed, or switched over through Patroni's API.
//! Latency is measured from each request's scheduled time (no coordinated omission).
//! The long forms and figures live in bench/ (see bench/RESULTS.md).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use ringgate_tests::{
    backend::{
        alpha_conn_string, chaos_lock, cluster, psql, repair_cluster, required, unique,
        wait_replicas_caught_up,
    },
    gateway::start,
    http::request,
};
use serde_json::json;

/// Requests per second of the mixed load.
const RATE: f64 = 500.0;
/// Client threads (each sends its share of the schedule on fresh connections).
const CLIENTS: usize = 40;

/// One request of the load.
#[derive(Debug, Clone)]
struct Sample {
    write: bool,
    /// When it was due, from the start of the run.
    due: Duration,
    /// From due time to the end of the response.
    latency: Duration,
    status: u16,
    code: String,
}

/// A running load: every fifth request is an INSERT, the others point reads.
struct Load {
    stop: Arc<AtomicBool>,
    /// The latest due time (µs from the start) of a write answered 200.
    last_write_ok: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
    samples: mpsc::Receiver<Sample>,
    start: Instant,
}

impl Load {
    fn start(addr: SocketAddr, table: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let last_write_ok = Arc::new(AtomicU64::new(0));
        let (tx, samples) = mpsc::channel();
        let start = Instant::now();
        let cs = alpha_conn_string();
        let threads = (0..CLIENTS)
            .map(|i| {
                let (stop, tx, cs, table) = (stop.clone(), tx.clone(), cs.clone(), table.to_string());
                let last_write_ok = last_write_ok.clone();
                std::thread::spawn(move || {
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let n = k * CLIENTS as u64 + i as u64;
                        let due = Duration::from_secs_f64(n as f64 / RATE);
                        let now = start.elapsed();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let write = n % 5 == 0;
                        let body = if write {
                            json!({"query": format!("insert into {table} (note) values ($1)"), "params": [format!("n{n}")]})
                        } else {
                            json!({"query": "select id, name from items where id = $1", "params": [(n % 100 + 1).to_string()]})
                        };
                        let (status, code) = ringgate_tests::http::post_sql(addr, &cs, &body);
                        if write && status == 200 {
                            last_write_ok.fetch_max(due.as_micros() as u64, Ordering::Relaxed);
                        }
                        let _ = tx.send(Sample {
                            write,
                            due,
                            latency: start.elapsed().saturating_sub(due),
                            status,
                            code,
                        });
                        k += 1;
                    }
                })
            })
            .collect();
        Self {
            stop,
            last_write_ok,
            threads,
            samples,
            start,
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits until a write due after `fault` has been answered 200 (at most `bound`),
    /// then `settle` more, so the report sees the writes come back whatever the backend's
    /// pace; returns whether they came back.
    fn wait_writes_back(&self, fault: Duration, bound: Duration, settle: Duration) -> bool {
        let end = Instant::now() + bound;
        while Instant::now() < end {
            if Duration::from_micros(self.last_write_ok.load(Ordering::Relaxed)) > fault {
                std::thread::sleep(settle);
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.samples.try_iter().collect()
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// What a run under a fault came to.
struct Report {
    reads: usize,
    writes: usize,
    failed_reads: Vec<Sample>,
    outcome_unknown: usize,
    failed_writes: Vec<Sample>,
    /// From the fault to the completion of the first write due after it that succeeded.
    writes_back_after: Duration,
    p99_event: Duration,
    p50_event: Duration,
}

fn analyse(samples: &[Sample], fault: Duration) -> Report {
    let failed_reads: Vec<Sample> = samples
        .iter()
        .filter(|s| !s.write && s.status != 200)
        .cloned()
        .collect();
    let outcome_unknown = samples
        .iter()
        .filter(|s| s.write && s.code == "outcome_unknown")
        .count();
    let failed_writes: Vec<Sample> = samples
        .iter()
        .filter(|s| s.write && s.status != 200 && s.code != "outcome_unknown")
        .cloned()
        .collect();
    let writes_back_after = samples
        .iter()
        .filter(|s| s.write && s.status == 200 && s.due > fault)
        .map(|s| s.due + s.latency - fault)
        .min()
        .unwrap_or(Duration::MAX);
    let window = |s: &&Sample| {
        s.due + Duration::from_secs(1) > fault
            && s.due
                < fault
                    .saturating_add(writes_back_after)
                    .saturating_add(Duration::from_secs(1))
    };
    let during: Vec<Duration> = samples.iter().filter(window).map(|s| s.latency).collect();
    Report {
        reads: samples.iter().filter(|s| !s.write).count(),
        writes: samples.iter().filter(|s| s.write).count(),
        failed_reads,
        outcome_unknown,
        failed_writes,
        writes_back_after,
        p99_event: percentile(during.clone(), 0.99),
        p50_event: percentile(during, 0.50),
    }
}

/// ringgate following Patroni (etcd and REST), with a table for the writes.
fn start_following_patroni() -> (ringgate::Gateway, SocketAddr, String) {
    let (g, addr) = ringgate_tests::gateway::start_following_patroni(&[
        ("RINGGATE_FAILOVER_WAIT", "30s"),
        ("RINGGATE_WORKERS", "2"),
    ]);
    let table = unique("ha_load_");
    psql(
        &required("RINGGATE_TEST_ALPHA_URL"),
        &format!("create table {table} (id bigserial primary key, note text)"),
    );
    wait_replicas_caught_up(Duration::from_secs(10));
    (g, addr, table)
}

/// Entry `name` (`pgN`) of a comma-separated per-member list, in member order.
fn nth_of(list_var: &str, name: &str) -> String {
    let i: usize = name.trim_start_matches("pg").parse().expect("pgN");
    required(list_var)
        .split(',')
        .nth(i - 1)
        .expect("one entry per member")
        .to_string()
}

/// The address member `name` listens on (`127.0.1.N`).
fn host_of(name: &str) -> String {
    let node = nth_of("RINGGATE_PG_NODES", name);
    node.split(':').next().unwrap().to_string()
}

/// Stops the gateway, drops the run's table, repairs the cluster, then checks that no read
/// failed and no write failed other than with `outcome_unknown`.
fn finish_fault_run(g: ringgate::Gateway, table: &str, r: &Report) {
    g.drain();
    psql(
        &required("RINGGATE_TEST_ALPHA_URL"),
        &format!("drop table {table}"),
    );
    repair_cluster().unwrap_or_else(|e| panic!("repairing the cluster failed: {e}"));
    assert!(
        r.failed_reads.is_empty(),
        "failed reads: {:?}",
        &r.failed_reads[..r.failed_reads.len().min(5)]
    );
    assert!(
        r.failed_writes.is_empty(),
        "failed writes: {:?}",
        &r.failed_writes[..r.failed_writes.len().min(5)]
    );
}

fn print(name: &str, r: &Report) {
    eprintln!(
        "{name} under {RATE} req/s: {} reads ({} failed), {} writes ({} failed, {} outcome unknown); \
         writes back {:.2}s after the fault; p50/p99 during the event {:.0}/{:.0} ms",
        r.reads,
        r.failed_reads.len(),
        r.writes,
        r.failed_writes.len(),
        r.outcome_unknown,
        r.writes_back_after.as_secs_f64(),
        r.p50_event.as_secs_f64() * 1000.0,
        r.p99_event.as_secs_f64() * 1000.0,
    );
}

#[test]
#[ignore = "needs compose/cluster (chaos: SIGKILLs the Patroni leader)"]
fn chaos_ha_leader_kill_under_load() {
    let _lock = chaos_lock();
    repair_cluster().unwrap_or_else(|e| panic!("the cluster is not healthy: {e}"));
    let (g, addr, table) = start_following_patroni();
    let old = cluster(&["leader"]);
    let old_host = host_of(&old);
    let load = Load::start(addr, &table);
    std::thread::sleep(Duration::from_secs(3));
    cluster(&["kill", &old]);
    let fault = load.now();
    // Until writes are back (a new leader, named in Patroni's sync key with a synchronous
    // standby), then 5 s more.
    let back = load.wait_writes_back(fault, Duration::from_secs(45), Duration::from_secs(5));
    let samples = load.finish();
    let r = analyse(&samples, fault);
    print("leader SIGKILL", &r);
    assert!(back, "no write answered 200 within 45 s of the fault");

    // The old leader rejoins as a replica and takes reads again.
    cluster(&["start", &old]);
    let rejoined = Instant::now();
    let cs = alpha_conn_string();
    let served_by_old = loop {
        assert!(
            rejoined.elapsed() < Duration::from_secs(60),
            "{old} never served a read after rejoining"
        );
        // Concurrent slow reads spread over every fit replica.
        let hits: Vec<_> = (0..8)
            .map(|_| {
                let cs = cs.clone();
                std::thread::spawn(move || {
                    let body = json!({"query": "select inet_server_addr()::text as a, pg_sleep(0.2)::text as s"});
                    request(addr, "POST", "/sql", &[("Neon-Connection-String", &cs)], body.to_string().as_bytes())
                })
            })
            .collect();
        let served: Vec<String> = hits
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|r| r.status == 200)
            .filter_map(|r| {
                r.json()["rows"][0]["a"]
                    .as_str()
                    .map(|a| a.split('/').next().unwrap_or(a).to_string())
            })
            .collect();
        if served.contains(&old_host) {
            break rejoined.elapsed();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "{old} rejoined and served reads {:.1}s after restart",
        served_by_old.as_secs_f64()
    );
    finish_fault_run(g, &table, &r);
    assert!(r.writes_back_after < Duration::from_secs(30));
}

#[test]
#[ignore = "needs compose/cluster (chaos: Patroni switchover)"]
fn chaos_ha_switchover_under_load() {
    let _lock = chaos_lock();
    repair_cluster().unwrap_or_else(|e| panic!("the cluster is not healthy: {e}"));
    let (g, addr, table) = start_following_patroni();
    let old = cluster(&["leader"]);
    let rest = nth_of("RINGGATE_PATRONI_URLS", &old);
    let load = Load::start(addr, &table);
    std::thread::sleep(Duration::from_secs(3));
    let fault = load.now();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-XPOST",
            "-d",
            &format!("{{\"leader\":\"{old}\"}}"),
            &format!("{rest}/switchover"),
        ])
        .output()
        .expect("curl");
    eprintln!(
        "switchover: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let back = load.wait_writes_back(fault, Duration::from_secs(45), Duration::from_secs(5));
    let samples = load.finish();
    let r = analyse(&samples, fault);
    print("Patroni switchover", &r);
    assert!(back, "no write answered 200 within 45 s of the fault");
    finish_fault_run(g, &table, &r);
}

/// Counts the server connections of ringgate's pools on a member (`application_name`
/// `ringgate/<tenant>/core<n>`). Project-change listeners (`ringgate/listen/...`, outside
/// the budgets) are left out: the gateways under test here have no control database, and
/// another gateway's listeners on the shared cluster must not count against their budget.
const POOLED_BACKENDS: &str = "select count(*) from pg_stat_activity \
     where application_name like 'ringgate/%' and application_name not like 'ringgate/listen/%'";

/// Server connections ringgate holds on every member (`application_name` `ringgate/...`).
fn ringgate_backends() -> usize {
    required("RINGGATE_PG_NODES")
        .split(',')
        .filter_map(|node| {
            ringgate_tests::backend::try_psql(
                &ringgate_tests::backend::pg_node_url(node),
                POOLED_BACKENDS,
            )
        })
        .filter_map(|n| n.parse::<usize>().ok())
        .sum()
}

/// Resident memory of this process (the test and the in-process gateway).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Seconds of the soak: `RINGGATE_SOAK_SECS` (the long form, from bench/ha.sh), else 60.
fn soak_secs() -> u64 {
    std::env::var("RINGGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// Server connections ringgate holds on each member, in `RINGGATE_PG_NODES` order.
fn ringgate_backends_by_node() -> Vec<usize> {
    required("RINGGATE_PG_NODES")
        .split(',')
        .map(|node| {
            ringgate_tests::backend::try_psql(
                &ringgate_tests::backend::pg_node_url(node),
                POOLED_BACKENDS,
            )
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
        })
        .collect()
}

#[test]
#[ignore = "needs compose/cluster (exclusive: counts every ringgate server connection)"]
fn chaos_soak_connections_stay_within_budget_and_memory_is_flat() {
    soak(2);
}

/// The soak on 16 cores (on this 2-CPU machine): the one tenant's clients land on every
/// core, and its 10 connections per member (a process-wide limit) follow them. Latency is
/// printed, not asserted: here every core wants the tenant's connections, so they move
/// between cores (a reconnect each) and the load falls behind (README, Limits across cores).
#[test]
#[ignore = "needs compose/cluster (exclusive: counts every ringgate server connection)"]
fn chaos_soak_on_sixteen_cores_keeps_the_tenants_budget() {
    soak(16);
}

/// `soak_secs()` of 500 requests a second (a fifth of them writes) from one tenant, on
/// `workers` cores: nothing fails, no member ever holds more server connections than the
/// tenant's limit (process-wide, whatever the cores), all are closed once idle, memory flat.
fn soak(workers: usize) {
    let _lock = chaos_lock();
    repair_cluster().unwrap_or_else(|e| panic!("the cluster is not healthy: {e}"));
    let baseline = ringgate_backends();
    let (etcd, patroni, scope, ns) = (
        required("RINGGATE_ETCD_ENDPOINTS"),
        required("RINGGATE_PATRONI_URLS"),
        required("RINGGATE_PATRONI_SCOPE"),
        required("RINGGATE_PATRONI_NAMESPACE"),
    );
    // Budget: the tenant's server connections per member (RINGGATE_POOL_MAX_PER_TENANT, 10
    // unless RINGGATE_SOAK_PER_TENANT says otherwise, under RINGGATE_POOL_MAX_TOTAL=20), for
    // the whole process.
    let per_tenant: usize = std::env::var("RINGGATE_SOAK_PER_TENANT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let per_node = per_tenant.min(20);
    let per_tenant = per_tenant.to_string();
    let baseline_by_node = ringgate_backends_by_node();
    let budget = per_node * baseline_by_node.len();
    let workers_s = workers.to_string();
    let (g, addr) = start(&[
        ("RINGGATE_ETCD_ENDPOINTS", etcd.as_str()),
        ("RINGGATE_PATRONI_URLS", patroni.as_str()),
        ("RINGGATE_PATRONI_SCOPE", scope.as_str()),
        ("RINGGATE_PATRONI_NAMESPACE", ns.as_str()),
        ("RINGGATE_WORKERS", workers_s.as_str()),
        ("RINGGATE_POOL_MAX_PER_TENANT", per_tenant.as_str()),
        ("RINGGATE_POOL_MAX_TOTAL", "20"),
        ("RINGGATE_POOL_IDLE_TTL", "3s"),
    ]);
    let table = unique("soak_");
    psql(
        &required("RINGGATE_TEST_ALPHA_URL"),
        &format!("create table {table} (id bigserial primary key, note text)"),
    );
    let secs = soak_secs();
    let load = Load::start(addr, &table);
    let mut peak = 0;
    // Most connections over its baseline any member had at once.
    let mut node_peak = 0;
    let mut rss_samples = Vec::new();
    let start = Instant::now();
    let mut next_rss = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100));
        let now = ringgate_backends_by_node();
        peak = peak.max(now.iter().sum());
        for (n, b) in now.iter().zip(&baseline_by_node) {
            node_peak = node_peak.max(n.saturating_sub(*b));
        }
        if start.elapsed() >= next_rss {
            rss_samples.push(rss());
            next_rss += Duration::from_secs(2);
        }
    }
    let samples = load.finish();
    let failed = samples.iter().filter(|s| s.status != 200).count();
    // Latency once warm (the first 5 s open the pools).
    let latencies: Vec<Duration> = samples
        .iter()
        .filter(|s| s.due > Duration::from_secs(5))
        .map(|s| s.latency)
        .collect();
    let p99 = percentile(latencies.clone(), 0.99);
    let p50 = percentile(latencies, 0.50);
    // Memory: the last third against the first third (after warm-up).
    let third = (rss_samples.len() / 3).max(1);
    let early = *rss_samples[..third].iter().max().unwrap();
    let late = *rss_samples[rss_samples.len() - third..]
        .iter()
        .max()
        .unwrap();
    // After the load the pools expire and close their server connections.
    let idle_start = Instant::now();
    let mut after = ringgate_backends();
    while after > baseline && idle_start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(500));
        after = ringgate_backends();
    }
    // Connections opened per request: how often connections moved between cores.
    let connects = g.registry().server_connects();
    let handed: u64 = (0..workers)
        .map(|c| {
            g.registry()
                .core(c)
                .sql_events(ringgate::metrics::SqlEvent::HandedOff)
        })
        .sum();
    eprintln!(
        "soak {secs}s on {workers} cores at {RATE} req/s: {} requests, {failed} failed, p50/p99 {:.1}/{:.1} ms; \
         server connections peak {peak} (budget {budget}), at most {node_peak} on one member (limit {per_node}), {after} after {:.1}s idle (baseline {baseline}); \
         {connects} server connects ({:.3} per request), {handed} requests handed to another core; \
         RSS {:.1} MiB early, {:.1} MiB late",
        samples.len(),
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        idle_start.elapsed().as_secs_f64(),
        connects as f64 / samples.len().max(1) as f64,
        early as f64 / 1048576.0,
        late as f64 / 1048576.0,
    );
    g.drain();
    psql(
        &required("RINGGATE_TEST_ALPHA_URL"),
        &format!("drop table {table}"),
    );
    assert_eq!(failed, 0);
    assert!(
        peak <= baseline + budget,
        "{peak} server connections, budget {budget}"
    );
    assert!(
        node_peak <= per_node,
        "{node_peak} server connections on one member, limit {per_node}"
    );
    assert_eq!(
        after, baseline,
        "server connections did not return to the idle baseline"
    );
    assert!(
        late < early + 16 * 1048576,
        "RSS grew from {early} to {late}"
    );
}

/// Tenants cycled through the pool cache: `RINGGATE_CHURN_TENANTS` (long form), else 1,000.
fn churn_tenants() -> usize {
    std::env::var("RINGGATE_CHURN_TENANTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

#[test]
#[ignore = "needs compose/cluster (exclusive: counts every ringgate server connection)"]
fn chaos_tenant_churn_through_a_bounded_pool_cache() {
    let _lock = chaos_lock();
    repair_cluster().unwrap_or_else(|e| panic!("the cluster is not healthy: {e}"));
    let n = churn_tenants();
    let admin = required("RINGGATE_TEST_PG_URL");
    let prefix = unique("churn");
    // N roles, each a tenant with its own credentials (and so its own pool).
    psql(
        &admin,
        &format!(
            "do $$ begin for i in 0..{} loop \
               execute format('create role %I login password %L', '{prefix}_' || i, 'churn-pw'); \
               execute format('grant connect on database tenant_alpha to %I', '{prefix}_' || i); \
             end loop; end $$",
            n - 1
        ),
    );
    wait_replicas_caught_up(Duration::from_secs(20));
    let baseline = ringgate_backends();
    let db = required("DATABASE_URL");
    let (g, addr) = start(&[
        ("DATABASE_URL", db.as_str()),
        ("RINGGATE_MAX_TENANT_POOLS", "100"),
        ("RINGGATE_POOL_MIN_WARM", "0"),
    ]);
    let host = required("DATABASE_URL");
    let hostport = host
        .rsplit('@')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let mut peak = 0;
    let mut rss_at = Vec::new();
    for i in 0..n {
        let cs = format!("postgresql://{prefix}_{i}:churn-pw@{hostport}/tenant_alpha");
        let body = json!({"query": "select current_user as u"}).to_string();
        let r = request(
            addr,
            "POST",
            "/sql",
            &[("Neon-Connection-String", &cs)],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "tenant {i}: {}", r.text());
        assert_eq!(r.json()["rows"][0]["u"], format!("{prefix}_{i}"));
        if i % 100 == 99 {
            peak = peak.max(ringgate_backends());
            rss_at.push(rss());
        }
    }
    let took = started.elapsed();
    let final_count = ringgate_backends();
    eprintln!(
        "tenant churn: {n} tenants through a cache of 100 pools in {:.1}s; server connections peak {} \
         (baseline {baseline}), {} at the end; RSS {:.1} MiB after 100 tenants, {:.1} MiB after {n}",
        took.as_secs_f64(),
        peak,
        final_count,
        rss_at[0] as f64 / 1048576.0,
        *rss_at.last().unwrap() as f64 / 1048576.0,
    );
    g.drain();
    // Every pool closed with the gateway: no server connection left behind.
    let end = Instant::now() + Duration::from_secs(10);
    while ringgate_backends() > baseline && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    let leaked = ringgate_backends().saturating_sub(baseline);
    psql(
        &admin,
        &format!(
            "do $$ begin for i in 0..{} loop \
               execute format('revoke connect on database tenant_alpha from %I', '{prefix}_' || i); \
               execute format('drop role %I', '{prefix}_' || i); \
             end loop; end $$",
            n - 1
        ),
    );
    assert!(
        peak <= baseline + 100,
        "{peak} server connections with 100 pools"
    );
    assert_eq!(
        leaked, 0,
        "server connections left after the gateway stopped"
    );
    let growth = rss_at.last().unwrap().saturating_sub(rss_at[0]);
    assert!(
        growth < 32 * 1048576,
        "RSS grew by {growth} bytes over {n} tenants"
    );
}
