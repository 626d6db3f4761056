//! Listeners and the per-core event loop: accept, hand connections to [`conn::serve`],
//! apply control messages (drain, TLS reload), and drain.

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    rc::Rc,
    time::Duration,
};

use futures_core::Stream;
use monoio::{
    io::AsyncWriteRentExt,
    net::{TcpListener, TcpStream},
    time::{sleep, timeout, Instant},
};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::{
    conn,
    control::Control,
    per_core::{ConnectionGuard, Core, Idle},
    rt::Driver,
};

/// Listen backlog per socket.
const BACKLOG: i32 = 4096;

/// The listening sockets of one core.
#[derive(Debug, Default)]
pub struct CoreListeners {
    /// Plain HTTP.
    pub plain: Option<StdListener>,
    /// HTTPS.
    pub tls: Option<StdListener>,
    /// PostgreSQL protocol (see [`crate::wire`]).
    pub pg: Option<StdListener>,
}

/// How a core's drain ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreReport {
    /// Requests still in flight when the drain timeout passed.
    pub cut_requests: usize,
    /// Connections still open then.
    pub cut_connections: usize,
}

/// Binds `n` SO_REUSEPORT sockets to `addr`; with port 0, all share the first's port.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> std::io::Result<Vec<StdListener>> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let listener: StdListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Runs one core until it is told to drain and has drained (or the drain timeout passed).
pub async fn run_core(
    core: Rc<Core>,
    listeners: CoreListeners,
    control: flume::Receiver<Control>,
) -> CoreReport {
    monoio::spawn(core.deadlines.clone().run());
    if let Some(parked) = core.parked.clone() {
        let core = core.clone();
        monoio::spawn(async move {
            let resume = |stream, idle: Idle| {
                spawn_plain(&core, stream, idle.peer, idle.guard, Some(idle.done_at))
            };
            parked.run(&core.drain, &core.deadlines, resume).await;
        });
    }
    if let Some(l) = listeners.plain {
        monoio::spawn(accept_loop(core.clone(), l, false));
    }
    if let Some(l) = listeners.tls {
        monoio::spawn(accept_loop(core.clone(), l, true));
    }
    if let Some(l) = listeners.pg {
        monoio::spawn(crate::wire::accept_loop(core.clone(), l));
    }
    if core.db.is_some() {
        monoio::spawn(pool_upkeep(core.clone()));
        monoio::spawn(crate::sql::handoff::serve(core.clone()));
    }
    if !core.config.proxy.routes.is_empty() {
        monoio::spawn(crate::proxy::health_checks(core.clone()));
        monoio::spawn(crate::proxy::idle_sweep(core.clone()));
    }
    if core.projects.is_some() {
        monoio::spawn(project_invalidations(core.clone()));
    }
    // A closed channel (the main thread is gone) drains too.
    loop {
        match control.recv_async().await {
            Ok(Control::Tls(config)) => {
                *core.tls.borrow_mut() = Some(config);
                debug!(core = core.id, "TLS config swapped");
            }
            Ok(Control::Topology(t)) => {
                if let Some(db) = &core.db {
                    db.set_topology(t);
                }
            }
            Ok(Control::Workers(set)) => core.upstreams.set_workers(set),
            Ok(Control::Cancel { pid, key }) => {
                monoio::spawn(crate::wire::cancel_here(pid, key));
            }
            Ok(Control::Drain) | Err(_) => break,
        }
    }
    core.drain.start();
    let deadline = Instant::now() + core.config.drain_timeout;
    while core.connections() > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    let report = CoreReport {
        cut_requests: core.in_flight(),
        cut_connections: core.connections(),
    };
    core.metrics().requests_cut(report.cut_requests as u64);
    // Requests other cores handed here are answered before the pools close.
    crate::sql::handoff::close(&core, deadline).await;
    if let Some(db) = &core.db {
        db.close_all();
    }
    report
}

/// How often the project listener checks that it still listens to the leader.
const LEADER_CHECK: Duration = Duration::from_millis(200);

