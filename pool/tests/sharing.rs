//! Two cores under one tenant limit, each with requests that cannot move to the other
//! (a PostgreSQL client stays on the core it connected to): the core that took the
//! permits first gives them back until each holds an even share. Against a stand-in
//! server (`common`), each core a thread with its own runtime, as in the gateway.

mod common;

use std::{
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc, Barrier,
    },
    time::{Duration, Instant},
};

use common::{pause, pool_on, run, serve};
use ringgate_pool::{budget::Budgets, Config};

const LIMIT: usize = 8;
/// Requests each core keeps going at once, each holding its connection a moment.
const BUSY: usize = 16;

#[test]
fn a_core_that_cannot_hand_its_requests_off_gets_an_even_share_of_the_tenants_permits() {
    let (addr, _fake) = serve();
    let config = Config {
        max_per_tenant: LIMIT,
        max_total: 100,
        ..Config::default()
    };
    let budgets = Budgets::for_cores(&config, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let first_full = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|core| {
            let (budgets, stop, held, first_full) = (
                budgets.clone(),
                stop.clone(),
                held.clone(),
                first_full.clone(),
            );
            std::thread::spawn(move || {
                // Core 1 starts once core 0 holds every permit.
                if core == 1 {
                    first_full.wait();
                }
                run(async move {
                    let (pool, _gates) = pool_on(addr, &budgets, core);
                    let busy: Vec<_> = (0..BUSY)
                        .map(|_| {
                            let (pool, stop) = (Rc::clone(&pool), stop.clone());
                            monoio::spawn(async move {
                                while !stop.load(SeqCst) {
                                    let c = pool.get(Duration::from_secs(10)).await.unwrap();
                                    pause(2).await;
                                    // As a checkout is returned (`shard::Checkout`).
                                    if pool.give_back(&c) {
                                        pool.discard(c);
                                    } else {
                                        pool.put_back(c);
                                    }
                                }
                            })
                        })
                        .collect();
                    if core == 0 {
                        while pool.size() < LIMIT {
                            pause(5).await;
                        }
                        first_full.wait();
                    }
                    let end = Instant::now() + Duration::from_secs(4);
                    while Instant::now() < end && !stop.load(SeqCst) {
                        held[core].store(pool.size(), SeqCst);
                        pause(20).await;
                    }
                    stop.store(true, SeqCst);
                    for b in busy {
                        b.await;
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (h0, h1) = (held[0].load(SeqCst), held[1].load(SeqCst));
    // Core 0 took all 8 first; core 1's requests wait there. Before: core 1 got one
    // permit (it asked only while holding none) and kept one.
    eprintln!("core 0 holds {h0}, core 1 holds {h1}");
    assert!(
        h1 >= LIMIT / 2 - 1,
        "core 1 holds {h1} of {LIMIT} (core 0: {h0})"
    );
    assert!(h0 + h1 <= LIMIT, "over the limit: {h0} + {h1}");
}
