//! Runs statements on a pooled connection. Values come back as the server's own text output
//! (the connection asks for text-format results), for every type, extensions included.

use ringgate_pool::{Answer, PgConn, PgError};

use super::request::Statement;

/// A column of a result, as the server describes it (`RowDescription`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Source table OID, 0 when none.
    pub table_oid: u32,
    /// Source column number, 0 when none.
    pub column_id: i16,
    /// Type modifier, -1 when none.
    pub type_modifier: i32,
    /// Type size (`pg_type.typlen`, negative for variable length).
    pub type_size: i16,
}

/// One statement's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResult {
    /// The command tag's verb (`SELECT`, `INSERT`, ...), from the server's CommandComplete.
    pub command: String,
    /// Rows returned or affected, from the command tag.
    pub row_count: u64,
    /// Columns.
    pub fields: Vec<Field>,
    /// Values in PostgreSQL text format; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// Converts the connection's result.
    pub fn from_server(r: ringgate_pool::QueryResult) -> Self {
        let fields = r
            .columns
            .iter()
            .map(|c| Field {
                name: c.name.clone(),
                type_oid: c.type_oid,
                table_oid: c.table_oid,
                column_id: c.column_id,
                type_modifier: c.type_modifier,
                type_size: c.type_size,
            })
            .collect();
        Self {
            command: r.command,
            row_count: r.row_count,
            fields,
            rows: r.rows,
        }
    }

    /// The response bytes it counts against the limit: each value's length plus quotes (4
    /// for a NULL) and its column's name.
    fn cost(&self) -> usize {
        self.rows
            .iter()
            .flat_map(|row| row.iter().zip(&self.fields))
            .map(|(v, f)| v.as_ref().map_or(4, |v| v.len() + 2) + f.name.len())
            .sum()
    }
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The statement provably did not execute: it was not sent, or the server refused it
    /// before binding (a syntax error, a wrong parameter count, a session already ended).
    #[error(transparent)]
    NotRun(PgError),
    /// Executing failed, or the connection broke after the statement was sent.
    #[error(transparent)]
    Db(PgError),
    /// The result is larger than the response limit.
    #[error("response exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

impl ExecError {
    /// The connection's error behind it, if any.
    pub fn pg(&self) -> Option<&PgError> {
        match self {
            ExecError::NotRun(e) | ExecError::Db(e) => Some(e),
            ExecError::TooLarge { .. } => None,
        }
    }

    /// Reads a connection's answer; `limit` is the request's response limit.
    pub fn check(answer: Answer, limit: usize) -> Result<QueryResult, ExecError> {
        match answer.result {
            Ok(r) => Ok(QueryResult::from_server(r)),
            Err(PgError::TooLarge { .. }) => Err(ExecError::TooLarge { limit }),
            Err(e) if answer.may_have_run => Err(ExecError::Db(e)),
            Err(e) => Err(ExecError::NotRun(e)),
        }
    }
}

/// Runs one statement (prepared once per connection, in the same round trip as its
/// execution); `budget` is the response bytes still allowed and shrinks.
pub async fn run(
    conn: &PgConn,
    st: &Statement,
    budget: &mut usize,
    limit: usize,
) -> Result<QueryResult, ExecError> {
    let answer = conn.query(&st.sql, &st.params, *budget).await;
    let r = ExecError::check(answer, limit)?;
    *budget = budget.saturating_sub(r.cost());
    Ok(r)
}
