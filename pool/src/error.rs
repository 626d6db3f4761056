//! Pool errors: each says which limit, tenant or node was involved.

use std::net::SocketAddr;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tenant's pool stayed exhausted for the whole wait timeout.
    #[error(
        "tenant {tenant:?} is at its limit of {limit} connections to {node}; waited {waited_ms} ms"
    )]
    Exhausted {
        /// The tenant.
        tenant: String,
        /// The node.
        node: String,
        /// The tenant's limit (process-wide).
        limit: usize,
        /// How long the request waited.
        waited_ms: u64,
    },
    /// Opening a connection timed out.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout {
        /// The server.
        addr: SocketAddr,
    },
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server refused a listening connection's startup, or it failed.
    #[error("{0}")]
    Backend(#[from] tokio_postgres::Error),
    /// The server refused a data-path connection's startup (authentication, unknown
    /// database, too many connections...), or the connection failed.
    #[error("{0}")]
    Pg(ringgate_pgwire::Error),
    /// Every connection ringgate may open to this node is in use, and none was given back
    /// within the wait timeout.
    #[error("connection budget of {limit} to {node} is used up")]
    Budget {
        /// The node.
        node: String,
        /// The process-wide limit.
        limit: usize,
    },
    /// TLS to the server could not be set up.
    #[error("TLS to the server: {0}")]
    Tls(String),
    /// The topology names no leader for a write.
    #[error("no primary is known")]
    NoPrimary,
    /// The leader's lease may have run out (no renewal seen in time) or passed to another
    /// member: no write may be sent to it.
    #[error("the leader's lease has lapsed")]
    LeaseLapsed,
    /// The pool was closed (evicted, or its node left the topology).
    #[error("pool closed")]
    Closed,
}

impl Error {
    /// The SQLSTATE when the server answered with an error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Backend(e) => e.code().map(|c| c.code()),
            Error::Pg(e) => e.db().map(|d| d.code.as_str()),
            _ => None,
        }
    }
}
