//! A busy connection keeps a read (and its buffer) armed for a moment after each response,
//! but a core lends that way to a bounded number of connections at once.

mod common;

use std::time::{Duration, Instant};

use common::{drivers, get, start, test_config, Client};

/// Buffers lent to client connections now, all cores together.
fn lent(addr: std::net::SocketAddr) -> u64 {
    get(addr, "/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with("ringgate_io_buffers_lent{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_core_keeps_at_most_sixty_four_busy_connections_reading_between_requests() {
    const REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    for driver in drivers() {
        // One core, so every connection is in the same core's count.
        let (g, addr) = start(test_config(driver, &[("RINGGATE_WORKERS", "1")]));
        let mut clients: Vec<Client> = (0..300).map(|_| Client::connect(addr)).collect();
        let started = Instant::now();
        // Each connection's second request follows its first answer at once: it is busy,
        // and after its second answer it would keep a read armed for the grace.
        for c in &mut clients {
            for _ in 0..2 {
                c.send(REQUEST);
                assert_eq!(c.read_response(false).status, 200);
            }
        }
        let in_grace = started.elapsed() < Duration::from_millis(100);
        let lent = lent(addr);
        // 64 in a grace, and the scrape's own connection.
        assert!(
            lent <= 65,
            "{driver:?}: {lent} buffers lent to 300 busy connections"
        );
        eprintln!("{driver:?}: {lent} buffers lent (all 300 within the grace: {in_grace})");
        drop(clients);
        g.drain();
    }
}
