//! A small blocking HTTP/1.1 client for control-plane calls (etcd's JSON gateway, Patroni's
//! REST API) on discovery's own thread. Plain `http://IP:PORT` only; `Connection: close`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::Duration,
};

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
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head is not UTF-8"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let mut payload = raw[end + 4..].to_vec();
    if chunked {
        payload = dechunk(&payload).ok_or_else(|| bad("bad chunked body"))?;
    }
    let text = String::from_utf8(payload).map_err(|_| bad("body is not UTF-8"))?;
    if !(200..300).contains(&status) {
        return Err(bad(&format!(
            "status {status}: {}",
            text.chars().take(200).collect::<String>()
        )));
    }
    Ok(text)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..line_end])
            .ok()?
            .split(';')
            .next()?
            .trim()
            .to_string();
        let size = usize::from_str_radix(&size_str, 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_and_parses_bases() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\n").is_none());
        assert_eq!(base_addr("http://127.0.0.1:2379/").unwrap().port(), 2379);
        assert!(base_addr("https://127.0.0.1:2379").is_err());
    }
}
