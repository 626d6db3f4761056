//! A PostgreSQL client's socket, plain or TLS (after `SSLRequest`), read and written with
//! owned buffers.

use bytes::BytesMut;
use monoio::{
    buf::IoBufMut,
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
    net::TcpStream,
};

use crate::tls_stream::TlsStream;

/// The client's socket.
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, negotiated with `SSLRequest`.
    Tls(Box<TlsStream>),
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientStream::Plain(_) => "ClientStream::Plain",
            ClientStream::Tls(_) => "ClientStream::Tls",
        })
    }
}

impl ClientStream {
    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Reads what is available into `buf`'s spare capacity (at least `min_spare`);
    /// `UnexpectedEof` when the client closed.
    pub async fn read_into(
        &mut self,
        buf: &mut BytesMut,
        min_spare: usize,
    ) -> std::io::Result<usize> {
        buf.reserve(min_spare);
        let owned = std::mem::take(buf);
        let (len, cap) = (owned.len(), owned.capacity());
        let spare = owned.slice_mut(len..cap);
        let (r, spare) = match self {
            ClientStream::Plain(s) => s.read(spare).await,
            ClientStream::Tls(s) => s.read(spare).await,
        };
        *buf = spare.into_inner();
        match r? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => Ok(n),
        }
    }

    /// Writes all of `out` and leaves it empty (its capacity kept).
    pub async fn write_all(&mut self, out: &mut BytesMut) -> std::io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let owned = std::mem::take(out);
        let (r, mut owned) = match self {
            ClientStream::Plain(s) => s.write_all(owned).await,
            ClientStream::Tls(s) => s.write_all(owned).await,
        };
        owned.clear();
        *out = owned;
        r?;
        if let ClientStream::Tls(s) = self {
            s.flush().await?;
        }
        Ok(())
    }
}
