//! Serving: the HTTP/HTTPS and PostgreSQL listeners, cores and io driver, per-connection
//! limits, drain, admin token and logging.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{parse, unset, Reader, Secret};

/// Plain HTTP listen address, or `off`.
pub const ENV_LISTEN: &str = "RINGGATE_LISTEN";
/// HTTPS listen address; unset means no TLS listener.
pub const ENV_TLS_LISTEN: &str = "RINGGATE_TLS_LISTEN";
/// PEM certificate chain for the HTTPS listener.
pub const ENV_TLS_CERT: &str = "RINGGATE_TLS_CERT";
/// PEM private key for the HTTPS listener.
pub const ENV_TLS_KEY: &str = "RINGGATE_TLS_KEY";
/// Number of cores (runtimes) to run.
pub const ENV_WORKERS: &str = "RINGGATE_WORKERS";
/// Whether each core's thread is pinned to one CPU.
pub const ENV_PIN_CORES: &str = "RINGGATE_PIN_CORES";
/// Which I/O driver to use: `auto`, `io_uring` or `epoll`.
pub const ENV_IO_DRIVER: &str = "RINGGATE_IO_DRIVER";
/// Largest request head accepted.
pub const ENV_MAX_HEADER_BYTES: &str = "RINGGATE_MAX_HEADER_BYTES";
/// Largest request body accepted.
pub const ENV_MAX_BODY_BYTES: &str = "RINGGATE_MAX_BODY_BYTES";
/// Time allowed to receive a whole request head.
pub const ENV_HEADER_READ_TIMEOUT: &str = "RINGGATE_HEADER_READ_TIMEOUT";
/// Longest pause allowed while a request body arrives.
pub const ENV_BODY_READ_TIMEOUT: &str = "RINGGATE_BODY_READ_TIMEOUT";
/// Longest time one write of a response to the client may take.
pub const ENV_RESPONSE_WRITE_TIMEOUT: &str = "RINGGATE_RESPONSE_WRITE_TIMEOUT";
/// How long an idle keep-alive connection is kept.
pub const ENV_KEEPALIVE_TIMEOUT: &str = "RINGGATE_KEEPALIVE_TIMEOUT";
/// Open client connections allowed per core.
pub const ENV_MAX_CONNECTIONS_PER_CORE: &str = "RINGGATE_MAX_CONNECTIONS_PER_CORE";
/// Longest graceful drain after SIGTERM.
pub const ENV_DRAIN_TIMEOUT: &str = "RINGGATE_DRAIN_TIMEOUT";
/// `RINGGATE_ADMIN_TOKEN`: bearer token for `/admin`; admin endpoints are off without it.
pub const ENV_ADMIN_TOKEN: &str = "RINGGATE_ADMIN_TOKEN";
/// Log filter in `tracing_subscriber::EnvFilter` syntax.
pub const ENV_LOG: &str = "RINGGATE_LOG";
/// Log format: `plain` or `json`.
pub const ENV_LOG_FORMAT: &str = "RINGGATE_LOG_FORMAT";
/// PostgreSQL protocol listen address, or `off`.
pub const ENV_PG_LISTEN: &str = "RINGGATE_PG_LISTEN";
/// TLS on the PostgreSQL listener: `allow` or `require`.
pub const ENV_PG_TLS: &str = "RINGGATE_PG_TLS";
/// What the PostgreSQL listener asks a TLS client for: `scram` or `password`.
pub const ENV_PG_TLS_AUTH: &str = "RINGGATE_PG_TLS_AUTH";
pub const ENV_PG_SHARED_READS: &str = "RINGGATE_PG_SHARED_READS";

/// Which io driver the cores run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    /// io_uring or fail at start.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object a line.
    Json,
}

/// The HTTPS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Limits applied to every client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request head in bytes ([`ENV_MAX_HEADER_BYTES`]); over it → 431.
    pub max_header_bytes: usize,
    /// Largest request body in bytes ([`ENV_MAX_BODY_BYTES`]); over it → 413.
    pub max_body_bytes: usize,
    /// Time allowed for a whole request head ([`ENV_HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
    /// Longest pause while a body arrives ([`ENV_BODY_READ_TIMEOUT`]).
    pub body_read_timeout: Duration,
    /// Longest time one write to the client may take ([`ENV_RESPONSE_WRITE_TIMEOUT`]); then it is closed.
    pub response_write_timeout: Duration,
    /// Idle keep-alive lifetime ([`ENV_KEEPALIVE_TIMEOUT`]).
    pub keepalive_timeout: Duration,
    /// Open connections per core ([`ENV_MAX_CONNECTIONS_PER_CORE`]).
    pub max_connections_per_core: usize,
}

