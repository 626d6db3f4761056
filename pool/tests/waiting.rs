//! Checkouts that wait: they leave the queue when dropped, and a connection opened for a
//! waiter that left is neither lost nor counted twice. Against a stand-in server
//! (`common`), so no backend is needed.

mod common;

use std::{cell::Cell, rc::Rc, sync::atomic::Ordering::SeqCst, time::Duration};

use common::{pause, pool, run, serve, Fake};
use ringgate_pool::{tenant::TenantPool, Error};
use ringgate_testkit::eventually_async;

#[test]
fn a_thousand_timed_out_waiters_leave_the_queue_and_the_next_is_served_at_once() {
    let (addr, _fake) = serve();
    run(async move {
        let (pool, gates) = pool(addr, 1);
        let held = pool.get(Duration::from_secs(5)).await.unwrap();
        let waiters: Vec<_> = (0..1000)
            .map(|_| {
                let pool = pool.clone();
                monoio::spawn(async move { pool.get(Duration::from_millis(20)).await })
            })
            .collect();
        for w in waiters {
            assert!(matches!(w.await, Err(Error::Exhausted { .. })));
        }
        assert_eq!(pool.waiters(), 0, "timed-out checkouts left the queue");
        assert_eq!(gates.tenant.waiting(), 0);

        let served = Rc::new(Cell::new(false));
        let next = {
            let (pool, served) = (pool.clone(), served.clone());
            monoio::spawn(async move {
                let c = pool.get(Duration::from_secs(30)).await;
                served.set(true);
                c
            })
        };
        pause(5).await;
        assert_eq!(pool.waiters(), 1, "the next checkout waits");
        pool.put_back(held);
        pause(0).await;
        assert!(
            served.get(),
            "a returned connection goes to the waiter at once"
        );
        assert!(next.await.is_ok());
        assert_eq!((pool.size(), gates.tenant.used()), (1, 1));
    });
}

#[test]
fn a_connection_opened_for_a_waiter_that_left_goes_to_the_next_counted_once() {
    let (addr, fake) = serve();
    fake.delay_ms.store(300, SeqCst);
    run(async move {
        let (pool, gates) = pool(addr, 1);
        let first = {
            let pool = pool.clone();
            monoio::spawn(async move { pool.get(Duration::from_millis(50)).await.err() })
        };
        pause(10).await;
        let second = {
            let pool = pool.clone();
            monoio::spawn(async move { pool.get(Duration::from_secs(10)).await })
        };
        assert!(matches!(first.await, Some(Error::Exhausted { .. })));
        assert_eq!(
            gates.tenant.used(),
            1,
            "the connect goes on for the next waiter"
        );
        let c = second
            .await
            .expect("served the connection opened for the first");
        assert_eq!(fake.accepted.load(SeqCst), 1);
        assert_eq!((pool.size(), gates.tenant.used()), (1, 1));
        pool.put_back(c);
        assert_eq!((pool.idle(), pool.waiters()), (1, 0));
    });
}

#[test]
fn a_connection_opened_for_no_one_stays_idle_counted_once() {
    let (addr, fake) = serve();
    fake.delay_ms.store(100, SeqCst);
    run(async move {
        let (pool, gates) = pool(addr, 2);
        assert!(pool.get(Duration::from_millis(20)).await.is_err());
        assert_eq!((pool.waiters(), gates.tenant.used()), (0, 1));
        pause(400).await;
        assert_eq!((pool.idle(), pool.size(), gates.tenant.used()), (1, 1, 1));
        let c = pool.get(Duration::from_secs(5)).await.unwrap();
        assert_eq!(fake.accepted.load(SeqCst), 1, "the idle one was used");
        pool.put_back(c);
    });
}

#[test]
fn a_connect_error_goes_to_its_checkout_and_gives_the_permit_back() {
    // A port nothing listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    run(async move {
        let (pool, gates) = pool(addr, 1);
        let e = pool.get(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e:?}");
        assert_eq!(
            (pool.size(), pool.waiters(), gates.tenant.used()),
            (0, 0, 0)
        );
    });
}

#[test]
fn closing_a_pool_answers_its_waiters_and_closes_its_connections() {
    let (addr, fake) = serve();
    run(async move {
        let (pool, gates) = pool(addr, 1);
        let held = pool.get(Duration::from_secs(5)).await.unwrap();
        let waiter = {
            let pool = pool.clone();
            monoio::spawn(async move { pool.get(Duration::from_secs(30)).await })
        };
        pause(5).await;
        pool.close();
        assert!(matches!(waiter.await, Err(Error::Closed)));
        pool.put_back(held);
        assert_eq!((pool.size(), pool.waiters()), (0, 0));
        eventually_async(
            "permits back and connections closed",
            Duration::from_secs(2),
            || gates.tenant.used() == 0 && fake.open.load(SeqCst) == 0,
        )
        .await;
    });
}

#[test]
fn an_idle_connection_whose_session_ended_is_dropped_and_replaced() {
    let (addr, fake) = serve();
    run(async move {
        let (pool, gates) = pool(addr, 1);
        let c = pool.get(Duration::from_secs(5)).await.unwrap();
        pool.put_back(c);
        fake.end_sessions.store(true, SeqCst);
        eventually_async("the sessions ended", Duration::from_secs(5), || {
            fake.open.load(SeqCst) == 0
        })
        .await;
        fake.end_sessions.store(false, SeqCst);
        // Idle past the check-after-idle time: looked at before use, found ended.
        pause(50).await;
        a_new_connection_replaced_it(&pool, &fake).await;
        assert_eq!((pool.size(), pool.waiters()), (1, 0));
        eventually_async(
            "the ended one's permit came back",
            Duration::from_secs(2),
            || gates.tenant.used() == 1,
        )
        .await;
    });
}

#[test]
fn a_lent_connection_given_back_is_the_same_session_and_goes_back_to_the_pool() {
    let (addr, fake) = serve();
    run(async move {
        let (pool, _gates) = pool(addr, 1);
        for _ in 0..3 {
            let mut c = pool.get(Duration::from_secs(5)).await.unwrap();
            let lent = c.conn().lend().await.expect("an open connection is lent");
            assert!(c.conn().lend().await.is_none(), "lent once at a time");
            lent.give_back();
            assert!(!c.is_closed());
            pool.put_back(c);
        }
        assert_eq!(fake.accepted.load(SeqCst), 1, "one session throughout");
        assert_eq!(pool.size(), 1);
    });
}

#[test]
fn a_lent_connection_not_given_back_is_closed_and_replaced() {
    let (addr, fake) = serve();
    run(async move {
        let (pool, gates) = pool(addr, 1);
        let mut c = pool.get(Duration::from_secs(5)).await.unwrap();
        drop(c.conn().lend().await.expect("lent"));
        assert!(c.is_closed(), "its state is unknown: never reused");
        assert!(c.conn().lend().await.is_none(), "nothing left to lend");
        pool.put_back(c);
        eventually_async(
            "its socket closed and its permit came back",
            Duration::from_secs(2),
            || fake.open.load(SeqCst) == 0 && gates.tenant.used() == 0,
        )
        .await;
        a_new_connection_replaced_it(&pool, &fake).await;
    });
}

/// The next checkout opens a second connection (the first was dropped) and gives it back.
async fn a_new_connection_replaced_it(pool: &Rc<TenantPool>, fake: &Fake) {
    let c = pool.get(Duration::from_secs(5)).await.unwrap();
    assert!(!c.is_closed());
    assert_eq!(
        fake.accepted.load(SeqCst),
        2,
        "a new connection replaced it"
    );
    pool.put_back(c);
}
