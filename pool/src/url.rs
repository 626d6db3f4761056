//! `postgres://` URLs (`DATABASE_URL`, `READ_REPLICA_URL`) → address and credentials.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    str::FromStr,
};

use tokio_postgres::config::Host;

use crate::conn::Credentials;

/// A parsed connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The server address (host resolved once, when parsed).
    pub addr: SocketAddr,
    /// The host as written.
    pub host: String,
    /// Database, user and password.
    pub credentials: Credentials,
}

/// Why a URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a valid PostgreSQL connection string.
    #[error("not a PostgreSQL URL: {0}")]
    Invalid(String),
    /// No TCP host in it (Unix sockets are not supported).
    #[error("needs a TCP host (postgres://user:password@host:port/database)")]
    NoHost,
    /// No user in it.
    #[error("needs a user (postgres://user:password@host:port/database)")]
    NoUser,
    /// The host did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
}

/// The parts of a connection URL, the host not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    /// Host as written.
    pub host: String,
    /// Port (default 5432).
    pub port: u16,
    /// Role.
    pub user: String,
    /// Password (empty when none).
    pub password: String,
    /// Database, when given.
    pub database: Option<String>,
}

/// Splits `postgres://user:password@host:port/database` into its parts (TCP hosts only).
pub fn parse_parts(s: &str) -> Result<UrlParts, UrlError> {
    let config =
        tokio_postgres::Config::from_str(s).map_err(|e| UrlError::Invalid(e.to_string()))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => return Err(UrlError::NoHost),
    };
    Ok(UrlParts {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        user: config.get_user().ok_or(UrlError::NoUser)?.to_string(),
        password: config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        database: config.get_dbname().map(str::to_string),
    })
}

/// Parses `postgres://user:password@host:port/database` (port defaults to 5432, database to
/// the user name) and resolves the host.
pub fn parse_pg_url(s: &str) -> Result<PgUrl, UrlError> {
    let UrlParts {
        host,
        port,
        user,
        password,
        database,
    } = parse_parts(s)?;
    let database = database.unwrap_or_else(|| user.clone());
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| UrlError::Resolve {
            host: host.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| UrlError::Resolve {
            host: host.clone(),
            reason: "no address".into(),
        })?;
    Ok(PgUrl {
        addr,
        host,
        credentials: Credentials::new(database, user, password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_urls() {
        let u = parse_pg_url("postgres://app:s3cret@127.0.0.1:5433/tenant_alpha").unwrap();
        assert_eq!(u.addr, "127.0.0.1:5433".parse().unwrap());
        assert_eq!(
            u.credentials,
            Credentials::new("tenant_alpha", "app", "s3cret")
        );
        let u = parse_pg_url("postgresql://app@127.0.0.1").unwrap();
        assert_eq!(
            (u.addr.port(), u.credentials.database.as_str()),
            (5432, "app")
        );
    }

    #[test]
    fn refuses_bad_urls() {
        assert!(matches!(
            parse_pg_url("http://x"),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            parse_pg_url("postgres:///db?host=/tmp"),
            Err(UrlError::NoHost)
        ));
        assert!(matches!(
            parse_pg_url("postgres://127.0.0.1/db"),
            Err(UrlError::NoUser)
        ));
        assert!(matches!(
            parse_pg_url("postgres://u@no-such-host.invalid/db"),
            Err(UrlError::Resolve { .. })
        ));
    }
}
