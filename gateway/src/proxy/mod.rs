//! The reverse proxy: requests whose path matches a `RINGGATE_ROUTES` prefix go to a
//! worker of that route's group.
//!
//! Workers come from [`ringgate_discovery::workers`] (static and registered in Redis) as
//! a snapshot each core swaps in. A worker is chosen by power of two choices on this
//! core's outstanding requests, among workers with a weight above zero (weighted draws).
//! A request that could not connect goes to another worker; one whose bytes reached a
//! worker is repeated elsewhere only when its method is idempotent and no response byte
//! came back. Connections to workers are kept alive per core.
//!
//! This first version buffers bodies (the request up to `RINGGATE_MAX_BODY_BYTES`, the
//! response up to [`upstream::MAX_RESPONSE_BYTES`]); streaming is issue 7's.

pub mod upstream;

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
};

use http::{HeaderName, HeaderValue, Method, StatusCode};
use monoio::net::TcpStream;
use ringgate_discovery::workers::{Worker, WorkerSet};
use tracing::debug;

use self::upstream::{exchange, ExchangeError};
use crate::{config::Route, core::Core, error::error_response, http::Response, router::Request};

/// Idle connections kept per worker and core.
const MAX_IDLE_PER_WORKER: usize = 32;
/// Workers tried for one request.
const MAX_TRIES: usize = 3;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones ringgate sets itself.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
    "host",
];

/// One core's view of the workers and its connections to them.
#[derive(Debug, Default)]
pub struct Upstreams {
    workers: RefCell<Arc<WorkerSet>>,
    outstanding: RefCell<HashMap<SocketAddr, usize>>,
    idle: RefCell<HashMap<SocketAddr, Vec<TcpStream>>>,
    seed: Cell<u64>,
}

impl Upstreams {
    /// Swaps in a new worker snapshot; idle connections to workers that left are closed.
    pub fn set_workers(&self, set: Arc<WorkerSet>) {
        let live: std::collections::HashSet<SocketAddr> =
            set.groups.values().flatten().map(|w| w.addr).collect();
        self.idle.borrow_mut().retain(|a, _| live.contains(a));
        *self.workers.borrow_mut() = set;
    }

    /// The current snapshot.
    pub fn workers(&self) -> Arc<WorkerSet> {
        self.workers.borrow().clone()
    }

