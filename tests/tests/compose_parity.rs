//! compose/docker-compose.yml is validated without a Docker engine and kept at parity with
//! compose/cluster (scripts/check-compose: `docker-compose config`, `amtool check-config`,
//! the same services, ports and templates). Needs no backend; docker-compose and
//! prometheus-alertmanager come from scripts/install-deps.

#[test]
fn docker_compose_file_is_valid_and_at_parity_with_the_launcher() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-compose");
    let out = std::process::Command::new(script)
        .output()
        .expect("run scripts/check-compose");
    assert!(
        out.status.success(),
        "scripts/check-compose failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}
