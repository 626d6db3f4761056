//! rg-load: constant-rate HTTP/1.1 load with coordinated-omission correction.
//!
//! Each of `--connections` keep-alive connections owns an equal share of the schedule: at
//! rate R over C connections, connection i sends its k-th request at
//! `start + (k * C + i) / R`. A request's latency runs from that scheduled instant, not from
//! when it was actually sent, so a stalled server shows up as latency instead of silently
//! lowering the load (the wrk2 model). Prints one line of `key=value` figures, among them
//! `send_lag_ms_p50`/`send_lag_ms_p99`: how late requests were written (scheduled instant to
//! the write). It includes waits for a connection's previous response, so a stalling server
//! raises it too; against a fast one it is the generator's own precision.
//!
//! Requests wait for their instant on a timerfd (the kernel's high-resolution timers, read
//! through the ring), not on monoio's timer wheel: the wheel ticks in whole milliseconds and
//! rounds every deadline up, so each request went out 1 to 2 ms late and that showed as
//! server latency (a fixed-body nginx measured 1.1 ms at p50).
//!
//! Usage: see [`USAGE`] (`rg-load --help`).
//! With `--body` the requests are POSTs with that body. With `--slow-ms N` it also prints,
//! to stderr, each 100 ms window of the schedule that had requests slower than N ms (to tell
//! periodic stalls from spread-out slowness).

use std::{
    cell::RefCell,
    net::SocketAddr,
    os::fd::{FromRawFd, OwnedFd},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use monoio::{
    io::{AsyncReadRent, AsyncWriteRentExt},
    net::TcpStream,
};

struct Args {
    tls: bool,
    addr: SocketAddr,
    path: String,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    ca: Option<String>,
    body: Option<String>,
    headers: Vec<String>,
    slow_ms: Option<f64>,
}

/// The usage text, for `--help` and for a wrong argument.
const USAGE: &str =
    "usage: rg-load --url http[s]://IP:PORT/PATH --rate N --duration SECS [--connections C]
               [--warmup SECS] [--ca PEM] [--body TEXT] [--header 'Name: value']... [--slow-ms N]
";

/// Reads the arguments after the program name; `None` for `--help`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>> {
    let mut it = args.into_iter();
    let (mut url, mut rate, mut duration, mut warmup, mut connections, mut ca) =
        (None, None, 10.0, 2.0, 100, None);
    let (mut body, mut headers, mut slow_ms) = (None, Vec::new(), None);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = Some(val()?),
            "--rate" => rate = Some(val()?.parse::<f64>()?),
            "--duration" => duration = val()?.parse()?,
            "--warmup" => warmup = val()?.parse()?,
            "--connections" => connections = val()?.parse()?,
            "--ca" => ca = Some(val()?),
            "--body" => body = Some(val()?),
            "--header" => headers.push(val()?),
            "--slow-ms" => slow_ms = Some(val()?.parse::<f64>()?),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let url = url.context("--url is required")?;
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("--url must start with http:// or https://")
    };
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    Ok(Some(Args {
        tls,
        addr: hostport.parse().context("the URL's host must be IP:PORT")?,
        path,
        rate: rate.context("--rate is required")?,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        connections,
        ca,
        body,
        headers,
        slow_ms,
    }))
}

#[derive(Default)]
struct Totals {
    ok: u64,
    errors: u64,
    non_2xx: u64,
    /// (milliseconds from the start of measurement, latency in µs) of requests slower
    /// than `--slow-ms`.
    slow: Vec<(u64, u64)>,
}

trait Conn: AsyncReadRent + monoio::io::AsyncWriteRent {}
impl<T: AsyncReadRent + monoio::io::AsyncWriteRent> Conn for T {}

