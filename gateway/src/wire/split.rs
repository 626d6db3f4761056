//! The read/write split (`ringgate.projects.read_split`): where a transaction runs, from
//! its first statement. A plain read in autocommit (what `/sql`'s classifier calls a read)
//! and a transaction begun `READ ONLY` run on a replica within the lag bound; everything
//! else on the leader. An autocommit read a replica refuses as a write (`25006`, e.g. a
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

/// Whether `lower` (one statement, lowercased, no trailing `;`) is `BEGIN`/`START
/// TRANSACTION` with `READ ONLY` among its modes.
fn begins_read_only(lower: &str) -> bool {
    let words: Vec<&str> = lower
        .split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let modes = match words.as_slice() {
        ["begin", rest @ ..] => rest,
        ["start", "transaction", rest @ ..] => rest,
        _ => return false,
    };
    let modes = match modes {
        ["work" | "transaction", rest @ ..] => rest,
        rest => rest,
    };
    !lower.contains(';')
        && modes.windows(2).any(|w| w == ["read", "only"])
        && !modes.windows(2).any(|w| w == ["read", "write"])
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
}
