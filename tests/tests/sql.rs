//! The Data API (`POST /sql`) end to end: ringgate in-process, real PostgreSQL behind it.

use std::time::Duration;

use ringgate_pool::url::parse_pg_url;
use ringgate_tests::{
    backend::{pg_admin_url, psql, required, unique},
    eventually,
    gateway::start,
    http::{metric_total, metric_total_where, request, Resp},
};
use serde_json::{json, Value};

/// A Neon connection string for `project` with the admin credentials.
fn conn_string(project: &str) -> String {
    let u = parse_pg_url(&pg_admin_url()).unwrap();
    let c = u.credentials;
    format!(
        "postgres://{}:{}@{project}.ringgate.test/{}",
        c.user, c.password, c.database
    )
}

fn sql(addr: std::net::SocketAddr, cs: &str, body: Value, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![
        ("Neon-Connection-String", cs),
        ("Content-Type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    request(addr, "POST", "/sql", &headers, body.to_string().as_bytes())
}

/// Starts ringgate with the admin URL as `DATABASE_URL`, plus `extra` settings.
fn start_on_admin(extra: &[(&str, &str)]) -> (ringgate::Gateway, std::net::SocketAddr) {
    let url = pg_admin_url();
    let mut env = vec![("DATABASE_URL", url.as_str())];
    env.extend_from_slice(extra);
    start(&env)
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn query_with_params_returns_neon_shape_and_text_values() {
    let (g, addr) = start_on_admin(&[]);
    let cs = conn_string("alpha");
    let r = sql(
        addr,
        &cs,
        json!({"query": "select $1::int + 1 as n, $2::text as t, $3::int as z, 1.50::numeric as price, '{\"a\":1}'::jsonb as j, array[1,2,null] as a, '\\x0102'::bytea as b, $4::bool as flag", "params": [41, "it's", null, true]}),
        &[("Neon-Raw-Text-Output", "true")],
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["command"], "SELECT");
    assert_eq!(v["rowCount"], 1);
    assert_eq!(v["rowAsArray"], false);
    assert_eq!(
        v["rows"][0],
        json!({"n": "42", "t": "it's", "z": null, "price": "1.50", "j": "{\"a\": 1}", "a": "{1,2,NULL}", "b": "\\x0102", "flag": "t"})
    );
    let fields = v["fields"].as_array().unwrap();
    assert_eq!(
        fields[0],
        json!({"name": "n", "dataTypeID": 23, "tableID": 0, "columnID": 0, "dataTypeSize": 4, "dataTypeModifier": -1, "format": "text"})
    );
    assert_eq!(fields[3]["dataTypeID"], 1700);
    // Array mode, from the header.
    let r = sql(
        addr,
        &cs,
        json!({"query": "select 1 as a, 'x' as b"}),
        &[
            ("Neon-Array-Mode", "true"),
            ("Neon-Raw-Text-Output", "true"),
        ],
    );
    assert_eq!(r.json()["rows"], json!([["1", "x"]]));
    assert_eq!(r.json()["rowAsArray"], true);
    // Without raw text output, booleans, small numbers and JSON become JSON values.
    let r = sql(
        addr,
        &cs,
        json!({"query": "select 1 as i, true as b, '{\"k\":[1]}'::json as j, 2.5::numeric as n"}),
        &[],
    );
    assert_eq!(
        r.json()["rows"][0],
        json!({"i": 1, "b": true, "j": {"k": [1]}, "n": "2.5"})
    );
    g.drain();
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn sql_errors_carry_sqlstate_and_position() {
    let (g, addr) = start_on_admin(&[]);
    let cs = conn_string("alpha");
    let r = sql(
        addr,
        &cs,
        json!({"query": "select * from no_such_table_xyz"}),
        &[],
    );
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["code"], "42P01");
    assert_eq!(v["position"], "15");
    assert!(v["message"].as_str().unwrap().contains("no_such_table_xyz"));
    let r = sql(
        addr,
        &cs,
        json!({"query": "select $1::int", "params": ["not a number"]}),
        &[],
    );
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("22P02")));
    let r = sql(
        addr,
        &cs,
        json!({"query": "select $1::int, $2::int", "params": [1]}),
        &[],
    );
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("08P01")));
    // Parameters are bound, never interpolated: an injection attempt is just a string.
    let r = sql(
        addr,
        &cs,
        json!({"query": "select $1::text as v", "params": ["x'; drop table pg_class; --"]}),
        &[("Neon-Raw-Text-Output", "true")],
    );
    assert_eq!(r.json()["rows"][0]["v"], "x'; drop table pg_class; --");
    g.drain();
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn bad_requests_are_refused_clearly() {
    let (g, addr) = start_on_admin(&[
        ("RINGGATE_SQL_MAX_QUERY_BYTES", "100"),
        ("RINGGATE_SQL_MAX_RESPONSE_BYTES", "1KiB"),
    ]);
    let cs = conn_string("alpha");
    let r = request(addr, "POST", "/sql", &[], br#"{"query":"select 1"}"#);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("bad_connection_string"))
    );
    let r = sql(addr, &cs, json!({"nope": 1}), &[]);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("bad_request"))
    );
    let r = request(
        addr,
        "POST",
        "/sql",
        &[("Neon-Connection-String", &cs)],
        b"{not json",
    );
    assert_eq!(r.status, 400);
    let long = format!("select '{}'", "x".repeat(200));
    let r = sql(addr, &cs, json!({"query": long}), &[]);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (413, Some("limit_exceeded"))
    );
    let r = sql(addr, &cs, json!({"query": "select repeat('x', 5000)"}), &[]);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (507, Some("response_too_large"))
    );
    let r = request(addr, "GET", "/sql", &[], b"");
    assert_eq!(r.status, 405);
    let mut bad = parse_pg_url(&pg_admin_url()).unwrap().credentials;
    bad.password = "wrong-password".into();
    let bad_cs = format!(
        "postgres://{}:{}@alpha.ringgate.test/{}",
        bad.user, bad.password, bad.database
    );
    let r = sql(addr, &bad_cs, json!({"query": "select 1"}), &[]);
    assert_eq!(
        (
            r.status,
            r.json()["code"].as_str(),
            r.json()["sqlstate"].as_str()
        ),
        (401, Some("authentication_failed"), Some("28P01")),
        "a wrong password is an authentication failure: {}",
        r.text()
    );
    // The gateway is fine afterwards.
    assert_eq!(
        sql(addr, &cs, json!({"query": "select 1"}), &[]).status,
        200
    );
    g.drain();
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn batch_runs_in_one_transaction_and_rolls_back_on_error() {
    let (g, addr) = start_on_admin(&[]);
    let cs = conn_string("alpha");
    let table = unique("batch_t");
    psql(
        &pg_admin_url(),
        &format!("create table {table} (id int primary key, name text)"),
    );
    let r = sql(
        addr,
        &cs,
        json!({"queries": [
            {"query": format!("insert into {table} values ($1, $2)"), "params": [1, "one"]},
            {"query": format!("insert into {table} values ($1, $2)"), "params": [2, "two"]},
            {"query": format!("select count(*) as n from {table}"), "arrayMode": true},
        ]}),
        &[
            ("Neon-Raw-Text-Output", "true"),
            ("Neon-Batch-Isolation-Level", "Serializable"),
        ],
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["command"], "INSERT");
    assert_eq!(results[0]["rowCount"], 1);
    assert_eq!(results[2]["rows"], json!([["2"]]));
    // A failing statement rolls the whole batch back.
    let r = sql(
        addr,
        &cs,
        json!({"queries": [
            {"query": format!("insert into {table} values (3, 'three')")},
            {"query": format!("insert into {table} values (1, 'duplicate')")},
        ]}),
        &[],
    );
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("23505")));
    assert_eq!(
        psql(&pg_admin_url(), &format!("select count(*) from {table}")),
        "2"
    );
    // A read-only batch refuses writes.
    let r = sql(
        addr,
        &cs,
        json!({"queries": [{"query": format!("delete from {table}")}]}),
        &[("Neon-Batch-Read-Only", "true")],
    );
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("25006")));
    psql(&pg_admin_url(), &format!("drop table {table}"));
    g.drain();
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn exhausted_pool_gets_503_with_retry_after_naming_the_limit() {
    let (g, addr) = start_on_admin(&[
        ("RINGGATE_POOL_MAX_PER_TENANT", "2"),
        ("RINGGATE_POOL_TIMEOUT", "300ms"),
    ]);
    let project = unique("busy");
    let cs = conn_string(&project);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let cs = cs.clone();
            std::thread::spawn(move || {
                sql(addr, &cs, json!({"query": "select pg_sleep(1.5)"}), &[]).status
            })
        })
        .collect();
    // Both of the tenant's connections are busy with the sleeps before the third asks.
    let sleeping = format!(
        "select count(*) from pg_stat_activity where application_name like 'ringgate/{project}/%' \
         and query = 'select pg_sleep(1.5)' and state = 'active'"
    );
    eventually(
        "both connections running pg_sleep",
        Duration::from_secs(10),
        || psql(&pg_admin_url(), &sleeping) == "2",
    );
    let started = std::time::Instant::now();
    let r = sql(addr, &cs, json!({"query": "select 1"}), &[]);
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.header("retry-after"), Some("1"));
    let v = r.json();
    assert_eq!(v["code"], "pool_exhausted");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(&project) && message.contains("limit of 2"),
        "{message}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "waited the pool timeout first"
    );
    for t in slow {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(
        sql(addr, &cs, json!({"query": "select 1"}), &[]).status,
        200,
        "free again"
    );
    g.drain();
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn a_terminated_server_connection_does_not_fail_the_next_request() {
    let (g, addr) = start_on_admin(&[]);
    let project = unique("term");
    let cs = conn_string(&project);
    let raw = [("Neon-Raw-Text-Output", "true")];
    let pid = sql(
        addr,
        &cs,
        json!({"query": "select pg_backend_pid()::text as pid"}),
        &raw,
    )
    .json()["rows"][0]["pid"]
        .as_str()
        .unwrap()
        .to_string();
    psql(
        &pg_admin_url(),
        &format!("select pg_terminate_backend({pid})"),
    );
    for query in ["select pg_backend_pid()::text as pid", "select 1 as one"] {
        let r = sql(addr, &cs, json!({ "query": query }), &raw);
        assert_eq!(r.status, 200, "{:?}", r.json());
    }
    g.drain();
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let primary = required("DATABASE_URL");
    let replica = required("READ_REPLICA_URL");
    let (g, addr) = start(&[("DATABASE_URL", &primary), ("READ_REPLICA_URL", &replica)]);
    let c = parse_pg_url(&primary).unwrap().credentials;
    let cs = format!(
        "postgres://{}:{}@rr.ringgate.test/{}",
        c.user, c.password, c.database
    );
    let raw = [("Neon-Raw-Text-Output", "true")];
    let read = sql(
        addr,
        &cs,
        json!({"query": "select pg_is_in_recovery() as r"}),
        &raw,
    );
    assert_eq!(
        read.json()["rows"][0]["r"],
        "t",
        "a plain SELECT runs on the replica"
    );
    let locked = sql(
        addr,
        &cs,
        json!({"query": "select pg_is_in_recovery() as r, txid_current()"}),
        &raw,
    );
    assert_eq!(
        locked.json()["rows"][0]["r"],
        "f",
        "a side-effecting SELECT runs on the primary"
    );
    g.drain();
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn one_projects_credentials_never_open_anothers_database() {
    let (g, addr) = start(&[("DATABASE_URL", &required("DATABASE_URL"))]);
    let alpha = parse_pg_url(&required("RINGGATE_TEST_ALPHA_URL"))
        .unwrap()
        .credentials;
    let own = format!(
        "postgres://{}:{}@alpha.ringgate.test/tenant_alpha",
        alpha.user, alpha.password
    );
    assert_eq!(
        sql(
            addr,
            &own,
            json!({"query": "select count(*) from items"}),
            &[]
        )
        .status,
        200
    );
    // alpha's role, beta's database (by name and by project).
    for cs in [
        format!(
            "postgres://{}:{}@alpha.ringgate.test/tenant_beta",
            alpha.user, alpha.password
        ),
        format!(
            "postgres://{}:{}@beta.ringgate.test/tenant_beta",
            alpha.user, alpha.password
        ),
    ] {
        let r = sql(
            addr,
            &cs,
            json!({"query": "select count(*) from items"}),
            &[],
        );
        // A known identity that may not connect: 403, with PostgreSQL's reason.
        assert_eq!(
            (
                r.status,
                r.json()["code"].as_str(),
                r.json()["sqlstate"].as_str()
            ),
            (403, Some("connection_refused"), Some("42501")),
            "permission denied for database: {:?}",
            r.json()
        );
    }
    g.drain();
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn a_read_that_writes_is_rerun_on_the_primary() {
    let primary = required("DATABASE_URL");
    let (g, addr) = start(&[
        ("DATABASE_URL", &primary),
        ("READ_REPLICA_URL", &required("READ_REPLICA_URL")),
    ]);
    let admin = required("RINGGATE_TEST_ALPHA_URL");
    let f = unique("sneaky_write");
    psql(&admin, &format!("create table {f}_t (id int); create function {f}() returns int language sql as 'insert into {f}_t values (1) returning id'"));
    let c = parse_pg_url(&admin).unwrap().credentials;
    let cs = format!(
        "postgres://{}:{}@alpha.ringgate.test/tenant_alpha",
        c.user, c.password
    );
    // Classified as a read (a plain SELECT of an unknown function), refused by the replica
    // (25006, nothing applied), rerun on the primary.
    let r = sql(
        addr,
        &cs,
        json!({"query": format!("select {f}() as id")}),
        &[("Neon-Raw-Text-Output", "true")],
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(
        psql(&admin, &format!("select count(*) from {f}_t")),
        "1",
        "applied exactly once"
    );
    psql(&admin, &format!("drop function {f}(); drop table {f}_t"));
    g.drain();
}

/// Runs `sql` on the control database as the superuser without firing triggers, so no
/// change notification is sent.
fn silently(sql: &str) {
    let admin = pg_admin_url();
    let url = format!("{}/ringgate_control", admin.rsplit_once('/').unwrap().0);
    psql(
        &url,
        &format!("set session_replication_role = replica; {sql}"),
    );
}

fn project_request(addr: std::net::SocketAddr, project: &str) -> Resp {
    let alpha = parse_pg_url(&required("RINGGATE_TEST_ALPHA_URL"))
        .unwrap()
        .credentials;
    let cs = format!(
        "postgres://{}:{}@{project}.ringgate.test/tenant_alpha",
        alpha.user, alpha.password
    );
    sql(addr, &cs, json!({"query": "select 1 as one"}), &[])
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_project_config_cache_ttl() {
    let control = required("RINGGATE_CONTROL_DATABASE_URL");
    let (g, addr) = start(&[
        ("DATABASE_URL", &required("DATABASE_URL")),
        ("RINGGATE_CONTROL_DATABASE_URL", &control),
        ("RINGGATE_PROJECT_CACHE_TTL", "1s"),
    ]);
    let project = unique("proj");
    // Unknown project: a 404 at once, not a hang (and the absence is cached too).
    let started = std::time::Instant::now();
    let r = project_request(addr, &project);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("unknown_project")),
        "{:?}",
        r.json()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Changes made without a notification are served once the TTL has passed.
    silently(&format!("insert into ringgate.projects (project_id, database, roles) values ('{project}', 'tenant_alpha', array['alpha_owner'])"));
    assert_eq!(
        project_request(addr, &project).status,
        404,
        "cached absence within the TTL"
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        project_request(addr, &project).status,
        200,
        "the new row after the TTL"
    );
    silently(&format!(
        "update ringgate.projects set database = 'tenant_beta', roles = array['beta_owner'] where project_id = '{project}'"
    ));
    assert_eq!(
        project_request(addr, &project).status,
        200,
        "cached row within the TTL"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let r = project_request(addr, &project);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (403, Some("project_mismatch")),
        "{:?}",
        r.json()
    );
    g.drain();

    // With a long TTL, a notified change is served at once.
    let (g, addr) = start(&[
        ("DATABASE_URL", &required("DATABASE_URL")),
        ("RINGGATE_CONTROL_DATABASE_URL", &control),
        ("RINGGATE_PROJECT_CACHE_TTL", "10m"),
    ]);
    assert_eq!(
        project_request(addr, &project).status,
        403,
        "the current row, now cached for 10 min"
    );
    // A notified change is served within a second. (The first update may land before this
    // core's LISTEN is up; the loop repeats the change until one is heard.)
    let notified = |sql_text: &str, want: u16| {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            psql(&control, sql_text);
            let changed = std::time::Instant::now();
            while changed.elapsed() < Duration::from_secs(1) {
                if project_request(addr, &project).status == want {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                std::time::Instant::now() < end,
                "never served {want} within 1 s of a notified change"
            );
        }
    };
    notified(&format!("update ringgate.projects set database = 'tenant_alpha', roles = array['alpha_owner'], updated_at = now() where project_id = '{project}'"), 200);
    notified(&format!("update ringgate.projects set database = 'tenant_beta', roles = array['beta_owner'], updated_at = now() where project_id = '{project}'"), 403);
    psql(
        &control,
        &format!("delete from ringgate.projects where project_id = '{project}'"),
    );
    let end = std::time::Instant::now() + Duration::from_secs(1);
    while project_request(addr, &project).status != 404 {
        assert!(
            std::time::Instant::now() < end,
            "a deleted project is not served as gone within 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another project's database with these credentials is refused before PostgreSQL sees it.
    let alpha = parse_pg_url(&required("RINGGATE_TEST_ALPHA_URL"))
        .unwrap()
        .credentials;
    let beta_cs = format!(
        "postgres://{}:{}@beta.ringgate.test/tenant_alpha",
        alpha.user, alpha.password
    );
    let r = sql(addr, &beta_cs, json!({"query": "select 1"}), &[]);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (403, Some("project_mismatch"))
    );
    g.drain();
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn a_projects_statement_timeout_applies_to_its_queries() {
    let control = required("RINGGATE_CONTROL_DATABASE_URL");
    let (g, addr) = start(&[
        ("DATABASE_URL", &required("DATABASE_URL")),
        ("RINGGATE_CONTROL_DATABASE_URL", &control),
    ]);
    let project = unique("slowproj");
    psql(&control, &format!("insert into ringgate.projects (project_id, database, roles, statement_timeout_ms) values ('{project}', 'tenant_alpha', array['alpha_owner'], 200)"));
    let alpha = parse_pg_url(&required("RINGGATE_TEST_ALPHA_URL"))
        .unwrap()
        .credentials;
    let cs = format!(
        "postgres://{}:{}@{project}.ringgate.test/tenant_alpha",
        alpha.user, alpha.password
    );
    let r = sql(addr, &cs, json!({"query": "select pg_sleep(1)"}), &[]);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("57014")),
        "canceled by the project's 200 ms: {:?}",
        r.json()
    );
    // Raised for the project: the change is announced, the next query runs with it.
    psql(&control, &format!("update ringgate.projects set statement_timeout_ms = 5000 where project_id = '{project}'"));
    let end = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let r = sql(addr, &cs, json!({"query": "select pg_sleep(0.5)"}), &[]);
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the new timeout never applied: {:?}",
            r.json()
        );
    }
    psql(
        &control,
        &format!("delete from ringgate.projects where project_id = '{project}'"),
    );
    g.drain();
}

/// Terminates (as PostgreSQL's `pg_terminate_backend` does in a fast shutdown) the one
/// backend running a query that contains `marker`, once it runs; returns its pid.
fn terminate_backend_running(marker: &str) -> String {
    // Found and terminated in one statement: on a loaded machine a second psql could start
    // after the statement ended and kill an idle connection instead.
    let find = format!(
        "with running as materialized (select pid from pg_stat_activity where state = 'active' \
         and query like '%{marker}%' and pid <> pg_backend_pid()) \
         select pid from running where pg_terminate_backend(pid)"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pid = psql(&pg_admin_url(), &find);
        if !pid.trim().is_empty() {
            return pid.trim().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no backend ran {marker}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rerun_metric(addr: std::net::SocketAddr) -> u64 {
    metric_total_where(
        addr,
        "ringgate_sql_reruns_total",
        "reason=\"aborted_by_server\"",
    )
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn a_write_the_server_aborted_before_commit_is_rerun_and_applied_once() {
    let (g, addr) = start_on_admin(&[]);
    let cs = conn_string("alpha");
    let table = unique("aborted_t");
    psql(
        &pg_admin_url(),
        &format!("create table {table} (id int, note text)"),
    );
    // A single INSERT whose backend is terminated while it runs.
    let marker = unique("m");
    let slow = {
        let (cs, q) = (
            cs.clone(),
            format!("insert into {table} select 1, '{marker}' from pg_sleep(1)"),
        );
        std::thread::spawn(move || sql(addr, &cs, json!({ "query": q }), &[]))
    };
    let first = terminate_backend_running(&marker);
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["rowCount"], 1);
    let second = psql(
        &pg_admin_url(),
        &format!("select count(*) from {table} where id = 1"),
    );
    assert_eq!(second.trim(), "1", "applied exactly once");
    assert!(rerun_metric(addr) >= 1, "counted as a rerun");
    // A batch whose transaction dies before COMMIT is rerun whole.
    let marker2 = unique("b");
    let batch = {
        let cs = cs.clone();
        let body = json!({"queries": [
            {"query": format!("insert into {table} values (2, 'batch')")},
            {"query": format!("select '{marker2}' as m from pg_sleep(1)")},
        ]});
        std::thread::spawn(move || sql(addr, &cs, body, &[]))
    };
    let pid = terminate_backend_running(&marker2);
    assert_ne!(pid, first);
    let r = batch.join().unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(
        psql(
            &pg_admin_url(),
            &format!("select count(*) from {table} where id = 2")
        )
        .trim(),
        "1"
    );
    assert!(rerun_metric(addr) >= 2);
    // A statement that commits on its own is not rerun: its outcome is unknown.
    let marker3 = unique("c");
    let own = {
        let cs = cs.clone();
        let q = format!("do $$ begin perform pg_sleep(1); perform '{marker3}'; end $$");
        std::thread::spawn(move || sql(addr, &cs, json!({ "query": q }), &[]))
    };
    terminate_backend_running(&marker3);
    let r = own.join().unwrap();
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["code"], "outcome_unknown");
    g.drain();
    psql(&pg_admin_url(), &format!("drop table {table}"));
}

/// The `ringgate_sql_pipelined_reads_total` counter, over all cores.
fn pipelined_metric(addr: std::net::SocketAddr) -> u64 {
    metric_total(addr, "ringgate_sql_pipelined_reads_total")
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn reads_queued_behind_busy_connections_are_pipelined_and_each_gets_its_own_answer() {
    // One connection per tenant: every read beyond the first waits for it.
    let (g, addr) = start_on_admin(&[("RINGGATE_POOL_MAX_PER_TENANT", "1")]);
    let admin = conn_string(&unique("pipe"));
    let alpha_url = parse_pg_url(&required("RINGGATE_TEST_ALPHA_URL")).unwrap();
    let alpha = format!(
        "postgres://{}:{}@alpha.ringgate.test/tenant_alpha",
        alpha_url.credentials.user, alpha_url.credentials.password
    );
    let admin_user = parse_pg_url(&pg_admin_url()).unwrap().credentials.user;
    let raw = [("Neon-Raw-Text-Output", "true")];
    // Hold each tenant's only connection while the others queue up.
    let holders: Vec<_> = [admin.clone(), alpha.clone()]
        .into_iter()
        .map(|cs| {
            std::thread::spawn(move || {
                sql(addr, &cs, json!({"query": "select pg_sleep(0.5)"}), &[]).status
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let readers: Vec<_> = (0..40)
        .map(|i| {
            let (cs, user) = match i % 2 {
                0 => (admin.clone(), admin_user.clone()),
                _ => (alpha.clone(), alpha_url.credentials.user.clone()),
            };
            std::thread::spawn(move || {
                let body = match i % 5 {
                    // A failing read among the others: its error is its own.
                    4 => json!({"query": "select 1 / $1::int as q", "params": [0]}),
                    _ => json!({"query": "select $1::int * 2 as n, current_user::text as u", "params": [i]}),
                };
                let r = sql(addr, &cs, body, &raw);
                (i, user, r.status, r.json())
            })
        })
        .collect();
    for (i, user, status, v) in readers.into_iter().map(|t| t.join().unwrap()) {
        if i % 5 == 4 {
            assert_eq!((status, v["code"].as_str()), (400, Some("22012")), "{v:?}");
        } else {
            assert_eq!(status, 200, "{v:?}");
            let row = &v["rows"][0];
            assert_eq!(row["n"], (i * 2).to_string(), "read {i} got {v:?}");
            assert_eq!(row["u"], user, "read {i} ran as its own tenant's role");
        }
    }
    for h in holders {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert!(
        pipelined_metric(addr) >= 10,
        "queued reads rode on the busy connections: {}",
        pipelined_metric(addr)
    );
    g.drain();
}

/// Whether a backend runs a query containing `marker` (other than the one asking).
fn running(marker: &str) -> bool {
    let find = format!(
        "select count(*) from pg_stat_activity where state = 'active' and query like '%{marker}%' and pid <> pg_backend_pid()"
    );
    psql(&pg_admin_url(), &find).trim() != "0"
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn a_statement_whose_client_disconnects_is_cancelled_on_the_server() {
    use std::io::Write;
    let (g, addr) = start_on_admin(&[]);
    let cs = conn_string("alpha");
    let table = unique("gone_t");
    psql(&pg_admin_url(), &format!("create table {table} (id int)"));
    let cases = |marker: &str| {
        [
            (
                "read",
                json!({"query": format!("select pg_sleep(30) /* {marker} */")}),
            ),
            (
                "write",
                json!({"query": format!("insert into {table} select 1 from pg_sleep(30) /* {marker} */")}),
            ),
            (
                "batch",
                json!({"queries": [
                    {"query": format!("insert into {table} values (2)")},
                    {"query": format!("select pg_sleep(30) /* {marker} */")},
                ]}),
            ),
        ]
    };
    for kind in ["read", "write", "batch"] {
        let marker = unique("gone");
        let body = cases(&marker)
            .into_iter()
            .find(|(k, _)| *k == kind)
            .unwrap()
            .1
            .to_string();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /sql HTTP/1.1\r\nHost: t\r\nNeon-Connection-String: {cs}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !running(&marker) {
            assert!(std::time::Instant::now() < deadline, "{kind}: never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(s);
        let gone_at = std::time::Instant::now();
        while running(&marker) {
            assert!(
                gone_at.elapsed() < Duration::from_secs(3),
                "{kind}: still running {:?} after its client disconnected",
                gone_at.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{kind}: cancelled {:?} after the client left",
            gone_at.elapsed()
        );
    }
    // Nothing of the cancelled write or batch was applied, and ringgate serves on.
    assert_eq!(
        psql(&pg_admin_url(), &format!("select count(*) from {table}")).trim(),
        "0"
    );
    let r = sql(addr, &cs, json!({"query": "select 1 as one"}), &[]);
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert!(metric_total(addr, "ringgate_sql_cancelled_client_gone_total") >= 3);
    psql(&pg_admin_url(), &format!("drop table {table}"));
    g.drain();
}
