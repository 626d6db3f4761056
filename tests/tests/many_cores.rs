//! Many cores on a small machine (`RINGGATE_WORKERS` 16 and 64 on 2 CPUs): a tenant's
//! connection limit and rate limit are the tenant's, however its clients spread over the
//! cores: all on one core or on every one. Requests go to the cores holding the tenant's
//! connections (handed over), so connections do not move: few reconnects per request.

use std::{
    collections::BTreeMap,
    io::{BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ringgate::metrics::RouteLabel;
use ringgate_pool::url::parse_pg_url;
use ringgate_tests::{
    backend::{pg_admin_url, psql, unique},
    gateway::start,
    http::{read_response, request, Resp},
    worker::TestWorker,
};
use serde_json::json;

/// A Neon connection string for `project` with the admin credentials.
fn conn_string(project: &str) -> String {
    let c = parse_pg_url(&pg_admin_url()).unwrap().credentials;
    format!(
        "postgres://{}:{}@{project}.ringgate.test/{}",
        c.user, c.password, c.database
    )
}

fn start_on_admin(workers: usize) -> (ringgate::Gateway, SocketAddr) {
    let (url, workers) = (pg_admin_url(), workers.to_string());
    start(&[
        ("DATABASE_URL", url.as_str()),
        ("RINGGATE_WORKERS", workers.as_str()),
        ("RINGGATE_POOL_MAX_PER_TENANT", "10"),
        ("RINGGATE_POOL_TIMEOUT", "5s"),
    ])
}

/// One keep-alive client connection (it stays on the core that accepted it).
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Self { stream, reader }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes()).unwrap();
        self.stream.write_all(body).unwrap();
        read_response(&mut self.reader).expect("a response")
    }

    fn sql(&mut self, cs: &str, query: &str) -> Resp {
        let body = json!({ "query": query }).to_string();
        self.send(
            "POST",
            "/sql",
            &[("Neon-Connection-String", cs)],
            body.as_bytes(),
        )
    }
}

