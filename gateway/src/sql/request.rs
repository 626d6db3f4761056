//! A `POST /sql` request as Neon's serverless driver sends it: the JSON body (one query or a
//! batch) and the `Neon-*` headers.

use std::cell::Cell;

use http::HeaderMap;
use ringgate_pool::{
    url::{parse_parts, UrlError},
    Credentials,
};
use serde::Deserialize;

use super::{
    classify::{classify, Kind},
    memo::{Memo, SqlMemo},
    tenant::Tenant,
};
use crate::config::SqlLimits;

/// One statement and its parameters (text, or NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The SQL text.
    pub sql: String,
    /// Parameters `$1..`, sent to the server as text; the server infers their types.
    pub params: Vec<Option<String>>,
    /// Per-statement array mode, overriding the header.
    pub array_mode: Option<bool>,
    /// Whether it reads or may write, once [`Statement::kind`] looked it up.
    pub(crate) kind: Cell<Option<Kind>>,
}

impl Statement {
    /// Whether the statement reads or may write: classified once per text on a core
    /// (`memo`), and looked up once per request (routing, the cache and the run all ask).
    pub fn kind(&self, memo: &SqlMemo) -> Kind {
        if let Some(k) = self.kind.get() {
            return k;
        }
        let k = memo
            .kinds
            .get_or_try::<()>(&self.sql, || Ok(classify(&self.sql)))
            .unwrap_or(Kind::Write);
        self.kind.set(Some(k));
        k
    }
}

/// Transaction options for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxnOptions {
    /// `Neon-Batch-Isolation-Level`.
    pub isolation: Option<&'static str>,
    /// `Neon-Batch-Read-Only: true`: the batch may run on a replica.
    pub read_only: bool,
    /// `Neon-Batch-Deferrable: true`.
    pub deferrable: bool,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlRequest {
    /// The statements; one unless `batch`.
    pub statements: Vec<Statement>,
    /// Whether the body was `{"queries": [...]}` (one transaction, `{"results": [...]}`).
    pub batch: bool,
    /// Rows as arrays instead of objects (`Neon-Array-Mode`).
    pub array_mode: bool,
    /// Values as PostgreSQL text (`Neon-Raw-Text-Output`); otherwise numbers, booleans and
    /// JSON are converted to JSON values.
    pub raw_text: bool,
    /// Batch transaction options.
    pub txn: TxnOptions,
    /// The tenant.
    pub tenant: Tenant,
}

