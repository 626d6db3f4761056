//! Helpers for tests of the PostgreSQL front end (`RINGGATE_PG_LISTEN`): starting ringgate
//! with it, libpq connection strings, psql, tokio-postgres, and the raw protocol (startup
//! packets, backend messages, SCRAM over any byte stream, a client that shows ringgate's
//! answers byte for byte).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use crate::{
    backend::{apply_bootstrap_part, pg_admin_url, required},
    gateway::start,
};

/// Tenant alpha's role and password (`RINGGATE_TEST_ALPHA_URL`).
pub fn alpha() -> (String, String) {
    let url = ringgate_pool::url::parse_pg_url(&required("RINGGATE_TEST_ALPHA_URL")).unwrap();
    (url.credentials.user, url.credentials.password)
}

/// Applies the auth function of `compose/config/bootstrap.sql` (from its comment to the
/// end of the file) to the running cluster, which may have been bootstrapped by an older
/// version of the file; idempotent, once per test process.
pub fn ensure_auth_function() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| apply_bootstrap_part("-- The PostgreSQL front end's auth query", None, None));
}

/// Starts ringgate with the PostgreSQL listener (and `extra`); returns it and that address.
pub fn start_pg(extra: &[(&str, &str)]) -> (ringgate::Gateway, SocketAddr) {
    ensure_auth_function();
    let (db, control) = (pg_admin_url(), required("RINGGATE_CONTROL_DATABASE_URL"));
    let mut env = vec![
        ("DATABASE_URL", db.as_str()),
        ("RINGGATE_CONTROL_DATABASE_URL", control.as_str()),
        ("RINGGATE_PG_LISTEN", "127.0.0.1:0"),
    ];
    env.extend_from_slice(extra);
    let (g, _) = start(&env);
    let addr = g.pg_addr().expect("PostgreSQL listener");
    (g, addr)
}

/// A libpq connection string for `user` through ringgate (`extra` appended).
pub fn conninfo(addr: SocketAddr, user: &str, password: &str, db: &str, extra: &str) -> String {
    format!(
        "host={} port={} user={user} password={password} dbname={db} connect_timeout=5 {extra}",
        addr.ip(),
        addr.port()
    )
}

