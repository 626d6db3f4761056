//! The workers of each route's group as one core sees them: which to pick (power of two
//! choices, weighted, sticky), their passive health, outstanding requests and parked
//! keep-alive connections. Never shared between cores.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use http::HeaderMap;
use monoio::{net::TcpStream, time::Instant};
use ringgate_redis::workers::{Worker, WorkerSet};
use tracing::{debug, info};

use super::{rate, upstream};

/// A pooled connection parked less than this long ago is reused without checking whether
/// the worker closed it (a `recv(MSG_PEEK)` per reuse, about 3% of a proxied request's CPU
/// at full load): no worker's keep-alive timeout is this short. A worker that dies in that
/// moment fails the request as it would have with the check racing its FIN; idempotent
/// requests are then retried on a fresh connection.
const TRUST_PARKED_FOR: Duration = Duration::from_millis(5);
/// Consecutive failures that eject a worker.
pub const EJECT_AFTER: u32 = 3;
/// First ejection; doubles up to [`MAX_EJECTION`].
const FIRST_EJECTION: Duration = Duration::from_secs(1);
const MAX_EJECTION: Duration = Duration::from_secs(30);

/// Whether an attempt on a worker worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response came back.
    Success,
    /// Connect failure, no response, bad response.
    Failure,
}

/// A worker's health as this core sees it.
#[derive(Debug, Clone, Copy)]
struct Health {
    failures: u32,
    ejected_until: Option<Instant>,
    next_ejection: Duration,
    active_down: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            failures: 0,
            ejected_until: None,
            next_ejection: FIRST_EJECTION,
            active_down: false,
        }
    }
}

impl Health {
    fn usable(&self, now: Instant) -> bool {
        !self.active_down && self.ejected_until.is_none_or(|t| now >= t)
    }
}

/// A chosen worker, and the sticky cookie to set when the client had none.
#[derive(Debug, Clone)]
pub struct Picked {
    /// The worker's address.
    pub addr: SocketAddr,
    /// `Set-Cookie` value, for sticky groups.
    pub set_cookie: Option<String>,
}

/// One core's view of the workers and its connections to them.
#[derive(Debug, Default)]
pub struct Upstreams {
    workers: RefCell<Arc<WorkerSet>>,
    outstanding: RefCell<HashMap<SocketAddr, usize>>,
    health: RefCell<HashMap<SocketAddr, Health>>,
    /// Keep-alive connections per worker, with when they were parked (newest last).
    idle: RefCell<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
    pub(super) buckets: rate::CoreBuckets,
    seed: Cell<u64>,
}

/// Drops the connections parked before `now - max_idle`. `list` is in parking order
/// (oldest first), so they are a prefix of it.
fn drop_expired<T>(list: &mut Vec<(T, Instant)>, now: Instant, max_idle: Duration) {
    let fresh = list.partition_point(|(_, at)| now.saturating_duration_since(*at) >= max_idle);
    list.drain(..fresh);
}

/// The cookie that pins a client to a worker of `group`.
pub fn sticky_cookie_name(group: &str) -> String {
    format!("rg_sticky_{group}")
}

