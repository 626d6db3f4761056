//! A PostgreSQL client's byte stream, read and written with owned buffers: plain TCP, TLS
//! (after `SSLRequest`, or direct), or WebSocket over either. The session and the relay
//! see one type whatever the transport; the variants differ only here.

use std::io;

use bytes::BytesMut;
use monoio::{
    buf::IoBufMut,
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
    net::TcpStream,
};

use super::websocket::{self, Decoder, Event};
use crate::{tls_stream::TlsStream, transport::Transport};

/// The client's byte stream.
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, negotiated with `SSLRequest` or direct (ALPN `postgresql`).
    Tls(Box<TlsStream>),
    /// WebSocket (`GET /v2`) over plain TCP or TLS: the PostgreSQL bytes in binary frames.
    Ws(Box<WsStream>),
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientStream::Plain(_) => "ClientStream::Plain",
            ClientStream::Tls(_) => "ClientStream::Tls",
            ClientStream::Ws(_) => "ClientStream::Ws",
        })
    }
}

impl ClientStream {
    /// Whether the session is encrypted (TLS, or WebSocket over TLS).
    pub fn is_tls(&self) -> bool {
        match self {
            ClientStream::Plain(_) => false,
            ClientStream::Tls(_) => true,
            ClientStream::Ws(w) => matches!(w.socket, Socket::Tls(_)),
        }
    }

    /// Whether the session runs over WebSocket.
    pub fn is_websocket(&self) -> bool {
        matches!(self, ClientStream::Ws(_))
    }

    /// The certificate (DER) of a TLS session the client's PostgreSQL layer sees itself,
    /// for channel binding; `None` for plaintext and WebSocket (the driver does not see
    /// the WebSocket's TLS).
    pub fn tls_certificate(&self) -> Option<&[u8]> {
        match self {
            ClientStream::Tls(s) => s.certificate(),
            _ => None,
        }
    }

    /// Reads what is available into `buf`'s spare capacity (at least `min_spare`);
    /// `UnexpectedEof` when the client closed.
    pub async fn read_into(&mut self, buf: &mut BytesMut, min_spare: usize) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => read_some(s, buf, min_spare).await,
            ClientStream::Tls(s) => read_some(&mut **s, buf, min_spare).await,
            ClientStream::Ws(w) => w.read_into(buf, min_spare).await,
        }
    }

    /// Waits until a read would return at once (bytes are there, the client closed, or
    /// the socket failed) without reading: dropped at any point, it loses nothing (io_uring:
    /// a poll, not a read). For a session that also waits for its server connection.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => TcpStream::readable(s, false).await,
            ClientStream::Tls(s) => Transport::readable(&mut **s).await,
            // Frame bytes already read (perhaps a partial frame: its read then waits for
            // the rest, the client being mid-message).
            ClientStream::Ws(w) if !w.rbuf.is_empty() => Ok(()),
            ClientStream::Ws(w) => match &mut w.socket {
                Socket::Plain(s) => TcpStream::readable(s, false).await,
                Socket::Tls(s) => Transport::readable(&mut **s).await,
            },
        }
    }

    /// Ends a WebSocket with a close frame (1000: the session ended, after a FATAL error);
    /// nothing for TCP and TLS, whose connection is simply closed.
    pub async fn close(&mut self) -> io::Result<()> {
        if let ClientStream::Ws(w) = self {
            w.close(websocket::CLOSE_NORMAL, "").await;
        }
        Ok(())
    }

    /// Writes all of `out` and leaves it empty (its capacity kept).
    pub async fn write_all(&mut self, out: &mut BytesMut) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        match self {
            ClientStream::Plain(s) => write_out(s, out).await,
            ClientStream::Tls(s) => write_out(&mut **s, out).await,
            ClientStream::Ws(w) => {
                // A buffer of its own for each write (the payload is copied into its
                // frame): an idle WebSocket keeps none.
                let mut framed = BytesMut::with_capacity(out.len() + 10);
                websocket::binary(&mut framed, out);
                out.clear();
                w.socket.write(&mut framed).await
            }
        }
    }
}

/// The socket under a WebSocket.
pub enum Socket {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsStream>),
}

