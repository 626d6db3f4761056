//! The database cluster as ringgate sees it: which member leads, which replicate, how far
//! behind they are.

use std::net::SocketAddr;

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The DCS names it leader: the only member that takes writes.
    Leader,
    /// A streaming replica.
    Replica,
}

/// One PostgreSQL member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable name (Patroni member name, or `primary`/`replica` in static mode).
    pub name: String,
    /// Where its PostgreSQL listens.
    pub addr: SocketAddr,
    /// Host name as configured, for TLS server names and logs.
    pub host: String,
    /// Its role.
    pub role: Role,
    /// Whether it is running and (for replicas) streaming.
    pub healthy: bool,
    /// Replication lag in bytes; `None` when unknown (static mode) or for the leader.
    pub lag_bytes: Option<u64>,
    /// Its timeline, when known.
    pub timeline: Option<u64>,
    /// Base URL of its Patroni REST API (`http://host:8008`), when known.
    pub api: Option<String>,
}

/// An immutable snapshot of the cluster. A new snapshot replaces the old one whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    /// Increases with every change the source publishes.
    pub epoch: u64,
    /// The leader, if the DCS names one.
    pub leader: Option<Member>,
    /// Replicas, healthy or not.
    pub replicas: Vec<Member>,
    /// True when no source could be reached and this is the last known state.
    pub stale: bool,
    /// The leader's term as the lease gate knows it ([`crate::lease`]); 0 for a fixed
    /// topology, whose writes are not gated.
    pub lease_generation: u64,
}

impl Topology {
    /// A fixed topology: a primary and optionally one replica (`DATABASE_URL`,
    /// `READ_REPLICA_URL`).
    pub fn fixed(primary: (SocketAddr, String), replica: Option<(SocketAddr, String)>) -> Self {
        let member = |name: &str, (addr, host): (SocketAddr, String), role| Member {
            name: name.to_string(),
            addr,
            host,
            role,
            healthy: true,
            lag_bytes: None,
            timeline: None,
            api: None,
        };
        Self {
            epoch: 1,
            leader: Some(member("primary", primary, Role::Leader)),
            replicas: replica
                .map(|r| member("replica", r, Role::Replica))
                .into_iter()
                .collect(),
            stale: false,
            lease_generation: 0,
        }
    }

    /// Every member, leader first.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.leader.iter().chain(self.replicas.iter())
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members().find(|m| m.name == name)
    }
}
