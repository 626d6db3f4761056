//! HTTPS end to end with a real rustls client, and certificate reload (in-process and SIGHUP).

mod common;

use std::{
    io::{BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use common::{drivers, process::Process, read_response, test_config, Resp};
use rustls::{
    pki_types::CertificateDer, ClientConfig, ClientConnection, RootCertStore, StreamOwned,
};

/// Writes a fresh self-signed certificate for `localhost` to `dir`; returns its DER.
fn write_cert(dir: &Path) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let g = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, g.cert.pem()).unwrap();
    std::fs::write(&k, g.key_pair.serialize_pem()).unwrap();
    (c, k, g.cert.der().clone())
}

type Tls = BufReader<StreamOwned<ClientConnection, TcpStream>>;

/// Connects with a client that trusts only `trust`, restricted to `versions`.
fn connect(
    addr: SocketAddr,
    trust: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Tls {
    let mut roots = RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(StreamOwned::new(conn, tcp))
}

fn request(tls: &mut Tls, path: &str) -> Resp {
    try_request(tls, path).expect("a response over TLS")
}

/// A request that may fail (e.g. the handshake, while the old certificate is still served).
fn try_request(tls: &mut Tls, path: &str) -> Option<Resp> {
    tls.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    read_response(tls, false)
}

fn served_cert(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref()
        .conn
        .peer_certificates()
        .expect("server sent a certificate")[0]
        .clone()
        .into_owned()
}

#[test]
fn https_end_to_end_tls12_and_tls13() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k, der) = write_cert(dir.path());
    for d in drivers() {
        let mut config = test_config(d, &[]);
        config.tls = Some(ringgate::config::TlsListen {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: c.clone(),
            key: k.clone(),
        });
        let g = ringgate::Gateway::start(config).unwrap();
        let addr = g.tls_addr().unwrap();
        for (versions, expect) in [
            (
                &[&rustls::version::TLS13][..],
                rustls::ProtocolVersion::TLSv1_3,
            ),
            (
                &[&rustls::version::TLS12][..],
                rustls::ProtocolVersion::TLSv1_2,
            ),
        ] {
            let mut tls = connect(addr, &der, versions);
            let r = request(&mut tls, "/health");
            assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
            assert_eq!(tls.get_ref().conn.protocol_version(), Some(expect));
            assert_eq!(tls.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            // Keep-alive over TLS.
            assert_eq!(request(&mut tls, "/nope").status, 404);
        }
        // Plain HTTP is still served beside HTTPS.
        assert_eq!(common::get(g.plain_addr().unwrap(), "/health").status, 200);
        // A client that does not trust the certificate fails the handshake; the server survives.
        let (_, _, other) = write_cert(tempfile::tempdir().unwrap().path());
        let mut bad = connect(addr, &other, &[&rustls::version::TLS13]);
        assert!(
            bad.get_mut()
                .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .is_err()
                || read_response(&mut bad, false).is_none()
        );
        let mut ok = connect(addr, &der, &[&rustls::version::TLS13]);
        assert_eq!(request(&mut ok, "/health").status, 200);
        g.drain();
    }
}

#[test]
fn reload_serves_new_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    for d in drivers() {
        let (c, k, first) = write_cert(dir.path());
        let mut config = test_config(d, &[]);
        config.tls = Some(ringgate::config::TlsListen {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: c.clone(),
            key: k.clone(),
        });
        let mut g = ringgate::Gateway::start(config).unwrap();
        let addr = g.tls_addr().unwrap();
        let mut old = connect(addr, &first, &[&rustls::version::TLS13]);
        assert_eq!(request(&mut old, "/health").status, 200);
        assert_eq!(served_cert(&old), first);
        let (_, _, second) = write_cert(dir.path());
        g.reload_tls().unwrap();
        common::eventually("new certificate served", Duration::from_secs(3), || {
            let mut fresh = connect(addr, &second, &[&rustls::version::TLS13]);
            try_request(&mut fresh, "/health").is_some_and(|r| r.status == 200)
                && served_cert(&fresh) == second
        });
        // The connection made before the reload still works.
        assert_eq!(request(&mut old, "/health").status, 200);
        // A bad reload keeps the current certificate.
        std::fs::write(&k, "not a key").unwrap();
        assert!(g.reload_tls().is_err());
        let mut still = connect(addr, &second, &[&rustls::version::TLS13]);
        assert_eq!(request(&mut still, "/health").status, 200);
        assert!(common::get(g.plain_addr().unwrap(), "/metrics")
            .text()
            .contains("ringgate_tls_reloads_total{result=\"error\"} 1"));
        g.drain();
    }
}

