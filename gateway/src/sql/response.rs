//! Results and errors in the JSON shapes Neon's serverless driver reads.

use http::{header, HeaderValue, StatusCode};
use std::fmt::Write as _;

use ringgate_pool::DbError;
use serde_json::{json, Map, Value};

use super::exec::QueryResult;
use crate::http::Response;

/// Appends `s` as a JSON string.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a value: text as a string, or (without raw text output) booleans, integers,
/// finite floats and JSON documents as native JSON.
fn push_value(out: &mut String, v: &Option<String>, oid: u32, raw_text: bool) {
    let Some(s) = v else {
        return out.push_str("null");
    };
    if !raw_text {
        match oid {
            16 => return out.push_str(if s == "t" { "true" } else { "false" }),
            21 | 23 | 26 if !s.is_empty() => return out.push_str(s),
            700 | 701 if s.parse::<f64>().is_ok_and(f64::is_finite) => return out.push_str(s),
            114 | 3802 if serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok() => {
                return out.push_str(s)
            }
            _ => {}
        }
    }
    push_str(out, s);
}

/// Appends one result as `{command, rowCount, rows, fields, rowAsArray}`.
pub fn write_result(out: &mut String, r: &QueryResult, array_mode: bool, raw_text: bool) {
    out.push_str("{\"command\":");
    push_str(out, &r.command);
    let _ = write!(out, ",\"rowCount\":{},\"rows\":[", r.row_count);
    for (i, row) in r.rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push(if array_mode { '[' } else { '{' });
        for (j, (v, f)) in row.iter().zip(&r.fields).enumerate() {
            if j > 0 {
                out.push(',');
            }
            if !array_mode {
                push_str(out, &f.name);
                out.push(':');
            }
            push_value(out, v, f.type_oid, raw_text);
        }
        out.push(if array_mode { ']' } else { '}' });
    }
    out.push_str("],\"fields\":[");
    for (i, f) in r.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        push_str(out, &f.name);
        let _ = write!(
            out,
            ",\"dataTypeID\":{},\"tableID\":{},\"columnID\":{},\"dataTypeSize\":{},\"dataTypeModifier\":{},\"format\":\"text\"}}",
            f.type_oid,
            f.table_oid,
            f.column_id,
            f.type_size,
            f.type_modifier
        );
    }
    let _ = write!(out, "],\"rowAsArray\":{array_mode}}}");
}

/// A 200 response with one result.
pub fn result_response(r: &QueryResult, array_mode: bool, raw_text: bool) -> Response {
    let mut out = String::with_capacity(256 + r.rows.len() * 32);
    write_result(&mut out, r, array_mode, raw_text);
    Response::new(StatusCode::OK, "application/json", out)
}

/// A 200 response with a batch's results, `{"results": [...]}`.
pub fn batch_response(results: &[String]) -> Response {
    let mut out = String::with_capacity(16 + results.iter().map(String::len).sum::<usize>());
    out.push_str("{\"results\":[");
    out.push_str(&results.join(","));
    out.push_str("]}");
    Response::new(StatusCode::OK, "application/json", out)
}

/// A server's refusal of a new connection: a failed authentication (wrong password, no such
/// role: PostgreSQL does not say which) is 401, a known identity that may not connect
/// (no CONNECT on the database, no such database, too many connections for the role) 403,
/// anything else as [`db_error`].
pub fn startup_error(e: &DbError) -> Response {
    let sqlstate = e.code.as_str();
    let (status, code, message) = match sqlstate {
        "28P01" | "28000" => (
            StatusCode::UNAUTHORIZED,
            "authentication_failed",
            "the database refused the credentials: wrong password or no such role".to_string(),
        ),
        "42501" | "3D000" | "53300" => (
            StatusCode::FORBIDDEN,
            "connection_refused",
            format!("the database refused the connection: {}", e.message),
        ),
        _ => return db_error(e),
    };
    Response::json(
        status,
        &json!({"code": code, "message": message, "sqlstate": sqlstate}),
    )
}

/// PostgreSQL's error as the driver expects it, HTTP 400.
pub fn db_error(e: &DbError) -> Response {
    let mut m = Map::new();
    m.insert("message".into(), e.message.as_str().into());
    m.insert("code".into(), e.code.as_str().into());
    m.insert("severity".into(), e.severity.as_str().into());
    let optional = [
        ("detail", &e.detail),
        ("hint", &e.hint),
        ("position", &e.position),
        ("where", &e.where_),
        ("schema", &e.schema),
        ("table", &e.table),
        ("column", &e.column),
        ("dataType", &e.datatype),
        ("constraint", &e.constraint),
        ("routine", &e.routine),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            m.insert(k.into(), v.as_str().into());
        }
    }
    Response::json(StatusCode::BAD_REQUEST, &Value::Object(m))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::exec::Field;

    fn field(name: &str, oid: u32) -> Field {
        Field {
            name: name.into(),
            type_oid: oid,
            table_oid: 0,
            column_id: 0,
            type_modifier: -1,
            type_size: if oid == 23 { 4 } else { -1 },
        }
    }

    #[test]
    fn results_are_valid_json_in_the_driver_shape() {
        let r = QueryResult {
            command: "SELECT".into(),
            row_count: 2,
            fields: vec![
                field("n", 23),
                field("t \"q\"", 25),
                field("j", 3802),
                field("f", 701),
                field("b", 16),
            ],
            rows: vec![
                vec![
                    Some("1".into()),
                    Some("a\"b\\c\n\u{1}é".into()),
                    Some("{\"k\": [1]}".into()),
                    Some("NaN".into()),
                    Some("t".into()),
                ],
                vec![None, None, None, Some("1.5".into()), Some("f".into())],
            ],
        };
        let mut out = String::new();
        write_result(&mut out, &r, false, false);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["rows"][0],
            json!({"n": 1, "t \"q\"": "a\"b\\c\n\u{1}é", "j": {"k": [1]}, "f": "NaN", "b": true})
        );
        assert_eq!(
            v["rows"][1],
            json!({"n": null, "t \"q\"": null, "j": null, "f": 1.5, "b": false})
        );
        assert_eq!(
            v["fields"][0],
            json!({"name": "n", "dataTypeID": 23, "tableID": 0, "columnID": 0, "dataTypeSize": 4, "dataTypeModifier": -1, "format": "text"})
        );
        assert_eq!(
            (
                v["command"].as_str(),
                v["rowCount"].as_u64(),
                v["rowAsArray"].as_bool()
            ),
            (Some("SELECT"), Some(2), Some(false))
        );
        let mut out = String::new();
        write_result(&mut out, &r, true, true);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["rows"][0],
            json!(["1", "a\"b\\c\n\u{1}é", "{\"k\": [1]}", "NaN", "t"])
        );
        assert_eq!(v["rowAsArray"], true);
    }
}
