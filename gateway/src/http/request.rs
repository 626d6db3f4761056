//! A request as the router and the handlers take it: its head and buffered body, and the
//! client's socket, watched for the client going away while the request is answered.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use bytes::Bytes;

use crate::{
    deadline::Deadlines,
    socket_peek::{peek, Peek},
};

/// A complete request: head and buffered body.
#[derive(Debug)]
pub struct Request {
    /// Method, URI, version, headers.
    pub head: http::request::Parts,
    /// The whole body.
    pub body: Bytes,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The client's socket, watched while the request is answered.
    pub client: Option<ClientSocket>,
}

/// How often a client is checked for having gone while its request runs.
pub const CLIENT_CHECK: Duration = Duration::from_millis(200);

/// The socket of a request's client, to tell whether the client went away meanwhile (a
/// one-byte peek, see [`crate::socket_peek`]); valid while the connection is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSocket(pub RawFd);

impl AsRawFd for ClientSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl ClientSocket {
    /// Resolves once the client has closed its end or its connection failed, checked every
    /// [`CLIENT_CHECK`] on the core's deadline timer (every `/sql` statement waits on this:
    /// no monoio `Sleep` for each); never while the client is there (or has sent more, a
    /// pipelined request).
    pub async fn gone(self, deadlines: &Deadlines) {
        loop {
            deadlines
                .until(monoio::time::Instant::now() + CLIENT_CHECK)
                .await;
            if matches!(peek(&self), Peek::Closed | Peek::Failed) {
                return;
            }
        }
    }
}
