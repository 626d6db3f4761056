//! The topology watcher: one small thread that polls the sources, publishes a new
//! [`Topology`] snapshot when anything changes (and at once when a core asks for
//! re-resolution), and keeps the last one marked stale when every source is unreachable.

use std::{
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{etcd::Etcd, http, patroni, DiscoveryError, Topology};

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
}

impl Sources {
    /// One read of the cluster: etcd first, Patroni's REST API when etcd fails.
    pub fn fetch(&self) -> Result<Topology, DiscoveryError> {
        let mut errors = Vec::new();
        if !self.etcd.is_empty() {
            match self.fetch_etcd() {
                Ok(t) => return Ok(t),
                Err(e) => errors.push(e.to_string()),
            }
        }
        for base in &self.patroni {
            match http::call(base, "GET", "/cluster", None, self.timeout) {
                Ok(body) => return patroni::from_rest(&body),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(DiscoveryError::Unreachable(errors.join("; ")))
    }

    fn fetch_etcd(&self) -> Result<Topology, DiscoveryError> {
        let ns = self.namespace.trim_end_matches('/');
        let prefix = format!("{ns}/{}/", self.scope);
        let kvs = Etcd::new(self.etcd.clone(), self.timeout).get_prefix(&prefix)?;
        let leader = kvs
            .iter()
            .find(|(k, _)| k.strip_prefix(&prefix) == Some("leader"))
            .map(|(_, v)| v.as_str());
        let members: Vec<(String, String)> = kvs
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.strip_prefix(&prefix)?
                        .strip_prefix("members/")?
                        .to_string(),
                    v.clone(),
                ))
            })
            .collect();
        if members.is_empty() {
            return Err(DiscoveryError::Parse(format!("no members under {prefix}")));
        }
        patroni::from_dcs(leader, &members)
    }
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

/// Starts the watcher thread: it reads the sources every `interval` (or when asked) and
/// calls `publish` with every new snapshot. Returns the first snapshot (read before the
/// thread starts, so cores start with a topology), the re-resolution handle and the thread.
pub fn spawn(
    sources: Sources,
    interval: Duration,
    publish: impl Fn(Arc<Topology>) + Send + 'static,
) -> std::io::Result<(Arc<Topology>, Resolve, JoinHandle<()>)> {
    let mut tracker = Tracker::default();
    let first = match tracker.update(sources.fetch()) {
        Some(t) => t,
        None => {
            warn!("no topology source answered at start; starting with no leader");
            let empty = Arc::new(Topology {
                epoch: 0,
                stale: true,
                ..Topology::default()
            });
            tracker.last = Some(empty.clone());
            empty
        }
    };
    let mut clock = LeaderClock::default();
    log_change(&mut clock, None, &first);
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("ringgate-discovery".into())
        .spawn(move || loop {
            match rx.recv_timeout(interval) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            let before = tracker.last();
            if let Some(t) = tracker.update(sources.fetch()) {
                log_change(&mut clock, before.as_deref(), &t);
                publish(t);
            }
        })?;
    Ok((first, Resolve(tx), handle))
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
            }),
            replicas: vec![],
            stale: false,
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