#[test]
fn sighup_reloads_the_certificate_in_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k, first) = write_cert(dir.path());
    let (cs, ks) = (c.to_str().unwrap(), k.to_str().unwrap());
    let mut p = Process::start(&[
        ("RINGGATE_TLS_LISTEN", "127.0.0.1:0"),
        ("RINGGATE_TLS_CERT", cs),
        ("RINGGATE_TLS_KEY", ks),
        ("RINGGATE_LISTEN", "off"),
    ]);
    let addr = p.https.unwrap();
    let mut old = connect(addr, &first, &[&rustls::version::TLS13]);
    assert_eq!(request(&mut old, "/health").status, 200);
    let (_, _, second) = write_cert(dir.path());
    p.signal(libc::SIGHUP);
    let line = p.wait_log("TLS certificate reloaded", Duration::from_secs(5));
    let f = &line["fields"];
    assert!(
        f["fingerprint"].as_str().is_some_and(|s| s.len() == 32)
            && f["previous"].as_str().is_some_and(|s| s.len() == 32)
            && f["fingerprint"] != f["previous"]
            && f["chain"] == 1,
        "the reload line names the new and the old certificate: {line}"
    );
    common::eventually("new certificate served", Duration::from_secs(3), || {
        let mut fresh = connect(addr, &second, &[&rustls::version::TLS13]);
        try_request(&mut fresh, "/health").is_some_and(|r| r.status == 200)
    });
    assert_eq!(
        request(&mut old, "/health").status,
        200,
        "established connection survives the reload"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), 0);
}

#[test]
fn bad_certificate_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _k, _) = write_cert(dir.path());
    let (_, other_key, _) = {
        let d2 = dir.path().join("other");
        std::fs::create_dir(&d2).unwrap();
        write_cert(&d2)
    };
    let missing = dir.path().join("missing.pem");
    for (cert, key, expect) in [
        (missing.as_path(), c.as_path(), "cannot read"),
        (c.as_path(), other_key.as_path(), "does not match"),
        (c.as_path(), c.as_path(), "holds no PEM private key"),
    ] {
        let (code, _, err) = common::process::run_to_exit(
            &[
                ("RINGGATE_TLS_LISTEN", "127.0.0.1:0"),
                ("RINGGATE_TLS_CERT", cert.to_str().unwrap()),
                ("RINGGATE_TLS_KEY", key.to_str().unwrap()),
            ],
            &[],
        );
        assert_eq!(code, 64, "{err}");
        assert!(err.contains(expect), "expected {expect:?} in {err}");
    }
}

/// A TLS-serving gateway on one core, with its certificate's DER.
fn start_tls_one_core(
    d: ringgate::config::DriverChoice,
    dir: &Path,
) -> (ringgate::Gateway, CertificateDer<'static>) {
    let (c, k, der) = write_cert(dir);
    let mut config = test_config(d, &[("RINGGATE_WORKERS", "1")]);
    config.tls = Some(ringgate::config::TlsListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        cert: c,
        key: k,
    });
    (ringgate::Gateway::start(config).unwrap(), der)
}

/// A TLS 1.3 client that has sent its ClientHello and nothing more yet.
fn client_hello_sent(addr: SocketAddr, trust: &CertificateDer<'static>) -> Tls {
    let mut tls = connect(addr, trust, &[&rustls::version::TLS13]);
    let s = tls.get_mut();
    s.conn.write_tls(&mut s.sock).unwrap();
    tls
}

