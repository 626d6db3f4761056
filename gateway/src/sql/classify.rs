//! Read or write? Statements are classified with a real SQL parser (sqlparser, PostgreSQL
//! dialect). Only a single plain query with no locking clause, no data-modifying CTE, no
//! `SELECT INTO` and no known side-effecting function is a read; everything else, and
//! anything the parser cannot read, goes to the leader.

use std::ops::ControlFlow;

use sqlparser::{
    ast::{Expr, Query, SetExpr, Statement, Visit, Visitor},
    dialect::PostgreSqlDialect,
    parser::Parser,
};

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A read: a replica within the lag bound may serve it.
    Read,
    /// Anything else: the leader only.
    Write,
}

/// Functions that write, take locks or change session or server state.
const SIDE_EFFECTS: &[&str] = &[
    "nextval",
    "setval",
    "lastval",
    "pg_notify",
    "set_config",
    "setseed",
    "txid_current",
    "pg_current_xact_id",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_switch_wal",
    "pg_create_restore_point",
    "lo_import",
    "lo_export",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
];

/// Function name prefixes with side effects (advisory locks, dblink, stats resets).
const SIDE_EFFECT_PREFIXES: &[&str] =
    &["pg_advisory", "pg_try_advisory", "dblink", "pg_stat_reset"];

/// Classifies one SQL text.
pub fn classify(sql: &str) -> Kind {
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Kind::Write;
    };
    match statements.as_slice() {
        [st] => statement_kind(st),
        _ => Kind::Write,
    }
}

/// Classifies one parsed statement.
pub fn statement_kind(st: &Statement) -> Kind {
    match st {
        Statement::Query(q) if !selects_into(q) => match st.visit(&mut ReadOnly) {
            ControlFlow::Continue(()) => Kind::Read,
            ControlFlow::Break(()) => Kind::Write,
        },
        _ => Kind::Write,
    }
}

/// Whether a statement takes effect only when its transaction commits: exactly one plain
/// query or DML statement (`SELECT`, `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `VALUES`, ...).
/// Statements that commit on their own or end a transaction (`CALL`, `DO`, `VACUUM`,
/// `COMMIT`, `CREATE INDEX CONCURRENTLY`, ...) and anything the parser cannot read are not.
pub fn commits_with_transaction(sql: &str) -> bool {
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return false;
    };
    matches!(
        statements.as_slice(),
        [Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update { .. }
            | Statement::Delete(_)
            | Statement::Merge { .. }]
    )
}

fn selects_into(q: &Query) -> bool {
    matches!(q.body.as_ref(), SetExpr::Select(s) if s.into.is_some())
}

/// Breaks on anything that may write.
struct ReadOnly;

impl Visitor for ReadOnly {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let writes = !q.locks.is_empty()
            || matches!(
                q.body.as_ref(),
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
            )
            || selects_into(q);
        if writes {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        // Statements nested in a query (data-modifying CTEs) are writes.
        match s {
            Statement::Query(_) => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            let name = f.name.to_string().to_ascii_lowercase();
            let name = name.rsplit('.').next().unwrap_or(&name).trim_matches('"');
            if SIDE_EFFECTS.contains(&name)
                || SIDE_EFFECT_PREFIXES.iter().any(|p| name.starts_with(p))
            {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_dml_commits_with_its_transaction() {
        for sql in [
            "select 1",
            "insert into t values (1)",
            "with x as (delete from t returning *) insert into u select * from x",
            "update t set a = 1",
            "delete from t",
            "select nextval('s')",
        ] {
            assert!(commits_with_transaction(sql), "{sql}");
        }
        for sql in [
            "commit",
            "begin",
            "call p()",
            "do $$ begin commit; end $$",
            "vacuum t",
            "create index concurrently i on t (a)",
            "select 1; select 2",
            "not sql at all",
        ] {
            assert!(!commits_with_transaction(sql), "{sql}");
        }
    }

    #[test]
    fn plain_selects_are_reads() {
        for sql in [
            "select 1",
            "SELECT * FROM items WHERE id = $1",
            "with t as (select 1 as x) select x from t",
            "select count(*) from a join b on a.id = b.id group by 1 order by 1 limit 5",
            "select 1 union all select 2",
            "values (1), (2)",
            "select now(), pg_is_in_recovery(), currval('s')",
        ] {
            assert_eq!(classify(sql), Kind::Read, "{sql}");
        }
    }

    #[test]
    fn anything_that_may_write_goes_to_the_leader() {
        for sql in [
            "insert into t values (1)",
            "update t set x = 1",
            "delete from t",
            "select * from t for update",
            "select * from t for share",
            "with d as (delete from t returning *) select * from d",
            "with i as (insert into t values (1) returning id) select id from i",
            "select nextval('s')",
            "select public.setval('s', 1)",
            "select pg_advisory_lock(1)",
            "select pg_try_advisory_xact_lock(1)",
            "select x into newtable from t",
            "create table t (x int)",
            "begin",
            "select 1; select 2",
            "this is not sql",
            "",
            "explain analyze delete from t",
            "call proc()",
            "select set_config('a.b', 'c', false)",
        ] {
            assert_eq!(classify(sql), Kind::Write, "{sql}");
        }
    }
}
