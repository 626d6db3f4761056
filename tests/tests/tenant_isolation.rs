//! Tenants are fenced by PostgreSQL itself: a project's API key or connection string runs
//! SQL that cannot reach another tenant's roles or data, whatever it sends.
//!
//! Every route to another role is tried through `/sql` against the real cluster, as a
//! single query and in a batch, with an API key of project `alpha` (which logs in as
//! `ringgate_key_alpha_owner`) and with alpha's connection string (`alpha_owner`); then a
//! superuser checks that beta's role, its password, its memberships and its data are
//! exactly as before.

use std::net::SocketAddr;

use ringgate_tests::{
    backend::{alpha_conn_string, pg_admin_url, psql, put_session, required, try_psql, unique},
    gateway::start_with_redis,
    http::{request, Resp},
};
use serde_json::{json, Value};

/// How a request names its tenant.
#[derive(Clone, Copy, Debug)]
enum Cred<'a> {
    Key(&'a str),
    ConnString(&'a str),
}

fn post(addr: SocketAddr, cred: Cred, body: &Value) -> Resp {
    let mut headers = vec![("Content-Type", "application/json")];
    match cred {
        Cred::Key(k) => headers.push(("apikey", k)),
        Cred::ConnString(cs) => headers.push(("Neon-Connection-String", cs)),
    }
    request(addr, "POST", "/sql", &headers, body.to_string().as_bytes())
}

fn single(q: &str) -> Value {
    json!({"query": q, "params": []})
}

fn batch(qs: &[&str]) -> Value {
    json!({"queries": qs.iter().map(|q| json!({"query": q, "params": []})).collect::<Vec<_>>()})
}

/// A superuser URL for `database` on the leader.
fn super_url(database: &str) -> String {
    let admin = pg_admin_url();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("a database in RINGGATE_TEST_PG_URL");
    format!("{base}/{database}")
}

/// What an attack on beta could change, as a superuser sees it: beta's role (attributes,
/// password verifier, settings), every membership in or of a tenant or ringgate role, the
/// roles an attack would create, and the databases' ACLs.
fn world() -> String {
    psql(
        &pg_admin_url(),
        "select string_agg(x, E'\\n' order by x) from ( \
           select 'role ' || a.rolname || ' ' \
                  || row(a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb, a.rolcanlogin, \
                         a.rolreplication, a.rolbypassrls)::text || ' ' \
                  || coalesce(case when a.rolname like 'ringgate_key_%' then '' else a.rolpassword end, '') \
                  || ' ' || coalesce((select string_agg(setconfig::text, ';') from pg_db_role_setting \
                                      where setrole = a.oid), '') \
           from pg_authid a where a.rolname in ('alpha_owner', 'beta_owner', 'ringgate_app', 'postgres') \
              or a.rolname in ('ringgate_key_alpha_owner', 'ringgate_key_beta_owner') \
              or a.rolname like 'evil%' \
           union all \
           select 'member ' || m.roleid::regrole || ' <- ' || m.member::regrole || ' ' || m.admin_option \
           from pg_auth_members m \
           where m.roleid::regrole::text ~ '^(alpha_owner|beta_owner|ringgate_.*|postgres|pg_.*)$' \
             and m.member::regrole::text ~ '^(alpha_owner|beta_owner|ringgate_.*)$' \
           union all \
           select 'db ' || datname || ' ' || coalesce(datacl::text, '') from pg_database \
             where datname in ('tenant_alpha', 'tenant_beta', 'ringgate_control', 'postgres') \
         ) s(x)",
    )
}

/// Sends `body` and requires a refusal: PostgreSQL's error (400 with a SQLSTATE among
/// `codes`) and never 200.
fn refused(addr: SocketAddr, cred: Cred, body: &Value, codes: &[&str]) {
    let r = post(addr, cred, body);
    let j = r.json();
    let code = j["code"].as_str().unwrap_or_default().to_string();
    assert!(
        r.status == 400
            && codes.contains(&code.as_str())
            && j["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{cred:?} {body} must be refused by PostgreSQL with one of {codes:?}; got {} {}",
        r.status,
        r.text()
    );
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_no_sql_a_tenant_sends_reaches_another_tenants_role_or_data() {
    let (_g, addr) = start_with_redis(&[]);
    let key = unique("iso-key-");
    put_session(&key, &json!({"project": "alpha", "role": "alpha_owner"}));
    let cs = alpha_conn_string();

    // Beta's canary: a table of its own with one row, and its real password still works.
    let canary = unique("canary_");
    let beta_url = required("RINGGATE_TEST_BETA_URL");
    psql(
        &beta_url,
        &format!("create table {canary} (v text); insert into {canary} values ('beta only')"),
    );
    let before = world();

    for cred in [Cred::Key(&key), Cred::ConnString(&cs)] {
        // Control: the request itself works and runs as alpha_owner.
        let r = post(addr, cred, &single("select current_user::text as u"));
        assert_eq!(r.status, 200, "{cred:?}: {}", r.text());
        assert_eq!(r.json()["rows"][0]["u"], "alpha_owner");

        const DENIED: &[&str] = &["42501"];
        let routes: &[(&str, &[&str])] = &[
            ("set role beta_owner", DENIED),
            ("set local role beta_owner", DENIED),
            ("set role ringgate_key_beta_owner", DENIED),
            ("set role ringgate_app", DENIED),
            ("set role postgres", DENIED),
            ("set session authorization beta_owner", DENIED),
            ("set session authorization ringgate_key_beta_owner", DENIED),
            ("select set_config('role', 'beta_owner', false)", DENIED),
            ("select set_config('role', 'beta_owner', true)", DENIED),
            (
                "select set_config('session_authorization', 'beta_owner', false)",
                DENIED,
            ),
            ("alter role beta_owner password 'x'", DENIED),
            ("alter role beta_owner nologin", DENIED),
            ("alter role ringgate_key_beta_owner password 'x'", DENIED),
            ("alter role alpha_owner createrole", DENIED),
            ("grant beta_owner to alpha_owner", DENIED),
            ("grant beta_owner to ringgate_key_alpha_owner", DENIED),
            ("grant ringgate_key_beta_owner to alpha_owner", DENIED),
            ("revoke beta_owner from ringgate_key_beta_owner", DENIED),
            ("create role evil_iso login password 'x'", DENIED),
            ("create role evil_iso_b in role beta_owner", DENIED),
            ("create extension dblink", DENIED),
            ("create extension postgres_fdw", DENIED),
            ("copy (select 1) to program 'true'", DENIED),
            ("select pg_read_file('global/pg_control', 0, 1)", DENIED),
            ("do $$ begin execute 'set role beta_owner'; end $$", DENIED),
            (
                "do $$ begin perform set_config('role', 'beta_owner', false); end $$",
                DENIED,
            ),
            (
                "do $$ begin execute 'alter role beta_owner password ''x'''; end $$",
                DENIED,
            ),
            (
                "do $$ begin execute 'grant beta_owner to alpha_owner'; end $$",
                DENIED,
            ),
        ];
        for (q, codes) in routes {
            refused(addr, cred, &single(q), codes);
            refused(addr, cred, &batch(&[q]), codes);
            refused(addr, cred, &batch(&["select 1", q, "select 1"]), codes);
        }
        // The report's own request: SET LOCAL ROLE, then ALTER ROLE, in one batch.
        refused(
            addr,
            cred,
            &batch(&[
                "set local role beta_owner",
                "alter role beta_owner password 'x'",
            ]),
            DENIED,
        );
        // RESET ROLE goes back to the role the connection started with (the startup
        // option's); SET ROLE NONE to the login role itself (the key login, or alpha_owner),
        // which reaches nothing of beta's either.
        for (reset, expected) in [
            ("reset role", "alpha_owner"),
            (
                "set role none",
                match cred {
                    Cred::Key(_) => "ringgate_key_alpha_owner",
                    Cred::ConnString(_) => "alpha_owner",
                },
            ),
        ] {
            let r = post(
                addr,
                cred,
                &batch(&[reset, "select current_user::text as u"]),
            );
            assert_eq!(r.status, 200, "{cred:?}: {}", r.text());
            assert_eq!(r.json()["results"][1]["rows"][0]["u"], expected, "{reset}");
            for q in [
                "set role beta_owner",
                "alter role beta_owner password 'x'",
                "grant beta_owner to ringgate_key_alpha_owner",
                "set session authorization beta_owner",
                "select set_config('role', 'beta_owner', false)",
            ] {
                refused(addr, cred, &batch(&[reset, q]), DENIED);
            }
        }
        if let Cred::Key(_) = cred {
            // The key login itself holds no privileges: alpha's data is alpha_owner's.
            refused(
                addr,
                cred,
                &batch(&["set role none", "select count(*) from items"]),
                DENIED,
            );
        }
        // A SECURITY DEFINER function of the tenant's, which tries the same from inside.
        let f = unique("esc_");
        for body in [
            "perform set_config('role', 'beta_owner', false); return current_user;",
            "execute 'set role beta_owner'; return current_user;",
            "execute 'alter role beta_owner password ''x'''; return 'done';",
            "execute 'grant beta_owner to alpha_owner'; return 'done';",
        ] {
            let create = format!(
                "create or replace function public.{f}() returns text language plpgsql \
                 security definer as $f$ begin {body} end $f$"
            );
            let r = post(addr, cred, &single(&create));
            assert_eq!(r.status, 200, "{cred:?} {create}: {}", r.text());
            refused(
                addr,
                cred,
                &single(&format!("select public.{f}()")),
                &["42501", "22023", "0A000"],
            );
            refused(
                addr,
                cred,
                &batch(&[&create, &format!("select public.{f}()")]),
                &["42501", "22023", "0A000"],
            );
            let r = post(addr, cred, &single(&format!("drop function public.{f}()")));
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // Beta's data through the tenant's own database: there is none, and no way out.
        refused(
            addr,
            cred,
            &single(&format!("select * from tenant_beta.public.{canary}")),
            &["0A000"],
        );
    }

    assert_eq!(
        world(),
        before,
        "an attack changed a role, a membership or a database ACL"
    );
    assert_eq!(
        psql(
            &beta_url,
            &format!("select string_agg(v, ',') from {canary}")
        ),
        "beta only",
        "beta's real owner still logs in with its password and its data is untouched"
    );
    assert_eq!(
        try_psql(
            &super_url("postgres"),
            "select count(*) from pg_roles where rolname like 'evil_iso%'"
        )
        .as_deref(),
        Some("0")
    );
    psql(&beta_url, &format!("drop table {canary}"));
}

/// A project added at run time (a row in `ringgate.projects`) gets the same fence: its
/// role gets its own key login at once, member of that role alone with CONNECT on that
/// project's database only; a privileged or missing role cannot be listed; removing the
/// row takes the login's rights away.
#[test]
#[ignore = "needs compose/cluster"]
fn test_a_project_added_at_run_time_gets_its_own_fenced_key_login() {
    let suffix = unique("").replace('-', "_").to_lowercase();
    let (role, database, project) = (
        format!("gamma{suffix}_owner"),
        format!("tenant_gamma{suffix}"),
        format!("gamma{suffix}"),
    );
    let admin = pg_admin_url();
    psql(
        &admin,
        &format!("create role {role} login password 'gamma-pw'"),
    );
    psql(&admin, &format!("create database {database} owner {role}"));
    let control_super = super_url("ringgate_control");
    let control = required("RINGGATE_CONTROL_DATABASE_URL");
    /// Removes the project, its login, database and role even when the test fails, so a
    /// later bootstrap finds no row naming a dropped role.
    struct Cleanup([String; 5]);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let [project, login, database, role, control] = &self.0;
            let admin = pg_admin_url();
            try_psql(
                control,
                &format!("delete from ringgate.projects where project_id = '{project}'"),
            );
            try_psql(&admin, &format!("drop role if exists {login}"));
            try_psql(
                &admin,
                &format!("drop database if exists {database} with (force)"),
            );
            try_psql(&admin, &format!("drop role if exists {role}"));
        }
    }
    let _cleanup = Cleanup([
        project.clone(),
        format!("ringgate_key_{role}"),
        database.clone(),
        role.clone(),
        control.clone(),
    ]);
    psql(
        &control,
        &format!(
            "insert into ringgate.projects (project_id, database, roles) \
             values ('{project}', '{database}', array['{role}'])"
        ),
    );
    let login = format!("ringgate_key_{role}");
    assert_eq!(
        psql(
            &admin,
            &format!(
                "select string_agg(m.roleid::regrole::text, ',') from pg_auth_members m \
                 where m.member = '{login}'::regrole"
            )
        ),
        role,
        "the new login is a member of the project's role alone"
    );
    assert_eq!(
        psql(
            &admin,
            &format!(
                "select string_agg(datname, ',' order by datname) from pg_database \
                 where not datistemplate and has_database_privilege('{login}', oid, 'CONNECT')"
            )
        ),
        format!("postgres,{database}"),
        "CONNECT on its project's database (and postgres, open to PUBLIC) only"
    );
    assert_eq!(
        psql(
            &admin,
            &format!("select has_database_privilege('{role}', 'tenant_beta', 'CONNECT')")
        ),
        "f"
    );

    // Through ringgate: the key works and is fenced like alpha's.
    let (_g, addr) = start_with_redis(&[]);
    let key = unique("gamma-key-");
    put_session(&key, &json!({"project": project, "role": role}));
    let r = post(
        addr,
        Cred::Key(&key),
        &single("select current_user::text as u, session_user::text as s"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rows"][0]["u"], role.as_str());
    assert_eq!(r.json()["rows"][0]["s"], login.as_str());
    refused(
        addr,
        Cred::Key(&key),
        &single("set role alpha_owner"),
        &["42501"],
    );
    refused(
        addr,
        Cred::Key(&key),
        &single("set role beta_owner"),
        &["42501"],
    );

    // A privileged, missing or ringgate-owned role cannot be listed.
    for bad in [
        "postgres",
        "pg_read_all_data",
        "no_such_role_x",
        "ringgate_app",
        "ringgate_key_alpha_owner",
    ] {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &control, "-c"])
            .arg(format!(
                "update ringgate.projects set roles = array['{role}', '{bad}'] where project_id = '{project}'"
            ))
            .output()
            .unwrap();
        assert!(!out.status.success(), "listing {bad} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot be a tenant role")
                || err.contains("does not exist")
                || err.contains("ringgate's own"),
            "{bad}: {err}"
        );
    }

    // Nor a database the role cannot connect to itself (beta's), or a system database:
    // the key login never reaches more than its role does.
    for (db, why) in [
        ("tenant_beta", "may not connect to database"),
        ("postgres", "system database"),
    ] {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &control, "-c"])
            .arg(format!(
                "update ringgate.projects set database = '{db}' where project_id = '{project}'"
            ))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{db}: {err}");
    }
    assert_eq!(
        psql(
            &admin,
            &format!("select has_database_privilege('{login}', 'tenant_beta', 'CONNECT')")
        ),
        "f"
    );

    // Removing the project takes the login's rights away (and a cached project row expires
    // or is notified away; the login itself can no longer log in).
    psql(
        &control,
        &format!("delete from ringgate.projects where project_id = '{project}'"),
    );
    assert_eq!(
        psql(
            &admin,
            &format!(
                "select rolcanlogin::text || ',' || (select count(*) from pg_auth_members where member = r.oid) \
                 || ',' || has_database_privilege(r.oid, '{database}', 'CONNECT') \
                 from pg_roles r where rolname = '{login}'"
            )
        ),
        "false,0,false"
    );
    drop(_cleanup);
    assert_eq!(
        psql(
            &control_super,
            &format!("select count(*) from pg_roles where rolname in ('{login}', '{role}')")
        ),
        "0"
    );
}

