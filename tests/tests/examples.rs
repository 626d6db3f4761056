//! The first five minutes, kept working: the clients in `examples/` (Node with Neon's driver
//! and drizzle-orm, Python with requests; psql and psycopg2 through the PostgreSQL
//! listener) and the commands `scripts/usage` prints when
//! `scripts/run` is ready, and README's Quick start (its commands answer as shown, its Node
//! snippet is `examples/node/neon.mjs` itself), each run against an in-process gateway on
//! the local backend; and `unknown_project` says how the project was read.

use std::{net::SocketAddr, path::PathBuf, process::Command};

use ringgate_tests::{
    backend::required,
    gateway::{start, start_with_redis, ADMIN_TOKEN},
    http::request,
};

/// The repository root.
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A gateway as `scripts/run` starts one: database, replicas and control database from the
/// cluster's environment.
fn start_like_run() -> (ringgate::Gateway, SocketAddr) {
    let (db, replica, control) = (
        required("DATABASE_URL"),
        required("READ_REPLICA_URL"),
        required("RINGGATE_CONTROL_DATABASE_URL"),
    );
    start(&[
        ("DATABASE_URL", &db),
        ("READ_REPLICA_URL", &replica),
        ("RINGGATE_CONTROL_DATABASE_URL", &control),
        ("RINGGATE_PG_LISTEN", "127.0.0.1:0"),
    ])
}

/// The demo project alpha's URL for the PostgreSQL listener of `g`, as the examples'
/// default has it (`options=endpoint=alpha` names the project).
fn alpha_pg_url(g: &ringgate::Gateway) -> String {
    let pg = g.pg_addr().expect("PostgreSQL listener");
    let alpha = required("RINGGATE_TEST_ALPHA_URL");
    let creds = alpha
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .expect("user and password in RINGGATE_TEST_ALPHA_URL");
    format!("postgresql://{creds}@{pg}/tenant_alpha?options=endpoint%3Dalpha")
}

/// Runs `program args` in the repository root with `RINGGATE_URL` pointing at `addr` (and
/// nothing else: the examples' default connection string must be the demo project's) and
/// returns its stdout; panics with its output when it fails.
fn run_example(addr: SocketAddr, program: &str, args: &[&str]) -> String {
    run_example_with(addr, program, args, &[])
}

