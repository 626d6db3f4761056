//! Errors: the server's own (with every field it sent) and the connection's.

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

/// An error or notice as the server sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbError {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, ... (the non-localized form when sent).
    pub severity: String,
    /// The SQLSTATE.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// Optional fields, as sent.
    pub detail: Option<String>,
    /// A hint.
    pub hint: Option<String>,
    /// A 1-based character position in the query.
    pub position: Option<String>,
    /// The context (call stack) it arose in.
    pub where_: Option<String>,
    /// Schema name.
    pub schema: Option<String>,
    /// Table name.
    pub table: Option<String>,
    /// Column name.
    pub column: Option<String>,
    /// Data type name.
    pub datatype: Option<String>,
    /// Constraint name.
    pub constraint: Option<String>,
    /// The source routine that raised it.
    pub routine: Option<String>,
}

impl DbError {
    /// Reads the fields of an ErrorResponse or NoticeResponse.
    pub fn parse(mut fields: ErrorFields<'_>) -> std::io::Result<Self> {
        let mut e = DbError::default();
        let mut localized_severity = None;
        while let Some(f) = fields.next()? {
            let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'V' => e.severity = v,
                b'S' => localized_severity = Some(v),
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                b'P' => e.position = Some(v),
                b'W' => e.where_ = Some(v),
                b's' => e.schema = Some(v),
                b't' => e.table = Some(v),
                b'c' => e.column = Some(v),
                b'd' => e.datatype = Some(v),
                b'n' => e.constraint = Some(v),
                b'R' => e.routine = Some(v),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = localized_severity.unwrap_or_default();
        }
        Ok(e)
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.severity, self.message, self.code)
    }
}

/// Why an operation on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error. After an `ERROR` the connection is usable (the
    /// server is ready for the next query); after a `FATAL` it is closed.
    #[error("{0}")]
    Db(Box<DbError>),
    /// The socket failed or was closed; nothing more can be sent on this connection.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server sent something this client does not expect.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server asked for an authentication method this client does not speak.
    #[error("unsupported authentication: {0}")]
    Auth(String),
    /// A result was larger than allowed; the connection read the rest and is usable.
    #[error("the result exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

impl Error {
    /// The server's error, when it sent one.
    pub fn db(&self) -> Option<&DbError> {
        match self {
            Error::Db(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the connection can no longer be used.
    pub fn is_closed(&self) -> bool {
        match self {
            Error::Db(e) => e.severity == "FATAL" || e.severity == "PANIC",
            Error::Io(_) | Error::Closed | Error::Tls(_) | Error::Protocol(_) | Error::Auth(_) => {
                true
            }
            Error::TooLarge { .. } => false,
        }
    }
}
