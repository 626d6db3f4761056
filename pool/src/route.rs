//! Which member serves a request: writes to the leader only; reads to a healthy replica
//! within the lag bound with the fewest outstanding requests, else the leader.

use ringgate_discovery::{Member, Topology};

/// What a request will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Read-only: may run on a replica.
    Read,
    /// May write: only the leader.
    Write,
}

/// Picks the member for `intent`. `outstanding(name)` is this core's count of requests in
/// flight on a member. `None` when no member fits (a write with no leader, or nothing at all).
pub fn choose(
    topology: &Topology,
    intent: Intent,
    max_lag: u64,
    outstanding: impl Fn(&str) -> usize,
) -> Option<&Member> {
    choose_from(topology, intent, max_lag, 0, outstanding)
}

/// [`choose`], breaking ties between replicas starting from the `first`-th (modulo their
/// number): each core passes its own number, so cores with nothing outstanding spread
/// their reads over the replicas instead of all taking the first, and each core's
/// connections (which count against process-wide budgets) stay on fewer members.
pub fn choose_from(
    topology: &Topology,
    intent: Intent,
    max_lag: u64,
    first: usize,
    outstanding: impl Fn(&str) -> usize,
) -> Option<&Member> {
    match intent {
        Intent::Write => topology.leader.as_ref(),
        Intent::Read => {
            let n = topology.replicas.len().max(1);
            topology
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.healthy && r.lag_bytes.is_none_or(|lag| lag <= max_lag))
                .min_by_key(|(i, r)| (outstanding(&r.name), (i + n - first % n) % n))
                .map(|(_, r)| r)
                .or(topology.leader.as_ref())
        }
    }
}

/// The member named `name` when it may serve `intent`: for a write only the leader; for a
/// read the leader or a healthy replica within `max_lag`.
pub fn preferred<'t>(
    topology: &'t Topology,
    intent: Intent,
    name: &str,
    max_lag: u64,
) -> Option<&'t Member> {
    let leader = topology.leader.as_ref().filter(|l| l.name == name);
    match intent {
        Intent::Write => leader,
        Intent::Read => leader.or_else(|| {
            topology.replicas.iter().find(|r| {
                r.name == name && r.healthy && r.lag_bytes.is_none_or(|lag| lag <= max_lag)
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ringgate_discovery::Role;

    use super::*;

    fn member(name: &str, role: Role, healthy: bool, lag: Option<u64>) -> Member {
        Member {
            name: name.into(),
            addr: "127.0.0.1:5432".parse().unwrap(),
            host: "h".into(),
            role,
            healthy,
            lag_bytes: lag,
            timeline: Some(1),
            api: None,
        }
    }

    fn topo(replicas: Vec<Member>, leader: bool) -> Topology {
        Topology {
            epoch: 1,
            leader: leader.then(|| member("pg1", Role::Leader, true, None)),
            replicas,
            stale: false,
            lease_generation: 0,
        }
    }

    #[test]
    fn idle_cores_spread_their_reads_over_the_replicas() {
        let t = topo(
            vec![
                member("pg2", Role::Replica, true, Some(0)),
                member("pg3", Role::Replica, true, Some(0)),
            ],
            true,
        );
        let picks: Vec<_> = (0..4)
            .map(|core| {
                choose_from(&t, Intent::Read, 100, core, |_| 0)
                    .unwrap()
                    .name
                    .clone()
            })
            .collect();
        assert_eq!(picks, ["pg2", "pg3", "pg2", "pg3"]);
        // Fewer outstanding still wins over the core's turn.
        let load = HashMap::from([("pg2", 0), ("pg3", 3)]);
        assert_eq!(
            choose_from(&t, Intent::Read, 100, 1, |n| load[n])
                .unwrap()
                .name,
            "pg2"
        );
    }

    #[test]
    fn writes_go_to_the_leader_only() {
        let t = topo(vec![member("pg2", Role::Replica, true, Some(0))], true);
        assert_eq!(choose(&t, Intent::Write, 100, |_| 0).unwrap().name, "pg1");
        let t = topo(vec![member("pg2", Role::Replica, true, Some(0))], false);
        assert!(choose(&t, Intent::Write, 100, |_| 0).is_none());
    }

    #[test]
    fn reads_prefer_fit_replicas_with_fewest_outstanding() {
        let t = topo(
            vec![
                member("pg2", Role::Replica, true, Some(10)),
                member("pg3", Role::Replica, true, Some(0)),
            ],
            true,
        );
        let load = HashMap::from([("pg2", 1), ("pg3", 5)]);
        assert_eq!(
            choose(&t, Intent::Read, 100, |n| load[n]).unwrap().name,
            "pg2"
        );
        let load = HashMap::from([("pg2", 5), ("pg3", 1)]);
        assert_eq!(
            choose(&t, Intent::Read, 100, |n| load[n]).unwrap().name,
            "pg3"
        );
    }

    #[test]
    fn lagging_or_unhealthy_replicas_fall_back_to_the_leader() {
        let t = topo(
            vec![
                member("pg2", Role::Replica, true, Some(1000)),
                member("pg3", Role::Replica, false, Some(0)),
            ],
            true,
        );
        assert_eq!(choose(&t, Intent::Read, 100, |_| 0).unwrap().name, "pg1");
        // Unknown lag (a fixed READ_REPLICA_URL) counts as fit.
        let t = topo(vec![member("replica", Role::Replica, true, None)], true);
        assert_eq!(
            choose(&t, Intent::Read, 100, |_| 0).unwrap().name,
            "replica"
        );
        // No replicas and no leader: nothing.
        assert!(choose(&topo(vec![], false), Intent::Read, 100, |_| 0).is_none());
    }

    #[test]
    fn a_preferred_member_is_taken_only_when_it_may_serve() {
        let t = topo(
            vec![
                member("pg2", Role::Replica, true, Some(0)),
                member("pg3", Role::Replica, false, Some(0)),
                member("pg4", Role::Replica, true, Some(1000)),
            ],
            true,
        );
        let name = |m: Option<&Member>| m.map(|m| m.name.clone());
        assert_eq!(
            name(preferred(&t, Intent::Read, "pg2", 100)),
            Some("pg2".into())
        );
        assert_eq!(
            name(preferred(&t, Intent::Read, "pg1", 100)),
            Some("pg1".into())
        );
        assert_eq!(
            name(preferred(&t, Intent::Write, "pg1", 100)),
            Some("pg1".into())
        );
        // A replica never takes a write; an unhealthy, lagging or departed one no read.
        for (intent, n) in [
            (Intent::Write, "pg2"),
            (Intent::Read, "pg3"),
            (Intent::Read, "pg4"),
            (Intent::Read, "pg9"),
        ] {
            assert_eq!(preferred(&t, intent, n, 100), None, "{intent:?} on {n}");
        }
    }
}
