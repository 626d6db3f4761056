//! A small HTTP/1.1 worker for proxy tests: answers every request with
//! `<name> <method> <path> xff=<x-forwarded-for> body=<bytes>`, keeps connections alive,
//! and counts requests (not `/health`). Bodies are read and discarded in pieces, so large
//! uploads take no memory. Special paths: `/download/N` sends N bytes, `/chunked/N` sends
//! N bytes chunked, `/slow/MS` answers after MS milliseconds. [`TestWorker::kill`] makes it
//! drop every connection without answering. Stops accepting when dropped.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

/// A running test worker.
#[derive(Debug)]
pub struct TestWorker {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    sick: Arc<AtomicBool>,
    failing: Arc<AtomicBool>,
}

impl TestWorker {
    /// Starts a worker named `name` on 127.0.0.1 (a free port).
    pub fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a worker");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sick = Arc::new(AtomicBool::new(false));
        let failing = Arc::new(AtomicBool::new(false));
        let flags = Flags {
            stop: stop.clone(),
            sick: sick.clone(),
            failing: failing.clone(),
        };
        let (s, n) = (served.clone(), name.to_string());
        std::thread::spawn(move || {
            while !flags.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, n, f) = (s.clone(), n.clone(), flags.clone());
                        std::thread::spawn(move || serve(stream, &n, &s, &f));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            served,
            stop,
            sick,
            failing,
        }
    }

    /// Requests answered so far.
    pub fn count(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Makes `GET /health` answer 503 (`true`) or 200 (`false`).
    pub fn set_sick(&self, sick: bool) {
        self.sick.store(sick, Ordering::Relaxed);
    }

    /// Makes every request but `/health` answer 500 (`true`) or normally (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// Dies: stops accepting, and every open connection is closed on its next request
    /// without a response.
    pub fn kill(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The switches a test flips on a running worker.
#[derive(Debug, Clone)]
struct Flags {
    stop: Arc<AtomicBool>,
    sick: Arc<AtomicBool>,
    failing: Arc<AtomicBool>,
}

fn serve(stream: TcpStream, name: &str, served: &AtomicUsize, flags: &Flags) {
    let (stop, sick) = (&flags.stop, &flags.sick);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || stop.load(Ordering::Relaxed) {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (mut length, mut xff, mut chunked) = (0usize, String::new(), false);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "x-forwarded-for" => xff = v.trim().to_string(),
                    "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                    _ => {}
                }
            }
        }
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
            served.fetch_add(1, Ordering::Relaxed);
        }
        let number = |marker: &str| {
            let at = path.find(marker)?;
            path[at + marker.len()..].parse::<usize>().ok()
        };
        let head = |extra: &str| {
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nx-worker: {name}\r\n{extra}\r\n")
        };
        let sent = if path == "/health" && sick.load(Ordering::Relaxed) {
            out.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
        } else if path != "/health" && flags.failing.load(Ordering::Relaxed) {
            out.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 6\r\n\r\nbroken")
        } else if let Some(n) = number("/download/") {
            out.write_all(head(&format!("content-length: {n}\r\n")).as_bytes())
                .and_then(|_| send_bytes(&mut out, n, false))
        } else if let Some(n) = number("/chunked/") {
            out.write_all(head("transfer-encoding: chunked\r\n").as_bytes())
                .and_then(|_| send_bytes(&mut out, n, true))
        } else {
            if let Some(ms) = number("/slow/") {
                std::thread::sleep(Duration::from_millis(ms as u64));
            }
            let text = format!("{name} {method} {path} xff={xff} body={length}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-worker: {name}\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            out.write_all(resp.as_bytes())
        };
        if sent.is_err() {
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

/// Reads a chunked body (discarding it); returns its length.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> Option<usize> {
    let mut total = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers up to the empty line.
            loop {
                let mut t = String::new();
                reader.read_line(&mut t).ok()?;
                if t.trim().is_empty() {
                    return Some(total);
                }
            }
        }
        let mut data = vec![0u8; size + 2];
        reader.read_exact(&mut data).ok()?;
        total += size;
    }
}
