//! One HTTP/1.1 exchange with a worker over a pooled keep-alive connection: write the
//! request, read the response head and its body (Content-Length, chunked, or until close).

use std::{net::SocketAddr, time::Duration};

use monoio::{
    io::{AsyncReadRent, AsyncWriteRentExt},
    net::TcpStream,
    time::timeout,
};

/// Largest response body ringgate buffers from a worker.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest response head.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How an exchange failed, and whether it is safe to try another worker.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Could not connect: nothing was sent.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The worker.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request was (maybe partly) sent but no response byte came back.
    #[error("{addr} sent no response: {reason}")]
    NoResponse {
        /// The worker.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No response head within the response timeout.
    #[error("{addr} did not answer within {waited:?}")]
    Timeout {
        /// The worker.
        addr: SocketAddr,
        /// The timeout.
        waited: Duration,
    },
    /// The response was malformed, too large, or cut off after it started.
    #[error("{addr} sent a bad response: {reason}")]
    BadResponse {
        /// The worker.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A worker's response.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// Status code.
    pub status: u16,
    /// Headers as sent (names lower-case), framing headers included.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Whether the connection may be reused.
    pub reusable: bool,
}

/// Connects to `addr` within `limit`.
pub async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, ExchangeError> {
    let err = |reason: String| ExchangeError::Connect { addr, reason };
    match timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(format!("timed out after {limit:?}"))),
    }
}

/// Sends `request` (head and body, already encoded) and reads the response.
pub async fn exchange(
    stream: &mut TcpStream,
    addr: SocketAddr,
    request: Vec<u8>,
    head_request: bool,
    response_timeout: Duration,
) -> Result<UpstreamResponse, ExchangeError> {
    let no_response = |reason: String| ExchangeError::NoResponse { addr, reason };
    let bad = |reason: String| ExchangeError::BadResponse { addr, reason };
    let (res, _) = stream.write_all(request).await;
    res.map_err(|e| no_response(e.to_string()))?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    // The head.
    let (status, headers, head_len) = loop {
        let n = match timeout(response_timeout, read_more(stream, &mut buf)).await {
            Ok(r) => r.map_err(|e| no_response(e.to_string()))?,
            Err(_) => {
                return Err(ExchangeError::Timeout {
                    addr,
                    waited: response_timeout,
                })
            }
        };
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed.code.unwrap_or(502);
                let headers: Vec<(String, Vec<u8>)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect();
                if (100..200).contains(&status) {
                    // Interim response (100 Continue): drop it and read on.
                    buf.drain(..len);
                    continue;
                }
                break (status, headers, len);
            }
            Ok(httparse::Status::Partial) if n == 0 && buf.is_empty() => {
                return Err(no_response("connection closed".into()))
            }
            Ok(httparse::Status::Partial) if n == 0 => {
                return Err(bad("connection closed inside the head".into()))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(bad("response head too large".into()))
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(bad(e.to_string())),
        }
    };
    buf.drain(..head_len);
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    let close = find("connection").is_some_and(|c| c.contains("close"));
    let chunked = find("transfer-encoding").is_some_and(|t| t.contains("chunked"));
    let length = find("content-length").and_then(|l| l.trim().parse::<usize>().ok());
    let no_body = head_request || status == 204 || status == 304;
    let (body, reusable) = if no_body {
        (Vec::new(), !close)
    } else if chunked {
        loop {
            if let Some((body, _)) = decode_chunked(&buf).map_err(|e| bad(e.into()))? {
                break (body, !close);
            }
            read_body_more(stream, &mut buf, response_timeout, addr).await?;
        }
    } else if let Some(len) = length {
        if len > MAX_RESPONSE_BYTES {
            return Err(bad(format!("body of {len} bytes is too large")));
        }
        while buf.len() < len {
            read_body_more(stream, &mut buf, response_timeout, addr).await?;
        }
        buf.truncate(len);
        (buf, !close)
    } else {
        // Until the worker closes.
        loop {
            match timeout(response_timeout, read_more(stream, &mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) if buf.len() > MAX_RESPONSE_BYTES => {
                    return Err(bad("body too large".into()))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(bad(e.to_string())),
                Err(_) => return Err(bad("body timed out".into())),
            }
        }
        (buf, false)
    };
    Ok(UpstreamResponse {
        status,
        headers,
        body,
        reusable,
    })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let chunk = vec![0u8; 16 * 1024];
    let (res, chunk) = stream.read(chunk).await;
    let n = res?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

async fn read_body_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: Duration,
    addr: SocketAddr,
) -> Result<(), ExchangeError> {
    let bad = |reason: String| ExchangeError::BadResponse { addr, reason };
    match timeout(limit, read_more(stream, buf)).await {
        Ok(Ok(0)) => Err(bad("connection closed inside the body".into())),
        Ok(Ok(_)) if buf.len() > MAX_RESPONSE_BYTES + MAX_HEAD_BYTES => {
            Err(bad("body too large".into()))
        }
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(bad(e.to_string())),
        Err(_) => Err(bad("body timed out".into())),
    }
}

/// Decodes a complete chunked body from `buf`: `Ok(None)` while incomplete, else the body
/// and the bytes it took (trailers skipped).
pub fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, &'static str> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + eol]).map_err(|_| "bad chunk size")?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if body.len() + size > MAX_RESPONSE_BYTES {
            return Err("body too large");
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF");
        }
        at += size + 2;
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_when_complete() {
        let full = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (body, used) = decode_chunked(full).unwrap().unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(used, full.len());
        assert_eq!(decode_chunked(&full[..12]).unwrap(), None);
        assert_eq!(decode_chunked(&full[..full.len() - 1]).unwrap(), None);
        assert!(decode_chunked(b"zz\r\n").is_err());
        assert!(decode_chunked(b"1\r\nab\r\n").is_err());
    }
}
