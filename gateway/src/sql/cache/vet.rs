//! What sqlparser says about a statement for the cache: whether a read may be cached (no
//! volatile or unknown function, no system catalog, nothing it cannot vet), the tables it
//! reads, its normalised text and fingerprint; and the tables a write touches.

use std::{collections::BTreeSet, ops::ControlFlow};

use sqlparser::{
    ast::{
        visit_expressions_mut, visit_relations, Expr, ObjectName, Statement, TableFactor, Value,
        Visit, Visitor,
    },
    dialect::PostgreSqlDialect,
    parser::Parser,
};

use crate::{
    cache::Weigh,
    sql::classify::{statement_kind, Kind},
};

/// Functions a cached read may call: PostgreSQL built-ins whose result depends only on
/// their arguments and the rows read (immutable, or stable within one statement and not
/// on time, session or server state). Anything else (`now()`, `random()`, `nextval`,
/// `clock_timestamp`, `txid_current`, `current_setting`, user functions that may read
/// other tables) makes the read uncacheable.
const CACHEABLE_FUNCTIONS: &[&str] = &[
    "abs",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "every",
    "exp",
    "floor",
    "generate_series",
    "greatest",
    "initcap",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "jsonb_agg",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_typeof",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "nullif",
    "octet_length",
    "position",
    "power",
    "replace",
    "reverse",
    "right",
    "round",
    "row_to_json",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "to_json",
    "to_jsonb",
    "trim",
    "trunc",
    "unnest",
    "upper",
];

/// Built-ins that write nothing but may not be cached (time, randomness, session state,
/// formatting): a read calling them invalidates nothing. So do `pg_*` functions other than
/// the side-effecting ones the classifier calls writes. Any other function in a read may
/// be a user function that writes, so such a read invalidates its whole database.
const NON_WRITING_FUNCTIONS: &[&str] = &[
    "age",
    "array_append",
    "array_cat",
    "array_dims",
    "array_lower",
    "array_remove",
    "array_upper",
    "clock_timestamp",
    "col_description",
    "currval",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "current_user",
    "date_part",
    "date_trunc",
    "decode",
    "encode",
    "format",
    "format_type",
    "gen_random_uuid",
    "has_database_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "json_array_elements",
    "json_each",
    "jsonb_array_elements",
    "jsonb_each",
    "jsonb_object_keys",
    "jsonb_pretty",
    "jsonb_set",
    "now",
    "obj_description",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "random",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "session_user",
    "sha256",
    "statement_timestamp",
    "string_to_array",
    "timeofday",
    "to_char",
    "to_date",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "version",
];

/// String literals PostgreSQL reads as "the current time" when cast to a date/time type.
const TIME_WORDS: &[&str] = &["now", "today", "tomorrow", "yesterday"];

/// A read the cache may keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vetted {
    /// The statement as sqlparser prints it (whitespace, keyword case and comments
    /// normalised); part of the key.
    pub normalised: String,
    /// The normalised statement with every literal replaced by `?`: what rules match.
    pub fingerprint: String,
    /// 16 hex digits of FNV-1a over the fingerprint: a rule may name this instead.
    pub digest: String,
    /// Tables read (last name part; unquoted names lower-cased), sorted.
    pub tables: Vec<String>,
}

impl Weigh for Vetted {
    fn heap_bytes(&self) -> usize {
        self.normalised.capacity()
            + self.fingerprint.capacity()
            + self.digest.capacity()
            + self.tables.heap_bytes()
    }
}

/// What a write touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// These tables (every relation the statement names).
    Tables(Vec<String>),
    /// Anything: the parser could not bound it (DDL, `CALL`, `DO`, functions).
    Everything,
}

impl Weigh for Touched {
    fn heap_bytes(&self) -> usize {
        match self {
            Touched::Tables(t) => t.heap_bytes(),
            Touched::Everything => 0,
        }
    }
}

impl Touched {
    /// Both sets together.
    pub fn union(self, other: Touched) -> Touched {
        match (self, other) {
            (Touched::Tables(mut a), Touched::Tables(b)) => {
                a.extend(b);
                a.sort();
                a.dedup();
                Touched::Tables(a)
            }
            _ => Touched::Everything,
        }
    }
}

/// The read's verdict: `None` when it may not be cached.
pub fn vet_read(sql: &str) -> Option<Vetted> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Query(_)] = statements.as_slice() else {
        return None;
    };
    let mut check = Cacheable::default();
    if statements.visit(&mut check).is_break() {
        return None;
    }
    let normalised = statements[0].to_string();
    let _ = visit_expressions_mut(&mut statements, |e| {
        if let Expr::Value(v) = e {
            v.value = Value::Placeholder("?".into());
        }
        ControlFlow::<()>::Continue(())
    });
    let fingerprint = statements[0].to_string();
    Some(Vetted {
        normalised,
        digest: digest(&fingerprint),
        fingerprint,
        tables: check.tables.into_iter().collect(),
    })
}

