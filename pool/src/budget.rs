//! Process-wide connection budgets, shared by every core.
//!
//! A [`Gate`] counts server connections against one limit: one gate per node
//! (`max_total`) and one per tenant and node (`max_per_tenant`). A connection takes a
//! [`Permit`] from both when it is opened and gives it back when the server has closed it,
//! so the gates are touched per connection, never per request, and the count is what
//! PostgreSQL sees: a permit is free only once its backend is gone.
//!
//! A request that finds its tenant (or the node) at the limit waits on the gate: every
//! permit given back wakes the gate's waiters, on whichever core they run (monoio's wakers
//! are thread-safe with its `sync` feature). [`Gate::waiting`] tells the cores holding
//! connections that another core needs one: they give theirs back (see
//! [`crate::tenant::TenantPool`]), so a tenant's connections follow its demand. When a gate
//! gets its first waiter, every core's [`Demand`] is signalled, so cores holding idle
//! connections give them back at once rather than at their next upkeep.
//!
//! Each tenant gate also knows which cores hold its connections ([`Holders`]: a bitset with
//! a bit per core, any number of cores), set and cleared as permits are taken and given
//! back. A core with no idle connection for a tenant at its limit reads it to hand the
//! request to a core that holds one (see `gateway/src/sql/handoff.rs`) instead of moving a
//! connection; a request waiting on a core that holds some waits for them rather than ask
//! other cores to give connections back ([`Gate::watch`]).
//!
//! The map from (tenant, node) to its gate is locked only when a core creates a tenant pool;
//! it holds weak references, so a gate lives as long as some core's pool holds it, and the
//! map is bounded by the pools the cores may cache.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Weak,
    },
    task::Waker,
};

use parking_lot::Mutex;

use crate::config::Config;

/// Every gate of the process, by node and by (tenant, node).
#[derive(Debug)]
pub struct Budgets {
    max_total: usize,
    max_per_tenant: usize,
    /// Cores that may hold permits (the size of every gate's [`Holders`]).
    cores: usize,
    nodes: Mutex<HashMap<String, Arc<Gate>>>,
    tenants: Mutex<Tenants>,
    board: Arc<Board>,
}

/// Every core's [`Demand`] signal, and the permits ever taken.
#[derive(Debug, Default)]
struct Board {
    cores: Mutex<Vec<Arc<Demand>>>,
    /// Permits taken, on every gate of these budgets: server connections opened (or tried).
    connects: AtomicU64,
}

impl Board {
    fn signal(&self) {
        for d in self.cores.lock().iter() {
            d.signal();
        }
    }
}

/// Set when a request somewhere starts waiting for a permit: the core should give back
/// the idle connections others wait for.
#[derive(Debug, Default)]
pub struct Demand {
    set: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Demand {
    fn signal(&self) {
        // Already set: the core has not looked yet, and will.
        if self.set.swap(true, Ordering::SeqCst) {
            return;
        }
        let waker = self.waker.lock().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Resolves when signalled (at once when signalled since the last time).
    pub async fn signalled(&self) {
        std::future::poll_fn(|cx| {
            if self.set.swap(false, Ordering::SeqCst) {
                return std::task::Poll::Ready(());
            }
            *self.waker.lock() = Some(cx.waker().clone());
            if self.set.swap(false, Ordering::SeqCst) {
                return std::task::Poll::Ready(());
            }
            std::task::Poll::Pending
        })
        .await
    }
}
#[derive(Debug, Default)]
struct Tenants {
    gates: HashMap<(String, String), Weak<Gate>>,
    /// Dead entries are swept when the map reaches this size.
    sweep_at: usize,
}

// === impl Budgets ===

impl Budgets {
    /// The budgets for `config`'s `max_total` and `max_per_tenant`, for one core.
    pub fn new(config: &Config) -> Arc<Self> {
        Self::for_cores(config, 1)
    }

    /// The budgets for `config`'s `max_total` and `max_per_tenant`, to share among `cores`
    /// cores (numbered from 0; a permit taken by a core beyond them marks no holder).
    pub fn for_cores(config: &Config, cores: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: config.max_total,
            max_per_tenant: config.max_per_tenant,
            cores,
            nodes: Mutex::default(),
            tenants: Mutex::new(Tenants {
                gates: HashMap::new(),
                sweep_at: 64,
            }),
            board: Arc::default(),
        })
    }

