//! The PostgreSQL wire-protocol front end (`RINGGATE_PG_LISTEN`): psql, pgbench and any
//! driver use ringgate's per-core pools through it.
//!
//! A connection's first byte says its transport: a TLS ClientHello (direct TLS, ALPN
//! `postgresql`, or `wss://`), an HTTP method (a WebSocket upgrade, `GET /v2`), or a
//! startup packet. Then it goes through [`startup`] (`SSLRequest` answered with the HTTPS
//! certificate, `GSSENCRequest` declined, `CancelRequest` served, then the
//! `StartupMessage`), [`route`] (which project), [`session`] (the project's checks and
//! authentication against the role's SCRAM verifier: SCRAM-SHA-256, -PLUS over TLS, or the
//! cleartext password over TLS only; either yields the keys ringgate authenticates
//! upstream with), then [`relay`]: transaction pooling on the same tenant pools as `/sql`.
//!
//! # Layout
//! - [`startup`]: the first packet, parsed with strict limits.
//! - [`route`]: the project from SNI (or the WebSocket's `Host`), `options` or the
//!   database name.
//! - [`messages`]: framing, and the backend messages ringgate writes itself.
//! - [`stream`]: the client's byte stream, plain, TLS or WebSocket.
//! - [`websocket`]: the upgrade request and the frame codec.
//! - [`session`]: project checks and authentication.
//! - [`relay`]: transaction or session pooling, named prepared statements, session-only
//!   refusals, the leader's lease.
//! - [`split`]: the read/write split (replica or leader, from the first statement).
//! - [`cached`]: autocommit reads from the result cache; writes invalidating it.
//! - [`cancel`]: cancel keys and the process-wide table they are found in.

pub mod cached;
pub mod cancel;
pub mod messages;
pub mod relay;
pub mod route;
pub mod session;
pub mod split;
pub mod startup;
pub mod stream;
pub mod websocket;

use std::{net::TcpListener as StdListener, rc::Rc, sync::Arc, time::Duration};

use bytes::BytesMut;
use monoio::{
    io::AsyncWriteRentExt,
    net::{TcpListener, TcpStream},
    time::{sleep, timeout},
};
use tracing::{debug, info, info_span, warn, Instrument};

use self::{
    startup::{Startup, StartupError},
    stream::{ClientStream, WsStream},
};
use crate::{per_core::Core, tls_stream::TlsStream};

/// Accepts PostgreSQL connections on this core's listener until the drain.
pub async fn accept_loop(core: Rc<Core>, listener: StdListener) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(error) => {
            warn!(core = core.id, %error, "cannot register the PostgreSQL listener");
            return;
        }
    };
    loop {
        let accepted = monoio::select! {
            biased;
            _ = core.drain.signaled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                if core.connections() >= core.config.http.max_connections_per_core {
                    core.metrics().connection_rejected();
                    monoio::spawn(async move {
                        let mut s = ClientStream::Plain(stream);
                        fatal(&mut s, "53300", "sorry, too many clients already").await;
                    });
                    continue;
                }
                let n = core.next_pg_session();
                let _ = stream.set_nodelay(true);
                let guard = core.track_connection();
                let span = info_span!("pg", core = core.id, %peer);
                let core = core.clone();
                monoio::spawn(
                    async move {
                        let _guard = guard;
                        serve(core, stream, n).await;
                    }
                    .instrument(span),
                );
            }
            Err(error) => {
                warn!(core = core.id, %error, "accept failed");
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
    info!(core = core.id, "PostgreSQL listener closed");
}

/// Writes a FATAL error to the client (best effort: it is closed next).
pub(crate) async fn fatal(stream: &mut ClientStream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    messages::error(&mut out, "FATAL", code, message);
    let _ = timeout(Duration::from_secs(1), async {
        stream.write_all(&mut out).await?;
        stream.close().await
    })
    .await;
}

/// Why a connection ended before its session started.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}")]
    Startup(#[from] StartupError),
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("startup timed out")]
    Timeout,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("data after SSLRequest before the TLS handshake")]
    Smuggled,
    #[error("direct TLS without ALPN postgresql")]
    NoAlpn,
    #[error("WebSocket upgrade refused: {0}")]
    Upgrade(websocket::UpgradeError),
}

