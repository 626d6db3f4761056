//! Redis through Sentinel end to end: API-key sessions for `/sql`, worker discovery for
//! the reverse proxy, and a Redis failover that loses no session.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ringgate_tests::{
    backend::{
        chaos_lock, cluster, pg_admin_url, put_session, redis_master, redis_master_addr,
        repair_cluster, unique,
    },
    eventually,
    gateway::{start, start_with_redis},
    http::{admin_get, metric_total, request, wait_for_worker, Resp},
    worker::TestWorker,
};
use serde_json::json;

fn sql_with(addr: SocketAddr, headers: &[(&str, &str)], query: &str) -> Resp {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    let body = json!({"query": query, "params": []}).to_string();
    request(addr, "POST", "/sql", &h, body.as_bytes())
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_api_key_runs_sql_as_the_session_role_of_its_project() {
    let (_g, addr) = start_with_redis(&[]);
    let key = unique("key-");
    put_session(&key, &json!({"project": "alpha", "role": "alpha_owner"}));
    let q = "select current_user as u, count(*)::int as n from items";

    let r = sql_with(addr, &[("apikey", &key)], q);
    assert_eq!(r.status, 200, "{}", r.text());
    let row = &r.json()["rows"][0];
    assert_eq!(
        (row["u"].as_str(), row["n"].as_i64()),
        (Some("alpha_owner"), Some(100))
    );

    let bearer = format!("Bearer {key}");
    let r = sql_with(addr, &[("Authorization", &bearer)], q);
    assert_eq!(r.status, 200, "{}", r.text());

    // The Host names a project: it must be the key's.
    let r = sql_with(
        addr,
        &[("apikey", &key), ("Host", "alpha.ringgate.test")],
        q,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = sql_with(addr, &[("apikey", &key), ("Host", "beta.ringgate.test")], q);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (403, Some("project_mismatch"))
    );

    // Two Host headers (the key check would read one, a worker both): 400 before any
    // project check. A key and a connection string together: 400, neither is used.
    let r = sql_with(
        addr,
        &[
            ("apikey", &key),
            ("Host", "alpha.ringgate.test"),
            ("Host", "beta.ringgate.test"),
        ],
        q,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let cs = ringgate_tests::backend::alpha_conn_string();
    for auth in [("apikey", key.as_str()), ("Authorization", bearer.as_str())] {
        let r = sql_with(addr, &[auth, ("Neon-Connection-String", &cs)], q);
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (400, Some("ambiguous_credentials")),
            "{}",
            r.text()
        );
    }

    // Unknown, expired, malformed keys; a role the project does not have.
    let r = sql_with(addr, &[("apikey", "no-such-key")], q);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let expired = unique("expired-");
    put_session(
        &expired,
        &json!({"project": "alpha", "role": "alpha_owner", "expires_at": 1}),
    );
    let r = sql_with(addr, &[("apikey", &expired)], q);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let malformed = unique("malformed-");
    put_session(&malformed, &json!({"project": "alpha"}));
    let r = sql_with(addr, &[("apikey", &malformed)], q);
    assert_eq!(r.status, 401, "{}", r.text());
    let foreign = unique("foreign-");
    put_session(&foreign, &json!({"project": "alpha", "role": "beta_owner"}));
    let r = sql_with(addr, &[("apikey", &foreign)], q);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (403, Some("role_not_allowed"))
    );
    let ghost = unique("ghost-");
    put_session(&ghost, &json!({"project": "no_such_project", "role": "x"}));
    let r = sql_with(addr, &[("apikey", &ghost)], q);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("unknown_project"))
    );
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("the API key's session") && !message.contains("alpha"),
        "says where the project came from, names no other project: {message}"
    );

    // Neither a key nor a connection string.
    let r = sql_with(addr, &[], q);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("bad_connection_string"))
    );
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_api_keys_are_refused_when_not_enabled() {
    let db = pg_admin_url();
    let (_g, addr) = start(&[("DATABASE_URL", db.as_str())]);
    let r = sql_with(addr, &[("apikey", "anything")], "select 1");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (401, Some("api_keys_disabled"))
    );
}

