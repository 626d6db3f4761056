//! TLS handshakes, paced so that a burst of them cannot stall a core's requests.
//!
//! A handshake's public-key work (key exchange and the certificate's signature, a few
//! hundred microseconds) runs in one piece on the core that accepted the connection. When
//! hundreds of clients connect at once (a restart, a failover, a pool refill), those pieces
//! would run back to back and every request on an established connection would wait behind
//! all of them. So while it serves requests ([`Core::serving_requests`]), a core spends at
//! most [`HANDSHAKE_SHARE`] of its time on that work: a handshake whose ClientHello has
//! arrived waits for its slot (HAProxy runs handshakes as "heavy" tasks, a few per
//! scheduler pass, for the same reason). With no request to serve, handshakes may take
//! [`IDLE_SHARE`] of the core, not all of it: a core cannot be preempted, and hundreds of
//! handshakes that arrived while it was idle would otherwise run back to back, in one turn
//! of its event loop, while the requests that came in meanwhile waited behind all of them.
//! A client that leaves while its handshake waits costs no public-key work.
//!
//! The pace is a virtual clock that each handshake moves on by its cost divided by the
//! share; a handshake waits while the clock is more than [`PACE_BURST`] ahead of real time.
//! Handshakes run back to back move real time on by their cost, so at a share `s` the clock
//! gains `1/s - 1` of each one's cost: about `PACE_BURST / (1/s - 1)` of work (as the pace
//! estimates it) runs before one waits, 2 ms at [`HANDSHAKE_SHARE`] and 4 ms at
//! [`IDLE_SHARE`]; a waiting one sleeps on the timer, so the event loop polls its sockets
//! in between.
//!
//! The handshake is driven here rather than by `monoio_rustls::TlsAcceptor`, which reads
//! the ClientHello and does the public-key work in the same step: rustls's
//! [`Acceptor`] reads the ClientHello first, without crypto.

use std::{cell::Cell, io, sync::Arc, time::Duration};

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

/// The share of a core's time handshakes may take while requests are in flight.
pub const HANDSHAKE_SHARE: f64 = 0.5;
/// The share of a core's time handshakes may take while it serves no request. Below 1, so
/// that handshakes run back to back still stop for the event loop now and then.
pub const IDLE_SHARE: f64 = 2.0 / 3.0;
/// How far the pace's clock may run ahead of real time: a few handshakes at once never
/// wait.
pub const PACE_BURST: Duration = Duration::from_millis(2);
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
/// handshake moves on by its cost divided by the share it runs at ([`HANDSHAKE_SHARE`] while
/// the core serves requests, [`IDLE_SHARE`] while it does not); see the module's text.
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
    share: f64,
    /// How long the handshake waits for it (`None`: it starts at once).
    pub wait: Option<Duration>,
}

impl HandshakePace {
    /// Reserves a slot for one handshake and returns when it may do its public-key work:
    /// at once while the pace's clock is less than [`PACE_BURST`] ahead, else when its
    /// slot comes. `busy` (requests in flight) paces at [`HANDSHAKE_SHARE`], otherwise at
    /// [`IDLE_SHARE`].
    pub async fn enter(&self, busy: bool) -> Slot {
        let slot = self.reserve(Instant::now(), busy);
        if let Some(wait) = slot.wait {
            monoio::time::sleep(wait).await;
        }
        slot
    }

    /// The reservation [`enter`](Self::enter) makes at `now`, and how long it must wait.
    fn reserve(&self, now: Instant, busy: bool) -> Slot {
        let share = if busy { HANDSHAKE_SHARE } else { IDLE_SHARE };
        let reserved = self.estimate.get();
        let slot = self.free_at.get().max(now);
        self.free_at.set(slot + reserved.div_f64(share));
        Slot {
            reserved,
            share,
            wait: slot
                .checked_duration_since(now + PACE_BURST)
                .filter(|w| !w.is_zero()),
        }
    }

