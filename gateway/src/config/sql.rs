//! Settings of the Data API (`POST /sql`): request limits and the result cache.

use std::time::Duration;

use super::{parse, unset, Reader};

/// Longest query text accepted by `/sql`.
pub const ENV_SQL_MAX_QUERY_BYTES: &str = "RINGGATE_SQL_MAX_QUERY_BYTES";
/// Most parameters per query.
pub const ENV_SQL_MAX_PARAMS: &str = "RINGGATE_SQL_MAX_PARAMS";
/// Largest `/sql` response body.
pub const ENV_SQL_MAX_RESPONSE_BYTES: &str = "RINGGATE_SQL_MAX_RESPONSE_BYTES";
/// Bytes of `/sql` responses cached per core (0: no cache).
pub const ENV_SQL_CACHE_BYTES: &str = "RINGGATE_SQL_CACHE_BYTES";
/// Most bytes one project's cached responses may take per core.
pub const ENV_SQL_CACHE_PROJECT_BYTES: &str = "RINGGATE_SQL_CACHE_PROJECT_BYTES";
/// Largest `/sql` response cached.
pub const ENV_SQL_CACHE_MAX_ENTRY: &str = "RINGGATE_SQL_CACHE_MAX_ENTRY";
/// Longest TTL a request header or rule may ask for.
pub const ENV_SQL_CACHE_MAX_TTL: &str = "RINGGATE_SQL_CACHE_MAX_TTL";
/// TTL cap while the Redis invalidation subscription is down.
pub const ENV_SQL_CACHE_DEGRADED_TTL: &str = "RINGGATE_SQL_CACHE_DEGRADED_TTL";
/// A read of tables written less than this ago is not cached.
pub const ENV_SQL_CACHE_SETTLE: &str = "RINGGATE_SQL_CACHE_SETTLE";
/// Most statements in a batch (not configurable).
pub const MAX_BATCH: usize = 100;

/// Limits on what one request may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlLimits {
    /// Longest query text in bytes ([`ENV_SQL_MAX_QUERY_BYTES`]).
    pub max_query_bytes: usize,
    /// Most parameters per query ([`ENV_SQL_MAX_PARAMS`]).
    pub max_params: usize,
    /// Largest response body in bytes ([`ENV_SQL_MAX_RESPONSE_BYTES`]).
    pub max_response_bytes: usize,
    /// Most statements in a batch ([`MAX_BATCH`]).
    pub max_batch: usize,
}

impl Default for SqlLimits {
    /// The limits an unset environment reads ([`super::VARS`]).
    fn default() -> Self {
        unset(|r| r.sql_limits())
    }
}

/// Cache settings (`RINGGATE_SQL_CACHE_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes of responses kept per core; 0 turns the cache off ([`ENV_SQL_CACHE_BYTES`]).
    pub max_bytes: u64,
    /// Most bytes one project may hold per core (default a quarter of `max_bytes`).
    pub project_bytes: u64,
    /// Largest response body stored ([`ENV_SQL_CACHE_MAX_ENTRY`]).
    pub max_entry: u64,
    /// Longest TTL a header or rule may ask ([`ENV_SQL_CACHE_MAX_TTL`]).
    pub max_ttl: Duration,
    /// TTL cap while the Redis subscription is down ([`ENV_SQL_CACHE_DEGRADED_TTL`]).
    pub degraded_ttl: Duration,
    /// A read of tables written less than this ago is not stored: it may have run on a
    /// replica that has not replayed the write ([`ENV_SQL_CACHE_SETTLE`]).
    pub settle: Duration,
}

impl Default for CacheConfig {
    /// The settings an unset environment reads ([`super::VARS`]).
    fn default() -> Self {
        unset(|r| r.query_cache())
    }
}

impl Reader<'_> {
    /// `RINGGATE_SQL_MAX_*`.
    pub(super) fn sql_limits(&mut self) -> SqlLimits {
        SqlLimits {
            max_query_bytes: self.value(ENV_SQL_MAX_QUERY_BYTES, parse::bytes),
            max_params: self.value(ENV_SQL_MAX_PARAMS, parse::count),
            max_response_bytes: self.value(ENV_SQL_MAX_RESPONSE_BYTES, parse::bytes),
            max_batch: MAX_BATCH,
        }
    }

    /// `RINGGATE_SQL_CACHE_*`.
    pub(super) fn query_cache(&mut self) -> CacheConfig {
        let max_bytes = self.value(ENV_SQL_CACHE_BYTES, parse::bytes) as u64;
        CacheConfig {
            max_bytes,
            project_bytes: self
                .parse(ENV_SQL_CACHE_PROJECT_BYTES, parse::bytes)
                .map_or(max_bytes / 4, |b| b as u64),
            max_entry: self.value(ENV_SQL_CACHE_MAX_ENTRY, parse::bytes) as u64,
            max_ttl: self.value(ENV_SQL_CACHE_MAX_TTL, parse::duration),
            degraded_ttl: self.value(ENV_SQL_CACHE_DEGRADED_TTL, parse::duration),
            settle: self.value(ENV_SQL_CACHE_SETTLE, parse::duration),
        }
    }
}
