//! A small HTTP/1.1 worker for proxy tests: answers every request with
//! `<name> <method> <path> xff=<x-forwarded-for> body=<bytes>`, keeps connections alive,
//! and counts requests (not `/health`). Bodies are read and discarded in pieces, so large
//! uploads take no memory. Special paths: `/download/N` sends N bytes, `/chunked/N` sends
//! N bytes chunked, `/slow/MS` answers after MS milliseconds, `/headers` answers with the
//! request's header lines (names lower-cased, one per line) and adds hop-by-hop headers of
//! its own (`connection: x-hop`, `x-hop`, `keep-alive`, `proxy-authenticate`) to its
//! response. [`TestWorker::kill`] makes it
//! drop every connection without answering. Stops accepting when dropped.
//!
//! The connection code ([`serve_connection`]) is shared with the `rg-test-worker` binary,
//! which runs it in a process of its own and drains it on SIGTERM ([`Switches::draining`]).

use bytes::BytesMut;
use ringgate_http1::RequestFraming;
use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Largest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// How long a connection may stay idle, or a request take to arrive, before it is closed.
const READ_LIMIT: Duration = Duration::from_secs(30);
/// How often an idle connection looks at [`Switches::draining`].
const IDLE_POLL: Duration = Duration::from_millis(50);

/// A running test worker.
#[derive(Debug)]
pub struct TestWorker {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered so far, or being answered (see [`Switches::served`]).
    pub served: Arc<AtomicUsize>,
    switches: Switches,
}

impl TestWorker {
    /// Starts a worker named `name` on 127.0.0.1 (a free port).
    pub fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a worker");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let switches = Switches::default();
        let (sw, n) = (switches.clone(), name.to_string());
        std::thread::spawn(move || {
            while !sw.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (n, sw) = (n.clone(), sw.clone());
                        std::thread::spawn(move || serve_connection(stream, &n, &sw));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            served: switches.served.clone(),
            switches,
        }
    }

    /// Requests answered so far, or being answered (see [`Switches::served`]).
    pub fn count(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Connections open at the worker now (a connection it closed no longer counts).
    pub fn open_connections(&self) -> usize {
        self.switches.open.load(Ordering::SeqCst)
    }

    /// Makes `GET /health` answer 503 (`true`) or 200 (`false`).
    pub fn set_sick(&self, sick: bool) {
        self.switches.sick.store(sick, Ordering::Relaxed);
    }

    /// Makes every request but `/health` answer 500 (`true`) or normally (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.switches.failing.store(failing, Ordering::Relaxed);
    }

