//! `rg-test-worker`: the test worker of `ringgate_tests::worker` as a process of its own,
//! for tests that signal or kill a worker.
//!
//! ```text
//! rg-test-worker --name NAME [--listen 127.0.0.1:0] [--grace-ms 1000]
//!                [--redis HOST:PORT --group GROUP --id ID [--ttl SECS]]
//! ```
//!
//! The Redis password, if any, comes from `RG_TEST_WORKER_REDIS_PASSWORD`. Lines on stdout:
//! `listening ADDR` first, then `registered KEY` (with `--redis`); on SIGTERM or SIGINT
//! `signal N`, `deregistered KEY`, `draining in_flight=N`, and last `drained served=N`.
//!
//! With `--redis` it registers as `SET ringgate:worker:GROUP:ID {"addr":..,"weight":100}
//! EX TTL`, repeats that every TTL/3 as a heartbeat, and announces with `PUBLISH
//! ringgate:workers`. On SIGTERM it stops the heartbeat, deletes its key and announces
//! that; keeps serving for the grace (requests ringgate routed before it saw the change
//! still land); then stops accepting, closes idle connections, answers every request it
//! has read (with `connection: close`) and exits 0 once every connection is done. It exits
//! 1 when deregistering failed (after draining all the same).

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ringgate_tests::{
    backend::redis_cli,
    worker::{serve_connection, Switches},
};

/// Where the worker registers itself.
#[derive(Debug, Clone)]
struct Registration {
    redis: String,
    password: Option<String>,
    key: String,
    ttl_secs: u64,
}

/// The command line.
#[derive(Debug)]
struct Args {
    listen: String,
    name: String,
    grace: Duration,
    registration: Option<Registration>,
}

const USAGE: &str = "usage: rg-test-worker --name NAME [--listen ADDR] [--grace-ms MS] \
                     [--redis HOST:PORT --group GROUP --id ID [--ttl SECS]]";

