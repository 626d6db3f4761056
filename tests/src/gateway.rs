//! Starting ringgate in-process for tests.

use std::{collections::HashMap, net::SocketAddr};

use ringgate::{config::Config, Gateway};

/// The admin token every test gateway gets (`RINGGATE_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "ringgate-test-admin-token";

/// Starts a gateway on 127.0.0.1:0 with `env` on top of test defaults (one core unless
/// `RINGGATE_WORKERS` is given, no pinning); returns it and its HTTP address.
pub fn start(env: &[(&str, &str)]) -> (Gateway, SocketAddr) {
    let mut map: HashMap<&str, &str> = HashMap::from([
        ("RINGGATE_LISTEN", "127.0.0.1:0"),
        ("RINGGATE_WORKERS", "1"),
        ("RINGGATE_PIN_CORES", "false"),
        ("RINGGATE_ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    map.extend(env.iter().copied());
    let config = Config::from_strings(&map).expect("valid test configuration");
    let g = Gateway::start(config).expect("gateway starts");
    let addr = g.plain_addr().expect("plain listener");
    (g, addr)
}
