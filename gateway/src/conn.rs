//! Serves HTTP/1.1 on one client connection (plain or TLS): keep-alive, limits, timeouts,
//! and the drain rules.

mod forward;

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use http::Method;
use monoio::{
    buf::IoBufMut,
    io::{AsyncWriteRent, AsyncWriteRentExt, Canceller},
    time::{Duration, Instant},
};
use tracing::{debug, debug_span, Instrument};

use crate::{
    error::RequestError,
    http::{parse_head, ChunkedDecoder, ParsedHead, RequestFraming, Response},
    http::{ClientSocket, Request},
    metrics::RouteLabel,
    per_core::{ConnectionGuard, Core},
    router,
    transport::Transport,
    wire::{stream::IntoSocket, websocket},
};

/// Bytes reserved in the read buffer before each read.
const READ_CHUNK: usize = crate::io_buf::READ_BUF;
/// How long and how much a connection is read and discarded after an error response,
/// so the client sees the response instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// How long after a response a busy connection keeps a read with its buffer armed for the
/// next request, before it gives the buffer back and waits for readiness (see
/// [`Conn::fill`]). Longer than the gaps of a connection in steady use (a client pool
/// under load), short enough that the buffers held are those of the connections that
/// were busy in the last moment.
const READ_GRACE: Duration = Duration::from_millis(100);
/// Most connections of one core in a grace at once (so at most this many buffers, 512 KiB,
/// are held by it): beyond, a busy connection waits for readiness as an idle one does. A
/// thousand busy connections would otherwise each hold a buffer between requests, and
/// cycle through 8 MiB of them instead of a few warm pooled ones.
const GRACE_CONNECTIONS: usize = 64;

/// A connection's place among its core's [`GRACE_CONNECTIONS`], given back when dropped.
struct GracePlace(Rc<Core>);

impl GracePlace {
    /// A place, when one of the core's is free.
    fn take(core: &Rc<Core>) -> Option<Self> {
        let n = core.in_grace.get();
        (n < GRACE_CONNECTIONS).then(|| {
            core.in_grace.set(n + 1);
            Self(core.clone())
        })
    }
}

impl Drop for GracePlace {
    fn drop(&mut self) {
        self.0.in_grace.set(self.0.in_grace.get() - 1);
    }
}

/// Why reading stopped.
enum Stop {
    /// The client sent something we refuse: answer and close.
    Refuse(RequestError),
    /// Close without a response: clean end, idle timeout, drain, or an I/O error.
    Close,
    /// Idle after a response: park the connection until it turns readable or this
    /// keep-alive deadline passes (see [`crate::parked`]).
    Park(Instant),
}

/// What one read brought.
enum Fill {
    Data,
    Eof,
    Timeout,
    Drain,
    Error,
    /// Nothing buffered and the connection may park: the wait is the parked set's.
    Park,
}

/// What a read that completed brought.
fn filled(res: std::io::Result<usize>) -> Fill {
    match res {
        Ok(0) => Fill::Eof,
        Ok(_) => Fill::Data,
        Err(_) => Fill::Error,
    }
}

/// Serves requests on `io` until the client closes, a limit is hit, the core drains or the
/// connection parks while idle. `resumed`: its task again after parking (readable now),
/// with when its last response was written. `guard` counts it among the core's
/// connections, parked or not.
///
/// Not an `async fn`: one keeps its arguments in the future beside the locals they are
/// moved into (rust-lang/rust#62958), so every connection's task would hold its stream
/// twice. The `async move` block below uses what it captured in place.
pub fn serve<IO: Transport + IntoSocket + 'static>(
    core: Rc<Core>,
    io: IO,
    peer: Option<std::net::SocketAddr>,
    tls: bool,
    client: Option<ClientSocket>,
    guard: ConnectionGuard,
    resumed: Option<Instant>,
) -> impl std::future::Future<Output = ()> {
    let parkable = !tls && core.parked.is_some();
    let mut conn = Conn {
        core,
        buf: BytesMut::new(),
        lent: false,
        first: resumed.is_none(),
        busy: false,
        parkable,
        woken: resumed.is_some(),
        done_at: resumed.unwrap_or_else(Instant::now),
        peer,
        tls,
        guard: Some(guard),
    };
    // In an `Option` so that a WebSocket upgrade can take the stream without moving a
    // captured variable out (which costs every connection's task a few hundred bytes).
    let mut io = Some(io);
    async move {
        while let Some(stream) = io.as_mut() {
            let head = match conn.read_head(stream).await {
                Ok(head) => head,
                Err(Stop::Refuse(e)) => return Box::pin(conn.refuse(stream, e)).await,
                Err(Stop::Close) => return,
                Err(Stop::Park(until)) => {
                    if let Some(stream) = io.take() {
                        conn.park(stream, until);
                    }
                    return;
                }
            };
            if conn.is_websocket(&head) {
                // A PostgreSQL session over WebSocket from here on, as a task of its own:
                // awaited here, it would take room in every connection's task.
                if let Some(stream) = io.take() {
                    conn.hand_over(stream, &head);
                }
                return;
            }
            // Boxed: a request's state (head, body, routing or proxying, response) lives
            // only while it is served; inline, its size would be part of every idle
            // connection's task for the connection's whole life.
            if !Box::pin(conn.respond(stream, head, client)).await {
                return;
            }
            conn.done_at = Instant::now();
        }
    }
}