/// [`run_example`] with more variables set (`RINGGATE_PG_URL` for the wire examples).
fn run_example_with(
    addr: SocketAddr,
    program: &str,
    args: &[&str],
    vars: &[(&str, &str)],
) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .env("RINGGATE_URL", format!("http://{addr}"))
        .env_remove("RINGGATE_CONNECTION_STRING")
        .env_remove("RINGGATE_PG_URL")
        .env_remove("PGPASSWORD")
        .envs(vars.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn node_modules_installed() {
    assert!(
        root()
            .join("examples/node/node_modules/drizzle-orm")
            .exists(),
        "run `npm ci --prefix examples/node` first (scripts/test does)"
    );
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_node_neon_example() {
    node_modules_installed();
    let (g, addr) = start_like_run();
    let out = run_example(addr, "node", &["examples/node/neon.mjs"]);
    g.drain();
    for row in [
        "{ id: 1, name: 'alpha item 1', price: '1.25' }",
        "{ id: 3, name: 'alpha item 3', price: '3.75' }",
    ] {
        assert!(out.contains(row), "{row} in:\n{out}");
    }
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_node_drizzle_example() {
    node_modules_installed();
    let (g, addr) = start_like_run();
    let out = run_example(addr, "node", &["examples/node/drizzle.mjs"]);
    g.drain();
    assert!(
        out.contains("{ id: 1, name: 'alpha item 1', price: '1.25', tags: [ 'a', 'tag1' ] }"),
        "{out}"
    );
    assert!(
        out.contains("inserted: drizzle example ")
            && out.contains("{ by: 'drizzle' } count: 1\ndeleted: 1\n"),
        "{out}"
    );
}

/// What the Python examples print first: the command tag and the first three items.
const FIRST_ROWS: &str =
    "SELECT 3\n1 alpha item 1 1.25\n2 alpha item 2 2.50\n3 alpha item 3 3.75\n";

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_python_example() {
    let (g, addr) = start_like_run();
    let out = run_example(addr, "python3", &["examples/python/query.py"]);
    g.drain();
    assert!(out.starts_with(FIRST_ROWS), "{out}");
    assert!(out.contains("batch: INSERT 1 count 1 DELETE 1\n"), "{out}");
    assert!(
        out.contains("typo: 404 unknown_project - no project \"alpah\": it is the first label"),
        "{out}"
    );
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_psql_example() {
    let (g, addr) = start_like_run();
    let url = alpha_pg_url(&g);
    let out = run_example_with(
        addr,
        "examples/psql/query.sh",
        &[],
        &[("RINGGATE_PG_URL", &url)],
    );
    g.drain();
    for line in [
        " id |     name     | price ",
        "  1 | alpha item 1 |  1.25",
        "  3 | alpha item 3 |  3.75",
        " psql example |  9.99",
        " left_after_rollback \n---------------------\n                   0",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_psycopg2_example() {
    let (g, addr) = start_like_run();
    let url = alpha_pg_url(&g);
    // Debian's Python, which has python3-psycopg2 (scripts/install-deps).
    let out = run_example_with(
        addr,
        "/usr/bin/python3",
        &["examples/python/wire.py"],
        &[("RINGGATE_PG_URL", &url)],
    );
    g.drain();
    assert!(out.starts_with(FIRST_ROWS), "{out}");
    assert!(out.contains("committed: 1\ndeleted: 1\n"), "{out}");
    assert!(
        out.contains("typo: FATAL:  project \"alpah\" does not exist (from options endpoint=)\n"),
        "the server's FATAL for a mistyped project: {out}"
    );
}

/// The commands of `scripts/usage`'s text: each `curl` or `psql` line with its `\`
/// continuations.
fn printed_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !line.starts_with("curl ") && !line.starts_with("psql ") {
            continue;
        }
        let mut command = line.to_string();
        while command.ends_with('\\') {
            command.pop();
            command.push_str(lines.next().unwrap_or_default());
        }
        commands.push(command);
    }
    commands
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_usage_commands_work() {
    let (g, addr) = start_like_run();
    let usage = Command::new(root().join("scripts/usage"))
        .args(["--wait", &std::process::id().to_string()])
        .env("RINGGATE_LISTEN", addr.to_string())
        .env(
            "RINGGATE_PG_LISTEN",
            g.pg_addr().expect("PostgreSQL listener").to_string(),
        )
        .env("RINGGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run scripts/usage");
    let text = String::from_utf8_lossy(&usage.stdout).into_owned();
    assert!(
        usage.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&usage.stderr)
    );
    assert!(
        text.starts_with(&format!("ringgate is ready on http://{addr}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "http://{addr}/admin (browser: any user name, password {ADMIN_TOKEN})"
        )),
        "{text}"
    );
    let commands = printed_commands(&text);
    assert_eq!(
        commands.len(),
        4,
        "query, psql, admin, Prometheus: {commands:#?}"
    );
    let outputs: Vec<String> = commands
        .iter()
        .map(|c| {
            let out = Command::new("bash")
                .args(["-c", c])
                .output()
                .expect("run bash");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{c}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        })
        .collect();
    g.drain();
    let query: serde_json::Value = serde_json::from_str(&outputs[0]).expect("JSON");
    assert_eq!(query["rowCount"], 3, "{query}");
    assert_eq!(
        query["rows"][0],
        serde_json::json!({"id": 1, "name": "alpha item 1", "price": "1.25"})
    );
    for row in ["  1 | alpha item 1 |  1.25", "  3 | alpha item 3 |  3.75"] {
        assert!(outputs[1].contains(row), "psql: {row:?} in {}", outputs[1]);
    }
    let status: serde_json::Value = serde_json::from_str(&outputs[2]).expect("JSON");
    assert!(status["topology"]["leader"]["name"].is_string(), "{status}");
    assert!(
        outputs[3].starts_with(r#"{"status":"success""#),
        "Prometheus: {}",
        outputs[3]
    );
}

/// The fenced blocks of README.md's Quick start: (language, text).
fn quick_start_blocks() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme
        .find("\n## Quick start\n")
        .expect("a Quick start section");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| {
            let (lang, text) = block.split_once('\n').unwrap_or((block, ""));
            (lang.to_string(), text.to_string())
        })
        .collect()
}

#[test]
fn test_readme_node_snippet_is_the_example() {
    let example = std::fs::read_to_string(root().join("examples/node/neon.mjs")).unwrap();
    assert!(
        quick_start_blocks().contains(&("js".to_string(), example)),
        "README.md's Quick start shows examples/node/neon.mjs as it is"
    );
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_readme_quick_start_commands_answer_as_shown() {
    let (g, addr) = start_with_redis(&[("RINGGATE_PG_LISTEN", "127.0.0.1:0")]);
    let pg = g.pg_addr().expect("PostgreSQL listener");
    let blocks = quick_start_blocks();
    let mut ran = 0;
    // `console` blocks: a `$ ` command (with `\` continuations) and its output as shown.
    for (lang, text) in &blocks {
        if lang != "console" {
            continue;
        }
        let (command, shown) = console_command(text);
        let command = command.replace("127.0.0.1:6432", &pg.to_string());
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &command])
            .current_dir(root())
            .env_remove("PGPASSWORD")
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{command}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<&str> = stdout.trim_end().lines().map(str::trim_end).collect();
        let shown: Vec<&str> = shown.lines().map(str::trim_end).collect();
        assert_eq!(got, shown, "the output of {command}");
        ran += 1;
    }
    for pair in blocks.windows(2) {
        let [(lang, script), (next, shown)] = pair else {
            unreachable!()
        };
        if lang != "sh" {
            continue;
        }
        assert_eq!(next, "json", "each command is followed by its answer");
        let script = script.replace("http://127.0.0.1:8080", &format!("http://{addr}"));
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(root())
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{script}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON");
        let shown: serde_json::Value = serde_json::from_str(shown).expect("README's JSON");
        for key in ["command", "rowCount", "rows"] {
            assert_eq!(got[key], shown[key], "{key} of {script}");
        }
        ran += 1;
    }
    g.drain();
    assert_eq!(ran, 3, "the first query, with psql, and the API key");
}

/// A `console` block's command (its `$ ` line and `\` continuations, joined) and the
/// output shown after it.
fn console_command(text: &str) -> (String, String) {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut command = first
        .strip_prefix("$ ")
        .expect("a console block starts with `$ `")
        .to_string();
    while command.ends_with('\\') {
        command.pop();
        command.push_str(lines.next().unwrap_or_default());
    }
    (command, lines.collect::<Vec<_>>().join("\n"))
}

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_unknown_project_says_how_the_project_was_read() {
    let (g, addr) = start_like_run();
    let alpha = required("RINGGATE_TEST_ALPHA_URL");
    let creds = alpha
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .expect("user and password in RINGGATE_TEST_ALPHA_URL");
    let ask = |host: &str| {
        let cs = format!("postgresql://{creds}@{host}/tenant_alpha");
        let r = request(
            addr,
            "POST",
            "/sql",
            &[("Neon-Connection-String", &cs)],
            br#"{"query": "select 1"}"#,
        );
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (404, Some("unknown_project"))
        );
        r.json()["message"].as_str().expect("a message").to_string()
    };
    let by_address = ask("127.0.0.1:8080");
    assert!(
        by_address.starts_with(
            "no project \"tenant_alpha\": the connection string's host 127.0.0.1 is an IP \
             address, so the project was taken from the database name \"tenant_alpha\"; to \
             name a project, make it the host's first label: \
             postgres://role:password@PROJECT.any.host/database"
        ),
        "{by_address}"
    );
    let by_label = ask("alpah.localtest.me");
    assert!(
        by_label.starts_with(
            "no project \"alpah\": it is the first label of the connection string's host \
             \"alpah.localtest.me\""
        ),
        "{by_label}"
    );
    // The message never names the projects that do exist.
    for message in [&by_address, &by_label] {
        assert!(
            !message.contains("beta") && !message.contains("\"alpha\""),
            "{message}"
        );
    }
    g.drain();
}