/// A request's session changes (`SET ROLE NONE`, `SET statement_timeout`, `SET
/// search_path`) do not outlive it: the next request on the same server connection runs
/// with the connection's startup role and settings again.
#[test]
#[ignore = "needs compose/cluster"]
fn test_session_changes_do_not_outlive_their_request() {
    // One server connection per tenant, so every request lands on the same one.
    let (_g, addr) = start_with_redis(&[("RINGGATE_POOL_MAX_PER_TENANT", "1")]);
    let key = unique("sess-key-");
    put_session(&key, &json!({"project": "alpha", "role": "alpha_owner"}));
    let cs = alpha_conn_string();
    let probe = "select current_user::text as u, current_setting('statement_timeout') as t, \
                 current_setting('search_path') as p, pg_backend_pid() as pid";
    for cred in [Cred::Key(&key), Cred::ConnString(&cs)] {
        let r = post(addr, cred, &single(probe));
        assert_eq!(r.status, 200, "{}", r.text());
        let before = r.json()["rows"][0].clone();
        let dirty = [
            "set role none",
            "set statement_timeout = 0",
            "set search_path = pg_catalog",
            "select pg_advisory_lock(42)",
        ];
        let r = post(addr, cred, &batch(&dirty));
        assert_eq!(r.status, 200, "{}", r.text());
        for q in [
            "set statement_timeout = 0",
            "select set_config('search_path', 'x', false)",
        ] {
            let r = post(addr, cred, &single(q));
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let r = post(addr, cred, &single(probe));
        assert_eq!(r.status, 200, "{}", r.text());
        let after = &r.json()["rows"][0];
        assert_eq!(after["pid"], before["pid"], "the same server connection");
        assert_eq!(after, &before, "{cred:?}: the session was reset");
        assert_eq!(after["u"], "alpha_owner");
    }
}
