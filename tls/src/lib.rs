//! In-process TLS for ringgate: PEM loading and certificate reload.
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![forbid(unsafe_code)]
