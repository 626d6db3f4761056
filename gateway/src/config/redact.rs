//! What of a configuration value may be shown: secret variables and the credentials in
//! URLs are hidden from every log line, error and `Debug` output.

use super::{ENV_ADMIN_TOKEN, ENV_KEY_LOGIN_SECRET, ENV_REDIS_PASSWORD};

/// Variables whose values are secrets: never shown in a log line or an error, only named.
/// Passwords inside URLs (`DATABASE_URL`, ...) are hidden by [`shown`] for every variable.
pub const SECRET_VARS: &[&str] = &[ENV_ADMIN_TOKEN, ENV_KEY_LOGIN_SECRET, ENV_REDIS_PASSWORD];

/// What stands for a hidden value.
const HIDDEN: &str = "<hidden>";

/// `value` of `name` as it may be logged or put in an error: nothing of a secret
/// variable, and of every URL in it (comma-separated lists too) neither the user
/// information (`user:password@`) nor the query (`?password=...`).
pub fn shown(name: &str, value: &str) -> String {
    if SECRET_VARS.contains(&name) {
        return HIDDEN.to_string();
    }
    let url = |item: &str| -> String {
        let Some((scheme, rest)) = item.split_once("://") else {
            return item.to_string();
        };
        let rest = match rest.rfind('@') {
            Some(at) => format!("{HIDDEN}@{}", &rest[at + 1..]),
            None => rest.to_string(),
        };
        match rest.find('?') {
            Some(q) => format!("{scheme}://{}?{HIDDEN}", &rest[..q]),
            None => format!("{scheme}://{rest}"),
        }
    };
    value.split(',').map(url).collect::<Vec<_>>().join(",")
}

/// A secret setting: its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(HIDDEN)
    }
}
