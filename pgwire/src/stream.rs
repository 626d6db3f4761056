//! A server connection's socket, plain or TLS, read and written with owned buffers on the
//! core's own runtime.

use std::sync::Arc;

use bytes::BytesMut;
use monoio::{
    buf::IoBufMut,
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent},
    net::TcpStream,
};

/// `ECANCELED` on Linux: how a cancelled read ends.
const fn libc_ecanceled() -> i32 {
    125
}
use rustls::pki_types::ServerName;

use crate::error::Error;

/// The socket under a [`crate::Connection`].
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (after the server accepted `SSLRequest`).
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
        })
    }
}

impl Stream {
    /// Asks the server for TLS (`SSLRequest`) and wraps `tcp` in it; the server must agree.
    pub async fn tls(
        mut tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        host: &str,
    ) -> Result<Stream, Error> {
        let mut request = BytesMut::with_capacity(8);
        postgres_protocol::message::frontend::ssl_request(&mut request);
        let (r, _) = tcp.write_all(request).await;
        r?;
        let (r, answer) = tcp.read(vec![0u8; 1]).await;
        match (r?, answer.first()) {
            (1, Some(b'S')) => {}
            (1, Some(b'N')) => return Err(Error::Tls("the server does not accept TLS".into())),
            (0, _) => return Err(Error::Closed),
            (_, other) => return Err(Error::Protocol(format!("answer to SSLRequest: {other:?}"))),
        }
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| Error::Tls(format!("server name {host:?}: {e}")))?;
        let stream = monoio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| match e {
                // The handshake's reason (e.g. `InvalidCertificate(UnknownIssuer)`) travels
                // inside the I/O error: monoio-rustls' own text says only "io error".
                monoio_rustls::TlsError::Io(e) => match e.get_ref() {
                    Some(inner) => Error::Tls(format!("{inner:?}")),
                    None => Error::Tls(e.to_string()),
                },
                monoio_rustls::TlsError::Rustls(e) => Error::Tls(format!("{e:?}")),
            })?;
        Ok(Stream::Tls(Box::new(stream)))
    }

    /// Reads what is available into `buf`'s spare capacity (at least `min_spare` of it);
    /// `Err(Closed)` at end of stream.
    pub async fn read_into(
        &mut self,
        buf: &mut BytesMut,
        min_spare: usize,
    ) -> Result<usize, Error> {
        buf.reserve(min_spare);
        // monoio reads into a buffer from its start: read into the spare capacity after
        // what is already there (a message split across reads), not over it.
        let owned = std::mem::take(buf);
        let (len, cap) = (owned.len(), owned.capacity());
        let spare = owned.slice_mut(len..cap);
        let (r, spare) = match self {
            Stream::Plain(s) => s.read(spare).await,
            Stream::Tls(s) => s.read(spare).await,
        };
        *buf = spare.into_inner();
        match r? {
            0 => Err(Error::Closed),
            n => Ok(n),
        }
    }

    /// Waits until the server has sent something (or closed), without reading it: a wait
    /// that may be dropped at any point with no byte lost (io_uring: a poll, not a read),
    /// for a relay that also waits for its client. Plain TCP only: a TLS stream may hold
    /// decrypted bytes the socket's readiness does not show, and offers no cancellable
    /// read, so over TLS this never resolves (the server is read when a statement runs).
    pub async fn readable(&self) -> Result<(), Error> {
        match self {
            Stream::Plain(s) => Ok(s.readable(false).await?),
            Stream::Tls(_) => std::future::pending().await,
        }
    }

    /// Appends to `buf` whatever the server has already sent, without waiting for more:
    /// `Ok(0)` when nothing is pending, `Err(Closed)` when the server has closed its side.
    /// A read is submitted and cancelled at once, so no byte is lost either way. Plain TCP
    /// only: over TLS (whose stream offers no cancellable read) it reports `Ok(0)`.
    pub async fn probe(&mut self, buf: &mut BytesMut) -> Result<usize, Error> {
        let Stream::Plain(s) = self else {
            return Ok(0);
        };
        buf.reserve(512);
        let owned = std::mem::take(buf);
        let (len, cap) = (owned.len(), owned.capacity());
        let canceller = monoio::io::Canceller::new();
        let mut read =
            std::pin::pin!(s.cancelable_read(owned.slice_mut(len..cap), canceller.handle()));
        // The first poll submits the read; the cancel follows it in the same submission, so
        // the read completes with what is pending, if anything, and is cancelled otherwise.
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))
        })
        .await;
        let (r, spare) = match first {
            std::task::Poll::Ready(done) => done,
            std::task::Poll::Pending => {
                let _ = canceller.cancel();
                read.await
            }
        };
        *buf = spare.into_inner();
        match r {
            Ok(0) => Err(Error::Closed),
            Ok(n) => Ok(n),
            Err(e) if e.raw_os_error() == Some(libc_ecanceled()) => Ok(0),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// Writes all of `out` and leaves it empty (its capacity kept).
    pub async fn write_all(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        let owned = std::mem::take(out);
        let (r, mut owned) = match self {
            Stream::Plain(s) => s.write_all(owned).await,
            Stream::Tls(s) => s.write_all(owned).await,
        };
        owned.clear();
        *out = owned;
        r?;
        if let Stream::Tls(s) = self {
            s.flush().await?;
        }
        Ok(())
    }
}
