//! The PostgreSQL front end's transports and authentication methods end to end: direct TLS
//! (PostgreSQL 17's `sslnegotiation=direct`, driven by a rustls client: libpq here is 15),
//! SCRAM-SHA-256-PLUS channel binding (psql and a raw client), the cleartext password over
//! TLS only, WebSocket (`GET /v2`) with its error paths and Neon's own driver, and
//! node-postgres over TCP and TLS.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::Arc,
    time::Duration,
};

use postgres_protocol::authentication::sasl::ChannelBinding;
use ringgate_tests::http::metric_total;
use ringgate_tests::pg::{
    alpha, alpha_startup, conninfo, error_fields, frontend, psql, read_message,
    ready_then_select_one, sasl_mechanisms, scram, start_pg, start_pg_tls, test_certificate,
};
use ringgate_tests::wire::alpha_project;
use rustls::pki_types::ServerName;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A TLS connection to ringgate offering `alpn`, trusting the test CA; the handshake done
/// (or its error).
fn tls(addr: SocketAddr, alpn: &[&[u8]]) -> Result<Tls, std::io::Error> {
    let (_, _, ca) = test_certificate();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp(addr));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// `tls-server-end-point` data of the certificate the server presented.
fn end_point(s: &Tls) -> Vec<u8> {
    let cert = &s.conn.peer_certificates().unwrap()[0];
    ringgate_pgwire::scram::tls_server_end_point(cert.as_ref())
}

/// Sends alpha's startup message; the mechanisms ringgate offers.
fn start_alpha(s: &mut (impl Read + Write)) -> Vec<String> {
    s.write_all(&alpha_startup()).unwrap();
    let (tag, body) = read_message(s).unwrap();
    assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
    sasl_mechanisms(&body)
}

