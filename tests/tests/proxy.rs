//! The reverse proxy with static workers (`RINGGATE_WORKER_UPSTREAMS`): needs no backend.

use std::net::{SocketAddr, TcpListener};

use ringgate_tests::{gateway::start, http::request, worker::TestWorker};

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn test_proxy_static_workers_retry_refused_connects_on_another_worker() {
    let w = TestWorker::start("static");
    let dead = dead_addr();
    let upstreams = format!("app={dead},{}", w.addr);
    let (_g, addr) = start(&[
        ("RINGGATE_ROUTES", "/app=app,/gone=gone"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
    ]);
    // Every request succeeds: a refused connect moves on to the live worker.
    for i in 0..30 {
        let r = request(addr, "GET", &format!("/app/{i}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.text(),
            format!("static GET /app/{i} xff=127.0.0.1 body=0")
        );
    }
    assert_eq!(w.count(), 30);
    // Hop-by-hop headers stay here; the worker's own headers come back.
    let r = request(
        addr,
        "GET",
        "/app",
        &[("Connection", "keep-alive, x-secret"), ("X-Secret", "1")],
        b"",
    );
    assert_eq!(r.header("x-worker"), Some("static"));
    // A group without workers: 503; unrouted paths: 404.
    let r = request(addr, "GET", "/gone/x", &[], b"");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (503, Some("no_upstream"))
    );
    let r = request(addr, "GET", "/nowhere", &[], b"");
    assert_eq!(r.status, 404);
}

#[test]
fn test_proxy_answers_502_when_every_worker_is_down() {
    let upstreams = format!("app={},{}", dead_addr(), dead_addr());
    let (_g, addr) = start(&[
        ("RINGGATE_ROUTES", "/=app"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
    ]);
    let r = request(addr, "GET", "/x", &[], b"");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (502, Some("bad_gateway"))
    );
    // ringgate's own routes are not proxied.
    assert_eq!(request(addr, "GET", "/health", &[], b"").status, 200);
}
