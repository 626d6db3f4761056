//! The query result cache of `/sql`: per core, opt-in, rule-driven, invalidated by writes.
//!
//! A single-statement read is served from the cache when the request asks for it (the
//! `Ringgate-Cache: ttl=30s` header) or a rule of its project in `ringgate.cache_rules`
//! matches it, and sqlparser vets it ([`vet`]: a plain query calling only known built-in
//! functions, reading no system catalog). What is stored is the finished response (status
//! and JSON body), under a key of the role, a digest of its password, the database, the
//! body options, the normalised statement and its parameters ([`key`]), in the project's
//! share of the core's byte budget ([`store`]). Concurrent misses of one key on one core
//! run the query once ([`flight`]).
//!
//! Every write ringgate runs (single statements and batches, and statements run through
//! the PostgreSQL front end, which also caches autocommit reads: `crate::wire::cached`)
//! invalidates the tables it names, or its whole database when the parser cannot bound
//! it, through counters every core reads ([`generations`]) before its response is sent,
//! and is published on Redis for the other instances. While that subscription is down, entries are kept at most
//! [`CacheConfig::degraded_ttl`](crate::config::CacheConfig::degraded_ttl). Writes made outside ringgate are covered only by the
//! TTL.
//!
//! # Layout
//! - [`rules`]: the request header and the project's rules.
//! - [`vet`]: what may be cached, the tables a read reads and a write touches.
//! - [`shape`]: a text without its literals, for remembering what a write touches.
//! - [`key`]: the key.
//! - [`store`]: the bounded per-core store.
//! - [`flight`]: one query per key in flight.
//! - [`generations`]: invalidation shared by every core, and its Redis messages.

pub mod flight;
pub mod generations;
pub mod key;
pub mod local;
pub mod rules;
pub mod shape;
pub mod store;
pub mod vet;

pub use self::local::{CacheStats, QueryCache};

use std::{future::Future, rc::Rc};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use monoio::time::Instant;
use tracing::debug;

use self::{
    flight::Turn,
    rules::Asked,
    store::{Miss, Stored},
    vet::Vetted,
};
use super::{classify::Kind, request::SqlRequest, response::gateway_error};
use crate::{http::Response, metrics::CacheEvent, per_core::Core};

/// The response header saying what the cache did: `hit`, `miss`, `bypass` or
/// `uncacheable` (only on requests that asked for caching, by header or rule).
pub const RESPONSE_HEADER: HeaderName = HeaderName::from_static(rules::HEADER);

/// The response header naming the digest of a cacheable read's fingerprint (what a rule
/// may name as its pattern).
pub const DIGEST_HEADER: HeaderName = HeaderName::from_static("ringgate-cache-digest");

/// Answers `sql` through the cache of `core`: `run` runs it on the server. Writes
/// invalidate; a cacheable read asked for by `headers` or a project rule is served from
/// the cache or stored; everything else just runs.
pub async fn serve(
    core: &Rc<Core>,
    sql: &SqlRequest,
    headers: &HeaderMap,
    class: usize,
    run: std::pin::Pin<&mut impl Future<Output = Response>>,
) -> Response {
    match core.query_cache.as_ref() {
        None => run.await,
        // Boxed: only a cache's requests carry its lookups' and stores' state.
        Some(qc) => Box::pin(through(core, qc, sql, headers, class, run)).await,
    }
}