    /// Settles `slot` with what the handshake's public-key work really took (zero when it
    /// was not done).
    pub fn spent(&self, slot: Slot, took: Duration) {
        let free_at = self.free_at.get();
        self.free_at.set(if took >= slot.reserved {
            free_at + (took - slot.reserved).div_f64(slot.share)
        } else {
            free_at - (slot.reserved - took).div_f64(slot.share)
        });
        if !took.is_zero() {
            // An exponential average over about eight handshakes.
            let e = self.estimate.get();
            self.estimate.set((e * 7 + took) / 8);
        }
    }
}

/// Runs the server side of a TLS handshake on `stream`, pacing its public-key work with the
/// core's [`HandshakePace`] while the core serves requests.
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

    /// Reserves `n` slots at the same instant; returns how many may start at once and how
    /// far ahead the pace's clock has moved.
    fn reserve_many(pace: &HandshakePace, now: Instant, n: u32, busy: bool) -> (u32, Duration) {
        let at_once = (0..n)
            .filter(|_| pace.reserve(now, busy).wait.is_none())
            .count() as u32;
        (at_once, pace.free_at.get() - now)
    }

    #[test]
    fn an_idle_core_reserves_handshakes_at_its_idle_share() {
        let pace = HandshakePace::default();
        let now = Instant::now();
        // 100 ClientHellos at one instant on an idle core: only those within the burst
        // start at once; the others wait, so requests arriving meanwhile are not stuck
        // behind all 100.
        let (at_once, ahead) = reserve_many(&pace, now, 100, false);
        assert_eq!(ahead, (FIRST_ESTIMATE * 100).div_f64(IDLE_SHARE));
        let spacing = FIRST_ESTIMATE.div_f64(IDLE_SHARE);
        assert_eq!(
            at_once,
            (PACE_BURST.as_nanos() / spacing.as_nanos()) as u32 + 1
        );
    }

    #[test]
    fn handshakes_run_back_to_back_stop_for_the_event_loop_within_a_bounded_run() {
        // Each handshake enters as the previous one's work ends (one turn of the event
        // loop): real time moves on by the work, the clock by the work over the share.
        for (busy, share) in [(true, HANDSHAKE_SHARE), (false, IDLE_SHARE)] {
            let pace = HandshakePace::default();
            let mut now = Instant::now();
            let mut run = Duration::ZERO;
            loop {
                let slot = pace.reserve(now, busy);
                if slot.wait.is_some() {
                    break;
                }
                now += FIRST_ESTIMATE;
                run += FIRST_ESTIMATE;
                pace.spent(slot, FIRST_ESTIMATE);
                assert!(
                    run < Duration::from_millis(10),
                    "never stops (busy: {busy})"
                );
            }
            let bound = PACE_BURST.div_f64(1.0 / share - 1.0);
            assert!(
                run <= bound + FIRST_ESTIMATE,
                "{run:?} of work in one run (busy: {busy})"
            );
            assert!(
                run + FIRST_ESTIMATE >= bound,
                "{run:?}: stopped early (busy: {busy})"
            );
        }
    }

    #[test]
    fn a_busy_core_reserves_handshakes_at_its_share() {
        let pace = HandshakePace::default();
        let now = Instant::now();
        let (at_once, ahead) = reserve_many(&pace, now, 100, true);
        assert_eq!(ahead, (FIRST_ESTIMATE * 100).div_f64(HANDSHAKE_SHARE));
        assert!(at_once < 10, "{at_once} handshakes started at once");
    }

    #[test]
    fn a_handshake_not_done_gives_its_slot_back() {
        let pace = HandshakePace::default();
        let now = Instant::now();
        let (_, ahead) = reserve_many(&pace, now, 20, true);
        let slot = pace.reserve(now, true);
        pace.spent(slot, Duration::ZERO);
        assert_eq!(pace.free_at.get() - now, ahead);
        assert_eq!(pace.estimate.get(), FIRST_ESTIMATE);
    }

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

    #[monoio::test(timer_enabled = true)]
    async fn a_busy_core_spreads_handshakes_at_its_share() {
        let pace = HandshakePace::default();
        let start = Instant::now();
        // Each handshake reports 1 ms of work: at a 50% share, 20 of them take about
        // 40 ms of wall time (less the burst), not 0.
        let mut waited = 0;
        for _ in 0..20 {
            let slot = pace.enter(true).await;
            waited += usize::from(slot.wait.is_some());
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
