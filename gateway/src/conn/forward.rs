//! Proxying one request on a client connection: the head decides the route, then the body
//! streams to the worker and the response streams back, through fixed-size buffers (a
//! slow side stalls the other: backpressure, bounded memory).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use monoio::{
    buf::IoBufMut,
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
    net::TcpStream,
    time::{timeout, Instant},
};
use tracing::debug;

use super::{Conn, Fill};
use crate::{
    config::ProxyRoute,
    error::error_response,
    http::{ParsedHead, RequestFraming, Response},
    proxy::{
        self,
        head::{encode_for_client, encode_request_head, parse_response, ResponseHead},
        upstreams::{Outcome, Picked},
    },
    transport::Transport,
};
use ringgate_http1::{Chunked, Forward};

/// Bytes moved per read in either direction.
const PIPE_CHUNK: usize = 64 * 1024;
/// Room for the first read of a response: its head and, usually, all of a small body. A
/// whole [`PIPE_CHUNK`] per request would be a large allocation each time (the allocator
/// returns such pages to the kernel and faults them in again, zeroed); the buffer grows
/// to [`PIPE_CHUNK`] only while a larger body streams.
const HEAD_CHUNK: usize = 8 * 1024;
/// One request as it goes to workers: the client's head, the head encoded for workers,
/// the request id, and whether the client keeps its connection.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    head: &'a ParsedHead,
    req_head: &'a Bytes,
    request_id: &'a [u8],
    keep_alive: bool,
}

/// Workers tried for one request.
const MAX_TRIES: usize = 3;

/// How a proxied exchange ended, for metrics and the connection loop.
pub(super) struct Proxied {
    /// Status sent to the client (0 when nothing could be sent).
    pub status: u16,
    /// Whether the client connection can carry another request.
    pub keep_alive: bool,
}

/// Why an attempt on one worker failed.
enum Attempt {
    /// Nothing reached the worker or nothing of the client's body was consumed, and no
    /// response byte came back: another worker may be tried (if the method allows).
    /// `reused`: it happened on a pooled connection.
    Retry {
        sent: bool,
        reason: String,
        reused: bool,
    },
    /// The client must get this answer.
    Answer(Response),
    /// The client broke the protocol (a malformed or stalled body): it gets this answer
    /// and its connection closes; the worker is not blamed.
    Client(Response),
    /// The client connection is unusable (its body broke off, or the response was cut).
    Close,
}

