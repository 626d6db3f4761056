//! Invalidation state shared by every core (and fed by other instances through Redis):
//! striped generation counters per (database, table).
//!
//! A write bumps the stripes of the tables it touched (or its database's "everything"
//! stripe) before its response is sent, so on every core the next lookup sees it at once:
//! no message has to reach a core first. An entry carries the highest generation of its
//! stripes as of its lookup (taken before its query was sent); it is served only while
//! that is still the highest, so an entry filled by a read that raced a write is dead on
//! arrival. Stripes are shared by hashing: a collision costs a needless miss, never a stale
//! hit. Each stripe also keeps when it was last bumped, for the settle window (a read just
//! after a write may run on a replica that has not replayed it yet; it is not stored).

use std::{
    hash::{Hash, Hasher},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    time::{Duration, Instant},
};

use super::vet::Touched;

/// Stripes (two `u64` each).
const STRIPES: usize = 4096;
/// The stripe name standing for every table of a database.
const EVERYTHING: &str = "*";
/// The Redis channel invalidations are published on.
pub const CHANNEL: &str = "ringgate:sql-cache:invalidate";

/// Generation counters for the whole process.
#[derive(Debug)]
pub struct Generations {
    seq: AtomicU64,
    stripes: Box<[AtomicU64]>,
    bumped_ms: Box<[AtomicU64]>,
    epoch: Instant,
    /// Whether invalidations from other instances are expected over Redis.
    redis: bool,
    /// Whether the Redis subscription is up.
    linked: AtomicBool,
    /// This process's name in published messages (its own are skipped).
    instance: String,
    received: AtomicU64,
    published: AtomicU64,
    publish_failures: AtomicU64,
}

/// What `/admin/status` shows of the shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GenerationStats {
    /// Whether other instances' invalidations arrive (Redis subscription up).
    pub linked: bool,
    /// Whether Redis is configured at all.
    pub redis: bool,
    /// Invalidations received from other instances.
    pub received: u64,
    /// Invalidations published.
    pub published: u64,
    /// Invalidations that could not be published.
    pub publish_failures: u64,
}

// === impl Generations ===