/// Why a request was refused before anything ran. All map to 400, except limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlRequestError {
    /// The body is not the expected JSON.
    #[error("invalid request body: {0}")]
    Body(String),
    /// No `Neon-Connection-String` header.
    #[error(
        "missing Neon-Connection-String header (postgres://user:password@project.host/database)"
    )]
    NoConnectionString,
    /// The connection string does not parse or lacks a part.
    #[error("invalid Neon-Connection-String: {0}")]
    ConnectionString(String),
    /// A `Neon-*` header has a value it does not accept.
    #[error("invalid {name} header: {value:?}")]
    Header {
        /// Header name.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// A query is longer than the limit.
    #[error("query is {length} bytes, over the limit of {limit}")]
    QueryTooLong {
        /// Its length.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many parameters.
    #[error("{count} parameters, over the limit of {limit}")]
    TooManyParams {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch is empty or too long.
    #[error("a batch needs 1 to {limit} queries, got {count}")]
    BatchSize {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    query: String,
    #[serde(default)]
    params: Vec<serde_json::Value>,
    #[serde(default, rename = "arrayMode")]
    array_mode: Option<bool>,
}

/// The body as sent: one statement (`query`, `params`, `arrayMode`) or a batch
/// (`queries`). One struct rather than an untagged enum: serde would buffer the body and
/// try each shape in turn (an error built and dropped for every single query), and its
/// error for a body of neither shape names neither.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    query: Option<String>,
    params: Option<Vec<serde_json::Value>>,
    #[serde(rename = "arrayMode")]
    array_mode: Option<bool>,
    queries: Option<Vec<QueryBody>>,
}

impl Body {
    /// The statements and whether they are a batch.
    fn statements(self) -> Result<(Vec<QueryBody>, bool), SqlRequestError> {
        match (self.query, self.queries) {
            (Some(query), None) => Ok((
                vec![QueryBody {
                    query,
                    params: self.params.unwrap_or_default(),
                    array_mode: self.array_mode,
                }],
                false,
            )),
            (None, Some(queries)) if self.params.is_none() && self.array_mode.is_none() => {
                Ok((queries, true))
            }
            (None, Some(_)) => Err(SqlRequestError::Body(
                "a batch has only `queries`; `params` and `arrayMode` go in each query".into(),
            )),
            (Some(_), Some(_)) => Err(SqlRequestError::Body(
                "give either `query` or `queries`, not both".into(),
            )),
            (None, None) => Err(SqlRequestError::Body("missing field `query`".into())),
        }
    }
}

/// Parses headers and body.
pub fn parse(
    headers: &HeaderMap,
    body: &[u8],
    limits: &SqlLimits,
    tenants: &Memo<Tenant>,
) -> Result<SqlRequest, SqlRequestError> {
    let cs =
        header(headers, "neon-connection-string").ok_or(SqlRequestError::NoConnectionString)?;
    let tenant = tenants.get_or_try(cs, || tenant(cs))?;
    parse_for(headers, body, limits, tenant)
}

/// Whether the request names its tenant in `Neon-Connection-String`.
pub fn has_connection_string(headers: &HeaderMap) -> bool {
    header(headers, "neon-connection-string").is_some()
}

/// Parses headers and body for a tenant found otherwise (an API key).
pub fn parse_for(
    headers: &HeaderMap,
    body: &[u8],
    limits: &SqlLimits,
    tenant: Tenant,
) -> Result<SqlRequest, SqlRequestError> {
    let array_mode = flag(headers, "neon-array-mode")?;
    let raw_text = flag(headers, "neon-raw-text-output")?;
    let txn = TxnOptions {
        isolation: isolation(headers)?,
        read_only: flag(headers, "neon-batch-read-only")?,
        deferrable: flag(headers, "neon-batch-deferrable")?,
    };
    let body: Body =
        serde_json::from_slice(body).map_err(|e| SqlRequestError::Body(e.to_string()))?;
    let (queries, batch) = body.statements()?;
    if batch && (queries.is_empty() || queries.len() > limits.max_batch) {
        return Err(SqlRequestError::BatchSize {
            count: queries.len(),
            limit: limits.max_batch,
        });
    }
    let statements = queries
        .into_iter()
        .map(|q| {
            if q.query.len() > limits.max_query_bytes {
                return Err(SqlRequestError::QueryTooLong {
                    length: q.query.len(),
                    limit: limits.max_query_bytes,
                });
            }
            if q.params.len() > limits.max_params {
                return Err(SqlRequestError::TooManyParams {
                    count: q.params.len(),
                    limit: limits.max_params,
                });
            }
            Ok(Statement {
                sql: q.query,
                params: q.params.iter().map(param_text).collect(),
                array_mode: q.array_mode,
                kind: Cell::new(None),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(SqlRequest {
        statements,
        batch,
        array_mode,
        raw_text,
        txn,
        tenant,
    })
}

/// A JSON parameter as the text PostgreSQL will parse: strings as they are, numbers and
/// booleans in their JSON spelling, arrays and objects as JSON text, null as NULL.
fn param_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn flag(headers: &HeaderMap, name: &'static str) -> Result<bool, SqlRequestError> {
    match header(headers, name).map(str::trim) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(SqlRequestError::Header {
            name,
            value: v.to_string(),
        }),
    }
}

fn isolation(headers: &HeaderMap) -> Result<Option<&'static str>, SqlRequestError> {
    let Some(v) = header(headers, "neon-batch-isolation-level") else {
        return Ok(None);
    };
    let level = match v
        .trim()
        .to_ascii_lowercase()
        .replace(['_', '-'], " ")
        .as_str()
    {
        "serializable" => "SERIALIZABLE",
        "repeatable read" | "repeatableread" => "REPEATABLE READ",
        "read committed" | "readcommitted" => "READ COMMITTED",
        "read uncommitted" | "readuncommitted" => "READ UNCOMMITTED",
        _ => {
            return Err(SqlRequestError::Header {
                name: "Neon-Batch-Isolation-Level",
                value: v.to_string(),
            })
        }
    };
    Ok(Some(level))
}

fn tenant(s: &str) -> Result<Tenant, SqlRequestError> {
    let bad = |why: &str| SqlRequestError::ConnectionString(why.to_string());
    let parts = parse_parts(s).map_err(|e| match e {
        UrlError::NoHost => bad("no host"),
        UrlError::NoUser => bad("no user"),
        _ => bad("not a postgres:// URL"),
    })?;
    let database = parts.database.ok_or_else(|| bad("no database"))?;
    let (host, user, password) = (parts.host, parts.user, parts.password);
    let project = project_of(&host).unwrap_or_else(|| database.clone());
    Ok(Tenant {
        project,
        credentials: Credentials::new(database, user, password),
    })
}

/// The project a host names: its first label, when it has several and is not an address.
pub fn project_of(host: &str) -> Option<String> {
    if is_address(host) {
        return None;
    }
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && !rest.is_empty()).then(|| first.to_ascii_lowercase())
}

fn is_address(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[')
}

/// How the request's connection string named its project, and how to name another, for
/// a refusal such as `unknown_project`: `None` without a connection string that parses.
pub fn project_origin(headers: &HeaderMap) -> Option<String> {
    let parts = parse_parts(header(headers, "neon-connection-string")?).ok()?;
    let (host, database) = (parts.host, parts.database?);
    const FORM: &str = "postgres://role:password@PROJECT.any.host/database";
    const RESOLVED: &str = "ringgate does not resolve the host";
    Some(if project_of(&host).is_some() {
        format!(
            "it is the first label of the connection string's host {host:?} ({FORM}; {RESOLVED})"
        )
    } else {
        let why = match is_address(&host) {
            true => format!("host {host} is an IP address"),
            false => format!("host {host:?} is a single label"),
        };
        format!(
            "the connection string's {why}, so the project was taken from the database \
             name {database:?}; to name a project, make it the host's first label: \
             {FORM} ({RESOLVED})"
        )
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    /// Parsing with a fresh memo table.
    fn parse(
        headers: &HeaderMap,
        body: &[u8],
        limits: &SqlLimits,
    ) -> Result<SqlRequest, SqlRequestError> {
        super::parse(headers, body, limits, &Memo::new())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    const CS: (&str, &str) = (
        "neon-connection-string",
        "postgres://alpha_owner:pw@alpha.db.local/tenant_alpha",
    );

    #[test]
    fn single_query_with_params_and_flags() {
        let h = headers(&[
            CS,
            ("neon-array-mode", "true"),
            ("neon-raw-text-output", "true"),
        ]);
        let r = parse(
            &h,
            br#"{"query":"select $1, $2, $3, $4","params":["a", 1.5, null, true]}"#,
            &SqlLimits::default(),
        )
        .unwrap();
        assert!(!r.batch && r.array_mode && r.raw_text);
        assert_eq!(r.tenant.project, "alpha");
        assert_eq!(r.tenant.credentials.database, "tenant_alpha");
        assert_eq!(
            r.statements[0].params,
            vec![
                Some("a".into()),
                Some("1.5".into()),
                None,
                Some("true".into())
            ]
        );
    }

    #[test]
    fn batch_and_transaction_headers() {
        let h = headers(&[
            CS,
            ("neon-batch-isolation-level", "RepeatableRead"),
            ("neon-batch-read-only", "true"),
            ("neon-batch-deferrable", "true"),
        ]);
        let r = parse(&h, br#"{"queries":[{"query":"select 1"},{"query":"select $1","params":[2],"arrayMode":true}]}"#, &SqlLimits::default()).unwrap();
        assert!(r.batch);
        assert_eq!(r.statements.len(), 2);
        assert_eq!(r.statements[1].array_mode, Some(true));
        assert_eq!(
            r.txn,
            TxnOptions {
                isolation: Some("REPEATABLE READ"),
                read_only: true,
                deferrable: true
            }
        );
    }

    #[test]
    fn project_comes_from_host_or_database() {
        assert_eq!(project_of("alpha.db.example.com").as_deref(), Some("alpha"));
        assert_eq!(project_of("127.0.0.1"), None);
        assert_eq!(project_of("localhost"), None);
        let h = headers(&[(
            "neon-connection-string",
            "postgres://u:p@127.0.0.1:8080/tenant_beta",
        )]);
        assert_eq!(
            parse(&h, br#"{"query":"select 1"}"#, &SqlLimits::default())
                .unwrap()
                .tenant
                .project,
            "tenant_beta"
        );
    }

    #[test]
    fn project_origin_says_where_the_project_came_from() {
        let origin = |cs: &'static str| project_origin(&headers(&[("neon-connection-string", cs)]));
        let label = origin("postgres://u:p@gamma.localtest.me/tenant_gamma").unwrap();
        assert!(
            label.starts_with(
                "it is the first label of the connection string's host \"gamma.localtest.me\""
            ) && label.contains("PROJECT.any.host"),
            "{label}"
        );
        for (cs, host) in [
            (
                "postgres://u:p@127.0.0.1:8080/tenant_alpha",
                "host 127.0.0.1 is an IP address",
            ),
            (
                "postgres://u:p@[::1]/tenant_alpha",
                "host ::1 is an IP address",
            ),
            (
                "postgres://u:p@localhost/tenant_alpha",
                "host \"localhost\" is a single label",
            ),
        ] {
            let said = origin(cs).unwrap();
            assert!(
                said.contains(host)
                    && said.contains("taken from the database name \"tenant_alpha\"")
                    && said.contains("PROJECT.any.host"),
                "{cs}: {said}"
            );
        }
        assert_eq!(project_origin(&HeaderMap::new()), None);
        assert_eq!(origin("nonsense"), None);
    }

    #[test]
    fn bad_requests_are_refused_with_reasons() {
        let l = SqlLimits {
            max_query_bytes: 10,
            max_params: 1,
            max_batch: 2,
            ..SqlLimits::default()
        };
        let ok = headers(&[CS]);
        assert_eq!(
            parse(&HeaderMap::new(), br#"{"query":"x"}"#, &l),
            Err(SqlRequestError::NoConnectionString)
        );
        let bad_cs = headers(&[("neon-connection-string", "nonsense")]);
        assert!(matches!(
            parse(&bad_cs, br#"{"query":"x"}"#, &l),
            Err(SqlRequestError::ConnectionString(_))
        ));
        let no_db = headers(&[("neon-connection-string", "postgres://u:p@h.x")]);
        assert!(matches!(
            parse(&no_db, br#"{"query":"x"}"#, &l),
            Err(SqlRequestError::ConnectionString(_))
        ));
        assert!(matches!(
            parse(&ok, b"not json", &l),
            Err(SqlRequestError::Body(_))
        ));
        assert!(matches!(
            parse(&ok, br#"{"sql":"x"}"#, &l),
            Err(SqlRequestError::Body(m)) if m.contains("unknown field `sql`")
        ));
        for (body, says) in [
            (&br#"{}"#[..], "missing field `query`"),
            (br#"{"params":[1]}"#, "missing field `query`"),
            (br#"{"query":"x","queries":[]}"#, "not both"),
            (
                br#"{"queries":[{"query":"x"}],"params":[1]}"#,
                "go in each query",
            ),
            (
                br#"{"queries":[{"query":"x","sql":1}]}"#,
                "unknown field `sql`",
            ),
            (br#"{"query":7}"#, "invalid type"),
        ] {
            assert!(
                matches!(parse(&ok, body, &l), Err(SqlRequestError::Body(ref m)) if m.contains(says)),
                "{}: {:?}",
                String::from_utf8_lossy(body),
                parse(&ok, body, &l).err()
            );
        }
        assert!(matches!(
            parse(&ok, br#"{"query":"select 1234567890"}"#, &l),
            Err(SqlRequestError::QueryTooLong { .. })
        ));
        assert!(matches!(
            parse(&ok, br#"{"query":"x","params":[1,2]}"#, &l),
            Err(SqlRequestError::TooManyParams { .. })
        ));
        assert!(matches!(
            parse(&ok, br#"{"queries":[]}"#, &l),
            Err(SqlRequestError::BatchSize { .. })
        ));
        let bad_flag = headers(&[CS, ("neon-array-mode", "yes please")]);
        assert!(matches!(
            parse(&bad_flag, br#"{"query":"x"}"#, &l),
            Err(SqlRequestError::Header { .. })
        ));
        let bad_iso = headers(&[CS, ("neon-batch-isolation-level", "chaos")]);
        assert!(matches!(
            parse(&bad_iso, br#"{"query":"x"}"#, &l),
            Err(SqlRequestError::Header { .. })
        ));
    }
}
