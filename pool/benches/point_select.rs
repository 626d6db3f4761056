//! Point SELECTs through ringgate-pool from many monoio tasks on one core, for comparison
//! with `pgbench -S` using the same number of server connections (run by
//! `pool/benches/vs-pgbench.sh`, which prints both).
//!
//! Env: `RINGGATE_BENCH_PG_URL` (a database initialised by `pgbench -i`),
//! `RINGGATE_BENCH_CONNS` (server connections, default 8), `RINGGATE_BENCH_TASKS`
//! (concurrent tasks, default 64), `RINGGATE_BENCH_SECS` (default 10),
//! `RINGGATE_BENCH_SCALE` (pgbench scale, default 10), `RINGGATE_BENCH_DRIVER`
//! (`io_uring` or `epoll`, default io_uring).

use std::{
    cell::Cell,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use ringgate_discovery::Topology;
use ringgate_pool::{url::parse_pg_url, Config, Intent, Shard};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; this is not a libtest harness.
    let Ok(url) = std::env::var("RINGGATE_BENCH_PG_URL") else {
        eprintln!("RINGGATE_BENCH_PG_URL is not set: run pool/benches/vs-pgbench.sh");
        std::process::exit(2);
    };
    let conns: usize = env("RINGGATE_BENCH_CONNS", 8);
    let tasks: usize = env("RINGGATE_BENCH_TASKS", 64);
    let secs: u64 = env("RINGGATE_BENCH_SECS", 10);
    let scale: i32 = env("RINGGATE_BENCH_SCALE", 10);
    let uring = std::env::var("RINGGATE_BENCH_DRIVER")
        .map(|d| d != "epoll")
        .unwrap_or(true);
    let run = move || async move {
        let u = parse_pg_url(&url).expect("RINGGATE_BENCH_PG_URL is a postgres URL");
        let topology = Arc::new(Topology::fixed((u.addr, u.host.clone()), None));
        let config = Config {
            max_per_tenant: conns,
            max_total: conns,
            ..Config::default()
        };
        let shard = Shard::new(0, ringgate_pool::Budgets::new(&config), config, topology);
        let done = Rc::new(Cell::new(0u64));
        let errors = Rc::new(Cell::new(0u64));
        let warm_end = Instant::now() + Duration::from_secs(1);
        let end = warm_end + Duration::from_secs(secs);
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (shard, creds, done, errors) = (
                shard.clone(),
                u.credentials.clone(),
                done.clone(),
                errors.clone(),
            );
            handles.push(monoio::spawn(async move {
                let mut aid: i32 = (t as i32 * 7919) % (scale * 100_000) + 1;
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    aid = (aid.wrapping_mul(1_103_515_245).wrapping_add(12345))
                        .rem_euclid(scale * 100_000)
                        + 1;
                    let ok = async {
                        let mut c = shard.checkout("bench", &creds, Intent::Read).await.ok()?;
                        let r = c
                            .conn()
                            .query(
                                "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                                &[Some(aid.to_string())],
                                1 << 20,
                            )
                            .await
                            .result
                            .ok()?;
                        (r.rows.len() == 1).then_some(())
                    }
                    .await
                    .is_some();
                    if now >= warm_end {
                        if ok {
                            done.set(done.get() + 1);
                        } else {
                            errors.set(errors.get() + 1);
                        }
                    }
                }
            }));
        }
        for h in handles {
            h.await;
        }
        let tps = done.get() as f64 / secs as f64;
        println!("ringgate-pool: conns={conns} tasks={tasks} secs={secs} queries={} errors={} tps={tps:.0}", done.get(), errors.get());
    };
    if uring {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(run());
    } else {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(run());
    }
}
