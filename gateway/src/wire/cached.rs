//! The PostgreSQL front end and the result cache (`crate::sql::cache`, shared with `/sql`):
//! autocommit reads served from it, writes invalidating it.
//!
//! **Reads.** Between transactions (transaction pooling holds nothing open then), a
//! message batch that is one whole autocommit statement may be answered from the cache: a
//! simple `Query` holding one statement, or an extended `[Parse] Bind [Describe] Execute
//! Sync` on the unnamed portal (the unnamed statement parsed in the batch, or a named one
//! parsed before), with every result column in text format and no row limit. Its
//! statement must be a read sqlparser vets (as for `/sql`: no volatile or unknown
//! function, no catalog) and a rule of its project in `ringgate.cache_rules` must match it
//! (the wire has no request header). What is stored is the server's answer, every message
//! up to `CommandComplete`, byte for byte; a hit replays it and writes `ReadyForQuery`
//! (idle) itself. The key: the role, the database, the session's replayed `SET`s, the
//! message kinds, the statement text and parameter types, and the `Bind`'s parameter
//! formats, values and result formats. Statements inside an explicit transaction never
//! reach this module (the relay keeps them in the transaction), nor do they after a
//! `BEGIN` the relay deferred; a session-mode client is never answered from the cache (its
//! server session may hold temporary tables or settings the key does not name).
//!
//! **Writes.** Every client message relayed is looked at ([`written_by`]): a `Query`'s
//! or `Parse`'s text, the text of the named statement a `Bind` runs, a `FunctionCall`
//! (anything). When the server says the transaction is over (`ReadyForQuery` idle, before
//! it is relayed), what it wrote is invalidated on every core and published to the other
//! instances (`committed`), as `/sql` writes are.

use std::{fmt::Write as _, rc::Rc};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use monoio::time::Instant;
use ringgate_pool::Credentials;

use super::messages;
use crate::{
    metrics::{CacheEvent, Frontend, UNCLASSIFIED},
    per_core::Core,
    sql::cache::{
        flight::Turn,
        rules,
        store::{Miss, Stored},
        vet::{self, Touched},
    },
};

/// Messages of a cacheable extended batch, at most (`Parse`, `Bind`, `Describe`,
/// `Execute`, `Sync`).
const MAX_BATCH: usize = 5;
/// `ReadyForQuery`'s length on the wire.
const READY_LEN: usize = 6;

/// What the cache knows of one client session.
#[derive(Debug)]
pub struct Session {
    /// The session's project.
    project: String,
    /// Its tenant class slot, once looked up.
    class: Option<usize>,
    /// What the current transaction wrote so far.
    written: Touched,
    /// The answer being recorded for the cache, when one is; `None` again past `limit`.
    capture: Option<BytesMut>,
    limit: usize,
}

/// What the cache needs of a session's relay (`relay::Relay` is the one): its state, its
/// client's next messages, and a transaction run through it. A trait, so the relay uses
/// the cache and the cache does not import the relay.
pub(super) trait Relayed {
    /// The session's core.
    fn core(&self) -> Rc<Core>;
    /// The cache's view of the session.
    fn cache(&mut self) -> &mut Session;
    /// The client's role and database.
    fn credentials(&self) -> &Credentials;
    /// The session's `SET`s, replayed on every server connection.
    fn sets(&self) -> &[String];
    /// Bytes read from the client and not yet taken as messages.
    fn unread(&mut self) -> &mut BytesMut;
    /// Bytes waiting to be written to the client.
    fn to_client(&mut self) -> &mut BytesMut;
    /// Whether the session is between transactions in transaction mode (nothing held).
    fn cache_may_answer(&self) -> bool;
    /// The `Parse` body after the name of the client's named statement `name`.
    fn statement_rest(&self, name: &[u8]) -> Option<Bytes>;
    /// The client's next message (`None`: it left).
    async fn next_client(&mut self) -> Option<BytesMut>;
    /// Writes what waits for the client; false when it is gone.
    async fn flush_client(&mut self) -> bool;
    /// Relays one transaction starting with `first`; false when the client is gone.
    async fn transaction(&mut self, first: BytesMut) -> bool;
}

