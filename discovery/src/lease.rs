//! The leader's lease as ringgate last saw it: the one fact that makes a write safe to send
//! and its answer safe to trust.
//!
//! Patroni holds leadership through the leader key in etcd, bound to a lease it renews
//! every `loop_wait`. No other member can take the key (and be promoted) before that lease
//! has expired or the key was deleted. So a commit that ringgate sees *answered* while the
//! lease is known to be unexpired happened on the only leader there was; an answer that
//! arrives later may come from a deposed leader (frozen, then resumed; or whose Patroni
//! died while its PostgreSQL kept accepting writes) and is not trusted.
//!
//! The discovery thread reads the lease's remaining TTL with every read of the DCS and
//! publishes `sent + TTL - margin`, where `sent` is when it *sent* the request: etcd
//! measured the TTL later than that, and reports it rounded down to whole seconds, so the
//! published deadline is never later than the real expiry (up to the clocks' rate
//! difference, which the margin covers). Every change of leader or lease starts a new
//! *generation*; a core's topology snapshot names the generation its leader belongs to,
//! so a core that still routes by an older snapshot finds the gate closed for it.
//!
//! The gate is one atomic word (generation and deadline), written by the discovery thread
//! a few times a second and read by a core once per write: no lock on the hot path.
//!
//! A lease says when a write's answer can no longer be trusted, but a leader that froze or
//! lost its network a moment ago still holds its lease for up to a TTL, and every write
//! sent to it meanwhile hangs and ends `outcome_unknown`. So the gate has a second word of
//! the same shape: how long the leader's Patroni is known to be answering (the leader
//! probe, [`crate::probe`]). A write is *sent* only while both hold
//! ([`LeaseGate::may_send`]); its answer is *trusted* while the lease holds
//! ([`LeaseGate::check`]). A leader that stops answering its probe thus stops receiving
//! writes within [`crate::probe::vouch_for`] of its last answer, long before its lease
//! runs out; the writes are held as in a failover, and sent once it answers again or
//! another leader is elected.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Bits of the word that hold the deadline, in milliseconds since the gate's anchor
/// (2^40 ms is about 34 years).
const DEADLINE_BITS: u32 = 40;
const DEADLINE_MASK: u64 = (1 << DEADLINE_BITS) - 1;
/// Generations wrap at 2^24; a core's snapshot is never that many leader changes behind.
const GENERATION_MASK: u64 = (1 << (64 - DEADLINE_BITS)) - 1;

/// What the gate says about a leader generation right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease is known to run at least this much longer.
    Valid(Duration),
    /// The lease may have expired (no renewal seen in time): hold writes, distrust answers.
    Expired,
    /// Another leader or lease has been seen since: this leader is deposed.
    Superseded,
}

impl LeaseState {
    /// Whether a write may be sent, or its answer trusted, now.
    pub fn is_valid(self) -> bool {
        matches!(self, LeaseState::Valid(_))
    }
}

/// The leader's lease, shared by the discovery thread (writer) and every core (readers).
#[derive(Debug)]
pub struct LeaseGate {
    word: AtomicU64,
    /// Generation and deadline until which the leader is known to answer its probe.
    vouched: AtomicU64,
    /// Whether a probe runs: without one, [`LeaseGate::may_send`] is the lease alone.
    probed: AtomicBool,
    anchor: Instant,
}

impl LeaseGate {
    /// A closed gate (generation 0, no deadline).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            word: AtomicU64::new(0),
            vouched: AtomicU64::new(0),
            probed: AtomicBool::new(false),
            anchor: Instant::now(),
        })
    }

    /// Publishes that `generation`'s leader holds its lease until `until`; an `until` in
    /// the past closes the gate for it.
    pub fn grant(&self, generation: u64, until: Instant) {
        self.word
            .store(self.encode(generation, until), Ordering::Release);
    }

    /// From now on writes are sent only while the leader answers its probe.
    pub fn require_probe(&self) {
        self.probed.store(true, Ordering::Release);
    }

    /// Publishes that `generation`'s leader answered its probe: writes may be sent to it
    /// until `until` (while its lease also holds).
    pub fn vouch(&self, generation: u64, until: Instant) {
        self.vouched
            .store(self.encode(generation, until), Ordering::Release);
    }

    /// The state of `generation`'s lease now.
    pub fn check(&self, generation: u64) -> LeaseState {
        self.check_at(generation, Instant::now())
    }

    /// The state of `generation`'s lease at `now`.
    pub fn check_at(&self, generation: u64, now: Instant) -> LeaseState {
        self.decode(self.word.load(Ordering::Acquire), generation, now)
    }

    /// Whether a write may be sent to `generation`'s leader now: its lease holds and (when
    /// a probe runs) it answered its probe recently.
    pub fn may_send(&self, generation: u64) -> bool {
        self.may_send_at(generation, Instant::now())
    }

    /// [`LeaseGate::may_send`] at `now`.
    pub fn may_send_at(&self, generation: u64, now: Instant) -> bool {
        self.check_at(generation, now).is_valid()
            && (!self.probed.load(Ordering::Acquire)
                || self
                    .decode(self.vouched.load(Ordering::Acquire), generation, now)
                    .is_valid())
    }

    fn encode(&self, generation: u64, until: Instant) -> u64 {
        let ms = until
            .checked_duration_since(self.anchor)
            .map_or(0, |d| d.as_millis() as u64)
            .min(DEADLINE_MASK);
        ((generation & GENERATION_MASK) << DEADLINE_BITS) | ms
    }

    fn decode(&self, word: u64, generation: u64, now: Instant) -> LeaseState {
        if word >> DEADLINE_BITS != generation & GENERATION_MASK {
            return LeaseState::Superseded;
        }
        let until = self.anchor + Duration::from_millis(word & DEADLINE_MASK);
        match until.checked_duration_since(now) {
            Some(left) if !left.is_zero() => LeaseState::Valid(left),
            _ => LeaseState::Expired,
        }
    }
}

