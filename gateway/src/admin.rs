//! Operator endpoints, off unless `RINGGATE_ADMIN_TOKEN` is set, and then only for
//! `Authorization: Bearer <token>` (or, for a browser, HTTP Basic with the token as the
//! password):
//! - `GET /admin/status`: JSON — build, this core, topology, pools, upstreams, Redis.
//! - `GET /admin/upstreams`: JSON — workers by group with weights and health.
//! - `GET /admin`: the same status as a small server-rendered HTML page.
//!
//! Topology, upstreams and Redis are the answering core's view (cores share nothing on the
//! request path); pool figures are every core's, as each last published them (once a
//! second).

use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::{
    error::error_response,
    http::{Request, Response},
    per_core::Core,
};

/// Whether `presented` equals `token`, in time independent of where they differ.
fn same_token(presented: &[u8], token: &[u8]) -> bool {
    presented.len() == token.len()
        && presented
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The refusal for a request that may not see admin endpoints, if it may not.
fn refuse(core: &Core, req: &Request) -> Option<Response> {
    let Some(token) = core.config.admin_token.as_deref() else {
        return Some(error_response(
            StatusCode::NOT_FOUND,
            "admin_disabled",
            "admin endpoints are off (set RINGGATE_ADMIN_TOKEN)",
        ));
    };
    let presented = req
        .head
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_token);
    match presented {
        Some(p) if same_token(p.as_bytes(), token.as_bytes()) => None,
        _ => Some(
            error_response(
                StatusCode::UNAUTHORIZED,
                "admin_unauthorized",
                "admin endpoints need Authorization: Bearer <RINGGATE_ADMIN_TOKEN> (or Basic with it as the password)",
            )
            .with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer, Basic realm=\"ringgate admin\""),
            ),
        ),
    }
}

/// The token in an `Authorization` value: `Bearer <token>`, or `Basic` credentials whose
/// password is the token (any user name), so a browser can open `/admin`.
fn presented_token(value: &str) -> Option<String> {
    use base64::Engine as _;
    if let Some(t) = value.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// Handles `/admin`, `/admin/status` and `/admin/upstreams`.
pub fn handle(core: &Core, req: &Request) -> Response {
    if let Some(refusal) = refuse(core, req) {
        return refusal;
    }
    match req.head.uri.path() {
        "/admin" | "/admin/" => Response::new(
            StatusCode::OK,
            "text/html; charset=utf-8",
            render_page(&status(core)),
        ),
        "/admin/status" => Response::json(StatusCode::OK, &status(core)),
        "/admin/upstreams" => Response::json(StatusCode::OK, &upstreams(core)),
        other => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no admin route {other}"),
        ),
    }
}

/// This core's worker snapshot: workers by group, effective weights, health.
fn upstreams(core: &Core) -> Value {
    let set = core.upstreams.workers();
    let groups: serde_json::Map<String, Value> = set
        .groups
        .iter()
        .map(|(g, ws)| {
            let list: Vec<Value> = ws
                .iter()
                .map(|w| {
                    json!({
                        "addr": w.addr.to_string(),
                        "weight": w.weight,
                        "colour": w.colour,
                        "effective_weight": crate::proxy::upstreams::effective_weight(&set, w),
                        "healthy": core.upstreams.healthy(w.addr),
                    })
                })
                .collect();
            (g.clone(), Value::Array(list))
        })
        .collect();
    json!({ "groups": groups, "colour_weights": set.colour_weights })
}