/// How a batch was answered.
enum Answer {
    /// From the cache.
    Cached,
    /// Not from the cache: the relay runs it.
    Relay(BytesMut),
    /// Run through the relay by this module (`false`: the client is gone).
    Ran(bool),
    /// The client went away.
    Gone,
}

/// A cacheable batch: its key and vetted statement.
struct Read {
    key: String,
    text: String,
}

// === impl Session ===

impl Session {
    /// The cache's view of a session of pool tenant `tenant` (`<project>/pg`, see
    /// `session::run`).
    pub fn new(tenant: &str) -> Self {
        let project = tenant.rsplit_once('/').map_or(tenant, |(p, _)| p);
        Self {
            project: project.to_string(),
            class: None,
            written: nothing(),
            capture: None,
            limit: 0,
        }
    }

    /// Adds what a relayed message wrote to the transaction's writes.
    pub fn wrote(&mut self, written: Option<Touched>) {
        if let Some(w) = written.filter(|w| !w.is_nothing()) {
            self.written = std::mem::replace(&mut self.written, nothing()).union(w);
        }
    }

    /// Records `out`, about to be written to the client, when an answer is being recorded.
    pub fn capture(&mut self, out: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            if c.len() + out.len() > self.limit {
                self.capture = None;
            } else {
                c.extend_from_slice(out);
            }
        }
    }
}

/// What the client message `msg`, about to be relayed, writes (`None`: nothing the cache
/// tracks); `statement` gives a named statement's `Parse` body after the name (text, NUL,
/// parameter types).
pub fn written_by(
    core: &Core,
    msg: &[u8],
    statement: impl Fn(&[u8]) -> Option<Bytes>,
) -> Option<Touched> {
    let qc = core.query_cache.as_ref()?;
    let body = messages::body(msg);
    let text_written = |text: &[u8]| match std::str::from_utf8(text) {
        Ok(sql) => qc.written(sql),
        Err(_) => Touched::Everything,
    };
    match msg[0] {
        b'Q' => Some(text_written(body.strip_suffix(b"\0").unwrap_or(body))),
        b'P' => match messages::split_cstr(body).and_then(|(_, r)| messages::split_cstr(r)) {
            Some((text, _)) => Some(text_written(text)),
            None => Some(Touched::Everything),
        },
        b'B' => {
            // The unnamed statement's text was seen in its `Parse`.
            let stmt = messages::split_cstr(body)
                .and_then(|(_, r)| messages::split_cstr(r))
                .map(|(stmt, _)| stmt)
                .filter(|stmt| !stmt.is_empty())?;
            // A statement the relay does not track (past its per-client limit) may write
            // anything.
            match statement(stmt) {
                Some(rest) => Some(text_written(
                    messages::split_cstr(&rest).map_or(&[][..], |p| p.0),
                )),
                None => Some(Touched::Everything),
            }
        }
        b'F' => Some(Touched::Everything),
        _ => None,
    }
}

fn nothing() -> Touched {
    Touched::Tables(Vec::new())
}

/// Runs one transaction starting with `first` (the session idle): from the cache when it
/// is a cacheable read, else through the relay; then invalidates what it wrote if the
/// relay has not yet. False when the client is gone.
pub(super) async fn transaction(relay: &mut impl Relayed, first: BytesMut) -> bool {
    let alive = match from_cache(relay, first).await {
        Answer::Cached => true,
        Answer::Gone => false,
        Answer::Ran(alive) => alive,
        Answer::Relay(first) => relay.transaction(first).await,
    };
    // Normally done at the transaction's last `ReadyForQuery`; not when the server
    // connection was lost (outcome unknown) or the client left.
    committed(relay).await;
    alive
}