    /// A core's demand signal (call once per core).
    pub fn demand(&self) -> Arc<Demand> {
        let d = Arc::<Demand>::default();
        self.board.cores.lock().push(d.clone());
        d
    }

    /// The gate of all connections to `node`.
    pub fn node(&self, node: &str) -> Arc<Gate> {
        let mut nodes = self.nodes.lock();
        if let Some(g) = nodes.get(node) {
            return g.clone();
        }
        let g = Arc::new(Gate::with_board(
            self.max_total,
            self.cores,
            self.board.clone(),
        ));
        nodes.insert(node.to_string(), g.clone());
        g
    }

    /// The gate of `tenant`'s connections to `node`.
    pub fn tenant(&self, tenant: &str, node: &str) -> Arc<Gate> {
        let mut t = self.tenants.lock();
        let key = (tenant.to_string(), node.to_string());
        if let Some(g) = t.gates.get(&key).and_then(Weak::upgrade) {
            return g;
        }
        if t.gates.len() >= t.sweep_at {
            t.gates.retain(|_, g| g.strong_count() > 0);
            t.sweep_at = (t.gates.len() * 2).max(64);
        }
        let g = Arc::new(Gate::with_board(
            self.max_per_tenant,
            self.cores,
            self.board.clone(),
        ));
        t.gates.insert(key, Arc::downgrade(&g));
        g
    }

    /// Connections `tenant` holds to `node` now, on all cores.
    pub fn tenant_used(&self, tenant: &str, node: &str) -> usize {
        let t = self.tenants.lock();
        t.gates
            .get(&(tenant.to_string(), node.to_string()))
            .and_then(Weak::upgrade)
            .map_or(0, |g| g.used())
    }

    /// Connections to `node` now, on all cores.
    pub fn node_used(&self, node: &str) -> usize {
        self.nodes.lock().get(node).map_or(0, |g| g.used())
    }

    /// Permits taken since start, on every gate: server connections opened or tried, on all
    /// cores. Against the requests served, it says how often connections moved.
    pub fn connects(&self) -> u64 {
        self.board.connects.load(Ordering::Relaxed)
    }

    /// Tenant gates alive now (for tests: the map is bounded).
    pub fn tenant_gates(&self) -> usize {
        let t = self.tenants.lock();
        t.gates.values().filter(|g| g.strong_count() > 0).count()
    }
}

/// Which gate refused a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The tenant is at `max_per_tenant` on this node.
    Tenant,
    /// The node is at `max_total`.
    Node,
}

/// Takes a permit from both gates for a connection held by `core`, or says which is full.
pub fn try_acquire(tenant: &Arc<Gate>, node: &Arc<Gate>, core: usize) -> Result<Permit, Full> {
    if !tenant.try_take() {
        return Err(Full::Tenant);
    }
    if !node.try_take() {
        tenant.give();
        return Err(Full::Node);
    }
    tenant.holders.add(core);
    node.holders.add(core);
    tenant.board.connects.fetch_add(1, Ordering::Relaxed);
    Ok(Permit {
        tenant: tenant.clone(),
        node: node.clone(),
        core,
    })
}

/// One limit, counted across cores, and the requests waiting under it.
#[derive(Debug)]
pub struct Gate {
    limit: usize,
    used: AtomicUsize,
    /// Requests waiting for a permit of this gate, on any core.
    waiting: AtomicUsize,
    /// Requests waiting for a permit whose core holds some, but fewer than an even share
    /// ([`Gate::wait_short`]).
    short: AtomicUsize,
    wakers: WakerList,
    /// The cores holding its permits.
    holders: Holders,
    /// The cores with an idle connection under it (as each last marked).
    idle: CoreSet,
    /// Requests handed to each core and not yet answered.
    handed: Box<[AtomicU32]>,
    board: Arc<Board>,
}

// === impl Gate ===

impl Gate {
    /// A gate of `limit` permits, for one core.
    pub fn new(limit: usize) -> Self {
        Self::with_board(limit, 1, Arc::default())
    }

