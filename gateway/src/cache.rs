//! The one bounded cache type behind every per-core table keyed by request text (query
//! classification, connection strings, API-key sessions, project rows, rate-limit windows).
//!
//! quick_cache's unsync cache, bounded by bytes ([`Weigh`] plus the key's length) instead
//! of a count, with a time to live that is ours: quick_cache's policy is Clock-PRO-like
//! (new keys enter a cold queue and leave it first unless they are used again), so a flood
//! of one-off keys (random API keys, `Host` values or query texts) evicts other one-off
//! keys, not the hot entries everyone uses. An entry older than the TTL is a miss and is
//! removed when looked up. An entry heavier than most of the budget is not kept at all.
//! Not `Send`: one per core, behind `&self` (a `RefCell` never borrowed across an await).

use std::{cell::RefCell, time::Duration};

use monoio::time::Instant;
use quick_cache::{unsync, Weighter};

/// Bytes an entry costs besides its key and value (hash table slot, queue links).
const ENTRY_OVERHEAD: usize = 48;

/// What a cached value costs in bytes beyond its own `size_of` (the heap it owns).
pub trait Weigh {
    /// Heap bytes owned by the value.
    fn heap_bytes(&self) -> usize;
}

/// A value with the time it was stored.
#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    stored: Instant,
}

/// Weighs an entry in bytes: key, value (inline and heap) and overhead.
#[derive(Debug, Clone, Copy, Default)]
struct Bytes;

impl<V: Weigh> Weighter<String, Entry<V>> for Bytes {
    fn weight(&self, key: &String, entry: &Entry<V>) -> u64 {
        (key.len() + std::mem::size_of::<Entry<V>>() + entry.value.heap_bytes() + ENTRY_OVERHEAD)
            as u64
    }
}

/// A bounded per-core map from text to `V`, with a byte budget and a TTL.
pub struct Cache<V> {
    inner: RefCell<unsync::Cache<String, Entry<V>, Bytes>>,
    ttl: Duration,
    max_bytes: u64,
}

impl<V> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("max_bytes", &self.max_bytes)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Whether an entry stored at `stored` is still fresh at `now` (a clock that went
/// backwards keeps it).
pub fn fresh(stored: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(stored) < ttl
}

// === impl Cache ===

impl<V: Clone + Weigh> Cache<V> {
    /// A cache holding at most `max_bytes` (keys, values and overhead), each entry for
    /// `ttl` after it was stored (`Duration::MAX`: until evicted).
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        // quick_cache sizes its table from an estimate of the entry count.
        let estimated = (max_bytes / 256).clamp(16, 1 << 20) as usize;
        Self {
            inner: RefCell::new(unsync::Cache::with_weighter(estimated, max_bytes, Bytes)),
            ttl,
            max_bytes,
        }
    }

    /// The value for `key` if it was stored less than the TTL before `now`; marks it used.
    pub fn get(&self, key: &str, now: Instant) -> Option<V> {
        let expired = {
            let inner = self.inner.borrow();
            match inner.get(key) {
                None => return None,
                Some(e) if fresh(e.stored, now, self.ttl) => return Some(e.value.clone()),
                Some(_) => true,
            }
        };
        if expired {
            self.inner.borrow_mut().remove(key);
        }
        None
    }

    /// Stores `value` for `key` as of `now` (replacing any entry), evicting cold entries
    /// when over budget.
    pub fn insert(&self, key: &str, value: V, now: Instant) {
        self.inner
            .borrow_mut()
            .insert(key.to_string(), Entry { value, stored: now });
    }

    /// The value for `key`, computed by `f` on a miss and stored (errors are not).
    pub fn get_or_try<E>(
        &self,
        key: &str,
        now: Instant,
        f: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        if let Some(v) = self.get(key, now) {
            return Ok(v);
        }
        let v = f()?;
        self.insert(key, v.clone(), now);
        Ok(v)
    }

    /// Drops `key`'s entry.
    pub fn remove(&self, key: &str) {
        self.inner.borrow_mut().remove(key);
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.inner.borrow_mut().clear();
    }

    /// Entries held (expired ones included until looked up or evicted).
    pub fn len(&self) -> usize {
        self.inner.borrow().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.inner.borrow().is_empty()
    }

    /// Bytes held, as weighed.
    pub fn bytes(&self) -> u64 {
        self.inner.borrow().weight()
    }
}

impl Weigh for String {
    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

impl<T: Weigh> Weigh for Option<T> {
    fn heap_bytes(&self) -> usize {
        self.as_ref().map_or(0, Weigh::heap_bytes)
    }
}

impl<T: Weigh> Weigh for Vec<T> {
    fn heap_bytes(&self) -> usize {
        self.capacity() * std::mem::size_of::<T>()
            + self.iter().map(Weigh::heap_bytes).sum::<usize>()
    }
}

impl<T: Weigh> Weigh for std::rc::Rc<T> {
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<T>() + 2 * std::mem::size_of::<usize>() + (**self).heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Small(u32);

    impl Weigh for Small {
        fn heap_bytes(&self) -> usize {
            0
        }
    }

    #[test]
    fn a_flood_of_one_off_keys_does_not_evict_a_hot_key() {
        let now = Instant::now();
        // Room for about a hundred entries.
        let c: Cache<Small> = Cache::new(100 * 128, Duration::MAX);
        c.insert("hot", Small(1), now);
        for i in 0..100_000u32 {
            // The hot key is used now and then, as a hot key is.
            if i % 50 == 0 {
                assert_eq!(
                    c.get("hot", now),
                    Some(Small(1)),
                    "evicted after {i} one-off keys"
                );
            }
            let key = format!("one-off-{i}");
            assert_eq!(c.get(&key, now), None);
            c.insert(&key, Small(i), now);
            assert!(c.bytes() <= 100 * 128, "over budget: {} bytes", c.bytes());
        }
        assert_eq!(c.get("hot", now), Some(Small(1)));
        assert!(c.len() < 200, "{} entries", c.len());
    }

    #[test]
    fn entries_expire_after_the_ttl_and_errors_are_not_kept() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let c: Cache<Small> = Cache::new(1 << 20, ttl);
        let mut calls = 0;
        for _ in 0..3 {
            let v = c.get_or_try::<()>("a", t0, || {
                calls += 1;
                Ok(Small(7))
            });
            assert_eq!(v, Ok(Small(7)));
        }
        assert_eq!(calls, 1);
        assert_eq!(c.get_or_try("bad", t0, || Err::<Small, _>("no")), Err("no"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("a", t0 + Duration::from_secs(59)), Some(Small(7)));
        assert_eq!(c.get("a", t0 + ttl), None);
        assert!(c.is_empty(), "an expired entry is removed when looked up");
        // A clock that went backwards keeps entries.
        c.insert("b", Small(2), t0 + ttl);
        assert_eq!(c.get("b", t0), Some(Small(2)));
        c.remove("b");
        assert_eq!(c.get("b", t0), None);
    }

    #[test]
    fn budget_is_bytes_and_an_entry_heavier_than_it_is_not_kept() {
        let now = Instant::now();
        let c: Cache<String> = Cache::new(4096, Duration::MAX);
        c.insert("big", "x".repeat(8192), now);
        assert_eq!(c.get("big", now), None);
        for i in 0..100 {
            c.insert(&format!("k{i}"), "y".repeat(200), now);
        }
        assert!(c.bytes() <= 4096);
        assert!(c.len() < 20, "{} entries of 200+ bytes in 4 KiB", c.len());
    }
}
