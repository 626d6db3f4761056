//! Idle keep-alive connections parked off their tasks, in one epoll set per core.
//!
//! A connection waiting for its next request costs what its state takes while it waits. As
//! a task it took ~1.1 KiB (the connection's future and monoio's task header, its
//! descriptor's shared handle, its entries in the core's deadline and drain tables) where
//! nginx needs ~0.5 KiB (issue 31's `bench/idle.sh`). A parked connection is its descriptor,
//! its peer address, its connection guard and an entry in the expiry queue, about 100 bytes:
//! its task ends, and the core's one watcher task ([`Parked::run`]) waits for any parked
//! descriptor to turn readable (an epoll set, whose own descriptor the runtime polls: a
//! `PollAdd` on io_uring, a registration on epoll) and spawns the connection's task again.
//! A parked connection whose keep-alive time runs out is closed by the watcher; a drain
//! closes them all.
//!
//! Only plain connections that have answered a request park (see `conn::Conn::fill`): a
//! busy one keeps a read armed through its grace, a new one waits for its first request in
//! its task, and a TLS one keeps its task (rustls's state is most of its cost, and stays).
//!
//! Written here rather than taken from a crate: monoio has no readiness set over many
//! descriptors without a future (and a task, or a slot in a `FuturesUnordered`) for each,
//! which is the cost this removes.
// The epoll calls and taking descriptors over are FFI; each block says why it is sound.
#![allow(unsafe_code)]

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    future::Future,
    io,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    pin::Pin,
    rc::Rc,
    task::{Poll, Waker},
    time::Duration,
};

use monoio::{net::TcpStream, time::Instant};
use slab::Slab;
use tracing::warn;

use crate::{deadline::Deadlines, shutdown::Drain};

/// Parked connections whose time has run out are closed in batches at most this often (so
/// up to this late): a watcher waking for every single deadline would cost more than the
/// connections it closes.
const EXPIRY_STEP: Duration = Duration::from_millis(50);
/// Readiness events taken from the epoll set per call.
const EVENTS: usize = 64;

/// One core's parked connections, each with the state `S` it resumes with. Clones share
/// the set (an `Rc`: it never leaves its core).
pub struct Parked<S>(Rc<Inner<S>>);

impl<S> Clone for Parked<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

struct Inner<S> {
    epoll: OwnedFd,
    slots: RefCell<Slab<Slot<S>>>,
    /// When each parked connection's keep-alive time ends, in parking order (one keep-alive
    /// timeout for all, so also in deadline order).
    expiry: RefCell<VecDeque<Expiry>>,
    /// Numbers parkings, so that an expiry or an event left over from a slot's earlier
    /// occupant is told apart.
    generation: Cell<u32>,
    /// The watcher must look again at the expiry queue (it was empty).
    kicked: Cell<bool>,
    watcher: RefCell<Option<Waker>>,
    /// Set by a drain (or a watcher that could not start): nothing parks any more.
    closed: Cell<bool>,
}

struct Slot<S> {
    fd: OwnedFd,
    state: S,
    generation: u32,
}

struct Expiry {
    at: Instant,
    key: u32,
    generation: u32,
}

/// What woke the watcher.
enum Woken {
    Ready(io::Result<()>),
    Expired,
    Kicked,
    Drain,
}

// === impl Parked ===

