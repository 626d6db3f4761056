//! Serves HTTP/1.1 on one client connection (plain or TLS): keep-alive, limits, timeouts,
//! and the drain rules.

mod proxy;

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use http::Method;
use monoio::{
    buf::IoBufMut,
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
    time::{sleep_until, timeout, Duration, Instant},
};
use tracing::{debug, debug_span, Instrument};

use crate::{
    core::Core,
    error::RequestError,
    http::{parse_head, ChunkedDecoder, Framing, ParsedHead, Response},
    metrics::Route,
    router::{self, Request},
};

/// Bytes reserved in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// How long and how much a connection is read and discarded after an error response,
/// so the client sees the response instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Why reading stopped.
enum Stop {
    /// The client sent something we refuse: answer and close.
    Refuse(RequestError),
    /// Close without a response: clean end, idle timeout, drain, or an I/O error.
    Close,
}

/// What one read brought.
enum Fill {
    Data,
    Eof,
    Timeout,
    Drain,
    Error,
}

/// Serves requests on `io` until the client closes, a limit is hit or the core drains.
pub async fn serve<IO: AsyncReadRent + AsyncWriteRent>(
    core: Rc<Core>,
    mut io: IO,
    peer: Option<std::net::SocketAddr>,
    tls: bool,
    client: Option<router::ClientSocket>,
) {
    let mut conn = Conn {
        core,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
        first: true,
        peer,
        tls,
    };
    loop {
        let head = match conn.read_head(&mut io).await {
            Ok(head) => head,
            Err(Stop::Refuse(e)) => return conn.refuse(&mut io, e).await,
            Err(Stop::Close) => return,
        };
        conn.first = false;
        let started = Instant::now();
        let _request = conn.core.track_request(started);
        let request_id = conn.core.request_ids.for_request(&head.parts.headers);
        // A second handle on the core (an `Rc`: no count shared across cores) lets the
        // route be borrowed from its config while `conn` is borrowed mutably below.
        let core = conn.core.clone();
        let path = head.parts.uri.path();
        let target = router::dispatch(&core.config.proxy.routes, path);
        if let router::Target::Proxy(route) = target {
            let keep_alive = head.keep_alive && !conn.core.drain.is_draining();
            let span = debug_span!("proxy", method = %head.parts.method, path = head.parts.uri.path(), group = %route.group);
            let done = conn
                .proxy(&mut io, &head, route, request_id.as_bytes(), keep_alive)
                .instrument(span)
                .await;
            conn.core
                .metrics()
                .observe(Route::Proxy, done.status, started.elapsed());
            if !done.keep_alive {
                let _ = io.shutdown().await;
                return;
            }
            continue;
        }
        let body = match conn.read_body(&mut io, &head).await {
            Ok(body) => body,
            Err(Stop::Refuse(e)) => return conn.refuse(&mut io, e).await,
            Err(Stop::Close) => return,
        };
        let keep_alive = head.keep_alive && !conn.core.drain.is_draining();
        let req = Request {
            head: head.parts,
            body,
            peer,
            tls,
            client,
        };
        let span = debug_span!("request", method = %req.head.method, path = req.head.uri.path());
        let endpoint = match target {
            router::Target::Own(e) => Some(e),
            _ => None,
        };
        let (route, response) = router::route(&conn.core, &req, endpoint)
            .instrument(span)
            .await;
        let head_only = req.head.method == Method::HEAD;
        let written = conn
            .write(
                &mut io,
                &response,
                request_id.as_bytes(),
                keep_alive,
                head_only,
            )
            .await;
        let status = response.status.as_u16();
        conn.core
            .metrics()
            .observe(route, status, started.elapsed());
        debug!(method = %req.head.method, path = req.head.uri.path(), status, request_id = ?request_id, "request");
        if !written {
            return;
        }
        if !keep_alive {
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// Per-connection buffers and state.
struct Conn {
    core: Rc<Core>,
    buf: BytesMut,
    out: Vec<u8>,
    first: bool,
    peer: Option<std::net::SocketAddr>,
    tls: bool,
}

// === impl Conn ===

impl Conn {
    /// Reads until a complete head is buffered. An idle connection (nothing buffered) closes
    /// quietly on the keep-alive timeout, on EOF, or when the core starts draining; once a
    /// byte of a head has arrived, the whole head must arrive within the header timeout.
    async fn read_head<IO: AsyncReadRent>(&mut self, io: &mut IO) -> Result<ParsedHead, Stop> {
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
                Fill::Timeout | Fill::Eof | Fill::Drain | Fill::Error => return Err(Stop::Close),
            }
        }
    }

    /// Reads the body the head announced, within the body limit and read timeout.
    async fn read_body<IO: AsyncReadRent + AsyncWriteRent>(
        &mut self,
        io: &mut IO,
        head: &ParsedHead,
    ) -> Result<Bytes, Stop> {
        let core = self.core.clone();
        let limits = &core.config.http;
        let pause = limits.body_read_timeout;
        match head.framing {
            Framing::Empty => Ok(Bytes::new()),
            Framing::Length(length) => {
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
                        Fill::Drain | Fill::Error => return Err(Stop::Close),
                    }
                }
                Ok(self.buf.split_to(length).freeze())
            }
            Framing::Chunked => {
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
                        Fill::Eof | Fill::Drain | Fill::Error => return Err(Stop::Close),
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
            match timeout(limit, io.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])).await {
                Ok((Ok(_), _)) => {}
                _ => return Err(Stop::Close),
            }
        }
        Ok(())
    }

    /// One read into the buffer, bounded by `deadline`; when `watch_drain`, a drain ends it too.
    async fn fill<IO: AsyncReadRent>(
        &mut self,
        io: &mut IO,
        deadline: Instant,
        watch_drain: bool,
        want: usize,
    ) -> Fill {
        let mut buf = std::mem::take(&mut self.buf);
        buf.reserve(want);
        // monoio reads into a buffer from its start: read into the spare tail instead.
        let len = buf.len();
        let tail = buf.slice_mut(len..);
        let drain = self.core.drain.clone();
        monoio::select! {
            biased;
            (res, tail) = io.read(tail) => {
                self.buf = tail.into_inner();
                match res {
                    Ok(0) => Fill::Eof,
                    Ok(_) => Fill::Data,
                    Err(_) => Fill::Error,
                }
            }
            _ = sleep_until(deadline) => Fill::Timeout,
            _ = drain.signaled(), if watch_drain => Fill::Drain,
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
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let complete = self.core.date.with_now(|date| {
            response.encode_head(&mut out, date, request_id, keep_alive, head_only)
        });
        let limit = self.core.config.http.response_write_timeout;
        let (res, out) = match timeout(limit, io.write_all(out)).await {
            Ok(r) => r,
            Err(_) => return false,
        };
        self.out = out;
        if res.is_err() {
            return false;
        }
        if !complete {
            match timeout(limit, io.write_all(response.body.clone())).await {
                Ok((Ok(_), _)) => {}
                _ => return false,
            }
        }
        true
    }

    /// Answers a refused request, then closes after a short linger.
    async fn refuse<IO: AsyncReadRent + AsyncWriteRent>(
        mut self,
        io: &mut IO,
        error: RequestError,
    ) {
        let response = error.to_response();
        let request_id = self.core.request_ids.generate();
        debug!(%error, status = response.status.as_u16(), "refusing request");
        self.core
            .metrics()
            .observe(Route::Rejected, response.status.as_u16(), Duration::ZERO);
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