/// The cookie value naming `addr` (a hash: worker addresses are not revealed).
pub fn sticky_token(addr: SocketAddr) -> String {
    // FNV-1a over the address text.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A worker's share of its group's traffic: its weight scaled by its colour's weight.
pub fn effective_weight(set: &WorkerSet, w: &Worker) -> u64 {
    let colour = w
        .colour
        .as_ref()
        .and_then(|c| set.colour_weights.get(&w.group)?.get(c).copied());
    match colour {
        Some(percent) => u64::from(w.weight) * u64::from(percent),
        None => u64::from(w.weight) * 100,
    }
}

impl Upstreams {
    /// Swaps in a new worker snapshot; idle connections to workers that left are closed
    /// (requests in flight to them finish).
    pub fn set_workers(&self, set: Arc<WorkerSet>) {
        let live: HashSet<SocketAddr> = set.groups.values().flatten().map(|w| w.addr).collect();
        self.idle.borrow_mut().retain(|a, _| live.contains(a));
        self.health.borrow_mut().retain(|a, _| live.contains(a));
        *self.workers.borrow_mut() = set;
    }

    /// The current snapshot.
    pub fn workers(&self) -> Arc<WorkerSet> {
        self.workers.borrow().clone()
    }

    /// Whether this core currently considers `addr` usable.
    pub fn healthy(&self, addr: SocketAddr) -> bool {
        self.health
            .borrow()
            .get(&addr)
            .is_none_or(|h| h.usable(Instant::now()))
    }

    fn random(&self) -> u64 {
        // xorshift64*: enough to spread load, no shared state.
        let mut x = self.seed.get();
        if x == 0 {
            x = 0x9E37_79B9_7F4A_7C15 ^ (self as *const Self as u64);
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.seed.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A weighted draw among `candidates` (worker, effective weight, healthy).
    fn draw(&self, candidates: &[(&Worker, u64, bool)]) -> SocketAddr {
        let total: u64 = candidates.iter().map(|c| c.1).sum();
        let mut point = self.random() % total.max(1);
        for (w, weight, _) in candidates {
            if point < *weight {
                return w.addr;
            }
            point -= weight;
        }
        candidates[candidates.len() - 1].0.addr
    }

    /// Picks a worker of `group`, skipping `tried` ones and zero weights: the sticky one
    /// when the client has a cookie for a usable worker, otherwise power of two choices on
    /// outstanding requests among healthy workers (all weighted ones when none is healthy).
    pub fn pick(
        &self,
        group: &str,
        tried: &[SocketAddr],
        headers: &HeaderMap,
        sticky: bool,
    ) -> Option<Picked> {
        let set = self.workers();
        let now = Instant::now();
        // The group's workers that may take the request, with their weights and health.
        let health = self.health.borrow();
        let mut candidates: Vec<(&Worker, u64, bool)> = set
            .group(group)
            .iter()
            .map(|w| (w, effective_weight(&set, w)))
            .filter(|(w, weight)| *weight > 0 && !tried.contains(&w.addr))
            .map(|(w, weight)| {
                let healthy = health.get(&w.addr).is_none_or(|h| h.usable(now));
                (w, weight, healthy)
            })
            .collect();
        drop(health);
        // Healthy ones only, unless none is.
        if candidates.iter().any(|c| c.2) {
            candidates.retain(|c| c.2);
        }
        if candidates.is_empty() {
            return None;
        }
        if sticky {
            let name = sticky_cookie_name(group);
            if let Some(token) = cookie(headers, &name) {
                if let Some((w, _, _)) = candidates
                    .iter()
                    .find(|(w, _, _)| sticky_token(w.addr) == token)
                {
                    return Some(Picked {
                        addr: w.addr,
                        set_cookie: None,
                    });
                }
            }
        }
        let (a, b) = (self.draw(&candidates), self.draw(&candidates));
        let load = |addr: SocketAddr| self.outstanding.borrow().get(&addr).copied().unwrap_or(0);
        let addr = if load(b) < load(a) { b } else { a };
        let set_cookie = sticky.then(|| {
            format!(
                "{}={}; Path=/; HttpOnly; SameSite=Lax",
                sticky_cookie_name(group),
                sticky_token(addr)
            )
        });
        Some(Picked { addr, set_cookie })
    }

    /// Records the outcome of an attempt (passive health).
    pub fn record(&self, addr: SocketAddr, outcome: Outcome) {
        let mut health = self.health.borrow_mut();
        let h = health.entry(addr).or_default();
        match outcome {
            Outcome::Success => {
                h.failures = 0;
                h.ejected_until = None;
                h.next_ejection = FIRST_EJECTION;
            }
            Outcome::Failure => {
                h.failures += 1;
                if h.failures >= EJECT_AFTER {
                    h.failures = 0;
                    h.ejected_until = Some(Instant::now() + h.next_ejection);
                    debug!(worker = %addr, for_ = ?h.next_ejection, "worker ejected");
                    h.next_ejection = (h.next_ejection * 2).min(MAX_EJECTION);
                }
            }
        }
    }

    /// Records an active health check.
    pub fn record_check(&self, addr: SocketAddr, ok: bool) {
        let mut health = self.health.borrow_mut();
        let h = health.entry(addr).or_default();
        if h.active_down == ok {
            info!(worker = %addr, healthy = ok, "worker health check changed");
        }
        h.active_down = !ok;
    }

    /// A pooled connection to `addr` idle for less than `max_idle`, if there is one; the
    /// most recently parked first (its worker-side keep-alive timer has run the shortest).
    /// Connections idle too long are closed; those the worker closed meanwhile are dropped
    /// here, not used: a request written to one would fail only when its response is due.
    pub fn take_idle(&self, addr: SocketAddr, max_idle: Duration) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        drop_expired(list, now, max_idle);
        while let Some((s, parked)) = list.pop() {
            // A connection parked a moment ago cannot have met the worker's keep-alive
            // timeout yet; only older ones cost the look.
            if now.saturating_duration_since(parked) < TRUST_PARKED_FOR || !upstream::unusable(&s) {
                return Some(s);
            }
            debug!(worker = %addr, "pooled connection closed by the worker; dropped");
        }
        None
    }

    /// Closes every pooled connection idle for `max_idle` or longer, or closed by its
    /// worker; returns how many. Run periodically, so connections of a quiet worker do not
    /// sit open (in CLOSE_WAIT once the worker has closed its end) until its next request.
    pub fn sweep_idle(&self, max_idle: Duration) -> usize {
        let now = Instant::now();
        let mut closed = 0;
        for list in self.idle.borrow_mut().values_mut() {
            let before = list.len();
            drop_expired(list, now, max_idle);
            list.retain(|(s, _)| !upstream::unusable(s));
            closed += before - list.len();
        }
        closed
    }

    /// Keeps a connection for reuse (while the worker is still in the set and fewer than
    /// `max` are parked for it).
    pub fn put_idle(&self, addr: SocketAddr, stream: TcpStream, max: usize) {
        let live = self
            .workers
            .borrow()
            .groups
            .values()
            .flatten()
            .any(|w| w.addr == addr);
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if live && list.len() < max {
            list.push((stream, Instant::now()));
        }
    }

    /// Counts a request in flight to `addr`.
    pub fn begin(&self, addr: SocketAddr) {
        *self.outstanding.borrow_mut().entry(addr).or_default() += 1;
    }

    /// Ends a request to `addr`.
    pub fn end(&self, addr: SocketAddr) {
        if let Some(n) = self.outstanding.borrow_mut().get_mut(&addr) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn expired_idle_connections_are_the_oldest_prefix() {
        let now = Instant::now();
        let at = |ago_ms: u64| now - Duration::from_millis(ago_ms);
        let mut list = vec![(1, at(900)), (2, at(500)), (3, at(100)), (4, at(0))];
        drop_expired(&mut list, now, Duration::from_millis(500));
        assert_eq!(list.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [3, 4]);
        drop_expired(&mut list, now, Duration::from_millis(1));
        assert_eq!(list.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [4]);
        drop_expired(&mut list, now, Duration::from_millis(0));
        assert!(list.is_empty());
    }

    use super::*;
    use http::HeaderValue;

    use crate::{config::ProxyRoute, proxy::route_for};

    fn routes() -> Vec<ProxyRoute> {
        crate::config::parse_routes("/api=api,/api/admin=admin,/static=web").unwrap()
    }

    fn w(port: u16, weight: u32, colour: Option<&str>) -> Worker {
        Worker {
            group: "g".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            colour: colour.map(str::to_string),
        }
    }

    #[test]
    fn routes_match_whole_segments_longest_first() {
        let r = routes();
        assert_eq!(route_for(&r, "/api/x").unwrap().group, "api");
        assert_eq!(route_for(&r, "/api").unwrap().group, "api");
        assert_eq!(route_for(&r, "/api/admin/users").unwrap().group, "admin");
        assert!(route_for(&r, "/apix").is_none());
        assert!(route_for(&r, "/other").is_none());
        let all = crate::config::parse_routes("/=web").unwrap();
        assert_eq!(route_for(&all, "/anything").unwrap().group, "web");
    }

    #[test]
    fn picks_skip_drained_tried_and_ejected_workers() {
        let up = Upstreams::default();
        up.set_workers(Arc::new(WorkerSet::from_workers([
            w(1, 0, None),
            w(2, 10, None),
            w(3, 10, None),
        ])));
        let none = HeaderMap::new();
        for _ in 0..50 {
            assert_ne!(up.pick("g", &[], &none, false).unwrap().addr.port(), 1);
        }
        let two = SocketAddr::from(([127, 0, 0, 1], 2));
        assert_eq!(up.pick("g", &[two], &none, false).unwrap().addr.port(), 3);
        for _ in 0..EJECT_AFTER {
            up.record(two, Outcome::Failure);
        }
        assert!(!up.healthy(two));
        for _ in 0..50 {
            assert_eq!(up.pick("g", &[], &none, false).unwrap().addr.port(), 3);
        }
        // Every candidate unhealthy: try them anyway rather than refuse.
        up.record_check(SocketAddr::from(([127, 0, 0, 1], 3)), false);
        assert!(up.pick("g", &[], &none, false).is_some());
        assert!(up.pick("none", &[], &none, false).is_none());
    }

    #[test]
    fn colour_weights_move_traffic() {
        let mut set = WorkerSet::from_workers([w(1, 100, Some("blue")), w(2, 100, Some("green"))]);
        set.colour_weights.insert(
            "g".into(),
            [("blue".to_string(), 0), ("green".to_string(), 100)].into(),
        );
        let up = Upstreams::default();
        up.set_workers(Arc::new(set));
        for _ in 0..50 {
            let p = up.pick("g", &[], &HeaderMap::new(), false).unwrap();
            assert_eq!(p.addr.port(), 2);
        }
    }

    #[test]
    fn sticky_cookies_pin_a_client() {
        let set = WorkerSet::from_workers([w(1, 1, None), w(2, 1, None), w(3, 1, None)]);
        let up = Upstreams::default();
        up.set_workers(Arc::new(set));
        let first = up.pick("g", &[], &HeaderMap::new(), true).unwrap();
        let cookie_header = first.set_cookie.clone().unwrap();
        let pair = cookie_header.split(';').next().unwrap().to_string();
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {pair}")).unwrap(),
        );
        for _ in 0..30 {
            let p = up.pick("g", &[], &h, true).unwrap();
            assert_eq!(p.addr, first.addr);
            assert!(p.set_cookie.is_none());
        }
    }
}