    fn with_board(limit: usize, cores: usize, board: Arc<Board>) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            short: AtomicUsize::new(0),
            wakers: WakerList::default(),
            holders: Holders::new(cores),
            idle: CoreSet::new(cores),
            handed: (0..cores).map(|_| AtomicU32::new(0)).collect(),
            board,
        }
    }

    /// The cores holding this gate's permits now (connections open, opening or closing).
    pub fn holders(&self) -> &Holders {
        &self.holders
    }

    /// The cores that marked an idle connection under this gate ([`Gate::mark_idle`]).
    pub fn idle(&self) -> &CoreSet {
        &self.idle
    }

    /// Counts a request handed to `core` until the guard drops (when it is answered).
    pub fn hand_to(self: &Arc<Self>, core: usize) -> Handed {
        if let Some(n) = self.handed.get(core) {
            n.fetch_add(1, Ordering::AcqRel);
        }
        Handed {
            gate: self.clone(),
            core,
        }
    }

    /// Requests handed to `core` under this gate and not yet answered.
    pub fn handed(&self, core: usize) -> usize {
        self.handed
            .get(core)
            .map_or(0, |n| n.load(Ordering::Acquire) as usize)
    }

    /// Marks whether `core` has an idle connection under this gate (a core calls it when
    /// its pool's idle count turns zero or stops being zero). Writes only on a change.
    pub fn mark_idle(&self, core: usize, idle: bool) {
        self.idle.set(core, idle);
    }

    fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.limit).then_some(u + 1)
            })
            .is_ok()
    }

    fn give(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
        // SeqCst pairs with `Waiter::register`: either the waiter sees the freed permit
        // when it looks again after registering, or this sees its waker.
        if self.wakers.len.load(Ordering::SeqCst) > 0 {
            self.wakers.wake_all();
        }
    }

    /// Permits taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether a permit is free now.
    pub fn has_room(&self) -> bool {
        self.used() < self.limit
    }

    /// Requests waiting for a permit now, on all cores.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Counts a request as waiting until the guard drops. The first waiter signals every
    /// core's [`Demand`].
    pub fn wait(self: &Arc<Self>) -> Waiting {
        if self.waiting.fetch_add(1, Ordering::AcqRel) == 0 {
            self.board.signal();
        }
        Waiting {
            gate: self.clone(),
            slot: None,
            counted: Counted::Waiting,
        }
    }

    /// Requests waiting whose core holds fewer than an even share of the permits.
    pub fn short(&self) -> usize {
        self.short.load(Ordering::Acquire)
    }

    /// Counts a request as waiting short until the guard drops: its core holds some of
    /// the permits but fewer than an even share among the cores holding them, and its
    /// requests cannot be handed to them (a PostgreSQL client stays on the core it
    /// connected to), so cores above an even share give connections back to it.
    pub fn wait_short(self: &Arc<Self>) -> Waiting {
        self.short.fetch_add(1, Ordering::AcqRel);
        Waiting {
            gate: self.clone(),
            slot: None,
            counted: Counted::Short,
        }
    }

    /// Waits for a permit without counting as waiting: no core is asked to give one back
    /// (for a request whose tenant has connections on other cores to hand it to, or on
    /// its own core to wait for).
    pub fn watch(self: &Arc<Self>) -> Waiting {
        Waiting {
            gate: self.clone(),
            slot: None,
            counted: Counted::No,
        }
    }
}

/// A set of cores: a bit per core in words of 64, any number of cores, read and written
/// without a lock.
#[derive(Debug)]
pub struct CoreSet {
    words: Box<[AtomicU64]>,
    cores: usize,
}

// === impl CoreSet ===

impl CoreSet {
    /// No core among `cores`.
    pub fn new(cores: usize) -> Self {
        Self {
            words: (0..cores.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            cores,
        }
    }

    /// Puts `core` in the set or takes it out (nothing for a core beyond those counted);
    /// writes only when that changes it.
    pub fn set(&self, core: usize, on: bool) {
        if core >= self.cores || self.contains(core) == on {
            return;
        }
        let bit = 1u64 << (core % 64);
        match on {
            true => self.words[core / 64].fetch_or(bit, Ordering::AcqRel),
            false => self.words[core / 64].fetch_and(!bit, Ordering::AcqRel),
        };
    }

    /// Whether `core` is in the set.
    pub fn contains(&self, core: usize) -> bool {
        self.words
            .get(core / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (core % 64)) != 0)
    }