/// Per-connection state. The read buffer is borrowed from the core's pool while bytes
/// are buffered and given back when nothing is (see [`Conn::fill`]).
struct Conn {
    core: Rc<Core>,
    buf: BytesMut,
    /// Whether `buf` counts as lent by the pool (it may have been lost to a cancelled read).
    lent: bool,
    first: bool,
    /// Whether the next request is awaited with a read armed (buffer attached) for
    /// [`READ_GRACE`] after the last response, rather than with the buffer-free wait.
    busy: bool,
    /// Whether the connection parks when idle after a response (plain, and the core has
    /// a parked set), instead of waiting for readiness in its task.
    parkable: bool,
    /// Resumed from the parked set, which saw it readable: the next wait is a read.
    woken: bool,
    /// When the last response was written.
    done_at: Instant,
    peer: Option<std::net::SocketAddr>,
    tls: bool,
    /// The connection's place in the core's count; goes with it when it parks.
    guard: Option<ConnectionGuard>,
}

// === impl Conn ===

impl Conn {
    /// Whether `head` asks to upgrade to the PostgreSQL front end's WebSocket (`GET /v2`
    /// with `Upgrade: websocket`, the path Neon's driver opens), which this listener
    /// serves when the PostgreSQL front end is on.
    fn is_websocket(&self, head: &ParsedHead) -> bool {
        self.core.config.pg.is_some()
            && head.parts.uri.path() == websocket::PATH
            && head.parts.headers.contains_key(http::header::UPGRADE)
    }
}

impl Conn {
    /// Parks the idle connection in the core's set (its task then ends); closes it when it
    /// cannot park (the core is draining).
    fn park<IO: Transport>(&mut self, io: IO, until: Instant) {
        self.give_back();
        let (Some(parked), Some(stream), Some(peer), Some(guard)) = (
            &self.core.parked,
            io.into_tcp(),
            self.peer,
            self.guard.take(),
        ) else {
            return;
        };
        // Refused (a drain began): the connection closes here, as an idle one does then.
        let idle = crate::per_core::Idle {
            peer,
            guard,
            done_at: self.done_at,
        };
        let _ = parked.park(stream, idle, until);
    }