impl Conn {
    /// Proxies the request whose head was just read to a worker of `route`'s group.
    pub(super) async fn proxy<IO: Transport>(
        &mut self,
        io: &mut IO,
        head: &ParsedHead,
        route: &ProxyRoute,
        request_id: &[u8],
        keep_alive: bool,
    ) -> Proxied {
        let core = self.core.clone();
        let up = &core.upstreams;
        if let Some(refusal) = proxy::rate_limit(&core, &head.parts, self.peer).await {
            return self
                .answer_and_drain_body(io, head, refusal, request_id)
                .await;
        }
        let method = head.parts.method.clone();
        let idempotent = proxy::idempotent(&method);
        let req_head = Bytes::from(encode_request_head(
            &head.parts,
            head.framing,
            self.peer,
            self.tls,
            request_id,
        ));
        // The workers tried so far: `tried[..n_tried]`.
        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_TRIES];
        let mut n_tried = 0;
        let mut last = String::new();
        let repeatable = idempotent && head.framing == RequestFraming::Empty;
        // Set once a pooled connection failed a repeatable request: the next attempt (the
        // same worker may be picked again) opens a fresh connection.
        let mut fresh = false;
        while n_tried < MAX_TRIES {
            let sticky = core.config.proxy.sticky_groups.contains(&route.group);
            let Some(picked) =
                up.pick(&route.group, &tried[..n_tried], &head.parts.headers, sticky)
            else {
                break;
            };
            tried[n_tried] = picked.addr;
            n_tried += 1;
            up.begin(picked.addr);
            let out = Outgoing {
                head,
                req_head: &req_head,
                request_id,
                keep_alive,
            };
            let result = self.attempt(io, &out, &picked, fresh).await;
            up.end(picked.addr);
            match result {
                Ok(p) => {
                    up.record(picked.addr, Outcome::Success);
                    return p;
                }
                Err(Attempt::Retry {
                    sent,
                    reason,
                    reused: true,
                }) if sent && repeatable && !fresh => {
                    // The worker closed its end of a pooled connection as the request went
                    // out: no fault of the worker, and no response byte came back.
                    debug!(worker = %picked.addr, %reason, "pooled connection failed; retrying on a fresh one");
                    last = reason;
                    n_tried -= 1;
                    fresh = true;
                }
                Err(Attempt::Retry { sent, reason, .. }) => {
                    up.record(picked.addr, Outcome::Failure);
                    debug!(worker = %picked.addr, %reason, "proxy attempt failed");
                    last = reason;
                    // Once the head reached a worker, only an idempotent request without a
                    // body may go to another one.
                    if sent && !repeatable {
                        let r = error_response(StatusCode::BAD_GATEWAY, "bad_gateway", &last);
                        return self.answer(io, r, request_id, false).await;
                    }
                }
                Err(Attempt::Client(r)) => return self.answer(io, r, request_id, false).await,
                Err(Attempt::Answer(r)) => {
                    up.record(picked.addr, Outcome::Failure);
                    // A body the worker did not take may still be on the wire: close.
                    let keep = keep_alive && head.framing == RequestFraming::Empty;
                    return self.answer(io, r, request_id, keep).await;
                }
                Err(Attempt::Close) => {
                    return Proxied {
                        status: 0,
                        keep_alive: false,
                    }
                }
            }
        }
        let r = if n_tried == 0 {
            proxy::no_upstream(&route.group)
        } else {
            error_response(StatusCode::BAD_GATEWAY, "bad_gateway", &last)
        };
        self.answer_and_drain_body(io, head, r, request_id).await
    }

    /// One attempt on one worker.
    async fn attempt<IO: Transport>(
        &mut self,
        io: &mut IO,
        out: &Outgoing<'_>,
        picked: &Picked,
        fresh: bool,
    ) -> Result<Proxied, Attempt> {
        let Outgoing {
            head,
            req_head,
            request_id,
            keep_alive,
        } = *out;
        let core = self.core.clone();
        let up = &core.upstreams;
        let cfg = &core.config.proxy;
        let addr = picked.addr;
        // A pooled connection the worker closed meanwhile is dropped by `take_idle`; one
        // whose write fails at once is too, and a fresh one is opened (nothing of the
        // request was processed on a dead connection).
        let mut stream = None;
        if let Some(mut s) = (!fresh)
            .then(|| up.take_idle(addr, cfg.idle_timeout))
            .flatten()
        {
            let (res, _) = s.write_all(req_head.clone()).await;
            if res.is_ok() {
                stream = Some(s);
            }
        }
        let reused = stream.is_some();
        self.exchange(io, head, picked, request_id, keep_alive, stream, req_head)
            .await
            .map_err(|e| match e {
                Attempt::Retry { sent, reason, .. } => Attempt::Retry {
                    sent,
                    reason,
                    reused,
                },
                other => other,
            })
    }

    /// The request and response on `stream` (a pooled connection the head was written to),
    /// or on a fresh connection when there is none.
    #[allow(clippy::too_many_arguments)]
    async fn exchange<IO: Transport>(
        &mut self,
        io: &mut IO,
        head: &ParsedHead,
        picked: &Picked,
        request_id: &[u8],
        keep_alive: bool,
        stream: Option<TcpStream>,
        req_head: &Bytes,
    ) -> Result<Proxied, Attempt> {
        let core = self.core.clone();
        let up = &core.upstreams;
        let cfg = &core.config.proxy;
        let addr = picked.addr;
        let mut stream = match stream {
            Some(s) => s,
            None => {
                let mut s = proxy::upstream::connect(addr, cfg.connect_timeout)
                    .await
                    .map_err(|e| Attempt::Retry {
                        sent: false,
                        reason: e.to_string(),
                        reused: false,
                    })?;
                let (res, _) = s.write_all(req_head.clone()).await;
                res.map_err(|e| Attempt::Retry {
                    sent: false,
                    reason: format!("{addr}: {e}"),
                    reused: false,
                })?;
                s
            }
        };
        // The body, client → worker.
        let body_sent = self.pipe_request_body(io, head, &mut stream).await?;
        // The response head.
        let mut pending = BytesMut::with_capacity(HEAD_CHUNK);
        let resp =
            read_response_head(&mut stream, &mut pending, cfg.response_timeout, addr).await?;
        let head_only = head.parts.method == Method::HEAD;
        let framing = resp.body_framing(head_only);
        // A drain that began while the worker was busy closes the connection after this.
        let client_keep = keep_alive
            && !core.drain.is_draining()
            && framing != proxy::head::ResponseFraming::UntilClose;
        let mut out = encode_for_client(&resp, request_id, client_keep, pending.len());
        if let Some(cookie) = picked.set_cookie.as_deref() {
            out.extend_from_slice(b"set-cookie: ");
            out.extend_from_slice(cookie.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let write_limit = core.config.http.response_write_timeout;
        // Head and body, worker → client.
        let complete = pipe_response(
            &mut stream,
            io,
            out,
            pending,
            framing,
            cfg.response_timeout,
            write_limit,
        )
        .await;
        if !complete {
            return Err(Attempt::Close);
        }
        if body_sent && resp.reusable() && framing != proxy::head::ResponseFraming::UntilClose {
            up.put_idle(addr, stream, cfg.idle_max);
        }
        Ok(Proxied {
            status: resp.status,
            keep_alive: client_keep,
        })
    }

    /// Streams the request body to the worker. `Ok(true)` when all of it went through.
    async fn pipe_request_body<IO: Transport>(
        &mut self,
        io: &mut IO,
        head: &ParsedHead,
        stream: &mut TcpStream,
    ) -> Result<bool, Attempt> {
        let pause = self.core.config.http.body_read_timeout;
        let mut continued = false;
        match head.framing {
            RequestFraming::Empty => return Ok(true),
            RequestFraming::Length(total) => {
                let mut left = total;
                while left > 0 {
                    if self.buf.is_empty() {
                        if head.expect_continue && !continued {
                            self.send_continue(io).await?;
                            continued = true;
                        }
                        self.read_body_piece(io, pause).await?;
                    }
                    let take = left.min(self.buf.len());
                    let piece = self.buf.split_to(take);
                    left -= take;
                    write_upstream(stream, piece).await?;
                }
            }
            RequestFraming::Chunked => {
                // Framed by the same state machine as the gateway's own bodies: a body
                // refused on `/sql` is refused here too, with the same answer.
                let mut chunked = Chunked::new();
                loop {
                    if self.buf.is_empty() {
                        if head.expect_continue && !continued {
                            self.send_continue(io).await?;
                            continued = true;
                        }
                        self.read_body_piece(io, pause).await?;
                    }
                    let n = chunked.feed(&self.buf, &mut Forward).map_err(|e| {
                        Attempt::Client(crate::error::RequestError::Chunked(e).to_response())
                    })?;
                    let piece = self.buf.split_to(n);
                    write_upstream(stream, piece).await?;
                    if chunked.done() {
                        break;
                    }
                }
            }
        }
        Ok(true)
    }

    async fn send_continue<IO: AsyncWriteRent>(&mut self, io: &mut IO) -> Result<(), Attempt> {
        let limit = self.core.config.http.response_write_timeout;
        match timeout(limit, io.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])).await {
            Ok((Ok(_), _)) => Ok(()),
            _ => Err(Attempt::Close),
        }
    }

    async fn read_body_piece<IO: Transport>(
        &mut self,
        io: &mut IO,
        pause: std::time::Duration,
    ) -> Result<(), Attempt> {
        match self
            .fill(io, Instant::now() + pause, false, PIPE_CHUNK)
            .await
        {
            Fill::Data => Ok(()),
            Fill::Timeout => Err(Attempt::Client(
                crate::error::RequestError::BodyTimeout.to_response(),
            )),
            Fill::Eof | Fill::Drain | Fill::Error | Fill::Park => Err(Attempt::Close),
        }
    }

    /// Writes a gateway-made response for a proxied request.
    async fn answer<IO: Transport>(
        &mut self,
        io: &mut IO,
        response: Response,
        request_id: &[u8],
        keep_alive: bool,
    ) -> Proxied {
        let status = response.status.as_u16();
        let written = self
            .write(io, &response, request_id, keep_alive, false)
            .await;
        Proxied {
            status,
            keep_alive: written && keep_alive,
        }
    }

    /// Answers without proxying; a short body is read and dropped so the connection stays
    /// usable, a long one closes it.
    async fn answer_and_drain_body<IO: Transport>(
        &mut self,
        io: &mut IO,
        head: &ParsedHead,
        response: Response,
        request_id: &[u8],
    ) -> Proxied {
        let keep = match head.framing {
            RequestFraming::Empty => head.keep_alive,
            RequestFraming::Length(n) if n <= self.buf.len() => {
                let _ = self.buf.split_to(n);
                head.keep_alive
            }
            _ => false,
        };
        self.answer(io, response, request_id, keep).await
    }
}