/// The tenant's server connections per core, per `pg_stat_activity` (`active`: only those
/// running a statement).
fn by_core_where(project: &str, active: bool) -> BTreeMap<String, usize> {
    let state = if active { "and state = 'active'" } else { "" };
    let sql = format!(
        "select application_name, count(*) from pg_stat_activity \
         where application_name like 'ringgate/{project}/%' {state} group by 1"
    );
    psql(&pg_admin_url(), &sql)
        .lines()
        .filter_map(|l| {
            let (name, n) = l.split_once('|')?;
            Some((name.rsplit('/').next()?.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

fn by_core(project: &str) -> BTreeMap<String, usize> {
    by_core_where(project, false)
}

/// Requests handed to another core, on all `workers` cores.
fn handed_off(g: &ringgate::Gateway, workers: usize) -> u64 {
    (0..workers)
        .map(|c| {
            g.registry()
                .core(c)
                .sql_events(ringgate::metrics::SqlEvent::HandedOff)
        })
        .sum()
}

/// One `/sql` request on a fresh connection; a connection closed without an answer is
/// reported with what was read and when (a status 0 response).
fn try_sql(addr: SocketAddr, cs: &str, body: &str) -> Resp {
    use std::io::Read;
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "POST /sql HTTP/1.1\r\nHost: test\r\nConnection: close\r\nNeon-Connection-String: {cs}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    match read_response(&mut BufReader::new(&raw[..])) {
        Some(r) => r,
        None => {
            eprintln!(
                "no answer after {:?}: {read:?}, {} bytes {:?}",
                started.elapsed(),
                raw.len(),
                String::from_utf8_lossy(&raw)
            );
            Resp {
                status: 0,
                headers: Vec::new(),
                body: raw,
            }
        }
    }
}

/// Samples the tenant's server connections until stopped: (most at once, cores seen).
fn sample(project: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        let (mut most, mut cores) = (0, std::collections::BTreeSet::new());
        while !stop.load(Ordering::SeqCst) {
            let now = by_core(&project);
            most = most.max(now.values().sum());
            cores.extend(now.into_keys());
            std::thread::sleep(Duration::from_millis(20));
        }
        (most, cores.len())
    })
}

/// 30 clients, each a fresh connection per request (so spread over every core), keep
/// 10 connections busy with 50 ms statements for a few seconds. The connections stay on
/// the cores that opened them: requests arriving elsewhere are handed over, so the tenant
/// reconnects rarely (moving connections instead took about 0.8 connects per request).
fn a_tenant_on_every_core_gets_its_limit_and_no_more(workers: usize) {
    let (g, addr) = start_on_admin(workers);
    let project = unique("every");
    let cs = conn_string(&project);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(project.clone(), stop.clone());
    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let end = Instant::now() + Duration::from_secs(6);
    let clients: Vec<_> = (0..30)
        .map(|_| {
            let (cs, ok, refused) = (cs.clone(), ok.clone(), refused.clone());
            std::thread::spawn(move || {
                while Instant::now() < end {
                    let body = json!({"query": "select pg_sleep(0.05)"}).to_string();
                    let r = try_sql(addr, &cs, &body);
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        eprintln!("{} {}", r.status, r.text());
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (most, cores) = sampler.join().unwrap();
    let (ok, refused) = (ok.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    let (connects, handed) = (g.registry().server_connects(), handed_off(&g, workers));
    eprintln!(
        "{workers} cores: {ok} answered, {refused} refused; at most {most} server \
         connections at once, on {cores} cores in all; {connects} connects ({:.3} per \
         request), {handed} requests handed to another core",
        connects as f64 / ok.max(1) as f64
    );
    g.drain();
    assert_eq!(refused, 0, "a load the tenant's 10 connections can serve");
    assert!(most <= 10, "{most} server connections for a limit of 10");
    assert_eq!(most, 10, "all 10 connections used when demand needs them");
    assert!(
        cores > 1,
        "the connections followed the clients to their cores"
    );
    // Throughput (at most ~10 connections x 6 s / 50 ms = 1,200) is printed above, not
    // asserted: with 64 cores on 2 busy CPUs it fell to 458 in a run whose budget and
    // hand-off were right. Every request was still answered (refused == 0).
    assert!(ok > 0, "nothing answered");
    // The 10 connections, plus a few reopened (one closed by a failed ping, a connect
    // that lost a race): not one per handful of requests.
    assert!(
        connects <= 10 + ok as u64 / 50,
        "{connects} server connections opened for {ok} requests"
    );
    assert!(
        handed > 0,
        "requests were handed to the cores holding connections"
    );
}

#[test]
#[ignore = "needs compose/cluster"]
fn sixteen_cores_a_tenant_on_every_core_gets_its_limit_and_no_more() {
    a_tenant_on_every_core_gets_its_limit_and_no_more(16);
}

#[test]
#[ignore = "needs compose/cluster"]
fn sixty_four_cores_a_tenant_on_every_core_gets_its_limit_and_no_more() {
    a_tenant_on_every_core_gets_its_limit_and_no_more(64);
}

/// A drain while requests are handed between cores: the connections are taken by a
/// first round, then 30 one-second statements on fresh client connections (most handed
/// to the cores holding connections) are in flight when the gateway drains. Every one is
/// answered 200: a core answers what was handed to it before it closes its pools.
fn a_drain_answers_the_requests_handed_over(workers: usize) {
    let (g, addr) = start_on_admin(workers);
    let project = unique("drain");
    let cs = conn_string(&project);
    let warm: Vec<_> = (0..20)
        .map(|_| {
            let cs = cs.clone();
            std::thread::spawn(move || {
                let body = json!({"query": "select pg_sleep(0.2)"}).to_string();
                request(
                    addr,
                    "POST",
                    "/sql",
                    &[("Neon-Connection-String", &cs)],
                    body.as_bytes(),
                )
                .status
            })
        })
        .collect();
    for t in warm {
        assert_eq!(t.join().unwrap(), 200);
    }
    let registry = g.registry().clone();
    let handed = |r: &ringgate::metrics::Registry| -> u64 {
        (0..workers)
            .map(|c| r.core(c).sql_events(ringgate::metrics::SqlEvent::HandedOff))
            .sum()
    };
    let before = handed(&registry);
    // 20 statements of 0.5 s on 10 connections: 1 s of work if spread evenly, so the
    // 5 s pool wait is not what is tested (30 of 1 s timed out on a busy machine).
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let cs = cs.clone();
            std::thread::spawn(move || {
                let body = json!({"query": "select pg_sleep(0.5)"}).to_string();
                let r = request(
                    addr,
                    "POST",
                    "/sql",
                    &[("Neon-Connection-String", &cs)],
                    body.as_bytes(),
                );
                (r.status, r.text())
            })
        })
        .collect();
    // The requests are in: being run here or there, or waiting for a connection.
    let sent = Instant::now();
    while handed(&registry) == before && sent.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let report = g.drain();
    let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let handed_now = handed(&registry) - before;
    eprintln!(
        "{workers} cores: drained with 20 statements in flight, {handed_now} handed over; \
         {} answered 200; {} requests cut",
        answers.iter().filter(|(s, _)| *s == 200).count(),
        report.cut_requests
    );
    assert!(handed_now > 0, "requests were handed over");
    for (status, text) in &answers {
        assert_eq!(*status, 200, "{text}");
    }
    assert_eq!(report.cut_requests, 0);
}

#[test]
#[ignore = "needs compose/cluster"]
fn sixteen_cores_a_drain_answers_the_requests_handed_over() {
    a_drain_answers_the_requests_handed_over(16);
}

/// Keep-alive clients that all landed on one core (found by asking the server which core
/// ran their statement) use all 10 of the tenant's connections, including those the probe
/// left idle on other cores (their core runs the requests handed to it).
fn a_tenant_on_one_core_uses_all_its_connections(workers: usize) {
    let (g, addr) = start_on_admin(workers);
    let project = unique("one");
    let cs = conn_string(&project);
    let mut by: BTreeMap<String, Vec<Client>> = BTreeMap::new();
    let probed = Instant::now();
    // The core that answered each probe, from the per-core request counts (the server
    // connection's name would tell the core that ran it, which may be another: requests
    // are handed to the cores holding connections). Counted once the answer is written.
    let answered = || -> Vec<u64> {
        (0..workers)
            .map(|c| g.registry().core(c).requests(RouteLabel::Sql, 200))
            .collect()
    };
    let (core, clients) = loop {
        let before = answered();
        let mut c = Client::connect(addr);
        let r = c.sql(&cs, "select 1");
        assert_eq!(r.status, 200, "{}", r.text());
        let asked = Instant::now();
        let core = loop {
            let now = answered();
            if let Some(i) = (0..workers).find(|&i| now[i] > before[i]) {
                break format!("core{i}");
            }
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "probe not counted"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        let on = by.entry(core.clone()).or_default();
        on.push(c);
        if on.len() == 12 {
            break (core, std::mem::take(on));
        }
    };
    let probes = by.values().map(Vec::len).sum::<usize>() + 12;
    drop(by);
    eprintln!(
        "{probes} probes in {:.1}s to find 12 clients on {core}",
        probed.elapsed().as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let connects_before = g.registry().server_connects();
    let sampler = {
        let (project, stop) = (project.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut most, mut most_active) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                most = most.max(by_core(&project).values().sum());
                most_active = most_active.max(by_core_where(&project, true).values().sum());
                std::thread::sleep(Duration::from_millis(20));
            }
            (most, most_active)
        })
    };
    let end = Instant::now() + Duration::from_secs(5);
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let cs = cs.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while Instant::now() < end {
                    statuses.push(c.sql(&cs, "select pg_sleep(0.1)").status);
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    stop.store(true, Ordering::SeqCst);
    let (most, most_active) = sampler.join().unwrap();
    let refused = statuses.iter().filter(|s| **s != 200).count();
    let connects = g.registry().server_connects() - connects_before;
    eprintln!(
        "{workers} cores, 12 clients on {core}: {} answered, {refused} refused; at most \
         {most} server connections, {most_active} running statements at once; {connects} \
         connects during the load, {} requests handed to another core",
        statuses.len() - refused,
        handed_off(&g, workers)
    );
    g.drain();
    assert_eq!(refused, 0);
    assert!(most <= 10, "{most} server connections for a limit of 10");
    // Wherever the probes left them, all 10 run the one core's statements at once.
    assert_eq!(most_active, 10, "all of the tenant's connections in use");
}

#[test]
#[ignore = "needs compose/cluster"]
fn sixteen_cores_a_tenant_on_one_core_uses_all_its_connections() {
    a_tenant_on_one_core_uses_all_its_connections(16);
}

#[test]
#[ignore = "needs compose/cluster"]
fn sixty_four_cores_a_tenant_on_one_core_uses_all_its_connections() {
    a_tenant_on_one_core_uses_all_its_connections(64);
}

/// Requests admitted in `secs` at the rate limit, from `clients` threads each sending on
/// one keep-alive connection (`fresh`: a new connection per request instead).
fn admitted(addr: SocketAddr, clients: usize, fresh: bool, secs: f64) -> (usize, usize) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut limited) = (0, 0);
                let mut c = Client::connect(addr);
                while Instant::now() < end {
                    let r = if fresh {
                        request(addr, "GET", "/app/x", &[], b"")
                    } else {
                        c.send("GET", "/app/x", &[], b"")
                    };
                    match r.status {
                        200 => ok += 1,
                        429 => limited += 1,
                        s => panic!("unexpected {s}"),
                    }
                }
                (ok, limited)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// The rate limit admits its rate, not a share of it, whether the tenant's requests come
/// on one core or on all of them.
fn the_rate_limit_is_the_tenants_on_one_core_or_all(workers: usize) {
    let worker = TestWorker::start("w");
    let (rate, burst, secs) = (40.0, 10.0, 3.0);
    let upstreams = format!("app={}", worker.addr);
    let workers_s = workers.to_string();
    let (g, addr) = start(&[
        ("RINGGATE_WORKERS", workers_s.as_str()),
        ("RINGGATE_ROUTES", "/app=app"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
        ("RINGGATE_RATE_LIMIT", "40"),
        ("RINGGATE_RATE_BURST", "10"),
    ]);
    let expected = burst + rate * secs;
    // One keep-alive connection: one core.
    let (one, limited) = admitted(addr, 1, false, secs);
    eprintln!(
        "{workers} cores, one connection: {one} admitted ({limited} limited), expected {expected}"
    );
    // Let the bucket fill up again, then fresh connections: every core.
    std::thread::sleep(Duration::from_secs_f64(burst / rate + 0.1));
    let (all, limited_all) = admitted(addr, 8, true, secs);
    eprintln!("{workers} cores, fresh connections: {all} admitted ({limited_all} limited), expected {expected}");
    g.drain();
    for (n, what) in [(one, "one core"), (all, "all cores")] {
        let n = n as f64;
        assert!(
            n <= expected + 2.0 && n >= expected * 0.9,
            "{what}: {n} admitted, expected {expected}"
        );
    }
    assert!(
        limited > 0 && limited_all > 0,
        "the load was over the limit"
    );
}

#[test]
fn sixteen_cores_the_rate_limit_is_the_tenants_on_one_core_or_all() {
    the_rate_limit_is_the_tenants_on_one_core_or_all(16);
}

#[test]
fn sixty_four_cores_the_rate_limit_is_the_tenants_on_one_core_or_all() {
    the_rate_limit_is_the_tenants_on_one_core_or_all(64);
}