/// The value of a counter of core 0 on `/metrics`.
fn core0_counter(g: &ringgate::Gateway, name: &str) -> u64 {
    let metrics = common::get(g.plain_addr().unwrap(), "/metrics").text();
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{core=\"0\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for core 0: {metrics}"))
}

#[test]
fn handshakes_wait_their_turn_while_requests_are_in_flight_and_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    for d in drivers() {
        let (g, der) = start_tls_one_core(d, dir.path());
        let addr = g.tls_addr().unwrap();
        // A request in flight: its head is in, its body is not.
        let mut held = common::Client::connect(g.plain_addr().unwrap());
        held.send(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n");
        std::thread::sleep(Duration::from_millis(100));
        // 48 ClientHellos at once: more public-key work than the pace lets run ahead.
        let mut clients: Vec<Tls> = (0..48).map(|_| client_hello_sent(addr, &der)).collect();
        for tls in &mut clients {
            assert_eq!(request(tls, "/health").status, 200, "{d:?}");
        }
        assert!(
            core0_counter(&g, "ringgate_tls_handshakes_paced_total") > 0,
            "{d:?}: no handshake waited for its slot"
        );
        // The held request is answered as well (405: /health is read with GET).
        held.send(b"ping");
        assert_eq!(held.read_response(false).status, 405, "{d:?}");
        g.drain();
    }
}

#[test]
fn a_crowd_of_handshakes_on_an_idle_core_goes_a_burst_at_a_time_and_leavers_cost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for d in drivers() {
        let (g, der) = start_tls_one_core(d, dir.path());
        let addr = g.tls_addr().unwrap();
        let failed_before = core0_counter(&g, "ringgate_tls_handshake_failures_total");
        // No request in flight, and none began lately (reading /metrics was one). 96
        // clients connect, then all send their ClientHello at once: more public-key work
        // than an idle core runs in one go (4 ms), so some wait.
        std::thread::sleep(ringgate::per_core::RECENT_REQUEST * 3);
        let mut clients: Vec<Tls> = (0..96)
            .map(|_| connect(addr, &der, &[&rustls::version::TLS13]))
            .collect();
        for tls in &mut clients {
            let s = tls.get_mut();
            s.conn.write_tls(&mut s.sock).unwrap();
        }
        // The last 48 give up at once; those still waiting for their slot are dropped
        // without public-key work.
        let leavers = clients.split_off(48);
        drop(leavers);
        for tls in &mut clients {
            assert_eq!(request(tls, "/health").status, 200, "{d:?}");
        }
        assert!(
            core0_counter(&g, "ringgate_tls_handshakes_paced_total") > 0,
            "{d:?}: an idle core ran all 96 handshakes in one go"
        );
        let failures = || core0_counter(&g, "ringgate_tls_handshake_failures_total");
        common::eventually("48 failures counted", Duration::from_secs(10), || {
            failures() >= failed_before + 48
        });
        assert_eq!(failures(), failed_before + 48, "{d:?}");
        let abandoned = core0_counter(&g, "ringgate_tls_handshakes_abandoned_total");
        assert!(
            abandoned > 0 && abandoned <= 48,
            "{d:?}: {abandoned} abandoned"
        );
        g.drain();
    }
}

#[test]
fn a_bad_or_broken_handshake_gets_an_alert_is_counted_and_harms_no_one() {
    let dir = tempfile::tempdir().unwrap();
    for d in drivers() {
        let (g, der) = start_tls_one_core(d, dir.path());
        let addr = g.tls_addr().unwrap();
        let before = core0_counter(&g, "ringgate_tls_handshake_failures_total");
        // Plain HTTP on the TLS port: a TLS alert record back, then the connection closes.
        let mut plain = TcpStream::connect(addr).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        plain
            .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        std::io::Read::read_to_end(&mut plain, &mut answer).unwrap();
        assert_eq!(
            answer.first(),
            Some(&0x15),
            "{d:?}: not an alert record: {answer:?}"
        );
        // A ClientHello, then the client goes away.
        drop(client_hello_sent(addr, &der));
        common::eventually("both failures counted", Duration::from_secs(5), || {
            core0_counter(&g, "ringgate_tls_handshake_failures_total") >= before + 2
        });
        // The core serves TLS as before.
        let mut ok = connect(addr, &der, &[&rustls::version::TLS12]);
        assert_eq!(request(&mut ok, "/health").status, 200, "{d:?}");
        g.drain();
    }
}

