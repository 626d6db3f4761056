//! Everything ringgate learns about the world, as immutable snapshots handed to every core.
//!
//! Owns the types the rest of ringgate consumes ([`Topology`], [`Member`]) and, as sources
//! are added, the Patroni/etcd topology watcher, Sentinel, worker discovery and the project
//! config cache. It opens no PostgreSQL connections for queries: that is `ringgate-pool`'s.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![forbid(unsafe_code)]

pub mod topology;

pub use topology::{Member, Role, Topology};
