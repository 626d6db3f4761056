//! The reverse proxy with static workers (`RINGGATE_WORKER_UPSTREAMS`): needs no backend.

use std::net::{SocketAddr, TcpListener};

use ringgate::Gateway;
use ringgate_tests::{
    eventually,
    gateway::start,
    http::{admin_get, metric_total, request},
    worker::TestWorker,
};

/// A gateway proxying `prefix` to `worker` (group `g`), with `extra` settings.
fn proxy_to(worker: &TestWorker, prefix: &str, extra: &[(&str, &str)]) -> (Gateway, SocketAddr) {
    let route = format!("{prefix}=g");
    let upstreams = format!("g={}", worker.addr);
    let mut env = vec![
        ("RINGGATE_ROUTES", route.as_str()),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
    ];
    env.extend_from_slice(extra);
    start(&env)
}

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
fn test_proxy_forwards_client_context_and_keeps_hop_by_hop_headers_on_each_side() {
    let w = TestWorker::start("hw");
    let (_g, addr) = proxy_to(&w, "/h", &[]);
    let r = request(
        addr,
        "GET",
        "/h/headers",
        &[
            ("Host", "app.example"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Proto", "spoofed"),
            ("Via", "1.0 spoofed"),
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic eA=="),
            ("X-Custom", "yes"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.text();
    let seen: Vec<&str> = seen.lines().collect();
    for want in [
        "host: app.example",
        "x-forwarded-host: app.example",
        "x-forwarded-for: 10.0.0.1, 127.0.0.1",
        "x-forwarded-proto: http",
        "via: 1.1 ringgate",
        "x-custom: yes",
    ] {
        assert!(
            seen.contains(&want),
            "the worker did not get {want:?}: {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|l| l.starts_with("x-request-id: ")),
        "{seen:?}"
    );
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            !seen.iter().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} reached the worker: {seen:?}"
        );
    }
    assert_eq!(seen.iter().filter(|l| l.starts_with("via:")).count(), 1);
    // The worker's own hop-by-hop headers stay here too.
    assert_eq!(r.header("x-worker"), Some("hw"));
    assert_eq!(r.header("via"), Some("1.1 ringgate"));
    for gone in ["x-hop", "keep-alive", "proxy-authenticate", "connection"] {
        assert_eq!(r.header(gone), None, "{gone} reached the client");
    }
}

#[test]
fn test_proxy_answers_504_when_a_worker_does_not_answer_in_time() {
    let w = TestWorker::start("late");
    let (_g, addr) = proxy_to(&w, "/l", &[("RINGGATE_UPSTREAM_RESPONSE_TIMEOUT", "200ms")]);
    let started = std::time::Instant::now();
    let r = request(addr, "GET", "/l/slow/3000", &[], b"");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (504, Some("upstream_timeout")),
        "{}",
        r.text()
    );
    // Answered at the limit, not when the worker would have.
    assert!(started.elapsed() < std::time::Duration::from_millis(2500));
    // A prompt request on the same route still goes through.
    let r = request(addr, "GET", "/l/fast", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "late GET /l/fast xff=127.0.0.1 body=0")
    );
}

/// A listener that never accepts, with its accept queue already full: connects to it hang
/// (the kernel drops their SYNs) instead of being refused. Keep the returned sockets alive.
fn black_hole() -> (SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![listener];
    // Fill the queue: connects complete until it is full; then one is left hanging.
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        if s.connect_timeout(&addr.into(), std::time::Duration::from_millis(300))
            .is_err()
        {
            return (addr, held);
        }
        held.push(s);
    }
    panic!("the accept queue of {addr} never filled");
}

