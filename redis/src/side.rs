//! The Redis side thread: a tokio current-thread runtime owning the master connection, the
//! Sentinel subscriptions, the command executor and the worker watch.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use redis::{aio::MultiplexedConnection, ErrorKind, ServerErrorKind};
use tokio::{
    sync::{mpsc, watch},
    time::{sleep, timeout, Instant},
};
use tracing::{debug, info, warn};

use super::{sentinel, Job, RedisConfig, RedisError, RedisHandle, Safety};
use crate::workers::{self, Worker, WorkerSet};

/// What the worker watch needs: the static workers, the poll interval and where to
/// publish every changed set.
pub struct WorkerWatch {
    /// Workers from `RINGGATE_WORKER_UPSTREAMS`, always part of the set.
    pub fixed: Vec<Worker>,
    /// Rescan period when no message arrives.
    pub interval: Duration,
    /// Called with every changed set (and once at start).
    pub publish: Box<dyn Fn(Arc<WorkerSet>) + Send>,
}

impl std::fmt::Debug for WorkerWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerWatch")
            .field("fixed", &self.fixed)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The resolved master and a connection to it.
#[derive(Clone)]
struct Master {
    addr: String,
    conn: MultiplexedConnection,
}

/// Why the resolver should look again.
#[derive(Debug)]
enum Hint {
    /// A Sentinel announced this new master.
    SwitchTo(String),
    /// The connection to this master failed or it refused a write: reconnect, re-resolve.
    Broken(String),
}

/// Called with the new master's address whenever the resolved master changes.
pub type MasterObserver = Box<dyn Fn(&str) + Send>;

