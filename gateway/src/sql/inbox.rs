//! Every core's inbox for requests other cores hand to it ([`super::handoff`]): the jobs,
//! the channels they travel on, and the count of those inbound that a draining core waits
//! for. Shared by all cores from the start, so it knows nothing of a core.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use parking_lot::Mutex;

use super::request::SqlRequest;
use crate::http::{ClientSocket, Response};

/// A request handed to another core, and where its answer goes. `Send`: it crosses threads.
pub struct Job {
    pub(super) sql: SqlRequest,
    /// The member the sending core routed it to; the target uses it for reads too.
    pub(super) node: String,
    /// The client's socket, to cancel the statement if the client goes away.
    pub(super) client: Option<ClientSocket>,
    pub(super) answer: futures_channel::oneshot::Sender<Response>,
}

/// Every core's inbox for handed requests.
#[derive(Debug)]
pub struct HandOffs {
    pub(super) inboxes: Box<[Inbox]>,
}

/// One core's inbox.
#[derive(Debug)]
pub(super) struct Inbox {
    pub(super) tx: flume::Sender<Job>,
    /// Taken once by the core it belongs to.
    pub(super) rx: Mutex<Option<flume::Receiver<Job>>>,
    /// Requests sent here and not yet answered (or about to be sent).
    pub(super) inbound: AtomicUsize,
    /// Set when the core stops taking hand-offs.
    pub(super) closed: AtomicBool,
}

// === impl HandOffs ===

impl HandOffs {
    /// Inboxes for `cores` cores.
    pub fn new(cores: usize) -> Arc<Self> {
        Arc::new(Self {
            inboxes: (0..cores)
                .map(|_| {
                    let (tx, rx) = flume::unbounded();
                    Inbox {
                        tx,
                        rx: Mutex::new(Some(rx)),
                        inbound: AtomicUsize::new(0),
                        closed: AtomicBool::new(false),
                    }
                })
                .collect(),
        })
    }

    /// Core `core`'s inbox receiver (`None` after the first call).
    pub(super) fn take(&self, core: usize) -> Option<flume::Receiver<Job>> {
        self.inboxes.get(core)?.rx.lock().take()
    }
}

/// Counts a request as inbound to a core until dropped.
pub(super) struct Inbound<'a>(&'a Inbox);

impl<'a> Inbound<'a> {
    /// `None` when the core no longer takes hand-offs.
    pub(super) fn enter(inbox: &'a Inbox) -> Option<Self> {
        // SeqCst with `close`: either this sees the core closed, or the core sees this
        // request inbound and waits for it.
        inbox.inbound.fetch_add(1, Ordering::SeqCst);
        let entered = Self(inbox);
        (!inbox.closed.load(Ordering::SeqCst)).then_some(entered)
    }
}

impl Drop for Inbound<'_> {
    fn drop(&mut self) {
        self.0.inbound.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_inbox_takes_no_request_and_one_entered_first_is_waited_for() {
        let offs = HandOffs::new(2);
        let inbox = &offs.inboxes[1];
        let entered = Inbound::enter(inbox).expect("open");
        inbox.closed.store(true, Ordering::SeqCst);
        assert_eq!(inbox.inbound.load(Ordering::SeqCst), 1, "the closer waits");
        assert!(Inbound::enter(inbox).is_none());
        drop(entered);
        assert_eq!(inbox.inbound.load(Ordering::SeqCst), 0);
        assert!(offs.take(1).is_some() && offs.take(1).is_none());
    }
}
