//! Routes a request: decided once, by [`dispatch`], from its path.
//!
//! ringgate's own endpoints ([`Endpoint`]: `GET /health` (liveness), `GET /ready` (503
//! while draining), `GET /metrics` (Prometheus text), `POST /sql`, `/admin`) come first, so
//! no proxy route, `/` included, can shadow one; then the longest matching proxy route;
//! anything else is a JSON 404.

use std::rc::Rc;

use http::{header, HeaderValue, Method, StatusCode};

use crate::{
    error::error_response,
    http::{Request, Response},
    metrics::RouteLabel,
    per_core::Core,
};

/// ringgate's own endpoints: the one list of the paths it answers itself (never proxied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/health`.
    Health,
    /// `/ready`.
    Ready,
    /// `/metrics`.
    Metrics,
    /// `/sql`.
    Sql,
    /// `/admin` and everything under `/admin/`.
    Admin,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 5] = [
        Endpoint::Health,
        Endpoint::Ready,
        Endpoint::Metrics,
        Endpoint::Sql,
        Endpoint::Admin,
    ];

    /// The endpoint `path` names, if any.
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/health" => Some(Endpoint::Health),
            "/ready" => Some(Endpoint::Ready),
            "/metrics" => Some(Endpoint::Metrics),
            "/sql" => Some(Endpoint::Sql),
            _ if path == "/admin" || path.starts_with("/admin/") => Some(Endpoint::Admin),
            _ => None,
        }
    }

    /// A path it answers.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Health => "/health",
            Endpoint::Ready => "/ready",
            Endpoint::Metrics => "/metrics",
            Endpoint::Sql => "/sql",
            Endpoint::Admin => "/admin",
        }
    }
}

/// Who answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'r> {
    /// ringgate itself.
    Own(Endpoint),
    /// A worker group, through this proxy route.
    Proxy(&'r crate::config::ProxyRoute),
    /// Nobody: 404.
    NotFound,
}

/// Decides who answers a request for `path`: an own endpoint before any proxy route.
pub fn dispatch<'r>(routes: &'r [crate::config::ProxyRoute], path: &str) -> Target<'r> {
    match Endpoint::of(path) {
        Some(e) => Target::Own(e),
        None => match crate::proxy::route_for(routes, path) {
            Some(r) => Target::Proxy(r),
            None => Target::NotFound,
        },
    }
}

/// Handles `req` on `core` as [`dispatch`] decided (`None`: no route); returns the route
/// it was counted under and the response.
pub async fn route(
    core: &Rc<Core>,
    req: &Request,
    endpoint: Option<Endpoint>,
) -> (RouteLabel, Response) {
    let path = req.head.uri.path();
    let (route, response) = match endpoint {
        Some(Endpoint::Health) => (
            RouteLabel::Health,
            only_get(req, || {
                Response::new(
                    StatusCode::OK,
                    "application/json",
                    &b"{\"status\":\"ok\"}"[..],
                )
            }),
        ),
        Some(Endpoint::Ready) => (RouteLabel::Ready, only_get(req, || ready(core))),
        Some(Endpoint::Metrics) => (
            RouteLabel::Metrics,
            only_get(req, || {
                Response::new(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    core.registry.render(),
                )
            }),
        ),
        // Boxed: `/sql`'s state is tens of KiB; inline, every request's future (boxed and so
        // moved once per request, see `conn::serve`) would be that large.
        Some(Endpoint::Sql) => (
            RouteLabel::Sql,
            Box::pin(crate::sql::handle(core, req)).await,
        ),
        Some(Endpoint::Admin) => (
            RouteLabel::Admin,
            only_get(req, || crate::admin::handle(core, req)),
        ),
        None => (
            RouteLabel::NotFound,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_endpoints_come_before_every_proxy_route_even_slash() {
        let routes =
            crate::config::parse_routes("/=catchall,/sql=sqlgroup,/admin=admins,/health=h")
                .expect("routes");
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::of(e.path()), Some(e));
            assert_eq!(dispatch(&routes, e.path()), Target::Own(e), "{}", e.path());
        }
        assert_eq!(
            dispatch(&routes, "/admin/status"),
            Target::Own(Endpoint::Admin)
        );
        let group = |t: Target<'_>| match t {
            Target::Proxy(r) => r.group.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(group(dispatch(&routes, "/sql/x")), "sqlgroup");
        assert_eq!(group(dispatch(&routes, "/administrator")), "catchall");
        assert_eq!(group(dispatch(&routes, "/healthz")), "catchall");
        assert_eq!(dispatch(&[], "/nothing"), Target::NotFound);
    }
}
