//! Runs statements on a pooled connection and renders rows as PostgreSQL text.

use std::{future::poll_fn, pin::pin};

use bytes::BytesMut;
use futures_core::Stream;
use ringgate_pool::PgConn;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

use super::{
    classify::command,
    request::Statement,
    text::{binary_to_text, supported, RawValue, TextError},
};

/// A column of a result, as the driver describes it.
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
}

/// One statement's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResult {
    /// Command tag's verb (`SELECT`, `INSERT`, ...).
    pub command: String,
    /// Rows returned or affected.
    pub row_count: u64,
    /// Columns.
    pub fields: Vec<Field>,
    /// Values in PostgreSQL text format; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Preparing failed: nothing ran (a syntax error, or the connection was already gone).
    #[error(transparent)]
    Prepare(tokio_postgres::Error),
    /// Executing failed, or the connection broke while the statement ran.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// A result column has a type we cannot render.
    #[error(transparent)]
    Text(#[from] TextError),
    /// The result is larger than the response limit.
    #[error("response exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Wrong number of parameters.
    #[error("query has {expected} parameters but {given} were supplied")]
    ParamCount {
        /// What the statement needs.
        expected: usize,
        /// What the request gave.
        given: usize,
    },
}

impl ExecError {
    /// The PostgreSQL error behind it, if any.
    pub fn pg(&self) -> Option<&tokio_postgres::Error> {
        match self {
            ExecError::Prepare(e) | ExecError::Db(e) => Some(e),
            _ => None,
        }
    }
}

/// A parameter sent in text format, for the server to parse as the type it inferred.
#[derive(Debug)]
struct TextParam<'a>(Option<&'a str>);

impl ToSql for TextParam<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            None => Ok(IsNull::Yes),
            Some(s) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// A statement prepared on one connection, with its result columns.
#[derive(Clone)]
pub struct Prepared {
    statement: tokio_postgres::Statement,
    fields: Vec<Field>,
}

/// Runs one statement; `budget` is the response bytes still allowed and shrinks.
pub async fn run(
    conn: &mut PgConn,
    st: &Statement,
    budget: &mut usize,
    limit: usize,
) -> Result<QueryResult, ExecError> {
    let prepared = prepare(conn, st).await?;
    execute(conn.client(), prepared, st, budget, limit).await
}

/// Prepares `st` on `conn` (from the connection's cache when it was prepared before) and
/// checks its parameter count and column types.
pub async fn prepare(conn: &mut PgConn, st: &Statement) -> Result<Prepared, ExecError> {
    let statement = conn
        .prepare_cached(&st.sql)
        .await
        .map_err(ExecError::Prepare)?;
    if statement.params().len() != st.params.len() {
        return Err(ExecError::ParamCount {
            expected: statement.params().len(),
            given: st.params.len(),
        });
    }
    let fields: Vec<Field> = statement
        .columns()
        .iter()
        .map(|c| Field {
            name: c.name().to_string(),
            type_oid: c.type_().oid(),
            table_oid: c.table_oid().unwrap_or(0),
            column_id: c.column_id().unwrap_or(0),
            type_modifier: c.type_modifier(),
        })
        .collect();
    if let Some(f) = fields.iter().find(|f| !supported(f.type_oid)) {
        return Err(TextError::Unsupported(f.type_oid).into());
    }
    Ok(Prepared { statement, fields })
}

/// Executes a prepared statement. Takes the client by shared reference, so several
/// statements can be in flight on one connection (tokio-postgres sends them in one write).
pub async fn execute(
    client: &tokio_postgres::Client,
    prepared: Prepared,
    st: &Statement,
    budget: &mut usize,
    limit: usize,
) -> Result<QueryResult, ExecError> {
    let Prepared { statement, fields } = prepared;
    let params = st.params.iter().map(|p| TextParam(p.as_deref()));
    let stream = client.query_raw(&statement, params).await?;
    let mut stream = pin!(stream);
    let mut rows = Vec::new();
    while let Some(row) = poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        let row = row?;
        let mut values = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let value = match row.try_get::<_, Option<RawValue<'_>>>(i)? {
                None => None,
                Some(raw) => {
                    let mut s = String::new();
                    binary_to_text(f.type_oid, raw.0, &mut s)?;
                    Some(s)
                }
            };
            let cost = value.as_ref().map_or(4, |v| v.len() + 2) + f.name.len();
            *budget = budget
                .checked_sub(cost)
                .ok_or(ExecError::TooLarge { limit })?;
            values.push(value);
        }
        rows.push(values);
    }
    let row_count = stream.rows_affected().unwrap_or(rows.len() as u64);
    Ok(QueryResult {
        command: command(&st.sql),
        row_count,
        fields,
        rows,
    })
}
