//! Cancel keys: the `BackendKeyData` ringgate hands each PostgreSQL client, and what a
//! `CancelRequest` with it cancels (the server statement the session runs now, if any).
//!
//! The table is process-wide, so a `CancelRequest` that lands on another core (SO_REUSEPORT
//! spreads connections) finds its session, and that core sends the server's own cancel
//! request for it. A session registers once and updates its slot when it takes or gives
//! back a server connection (an uncontended lock per transaction).
//!
//! A key names its instance and core: the process id is `instance << 24 | core << 18 |
//! n` (instance: 7 random bits drawn at start; core: 6 bits; n: the session's number on
//! its core, 18 bits), the secret 32 random bits. A `CancelRequest` whose key is not in
//! this process's table is published on the Redis channel [`CHANNEL`] (when Redis is
//! configured); every instance sharing the Redis receives it and hands it to the core the
//! key names ([`subscription`]), which looks it up in its process's table. Publishing to
//! all, rather than looking the instance up, needs no registry of instances and no key
//! stored in Redis per session; cancels are rare.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
};

use parking_lot::Mutex;
use ring::rand::SecureRandom;
use ringgate_pool::Canceller;

/// What cancels a session's statement now (`None` between transactions).
pub type Slot = Arc<Mutex<Option<Canceller>>>;

static TABLE: LazyLock<Mutex<HashMap<(i32, i32), Slot>>> = LazyLock::new(Default::default);

/// This process's instance id (7 bits, random).
static INSTANCE: LazyLock<u32> = LazyLock::new(|| {
    let mut b = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from(b[0] & 0x7f)
});

/// The Redis channel cancel requests for other instances' sessions are published on.
pub const CHANNEL: &str = "ringgate:pg-cancel";

/// A session's cancel key, removed from the table when dropped.
#[derive(Debug)]
pub struct CancelKey {
    /// Process id handed to the client: instance, core and a counter (see the module).
    pub pid: i32,
    /// Random secret.
    pub key: i32,
    /// The session's slot.
    pub slot: Slot,
}

impl CancelKey {
    /// A fresh key for a session on `core`, numbered `n` there.
    pub fn register(core: usize, n: u32) -> Self {
        let pid = ((*INSTANCE << 24) | ((core as u32 & 0x3f) << 18) | (n & 0x3_ffff)) as i32;
        let mut secret = [0u8; 4];
        let _ = ring::rand::SystemRandom::new().fill(&mut secret);
        let key = i32::from_be_bytes(secret);
        let slot = Slot::default();
        TABLE.lock().insert((pid, key), slot.clone());
        Self { pid, key, slot }
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        TABLE.lock().remove(&(self.pid, self.key));
    }
}

/// Where a key was found.
#[derive(Debug, Clone)]
pub enum Found {
    /// A session of this process, running a statement now.
    Running(Canceller),
    /// A session of this process, between statements.
    Idle,
    /// No session of this process has this key.
    Elsewhere,
}

/// The session with this key, and its canceller when it runs a statement now.
pub fn lookup(pid: i32, key: i32) -> Found {
    let Some(slot) = TABLE.lock().get(&(pid, key)).cloned() else {
        return Found::Elsewhere;
    };
    let c = slot.lock().clone();
    c.map_or(Found::Idle, Found::Running)
}

/// The core a key's session runs on (of the instance it names).
pub fn core_of(pid: i32) -> usize {
    ((pid as u32 >> 18) & 0x3f) as usize
}

/// The message published on [`CHANNEL`] for a key.
pub fn message(pid: i32, key: i32) -> String {
    format!("{pid}:{key}")
}

/// The key in a message of [`CHANNEL`].
pub fn parse_message(m: &str) -> Option<(i32, i32)> {
    let (pid, key) = m.split_once(':')?;
    Some((pid.parse().ok()?, key.parse().ok()?))
}

/// The subscription to [`CHANNEL`]: each key is sent to the core it names (any core
/// could send the cancel; that one holds the session), modulo this process's cores.
pub fn subscription(
    cores: Vec<flume::Sender<crate::control::Control>>,
) -> ringgate_redis::Subscription {
    ringgate_redis::Subscription {
        channel: CHANNEL.to_string(),
        on_message: Box::new(move |m: &str| {
            let Some((pid, key)) = parse_message(m) else {
                return;
            };
            if let Some(tx) = cores.get(core_of(pid) % cores.len().max(1)) {
                let _ = tx.send(crate::control::Control::Cancel { pid, key });
            }
        }),
        on_state: Box::new(|_| {}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_until_dropped() {
        let k = CancelKey::register(3, 7);
        assert_eq!(core_of(k.pid), 3);
        assert_eq!(k.pid as u32 >> 24, *INSTANCE);
        assert!(k.pid > 0, "a positive process id, as PostgreSQL's");
        assert!(TABLE.lock().contains_key(&(k.pid, k.key)));
        assert!(
            matches!(lookup(k.pid, k.key), Found::Idle),
            "no statement yet"
        );
        assert!(matches!(
            lookup(k.pid, k.key.wrapping_add(1)),
            Found::Elsewhere
        ));
        let (pid, key) = (k.pid, k.key);
        drop(k);
        assert!(!TABLE.lock().contains_key(&(pid, key)));
        assert!(matches!(lookup(pid, key), Found::Elsewhere));
    }

    #[test]
    fn keys_travel_as_messages() {
        let k = CancelKey::register(63, 0x3_ffff);
        assert_eq!(core_of(k.pid), 63);
        assert_eq!(parse_message(&message(k.pid, k.key)), Some((k.pid, k.key)));
        assert_eq!(parse_message("-5:-7"), Some((-5, -7)));
        assert_eq!(parse_message("5"), None);
        assert_eq!(parse_message("x:1"), None);
    }
}