    /// Hands the connection to a task of its own that answers the upgrade (`101`, or the
    /// status refusing it) and runs the PostgreSQL session on it; what the client sent
    /// after its request goes with it. The task counts as a connection of the core (this
    /// one ends here), so limits and the drain see it.
    fn hand_over<IO: Transport + IntoSocket + 'static>(&mut self, mut io: IO, head: &ParsedHead) {
        let upgrade = websocket::upgrade_of(head);
        let rest = BytesMut::from(&self.buf[..]);
        self.buf.clear();
        self.give_back();
        let core = self.core.clone();
        monoio::spawn(async move {
            let _connection = core.track_connection();
            let answer = match &upgrade {
                Ok(u) => u.response.clone(),
                Err(e) => e.response(),
            };
            let (written, _) = io.write_all(answer).await;
            let Ok(upgrade) = upgrade else {
                core.metrics()
                    .wire
                    .count(crate::metrics::wire::WireEvent::Refused);
                return;
            };
            if written.is_err() {
                return;
            }
            let socket = io.into_socket();
            let name = socket.server_name().map(str::to_string).or(upgrade.host);
            crate::wire::serve_upgraded(core, socket, name, rest).await;
        });
    }

    /// Serves the request whose head was just read; `false` when the connection is done.
    async fn respond<IO: Transport>(
        &mut self,
        io: &mut IO,
        head: ParsedHead,
        client: Option<ClientSocket>,
    ) -> bool {
        self.first = false;
        // The read buffer stays lent while the request is served: the head parsed from it
        // shares its memory, which the pool gets back whole, without a copy or a new
        // allocation, once the response is written and the head dropped (`fill` gives it
        // back before waiting for the next request).
        let started = Instant::now();
        let _request = self.core.track_request(started);
        let request_id = self.core.request_ids.for_request(&head.parts.headers);
        // A second handle on the core (an `Rc`: no count shared across cores) lets the
        // route be borrowed from its config while `self` is borrowed mutably below.
        let core = self.core.clone();
        let path = head.parts.uri.path();
        let target = router::dispatch(&core.config.proxy.routes, path);
        if let router::Target::Proxy(route) = target {
            let keep_alive = head.keep_alive && !self.core.drain.is_draining();
            let span = debug_span!("proxy", method = %head.parts.method, path = head.parts.uri.path(), group = %route.group);
            // Boxed: a proxied exchange's state (upstream connection, both framings) is
            // kilobytes that the gateway's own routes would otherwise carry too.
            let done = Box::pin(
                self.proxy(io, &head, route, request_id.as_bytes(), keep_alive)
                    .instrument(span),
            )
            .await;
            self.core
                .metrics()
                .observe(RouteLabel::Proxy, done.status, started.elapsed());
            if !done.keep_alive {
                let _ = io.shutdown().await;
                return false;
            }
            return true;
        }
        let body = match self.read_body(io, &head).await {
            Ok(body) => body,
            Err(Stop::Refuse(e)) => {
                // Boxed: a refusal's linger is rare and would size every request's state.
                Box::pin(self.refuse(io, e)).await;
                return false;
            }
            // A body is never awaited as an idle connection (parking is for those).
            Err(Stop::Close | Stop::Park(_)) => return false,
        };
        let keep_alive = head.keep_alive && !self.core.drain.is_draining();
        let req = Request {
            head: head.parts,
            body,
            peer: self.peer,
            tls: self.tls,
            client,
        };
        let span = debug_span!("request", method = %req.head.method, path = req.head.uri.path());
        let endpoint = match target {
            router::Target::Own(e) => Some(e),
            _ => None,
        };
        let (route, response) = router::route(&self.core, &req, endpoint)
            .instrument(span)
            .await;
        let head_only = req.head.method == Method::HEAD;
        let written = self
            .write(io, &response, request_id.as_bytes(), keep_alive, head_only)
            .await;
        let status = response.status.as_u16();
        self.core
            .metrics()
            .observe(route, status, started.elapsed());
        debug!(method = %req.head.method, path = req.head.uri.path(), status, request_id = ?request_id, "request");
        if !written {
            return false;
        }
        if !keep_alive {
            let _ = io.shutdown().await;
            return false;
        }
        true
    }

    /// Reads until a complete head is buffered. An idle connection (nothing buffered) closes
    /// quietly on the keep-alive timeout, on EOF, or when the core starts draining; once a
    /// byte of a head has arrived, the whole head must arrive within the header timeout.
    async fn read_head<IO: Transport>(&mut self, io: &mut IO) -> Result<ParsedHead, Stop> {
        let core = self.core.clone();
        let limits = &core.config.http;
        let idle_limit = if self.first {
            limits.header_read_timeout
        } else {
            limits.keepalive_timeout
        };
        let idle_deadline = Instant::now() + idle_limit;
        let mut head_deadline = None;
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf, limits.max_header_bytes)
                    .map_err(|e| Stop::Refuse(e.into()))?
                {
                    return Ok(head);
                }
            }
            let idle = self.buf.is_empty();
            if idle && self.core.drain.is_draining() {
                return Err(Stop::Close);
            }
            if !idle && head_deadline.is_none() {
                head_deadline = Some(Instant::now() + limits.header_read_timeout);
            }
            let deadline = head_deadline.unwrap_or(idle_deadline);
            match self.fill(io, deadline, idle, READ_CHUNK).await {
                Fill::Data => {}
                Fill::Timeout if !idle => return Err(Stop::Refuse(RequestError::HeaderTimeout)),
                Fill::Park => return Err(Stop::Park(deadline)),
                Fill::Timeout | Fill::Eof | Fill::Drain | Fill::Error => return Err(Stop::Close),
            }
        }
    }

    /// Reads the body the head announced, within the body limit and read timeout.
    async fn read_body<IO: Transport>(
        &mut self,
        io: &mut IO,
        head: &ParsedHead,
    ) -> Result<Bytes, Stop> {
        let core = self.core.clone();
        let limits = &core.config.http;
        let pause = limits.body_read_timeout;
        match head.framing {
            RequestFraming::Empty => Ok(Bytes::new()),
            RequestFraming::Length(length) => {
                if length > limits.max_body_bytes {
                    return Err(Stop::Refuse(RequestError::BodyTooLarge {
                        length,
                        limit: limits.max_body_bytes,
                    }));
                }
                if self.buf.len() < length {
                    self.continue_if_expected(io, head).await?;
                }
                while self.buf.len() < length {
                    let want = (length - self.buf.len()).clamp(READ_CHUNK, 256 * 1024);
                    match self.fill(io, Instant::now() + pause, false, want).await {
                        Fill::Data => {}
                        Fill::Timeout => return Err(Stop::Refuse(RequestError::BodyTimeout)),
                        Fill::Eof => return Err(Stop::Close),
                        Fill::Drain | Fill::Error | Fill::Park => return Err(Stop::Close),
                    }
                }
                Ok(self.buf.split_to(length).freeze())
            }
            RequestFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(limits.max_body_bytes);
                let mut asked = false;
                loop {
                    if decoder
                        .decode(&mut self.buf)
                        .map_err(|e| Stop::Refuse(e.into()))?
                    {
                        return Ok(decoder.into_body().freeze());
                    }
                    if !asked {
                        self.continue_if_expected(io, head).await?;
                        asked = true;
                    }
                    match self
                        .fill(io, Instant::now() + pause, false, READ_CHUNK)
                        .await
                    {
                        Fill::Data => {}
                        Fill::Timeout => return Err(Stop::Refuse(RequestError::BodyTimeout)),
                        Fill::Eof | Fill::Drain | Fill::Error | Fill::Park => {
                            return Err(Stop::Close)
                        }
                    }
                }
            }
        }
    }

    async fn continue_if_expected<IO: AsyncWriteRent>(
        &mut self,
        io: &mut IO,
        head: &ParsedHead,
    ) -> Result<(), Stop> {
        if head.expect_continue {
            let limit = self.core.config.http.response_write_timeout;
            let write = io.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
            if !matches!(
                self.core.deadlines.within(limit, write).await,
                Some((Ok(_), _))
            ) {
                return Err(Stop::Close);
            }
        }
        Ok(())
    }

    /// One read into the buffer, bounded by `deadline`; when `watch_drain`, a drain ends it too.
    ///
    /// With nothing buffered, the read buffer goes back to the pool first and the wait for
    /// bytes holds none; a buffer is borrowed again once bytes are there. With bytes
    /// buffered (a pipelined request, a head or body in pieces) the buffer stays.
    ///
    /// A busy connection (its last request, not its first, came within [`READ_GRACE`] of
    /// the response before it) first waits out the rest of the grace with a read armed and its buffer
    /// attached: one read per request, as before the buffer-free wait, instead of a
    /// readiness wait, its wake-up and then the read. Only when the grace passes quietly
    /// is the read called off, the buffer given back, and the connection counted idle.
    async fn fill<IO: Transport>(
        &mut self,
        io: &mut IO,
        deadline: Instant,
        watch_drain: bool,
        want: usize,
    ) -> Fill {
        if self.buf.is_empty() {
            // Busy, but the core's grace places are taken: it waits in its task (parking
            // is for idle connections; one in steady use would park for every request).
            let mut crowded = false;
            if self.busy {
                match GracePlace::take(&self.core) {
                    Some(_place) => {
                        if let Some(fill) =
                            self.fill_in_grace(io, deadline, watch_drain, want).await
                        {
                            return fill;
                        }
                    }
                    None => {
                        self.busy = false;
                        crowded = true;
                    }
                }
            }
            if std::mem::take(&mut self.woken) {
                // Resumed from the parked set, which saw it readable: read at once.
            } else if watch_drain && self.parkable && !self.first && !crowded {
                // Idle after a response: the parked set waits for it, with no task.
                self.give_back();
                return Fill::Park;
            } else {
                // Waiting in the task: a new connection, one that cannot park, or a busy one
                // crowded out of a grace place, which parks if its grace passes quietly.
                let park_at = (watch_drain && self.parkable && !self.first)
                    .then_some(self.done_at + READ_GRACE)
                    .filter(|at| *at < deadline);
                let drain = self.core.drain.clone();
                // The core's deadline timer, not a monoio `Sleep` (640 bytes inline in every
                // idle connection's task; see `crate::deadline`).
                let mut timer = self.core.deadlines.until(park_at.unwrap_or(deadline));
                self.give_back();
                let ready = monoio::select! {
                    biased;
                    r = io.readable() => r,
                    _ = &mut timer => {
                        return if park_at.is_some() { Fill::Park } else { Fill::Timeout };
                    }
                    _ = drain.signaled(), if watch_drain => return Fill::Drain,
                };
                if ready.is_err() {
                    return Fill::Error;
                }
            }
            // Busy: this request follows the last response closely. Never the first
            // request: a client that sends one and then idles (or a burst of new
            // connections) would hold a buffer through every grace for nothing.
            self.busy = !self.first && self.done_at.elapsed() < READ_GRACE;
        }
        // Boxed, like the read in it: a read's state exists only while bytes come in (or
        // during a grace); inline, it would be part of every idle connection's task.
        Box::pin(self.read_into_buf(io, deadline, watch_drain, want))
            .await
            .unwrap_or(Fill::Timeout)
    }

    /// [`Conn::fill`]'s read with the buffer attached until the grace after the last
    /// response ends; `None` when the grace ended with nothing read (the connection is no
    /// longer busy).
    async fn fill_in_grace<IO: Transport>(
        &mut self,
        io: &mut IO,
        deadline: Instant,
        watch_drain: bool,
        want: usize,
    ) -> Option<Fill> {
        let grace_end = self.done_at + READ_GRACE;
        if grace_end <= Instant::now() {
            // Past it already (a body awaited long after the last response).
            self.busy = false;
            return None;
        }
        let until = grace_end.min(deadline);
        match Box::pin(self.read_into_buf(io, until, watch_drain, want)).await {
            Some(fill) => Some(fill),
            None if until == deadline => Some(Fill::Timeout),
            None => {
                self.busy = false;
                None
            }
        }
    }

    /// One read into the spare room of the (borrowed) read buffer, until `until` or, when
    /// `watch_drain`, a drain; `None` when `until` came first with nothing read.
    async fn read_into_buf<IO: Transport>(
        &mut self,
        io: &mut IO,
        until: Instant,
        watch_drain: bool,
        want: usize,
    ) -> Option<Fill> {
        let drain = self.core.drain.clone();
        let mut timer = self.core.deadlines.until(until);
        if !self.lent {
            self.buf = self.core.buffers.take_read();
            self.lent = true;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.reserve(want);
        // monoio reads into a buffer from its start: read into the spare tail instead.
        let len = buf.len();
        let tail = buf.slice_mut(len..);
        let canceller = Canceller::new();
        let mut read = std::pin::pin!(io.read_cancelable(tail, canceller.handle()));
        let stop = monoio::select! {
            biased;
            (res, tail) = &mut read => {
                self.buf = tail.into_inner();
                return Some(filled(res));
            }
            _ = &mut timer => None,
            _ = drain.signaled(), if watch_drain => Some(Fill::Drain),
        };
        // Called off: the read hands the buffer back (io_uring: once the kernel has let go
        // of it), where a dropped read would lose it.
        let _ = canceller.cancel();
        let (res, tail) = read.await;
        self.buf = tail.into_inner();
        match res {
            Err(e) if crate::transport::cancelled(&e) => stop,
            // Bytes (or the end, or an error) came before the read was called off.
            res => Some(filled(res)),
        }
    }

    /// Gives the read buffer back to the pool (it holds nothing).
    fn give_back(&mut self) {
        if std::mem::take(&mut self.lent) {
            self.core.buffers.give_read(std::mem::take(&mut self.buf));
        }
    }

    /// Writes a response; `false` when the connection is gone or stuck.
    async fn write<IO: AsyncWriteRent>(
        &mut self,
        io: &mut IO,
        response: &Response,
        request_id: &[u8],
        keep_alive: bool,
        head_only: bool,
    ) -> bool {
        let mut out = self.core.buffers.take_write();
        let complete = self.core.date.with_now(|date| {
            response.encode_head(&mut out, date, request_id, keep_alive, head_only)
        });
        let limit = self.core.config.http.response_write_timeout;
        // Bounded on the core's deadline timer: a monoio `Sleep` would be registered and
        // dropped in the runtime's timer wheel for every response.
        let deadlines = self.core.deadlines.clone();
        let Some((res, out)) = deadlines.within(limit, io.write_all(out)).await else {
            self.core.buffers.lost();
            return false;
        };
        self.core.buffers.give_write(out);
        if res.is_err() {
            return false;
        }
        if !complete {
            let body = io.write_all(response.body.clone());
            if !matches!(deadlines.within(limit, body).await, Some((Ok(_), _))) {
                return false;
            }
        }
        true
    }

    /// Answers a refused request, then closes after a short linger.
    async fn refuse<IO: Transport>(&mut self, io: &mut IO, error: RequestError) {
        let response = error.to_response();
        let request_id = self.core.request_ids.generate();
        debug!(%error, status = response.status.as_u16(), "refusing request");
        self.core.metrics().observe(
            RouteLabel::Rejected,
            response.status.as_u16(),
            Duration::ZERO,
        );
        if !self
            .write(io, &response, request_id.as_bytes(), false, false)
            .await
        {
            return;
        }
        let _ = io.shutdown().await;
        // Read and discard what the client still sends, so closing does not reset the
        // connection before the client has read the response.
        let deadline = Instant::now() + LINGER_TIME;
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            self.buf.clear();
            match self.fill(io, deadline, false, READ_CHUNK).await {
                Fill::Data => discarded += self.buf.len(),
                _ => break,
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use monoio::net::TcpStream;

    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, E, G, H, F: Future>(_: fn(A, B, C, D, E, G, H) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The size of [`Conn::respond`]'s future for a stream type.
    fn respond_size<IO: Transport>() -> usize {
        fn size_of_future<'a, IO: Transport + 'a, F: Future + 'a>(
            _: impl FnOnce(&'a mut Conn, &'a mut IO) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        size_of_future(|conn: &mut Conn, io: &mut IO| conn.respond(io, unreachable_head(), None))
    }

    fn unreachable_head() -> ParsedHead {
        unreachable!("only the future's type is used")
    }

    #[test]
    fn a_connection_task_holds_only_the_wait_for_its_next_request() {
        // Every idle connection's task is this large for the connection's whole life. A
        // request's own state (body, routing, proxying, response) and a read's are boxed
        // while they last, and the wait's deadline is an entry in the core's timer
        // (monoio's `Sleep`, 640 bytes, is not inline). What is left is the wait for the
        // next head: the connection, its stream (a TLS one holds rustls's state inline,
        // 1.2 KiB) and the readiness poll. Debug-build sizes; release ones are smaller.
        let plain = future_size(serve::<TcpStream>);
        let tls = future_size(serve::<crate::tls_stream::TlsStream>);
        eprintln!(
            "serve future: {plain} bytes plain, {tls} bytes TLS (monoio Sleep: {} bytes)",
            std::mem::size_of::<monoio::time::Sleep>()
        );
        // What one request's boxed state is (moved into its box, i.e. copied, per request).
        eprintln!(
            "request future: {} bytes plain, {} bytes TLS",
            respond_size::<TcpStream>(),
            respond_size::<crate::tls_stream::TlsStream>()
        );
        // Every request's future is boxed, so moved (copied) into its allocation once per
        // request: what only a rare route needs (`/sql`, tens of KiB) is boxed on that route.
        let request = respond_size::<TcpStream>();
        assert!(request <= 8 * 1024, "request future: {request} bytes");
        assert!(plain <= 1024, "plain connection future: {plain} bytes");
        assert!(tls <= 4 * 1024, "TLS connection future: {tls} bytes");
    }
}
