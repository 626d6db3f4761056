//! Helpers shared by ringgate's integration and HA tests.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod backend;
pub mod gateway;
pub mod http;
pub mod wire;
pub mod worker;
