//! rg-idle: opens many idle keep-alive connections and holds them.
//!
//! Each connection sends one `GET PATH`, reads the whole answer and then stays open, silent,
//! until the process is killed: what an idle client of a serverless driver looks like to the
//! server. Connections come from `--sources` loopback addresses (127.0.0.2 and up), so that
//! many runs in a row do not run out of ephemeral ports (a closed client connection keeps its
//! port in TIME_WAIT for a minute). When all are open it prints one line of `key=value`
//! figures (`held=`, `failed=`, `secs=`) and flushes it: the harness waits for that line,
//! measures the server, then kills this process.
//!
//! Usage: see [`USAGE`].

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::Arc,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// The usage text, for `--help` and for a wrong argument.
const USAGE: &str =
    "usage: rg-idle --url http[s]://IP:PORT/PATH --conns N [--sources S] [--threads T] [--ca PEM]
";

struct Args {
    tls: bool,
    addr: SocketAddr,
    path: String,
    conns: usize,
    sources: u8,
    threads: usize,
    ca: Option<String>,
}

/// Reads the arguments after the program name; `None` for `--help`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>> {
    let mut it = args.into_iter();
    let (mut url, mut conns, mut sources, mut threads, mut ca) = (None, None, 16u8, 4usize, None);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = Some(value()?),
            "--conns" => conns = Some(value()?.parse()?),
            "--sources" => sources = value()?.parse()?,
            "--threads" => threads = value()?.parse()?,
            "--ca" => ca = Some(value()?),
            "--help" | "-h" => return Ok(None),
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    let url = url.context("--url is required")?;
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("--url must start with http:// or https://");
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Ok(Some(Args {
        tls,
        addr: host.parse().context("--url needs IP:PORT")?,
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        conns: conns.context("--conns is required")?,
        sources: sources.clamp(1, 250),
        threads: threads.max(1),
        ca,
    }))
}

/// A held connection: the socket, and for TLS the client session too.
enum Held {
    /// The socket is kept only so it stays open.
    Plain(#[allow(dead_code)] TcpStream),
    /// Likewise, with its session.
    Tls(#[allow(dead_code)] Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// Connects from `127.0.0.{2 + i % sources}`.
fn connect(addr: SocketAddr, i: usize, sources: u8) -> Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i % sources as usize) as u8);
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
    socket.connect(&addr.into())?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads one response with a `content-length` (or none: an empty body) from `io`.
fn read_response(io: &mut impl Read) -> Result<()> {
    let mut got = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        let n = io.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before the response ended");
        }
        got.extend_from_slice(&chunk[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            bail!("status line {:?}", head.lines().next());
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse())
            .transpose()?
            .unwrap_or(0);
        if got.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

/// Opens one connection, sends the request, reads the answer.
fn open(
    args: &Args,
    i: usize,
    tls: &Option<Arc<rustls::ClientConfig>>,
    req: &[u8],
) -> Result<Held> {
    let mut stream = connect(args.addr, i, args.sources)?;
    match tls {
        None => {
            stream.write_all(req)?;
            read_response(&mut stream)?;
            Ok(Held::Plain(stream))
        }
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let conn = rustls::ClientConnection::new(config.clone(), name)?;
            let mut s = rustls::StreamOwned::new(conn, stream);
            s.write_all(req)?;
            read_response(&mut s)?;
            Ok(Held::Tls(Box::new(s)))
        }
    }
}

fn tls_config(ca: &Option<String>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let path = ca.as_ref().context("--ca is required for https")?;
    for c in rustls_pemfile::certs(&mut std::fs::read(path)?.as_slice()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn run(args: Args) -> Result<()> {
    let tls = if args.tls {
        Some(tls_config(&args.ca)?)
    } else {
        None
    };
    let req = format!("GET {} HTTP/1.1\r\nhost: {}\r\n\r\n", args.path, args.addr);
    let started = Instant::now();
    let args = Arc::new(args);
    let workers: Vec<_> = (0..args.threads)
        .map(|t| {
            let (args, tls, req) = (args.clone(), tls.clone(), req.clone());
            std::thread::spawn(move || {
                let (mut held, mut failed, mut first_error) = (Vec::new(), 0usize, None);
                for i in (t..args.conns).step_by(args.threads) {
                    match open(&args, i, &tls, req.as_bytes()) {
                        Ok(h) => held.push(h),
                        Err(e) => {
                            failed += 1;
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                }
                (held, failed, first_error)
            })
        })
        .collect();
    let (mut held, mut failed, mut first_error) = (Vec::new(), 0, None);
    for w in workers {
        let (h, f, e) = w.join().expect("worker panicked");
        held.extend(h);
        failed += f;
        first_error = first_error.or(e);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "held={} failed={failed} secs={:.2} first_error={:?}",
        held.len(),
        started.elapsed().as_secs_f64(),
        first_error.unwrap_or_default()
    )?;
    out.flush()?;
    drop(out);
    // Hold until killed.
    loop {
        std::thread::park();
    }
}

fn main() -> std::process::ExitCode {
    ringgate_bench::tool_main("rg-idle", USAGE, parse_args, run)
}
