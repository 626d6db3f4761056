//! The per-core pool of I/O buffers that client connections borrow while bytes move.
//!
//! An idle connection holds no buffer: it waits for readiness ([`crate::transport`]) and
//! borrows a read buffer only when bytes are there, giving it back once its request is
//! answered and nothing more is buffered (a pipelining client keeps it). Write
//! buffers are borrowed for one response. With thousands of idle clients per core, the
//! buffers in use are those of the connections moving bytes at that moment, not one per
//! connection (which was 8 KiB plain and 32 KiB more under TLS).
//!
//! Written here rather than taken from a crate: the buffers are owned (`BytesMut`, `Vec`)
//! because monoio's completion-based reads take ownership of them, and the pool is one
//! core's, so it needs no locking (the pools in crates such as `object-pool` or
//! `lockfree-object-pool` are built for sharing across threads).

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::Arc,
};

use bytes::BytesMut;

use crate::metrics::Registry;

/// Capacity of a read buffer as lent: room for a typical request head and small body.
pub const READ_BUF: usize = 8 * 1024;
/// Capacity of a write buffer as lent: a response head and a small body.
pub const WRITE_BUF: usize = 1024;
/// Buffers of each kind kept for reuse; more given back are freed.
pub const DEFAULT_KEEP: usize = 64;
/// A buffer that grew past this (a large body) is freed when given back, not kept.
const KEEP_AT_MOST: usize = 64 * 1024;

/// One core's buffer pool; clones share it (an `Rc`: the pool never leaves its core).
#[derive(Clone)]
pub struct BufPool(Rc<Inner>);

struct Inner {
    read: RefCell<Vec<BytesMut>>,
    write: RefCell<Vec<Vec<u8>>>,
    lent: Cell<usize>,
    keep: usize,
    /// Where the counts are published, when they are.
    metrics: Option<(Arc<Registry>, usize)>,
}

impl std::fmt::Debug for BufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufPool")
            .field("lent", &self.lent())
            .field("pooled", &self.pooled())
            .finish()
    }
}

// === impl BufPool ===

impl BufPool {
    /// A pool keeping at most `keep` buffers of each kind, publishing nothing.
    pub fn new(keep: usize) -> Self {
        Self::with_inner(keep, None)
    }

    /// A pool for core `core` that publishes its counts to `registry`.
    pub fn with_metrics(keep: usize, registry: Arc<Registry>, core: usize) -> Self {
        Self::with_inner(keep, Some((registry, core)))
    }

    fn with_inner(keep: usize, metrics: Option<(Arc<Registry>, usize)>) -> Self {
        Self(Rc::new(Inner {
            read: RefCell::new(Vec::new()),
            write: RefCell::new(Vec::new()),
            lent: Cell::new(0),
            keep,
            metrics,
        }))
    }

    /// Lends an empty read buffer with at least [`READ_BUF`] bytes of room.
    pub fn take_read(&self) -> BytesMut {
        let buf = self.0.read.borrow_mut().pop();
        self.lend();
        let mut buf = buf.unwrap_or_default();
        buf.reserve(READ_BUF);
        buf
    }

    /// Takes back a read buffer (its contents are discarded).
    pub fn give_read(&self, mut buf: BytesMut) {
        self.returned();
        let mut read = self.0.read.borrow_mut();
        if read.len() < self.0.keep && buf.capacity() <= KEEP_AT_MOST {
            buf.clear();
            // Heads and bodies were split off its front: once they are dropped, this takes
            // the whole allocation back without copying (else it allocates a fresh one).
            buf.reserve(READ_BUF);
            read.push(buf);
        }
        drop(read);
        self.publish();
    }

    /// Lends an empty write buffer with at least [`WRITE_BUF`] bytes of room.
    pub fn take_write(&self) -> Vec<u8> {
        let buf = self.0.write.borrow_mut().pop();
        self.lend();
        buf.unwrap_or_else(|| Vec::with_capacity(WRITE_BUF))
    }

    /// Takes back a write buffer.
    pub fn give_write(&self, mut buf: Vec<u8>) {
        self.returned();
        buf.clear();
        let mut write = self.0.write.borrow_mut();
        if write.len() < self.0.keep && (WRITE_BUF..=KEEP_AT_MOST).contains(&buf.capacity()) {
            write.push(buf);
        }
        drop(write);
        self.publish();
    }

    /// A lent buffer will not come back (the I/O that owned it was cancelled).
    pub fn lost(&self) {
        self.returned();
        self.publish();
    }

    /// Buffers lent out now.
    pub fn lent(&self) -> usize {
        self.0.lent.get()
    }

    /// Buffers kept for reuse now.
    pub fn pooled(&self) -> usize {
        self.0.read.borrow().len() + self.0.write.borrow().len()
    }

    fn lend(&self) {
        self.0.lent.set(self.0.lent.get() + 1);
        self.publish();
    }

    fn returned(&self) {
        let lent = self.0.lent.get();
        debug_assert!(lent > 0, "a buffer given back that was not lent");
        self.0.lent.set(lent.saturating_sub(1));
    }

    fn publish(&self) {
        if let Some((registry, core)) = &self.0.metrics {
            registry
                .core(*core)
                .set_io_buffers(self.lent() as u64, self.pooled() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_lent_come_back_and_are_reused() {
        let pool = BufPool::new(2);
        let mut a = pool.take_read();
        assert!(a.capacity() >= READ_BUF);
        a.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let w = pool.take_write();
        assert_eq!((pool.lent(), pool.pooled()), (2, 0));
        let ptr = a.as_ptr();
        pool.give_read(a);
        pool.give_write(w);
        assert_eq!((pool.lent(), pool.pooled()), (0, 2));
        let b = pool.take_read();
        assert!(b.is_empty(), "a reused buffer comes back empty");
        assert_eq!(b.as_ptr(), ptr, "the same memory is lent again");
        pool.give_read(b);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound_and_frees_grown_buffers() {
        let pool = BufPool::new(2);
        let bufs: Vec<_> = (0..4).map(|_| pool.take_read()).collect();
        for b in bufs {
            pool.give_read(b);
        }
        assert_eq!((pool.lent(), pool.pooled()), (0, 2));
        let mut big = pool.take_read();
        big.reserve(1 << 20);
        pool.give_read(big);
        assert_eq!(pool.pooled(), 1, "a 1 MiB buffer is freed, not kept");
    }

    #[test]
    fn a_lost_buffer_is_no_longer_counted_as_lent() {
        let pool = BufPool::new(2);
        drop(pool.take_read());
        pool.lost();
        assert_eq!((pool.lent(), pool.pooled()), (0, 0));
    }
}
