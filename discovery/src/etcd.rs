//! etcd v3 through its JSON gateway (`POST /v3/kv/range`), with failover between endpoints.

use std::{cell::Cell, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::{json, Value};

use crate::{http, DiscoveryError};

/// A client for a set of etcd endpoints (`http://host:2379`).
#[derive(Debug)]
pub struct Etcd {
    endpoints: Vec<String>,
    next: Cell<usize>,
    timeout: Duration,
}

impl Etcd {
    /// A client trying `endpoints` in turn, starting with the last that answered.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        Self {
            endpoints,
            next: Cell::new(0),
            timeout,
        }
    }

    /// Every key under `prefix` with its value.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, DiscoveryError> {
        Ok(self
            .get_prefix_kvs(prefix)?
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect())
    }

    /// The remaining TTL of lease `id`, as etcd reports it (whole seconds, rounded down);
    /// `None` when the lease has expired or does not exist.
    pub fn lease_ttl(&self, id: i64) -> Result<Option<Duration>, DiscoveryError> {
        let body = json!({ "ID": id }).to_string();
        let text = self.post("/v3/lease/timetolive", &body)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| DiscoveryError::Parse(format!("etcd lease: {e}")))?;
        let ttl = match &v["TTL"] {
            Value::String(s) => s.parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        };
        match ttl {
            Some(t) if t > 0 => Ok(Some(Duration::from_secs(t as u64))),
            Some(_) => Ok(None),
            None => Err(DiscoveryError::Parse(format!(
                "etcd lease without TTL: {text}"
            ))),
        }
    }

    /// Every key under `prefix` with its value and lease.
    pub fn get_prefix_kvs(&self, prefix: &str) -> Result<Vec<Kv>, DiscoveryError> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body =
            json!({"key": STANDARD.encode(prefix), "range_end": STANDARD.encode(&end)}).to_string();
        parse_range(&self.post("/v3/kv/range", &body)?)
    }

    /// POSTs `body` to `path` on the first endpoint that answers, starting with the last
    /// that did.
    fn post(&self, path: &str, body: &str) -> Result<String, DiscoveryError> {
        let mut last_error = None;
        for i in 0..self.endpoints.len() {
            let idx = (self.next.get() + i) % self.endpoints.len();
            match http::call(&self.endpoints[idx], "POST", path, Some(body), self.timeout) {
                Ok(text) => {
                    self.next.set(idx);
                    return Ok(text);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(DiscoveryError::Unreachable(
            last_error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no etcd endpoints".into()),
        ))
    }
}

/// Watches `key` on `endpoint` (etcd's streaming `POST /v3/watch`) and calls `on_event`
/// for every change the stream reports; returns when the stream ends, fails, or carries
/// nothing for `idle` (the caller reconnects). The JSON gateway sends one message per line,
/// in chunks (framed by ringgate's one chunked state machine); only whole lines are looked
/// at.
pub fn watch_key(
    endpoint: &str,
    key: &str,
    connect_timeout: Duration,
    idle: Duration,
    on_event: impl FnMut(),
) -> Result<(), DiscoveryError> {
    use std::io::Write;

    let unreachable = |e: &dyn std::fmt::Display| {
        DiscoveryError::Unreachable(format!("etcd watch {endpoint}: {e}"))
    };
    let addr = http::base_addr(endpoint).map_err(|e| unreachable(&e))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, connect_timeout)
        .map_err(|e| unreachable(&e))?;
    s.set_read_timeout(Some(idle))
        .map_err(|e| unreachable(&e))?;
    s.set_write_timeout(Some(connect_timeout))
        .map_err(|e| unreachable(&e))?;
    let body = json!({"create_request": {"key": STANDARD.encode(key)}}).to_string();
    write!(
        s,
        "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| unreachable(&e))?;
    read_watch(&mut s, on_event).map_err(|e| match e {
        WatchError::Io(e) => unreachable(&e),
        WatchError::Parse(m) => DiscoveryError::Parse(format!("etcd watch: {m}")),
    })
}

/// Why a watch stream stopped with an error.
#[derive(Debug)]
enum WatchError {
    Io(std::io::Error),
    Parse(String),
}

/// The sink of the watch stream's chunks: the bytes of messages not yet complete.
struct Lines<'a>(&'a mut Vec<u8>);

impl ringgate_http1::Sink for Lines<'_> {
    fn data(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// Reads a watch response from `r`: its head, then its chunked body as it arrives, calling
/// `on_event` for every message that reports events. `Ok` when the stream ends or is idle
/// past the read timeout.
fn read_watch(r: &mut impl std::io::Read, mut on_event: impl FnMut()) -> Result<(), WatchError> {
    use bytes::Buf;
    use ringgate_http1::{Chunked, ResponseHead};

    let mut buf = bytes::BytesMut::with_capacity(8 * 1024);
    let mut piece = [0u8; 8 * 1024];
    let mut in_body = false;
    // Fills `buf`; `Ok(false)` when the stream ended or, in the body, went idle.
    let mut read_more = |buf: &mut bytes::BytesMut, in_body: bool| match r.read(&mut piece) {
        Ok(0) => Ok(false),
        Ok(n) => {
            buf.extend_from_slice(&piece[..n]);
            Ok(true)
        }
        Err(e)
            if in_body
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
        {
            Ok(false)
        }
        Err(e) => Err(WatchError::Io(e)),
    };
    let head = loop {
        match ResponseHead::parse(&mut buf, http::MAX_HEAD)
            .map_err(|e| WatchError::Parse(e.to_string()))?
        {
            Some(h) if h.status < 200 => continue,
            Some(h) => break h,
            None if read_more(&mut buf, in_body)? => {}
            None => return Ok(()),
        }
    };
    if head.status != 200 {
        return Err(WatchError::Parse(format!(
            "status {} {}",
            head.status,
            String::from_utf8_lossy(head.reason())
        )));
    }
    if !head.chunked() {
        return Err(WatchError::Parse("the stream is not chunked".into()));
    }
    in_body = true;
    let mut chunked = Chunked::new();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = chunked
            .feed(&buf, &mut Lines(&mut pending))
            .map_err(|e| WatchError::Parse(e.to_string()))?;
        buf.advance(n);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            if memmem(&pending[..end], b"\"events\"") {
                on_event();
            }
            pending.drain(..=end);
        }
        if pending.len() > 1 << 20 {
            return Err(WatchError::Parse("message over 1 MiB".into()));
        }
        if chunked.done() || !read_more(&mut buf, in_body)? {
            return Ok(());
        }
    }
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One key of a range answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// The lease it is bound to, if any.
    pub lease: Option<i64>,
}

