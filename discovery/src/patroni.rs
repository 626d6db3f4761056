//! Patroni's view of the cluster → [`Topology`]: from the DCS keys in etcd (authoritative:
//! only the member the leader key names is trusted as primary), or from a member's REST
//! `/cluster` when etcd cannot be reached.

use std::net::{SocketAddr, ToSocketAddrs};

use serde_json::Value;

use crate::{topology::Member, DiscoveryError, Role, Topology};

/// Builds a topology from the DCS: the leader key's value and each member key's JSON.
/// Replicas are healthy when running on the leader's timeline; lag is the leader's WAL
/// position minus theirs, as Patroni last wrote it.
pub fn from_dcs(
    leader_key: Option<&str>,
    members: &[(String, String)],
) -> Result<Topology, DiscoveryError> {
    let mut parsed = Vec::with_capacity(members.len());
    for (name, json) in members {
        let v: Value = serde_json::from_str(json)
            .map_err(|e| DiscoveryError::Parse(format!("member {name}: {e}")))?;
        let conn_url = v["conn_url"].as_str().unwrap_or("");
        let Some((host, addr)) = conn_addr(conn_url) else {
            continue;
        };
        parsed.push((name.clone(), v, host, addr));
    }
    let leader = leader_key.and_then(|l| parsed.iter().find(|(n, ..)| n == l));
    let leader_xlog = leader.and_then(|(_, v, ..)| v["xlog_location"].as_u64());
    let leader_tl = leader.and_then(|(_, v, ..)| v["timeline"].as_u64());
    let mut t = Topology::default();
    for (name, v, host, addr) in &parsed {
        let state = v["state"].as_str().unwrap_or("");
        let timeline = v["timeline"].as_u64();
        if Some(name.as_str()) == leader_key {
            t.leader = Some(Member {
                name: name.clone(),
                addr: *addr,
                host: host.clone(),
                role: Role::Leader,
                healthy: state == "running",
                lag_bytes: None,
                timeline,
                api: api_base(v),
            });
        } else {
            let on_timeline = leader_tl.is_none() || timeline == leader_tl;
            let lag = match (leader_xlog, v["xlog_location"].as_u64()) {
                (Some(l), Some(r)) => Some(l.saturating_sub(r)),
                _ => None,
            };
            t.replicas.push(Member {
                name: name.clone(),
                addr: *addr,
                host: host.clone(),
                role: Role::Replica,
                // A member that believes it is primary but is not the DCS leader takes nothing.
                healthy: state == "running"
                    && on_timeline
                    && !matches!(v["role"].as_str(), Some("master" | "primary")),
                lag_bytes: lag,
                timeline,
                api: api_base(v),
            });
        }
    }
    t.replicas.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(t)
}

/// Builds a topology from Patroni's REST `GET /cluster`.
pub fn from_rest(cluster: &str) -> Result<Topology, DiscoveryError> {
    let v: Value = serde_json::from_str(cluster)
        .map_err(|e| DiscoveryError::Parse(format!("/cluster: {e}")))?;
    let members = v["members"]
        .as_array()
        .ok_or_else(|| DiscoveryError::Parse("/cluster has no members".into()))?;
    let leader_tl = members
        .iter()
        .find(|m| m["role"] == "leader")
        .and_then(|m| m["timeline"].as_u64());
    let mut t = Topology::default();
    for m in members {
        let (Some(name), Some(host), Some(port)) =
            (m["name"].as_str(), m["host"].as_str(), m["port"].as_u64())
        else {
            continue;
        };
        let Some(addr) = resolve(host, port as u16) else {
            continue;
        };
        let timeline = m["timeline"].as_u64();
        let state = m["state"].as_str().unwrap_or("");
        if m["role"] == "leader" {
            t.leader = Some(Member {
                name: name.into(),
                addr,
                host: host.into(),
                role: Role::Leader,
                healthy: state == "running",
                lag_bytes: None,
                timeline,
                api: api_base(m),
            });
        } else {
            t.replicas.push(Member {
                name: name.into(),
                addr,
                host: host.into(),
                role: Role::Replica,
                healthy: matches!(state, "running" | "streaming")
                    && (leader_tl.is_none() || timeline == leader_tl),
                lag_bytes: m["lag"].as_u64(),
                timeline,
                api: api_base(m),
            });
        }
    }
    t.replicas.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(t)
}

/// A member's `api_url` (`http://host:8008/patroni`) → the REST API's base URL.
fn api_base(member: &Value) -> Option<String> {
    let url = member["api_url"].as_str()?;
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    Some(format!("http://{authority}"))
}

/// `postgres://host:port/db` → host and address.
fn conn_addr(url: &str) -> Option<(String, SocketAddr)> {
    let rest = url.split("://").nth(1)?;
    let hostport = rest.split(['/', '?']).next()?.rsplit('@').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(['[', ']']), p.parse().ok()?),
        None => (hostport, 5432),
    };
    Some((host.to_string(), resolve(host, port)?))
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

