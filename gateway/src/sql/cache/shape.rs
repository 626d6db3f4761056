//! A statement's shape: its text with every number and string literal replaced by `?`.
//! What a statement writes (the tables it names, the functions it calls) does not depend
//! on its literals, so [`super::local::QueryCache::written`] remembers it per shape: a
//! client sending `... WHERE aid = 1`, `... WHERE aid = 2`, ... over the simple query
//! protocol (pgbench's default, most ORMs' unparameterised queries) has its text parsed
//! once instead of once per value.
//!
//! The lexer here is deliberately small: where it could be wrong about what is a literal
//! (dollar quotes, backslashes, comments, strings with a prefix such as `E'...'`, a number
//! touching a name) it gives up, and the caller keys by the whole text. Hand-written: a
//! full SQL tokenizer (sqlparser's) costs about what the parse it would save.

use std::borrow::Cow;

/// `sql` with each number and standard-conforming string literal replaced by `?`; `None`
/// when the text holds something this lexer does not follow exactly. A shape is its own
/// shape, so no text this gives up on (and that a caller keys by whole) equals a shape.
/// Allocates only when there is a literal to replace (a parameterised statement's `$1`
/// ends the scan at once).
pub fn without_literals(sql: &str) -> Option<Cow<'_, str>> {
    let b = sql.as_bytes();
    let mut out = String::new();
    let mut copied = 0; // `sql[copied..i]` is still to copy
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev = i.checked_sub(1).map(|p| b[p]);
        match c {
            b'$' | b'\\' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'\'' => {
                // A prefix (E, U&, B, X, N) changes how the string reads.
                if prev.is_some_and(|p| is_ident(p) || p == b'&') {
                    return None;
                }
                let end = quoted_end(b, i, b'\'')?;
                out.reserve(sql.len() - copied);
                out.push_str(&sql[copied..i]);
                out.push('?');
                copied = end;
                i = end;
            }
            b'"' => i = quoted_end(b, i, b'"')?,
            b'0'..=b'9' if prev.is_some_and(is_ident) => i += 1,
            b'0'..=b'9' => {
                if prev == Some(b'.') {
                    return None;
                }
                let end = number_end(b, i);
                if b.get(end).is_some_and(|&n| is_ident(n) || n == b'.') {
                    return None;
                }
                out.reserve(sql.len() - copied);
                out.push_str(&sql[copied..i]);
                out.push('?');
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return Some(Cow::Borrowed(sql));
    }
    out.push_str(&sql[copied..]);
    Some(Cow::Owned(out))
}

/// A byte of a name (PostgreSQL takes any non-ASCII byte as a letter).
fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Just past the quote closing the one at `start` (a doubled quote is one quote inside);
/// `None` when it is not closed.
fn quoted_end(b: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// Just past the number starting at `start`: digits, a fraction, an exponent.
fn number_end(b: &[u8], start: usize) -> usize {
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        if b.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            i = digits(i + 1 + sign);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::without_literals as shape;

    #[test]
    fn numbers_and_strings_become_placeholders() {
        let cases = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 8412;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = ?;",
            ),
            (
                "update t set a = 'it''s', b = 1.5e-3 where id in (1,2)",
                "update t set a = ?, b = ? where id in (?,?)",
            ),
            ("select -7, 3.", "select -?, ?"),
            (
                "SELECT * FROM t1 JOIN \"t 2\" USING (c3)",
                "SELECT * FROM t1 JOIN \"t 2\" USING (c3)",
            ),
            ("select \"a\"\"9\", 9 from x", "select \"a\"\"9\", ? from x"),
            ("select 'é', ü1 from ñ", "select ?, ü1 from ñ"),
        ];
        for (sql, want) in cases {
            assert_eq!(shape(sql).as_deref(), Some(want), "{sql}");
            // A shape is its own shape, so no text kept whole (`None`) equals one.
            assert_eq!(shape(want).as_deref(), Some(want), "{want}");
        }
    }

    #[test]
    fn texts_it_cannot_follow_exactly_are_kept_whole() {
        for sql in [
            "select $$ it's $$",
            "select $1",
            "select 'a\\'' from t",
            "select E'\\n'",
            "select U&'d\\0061t'",
            "select x'1f', b'1'",
            "select 1 -- it's",
            "select /* ' */ 1",
            "select 'open",
            "select \"open",
            "select 1abc",
            "select .5",
            "select 1..2",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    #[test]
    fn statements_that_differ_in_more_than_literals_differ_in_shape() {
        let pairs = [
            ("delete from a where x = 1", "delete from b where x = 1"),
            ("select f(1)", "select g(1)"),
            ("select 1 from t", "select 1 from t2"),
            ("select 'a' from t", "select \"a\" from t"),
        ];
        for (a, b) in pairs {
            assert_ne!(shape(a), shape(b), "{a} / {b}");
        }
        assert_eq!(
            shape("insert into t values (1, 'x')"),
            shape("insert into t values (22, 'a much longer one')")
        );
    }
}
