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
        common::eventually(Duration::from_secs(3), "new certificate served", || {
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
    common::eventually(Duration::from_secs(3), "new certificate served", || {
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
