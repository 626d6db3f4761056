//! A small blocking HTTP/1.1 client for control-plane calls (etcd's JSON gateway, Patroni's
//! REST API) on discovery's own thread. Plain `http://IP:PORT` only; `Connection: close`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::Duration,
};

use bytes::BytesMut;
use ringgate_http1::{ChunkedDecoder, ResponseFraming, ResponseHead};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http://host:port[/path]`.
    #[error("bad URL {0:?}")]
    Url(String),
    /// Connecting, writing or reading failed.
    #[error("{url}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The response is not HTTP or not 2xx.
    #[error("{url}: {reason}")]
    Response {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// `http://host:port` → its address.
pub fn base_addr(base: &str) -> Result<SocketAddr, HttpError> {
    let rest = base
        .trim_end_matches('/')
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(base.into()))?;
    rest.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| HttpError::Url(base.into()))
}

/// Sends `method path` with an optional JSON body; returns the body of a 2xx response.
pub fn call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<String, HttpError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let io = |source| HttpError::Io {
        url: url.clone(),
        source,
    };
    let addr = base_addr(base)?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let bad = |reason: &str| HttpError::Response {
        url: url.clone(),
        reason: reason.into(),
    };
    let (status, payload) = read_response(&raw, method == "HEAD").map_err(|e| bad(&e))?;
    let text = String::from_utf8(payload).map_err(|_| bad("body is not UTF-8"))?;
    if !(200..300).contains(&status) {
        return Err(bad(&format!(
            "status {status}: {}",
            text.chars().take(200).collect::<String>()
        )));
    }
    Ok(text)
}

/// Largest response head read.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest response body read.
const MAX_BODY: usize = 64 << 20;

/// One whole response (the connection was closed after it) through ringgate's one HTTP/1
/// codec: its status and body. Interim (1xx) responses are skipped.
fn read_response(raw: &[u8], head_only: bool) -> Result<(u16, Vec<u8>), String> {
    let mut buf = BytesMut::from(raw);
    let head = loop {
        match ResponseHead::parse(&mut buf, MAX_HEAD).map_err(|e| e.to_string())? {
            Some(h) if h.status < 200 => continue,
            Some(h) => break h,
            None => return Err("incomplete response head".into()),
        }
    };
    let body = match head.body_framing(head_only) {
        ResponseFraming::None => Vec::new(),
        ResponseFraming::Length(n) => buf
            .get(..usize::try_from(n).unwrap_or(usize::MAX))
            .ok_or("body shorter than its content-length")?
            .to_vec(),
        ResponseFraming::Chunked => {
            let mut body = ChunkedDecoder::with_buffer(Vec::new(), MAX_BODY);
            body.decode_slice(&buf).map_err(|e| e.to_string())?;
            if !body.done() {
                return Err("chunked body cut short".into());
            }
            body.into_body()
        }
        ResponseFraming::UntilClose => buf.to_vec(),
    };
    Ok((head.status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bodies_by_their_framing() {
        let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(
            read_response(chunked, false).unwrap(),
            (200, b"abcde".to_vec())
        );
        let length = b"HTTP/1.1 503 No\r\nContent-Length: 2\r\n\r\nnoXX";
        assert_eq!(read_response(length, false).unwrap(), (503, b"no".to_vec()));
        let close = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(read_response(close, false).unwrap().1, b"all of it");
        assert_eq!(read_response(length, true).unwrap().1, b"");
    }

    #[test]
    fn refuses_what_the_gateway_refuses() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        ] {
            assert!(
                read_response(bad, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn parses_bases() {
        assert_eq!(base_addr("http://127.0.0.1:2379/").unwrap().port(), 2379);
        assert!(base_addr("https://127.0.0.1:2379").is_err());
    }
}
