//! The queue of checkouts waiting in one tenant pool: first come, first served, and a
//! waiter that gives up (its future dropped: a timeout, a client gone) leaves it at once.
//!
//! A slab of slots linked in arrival order: joining, leaving from anywhere and serving the
//! first are O(1), and a slot is reused after its waiter leaves, so the queue holds exactly
//! the waiters alive now (no stale wakers piling up behind timed-out requests). Each slot
//! has a ticket, unique for the queue's life, so a late delivery (a connection opened for a
//! waiter that left) never reaches the slot's next occupant.

use std::task::Waker;

use slab::Slab;

/// A waiter's place: its slot and its ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    key: usize,
    id: u64,
}

#[derive(Debug)]
struct Slot<T> {
    id: u64,
    prev: Option<usize>,
    next: Option<usize>,
    /// In the queue (not yet served).
    queued: bool,
    waker: Option<Waker>,
    /// What it was served, until it takes it.
    got: Option<T>,
}

/// Waiters in arrival order, each served one `T`.
#[derive(Debug)]
pub struct Waiters<T> {
    slots: Slab<Slot<T>>,
    head: Option<usize>,
    tail: Option<usize>,
    queued: usize,
    next_id: u64,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Self {
            slots: Slab::new(),
            head: None,
            tail: None,
            queued: 0,
            next_id: 0,
        }
    }
}

// === impl Waiters ===

impl<T> Waiters<T> {
    /// Joins the queue at its end.
    pub fn join(&mut self) -> Ticket {
        let id = self.next_id;
        self.next_id += 1;
        let key = self.slots.insert(Slot {
            id,
            prev: self.tail,
            next: None,
            queued: true,
            waker: None,
            got: None,
        });
        match self.tail {
            Some(t) => self.slots[t].next = Some(key),
            None => self.head = Some(key),
        }
        self.tail = Some(key);
        self.queued += 1;
        Ticket { key, id }
    }

    fn slot(&mut self, t: Ticket) -> Option<&mut Slot<T>> {
        self.slots.get_mut(t.key).filter(|s| s.id == t.id)
    }

    /// Sets the waker to wake when `t` is served (kept when it would wake the same task).
    pub fn set_waker(&mut self, t: Ticket, waker: &Waker) {
        if let Some(s) = self.slot(t) {
            match &mut s.waker {
                Some(w) => w.clone_from(waker),
                None => s.waker = Some(waker.clone()),
            }
        }
    }

    /// What `t` was served, taken.
    pub fn take(&mut self, t: Ticket) -> Option<T> {
        self.slot(t).and_then(|s| s.got.take())
    }

    /// Whether `t` still waits in the queue (not served, not left).
    pub fn is_queued(&self, t: Ticket) -> bool {
        self.slots
            .get(t.key)
            .is_some_and(|s| s.id == t.id && s.queued)
    }

    /// Serves the first waiter with `value` and wakes it; `Err(value)` when none waits.
    pub fn serve_first(&mut self, value: T) -> Result<(), T> {
        match self.head {
            Some(key) => {
                let id = self.slots[key].id;
                self.serve(Ticket { key, id }, value)
            }
            None => Err(value),
        }
    }

    /// Serves `t` with `value` and wakes it; `Err(value)` when it no longer waits.
    pub fn serve(&mut self, t: Ticket, value: T) -> Result<(), T> {
        if !self.is_queued(t) {
            return Err(value);
        }
        self.unlink(t.key);
        let s = &mut self.slots[t.key];
        s.got = Some(value);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Wakes the first waiter without serving it (to look at the pool again).
    pub fn wake_first(&self) {
        if let Some(w) = self.head.and_then(|k| self.slots[k].waker.as_ref()) {
            w.wake_by_ref();
        }
    }

    /// Leaves the queue (or drops the served slot): returns what `t` was served and did
    /// not take, to be passed on.
    pub fn leave(&mut self, t: Ticket) -> Option<T> {
        self.slot(t)?;
        if self.slots[t.key].queued {
            self.unlink(t.key);
        }
        self.slots.remove(t.key).got
    }

    /// Waiters in the queue (not served).
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether no one waits.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Slots alive: waiters queued, plus served ones that have not left yet.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    fn unlink(&mut self, key: usize) {
        let (prev, next) = {
            let s = &mut self.slots[key];
            s.queued = false;
            (s.prev.take(), s.next.take())
        };
        match prev {
            Some(p) => self.slots[p].next = next,
            None => self.head = next,
        }
        match next {
            Some(n) => self.slots[n].prev = prev,
            None => self.tail = prev,
        }
        self.queued -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_in_arrival_order_and_leaving_from_the_middle_keeps_the_order() {
        let mut q = Waiters::<u32>::default();
        let (a, b, c) = (q.join(), q.join(), q.join());
        assert_eq!(q.leave(b), None);
        assert_eq!(q.len(), 2);
        q.serve_first(1).unwrap();
        q.serve_first(2).unwrap();
        assert_eq!(q.serve_first(3), Err(3), "no one left to serve");
        assert_eq!((q.take(a), q.take(c)), (Some(1), Some(2)));
        assert!(q.is_empty());
        q.leave(a);
        q.leave(c);
        assert_eq!(q.slots(), 0);
    }

    #[test]
    fn a_late_delivery_misses_the_next_occupant_of_a_slot() {
        let mut q = Waiters::<u32>::default();
        let a = q.join();
        q.leave(a);
        let b = q.join();
        assert_eq!(q.serve(a, 7), Err(7), "a left: its ticket is void");
        assert!(q.is_queued(b));
        assert_eq!(q.serve(b, 8), Ok(()));
        assert_eq!(
            q.leave(b),
            Some(8),
            "served and not taken: handed back to pass on"
        );
    }

    #[test]
    fn a_thousand_waiters_that_leave_leave_nothing_behind() {
        let mut q = Waiters::<u32>::default();
        let ts: Vec<_> = (0..1000).map(|_| q.join()).collect();
        for t in ts.into_iter().rev() {
            q.leave(t);
        }
        assert_eq!((q.len(), q.slots()), (0, 0));
        let t = q.join();
        q.serve_first(5).unwrap();
        assert_eq!(q.take(t), Some(5));
    }
}
