//! Who asks for caching: the `Ringgate-Cache` request header, and the project's rules in
//! `ringgate.cache_rules` (loaded with its row). Nothing is cached unless one of them asks.

use std::time::Duration;

use http::HeaderMap;

use super::vet::{rule_matcher, Vetted};
use crate::cache::Weigh;

/// The request header asking for caching (`ttl=30s`, or just `30s`) or refusing it
/// (`bypass`: neither served from nor stored in the cache).
pub const HEADER: &str = "ringgate-cache";

/// What the request header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// No header: the project's rules decide.
    Rules,
    /// Cache for this long (still only if the statement may be cached).
    Ttl(Duration),
    /// Do not use the cache.
    Bypass,
}

/// Why the header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Ringgate-Cache header {0:?}: use ttl=<duration> (e.g. ttl=30s) or bypass")]
pub struct BadHeader(pub String);

/// Reads the header.
pub fn asked(headers: &HeaderMap) -> Result<Asked, BadHeader> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(Asked::Rules);
    };
    let s = v.to_str().map_err(|_| BadHeader(format!("{v:?}")))?.trim();
    if s.eq_ignore_ascii_case("bypass") || s.eq_ignore_ascii_case("no-cache") {
        return Ok(Asked::Bypass);
    }
    let ttl = s.strip_prefix("ttl=").unwrap_or(s);
    match crate::config::parse::duration(ttl) {
        Ok(d) if !d.is_zero() => Ok(Asked::Ttl(d)),
        _ => Err(BadHeader(s.to_string())),
    }
}

/// One row of `ringgate.cache_rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    /// The fingerprint the rule's pattern stands for, or a 16-hex-digit digest.
    pub matcher: String,
    /// How long matching reads are cached.
    pub ttl: Duration,
}

impl Weigh for CacheRule {
    fn heap_bytes(&self) -> usize {
        self.matcher.capacity()
    }
}

impl CacheRule {
    /// A rule from its row; `None` (and the row ignored) when the pattern does not parse or
    /// the TTL is not positive.
    pub fn from_row(pattern: &str, ttl_ms: i32) -> Option<Self> {
        if ttl_ms <= 0 {
            return None;
        }
        Some(Self {
            matcher: rule_matcher(pattern)?,
            ttl: Duration::from_millis(ttl_ms as u64),
        })
    }

    /// Whether the rule covers the vetted read.
    pub fn matches(&self, v: &Vetted) -> bool {
        self.matcher == v.fingerprint || self.matcher == v.digest
    }
}

/// The TTL the first matching rule gives `v`.
pub fn rule_ttl(rules: &[CacheRule], v: &Vetted) -> Option<Duration> {
    rules.iter().find(|r| r.matches(v)).map(|r| r.ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::cache::vet::vet_read;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(HEADER, v.parse().unwrap());
        m
    }

    #[test]
    fn the_header_asks_for_a_ttl_or_a_bypass() {
        assert_eq!(asked(&HeaderMap::new()), Ok(Asked::Rules));
        assert_eq!(
            asked(&h("ttl=30s")),
            Ok(Asked::Ttl(Duration::from_secs(30)))
        );
        assert_eq!(
            asked(&h("250ms")),
            Ok(Asked::Ttl(Duration::from_millis(250)))
        );
        assert_eq!(asked(&h("BYPASS")), Ok(Asked::Bypass));
        assert!(asked(&h("ttl=0s")).is_err());
        assert!(asked(&h("forever")).is_err());
    }

    #[test]
    fn rules_match_by_fingerprint_or_digest() {
        let v = vet_read("select name from items where id = 7").unwrap();
        let by_text = CacheRule::from_row("SELECT name FROM items WHERE id = 1", 5000).unwrap();
        let by_digest = CacheRule::from_row(&v.digest, 1000).unwrap();
        let other = CacheRule::from_row("select name from items where id > 1", 1000).unwrap();
        assert!(by_text.matches(&v) && by_digest.matches(&v) && !other.matches(&v));
        assert_eq!(
            rule_ttl(&[other, by_text], &v),
            Some(Duration::from_secs(5))
        );
        assert_eq!(CacheRule::from_row("select 1", 0), None);
        assert_eq!(CacheRule::from_row("not sql (", 10), None);
    }
}