    /// Closes keep-alive connections idle for `after` (as a worker with a keep-alive
    /// timeout shorter than ringgate's does).
    pub fn set_idle_close(&self, after: Duration) {
        self.switches
            .idle_close_ms
            .store(after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Dies: stops accepting, and every open connection is closed on its next request
    /// without a response.
    pub fn kill(&self) {
        self.switches.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.switches.stop.store(true, Ordering::Relaxed);
    }
}

/// The counters and switches every connection of one worker shares.
#[derive(Debug, Clone, Default)]
pub struct Switches {
    /// Requests answered so far (not `/health`), counted when the answer begins: a
    /// `/slow/MS` request is counted before it waits.
    pub served: Arc<AtomicUsize>,
    /// Requests begun (request line read) whose response is not completely written yet.
    pub in_flight: Arc<AtomicUsize>,
    /// Connections being served (until the worker's end is closed).
    pub open: Arc<AtomicUsize>,
    /// Dead: a connection closes on its next request without answering it.
    pub stop: Arc<AtomicBool>,
    /// `GET /health` answers 503.
    pub sick: Arc<AtomicBool>,
    /// Every request but `/health` answers 500.
    pub failing: Arc<AtomicBool>,
    /// Draining: idle connections close (a request already in the socket is still
    /// answered), and requests being served are answered with `connection: close`.
    pub draining: Arc<AtomicBool>,
    /// When not 0: idle keep-alive connections close after this many milliseconds.
    pub idle_close_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Counts one in a counter of [`Switches`] (a request in flight, an open connection)
/// until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits for the first byte of the next request on `reader`. `false` when the connection
/// is to close instead: the peer closed it, it was idle for [`READ_LIMIT`], or the worker
/// is draining and nothing has arrived.
fn next_request_arrives(reader: &mut BufReader<TcpStream>, sw: &Switches) -> bool {
    if !reader.buffer().is_empty() {
        return true;
    }
    let _ = reader.get_ref().set_read_timeout(Some(IDLE_POLL));
    let idle_since = Instant::now();
    let limit = match sw.idle_close_ms.load(Ordering::Relaxed) {
        0 => READ_LIMIT,
        ms => Duration::from_millis(ms),
    };
    let arrived = loop {
        if sw.draining.load(Ordering::SeqCst) {
            // Last look without waiting: a request already in the socket is answered.
            if reader.get_ref().set_nonblocking(true).is_err() {
                break false;
            }
            let waiting = matches!(reader.fill_buf(), Ok(b) if !b.is_empty());
            let _ = reader.get_ref().set_nonblocking(false);
            break waiting;
        }
        match reader.fill_buf() {
            Ok(b) => break !b.is_empty(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if idle_since.elapsed() >= limit {
                    break false;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    let _ = reader.get_ref().set_read_timeout(Some(READ_LIMIT));
    arrived
}

/// Serves one connection as the worker `name` until the peer closes it, the worker is
/// stopped, or (while draining) it has no request left.
pub fn serve_connection(stream: TcpStream, name: &str, sw: &Switches) {
    // First in, so dropped last: after the sockets are closed.
    let _open = Counted::new(&sw.open);
    let (stop, sick) = (&sw.stop, &sw.sick);
    let _ = stream.set_read_timeout(Some(READ_LIMIT));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut out = stream;
    loop {
        if !next_request_arrives(&mut reader, sw) {
            return;
        }
        // The head, line by line, through ringgate's one HTTP/1 parser: a head it refuses
        // is a 400 here too.
        let mut raw = Vec::new();
        if reader.read_until(b'\n', &mut raw).unwrap_or(0) == 0 || stop.load(Ordering::Relaxed) {
            return;
        }
        let _in_flight = Counted::new(&sw.in_flight);
        let head = loop {
            match ringgate_http1::parse_request(&mut BytesMut::from(&raw[..]), MAX_HEAD) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    let _ = out.write_all(
                        format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{e}", e.to_string().len()).as_bytes(),
                    );
                    return;
                }
            }
            if reader.read_until(b'\n', &mut raw).unwrap_or(0) == 0 {
                return;
            }
        };
        let (method, path) = (
            head.parts.method.to_string(),
            head.parts
                .uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string()),
        );
        let xff = head
            .parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // Header lines in the order they came (the parser has checked them).
        let lines: String = String::from_utf8_lossy(&raw)
            .split("\r\n")
            .skip_while(|l| l.is_empty())
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| format!("{}: {}\n", k.to_ascii_lowercase(), v.trim()))
            .collect();
        let (chunked, mut length) = match head.framing {
            RequestFraming::Empty => (false, 0),
            RequestFraming::Length(n) => (false, n),
            RequestFraming::Chunked => (true, 0),
        };
        if chunked {
            match read_chunked(&mut reader) {
                Some(n) => length = n,
                None => return,
            }
        }
        let mut left = if chunked { 0 } else { length };
        let mut piece = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(piece.len());
            if reader.read_exact(&mut piece[..n]).is_err() {
                return;
            }
            left -= n;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if path != "/health" {
            sw.served.fetch_add(1, Ordering::Relaxed);
        }
        let number = |marker: &str| {
            let at = path.find(marker)?;
            path[at + marker.len()..].parse::<usize>().ok()
        };
        // Decided when the response starts: a drain that began meanwhile closes after it.
        let closing = std::cell::Cell::new(false);
        let connection = || {
            let close = sw.draining.load(Ordering::SeqCst);
            closing.set(close);
            if close {
                "connection: close\r\n"
            } else {
                ""
            }
        };
        let head = |extra: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nx-worker: {name}\r\n{}{extra}\r\n",
                connection()
            )
        };
        let sent = if path == "/health" && sick.load(Ordering::Relaxed) {
            let resp = format!(
                "HTTP/1.1 503 Service Unavailable\r\n{}content-length: 0\r\n\r\n",
                connection()
            );
            out.write_all(resp.as_bytes())
        } else if path != "/health" && sw.failing.load(Ordering::Relaxed) {
            let resp = format!(
                "HTTP/1.1 500 Internal Server Error\r\n{}content-length: 6\r\n\r\nbroken",
                connection()
            );
            out.write_all(resp.as_bytes())
        } else if let Some(n) = number("/download/") {
            out.write_all(head(&format!("content-length: {n}\r\n")).as_bytes())
                .and_then(|_| send_bytes(&mut out, n, false))
        } else if let Some(n) = number("/head/") {
            // A response head of about n bytes (one long header), written in pieces.
            let filler = "f".repeat(n);
            let resp = head(&format!("x-filler: {filler}\r\ncontent-length: 2\r\n")) + "ok";
            resp.as_bytes()
                .chunks(4096)
                .try_for_each(|piece| out.write_all(piece).and_then(|_| out.flush()))
        } else if path.ends_with("/headers") {
            let hop = "connection: x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\nproxy-authenticate: Basic\r\n";
            let resp = head(&format!("{hop}content-length: {}\r\n", lines.len())) + &lines;
            out.write_all(resp.as_bytes())
        } else if let Some(n) = number("/chunked/") {
            out.write_all(head("transfer-encoding: chunked\r\n").as_bytes())
                .and_then(|_| send_bytes(&mut out, n, true))
        } else {
            if let Some(ms) = number("/slow/") {
                std::thread::sleep(Duration::from_millis(ms as u64));
            }
            let text = format!("{name} {method} {path} xff={xff} body={length}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-worker: {name}\r\n{}content-length: {}\r\n\r\n{text}",
                connection(),
                text.len()
            );
            out.write_all(resp.as_bytes())
        };
        if sent.is_err() {
            return;
        }
        if closing.get() {
            let _ = out.shutdown(std::net::Shutdown::Write);
            return;
        }
    }
}

/// Writes `n` bytes of a repeating pattern, as is or in 64 KiB chunks.
fn send_bytes(out: &mut TcpStream, n: usize, chunked: bool) -> std::io::Result<()> {
    let piece: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut left = n;
    while left > 0 {
        let k = left.min(piece.len());
        if chunked {
            out.write_all(format!("{k:x}\r\n").as_bytes())?;
        }
        out.write_all(&piece[..k])?;
        if chunked {
            out.write_all(b"\r\n")?;
        }
        left -= k;
    }
    if chunked {
        out.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

/// Counts the decoded bytes of a chunked body.
struct Count(usize);

impl ringgate_http1::Sink for Count {
    fn data(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Reads a chunked body (discarding it) with ringgate's one chunked state machine; returns
/// its length. Bytes after it stay in `reader`.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> Option<usize> {
    let mut chunked = ringgate_http1::Chunked::new();
    let mut count = Count(0);
    while !chunked.done() {
        let buf = reader.fill_buf().ok()?;
        if buf.is_empty() {
            return None;
        }
        let n = chunked.feed(buf, &mut count).ok()?;
        reader.consume(n);
    }
    Some(count.0)
}
