//! Settings of the Data API (`POST /sql`): request limits and the result cache.

use std::time::Duration;

/// Limits on what one request may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlLimits {
    /// Longest query text in bytes (default 64 KiB).
    pub max_query_bytes: usize,
    /// Most parameters per query (default 1000).
    pub max_params: usize,
    /// Largest response body in bytes (default 10 MiB).
    pub max_response_bytes: usize,
    /// Most statements in a batch (default 100).
    pub max_batch: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            max_query_bytes: 64 << 10,
            max_params: 1000,
            max_response_bytes: 10 << 20,
            max_batch: 100,
        }
    }
}

/// Cache settings (`RINGGATE_SQL_CACHE_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes of responses kept per core; 0 turns the cache off (default 32 MiB).
    pub max_bytes: u64,
    /// Most bytes one project may hold per core (default a quarter of `max_bytes`).
    pub project_bytes: u64,
    /// Largest response body stored (default 1 MiB).
    pub max_entry: u64,
    /// Longest TTL a header or rule may ask (default 1 h).
    pub max_ttl: Duration,
    /// TTL cap while the Redis subscription is down (default 1 s).
    pub degraded_ttl: Duration,
    /// A read of tables written less than this ago is not stored: it may have run on a
    /// replica that has not replayed the write (default 1 s).
    pub settle: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 32 << 20,
            project_bytes: 8 << 20,
            max_entry: 1 << 20,
            max_ttl: Duration::from_secs(3600),
            degraded_ttl: Duration::from_secs(1),
            settle: Duration::from_secs(1),
        }
    }
}
