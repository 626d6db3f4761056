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
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body =
            json!({"key": STANDARD.encode(prefix), "range_end": STANDARD.encode(&end)}).to_string();
        let mut last_error = None;
        for i in 0..self.endpoints.len() {
            let idx = (self.next.get() + i) % self.endpoints.len();
            match http::call(
                &self.endpoints[idx],
                "POST",
                "/v3/kv/range",
                Some(&body),
                self.timeout,
            ) {
                Ok(text) => {
                    self.next.set(idx);
                    return parse_range(&text);
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

fn parse_range(text: &str) -> Result<Vec<(String, String)>, DiscoveryError> {
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
                    Some((
                        decode(kv["key"].as_str()?)?,
                        decode(kv["value"].as_str().unwrap_or(""))?,
                    ))
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
        let text = r#"{"header":{},"kvs":[{"key":"L3NlcnZpY2UvcmluZ2dhdGUvbGVhZGVy","value":"cGcy"}],"count":"1"}"#;
        assert_eq!(
            parse_range(text).unwrap(),
            vec![("/service/ringgate/leader".to_string(), "pg2".to_string())]
        );
        assert!(parse_range(r#"{"header":{}}"#).unwrap().is_empty());
        assert!(parse_range("garbage").is_err());
    }
}
