//! One core's cached responses: bounded in bytes, with a share per project.
//!
//! Each project has its own quick_cache (Clock-PRO-like: a flood of one-off queries
//! evicts other one-off queries, not the hot ones) bounded by the per-project share, so one
//! tenant's flood evicts only its own entries. The sum over projects is bounded by the
//! core's budget: when an insert takes it over, the least recently used other projects are
//! dropped whole. Bytes and evictions are also kept per tenant class (a project's class as
//! of its first entry on the core), for the metrics.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    rc::Rc,
    time::Duration,
};

use bytes::Bytes;
use http::StatusCode;
use monoio::time::Instant;
use quick_cache::{unsync, DefaultHashBuilder, Lifecycle, Weighter};

/// Bytes an entry costs besides its key and body.
const ENTRY_OVERHEAD: u64 = 96;

/// A finished response as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its status (200: only successes are stored).
    pub status: StatusCode,
    /// Its `content-type`.
    pub content_type: &'static str,
    /// Its body, shared by every hit.
    pub body: Bytes,
    /// The generation of its tables as of its lookup (see `Generations::stamp`).
    pub stamp: u64,
    /// When it was stored.
    pub stored: Instant,
    /// How long it is served.
    pub ttl: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct ByBytes;

impl Weighter<String, Stored> for ByBytes {
    fn weight(&self, key: &String, v: &Stored) -> u64 {
        key.len() as u64 + v.body.len() as u64 + ENTRY_OVERHEAD
    }
}

/// Counts capacity evictions per class slot (shared by every project's cache).
#[derive(Debug, Clone)]
struct Evictions {
    by_class: Rc<[Cell<u64>]>,
    class: usize,
}

impl Evictions {
    fn count(&self, class: usize, n: u64) {
        let c = &self.by_class[class.min(self.by_class.len() - 1)];
        c.set(c.get() + n);
    }
}

impl Lifecycle<String, Stored> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: String, _: Stored) {
        self.count(self.class, 1);
    }
}

type ProjectCache = unsync::Cache<String, Stored, ByBytes, DefaultHashBuilder, Evictions>;

struct Shard {
    cache: ProjectCache,
    used: Instant,
    class: usize,
}

/// Why a lookup found nothing to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No entry.
    Absent,
    /// An entry past its TTL (removed).
    Expired,
    /// An entry a write invalidated (removed).
    Invalidated,
}

/// One core's store.
pub struct Store {
    shards: RefCell<HashMap<Rc<str>, Shard>>,
    max_bytes: u64,
    share: u64,
    evictions: Rc<[Cell<u64>]>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("max_bytes", &self.max_bytes)
            .field("share", &self.share)
            .finish_non_exhaustive()
    }
}

/// What `/admin/status` shows of one core's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct StoreStats {
    /// Entries held.
    pub entries: u64,
    /// Bytes held, as weighed.
    pub bytes: u64,
    /// Projects with entries.
    pub projects: u64,
    /// Entries evicted for room since start (capacity, and projects dropped whole).
    pub evictions: u64,
}

// === impl Store ===

impl Store {
    /// A store of at most `max_bytes`, each project's entries at most `share` of them,
    /// with figures for `classes` tenant class slots.
    pub fn new(max_bytes: u64, share: u64, classes: usize) -> Self {
        Self {
            shards: RefCell::new(HashMap::new()),
            max_bytes,
            share: share.min(max_bytes),
            evictions: (0..classes.max(1)).map(|_| Cell::new(0)).collect(),
        }
    }

    /// The entry of `key` in `project` if it is younger than its TTL (and `max_age`) at
    /// `now` and its stamp is still `stamp`; a stale entry is removed.
    pub fn get(
        &self,
        project: &str,
        key: &str,
        now: Instant,
        stamp: u64,
        max_age: Duration,
    ) -> Result<Stored, Miss> {
        let mut shards = self.shards.borrow_mut();
        let Some(shard) = shards.get_mut(project) else {
            return Err(Miss::Absent);
        };
        shard.used = now;
        let why = match shard.cache.get(key) {
            None => return Err(Miss::Absent),
            Some(e) if e.stamp != stamp => Miss::Invalidated,
            Some(e) if now.saturating_duration_since(e.stored) >= e.ttl.min(max_age) => {
                Miss::Expired
            }
            Some(e) => return Ok(e.clone()),
        };
        shard.cache.remove(key);
        Err(why)
    }