/// Invalidates what the session's transaction wrote, here and on other instances.
pub(super) async fn committed(relay: &mut impl Relayed) {
    if relay.cache().written.is_nothing() {
        return;
    }
    let touched = std::mem::replace(&mut relay.cache().written, nothing());
    let core = relay.core();
    let Some(qc) = core.query_cache.as_ref() else {
        return;
    };
    let class = class(relay).await;
    let (project, database) = (
        &relay.cache().project.clone(),
        &relay.credentials().database.clone(),
    );
    qc.invalidate(
        core.metrics(),
        project,
        database,
        &touched,
        (Frontend::Pg, class),
    )
    .await;
}

/// The session's tenant class slot (looked up once).
async fn class(relay: &mut impl Relayed) -> usize {
    if let Some(c) = relay.cache().class {
        return c;
    }
    let core = relay.core();
    let slot = match (&core.projects, &core.db) {
        (Some(projects), Some(db)) => match projects.get(db, &relay.cache().project).await {
            Ok(Some(p)) => p.class_slot,
            _ => UNCLASSIFIED,
        },
        _ => UNCLASSIFIED,
    };
    relay.cache().class = Some(slot);
    slot
}

/// Answers the batch starting with `first` from the cache, or runs it and stores its
/// answer, when it is a cacheable read a rule asks for.
async fn from_cache(relay: &mut impl Relayed, first: BytesMut) -> Answer {
    let core = relay.core();
    let Some(qc) = core.query_cache.as_ref() else {
        return Answer::Relay(first);
    };
    if !matches!(first[0], b'Q' | b'P' | b'B') || !relay.cache_may_answer() {
        return Answer::Relay(first);
    }
    let (Some(projects), Some(db)) = (&core.projects, &core.db) else {
        return Answer::Relay(first);
    };
    let rules = match projects.get(db, &relay.cache().project).await {
        Ok(Some(p)) => {
            relay.cache().class = Some(p.class_slot);
            p.cache_rules
        }
        _ => return Answer::Relay(first),
    };
    // No rule, nothing to look up: the text is not even parsed.
    if rules.is_empty() {
        return Answer::Relay(first);
    }
    // A simple query's verdict before reading on: it needs no more messages.
    if first[0] == b'Q' {
        let body = messages::body(&first);
        let text = std::str::from_utf8(body.strip_suffix(b"\0").unwrap_or(body));
        if !text.is_ok_and(|t| qc.vetted(t).is_some()) {
            return Answer::Relay(first);
        }
    }
    let mut batch = vec![first];
    if batch[0][0] != b'Q' {
        while batch.len() < MAX_BATCH && batch.last().is_some_and(|m| m[0] != b'S') {
            let Some(m) = relay.next_client().await else {
                return Answer::Gone;
            };
            let more = matches!(m[0], b'P' | b'B' | b'D' | b'E' | b'S');
            batch.push(m);
            if !more {
                break;
            }
        }
    }
    // A batch answered from the cache is consumed; one the relay runs goes back.
    let read = read_of(relay, &batch);
    let vetted = read.as_ref().and_then(|r| qc.vetted(&r.text));
    let ttl = vetted.as_ref().and_then(|v| rules::rule_ttl(&rules, v));
    let (Some(read), Some(v), Some(ttl)) = (read, vetted, ttl) else {
        return Answer::Relay(unread(relay, batch));
    };
    let (ttl, max_age) = qc.bounds(ttl);
    let class = relay.cache().class.unwrap_or(UNCLASSIFIED);
    let project = relay.cache().project.clone();
    let database = relay.credentials().database.clone();
    let count = |e| core.metrics().cache_event(Frontend::Pg, class, e);
    // Taken before the query is sent: a write that lands meanwhile outdates the entry.
    let stamp = qc.generations().stamp(&database, &v.tables);
    let now = Instant::now();
    match qc.lookup(core.metrics(), &project, &read.key, (now, stamp, max_age)) {
        Ok(hit) => {
            count(CacheEvent::Hit);
            replay(relay, &hit.body);
            return Answer::Cached;
        }
        Err(Miss::Invalidated) => count(CacheEvent::Stale),
        Err(Miss::Expired | Miss::Absent) => {}
    }
    let lead = match qc.wire_flights.join(&read.key) {
        Turn::Lead(lead) => lead,
        Turn::Follow(waiting) => {
            return match waiting.await {
                Ok(answer) => {
                    count(CacheEvent::Coalesced);
                    replay(relay, &answer);
                    Answer::Cached
                }
                Err(_) => {
                    count(CacheEvent::Miss);
                    Answer::Relay(unread(relay, batch))
                }
            };
        }
    };
    count(CacheEvent::Miss);
    let first = unread(relay, batch);
    // What waits for the client is written first: only this batch's answer is recorded.
    if !relay.flush_client().await {
        return Answer::Gone;
    }
    relay.cache().capture = Some(BytesMut::new());
    relay.cache().limit = qc.config.max_entry as usize + READY_LEN;
    let alive = relay.transaction(first).await;
    let answer = relay.cache().capture.take();
    let storable = answer.as_deref().and_then(replayable).filter(|_| {
        alive
            && qc
                .generations()
                .settled(&database, &v.tables, qc.config.settle)
    });
    if let Some(body) = storable {
        let body = Bytes::copy_from_slice(body);
        let entry = Stored {
            status: StatusCode::OK,
            content_type: "",
            body: body.clone(),
            stamp,
            stored: now,
            ttl,
        };
        qc.store(core.metrics(), &project, class, read.key, entry);
        count(CacheEvent::Store);
        lead.finish(&body);
    }
    Answer::Ran(alive)
}

