//! Many concurrent connections on the real binary: 1,000 and 10,000 keep-alive clients held
//! open at once, each served, with ringgate's resident memory per connection reported and no
//! fd or thread exhaustion.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::process::Process;

/// Resident memory and thread count of process `pid`.
fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

/// Opens `n` connections, sends one request on each, reads every answer, and keeps them all
/// open; returns them.
fn hold(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        conns.push(s);
    }
    let mut buf = [0u8; 512];
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("answer {i}: {e}"));
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "answer {i}");
    }
    conns
}

#[test]
fn test_thousands_of_connections_are_held_with_bounded_memory() {
    let p = Process::start(&[("RINGGATE_KEEPALIVE_TIMEOUT", "120s")]);
    let addr = p.http.unwrap();
    let pid = p.child.id();
    // Warm up the allocator and both cores before the baseline.
    drop(hold(addr, 100));
    std::thread::sleep(Duration::from_millis(200));
    let (base, threads_before) = rss_and_threads(pid);
    for n in [1_000usize, 10_000] {
        let conns = hold(addr, n);
        let (rss, threads) = rss_and_threads(pid);
        let per = rss.saturating_sub(base) as f64 / n as f64;
        eprintln!(
            "{n} connections held: ringgate RSS {:.1} MiB (+{:.1} MiB, {per:.0} bytes per connection), {threads} threads",
            rss as f64 / 1048576.0,
            rss.saturating_sub(base) as f64 / 1048576.0
        );
        assert_eq!(threads, threads_before, "no thread per connection");
        assert!(per < 64.0 * 1024.0, "{per} bytes per connection");
        // Still serving new requests while they are held.
        let extra = hold(addr, 1);
        drop(extra);
        drop(conns);
        std::thread::sleep(Duration::from_millis(300));
    }
}