/// Registers `worker` in `group` with a TTL; announces it when `announce`.
fn register(group: &str, id: &str, worker: &TestWorker, ttl_secs: u32, announce: bool) {
    let key = format!("ringgate:worker:{group}:{id}");
    let value = json!({"addr": worker.addr.to_string()}).to_string();
    redis_master(&["SET", &key, &value, "EX", &ttl_secs.to_string()]);
    if announce {
        redis_master(&["PUBLISH", "ringgate:workers", &key]);
    }
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_dynamic_worker_discovery() {
    let group = unique("grp");
    let routes = format!("/wd={group}");
    let (_g, addr) = start_with_redis(&[("RINGGATE_ROUTES", routes.as_str())]);
    let r = request(addr, "GET", "/wd/x", &[], b"");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (503, Some("no_upstream"))
    );

    // Announced: traffic within a second (the poll interval is the default 30 s).
    let w1 = TestWorker::start("w1");
    register(&group, "w1", &w1, 30, true);
    let took = wait_for_worker(addr, "/wd/x?q=1", "w1", Duration::from_secs(2));
    eprintln!(
        "announced worker got traffic after {:.3}s",
        took.as_secs_f64()
    );
    let r = request(addr, "GET", "/wd/x?q=1", &[], b"");
    assert_eq!(r.text(), "w1 GET /wd/x?q=1 xff=127.0.0.1 body=0");
    assert_eq!(r.header("x-worker"), Some("w1"));
    assert_eq!(r.header("via"), Some("1.1 ringgate"));
    let r = request(addr, "POST", "/wd/upload", &[], b"0123456789");
    assert_eq!(r.text(), "w1 POST /wd/upload xff=127.0.0.1 body=10");

    let w2 = TestWorker::start("w2");
    register(&group, "w2", &w2, 30, true);
    wait_for_worker(addr, "/wd/y", "w2", Duration::from_secs(2));
    let (before1, before2) = (w1.count(), w2.count());
    for _ in 0..60 {
        assert_eq!(request(addr, "GET", "/wd/z", &[], b"").status, 200);
    }
    let (got1, got2) = (w1.count() - before1, w2.count() - before2);
    assert!(
        got1 >= 10 && got2 >= 10,
        "both workers serve: {got1} / {got2}"
    );

    let admin = admin_get(addr, "/admin/upstreams").json();
    assert_eq!(admin["groups"][&group].as_array().map(Vec::len), Some(2));

    // w1's heartbeat lapses: it is removed (key expiry event) and gets nothing more.
    register(&group, "w1", &w1, 1, false);
    let start = Instant::now();
    loop {
        let set = admin_get(addr, "/admin/upstreams").json();
        if set["groups"][&group].as_array().map(Vec::len) == Some(1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "w1 not removed: {set}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "lapsed worker removed {:.3}s after its last heartbeat",
        start.elapsed().as_secs_f64()
    );
    let before1 = w1.count();
    for _ in 0..20 {
        let r = request(addr, "GET", "/wd/z", &[], b"");
        assert!(r.text().starts_with("w2"), "{}", r.text());
    }
    assert_eq!(w1.count(), before1);
    redis_master(&["DEL", &format!("ringgate:worker:{group}:w2")]);
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_worker_registered_without_announcement_is_found_by_polling() {
    let group = unique("poll");
    let routes = format!("/wp={group}");
    let (_g, addr) = start_with_redis(&[
        ("RINGGATE_ROUTES", routes.as_str()),
        ("RINGGATE_DISCOVERY_INTERVAL", "1s"),
    ]);
    let w = TestWorker::start("polled");
    register(&group, "p1", &w, 30, false);
    let took = wait_for_worker(addr, "/wp", "polled", Duration::from_secs(4));
    eprintln!(
        "unannounced worker found by polling after {:.3}s",
        took.as_secs_f64()
    );
    redis_master(&["DEL", &format!("ringgate:worker:{group}:p1")]);
}

#[test]
#[ignore = "needs compose/cluster (chaos: kills the Redis master)"]
fn chaos_redis_failover_loses_no_session() {
    let _lock = chaos_lock();
    repair_cluster().unwrap_or_else(|e| panic!("the cluster is not healthy: {e}"));
    // No per-core cache: every request asks Redis, through the failover.
    let (_g, addr) = start_with_redis(&[("RINGGATE_SESSION_CACHE_TTL", "0s")]);
    let key = unique("failover-");
    put_session(&key, &json!({"project": "alpha", "role": "alpha_owner"}));
    assert_eq!(sql_with(addr, &[("apikey", &key)], "select 1").status, 200);

    let old = cluster(&["redis-master"]);
    let old_addr = redis_master_addr();
    let killed = Instant::now();
    cluster(&["kill", &old]);
    let (mut ok, mut slowest) = (0, Duration::ZERO);
    let mut switched = None;
    while killed.elapsed() < Duration::from_secs(20) {
        let t = Instant::now();
        let r = sql_with(addr, &[("apikey", &key)], "select 1 as one");
        assert_eq!(
            r.status,
            200,
            "request {ok} after the kill failed: {}",
            r.text()
        );
        slowest = slowest.max(t.elapsed());
        ok += 1;
        if switched.is_none() && redis_master_addr() != old_addr {
            switched = Some(killed.elapsed());
        }
        if switched.is_some_and(|s| killed.elapsed() > s + Duration::from_secs(3)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let switched = switched.expect("Sentinels elected a new Redis master within 20 s");
    // ringgate saw the switch: its status names the new master and counts the change.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let status = admin_get(addr, "/admin/status").json();
        if status["redis"]["master"] == redis_master_addr().as_str()
            && status["redis"]["master_changes"].as_u64() >= Some(1)
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "ringgate did not report the new master: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = request(addr, "GET", "/metrics", &[], b"").text();
    assert!(
        !metrics.contains("ringgate_redis_master_changes_total 0\n"),
        "master change not counted"
    );
    eprintln!(
        "redis failover with sessions: {ok} requests, none failed; new master after {:.1}s; \
         slowest request {:.2}s",
        switched.as_secs_f64(),
        slowest.as_secs_f64()
    );
    drop(_g);
    repair_cluster().unwrap_or_else(|e| panic!("repairing the cluster failed: {e}"));
}

/// Registers `worker` in `group` with a colour and announces it.
fn register_coloured(group: &str, id: &str, worker: &TestWorker, colour: &str) {
    let key = format!("ringgate:worker:{group}:{id}");
    let value = json!({"addr": worker.addr.to_string(), "colour": colour}).to_string();
    redis_master(&["SET", &key, &value, "EX", "60"]);
    redis_master(&["PUBLISH", "ringgate:workers", &key]);
}

/// Sets the group's colour weights and announces the change.
fn set_weights(group: &str, blue: u32, green: u32) {
    let key = format!("ringgate:weights:{group}");
    redis_master(&[
        "HSET",
        &key,
        "blue",
        &blue.to_string(),
        "green",
        &green.to_string(),
    ]);
    redis_master(&["PUBLISH", "ringgate:workers", &key]);
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_blue_green_switch_takes_effect_within_a_second_without_failures() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    };
    let group = unique("bg");
    let routes = format!("/bg={group}");
    let (_g, addr) = start_with_redis(&[("RINGGATE_ROUTES", routes.as_str())]);
    let (blue, green) = (TestWorker::start("blue"), TestWorker::start("green"));
    set_weights(&group, 100, 0);
    register_coloured(&group, "b", &blue, "blue");
    register_coloured(&group, "g", &green, "green");
    wait_for_worker(addr, "/bg", "blue", Duration::from_secs(2));

    // Constant traffic from two clients while the weights move.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(Instant, u16, String)>();
    let seen = std::cell::RefCell::new(Vec::new());
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, seen) = (stop.clone(), tx.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = request(addr, "GET", "/bg/x", &[], b"");
                    let who = r.header("x-worker").unwrap_or("").to_string();
                    let _ = seen.send((Instant::now(), r.status, who));
                }
            })
        })
        .collect();
    let switch = |blue_w, green_w, expect: &str| {
        // A sleep: traffic flowing before the switch is part of the scenario.
        std::thread::sleep(Duration::from_millis(300));
        let at = Instant::now();
        set_weights(&group, blue_w, green_w);
        // A sleep: the window over which the old colour must stop getting requests (within
        // 1 s): waiting until it stops would not show that it stayed stopped.
        std::thread::sleep(Duration::from_millis(1500));
        // The last request that went to the old colour after the switch.
        seen.borrow_mut().extend(rx.try_iter());
        let log = seen.borrow();
        let last_old = log
            .iter()
            .filter(|(t, _, who)| *t > at && who != expect)
            .map(|(t, _, _)| t.duration_since(at))
            .max()
            .unwrap_or_default();
        let after: Vec<_> = log.iter().filter(|(t, _, _)| *t > at).collect();
        assert!(
            after.len() > 20,
            "too little traffic to judge: {}",
            after.len()
        );
        last_old
    };
    let to_green = switch(0, 100, "green");
    let to_blue = switch(100, 0, "blue");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    seen.borrow_mut().extend(rx.try_iter());
    let log = seen.borrow();
    let failed = log.iter().filter(|(_, s, _)| *s != 200).count();
    eprintln!(
        "blue-green: {} requests, {failed} failed; 100% green after {:.3}s, back to blue after {:.3}s",
        log.len(),
        to_green.as_secs_f64(),
        to_blue.as_secs_f64()
    );
    assert_eq!(failed, 0);
    assert!(to_green < Duration::from_secs(1) && to_blue < Duration::from_secs(1));
    let admin = admin_get(addr, "/admin/upstreams").json();
    assert_eq!(admin["colour_weights"][&group]["blue"], 100);
    for id in ["b", "g"] {
        redis_master(&["DEL", &format!("ringgate:worker:{group}:{id}")]);
    }
    redis_master(&["DEL", &format!("ringgate:weights:{group}")]);
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_deregistered_worker_is_drained_not_cut() {
    let group = unique("dr");
    let routes = format!("/dr={group}");
    let (_g, addr) = start_with_redis(&[("RINGGATE_ROUTES", routes.as_str())]);
    let w = TestWorker::start("leaving");
    register(&group, "w", &w, 30, true);
    wait_for_worker(addr, "/dr", "leaving", Duration::from_secs(2));
    let before = w.count();
    let inflight = std::thread::spawn(move || request(addr, "GET", "/dr/slow/800", &[], b""));
    // Counted as it reaches the worker, before its 800 ms.
    eventually(
        "the slow request at the worker",
        Duration::from_secs(5),
        || w.count() == before + 1,
    );
    let key = format!("ringgate:worker:{group}:w");
    redis_master(&["DEL", &key]);
    redis_master(&["PUBLISH", "ringgate:workers", &key]);
    eventually("the worker removed", Duration::from_secs(2), || {
        !admin_get(addr, "/admin/upstreams").json()["groups"][&group].is_array()
    });
    let r = inflight.join().unwrap();
    assert_eq!(
        (r.status, r.text().starts_with("leaving GET /dr/slow/800")),
        (200, true)
    );
    let r = request(addr, "GET", "/dr", &[], b"");
    assert_eq!(r.status, 503, "no worker left: {}", r.text());
}

