//! ringgate (the real binary) sent SIGTERM under load: every request it had answers 200,
//! none is cut mid-response, new connections are refused, and it exits 0. No backend needed:
//! the load goes through the reverse proxy to a slow test worker, so requests are in flight
//! when the signal arrives.

use std::{
    io::{BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use ringgate_tests::{http::read_response, worker::TestWorker};

/// The `ringgate` binary next to this test's executable (`cargo test --workspace` builds it).
fn ringgate_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("ringgate");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p ringgate` (scripts/test does)",
        bin.display()
    );
    bin
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// What one client saw.
#[derive(Debug)]
enum Outcome {
    /// A complete response with this status.
    Answered(u16),
    /// The connection was refused or closed before any response byte: not accepted.
    Refused,
    /// A response started but broke off: a cut request.
    Cut(String),
}

fn one_request(addr: SocketAddr) -> Outcome {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Outcome::Refused;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(b"GET /w/slow/300 HTTP/1.1\r\nHost: t\r\n\r\n")
        .is_err()
    {
        return Outcome::Refused;
    }
    let mut reader = BufReader::new(s);
    match read_response(&mut reader) {
        Some(r) => Outcome::Answered(r.status),
        None if reader.buffer().is_empty() => Outcome::Refused,
        None => Outcome::Cut(String::from_utf8_lossy(reader.buffer()).into_owned()),
    }
}

#[test]
fn test_sigterm_under_load_fails_no_inflight_request() {
    let worker = TestWorker::start("slow");
    let addr = free_addr();
    let mut child = Command::new(ringgate_binary())
        .env_clear()
        .env("RINGGATE_LISTEN", addr.to_string())
        .env("RINGGATE_WORKERS", "2")
        .env("RINGGATE_PIN_CORES", "false")
        .env("RINGGATE_ROUTES", "/w=g")
        .env("RINGGATE_WORKER_UPSTREAMS", format!("g={}", worker.addr))
        .env("RINGGATE_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringgate");
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ringgate did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(Instant, Outcome)>();
    let clients: Vec<_> = (0..30)
        .map(|_| {
            let (stop, tx) = (stop.clone(), tx.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let o = one_request(addr);
                    let refused = matches!(o, Outcome::Refused);
                    let _ = tx.send((began, o));
                    if refused {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let status = child.wait().unwrap();
    let outcomes: Vec<(Instant, Outcome)> = rx.try_iter().collect();
    let answered = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Answered(200)))
        .count();
    let begun_before = outcomes
        .iter()
        .filter(|(t, o)| *t < signalled && matches!(o, Outcome::Answered(200)))
        .count();
    let bad: Vec<String> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Cut(partial) => Some(format!("cut after {partial:?}")),
            Outcome::Answered(s) if *s != 200 => Some(format!("status {s}")),
            _ => None,
        })
        .collect();
    let refused_after = outcomes
        .iter()
        .filter(|(t, o)| {
            *t > signalled + Duration::from_millis(300) && matches!(o, Outcome::Refused)
        })
        .count();
    eprintln!(
        "SIGTERM under load: {} requests answered 200 ({begun_before} begun before the signal), \
         {} failed or cut, {refused_after} refused after the signal; exit {status}",
        answered,
        bad.len()
    );
    assert!(bad.is_empty(), "failed in-flight requests: {bad:?}");
    assert!(begun_before > 0, "requests were in flight at the signal");
    assert!(
        refused_after > 0,
        "new connections are refused while draining"
    );
    assert!(status.success(), "ringgate exits 0 after the drain");
}