async fn through(
    core: &Rc<Core>,
    qc: &QueryCache,
    sql: &SqlRequest,
    headers: &HeaderMap,
    class: usize,
    mut run: std::pin::Pin<&mut impl Future<Output = Response>>,
) -> Response {
    let asked = match rules::asked(headers) {
        Ok(a) => a,
        Err(e) => return gateway_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let write = if sql.batch {
        !sql.txn.read_only
    } else {
        let st = &sql.statements[0];
        let kind = st.kind(&core.sql_memo);
        // A read calling a function that may write (a user function) invalidates too.
        kind == Kind::Write || !qc.written(&st.sql).is_nothing()
    };
    if write {
        // Whatever its status: a failed write may have committed (outcome unknown).
        let response = run.as_mut().await;
        qc.after_write(core.metrics(), sql, class).await;
        return response;
    }
    if sql.batch || asked == Asked::Bypass {
        return tag(
            run.as_mut().await,
            (asked == Asked::Bypass).then_some("bypass"),
        );
    }
    let st = &sql.statements[0];
    let rules = match (&core.projects, &core.db, asked) {
        (Some(projects), Some(db), Asked::Rules) => {
            match projects.get(db, &sql.tenant.project).await {
                Ok(Some(p)) if !p.cache_rules.is_empty() => Some(p.cache_rules),
                _ => None,
            }
        }
        _ => None,
    };
    if asked == Asked::Rules && rules.is_none() {
        return run.as_mut().await;
    }
    let vetted = qc
        .vetted(&st.sql)
        .filter(|_| !st.params.iter().flatten().any(|p| vet::volatile_param(p)));
    let Some(v) = vetted else {
        if asked != Asked::Rules {
            core.metrics().sql_cache(class, CacheEvent::Uncacheable);
            return tag(run.as_mut().await, Some("uncacheable"));
        }
        return run.as_mut().await;
    };
    let ttl = match asked {
        Asked::Ttl(t) => t,
        _ => match rules.as_deref().and_then(|r| rules::rule_ttl(r, &v)) {
            Some(t) => t,
            None => return run.as_mut().await,
        },
    };
    let gens = &qc.generations;
    // While other instances' invalidations cannot arrive, entries (new and old) live at
    // most the short TTL.
    let (ttl, max_age) = qc.bounds(ttl);
    let project = &sql.tenant.project;
    let database = &sql.tenant.credentials.database;
    let key = key::key(sql, st, &v);
    // Taken before the query is sent: a write that lands meanwhile outdates the entry.
    let stamp = gens.stamp(database, &v.tables);
    let now = Instant::now();
    match qc.lookup(core.metrics(), project, &key, (now, stamp, max_age)) {
        Ok(hit) => {
            core.metrics().sql_cache(class, CacheEvent::Hit);
            let r = Response {
                status: hit.status,
                content_type: hit.content_type,
                headers: Vec::new(),
                body: hit.body,
            };
            return tag(r, Some("hit")).with_header(DIGEST_HEADER, digest_value(&v));
        }
        Err(Miss::Invalidated) => core.metrics().sql_cache(class, CacheEvent::Stale),
        Err(Miss::Expired | Miss::Absent) => {}
    }
    let lead = match qc.flights.join(&key) {
        Turn::Lead(lead) => lead,
        Turn::Follow(waiting) => {
            return match waiting.await {
                Ok(r) => {
                    core.metrics().sql_cache(class, CacheEvent::Coalesced);
                    tag(strip(r), Some("hit")).with_header(DIGEST_HEADER, digest_value(&v))
                }
                Err(_) => {
                    core.metrics().sql_cache(class, CacheEvent::Miss);
                    tag(run.as_mut().await, Some("miss"))
                        .with_header(DIGEST_HEADER, digest_value(&v))
                }
            };
        }
    };
    core.metrics().sql_cache(class, CacheEvent::Miss);
    let response = run.as_mut().await;
    let storable = response.status == StatusCode::OK
        && response.headers.is_empty()
        && response.body.len() as u64 <= qc.config.max_entry
        && gens.settled(database, &v.tables, qc.config.settle);
    if storable {
        let entry = Stored {
            status: response.status,
            content_type: response.content_type,
            body: response.body.clone(),
            stamp,
            stored: now,
            ttl,
        };
        qc.store(core.metrics(), project, class, key, entry);
        core.metrics().sql_cache(class, CacheEvent::Store);
    } else {
        debug!(tenant = %project, status = %response.status, "read not stored");
    }
    lead.finish(&response);
    tag(response, Some("miss")).with_header(DIGEST_HEADER, digest_value(&v))
}

fn digest_value(v: &Vetted) -> HeaderValue {
    HeaderValue::from_str(&v.digest).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A response without the cache's header (a waiter gets the leader's response).
fn strip(mut r: Response) -> Response {
    r.headers
        .retain(|(n, _)| *n != RESPONSE_HEADER && *n != DIGEST_HEADER);
    r
}

fn tag(r: Response, what: Option<&'static str>) -> Response {
    match what {
        Some(w) => r.with_header(RESPONSE_HEADER, HeaderValue::from_static(w)),
        None => r,
    }
}
