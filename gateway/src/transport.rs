//! A client connection's byte stream (plain TCP or [`crate::tls_stream::TlsStream`]) as the
//! HTTP loop sees it: reads and writes with owned buffers, plus a wait for bytes that holds
//! no buffer, so that an idle connection costs its socket and a little state, not a read
//! buffer parked in the kernel; and a read that can be called off, for the short wait of a
//! busy connection whose buffer stays attached (`crate::conn`'s read grace).

use std::{future::Future, io};

use monoio::{
    buf::IoBufMut,
    io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent},
    net::TcpStream,
    BufResult,
};

/// Reads, writes, and waiting for bytes without a buffer.
pub trait Transport: AsyncReadRent + AsyncWriteRent {
    /// Waits until a read would return at once: bytes are there, the peer closed, or the
    /// socket failed. Holds no buffer while it waits (io_uring: a poll, not a read).
    fn readable(&mut self) -> impl Future<Output = io::Result<()>>;

    /// A read that ends with `ECANCELED` and nothing read, its buffer given back, once
    /// `cancel`'s canceller is used (unless bytes came first: then it returns them).
    fn read_cancelable<T: IoBufMut>(
        &mut self,
        buf: T,
        cancel: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>>;

    /// The plain TCP stream this is, to park while idle (see [`crate::parked`]); `None` for
    /// a kind that never parks (TLS keeps its task).
    fn into_tcp(self) -> Option<TcpStream>
    where
        Self: Sized,
    {
        None
    }
}

/// Whether a read ended because it was called off (see [`Transport::read_cancelable`]).
pub fn cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED)
}

impl Transport for TcpStream {
    fn read_cancelable<T: IoBufMut>(
        &mut self,
        buf: T,
        cancel: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>> {
        self.cancelable_read(buf, cancel)
    }

    fn into_tcp(self) -> Option<TcpStream> {
        Some(self)
    }

    async fn readable(&mut self) -> io::Result<()> {
        // Not relaxed: on epoll, readiness left over from an earlier read is checked with a
        // poll(2), so a stale one does not send an idle connection into a read (with its
        // buffer) that then waits.
        TcpStream::readable(self, false).await
    }
}
