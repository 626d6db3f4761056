//! The real binary: configuration errors, `--help`, and graceful shutdown on a real SIGTERM.

mod common;

use std::{net::TcpStream, time::Duration};

use common::{
    process::{run_to_exit, Process},
    Client,
};

#[test]
fn help_lists_every_variable_with_defaults() {
    let (code, out, _) = run_to_exit(&[], &["--help"]);
    assert_eq!(code, 0);
    for v in ringgate::config::VARS {
        assert!(out.contains(v.name), "--help misses {}", v.name);
    }
    assert!(out.contains("default: 30s"));
}

#[test]
fn invalid_configuration_exits_64_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("RINGGATE_DRAIN_TIMEOUT", "30")],
            "RINGGATE_DRAIN_TIMEOUT=\"30\" is not valid: expected a duration like 250ms",
        ),
        (
            &[("RINGGATE_LISTEN", "nowhere")],
            "RINGGATE_LISTEN=\"nowhere\" is not valid: expected an address",
        ),
        (
            &[("RINGGATE_WORKERS", "0")],
            "RINGGATE_WORKERS=\"0\" is not valid",
        ),
        (
            &[("RINGGATE_MAX_BODY_BYTES", "1MB")],
            "RINGGATE_MAX_BODY_BYTES=\"1MB\" is not valid: expected a byte size",
        ),
        (
            &[("RINGGATE_TLS_LISTEN", "127.0.0.1:0")],
            "RINGGATE_TLS_CERT must be set",
        ),
        (
            &[("RINGGATE_LOG", "info,[[[")],
            "RINGGATE_LOG=\"info,[[[\" is not valid",
        ),
        (
            &[("RINGGATE_IO_DRIVER", "kqueue")],
            "RINGGATE_IO_DRIVER=\"kqueue\" is not valid: expected auto, io_uring or epoll",
        ),
    ];
    for (env, message) in cases {
        let (code, _, err) = run_to_exit(env, &[]);
        assert_eq!(code, 64, "{env:?}: {err}");
        assert!(err.contains(message), "{env:?}: stderr was {err}");
    }
    // A stray argument is refused too.
    let (code, _, err) = run_to_exit(&[], &["--listen"]);
    assert_eq!(code, 64);
    assert!(err.contains("RINGGATE_"), "{err}");
}

/// The `Cpus_allowed_list` of a /proc `status` file (the CPUs a task may run on).
fn cpus_allowed_list(status_path: &str) -> String {
    let status = std::fs::read_to_string(status_path).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    list.trim().to_string()
}

/// Each core thread's name and allowed CPUs (`Cpus_allowed_list`), from /proc.
fn core_thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut cores = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        if let Some(name) = name.trim().strip_prefix("ringgate-core-") {
            let cpus = cpus_allowed_list(dir.join("status").to_str().unwrap());
            cores.push((name.to_string(), cpus));
        }
    }
    cores.sort();
    cores
}