/// Everything `/admin/status` shows.
fn status(core: &Core) -> Value {
    let member = |m: &ringgate_discovery::Member| {
        json!({
            "name": m.name,
            "addr": m.addr.to_string(),
            "healthy": m.healthy,
            "lag_bytes": m.lag_bytes,
            "timeline": m.timeline,
        })
    };
    let topology = core.db.as_ref().map(|db| {
        let t = db.topology();
        json!({
            "epoch": t.epoch,
            "stale": t.stale,
            "leader_changes": core.registry.cluster().leader_changes(),
            "seconds_since_change": core.registry.cluster().since_change().map(|d| d.as_secs()),
            "leader": t.leader.as_ref().map(member),
            "replicas": t.replicas.iter().map(member).collect::<Vec<_>>(),
        })
    });
    let registry = &core.registry;
    let pools = core.db.as_ref().map(|_| {
        registry
            .pools_by_core()
            .into_iter()
            .enumerate()
            .map(|(n, p)| {
                let mut o = serde_json::Map::new();
                o.insert("core".into(), json!(n));
                for (name, v) in p.figures {
                    let key = name
                        .trim_start_matches("ringgate_pool_")
                        .trim_start_matches("ringgate_");
                    o.insert(key.into(), json!(v));
                }
                let nodes: serde_json::Map<String, Value> =
                    p.nodes.into_iter().map(|(k, v)| (k, json!(v))).collect();
                o.insert("connections_by_node".into(), Value::Object(nodes));
                Value::Object(o)
            })
            .collect::<Vec<_>>()
    });
    let sql_cache = core.query_cache.as_ref().map(|qc| {
        let cores = (0..core.config.workers).map(|n| registry.core(n));
        let total = |e: crate::metrics::CacheEvent| {
            (0..core.config.workers)
                .map(|n| registry.core(n).sql_cache_events(e))
                .sum::<u64>()
        };
        use crate::metrics::CacheEvent as E;
        json!({
            "max_bytes_per_core": core.config.query_cache.max_bytes,
            "project_bytes_per_core": core.config.query_cache.project_bytes,
            "max_entry_bytes": core.config.query_cache.max_entry,
            "bytes_by_core": cores.map(|m| m.sql_cache_bytes()).collect::<Vec<_>>(),
            "this_core": qc.stats(),
            "hits": total(E::Hit) + total(E::Coalesced),
            "misses": total(E::Miss),
            "stores": total(E::Store),
            "stale": total(E::Stale),
            "invalidations": total(E::Invalidation),
            "uncacheable": total(E::Uncacheable),
            "cross_instance": qc.generations().stats(),
        })
    });
    json!({
        "build": {
            "version": env!("CARGO_PKG_VERSION"),
            "driver": core.driver.label(),
            "cores": core.config.workers,
        },
        "core": core.id,
        "draining": registry.draining(),
        "connections": core.connections(),
        "in_flight": core.in_flight(),
        "topology": topology,
        "pools": pools,
        "upstreams": upstreams(core),
        "sql_cache": sql_cache,
        "redis": {
            "configured": core.config.redis.is_some(),
            "sentinels": core.config.redis.as_ref().map(|r| r.redis.sentinels.clone()),
            "master": registry.redis_master(),
            "master_changes": registry.redis_master_changes(),
        },
    })
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A value as short text for a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

/// The status page: one table per section.
pub fn render_page(status: &Value) -> String {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ringgate status</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}\
         td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}.bad{color:#b00}</style>\
         </head><body><h1>ringgate</h1>",
    );
    let b = &status["build"];
    html.push_str(&format!(
        "<p id=\"build\">version {} · driver {} · {} cores · this is core {}{}</p>",
        cell(&b["version"]),
        cell(&b["driver"]),
        cell(&b["cores"]),
        cell(&status["core"]),
        if status["draining"] == true {
            " · <span class=\"bad\">draining</span>"
        } else {
            ""
        }
    ));
    html.push_str("<h2>Topology</h2><table id=\"topology\"><tr><th>member</th><th>role</th><th>address</th><th>healthy</th><th>lag bytes</th><th>timeline</th></tr>");
    let t = &status["topology"];
    let mut rows = Vec::new();
    if !t["leader"].is_null() {
        rows.push(("leader", &t["leader"]));
    }
    if let Some(rs) = t["replicas"].as_array() {
        rows.extend(rs.iter().map(|r| ("replica", r)));
    }
    for (role, m) in rows {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{role}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell(&m["name"]),
            cell(&m["addr"]),
            cell(&m["healthy"]),
            cell(&m["lag_bytes"]),
            cell(&m["timeline"])
        ));
    }
    html.push_str(&format!(
        "</table><p>epoch {} · stale {} · leader changes {} · last change {} s ago</p>",
        cell(&t["epoch"]),
        cell(&t["stale"]),
        cell(&t["leader_changes"]),
        cell(&t["seconds_since_change"])
    ));
    html.push_str("<h2>Pools per core</h2><table id=\"pools\">");
    if let Some(cores) = status["pools"].as_array() {
        let columns: Vec<&String> = cores
            .first()
            .and_then(Value::as_object)
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        html.push_str("<tr>");
        for c in &columns {
            html.push_str(&format!("<th>{}</th>", escape(&c.replace('_', " "))));
        }
        html.push_str("</tr>");
        for core in cores {
            html.push_str("<tr>");
            for c in &columns {
                let v = &core[c.as_str()];
                let shown = match v.as_object() {
                    Some(nodes) => nodes
                        .iter()
                        .map(|(n, k)| format!("{}: {}", escape(n), cell(k)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    None => cell(v),
                };
                html.push_str(&format!("<td>{shown}</td>"));
            }
            html.push_str("</tr>");
        }
    }
    html.push_str("</table><h2>Upstreams</h2><table id=\"upstreams\"><tr><th>group</th><th>worker</th><th>colour</th><th>weight</th><th>effective</th><th>healthy</th></tr>");
    if let Some(groups) = status["upstreams"]["groups"].as_object() {
        for (g, ws) in groups {
            for w in ws.as_array().into_iter().flatten() {
                html.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(g),
                    cell(&w["addr"]),
                    cell(&w["colour"]),
                    cell(&w["weight"]),
                    cell(&w["effective_weight"]),
                    cell(&w["healthy"])
                ));
            }
        }
    }
    let r = &status["redis"];
    html.push_str(&format!(
        "</table><h2>Redis (Sentinel view)</h2><table id=\"redis\"><tr><th>configured</th><td>{}</td></tr>\
         <tr><th>master</th><td>{}</td></tr><tr><th>master changes</th><td>{}</td></tr></table></body></html>",
        cell(&r["configured"]),
        cell(&r["master"]),
        cell(&r["master_changes"])
    ));
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"secret-token-123", b"secret-token-123"));
        assert!(!same_token(b"secret-token-12", b"secret-token-123"));
        assert!(!same_token(b"secret-token-124", b"secret-token-123"));
    }

    #[test]
    fn pages_escape_what_they_show() {
        let status = json!({
            "build": {"version": "1", "driver": "epoll", "cores": 2},
            "core": 0,
            "draining": true,
            "topology": {"leader": {"name": "<pg1>", "addr": "a"}, "replicas": [], "epoch": 3, "stale": false},
            "pools": [{"core": 0, "tenant_pools": 1, "connections_by_node": {"pg<1>": 2}}],
            "upstreams": {"groups": {"g": [{"addr": "x&y", "weight": 1}]}},
            "redis": {"configured": false, "master": null},
        });
        let html = render_page(&status);
        assert!(html.contains("&lt;pg1&gt;") && !html.contains("<pg1>"));
        assert!(html.contains("x&amp;y"));
        assert!(html.contains("draining"));
        assert!(html.contains("id=\"topology\"") && html.contains("id=\"upstreams\""));
        assert!(html.contains("<th>tenant pools</th>") && html.contains("pg&lt;1&gt;: 2"));
    }

    #[test]
    fn bearer_and_basic_credentials_carry_the_token() {
        assert_eq!(presented_token("Bearer abc ").as_deref(), Some("abc"));
        // "admin:s3cret:x" — the password may contain colons.
        assert_eq!(
            presented_token("Basic YWRtaW46czNjcmV0Ong=").as_deref(),
            Some("s3cret:x")
        );
        assert_eq!(presented_token("Basic !!!"), None);
        assert_eq!(presented_token("Digest x"), None);
    }
}
