//! Which project a PostgreSQL session is for, as Neon's proxy decides it: the first label
//! of the TLS SNI name, else `endpoint=<project>` (or `project=`) in the `options`
//! startup parameter, else the database name.

/// Where the project name came from (shown in the unknown-project error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The TLS server name's first label (or, over `ws://`, the `Host` header's).
    Sni,
    /// `endpoint=` or `project=` in `options`.
    Options,
    /// The database name.
    Database,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Sni => "from the TLS server name or WebSocket Host",
            Origin::Options => "from options endpoint=",
            Origin::Database => "from the database name",
        })
    }
}

/// The project of a session and where its name came from.
pub fn project(sni: Option<&str>, options: &str, database: &str) -> (String, Origin) {
    if let Some(label) = sni.and_then(sni_label) {
        return (label.to_string(), Origin::Sni);
    }
    if let Some(p) = from_options(options) {
        return (p.to_string(), Origin::Options);
    }
    (database.to_string(), Origin::Database)
}

/// The first label of a server name with at least three labels
/// (`alpha.pg.example.com` → `alpha`); a bare host name names no project.
fn sni_label(sni: &str) -> Option<&str> {
    let mut labels = sni.split('.');
    let first = labels.next()?;
    (labels.count() >= 2 && !first.is_empty()).then_some(first)
}

/// `endpoint=<p>` or `project=<p>` among the space-separated `options` (`--` prefixes and
/// libpq's `%3D` escape for `=` accepted).
fn from_options(options: &str) -> Option<&str> {
    options.split_ascii_whitespace().find_map(|o| {
        let o = o.trim_start_matches('-');
        ["endpoint=", "endpoint%3D", "project=", "project%3D"]
            .iter()
            .find_map(|k| o.strip_prefix(k))
            .filter(|p| !p.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_then_options_then_database() {
        assert_eq!(
            project(Some("alpha.pg.example.com"), "endpoint=beta", "db"),
            ("alpha".into(), Origin::Sni)
        );
        assert_eq!(
            project(Some("localhost"), "-c x=1 endpoint=beta", "db"),
            ("beta".into(), Origin::Options)
        );
        assert_eq!(
            project(None, "--project=gamma", "db"),
            ("gamma".into(), Origin::Options)
        );
        assert_eq!(project(None, "endpoint%3Dbeta", "db").0, "beta");
        assert_eq!(
            project(None, "-c statement_timeout=5", "alpha"),
            ("alpha".into(), Origin::Database)
        );
        assert_eq!(project(None, "endpoint=", "alpha").1, Origin::Database);
    }
}