/// Listens for `NOTIFY ringgate_projects` on the leader and drops the named project from
/// this core's cache; reconnects (clearing the cache, since changes may have been missed)
/// when the connection ends.
async fn project_invalidations(core: Rc<Core>) {
    let (Some(db), Some(projects)) = (core.db.clone(), core.projects.as_ref()) else {
        return;
    };
    let mut listened = false;
    while !core.drain.is_draining() {
        // The leader (and its term) listened to: a new one moves the LISTEN at once, in
        // the failover, not when a frozen old leader wakes up.
        let term = |t: &ringgate_discovery::Topology| {
            (
                t.leader.as_ref().map(|l| l.name.clone()),
                t.lease_generation,
            )
        };
        let listening_to = term(&db.topology());
        match db.listen(projects.control()).await {
            Ok((client, mut notifications)) => match client
                .batch_execute("LISTEN ringgate_projects")
                .await
            {
                Ok(()) => {
                    // After a gap in listening, changes may have been missed. (Before the
                    // first LISTEN the cache was only ever bound by its TTL.)
                    if listened {
                        projects.clear();
                    }
                    listened = true;
                    debug!(core = core.id, "listening for project changes");
                    loop {
                        let next = std::future::poll_fn(|cx| {
                            std::pin::Pin::new(&mut notifications).poll_next(cx)
                        });
                        monoio::select! {
                            n = next => match n {
                                Some(project) => projects.invalidate(&project),
                                None => break,
                            },
                            _ = sleep(LEADER_CHECK) => {
                                if term(&db.topology()) != listening_to {
                                    info!(core = core.id, "the leader changed; moving the LISTEN for project changes");
                                    break;
                                }
                            }
                            _ = core.drain.signaled() => return,
                        }
                    }
                    warn!(
                        core = core.id,
                        "project change notifications lost; reconnecting"
                    );
                }
                Err(error) => warn!(core = core.id, %error, "cannot LISTEN for project changes"),
            },
            Err(error) => {
                debug!(core = core.id, %error, "cannot connect to listen for project changes")
            }
        }
        monoio::select! {
            _ = sleep(Duration::from_secs(1)) => {}
            _ = core.drain.signaled() => return,
        }
    }
}

/// Once a second: expire idle pools, trim idle connections (all those requests on other
/// cores wait for), publish pool metrics. In between, at once when a request on another
/// core starts waiting for a permit: give back the idle connections it waits for.
async fn pool_upkeep(core: Rc<Core>) {
    let Some(db) = core.db.clone() else { return };
    while !core.drain.is_draining() {
        db.maintain();
        core.metrics().set_pool(&db.stats());
        core.metrics().set_pool_nodes(db.connections_by_node());
        let next = monoio::time::Instant::now() + Duration::from_secs(1);
        loop {
            monoio::select! {
                _ = monoio::time::sleep_until(next) => break,
                _ = db.wanted() => db.give_back_wanted(),
                _ = core.drain.signaled() => break,
            }
        }
    }
}

/// Connections taken from the backlog without waiting, after each one the ring delivers.
///
/// The ring completes one accept per turn of the event loop, and under load a turn can
/// take milliseconds: a burst of new connections (clients starting or reconnecting after a
/// failover) would otherwise wait in the backlog for hundreds of turns while their first
/// requests are already sent. (nginx's `multi_accept`, HAProxy's `tune.maxaccept`.)
const ACCEPT_BURST: usize = 64;