    fn random(&self) -> u64 {
        // xorshift64*: good enough to spread load, no shared state.
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

    /// A weighted draw among `candidates`.
    fn draw<'a>(&self, candidates: &[&'a Worker]) -> &'a Worker {
        let total: u64 = candidates.iter().map(|w| u64::from(w.weight)).sum();
        let mut point = self.random() % total.max(1);
        for w in candidates {
            if point < u64::from(w.weight) {
                return w;
            }
            point -= u64::from(w.weight);
        }
        candidates[candidates.len() - 1]
    }

    /// Power of two choices on outstanding requests, skipping `tried` and zero weights.
    pub fn pick(&self, group: &str, tried: &[SocketAddr]) -> Option<Worker> {
        let set = self.workers();
        let candidates: Vec<&Worker> = set
            .group(group)
            .iter()
            .filter(|w| w.weight > 0 && !tried.contains(&w.addr))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (a, b) = (self.draw(&candidates), self.draw(&candidates));
        let load = |w: &Worker| self.outstanding.borrow().get(&w.addr).copied().unwrap_or(0);
        Some(if load(b) < load(a) {
            b.clone()
        } else {
            a.clone()
        })
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<TcpStream> {
        self.idle.borrow_mut().get_mut(&addr)?.pop()
    }

    fn put_idle(&self, addr: SocketAddr, stream: TcpStream) {
        let still_there = self
            .workers
            .borrow()
            .groups
            .values()
            .flatten()
            .any(|w| w.addr == addr);
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if still_there && list.len() < MAX_IDLE_PER_WORKER {
            list.push(stream);
        }
    }

    fn begin(&self, addr: SocketAddr) {
        *self.outstanding.borrow_mut().entry(addr).or_default() += 1;
    }

    fn end(&self, addr: SocketAddr) {
        if let Some(n) = self.outstanding.borrow_mut().get_mut(&addr) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The route `path` falls under: the longest prefix matching whole path segments.
pub fn route_for<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    routes.iter().find(|r| {
        r.prefix.is_empty()
            || path == r.prefix
            || path
                .strip_prefix(r.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Whether a request with `method` may be sent twice.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Encodes the request for a worker: original method, target and end-to-end headers, plus
/// `x-forwarded-*` and `via`.
fn encode_request(req: &Request, client: Option<SocketAddr>, tls: bool) -> Vec<u8> {
    let head = &req.head;
    let target = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = Vec::with_capacity(512 + req.body.len());
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = head
        .headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes())
        .unwrap_or(b"");
    let connection_named: Vec<String> = head
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let mut forwarded_for = String::new();
    for (name, value) in &head.headers {
        let n = name.as_str();
        if n == "x-forwarded-for" {
            forwarded_for = String::from_utf8_lossy(value.as_bytes()).into_owned();
            continue;
        }
        if DROPPED.contains(&n) || connection_named.iter().any(|c| c == n) {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !host.is_empty() {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\nx-forwarded-host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(peer) = client {
        if !forwarded_for.is_empty() {
            forwarded_for.push_str(", ");
        }
        forwarded_for.push_str(&peer.ip().to_string());
    }
    if !forwarded_for.is_empty() {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(forwarded_for.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if tls {
        b"x-forwarded-proto: https\r\n"
    } else {
        b"x-forwarded-proto: http\r\n"
    });
    out.extend_from_slice(b"via: 1.1 ringgate\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(req.body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&req.body);
    out
}

/// Proxies `req` to a worker of `route`'s group.
pub async fn handle(core: &Rc<Core>, req: &Request, route: &Route) -> Response {
    let up = &core.upstreams;
    let proxy = &core.config.proxy;
    let encoded = encode_request(req, req.peer, req.tls);
    let head_request = req.head.method == Method::HEAD;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_error: Option<ExchangeError> = None;
    while tried.len() < MAX_TRIES {
        let Some(worker) = up.pick(&route.group, &tried) else {
            break;
        };
        let addr = worker.addr;
        tried.push(addr);
        up.begin(addr);
        let result = async {
            // A pooled connection may have been closed by the worker meanwhile: a failure
            // on it before any response byte is retried once on a fresh connection.
            if let Some(mut s) = up.take_idle(addr) {
                match exchange(
                    &mut s,
                    addr,
                    encoded.clone(),
                    head_request,
                    proxy.response_timeout,
                )
                .await
                {
                    Err(ExchangeError::NoResponse { .. }) if idempotent(&req.head.method) => {}
                    r => return r.map(|resp| (resp, s)),
                }
            }
            let mut s = upstream::connect(addr, proxy.connect_timeout).await?;
            exchange(
                &mut s,
                addr,
                encoded.clone(),
                head_request,
                proxy.response_timeout,
            )
            .await
            .map(|resp| (resp, s))
        }
        .await;
        up.end(addr);
        match result {
            Ok((resp, stream)) => {
                if resp.reusable {
                    up.put_idle(addr, stream);
                }
                return to_response(resp);
            }
            Err(e) => {
                debug!(worker = %addr, error = %e, "proxy attempt failed");
                let retry = match &e {
                    ExchangeError::Connect { .. } => true,
                    ExchangeError::NoResponse { .. } => idempotent(&req.head.method),
                    _ => false,
                };
                let done = !retry;
                last_error = Some(e);
                if done {
                    break;
                }
            }
        }
    }
    match last_error {
        None => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_upstream",
            &format!("no worker of group {:?} is available", route.group),
        )
        .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
        Some(e @ ExchangeError::Timeout { .. }) => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            &e.to_string(),
        ),
        Some(e) => error_response(StatusCode::BAD_GATEWAY, "bad_gateway", &e.to_string()),
    }
}

/// The client's response: the worker's status, end-to-end headers and body.
fn to_response(resp: upstream::UpstreamResponse) -> Response {
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = Response::new(status, "", resp.body);
    for (name, value) in resp.headers {
        if DROPPED.contains(&name.as_str()) || matches!(name.as_str(), "date" | "server") {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            out.headers.push((n, v));
        }
    }
    out.headers
        .push((http::header::VIA, HeaderValue::from_static("1.1 ringgate")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<Route> {
        crate::config::parse_routes("/api=api,/api/admin=admin,/static=web").unwrap()
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
    fn picks_skip_drained_and_tried_workers() {
        let w = |port, weight| Worker {
            group: "g".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            colour: None,
        };
        let up = Upstreams::default();
        up.set_workers(Arc::new(WorkerSet::from_workers([
            w(1, 0),
            w(2, 10),
            w(3, 10),
        ])));
        for _ in 0..50 {
            let p = up.pick("g", &[]).unwrap();
            assert_ne!(p.addr.port(), 1, "a zero-weight worker gets nothing");
        }
        let p = up
            .pick("g", &[SocketAddr::from(([127, 0, 0, 1], 2))])
            .unwrap();
        assert_eq!(p.addr.port(), 3);
        assert!(up.pick("none", &[]).is_none());
    }
}
