//! Process-wide views for `/metrics`: the database topology and the worker set as the
//! discovery threads last published them. Written off the request path (by the watcher and
//! Redis threads), read when `/metrics` renders.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use ringgate_discovery::{Role, Topology};
use ringgate_redis::workers::WorkerSet;

use super::{
    Family,
    Kind::{Counter, Gauge},
};

/// The last topology and worker set, with change bookkeeping.
#[derive(Debug)]
pub struct ClusterView {
    topology: RwLock<Option<Arc<Topology>>>,
    changed_unix_ms: AtomicU64,
    changed_at: RwLock<Option<Instant>>,
    leader_changes: AtomicU64,
    workers: RwLock<Option<Arc<WorkerSet>>>,
}

impl Default for ClusterView {
    fn default() -> Self {
        Self {
            topology: RwLock::new(None),
            changed_unix_ms: AtomicU64::new(0),
            changed_at: RwLock::new(None),
            leader_changes: AtomicU64::new(0),
            workers: RwLock::new(None),
        }
    }
}

/// A copy of what `slot` holds, even if a writer panicked.
fn snapshot<T: Clone>(slot: &RwLock<T>) -> T {
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn leader_name(t: &Topology) -> Option<&str> {
    t.leader.as_ref().map(|l| l.name.as_str())
}

// === impl ClusterView ===

impl ClusterView {
    /// Records a published topology; a different leader than before (including none) counts
    /// as a leader change.
    pub fn topology_is(&self, t: Arc<Topology>) {
        let mut slot = self.topology.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.as_ref() {
            if leader_name(old) != leader_name(&t) {
                self.leader_changes.fetch_add(1, Relaxed);
            }
        }
        *slot = Some(t);
        self.changed_unix_ms
            .store(crate::clock::unix_millis(), Relaxed);
        *self.changed_at.write().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Records a published worker set.
    pub fn workers_are(&self, set: Arc<WorkerSet>) {
        *self.workers.write().unwrap_or_else(|e| e.into_inner()) = Some(set);
    }

    /// Leader changes seen since start (failovers and switchovers).
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Relaxed)
    }

    /// Time since the topology last changed, once one was published.
    pub fn since_change(&self) -> Option<Duration> {
        snapshot(&self.changed_at).map(|t| t.elapsed())
    }

    /// Renders the topology and worker families.
    pub fn render(&self, o: &mut String) -> std::fmt::Result {
        self.render_topology(o)?;
        self.render_workers(o)
    }

    fn render_topology(&self, o: &mut String) -> std::fmt::Result {
        let topology = snapshot(&self.topology);
        LEADER_CHANGES.single(o, self.leader_changes())?;
        let Some(t) = topology else {
            return Ok(());
        };
        LEADER_KNOWN.single(o, t.leader.is_some() as u8)?;
        let changed = self.changed_unix_ms.load(Relaxed) as f64 / 1000.0;
        LAST_CHANGE.single(o, format_args!("{changed:.3}"))?;
        let since = self.since_change().unwrap_or_default().as_secs_f64();
        SINCE_CHANGE.single(o, format_args!("{since:.3}"))?;
        MEMBER.header(o)?;
        for m in t.members() {
            let role = match m.role {
                Role::Leader => "leader",
                Role::Replica => "replica",
            };
            MEMBER.sample(o, &[&m.name, &role, &m.addr], 1)?;
        }
        MEMBER_HEALTHY.header(o)?;
        for m in t.members() {
            MEMBER_HEALTHY.sample(o, &[&m.name], m.healthy as u8)?;
        }
        REPLICA_LAG.header(o)?;
        for r in &t.replicas {
            if let Some(lag) = r.lag_bytes {
                REPLICA_LAG.sample(o, &[&r.name], lag)?;
            }
        }
        Ok(())
    }

    fn render_workers(&self, o: &mut String) -> std::fmt::Result {
        let set = snapshot(&self.workers);
        let Some(set) = set else {
            return Ok(());
        };
        WORKER_WEIGHT.header(o)?;
        for (group, workers) in &set.groups {
            for w in workers {
                let colour = w.colour.as_deref().unwrap_or("");
                WORKER_WEIGHT.sample(o, &[group, &w.addr, &colour], w.weight)?;
            }
        }
        COLOUR_WEIGHT.header(o)?;
        for (group, colours) in &set.colour_weights {
            for (colour, percent) in colours {
                COLOUR_WEIGHT.sample(o, &[group, colour], percent)?;
            }
        }
        Ok(())
    }
}

