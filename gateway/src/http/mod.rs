//! HTTP/1.1 on one client connection: head parsing with limits, body framing, responses.
//!
//! Request heads are decoded by monoio-http's `RequestHeadDecoder` (httparse underneath);
//! around it this module adds what a public listener needs and that codec leaves out: a
//! bound on head size (431), strict framing (`Content-Length` and `Transfer-Encoding`
//! together are rejected, as are differing lengths), a body limit (413) enforced before the
//! body is read, and a chunked decoder that accepts extensions and trailers.

pub mod body;
pub mod head;
pub mod response;

pub use body::ChunkedDecoder;
pub use head::{parse_head, Framing, HeadError, ParsedHead};
pub use response::{DateCache, Response};
