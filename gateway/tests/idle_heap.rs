//! What an idle connection costs in heap, exactly: a counting allocator splits the bytes
//! allocated by the gateway's threads from those of the test's clients, and 1,000 idle
//! connections (each sent one request and read the answer), plain and TLS, are held while
//! the gateway's live heap is read. RSS (bench/idle.sh) adds the allocator's own overhead
//! and fragmentation to these figures. Sizes, not timings: the bounds hold on any machine.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    io::{BufReader, Write},
    net::TcpStream,
    path::Path,
    sync::{
        atomic::{AtomicIsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use common::{drivers, read_response, test_config};
use rustls::{pki_types::CertificateDer, ClientConfig, ClientConnection, RootCertStore};

/// Live bytes allocated by threads other than the test's client thread.
static SERVER: AtomicIsize = AtomicIsize::new(0);
/// Live allocations of those threads by size (the last counts every size above).
static BY_SIZE: [AtomicIsize; 4097] = [const { AtomicIsize::new(0) }; 4097];

thread_local! {
    /// Set on the thread that plays the clients: its allocations are not the gateway's.
    static CLIENT: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

/// Counts an allocation of `size` bytes made (`n` = 1) or freed (`n` = -1).
fn count(size: usize, n: isize) {
    if !CLIENT.with(Cell::get) {
        SERVER.fetch_add(n * size as isize, Relaxed);
        BY_SIZE[size.min(BY_SIZE.len() - 1)].fetch_add(n, Relaxed);
    }
}

fn live_by_size() -> Vec<isize> {
    BY_SIZE.iter().map(|c| c.load(Relaxed)).collect()
}

/// The allocation sizes of which about one per connection (or more) is live at `after`
/// than at `before`, for `n` connections: where an idle connection's heap goes.
fn per_connection_breakdown(before: &[isize], after: &[isize], n: usize) -> String {
    let mut out = Vec::new();
    for (size, (now, was)) in after.iter().zip(before).enumerate() {
        let more = now - was;
        if more >= n as isize * 9 / 10 {
            out.push(format!("{more} x {size} B"));
        }
    }
    out.join(", ")
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counting has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: usize = 1_000;
const GET: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

/// Writes a fresh self-signed certificate for `localhost` to `dir`; returns its DER.
fn write_cert(
    dir: &Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    CertificateDer<'static>,
) {
    let g = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, g.cert.pem()).unwrap();
    std::fs::write(&k, g.key_pair.serialize_pem()).unwrap();
    (c, k, g.cert.der().clone())
}

/// The gateway's live heap once it has settled (no buffer lent but the one of the
/// connection serving `/metrics`, and the heap unchanged across two reads). Busy
/// connections keep their read buffer for a grace period (100 ms) after a response: this
/// waits past it, and fails if the buffers do not come back (up to 2 s).
fn settled_heap(plain: std::net::SocketAddr) -> isize {
    let mut last = isize::MIN;
    for _ in 0..100 {
        let lent = common::get(plain, "/metrics")
            .text()
            .lines()
            .find(|l| l.starts_with("ringgate_io_buffers_lent{core=\"0\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        std::thread::sleep(Duration::from_millis(20));
        let now = SERVER.load(Relaxed);
        if lent == Some(1) && now == last {
            return now;
        }
        last = now;
    }
    panic!("the gateway's heap did not settle");
}

#[test]
fn an_idle_connection_holds_a_little_heap_and_no_buffer() {
    CLIENT.with(|c| c.set(true));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_cert(dir.path());
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    for d in drivers() {
        let mut config = test_config(d, &[("RINGGATE_WORKERS", "1")]);
        config.tls = Some(ringgate::config::TlsListen {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: cert.clone(),
            key: key.clone(),
        });
        let g = ringgate::Gateway::start(config).unwrap();
        let (plain, tls) = (g.plain_addr().unwrap(), g.tls_addr().unwrap());
        // Each connection sends two requests back to back, so the gateway counts it busy
        // and keeps a read with its buffer armed after answering; it then goes quiet.
        let open_plain = || {
            let mut s = BufReader::new(TcpStream::connect(plain).unwrap());
            for _ in 0..2 {
                s.get_mut().write_all(GET).unwrap();
                assert_eq!(read_response(&mut s, false).unwrap().status, 200);
            }
            s
        };
        let open_tls = || {
            let conn = ClientConnection::new(client.clone(), "localhost".try_into().unwrap());
            let tcp = TcpStream::connect(tls).unwrap();
            let mut s = BufReader::new(rustls::StreamOwned::new(conn.unwrap(), tcp));
            for _ in 0..2 {
                s.get_mut().write_all(GET).unwrap();
                assert_eq!(read_response(&mut s, false).unwrap().status, 200);
            }
            s
        };
        // Warm up: the core's first connections, handshakes and metrics render.
        drop((0..50).map(|_| open_plain()).collect::<Vec<_>>());
        drop((0..50).map(|_| open_tls()).collect::<Vec<_>>());
        let base = settled_heap(plain);
        let base_sizes = live_by_size();
        let held: Vec<_> = (0..N).map(|_| open_plain()).collect();
        let with_plain = settled_heap(plain);
        let plain_sizes = live_by_size();
        let held_tls: Vec<_> = (0..N).map(|_| open_tls()).collect();
        let with_tls = settled_heap(plain);
        let tls_sizes = live_by_size();
        let per_plain = (with_plain - base) as f64 / N as f64;
        let per_tls = (with_tls - with_plain) as f64 / N as f64;
        eprintln!(
            "{d:?}: heap per idle connection {per_plain:.0} bytes plain, {per_tls:.0} bytes TLS"
        );
        eprintln!(
            "{d:?}: live allocations added by {N} plain connections: {}",
            per_connection_breakdown(&base_sizes, &plain_sizes, N)
        );
        eprintln!(
            "{d:?}: live allocations added by {N} TLS connections: {}",
            per_connection_breakdown(&plain_sizes, &tls_sizes, N)
        );
        // Before buffers were lent, each connection held 8 KiB (plain) and 40 KiB (TLS) of
        // buffers alone; then a plain one held its task (~1.1 KiB). Now a plain one is
        // parked (`ringgate::parked`): its descriptor, peer, guard and expiry entry, ~150
        // bytes; nginx's is ~520 (bench/idle.sh). What TLS keeps is rustls's: its 4 KiB
        // record buffer (the buffered API keeps one), keys and key schedule, and its task.
        assert!(per_plain < 512.0, "{per_plain} bytes per plain connection");
        assert!(
            per_tls < 14.0 * 1024.0,
            "{per_tls} bytes per TLS connection"
        );
        drop((held, held_tls));
        g.drain();
    }
}