fn parse_args() -> Result<Args, String> {
    let mut argv = std::env::args().skip(1);
    let (mut listen, mut name, mut grace_ms) = ("127.0.0.1:0".to_string(), None, 1000u64);
    let (mut redis, mut group, mut id, mut ttl_secs) = (None, None, None, 10u64);
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| format!("{flag} {v:?}: {e}\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => listen = value,
            "--name" => name = Some(value),
            "--grace-ms" => grace_ms = number(&value)?,
            "--redis" => redis = Some(value),
            "--group" => group = Some(value),
            "--id" => id = Some(value),
            "--ttl" => ttl_secs = number(&value)?.max(1),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    let name = name.ok_or_else(|| format!("--name is required\n{USAGE}"))?;
    let registration = match (redis, group, id) {
        (None, None, None) => None,
        (Some(redis), Some(group), Some(id)) => Some(Registration {
            redis,
            password: std::env::var("RG_TEST_WORKER_REDIS_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty()),
            key: format!("ringgate:worker:{group}:{id}"),
            ttl_secs,
        }),
        _ => return Err(format!("--redis, --group and --id go together\n{USAGE}")),
    };
    Ok(Args {
        listen,
        name,
        grace: Duration::from_millis(grace_ms),
        registration,
    })
}

/// Prints one line on stdout and flushes it; a closed stdout is ignored (the test that
/// reads it may be gone, the worker still drains).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

impl Registration {
    fn redis(&self, args: &[&str]) -> Option<String> {
        redis_cli(&self.redis, self.password.as_deref(), args)
    }

    /// `SET key value EX ttl`; an error when Redis does not answer `OK`.
    fn set(&self, value: &str) -> Result<(), String> {
        let ttl = self.ttl_secs.to_string();
        match self.redis(&["SET", &self.key, value, "EX", &ttl]) {
            Some(ok) if ok == "OK" => Ok(()),
            other => Err(format!("SET {} on {}: {other:?}", self.key, self.redis)),
        }
    }

    /// `PUBLISH ringgate:workers key`.
    fn announce(&self) -> Result<(), String> {
        match self.redis(&["PUBLISH", "ringgate:workers", &self.key]) {
            Some(n) if n.parse::<u64>().is_ok() => Ok(()),
            other => Err(format!("PUBLISH on {}: {other:?}", self.redis)),
        }
    }

    /// `DEL key`, then the announcement.
    fn deregister(&self) -> Result<(), String> {
        match self.redis(&["DEL", &self.key]) {
            Some(n) if n.parse::<u64>().is_ok() => self.announce(),
            other => Err(format!("DEL {} on {}: {other:?}", self.key, self.redis)),
        }
    }
}

/// Blocks SIGTERM and SIGINT in this thread and every thread it starts later, so that
/// [`wait_for_signal`] receives them; returns the set.
fn block_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: plain libc calls on a local, zero-initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!(
                "pthread_sigmask: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        Ok(set)
    }
}

/// Waits until one of `set` is pending and returns its number.
fn wait_for_signal(set: &libc::sigset_t) -> Result<i32, String> {
    let mut sig = 0;
    // SAFETY: `set` is an initialised signal set, `sig` a valid out pointer.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        return Err(format!(
            "sigwait: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    Ok(sig)
}

/// Accepts until `stopping` is set (and a connection wakes it), then closes the listener
/// and waits for every connection to finish.
fn accept_loop(listener: TcpListener, name: String, sw: Switches, stopping: Arc<AtomicBool>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => {
                conns.retain(|c| !c.is_finished());
                let (name, sw) = (name.clone(), sw.clone());
                conns.push(std::thread::spawn(move || {
                    serve_connection(stream, &name, &sw)
                }));
            }
            Err(e) => {
                eprintln!("rg-test-worker: accept: {e}");
                // EMFILE and the like: give the connections a moment to close some.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    drop(listener);
    for c in conns {
        let _ = c.join();
    }
}

/// Repeats the registration every TTL/3 until `stop` fires (or its sender is dropped).
fn heartbeat(reg: Registration, value: String, stop: mpsc::Receiver<()>) {
    let every = Duration::from_millis(reg.ttl_secs * 1000 / 3);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        if let Err(e) = reg.set(&value) {
            eprintln!("rg-test-worker: heartbeat: {e}");
        }
    }
}

fn main() -> ExitCode {
    // Before any thread exists, so that all of them inherit the mask.
    let signals = match block_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rg-test-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rg-test-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rg-test-worker: bind {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let mut addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    say(&format!("listening {addr}"));

    let sw = Switches::default();
    let stopping = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let (name, sw, stopping) = (args.name.clone(), sw.clone(), stopping.clone());
        std::thread::spawn(move || accept_loop(listener, name, sw, stopping))
    };

    let mut beating = None;
    if let Some(reg) = &args.registration {
        let value = serde_json::json!({"addr": addr.to_string(), "weight": 100}).to_string();
        if let Err(e) = reg.set(&value).and_then(|_| reg.announce()) {
            eprintln!("rg-test-worker: register: {e}");
            return ExitCode::from(2);
        }
        say(&format!("registered {}", reg.key));
        let (tx, rx) = mpsc::channel();
        let reg = reg.clone();
        beating = Some((tx, std::thread::spawn(move || heartbeat(reg, value, rx))));
    }

    let sig = match wait_for_signal(&signals) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rg-test-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let signalled = Instant::now();
    say(&format!("signal {sig}"));

    // (a) No heartbeat may re-register after the DEL: stop it and wait for it first.
    let mut deregistered = true;
    if let (Some(reg), Some((tx, beat))) = (&args.registration, beating) {
        drop(tx);
        let _ = beat.join();
        match reg.deregister() {
            Ok(()) => say(&format!("deregistered {}", reg.key)),
            Err(e) => {
                eprintln!("rg-test-worker: deregister: {e}");
                deregistered = false;
            }
        }
    }
    // (b) Requests routed before ringgate saw the change still land.
    std::thread::sleep(args.grace);
    // (c) Stop accepting; idle connections close, requests already read are answered.
    say(&format!(
        "draining in_flight={}",
        sw.in_flight.load(Ordering::SeqCst)
    ));
    sw.draining.store(true, Ordering::SeqCst);
    stopping.store(true, Ordering::SeqCst);
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        // The acceptor stays blocked in accept(): exit without waiting for connections.
        eprintln!("rg-test-worker: waking the acceptor via {addr}: {e}");
        return ExitCode::from(1);
    }
    let _ = acceptor.join();
    // (d)
    say(&format!(
        "drained served={} after {}ms",
        sw.served.load(Ordering::SeqCst),
        signalled.elapsed().as_millis()
    ));
    if deregistered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
