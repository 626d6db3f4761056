//! Neon's own serverless driver (`@neondatabase/serverless`, npm) against ringgate's
//! `POST /sql`: the node test in `tests/neon/` runs unchanged against an in-process gateway.

use std::process::Command;

use ringgate_tests::{backend::required, gateway::start};

#[test]
#[ignore = "needs compose backend (compose/cluster up)"]
fn neon_serverless_driver_works_unchanged() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/neon");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/@neondatabase/serverless")
            .exists(),
        "run `npm ci --prefix tests/neon` first (scripts/test does)"
    );
    let (g, addr) = start(&[
        ("DATABASE_URL", &required("DATABASE_URL")),
        ("READ_REPLICA_URL", &required("READ_REPLICA_URL")),
    ]);
    // The tenant's own role and database; the host's first label names the project.
    let alpha = required("RINGGATE_TEST_ALPHA_URL");
    let creds = alpha
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .unwrap();
    let neon_url = format!("postgresql://{creds}@alpha.ringgate.test/tenant_alpha");
    let out = Command::new("node")
        .args(["--test", "neon.test.mjs"])
        .current_dir(dir)
        .env("RINGGATE_SQL_ENDPOINT", format!("http://{addr}/sql"))
        .env("RINGGATE_NEON_URL", neon_url)
        .env("TZ", "UTC")
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    g.drain();
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("# fail 0") && stdout.contains("# pass 8"),
        "{stdout}"
    );
}