/// Reads one Content-Length framed response; returns its status.
async fn read_response<C: Conn>(io: &mut C, buf: &mut Vec<u8>) -> Result<u16> {
    loop {
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.trim())
                })
                .unwrap_or("0")
                .parse()?;
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Ok(status);
            }
        }
        let mut chunk = vec![0u8; 16 * 1024];
        let (r, c) = io.read(chunk).await;
        chunk = c;
        let n = r?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits for instants on a timerfd of its own (`CLOCK_MONOTONIC`, the clock of
/// [`Instant`]), with microsecond precision.
struct Pacer {
    timer: monoio::fs::File,
    /// One moment as both an [`Instant`] and a `CLOCK_MONOTONIC` reading, to convert the
    /// one into the other.
    origin: (Instant, Duration),
    buf: Option<Vec<u8>>,
}

impl Pacer {
    fn new() -> std::io::Result<Self> {
        // SAFETY: plain syscalls; the fd is owned by the `File` from here on.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let timer = monoio::fs::File::from_std(std::fs::File::from(owned))?;
        Ok(Self {
            timer,
            origin: (Instant::now(), monotonic_now()),
            buf: Some(vec![0; 8]),
        })
    }

    /// Returns at `at` (at once when it has passed).
    async fn until(&mut self, at: Instant) -> std::io::Result<()> {
        if at <= Instant::now() {
            return Ok(());
        }
        let when = self.origin.1 + (at - self.origin.0);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: when.as_secs() as libc::time_t,
                tv_nsec: when.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and itimerspec.
        let rc = unsafe {
            libc::timerfd_settime(
                std::os::fd::AsRawFd::as_raw_fd(&self.timer),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let buf = self.buf.take().unwrap_or_else(|| vec![0; 8]);
        let (r, buf) = self.timer.read_at(buf, 0).await;
        self.buf = Some(buf);
        r.map(|_| ())
    }
}

/// `CLOCK_MONOTONIC` now.
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[allow(clippy::too_many_arguments)]
async fn drive<C: Conn>(
    mut io: C,
    req: Rc<Vec<u8>>,
    schedule: Schedule,
    hist: Rc<RefCell<Histogram<u64>>>,
    lag: Rc<RefCell<Histogram<u64>>>,
    totals: Rc<RefCell<Totals>>,
    slow_us: Option<u64>,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut pacer = Pacer::new().ok();
    let mut k: u64 = 0;
    loop {
        let intended = schedule.at(k);
        if intended >= schedule.end {
            return;
        }
        let paced = match pacer.as_mut() {
            Some(p) => p.until(intended).await.is_ok(),
            None => false,
        };
        if !paced {
            // No timerfd (or the ring cannot read one): the millisecond wheel.
            pacer = None;
            let now = Instant::now();
            if intended > now {
                monoio::time::sleep(intended - now).await;
            }
        }
        if intended >= schedule.measure_from {
            let late = Instant::now().saturating_duration_since(intended);
            let _ = lag.borrow_mut().record(late.as_micros() as u64);
        }
        let (r, _) = io.write_all((*req).clone()).await;
        let result = match r {
            Ok(_) => read_response(&mut io, &mut buf).await,
            Err(e) => Err(e.into()),
        };
        let done = Instant::now();
        if intended >= schedule.measure_from {
            let mut t = totals.borrow_mut();
            match result {
                Ok(s) if (200..300).contains(&s) => {
                    t.ok += 1;
                    let us = (done - intended).as_micros() as u64;
                    let _ = hist.borrow_mut().record(us);
                    if slow_us.is_some_and(|s| us > s) {
                        t.slow
                            .push(((intended - schedule.measure_from).as_millis() as u64, us));
                    }
                }
                Ok(_) => t.non_2xx += 1,
                Err(_) => t.errors += 1,
            }
        }
        if result.is_err() {
            // The connection is unusable; its remaining share of the schedule is lost,
            // which shows as a lower achieved rate.
            return;
        }
        k += 1;
    }
}

#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    offset: Duration,
    period: Duration,
}

impl Schedule {
    fn at(&self, k: u64) -> Instant {
        self.start + self.offset + self.period * k as u32
    }
}

fn tls_config(ca: &Option<String>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let path = ca.as_ref().context("--ca is required for https")?;
    for c in rustls_pemfile::certs(&mut std::fs::read(path)?.as_slice()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn main() -> std::process::ExitCode {
    ringgate_bench::tool_main("rg-load", USAGE, parse_args, run)
}

fn run(args: Args) -> Result<()> {
    let tls = if args.tls {
        Some(tls_config(&args.ca)?)
    } else {
        None
    };
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(async move {
        let hist = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
        let lag = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
        let totals = Rc::new(RefCell::new(Totals::default()));
        let mut head = String::new();
        for h in &args.headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        let req = match &args.body {
            None => format!("GET {} HTTP/1.1\r\nHost: {}\r\n{head}\r\n", args.path, args.addr),
            Some(b) => format!("POST {} HTTP/1.1\r\nHost: {}\r\n{head}Content-Length: {}\r\n\r\n{b}", args.path, args.addr, b.len()),
        };
        let req = Rc::new(req.into_bytes());
        let c = args.connections as u32;
        let period = Duration::from_secs_f64(args.connections as f64 / args.rate);
        let start = Instant::now() + Duration::from_millis(500);
        let measure_from = start + args.warmup;
        let end = measure_from + args.duration;
        let mut handles = Vec::new();
        let slow_us = args.slow_ms.map(|ms| (ms * 1000.0) as u64);
        for i in 0..c {
            let schedule = Schedule { start, measure_from, end, offset: Duration::from_secs_f64(i as f64 / args.rate), period };
            let stream = TcpStream::connect(args.addr).await.context("connect")?;
            stream.set_nodelay(true)?;
            let (req, hist, lag, totals) = (req.clone(), hist.clone(), lag.clone(), totals.clone());
            match &tls {
                Some(cfg) => {
                    let connector = monoio_rustls::TlsConnector::from(cfg.clone());
                    let name = rustls::pki_types::ServerName::try_from("localhost")?;
                    let s = connector.connect(name, stream).await.map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
                    handles.push(monoio::spawn(drive(s, req, schedule, hist, lag, totals, slow_us)));
                }
                None => handles.push(monoio::spawn(drive(stream, req, schedule, hist, lag, totals, slow_us))),
            }
        }
        for h in handles {
            h.await;
        }
        let h = hist.borrow();
        let t = totals.borrow();
        let lag = lag.borrow();
        let secs = args.duration.as_secs_f64();
        println!(
            "target_rate={:.0} achieved_rate={:.0} ok={} non_2xx={} errors={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} send_lag_ms_p50={:.3} send_lag_ms_p99={:.3}",
            args.rate,
            t.ok as f64 / secs,
            t.ok,
            t.non_2xx,
            t.errors,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.9) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            lag.value_at_quantile(0.5) as f64 / 1000.0,
            lag.value_at_quantile(0.99) as f64 / 1000.0,
        );
        print_slow_windows(&t.slow);
        Ok(())
    })
}

/// Prints each 100 ms window that had slow requests: its offset, count and worst latency.
fn print_slow_windows(slow: &[(u64, u64)]) {
    let mut windows = std::collections::BTreeMap::<u64, (u64, u64)>::new();
    for &(at_ms, us) in slow {
        let w = windows.entry(at_ms / 100).or_default();
        w.0 += 1;
        w.1 = w.1.max(us);
    }
    for (w, (n, max)) in windows {
        eprintln!(
            "slow window t={:.1}s n={n} max_ms={:.1}",
            w as f64 / 10.0,
            max as f64 / 1000.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Args>> {
        parse_args(list.iter().map(|a| a.to_string()))
    }

    #[test]
    fn help_is_asked_for_and_a_wrong_argument_gets_the_usage() {
        assert!(args(&["--help"]).unwrap().is_none());
        assert!(args(&["--url", "http://127.0.0.1:1/", "-h"])
            .unwrap()
            .is_none());
        let e = args(&["--rat", "5"]).err().unwrap().to_string();
        assert!(
            e.contains("unknown argument --rat") && e.contains("usage: rg-load"),
            "{e}"
        );
        let e = args(&["--url", "ftp://x"]).err().unwrap().to_string();
        assert!(e.contains("must start with http"), "{e}");
        let a = args(&["--url", "https://127.0.0.1:8443/x", "--rate", "100"])
            .unwrap()
            .unwrap();
        assert!(a.tls && a.path == "/x" && a.rate == 100.0);
    }

    #[monoio::test(timer_enabled = true)]
    async fn the_pacer_never_returns_before_the_instant() {
        let mut pacer = Pacer::new().unwrap();
        for wait_us in [50, 300, 1_500, 4_000] {
            let at = Instant::now() + Duration::from_micros(wait_us);
            pacer.until(at).await.unwrap();
            assert!(
                Instant::now() >= at,
                "woke before an instant {wait_us} µs ahead"
            );
        }
    }

    #[monoio::test(timer_enabled = true)]
    async fn the_pacer_returns_at_once_for_a_past_instant() {
        let mut pacer = Pacer::new().unwrap();
        let past = Instant::now() - Duration::from_millis(5);
        pacer.until(past).await.unwrap();
        // Set in the past, the timer would also fire at once: both ways return.
        pacer.until(Instant::now()).await.unwrap();
    }
}
