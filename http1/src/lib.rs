//! HTTP/1.1 message framing (RFC 9112) for every direction ringgate speaks: client requests
//! to the gateway, requests and responses between the proxy and its workers, the discovery
//! client's calls to etcd and Patroni, and the test worker. One strict head parser
//! ([`head`], on httparse) and one strict chunked state machine ([`chunked`]) with two
//! sinks: collect (decode a body into a buffer, under a limit) and forward (find where a
//! body ends while its bytes pass through unchanged).
//!
//! Two parsers that disagree on where a message ends are how request smuggling starts, so
//! every reader of an HTTP/1 message in ringgate goes through this crate. What it refuses:
//! a bare LF or bare CR anywhere in a head or in chunk framing, obsolete line folding,
//! `Content-Length` together with `Transfer-Encoding`, differing or non-numeric lengths, a
//! transfer coding other than a final `chunked`, chunk sizes that are not plain hex digits
//! (whitespace, signs, `0x`, overflow), control characters in chunk extensions and
//! malformed trailer lines.
//!
//! It owns parsing and framing only; no I/O, no limits beyond the ones a caller passes, no
//! header rewriting (the proxy's hop-by-hop rules are in the gateway).
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![deny(unsafe_code)]

pub mod chunked;
pub mod head;

pub use chunked::{Chunked, ChunkedDecoder, ChunkedError, Collect, Forward, Sink};
pub use head::{
    parse_request, HeadError, RequestFraming, RequestHead, ResponseFraming, ResponseHead,
    MAX_HEADERS,
};