/// Reads `n` responses from `r`; their statuses.
fn statuses(r: &mut impl std::io::BufRead, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            read_response(r, false)
                .unwrap_or_else(|| panic!("response {i}"))
                .status
        })
        .collect()
}

/// Sends `bytes` on both a plain and a TLS connection and reads `n` answers from each.
fn both(plain: &mut common::Client, tls: &mut Tls, bytes: &[u8], n: usize) -> [Vec<u16>; 2] {
    plain.send(bytes);
    let p = (0..n).map(|_| plain.read_response(false).status).collect();
    tls.get_mut().write_all(bytes).unwrap();
    [p, statuses(tls, n)]
}

#[test]
fn idle_connections_hold_no_buffer_and_pipelined_and_large_requests_still_work() {
    let dir = tempfile::tempdir().unwrap();
    for d in drivers() {
        let (g, der) = start_tls_one_core(d, dir.path());
        let (plain_addr, tls_addr) = (g.plain_addr().unwrap(), g.tls_addr().unwrap());
        // Read while `/metrics` is served: its own connection's read buffer is lent then,
        // so 1 means no other connection holds one.
        let lent = || core0_counter(&g, "ringgate_io_buffers_lent");
        let get = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
        // Idle connections, plain and TLS (1.3 and 1.2), each answered once.
        let mut plain: Vec<_> = (0..20)
            .map(|_| common::Client::connect(plain_addr))
            .collect();
        let mut tls: Vec<_> = (0..20)
            .map(|i| {
                let v = if i % 2 == 0 {
                    &rustls::version::TLS13
                } else {
                    &rustls::version::TLS12
                };
                connect(tls_addr, &der, &[v])
            })
            .collect();
        for (p, t) in plain.iter_mut().zip(&mut tls) {
            assert_eq!(both(p, t, get, 1), [vec![200], vec![200]]);
        }
        common::eventually(
            "idle connections give their buffers back",
            Duration::from_secs(5),
            || lent() == 1,
        );
        let (p, t) = (&mut plain[0], &mut tls[0]);
        // Pipelined: three requests in one write, three answers in order.
        let three = [&get[..], b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", get].concat();
        assert_eq!(
            both(p, t, &three, 3),
            [vec![200, 404, 200], vec![200, 404, 200]]
        );
        // A body much larger than a lent buffer (and than a TLS record), then the next
        // request on the same connection.
        let body = vec![b'x'; 512 * 1024];
        let mut post = format!(
            "POST /health HTTP/1.1\r\nHost: t\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        post.extend_from_slice(&body);
        post.extend_from_slice(get);
        assert_eq!(both(p, t, &post, 2), [vec![405, 200], vec![405, 200]]);
        // A head larger than a lent buffer (under the 16 KiB limit).
        let big_head = format!(
            "GET /health HTTP/1.1\r\nHost: t\r\nx-pad: {}\r\n\r\n",
            "p".repeat(12 * 1024)
        );
        assert_eq!(both(p, t, big_head.as_bytes(), 1), [vec![200], vec![200]]);
        common::eventually(
            "buffers come back after large and pipelined requests",
            Duration::from_secs(5),
            || lent() == 1,
        );
        // Every idle connection still serves.
        for (p, t) in plain.iter_mut().zip(&mut tls) {
            assert_eq!(both(p, t, get, 1), [vec![200], vec![200]]);
        }
        g.drain();
    }
}
