//! TLS handshakes, paced so that a burst of them cannot stall a core's requests.
//!
//! A handshake's public-key work (key exchange and the certificate's signature, a few
//! hundred microseconds) runs in one piece on the core that accepted the connection. When
//! hundreds of clients connect at once (a restart, a failover, a pool refill), those pieces
//! would run back to back and every request on an established connection would wait behind
//! all of them. So while it serves requests ([`Core::serving_requests`]), a core spends at
//! most [`HANDSHAKE_SHARE`] of its time on that work: a handshake whose ClientHello has
//! arrived waits for its slot (HAProxy runs handshakes as "heavy" tasks, a few per
//! scheduler pass, for the same reason). With no request to serve, handshakes run at once,
//! at full speed.
//!
//! The handshake is driven here rather than by `monoio_rustls::TlsAcceptor`, which reads
//! the ClientHello and does the public-key work in the same step: rustls's
//! [`Acceptor`](rustls::server::Acceptor) reads the ClientHello first, without crypto.

use std::{cell::Cell, io, sync::Arc, time::Duration};

use monoio::{
    io::{AsyncReadRent, AsyncWriteRentExt},
    net::TcpStream,
    time::Instant,
};
use monoio_rustls::ServerTlsStream;
use rustls::{server::Acceptor, ServerConfig, ServerConnection};

use crate::core::Core;

/// The share of a core's time handshakes may take while requests are in flight.
pub const HANDSHAKE_SHARE: f64 = 0.5;
/// Handshake work that may run ahead of the pace (as wall time at [`HANDSHAKE_SHARE`]):
/// a few handshakes at once never wait.
const PACE_BURST: Duration = Duration::from_millis(2);
/// The public-key work of one handshake before any was measured.
const FIRST_ESTIMATE: Duration = Duration::from_micros(200);
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

/// One core's pace for handshakes' public-key work: a virtual clock (`free_at`) that each
/// handshake moves on by its cost divided by [`HANDSHAKE_SHARE`].
#[derive(Debug)]
pub struct HandshakePace {
    free_at: Cell<Instant>,
    /// Running estimate of one handshake's public-key work, reserved at entry.
    estimate: Cell<Duration>,
}

impl Default for HandshakePace {
    fn default() -> Self {
        Self {
            free_at: Cell::new(Instant::now()),
            estimate: Cell::new(FIRST_ESTIMATE),
        }
    }
}

/// A handshake's reserved slot; [`HandshakePace::spent`] settles it with the real cost.
#[derive(Debug)]
#[must_use]
pub struct Slot {
    reserved: Duration,
    /// Whether the handshake waited for it.
    pub waited: bool,
}

impl HandshakePace {
    /// Reserves a slot for one handshake and returns when it may do its public-key work:
    /// at once when `busy` is false (no request in flight) or the pace has room, else when
    /// its slot comes.
    pub async fn enter(&self, busy: bool) -> Slot {
        let now = Instant::now();
        let reserved = self.estimate.get();
        let slot = self.free_at.get().max(now);
        let mut free_at = slot + reserved.div_f64(HANDSHAKE_SHARE);
        if !busy {
            // Work done while nothing else waited harms nobody: no debt beyond the burst.
            free_at = free_at.min(now + PACE_BURST);
        }
        self.free_at.set(free_at);
        let wait = slot
            .checked_duration_since(now + PACE_BURST)
            .filter(|_| busy);
        if let Some(wait) = wait {
            monoio::time::sleep(wait).await;
        }
        Slot {
            reserved,
            waited: wait.is_some(),
        }
    }

    /// Settles `slot` with what the handshake's public-key work really took.
    pub fn spent(&self, slot: Slot, took: Duration) {
        let free_at = self.free_at.get();
        self.free_at.set(if took >= slot.reserved {
            free_at + (took - slot.reserved).div_f64(HANDSHAKE_SHARE)
        } else {
            free_at - (slot.reserved - took).div_f64(HANDSHAKE_SHARE)
        });
        // An exponential average over about eight handshakes.
        let e = self.estimate.get();
        self.estimate.set((e * 7 + took) / 8);
    }
}

/// Runs the server side of a TLS handshake on `stream`, pacing its public-key work with the
/// core's [`HandshakePace`] while the core serves requests.
pub async fn accept(
    core: &Core,
    config: Arc<ServerConfig>,
    mut stream: TcpStream,
) -> Result<ServerTlsStream<TcpStream>, HandshakeError> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    // The ClientHello: no crypto yet.
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        buf = read_some(&mut stream, buf).await?;
        feed(&buf, |rd| acceptor.read_tls(rd))?;
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err((error, mut alert)) => {
                let _ = alert.write(&mut out);
                let _ = stream.write_all(out).await;
                return Err(error.into());
            }
        }
    };
    let pace = &core.handshakes;
    let slot = pace.enter(core.serving_requests()).await;
    if slot.waited {
        core.metrics().tls_handshake_paced();
    }
    let started = Instant::now();
    let conn = accepted.into_connection(config);
    pace.spent(slot, started.elapsed());
    let mut conn = match conn {
        Ok(conn) => conn,
        Err((error, mut alert)) => {
            let _ = alert.write(&mut out);
            let _ = stream.write_all(out).await;
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
    Ok(ServerTlsStream::new(stream, conn))
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

    #[monoio::test(timer_enabled = true)]
    async fn an_idle_core_never_makes_handshakes_wait() {
        let pace = HandshakePace::default();
        // 200 handshakes of 300 µs would owe 120 ms at a 50% share; idle, none waits and
        // no more than the burst is owed.
        for _ in 0..200 {
            let slot = pace.enter(false).await;
            assert!(!slot.waited);
            pace.spent(slot, Duration::from_micros(300));
        }
        assert!(pace.free_at.get() <= Instant::now() + PACE_BURST + Duration::from_millis(1));
    }

    #[monoio::test(timer_enabled = true)]
    async fn a_busy_core_spreads_handshakes_at_its_share() {
        let pace = HandshakePace::default();
        let start = Instant::now();
        // Each handshake reports 1 ms of work: at a 50% share, 20 of them take about
        // 40 ms of wall time (less the burst), not 0.
        let mut waited = 0;
        for _ in 0..20 {
            let slot = pace.enter(true).await;
            waited += usize::from(slot.waited);
            pace.spent(slot, Duration::from_millis(1));
        }
        let took = start.elapsed();
        assert!(waited > 0);
        let floor = Duration::from_millis(20).div_f64(HANDSHAKE_SHARE) - PACE_BURST * 2;
        assert!(took >= floor, "20 handshakes of 1 ms passed in {took:?}");
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

    #[monoio::test(timer_enabled = true)]
    async fn the_estimate_follows_the_measured_cost() {
        let pace = HandshakePace::default();
        for _ in 0..40 {
            let slot = pace.enter(false).await;
            pace.spent(slot, Duration::from_micros(80));
        }
        let e = pace.estimate.get();
        assert!(e < Duration::from_micros(90), "estimate {e:?}");
    }
}
