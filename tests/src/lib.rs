//! Helpers shared by ringgate's integration and HA tests.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod backend;
pub mod gateway;
pub mod http;
pub mod pg;
pub mod wire;
pub mod worker;

// The waits that poll for a state: the kit's, which every crate's tests share.
pub use ringgate_testkit::{eventually, eventually_async, wait_for};