/// A pub/sub channel the side thread keeps subscribed to on the current master.
pub struct Subscription {
    /// The channel's name.
    pub channel: String,
    /// Called with every message's payload.
    pub on_message: Box<dyn Fn(&str) + Send>,
    /// Called with `true` once subscribed and `false` when the subscription is lost
    /// (messages published meanwhile are not delivered).
    pub on_state: Box<dyn Fn(bool) + Send>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// Starts the side thread; it runs until every handle is dropped.
pub fn spawn(
    config: RedisConfig,
    workers: Option<WorkerWatch>,
    on_master: Option<MasterObserver>,
) -> std::io::Result<RedisHandle> {
    spawn_with(config, workers, on_master, Vec::new())
}

/// [`spawn`], also keeping `subscriptions` subscribed on the current master.
pub fn spawn_with(
    config: RedisConfig,
    workers: Option<WorkerWatch>,
    on_master: Option<MasterObserver>,
    subscriptions: Vec<Subscription>,
) -> std::io::Result<RedisHandle> {
    let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ringgate-redis".into())
        .spawn(move || {
            runtime.block_on(async move {
                let (master_tx, master_rx) = watch::channel::<Option<Master>>(None);
                let (hints, hint_rx) = mpsc::unbounded_channel::<Hint>();
                tokio::spawn(resolver(config.clone(), master_tx, hint_rx, on_master));
                for s in &config.sentinels {
                    tokio::spawn(switch_listener(s.clone(), config.clone(), hints.clone()));
                }
                if let Some(w) = workers {
                    tokio::spawn(worker_watch(config.clone(), w, master_rx.clone()));
                }
                for sub in subscriptions {
                    tokio::spawn(subscriber(config.clone(), sub, master_rx.clone()));
                }
                while let Some(job) = queue.recv().await {
                    tokio::spawn(run_job(
                        job,
                        master_rx.clone(),
                        hints.clone(),
                        config.failover_wait,
                    ));
                }
            })
        })?;
    Ok(RedisHandle { jobs })
}

/// Keeps the master current: at start, on every hint, and once a second.
async fn resolver(
    config: RedisConfig,
    master: watch::Sender<Option<Master>>,
    mut hints: mpsc::UnboundedReceiver<Hint>,
    on_master: Option<MasterObserver>,
) {
    let mut hint = None;
    loop {
        let current = master.borrow().as_ref().map(|m| m.addr.clone());
        let (target, force) = match hint.take() {
            Some(Hint::SwitchTo(addr)) => (Ok(addr), true),
            Some(Hint::Broken(addr)) => (
                sentinel::ask_sentinels(&config).await,
                current.as_ref() == Some(&addr),
            ),
            None => (sentinel::ask_sentinels(&config).await, current.is_none()),
        };
        match target {
            Ok(addr) if !force && current.as_ref() == Some(&addr) => {}
            Ok(addr) => match sentinel::connect_master(&addr, &config).await {
                Ok(conn) => {
                    if current.as_ref() != Some(&addr) {
                        info!(master = %addr, previous = ?current, "Redis master");
                        if let Some(observe) = &on_master {
                            observe(&addr);
                        }
                    }
                    master.send_replace(Some(Master { addr, conn }));
                }
                Err(error) => {
                    warn!(%error, "Redis master not usable");
                    master.send_replace(None);
                }
            },
            Err(error) => warn!(%error, "no Sentinel named a Redis master"),
        }
        tokio::select! {
            h = hints.recv() => match h {
                Some(h) => hint = Some(h),
                None => return,
            },
            _ = sleep(Duration::from_secs(1)) => {}
        }
        // Coalesce a burst of hints; an announced switch wins.
        while let Ok(h) = hints.try_recv() {
            if !matches!(hint, Some(Hint::SwitchTo(_))) {
                hint = Some(h);
            }
        }
    }
}

/// Subscribes to `+switch-master` on one Sentinel, forever.
async fn switch_listener(
    sentinel: String,
    config: RedisConfig,
    hints: mpsc::UnboundedSender<Hint>,
) {
    loop {
        let subscribed = timeout(config.timeout, async {
            let mut ps = sentinel::client(&sentinel, None)?
                .get_async_pubsub()
                .await?;
            ps.subscribe("+switch-master").await?;
            redis::RedisResult::Ok(ps)
        })
        .await;
        match subscribed {
            Ok(Ok(ps)) => {
                debug!(%sentinel, "subscribed to +switch-master");
                let mut messages = ps.into_on_message();
                while let Some(msg) = messages.next().await {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if let Some(addr) = sentinel::parse_switch_master(&payload, &config.master) {
                        info!(%sentinel, new_master = %addr, "Sentinel announced +switch-master");
                        if hints.send(Hint::SwitchTo(addr)).is_err() {
                            return;
                        }
                    }
                }
                debug!(%sentinel, "Sentinel subscription ended");
            }
            Ok(Err(error)) => debug!(%sentinel, %error, "cannot subscribe to Sentinel"),
            Err(_) => debug!(%sentinel, "Sentinel subscription timed out"),
        }
        if hints.is_closed() {
            return;
        }
        sleep(Duration::from_secs(1)).await;
    }
}

/// Whether `e` says the connection failed (as opposed to Redis answering an error).
fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

/// Runs one command: waits for a master, retries what provably did not run (or may run
/// twice), and answers the core.
async fn run_job(
    job: Job,
    mut master: watch::Receiver<Option<Master>>,
    hints: mpsc::UnboundedSender<Hint>,
    wait: Duration,
) {
    let deadline = Instant::now() + wait;
    let mut last = String::from("no master resolved yet");
    let result = loop {
        let m = match timeout(wait, master.wait_for(Option::is_some)).await {
            Ok(Ok(m)) if Instant::now() < deadline => m.clone().expect("waited for Some"),
            _ => break Err(RedisError::NoMaster { waited: wait, last }),
        };
        let mut conn = m.conn.clone();
        match job.cmd.query_async::<redis::Value>(&mut conn).await {
            Ok(v) => break Ok(v),
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) => {
                // Refused, not run: always safe to send again, to the new master.
                let _ = hints.send(Hint::Broken(m.addr.clone()));
                last = e.to_string();
            }
            Err(e) if is_connection_error(&e) => {
                let _ = hints.send(Hint::Broken(m.addr.clone()));
                if job.safety == Safety::NotIdempotent {
                    break Err(RedisError::OutcomeUnknown(e.to_string()));
                }
                last = e.to_string();
            }
            Err(e) => break Err(RedisError::Command(e.to_string())),
        }
        if Instant::now() >= deadline {
            break Err(RedisError::NoMaster { waited: wait, last });
        }
        sleep(Duration::from_millis(50)).await;
    };
    let _ = job.reply.send(result);
}

