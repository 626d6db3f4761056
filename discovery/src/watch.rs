//! The topology watcher: one small thread that polls the sources, publishes a new
//! [`Topology`] snapshot when anything changes (and at once when a core asks for
//! re-resolution), and keeps the last one marked stale when every source is unreachable.

use std::{
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    etcd::{self, Etcd},
    http,
    lease::{Generations, LeaseGate, LeaseReading},
    patroni,
    probe::{self, Probe},
    DiscoveryError, Topology,
};

/// Taken off every lease deadline: covers the rate difference between etcd's clock and
/// ours over a TTL and the time a core needs to act on a closed gate.
pub const LEASE_MARGIN: Duration = Duration::from_millis(1000);

/// Where the topology comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// etcd endpoints (`http://host:2379`); the DCS is the authority on the leader.
    pub etcd: Vec<String>,
    /// Patroni REST base URLs (`http://host:8008`), the fallback.
    pub patroni: Vec<String>,
    /// DCS namespace (Patroni's `namespace`, default `/service/`).
    pub namespace: String,
    /// Patroni's `scope`.
    pub scope: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How often the leader's Patroni is asked whether it still leads ([`crate::probe`]);
    /// `None`: never (writes are then gated by the lease alone). Used with etcd only.
    pub leader_probe: Option<Duration>,
}

impl Sources {
    /// One read of the cluster: etcd first, Patroni's REST API when etcd fails.
    pub fn fetch(&self) -> Result<Topology, DiscoveryError> {
        self.fetch_with_lease().map(|(t, _)| t)
    }