    /// Stores `entry` for `key` in `project` (of tenant class slot `class`), evicting
    /// within the project's share and, when the core's budget is exceeded, dropping the
    /// least recently used other projects.
    pub fn insert(&self, project: &str, class: usize, key: String, entry: Stored) {
        let now = entry.stored;
        let mut shards = self.shards.borrow_mut();
        if !shards.contains_key(project) {
            let estimated = (self.share / 1024).clamp(16, 1 << 16) as usize;
            let cache = ProjectCache::with(
                estimated,
                self.share,
                ByBytes,
                DefaultHashBuilder::default(),
                Evictions {
                    by_class: self.evictions.clone(),
                    class,
                },
            );
            shards.insert(
                Rc::from(project),
                Shard {
                    cache,
                    used: now,
                    class,
                },
            );
        }
        let shard = shards.get_mut(project).expect("inserted above");
        shard.used = now;
        shard.cache.insert(key, entry);
        let mut total: u64 = shards.values().map(|s| s.cache.weight()).sum();
        while total > self.max_bytes {
            let victim = shards
                .iter()
                .filter(|(p, _)| &***p != project)
                .min_by_key(|(_, s)| s.used)
                .map(|(p, _)| p.clone());
            let Some(victim) = victim else { break };
            if let Some(s) = shards.remove(&victim) {
                total -= s.cache.weight();
                let c = &self.evictions[s.class.min(self.evictions.len() - 1)];
                c.set(c.get() + s.cache.len() as u64);
            }
        }
        shards.retain(|_, s| !s.cache.is_empty());
    }

    /// The figures `/admin/status` shows.
    pub fn stats(&self) -> StoreStats {
        let shards = self.shards.borrow();
        StoreStats {
            entries: shards.values().map(|s| s.cache.len() as u64).sum(),
            bytes: shards.values().map(|s| s.cache.weight()).sum(),
            projects: shards.len() as u64,
            evictions: self.evictions.iter().map(Cell::get).sum(),
        }
    }

    /// Bytes held and entries evicted since start, per tenant class slot.
    pub fn by_class(&self) -> (Vec<u64>, Vec<u64>) {
        let slots = self.evictions.len();
        let mut bytes = vec![0; slots];
        for s in self.shards.borrow().values() {
            bytes[s.class.min(slots - 1)] += s.cache.weight();
        }
        (bytes, self.evictions.iter().map(Cell::get).collect())
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.shards
            .borrow()
            .values()
            .map(|s| s.cache.weight())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(now: Instant, body: usize, stamp: u64) -> Stored {
        Stored {
            status: StatusCode::OK,
            content_type: "application/json",
            body: Bytes::from(vec![b'x'; body]),
            stamp,
            stored: now,
            ttl: Duration::from_secs(10),
        }
    }

    #[test]
    fn entries_expire_and_die_with_their_stamp() {
        let now = Instant::now();
        let s = Store::new(1 << 20, 1 << 18, 4);
        s.insert("p", 1, "k".into(), entry(now, 10, 7));
        let any = Duration::MAX;
        assert!(s.get("p", "k", now, 7, any).is_ok());
        assert_eq!(s.get("q", "k", now, 7, any).unwrap_err(), Miss::Absent);
        let at = |secs| now + Duration::from_secs(secs);
        assert_eq!(s.get("p", "k", at(10), 7, any).unwrap_err(), Miss::Expired);
        s.insert("p", 1, "k".into(), entry(now, 10, 7));
        // A shorter cap (Redis unreachable) expires it sooner.
        assert!(s.get("p", "k", at(2), 7, any).is_ok());
        let cap = Duration::from_secs(1);
        assert_eq!(s.get("p", "k", at(2), 7, cap).unwrap_err(), Miss::Expired);
        s.insert("p", 1, "k".into(), entry(now, 10, 7));
        assert_eq!(s.get("p", "k", now, 8, any).unwrap_err(), Miss::Invalidated);
        assert_eq!(s.get("p", "k", now, 7, any).unwrap_err(), Miss::Absent);
    }

    #[test]
    fn a_flooding_project_stays_within_its_share_and_the_total_within_the_budget() {
        let now = Instant::now();
        let s = Store::new(64 << 10, 16 << 10, 4);
        for p in ["a", "b", "c"] {
            s.insert(p, 1, "hot".into(), entry(now, 100, 1));
        }
        for i in 0..10_000 {
            s.insert("flood", 2, format!("k{i}"), entry(now, 500, 1));
            if i % 100 == 0 {
                for p in ["a", "b", "c"] {
                    assert!(
                        s.get(p, "hot", now, 1, Duration::MAX).is_ok(),
                        "{p} evicted by the flood"
                    );
                }
            }
            assert!(s.bytes() <= 64 << 10);
        }
        assert!(s.stats().evictions > 0);
        // The flood's evictions and bytes are its class's; class 1 lost nothing.
        let (bytes, evictions) = s.by_class();
        assert_eq!(evictions[1], 0);
        assert_eq!(evictions[2], s.stats().evictions);
        assert!(bytes[2] > 0 && bytes[2] <= 16 << 10, "{bytes:?}");
        assert_eq!(bytes.iter().sum::<u64>(), s.bytes());
        // Many projects: the budget holds, least recently used projects go.
        for i in 0..100 {
            for k in 0..20 {
                s.insert(
                    &format!("p{i}"),
                    3,
                    format!("k{k}"),
                    entry(now + Duration::from_millis(i), 500, 1),
                );
            }
            assert!(s.bytes() <= 64 << 10, "{} bytes", s.bytes());
        }
    }
}
