//! In-process TLS for ringgate's HTTPS listener.
//!
//! Owns loading a PEM certificate chain and private key into a rustls `ServerConfig`
//! (TLS 1.2 and 1.3 only, ALPN `http/1.1`, ring as the one crypto provider) and reloading it.
//! It does no I/O on connections: the gateway drives the handshake and the records itself
//! (`gateway/src/handshake.rs`, `tls_stream.rs`, with I/O buffers lent only while bytes
//! move) using the latest [`ServerConfig`](rustls::ServerConfig) snapshot from [`CertStore`].
//!
//! Main types: [`load_server_config`], [`CertStore`], [`Error`].
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![forbid(unsafe_code)]

mod load;
mod reload;

pub use load::{chain_summary, load_server_config, Error};
pub use reload::CertStore;
