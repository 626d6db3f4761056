//! The first five minutes, kept working: the clients in `examples/` (Node with Neon's driver
//! and drizzle-orm, Python with requests) and the commands `scripts/usage` prints when
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
    ])
}

/// Runs `program args` in the repository root with `RINGGATE_URL` pointing at `addr` (and
/// nothing else: the examples' default connection string must be the demo project's) and
/// returns its stdout; panics with its output when it fails.
fn run_example(addr: SocketAddr, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .env("RINGGATE_URL", format!("http://{addr}"))
        .env_remove("RINGGATE_CONNECTION_STRING")
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

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn test_python_example() {
    let (g, addr) = start_like_run();
    let out = run_example(addr, "python3", &["examples/python/query.py"]);
    g.drain();
    assert!(
        out.starts_with(
            "SELECT 3\n1 alpha item 1 1.25\n2 alpha item 2 2.50\n3 alpha item 3 3.75\n"
        ),
        "{out}"
    );
    assert!(out.contains("batch: INSERT 1 count 1 DELETE 1\n"), "{out}");
    assert!(
        out.contains("typo: 404 unknown_project - no project \"alpah\": it is the first label"),
        "{out}"
    );
}

/// The commands of `scripts/usage`'s text: each `curl` line with its `\` continuations.
fn printed_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !line.starts_with("curl ") {
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
    assert_eq!(commands.len(), 3, "query, admin, Prometheus: {commands:#?}");
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
    let status: serde_json::Value = serde_json::from_str(&outputs[1]).expect("JSON");
    assert!(status["topology"]["leader"]["name"].is_string(), "{status}");
    assert!(
        outputs[2].starts_with(r#"{"status":"success""#),
        "Prometheus: {}",
        outputs[2]
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
    let (g, addr) = start_with_redis(&[]);
    let blocks = quick_start_blocks();
    let mut ran = 0;
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
    assert_eq!(ran, 2, "the first query and the API key");
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
