//! API keys and sessions from Redis, cached briefly per core.
//!
//! A client presents a key in an `apikey` header or as `Authorization: Bearer <key>`.
//! ringgate looks up `ringgate:apikey:<sha256 hex of the key>` (so Redis never holds a
//! usable key), whose value is JSON `{"project": "...", "role": "...", "expires_at":
//! <unix seconds, optional>}`. Give the key a Redis TTL too; `expires_at` is checked on
//! every use, cached or not. Lookups are idempotent reads, so they ride through a
//! Sentinel failover (retried against the new master within the Redis failover wait).

use std::time::Duration;

use http::HeaderMap;
use monoio::time::Instant;
use ringgate_redis::{RedisError, RedisHandle};

use crate::cache::{Cache, Weigh};

/// Redis key prefix of API keys.
pub const KEY_PREFIX: &str = "ringgate:apikey:";

/// What an API key grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The project it belongs to.
    pub project: String,
    /// The PostgreSQL role its requests run as.
    pub role: String,
    /// Unix time after which it is no longer valid.
    pub expires_at: Option<u64>,
}

/// Why a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No such key, or it expired.
    #[error("unknown or expired API key")]
    Unknown,
    /// The stored value is not a session.
    #[error("the API key's session record is malformed")]
    Malformed,
    /// Redis could not answer.
    #[error("session store unavailable: {0}")]
    Store(#[from] RedisError),
}

/// The API key a request presents, if any (`apikey` header first, then a Bearer token).
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("apikey").and_then(|v| v.to_str().ok()) {
        return Some(k.trim()).filter(|k| !k.is_empty());
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The Redis key a session for `api_key` is stored under.
pub fn redis_key(api_key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, api_key.as_bytes());
    format!("{KEY_PREFIX}{}", hex::encode(digest.as_ref()))
}

/// Reads a stored session record.
pub fn parse_session(value: &str) -> Result<Session, SessionError> {
    let v: serde_json::Value = serde_json::from_str(value).map_err(|_| SessionError::Malformed)?;
    let text = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let expires_at = match v.get("expires_at") {
        None | Some(serde_json::Value::Null) => None,
        Some(e) => Some(e.as_u64().ok_or(SessionError::Malformed)?),
    };
    Ok(Session {
        project: text("project").ok_or(SessionError::Malformed)?,
        role: text("role").ok_or(SessionError::Malformed)?,
        expires_at,
    })
}

/// One core's session cache in front of Redis.
#[derive(Debug)]
pub struct SessionCache {
    redis: RedisHandle,
    ttl: Duration,
    entries: Cache<Option<Session>>,
}

/// Bytes of sessions (found or not) kept per core.
const CACHE_BYTES: u64 = 4 << 20;

impl Weigh for Session {
    fn heap_bytes(&self) -> usize {
        self.project.capacity() + self.role.capacity()
    }
}

impl SessionCache {
    /// A cache keeping answers (found or not) for `ttl`; zero asks Redis every time.
    pub fn new(redis: RedisHandle, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            entries: Cache::new(CACHE_BYTES, ttl),
        }
    }

    /// The session of `api_key`, if it exists and has not expired.
    pub async fn lookup(&self, api_key: &str) -> Result<Session, SessionError> {
        let key = redis_key(api_key);
        let cached = self.entries.get(&key, Instant::now());
        let session = match cached {
            Some(s) => s,
            None => {
                let found = match self.redis.get(&key).await? {
                    Some(v) => Some(parse_session(&v)?),
                    None => None,
                };
                if !self.ttl.is_zero() {
                    self.entries.insert(&key, found.clone(), Instant::now());
                }
                found
            }
        };
        match session {
            Some(s) if s.expires_at.is_none_or(|e| e > crate::clock::unix_secs()) => Ok(s),
            _ => Err(SessionError::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn keys_come_from_apikey_or_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer  tok "));
        assert_eq!(presented_key(&h), Some("tok"));
        h.insert("apikey", HeaderValue::from_static("k1"));
        assert_eq!(presented_key(&h), Some("k1"));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&basic), None);
    }

    #[test]
    fn redis_keys_hash_the_api_key() {
        let k = redis_key("secret");
        assert!(k.starts_with(KEY_PREFIX));
        assert!(!k.contains("secret"));
        assert_eq!(k.len(), KEY_PREFIX.len() + 64);
        assert_eq!(k, redis_key("secret"));
    }

    #[test]
    fn session_records_need_project_and_role() {
        let s = parse_session(r#"{"project":"alpha","role":"alpha_owner","expires_at":5}"#);
        assert_eq!(s.unwrap().expires_at, Some(5));
        assert_eq!(
            parse_session(r#"{"project":"alpha"}"#),
            Err(SessionError::Malformed)
        );
        assert_eq!(parse_session("nope"), Err(SessionError::Malformed));
        assert_eq!(
            parse_session(r#"{"project":"a","role":"r","expires_at":"x"}"#),
            Err(SessionError::Malformed)
        );
    }
}