#[test]
fn test_proxy_gives_up_a_connect_that_hangs_at_the_connect_timeout() {
    let (hole, _held) = black_hole();
    let w = TestWorker::start("after");
    let upstreams = format!("only={hole};both={hole},{}", w.addr);
    let (_g, addr) = start(&[
        ("RINGGATE_ROUTES", "/only=only,/both=both"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
        ("RINGGATE_UPSTREAM_CONNECT_TIMEOUT", "200ms"),
    ]);
    let started = std::time::Instant::now();
    let r = request(addr, "GET", "/only/x", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("timed out"), "{}", r.text());
    assert!(started.elapsed() < std::time::Duration::from_millis(2000));
    // With a live worker in the group every request succeeds: a connect that timed out
    // sent nothing, so the request moves on.
    for i in 0..10 {
        let r = request(addr, "GET", &format!("/both/{i}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
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

/// Resident memory of this process (tests, worker and ringgate share it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Samples RSS every 10 ms until dropped; reports the peak.
struct RssWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::thread::JoinHandle<u64>,
}

impl RssWatch {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let peak = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss());
                // A sleep: the sampling period; the peak is looked for, not waited for.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        });
        Self { stop, peak }
    }

    fn peak(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.peak.join().unwrap()
    }
}

const MIB: usize = 1024 * 1024;

#[test]
fn test_proxy_streams_large_bodies_both_ways_in_bounded_memory() {
    use std::io::{BufRead, BufReader, Read, Write};
    let w = TestWorker::start("big");
    let (_g, addr) = proxy_to(&w, "/s", &[]);
    let size = 1024 * MIB;
    let before = rss();
    let watch = RssWatch::start();
    // Upload: far above RINGGATE_MAX_BODY_BYTES (1 MiB), streamed to the worker.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /s/upload HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n"
    )
    .unwrap();
    let piece = vec![7u8; MIB];
    for _ in 0..size / MIB {
        s.write_all(&piece).unwrap();
    }
    let mut reader = BufReader::new(s);
    let resp = ringgate_tests::http::read_response(&mut reader).expect("a response");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.text(),
        format!("big POST /s/upload xff=127.0.0.1 body={size}")
    );
    // Download, Content-Length framed.
    let mut s = reader.into_inner();
    write!(s, "GET /s/download/{size} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    let mut length = None;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    assert_eq!(length, Some(size));
    let mut got = 0;
    let mut buf = vec![0u8; MIB];
    while got < size {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "download cut at {got}");
        got += n;
    }
    let peak = watch.peak();
    let grew = peak.saturating_sub(before);
    eprintln!(
        "streamed {} MiB up and {} MiB down; RSS grew by {:.1} MiB at most",
        size / MIB,
        size / MIB,
        grew as f64 / MIB as f64
    );
    assert!(grew < 64 * MIB as u64, "memory grew by {grew} bytes");
    // The connection is still usable afterwards.
    let mut s = reader.into_inner();
    write!(s, "GET /s/after HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let resp = ringgate_tests::http::read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.text(), "big GET /s/after xff=127.0.0.1 body=0");
}

#[test]
fn test_proxy_reads_response_heads_over_many_reads_up_to_its_limit() {
    let w = TestWorker::start("heads");
    let (_g, addr) = proxy_to(&w, "/h", &[]);
    // 40 KiB of head, several times the first read's buffer, arriving in 4 KiB pieces.
    let r = request(addr, "GET", "/h/head/40960", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-filler").map(str::len), Some(40960));
    assert_eq!(r.text(), "ok");
    // Over the 64 KiB limit: a clear 502, not a hang or a cut connection.
    let r = request(addr, "GET", "/h/head/70000", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["code"].as_str(), Some("bad_gateway"));
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("larger than"));
}

#[test]
fn test_proxy_passes_chunked_bodies_through() {
    use std::io::{Read, Write};
    let w = TestWorker::start("chunky");
    let (_g, addr) = proxy_to(&w, "/c", &[]);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // A chunked upload, then a chunked download on the same connection.
    s.write_all(b"POST /c/up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n")
        .unwrap();
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let r = ringgate_tests::http::read_response(&mut reader).unwrap();
    assert_eq!(r.text(), "chunky POST /c/up xff=127.0.0.1 body=7");
    s.write_all(b"GET /c/chunked/200000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    let text = String::from_utf8_lossy(&rest);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(body.ends_with("0\r\n\r\n"));
    // Decode and count.
    let start = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut bytes = &rest[start..];
    let mut total = 0;
    loop {
        let eol = bytes.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&bytes[..eol]).unwrap(), 16).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        bytes = &bytes[eol + 2 + n + 2..];
    }
    assert_eq!(total, 200_000);
}