impl<S> Parked<S> {
    /// An empty set (its epoll instance created).
    pub fn new() -> io::Result<Self> {
        // SAFETY: `epoll_create1` takes no pointers; a non-negative result is a descriptor
        // this process now owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(Rc::new(Inner {
            // SAFETY: `fd` was just created and is owned by nothing else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: RefCell::new(Slab::new()),
            expiry: RefCell::new(VecDeque::new()),
            generation: Cell::new(0),
            kicked: Cell::new(false),
            watcher: RefCell::new(None),
            closed: Cell::new(false),
        })))
    }

    /// Parks `stream` (nothing buffered, nothing in flight on it) with `state` until it turns
    /// readable, or until `until` when it is closed. Gives both back when it cannot park
    /// (the set is closed by a drain, or the system refused): the caller goes on waiting
    /// in its task.
    pub fn park(&self, stream: TcpStream, state: S, until: Instant) -> Result<(), (TcpStream, S)> {
        if self.0.closed.get() {
            return Err((stream, state));
        }
        // A descriptor of its own for the socket: the stream's is closed with it (monoio's
        // handle cannot be taken apart while the runtime may still hold a reference).
        // SAFETY: `dup` takes no pointers; a non-negative result is a new descriptor owned
        // here.
        let fd = unsafe { libc::dup(stream.as_raw_fd()) };
        if fd < 0 {
            return Err((stream, state));
        }
        // SAFETY: `fd` was just created by `dup` and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let generation = self.0.generation.get().wrapping_add(1);
        self.0.generation.set(generation);
        let mut slots = self.0.slots.borrow_mut();
        let entry = slots.vacant_entry();
        let key = entry.key() as u32;
        if let Err(error) = self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), key, generation) {
            warn!(%error, "an idle connection could not be parked");
            return Err((stream, state));
        }
        entry.insert(Slot {
            fd,
            state,
            generation,
        });
        drop(slots);
        drop(stream);
        let mut expiry = self.0.expiry.borrow_mut();
        let was_empty = expiry.is_empty();
        expiry.push_back(Expiry {
            at: until,
            key,
            generation,
        });
        if was_empty {
            self.kick();
        }
        Ok(())
    }

    /// The core's watcher task: resumes each parked connection that turns readable with
    /// `resume` (which spawns its task), closes those whose time has run out, and all of
    /// them when the core drains. Runs until the drain.
    pub async fn run(&self, drain: &Drain, deadlines: &Deadlines, resume: impl Fn(TcpStream, S)) {
        let source = match self.readiness() {
            Ok(source) => source,
            Err(error) => {
                warn!(%error, "idle connections cannot be parked on this core");
                self.0.closed.set(true);
                return;
            }
        };
        // Not relaxed: on epoll, readiness left from the last wake-up (whose events were all
        // taken) is checked with a poll(2), so the watcher does not spin on it.
        let mut ready = Box::pin(source.readable(false));
        let mut signaled = drain.signaled();
        let mut last_expiry = Instant::now();
        loop {
            let mut timer = self
                .next_expiry()
                .map(|at| deadlines.until(at.max(last_expiry + EXPIRY_STEP)));
            let woken = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = ready.as_mut().poll(cx) {
                    return Poll::Ready(Woken::Ready(r));
                }
                if Pin::new(&mut signaled).poll(cx).is_ready() {
                    return Poll::Ready(Woken::Drain);
                }
                if let Some(t) = timer.as_mut() {
                    if Pin::new(t).poll(cx).is_ready() {
                        return Poll::Ready(Woken::Expired);
                    }
                }
                if self.0.kicked.replace(false) {
                    return Poll::Ready(Woken::Kicked);
                }
                *self.0.watcher.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            match woken {
                Woken::Ready(result) => {
                    ready = Box::pin(source.readable(false));
                    if let Err(error) = result {
                        warn!(%error, "waiting on the parked connections failed");
                    }
                    self.resume_ready(&resume);
                }
                Woken::Expired => {
                    last_expiry = Instant::now();
                    self.expire(last_expiry);
                }
                Woken::Kicked => {}
                Woken::Drain => {
                    self.close_all();
                    return;
                }
            }
        }
    }

    /// The epoll set's descriptor as something the runtime can wait on. monoio offers
    /// readiness waits only on its socket types; `readable` is all that is used of this one
    /// (a `PollAdd` on io_uring, a registration with its poller on epoll), never a read or
    /// a write.
    fn readiness(&self) -> io::Result<TcpStream> {
        // SAFETY: `dup` takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::dup(self.0.epoll.as_raw_fd()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nothing else; the stream closes it.
        TcpStream::from_std(unsafe { std::net::TcpStream::from_raw_fd(fd) })
    }

    fn kick(&self) {
        self.0.kicked.set(true);
        if let Some(w) = self.0.watcher.borrow_mut().take() {
            w.wake();
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.0.expiry.borrow().front().map(|e| e.at)
    }

    /// Resumes the connections the epoll set reports readable (or closed, or failed: their
    /// tasks find out with their first read).
    fn resume_ready(&self, resume: &impl Fn(TcpStream, S)) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            // SAFETY: `events` is valid for `EVENTS` entries; a zero timeout never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    self.0.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as i32,
                    0,
                )
            };
            if n <= 0 {
                return;
            }
            for event in &events[..n as usize] {
                let (key, generation) =
                    ((event.u64 & 0xffff_ffff) as u32, (event.u64 >> 32) as u32);
                let Some(slot) = self.take(key, generation) else {
                    continue;
                };
                let _ = self.ctl(libc::EPOLL_CTL_DEL, slot.fd.as_raw_fd(), 0, 0);
                let fd = slot.fd.into_raw_fd();
                // SAFETY: `fd` is the parked socket's own descriptor, owned by the slot
                // until now; the stream takes it over.
                match TcpStream::from_std(unsafe { std::net::TcpStream::from_raw_fd(fd) }) {
                    Ok(stream) => resume(stream, slot.state),
                    Err(error) => warn!(%error, "a parked connection could not be resumed"),
                }
            }
            if (n as usize) < EVENTS {
                return;
            }
        }
    }

    /// Closes the parked connections whose keep-alive time ended by `now`.
    fn expire(&self, now: Instant) {
        loop {
            let due = {
                let mut expiry = self.0.expiry.borrow_mut();
                match expiry.front() {
                    Some(e) if e.at <= now => expiry.pop_front(),
                    _ => None,
                }
            };
            let Some(e) = due else {
                return;
            };
            // Closing the descriptor takes it out of the epoll set.
            drop(self.take(e.key, e.generation));
        }
    }

    /// Closes every parked connection; nothing parks from now on.
    fn close_all(&self) {
        self.0.closed.set(true);
        self.0.expiry.borrow_mut().clear();
        let slots = std::mem::take(&mut *self.0.slots.borrow_mut());
        drop(slots);
    }

    /// The slot `key` if it still holds the parking `generation`.
    fn take(&self, key: u32, generation: u32) -> Option<Slot<S>> {
        let mut slots = self.0.slots.borrow_mut();
        let current = slots.get(key as usize)?.generation == generation;
        current.then(|| slots.remove(key as usize))
    }

    fn ctl(&self, op: i32, fd: RawFd, key: u32, generation: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: (u64::from(generation) << 32) | u64::from(key),
        };
        // SAFETY: `event` is a valid `epoll_event` for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.0.epoll.as_raw_fd(), op, fd, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