/// Runs psql with `args`; its status, stdout and stderr.
pub fn psql(conninfo: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
        .args(args)
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// The SQLSTATE (`C` field) of the `ErrorResponse` at the start of `b`.
pub fn error_code(b: &[u8]) -> String {
    assert_eq!(b.first(), Some(&b'E'), "an ErrorResponse: {b:?}");
    let fields = &b[5..];
    let mut i = 0;
    while i < fields.len() && fields[i] != 0 {
        let end = i + 1 + fields[i + 1..].iter().position(|&c| c == 0).unwrap();
        if fields[i] == b'C' {
            return String::from_utf8_lossy(&fields[i + 1..end]).to_string();
        }
        i = end + 1;
    }
    panic!("no code in {b:?}")
}

/// A startup packet: `code` (protocol or request) and `params`.
pub fn startup_packet(code: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// The test certificate and key (`server.pem`, `server.key` beside `RINGGATE_TEST_PG_CA`)
/// and the CA file.
pub fn test_certificate() -> (PathBuf, PathBuf, PathBuf) {
    let ca = PathBuf::from(required("RINGGATE_TEST_PG_CA"));
    let dir = ca.parent().unwrap().to_path_buf();
    (dir.join("server.pem"), dir.join("server.key"), ca)
}

/// [`start_pg`] with the HTTPS certificate (so TLS on the PostgreSQL listener) and `extra`.
pub fn start_pg_tls(extra: &[(&str, &str)]) -> (ringgate::Gateway, SocketAddr) {
    let (cert, key, _) = test_certificate();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut env = vec![
        ("RINGGATE_TLS_LISTEN", "127.0.0.1:0"),
        ("RINGGATE_TLS_CERT", cert),
        ("RINGGATE_TLS_KEY", key),
    ];
    env.extend_from_slice(extra);
    start_pg(&env)
}

/// Project alpha's startup packet as its owner (project from `options`).
pub fn alpha_startup() -> Vec<u8> {
    let (user, _) = alpha();
    startup_packet(
        196_608,
        &[
            ("user", &user),
            ("database", "tenant_alpha"),
            ("options", "endpoint=alpha"),
        ],
    )
}

/// Reads one backend message (type byte and body) from `s`.
pub fn read_message(s: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// A frontend message of type `tag` with `body`.
pub fn frontend(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The SASL mechanisms of an `AuthenticationSASL` body.
pub fn sasl_mechanisms(body: &[u8]) -> Vec<String> {
    assert_eq!(
        &body[..4],
        &10i32.to_be_bytes(),
        "AuthenticationSASL: {body:?}"
    );
    body[4..]
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).to_string())
        .collect()
}

/// After `AuthenticationSASL`: runs SCRAM with `password` as `mechanism` with `binding`;
/// the first message after the client's final one (`R` AuthenticationSASLFinal when it
/// passed, `E` when refused).
pub fn scram(
    s: &mut (impl Read + Write),
    mechanism: &str,
    password: &str,
    binding: ChannelBinding,
) -> (u8, Vec<u8>) {
    let mut client = ScramSha256::new(password.as_bytes(), binding);
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(client.message().len() as i32).to_be_bytes());
    body.extend_from_slice(client.message());
    s.write_all(&frontend(b'p', &body)).unwrap();
    let (tag, body) = read_message(s).unwrap();
    if tag != b'R' {
        return (tag, body);
    }
    assert_eq!(&body[..4], &11i32.to_be_bytes(), "SASLContinue");
    client.update(&body[4..]).unwrap();
    s.write_all(&frontend(b'p', client.message())).unwrap();
    read_message(s).unwrap()
}

/// Reads messages until `ReadyForQuery`, then runs `select 1` and returns its value.
pub fn ready_then_select_one(s: &mut (impl Read + Write)) -> String {
    loop {
        let (tag, body) = read_message(s).unwrap();
        assert_ne!(tag, b'E', "{}", String::from_utf8_lossy(&body));
        if tag == b'Z' {
            break;
        }
    }
    s.write_all(&frontend(b'Q', b"select 1\0")).unwrap();
    let mut value = String::new();
    loop {
        let (tag, body) = read_message(s).unwrap();
        match tag {
            b'D' => value = String::from_utf8_lossy(&body[6..]).to_string(),
            b'E' => panic!("{}", String::from_utf8_lossy(&body)),
            b'Z' => return value,
            _ => {}
        }
    }
}

/// The SQLSTATE (`C`) and message (`M`) of an `ErrorResponse` body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    for f in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let v = String::from_utf8_lossy(&f[1..]).to_string();
        match f[0] {
            b'C' => code = v,
            b'M' => message = v,
            _ => {}
        }
    }
    (code, message)
}

/// Runs `f` with a tokio-postgres client connected through ringgate's PostgreSQL listener
/// to project alpha as its owner (or the connect error).
pub fn with_alpha<T>(
    addr: SocketAddr,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> T,
) -> Result<T, tokio_postgres::Error> {
    let (user, password) = alpha();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut config = tokio_postgres::Config::new();
        config
            .user(&user)
            .password(&password)
            .dbname("tenant_alpha")
            .options("endpoint=alpha");
        let (client, conn) = config.connect_raw(tcp, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(conn);
        let out = f(&client).await;
        drop(client);
        let _ = driver.await;
        Ok(out)
    })
}

/// A protocol-3 client speaking raw messages: what it reads back is ringgate's answer
/// byte for byte.
pub struct RawPg {
    s: TcpStream,
    /// The process id of its `BackendKeyData` (ringgate's: instance, core, number).
    pub pid: i32,
}

