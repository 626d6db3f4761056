//! Benchmark tools for ringgate. `rg-load` is an open-loop HTTP/1.1 load generator with
//! coordinated-omission correction (latency is measured from when each request was
//! *scheduled*, as wrk2 does); the harness scripts live beside this crate in `bench/`.
#![deny(rust_2018_idioms)]
