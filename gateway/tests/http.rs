//! End-to-end HTTP/1.1 behaviour of the serving core, on both io drivers.

mod common;

use std::time::{Duration, Instant};

use common::{drivers, get, start, test_config, Client};

#[test]
fn own_endpoints_answer() {
    for d in drivers() {
        let (g, addr) = start(test_config(d, &[]));
        let r = get(addr, "/health");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["status"], "ok");
        assert_eq!(
            r.header("x-request-id").map(str::len),
            Some(32),
            "generated id"
        );
        let r = get(addr, "/ready");
        assert_eq!(
            (r.status, r.json()["status"].as_str()),
            (200, Some("ready"))
        );
        let r = get(addr, "/metrics");
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let text = r.text();
        assert!(
            text.contains("ringgate_http_requests_total{core="),
            "{text}"
        );
        assert!(
            text.contains("route=\"health\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("ringgate_http_request_duration_seconds_bucket"));
        assert!(text.contains(&format!(
            "ringgate_connections_open{{core=\"0\",driver=\"{}\"}}",
            g.driver().label()
        )));
        g.drain();
    }
}

#[test]
fn unknown_route_is_json_404_and_wrong_method_405() {
    for d in drivers() {
        let (g, addr) = start(test_config(d, &[]));
        let r = get(addr, "/no/such/route");
        assert_eq!(r.status, 404);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["code"], "not_found");
        assert!(r.json()["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/route"));
        let mut c = Client::connect(addr);
        c.send(b"DELETE /health HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        g.drain();
    }
}

#[test]
fn request_id_is_propagated() {
    for d in drivers() {
        let (g, addr) = start(test_config(d, &[]));
        let mut c = Client::connect(addr);
        c.send(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: trace-abc-123\r\n\r\n");
        assert_eq!(
            c.read_response(false).header("x-request-id"),
            Some("trace-abc-123")
        );
        // Error responses carry one too.
        c.send(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(c.read_response(false).header("x-request-id").is_some());
        g.drain();
    }
}

#[test]
fn keep_alive_pipelining_and_head() {
    for d in drivers() {
        let (g, addr) = start(test_config(d, &[]));
        let mut c = Client::connect(addr);
        for _ in 0..3 {
            c.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
            let r = c.read_response(false);
            assert_eq!(r.status, 200);
            assert_eq!(
                r.header("connection"),
                None,
                "keep-alive is the HTTP/1.1 default"
            );
        }
        // Two requests in one write are answered in order.
        c.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
        assert_eq!(c.read_response(false).status, 404);
        c.send(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.read_response(true);
        assert_eq!((r.status, r.header("content-length")), (200, Some("15")));
        // Connection: close is honoured.
        c.send(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(c.read_response(false).header("connection"), Some("close"));
        assert!(c.closed_within(Duration::from_secs(2)));
        // HTTP/1.0 without keep-alive closes.
        let mut c = Client::connect(addr);
        c.send(b"GET /health HTTP/1.0\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
        assert!(c.closed_within(Duration::from_secs(2)));
        g.drain();
    }
}

#[test]
fn bodies_by_length_chunked_and_expect_continue() {
    for d in drivers() {
        let (g, addr) = start(test_config(d, &[]));
        let mut c = Client::connect(addr);
        c.send(b"POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(c.read_response(false).status, 404);
        c.send(b"POST /nope HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(c.read_response(false).status, 404);
        // The connection stays in sync after both bodies.
        c.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
        // A head and body arriving in pieces are reassembled.
        for piece in [
            &b"POST /nope HTTP/1.1\r\nHo"[..],
            b"st: t\r\nContent-Le",
            b"ngth: 11\r\n\r\nhello",
            b" world",
        ] {
            c.send(piece);
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(c.read_response(false).status, 404);
        c.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
        c.send(
            b"POST /nope HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(c.read_response(false).status, 100);
        c.send(b"abc");
        assert_eq!(c.read_response(false).status, 404);
        g.drain();
    }
}

/// Sends `raw` and expects an error response with `status`/`code`, then a closed connection.
fn expect_refused(addr: std::net::SocketAddr, raw: &[u8], status: u16, code: &str) {
    let mut c = Client::connect(addr);
    c.send(raw);
    let r = c.read_response(false);
    assert_eq!(
        r.status,
        status,
        "for {:?}: {}",
        String::from_utf8_lossy(&raw[..raw.len().min(80)]),
        r.text()
    );
    assert_eq!(r.json()["code"], code);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "connection closed after {status}"
    );
}

#[test]
fn malformed_and_ambiguous_requests_are_refused() {
    for d in drivers() {
        let (g, addr) = start(test_config(d, &[]));
        expect_refused(addr, b"\x00\x01garbage\r\n\r\n", 400, "malformed_request");
        expect_refused(
            addr,
            b"GET / HTTP/1.1\r\nNo Colon Here\r\n\r\n",
            400,
            "malformed_request",
        );
        expect_refused(addr, b"GET / HTTP/1.1\r\n\r\n", 400, "malformed_request");
        expect_refused(
            addr,
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "ambiguous_framing",
        );
        expect_refused(
            addr,
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
            400,
            "ambiguous_framing",
        );
        expect_refused(
            addr,
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "unsupported_transfer_coding",
        );
        expect_refused(
            addr,
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
            "malformed_body",
        );
        // The server is still fine afterwards.
        assert_eq!(get(addr, "/health").status, 200);
        let text = get(addr, "/metrics").text();
        assert!(text.contains("route=\"rejected\",status=\"400\""), "{text}");
        g.drain();
    }
}

#[test]
fn size_limits_give_431_and_413() {
    for d in drivers() {
        let (g, addr) = start(test_config(
            d,
            &[
                ("RINGGATE_MAX_HEADER_BYTES", "1KiB"),
                ("RINGGATE_MAX_BODY_BYTES", "100"),
            ],
        ));
        let big = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2000)
        );
        expect_refused(addr, big.as_bytes(), 431, "header_too_large");
        // A head that never ends is cut at the limit too.
        let endless = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}", "a".repeat(1500));
        expect_refused(addr, endless.as_bytes(), 431, "header_too_large");
        expect_refused(
            addr,
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n",
            413,
            "body_too_large",
        );
        let chunked = format!(
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n{}\r\n0\r\n\r\n",
            "x".repeat(101)
        );
        expect_refused(addr, chunked.as_bytes(), 413, "body_too_large");
        // Exactly at the limit is fine.
        let mut c = Client::connect(addr);
        c.send(
            format!(
                "POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{}",
                "x".repeat(100)
            )
            .as_bytes(),
        );
        assert_eq!(c.read_response(false).status, 404);
        g.drain();
    }
}

#[test]
fn slowloris_gets_408_and_idle_connections_close() {
    for d in drivers() {
        let (g, addr) = start(test_config(
            d,
            &[
                ("RINGGATE_HEADER_READ_TIMEOUT", "300ms"),
                ("RINGGATE_KEEPALIVE_TIMEOUT", "300ms"),
                ("RINGGATE_BODY_READ_TIMEOUT", "300ms"),
            ],
        ));
        // A head trickling in byte by byte is cut at the header timeout, not per byte.
        let mut c = Client::connect(addr);
        let start_at = Instant::now();
        let mut got = None;
        for b in b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: yes\r\n".iter() {
            if c.reader.get_mut().write_all_nonfatal(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            if start_at.elapsed() > Duration::from_millis(600) {
                got = c.try_read_response(false);
                break;
            }
        }
        let r = got.expect("a 408 response");
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (408, Some("header_timeout"))
        );
        // A stalled body gets 408 too.
        let mut c = Client::connect(addr);
        c.send(b"POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
        let r = c.read_response(false);
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (408, Some("body_timeout"))
        );
        // An idle keep-alive connection is closed quietly.
        let mut c = Client::connect(addr);
        c.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
        assert!(c.closed_within(Duration::from_secs(3)));
        // A connection that never sends anything is closed too.
        let mut c = Client::connect(addr);
        assert!(c.closed_within(Duration::from_secs(3)));
        g.drain();
    }
}

#[test]
fn connection_limit_refuses_cleanly() {
    for d in drivers() {
        let (g, addr) = start(test_config(
            d,
            &[
                ("RINGGATE_WORKERS", "1"),
                ("RINGGATE_MAX_CONNECTIONS_PER_CORE", "2"),
            ],
        ));
        let mut held: Vec<Client> = (0..2).map(|_| Client::connect(addr)).collect();
        for c in &mut held {
            c.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(c.read_response(false).status, 200);
        }
        let mut extra = Client::connect(addr);
        let r = extra.read_response(false);
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
        assert_eq!(r.json()["code"], "too_many_connections");
        assert!(extra.closed_within(Duration::from_secs(2)));
        // Held connections still work, and a slot frees when one closes.
        held[0].send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(held[0].read_response(false).status, 200);
        drop(held.pop());
        common::eventually("a free slot", Duration::from_secs(2), || {
            get(addr, "/health").status == 200
        });
        // Read metrics over a held connection: a new one could race the freed slot.
        held[0].send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        let metrics = held[0].read_response(false).text();
        assert!(
            metrics.contains("ringgate_connections_rejected_total{core=\"0\",driver="),
            "{metrics}"
        );
        assert!(
            !metrics.contains("ringgate_connections_rejected_total{core=\"0\",driver=\"epoll\"} 0")
        );
        g.drain();
    }
}

trait WriteNonFatal {
    fn write_all_nonfatal(&mut self, b: &[u8]) -> std::io::Result<()>;
}

impl WriteNonFatal for std::net::TcpStream {
    fn write_all_nonfatal(&mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(self, b)
    }
}

#[test]
fn connections_opened_at_once_are_taken_in_bursts_and_all_served() {
    for d in drivers() {
        let (g, addr) = start(test_config(d, &[("RINGGATE_WORKERS", "1")]));
        // The kernel completes these handshakes whether or not the core has accepted yet,
        // so most wait in the backlog and are taken by the non-blocking accepts of a burst.
        let mut clients: Vec<Client> = (0..300).map(|_| Client::connect(addr)).collect();
        for c in &mut clients {
            c.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        for c in &mut clients {
            assert_eq!(c.read_response(false).status, 200, "{d:?}");
        }
        // Every connection stays usable (registered with the driver like a ring accept).
        clients[299].send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        let metrics = clients[299].read_response(false).text();
        let burst = metrics
            .lines()
            .find(|l| l.starts_with("ringgate_connections_accepted_in_bursts_total{core=\"0\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no burst counter: {metrics}"));
        assert!(burst > 0, "{d:?}: no connection was taken in a burst");
        g.drain();
    }
}
