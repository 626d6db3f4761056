//! A stand-in PostgreSQL server for the pool's own tests: it accepts any startup (no
//! password), optionally after a delay, and then reads until the client leaves. Enough
//! for checkouts, whose waiting these tests are about; no statement is run.

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use ringgate_pool::{
    budget::Budgets,
    conn::{Credentials, Target},
    tenant::{Gates, PoolKey, TenantPool},
    Config,
};

/// The stand-in server: what it was asked, and how slowly it answers.
#[derive(Debug, Default)]
pub struct Fake {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Milliseconds it waits before answering a startup.
    pub delay_ms: AtomicU64,
    /// Set: every open session is ended by the server (as by a restart).
    pub end_sessions: AtomicBool,
}

/// Starts a stand-in server on a loopback port.
pub fn serve() -> (SocketAddr, Arc<Fake>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake::default());
    let f = fake.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let f = f.clone();
            std::thread::spawn(move || session(stream, &f));
        }
    });
    (addr, fake)
}

fn session(mut s: TcpStream, fake: &Fake) {
    fake.accepted.fetch_add(1, SeqCst);
    fake.open.fetch_add(1, SeqCst);
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_ok() {
        let mut rest = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        if s.read_exact(&mut rest).is_ok() {
            std::thread::sleep(Duration::from_millis(fake.delay_ms.load(SeqCst)));
            let mut out = Vec::new();
            out.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]); // AuthenticationOk
            out.extend_from_slice(&[b'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 2]); // BackendKeyData
            out.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']); // ReadyForQuery
            if s.write_all(&out).is_ok() {
                let mut buf = [0u8; 1024];
                let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
                // Until the client terminates or closes, or sessions are ended.
                while !fake.end_sessions.load(SeqCst) {
                    match s.read(&mut buf) {
                        Ok(n) if n == 0 || buf[..n].contains(&b'X') => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                }
            }
        }
    }
    fake.open.fetch_sub(1, SeqCst);
}

/// A pool of tenant "t" on node "n" at `addr`, `limit` connections for the tenant.
pub fn pool(addr: SocketAddr, limit: usize) -> (Rc<TenantPool>, Gates) {
    let config = Config {
        max_per_tenant: limit,
        max_total: 100,
        ..Config::default()
    };
    pool_on(addr, &Budgets::new(&config), 0)
}

/// Core `core`'s pool of tenant "t" on node "n" at `addr`, under `budgets` (shared by
/// the cores' pools, each on its own thread).
pub fn pool_on(addr: SocketAddr, budgets: &Budgets, core: usize) -> (Rc<TenantPool>, Gates) {
    let gates = Gates {
        tenant: budgets.tenant("t", "n"),
        node: budgets.node("n"),
        core,
    };
    let credentials = Credentials::new("db", "role", "");
    let target = Target {
        addr,
        node: "n".into(),
        credentials: credentials.clone(),
        application_name: "pool-test".into(),
        connect_timeout: Duration::from_secs(5),
        statement_cache: 16,
        options: String::new(),
        tls: None,
        host: "127.0.0.1".into(),
    };
    let key = PoolKey {
        tenant: "t".into(),
        database: "db".into(),
        role: "role".into(),
        node: "n".into(),
    };
    let pool = Rc::new(TenantPool::new(
        key,
        target,
        gates.clone(),
        Duration::from_secs(1),
    ));
    (pool, gates)
}

/// Runs `f` on a monoio runtime with timers.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f)
}

/// Lets the other tasks of the runtime run for `ms` milliseconds.
pub async fn pause(ms: u64) {
    monoio::time::sleep(Duration::from_millis(ms)).await;
}