fn parse_range(text: &str) -> Result<Vec<Kv>, DiscoveryError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| DiscoveryError::Parse(format!("etcd range: {e}")))?;
    let decode = |s: &str| {
        STANDARD
            .decode(s)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    Ok(v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| {
                    Some(Kv {
                        key: decode(kv["key"].as_str()?)?,
                        value: decode(kv["value"].as_str().unwrap_or(""))?,
                        lease: kv["lease"]
                            .as_str()
                            .and_then(|l| l.parse::<i64>().ok())
                            .filter(|l| *l != 0),
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_range_responses() {
        let text = r#"{"header":{},"kvs":[{"key":"L3NlcnZpY2UvcmluZ2dhdGUvbGVhZGVy","value":"cGcy","lease":"7587883397427061255"}],"count":"1"}"#;
        assert_eq!(
            parse_range(text).unwrap(),
            vec![Kv {
                key: "/service/ringgate/leader".to_string(),
                value: "pg2".to_string(),
                lease: Some(7587883397427061255),
            }]
        );
        assert!(parse_range(r#"{"header":{}}"#).unwrap().is_empty());
        assert!(parse_range("garbage").is_err());
    }

    #[test]
    fn watch_streams_are_read_through_the_one_chunked_state_machine() {
        let stream = |body: &str| {
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{body}").into_bytes()
        };
        let count = |raw: Vec<u8>| {
            let mut events = 0;
            let r = read_watch(&mut &raw[..], || events += 1);
            r.map(|()| events)
        };
        // A message split across chunks, one without events, an extension and a trailer.
        let ok = stream("b;x=1\r\n{\"events\":[\r\n4\r\n1]}\n\r\n8\r\n{\"a\":1}\n\r\nf\r\n{\"events\":[2]}\n\r\n0\r\nX: y\r\n\r\n");
        assert_eq!(count(ok).unwrap(), 2);
        for bad in ["b \r\n", "0xb\r\n", "b\n", "+b\r\n"] {
            assert!(
                matches!(count(stream(bad)), Err(WatchError::Parse(_))),
                "{bad:?}"
            );
        }
        let refused = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec();
        assert!(matches!(count(refused), Err(WatchError::Parse(_))));
        // The stream ending mid-way is an end, not an error (the caller reconnects).
        assert_eq!(count(stream("f\r\n{\"events\":[2]}\n")).unwrap(), 1);
    }
}
