//! Per-core memo tables for work that depends only on request text: the read/write
//! classification of a query (a full sqlparser parse) and the tenant a connection string
//! names. Bounded in bytes by [`Cache`]: a flood of one-off texts evicts other one-off
//! texts, not the hot ones. Nothing here goes stale, so there is no TTL.

use std::time::Duration;

use monoio::time::Instant;

use super::{classify::Kind, tenant::Tenant};
use crate::cache::{Cache, Weigh};

/// Bytes of query texts (and their kinds) kept per core.
const KINDS_BYTES: u64 = 4 << 20;
/// Bytes of connection strings (and their tenants) kept per core.
const TENANTS_BYTES: u64 = 2 << 20;

/// A bounded map from request text to a derived value. Not `Send`: one per core.
#[derive(Debug)]
pub struct Memo<V> {
    cache: Cache<V>,
    /// The time every entry is stored and looked up at: entries never expire, so a
    /// lookup (several per request) need not read the clock.
    epoch: Instant,
}

impl<V: Clone + Weigh> Memo<V> {
    /// An empty table of at most `max_bytes`.
    pub fn with_bytes(max_bytes: u64) -> Self {
        Self {
            cache: Cache::new(max_bytes, Duration::MAX),
            epoch: Instant::now(),
        }
    }

    /// An empty table of 1 MiB.
    pub fn new() -> Self {
        Self::with_bytes(1 << 20)
    }

    /// The value for `key`, computed by `f` on a miss (errors are not remembered).
    pub fn get_or_try<E>(&self, key: &str, f: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        self.cache.get_or_try(key, self.epoch, f)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

impl<V: Clone + Weigh> Default for Memo<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl Weigh for Kind {
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// The memo tables one core keeps for `/sql`.
#[derive(Debug)]
pub struct SqlMemo {
    /// Query text → read or write.
    pub kinds: Memo<Kind>,
    /// `Neon-Connection-String` → tenant and credentials.
    pub tenants: Memo<Tenant>,
}

impl Default for SqlMemo {
    fn default() -> Self {
        Self {
            kinds: Memo::with_bytes(KINDS_BYTES),
            tenants: Memo::with_bytes(TENANTS_BYTES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_values_not_errors() {
        let m: Memo<Kind> = Memo::new();
        let mut calls = 0;
        for _ in 0..3 {
            let v = m.get_or_try::<()>("a", || {
                calls += 1;
                Ok(Kind::Read)
            });
            assert_eq!(v, Ok(Kind::Read));
        }
        assert_eq!(calls, 1);
        assert_eq!(m.get_or_try("bad", || Err::<Kind, _>("no")), Err("no"));
        assert_eq!(m.len(), 1);
    }

    /// The real table: random query texts (each classified once) do not flush the
    /// classification of the query every client sends.
    #[test]
    fn one_off_query_texts_do_not_evict_a_hot_query() {
        let memo = SqlMemo::default();
        let hot = "select id, name from items where id = $1";
        let mut parses = 0;
        let mut classify = |q: &str| {
            parses += 1;
            Ok::<_, ()>(crate::sql::classify::classify(q))
        };
        memo.kinds.get_or_try(hot, || classify(hot)).unwrap();
        for i in 0..60_000 {
            if i % 100 == 0 {
                memo.kinds.get_or_try(hot, || classify(hot)).unwrap();
            }
            let q = format!("select {i} /* a one-off text padded like a real query ...... */");
            memo.kinds
                .get_or_try(&q, || Ok::<_, ()>(Kind::Read))
                .unwrap();
        }
        assert_eq!(
            parses, 1,
            "the hot query was parsed again after being evicted"
        );
        assert!(memo.kinds.len() < 60_000);
    }
}