impl RawPg {
    /// Connects to project alpha as its owner (SCRAM-SHA-256) and reads up to the first
    /// `ReadyForQuery`.
    pub fn alpha(addr: SocketAddr) -> Self {
        let (_, password) = alpha();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&alpha_startup()).unwrap();
        let (tag, body) = read_message(&mut s).unwrap();
        assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
        let (tag, body) = scram(
            &mut s,
            "SCRAM-SHA-256",
            &password,
            ChannelBinding::unsupported(),
        );
        assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
        let mut pid = 0;
        loop {
            match read_message(&mut s).unwrap() {
                (b'K', body) => pid = i32::from_be_bytes(body[..4].try_into().unwrap()),
                (b'Z', _) => return Self { s, pid },
                _ => {}
            }
        }
    }

    /// Sends `messages` and returns every message read until the connection closes (or
    /// its read timeout).
    pub fn send_until_closed(&mut self, messages: &[u8]) -> Vec<(u8, Vec<u8>)> {
        self.s.write_all(messages).unwrap();
        let mut out = Vec::new();
        while let Ok(m) = read_message(&mut self.s) {
            out.push(m);
        }
        out
    }

    /// The ringgate core serving it (from its `BackendKeyData`).
    pub fn core(&self) -> u32 {
        (self.pid as u32 >> 18) & 0x3f
    }

    /// Sends `messages` and returns every byte of the answer up to and including
    /// `ReadyForQuery`.
    pub fn exchange(&mut self, messages: &[u8]) -> Vec<u8> {
        self.s.write_all(messages).unwrap();
        let mut out = Vec::new();
        loop {
            let (tag, body) = read_message(&mut self.s).unwrap();
            out.extend(frontend(tag, &body));
            if tag == b'Z' {
                return out;
            }
        }
    }
}

/// A simple `Query`.
pub fn query(sql: &str) -> Vec<u8> {
    frontend(b'Q', format!("{sql}\0").as_bytes())
}

/// `Parse` of statement `name` (no parameter types given).
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    frontend(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

/// `Bind` of the unnamed portal to `statement` with text parameters and one result
/// format for every column (0 text, 1 binary).
pub fn bind(statement: &str, params: &[&str], result_format: i16) -> Vec<u8> {
    let mut b = format!("\0{statement}\0").into_bytes();
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&result_format.to_be_bytes());
    frontend(b'B', &b)
}

/// `Describe` of the unnamed portal, `Execute` of all its rows, `Sync`.
pub fn describe_execute_sync() -> Vec<u8> {
    let mut m = frontend(b'D', b"P\0");
    m.extend(frontend(b'E', b"\0\0\0\0\0"));
    m.extend(frontend(b'S', b""));
    m
}

/// `Parse` and `Describe` of a named statement, `Sync`.
pub fn prepare(name: &str, sql: &str) -> Vec<u8> {
    let mut m = parse(name, sql);
    m.extend(frontend(b'D', format!("S{name}\0").as_bytes()));
    m.extend(frontend(b'S', b""));
    m
}

/// The last `ReadyForQuery` status of an answer.
pub fn status(answer: &[u8]) -> u8 {
    *answer.last().expect("an answer")
}

/// Runs `select pg_sleep(secs)` on `c` and, half a second in, sends its CancelRequest to
/// `cancel_at` (any listener of the front end); the statement's result and how long it took.
pub async fn sleep_then_cancel(
    c: &tokio_postgres::Client,
    cancel_at: SocketAddr,
    secs: u32,
) -> (
    Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
    Duration,
) {
    let token = c.cancel_token();
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tcp = tokio::net::TcpStream::connect(cancel_at).await.unwrap();
        token
            .cancel_query_raw(tcp, tokio_postgres::NoTls)
            .await
            .unwrap();
    };
    let started = std::time::Instant::now();
    let sleep = format!("select pg_sleep({secs})");
    let (r, ()) = tokio::join!(c.simple_query(&sleep), cancel);
    (r, started.elapsed())
}
