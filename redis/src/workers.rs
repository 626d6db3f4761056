//! Upstream workers for the reverse proxy: static ones from `RINGGATE_WORKER_UPSTREAMS`
//! and dynamic ones registered in Redis.
//!
//! A worker registers by setting `ringgate:worker:<group>:<id>` to a JSON object
//! `{"addr": "host:port", "weight": 100, "colour": "blue"}` with a TTL (`SET ... EX 10`),
//! refreshed as a heartbeat, and announces itself (and its departure) with a `PUBLISH
//! ringgate:workers <anything>`. ringgate rescans on every announcement, on every key
//! expiry (Redis keyspace events), and every `RINGGATE_DISCOVERY_INTERVAL` in case a
//! message was lost. A worker whose key expired is gone at the next scan.

use std::{collections::BTreeMap, net::SocketAddr};

/// Key prefix of worker registrations.
pub const KEY_PREFIX: &str = "ringgate:worker:";
/// Pub/sub channel workers announce changes on.
pub const CHANNEL: &str = "ringgate:workers";
/// Key prefix of blue-green colour weights: a hash `colour → percent` per group.
pub const WEIGHTS_PREFIX: &str = "ringgate:weights:";
/// Default weight of a worker that names none.
pub const DEFAULT_WEIGHT: u32 = 100;

/// One upstream worker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Worker {
    /// The worker group (a routing target).
    pub group: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share of the group's traffic (0 = drained).
    pub weight: u32,
    /// Blue-green colour, when it has one.
    pub colour: Option<String>,
}

/// Every known worker, by group: an immutable snapshot handed to every core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSet {
    /// Workers of each group, sorted, one entry per address.
    pub groups: BTreeMap<String, Vec<Worker>>,
    /// Blue-green weights: group → colour → percent of each worker's weight (from the
    /// Redis hash `ringgate:weights:<group>`); colours not listed keep their weight.
    pub colour_weights: BTreeMap<String, BTreeMap<String, u32>>,
}

impl WorkerSet {
    /// The set of `workers` (a later entry for the same group and address wins).
    pub fn from_workers(workers: impl IntoIterator<Item = Worker>) -> Self {
        let mut by_key: BTreeMap<(String, SocketAddr), Worker> = BTreeMap::new();
        for w in workers {
            by_key.insert((w.group.clone(), w.addr), w);
        }
        let mut groups: BTreeMap<String, Vec<Worker>> = BTreeMap::new();
        for ((group, _), w) in by_key {
            groups.entry(group).or_default().push(w);
        }
        Self {
            groups,
            colour_weights: BTreeMap::new(),
        }
    }

    /// The workers of `group` (empty when unknown).
    pub fn group(&self, group: &str) -> &[Worker] {
        self.groups.get(group).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of workers over all groups.
    pub fn len(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a static worker list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerListError {
    /// An entry is not `group=addr[,addr...]`.
    #[error("{0:?} is not group=host:port[,host:port...]")]
    Entry(String),
    /// An address is not `ip:port`.
    #[error("{0:?} is not an ip:port address")]
    Addr(String),
}

/// Parses `RINGGATE_WORKER_UPSTREAMS`: `group=ip:port[*weight][,ip:port...][;group=...]`.
pub fn parse_static(s: &str) -> Result<Vec<Worker>, WorkerListError> {
    let mut out = Vec::new();
    for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (group, addrs) = entry
            .split_once('=')
            .filter(|(g, a)| !g.trim().is_empty() && !a.trim().is_empty())
            .ok_or_else(|| WorkerListError::Entry(entry.to_string()))?;
        for a in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let (addr, weight) = match a.split_once('*') {
                Some((addr, w)) => (
                    addr,
                    w.parse()
                        .map_err(|_| WorkerListError::Addr(a.to_string()))?,
                ),
                None => (a, DEFAULT_WEIGHT),
            };
            out.push(Worker {
                group: group.trim().to_string(),
                addr: addr
                    .parse()
                    .map_err(|_| WorkerListError::Addr(a.to_string()))?,
                weight,
                colour: None,
            });
        }
    }
    Ok(out)
}

/// A worker from its registration key and JSON value; `None` when either is malformed.
pub fn parse_registration(key: &str, value: &str) -> Option<Worker> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (group, _id) = rest.split_once(':')?;
    if group.is_empty() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(value).ok()?;
    let addr = v.get("addr")?.as_str()?.parse().ok()?;
    let weight = match v.get("weight") {
        None | Some(serde_json::Value::Null) => DEFAULT_WEIGHT,
        Some(w) => u32::try_from(w.as_u64()?).ok()?,
    };
    let colour = v.get("colour").and_then(|c| c.as_str()).map(str::to_string);
    Some(Worker {
        group: group.to_string(),
        addr,
        weight,
        colour,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_lists_parse_groups_addresses_and_weights() {
        let w = parse_static("api=127.0.0.1:9001,127.0.0.1:9002*5; web=127.0.0.2:80").unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(w[1].weight, 5);
        assert_eq!(w[2].group, "web");
        assert_eq!(parse_static("").unwrap(), vec![]);
        assert!(matches!(
            parse_static("api"),
            Err(WorkerListError::Entry(_))
        ));
        assert!(matches!(
            parse_static("api=localhost:1"),
            Err(WorkerListError::Addr(_))
        ));
        assert!(matches!(
            parse_static("api=1.2.3.4:1*x"),
            Err(WorkerListError::Addr(_))
        ));
    }

    #[test]
    fn registrations_need_a_group_and_an_address() {
        let w = parse_registration(
            "ringgate:worker:api:w1",
            r#"{"addr":"127.0.0.1:9001","weight":7,"colour":"green"}"#,
        )
        .unwrap();
        assert_eq!((w.group.as_str(), w.weight), ("api", 7));
        assert_eq!(w.colour.as_deref(), Some("green"));
        let d = parse_registration("ringgate:worker:api:w2", r#"{"addr":"127.0.0.1:9002"}"#);
        assert_eq!(d.unwrap().weight, DEFAULT_WEIGHT);
        assert!(parse_registration("ringgate:worker:api", r#"{"addr":"127.0.0.1:1"}"#).is_none());
        assert!(parse_registration("other:api:w", r#"{"addr":"127.0.0.1:1"}"#).is_none());
        assert!(parse_registration("ringgate:worker:api:w", "not json").is_none());
        assert!(parse_registration("ringgate:worker:api:w", r#"{"addr":"x"}"#).is_none());
    }

    #[test]
    fn sets_dedupe_by_group_and_address() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let w = |weight| Worker {
            group: "g".into(),
            addr: a,
            weight,
            colour: None,
        };
        let s = WorkerSet::from_workers([w(1), w(2)]);
        assert_eq!(s.group("g"), &[w(2)]);
        assert_eq!(s.len(), 1);
        assert!(s.group("none").is_empty());
    }
}
