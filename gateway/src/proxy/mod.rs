//! The reverse proxy: requests whose path matches a `RINGGATE_ROUTES` prefix stream to a
//! worker of that route's group ([`crate::conn`] hands them over after the head).
//!
//! Workers come from [`ringgate_redis::workers`] (static and registered in Redis, with
//! blue-green colour weights) as a snapshot each core swaps in. Each core keeps its own
//! state, never shared: outstanding requests per worker (power of two choices, weighted),
//! passive health (ejected after [`EJECT_AFTER`](upstreams::EJECT_AFTER) consecutive failures, backing off from 1 s
//! to 30 s, then tried again), active health (`GET RINGGATE_UPSTREAM_HEALTH_PATH` every
//! `RINGGATE_UPSTREAM_HEALTH_INTERVAL`), keep-alive connections, the per-tenant rate limit
//! (one process-wide token bucket per tenant, [`rate`]); [`upstreams`] holds a core's view of
//! the workers. The optional fleet-wide limit is
//! counted in Redis ([`global_rate`]).

pub mod global_rate;
pub mod head;
pub mod rate;
pub mod upstream;
pub mod upstreams;

use std::{collections::HashSet, net::SocketAddr, rc::Rc, time::Duration};

use http::{request::Parts, HeaderValue, Method, StatusCode};
use tracing::debug;

use crate::{config::ProxyRoute, error::error_response, http::Response, per_core::Core};

/// Whether a request with `method` may be sent twice.
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The route `path` falls under: the longest prefix matching whole path segments.
pub fn route_for<'a>(routes: &'a [ProxyRoute], path: &str) -> Option<&'a ProxyRoute> {
    routes.iter().find(|r| {
        r.prefix.is_empty()
            || path == r.prefix
            || path
                .strip_prefix(r.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The per-tenant rate limits: `Some(429)` when the tenant (the API key's project, else
/// the client address) is over
/// its rate (on all cores together) or, with `RINGGATE_GLOBAL_RATE_LIMIT`, over the fleet's limit.
pub async fn rate_limit(core: &Core, parts: &Parts, peer: Option<SocketAddr>) -> Option<Response> {
    let global = core.global_rate.as_ref();
    if core.config.proxy.rate_limit.is_none() && global.is_none() {
        return None;
    }
    let tenant = tenant_of(core, parts, peer).await;
    // The fleet's limit sees only what this core's own bucket let through.
    let wait = match local_wait(core, &tenant) {
        Some(wait) => wait,
        None if global.is_some_and(|g| !g.admit(&tenant)) => {
            core.metrics().rate_limited_global();
            1
        }
        None => return None,
    };
    core.metrics().rate_limited();
    Some(
        error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!("tenant {tenant:?} is over its rate limit"),
        )
        .with_header(http::header::RETRY_AFTER, HeaderValue::from(wait)),
    )
}

/// A token of `tenant`'s process-wide bucket: `None` when one was taken, else the
/// seconds until the next one.
fn local_wait(core: &Core, tenant: &str) -> Option<u32> {
    let table = core.shared.rates.as_ref()?;
    core.upstreams.buckets.take(table, tenant)
}

/// Whom a proxied request is counted for: the project of the API key it presents, when
/// the key is valid, else the client's address. Never the `Host` header, which a client
/// can rotate to get a fresh bucket each time; an invalid key counts as the address too.
async fn tenant_of(core: &Core, parts: &Parts, peer: Option<SocketAddr>) -> String {
    if let (Some(key), Some(sessions)) = (
        crate::sessions::presented_key(&parts.headers),
        &core.sessions,
    ) {
        if let Ok(session) = sessions.lookup(key).await {
            return format!("project:{}", session.project);
        }
    }
    peer.map(|p| format!("ip:{}", p.ip())).unwrap_or_default()
}

/// Active health checks on this core: `GET <path>` on every worker each interval; a
/// worker answering anything but 2xx/3xx (or nothing within a second) takes no traffic
/// until it answers again.
pub async fn health_checks(core: Rc<Core>) {
    let cfg = &core.config.proxy;
    let Some(interval) = cfg.health_interval else {
        return;
    };
    let path = cfg.health_path.clone();
    while !core.drain.is_draining() {
        let set = core.upstreams.workers();
        let addrs: HashSet<SocketAddr> = set.groups.values().flatten().map(|w| w.addr).collect();
        for addr in addrs {
            let ok = check(addr, &path).await;
            core.upstreams.record_check(addr, ok);
        }
        let groups = set
            .groups
            .iter()
            .map(|(g, ws)| {
                let healthy = ws.iter().filter(|w| core.upstreams.healthy(w.addr)).count();
                (g.clone(), ws.len() as u64, healthy as u64)
            })
            .collect();
        core.metrics().set_upstreams(groups);
        monoio::select! {
            _ = monoio::time::sleep(interval) => {}
            _ = core.drain.signaled() => return,
        }
    }
}

/// Once a second: close this core's idle worker connections that expired or that their
/// worker closed ([`Upstreams::sweep_idle`](upstreams::Upstreams::sweep_idle)).
pub async fn idle_sweep(core: Rc<Core>) {
    while !core.drain.is_draining() {
        let closed = core.upstreams.sweep_idle(core.config.proxy.idle_timeout);
        if closed > 0 {
            debug!(core = core.id, closed, "idle worker connections closed");
        }
        monoio::select! {
            _ = monoio::time::sleep(Duration::from_secs(1)) => {}
            _ = core.drain.signaled() => return,
        }
    }
}

async fn check(addr: SocketAddr, path: &str) -> bool {
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: ringgate-health\r\nconnection: close\r\n\r\n"
    );
    let status = upstream::status_of(addr, req.into_bytes(), Duration::from_secs(1)).await;
    matches!(status, Ok(s) if (200..400).contains(&s))
}

/// A JSON error for a proxied request refused before it reached a worker.
pub fn no_upstream(group: &str) -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_upstream",
        &format!("no healthy worker in group {group:?}"),
    )
    .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}
