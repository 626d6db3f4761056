//! A worker PROCESS (`rg-test-worker`, registered in Redis) behind ringgate's reverse proxy
//! is sent SIGTERM under load: it deregisters, ringgate stops routing to it, every request
//! it had completes, and it exits 0 while the other worker takes the traffic (HA scenario 4).
//! Also: a worker process killed with SIGKILL mid-traffic fails no idempotent GET.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use ringgate_tests::{
    backend::{redis_cli, redis_master_addr, required, unique},
    gateway::start_with_redis,
    http::{admin_get, read_response, wait_for_worker, Resp},
};

/// Route prefix of these tests.
const PREFIX: &str = "/ws";
/// What every client asks for: 300 ms on the worker, so requests are in flight.
const SLOW_PATH: &str = "/ws/slow/300";
/// Client threads.
const CLIENTS: usize = 6;

/// A running `rg-test-worker` process; SIGKILLed and deregistered if still around when
/// dropped (a failed test leaves nothing behind).
struct WorkerProcess {
    name: String,
    addr: SocketAddr,
    key: String,
    child: Child,
    /// stdout lines after `listening`, with the time each was read.
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl WorkerProcess {
    /// Starts worker `name` registered as `group`/`name`, heartbeat TTL 10 s, SIGTERM grace
    /// `grace_ms`; waits for its address and its registration.
    fn start(name: &str, group: &str, grace_ms: u64) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rg-test-worker"))
            .args(["--name", name, "--listen", "127.0.0.1:0"])
            .args(["--grace-ms", &grace_ms.to_string()])
            .args(["--redis", &redis_master_addr(), "--group", group])
            .args(["--id", name, "--ttl", "10"])
            .env(
                "RG_TEST_WORKER_REDIS_PASSWORD",
                required("RINGGATE_REDIS_PASSWORD"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rg-test-worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let mut w = Self {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            key: format!("ringgate:worker:{group}:{name}"),
            child,
            lines,
            seen: Vec::new(),
        };
        let first = w.line_starting("listening ", Duration::from_secs(5));
        w.addr = first
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name}: first line {first:?} names no address"));
        let registered = w.line_starting("registered ", Duration::from_secs(5));
        assert_eq!(registered, format!("registered {}", w.key));
        w
    }

    /// Waits for the next stdout line starting with `prefix` (earlier lines are kept in
    /// `seen`); panics after `limit` or when stdout closes first.
    fn line_starting(&mut self, prefix: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.seen.push((at, line.clone()));
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "{}: no line {prefix:?} within {limit:?} ({e}); lines so far: {:?}",
                    self.name,
                    self.seen.iter().map(|(_, l)| l).collect::<Vec<_>>()
                ),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this test owns and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    /// Polls until the process exits; `None` when it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Best effort, no panic while unwinding: the key of a killed worker would only
        // lapse after its TTL.
        if let Ok(password) = std::env::var("RINGGATE_REDIS_PASSWORD") {
            let master = redis_master_addr();
            let _ = redis_cli(&master, Some(&password), &["DEL", &self.key]);
            let _ = redis_cli(
                &master,
                Some(&password),
                &["PUBLISH", "ringgate:workers", "x"],
            );
        }
    }
}

/// What one client request saw.
#[derive(Debug)]
struct Sample {
    began: Instant,
    ended: Instant,
    /// The response, or why there was none.
    outcome: Result<Resp, String>,
}

impl Sample {
    /// The worker that answered a complete 200 with the expected body.
    fn worker(&self) -> Option<&str> {
        let r = self.outcome.as_ref().ok()?;
        let who = r.header("x-worker")?;
        let want = format!("{who} GET {SLOW_PATH} xff=127.0.0.1 body=0");
        (r.status == 200 && r.text() == want).then_some(who)
    }

    fn spans(&self, at: Instant) -> bool {
        self.began < at && self.ended > at
    }
}

/// One `GET` on a fresh connection to ringgate; errors instead of panics.
fn get(addr: SocketAddr, path: &str) -> Result<Resp, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(s);
    read_response(&mut reader).ok_or_else(|| {
        format!(
            "no complete response (got {:?})",
            String::from_utf8_lossy(reader.buffer())
        )
    })
}

/// [`CLIENTS`] threads sending [`SLOW_PATH`] back to back until `stop` is set.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..CLIENTS)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let began = Instant::now();
                        let outcome = get(addr, SLOW_PATH);
                        samples.push(Sample {
                            began,
                            ended: Instant::now(),
                            outcome,
                        });
                    }
                    samples
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the clients; every sample, by start time.
    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Sample> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("client thread"))
            .collect();
        all.sort_by_key(|s| s.began);
        all
    }
}