/// A client connection an HTTP listener hands to the PostgreSQL front end after a
/// WebSocket upgrade.
pub trait IntoSocket {
    /// The connection as a WebSocket's transport.
    fn into_socket(self) -> Socket;
}

impl IntoSocket for TcpStream {
    fn into_socket(self) -> Socket {
        Socket::Plain(self)
    }
}

impl IntoSocket for TlsStream {
    fn into_socket(self) -> Socket {
        Socket::Tls(Box::new(self))
    }
}

impl Socket {
    /// The TLS server name the client asked for, if any.
    pub fn server_name(&self) -> Option<&str> {
        match self {
            Socket::Plain(_) => None,
            Socket::Tls(t) => t.server_name(),
        }
    }

    /// Reads once into `buf` (see [`ClientStream::read_into`]).
    pub(super) async fn read(&mut self, buf: &mut BytesMut, min_spare: usize) -> io::Result<usize> {
        match self {
            Socket::Plain(s) => read_some(s, buf, min_spare).await,
            Socket::Tls(s) => read_some(&mut **s, buf, min_spare).await,
        }
    }

    /// Writes all of `out` (see [`ClientStream::write_all`]).
    pub(super) async fn write(&mut self, out: &mut BytesMut) -> io::Result<()> {
        match self {
            Socket::Plain(s) => write_out(s, out).await,
            Socket::Tls(s) => write_out(&mut **s, out).await,
        }
    }
}

/// A WebSocket session: frames read off the socket, payloads handed to the session.
pub struct WsStream {
    socket: Socket,
    /// Frames read and not yet decoded (no capacity kept once empty).
    rbuf: BytesMut,
    decoder: Decoder,
}

impl WsStream {
    /// A WebSocket after its upgrade; `rest` is what the client sent after the request.
    pub fn new(socket: Socket, rest: BytesMut) -> Self {
        Self {
            socket,
            rbuf: rest,
            decoder: Decoder::default(),
        }
    }

    /// Reads binary payload into `buf`, answering pings; a close from the client is
    /// `UnexpectedEof` (after the close is echoed), a bad frame `InvalidData` (after a
    /// close with its code).
    async fn read_into(&mut self, buf: &mut BytesMut, min_spare: usize) -> io::Result<usize> {
        buf.reserve(min_spare);
        loop {
            match self.decoder.decode(&mut self.rbuf, buf) {
                Ok(Event::Data(n)) => {
                    if self.rbuf.is_empty() {
                        // An idle WebSocket holds no read buffer either.
                        self.rbuf = BytesMut::new();
                    }
                    return Ok(n);
                }
                Ok(Event::Need) => {
                    self.socket.read(&mut self.rbuf, 4096).await?;
                }
                Ok(Event::Ping(payload)) => {
                    let mut out = BytesMut::new();
                    websocket::pong(&mut out, &payload);
                    self.socket.write(&mut out).await?;
                }
                Ok(Event::Close(_)) => {
                    self.close(websocket::CLOSE_NORMAL, "").await;
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Err(e) => {
                    self.close(e.code, e.reason).await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
    }

    /// Sends a close frame (best effort: the connection ends next).
    async fn close(&mut self, code: u16, reason: &str) {
        let mut out = BytesMut::new();
        websocket::close(&mut out, code, reason);
        let _ = self.socket.write(&mut out).await;
    }
}

impl std::fmt::Debug for WsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream").finish_non_exhaustive()
    }
}

/// Reads once into `buf`'s spare capacity; `UnexpectedEof` at the end.
async fn read_some<S: AsyncReadRent>(
    s: &mut S,
    buf: &mut BytesMut,
    min_spare: usize,
) -> io::Result<usize> {
    buf.reserve(min_spare);
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let spare = owned.slice_mut(len..cap);
    let (r, spare) = s.read(spare).await;
    *buf = spare.into_inner();
    match r? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        n => Ok(n),
    }
}

/// Writes all of `out` (and flushes), leaving it empty with its capacity.
async fn write_out<S: AsyncWriteRent>(s: &mut S, out: &mut BytesMut) -> io::Result<()> {
    let owned = std::mem::take(out);
    let (r, mut owned) = s.write_all(owned).await;
    owned.clear();
    *out = owned;
    r?;
    s.flush().await
}
