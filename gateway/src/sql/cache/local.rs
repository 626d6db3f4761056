//! One core's result cache: its byte-bounded store, the queries in flight, the vetting of
//! statement texts, and the invalidations it shares with every core and instance.

use std::{rc::Rc, sync::Arc, time::Duration};

use bytes::Bytes;
use monoio::time::Instant;
use tracing::warn;

use super::{
    flight::Flights,
    generations::{self, Generations},
    shape,
    store::{self, Miss, Store, Stored},
    vet::{self, Touched, Vetted},
};
use crate::{
    config::CacheConfig,
    metrics::{CacheEvent, CoreMetrics, Frontend},
    sql::{memo::Memo, request::SqlRequest},
};

/// Bytes of vetted query texts remembered per core.
const VET_BYTES: u64 = 4 << 20;
/// How long a write waits for its invalidation to be published to other instances.
const PUBLISH_WAIT: Duration = Duration::from_millis(250);

/// One core's cache.
#[derive(Debug)]
pub struct QueryCache {
    pub(crate) config: CacheConfig,
    pub(crate) store: Store,
    pub(super) flights: Rc<Flights>,
    /// The PostgreSQL front end's queries in flight (their answers are message bytes).
    pub(crate) wire_flights: Rc<Flights<Bytes>>,
    reads: Memo<Option<Rc<Vetted>>>,
    writes: Memo<Touched>,
    pub(super) generations: Arc<Generations>,
    redis: Option<ringgate_redis::RedisHandle>,
}

/// What `/admin/status` shows of one core's cache.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CacheStats {
    /// The store's figures.
    #[serde(flatten)]
    pub store: store::StoreStats,
    /// Keys whose query is in flight.
    pub in_flight: usize,
}

// === impl QueryCache ===

impl QueryCache {
    /// A core's cache sharing `generations` with every core; `redis` publishes
    /// invalidations to other instances.
    pub fn new(
        config: CacheConfig,
        generations: Arc<Generations>,
        redis: Option<ringgate_redis::RedisHandle>,
    ) -> Self {
        Self {
            store: Store::new(
                config.max_bytes,
                config.project_bytes,
                crate::metrics::N_CLASS,
            ),
            config,
            flights: Rc::default(),
            wire_flights: Rc::default(),
            reads: Memo::with_bytes(VET_BYTES),
            writes: Memo::with_bytes(VET_BYTES),
            generations,
            redis,
        }
    }

    /// This core's figures.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            store: self.store.stats(),
            in_flight: self.flights.len(),
        }
    }

    /// The shared invalidation state.
    pub fn generations(&self) -> &Arc<Generations> {
        &self.generations
    }

    /// The verdict on a read (remembered per text): `None` when it may not be cached.
    pub(crate) fn vetted(&self, sql: &str) -> Option<Rc<Vetted>> {
        self.reads
            .get_or_try::<()>(sql, || Ok(vet::vet_read(sql).map(Rc::new)))
            .ok()
            .flatten()
    }

    /// What the statements of `sql` write (remembered per [`shape`], else per text; see
    /// [`vet::written`]).
    pub(crate) fn written(&self, sql: &str) -> Touched {
        let shape = shape::without_literals(sql);
        self.writes
            .get_or_try::<()>(shape.as_deref().unwrap_or(sql), || Ok(vet::written(sql)))
            .unwrap_or(Touched::Everything)
    }

    /// The TTL a read asked for `ttl` is kept, and the age past which any entry is no
    /// longer served (the short TTL while other instances' invalidations cannot arrive).
    pub(crate) fn bounds(&self, ttl: Duration) -> (Duration, Duration) {
        let max_age = match self.generations.degraded() {
            true => self.config.degraded_ttl,
            false => Duration::MAX,
        };
        (ttl.min(self.config.max_ttl).min(max_age), max_age)
    }

    /// [`Store::get`], publishing the store's size when a stale entry was removed.
    pub(crate) fn lookup(
        &self,
        metrics: &CoreMetrics,
        project: &str,
        key: &str,
        (now, stamp, max_age): (Instant, u64, Duration),
    ) -> Result<Stored, Miss> {
        let r = self.store.get(project, key, now, stamp, max_age);
        if matches!(r, Err(Miss::Expired | Miss::Invalidated)) {
            self.publish_size(metrics);
        }
        r
    }

    /// Stores `entry` (see [`Store::insert`]) and publishes the store's size.
    pub(crate) fn store(
        &self,
        metrics: &CoreMetrics,
        project: &str,
        class: usize,
        key: String,
        e: Stored,
    ) {
        self.store.insert(project, class, key, e);
        self.publish_size(metrics);
    }

    fn publish_size(&self, metrics: &CoreMetrics) {
        let (bytes, evictions) = self.store.by_class();
        metrics.set_sql_cache_size(&bytes, &evictions);
    }

    /// Invalidates what the write request `sql` touched, here and on other instances.
    pub(super) async fn after_write(&self, metrics: &CoreMetrics, sql: &SqlRequest, class: usize) {
        let touched = sql
            .statements
            .iter()
            .map(|st| self.written(&st.sql))
            .reduce(Touched::union)
            .unwrap_or(Touched::Everything);
        let (project, database) = (&sql.tenant.project, &sql.tenant.credentials.database);
        self.invalidate(metrics, project, database, &touched, (Frontend::Sql, class))
            .await;
    }

    /// Marks what a write in `database` of `project` touched as changed on every core,
    /// counted for `(front end, class slot)`, then publishes it to other instances
    /// (waiting up to 250 ms for Redis). Nothing is done when nothing was written.
    pub(crate) async fn invalidate(
        &self,
        metrics: &CoreMetrics,
        project: &str,
        database: &str,
        touched: &Touched,
        (front, class): (Frontend, usize),
    ) {
        if touched.is_nothing() {
            return;
        }
        self.generations.invalidate(database, touched);
        metrics.cache_event(front, class, CacheEvent::Invalidation);
        if let Some(redis) = &self.redis {
            let message = self.generations.message(database, touched);
            let sent =
                monoio::time::timeout(PUBLISH_WAIT, redis.publish(generations::CHANNEL, &message))
                    .await;
            let ok = matches!(sent, Ok(Ok(_)));
            if !ok {
                warn!(tenant = %project, "cache invalidation not published; other instances serve entries until their TTL");
            }
            self.generations.published(ok);
        }
    }
}
