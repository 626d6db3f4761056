//! TLS on a client connection, with I/O buffers lent only while bytes move.
//!
//! `monoio_rustls`'s stream keeps a 16 KiB read and a 16 KiB write buffer for the whole life
//! of each connection (`monoio-io-wrapper`'s `safe_io::Buffer`), so an idle TLS client cost
//! 32 KiB more than a plain one. Here the ciphertext read from the socket lands in a buffer
//! borrowed from the core's [`BufPool`] and goes straight into rustls; records rustls
//! encrypts go out through another borrowed buffer; both go back at once. An idle
//! connection keeps only the [`ServerConnection`] (its keys, and the ~4 KiB record buffer
//! rustls's buffered API keeps for the next read; its unbuffered API would drop that too,
//! but it also drives the handshake differently from [`crate::handshake`]).

use std::io::{self, Read, Write};

use monoio::{
    buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf},
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent},
    net::TcpStream,
    BufResult,
};
use rustls::{sign::CertifiedKey, ServerConnection};
use std::sync::Arc;

use crate::{io_buf::BufPool, transport::Transport};

/// Ciphertext read from the socket at once, at most.
const MAX_READ: usize = 16 * 1024;

/// A server-side TLS connection over TCP, after its handshake.
pub struct TlsStream {
    io: TcpStream,
    conn: ServerConnection,
    pool: BufPool,
    /// The certificate served (shared with the config: one pointer per connection).
    certified: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

/// Counts a lent buffer as lost if the I/O that owns it is cancelled (its future dropped
/// by a timeout) before the buffer comes back.
struct Loan<'a> {
    pool: &'a BufPool,
    out: bool,
}

impl Loan<'_> {
    fn back(mut self) {
        self.out = false;
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if self.out {
            self.pool.lost();
        }
    }
}

// === impl TlsStream ===

impl TlsStream {
    /// Wraps a connection whose handshake is done.
    pub fn new(
        io: TcpStream,
        conn: ServerConnection,
        pool: BufPool,
        certified: Option<Arc<CertifiedKey>>,
    ) -> Self {
        Self {
            io,
            conn,
            pool,
            certified,
        }
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The leaf certificate (DER) the handshake served, if known.
    pub fn certificate(&self) -> Option<&[u8]> {
        self.certified
            .as_deref()
            .and_then(|c| c.cert.first())
            .map(|c| c.as_ref())
    }

    /// The server name the client sent (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }

    /// Whether rustls holds decrypted bytes not yet read, or has seen the end.
    fn has_plaintext(&mut self) -> bool {
        match self.conn.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            // The next read reports it.
            Err(_) => true,
        }
    }

    /// Reads once from the socket into a lent buffer and hands the records to rustls;
    /// at the end of the stream, tells rustls so (its reader then says how it ended). With
    /// `cancel`, the socket read can be called off (see [`Transport::read_cancelable`]).
    async fn read_records(&mut self, cancel: Option<CancelHandle>) -> io::Result<()> {
        let buf = self.pool.take_read();
        let loan = Loan {
            pool: &self.pool,
            out: true,
        };
        // No more ciphertext than rustls takes as plaintext before it is read out (its
        // received-plaintext limit, 16 KiB by default).
        let room = buf.capacity().min(MAX_READ);
        let room = buf.slice_mut(0..room);
        let (res, buf) = match cancel {
            Some(c) => self.io.cancelable_read(room, c).await,
            None => self.io.read(room).await,
        };
        let buf = buf.into_inner();
        loan.back();
        let fed = match res {
            Ok(0) => self.conn.read_tls(&mut io::empty()).map(drop),
            Ok(_) => feed(&mut self.conn, &buf),
            Err(e) => Err(e),
        };
        self.pool.give_read(buf);
        fed?;
        if let Err(error) = self.conn.process_new_packets() {
            // rustls has queued the alert that tells the client why.
            let _ = self.write_records().await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
        // Post-handshake messages (a key update) may want an answer.
        if self.conn.wants_write() {
            self.write_records().await?;
        }
        Ok(())
    }

    /// Reads plaintext into `buf`, reading records from the socket until rustls has some.
    async fn read_plaintext<T: IoBufMut>(
        &mut self,
        mut buf: T,
        cancel: Option<CancelHandle>,
    ) -> BufResult<usize, T> {
        loop {
            // SAFETY: `write_ptr` and `bytes_total` describe memory `buf` owns and lets be
            // written; `buf` is held across the call and nothing else refers to it. rustls
            // only writes into the slice (it does not read what was there before).
            #[allow(unsafe_code)]
            let room =
                unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
            match self.conn.reader().read(room) {
                Ok(n) => {
                    // SAFETY: rustls wrote `n` bytes at the start of the slice.
                    #[allow(unsafe_code)]
                    unsafe {
                        buf.set_init(n)
                    };
                    return (Ok(n), buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return (Err(e), buf),
            }
            if let Err(e) = self.read_records(cancel.clone()).await {
                return (Err(e), buf);
            }
        }
    }

    /// Writes everything rustls has queued through a lent buffer.
    async fn write_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = self.pool.take_write();
            if let Err(e) = self.conn.write_tls(&mut out) {
                self.pool.give_write(out);
                return Err(e);
            }
            let loan = Loan {
                pool: &self.pool,
                out: true,
            };
            let (res, out) = self.io.write_all(out).await;
            loan.back();
            self.pool.give_write(out);
            res?;
        }
        Ok(())
    }
}

/// Hands all of `bytes` to rustls; rustls taking none (its buffer full of a record it
/// cannot process yet) is an error rather than a loop.
fn feed(conn: &mut ServerConnection, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        if conn.read_tls(&mut bytes)? == 0 {
            return Err(io::Error::other("TLS record buffer full"));
        }
        // Records are decrypted as they come, so that rustls's buffer never holds more
        // than one record's worth of what one read brought.
        if let Err(error) = conn.process_new_packets() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
    }
    Ok(())
}

impl Transport for TlsStream {
    async fn readable(&mut self) -> io::Result<()> {
        if self.has_plaintext() {
            return Ok(());
        }
        self.io.readable(false).await
    }

    async fn read_cancelable<T: IoBufMut>(
        &mut self,
        buf: T,
        cancel: CancelHandle,
    ) -> BufResult<usize, T> {
        self.read_plaintext(buf, Some(cancel)).await
    }
}

impl AsyncReadRent for TlsStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.read_plaintext(buf, None).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the raw buffer points into `buf`'s first iovec, which `buf` (held here
        // until the read returns) owns.
        #[allow(unsafe_code)]
        let n = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(raw) => self.read(raw).await.0,
            None => Ok(0),
        };
        if let Ok(n) = n {
            // SAFETY: `n` bytes were written into the first iovec.
            #[allow(unsafe_code)]
            unsafe {
                buf.set_init(n)
            };
        }
        (n, buf)
    }
}

impl AsyncWriteRent for TlsStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `read_ptr` and `bytes_init` describe initialised memory `buf` owns; `buf`
        // is held across the call.
        #[allow(unsafe_code)]
        let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let n = match self.conn.writer().write(bytes) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        match self.write_records().await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the raw buffer points into `buf`'s first iovec, held here until the write
        // returns.
        #[allow(unsafe_code)]
        let n = match unsafe { RawBuf::new_from_iovec(&buf) } {
            Some(raw) => self.write(raw).await.0,
            None => Ok(0),
        };
        (n, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.write_records().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.write_records().await?;
        self.io.shutdown().await
    }
}
