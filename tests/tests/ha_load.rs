//! HA under load (issue 8, CI form): constant mixed `/sql` traffic from a scheduled load
//! generator while the Patroni leader is SIGKILLed, or switched over through Patroni's API.
//! Latency is measured from each request's scheduled time (no coordinated omission).
//! The long forms and figures live in bench/ (see bench/RESULTS.md).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use ringgate_tests::{
    backend::{
        chaos_lock, cluster, psql, repair_cluster, required, unique, wait_replicas_caught_up,
    },
    gateway::start,
    http::request,
};
use serde_json::{json, Value};

/// Requests per second of the mixed load.
const RATE: f64 = 500.0;
/// Client threads (each sends its share of the schedule on fresh connections).
const CLIENTS: usize = 40;

fn alpha_conn_string() -> String {
    let alpha = required("RINGGATE_TEST_ALPHA_URL");
    let creds = alpha
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .unwrap()
        .to_string();
    format!("postgresql://{creds}@alpha.ringgate.test/tenant_alpha")
}

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
    threads: Vec<std::thread::JoinHandle<()>>,
    samples: mpsc::Receiver<Sample>,
    start: Instant,
}

impl Load {
    fn start(addr: SocketAddr, table: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, samples) = mpsc::channel();
        let start = Instant::now();
        let cs = alpha_conn_string();
        let threads = (0..CLIENTS)
            .map(|i| {
                let (stop, tx, cs, table) = (stop.clone(), tx.clone(), cs.clone(), table.to_string());
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
                        let r = request(
                            addr,
                            "POST",
                            "/sql",
                            &[("Neon-Connection-String", &cs)],
                            body.to_string().as_bytes(),
                        );
                        let code = serde_json::from_slice::<Value>(&r.body)
                            .ok()
                            .and_then(|v| v["code"].as_str().map(str::to_string))
                            .unwrap_or_default();
                        let _ = tx.send(Sample {
                            write,
                            due,
                            latency: start.elapsed().saturating_sub(due),
                            status: r.status,
                            code,
                        });
                        k += 1;
                    }
                })
            })
            .collect();
        Self {
            stop,
            threads,
            samples,
            start,
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
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
            && s.due < fault + writes_back_after + Duration::from_secs(1)
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
    let (etcd, patroni, scope, ns) = (
        required("RINGGATE_ETCD_ENDPOINTS"),
        required("RINGGATE_PATRONI_URLS"),
        required("RINGGATE_PATRONI_SCOPE"),
        required("RINGGATE_PATRONI_NAMESPACE"),
    );
    let (g, addr) = start(&[
        ("RINGGATE_ETCD_ENDPOINTS", etcd.as_str()),
        ("RINGGATE_PATRONI_URLS", patroni.as_str()),
        ("RINGGATE_PATRONI_SCOPE", scope.as_str()),
        ("RINGGATE_PATRONI_NAMESPACE", ns.as_str()),
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
    // Until writes are back, then 5 s more.
    let end = Instant::now() + Duration::from_secs(40);
    while Instant::now() < end {
        let new = cluster(&["leader"]);
        if !new.is_empty() && new != old {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(8));
    let samples = load.finish();
    let r = analyse(&samples, fault);
    print("leader SIGKILL", &r);

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
    let end = Instant::now() + Duration::from_secs(40);
    while Instant::now() < end {
        let new = cluster(&["leader"]);
        if !new.is_empty() && new != old {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(6));
    let samples = load.finish();
    let r = analyse(&samples, fault);
    print("Patroni switchover", &r);
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