/// Reads one startup packet (its length checked first).
async fn read_startup(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<Startup, Refused> {
    while buf.len() < 4 {
        stream.read_into(buf, 64).await?;
    }
    let len = startup::packet_len(buf[..4].try_into().expect("4 bytes"))?;
    while buf.len() < len {
        stream.read_into(buf, len - buf.len()).await?;
    }
    let packet = buf.split_to(len);
    Ok(startup::parse(&packet[4..])?)
}

/// The first byte of a TLS handshake record (a direct TLS ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Finds out the transport (direct TLS, WebSocket, or plain TCP with its own
/// `SSLRequest`), negotiates TLS and reads the startup message, then runs the session.
async fn serve(core: Rc<Core>, tcp: TcpStream, n: u32) {
    let mut buf = BytesMut::with_capacity(1024);
    let wait = core.config.http.header_read_timeout;
    let first = match timeout(wait, first_byte(&tcp)).await {
        Ok(Ok(b)) => b,
        Ok(Err(error)) => return debug!(%error, "PostgreSQL connection ended"),
        Err(_) => return debug!(error = %Refused::Timeout, "PostgreSQL connection ended"),
    };
    let opened = match first {
        TLS_HANDSHAKE => direct_tls(&core, tcp, &mut buf).await,
        // An HTTP method (a startup packet starts with its length's high byte, 0).
        b'A'..=b'Z' => websocket(stream::Socket::Plain(tcp), None, &mut buf, wait).await,
        _ => Ok((ClientStream::Plain(tcp), None)),
    };
    let (stream, sni) = match opened {
        Ok(s) => s,
        Err(error) => {
            if matches!(error, Refused::Upgrade(_) | Refused::NoAlpn) {
                core.metrics()
                    .wire
                    .count(crate::metrics::wire::WireEvent::Refused);
            }
            return debug!(%error, "PostgreSQL connection refused");
        }
    };
    start(core, stream, sni, buf, n).await;
}

/// Serves a WebSocket an HTTP listener upgraded (`GET /v2` there): `rest` is what the
/// client sent after its request, `name` the TLS server name or else the `Host` header's.
pub async fn serve_upgraded(
    core: Rc<Core>,
    socket: stream::Socket,
    name: Option<String>,
    rest: BytesMut,
) {
    let n = core.next_pg_session();
    let stream = ClientStream::Ws(Box::new(WsStream::new(socket, rest)));
    start(core, stream, name, BytesMut::with_capacity(1024), n).await;
}

/// Reads the startup message on an open transport (answering `SSLRequest`,
/// `GSSENCRequest` and `CancelRequest` on the way), then runs the session.
async fn start(
    core: Rc<Core>,
    mut stream: ClientStream,
    mut sni: Option<String>,
    mut buf: BytesMut,
    n: u32,
) {
    let wait = core.config.http.header_read_timeout;
    let params = loop {
        let packet = match timeout(wait, read_startup(&mut stream, &mut buf)).await {
            Ok(r) => r,
            Err(_) => Err(Refused::Timeout),
        };
        let packet = match packet {
            Ok(p) => p,
            Err(Refused::Startup(e)) => {
                debug!(error = %e, "PostgreSQL startup refused");
                core.metrics()
                    .wire
                    .count(crate::metrics::wire::WireEvent::Refused);
                return fatal(&mut stream, e.sqlstate(), &e.to_string()).await;
            }
            Err(error) => {
                debug!(%error, "PostgreSQL startup ended");
                return;
            }
        };
        match packet {
            Startup::Start(p) => break p,
            Startup::Cancel { pid, key } => {
                core.metrics()
                    .wire
                    .count(crate::metrics::wire::WireEvent::Cancels);
                return cancel_request(&core, pid, key).await;
            }
            Startup::Ssl | Startup::GssEnc if stream.is_tls() => {
                return fatal(&mut stream, "08P01", "encryption requested twice").await;
            }
            // No TLS inside a WebSocket (`wss://` encrypts it).
            Startup::Ssl if stream.is_websocket() => {
                let mut no = BytesMut::from(&b"N"[..]);
                if stream.write_all(&mut no).await.is_err() {
                    return;
                }
            }
            Startup::Ssl if !buf.is_empty() => {
                // CVE-2021-23214: nothing sent before the handshake may be read after it.
                debug!(error = %Refused::Smuggled, "PostgreSQL startup refused");
                return fatal(
                    &mut stream,
                    "08P01",
                    "received unencrypted data after SSL request",
                )
                .await;
            }
            Startup::Ssl => {
                stream = match negotiate_tls(&core, stream).await {
                    Ok((s, name)) => {
                        sni = name;
                        s
                    }
                    Err(error) => {
                        debug!(%error, "PostgreSQL TLS negotiation failed");
                        return;
                    }
                };
            }
            Startup::GssEnc => {
                let mut no = BytesMut::from(&b"N"[..]);
                if stream.write_all(&mut no).await.is_err() {
                    return;
                }
            }
        }
    };
    if core.config.pg.is_some_and(|p| p.require_tls) && !stream.is_tls() {
        return fatal(
            &mut stream,
            "28000",
            "ringgate requires TLS for PostgreSQL connections (use sslmode=require)",
        )
        .await;
    }
    let key = cancel::CancelKey::register(core.id, n);
    session::run(core, stream, buf, params, sni, key).await;
}

/// Answers `SSLRequest`: `S` and a TLS handshake with the HTTPS certificate (ALPN
/// `postgresql`), or `N` when no certificate is configured.
async fn negotiate_tls(
    core: &Rc<Core>,
    stream: ClientStream,
) -> Result<(ClientStream, Option<String>), Refused> {
    let ClientStream::Plain(mut tcp) = stream else {
        return Err(Refused::Tls("already encrypted".into()));
    };
    let Some(config) = core.tls.borrow().clone() else {
        let (r, _) = tcp.write_all(b"N".to_vec()).await;
        r?;
        return Ok((ClientStream::Plain(tcp), None));
    };
    let (r, _) = tcp.write_all(b"S".to_vec()).await;
    r?;
    let tls = handshake(core, &config, tcp, &[ALPN_POSTGRESQL]).await?;
    let sni = tls.server_name().map(str::to_string);
    Ok((ClientStream::Tls(Box::new(tls)), sni))
}

/// ALPN of the PostgreSQL protocol (PostgreSQL 17's direct TLS requires it).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";
/// ALPN of a `wss://` client that sends one.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS handshake with the HTTPS certificate, offering `alpn`.
async fn handshake(
    core: &Rc<Core>,
    config: &rustls::ServerConfig,
    tcp: TcpStream,
    alpn: &[&[u8]],
) -> Result<TlsStream, Refused> {
    let mut config = config.clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    crate::handshake::accept(core, Arc::new(config), tcp)
        .await
        .map_err(|e| Refused::Tls(e.to_string()))
}

/// A connection that starts with a TLS ClientHello: PostgreSQL 17's direct TLS
/// (`sslnegotiation=direct`, ALPN `postgresql`), or `wss://`. A client that offers ALPN
/// without `postgresql` or `http/1.1` gets rustls's `no_application_protocol` alert; one
/// that offers none may only upgrade to WebSocket (PostgreSQL refuses direct TLS without
/// ALPN too).
async fn direct_tls(
    core: &Rc<Core>,
    tcp: TcpStream,
    buf: &mut BytesMut,
) -> Result<(ClientStream, Option<String>), Refused> {
    let Some(config) = core.tls.borrow().clone() else {
        return Err(Refused::Tls(
            "direct TLS, and no certificate is configured".into(),
        ));
    };
    let tls = handshake(core, &config, tcp, &[ALPN_POSTGRESQL, ALPN_HTTP1]).await?;
    let sni = tls.server_name().map(str::to_string);
    if tls.alpn_protocol() == Some(ALPN_POSTGRESQL) {
        return Ok((ClientStream::Tls(Box::new(tls)), sni));
    }
    let wait = core.config.http.header_read_timeout;
    let mut socket = stream::Socket::Tls(Box::new(tls));
    let read = timeout(wait, socket.read(buf, 1024)).await;
    match read {
        Ok(Ok(_)) if buf[0].is_ascii_uppercase() => websocket(socket, sni, buf, wait).await,
        Ok(Ok(_)) => {
            let mut stream = match socket {
                stream::Socket::Tls(t) => ClientStream::Tls(t),
                stream::Socket::Plain(t) => ClientStream::Plain(t),
            };
            fatal(
                &mut stream,
                "08P01",
                "received direct TLS connection request without ALPN protocol negotiation extension (ALPN postgresql)",
            )
            .await;
            Err(Refused::NoAlpn)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Refused::Timeout),
    }
}

/// Upgrades an HTTP request (`GET /v2`) to WebSocket; answers a bad one with its status.
/// The project may come from the TLS server name, else from the `Host` header.
async fn websocket(
    mut socket: stream::Socket,
    sni: Option<String>,
    buf: &mut BytesMut,
    wait: Duration,
) -> Result<(ClientStream, Option<String>), Refused> {
    let head = async {
        loop {
            match websocket::upgrade(buf) {
                Ok(Some(u)) => return Ok(Ok(u)),
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
            socket.read(buf, 1024).await?;
        }
    };
    let upgrade = match timeout(wait, head).await {
        Ok(Ok(Ok(u))) => u,
        Ok(Ok(Err(e))) => {
            let mut out = BytesMut::from(&e.response()[..]);
            let _ = timeout(Duration::from_secs(1), socket.write(&mut out)).await;
            return Err(Refused::Upgrade(e));
        }
        Ok(Err(e)) => return Err(Refused::Io(e)),
        Err(_) => return Err(Refused::Timeout),
    };
    let mut out = BytesMut::from(&upgrade.response[..]);
    socket.write(&mut out).await?;
    let rest = buf.split();
    let name = sni.or(upgrade.host);
    Ok((
        ClientStream::Ws(Box::new(WsStream::new(socket, rest))),
        name,
    ))
}

/// The first byte the client sent, once it has sent one (left in the socket).
async fn first_byte(tcp: &TcpStream) -> Result<u8, std::io::Error> {
    loop {
        tcp.readable(false).await?;
        match crate::socket_peek::first_byte(tcp) {
            Ok(b) => return Ok(b),
            Err(crate::socket_peek::Peek::Empty) => {}
            Err(crate::socket_peek::Peek::Closed) => {
                return Err(std::io::ErrorKind::UnexpectedEof.into())
            }
            Err(_) => return Err(std::io::Error::last_os_error()),
        }
    }
}

/// Serves a `CancelRequest`: cancels the statement the session with this key runs now;
/// a key of no session here goes to the other instances through Redis.
async fn cancel_request(core: &Core, pid: i32, key: i32) {
    if !matches!(cancel::lookup(pid, key), cancel::Found::Elsewhere) {
        return cancel_here(pid, key).await;
    }
    match &core.redis {
        Some(redis) => {
            if let Err(error) = redis
                .publish(cancel::CHANNEL, &cancel::message(pid, key))
                .await
            {
                debug!(%error, "cancel request could not be published");
            }
        }
        None => debug!(pid, "cancel request for no session"),
    }
}

/// Cancels the statement the session with this key runs now, if it is this process's.
pub async fn cancel_here(pid: i32, key: i32) {
    match cancel::lookup(pid, key) {
        cancel::Found::Running(canceller) => {
            if let Err(error) = canceller.cancel().await {
                debug!(%error, "cancel request could not be forwarded");
            }
        }
        _ => debug!(pid, "cancel request for no running statement"),
    }
}