/// Runs scripts/blue-green-deploy for `group` against the gateway at `addr` while two
/// clients keep requests flowing; returns whether it succeeded and its output.
fn deploy(addr: SocketAddr, group: &str, path: &'static str) -> (bool, String) {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    request(addr, "GET", path, &[], b"");
                    // A sleep: it paces the clients' steady traffic.
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let out = std::process::Command::new(format!(
        "{}/../scripts/blue-green-deploy",
        env!("CARGO_MANIFEST_DIR")
    ))
    .args([
        group,
        "--steps",
        "25,100",
        "--hold",
        "1.5",
        "--metrics",
        &format!("http://{addr}/metrics"),
    ])
    .output()
    .expect("run scripts/blue-green-deploy");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_blue_green_deploy_script_promotes_green_or_rolls_back() {
    let group = unique("deploy");
    let routes = format!("/dep={group}");
    let (_g, addr) = start_with_redis(&[("RINGGATE_ROUTES", routes.as_str())]);
    let (blue, green) = (TestWorker::start("blue"), TestWorker::start("green"));
    set_weights(&group, 100, 0);
    register_coloured(&group, "b", &blue, "blue");
    register_coloured(&group, "g", &green, "green");
    wait_for_worker(addr, "/dep", "blue", Duration::from_secs(2));

    // A healthy green takes over.
    let (ok, out) = deploy(addr, &group, "/dep/x");
    assert!(ok, "deploy failed: {out}");
    let weights = format!("ringgate:weights:{group}");
    assert_eq!(redis_master(&["HGET", &weights, "green"]), "100");
    wait_for_worker(addr, "/dep", "green", Duration::from_secs(2));

    // Back to blue, then a green that fails requests: rolled back at the first step.
    set_weights(&group, 100, 0);
    wait_for_worker(addr, "/dep", "blue", Duration::from_secs(2));
    green.set_failing(true);
    let (ok, out) = deploy(addr, &group, "/dep/x");
    assert!(!ok, "a failing green must roll back: {out}");
    assert!(out.contains("ROLLED BACK"), "{out}");
    assert_eq!(redis_master(&["HGET", &weights, "blue"]), "100");
    assert_eq!(redis_master(&["HGET", &weights, "green"]), "0");
    eprintln!(
        "blue-green deploy: promoted a healthy green; rolled back a failing one ({})",
        out.lines().last().unwrap_or("")
    );
    drop(blue);
    for id in ["b", "g"] {
        redis_master(&["DEL", &format!("ringgate:worker:{group}:{id}")]);
    }
    redis_master(&["DEL", &weights]);
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_global_rate_limit_is_shared_by_every_gateway_through_redis() {
    const LIMIT: usize = 40;
    let w = TestWorker::start("global-rl");
    let upstreams = format!("g={}", w.addr);
    let env = [
        ("RINGGATE_ROUTES", "/g=g"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
        ("RINGGATE_GLOBAL_RATE_LIMIT", "40"),
        ("RINGGATE_WORKERS", "2"),
    ];
    let (_a, a) = start_with_redis(&env);
    let (_b, b) = start_with_redis(&env);
    for addr in [a, b] {
        wait_for_worker(addr, "/g/ready", "global-rl", Duration::from_secs(10));
    }
    let before = w.count();
    // The tenant is the API key's project (a Host header would be ignored).
    let project = unique("rl");
    let tenant = format!("project:{project}");
    let key = unique("rl-key-");
    put_session(&key, &json!({"project": project, "role": "x"}));
    let host = format!("{}.example.com", unique("rotated"));
    let headers = [("apikey", key.as_str()), ("Host", host.as_str())];
    // Three seconds of requests, alternating between the two gateways (each with two
    // cores), far faster than the limit.
    let run = Duration::from_secs(3);
    let started = Instant::now();
    let (mut admitted, mut refused) = ([0usize; 2], 0usize);
    while started.elapsed() < run {
        for (i, addr) in [a, b].into_iter().enumerate() {
            let r = request(addr, "GET", "/g/x", &headers, b"");
            match r.status {
                200 => admitted[i] += 1,
                429 => {
                    assert_eq!(r.json()["code"].as_str(), Some("rate_limited"));
                    assert_eq!(r.header("retry-after"), Some("1"));
                    refused += 1;
                }
                s => panic!("unexpected {s}: {}", r.text()),
            }
        }
    }
    let total = admitted[0] + admitted[1];
    let attempts = total + refused;
    // The fleet admits about LIMIT per second (a sliding window over the last second):
    // LIMIT in the first second, then LIMIT per second, 120 to 160 in all, plus the few
    // that cores admit before they see each other's reports (2-3 per second measured).
    // Unshared, each gateway would admit LIMIT per second on its own: twice as many.
    assert!(
        (2 * LIMIT..=4 * LIMIT + LIMIT / 2).contains(&total),
        "admitted {admitted:?} of {attempts} requests in {run:?}"
    );
    assert!(attempts > 6 * LIMIT, "only {attempts} requests were sent");
    assert!(admitted[0] > 0 && admitted[1] > 0, "admitted {admitted:?}");
    assert_eq!(
        w.count() - before,
        total,
        "every admitted request reached the worker"
    );
    let refused_metric = metric_total(a, "ringgate_rate_limited_global_total")
        + metric_total(b, "ringgate_rate_limited_global_total");
    assert_eq!(refused_metric as usize, refused);
    // Redis holds the fleet's per-second counts for the tenant, once the last reports (at
    // most 10 ms apart) are in; reports only add, so wait for the sum to reach the total.
    let fleet_count = || {
        let keys = redis_master(&["KEYS", &format!("ringgate:ratelimit:{tenant}:*")]);
        let counted: usize = keys
            .lines()
            .filter(|k| !k.is_empty())
            .map(|k| {
                redis_master(&["GET", k])
                    .trim()
                    .parse::<usize>()
                    .unwrap_or(0)
            })
            .sum();
        (counted, keys)
    };
    eventually("the last reports in Redis", Duration::from_secs(5), || {
        fleet_count().0 >= total
    });
    let (counted, keys) = fleet_count();
    assert_eq!(counted, total, "keys {keys:?}");
    let ttl: i64 = redis_master(&["TTL", keys.lines().next().unwrap()])
        .trim()
        .parse()
        .unwrap();
    assert!((0..=5).contains(&ttl), "counter TTL {ttl}");
    // Another tenant has its own count.
    let other = format!("{}.example.com", unique("rl-other"));
    let r = request(a, "GET", "/g/x", &[("Host", other.as_str())], b"");
    assert_eq!(r.status, 200);
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_rate_limit_counts_the_api_key_project_not_the_host() {
    let w = TestWorker::start("rl-key");
    let upstreams = format!("g={}", w.addr);
    let (_g, addr) = start_with_redis(&[
        ("RINGGATE_ROUTES", "/g=g"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
        ("RINGGATE_RATE_LIMIT", "1"),
        ("RINGGATE_RATE_BURST", "3"),
    ]);
    wait_for_worker(addr, "/g/ready", "rl-key", Duration::from_secs(10));
    let (alpha, beta) = (unique("rl-a-"), unique("rl-b-"));
    put_session(&alpha, &json!({"project": unique("rla"), "role": "x"}));
    put_session(&beta, &json!({"project": unique("rlb"), "role": "x"}));
    // One key's project: 3 requests (the burst), then 429 whatever Host it sends.
    let statuses: Vec<u16> = (0..6)
        .map(|i| {
            let host = format!("h{i}.example.com");
            request(
                addr,
                "GET",
                "/g/x",
                &[("apikey", &alpha), ("Host", &host)],
                b"",
            )
            .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // Another project's key, from the same address, has its own bucket.
    let r = request(addr, "GET", "/g/x", &[("apikey", &beta)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    // No key, or an unknown one: the client's address, a bucket of its own.
    for headers in [&[][..], &[("apikey", "no-such-key")][..]] {
        let r = request(addr, "GET", "/g/x", headers, b"");
        assert!(r.status == 200 || r.status == 429, "{}", r.status);
    }
    let burst: Vec<u16> = (0..4)
        .map(|_| request(addr, "GET", "/g/x", &[("apikey", "no-such-key")], b"").status)
        .collect();
    assert_eq!(burst.last(), Some(&429), "{burst:?}");
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_a_flood_of_unknown_api_keys_does_not_evict_a_hot_session() {
    use std::io::{BufReader, Write};
    let (_g, addr) = start_with_redis(&[("RINGGATE_SESSION_CACHE_TTL", "600s")]);
    let hot = unique("hot-key-");
    put_session(&hot, &json!({"project": "alpha", "role": "alpha_owner"}));
    assert_eq!(sql_with(addr, &[("apikey", &hot)], "select 1").status, 200);
    // Gone from Redis: from now on only the core's cache knows the hot key.
    redis_master(&["DEL", &ringgate::sessions::redis_key(&hot)]);
    let body = json!({"query": "select 1"}).to_string();
    let one = |key: &str| {
        format!(
            "POST /sql HTTP/1.1\r\nHost: t\r\napikey: {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let mut reader = BufReader::new(s);
    // Some 30,000 one-off keys (each a Redis miss, cached as unknown: far more than the
    // cache holds), pipelined 200 to a write, the hot key used in every write.
    let run = unique("flood");
    for round in 0..150 {
        let mut out = one(&hot);
        for i in 0..199 {
            out.push_str(&one(&format!("{run}-{round}-{i}")));
        }
        writer.write_all(out.as_bytes()).unwrap();
        let hot_answer = ringgate_tests::http::read_response(&mut reader).expect("an answer");
        assert_eq!(
            hot_answer.status,
            200,
            "round {round}: the hot session was evicted by one-off keys: {}",
            hot_answer.text()
        );
        for _ in 0..199 {
            let r = ringgate_tests::http::read_response(&mut reader).expect("an answer");
            assert_eq!(r.status, 401, "{}", r.text());
        }
    }
}
