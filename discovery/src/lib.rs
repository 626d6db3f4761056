//! Everything ringgate learns about the world, as immutable snapshots handed to every core.
//!
//! Owns the [`Topology`] snapshot the pools route by and its sources: Patroni's DCS keys in
//! etcd (through etcd's v3 JSON gateway; the leader key is the only authority on which
//! member may take writes) with Patroni's REST `/cluster` as fallback, polled by one small
//! thread ([`watch::spawn`]) that publishes a new snapshot on every change and keeps the
//! last one, marked stale, when no source answers. It opens no database connections.
//! Redis, and the workers registered there, are `ringgate-redis`'s.
//!
//! # Layout
//! - [`topology`]: the snapshot types.
//! - [`patroni`]: DCS member data or REST `/cluster` → topology.
//! - [`etcd`]: etcd v3 JSON gateway client.
//! - [`http`]: the blocking HTTP client both use.
//! - [`lease`]: the leader's lease, gating writes.
//! - [`probe`]: the leader probe, holding writes from a leader that stopped answering.
//! - [`watch`]: the watcher thread.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![forbid(unsafe_code)]

pub mod etcd;
pub mod http;
pub mod lease;
pub mod patroni;
pub mod probe;
pub mod topology;
pub mod watch;

pub use topology::{Member, Role, Topology};

/// Why the topology could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// No source answered.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A source answered something we cannot read.
    #[error("unexpected answer: {0}")]
    Parse(String),
}
