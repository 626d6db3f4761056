//! Addresses of the compose/ backend, taken from the environment `compose/cluster up` prints.
//!
//! Every helper panics when its variable is unset: a test that needs the backend must never
//! pass silently without it.

/// Reads `name` from the environment or panics with a message that says how to set it.
pub fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this test needs the compose backend. \
             Run `eval \"$(compose/cluster up)\"` first (see README.md)."
        ),
    }
}