/// One reading of the leader's lease from the DCS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseReading {
    /// etcd's lease ID of the leader key.
    pub id: i64,
    /// The remaining TTL etcd reported (whole seconds, rounded down).
    pub ttl: Duration,
    /// When the request that read it was sent.
    pub sent: Instant,
}

impl LeaseReading {
    /// The latest instant the lease is known to hold, less `margin`.
    pub fn valid_until(&self, margin: Duration) -> Instant {
        (self.sent + self.ttl)
            .checked_sub(margin)
            .map_or(self.sent, |t| t.max(self.sent))
    }
}

/// Assigns generations: a new one whenever the leader or its lease changes.
#[derive(Debug, Default)]
pub struct Generations {
    current: u64,
    holder: Option<(String, Option<i64>)>,
}

impl Generations {
    /// The generation of `leader` holding `lease` (`None`: no lease known, as from
    /// Patroni's REST API, which keeps the generation of the same leader's last lease).
    pub fn of(&mut self, leader: Option<&str>, lease: Option<i64>) -> u64 {
        let Some(leader) = leader else {
            if self.holder.take().is_some() {
                self.current += 1;
            }
            return self.current;
        };
        let same = match &self.holder {
            Some((name, id)) => name == leader && (lease.is_none() || *id == lease),
            None => false,
        };
        if !same {
            self.current += 1;
            self.holder = Some((leader.to_string(), lease));
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_valid_until_its_deadline_for_its_generation_only() {
        let gate = LeaseGate::new();
        let now = Instant::now();
        assert_eq!(
            gate.check_at(1, now),
            LeaseState::Superseded,
            "closed at start"
        );
        gate.grant(1, now + Duration::from_secs(3));
        assert!(
            matches!(gate.check_at(1, now), LeaseState::Valid(d) if d > Duration::from_millis(2990))
        );
        assert_eq!(
            gate.check_at(1, now + Duration::from_secs(3)),
            LeaseState::Expired
        );
        assert_eq!(gate.check_at(2, now), LeaseState::Superseded);
        gate.grant(2, now + Duration::from_secs(3));
        assert_eq!(gate.check_at(1, now), LeaseState::Superseded, "deposed");
        gate.grant(2, now - Duration::from_secs(1));
        assert_eq!(
            gate.check_at(2, now),
            LeaseState::Expired,
            "a past deadline closes it"
        );
        // Generations wrap at 2^24 without touching the deadline bits.
        let wrapped = (GENERATION_MASK + 1) + 5;
        gate.grant(wrapped, now + Duration::from_secs(1));
        assert!(gate.check_at(wrapped, now).is_valid());
        assert!(
            gate.check_at(5, now).is_valid(),
            "2^24 generations apart alias"
        );
        assert_eq!(gate.check_at(6, now), LeaseState::Superseded);
    }

    #[test]
    fn with_a_probe_a_write_is_sent_only_while_the_leader_answers_it() {
        let gate = LeaseGate::new();
        let now = Instant::now();
        gate.grant(1, now + Duration::from_secs(5));
        assert!(gate.may_send_at(1, now), "no probe: the lease alone");
        gate.require_probe();
        assert!(!gate.may_send_at(1, now), "probed, not yet answered");
        gate.vouch(1, now + Duration::from_secs(1));
        assert!(gate.may_send_at(1, now));
        assert!(
            !gate.may_send_at(1, now + Duration::from_secs(1)),
            "the last answer is too old: hold"
        );
        assert!(
            gate.check_at(1, now + Duration::from_secs(1)).is_valid(),
            "answers to writes already sent are still trusted"
        );
        assert!(
            !gate.may_send_at(2, now),
            "an answer vouches for its leader only"
        );
        gate.grant(2, now + Duration::from_secs(5));
        assert!(!gate.may_send_at(2, now));
        gate.vouch(2, now + Duration::from_secs(1));
        assert!(gate.may_send_at(2, now));
        gate.grant(2, now);
        assert!(
            !gate.may_send_at(2, now),
            "a lapsed lease wins over an answer"
        );
    }

    #[test]
    fn the_deadline_counts_from_when_the_reading_was_sent_less_the_margin() {
        let sent = Instant::now();
        let r = LeaseReading {
            id: 7,
            ttl: Duration::from_secs(5),
            sent,
        };
        assert_eq!(
            r.valid_until(Duration::from_secs(1)),
            sent + Duration::from_secs(4)
        );
        assert_eq!(
            r.valid_until(Duration::from_secs(9)),
            sent,
            "never before the reading"
        );
    }

    #[test]
    fn a_new_generation_for_each_leader_or_lease() {
        let mut g = Generations::default();
        let first = g.of(Some("pg1"), Some(10));
        assert_eq!(g.of(Some("pg1"), Some(10)), first);
        assert_eq!(
            g.of(Some("pg1"), None),
            first,
            "REST: same leader, lease unknown"
        );
        let renewed_key = g.of(Some("pg1"), Some(11));
        assert!(renewed_key > first, "a new lease is a new term");
        let none = g.of(None, None);
        assert!(none > renewed_key);
        assert_eq!(g.of(None, None), none);
        assert!(g.of(Some("pg2"), None) > none, "a leader only REST names");
        let pg2 = g.of(Some("pg2"), Some(12));
        assert!(pg2 > none);
    }
}
