//! Starting ringgate in-process for tests.

use std::{collections::HashMap, net::SocketAddr};

use ringgate::{config::Config, Gateway};

use crate::backend::{pg_admin_url, required};

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

/// [`start`] with the backend's database, control database, Redis (through its Sentinels)
/// and API-key login settings, on top of `extra`.
pub fn start_with_redis(extra: &[(&str, &str)]) -> (ringgate::Gateway, SocketAddr) {
    let (db, control) = (pg_admin_url(), required("RINGGATE_CONTROL_DATABASE_URL"));
    let (sentinels, password, auth) = (
        required("RINGGATE_REDIS_SENTINELS"),
        required("RINGGATE_REDIS_PASSWORD"),
        required("RINGGATE_KEY_LOGIN_SECRET"),
    );
    let master = required("RINGGATE_REDIS_MASTER");
    let mut env = vec![
        ("DATABASE_URL", db.as_str()),
        ("RINGGATE_CONTROL_DATABASE_URL", control.as_str()),
        ("RINGGATE_REDIS_SENTINELS", sentinels.as_str()),
        ("RINGGATE_REDIS_MASTER", master.as_str()),
        ("RINGGATE_REDIS_PASSWORD", password.as_str()),
        ("RINGGATE_KEY_LOGIN_SECRET", auth.as_str()),
    ];
    env.extend_from_slice(extra);
    let owned: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    start(&refs)
}

/// [`start`] following Patroni through etcd (with the REST API as fallback), as
/// `scripts/run` does, with `extra` on top.
pub fn start_following_patroni(extra: &[(&str, &str)]) -> (Gateway, SocketAddr) {
    let vars = [
        "RINGGATE_ETCD_ENDPOINTS",
        "RINGGATE_PATRONI_URLS",
        "RINGGATE_PATRONI_SCOPE",
        "RINGGATE_PATRONI_NAMESPACE",
    ];
    let owned: Vec<(&str, String)> = vars.iter().map(|v| (*v, required(v))).collect();
    let mut env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra);
    start(&env)
}