/// Requests that did not get a complete 200 from a worker, described.
fn failures(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter(|s| s.worker().is_none())
        .map(|s| match &s.outcome {
            Ok(r) => format!("{} {}", r.status, r.text()),
            Err(e) => e.clone(),
        })
        .collect()
}

/// Workers of `group` in ringgate's snapshot (`/admin/upstreams`).
fn upstreams(addr: SocketAddr, group: &str) -> Vec<String> {
    admin_get(addr, "/admin/upstreams").json()["groups"][group]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter_map(|w| w["addr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts ringgate with `PREFIX` routed to a fresh group, and workers `a` and `b` (grace
/// `grace_ms`) registered in it; returns once both have answered through ringgate.
fn setup(grace_ms: u64) -> (ringgate::Gateway, SocketAddr, WorkerProcess, WorkerProcess) {
    let group = unique("sig");
    let routes = format!("{PREFIX}={group}");
    let (g, addr) = start_with_redis(&[("RINGGATE_ROUTES", routes.as_str())]);
    let a = WorkerProcess::start("a", &group, grace_ms);
    let b = WorkerProcess::start("b", &group, grace_ms);
    for w in [&a, &b] {
        wait_for_worker(addr, "/ws/warmup", &w.name, Duration::from_secs(5));
    }
    (g, addr, a, b)
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_worker_process_sigterm_finishes_inflight_requests() {
    let grace = Duration::from_millis(1000);
    let (_g, addr, mut a, b) = setup(grace.as_millis() as u64);
    let group = a
        .key
        .split(':')
        .nth(2)
        .expect("group in the key")
        .to_string();

    // Beside ringgate, straight to A: an idle keep-alive connection (must be closed by the
    // drain, without a response) and a request that is still running when A stops
    // accepting (must complete).
    let mut idle = TcpStream::connect(a.addr).expect("connect to a");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("write to a");
    let mut idle = BufReader::new(idle);
    let health = read_response(&mut idle).expect("a answers /health");
    assert_eq!(health.status, 200);
    let a_addr = a.addr;
    let long_ms = grace.as_millis() as u64 + 800;

    let load = Load::start(addr);
    std::thread::sleep(Duration::from_millis(1200));
    let long = std::thread::spawn(move || {
        let mut s = TcpStream::connect(a_addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET /slow/{long_ms} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        read_response(&mut BufReader::new(s)).ok_or("no complete response".to_string())
    });
    // The long request is read by A before the signal (A counts it in flight).
    std::thread::sleep(Duration::from_millis(50));
    let signalled = Instant::now();
    a.signal(libc::SIGTERM);

    // ringgate drops A from its snapshot after the deregistration.
    let mut removed = None;
    while removed.is_none() && signalled.elapsed() < Duration::from_secs(3) {
        if !upstreams(addr, &group).contains(&a_addr.to_string()) {
            removed = Some(signalled.elapsed());
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let removed = removed.expect("ringgate dropped A within 3 s of its SIGTERM");
    assert_eq!(upstreams(addr, &group), vec![b.addr.to_string()]);

    // The drained idle connection is closed without a response.
    let mut rest = String::new();
    idle.get_ref()
        .set_read_timeout(Some(grace + Duration::from_secs(3)))
        .expect("set a read timeout");
    let idle_read = idle.read_line(&mut rest);
    let idle_closed = signalled.elapsed();
    assert!(
        matches!(idle_read, Ok(0)),
        "A's idle keep-alive connection is closed by the drain: {idle_read:?} {rest:?}"
    );

    let status = a.wait_exit(Duration::from_secs(10));
    let exited = signalled.elapsed();
    let status = status.expect("A exits within 10 s of SIGTERM");
    // B alone keeps serving for a while after A is gone.
    std::thread::sleep(Duration::from_millis(1500));
    let samples = load.finish();
    let long = long.join().expect("long request thread");

    let draining = a.line_starting("draining ", Duration::from_secs(1));
    let drained = a.line_starting("drained ", Duration::from_secs(1));
    let served_a: usize = drained
        .strip_prefix("drained served=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("A's last line {drained:?}"));

    let failed = failures(&samples);
    let on_a = |s: &&Sample| s.worker() == Some("a");
    let on_b = |s: &&Sample| s.worker() == Some("b");
    let inflight_a = samples
        .iter()
        .filter(on_a)
        .filter(|s| s.spans(signalled))
        .count();
    // Seconds from the signal to the start of the last request A answered (negative: before).
    let last_began_on_a = samples
        .iter()
        .filter(on_a)
        .map(|s| s.began)
        .max()
        .map(|t| match t.checked_duration_since(signalled) {
            Some(after) => after.as_secs_f64(),
            None => -signalled.duration_since(t).as_secs_f64(),
        })
        .unwrap_or(f64::NAN);
    let a_exit_at = signalled + exited;
    let after_exit_on_b = samples
        .iter()
        .filter(on_b)
        .filter(|s| s.began > a_exit_at)
        .count();
    let on_a_after_removal = samples
        .iter()
        .filter(on_a)
        .filter(|s| s.began > signalled + removed)
        .count();
    eprintln!(
        "worker SIGTERM: {} requests ({} failed), {} answered by a, {} by b; {inflight_a} in \
         flight on a at SIGTERM completed; ringgate dropped a after {:.3}s (last request \
         routed to a began {:+.3}s from the signal); a's idle connection closed after {:.3}s; \
         a {draining} and exited {status} {:.3}s after SIGTERM ({drained}); {after_exit_on_b} \
         answered by b after a exited",
        samples.len(),
        failed.len(),
        samples.iter().filter(on_a).count(),
        samples.iter().filter(on_b).count(),
        removed.as_secs_f64(),
        last_began_on_a,
        idle_closed.as_secs_f64(),
        exited.as_secs_f64(),
    );

    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        inflight_a >= 1,
        "requests were in flight on a at SIGTERM and completed"
    );
    assert!(status.success(), "a exits 0 after draining: {status}");
    assert!(
        removed < grace,
        "ringgate stops routing to a within its grace"
    );
    assert_eq!(
        on_a_after_removal, 0,
        "no request goes to a once ringgate dropped it"
    );
    assert!(
        after_exit_on_b >= CLIENTS,
        "b keeps serving after a exited: {after_exit_on_b}"
    );
    assert!(
        served_a >= samples.iter().filter(on_a).count(),
        "a counted what the clients saw it answer"
    );
    // The request A had read when it stopped accepting completed, closing the connection.
    let long = long.unwrap_or_else(|e| panic!("the long request on a failed: {e}"));
    assert_eq!(
        (long.status, long.text()),
        (200, format!("a GET /slow/{long_ms} xff= body=0"))
    );
    assert_eq!(long.header("connection"), Some("close"));
    assert_ne!(
        draining, "draining in_flight=0",
        "the long request was in flight when a stopped accepting"
    );
    assert!(
        idle_closed >= grace,
        "the idle connection stays open during the grace"
    );
    drop(b);
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_worker_process_sigkill_fails_no_idempotent_get() {
    let (_g, addr, mut a, b) = setup(1000);
    let load = Load::start(addr);
    std::thread::sleep(Duration::from_millis(1200));
    let killed = Instant::now();
    a.signal(libc::SIGKILL);
    let status = a.wait_exit(Duration::from_secs(5)).expect("a dies at once");
    std::thread::sleep(Duration::from_millis(2500));
    let samples = load.finish();

    let failed = failures(&samples);
    let on_a = |s: &&Sample| s.worker() == Some("a");
    let on_b = |s: &&Sample| s.worker() == Some("b");
    let before = samples.iter().filter(on_a).count();
    let spanning: Vec<&Sample> = samples.iter().filter(|s| s.spans(killed)).collect();
    // A request cut on A and retried on B takes its time on A plus 300 ms on B.
    let slow_spanning = spanning
        .iter()
        .filter(|s| s.ended - s.began > Duration::from_millis(360))
        .count();
    let after_on_b = samples
        .iter()
        .filter(on_b)
        .filter(|s| s.began > killed)
        .count();
    eprintln!(
        "worker SIGKILL: {} requests ({} failed), {before} answered by a before the kill; \
         {} in flight at the kill, {slow_spanning} of them slower than 360 ms (retried on \
         b); {after_on_b} answered by b after the kill; a exited {status}",
        samples.len(),
        failed.len(),
        spanning.len(),
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(before >= 1, "a served before the kill");
    assert!(
        !samples.iter().filter(on_a).any(|s| s.began > killed),
        "nothing sent after the kill is answered by a"
    );
    assert!(
        spanning.len() >= CLIENTS,
        "every client had a request in flight at the kill"
    );
    assert!(after_on_b >= CLIENTS, "b serves after the kill");
    drop(b);
}
