//! Messages from the main thread to a core (its control channel): below the server and
//! the wire front end, which both send them.

use std::sync::Arc;

/// A message from the main thread to a core.
#[derive(Debug)]
pub enum Control {
    /// Stop accepting and drain.
    Drain,
    /// Serve this TLS config from now on (existing connections keep theirs).
    Tls(Arc<rustls::ServerConfig>),
    /// Route by this topology from now on.
    Topology(Arc<ringgate_discovery::Topology>),
    /// Proxy to these workers from now on.
    Workers(Arc<ringgate_redis::workers::WorkerSet>),
    /// A `CancelRequest` another instance received (through Redis): cancel the statement
    /// of the session with this key, if it is one of this process's.
    Cancel {
        /// `BackendKeyData`'s process id.
        pid: i32,
        /// Its secret.
        key: i32,
    },
}
