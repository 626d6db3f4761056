//! The bounded per-core cache of tenant pools, and idle expiry.
//!
//! Eviction policy: quick_cache's unsync cache, which is not exact LRU but a Clock-PRO /
//! S3-FIFO-like policy: new pools enter a small "cold" queue, pools used again while cold
//! are promoted to the "hot" queue, and when over capacity the cache evicts from the cold
//! queue first (one-hit tenants go first) and from the hot queue by a clock sweep. What it
//! guarantees, and what the tests assert:
//! - the number of cached pools never exceeds the capacity;
//! - a pool used again recently survives a stream of new cold tenants;
//! - evicted pools are closed (their server connections end).
//!
//! quick_cache's eviction hook fires only on capacity eviction, so expiry by idle time is
//! ours: [`PoolCache::expire_idle`] removes pools unused for the TTL and not in use.

use std::{cell::RefCell, rc::Rc, time::Duration};

use monoio::time::Instant;
use quick_cache::{unsync::Cache, DefaultHashBuilder, Lifecycle, UnitWeighter};

use crate::tenant::{PoolKey, TenantPool};

/// Collects pools quick_cache evicts, so the shard can close them.
#[derive(Clone, Default)]
struct Evictions(Rc<RefCell<Vec<Rc<TenantPool>>>>);

impl Lifecycle<PoolKey, Rc<TenantPool>> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: PoolKey, pool: Rc<TenantPool>) {
        self.0.borrow_mut().push(pool);
    }
}

/// A bounded cache of tenant pools.
pub struct PoolCache {
    cache: Cache<PoolKey, Rc<TenantPool>, UnitWeighter, DefaultHashBuilder, Evictions>,
    evicted: Evictions,
}

impl std::fmt::Debug for PoolCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCache")
            .field("len", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// Whether a pool last used at `last_used` has been idle for `ttl` at `now`.
pub fn idle_expired(last_used: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(last_used) >= ttl
}

// === impl PoolCache ===

impl PoolCache {
    /// A cache holding at most `capacity` pools.
    pub fn new(capacity: usize) -> Self {
        let evicted = Evictions::default();
        let cache = Cache::with(
            capacity,
            capacity as u64,
            UnitWeighter,
            DefaultHashBuilder::default(),
            evicted.clone(),
        );
        Self { cache, evicted }
    }

    /// The pool for `key`, marking it used.
    pub fn get<Q>(&self, key: &Q) -> Option<Rc<TenantPool>>
    where
        Q: std::hash::Hash + quick_cache::Equivalent<PoolKey> + ?Sized,
    {
        self.cache.get(key).cloned()
    }

    /// Inserts a pool; returns the pools evicted to make room (to be closed).
    pub fn insert(&mut self, pool: Rc<TenantPool>) -> Vec<Rc<TenantPool>> {
        self.cache.insert(pool.key().clone(), pool);
        std::mem::take(&mut *self.evicted.0.borrow_mut())
    }

    /// Removes a pool.
    pub fn remove(&mut self, key: &PoolKey) -> Option<Rc<TenantPool>> {
        self.cache.remove(key).map(|(_, p)| p)
    }

    /// Removes and returns pools idle for `ttl` with no connection in use.
    pub fn expire_idle(&mut self, now: Instant, ttl: Duration) -> Vec<Rc<TenantPool>> {
        let expired: Vec<PoolKey> = self
            .cache
            .iter()
            .filter(|(_, p)| p.in_use() == 0 && idle_expired(p.last_used(), now, ttl))
            .map(|(k, _)| k.clone())
            .collect();
        expired.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// Removes and returns pools for which `drop_it` is true.
    pub fn remove_where(&mut self, drop_it: impl Fn(&PoolKey) -> bool) -> Vec<Rc<TenantPool>> {
        let keys: Vec<PoolKey> = self
            .cache
            .iter()
            .filter(|(k, _)| drop_it(k))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// Every cached pool.
    pub fn pools(&self) -> impl Iterator<Item = &Rc<TenantPool>> {
        self.cache.iter().map(|(_, p)| p)
    }

    /// Pools cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no pool is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_expiry_is_a_pure_function_of_time() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(300);
        assert!(!idle_expired(t0, t0, ttl));
        assert!(!idle_expired(t0, t0 + Duration::from_secs(299), ttl));
        assert!(idle_expired(t0, t0 + ttl, ttl));
        // A clock that went backwards never expires anything.
        assert!(!idle_expired(t0 + ttl, t0, ttl));
    }
}
