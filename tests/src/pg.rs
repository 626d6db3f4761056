//! The PostgreSQL front end in tests: a gateway with its listener, and a raw protocol
//! client that shows the exact bytes ringgate answers with.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use crate::{
    backend::{pg_admin_url, required},
    gateway::start,
};

/// Applies the auth function of `compose/config/bootstrap.sql` (from its comment to the
/// end of the file) to the running cluster, which may have been bootstrapped by an older
/// version of the file; idempotent, once per test process.
pub fn ensure_auth_function() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/config/bootstrap.sql");
        let sql = std::fs::read_to_string(&path).unwrap();
        let at = sql
            .find("-- The PostgreSQL front end's auth query")
            .expect("bootstrap.sql has the auth function");
        let file = std::env::temp_dir().join(format!("ringgate-auth-{}.sql", std::process::id()));
        std::fs::write(&file, &sql[at..]).unwrap();
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &pg_admin_url()])
            .args([
                "-c",
                "\\connect ringgate_control",
                "-f",
                file.to_str().unwrap(),
            ])
            .output()
            .expect("psql is installed");
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "applying the auth function: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Starts ringgate with the backend's database, control database and PostgreSQL listener,
/// and `extra`; returns it, its HTTP and its PostgreSQL address.
pub fn start_pg(extra: &[(&str, &str)]) -> (ringgate::Gateway, SocketAddr, SocketAddr) {
    ensure_auth_function();
    let (db, control) = (pg_admin_url(), required("RINGGATE_CONTROL_DATABASE_URL"));
    let mut env = vec![
        ("DATABASE_URL", db.as_str()),
        ("RINGGATE_CONTROL_DATABASE_URL", control.as_str()),
        ("RINGGATE_PG_LISTEN", "127.0.0.1:0"),
    ];
    env.extend_from_slice(extra);
    let (g, http) = start(&env);
    let pg = g.pg_addr().expect("PostgreSQL listener");
    (g, http, pg)
}

/// Tenant alpha's role and password (`RINGGATE_TEST_ALPHA_URL`).
pub fn alpha() -> (String, String) {
    let url = ringgate_pool::url::parse_pg_url(&required("RINGGATE_TEST_ALPHA_URL")).unwrap();
    (url.credentials.user, url.credentials.password)
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
}

impl RawPg {
    /// Connects to project alpha as its owner (SCRAM-SHA-256) and reads up to the first
    /// `ReadyForQuery`.
    pub fn alpha(addr: SocketAddr) -> Self {
        let (user, password) = alpha();
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Self { s };
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [
            ("user", user.as_str()),
            ("database", "tenant_alpha"),
            ("options", "endpoint=alpha"),
        ] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        c.s.write_all(&packet).unwrap();
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (tag, m) = c.message();
        assert_eq!((tag, &m[..4]), (b'R', &10i32.to_be_bytes()[..]), "SASL");
        let first = scram.message().to_vec();
        let mut p = b"SCRAM-SHA-256\0".to_vec();
        p.extend_from_slice(&(first.len() as i32).to_be_bytes());
        p.extend_from_slice(&first);
        c.send(&message(b'p', &p));
        let (tag, m) = c.message();
        assert_eq!(tag, b'R', "SASLContinue: {m:?}");
        scram.update(&m[4..]).unwrap();
        c.send(&message(b'p', scram.message()));
        let (tag, m) = c.message();
        assert_eq!(tag, b'R', "SASLFinal: {:?}", String::from_utf8_lossy(&m));
        scram.finish(&m[4..]).unwrap();
        loop {
            if c.message().0 == b'Z' {
                return c;
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// One message: its type and body.
    fn message(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        let mut body = vec![0; len - 4];
        self.s.read_exact(&mut body).unwrap();
        (head[0], body)
    }

    /// Sends `messages` and returns every byte of the answer up to and including
    /// `ReadyForQuery`.
    pub fn exchange(&mut self, messages: &[u8]) -> Vec<u8> {
        self.send(messages);
        let mut out = Vec::new();
        loop {
            let (tag, body) = self.message();
            out.push(tag);
            out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            out.extend_from_slice(&body);
            if tag == b'Z' {
                return out;
            }
        }
    }
}

/// A message of type `tag` with `body`.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A simple `Query`.
pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', format!("{sql}\0").as_bytes())
}

/// `Parse` of statement `name` (no parameter types given).
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
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
    message(b'B', &b)
}

/// `Describe` of the unnamed portal, `Execute` of all its rows, `Sync`.
pub fn describe_execute_sync() -> Vec<u8> {
    let mut m = message(b'D', b"P\0");
    m.extend(message(b'E', b"\0\0\0\0\0"));
    m.extend(message(b'S', b""));
    m
}

/// `Parse` and `Describe` of a named statement, `Sync`.
pub fn prepare(name: &str, sql: &str) -> Vec<u8> {
    let mut m = parse(name, sql);
    m.extend(message(b'D', format!("S{name}\0").as_bytes()));
    m.extend(message(b'S', b""));
    m
}

/// The last `ReadyForQuery` status of an answer.
pub fn status(answer: &[u8]) -> u8 {
    *answer.last().expect("an answer")
}

/// Whether an answer holds an `ErrorResponse`.
pub fn has_error(answer: &[u8]) -> bool {
    let mut rest = answer;
    while rest.len() >= 5 {
        if rest[0] == b'E' {
            return true;
        }
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        rest = &rest[1 + len..];
    }
    false
}
