//! TLS handshakes, paced so that a burst of them cannot stall a core's requests.
//!
//! A handshake's public-key work (key exchange and the certificate's signature, a few
//! hundred microseconds) runs in one piece on the core that accepted the connection. When
//! hundreds of clients connect at once (a restart, a failover, a pool refill), those pieces
//! would run back to back and every request on an established connection would wait behind
//! all of them. So while it serves requests ([`Core::serving_requests`]), a core spends at
//! most [`HANDSHAKE_SHARE`](pace::HANDSHAKE_SHARE) of its time on that work: a handshake whose ClientHello has
//! arrived waits for its slot (HAProxy runs handshakes as "heavy" tasks, a few per
//! scheduler pass, for the same reason). With no request to serve, handshakes may take
//! [`IDLE_SHARE`](pace::IDLE_SHARE) of the core, not all of it: a core cannot be preempted, and hundreds of
//! handshakes that arrived while it was idle would otherwise run back to back, in one turn
//! of its event loop, while the requests that came in meanwhile waited behind all of them.
//! A client that leaves while its handshake waits costs no public-key work.
//!
//! The pace is a virtual clock that each handshake moves on by its cost divided by the
//! share; a handshake waits while the clock is more than [`PACE_BURST`](pace::PACE_BURST) ahead of real time.
//! Handshakes run back to back move real time on by their cost, so at a share `s` the clock
//! gains `1/s - 1` of each one's cost: about `PACE_BURST / (1/s - 1)` of work (as the pace
//! estimates it) runs before one waits, 2 ms at [`HANDSHAKE_SHARE`](pace::HANDSHAKE_SHARE) and 4 ms at
//! [`IDLE_SHARE`](pace::IDLE_SHARE); a waiting one sleeps on the timer, so the event loop polls its sockets
//! in between.
//!
//! The handshake is driven here rather than by `monoio_rustls::TlsAcceptor`, which reads
//! the ClientHello and does the public-key work in the same step: rustls's
//! [`Acceptor`] reads the ClientHello first, without crypto.

pub mod pace;

use std::{io, sync::Arc, time::Duration};

use monoio::{
    io::{AsyncReadRent, AsyncWriteRentExt},
    net::TcpStream,
    time::Instant,
};
use rustls::{server::Acceptor, ServerConfig, ServerConnection};

use crate::{
    per_core::Core,
    socket_peek::{peek, Peek},
    tls_stream::TlsStream,
};

/// Bytes read from the socket at a time during the handshake.
const READ_CHUNK: usize = 4096;

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or writing the socket failed.
    #[error("TLS handshake: {0}")]
    Io(#[from] io::Error),
    /// The peer's messages were refused (an alert was sent when there was one to send).
    #[error("TLS handshake: {0}")]
    Tls(#[from] rustls::Error),
    /// The peer closed the connection before the handshake finished.
    #[error("TLS handshake: the peer closed the connection")]
    Eof,
}

/// Runs the server side of a TLS handshake on `stream`, pacing its public-key work with the
/// core's [`HandshakePace`](pace::HandshakePace) while the core serves requests.
pub async fn accept(
    core: &Core,
    config: Arc<ServerConfig>,
    mut stream: TcpStream,
) -> Result<TlsStream, HandshakeError> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut out = Vec::new();
    // The ClientHello: no crypto yet.
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        buf = read_some(&mut stream, buf).await?;
        feed(&buf, |rd| acceptor.read_tls(rd))?;
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err((error, alert)) => {
                send_alert(&mut stream, alert).await;
                return Err(error.into());
            }
        }
    };
    let pace = &core.handshakes;
    let slot = pace.enter(core.serving_requests()).await;
    if slot.wait.is_some() {
        core.metrics().tls_handshake_paced();
        if peer_left(&stream) {
            core.metrics().tls_handshake_abandoned();
            pace.spent(slot, Duration::ZERO);
            return Err(HandshakeError::Eof);
        }
    }
    let started = Instant::now();
    // The certificate this handshake serves, for channel binding (`tls-server-end-point`).
    let certified = config.cert_resolver.resolve(accepted.client_hello());
    let conn = accepted.into_connection(config);
    pace.spent(slot, started.elapsed());
    let mut conn = match conn {
        Ok(conn) => conn,
        Err((error, alert)) => {
            send_alert(&mut stream, alert).await;
            return Err(error.into());
        }
    };
    // The rest of the handshake: send our flight, read the client's, until done.
    loop {
        out = flush(&mut conn, &mut stream, out).await?;
        if !conn.is_handshaking() {
            break;
        }
        buf = read_some(&mut stream, buf).await?;
        feed(&buf, |rd| conn.read_tls(rd))?;
        if let Err(error) = conn.process_new_packets() {
            // rustls has queued the alert that tells the client why.
            let _ = flush(&mut conn, &mut stream, out).await;
            return Err(error.into());
        }
    }
    Ok(TlsStream::new(
        stream,
        conn,
        core.buffers.clone(),
        certified,
    ))
}