/// The fingerprint a rule's pattern stands for: a 16-hex-digit digest as is, otherwise
/// the pattern's own fingerprint (so patterns may be written with any literals and
/// spacing); `None` when the pattern is neither.
pub fn rule_matcher(pattern: &str) -> Option<String> {
    let p = pattern.trim();
    if p.len() == 16 && p.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(p.to_ascii_lowercase());
    }
    vet_pattern(p)
}

fn vet_pattern(sql: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let _ = visit_expressions_mut(&mut statements, |e| {
        if let Expr::Value(v) = e {
            v.value = Value::Placeholder("?".into());
        }
        ControlFlow::<()>::Continue(())
    });
    Some(statements[0].to_string())
}

/// What the statements of `sql` (one, or several in a simple-protocol query) write: no
/// table for reads (as the classifier calls them, calling only built-ins) and for
/// transaction and session control, the tables a write names, everything for what the
/// parser cannot bound or read (DDL, `CALL`, `DO`, functions it does not know).
pub fn written(sql: &str) -> Touched {
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Touched::Everything;
    };
    statements
        .iter()
        .map(statement_writes)
        .fold(Touched::Tables(Vec::new()), Touched::union)
}

fn statement_writes(st: &Statement) -> Touched {
    match st {
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Touched::Tables(Vec::new()),
        // EXPLAIN ANALYZE runs its statement.
        Statement::Explain { statement, .. } => statement_writes(statement),
        _ if statement_kind(st) == Kind::Read && !calls_unknown(st) => Touched::Tables(Vec::new()),
        _ => touched_statement(st),
    }
}

/// Whether `st` calls a function that may be a user function (see
/// [`NON_WRITING_FUNCTIONS`]).
fn calls_unknown(st: &Statement) -> bool {
    let mut unknown = false;
    let _ = sqlparser::ast::visit_expressions(st, |e| {
        if let Expr::Function(f) = e {
            let name = function_name(&f.name);
            unknown |= !(CACHEABLE_FUNCTIONS.contains(&name.as_str())
                || NON_WRITING_FUNCTIONS.contains(&name.as_str())
                || name.starts_with("pg_"));
        }
        ControlFlow::<()>::Continue(())
    });
    unknown
}

