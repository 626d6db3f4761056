//! The `/sql` result cache end to end: ringgate in-process, real PostgreSQL (and Redis)
//! behind it. Each test works on tables of its own.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ringgate_pool::url::parse_pg_url;
use ringgate_tests::{
    backend::{alpha_conn_string, pg_admin_url, psql, required, unique},
    gateway::{start, start_with_redis},
    http::{admin_get, metric_total_where, promtool_accepts, request, Resp},
    pg::{
        bind, describe_execute_sync, ensure_auth_function, parse, prepare, query, start_pg, status,
        with_alpha, RawPg,
    },
};
use serde_json::{json, Value};

/// A Neon connection string for `project` as `user` (the admin's password unless given)
/// on the admin URL's database.
fn conn_string(project: &str, user: Option<(&str, &str)>) -> String {
    let c = parse_pg_url(&pg_admin_url()).unwrap().credentials;
    let (u, p) = user.unwrap_or((&c.user, &c.password));
    format!("postgres://{u}:{p}@{project}.ringgate.test/{}", c.database)
}

/// `POST /sql` with `extra` headers.
fn sql(addr: SocketAddr, cs: &str, body: Value, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![
        ("Neon-Connection-String", cs),
        ("Content-Type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    request(addr, "POST", "/sql", &headers, body.to_string().as_bytes())
}

/// A read asking to be cached for `ttl`.
fn cached(addr: SocketAddr, cs: &str, query: &str, ttl: &str) -> Resp {
    let header = format!("ttl={ttl}");
    let r = sql(
        addr,
        cs,
        json!({ "query": query }),
        &[("Ringgate-Cache", &header)],
    );
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r
}

/// What the cache did, per the response header.
fn verdict(r: &Resp) -> &str {
    r.header("ringgate-cache").unwrap_or("(none)")
}

/// Runs a statement (a write) through ringgate.
fn write(addr: SocketAddr, cs: &str, query: &str) {
    let r = sql(addr, cs, json!({ "query": query }), &[]);
    assert_eq!(r.status, 200, "{query}: {}", r.text());
}

/// Starts ringgate on the admin URL (fixed topology: every statement runs on the leader).
fn start_on_admin(extra: &[(&str, &str)]) -> (ringgate::Gateway, SocketAddr) {
    let url = pg_admin_url();
    let mut env = vec![("DATABASE_URL", url.as_str())];
    env.extend_from_slice(extra);
    start(&env)
}

/// A fresh table `name (id int primary key, v text)` with rows `(1, 'one')`, `(2, 'two')`.
fn table(url: &str, name: &str) {
    psql(
        url,
        &format!(
            "create table {name} (id int primary key, v text); insert into {name} values (1, 'one'), (2, 'two')"
        ),
    );
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_hit_returns_exactly_the_body_of_the_miss_and_nothing_is_cached_by_default() {
    let (_g, addr) = start_on_admin(&[]);
    let cs = conn_string("cachehit", None);
    let t = unique("cache_hit_");
    table(&pg_admin_url(), &t);
    let q = format!("select id, v, id * 1.5 as n, array[v, null] as a from {t} order by id");
    // Nothing is cached unless asked: no header, no rule.
    let plain = sql(addr, &cs, json!({ "query": q }), &[]);
    assert_eq!(plain.header("ringgate-cache"), None);
    for (options, headers) in [
        (json!({}), vec![]),
        (json!({"arrayMode": true}), vec![]),
        (json!({}), vec![("Neon-Raw-Text-Output", "true")]),
    ] {
        let mut body = json!({ "query": q });
        body.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let mut h = headers.clone();
        h.push(("Ringgate-Cache", "ttl=60s"));
        let miss = sql(addr, &cs, body.clone(), &h);
        let hit = sql(addr, &cs, body.clone(), &h);
        assert_eq!((verdict(&miss), verdict(&hit)), ("miss", "hit"), "{body}");
        assert_eq!(miss.status, 200);
        assert_eq!(miss.body, hit.body, "a hit is the miss byte for byte");
        assert_eq!(miss.header("content-type"), hit.header("content-type"));
        // The uncached answer is the same too.
        let fresh = sql(addr, &cs, body, &headers);
        assert_eq!(fresh.body, hit.body);
    }
    // Array mode and raw text changed the body, so they had their own entries.
    let objects = cached(addr, &cs, &q, "60s");
    let arrays = sql(
        addr,
        &cs,
        json!({"query": q, "arrayMode": true}),
        &[("Ringgate-Cache", "ttl=60s")],
    );
    assert_ne!(objects.body, arrays.body);
    // Bypass neither reads nor stores.
    let bypass = sql(
        addr,
        &cs,
        json!({ "query": q }),
        &[("Ringgate-Cache", "bypass")],
    );
    assert_eq!(verdict(&bypass), "bypass");
    let status = admin_get(addr, "/admin/status").json();
    assert!(
        status["sql_cache"]["hits"].as_u64().unwrap() >= 4,
        "{status}"
    );
    assert!(status["sql_cache"]["this_core"]["bytes"].as_u64().unwrap() > 0);
    assert!(metric_total_where(addr, "ringgate_sql_cache_events_total", "event=\"hit\"") >= 4);
    psql(&pg_admin_url(), &format!("drop table {t}"));
}

#[test]
#[ignore = "needs compose/cluster"]
fn volatile_reads_are_never_cached() {
    let (_g, addr) = start_on_admin(&[]);
    let cs = conn_string("cachenow", None);
    for q in [
        "select now()::text as t",
        "select clock_timestamp()::text as t",
        "select random() as t",
        "select 'now'::timestamptz::text as t",
        "select txid_current() as t",
    ] {
        let a = cached(addr, &cs, q, "60s");
        let b = cached(addr, &cs, q, "60s");
        // `uncacheable`, or no verdict at all for what the classifier calls a write
        // (txid_current assigns a transaction id).
        for r in [&a, &b] {
            assert!(!matches!(verdict(r), "hit" | "miss"), "{q}: {}", verdict(r));
        }
        if !q.contains("txid") {
            assert_eq!(verdict(&a), "uncacheable", "{q}");
        }
    }
    // now() twice a little apart: two different answers, so it really ran twice.
    let a = cached(addr, &cs, "select now()::text as t", "60s");
    std::thread::sleep(Duration::from_millis(5));
    let b = cached(addr, &cs, "select now()::text as t", "60s");
    assert_ne!(a.body, b.body);
    // A parameter the server reads as the current time is volatile too.
    let r = sql(
        addr,
        &cs,
        json!({"query": "select $1::timestamptz::text as t", "params": ["now"]}),
        &[("Ringgate-Cache", "ttl=60s")],
    );
    assert_eq!(verdict(&r), "uncacheable");
}

#[test]
#[ignore = "needs compose/cluster"]
fn entries_expire_after_their_ttl() {
    let (_g, addr) = start_on_admin(&[]);
    let cs = conn_string("cachettl", None);
    let t = unique("cache_ttl_");
    table(&pg_admin_url(), &t);
    let q = format!("select v from {t} where id = 1");
    assert_eq!(verdict(&cached(addr, &cs, &q, "1s")), "miss");
    assert_eq!(verdict(&cached(addr, &cs, &q, "1s")), "hit");
    // Written outside ringgate: served from the cache until the TTL passes.
    psql(
        &pg_admin_url(),
        &format!("update {t} set v = 'uno' where id = 1"),
    );
    let stale = cached(addr, &cs, &q, "1s");
    assert_eq!(verdict(&stale), "hit");
    assert!(stale.text().contains("\"one\""));
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = cached(addr, &cs, &q, "1s");
    assert_eq!(verdict(&fresh), "miss");
    assert!(fresh.text().contains("\"uno\""), "{}", fresh.text());
    psql(&pg_admin_url(), &format!("drop table {t}"));
}

#[test]
#[ignore = "needs compose/cluster"]
fn two_projects_and_two_roles_never_share_an_entry() {
    let (_g, addr) = start_on_admin(&[]);
    let admin = pg_admin_url();
    let t = unique("cache_roles_");
    table(&admin, &t);
    let role = unique("cache_reader_");
    psql(
        &admin,
        &format!(
            "create role {role} login password 'reader-secret'; grant select on {t} to {role}; \
             alter table {t} enable row level security; \
             create policy only_one on {t} for select to {role} using (id = 1)"
        ),
    );
    let q = format!("select id, v from {t} order by id");
    let owner_a = conn_string("cacheproja", None);
    let owner_b = conn_string("cacheprojb", None);
    let reader_a = conn_string("cacheproja", Some((&role, "reader-secret")));
    let first = cached(addr, &owner_a, &q, "60s");
    assert_eq!(verdict(&first), "miss");
    assert_eq!(verdict(&cached(addr, &owner_a, &q, "60s")), "hit");
    // The same text in another project: its own miss.
    let other = cached(addr, &owner_b, &q, "60s");
    assert_eq!(verdict(&other), "miss");
    // Another role of the same project: its own miss, with what its privileges show.
    let reader = cached(addr, &reader_a, &q, "60s");
    assert_eq!(verdict(&reader), "miss");
    assert_eq!(reader.json()["rows"], json!([{"id": 1, "v": "one"}]));
    assert_eq!(first.json()["rowCount"], 2);
    assert_eq!(verdict(&cached(addr, &reader_a, &q, "60s")), "hit");
    // The right role with a wrong password never reaches the entry.
    let wrong = conn_string("cacheproja", Some((&role, "wrong")));
    let r = sql(
        addr,
        &wrong,
        json!({ "query": q }),
        &[("Ringgate-Cache", "ttl=60s")],
    );
    assert_ne!(r.status, 200, "{}", r.text());
    psql(&admin, &format!("drop table {t}; drop role {role}"));
}

/// Reads `q` on fresh connections (so on many cores) `n` times; returns the bodies' texts
/// and how many were hits.
fn read_many(addr: SocketAddr, cs: &str, q: &str, n: usize) -> (Vec<String>, usize) {
    let mut hits = 0;
    let bodies = (0..n)
        .map(|_| {
            let r = cached(addr, cs, q, "60s");
            hits += usize::from(verdict(&r) == "hit");
            r.text()
        })
        .collect();
    (bodies, hits)
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_write_through_ringgate_invalidates_its_table_on_every_core_and_no_other() {
    let (_g, addr) = start_on_admin(&[("RINGGATE_WORKERS", "16")]);
    let cs = conn_string("cachewrite", None);
    let (t, u) = (unique("cache_w_"), unique("cache_o_"));
    table(&pg_admin_url(), &t);
    table(&pg_admin_url(), &u);
    let qt = format!("select v from {t} where id = 1");
    let qu = format!("select v from {u} where id = 1");
    // Fill every core (fresh connections spread over the 16 listeners).
    let (_, _) = read_many(addr, &cs, &qt, 200);
    let (_, _) = read_many(addr, &cs, &qu, 200);
    let (_, hits) = read_many(addr, &cs, &qt, 100);
    assert!(hits >= 90, "{hits} hits of 100 after filling");
    let cores_hit = (0..16)
        .filter(|c| {
            metric_total_where(
                addr,
                "ringgate_sql_cache_events_total",
                &format!("core=\"{c}\",class=\"unclassified\",event=\"hit\""),
            ) > 0
        })
        .count();
    assert!(cores_hit >= 8, "hits on only {cores_hit} cores");
    // A write to t: the very next read of t on every core is a miss with the new value.
    write(addr, &cs, &format!("update {t} set v = 'uno' where id = 1"));
    let (bodies, hits) = read_many(addr, &cs, &qt, 100);
    assert!(
        bodies.iter().all(|b| b.contains("\"uno\"")),
        "a stale read after the write: {:?}",
        bodies.iter().find(|b| !b.contains("\"uno\""))
    );
    // Within the settle window reads are served but not stored; after it they are again.
    let _ = hits;
    // A write to another table leaves t's... u's entries alone: t written, u still hits.
    let (_, u_hits) = read_many(addr, &cs, &qu, 50);
    assert_eq!(u_hits, 50, "a write to {t} invalidated {u}");
    // Writes inside a batch invalidate too.
    std::thread::sleep(Duration::from_millis(1100));
    let (_, refill) = read_many(addr, &cs, &qt, 100);
    assert!(refill > 0, "t is cached again after the settle window");
    let r = sql(
        addr,
        &cs,
        json!({"queries": [
            {"query": format!("update {t} set v = 'eins' where id = 1")},
            {"query": "select 1"},
        ]}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (bodies, _) = read_many(addr, &cs, &qt, 100);
    assert!(bodies.iter().all(|b| b.contains("\"eins\"")));
    let (_, u_hits) = read_many(addr, &cs, &qu, 50);
    assert_eq!(u_hits, 50);
    psql(&pg_admin_url(), &format!("drop table {t}; drop table {u}"));
}

/// Waits until the gateway's cache subscription to Redis is up.
fn wait_linked(addr: SocketAddr) {
    let start = Instant::now();
    loop {
        let s = admin_get(addr, "/admin/status").json();
        if s["sql_cache"]["cross_instance"]["linked"] == json!(true) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never linked: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_write_on_one_instance_invalidates_the_other_through_redis_and_rules_opt_in() {
    let (_g1, a) = start_with_redis(&[("RINGGATE_WORKERS", "2")]);
    let (_g2, b) = start_with_redis(&[("RINGGATE_WORKERS", "2")]);
    wait_linked(a);
    wait_linked(b);
    let alpha = required("RINGGATE_TEST_ALPHA_URL");
    let cs = alpha_conn_string();
    let t = unique("cache_x_");
    table(&alpha, &t);
    let q = format!("select v from {t} where id = 2");
    // A rule of project alpha caches the query without any header (any literal matches).
    let control = required("RINGGATE_CONTROL_DATABASE_URL");
    psql(
        &control,
        &format!(
            "insert into ringgate.cache_rules (project_id, pattern, ttl_ms) values ('alpha', 'SELECT v FROM {t} WHERE id = 1', 60000)"
        ),
    );
    let by_rule = |addr| {
        let start = Instant::now();
        loop {
            let r = sql(addr, &cs, json!({ "query": q }), &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            if verdict(&r) == "hit" {
                return r;
            }
            // The rule arrives with the project's row (NOTIFY, or its TTL).
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no hit: {}",
                verdict(&r)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for addr in [a, b] {
        for _ in 0..20 {
            by_rule(addr);
        }
    }
    // A write on instance a: instance b's next reads are misses with the new value.
    write(a, &cs, &format!("update {t} set v = 'zwei' where id = 2"));
    let start = Instant::now();
    let mut stale = 0;
    loop {
        let r = sql(b, &cs, json!({ "query": q }), &[]);
        if r.text().contains("\"zwei\"") {
            assert_ne!(verdict(&r), "hit", "a new value can only be a miss");
            break;
        }
        stale += 1;
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "instance b still served the old value after {stale} reads"
        );
    }
    for _ in 0..20 {
        let r = sql(b, &cs, json!({ "query": q }), &[]);
        assert!(r.text().contains("\"zwei\""), "{}", r.text());
    }
    let status = admin_get(b, "/admin/status").json();
    assert!(
        status["sql_cache"]["cross_instance"]["received"]
            .as_u64()
            .unwrap()
            >= 1,
        "{status}"
    );
    psql(
        &control,
        &format!(
            "delete from ringgate.cache_rules where project_id = 'alpha' and pattern like '%{t}%'"
        ),
    );
    psql(&alpha, &format!("drop table {t}"));
}

#[test]
#[ignore = "needs compose/cluster"]
fn the_byte_bound_holds_under_a_flood_of_distinct_queries() {
    let (_g, addr) = start_on_admin(&[
        ("RINGGATE_SQL_CACHE_BYTES", "256KiB"),
        ("RINGGATE_SQL_CACHE_PROJECT_BYTES", "64KiB"),
    ]);
    let flood = conn_string("cacheflood", None);
    let quiet = conn_string("cachequiet", None);
    let hot = "select 'hot' as v";
    assert_eq!(verdict(&cached(addr, &quiet, hot, "60s")), "miss");
    let pad = "x".repeat(400);
    for i in 0..2000 {
        let r = sql(
            addr,
            &flood,
            json!({"query": "select $1::text as v, $2::int as i", "params": [pad, i]}),
            &[("Ringgate-Cache", "ttl=60s")],
        );
        assert_eq!(verdict(&r), "miss");
    }
    let bytes = metric_total_where(addr, "ringgate_sql_cache_bytes", "");
    assert!(bytes <= 256 << 10, "{bytes} bytes cached");
    let status = admin_get(addr, "/admin/status").json();
    let this = &status["sql_cache"]["this_core"];
    assert!(this["bytes"].as_u64().unwrap() <= 256 << 10, "{status}");
    assert!(this["evictions"].as_u64().unwrap() > 1000, "{status}");
    assert!(metric_total_where(addr, "ringgate_sql_cache_evictions_total", "") > 1000);
    // One project's flood stayed within its share: the other project's entry is still there.
    assert_eq!(verdict(&cached(addr, &quiet, hot, "60s")), "hit");
}

#[test]
#[ignore = "needs compose/cluster"]
fn concurrent_misses_of_one_key_on_a_core_run_the_query_once() {
    let (_g, addr) = start_on_admin(&[]);
    let cs = conn_string("cachestampede", None);
    // About a quarter of a second on the server, cacheable (built-in functions only).
    let q = "select count(*) as n from generate_series(1, 4000000)";
    let answers: Vec<Resp> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..20)
            .map(|_| s.spawn(|| cached(addr, &cs, q, "60s")))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|r| r.body == answers[0].body));
    let misses = answers.iter().filter(|r| verdict(r) == "miss").count();
    let coalesced = metric_total_where(
        addr,
        "ringgate_sql_cache_events_total",
        "event=\"coalesced\"",
    );
    assert!(
        misses <= 3,
        "{misses} of 20 concurrent requests ran the query"
    );
    assert!(coalesced >= 10, "{coalesced} waited for another's query");
}

#[test]
#[ignore = "needs compose/cluster"]
fn while_redis_is_unreachable_entries_live_only_the_short_ttl() {
    // Sentinels nobody listens on: the invalidation subscription never comes up.
    let (_g, addr) = start_on_admin(&[
        ("RINGGATE_REDIS_SENTINELS", "127.0.0.1:9"),
        ("RINGGATE_REDIS_TIMEOUT", "100ms"),
        ("RINGGATE_SQL_CACHE_DEGRADED_TTL", "500ms"),
    ]);
    let cs = conn_string("cachedegraded", None);
    let status = admin_get(addr, "/admin/status").json();
    assert_eq!(
        status["sql_cache"]["cross_instance"]["linked"],
        json!(false),
        "{status}"
    );
    let t = unique("cache_d_");
    table(&pg_admin_url(), &t);
    let q = format!("select v from {t} where id = 1");
    assert_eq!(verdict(&cached(addr, &cs, &q, "60s")), "miss");
    assert_eq!(verdict(&cached(addr, &cs, &q, "60s")), "hit");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        verdict(&cached(addr, &cs, &q, "60s")),
        "miss",
        "asked for 60 s, kept 500 ms while other instances' writes cannot be heard"
    );
    // A write still invalidates locally (its publish fails, and is counted).
    write(addr, &cs, &format!("update {t} set v = 'uno' where id = 1"));
    let r = cached(addr, &cs, &q, "60s");
    assert!(r.text().contains("\"uno\""));
    let status = admin_get(addr, "/admin/status").json();
    assert!(
        status["sql_cache"]["cross_instance"]["publish_failures"]
            .as_u64()
            .unwrap()
            >= 1,
        "{status}"
    );
    psql(&pg_admin_url(), &format!("drop table {t}"));
}

/// Adds a rule of project alpha for `pattern` (60 s); returns a guard that removes it.
struct AlphaRule(String);

impl AlphaRule {
    fn add(pattern: &str) -> Self {
        let control = required("RINGGATE_CONTROL_DATABASE_URL");
        psql(
            &control,
            &format!(
                "insert into ringgate.cache_rules (project_id, pattern, ttl_ms) values ('alpha', '{}', 60000)",
                pattern.replace('\'', "''")
            ),
        );
        Self(pattern.to_string())
    }
}

impl Drop for AlphaRule {
    fn drop(&mut self) {
        let control = required("RINGGATE_CONTROL_DATABASE_URL");
        psql(
            &control,
            &format!(
                "delete from ringgate.cache_rules where project_id = 'alpha' and pattern = '{}'",
                self.0.replace('\'', "''")
            ),
        );
    }
}

/// The PostgreSQL front end's count of cache `event`s.
fn pg_events(http: SocketAddr, event: &str) -> u64 {
    metric_total_where(
        http,
        "ringgate_sql_cache_events_total",
        &format!("event=\"{event}\",frontend=\"pg\""),
    )
}

/// Whether a raw answer holds `text`.
fn holds(answer: &[u8], text: &str) -> bool {
    answer.windows(text.len()).any(|w| w == text.as_bytes())
}

/// `[Parse] Bind Describe Execute Sync` of `sql` with text parameters `params` and result
/// format `format`, on the unnamed statement (parsed) or `named` (prepared before).
fn extended(
    c: &mut RawPg,
    named: Option<&str>,
    sql: &str,
    params: &[&str],
    format: i16,
) -> Vec<u8> {
    let mut m = match named {
        Some(_) => Vec::new(),
        None => parse("", sql),
    };
    m.extend(bind(named.unwrap_or(""), params, format));
    m.extend(describe_execute_sync());
    c.exchange(&m)
}

#[test]
#[ignore = "needs compose/cluster"]
fn the_wire_front_end_replays_cached_reads_byte_for_byte_and_never_caches_transactions_binary_or_now(
) {
    let (g, pg) = start_pg(&[]);
    let http = g.plain_addr().expect("HTTP listener");
    let alpha = required("RINGGATE_TEST_ALPHA_URL");
    let t = unique("cache_pg_");
    table(&alpha, &t);
    let q = format!("select id, v from {t} where id = 1");
    let qp = format!("select id, v from {t} where id = $1");
    let qnow = format!("select now()::text as t, v from {t} where id = 1");
    let _rules = [q.as_str(), qp.as_str(), qnow.as_str()].map(AlphaRule::add);
    let mut c = RawPg::alpha(pg);
    // The rules arrive with the project's row: read until an answer is stored.
    let start = Instant::now();
    let miss = loop {
        let a = c.exchange(&query(&q));
        if pg_events(http, "store") >= 1 {
            break a;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never stored");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(holds(&miss, "one"), "{miss:?}");
    // Written outside ringgate: the cache still answers, exactly as the miss did.
    psql(&alpha, &format!("update {t} set v = 'uno' where id = 1"));
    let hit = c.exchange(&query(&q));
    assert_eq!(hit, miss, "a hit is the miss byte for byte");
    assert_eq!(status(&hit), b'I');
    assert_eq!(pg_events(http, "hit"), 1);
    // A real client gets the same rows from the hit.
    let rows = with_alpha(pg, async |c| {
        c.simple_query(&q)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((r.get(0).unwrap().to_string(), r.get(1).unwrap().to_string()))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    })
    .unwrap();
    assert_eq!(rows, vec![("1".to_string(), "one".to_string())]);
    assert_eq!(pg_events(http, "hit"), 2);
    // Extended protocol, unnamed statement: its own entry (now 'uno'), replayed exactly.
    let stores = pg_events(http, "store");
    let miss = extended(&mut c, None, &qp, &["1"], 0);
    assert!(holds(&miss, "uno"), "{miss:?}");
    assert_eq!(pg_events(http, "store"), stores + 1);
    psql(&alpha, &format!("update {t} set v = 'eins' where id = 1"));
    let hit = extended(&mut c, None, &qp, &["1"], 0);
    assert_eq!(hit, miss);
    // A named statement prepared before; another parameter is another entry.
    assert_eq!(status(&c.exchange(&prepare("s1", &qp))), b'I');
    let two = extended(&mut c, Some("s1"), &qp, &["2"], 0);
    assert!(holds(&two, "two"), "{}", String::from_utf8_lossy(&two));
    psql(&alpha, &format!("update {t} set v = 'zwei' where id = 2"));
    assert_eq!(extended(&mut c, Some("s1"), &qp, &["2"], 0), two);
    let named_one = extended(&mut c, Some("s1"), &qp, &["1"], 0);
    assert!(
        holds(&named_one, "eins"),
        "the unnamed statement's entry is not the named one's"
    );
    // Binary results are never stored.
    let stores = pg_events(http, "store");
    let hits = pg_events(http, "hit");
    for _ in 0..2 {
        let a = extended(&mut c, None, &qp, &["1"], 1);
        assert_eq!(status(&a), b'I');
    }
    assert_eq!(
        (pg_events(http, "store"), pg_events(http, "hit")),
        (stores, hits)
    );
    // Inside a transaction: the current row, not the cached 'one'.
    assert_eq!(status(&c.exchange(&query("begin"))), b'T');
    let inside = c.exchange(&query(&q));
    assert!(holds(&inside, "eins"), "{inside:?}");
    assert_eq!(status(&inside), b'T');
    assert_eq!(status(&c.exchange(&query("commit"))), b'I');
    assert_eq!(pg_events(http, "hit"), hits);
    // now() is never cached, rule or not.
    let a = c.exchange(&query(&qnow));
    std::thread::sleep(Duration::from_millis(5));
    let b = c.exchange(&query(&qnow));
    assert_ne!(a, b);
    assert_eq!(pg_events(http, "store"), stores);
    // Per tenant class, and promtool accepts the whole page.
    let class = psql(
        &required("RINGGATE_CONTROL_DATABASE_URL"),
        "select class from ringgate.projects where project_id = 'alpha'",
    );
    let page = request(http, "GET", "/metrics", &[], b"").text();
    promtool_accepts(&page);
    let class = format!("class=\"{class}\"");
    assert!(
        metric_total_where(http, "ringgate_sql_cache_bytes", &class) > 0,
        "{page}"
    );
    assert!(
        metric_total_where(
            http,
            "ringgate_sql_cache_events_total",
            &format!("{class},event=\"hit\",frontend=\"pg\"")
        ) >= 4,
        "{page}"
    );
    psql(&alpha, &format!("drop table {t}"));
}

#[test]
#[ignore = "needs compose/cluster"]
fn a_write_through_the_wire_invalidates_here_and_on_another_instance_and_not_other_tables() {
    ensure_auth_function();
    let (g1, a) = start_with_redis(&[
        ("RINGGATE_WORKERS", "2"),
        ("RINGGATE_PG_LISTEN", "127.0.0.1:0"),
    ]);
    let pg = g1.pg_addr().expect("PostgreSQL listener");
    let (_g2, b) = start_with_redis(&[("RINGGATE_WORKERS", "2")]);
    wait_linked(a);
    wait_linked(b);
    // Linking invalidated everything: nothing is stored within the settle window after.
    std::thread::sleep(Duration::from_millis(1100));
    let alpha = required("RINGGATE_TEST_ALPHA_URL");
    let cs = alpha_conn_string();
    let (t, u) = (unique("cache_pgw_"), unique("cache_pgo_"));
    table(&alpha, &t);
    table(&alpha, &u);
    let qt = format!("select v from {t} where id = 1");
    let qu = format!("select v from {u} where id = 1");
    let set_v = format!("update {t} set v = $1 where id = 1");
    psql(
        &alpha,
        &format!(
            "create function {t}_set(text) returns int language sql as \
             $$ update {t} set v = $1 where id = 1 returning 1 $$"
        ),
    );
    // One client session throughout: its statement prepared first is run by the last
    // round only (a `Bind` of a statement parsed long before).
    with_alpha(pg, async |c| {
        let prepared = c.prepare(&set_v).await.unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let rounds = [
            "simple",
            // The same text but for its literal: what it writes is remembered by shape.
            "simple with another literal",
            "extended",
            "extended in a transaction",
            "a statement prepared before",
            // A read as the classifier sees it (a shared read on the wire), whose
            // function writes: it invalidates all the project's entries.
            "a function that writes, called in a SELECT",
        ];
        for (round, how) in rounds.into_iter().enumerate() {
            let value = format!("v{round}");
            // Fill both instances (entries on several cores), and see them hit.
            for addr in [a, b] {
                let (_, _) = read_many(addr, &cs, &qt, 10);
                let (_, hits) = read_many(addr, &cs, &qt, 10);
                assert!(hits > 0, "{how}: no hit of {t} before the write");
                // Until every core has u: ten reads in a row are hits.
                let filled = (0..10).any(|_| read_many(addr, &cs, &qu, 10).1 == 10);
                assert!(filled, "{how}: {u} never cached on every core");
            }
            let n = match round {
                0 | 1 => {
                    let sql = format!("update {t} set v = '{value}' where id = 1");
                    c.simple_query(&sql).await.unwrap();
                    1
                }
                2 => c.execute(&set_v, &[&value]).await.unwrap(),
                3 => {
                    c.simple_query("begin").await.unwrap();
                    let n = c.execute(&set_v, &[&value]).await.unwrap();
                    c.simple_query("commit").await.unwrap();
                    n
                }
                4 => c.execute(&prepared, &[&value]).await.unwrap(),
                _ => {
                    let sql = format!("select {t}_set('{value}')");
                    let rows = c.simple_query(&sql).await.unwrap();
                    rows.iter()
                        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                        .count() as u64
                }
            };
            assert_eq!(n, 1, "{how}");
            // This instance: the very next reads (every core) have the new value.
            let (bodies, _) = read_many(a, &cs, &qt, 10);
            assert!(
                bodies.iter().all(|x| x.contains(&format!("\"{value}\""))),
                "{how}: a stale read on the writing instance: {bodies:?}"
            );
            // The other instance: within milliseconds (the publish arrives).
            let start = Instant::now();
            loop {
                let r = sql(
                    b,
                    &cs,
                    json!({ "query": qt }),
                    &[("Ringgate-Cache", "ttl=60s")],
                );
                if r.text().contains(&format!("\"{value}\"")) {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_millis(500),
                    "{how}: instance b still served the old value"
                );
            }
            let (bodies, _) = read_many(b, &cs, &qt, 10);
            assert!(bodies.iter().all(|x| x.contains(&format!("\"{value}\""))));
            // The other table's entries stayed (what a function writes is not known:
            // it invalidates every table).
            for addr in [a, b].into_iter().filter(|_| round != 5) {
                let (_, hits) = read_many(addr, &cs, &qu, 10);
                assert_eq!(hits, 10, "{how}: a write to {t} invalidated {u}");
            }
            // Reads of a table written within the settle window are not stored: wait it
            // out.
            std::thread::sleep(Duration::from_millis(1100));
        }
    })
    .unwrap();
    let invalidations = metric_total_where(
        a,
        "ringgate_sql_cache_events_total",
        "event=\"invalidation\",frontend=\"pg\"",
    );
    assert!(invalidations >= 6, "{invalidations}");
    psql(
        &alpha,
        &format!("drop function {t}_set; drop table {t}; drop table {u}"),
    );
}

#[test]
#[ignore = "needs compose/cluster"]
fn concurrent_wire_misses_of_one_key_on_a_core_run_the_query_once() {
    let (g, pg) = start_pg(&[]);
    let http = g.plain_addr().expect("HTTP listener");
    // About a quarter of a second on the server, cacheable (built-in functions only); a
    // literal of its own so that no earlier run's entry exists.
    let n = 4_000_000 + std::process::id() % 1000;
    let q = format!("select count(*) as n from generate_series(1, {n})");
    let _rule = AlphaRule::add(&q);
    // The rule arrives with the project's row: wait until an answer is stored.
    let mut c = RawPg::alpha(pg);
    let start = Instant::now();
    while pg_events(http, "store") == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "never stored");
        let _ = c.exchange(&query(&q));
    }
    // The rule matches any literal: another one is a key nobody has yet.
    let q = format!("select count(*) as n from generate_series(1, {})", n + 1);
    let clients: Vec<RawPg> = (0..12).map(|_| RawPg::alpha(pg)).collect();
    let barrier = std::sync::Barrier::new(clients.len());
    let answers: Vec<Vec<u8>> = std::thread::scope(|s| {
        let threads: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let (barrier, q) = (&barrier, &q);
                s.spawn(move || {
                    barrier.wait();
                    c.exchange(&query(q))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "every answer the same"
    );
    assert!(holds(&answers[0], &(n + 1).to_string()), "{:?}", answers[0]);
    let coalesced = pg_events(http, "coalesced");
    assert!(
        coalesced >= 6,
        "{coalesced} of 12 waited for another's query"
    );
}

#[test]
#[ignore = "needs compose/cluster"]
fn the_wire_cache_never_answers_after_a_deferred_begin_nor_a_session_mode_client() {
    use ringgate_tests::wire::{alpha_project, block_on, connect, start_pg_with_replica};
    alpha_project("cache_split", "transaction", true);
    alpha_project("cache_session", "session", false);
    let alpha = required("RINGGATE_TEST_ALPHA_URL");
    let control = required("RINGGATE_CONTROL_DATABASE_URL");
    let t = unique("cache_pgm_");
    table(&alpha, &t);
    let q = format!("select v from {t} where id = 1");
    for p in ["cache_split", "cache_session"] {
        psql(
            &control,
            &format!("insert into ringgate.cache_rules (project_id, pattern, ttl_ms) values ('{p}', '{q}', 60000)"),
        );
    }
    let (_g, http, pg) = start_pg_with_replica(&[]);
    let value = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap()
    };
    block_on(async {
        // Read split on (transaction mode): cached once the rule arrives and the replica
        // has the table.
        let (c, _) = connect(pg, "cache_split").await.unwrap();
        let start = Instant::now();
        while pg_events(http, "hit") == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never a hit");
            let _ = c.simple_query(&q).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        psql(&alpha, &format!("update {t} set v = 'uno' where id = 1"));
        assert_eq!(
            value(c.simple_query(&q).await.unwrap()),
            "one",
            "from the cache"
        );
        // A bare BEGIN ringgate answers itself: the next read is in the transaction.
        c.batch_execute("begin").await.unwrap();
        let hits = pg_events(http, "hit");
        assert_eq!(value(c.simple_query(&q).await.unwrap()), "uno");
        assert_eq!(pg_events(http, "hit"), hits);
        c.batch_execute("commit").await.unwrap();
        // Session mode: never answered from the cache, nor stored.
        let stores = pg_events(http, "store");
        let (s, _) = connect(pg, "cache_session").await.unwrap();
        for _ in 0..5 {
            assert_eq!(value(s.simple_query(&q).await.unwrap()), "uno");
        }
        assert_eq!(pg_events(http, "store"), stores);
    });
    psql(
        &control,
        "delete from ringgate.cache_rules where project_id in ('cache_split', 'cache_session')",
    );
    psql(&alpha, &format!("drop table {t}"));
}