/// Whether Patroni's dynamic configuration (the DCS `config` key) has
/// `synchronous_mode` on.
pub fn synchronous_mode(config: Option<&str>) -> bool {
    config
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .is_some_and(|v| {
            matches!(v["synchronous_mode"], Value::Bool(true)) || v["synchronous_mode"] == "on"
        })
}

/// Whether Patroni's `sync` key names `leader` as the leader with at least one
/// synchronous standby: only then has PostgreSQL been told to wait for that standby, so
/// a commit it acknowledges is on a member Patroni may promote.
pub fn synchronously_replicated(sync: Option<&str>, leader: &str) -> bool {
    let Some(v) = sync.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
        return false;
    };
    v["leader"].as_str() == Some(leader)
        && v["sync_standby"]
            .as_str()
            .is_some_and(|s| s.split(',').any(|n| !n.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn synchronous_mode_and_the_sync_key() {
        assert!(synchronous_mode(Some(
            r#"{"ttl":6,"synchronous_mode":true}"#
        )));
        assert!(!synchronous_mode(Some(
            r#"{"ttl":6,"synchronous_mode":false}"#
        )));
        assert!(!synchronous_mode(Some(r#"{"ttl":6}"#)));
        assert!(!synchronous_mode(None));
        let sync = r#"{"leader":"pg3","sync_standby":"pg2"}"#;
        assert!(synchronously_replicated(Some(sync), "pg3"));
        assert!(
            !synchronously_replicated(Some(sync), "pg2"),
            "names another leader"
        );
        assert!(!synchronously_replicated(
            Some(r#"{"leader":"pg3","sync_standby":null}"#),
            "pg3"
        ));
        assert!(!synchronously_replicated(
            Some(r#"{"leader":"pg3","sync_standby":""}"#),
            "pg3"
        ));
        assert!(!synchronously_replicated(None, "pg3"));
        assert!(!synchronously_replicated(Some("garbage"), "pg3"));
    }

    use super::*;

    fn member(role: &str, state: &str, n: u8, xlog: u64, tl: u64) -> (String, String) {
        (
            format!("pg{n}"),
            format!(
                r#"{{"conn_url":"postgres://127.0.1.{n}:5432/postgres","state":"{state}","role":"{role}","xlog_location":{xlog},"timeline":{tl}}}"#
            ),
        )
    }

    #[test]
    fn the_dcs_leader_key_decides_the_primary() {
        let members = [
            member("master", "running", 1, 1000, 2),
            member("replica", "running", 2, 900, 2),
            member("replica", "running", 3, 1000, 1),
        ];
        let t = from_dcs(Some("pg1"), &members).unwrap();
        assert_eq!(t.leader.as_ref().unwrap().name, "pg1");
        assert_eq!(
            t.leader.as_ref().unwrap().addr,
            "127.0.1.1:5432".parse().unwrap()
        );
        let pg2 = t.member("pg2").unwrap();
        assert!(pg2.healthy);
        assert_eq!(pg2.lag_bytes, Some(100));
        assert!(
            !t.member("pg3").unwrap().healthy,
            "an old timeline takes no reads"
        );
    }

    #[test]
    fn a_writable_member_the_dcs_does_not_name_is_never_primary() {
        // pg1's Patroni died; its postmaster still says "master"; the DCS names pg2.
        let members = [
            member("master", "running", 1, 1000, 1),
            member("master", "running", 2, 1000, 2),
        ];
        let t = from_dcs(Some("pg2"), &members).unwrap();
        assert_eq!(t.leader.unwrap().name, "pg2");
        let pg1 = t.replicas.iter().find(|m| m.name == "pg1").unwrap();
        assert!(
            !pg1.healthy,
            "the old primary takes neither writes nor reads"
        );
        let t = from_dcs(None, &members).unwrap();
        assert!(t.leader.is_none(), "no leader key, no leader");
    }

    #[test]
    fn rest_cluster_is_understood() {
        let body = r#"{"members":[{"name":"pg1","role":"replica","state":"running","host":"127.0.1.1","port":5432,"timeline":3,"lag":16},
            {"name":"pg2","role":"leader","state":"running","host":"127.0.1.2","port":5432,"timeline":3},
            {"name":"pg3","role":"replica","state":"creating replica","host":"127.0.1.3","port":5432,"lag":"unknown"}]}"#;
        let t = from_rest(body).unwrap();
        assert_eq!(t.leader.unwrap().name, "pg2");
        assert_eq!(t.replicas.len(), 2);
        assert_eq!(t.replicas[0].lag_bytes, Some(16));
        assert!(t.replicas[0].healthy && !t.replicas[1].healthy);
        assert!(from_rest("nope").is_err());
    }
}
