//! HTTP/1.1 on one client connection: heads and bodies are framed by [`ringgate_http1`]
//! (the one codec every reader in ringgate uses), responses are encoded here.
//!
//! Around the codec the connection adds what a public listener needs: a bound on head size
//! (431), a body limit (413) enforced before the body is read, and timeouts. A complete
//! request as the handlers take it is a [`Request`].

pub mod request;
pub mod response;

pub use request::{ClientSocket, Request};
pub use response::{DateCache, Response};
pub use ringgate_http1::{
    parse_request as parse_head, ChunkedDecoder, ChunkedError, HeadError, RequestFraming,
    RequestHead as ParsedHead,
};
