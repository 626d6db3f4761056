//! Idle plain connections park off their tasks (`ringgate::parked`): a parked connection
//! is served again when its next request comes, however it comes; it is closed when its
//! keep-alive time ends or the core drains; and it still counts against the core's
//! connection limit. Each on both drivers.

mod common;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    time::{Duration, Instant},
};

use common::{drivers, start, test_config, Client};
use ringgate::Gateway;

const GET: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

/// Past the read grace (100 ms): the connection is parked, not waiting in its task.
const PARKED: Duration = Duration::from_millis(300);

/// Each client sends a request and gets 200 (`what` names the step), then all stay quiet
/// past the read grace, so each is parked.
fn served_then_parked(clients: &mut [Client], what: &str) {
    for c in clients.iter_mut() {
        c.send(GET);
        assert_eq!(c.read_response(false).status, 200, "{what}");
    }
    std::thread::sleep(PARKED);
}

/// Drains `g` holding the parked `clients`: done within 5 s (they count as connections
/// until closed, so a drain that forgot them would wait out its 20 s), none cut, and each
/// closed by the server.
fn drained_at_once(g: Gateway, clients: Vec<Client>, what: &str) {
    let started = Instant::now();
    let report = g.drain();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{what}: drain took {:?}",
        started.elapsed()
    );
    assert_eq!(report.cut_connections, 0, "{what}: {report:?}");
    for c in clients {
        let mut s = c.reader.into_inner();
        assert!(closed_within(&mut s, Duration::from_secs(2)), "{what}");
    }
}

/// Whether the server closed `s` (EOF) before `within` passes.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(0))
}

#[test]
fn a_parked_connection_is_served_again_by_every_way_its_request_comes() {
    for d in drivers() {
        let (g, addr) = start(test_config(d, &[("RINGGATE_WORKERS", "1")]));
        // Many rounds of request, idle past the grace, request: each one parks and resumes.
        let mut clients: Vec<Client> = (0..50).map(|_| Client::connect(addr)).collect();
        for round in 0..3 {
            served_then_parked(&mut clients, &format!("{d:?} round {round}"));
        }
        // The request in pieces: the head's first bytes resume it, the rest follows.
        let c = &mut clients[0];
        c.send(&GET[..10]);
        std::thread::sleep(Duration::from_millis(50));
        c.send(&GET[10..]);
        assert_eq!(
            c.read_response(false).status,
            200,
            "{d:?}: a head in pieces"
        );
        std::thread::sleep(PARKED);
        // Two requests at once (pipelined) on a parked connection: both answered.
        let c = &mut clients[1];
        c.send(&[GET, GET].concat());
        assert_eq!(
            c.read_response(false).status,
            200,
            "{d:?}: pipelined, first"
        );
        assert_eq!(
            c.read_response(false).status,
            200,
            "{d:?}: pipelined, second"
        );
        std::thread::sleep(PARKED);
        // A request and then the client's half-close: still answered.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(GET).unwrap();
        let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
        assert_eq!(
            common::read_response(&mut reader, false).unwrap().status,
            200
        );
        std::thread::sleep(PARKED);
        s.write_all(GET).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            common::read_response(&mut reader, false).unwrap().status,
            200,
            "{d:?}: a request then a half-close"
        );
        // A client that leaves while parked: nothing for the server to answer; the rest
        // still work.
        drop(clients.pop());
        std::thread::sleep(PARKED);
        for c in &mut clients {
            c.send(GET);
            assert_eq!(c.read_response(false).status, 200, "{d:?} after one left");
        }
        g.drain();
    }
}

#[test]
fn a_parked_connection_closes_when_its_keep_alive_time_ends() {
    for d in drivers() {
        let (g, addr) = start(test_config(
            d,
            &[
                ("RINGGATE_WORKERS", "1"),
                ("RINGGATE_KEEPALIVE_TIMEOUT", "1s"),
            ],
        ));
        let mut c = Client::connect(addr);
        c.send(GET);
        assert_eq!(c.read_response(false).status, 200);
        let answered = Instant::now();
        let mut s = c.reader.into_inner();
        // Not before its time (the read times out, the connection still open)...
        assert!(
            !closed_within(&mut s, Duration::from_millis(700)),
            "{d:?}: closed before the keep-alive timeout"
        );
        // ...and at it (closed by the watcher, at most one expiry step late).
        assert!(
            closed_within(&mut s, Duration::from_secs(2)),
            "{d:?}: still open after the keep-alive timeout"
        );
        let after = answered.elapsed();
        assert!(
            after >= Duration::from_millis(950) && after < Duration::from_millis(2500),
            "{d:?}: closed {after:?} after the response (keep-alive 1 s)"
        );
        g.drain();
    }
}

#[test]
fn a_drain_closes_parked_connections_at_once() {
    for d in drivers() {
        let (g, addr) = start(test_config(
            d,
            &[("RINGGATE_WORKERS", "2"), ("RINGGATE_DRAIN_TIMEOUT", "20s")],
        ));
        let mut clients: Vec<Client> = (0..20).map(|_| Client::connect(addr)).collect();
        served_then_parked(&mut clients, &format!("{d:?}"));
        drained_at_once(g, clients, &format!("{d:?}"));
    }
}

#[test]
fn parked_connections_count_against_the_connection_limit() {
    for d in drivers() {
        let (g, addr) = start(test_config(
            d,
            &[
                ("RINGGATE_WORKERS", "1"),
                ("RINGGATE_MAX_CONNECTIONS_PER_CORE", "5"),
            ],
        ));
        let mut held: Vec<Client> = (0..5).map(|_| Client::connect(addr)).collect();
        served_then_parked(&mut held, &format!("{d:?}"));
        let mut extra = Client::connect(addr);
        extra.send(GET);
        assert_eq!(
            extra.read_response(false).status,
            503,
            "{d:?}: a sixth connection beside five parked ones"
        );
        // A parked one leaving frees its place.
        drop(held.pop());
        common::eventually(
            "the place of a parked connection that left",
            Duration::from_secs(5),
            || {
                let mut c = Client::connect(addr);
                c.send(GET);
                c.try_read_response(false).map(|r| r.status) == Some(200)
            },
        );
        drop(held);
        g.drain();
    }
}

#[test]
fn connections_parked_on_sixteen_cores_are_served_again_and_drained() {
    for d in drivers() {
        let (g, addr) = start(test_config(
            d,
            &[
                ("RINGGATE_WORKERS", "16"),
                ("RINGGATE_DRAIN_TIMEOUT", "20s"),
            ],
        ));
        // Spread by SO_REUSEPORT over the sixteen cores' listeners, each core's set parks
        // its own.
        let mut clients: Vec<Client> = (0..160).map(|_| Client::connect(addr)).collect();
        for round in 0..2 {
            served_then_parked(&mut clients, &format!("{d:?} round {round}"));
        }
        drained_at_once(g, clients, &format!("{d:?}"));
    }
}
