//! Benchmark helpers for ringgate. The harness scripts live beside this crate in `bench/`.
#![deny(rust_2018_idioms)]