#[test]
#[ignore = "needs compose/cluster"]
fn direct_tls_with_alpn_postgresql_and_scram_bound_to_the_certificate() {
    let (g, addr) = start_pg_tls(&[]);
    let (_, password) = alpha();
    // Direct TLS, channel binding with the certificate's hash: a session.
    let mut s = tls(addr, &[b"postgresql"]).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"postgresql"[..]));
    let cb = end_point(&s);
    let offered = start_alpha(&mut s);
    assert_eq!(offered, ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    let binding = ChannelBinding::tls_server_end_point(cb.clone());
    let (tag, body) = scram(&mut s, "SCRAM-SHA-256-PLUS", &password, binding);
    assert_eq!((tag, &body[..4]), (b'R', &12i32.to_be_bytes()[..]));
    assert_eq!(ready_then_select_one(&mut s), "1");
    // Another certificate's hash (a man in the middle's): 28P01.
    let mut s = tls(addr, &[b"postgresql"]).unwrap();
    start_alpha(&mut s);
    let mut wrong = cb.clone();
    wrong[0] ^= 1;
    let binding = ChannelBinding::tls_server_end_point(wrong);
    let (tag, body) = scram(&mut s, "SCRAM-SHA-256-PLUS", &password, binding);
    assert_eq!(tag, b'E');
    let (code, message) = error_fields(&body);
    assert_eq!(code, "28P01", "{message}");
    assert!(message.contains("channel binding"), "{message}");
    // `y` (supports binding, thinks the server does not) while -PLUS was offered: refused
    // (RFC 5802 §6), before any proof.
    let mut s = tls(addr, &[b"postgresql"]).unwrap();
    start_alpha(&mut s);
    let (tag, body) = scram(
        &mut s,
        "SCRAM-SHA-256",
        &password,
        ChannelBinding::unrequested(),
    );
    assert_eq!(tag, b'E');
    assert_eq!(error_fields(&body).0, "08P01", "{:?}", error_fields(&body));
    // `n` (no binding, as channel_binding=disable): a session.
    let mut s = tls(addr, &[b"postgresql"]).unwrap();
    start_alpha(&mut s);
    let (tag, _) = scram(
        &mut s,
        "SCRAM-SHA-256",
        &password,
        ChannelBinding::unsupported(),
    );
    assert_eq!(tag, b'R');
    assert_eq!(ready_then_select_one(&mut s), "1");
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn direct_tls_without_alpn_postgresql_is_refused() {
    let (g, addr) = start_pg_tls(&[]);
    // ALPN offered without postgresql: the handshake fails (no_application_protocol).
    assert!(tls(addr, &[b"h2"]).is_err());
    // No ALPN at all: the handshake passes, the startup message is refused (PostgreSQL
    // 17 refuses direct TLS without ALPN the same way).
    let mut s = tls(addr, &[]).unwrap();
    s.write_all(&alpha_startup()).unwrap();
    let (tag, body) = read_message(&mut s).unwrap();
    assert_eq!(tag, b'E');
    let (code, message) = error_fields(&body);
    assert_eq!(code, "08P01");
    assert!(message.contains("ALPN"), "{message}");
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn psql_channel_binding_require_and_disable() {
    let (g, addr) = start_pg_tls(&[]);
    let (user, password) = alpha();
    for extra in [
        "sslmode=require channel_binding=require",
        "sslmode=require channel_binding=disable",
        "sslmode=disable channel_binding=prefer",
    ] {
        let c = conninfo(
            addr,
            &user,
            &password,
            "tenant_alpha",
            &format!("options=endpoint=alpha {extra}"),
        );
        let (ok, out, err) = psql(&c, &["-c", "select 1"]);
        assert!(ok, "{extra}: {err}");
        assert_eq!(out, "1", "{extra}");
    }
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn cleartext_password_over_tls_when_configured_and_never_on_plaintext() {
    let (g, addr) = start_pg_tls(&[("RINGGATE_PG_TLS_AUTH", "password")]);
    let (user, password) = alpha();
    let c = |password: &str, extra: &str| {
        conninfo(
            addr,
            &user,
            password,
            "tenant_alpha",
            &format!("options=endpoint=alpha {extra}"),
        )
    };
    let (ok, out, err) = psql(&c(&password, "sslmode=require"), &["-c", "select 1"]);
    assert!(ok, "{err}");
    assert_eq!(out, "1");
    let (ok, _, err) = psql(&c("wrong", "sslmode=require"), &["-c", "select 1"]);
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");
    // libpq refuses a server that asks for the password when binding is required.
    let (ok, _, err) = psql(
        &c(&password, "sslmode=require channel_binding=require"),
        &["-c", "select 1"],
    );
    assert!(!ok);
    assert!(err.contains("channel binding"), "{err}");
    // Plaintext: SCRAM still.
    let (ok, out, err) = psql(&c(&password, "sslmode=disable"), &["-c", "select 1"]);
    assert!(ok, "{err}");
    assert_eq!(out, "1");
    // A plaintext client that sends its password unasked, with the startup message.
    let mut s = tcp(addr);
    let mut pw = password.as_bytes().to_vec();
    pw.push(0);
    let mut packets = alpha_startup();
    packets.extend(frontend(b'p', &pw));
    s.write_all(&packets).unwrap();
    let (tag, body) = read_message(&mut s).unwrap();
    assert_eq!(
        sasl_mechanisms(&body),
        ["SCRAM-SHA-256"],
        "SCRAM, no -PLUS: {tag}"
    );
    let (tag, body) = read_message(&mut s).unwrap();
    assert_eq!(tag, b'E');
    let (code, message) = error_fields(&body);
    assert_eq!(code, "28000");
    assert!(message.contains("only over TLS"), "{message}");
    g.drain();
}

// === WebSocket ===

/// A WebSocket client over any byte stream: writes masked binary frames, reads the
/// server's frames (answering nothing itself).
struct Ws<S> {
    s: S,
    payload: Vec<u8>,
    /// The close code the server sent, once it did.
    closed: Option<u16>,
    /// Payloads of pongs received.
    pongs: Vec<Vec<u8>>,
}

/// Sends an upgrade request with `lines` (after the request line) and reads the response
/// head; the status code.
fn upgrade_with(s: &mut (impl Read + Write), request_line: &str, lines: &[&str]) -> u16 {
    let mut req = format!("{request_line}\r\n");
    for l in lines {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let text = String::from_utf8(head).unwrap();
    if text.starts_with("HTTP/1.1 101") {
        assert!(
            text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{text}"
        );
    }
    text[9..12].parse().unwrap()
}

const GOOD: &[&str] = &[
    "Host: localhost",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];

impl<S: Read + Write> Ws<S> {
    fn open(mut s: S) -> Self {
        assert_eq!(upgrade_with(&mut s, "GET /v2 HTTP/1.1", GOOD), 101);
        Self {
            s,
            payload: Vec::new(),
            closed: None,
            pongs: Vec::new(),
        }
    }

    /// Sends one frame with first byte `b0`, masked.
    fn frame(&mut self, b0: u8, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    /// Reads one server frame; false at the end of the stream.
    fn read_frame(&mut self) -> bool {
        let mut h = [0u8; 2];
        if self.s.read_exact(&mut h).is_err() {
            return false;
        }
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        assert_eq!(h[0] & 0x70, 0, "no reserved bits");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p).unwrap();
        match h[0] & 0x0f {
            0x2 => self.payload.extend_from_slice(&p),
            0x8 => self.closed = Some(u16::from_be_bytes([p[0], p[1]])),
            0xA => self.pongs.push(p),
            op => panic!("unexpected opcode {op}"),
        }
        true
    }

    /// Reads frames until the server's close; its code.
    fn close_code(&mut self) -> Option<u16> {
        while self.closed.is_none() && self.read_frame() {}
        self.closed
    }
}

impl<S: Read + Write> Read for Ws<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.payload.is_empty() {
            if self.closed.is_some() || !self.read_frame() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.payload.len());
        buf[..n].copy_from_slice(&self.payload[..n]);
        self.payload.drain(..n);
        Ok(n)
    }
}

impl<S: Read + Write> Write for Ws<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.frame(0x82, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}

/// Alpha's startup message and, pipelined with it, its cleartext password.
fn pipelined_password(password: &str) -> Vec<u8> {
    let mut pw = password.as_bytes().to_vec();
    pw.push(0);
    let mut packets = alpha_startup();
    packets.extend(frontend(b'p', &pw));
    packets
}

#[test]
#[ignore = "needs compose/cluster"]
fn websocket_sessions_use_scram_on_ws_and_the_pipelined_password_on_wss() {
    let (g, addr) = start_pg_tls(&[]);
    let (_, password) = alpha();
    // ws://: a ping answered, SCRAM (no -PLUS: the driver does not see the TLS), a query.
    let mut ws = Ws::open(tcp(addr));
    ws.frame(0x89, b"are you there");
    ws.frame(0x02, &alpha_startup()[..7]);
    ws.frame(0x80, &alpha_startup()[7..]);
    let (tag, body) = read_message(&mut ws).unwrap();
    assert_eq!(tag, b'R');
    assert_eq!(sasl_mechanisms(&body), ["SCRAM-SHA-256"]);
    assert_eq!(ws.pongs, [b"are you there".to_vec()]);
    let (tag, _) = scram(
        &mut ws,
        "SCRAM-SHA-256",
        &password,
        ChannelBinding::unsupported(),
    );
    assert_eq!(tag, b'R');
    assert_eq!(ready_then_select_one(&mut ws), "1");
    ws.frame(0x88, &1000u16.to_be_bytes());
    assert_eq!(ws.close_code(), Some(1000), "the close is echoed");
    // ws:// with the password pipelined (Neon's driver's default): refused, not read.
    let mut ws = Ws::open(tcp(addr));
    ws.write_all(&pipelined_password(&password)).unwrap();
    let (_, body) = read_message(&mut ws).unwrap();
    assert_eq!(sasl_mechanisms(&body), ["SCRAM-SHA-256"]);
    let (tag, body) = read_message(&mut ws).unwrap();
    assert_eq!(tag, b'E');
    let (code, message) = error_fields(&body);
    assert_eq!(code, "28000");
    assert!(message.contains("only over TLS"), "{message}");
    assert_eq!(
        ws.close_code(),
        Some(1000),
        "a close frame follows the FATAL error"
    );
    // wss:// (direct TLS, no ALPN): the pipelined password is read as asked for.
    let mut ws = Ws::open(tls(addr, &[]).unwrap());
    ws.write_all(&pipelined_password(&password)).unwrap();
    let (tag, body) = read_message(&mut ws).unwrap();
    assert_eq!(
        (tag, &body[..]),
        (b'R', &3i32.to_be_bytes()[..]),
        "cleartext"
    );
    let (tag, body) = read_message(&mut ws).unwrap();
    assert_eq!((tag, &body[..]), (b'R', &0i32.to_be_bytes()[..]), "ok");
    assert_eq!(ready_then_select_one(&mut ws), "1");
    // wss:// with ALPN http/1.1, and a wrong password: 28P01.
    let mut ws = Ws::open(tls(addr, &[b"http/1.1"]).unwrap());
    ws.write_all(&pipelined_password("wrong")).unwrap();
    read_message(&mut ws).unwrap();
    let (tag, body) = read_message(&mut ws).unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(error_fields(&body).0, "28P01");
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn tls_required_refuses_plain_websocket_and_serves_wss() {
    let (g, addr) = start_pg_tls(&[("RINGGATE_PG_TLS", "require")]);
    let (_, password) = alpha();
    let mut ws = Ws::open(tcp(addr));
    ws.write_all(&alpha_startup()).unwrap();
    let (tag, body) = read_message(&mut ws).unwrap();
    assert_eq!(tag, b'E');
    let (code, message) = error_fields(&body);
    assert_eq!(code, "28000");
    assert!(message.contains("requires TLS"), "{message}");
    let mut ws = Ws::open(tls(addr, &[]).unwrap());
    ws.write_all(&pipelined_password(&password)).unwrap();
    read_message(&mut ws).unwrap();
    read_message(&mut ws).unwrap();
    assert_eq!(ready_then_select_one(&mut ws), "1");
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn bad_upgrades_get_their_status_and_bad_frames_their_close_code() {
    let (g, addr) = start_pg(&[]);
    let without = |i: usize| {
        let mut l = GOOD.to_vec();
        l.remove(i);
        l
    };
    let mut version_8 = GOOD.to_vec();
    version_8[4] = "Sec-WebSocket-Version: 8";
    for (request_line, lines, status) in [
        ("GET /v2 HTTP/1.1", without(3), 400),
        ("GET /v2 HTTP/1.1", version_8, 426),
        ("GET /v2 HTTP/1.1", without(4), 426),
        ("GET /v2 HTTP/1.1", without(1), 426),
        ("GET /sql HTTP/1.1", GOOD.to_vec(), 404),
        ("POST /v2 HTTP/1.1", GOOD.to_vec(), 405),
    ] {
        let got = upgrade_with(&mut tcp(addr), request_line, &lines);
        assert_eq!(got, status, "{request_line} {lines:?}");
    }
    /// Sends a bad frame.
    type Bad = fn(&mut Ws<TcpStream>);
    let cases: [(&str, Bad, u16); 6] = [
        (
            "unmasked",
            |ws| ws.s.write_all(&[0x82, 0x01, b'x']).unwrap(),
            1002,
        ),
        ("text", |ws| ws.frame(0x81, b"select 1"), 1003),
        ("reserved bit", |ws| ws.frame(0xC2, b"x"), 1002),
        ("unknown opcode", |ws| ws.frame(0x85, b"x"), 1002),
        ("lone continuation", |ws| ws.frame(0x80, b"x"), 1002),
        (
            "oversized",
            |ws| {
                let mut f = vec![0x82, 0x80 | 127];
                f.extend_from_slice(&(1u64 << 40).to_be_bytes());
                f.extend_from_slice(&[1, 2, 3, 4]);
                ws.s.write_all(&f).unwrap();
            },
            1009,
        ),
    ];
    for (name, send, code) in cases {
        let mut ws = Ws::open(tcp(addr));
        send(&mut ws);
        assert_eq!(ws.close_code(), Some(code), "{name}");
    }
    // The six refused upgrades are counted as refused connections.
    let http = g.plain_addr().unwrap();
    assert_eq!(metric_total(http, "ringgate_pg_refused_total"), 6);
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn neon_driver_pool_and_client_transactions_over_websocket() {
    let (g, addr) = start_pg_tls(&[]);
    let port = addr.port().to_string();
    neon_websocket_test(&[("RINGGATE_PG_PORT", &port)]);
    g.drain();
}

#[test]
#[ignore = "needs compose/cluster"]
fn neon_driver_over_websocket_on_the_http_and_https_listeners() {
    // Where Neon serves it: `GET /v2` on the same host and ports as HTTP (ws://) and HTTPS
    // (wss://), beside `/sql`.
    let (g, pg) = start_pg_tls(&[]);
    let (http, https) = (g.plain_addr().unwrap(), g.tls_addr().unwrap());
    let ports = [pg, http, https].map(|a| a.port().to_string());
    neon_websocket_test(&[
        ("RINGGATE_PG_PORT", &ports[0]),
        ("RINGGATE_WS_PORT", &ports[1]),
        ("RINGGATE_WSS_PORT", &ports[2]),
    ]);
    // A plain request to /v2 is routed as any other path (no upgrade asked).
    let r = ringgate_tests::http::request(http, "GET", "/v2", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    g.drain();
}

/// Runs `tests/neon/ws.test.mjs` (Neon's driver: Pool and Client, ws:// with SCRAM and
/// wss:// with the pipelined password, and a session-mode client notified while idle) with
/// `ports` and asserts all six tests pass.
fn neon_websocket_test(ports: &[(&'static str, &str)]) {
    let (user, password) = alpha();
    alpha_project("wire_ws_session", "session", false);
    let url = |project: &str| {
        format!(
            "postgresql://{user}:{password}@localhost/tenant_alpha?options=endpoint%3D{project}"
        )
    };
    let env = [
        ("RINGGATE_NEON_PG_URL", url("alpha")),
        ("RINGGATE_NEON_PG_SESSION_URL", url("wire_ws_session")),
    ];
    let ports = ports.iter().map(|(k, v)| (*k, v.to_string()));
    node_tests("ws.test.mjs", env.into_iter().chain(ports), 6);
}

/// Runs `script` in `tests/neon` with `node --test` and `env` (and the test CA trusted),
/// and asserts that `passes` tests pass and none fails.
fn node_tests(script: &str, env: impl IntoIterator<Item = (&'static str, String)>, passes: usize) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/neon");
    assert!(
        std::path::Path::new(dir).join("node_modules/pg").exists()
            && std::path::Path::new(dir).join("node_modules/ws").exists(),
        "run `npm ci --prefix tests/neon` first (scripts/test does)"
    );
    let (_, _, ca) = test_certificate();
    let out = Command::new("node")
        .args(["--test", "--test-timeout=60000", script])
        .current_dir(dir)
        .envs(env)
        .env("NODE_EXTRA_CA_CERTS", ca)
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test {script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("# fail 0") && stdout.contains(&format!("# pass {passes}\n")),
        "{stdout}"
    );
}

#[test]
#[ignore = "needs compose/cluster"]
fn node_postgres_client_and_pool_over_tcp_and_tls() {
    // Few server connections, so that the driver's clients share them.
    const SERVERS: &str = "2";
    alpha_project("wire_node_pg", "transaction", false);
    alpha_project("wire_node_pg_session", "session", false);
    let (g, addr) = start_pg_tls(&[("RINGGATE_POOL_MAX_PER_TENANT", SERVERS)]);
    let (user, password) = alpha();
    let url = |project: &str| {
        format!(
            "postgresql://{user}:{password}@localhost:{}/tenant_alpha?options=endpoint%3D{project}",
            addr.port()
        )
    };
    let env = [
        ("RINGGATE_NODE_PG_URL", url("wire_node_pg")),
        ("RINGGATE_NODE_PG_SESSION_URL", url("wire_node_pg_session")),
        ("RINGGATE_NODE_PG_SERVERS", SERVERS.to_string()),
    ];
    node_tests("pg.test.mjs", env, 14);
    g.drain();
}

/// A self-signed certificate for `localhost` made by openssl with `key` (its `-newkey` and
/// `-pkeyopt` arguments) signed with `hash`, in `dir`: (certificate, key) paths.
fn openssl_certificate(dir: &std::path::Path, key: &[&str], hash: &str) -> (String, String) {
    let (cert, key_file) = (
        dir.join(format!("{hash}.pem")),
        dir.join(format!("{hash}.key")),
    );
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey"])
        .args(key)
        .args([hash, "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key_file)
        .arg("-out")
        .arg(&cert)
        .status()
        .expect("openssl is installed");
    assert!(status.success(), "openssl req {key:?} {hash}");
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    (path(cert), path(key_file))
}

#[test]
#[ignore = "needs compose/cluster"]
fn libpq_binds_to_certificates_signed_with_sha384_and_sha512() {
    // libpq hashes the server's certificate with its signature's hash (RFC 5929): a
    // server that always used SHA-256 failed every SCRAM-SHA-256-PLUS login over these.
    let dir = std::env::temp_dir().join(ringgate_tests::backend::unique("cb-certs"));
    std::fs::create_dir_all(&dir).unwrap();
    let (user, password) = alpha();
    for (key, hash) in [
        (
            &["ec", "-pkeyopt", "ec_paramgen_curve:secp384r1"][..],
            "-sha384",
        ),
        (&["rsa:2048"][..], "-sha512"),
        (
            &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"][..],
            "-sha256",
        ),
    ] {
        let (cert, key) = openssl_certificate(&dir, key, hash);
        let (g, addr) = start_pg(&[
            ("RINGGATE_TLS_LISTEN", "127.0.0.1:0"),
            ("RINGGATE_TLS_CERT", cert.as_str()),
            ("RINGGATE_TLS_KEY", key.as_str()),
        ]);
        let c = conninfo(
            addr,
            &user,
            &password,
            "tenant_alpha",
            "options=endpoint=alpha sslmode=require channel_binding=require",
        );
        let (ok, out, err) = psql(&c, &["-c", "select 1"]);
        assert!(ok && out == "1", "{hash}: {out} {err}");
        g.drain();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
