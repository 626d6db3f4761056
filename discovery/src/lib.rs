//! Everything ringgate learns about the world: Patroni topology, Sentinel, workers, project config.
//!
//! Not yet built: see issue 5.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![forbid(unsafe_code)]
