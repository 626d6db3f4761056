//! Cancel keys: the `BackendKeyData` ringgate hands each PostgreSQL client, and what a
//! `CancelRequest` with it cancels (the server statement the session runs now, if any).
//!
//! The table is process-wide, so a `CancelRequest` that lands on another core (SO_REUSEPORT
//! spreads connections) finds its session. A session registers once and updates its slot
//! when it takes or gives back a server connection (an uncontended lock per transaction).

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

/// A session's cancel key, removed from the table when dropped.
#[derive(Debug)]
pub struct CancelKey {
    /// Process id handed to the client: the core in the top bits, a counter below.
    pub pid: i32,
    /// Random secret.
    pub key: i32,
    /// The session's slot.
    pub slot: Slot,
}

impl CancelKey {
    /// A fresh key for a session on `core`, numbered `n` there.
    pub fn register(core: usize, n: u32) -> Self {
        let pid = (((core as u32 & 0x3f) << 24) | (n & 0x00ff_ffff)) as i32;
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

/// The canceller of the session with this key, when it runs a statement now.
pub fn lookup(pid: i32, key: i32) -> Option<Canceller> {
    let slot = TABLE.lock().get(&(pid, key)).cloned()?;
    let c = slot.lock().clone();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_until_dropped() {
        let k = CancelKey::register(3, 7);
        assert_eq!(k.pid >> 24, 3);
        assert!(TABLE.lock().contains_key(&(k.pid, k.key)));
        assert!(lookup(k.pid, k.key).is_none(), "no statement yet");
        assert!(lookup(k.pid, k.key.wrapping_add(1)).is_none());
        let (pid, key) = (k.pid, k.key);
        drop(k);
        assert!(!TABLE.lock().contains_key(&(pid, key)));
    }
}