fn touched_statement(st: &Statement) -> Touched {
    let bounded = matches!(
        st,
        Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update { .. }
            | Statement::Delete(_)
            | Statement::Merge { .. }
    );
    if !bounded {
        return Touched::Everything;
    }
    // A function other than the known built-ins may write anywhere.
    let mut unknown = false;
    let _ = sqlparser::ast::visit_expressions(st, |e| {
        if let Expr::Function(f) = e {
            if !CACHEABLE_FUNCTIONS.contains(&function_name(&f.name).as_str()) {
                unknown = true;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let mut tables = BTreeSet::new();
    let _ = visit_relations(st, |r| {
        tables.insert(table_name(r));
        ControlFlow::<()>::Continue(())
    });
    // A DML statement always names its table; a plain query (a read in a batch) may name
    // none and then touches nothing.
    let query = matches!(st, Statement::Query(_));
    if unknown || (tables.is_empty() && !query) {
        return Touched::Everything;
    }
    Touched::Tables(tables.into_iter().collect())
}

impl Touched {
    /// Whether nothing was written.
    pub fn is_nothing(&self) -> bool {
        matches!(self, Touched::Tables(t) if t.is_empty())
    }
}

/// The digest of a fingerprint: FNV-1a 64, stable across instances and versions.
pub fn digest(fingerprint: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in fingerprint.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A relation's table name: its last part, lower-cased unless quoted.
fn table_name(name: &ObjectName) -> String {
    match name.0.last().and_then(|p| p.as_ident()) {
        Some(id) if id.quote_style.is_some() => id.value.clone(),
        Some(id) => id.value.to_ascii_lowercase(),
        None => name.to_string().to_ascii_lowercase(),
    }
}

/// A function's name without schema or quotes, lower-cased.
fn function_name(name: &ObjectName) -> String {
    match name.0.last().and_then(|p| p.as_ident()) {
        Some(id) => id.value.to_ascii_lowercase(),
        None => name.to_string().to_ascii_lowercase(),
    }
}

/// Whether a relation lives in a system schema (or is a catalog named without one).
fn system(name: &ObjectName) -> bool {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| {
            p.as_ident()
                .map_or_else(|| p.to_string(), |i| i.value.clone())
                .to_ascii_lowercase()
        })
        .collect();
    parts
        .iter()
        .any(|p| p == "pg_catalog" || p == "information_schema" || p == "pg_temp")
        || parts.last().is_some_and(|t| t.starts_with("pg_"))
}

/// Breaks on anything a cached read may not contain; collects the tables read.
#[derive(Default)]
struct Cacheable {
    tables: BTreeSet<String>,
}

impl Visitor for Cacheable {
    type Break = ();

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        if system(r) {
            return ControlFlow::Break(());
        }
        self.tables.insert(table_name(r));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            TableFactor::Table {
                name, args, sample, ..
            } => {
                let known_function =
                    args.is_none() || CACHEABLE_FUNCTIONS.contains(&function_name(name).as_str());
                if known_function && sample.is_none() {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => {
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Break(()),
        }
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            if !CACHEABLE_FUNCTIONS.contains(&function_name(&f.name).as_str()) {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_value(&mut self, v: &sqlparser::ast::ValueWithSpan) -> ControlFlow<()> {
        match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s)
                if TIME_WORDS.contains(&s.trim().to_ascii_lowercase().as_str()) =>
            {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Whether a parameter value reads as "the current time" when the server types it as a
/// date or time (`'now'`, `'today'`, ...): such a read is not cached.
pub fn volatile_param(value: &str) -> bool {
    TIME_WORDS.contains(&value.trim().to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_reads_are_cacheable_with_their_tables() {
        let v = vet_read(
            "select  id, name FROM Items i join public.\"Tags\" t on t.id = i.id where i.id = $1",
        )
        .unwrap();
        assert_eq!(v.tables, vec!["Tags".to_string(), "items".to_string()]);
        let v2 = vet_read(
            "SELECT id, name\n FROM Items i JOIN public.\"Tags\" t ON t.id = i.id WHERE i.id = $1",
        )
        .unwrap();
        assert_eq!(v.normalised, v2.normalised);
        let a = vet_read("select count(*) from items where price > 10").unwrap();
        let b = vet_read("select count(*) from items where price > 99").unwrap();
        assert_ne!(a.normalised, b.normalised);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.digest, b.digest);
        assert_eq!(
            rule_matcher("SELECT count(*) FROM items WHERE price > 1"),
            Some(a.fingerprint.clone())
        );
        assert_eq!(rule_matcher(&a.digest), Some(a.digest.clone()));
        for sql in [
            "select 1",
            "with x as (select id from items) select * from x",
            "select * from generate_series(1, 3)",
            "select lower(name), coalesce(price, 0) from items order by 1 limit 5",
        ] {
            assert!(vet_read(sql).is_some(), "{sql}");
        }
    }

    #[test]
    fn volatile_or_unvetted_reads_are_not_cacheable() {
        for sql in [
            "select now()",
            "select current_timestamp",
            "select clock_timestamp()",
            "select random()",
            "select nextval('s')",
            "select txid_current()",
            "select pg_is_in_recovery()",
            "select * from items where created_at < 'now'::timestamptz",
            "select * from pg_stat_activity",
            "select * from pg_catalog.pg_class",
            "select my_function(1)",
            "select * from my_srf(1)",
            "select * from items tablesample system (10)",
            "select current_setting('role')",
            "select 1; select 2",
            "insert into items (name) values ('x')",
            "not sql",
        ] {
            assert!(vet_read(sql).is_none(), "{sql}");
        }
        assert!(volatile_param(" Now"));
        assert!(!volatile_param("alpha"));
    }

    #[test]
    fn writes_touch_the_tables_they_name() {
        assert_eq!(
            written("insert into Items (name) values ('x')"),
            Touched::Tables(vec!["items".into()])
        );
        assert_eq!(
            written("update items set price = p.price from prices p where p.id = items.id"),
            Touched::Tables(vec!["items".into(), "prices".into()])
        );
        assert_eq!(
            written("delete from public.orders where id = $1"),
            Touched::Tables(vec!["orders".into()])
        );
        for sql in [
            "create table t (x int)",
            "drop table items",
            "call p()",
            "do $$ begin end $$",
            "select my_writer()",
            "select nextval('s')",
            "truncate items",
            "garbage",
        ] {
            assert_eq!(written(sql), Touched::Everything, "{sql}");
        }
        assert_eq!(written("select 1"), Touched::Tables(vec![]));
        assert_eq!(
            Touched::Tables(vec!["a".into()]).union(Touched::Tables(vec!["b".into(), "a".into()])),
            Touched::Tables(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn what_a_wire_query_writes() {
        let none = Touched::Tables(vec![]);
        for sql in [
            "select v from items where id = $1",
            "begin",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "commit",
            "end",
            "rollback",
            "abort",
            "savepoint a; release savepoint a",
            "set search_path = x",
            "set local statement_timeout = 5",
            "show search_path",
            "discard all",
            "deallocate all",
            "explain select * from items",
            "fetch 10 from c",
            "close c",
            "select now(), random(), pg_is_in_recovery(), to_char(1, '9')",
            "",
        ] {
            assert_eq!(written(sql), none, "{sql}");
        }
        assert_eq!(
            written("begin; update Items set v = 'x'; insert into orders values (1); commit"),
            Touched::Tables(vec!["items".into(), "orders".into()])
        );
        assert_eq!(
            written("explain analyze delete from orders"),
            Touched::Tables(vec!["orders".into()])
        );
        assert_eq!(
            written("select * from items for update"),
            Touched::Tables(vec!["items".into()])
        );
        for sql in [
            "create table t (x int)",
            "select nextval('s')",
            "copy items from stdin",
            "truncate items",
            "call p()",
            "select my_writer(1)",
            "select * from items where id = my_lookup(2)",
            "not sql at all (",
        ] {
            assert_eq!(written(sql), Touched::Everything, "{sql}");
        }
    }
}