/// Writes one piece to the worker; a failure here means the body is lost mid-way.
async fn write_upstream(stream: &mut TcpStream, piece: BytesMut) -> Result<(), Attempt> {
    let (res, _) = stream.write_all(piece).await;
    res.map(|_| ()).map_err(|e| {
        Attempt::Answer(error_response(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            &format!("worker stopped reading the request body: {e}"),
        ))
    })
}

/// Reads until a complete response head (skipping `1xx` interim responses).
async fn read_response_head(
    stream: &mut TcpStream,
    pending: &mut BytesMut,
    limit: std::time::Duration,
    addr: SocketAddr,
) -> Result<ResponseHead, Attempt> {
    let deadline = Instant::now() + limit;
    loop {
        if !pending.is_empty() {
            match parse_response(pending) {
                Ok(Some(h)) if h.status < 200 => continue,
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => {
                    return Err(Attempt::Answer(error_response(
                        StatusCode::BAD_GATEWAY,
                        "bad_gateway",
                        &format!("{addr} sent a malformed response: {e}"),
                    )))
                }
            }
        }
        let had = pending.len();
        let read = monoio::time::timeout_at(deadline, read_into(stream, pending, HEAD_CHUNK)).await;
        match read {
            Ok(Ok(0)) if had == 0 => {
                return Err(Attempt::Retry {
                    sent: true,
                    reason: format!("{addr} closed the connection without a response"),
                    reused: false,
                })
            }
            Ok(Ok(0)) => {
                return Err(Attempt::Answer(error_response(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    &format!("{addr} closed the connection inside the response head"),
                )))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if had == 0 => {
                return Err(Attempt::Retry {
                    sent: true,
                    reason: format!("{addr}: {e}"),
                    reused: false,
                })
            }
            Ok(Err(e)) => {
                return Err(Attempt::Answer(error_response(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    &format!("{addr}: {e}"),
                )))
            }
            Err(_) => {
                return Err(Attempt::Answer(error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    &format!("{addr} did not answer within {limit:?}"),
                )))
            }
        }
    }
}