/// Keeps the worker set current: subscribes to announcements and key expiries on the
/// master, rescans on every message, every interval, and after every master change.
async fn worker_watch(
    config: RedisConfig,
    watch: WorkerWatch,
    mut master: watch::Receiver<Option<Master>>,
) {
    let mut last = Arc::new(WorkerSet::from_workers(watch.fixed.clone()));
    (watch.publish)(last.clone());
    loop {
        let Ok(m) = master.wait_for(Option::is_some).await.map(|m| m.clone()) else {
            return;
        };
        let m = m.expect("waited for Some");
        let subscribed = timeout(config.timeout, async {
            let mut ps = sentinel::client(&m.addr, config.password.as_deref())?
                .get_async_pubsub()
                .await?;
            ps.subscribe(workers::CHANNEL).await?;
            ps.subscribe("__keyevent@0__:expired").await?;
            redis::RedisResult::Ok(ps)
        })
        .await;
        let mut messages = match subscribed {
            Ok(Ok(ps)) => Some(ps.into_on_message()),
            Ok(Err(error)) => {
                warn!(%error, "cannot subscribe to worker announcements");
                None
            }
            Err(_) => {
                warn!("subscribing to worker announcements timed out");
                None
            }
        };
        // Without a subscription, poll every second until one works.
        let period = if messages.is_some() {
            watch.interval
        } else {
            watch.interval.min(Duration::from_secs(1))
        };
        master.mark_unchanged();
        loop {
            match scan(&m.conn).await {
                Ok((found, weights)) => {
                    let mut set = WorkerSet::from_workers(watch.fixed.iter().cloned().chain(found));
                    set.colour_weights = weights;
                    let set = Arc::new(set);
                    if set != last {
                        info!(workers = set.len(), "worker set changed");
                        last = set;
                        (watch.publish)(last.clone());
                    }
                }
                Err(error) => warn!(%error, "cannot scan worker registrations"),
            }
            let next = async {
                match messages.as_mut() {
                    Some(s) => s.next().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                alive = next => if !alive { break },
                _ = sleep(period) => if messages.is_none() { break },
                _ = master.changed() => break,
            }
        }
    }
}

/// Keeps one channel subscribed on the current master: resubscribes after a broken
/// connection or a master change, telling `on_state` each time it loses or regains it.
async fn subscriber(
    config: RedisConfig,
    sub: Subscription,
    mut master: watch::Receiver<Option<Master>>,
) {
    loop {
        let Ok(m) = master.wait_for(Option::is_some).await.map(|m| m.clone()) else {
            return;
        };
        let m = m.expect("waited for Some");
        master.mark_unchanged();
        let subscribed = timeout(config.timeout, async {
            let mut ps = sentinel::client(&m.addr, config.password.as_deref())?
                .get_async_pubsub()
                .await?;
            ps.subscribe(&sub.channel).await?;
            redis::RedisResult::Ok(ps)
        })
        .await;
        match subscribed {
            Ok(Ok(ps)) => {
                debug!(channel = %sub.channel, master = %m.addr, "subscribed");
                (sub.on_state)(true);
                let mut messages = ps.into_on_message();
                loop {
                    tokio::select! {
                        msg = messages.next() => match msg {
                            Some(msg) => {
                                let payload: String = msg.get_payload().unwrap_or_default();
                                (sub.on_message)(&payload);
                            }
                            None => break,
                        },
                        _ = master.changed() => break,
                    }
                }
                (sub.on_state)(false);
                warn!(channel = %sub.channel, "Redis subscription lost; resubscribing");
            }
            Ok(Err(error)) => warn!(channel = %sub.channel, %error, "cannot subscribe"),
            Err(_) => warn!(channel = %sub.channel, "subscribing timed out"),
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// Colour weights per group.
type ColourWeights = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u32>>;

/// Every key matching `prefix*`.
async fn scan_keys(
    conn: &mut MultiplexedConnection,
    prefix: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Every registration under [`workers::KEY_PREFIX`] that parses, and the colour weights.
async fn scan(conn: &MultiplexedConnection) -> redis::RedisResult<(Vec<Worker>, ColourWeights)> {
    let mut conn = conn.clone();
    let mut weights = ColourWeights::new();
    for key in scan_keys(&mut conn, workers::WEIGHTS_PREFIX).await? {
        let group = key[workers::WEIGHTS_PREFIX.len()..].to_string();
        let map: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let parsed = map
            .into_iter()
            .filter_map(|(colour, w)| Some((colour, w.trim().parse::<u32>().ok()?)))
            .collect();
        weights.insert(group, parsed);
    }
    let keys = scan_keys(&mut conn, workers::KEY_PREFIX).await?;
    if keys.is_empty() {
        return Ok((Vec::new(), weights));
    }
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
    let found = keys
        .iter()
        .zip(values)
        .filter_map(|(k, v)| {
            let w = workers::parse_registration(k, v.as_deref()?);
            if w.is_none() {
                debug!(key = %k, "ignoring malformed worker registration");
            }
            w
        })
        .collect();
    Ok((found, weights))
}