/// Writes a stored answer and `ReadyForQuery` (idle) for the client.
fn replay(relay: &mut impl Relayed, answer: &[u8]) {
    relay.to_client().extend_from_slice(answer);
    messages::ready_for_query(relay.to_client(), b'I');
}

/// Puts every message of `batch` but the first back in front of what the client sent
/// next, for the relay to read; the first.
fn unread(relay: &mut impl Relayed, mut batch: Vec<BytesMut>) -> BytesMut {
    let rest = batch.split_off(1);
    if !rest.is_empty() {
        let unread = relay.unread();
        let len = rest.iter().map(|m| m.len()).sum::<usize>() + unread.len();
        let mut buf = BytesMut::with_capacity(len);
        for m in &rest {
            buf.extend_from_slice(m);
        }
        buf.extend_from_slice(unread);
        *unread = buf;
    }
    batch.pop().expect("the first message")
}

/// The batch's statement and key, when it is one whole cacheable autocommit statement.
fn read_of(relay: &impl Relayed, batch: &[BytesMut]) -> Option<Read> {
    let tags: Vec<u8> = batch.iter().map(|m| m[0]).collect();
    let (statement, bind): (Bytes, &[u8]) = match tags.as_slice() {
        [b'Q'] => {
            let body = messages::body(&batch[0]);
            (Bytes::copy_from_slice(body), &[])
        }
        [b'P', b'B', b'E', b'S'] | [b'P', b'B', b'D', b'E', b'S'] => {
            let (name, rest) = messages::split_cstr(messages::body(&batch[0]))?;
            let (stmt, bind) = bound(&batch[1])?;
            if !name.is_empty() || !stmt.is_empty() {
                return None;
            }
            (Bytes::copy_from_slice(rest), bind)
        }
        [b'B', b'E', b'S'] | [b'B', b'D', b'E', b'S'] => {
            let (stmt, bind) = bound(&batch[0])?;
            if stmt.is_empty() {
                return None;
            }
            (relay.statement_rest(stmt)?, bind)
        }
        _ => return None,
    };
    // Extended: `Describe` of the unnamed portal, `Execute` of it with no row limit.
    let n = batch.len();
    let extended_ok = n == 1
        || ((tags[n - 3] != b'D' || messages::body(&batch[n - 3]) == b"P\0")
            && messages::body(&batch[n - 2]) == b"\0\0\0\0\0");
    if !extended_ok || !text_results_and_fixed_params(bind) {
        return None;
    }
    let (text, _) = messages::split_cstr(&statement)?;
    let text = std::str::from_utf8(text).ok()?.to_string();
    let c = relay.credentials();
    let key = key(&c.user, &c.database, relay.sets(), &tags, &statement, bind);
    Some(Read { key, text })
}