async fn accept_loop(core: Rc<Core>, listener: StdListener, tls: bool) {
    // A second handle on the same socket for the non-blocking accepts of a burst.
    let backlog = match listener.try_clone() {
        Ok(b) => b,
        Err(error) => {
            warn!(core = core.id, %error, "cannot duplicate listener");
            return;
        }
    };
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(error) => {
            warn!(core = core.id, %error, "cannot register listener");
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
            Ok((stream, peer)) => admit(&core, stream, peer, tls),
            Err(error) => {
                // Out of file descriptors or similar: back off instead of spinning.
                warn!(core = core.id, %error, "accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        accept_burst(&core, &backlog, tls);
    }
    drop(listener);
    info!(core = core.id, tls, "listener closed");
}

/// Takes up to [`ACCEPT_BURST`] connections already waiting in the backlog, without
/// waiting for more.
fn accept_burst(core: &Rc<Core>, backlog: &StdListener, tls: bool) {
    for _ in 0..ACCEPT_BURST {
        let (stream, peer) = match backlog.accept() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(error) => {
                warn!(core = core.id, %error, "accept failed");
                return;
            }
        };
        // The ring's accepts yield blocking sockets, epoll's non-blocking ones; match them.
        let registered = stream
            .set_nonblocking(core.driver == Driver::Epoll)
            .and_then(|()| TcpStream::from_std(stream));
        match registered {
            Ok(stream) => {
                core.metrics().connection_accepted_in_burst();
                admit(core, stream, peer, tls);
            }
            Err(error) => warn!(core = core.id, %error, "cannot register connection"),
        }
    }
}

/// Serves an accepted connection on its own task, or refuses it when the core is full.
fn admit(core: &Rc<Core>, stream: TcpStream, peer: SocketAddr, tls: bool) {
    if core.connections() >= core.config.http.max_connections_per_core {
        core.metrics().connection_rejected();
        monoio::spawn(refuse_busy(stream));
        return;
    }
    let _ = stream.set_nodelay(true);
    let guard = core.track_connection();
    if !tls {
        spawn_plain(core, stream, peer, guard, None);
        return;
    }
    let span = info_span!("conn", core = core.id, %peer, tls);
    // The descriptor stays the connection's until its task ends.
    let client = Some(crate::http::ClientSocket(std::os::fd::AsRawFd::as_raw_fd(
        &stream,
    )));
    // A task of its own type, so that a plain connection's task is not as large as one
    // that also holds a TLS handshake's state.
    monoio::spawn(serve_tls(core.clone(), stream, peer, client, guard).instrument(span));
}

/// Serves a plain connection on its own task: a new one, or (`resumed`, with when its last
/// response was written) one the parked set saw turn readable.
fn spawn_plain(
    core: &Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
    resumed: Option<Instant>,
) {
    let span = info_span!("conn", core = core.id, %peer, tls = false);
    // The descriptor stays the connection's until its task ends.
    let client = Some(crate::http::ClientSocket(std::os::fd::AsRawFd::as_raw_fd(
        &stream,
    )));
    monoio::spawn(
        conn::serve(
            core.clone(),
            stream,
            Some(peer),
            false,
            client,
            guard,
            resumed,
        )
        .instrument(span),
    );
}

/// Runs the TLS handshake, then serves the connection (not an `async fn`, for the reason
/// given at [`conn::serve`]).
fn serve_tls(
    core: Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    client: Option<crate::http::ClientSocket>,
    guard: ConnectionGuard,
) -> impl std::future::Future<Output = ()> {
    // Boxed: the handshake's state is needed only until it ends, and inline it would stay
    // part of the connection task's size for the connection's whole life.
    let config = core.tls.borrow().clone();
    let handshake = config.map(|config| {
        let core = core.clone();
        Box::pin(async move { crate::handshake::accept(&core, config, stream).await })
    });
    async move {
        let Some(handshake) = handshake else {
            return;
        };
        match timeout(core.config.http.header_read_timeout, handshake).await {
            Ok(Ok(tls)) => conn::serve(core, tls, Some(peer), true, client, guard, None).await,
            Ok(Err(error)) => {
                core.metrics().tls_handshake_failed();
                debug!(%error, "TLS handshake failed");
            }
            Err(_) => {
                core.metrics().tls_handshake_failed();
                debug!("TLS handshake timed out");
            }
        }
    }
}

/// Tells a client over the connection limit to come back later, and closes.
async fn refuse_busy(mut stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 69\r\n\r\n{\"code\":\"too_many_connections\",\"message\":\"connection limit reached\"}\n";
    let _ = timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
}