const LEADER_CHANGES: Family = Family::new(
    Counter,
    "ringgate_topology_leader_changes_total",
    &[],
    "Times the database leader changed (failovers and switchovers), including to no leader.",
);
const LEADER_KNOWN: Family = Family::new(
    Gauge,
    "ringgate_topology_leader_known",
    &[],
    "1 while the topology names a leader.",
);
const LAST_CHANGE: Family = Family::new(
    Gauge,
    "ringgate_topology_last_change_timestamp_seconds",
    &[],
    "When the topology last changed (Unix time).",
);
const SINCE_CHANGE: Family = Family::new(
    Gauge,
    "ringgate_topology_seconds_since_change",
    &[],
    "Seconds since the topology last changed.",
);
const MEMBER: Family = Family::new(
    Gauge,
    "ringgate_topology_member",
    &["member", "role", "addr"],
    "Database members by role (1 per member).",
);
const MEMBER_HEALTHY: Family = Family::new(
    Gauge,
    "ringgate_topology_member_healthy",
    &["member"],
    "1 when the member runs (and, for replicas, streams).",
);
const REPLICA_LAG: Family = Family::new(
    Gauge,
    "ringgate_topology_replica_lag_bytes",
    &["member"],
    "Replication lag of each replica, when known.",
);
const WORKER_WEIGHT: Family = Family::new(
    Gauge,
    "ringgate_upstream_weight",
    &["group", "worker", "colour"],
    "Each worker's registered weight (0 drains).",
);
const COLOUR_WEIGHT: Family = Family::new(
    Gauge,
    "ringgate_upstream_colour_weight_percent",
    &["group", "colour"],
    "Blue-green share of each colour, in percent of its workers' weights.",
);

#[cfg(test)]
mod tests {
    use super::*;
    use ringgate_discovery::Member;

    fn topo(leader: Option<&str>, replica_lag: u64) -> Arc<Topology> {
        let member = |name: &str, role, lag| Member {
            name: name.into(),
            addr: "127.0.1.1:5432".parse().unwrap(),
            host: "h".into(),
            role,
            healthy: true,
            lag_bytes: lag,
            timeline: Some(2),
            api: None,
        };
        Arc::new(Topology {
            epoch: 1,
            leader: leader.map(|l| member(l, Role::Leader, None)),
            replicas: vec![member("pg\"3", Role::Replica, Some(replica_lag))],
            stale: false,
            lease_generation: 0,
        })
    }

    #[test]
    fn counts_leader_changes_and_renders_members() {
        let v = ClusterView::default();
        v.topology_is(topo(Some("pg1"), 10));
        v.topology_is(topo(Some("pg1"), 20));
        assert_eq!(v.leader_changes(), 0, "same leader, no change");
        v.topology_is(topo(None, 20));
        v.topology_is(topo(Some("pg2"), 20));
        assert_eq!(v.leader_changes(), 2, "to none, then to pg2");
        let mut o = String::new();
        v.render(&mut o).unwrap();
        assert!(
            o.contains("ringgate_topology_leader_changes_total 2"),
            "{o}"
        );
        assert!(o.contains(
            "ringgate_topology_member{member=\"pg2\",role=\"leader\",addr=\"127.0.1.1:5432\"} 1"
        ));
        assert!(o.contains("ringgate_topology_replica_lag_bytes{member=\"pg\\\"3\"} 20"));
        assert!(o.contains("ringgate_topology_leader_known 1"));
        assert!(o.contains("ringgate_topology_seconds_since_change 0."));
    }
}