    /// The `n`-th core of the set other than `except` (modulo their number), in core
    /// order; `None` when there is none.
    pub fn nth_except(&self, n: usize, except: usize) -> Option<usize> {
        let words: Vec<u64> = self
            .words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let bits = w.load(Ordering::Acquire);
                if i == except / 64 {
                    bits & !(1 << (except % 64))
                } else {
                    bits
                }
            })
            .collect();
        let len: usize = words.iter().map(|w| w.count_ones() as usize).sum();
        if len == 0 {
            return None;
        }
        let mut left = n % len;
        for (i, mut bits) in words.into_iter().enumerate() {
            let here = bits.count_ones() as usize;
            if left >= here {
                left -= here;
                continue;
            }
            for _ in 0..left {
                bits &= bits - 1;
            }
            return Some(i * 64 + bits.trailing_zeros() as usize);
        }
        None
    }
}

/// Which cores hold permits of a gate: a bit per core in words of 64, so any number of
/// cores, read without a lock. Each core's bit is backed by its count of permits, changed
/// only by that core (permits are taken and given back on the core whose pool holds the
/// connection), so a bit is set exactly while its core holds at least one.
#[derive(Debug)]
pub struct Holders {
    words: Box<[AtomicU64]>,
    counts: Box<[AtomicU32]>,
}

// === impl Holders ===

impl Holders {
    /// No holder among `cores` cores.
    pub fn new(cores: usize) -> Self {
        Self {
            words: (0..cores.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..cores).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// `core` took a permit.
    pub fn add(&self, core: usize) {
        let Some(count) = self.counts.get(core) else {
            return;
        };
        if count.fetch_add(1, Ordering::AcqRel) == 0 {
            self.set(core);
        }
    }

    /// `core` gave a permit back.
    pub fn remove(&self, core: usize) {
        let Some(count) = self.counts.get(core) else {
            return;
        };
        if count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.words[core / 64].fetch_and(!(1 << (core % 64)), Ordering::AcqRel);
            // A permit taken meanwhile (on another thread) may have set the bit before
            // this cleared it.
            if count.load(Ordering::Acquire) > 0 {
                self.set(core);
            }
        }
    }

    fn set(&self, core: usize) {
        self.words[core / 64].fetch_or(1 << (core % 64), Ordering::AcqRel);
    }

    /// Permits `core` holds.
    pub fn count(&self, core: usize) -> usize {
        self.counts
            .get(core)
            .map_or(0, |n| n.load(Ordering::Acquire) as usize)
    }

    /// Whether `core` holds a permit.
    pub fn contains(&self, core: usize) -> bool {
        self.words
            .get(core / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (core % 64)) != 0)
    }

    /// How many cores hold permits.
    pub fn len(&self) -> usize {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire).count_ones() as usize)
            .sum()
    }

    /// Whether no core holds a permit.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| w.load(Ordering::Acquire) == 0)
    }

    /// Whether a core other than `core` holds a permit.
    pub fn any_but(&self, core: usize) -> bool {
        self.words.iter().enumerate().any(|(i, w)| {
            let mut bits = w.load(Ordering::Acquire);
            if i == core / 64 {
                bits &= !(1 << (core % 64));
            }
            bits != 0
        })
    }

    /// The holders in core order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, w)| {
            let mut bits = w.load(Ordering::Acquire);
            std::iter::from_fn(move || {
                let bit = bits.trailing_zeros() as usize;
                (bits != 0).then(|| {
                    bits &= bits - 1;
                    i * 64 + bit
                })
            })
        })
    }

    /// The core holding the `n`-th permit (modulo the permits held), holders in core
    /// order: turns taken this way give each holder a share in proportion to the
    /// connections it holds. `None` when no core holds one.
    pub fn nth_permit(&self, n: usize) -> Option<usize> {
        let held = |c: usize| self.counts[c].load(Ordering::Acquire) as usize;
        let total: usize = self.iter().map(held).sum();
        if total == 0 {
            return None;
        }
        let mut left = n % total;
        let mut last = None;
        for c in self.iter() {
            let k = held(c);
            if left < k {
                return Some(c);
            }
            left -= k;
            last = Some(c);
        }
        // Permits given back since they were summed.
        last
    }
}

/// A request handed to a core, counted in its gate until dropped.
#[derive(Debug)]
pub struct Handed {
    gate: Arc<Gate>,
    core: usize,
}

