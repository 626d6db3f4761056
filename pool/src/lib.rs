//! Per-core tenant pools of PostgreSQL connections and replica-aware routing.
//!
//! Not yet built: see issue 4.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![forbid(unsafe_code)]
