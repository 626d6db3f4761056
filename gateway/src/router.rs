//! Routes a complete request to its handler.
//!
//! ringgate's own endpoints: `GET /health` (liveness), `GET /ready` (503 while draining),
//! `GET /metrics` (Prometheus text). Anything else is a JSON 404.

use std::rc::Rc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};

use crate::{core::Core, error::error_response, http::Response, metrics::Route};

/// A complete request: head and buffered body.
#[derive(Debug)]
pub struct Request {
    /// Method, URI, version, headers.
    pub head: http::request::Parts,
    /// The whole body.
    pub body: Bytes,
    /// The client's address.
    pub peer: Option<std::net::SocketAddr>,
    /// Whether it came over TLS.
    pub tls: bool,
}

/// Whether `path` is one of ringgate's own endpoints (never proxied).
pub fn is_own(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics" | "/sql" | "/admin")
        || path.starts_with("/admin/")
}

/// Handles `req` on `core`; returns the route it was counted under and the response.
pub async fn route(core: &Rc<Core>, req: &Request) -> (Route, Response) {
    let path = req.head.uri.path();
    let (route, response) = match path {
        "/health" => (
            Route::Health,
            only_get(req, || {
                Response::new(
                    StatusCode::OK,
                    "application/json",
                    &b"{\"status\":\"ok\"}"[..],
                )
            }),
        ),
        "/ready" => (Route::Ready, only_get(req, || ready(core))),
        "/metrics" => (
            Route::Metrics,
            only_get(req, || {
                Response::new(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    core.registry.render(),
                )
            }),
        ),
        "/sql" => (Route::Sql, crate::sql::handle(core, req).await),
        _ if path == "/admin" || path.starts_with("/admin/") => (
            Route::Admin,
            only_get(req, || crate::admin::handle(core, req)),
        ),
        _ => (
            Route::NotFound,
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {} {}", req.head.method, path),
            ),
        ),
    };
    (route, response)
}

fn ready(core: &Core) -> Response {
    let topology = core.db.as_ref().map(|db| db.topology());
    let stale = topology.as_ref().is_some_and(|t| t.stale);
    let (status, state) = if core.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if topology
        .as_ref()
        .is_some_and(|t| t.leader.is_none() && !t.replicas.iter().any(|r| r.healthy))
    {
        (StatusCode::SERVICE_UNAVAILABLE, "no_backend")
    } else {
        (StatusCode::OK, "ready")
    };
    if topology.is_none() || (!stale && status == StatusCode::OK) {
        return Response::json(status, &serde_json::json!({ "status": state }));
    }
    // Say what the database side looks like when it is not plainly fine.
    let t = topology.unwrap_or_default();
    Response::json(
        status,
        &serde_json::json!({
            "status": state,
            "topology": {
                "stale": t.stale,
                "epoch": t.epoch,
                "leader": t.leader.as_ref().map(|l| l.name.clone()),
                "healthy_replicas": t.replicas.iter().filter(|r| r.healthy).count(),
            },
        }),
    )
}

/// Runs `f` for GET and HEAD; anything else gets 405 with `Allow`.
fn only_get(req: &Request, f: impl FnOnce() -> Response) -> Response {
    if req.head.method == Method::GET || req.head.method == Method::HEAD {
        f()
    } else {
        error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!(
                "{} is not allowed on {}",
                req.head.method,
                req.head.uri.path()
            ),
        )
        .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD"))
    }
}