impl Drop for Handed {
    fn drop(&mut self) {
        if let Some(n) = self.gate.handed.get(self.core) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A request waiting on a gate; registers its waker to be woken by the next permit given
/// back on any core.
#[derive(Debug)]
pub struct Waiting {
    gate: Arc<Gate>,
    slot: Option<Slot>,
    /// Which of the gate's counts it is in.
    counted: Counted,
}

/// Which count of its gate a [`Waiting`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// [`Gate::watch`].
    No,
    /// [`Gate::wait`].
    Waiting,
    /// [`Gate::wait_short`].
    Short,
}

impl Waiting {
    /// Registers (or refreshes) the waker; the caller then checks [`Gate::has_room`]
    /// before it sleeps, so a permit freed in between is not missed.
    pub fn register(&mut self, waker: &Waker) {
        self.gate.wakers.register(&mut self.slot, waker);
    }

    /// The gate waited on.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.gate.wakers.cancel(slot);
        }
        match self.counted {
            Counted::No => {}
            Counted::Waiting => {
                self.gate.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            Counted::Short => {
                self.gate.short.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Wakers of the requests waiting on a gate. Locked only by waiting requests and by a
/// permit given back while some wait. A slab: each waiter holds its slot's index and a
/// ticket, so registering again and leaving are O(1) (a slot emptied by a wake, or taken
/// since by another waiter, has another ticket).
#[derive(Debug, Default)]
struct WakerList {
    len: AtomicUsize,
    next: AtomicU64,
    slab: Mutex<Slab>,
}

/// A waiter's place in a [`WakerList`]: index and ticket.
#[derive(Debug, Clone, Copy)]
struct Slot {
    index: usize,
    ticket: u64,
}

#[derive(Debug, Default)]
struct Slab {
    entries: Vec<Option<(u64, Waker)>>,
    free: Vec<usize>,
    len: usize,
}

impl WakerList {
    fn register(&self, slot: &mut Option<Slot>, waker: &Waker) {
        let mut slab = self.slab.lock();
        if let Some(s) = *slot {
            if let Some(Some((t, w))) = slab.entries.get_mut(s.index) {
                if *t == s.ticket {
                    w.clone_from(waker);
                    return;
                }
            }
        }
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Some((ticket, waker.clone()));
        let index = match slab.free.pop() {
            Some(i) => {
                slab.entries[i] = entry;
                i
            }
            None => {
                slab.entries.push(entry);
                slab.entries.len() - 1
            }
        };
        slab.len += 1;
        *slot = Some(Slot { index, ticket });
        self.len.store(slab.len, Ordering::SeqCst);
    }

    fn cancel(&self, slot: Slot) {
        let mut slab = self.slab.lock();
        let mine = matches!(slab.entries.get(slot.index), Some(Some((t, _))) if *t == slot.ticket);
        if mine {
            slab.entries[slot.index] = None;
            slab.free.push(slot.index);
            slab.len -= 1;
            self.len.store(slab.len, Ordering::SeqCst);
        }
    }

    fn wake_all(&self) {
        let woken = {
            let mut slab = self.slab.lock();
            self.len.store(0, Ordering::SeqCst);
            slab.free.clear();
            slab.len = 0;
            std::mem::take(&mut slab.entries)
        };
        let mut woken = woken;
        for (_, w) in woken.drain(..).flatten() {
            w.wake();
        }
        // The emptied slab keeps its room for the next waiters.
        let mut slab = self.slab.lock();
        if slab.entries.is_empty() {
            slab.entries = woken;
        }
    }
}

/// One server connection's share of its tenant's and its node's gates; given back on drop.
#[derive(Debug)]
pub struct Permit {
    tenant: Arc<Gate>,
    node: Arc<Gate>,
    core: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // The holder bit goes before the permit: a core never looks like it holds a
        // connection whose permit another core may already have taken.
        self.tenant.holders.remove(self.core);
        self.node.holders.remove(self.core);
        self.tenant.give();
        self.node.give();
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Wake};

    use super::*;

    fn budgets(per_tenant: usize, total: usize) -> Arc<Budgets> {
        Budgets::new(&Config {
            max_per_tenant: per_tenant,
            max_total: total,
            ..Config::default()
        })
    }

    #[test]
    fn a_tenant_gets_its_whole_limit_from_one_core_and_never_more() {
        let b = budgets(10, 200);
        let (t, n) = (b.tenant("a", "n1"), b.node("n1"));
        let held: Vec<_> = (0..10).map(|_| try_acquire(&t, &n, 0).unwrap()).collect();
        assert_eq!(try_acquire(&t, &n, 0).unwrap_err(), Full::Tenant);
        // Another core asking for the same tenant and node gets the same gate.
        assert_eq!(
            try_acquire(&b.tenant("a", "n1"), &b.node("n1"), 0).unwrap_err(),
            Full::Tenant
        );
        assert!(try_acquire(&b.tenant("b", "n1"), &n, 0).is_ok());
        assert_eq!(b.tenant_used("a", "n1"), 10);
        drop(held);
        assert_eq!(b.tenant_used("a", "n1"), 0);
        assert_eq!(b.node_used("n1"), 0);
    }

    #[test]
    fn the_node_gate_caps_all_tenants_and_a_refusal_takes_nothing() {
        let b = budgets(2, 3);
        let n = b.node("n1");
        let gates: Vec<_> = (0..3).map(|i| b.tenant(&format!("t{i}"), "n1")).collect();
        let mut held = Vec::new();
        let mut refused = 0;
        for g in &gates {
            for _ in 0..2 {
                match try_acquire(g, &n, 0) {
                    Ok(p) => held.push(p),
                    Err(Full::Node) => refused += 1,
                    Err(Full::Tenant) => panic!("no tenant is at its limit"),
                }
            }
        }
        assert_eq!((held.len(), refused), (3, 3));
        assert_eq!(
            gates[2].used(),
            0,
            "a node refusal gives the tenant's permit back"
        );
    }

    #[test]
    fn the_first_waiter_signals_every_core() {
        let b = budgets(1, 10);
        let cores: Vec<_> = (0..3).map(|_| b.demand()).collect();
        let t = b.tenant("a", "n1");
        let first = t.wait();
        for d in &cores {
            assert!(d.set.load(Ordering::SeqCst));
            d.set.store(false, Ordering::SeqCst);
        }
        let second = t.wait();
        assert!(cores.iter().all(|d| !d.set.load(Ordering::SeqCst)), "once");
        drop((first, second));
        let _again = t.wait();
        assert!(cores.iter().all(|d| d.set.load(Ordering::SeqCst)));
    }

    #[test]
    fn gates_of_tenants_no_pool_holds_are_dropped() {
        let b = budgets(1, 1000);
        for i in 0..1000 {
            let _g = b.tenant(&format!("t{i}"), "n1");
        }
        assert_eq!(b.tenant_gates(), 0);
        assert!(
            b.tenants.lock().gates.len() <= 128,
            "dead entries are swept"
        );
        let kept = b.tenant("kept", "n1");
        for i in 0..1000 {
            let _g = b.tenant(&format!("u{i}"), "n1");
        }
        assert!(Arc::ptr_eq(&kept, &b.tenant("kept", "n1")));
    }

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_permit_given_back_on_another_thread_wakes_the_waiters() {
        let b = budgets(1, 10);
        let (t, n) = (b.tenant("a", "n1"), b.node("n1"));
        let held = try_acquire(&t, &n, 0).unwrap();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut w = t.wait();
        w.register(&Context::from_waker(&waker).waker().clone());
        assert_eq!(t.waiting(), 1);
        assert!(!t.has_room());
        std::thread::spawn(move || drop(held)).join().unwrap();
        assert!(flag.0.load(Ordering::SeqCst), "woken across threads");
        assert!(t.has_room());
        drop(w);
        assert_eq!(t.waiting(), 0);
        assert_eq!(t.wakers.len.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn waiters_leave_and_come_back_in_any_order() {
        let b = budgets(1, 10);
        let t = b.tenant("a", "n1");
        let flags: Vec<_> = (0..5)
            .map(|_| Arc::new(Flag(AtomicBool::new(false))))
            .collect();
        let wakers: Vec<_> = flags.iter().map(|f| Waker::from(f.clone())).collect();
        let mut ws: Vec<_> = wakers
            .iter()
            .map(|w| {
                let mut waiting = t.wait();
                waiting.register(w);
                waiting.register(w);
                waiting
            })
            .collect();
        assert_eq!(t.wakers.len.load(Ordering::SeqCst), 5, "once each");
        drop(ws.remove(3));
        drop(ws.remove(0));
        assert_eq!(t.wakers.len.load(Ordering::SeqCst), 3);
        // A newcomer takes a freed slot; the others keep theirs.
        let mut late = t.wait();
        late.register(&wakers[0]);
        assert_eq!(t.wakers.len.load(Ordering::SeqCst), 4);
        t.wakers.wake_all();
        assert_eq!(
            flags
                .iter()
                .map(|f| f.0.load(Ordering::SeqCst))
                .collect::<Vec<_>>(),
            [true, true, true, false, true],
            "everyone registered now, not those who left"
        );
        // Woken, a waiter registers anew; leaving after a wake removes nothing else.
        ws[0].register(&wakers[1]);
        drop(late);
        assert_eq!(t.wakers.len.load(Ordering::SeqCst), 1);
        drop(ws);
        assert_eq!(t.wakers.len.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn holders_beyond_64_cores_are_a_bit_each_backed_by_a_count() {
        let h = Holders::new(130);
        assert!(h.is_empty());
        assert_eq!(h.nth_permit(0), None);
        for core in [0, 63, 64, 127, 128, 129, 129] {
            h.add(core);
        }
        assert_eq!(h.len(), 6);
        for core in [0, 63, 64, 127, 128, 129] {
            assert!(h.contains(core), "core {core}");
        }
        assert!(!h.contains(1) && !h.contains(65) && !h.contains(500));
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [0, 63, 64, 127, 128, 129],
            "across the words"
        );
        // Turns go round every permit: core 129 holds two, so it takes two turns.
        let turns: Vec<_> = (0..9).map(|n| h.nth_permit(n).unwrap()).collect();
        assert_eq!(turns, [0, 63, 64, 127, 128, 129, 129, 0, 63]);
        // Core 129 holds two permits: its bit stays until both are given back.
        h.remove(129);
        assert!(h.contains(129));
        h.remove(129);
        assert!(!h.contains(129));
        for core in [0, 63, 127, 128] {
            h.remove(core);
        }
        assert_eq!(h.len(), 1);
        assert_eq!(h.nth_permit(5), Some(64));
        assert!(h.any_but(0) && !h.any_but(64));
        h.remove(64);
        assert!(h.is_empty() && !h.any_but(64));
        // A core beyond those counted marks nothing and does not panic.
        h.add(130);
        h.remove(130);
        assert!(h.is_empty());
    }

    #[test]
    fn permits_mark_their_core_as_holder_until_given_back() {
        let b = Budgets::for_cores(
            &Config {
                max_per_tenant: 3,
                ..Config::default()
            },
            100,
        );
        let (t, n) = (b.tenant("a", "n1"), b.node("n1"));
        let on_70 = try_acquire(&t, &n, 70).unwrap();
        let on_3 = [
            try_acquire(&t, &n, 3).unwrap(),
            try_acquire(&t, &n, 3).unwrap(),
        ];
        assert_eq!(try_acquire(&t, &n, 99).unwrap_err(), Full::Tenant);
        assert!(!t.holders().contains(99), "a refusal marks nothing");
        assert_eq!((t.holders().len(), n.holders().len()), (2, 2));
        assert!(t.holders().any_but(3) && t.holders().any_but(70));
        assert_eq!((t.holders().count(3), t.holders().count(70)), (2, 1));
        let handed = [t.hand_to(70), t.hand_to(70)];
        assert_eq!((t.handed(70), t.handed(3)), (2, 0));
        drop(handed);
        assert_eq!(t.handed(70), 0);
        drop(on_70);
        assert!(!t.holders().any_but(3));
        drop(on_3);
        assert!(t.holders().is_empty() && n.holders().is_empty());
        assert_eq!(b.connects(), 3);
    }

    #[test]
    fn watching_a_gate_asks_no_core_to_give_back() {
        let b = budgets(1, 10);
        let core = b.demand();
        let t = b.tenant("a", "n1");
        let w = t.watch();
        assert_eq!(t.waiting(), 0);
        assert!(!core.set.load(Ordering::SeqCst));
        drop(w);
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn a_core_set_beyond_64_cores_takes_turns_and_skips_one() {
        let set = CoreSet::new(200);
        assert_eq!(set.nth_except(0, 0), None);
        for core in [5, 70, 199] {
            set.set(core, true);
        }
        set.set(70, true);
        set.set(250, true);
        assert!(set.contains(199) && !set.contains(6) && !set.contains(250));
        let turns: Vec<_> = (0..4).map(|n| set.nth_except(n, 1).unwrap()).collect();
        assert_eq!(turns, [5, 70, 199, 5]);
        let turns: Vec<_> = (0..3).map(|n| set.nth_except(n, 70).unwrap()).collect();
        assert_eq!(turns, [5, 199, 5]);
        set.set(5, false);
        set.set(199, false);
        assert_eq!(set.nth_except(7, 0), Some(70));
        assert_eq!(set.nth_except(7, 70), None);
    }
}
