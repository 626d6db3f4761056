//! The compose/ Prometheus scrapes every target (ringgate, each Patroni, each etcd) and the
//! alert rules and dashboard only name metrics that exist (scripts/check-observability).

use std::time::{Duration, Instant};

use ringgate_tests::{
    backend::{http_get, required},
    gateway::start,
};
use serde_json::Value;

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query's single series, if there is one.
fn query(prometheus: &str, q: &str) -> Option<f64> {
    let (status, body) = http_get(&format!("{prometheus}/api/v1/query?query={}", encode(q)))?;
    (status == 200).then_some(())?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Puts `addrs` into the file Prometheus discovers ringgate targets from.
fn set_ringgate_targets(addrs: &[String]) {
    let file = required("RINGGATE_TEST_PROMETHEUS_TARGETS");
    let body = serde_json::json!([{ "targets": addrs }]).to_string();
    std::fs::write(&file, body).unwrap_or_else(|e| panic!("write {file}: {e}"));
}

#[test]
#[ignore = "needs compose/cluster"]
fn test_prometheus_scrapes_every_target_and_the_rules_name_real_metrics() {
    let prometheus = required("RINGGATE_TEST_PROMETHEUS_URL");
    let (_g, addr) = start(&[]);
    set_ringgate_targets(&[addr.to_string()]);
    let instance = addr.to_string();
    let start = Instant::now();
    let (mut ringgate, mut patroni, mut etcd) = (None, None, None);
    while start.elapsed() < Duration::from_secs(40) {
        ringgate = query(
            &prometheus,
            &format!("up{{job=\"ringgate\",instance=\"{instance}\"}}"),
        );
        patroni = query(&prometheus, "sum(up{job=\"patroni\"})");
        etcd = query(&prometheus, "sum(up{job=\"etcd\"})");
        if ringgate == Some(1.0) && patroni == Some(3.0) && etcd == Some(3.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    set_ringgate_targets(&[]);
    eprintln!(
        "Prometheus scraped ringgate={ringgate:?} patroni={patroni:?}/3 etcd={etcd:?}/3 after {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(ringgate, Some(1.0), "ringgate at {instance} not scraped");
    assert_eq!(patroni, Some(3.0), "not every Patroni member scraped");
    assert_eq!(etcd, Some(3.0), "not every etcd member scraped");
    let out = std::process::Command::new(format!(
        "{}/../scripts/check-observability",
        env!("CARGO_MANIFEST_DIR")
    ))
    .output()
    .expect("run scripts/check-observability");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