/// The key of a read within its project: the role, the database, the session's `SET`s,
/// the message kinds, the statement (text and parameter types) and the `Bind` after the
/// statement name (parameter formats and values, result formats). Every part is
/// length-prefixed, so no two different reads share a key.
fn key(user: &str, database: &str, sets: &[String], tags: &[u8], st: &[u8], bind: &[u8]) -> String {
    let mut key = String::with_capacity(st.len() + bind.len() + 64);
    let mut part = |b: &[u8]| {
        // Text as is, anything else in hex (a key is a string).
        match std::str::from_utf8(b) {
            Ok(s) => {
                let _ = write!(key, "{}:t{s}", s.len());
            }
            Err(_) => {
                let _ = write!(key, "{}:x{}", b.len() * 2, hex::encode(b));
            }
        }
    };
    part(b"pg");
    part(user.as_bytes());
    part(database.as_bytes());
    part(sets.len().to_string().as_bytes());
    for set in sets {
        part(set.as_bytes());
    }
    part(tags);
    part(st);
    part(bind);
    key
}

/// A `Bind` of the unnamed portal: its statement's name and what follows it.
fn bound(msg: &[u8]) -> Option<(&[u8], &[u8])> {
    let (portal, rest) = messages::split_cstr(messages::body(msg))?;
    if !portal.is_empty() {
        return None;
    }
    messages::split_cstr(rest)
}

/// Whether a `Bind`'s formats and parameters (after the statement name) ask for text
/// results only and hold no text parameter the server may read as the current time.
fn text_results_and_fixed_params(bind: &[u8]) -> bool {
    if bind.is_empty() {
        return true; // A simple query: text results, no parameters.
    }
    let mut r = Reader(bind);
    let Some(formats) = r.i16s() else {
        return false;
    };
    let Some(n) = r.i16() else { return false };
    for i in 0..n.max(0) as usize {
        let Some(len) = r.i32() else { return false };
        if len < 0 {
            continue; // NULL
        }
        let Some(value) = r.take(len as usize) else {
            return false;
        };
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i) == Some(&1),
        };
        if !binary && std::str::from_utf8(value).is_ok_and(vet::volatile_param) {
            return false;
        }
    }
    let Some(results) = r.i16s() else {
        return false;
    };
    r.0.is_empty() && results.iter().all(|&f| f == 0)
}

/// Big-endian fields of a message body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count and that many `i16`s.
    fn i16s(&mut self) -> Option<Vec<i16>> {
        let n = self.i16()?;
        (0..n.max(0)).map(|_| self.i16()).collect()
    }
}