    /// One read of the cluster with what it says of the leader's lease.
    pub fn fetch_with_lease(&self) -> Result<(Topology, Lease), DiscoveryError> {
        let mut errors = Vec::new();
        if !self.etcd.is_empty() {
            match self.fetch_etcd() {
                Ok(t) => return Ok(t),
                Err(e) => errors.push(e.to_string()),
            }
        }
        for base in &self.patroni {
            match http::call(base, "GET", "/cluster", None, self.timeout) {
                Ok(body) => return patroni::from_rest(&body).map(|t| (t, Lease::Unknown)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(DiscoveryError::Unreachable(errors.join("; ")))
    }

    /// The DCS key prefix of the cluster (`/service/<scope>/`).
    fn prefix(&self) -> String {
        format!("{}/{}/", self.namespace.trim_end_matches('/'), self.scope)
    }

    fn fetch_etcd(&self) -> Result<(Topology, Lease), DiscoveryError> {
        let prefix = self.prefix();
        let etcd = Etcd::new(self.etcd.clone(), self.timeout);
        let kvs = etcd.get_prefix_kvs(&prefix)?;
        let leader = kvs
            .iter()
            .find(|kv| kv.key.strip_prefix(&prefix) == Some("leader"));
        let members: Vec<(String, String)> = kvs
            .iter()
            .filter_map(|kv| {
                Some((
                    kv.key
                        .strip_prefix(&prefix)?
                        .strip_prefix("members/")?
                        .to_string(),
                    kv.value.clone(),
                ))
            })
            .collect();
        if members.is_empty() {
            return Err(DiscoveryError::Parse(format!("no members under {prefix}")));
        }
        let topology = patroni::from_dcs(leader.map(|kv| kv.value.as_str()), &members)?;
        let key = |name: &str| {
            kvs.iter()
                .find(|kv| kv.key.strip_prefix(&prefix) == Some(name))
                .map(|kv| kv.value.as_str())
        };
        // With synchronous_mode on, a leader takes writes only once Patroni's sync key
        // names it with a synchronous standby: a member just promoted commits without
        // waiting for any standby until then, and such a commit can be lost to a member
        // that takes the key back (seen in the SIGSTOP chaos test).
        if let Some(name) = topology.leader.as_ref().map(|l| l.name.as_str()) {
            if patroni::synchronous_mode(key("config"))
                && !patroni::synchronously_replicated(key("sync"), name)
            {
                return Ok((topology, Lease::Lapsed));
            }
        }
        // The lease is read after the key that names it: its deadline can only be earlier
        // than the one that held when the key was read.
        let lease = match leader.and_then(|kv| kv.lease) {
            Some(id) => {
                let sent = Instant::now();
                match etcd.lease_ttl(id)? {
                    Some(ttl) => Lease::Held(LeaseReading { id, ttl, sent }),
                    None => Lease::Lapsed,
                }
            }
            None => Lease::Lapsed,
        };
        Ok((topology, lease))
    }
}

/// What one read says of the leader's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// etcd: the leader key's lease and its remaining TTL.
    Held(LeaseReading),
    /// etcd: no leader key, a key without a lease, an expired lease, or (with
    /// synchronous_mode on) a leader that Patroni's sync key does not name with a standby.
    Lapsed,
    /// Patroni's REST API, which knows no lease.
    Unknown,
}

/// Asks the watcher to re-read the sources now (a core saw a read-only "leader").
#[derive(Debug, Clone)]
pub struct Resolve(mpsc::Sender<()>);

impl Resolve {
    /// Wakes the watcher.
    pub fn now(&self) {
        let _ = self.0.send(());
    }
}

/// Keeps the published state: the last snapshot and its epoch.
#[derive(Debug, Default)]
pub struct Tracker {
    last: Option<Arc<Topology>>,
}

impl Tracker {
    /// Folds one fetch result in; returns the snapshot to publish, if it changed.
    pub fn update(&mut self, fetched: Result<Topology, DiscoveryError>) -> Option<Arc<Topology>> {
        let epoch = self.last.as_ref().map_or(0, |t| t.epoch);
        let next = match fetched {
            Ok(mut t) => {
                t.epoch = epoch;
                if self.last.as_deref() == Some(&t) {
                    return None;
                }
                t
            }
            Err(error) => {
                let last = self.last.as_ref()?;
                if last.stale {
                    return None;
                }
                warn!(%error, "every topology source is unreachable; keeping the last topology, marked stale");
                Topology {
                    stale: true,
                    ..(**last).clone()
                }
            }
        };
        let snapshot = Arc::new(Topology {
            epoch: epoch + 1,
            ..next
        });
        self.last = Some(snapshot.clone());
        Some(snapshot)
    }

    /// The last snapshot published.
    pub fn last(&self) -> Option<Arc<Topology>> {
        self.last.clone()
    }
}

/// What [`spawn`] starts.
#[derive(Debug)]
pub struct Watcher {
    /// The first snapshot, read before the thread started.
    pub first: Arc<Topology>,
    /// Asks for a re-read now.
    pub resolve: Resolve,
    /// The leader's lease, for gating writes.
    pub gate: Arc<LeaseGate>,
    /// The watcher thread.
    pub thread: JoinHandle<()>,
}

/// Folds reads into snapshots, lease generations and the gate.
struct State {
    tracker: Tracker,
    generations: Generations,
    gate: Arc<LeaseGate>,
    probe: Option<Probe>,
}

impl State {
    /// Folds one read in; returns the snapshot to publish, if it changed. A failed read
    /// leaves the gate as it was: its deadline still bounds the last lease seen.
    fn update(
        &mut self,
        fetched: Result<(Topology, Lease), DiscoveryError>,
    ) -> Option<Arc<Topology>> {
        let fetched = fetched.map(|(mut t, lease)| {
            let leader = t.leader.as_ref().map(|l| l.name.as_str());
            let id = match lease {
                Lease::Held(l) => Some(l.id),
                Lease::Lapsed | Lease::Unknown => None,
            };
            let generation = self.generations.of(leader, id);
            t.lease_generation = generation;
            if let (Some(probe), Some(leader)) = (&self.probe, &t.leader) {
                probe.aim(generation, leader.api.as_deref());
            }
            match lease {
                Lease::Held(l) => self.gate.grant(generation, l.valid_until(LEASE_MARGIN)),
                Lease::Lapsed => self.gate.grant(generation, Instant::now()),
                // Patroni's REST API: the same leader keeps its generation and the gate
                // runs out on its own; another leader has a new generation, never granted.
                Lease::Unknown => {}
            }
            t
        });
        self.tracker.update(fetched)
    }
}

/// Starts the watcher thread: it reads the sources every `interval`, at once when asked,
/// and at once when etcd reports a change of the leader key (a watch stream per cluster,
/// on a thread of its own), and calls `publish` with every new snapshot. The first
/// snapshot is read before the thread starts, so cores start with a topology.
pub fn spawn(
    sources: Sources,
    interval: Duration,
    publish: impl Fn(Arc<Topology>) + Send + 'static,
) -> std::io::Result<Watcher> {
    let gate = LeaseGate::new();
    let probe = match sources.leader_probe {
        Some(every) if !sources.etcd.is_empty() => Some(probe::spawn(gate.clone(), every)?),
        _ => None,
    };
    let mut state = State {
        tracker: Tracker::default(),
        generations: Generations::default(),
        gate: gate.clone(),
        probe,
    };
    let first = match state.update(sources.fetch_with_lease()) {
        Some(t) => t,
        None => {
            warn!("no topology source answered at start; starting with no leader");
            let empty = Arc::new(Topology {
                epoch: 0,
                stale: true,
                ..Topology::default()
            });
            state.tracker.last = Some(empty.clone());
            empty
        }
    };
    let mut clock = LeaderClock::default();
    log_change(&mut clock, None, &first);
    let (tx, rx) = mpsc::channel();
    let resolve = Resolve(tx);
    if !sources.etcd.is_empty() {
        let (sources, resolve) = (sources.clone(), resolve.clone());
        std::thread::Builder::new()
            .name("ringgate-etcd-watch".into())
            .spawn(move || watch_leader_key(&sources, &resolve))?;
    }
    let thread = std::thread::Builder::new()
        .name("ringgate-discovery".into())
        .spawn(move || loop {
            match rx.recv_timeout(interval) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            let before = state.tracker.last();
            if let Some(t) = state.update(sources.fetch_with_lease()) {
                log_change(&mut clock, before.as_deref(), &t);
                publish(t);
            }
        })?;
    Ok(Watcher {
        first,
        resolve,
        gate,
        thread,
    })
}

/// Keeps a watch on the leader key, on each etcd endpoint in turn, waking the watcher on
/// every change: a switchover or a deleted key is seen in milliseconds, not at the next
/// poll. Reconnects after a second when a stream ends or fails; the polls go on meanwhile.
fn watch_leader_key(sources: &Sources, resolve: &Resolve) {
    let key = format!("{}leader", sources.prefix());
    let mut next = 0;
    loop {
        let endpoint = &sources.etcd[next % sources.etcd.len()];
        let result = etcd::watch_key(
            endpoint,
            &key,
            sources.timeout,
            Duration::from_secs(30),
            || resolve.now(),
        );
        if let Err(error) = result {
            tracing::debug!(%error, "etcd watch ended; reconnecting");
            next += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        // Changes made while no stream was open are caught by the next poll.
        resolve.now();
    }
}

/// Remembers the last leader and since when the cluster has had none, for the failover
/// log line.
#[derive(Debug, Default)]
struct LeaderClock {
    last: Option<String>,
    leaderless_since: Option<Instant>,
}

/// Logs a published change: a leader change (a failover or switchover) as one `warn!` line
/// with the figures an operator needs, anything else as `info!`.
fn log_change(clock: &mut LeaderClock, before: Option<&Topology>, t: &Topology) {
    let leader = t.leader.as_ref().map(|l| l.name.as_str());
    let was = before
        .and_then(|b| b.leader.as_ref())
        .map(|l| l.name.as_str());
    let healthy = t.replicas.iter().filter(|r| r.healthy).count();
    let timeline = t.leader.as_ref().and_then(|l| l.timeline).unwrap_or(0);
    let now = Instant::now();
    match (was, leader) {
        (Some(was), None) => {
            clock.leaderless_since = Some(now);
            warn!(
                epoch = t.epoch,
                previous = was,
                healthy_replicas = healthy,
                stale = t.stale,
                "failover: the database has no leader; writes wait for a new one"
            )
        }
        (Some(was), Some(leader)) if was != leader => warn!(
            epoch = t.epoch,
            leader,
            previous = was,
            timeline,
            without_leader_ms = 0u64,
            healthy_replicas = healthy,
            "failover: leader changed"
        ),
        (None, Some(leader)) if before.is_some() => {
            let previous = clock.last.as_deref().unwrap_or("none");
            let without = clock
                .leaderless_since
                .take()
                .map_or(Duration::ZERO, |since| now.duration_since(since));
            warn!(
                epoch = t.epoch,
                leader,
                previous,
                timeline,
                without_leader_ms = without.as_millis() as u64,
                healthy_replicas = healthy,
                "failover: new leader elected"
            );
        }
        _ => info!(
            epoch = t.epoch,
            leader = leader.unwrap_or("none"),
            healthy_replicas = healthy,
            stale = t.stale,
            "topology updated"
        ),
    }
    if let Some(l) = leader {
        clock.last = Some(l.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Member, Role};

    fn topo(leader: &str) -> Topology {
        Topology {
            epoch: 0,
            leader: Some(Member {
                name: leader.into(),
                addr: "127.0.0.1:5432".parse().unwrap(),
                host: "h".into(),
                role: Role::Leader,
                healthy: true,
                lag_bytes: None,
                timeline: Some(1),
                api: None,
            }),
            replicas: vec![],
            stale: false,
            lease_generation: 0,
        }
    }

    #[test]
    fn publishes_changes_only_and_marks_stale_once() {
        let mut t = Tracker::default();
        let first = t.update(Ok(topo("pg1"))).unwrap();
        assert_eq!(first.epoch, 1);
        assert!(
            t.update(Ok(topo("pg1"))).is_none(),
            "no change, nothing published"
        );
        let unreachable = || Err(DiscoveryError::Unreachable("down".into()));
        let stale = t.update(unreachable()).unwrap();
        assert!(stale.stale && stale.epoch == 2);
        assert_eq!(
            stale.leader.as_ref().unwrap().name,
            "pg1",
            "the last topology is kept"
        );
        assert!(t.update(unreachable()).is_none(), "stale is published once");
        let back = t.update(Ok(topo("pg2"))).unwrap();
        assert!(!back.stale && back.epoch == 3 && back.leader.as_ref().unwrap().name == "pg2");
    }

    /// A log writer that sends every line over a channel.
    struct Lines(std::sync::mpsc::Sender<String>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failover_is_logged_with_the_time_without_a_leader() {
        let (tx, rx) = std::sync::mpsc::channel();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Lines(tx.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let mut clock = LeaderClock::default();
            let pg1 = topo("pg1");
            log_change(&mut clock, None, &pg1);
            let none = Topology {
                leader: None,
                ..pg1.clone()
            };
            log_change(&mut clock, Some(&pg1), &none);
            std::thread::sleep(Duration::from_millis(30));
            log_change(&mut clock, Some(&none), &topo("pg2"));
            log_change(&mut clock, Some(&topo("pg2")), &topo("pg3"));
        });
        let lines: Vec<String> = rx.try_iter().collect();
        let text = lines.concat();
        assert!(
            text.contains("INFO") && text.contains("topology updated"),
            "{text}"
        );
        assert!(
            text.contains("WARN")
                && text.contains("failover: the database has no leader")
                && text.contains("previous=\"pg1\""),
            "{text}"
        );
        let elected = lines
            .iter()
            .find(|l| l.contains("failover: new leader elected"))
            .expect("an election line");
        let ms: u64 = elected
            .split("without_leader_ms=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("without_leader_ms");
        assert!(ms >= 30, "{elected}");
        assert!(elected.contains("leader=\"pg2\"") && elected.contains("previous=\"pg1\""));
        assert!(text.contains("failover: leader changed") && text.contains("leader=\"pg3\""));
    }

    #[test]
    fn nothing_to_keep_when_never_reached() {
        let mut t = Tracker::default();
        assert!(t
            .update(Err(DiscoveryError::Unreachable("down".into())))
            .is_none());
    }
}
