//! Connections to workers, and the one-shot exchange active health checks use.

use std::{net::SocketAddr, time::Duration};

use bytes::BytesMut;
use monoio::{
    io::{AsyncReadRent, AsyncWriteRentExt},
    net::TcpStream,
    time::timeout,
};

use super::head::parse_response;

/// Why a worker could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("connect to {addr}: {reason}")]
pub struct ConnectError {
    /// The worker.
    pub addr: SocketAddr,
    /// Why.
    pub reason: String,
}

/// Connects to `addr` within `limit`, with Nagle off.
pub async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, ConnectError> {
    let err = |reason: String| ConnectError { addr, reason };
    match timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(format!("timed out after {limit:?}"))),
    }
}

/// Whether a pooled connection can no longer carry a request: the worker closed it (a
/// keep-alive timeout shorter than ours), reset it, or sent bytes nobody asked for. Looks
/// without blocking or consuming ([`crate::socket_peek::peek`]).
pub fn unusable(stream: &TcpStream) -> bool {
    // Data: an unsolicited byte, so the framing of the next response is unknown.
    crate::socket_peek::peek(stream) != crate::socket_peek::Peek::Empty
}

/// Sends `request` and returns the response's status code (the body is not read; the
/// connection is dropped afterwards). Everything must happen within `limit`.
pub async fn status_of(addr: SocketAddr, request: Vec<u8>, limit: Duration) -> Result<u16, String> {
    let exchange = async {
        let mut s = connect(addr, limit).await.map_err(|e| e.to_string())?;
        let (res, _) = s.write_all(request).await;
        res.map_err(|e| e.to_string())?;
        let mut pending = BytesMut::new();
        loop {
            if let Some(head) = parse_response(&mut pending).map_err(|e| e.to_string())? {
                if head.status >= 200 {
                    return Ok(head.status);
                }
                continue;
            }
            let (res, chunk) = s.read(Vec::with_capacity(4096)).await;
            match res {
                Ok(0) => return Err("closed without a response".to_string()),
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}