impl Generations {
    /// Fresh counters; `redis` says whether other instances publish to us.
    pub fn new(redis: bool) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            seq: AtomicU64::new(1),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            bumped_ms: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            redis,
            linked: AtomicBool::new(false),
            instance: format!("{:x}-{:x}", std::process::id(), nanos),
            received: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
        }
    }

    fn stripe(database: &str, table: &str) -> usize {
        // SipHash with fixed keys: the same stripe on every core.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        database.hash(&mut h);
        table.hash(&mut h);
        (h.finish() as usize) % STRIPES
    }

    fn stripes_of<'a>(database: &'a str, tables: &'a [String]) -> impl Iterator<Item = usize> + 'a {
        std::iter::once(Self::stripe(database, EVERYTHING))
            .chain(std::iter::once(Self::stripe("", EVERYTHING)))
            .chain(tables.iter().map(move |t| Self::stripe(database, t)))
    }

    /// The generation of a read of `tables` in `database` as of now.
    pub fn stamp(&self, database: &str, tables: &[String]) -> u64 {
        Self::stripes_of(database, tables)
            .map(|i| self.stripes[i].load(SeqCst))
            .max()
            .unwrap_or(0)
    }

    /// Whether no write touched `tables` in `database` within `settle` before now.
    pub fn settled(&self, database: &str, tables: &[String], settle: Duration) -> bool {
        let now = self.now_ms();
        let settle = settle.as_millis() as u64;
        Self::stripes_of(database, tables).all(|i| {
            let at = self.bumped_ms[i].load(SeqCst);
            at == 0 || now.saturating_sub(at) >= settle
        })
    }

    fn now_ms(&self) -> u64 {
        // Never 0: 0 means "never bumped".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn bump(&self, i: usize) {
        let g = self.seq.fetch_add(1, SeqCst) + 1;
        self.stripes[i].fetch_max(g, SeqCst);
        self.bumped_ms[i].fetch_max(self.now_ms(), SeqCst);
    }

    /// Marks what a write touched in `database` as changed.
    pub fn invalidate(&self, database: &str, touched: &Touched) {
        match touched {
            Touched::Everything => self.bump(Self::stripe(database, EVERYTHING)),
            Touched::Tables(tables) => {
                for t in tables {
                    self.bump(Self::stripe(database, t));
                }
            }
        }
    }

    /// Marks everything everywhere as changed (invalidations may have been missed).
    pub fn invalidate_all(&self) {
        self.bump(Self::stripe("", EVERYTHING));
    }

    /// Whether entries must fall back to the short TTL: Redis is configured and its
    /// subscription is down, so other instances' writes would go unnoticed.
    pub fn degraded(&self) -> bool {
        self.redis && !self.linked.load(SeqCst)
    }

    /// The subscription came up (`true`) or went down; coming back up forgets everything,
    /// since messages published meanwhile were lost.
    pub fn set_linked(&self, up: bool) {
        let was = self.linked.swap(up, SeqCst);
        if up && !was {
            self.invalidate_all();
        }
    }

    /// The message announcing an invalidation to other instances.
    pub fn message(&self, database: &str, touched: &Touched) -> String {
        let tables = match touched {
            Touched::Everything => EVERYTHING.to_string(),
            Touched::Tables(t) => t.join("\u{1f}"),
        };
        format!("{}\u{1e}{database}\u{1e}{tables}", self.instance)
    }

    /// Applies a message from another instance (its own, and malformed ones, are ignored).
    pub fn apply_message(&self, payload: &str) {
        let mut parts = payload.split('\u{1e}');
        let (Some(instance), Some(database), Some(tables), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if instance == self.instance {
            return;
        }
        self.received.fetch_add(1, SeqCst);
        if tables == EVERYTHING {
            self.invalidate(database, &Touched::Everything);
        } else {
            let tables = tables.split('\u{1f}').map(str::to_string).collect();
            self.invalidate(database, &Touched::Tables(tables));
        }
    }

    /// Counts a publish and whether it reached Redis.
    pub fn published(&self, ok: bool) {
        if ok {
            self.published.fetch_add(1, SeqCst);
        } else {
            self.publish_failures.fetch_add(1, SeqCst);
        }
    }

    /// The figures `/admin/status` shows.
    pub fn stats(&self) -> GenerationStats {
        GenerationStats {
            linked: self.linked.load(SeqCst),
            redis: self.redis,
            received: self.received.load(SeqCst),
            published: self.published.load(SeqCst),
            publish_failures: self.publish_failures.load(SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_write_changes_the_stamp_of_reads_of_its_tables_only() {
        let g = Generations::new(false);
        let items = g.stamp("db", &t(&["items"]));
        let orders = g.stamp("db", &t(&["orders"]));
        let other_db = g.stamp("db2", &t(&["items"]));
        g.invalidate("db", &Touched::Tables(t(&["items"])));
        assert_ne!(g.stamp("db", &t(&["items"])), items);
        assert_ne!(g.stamp("db", &t(&["items", "orders"])), orders);
        assert_eq!(g.stamp("db", &t(&["orders"])), orders);
        assert_eq!(g.stamp("db2", &t(&["items"])), other_db);
        assert!(!g.settled("db", &t(&["items"]), Duration::from_secs(60)));
        assert!(g.settled("db", &t(&["orders"]), Duration::from_secs(60)));
        let before = g.stamp("db", &t(&["orders"]));
        g.invalidate("db", &Touched::Everything);
        assert_ne!(g.stamp("db", &t(&["orders"])), before);
    }

    #[test]
    fn messages_from_others_apply_and_our_own_are_skipped() {
        let a = Generations::new(true);
        let b = Generations::new(true);
        assert!(a.degraded());
        a.set_linked(true);
        assert!(!a.degraded());
        let s = b.stamp("db", &t(&["items"]));
        b.apply_message(&b.message("db", &Touched::Tables(t(&["items"]))));
        assert_eq!(b.stamp("db", &t(&["items"])), s);
        b.apply_message(&a.message("db", &Touched::Tables(t(&["items", "x"]))));
        assert_ne!(b.stamp("db", &t(&["items"])), s);
        let s = b.stamp("db", &t(&["orders"]));
        b.apply_message(&a.message("db", &Touched::Everything));
        assert_ne!(b.stamp("db", &t(&["orders"])), s);
        b.apply_message("garbage");
        assert_eq!(b.stats().received, 2);
    }
}