impl Default for HttpLimits {
    /// The limits an unset environment reads ([`super::VARS`]).
    fn default() -> Self {
        unset(|r| r.http_limits())
    }
}

/// The PostgreSQL protocol listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgListen {
    /// Listen address.
    pub addr: SocketAddr,
    /// Refuse plaintext sessions (`RINGGATE_PG_TLS=require`).
    pub require_tls: bool,
    /// Ask a TLS client (TCP, not WebSocket) for its cleartext password rather than SCRAM
    /// (`RINGGATE_PG_TLS_AUTH=password`).
    pub tls_cleartext: bool,
    /// Send autocommit reads of several clients in one write when the connections are
    /// busy (`RINGGATE_PG_SHARED_READS`, see `wire::relay::shared`).
    pub shared_reads: bool,
}

/// The number of CPUs this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parses a listen address, or `off` (`None`).
pub(super) fn listen_or_off(s: &str) -> Result<Option<SocketAddr>, parse::ParseError> {
    if s.trim().eq_ignore_ascii_case("off") {
        Ok(None)
    } else {
        parse::addr(s).map(Some)
    }
}

/// Parses `RINGGATE_IO_DRIVER`.
pub(super) fn driver(s: &str) -> Result<DriverChoice, parse::ParseError> {
    match s.trim() {
        "auto" => Ok(DriverChoice::Auto),
        "io_uring" | "iouring" | "uring" => Ok(DriverChoice::IoUring),
        "epoll" | "legacy" => Ok(DriverChoice::Epoll),
        _ => Err(parse::ParseError {
            expected: "auto, io_uring or epoll",
        }),
    }
}

/// Parses `RINGGATE_LOG_FORMAT`.
pub(super) fn log_format(s: &str) -> Result<LogFormat, parse::ParseError> {
    match s.trim() {
        "plain" | "text" => Ok(LogFormat::Plain),
        "json" => Ok(LogFormat::Json),
        _ => Err(parse::ParseError {
            expected: "plain or json",
        }),
    }
}

/// Parses `RINGGATE_ADMIN_TOKEN`.
pub(super) fn admin_token(s: &str) -> Result<Secret, parse::ParseError> {
    let t = s.trim();
    if t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(Secret(t.to_string()))
    } else {
        Err(parse::ParseError {
            expected: "at least 16 printable characters without spaces",
        })
    }
}

/// Parses `RINGGATE_PG_TLS`: whether plaintext sessions are refused.
pub(super) fn pg_require_tls(s: &str) -> Result<bool, parse::ParseError> {
    match s.trim() {
        "allow" | "prefer" => Ok(false),
        "require" => Ok(true),
        _ => Err(parse::ParseError {
            expected: "allow or require",
        }),
    }
}

/// Parses `RINGGATE_PG_TLS_AUTH`: whether a TLS client is asked for its cleartext password.
pub(super) fn pg_tls_cleartext(s: &str) -> Result<bool, parse::ParseError> {
    match s.trim() {
        "scram" => Ok(false),
        "password" => Ok(true),
        _ => Err(parse::ParseError {
            expected: "scram or password",
        }),
    }
}

impl Reader<'_> {
    /// The per-connection limits (`RINGGATE_MAX_*_BYTES`, the read/write timeouts,
    /// `RINGGATE_MAX_CONNECTIONS_PER_CORE`).
    pub(super) fn http_limits(&mut self) -> HttpLimits {
        let http = HttpLimits {
            max_header_bytes: self.value(ENV_MAX_HEADER_BYTES, parse::bytes),
            max_body_bytes: self.value(ENV_MAX_BODY_BYTES, parse::bytes),
            header_read_timeout: self.value(ENV_HEADER_READ_TIMEOUT, parse::duration),
            body_read_timeout: self.value(ENV_BODY_READ_TIMEOUT, parse::duration),
            response_write_timeout: self.value(ENV_RESPONSE_WRITE_TIMEOUT, parse::duration),
            keepalive_timeout: self.value(ENV_KEEPALIVE_TIMEOUT, parse::duration),
            max_connections_per_core: self.value(ENV_MAX_CONNECTIONS_PER_CORE, parse::count),
        };
        if http.max_header_bytes < 256 {
            self.invalid(
                ENV_MAX_HEADER_BYTES,
                http.max_header_bytes.to_string(),
                "at least 256 bytes",
            );
        }
        http
    }
}
