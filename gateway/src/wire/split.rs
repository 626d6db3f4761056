//! The read/write split (`ringgate.projects.read_split`): where a transaction runs, from
//! its first statement. A plain read in autocommit (what `/sql`'s classifier calls a read)
//! and a transaction begun `READ ONLY` run on a replica within the lag bound; everything
//! else on the leader. A bare `BEGIN` is answered by ringgate and sent on with the
//! transaction's next statement, so a `SET TRANSACTION READ ONLY` there places the
//! transaction on a replica too. An autocommit read a replica refuses as a write (`25006`, e.g. a
//! function that writes) is rerun on the leader when nothing of its answer reached the
//! client (see [`crate::wire::relay`]).

use crate::sql::classify::{classify, Kind};

/// Where a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The leader.
    Leader,
    /// A replica; a `25006` is rerun on the leader when nothing was relayed yet.
    AutocommitRead,
    /// A replica, for a transaction the client began `READ ONLY` (its `25006` is its own).
    ReadOnlyTransaction,
}

/// Where a transaction whose first statement is `sql` runs, with the split on; `simple`
/// when it came as a simple `Query` (which may begin a transaction), not a `Parse`.
pub fn place(sql: &str, simple: bool) -> Placement {
    let lower = sql.trim().trim_end_matches(';').trim().to_ascii_lowercase();
    if simple && begins_read_only(&lower) {
        return Placement::ReadOnlyTransaction;
    }
    match classify(sql) {
        Kind::Read => Placement::AutocommitRead,
        Kind::Write => Placement::Leader,
    }
}

/// The words of one statement, lowercased (`None` when the text holds several).
fn words(sql: &str) -> Option<Vec<String>> {
    let lower = sql.trim().trim_end_matches(';').trim().to_ascii_lowercase();
    if lower.contains(';') {
        return None;
    }
    Some(
        lower
            .split(|c: char| c.is_ascii_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// The transaction modes of a `BEGIN`/`START TRANSACTION` (`None` for another statement).
fn begin_modes(words: &[String]) -> Option<&[String]> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let skip = match w.as_slice() {
        ["begin", "work" | "transaction", ..] => 2,
        ["begin", ..] => 1,
        ["start", "transaction", ..] => 2,
        _ => return None,
    };
    Some(&words[skip..])
}

/// Whether `modes` say `READ ONLY` (and not `READ WRITE`).
fn read_only(modes: &[String]) -> bool {
    let has = |a: &str, b: &str| modes.windows(2).any(|w| w[0] == a && w[1] == b);
    has("read", "only") && !has("read", "write")
}

/// Whether `lower` (one statement, lowercased, no trailing `;`) is `BEGIN`/`START
/// TRANSACTION` with `READ ONLY` among its modes.
fn begins_read_only(lower: &str) -> bool {
    words(lower)
        .as_deref()
        .and_then(begin_modes)
        .is_some_and(read_only)
}

/// Whether `sql` is a `BEGIN`/`START TRANSACTION` with no modes (its placement is left
/// to the transaction's next statement).
pub fn is_bare_begin(sql: &str) -> bool {
    words(sql)
        .as_deref()
        .and_then(begin_modes)
        .is_some_and(|m| m.is_empty())
}

/// Whether `sql` is `SET TRANSACTION` with `READ ONLY` among its modes.
pub fn sets_read_only(sql: &str) -> bool {
    words(sql).is_some_and(|w| {
        w.len() > 2 && w[0] == "set" && w[1] == "transaction" && read_only(&w[2..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_read_only_transactions_go_to_replicas() {
        assert_eq!(place("select 1", true), Placement::AutocommitRead);
        assert_eq!(
            place("SELECT pg_is_in_recovery()", false),
            Placement::AutocommitRead
        );
        assert_eq!(place("insert into t values (1)", true), Placement::Leader);
        assert_eq!(place("select nextval('s')", true), Placement::Leader);
        assert_eq!(place("select 1; select 2", true), Placement::Leader);
        assert_eq!(place("begin", true), Placement::Leader);
        for sql in [
            "BEGIN READ ONLY",
            "begin transaction isolation level repeatable read, read only;",
            "START TRANSACTION READ ONLY",
            "begin work read only",
        ] {
            assert_eq!(place(sql, true), Placement::ReadOnlyTransaction, "{sql}");
        }
        assert_eq!(place("BEGIN READ ONLY", false), Placement::Leader);
        assert_eq!(place("begin read write", true), Placement::Leader);
        assert_eq!(
            place("begin read only; insert into t values (1)", true),
            Placement::Leader
        );
    }

    #[test]
    fn bare_begins_and_read_only_sets_are_recognised() {
        for sql in [
            "BEGIN",
            "begin;",
            "begin work",
            "START TRANSACTION",
            "begin transaction",
        ] {
            assert!(is_bare_begin(sql), "{sql}");
        }
        for sql in ["begin read only", "begin; select 1", "select 1", "beginx"] {
            assert!(!is_bare_begin(sql), "{sql}");
        }
        assert!(sets_read_only("SET TRANSACTION READ ONLY"));
        assert!(sets_read_only(
            "set transaction isolation level repeatable read, read only;"
        ));
        assert!(!sets_read_only("set transaction read write"));
        assert!(!sets_read_only(
            "set transaction read only; insert into t values (1)"
        ));
        assert!(!sets_read_only(
            "set session characteristics as transaction read only"
        ));
    }
}
