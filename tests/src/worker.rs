//! A small HTTP/1.1 worker for proxy tests: answers every request with
//! `<name> <method> <path> xff=<x-forwarded-for>`, keeps connections alive, and counts
//! requests. Stops accepting when dropped.

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
}

impl TestWorker {
    /// Starts a worker named `name` on 127.0.0.1 (a free port).
    pub fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a worker");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, n) = (served.clone(), stop.clone(), name.to_string());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, st, n) = (s.clone(), st.clone(), n.clone());
                        std::thread::spawn(move || serve(stream, &n, &s, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, served, stop }
    }

    /// Requests answered so far.
    pub fn count(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, name: &str, served: &AtomicUsize, stop: &AtomicBool) {
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
        let (mut length, mut xff) = (0usize, String::new());
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
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if path != "/health" {
            served.fetch_add(1, Ordering::Relaxed);
        }
        let text = format!("{name} {method} {path} xff={xff} body={}", body.len());
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-worker: {name}\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
