//! The leader probe: a few times a second, asks the leader's Patroni whether it is alive
//! (`GET /liveness`: 200 while its HA loop runs; cheap, no query to PostgreSQL), and
//! vouches for the leader on the [`LeaseGate`] while it answers.
//!
//! A frozen or cut-off leader keeps its lease for up to a TTL; without the probe every
//! write sent to it in that time hangs until the lease runs out and ends
//! `outcome_unknown`. With it, writes stop going there within [`vouch_for`] of its last
//! answer and are held as in a failover (see [`crate::lease`]), and writes already waiting
//! on it are answered `outcome_unknown` then instead of seconds later. The leader key
//! itself stays the lease's business: an answer that arrives while the lease holds is
//! trusted whatever the probe says.

use std::{
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tracing::{info, warn};

use crate::{http, lease::LeaseGate};

/// How long one answered probe lets writes be sent: four probe intervals, so one late
/// or lost answer does not hold writes.
pub fn vouch_for(every: Duration) -> Duration {
    every * 4
}

/// How long a probe waits for its answer: three intervals.
fn timeout(every: Duration) -> Duration {
    every * 3
}

/// The leader to probe: its lease generation and its Patroni REST base URL.
type Target = Option<(u64, Option<String>)>;

/// Points the probe thread at the current leader.
#[derive(Debug, Clone)]
pub struct Probe {
    target: Arc<Mutex<Target>>,
    wake: mpsc::Sender<()>,
}

impl Probe {
    /// Probes `generation`'s leader at `api` from now on, at once when it is a new one.
    pub fn aim(&self, generation: u64, api: Option<&str>) {
        let next = Some((generation, api.map(str::to_string)));
        let mut target = self.target.lock();
        if *target != next {
            *target = next;
            let _ = self.wake.send(());
        }
    }
}

/// Starts the probe thread (every `every`) and makes `gate` require its answers.
pub fn spawn(gate: Arc<LeaseGate>, every: Duration) -> std::io::Result<Probe> {
    let target: Arc<Mutex<Target>> = Arc::default();
    let (wake, rx) = mpsc::channel();
    gate.require_probe();
    let shared = target.clone();
    std::thread::Builder::new()
        .name("ringgate-leader-probe".into())
        .spawn(move || {
            let mut silent_since: Option<Instant> = None;
            loop {
                let started = Instant::now();
                let aimed = shared.lock().clone();
                match aimed {
                    Some((generation, Some(api))) => {
                        match http::call(&api, "GET", "/liveness", None, timeout(every)) {
                            Ok(_) => {
                                gate.vouch(generation, started + vouch_for(every));
                                if let Some(since) = silent_since.take() {
                                    info!(
                                        api,
                                        silent_ms = since.elapsed().as_millis() as u64,
                                        "leader probe: the leader answers again; writes resume"
                                    );
                                }
                            }
                            Err(error) => {
                                if silent_since.is_none() {
                                    silent_since = Some(started);
                                    warn!(%error, "leader probe: the leader's Patroni does not answer; new writes are held until it does or another leader is elected");
                                }
                            }
                        }
                    }
                    // A leader whose REST API the DCS does not name: nothing to ask.
                    Some((generation, None)) => {
                        gate.vouch(generation, started + Duration::from_secs(86_400 * 365))
                    }
                    None => {}
                }
                match rx.recv_timeout(every.saturating_sub(started.elapsed())) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
    Ok(Probe { target, wake })
}
