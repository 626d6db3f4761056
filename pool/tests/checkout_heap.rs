//! Taking an idle connection allocates nothing: no task, no timer, no boxed future per
//! checkout. A counting allocator counts the test thread's allocations while checkouts
//! of an idle connection are taken and returned (an own test binary: the allocator is
//! global).

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    time::Duration,
};

use common::{pool, run, serve};

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches only
// const-initialised thread locals (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn taking_and_lending_an_idle_connection_allocates_nothing() {
    let (addr, _fake) = serve();
    run(async move {
        let (pool, _gates) = pool(addr, 1);
        let c = pool.get(Duration::from_secs(5)).await.unwrap();
        pool.put_back(c);
        COUNTING.with(|c| c.set(true));
        drop(std::hint::black_box(Box::new(1u8)));
        assert_eq!(ALLOCS.with(Cell::get), 1, "the counter counts");
        ALLOCS.with(|a| a.set(0));
        for _ in 0..1000 {
            let mut c = pool.get(Duration::from_secs(5)).await.unwrap();
            // Lent to a relay and given back, as the PostgreSQL front end does.
            c.conn().lend().await.expect("lent").give_back();
            pool.put_back(c);
        }
        COUNTING.with(|c| c.set(false));
        assert_eq!(
            ALLOCS.with(Cell::get),
            0,
            "allocations in 1000 checkouts and lends"
        );
        assert_eq!(pool.size(), 1);
    });
}
