//! Results and errors in the JSON shapes Neon's serverless driver reads.

use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};
use tokio_postgres::error::DbError;

use super::exec::{Field, QueryResult};
use crate::http::Response;

/// Storage size of built-in types, as `pg_type.typlen` (−1 for variable length).
fn type_size(oid: u32) -> i16 {
    match oid {
        16 | 18 => 1,
        21 => 2,
        23 | 26 | 700 | 1082 => 4,
        20 | 701 | 1083 | 1114 | 1184 => 8,
        1186 | 1266 => 12,
        2950 => 16,
        19 => 64,
        _ => -1,
    }
}

fn field_json(f: &Field) -> Value {
    json!({
        "name": f.name,
        "dataTypeID": f.type_oid,
        "tableID": f.table_oid,
        "columnID": f.column_id,
        "dataTypeSize": type_size(f.type_oid),
        "dataTypeModifier": f.type_modifier,
        "format": "text",
    })
}

/// A value as JSON: text as is, or (without raw text output) booleans, small numbers and
/// JSON documents as native JSON values.
fn value_json(v: &Option<String>, oid: u32, raw_text: bool) -> Value {
    let Some(s) = v else { return Value::Null };
    if raw_text {
        return Value::String(s.clone());
    }
    match oid {
        16 => Value::Bool(s == "t"),
        21 | 23 | 26 => s
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.clone())),
        700 | 701 => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(s.clone())),
        114 | 3802 => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        _ => Value::String(s.clone()),
    }
}

/// One result as `{command, rowCount, rows, fields, rowAsArray}`.
pub fn result_json(r: &QueryResult, array_mode: bool, raw_text: bool) -> Value {
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            if array_mode {
                Value::Array(
                    row.iter()
                        .zip(&r.fields)
                        .map(|(v, f)| value_json(v, f.type_oid, raw_text))
                        .collect(),
                )
            } else {
                let mut m = Map::with_capacity(row.len());
                for (v, f) in row.iter().zip(&r.fields) {
                    m.insert(f.name.clone(), value_json(v, f.type_oid, raw_text));
                }
                Value::Object(m)
            }
        })
        .collect();
    json!({
        "command": r.command,
        "rowCount": r.row_count,
        "rows": rows,
        "fields": r.fields.iter().map(field_json).collect::<Vec<_>>(),
        "rowAsArray": array_mode,
    })
}

/// PostgreSQL's error as the driver expects it, HTTP 400 (403 for authentication).
pub fn db_error(e: &DbError) -> Response {
    let mut m = Map::new();
    m.insert("message".into(), e.message().into());
    m.insert("code".into(), e.code().code().into());
    m.insert("severity".into(), e.severity().into());
    let optional = [
        ("detail", e.detail()),
        ("hint", e.hint()),
        ("where", e.where_()),
        ("schema", e.schema()),
        ("table", e.table()),
        ("column", e.column()),
        ("dataType", e.datatype()),
        ("constraint", e.constraint()),
        ("routine", e.routine()),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            m.insert(k.into(), v.into());
        }
    }
    if let Some(tokio_postgres::error::ErrorPosition::Original(p)) = e.position() {
        m.insert("position".into(), p.to_string().into());
    }
    let status = if e.code().code().starts_with("28") {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    };
    Response::json(status, &Value::Object(m))
}

/// A gateway error in the same shape: `{message, code}` (code is ours, not a SQLSTATE).
pub fn gateway_error(status: StatusCode, code: &str, message: &str) -> Response {
    Response::json(status, &json!({"message": message, "code": code}))
}

/// 503 with `Retry-After`.
pub fn unavailable(code: &str, message: &str, retry_after_secs: u32) -> Response {
    gateway_error(StatusCode::SERVICE_UNAVAILABLE, code, message)
        .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after_secs))
}