/// Appends one read from `stream` to `buf` (straight into its spare capacity).
async fn read_into(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    room: usize,
) -> std::io::Result<usize> {
    let mut owned = std::mem::take(buf);
    owned.reserve(room);
    // monoio reads into a buffer from its start: read into the spare tail instead.
    let len = owned.len();
    let (res, tail) = stream.read(owned.slice_mut(len..)).await;
    *buf = tail.into_inner();
    res
}

/// Sends the response head and streams the body to the client; the head goes out in one
/// write with whatever body is already buffered. `false` when either side broke off.
async fn pipe_response<IO: AsyncWriteRent>(
    stream: &mut TcpStream,
    io: &mut IO,
    head: Vec<u8>,
    mut pending: BytesMut,
    framing: proxy::head::ResponseFraming,
    read_pause: std::time::Duration,
    write_limit: std::time::Duration,
) -> bool {
    use proxy::head::ResponseFraming;
    let mut left = match framing {
        ResponseFraming::None => Some(0),
        ResponseFraming::Length(n) => Some(n),
        ResponseFraming::Chunked | ResponseFraming::UntilClose => None,
    };
    let mut scanner = (framing == ResponseFraming::Chunked).then(Chunked::new);
    let mut head = Some(head);
    loop {
        // Forward what is buffered, up to the body's end (with the head, the first time).
        let take = match (&mut scanner, left) {
            (Some(s), _) => match s.feed(&pending, &mut Forward) {
                Ok(n) => n,
                Err(_) => return false,
            },
            (None, Some(n)) => n.min(pending.len() as u64) as usize,
            (None, None) => pending.len(),
        };
        if let Some(n) = left.as_mut() {
            *n -= take as u64;
        }
        let write = match head.take() {
            Some(mut h) => {
                h.extend_from_slice(&pending.split_to(take));
                Some(timeout(write_limit, io.write_all(h)).await.map(|(r, _)| r))
            }
            None if take > 0 => {
                let piece = pending.split_to(take);
                Some(
                    timeout(write_limit, io.write_all(piece))
                        .await
                        .map(|(r, _)| r),
                )
            }
            None => None,
        };
        if !matches!(write, None | Some(Ok(Ok(_)))) {
            return false;
        }
        let finished = match (&scanner, left) {
            (Some(s), _) => s.done(),
            (None, Some(n)) => n == 0,
            (None, None) => false,
        };
        if finished {
            return true;
        }
        match timeout(read_pause, read_into(stream, &mut pending, PIPE_CHUNK)).await {
            Ok(Ok(0)) => return framing == ResponseFraming::UntilClose,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}
