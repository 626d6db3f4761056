//! PostgreSQL's frontend protocol, spoken directly over monoio sockets for the data path.
//!
//! Why not tokio-postgres here: it always asks the server for binary results (so ringgate
//! had to re-implement every type's output function, and could never cover extension
//! types), and it runs on tokio I/O traits, which on monoio costs a poll-io compatibility
//! layer and a spawned task per connection. This crate asks for **text** results, so every
//! value is the server's own output text, for every type present and future; reports the
//! server's command tag and row count as sent; and reads and writes with owned buffers on
//! the core's own runtime. Messages are encoded and decoded by `postgres-protocol` (the
//! rust-postgres family's protocol crate), SCRAM-SHA-256 included; TLS is rustls.
//!
//! # Layout
//! - [`conn`]: [`Connection`]: connect (TCP, `SSLRequest` + rustls, startup,
//!   authentication), prepare, execute (one statement or a pipeline), simple queries,
//!   cancel.
//! - [`error`]: [`Error`] and the server's [`DbError`].
//! - [`scram`]: SCRAM-SHA-256 with keys instead of a password (server side and client).
//! - [`stream`]: plain or TLS socket with owned-buffer I/O.
#![deny(rust_2018_idioms, missing_docs)]
#![forbid(unsafe_code)]

pub mod conn;
pub mod error;
pub mod scram;
pub mod stream;

pub use conn::{
    Answer, CancelToken, Column, ConnectConfig, Connection, Job, Prepared, QueryResult, Row,
};
pub use error::{DbError, Error};
pub use scram::ClientKeys;
