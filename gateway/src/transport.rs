//! A client connection's byte stream (plain TCP or [`crate::tls_stream::TlsStream`]) as the
//! HTTP loop sees it: reads and writes with owned buffers, plus a wait for bytes that holds
//! no buffer, so that an idle connection costs its socket and a little state, not a read
//! buffer parked in the kernel.

use std::{future::Future, io};

use monoio::{
    io::{AsyncReadRent, AsyncWriteRent},
    net::TcpStream,
};

/// Reads, writes, and waiting for bytes without a buffer.
pub trait Transport: AsyncReadRent + AsyncWriteRent {
    /// Waits until a read would return at once: bytes are there, the peer closed, or the
    /// socket failed. Holds no buffer while it waits (io_uring: a poll, not a read).
    fn readable(&mut self) -> impl Future<Output = io::Result<()>>;
}

impl Transport for TcpStream {
    async fn readable(&mut self) -> io::Result<()> {
        // Not relaxed: on epoll, readiness left over from an earlier read is checked with a
        // poll(2), so a stale one does not send an idle connection into a read (with its
        // buffer) that then waits.
        TcpStream::readable(self, false).await
    }
}
