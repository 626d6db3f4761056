//! Patroni topology from etcd (and REST) against the real cluster; the leader change is
//! seen within a second of Patroni acting.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use ringgate_discovery::watch::{self, Sources};
use ringgate_tests::{
    backend::{cluster, http_get, required},
    eventually,
};

fn sources(etcd: bool, rest: bool) -> Sources {
    let list = |name: &str| {
        required(name)
            .split(',')
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    Sources {
        etcd: if etcd {
            list("RINGGATE_ETCD_ENDPOINTS")
        } else {
            vec![]
        },
        patroni: if rest {
            list("RINGGATE_PATRONI_URLS")
        } else {
            vec![]
        },
        namespace: required("RINGGATE_PATRONI_NAMESPACE"),
        scope: required("RINGGATE_PATRONI_SCOPE"),
        timeout: Duration::from_millis(500),
        leader_probe: None,
    }
}

/// The leader Patroni's REST API names right now, if any member answers.
fn rest_leader() -> Option<String> {
    for url in required("RINGGATE_PATRONI_URLS").split(',') {
        if let Some((200, body)) = http_get(&format!("{url}/cluster")) {
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            return v["members"]
                .as_array()?
                .iter()
                .find(|m| m["role"] == "leader")?["name"]
                .as_str()
                .map(String::from);
        }
    }
    None
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn discovery_reads_the_cluster_from_etcd_and_from_rest() {
    let leader = cluster(&["leader"]);
    for (etcd, rest) in [(true, false), (false, true), (true, true)] {
        let t = sources(etcd, rest).fetch().expect("the cluster answers");
        assert_eq!(
            t.leader.as_ref().map(|l| l.name.as_str()),
            Some(leader.as_str()),
            "etcd={etcd} rest={rest}"
        );
        assert_eq!(t.replicas.len(), 2);
        assert!(t.replicas.iter().all(|r| r.healthy), "{t:?}");
    }
    // No source reachable: a clear error, not a hang.
    let dead = Sources {
        etcd: vec!["http://127.0.0.1:1".into()],
        patroni: vec!["http://127.0.0.1:1".into()],
        ..sources(true, true)
    };
    let started = Instant::now();
    assert!(dead.fetch().is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn chaos_topology_follows_a_leader_kill_within_a_second() {
    let (tx, rx) = mpsc::channel();
    let first = watch::spawn(sources(true, true), Duration::from_millis(100), move |t| {
        let _ = tx.send((Instant::now(), t));
    })
    .unwrap()
    .first;
    let old = cluster(&["leader"]);
    assert_eq!(first.leader.as_ref().unwrap().name, old);
    cluster(&["kill", &old]);
    // When does Patroni name a new leader (its REST view), and when do we?
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut patroni_at = None;
    let mut ours = None;
    while Instant::now() < deadline && (patroni_at.is_none() || ours.is_none()) {
        if patroni_at.is_none() && rest_leader().is_some_and(|l| l != old) {
            patroni_at = Some(Instant::now());
        }
        while let Ok((at, t)) = rx.try_recv() {
            if ours.is_none() && t.leader.as_ref().is_some_and(|l| l.name != old) {
                ours = Some((at, t));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let patroni_at = patroni_at.expect("Patroni elected a new leader");
    let (ours_at, t) = ours.expect("the watcher published the new leader");
    let late = ours_at.saturating_duration_since(patroni_at);
    eprintln!(
        "new leader {}: watcher {:+.3}s relative to Patroni's REST view",
        t.leader.as_ref().unwrap().name,
        if ours_at >= patroni_at {
            late.as_secs_f64()
        } else {
            -(patroni_at - ours_at).as_secs_f64()
        }
    );
    assert!(
        late < Duration::from_secs(1),
        "seen {late:?} after Patroni acted"
    );
    assert!(t.epoch > first.epoch);
    // Restore: the old leader rejoins.
    cluster(&["start", &old]);
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let status = cluster(&["status"]);
        if ringgate_tests::backend::members_up(&status) >= 3
            && status.contains("primary UP=1 replicas UP=2")
        {
            break;
        }
        assert!(Instant::now() < end, "cluster did not recover");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Forwards TCP connections from a local port to `target` until dropped.
struct Forwarder {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(bind: &str, target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(bind).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = std::net::TcpStream::connect(target) else {
                            continue;
                        };
                        let (mut c2, mut s2) =
                            (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let (mut c, mut s) = (client, server);
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut c, &mut s2);
                            let _ = s2.shutdown(std::net::Shutdown::Write);
                        });
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut s, &mut c2);
                            let _ = c2.shutdown(std::net::Shutdown::Both);
                        });
                    }
                    // A sleep: the accept loop's pace (the listener does not block).
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Forwarder {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn unreachable_sources_keep_the_last_topology_marked_stale() {
    let etcd: std::net::SocketAddr = required("RINGGATE_ETCD_ENDPOINTS")
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let forward = Forwarder::start("127.0.0.1:0", etcd);
    let port = forward.addr.port();
    let endpoint = format!("http://{}", forward.addr);
    let (g, addr) = ringgate_tests::gateway::start(&[
        ("RINGGATE_ETCD_ENDPOINTS", &endpoint),
        (
            "RINGGATE_PATRONI_SCOPE",
            &required("RINGGATE_PATRONI_SCOPE"),
        ),
        (
            "RINGGATE_PATRONI_NAMESPACE",
            &required("RINGGATE_PATRONI_NAMESPACE"),
        ),
        ("RINGGATE_TOPOLOGY_INTERVAL", "100ms"),
    ]);
    let ready = || ringgate_tests::http::request(addr, "GET", "/ready", &[], b"");
    let metric_stale = || {
        let text = String::from_utf8_lossy(
            &ringgate_tests::http::request(addr, "GET", "/metrics", &[], b"").body,
        )
        .to_string();
        text.lines()
            .find(|l| l.starts_with("ringgate_topology_stale{core=\"0\"}"))
            .map(|l| l.ends_with(" 1"))
    };
    let limit = Duration::from_secs(5);
    assert_eq!(ready().json()["status"], "ready");
    eventually("fresh metrics", limit, || metric_stale() == Some(false));
    // Cut the only source off: the last topology stays, marked stale, and requests still route.
    drop(forward);
    eventually("a stale /ready", limit, || {
        ready().json()["topology"]["stale"] == true
    });
    let r = ready().json();
    assert_eq!(r["status"], "ready", "the last topology still serves: {r}");
    assert_eq!(r["topology"]["leader"], cluster(&["leader"]).as_str());
    eventually("the stale metric", limit, || metric_stale() == Some(true));
    // The source returns: fresh again.
    let _back = Forwarder::start(&format!("127.0.0.1:{port}"), etcd);
    eventually("a fresh /ready", limit, || {
        ready().json().get("topology").is_none()
    });
    eventually("the fresh metric", limit, || metric_stale() == Some(false));
    g.drain();
}

/// etcd answers with the leader key's lease: its TTL is at most Patroni's (6 s) and more
/// than nothing while Patroni renews it; Patroni's REST API knows no lease.
#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn the_leaders_lease_is_read_from_etcd_only() {
    use ringgate_discovery::watch::Lease;
    let (_, lease) = sources(true, false)
        .fetch_with_lease()
        .expect("etcd answers");
    match lease {
        Lease::Held(l) => {
            assert!(
                l.ttl >= Duration::from_secs(1) && l.ttl <= Duration::from_secs(6),
                "{l:?}"
            );
            assert!(
                l.valid_until(Duration::from_secs(1)) < Instant::now() + Duration::from_secs(6)
            );
        }
        other => panic!("the leader's lease from etcd, got {other:?}"),
    }
    let (_, lease) = sources(false, true)
        .fetch_with_lease()
        .expect("REST answers");
    assert_eq!(lease, Lease::Unknown);
}

/// The etcd watch reports a change of the watched key within a moment, and nothing for
/// other keys.
#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn an_etcd_watch_reports_a_change_of_its_key() {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let endpoint = required("RINGGATE_ETCD_ENDPOINTS")
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let key = format!(
        "/ringgate-test/{}",
        ringgate_tests::backend::unique("watch")
    );
    let (tx, rx) = mpsc::channel();
    let (e, k) = (endpoint.clone(), key.clone());
    std::thread::spawn(move || {
        let _ = ringgate_discovery::etcd::watch_key(
            &e,
            &k,
            Duration::from_secs(1),
            Duration::from_secs(20),
            || {
                let _ = tx.send(Instant::now());
            },
        );
    });
    // A sleep: for the watch to be set up in etcd, which `watch_key` does not report.
    std::thread::sleep(Duration::from_millis(300));
    let put = |k: &str| {
        let body = serde_json::json!({"key": STANDARD.encode(k), "value": STANDARD.encode("v")})
            .to_string();
        ringgate_discovery::http::call(
            &endpoint,
            "POST",
            "/v3/kv/put",
            Some(&body),
            Duration::from_secs(1),
        )
        .expect("put");
    };
    put(&format!("{key}-other"));
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "another key is not reported"
    );
    let at = Instant::now();
    put(&key);
    let seen = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("the change is reported");
    assert!(seen.duration_since(at) < Duration::from_millis(500));
}
