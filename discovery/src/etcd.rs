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
/// in chunks; only whole lines are looked at.
pub fn watch_key(
    endpoint: &str,
    key: &str,
    connect_timeout: Duration,
    idle: Duration,
    mut on_event: impl FnMut(),
) -> Result<(), DiscoveryError> {
    use std::io::{BufRead, BufReader, Read, Write};

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
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| unreachable(&e))?;
    if line.split_whitespace().nth(1) != Some("200") {
        return Err(DiscoveryError::Parse(format!(
            "etcd watch: {}",
            line.trim()
        )));
    }
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| unreachable(&e))? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
    }
    // Chunked body: size line, data, CRLF; messages are newline-separated inside.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(unreachable(&e)),
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| DiscoveryError::Parse(format!("etcd watch: chunk size {line:?}")))?;
        if size == 0 {
            return Ok(());
        }
        let mut chunk = vec![0; size + 2];
        r.read_exact(&mut chunk).map_err(|e| unreachable(&e))?;
        pending.extend_from_slice(&chunk[..size]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let message: Vec<u8> = pending.drain(..=end).collect();
            if memmem(&message, b"\"events\"") {
                on_event();
            }
        }
        if pending.len() > 1 << 20 {
            return Err(DiscoveryError::Parse(
                "etcd watch: message over 1 MiB".into(),
            ));
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
}