/// [`core_thread_cpus`] once it equals `want` (threads pin themselves just after they
/// start), or its last reading after 5 s.
fn core_thread_cpus_settled(pid: u32, want: &[(String, String)]) -> Vec<(String, String)> {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = core_thread_cpus(pid);
        if now == want || std::time::Instant::now() > end {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn cores_are_pinned_only_when_asked_and_within_the_process_cpus() {
    let cpus = ringgate::rt::allowed_cpus();
    let pinned = [("RINGGATE_PIN_CORES", "true")];

    // Not pinned (the default, checked in the config tests): every core may run on every
    // CPU the process may.
    let own = cpus_allowed_list("/proc/self/status");
    let p = Process::start(&[("RINGGATE_PIN_CORES", "false")]);
    let want = [("0".into(), own.clone()), ("1".into(), own)];
    assert_eq!(core_thread_cpus_settled(p.child.id(), &want), want);
    drop(p);

    // Pinned: core n on the n-th CPU the process may use.
    let p = Process::start(&pinned);
    let want: Vec<_> = (0..2)
        .map(|n| (n.to_string(), cpus[n % cpus.len()].to_string()))
        .collect();
    assert_eq!(core_thread_cpus_settled(p.child.id(), &want), want);
    drop(p);

    // Pinned inside a narrower affinity (taskset): never a CPU outside it.
    let last = *cpus.last().unwrap();
    let p = Process::start_on_cpus(&pinned, &[last]);
    let want = [
        ("0".into(), last.to_string()),
        ("1".into(), last.to_string()),
    ];
    assert_eq!(core_thread_cpus_settled(p.child.id(), &want), want);
}

#[test]
fn port_in_use_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run_to_exit(&[("RINGGATE_LISTEN", &addr)], &[]);
    assert_eq!(code, 64);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn test_graceful_shutdown_completes_inflight() {
    let mut p = Process::start(&[("RINGGATE_DRAIN_TIMEOUT", "10s")]);
    let addr = p.http.unwrap();
    // A request whose body is still arriving when SIGTERM lands.
    let mut inflight = Client::connect(addr);
    inflight.send(b"POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello");
    // An idle keep-alive connection, which should be closed by the drain.
    let mut idle = Client::connect(addr);
    idle.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.read_response(false).status, 200);
    std::thread::sleep(Duration::from_millis(100));
    p.signal(libc::SIGTERM);
    let line = p.wait_log("draining", Duration::from_secs(5));
    assert_eq!(
        line["fields"]["open_connections"], 2,
        "the drain line says what is open: {line}"
    );
    assert!(
        idle.closed_within(Duration::from_secs(3)),
        "idle keep-alive connection closes on drain"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "still running while a request is in flight"
    );
    inflight.send(b"world");
    let r = inflight.read_response(false);
    assert_eq!(r.status, 404, "the in-flight request completes");
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "and is told the connection closes"
    );
    assert!(inflight.closed_within(Duration::from_secs(3)));
    assert_eq!(p.wait_exit(Duration::from_secs(5)), 0);
    let line = p.wait_log("drained cleanly", Duration::from_secs(2));
    assert!(
        line["fields"]["elapsed_ms"].as_u64().unwrap() >= 300,
        "the drain took as long as the in-flight request: {line}"
    );
}

#[test]
fn test_graceful_shutdown_rejects_new() {
    let mut p = Process::start(&[("RINGGATE_DRAIN_TIMEOUT", "10s")]);
    let addr = p.http.unwrap();
    let mut inflight = Client::connect(addr);
    inflight.send(b"POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab");
    std::thread::sleep(Duration::from_millis(100));
    p.signal(libc::SIGTERM);
    p.wait_log("draining", Duration::from_secs(5));
    common::eventually("new connections refused", Duration::from_secs(3), || {
        TcpStream::connect(addr).is_err()
    });
    // The in-flight request is unaffected.
    inflight.send(b"cd");
    assert_eq!(inflight.read_response(false).status, 404);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), 0);
}

#[test]
fn ready_turns_503_while_draining_on_open_connections() {
    let mut p = Process::start(&[("RINGGATE_DRAIN_TIMEOUT", "10s"), ("RINGGATE_WORKERS", "1")]);
    let addr = p.http.unwrap();
    let mut c = Client::connect(addr);
    // Hold the connection busy with a partial request so the drain waits for it.
    c.send(b"GET /ready HTTP/1.1\r\nHost: t\r\n");
    std::thread::sleep(Duration::from_millis(100));
    p.signal(libc::SIGTERM);
    p.wait_log("draining", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    c.send(b"\r\n");
    let r = c.read_response(false);
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (503, Some("draining"))
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(p.wait_exit(Duration::from_secs(5)), 0);
}

#[test]
fn drain_timeout_cuts_stuck_requests_and_says_so() {
    let mut p = Process::start(&[
        ("RINGGATE_DRAIN_TIMEOUT", "500ms"),
        ("RINGGATE_BODY_READ_TIMEOUT", "60s"),
    ]);
    let addr = p.http.unwrap();
    let mut stuck = Client::connect(addr);
    stuck.send(b"POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nnever finished");
    std::thread::sleep(Duration::from_millis(100));
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), 0);
    let line = p.wait_log("drain timeout passed", Duration::from_secs(2));
    assert_eq!(line["fields"]["cut_requests"], 1, "{line}");
}

#[test]
fn readme_documents_every_variable() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for v in ringgate::config::VARS {
        assert!(
            readme.contains(&format!("`{}`", v.name)),
            "README.md misses {}",
            v.name
        );
    }
}