/// Tells the client why its handshake was refused (best effort: it is closed next anyway).
async fn send_alert(stream: &mut TcpStream, mut alert: rustls::server::AcceptedAlert) {
    let mut out = Vec::new();
    let _ = alert.write(&mut out);
    let _ = stream.write_all(out).await;
}

/// Whether the client closed or reset the connection (it gave up while its handshake
/// waited). A client still there has sent nothing since its ClientHello.
fn peer_left(stream: &impl std::os::fd::AsRawFd) -> bool {
    matches!(peek(stream), Peek::Closed | Peek::Failed)
}

/// Reads what the socket has (at least one byte) into `buf`, resized to what was read.
async fn read_some(stream: &mut TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>, HandshakeError> {
    buf.clear();
    buf.reserve(READ_CHUNK);
    let (res, buf) = stream.read(buf).await;
    match res? {
        0 => Err(HandshakeError::Eof),
        _ => Ok(buf),
    }
}

/// Hands all of `bytes` to rustls through `read_tls`; rustls taking nothing (its buffer
/// full) ends the handshake instead of looping.
fn feed(
    mut bytes: &[u8],
    mut read_tls: impl FnMut(&mut dyn io::Read) -> io::Result<usize>,
) -> Result<(), HandshakeError> {
    while !bytes.is_empty() {
        if read_tls(&mut bytes)? == 0 {
            return Err(io::Error::other("TLS buffer full during the handshake").into());
        }
    }
    Ok(())
}

/// Writes everything rustls has queued for the client.
async fn flush(
    conn: &mut ServerConnection,
    stream: &mut TcpStream,
    mut out: Vec<u8>,
) -> Result<Vec<u8>, HandshakeError> {
    while conn.wants_write() {
        out.clear();
        conn.write_tls(&mut out)?;
        let (res, back) = stream.write_all(out).await;
        res?;
        out = back;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_closed_or_reset_has_left_and_a_silent_one_has_not() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let waiting = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!peer_left(&server));
        drop(waiting);
        std::thread::sleep(Duration::from_millis(20));
        assert!(peer_left(&server));
        let reset = socket2::Socket::from(TcpStream::connect(addr).unwrap());
        let (server, _) = listener.accept().unwrap();
        reset.set_linger(Some(Duration::ZERO)).unwrap();
        drop(reset);
        std::thread::sleep(Duration::from_millis(20));
        assert!(peer_left(&server));
    }

    #[test]
    fn feeding_rustls_takes_every_byte_or_fails_when_it_takes_none() {
        let mut taken = Vec::new();
        feed(b"0123456789", |rd| {
            let mut three = [0u8; 3];
            let n = rd.read(&mut three)?;
            taken.extend_from_slice(&three[..n]);
            Ok(n)
        })
        .unwrap();
        assert_eq!(taken, b"0123456789");
        assert!(matches!(feed(b"x", |_| Ok(0)), Err(HandshakeError::Io(_))));
    }
}