#[test]
fn test_proxy_worker_death_fails_no_idempotent_request() {
    let (w1, w2) = (TestWorker::start("w1"), TestWorker::start("w2"));
    let upstreams = format!("g={},{}", w1.addr, w2.addr);
    let (_g, addr) = start(&[
        ("RINGGATE_ROUTES", "/d=g"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
        ("RINGGATE_UPSTREAM_HEALTH_INTERVAL", "0s"),
    ]);
    // Keep-alive connections to both workers exist when w1 dies.
    for i in 0..200 {
        if i == 50 {
            w1.kill();
        }
        let r = request(addr, "GET", &format!("/d/{i}"), &[], b"");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert!(w2.count() >= 150);
}

#[test]
fn test_proxy_does_not_repeat_a_post_whose_worker_died() {
    let (w1, w2) = (TestWorker::start("w1"), TestWorker::start("w2"));
    let (_g, addr) = proxy_to(&w1, "/p", &[("RINGGATE_UPSTREAM_HEALTH_INTERVAL", "0s")]);
    assert_eq!(request(addr, "POST", "/p/a", &[], b"x").status, 200);
    // w1 now takes requests and dies without answering: the POST reached it, so it is
    // answered 502 and not sent anywhere else.
    w1.kill();
    let r = request(addr, "POST", "/p/b", &[], b"payload");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (502, Some("bad_gateway"))
    );
    assert_eq!(w2.count(), 0);
}

#[test]
fn test_proxy_sticky_sessions_pin_a_client_to_its_worker() {
    let ws: Vec<TestWorker> = (0..3)
        .map(|i| TestWorker::start(&format!("s{i}")))
        .collect();
    let list: Vec<String> = ws.iter().map(|w| w.addr.to_string()).collect();
    let upstreams = format!("g={}", list.join(","));
    let (_g, addr) = start(&[
        ("RINGGATE_ROUTES", "/st=g"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
        ("RINGGATE_STICKY_GROUPS", "g"),
    ]);
    let first = request(addr, "GET", "/st", &[], b"");
    let cookie = first
        .header("set-cookie")
        .expect("a sticky cookie")
        .to_string();
    assert!(cookie.starts_with("rg_sticky_g=") && cookie.contains("HttpOnly"));
    let pair = cookie.split(';').next().unwrap().to_string();
    let worker = first.header("x-worker").unwrap().to_string();
    for _ in 0..30 {
        let r = request(addr, "GET", "/st", &[("Cookie", &pair)], b"");
        assert_eq!(r.header("x-worker"), Some(worker.as_str()));
        assert!(r.header("set-cookie").is_none());
    }
}

#[test]
fn test_proxy_rate_limit_answers_429_per_tenant() {
    let w = TestWorker::start("rl");
    let (_g, addr) = proxy_to(
        &w,
        "/r",
        &[("RINGGATE_RATE_LIMIT", "2"), ("RINGGATE_RATE_BURST", "5")],
    );
    let host = [("Host", "alpha.example.com")];
    let statuses: Vec<u16> = (0..8)
        .map(|_| request(addr, "GET", "/r", &host, b"").status)
        .collect();
    assert_eq!(&statuses[..5], &[200; 5]);
    let r = request(addr, "GET", "/r", &host, b"");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(r.header("retry-after").is_some());
    // Without an API key the tenant is the client's address: another Host (a rotated
    // label) gets no fresh bucket.
    for host in ["beta.example.com", "x1.example.com", "127.0.0.1"] {
        let r = request(addr, "GET", "/r", &[("Host", host)], b"");
        assert_eq!(r.status, 429, "Host {host} escaped the limit");
    }
    let limited = metric_total(addr, "ringgate_rate_limited_total");
    assert!(limited >= 4, "{limited} requests counted as rate limited");
}

#[test]
fn test_proxy_global_rate_limit_counts_on_the_core_while_redis_is_unreachable() {
    let w = TestWorker::start("rl-alone");
    let upstreams = format!("g={}", w.addr);
    let sentinel = dead_addr().to_string();
    let (_g, addr) = start(&[
        ("RINGGATE_ROUTES", "/r=g"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
        ("RINGGATE_REDIS_SENTINELS", sentinel.as_str()),
        ("RINGGATE_REDIS_TIMEOUT", "100ms"),
        ("RINGGATE_GLOBAL_RATE_LIMIT", "5"),
    ]);
    let host = [("Host", "gamma.example.com")];
    // No Redis: the core counts on its own, so the limit still holds on this core. The
    // burst starts just after a wall-clock second begins and ends within it (the window
    // slides: later in the next second there would be room again).
    let into_second = ringgate::clock::unix_millis() % 1000;
    // A sleep: to the wall clock's next second, which is no state of the gateway's.
    std::thread::sleep(std::time::Duration::from_millis(1010 - into_second));
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = (0..12)
        .map(|_| request(addr, "GET", "/r", &host, b"").status)
        .collect();
    assert!(started.elapsed() < std::time::Duration::from_millis(900));
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    let r = request(addr, "GET", "/r", &host, b"");
    assert_eq!(
        (r.status, r.json()["code"].as_str(), r.header("retry-after")),
        (429, Some("rate_limited"), Some("1"))
    );
    assert!(metric_total(addr, "ringgate_rate_limited_global_total") >= 8);
    // The report gives up after the Redis failover wait (15 s) and is counted.
    eventually(
        "a failed report counted",
        std::time::Duration::from_secs(25),
        || metric_total(addr, "ringgate_rate_limit_sync_failures_total") > 0,
    );
    // Requests keep being served: the window has room again within a second or so (a
    // refused request takes no room, so asking again does not hold it shut).
    eventually(
        "a request served again after the limited second",
        std::time::Duration::from_secs(2),
        || request(addr, "GET", "/r", &host, b"").status == 200,
    );
}

#[test]
fn test_proxy_drain_lets_inflight_requests_finish() {
    let w = TestWorker::start("slow");
    let (g, addr) = proxy_to(&w, "/w", &[]);
    let inflight = std::thread::spawn(move || request(addr, "GET", "/w/slow/700", &[], b""));
    // Counted as it reaches the worker, before its 700 ms.
    eventually(
        "the slow request at the worker",
        std::time::Duration::from_secs(5),
        || w.count() == 1,
    );
    let report = g.drain();
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(report.cut_requests, 0);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "new connections are refused"
    );
}

#[test]
fn test_proxy_active_health_checks_take_a_sick_worker_out_and_back() {
    let (w1, w2) = (TestWorker::start("h1"), TestWorker::start("h2"));
    let upstreams = format!("g={},{}", w1.addr, w2.addr);
    let (_g, addr) = start(&[
        ("RINGGATE_ROUTES", "/h=g"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
        ("RINGGATE_UPSTREAM_HEALTH_INTERVAL", "100ms"),
    ]);
    let healthy = |worker: &TestWorker| {
        let admin = admin_get(addr, "/admin/upstreams").json();
        admin["groups"]["g"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["addr"] == worker.addr.to_string())
            .unwrap()["healthy"]
            .as_bool()
            .unwrap()
    };
    w1.set_sick(true);
    let start = std::time::Instant::now();
    eventually(
        "w1 seen unhealthy",
        std::time::Duration::from_secs(2),
        || !healthy(&w1),
    );
    let before = w1.count();
    for _ in 0..30 {
        assert_eq!(
            request(addr, "GET", "/h", &[], b"").header("x-worker"),
            Some("h2")
        );
    }
    assert_eq!(w1.count(), before, "a sick worker gets no requests");
    w1.set_sick(false);
    // Within 4 s of the first wait's start, as both waits together.
    let left = std::time::Duration::from_secs(4).saturating_sub(start.elapsed());
    eventually("w1 seen healthy again", left, || healthy(&w1));
    for _ in 0..40 {
        request(addr, "GET", "/h", &[], b"");
    }
    assert!(
        w1.count() > before,
        "a recovered worker gets requests again"
    );
    drop(w2);
}

/// One worker that closes idle keep-alive connections after 100 ms (far shorter than
/// ringgate's 30 s), routed at `/app`, without active health checks.
fn gateway_to_brief_worker(name: &str) -> (TestWorker, Gateway, SocketAddr) {
    let w = TestWorker::start(name);
    w.set_idle_close(std::time::Duration::from_millis(100));
    let upstreams = format!("app={}", w.addr);
    let (g, addr) = start(&[
        ("RINGGATE_ROUTES", "/app=app"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
        ("RINGGATE_UPSTREAM_HEALTH_INTERVAL", "0s"),
    ]);
    (w, g, addr)
}

#[test]
fn test_proxy_does_not_reuse_connections_the_worker_closed() {
    // One worker whose keep-alive timeout (100 ms) is far shorter than ringgate's (30 s):
    // every pooled connection is closed by the worker before the next request comes.
    let (w, _g, addr) = gateway_to_brief_worker("brief");
    for i in 0..6 {
        let (method, body): (&str, &[u8]) = match i % 2 {
            0 => ("GET", b""),
            _ => ("POST", b"not repeatable"),
        };
        let r = request(addr, method, &format!("/app/{i}"), &[], body);
        assert_eq!(r.status, 200, "request {i} ({method}): {}", r.text());
        assert_eq!(
            r.text(),
            format!("brief {method} /app/{i} xff=127.0.0.1 body={}", body.len())
        );
        eventually(
            "the worker closed the pooled connection, and ringgate's end saw it",
            std::time::Duration::from_secs(5),
            || w.open_connections() == 0 && sockets_to(w.addr.port(), &["established"]) == 0,
        );
    }
    assert_eq!(w.count(), 6, "each request reached the worker exactly once");
}

/// TCP sockets to `port` in one of `states` (`ss` state names: `established`,
/// `close-wait` for one whose peer closed while this end did not, ...).
fn sockets_to(port: u16, states: &[&str]) -> usize {
    let mut args = vec!["-Htn".to_string()];
    for state in states {
        args.extend(["state".to_string(), state.to_string()]);
    }
    args.push(format!("( dport = :{port} )"));
    let out = std::process::Command::new("ss")
        .args(&args)
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn test_proxy_closes_pooled_connections_the_worker_closed_without_new_requests() {
    // Without a sweep, a pooled connection is looked at only when the next request to its
    // worker takes it; until then a connection the worker closed stays in CLOSE_WAIT.
    let (w, _g, addr) = gateway_to_brief_worker("quiet");
    let r = request(addr, "GET", "/app/once", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    // The worker closes its end 100 ms after the response; a sweep runs every second.
    // Until then ringgate's end is established; after, in CLOSE_WAIT until it is closed.
    eventually(
        "ringgate to close the pooled connection the worker closed",
        std::time::Duration::from_millis(2500),
        || {
            w.open_connections() == 0
                && sockets_to(w.addr.port(), &["established", "close-wait"]) == 0
        },
    );
}

#[test]
fn test_a_client_that_stops_reading_is_dropped_at_the_response_write_timeout() {
    use std::io::{BufRead, BufReader, Read, Write};
    let w = TestWorker::start("stall");
    // Body reads may pause for a minute; one response write may take half a second.
    let (_g, addr) = proxy_to(
        &w,
        "/s",
        &[
            ("RINGGATE_BODY_READ_TIMEOUT", "60s"),
            ("RINGGATE_RESPONSE_WRITE_TIMEOUT", "500ms"),
        ],
    );
    let size = 256 * MIB;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /s/download/{size} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // Not reading: the socket buffers fill and ringgate's write stalls. A sleep: a client
    // that stops reading for 3 s (six write timeouts) is the case under test, and ringgate
    // shows no state for a write it gave up.
    std::thread::sleep(std::time::Duration::from_secs(3));
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let started = std::time::Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; MIB];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got < 64 * MIB,
        "{} MiB arrived after the stall: the write was not given up at 500 ms",
        got / MIB
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}

#[test]
fn test_a_catch_all_proxy_route_never_shadows_an_own_endpoint() {
    let upstreams = format!("g={}", dead_addr());
    let (_g, addr) = start(&[
        ("RINGGATE_ROUTES", "/=g"),
        ("RINGGATE_WORKER_UPSTREAMS", upstreams.as_str()),
    ]);
    let own = |method: &str, path: &str| {
        let r = request(addr, method, path, &[("Host", "t")], b"{}");
        assert!(
            r.header("content-type").is_some() && r.status != 502,
            "{method} {path} went to the dead worker: {} {}",
            r.status,
            r.text()
        );
        r.status
    };
    for e in ringgate::router::Endpoint::ALL {
        own("GET", e.path());
    }
    assert_eq!(own("GET", "/health"), 200);
    assert_eq!(own("GET", "/metrics"), 200);
    assert_eq!(own("GET", "/admin/status"), 401);
    own("POST", "/sql");
    // Anything else is the catch-all's.
    assert_eq!(request(addr, "GET", "/healthz", &[], b"").status, 502);
}