/// The answer without its final `ReadyForQuery`, when it may be replayed: only
/// `ParseComplete`, `BindComplete`, `RowDescription`, `NoData` and `DataRow`s, one
/// `CommandComplete` last, then `ReadyForQuery` idle (no error, notice or parameter
/// change).
fn replayable(answer: &[u8]) -> Option<&[u8]> {
    let mut buf = BytesMut::from(answer);
    let mut completes = 0;
    let mut last = 0;
    while !buf.is_empty() {
        let m = messages::take(&mut buf, usize::MAX >> 1).ok()??;
        match m[0] {
            b'1' | b'2' | b'T' | b'n' | b'D' if completes == 0 => {}
            b'C' if completes == 0 => completes += 1,
            b'Z' if completes == 1 && buf.is_empty() && &m[..] == b"Z\0\0\0\x05I" => {
                last = answer.len() - READY_LEN;
            }
            _ => return None,
        }
    }
    (last > 0).then(|| &answer[..last])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, parts: &[&[u8]]) -> BytesMut {
        let mut out = BytesMut::new();
        messages::frontend(&mut out, tag, parts);
        out
    }

    #[test]
    fn only_a_clean_answer_ending_idle_is_replayable() {
        let mut a = BytesMut::new();
        a.extend_from_slice(&msg(b'T', &[b"\0\0"]));
        a.extend_from_slice(&msg(b'D', &[b"\0\0"]));
        a.extend_from_slice(&msg(b'C', &[b"SELECT 1\0"]));
        let body = a.len();
        messages::ready_for_query(&mut a, b'I');
        assert_eq!(replayable(&a), Some(&a[..body]));
        let mut in_txn = BytesMut::from(&a[..body]);
        messages::ready_for_query(&mut in_txn, b'T');
        assert_eq!(replayable(&in_txn), None);
        let mut notice = msg(b'N', &[b"Mhi\0\0"]);
        notice.extend_from_slice(&a);
        assert_eq!(replayable(&notice), None);
        let mut error = BytesMut::from(&a[..body]);
        messages::error(&mut error, "ERROR", "42P01", "no");
        messages::ready_for_query(&mut error, b'I');
        assert_eq!(replayable(&error), None);
        assert_eq!(replayable(&a[..body]), None, "no ReadyForQuery");
    }

    #[test]
    fn binary_results_and_now_parameters_are_not_cached() {
        // No formats, one text parameter "7", no result formats.
        let plain = b"\0\0\0\x01\0\0\0\x017\0\0";
        assert!(text_results_and_fixed_params(plain));
        let binary_results = b"\0\0\0\x01\0\0\0\x017\0\x01\0\x01";
        assert!(!text_results_and_fixed_params(binary_results));
        let text_results = b"\0\0\0\x01\0\0\0\x017\0\x01\0\0";
        assert!(text_results_and_fixed_params(text_results));
        let now = b"\0\0\0\x01\0\0\0\x03now\0\0";
        assert!(!text_results_and_fixed_params(now));
        // The same bytes as a binary parameter are not a time word.
        let binary_now = b"\0\x01\0\x01\0\x01\0\0\0\x03now\0\0";
        assert!(text_results_and_fixed_params(binary_now));
        assert!(
            !text_results_and_fixed_params(b"\0\0\0\x01\0\0"),
            "truncated"
        );
    }

    #[test]
    fn role_database_sets_messages_statement_and_bind_change_the_key() {
        let st: &[u8] = b"select v from t where id = $1\0\0\0";
        let bind: &[u8] = b"\0\0\0\x01\0\0\0\x017\0\0";
        let sets = vec!["set search_path = a".to_string()];
        let base = key("alice", "db", &sets, b"PBDES", st, bind);
        assert_eq!(base, key("alice", "db", &sets, b"PBDES", st, bind));
        let other_sets = vec!["set search_path = b".to_string()];
        let binary = b"\0\0\0\x01\0\0\0\x01\xff\0\0";
        for other in [
            key("bob", "db", &sets, b"PBDES", st, bind),
            key("alice", "db2", &sets, b"PBDES", st, bind),
            key("alice", "db", &[], b"PBDES", st, bind),
            key("alice", "db", &other_sets, b"PBDES", st, bind),
            key("alice", "db", &sets, b"PBES", st, bind),
            key(
                "alice",
                "db",
                &sets,
                b"PBDES",
                b"select v from u where id = $1\0\0\0",
                bind,
            ),
            key(
                "alice",
                "db",
                &sets,
                b"PBDES",
                st,
                b"\0\0\0\x01\0\0\0\x018\0\0",
            ),
            key(
                "alice",
                "db",
                &sets,
                b"PBDES",
                st,
                b"\0\0\0\x01\0\0\0\x017\0\x01\0\0",
            ),
            key("alice", "db", &sets, b"PBDES", st, binary),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn the_project_is_the_pool_tenant_without_its_suffix() {
        assert_eq!(Session::new("alpha/pg").project, "alpha");
        assert_eq!(Session::new("a/b/pg").project, "a/b");
    }
}
