//! Transaction pooling: a server connection from the core's tenant pool is held from a
//! client's first message of a transaction until `ReadyForQuery` says idle, and the
//! client's messages and the server's answers are relayed as they are (no re-encoding).
//!
//! Named prepared statements (the extended protocol's, e.g. `pgbench -M prepared`) are
//! tracked per client by name and prepared on whichever server connection runs them,
//! under a server-side name derived from their text and parameter types (so clients
//! sharing a connection share its statements). A client's `Parse` of a statement the
//! connection already has becomes an unnamed `Parse` of the same text, so the server still
//! answers `ParseComplete` in order; a `Bind` or `Describe` on a connection that lacks the
//! statement is preceded by its `Parse`, whose `ParseComplete` is not relayed.
//!
//! Session state: session-level `SET`/`RESET` are replayed on every server connection the
//! client later uses (and reset with `RESET ALL` before it goes back to the pool);
//! features that need one server session for the client's life (`LISTEN`, `WITH HOLD`
//! cursors, session advisory locks, SQL `PREPARE`) are refused with `0A000`.
//!
//! A project whose `pool_mode` is `session` keeps one server connection for the client's
//! whole session instead: nothing is refused, and the connection goes back to the pool
//! after `DISCARD ALL` when the client leaves. If it dies, the statement is answered
//! `08007` and the client's next message ends its session with `08006` (its temp tables,
//! locks and `LISTEN`s are gone: it is not continued on another connection). While the
//! client is idle its server connection is watched too: notifications, notices and
//! parameter changes reach the client as they come, and a connection that ends then ends
//! the session at once with a FATAL `08006`. (Over TLS to the server the connection is
//! read only while a statement runs: notifications come with the next answer.)
//!
//! With the project's `read_split` on, transaction mode places each transaction by its
//! first statement ([`super::split`]). An autocommit read a replica refuses with `25006`
//! is rerun on the leader when nothing of its answer was written to the client (the
//! replica changed nothing).
//!
//! The leader's lease (as `/sql`'s [`crate::sql::lease`]): a leader connection's messages
//! are held while the lease may not take writes, and a statement whose lease is lost
//! while the client waits for its answer is abandoned, answered `08007`.

use std::{
    collections::{HashMap, VecDeque},
    rc::Rc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use monoio::time::{sleep, Instant};
use ringgate_discovery::Role;
use ringgate_pool::{Checkout, Credentials, Error as PoolError, Intent, Lent, Shard};
use tracing::debug;

use super::{
    cached,
    cancel::CancelKey,
    fatal, messages,
    split::{self, Placement},
    stream::ClientStream,
};
use crate::{
    metrics::wire::{ClassFigure, WireEvent},
    per_core::Core,
    projects::PoolMode,
    sql::lease::under_lease,
};

mod shared;

/// Read size from either side.
const CHUNK: usize = 16 << 10;
/// Answers are written to the client once this many bytes wait (and at every
/// `ReadyForQuery`); client messages are sent to the server at this size too.
const FLUSH_AT: usize = 64 << 10;
/// Largest server message relayed.
const MAX_SERVER_MESSAGE: usize = 1 << 30;
/// Pooled connections found ended by the server skipped per checkout, at most.
const MAX_STALE: usize = 8;
/// Session `SET`s replayed per client, at most.
const MAX_SETS: usize = 64;
/// Named statements one client may have.
const MAX_STATEMENTS: usize = 10_000;
/// A statement name no client statement uses: `Close` of a client's statement closes this
/// (a no-op that still answers `CloseComplete`), since the server's copy is shared.
const CLOSED_NAME: &[u8] = b"rgw_closed\0";

/// SQLSTATE `feature_not_supported`.
const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE `transaction_resolution_unknown`.
const RESOLUTION_UNKNOWN: &str = "08007";
/// What a client whose server connection died is told.
const LOST: &str = "the server connection was lost; whether the transaction committed is unknown";
/// SQLSTATE `too_many_connections`.
const TOO_MANY_CONNECTIONS: &str = "53300";
/// SQLSTATE `sqlclient_unable_to_establish_sqlconnection`.
const CANNOT_CONNECT: &str = "08001";
/// SQLSTATE `admin_shutdown`.
const ADMIN_SHUTDOWN: &str = "57P01";
/// SQLSTATE `read_only_sql_transaction`.
const READ_ONLY: &[u8] = b"25006";
/// SQLSTATE `connection_failure`.
const CONNECTION_FAILURE: &str = "08006";
/// What a session-mode client whose server connection died is told before it is closed.
const SESSION_LOST: &str = "the server connection of this session was lost; its session state (temporary tables, locks, LISTEN) is gone";
/// How often a held message looks at the lease again.
const LEASE_POLL: Duration = Duration::from_millis(20);

/// Whose server connections a session uses.
#[derive(Debug)]
pub struct Upstream {
    /// The tenant its pools are keyed by (`<project>/pg`).
    pub tenant: String,
    /// The client's role, database and keys.
    pub credentials: Credentials,
}

/// How a project's sessions are pooled (from its `ringgate.projects` row).
#[derive(Debug, Clone, Copy)]
pub struct Pooling {
    /// Transaction or session pooling.
    pub mode: PoolMode,
    /// Whether reads run on replicas ([`super::split`]; transaction mode only).
    pub read_split: bool,
    /// The project's tenant class slot, for metrics.
    pub class: usize,
}

/// A client's named statement.
#[derive(Debug, PartialEq, Eq)]
struct Prepared {
    /// Its name on server connections.
    server: String,
    /// `Parse`'s body after the name: query text, NUL, parameter types.
    rest: Bytes,
}

/// The server connection held for one transaction.
struct Held {
    checkout: Checkout,
    lent: Option<Lent>,
    /// Messages to send to the server.
    out: BytesMut,
    /// `Sync`s and queries sent and not yet answered with `ReadyForQuery`.
    pending: usize,
    /// Extended-protocol messages sent and not yet answered (for `Flush`).
    expected: usize,
    /// `ParseComplete`s of ringgate's own `Parse`s, not to relay.
    swallow: usize,
    /// Every `Parse` sent and not yet answered, in order: the server name it creates
    /// (`None` for the unnamed statement). After an error the server skips to `Sync`, so
    /// the unanswered ones were not created and are forgotten.
    parses: VecDeque<Option<String>>,
    /// The last `ReadyForQuery` status.
    status: u8,
    /// Whether a replayed `SET` changed the session (reset before release).
    dirty: bool,
    /// Whether the connection broke or is in an unknown state.
    broken: bool,
    /// Whether the client was told its server connection was lost.
    lost_reported: bool,
    /// While a replica's answer to an autocommit read may still be dropped and rerun on
    /// the leader: where the answer starts in the client's buffer, and the client flush
    /// count then (a flush since means part of it reached the client).
    rerunnable: Option<(usize, u64)>,
    /// A replica refused a write (`25006`): its answers are dropped until `ReadyForQuery`
    /// and the transaction reruns on the leader.
    rerun: bool,
    /// The gauge this connection counts in (by pool mode).
    figure: ClassFigure,
    /// Answers (up to `ReadyForQuery`) of deferred `BEGIN`s not to relay.
    hidden: usize,
    /// When it was checked out.
    taken: Instant,
}

impl Held {
    fn lent(&mut self) -> &mut Lent {
        self.lent.as_mut().expect("held until released")
    }
}

/// Which side of a relay failed.
#[derive(Debug)]
pub(super) enum Gone {
    Client,
    Server,
}

/// What woke a session waiting between transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    /// The client has bytes to read (or closed: the read says).
    Client,
    /// The client's bytes were read into its buffer already.
    Read,
    /// The kept server connection has bytes to read (or closed).
    Server,
    /// The client left or its socket failed.
    Gone,
    /// The core drains.
    Drain,
}

/// How a session-mode server connection ended while its client was idle.
#[derive(Debug, thiserror::Error)]
enum IdleLoss {
    /// The server's own error (a FATAL before it closed).
    #[error("the server said: {0}")]
    Said(String),
    /// The read failed or found the end of the stream.
    #[error("reading from the server failed: {0}")]
    Read(String),
    /// The server sent what an idle session never gets.
    #[error("unexpected from the server: {0}")]
    Unexpected(String),
}

/// What to wait for from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Every `ReadyForQuery` owed.
    Ready,
    /// Every answer owed (after a client's `Flush`).
    Answered,
}

/// One client session in transaction-pooling mode.
pub struct Relay {
    core: Rc<Core>,
    db: Rc<Shard>,
    tenant: String,
    credentials: Credentials,
    client: ClientStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    statements: HashMap<Bytes, Prepared>,
    sets: Vec<String>,
    key: CancelKey,
    pooling: Pooling,
    /// A session-mode client's server connection between transactions.
    kept: Option<Held>,
    /// Writes of answers to the client so far.
    flushes: u64,
    /// A session-mode client's server connection died: its next message ends the session.
    session_lost: bool,
    /// A bare `BEGIN` answered by ringgate (read/write split on), sent on with the
    /// transaction's next statement, which decides where it runs.
    deferred_begin: Option<BytesMut>,
    /// The result cache's view of the session (see [`cached`]).
    cache: cached::Session,
    /// The buffer of messages for the server, kept between transactions (a transaction
    /// takes it, and gives it back empty): not allocated per transaction.
    spare_out: BytesMut,
    /// The core's queues of shared reads this session uses, for reads and for writes
    /// ([`shared`]), looked up once.
    shared_queues: [Option<Rc<shared::Queue>>; 2],
}

impl Relay {
    /// A session for an authenticated client.
    pub fn new(
        core: Rc<Core>,
        db: Rc<Shard>,
        upstream: Upstream,
        client: ClientStream,
        rbuf: BytesMut,
        key: CancelKey,
        pooling: Pooling,
    ) -> Self {
        Self {
            cache: cached::Session::new(&upstream.tenant),
            core,
            db,
            tenant: upstream.tenant,
            credentials: upstream.credentials,
            client,
            rbuf,
            wbuf: BytesMut::with_capacity(CHUNK),
            statements: HashMap::new(),
            sets: Vec::new(),
            key,
            pooling,
            kept: None,
            flushes: 0,
            session_lost: false,
            deferred_begin: None,
            spare_out: BytesMut::new(),
            shared_queues: [None, None],
        }
    }

    /// Opens (or reuses) a server connection as the client's role, which proves the keys
    /// work upstream, sends the server's parameters, the cancel key and `ReadyForQuery`,
    /// then serves the client until it leaves.
    pub async fn start(mut self) {
        let params = match self.checkout(Intent::Write).await {
            Ok(mut held) => {
                let params = held.lent().conn.server_params().to_vec();
                self.finish(held).await;
                params
            }
            Err((code, msg)) => return fatal(&mut self.client, code, &msg).await,
        };
        for (name, value) in &params {
            messages::parameter_status(&mut self.wbuf, name, value);
        }
        messages::backend_key_data(&mut self.wbuf, self.key.pid, self.key.key);
        messages::ready_for_query(&mut self.wbuf, b'I');
        let (metrics, class) = (&self.core.metrics().wire, self.pooling.class);
        metrics.class_add(class, ClassFigure::Clients, 1);
        self.serve().await;
        if let Some(held) = self.kept.take() {
            self.release(held).await;
        }
        self.core
            .metrics()
            .wire
            .class_sub(class, ClassFigure::Clients);
    }

    /// Ends a transaction: a session-mode client keeps its connection, others give it back.
    async fn finish(&mut self, held: Held) {
        match self.pooling.mode {
            PoolMode::Session if !held.broken => self.kept = Some(held),
            _ => self.release(held).await,
        }
    }

    /// Whether `msg` is a bare `BEGIN` to answer here and send on with the transaction's
    /// next statement (read/write split on, transaction mode).
    fn defers_begin(&self, msg: &[u8]) -> bool {
        self.pooling.read_split
            && self.pooling.mode == PoolMode::Transaction
            && self.deferred_begin.is_none()
            && messages::split_cstr(messages::body(msg))
                .is_some_and(|(q, _)| split::is_bare_begin(&String::from_utf8_lossy(q)))
    }

    /// Where a transaction starting with `first` runs.
    fn placement(&self, first: &[u8]) -> Placement {
        if !self.pooling.read_split || self.pooling.mode == PoolMode::Session {
            return Placement::Leader;
        }
        let body = messages::body(first);
        let text = |b: &[u8]| {
            messages::split_cstr(b).map(|(q, _)| String::from_utf8_lossy(q).into_owned())
        };
        if self.deferred_begin.is_some() {
            // After a bare BEGIN: SET TRANSACTION READ ONLY places it on a replica.
            return match (first[0], text(body)) {
                (b'Q', Some(sql)) if split::sets_read_only(&sql) => Placement::ReadOnlyTransaction,
                _ => Placement::Leader,
            };
        }
        let sql = match first[0] {
            b'Q' => text(body),
            b'P' => messages::split_cstr(body).and_then(|(_, rest)| text(rest)),
            b'B' => messages::split_cstr(body)
                .and_then(|(_, r)| messages::split_cstr(r))
                .and_then(|(stmt, _)| self.statements.get(stmt))
                .and_then(|p| text(&p.rest)),
            _ => None,
        };
        match sql {
            Some(sql) => split::place(&sql, first[0] == b'Q'),
            None => Placement::Leader,
        }
    }

    async fn serve(&mut self) {
        loop {
            let Some(msg) = self.next_idle().await else {
                return;
            };
            if self.session_lost && msg[0] != b'X' {
                return fatal(&mut self.client, CONNECTION_FAILURE, SESSION_LOST).await;
            }
            match msg[0] {
                b'X' => return,
                // Nothing is open between transactions: a lone Sync is answered here.
                b'S' => {
                    let status = if self.deferred_begin.is_some() {
                        b'T'
                    } else {
                        b'I'
                    };
                    messages::ready_for_query(&mut self.wbuf, status)
                }
                b'Q' if self.defers_begin(&msg) => {
                    messages::frontend(&mut self.wbuf, b'C', &[b"BEGIN\0"]);
                    messages::ready_for_query(&mut self.wbuf, b'T');
                    self.deferred_begin = Some(msg);
                }
                b'H' | b'd' | b'c' | b'f' => {}
                b'Q' | b'P' | b'B' | b'D' | b'E' | b'F' | b'C' => {
                    if !cached::transaction(self, msg).await {
                        return;
                    }
                }
                other => {
                    let m = format!("unexpected message type {:?}", other as char);
                    return fatal(&mut self.client, "08P01", &m).await;
                }
            }
        }
    }

    /// Relays one transaction, starting with `first`; false when the client is gone.
    async fn transaction(&mut self, first: BytesMut) -> bool {
        self.core
            .metrics()
            .wire
            .class_add(self.pooling.class, ClassFigure::Transactions, 1);
        if let Some(unit) = self.shareable(&first) {
            // A read: on a replica when the project splits reads.
            let intent = match self.pooling.read_split {
                true => Intent::Read,
                false => Intent::Write,
            };
            return self.shared(first, unit, intent).await;
        }
        self.relayed(first).await
    }

    /// Relays one transaction on a server connection of its own.
    async fn relayed(&mut self, first: BytesMut) -> bool {
        let placement = self.placement(&first);
        let intent = match placement {
            Placement::Leader => Intent::Write,
            Placement::AutocommitRead | Placement::ReadOnlyTransaction => Intent::Read,
        };
        let kept = self.kept.take();
        let begin = self.deferred_begin.take();
        let held = match kept {
            Some(h) => h,
            None => match self.checkout(intent).await {
                Ok(h) => h,
                Err((code, msg)) => return self.refuse(first[0], code, &msg).await,
            },
        };
        let mut held = self.cancels_to(held);
        if let Some(begin) = begin {
            // The BEGIN the client was told of goes first; its answer is not relayed.
            held.pending += 1;
            held.hidden += 1;
            held.out.extend_from_slice(&begin);
        }
        // The messages of an autocommit read on a replica, kept to rerun on the leader.
        let mut sent = (placement == Placement::AutocommitRead
            && held.checkout.role() == Role::Replica)
            .then(Vec::new);
        if sent.is_some() {
            held.rerunnable = Some((self.wbuf.len(), self.flushes));
        }
        let mut msg = first;
        loop {
            let tag = msg[0];
            if tag == b'X' {
                // Leaving mid-transaction: the server connection is not reusable as is.
                held.broken |= held.pending > 0 || held.status != b'I';
                self.release(held).await;
                return false;
            }
            if tag == b'H' {
                // Answers reach the client before the Sync: no longer rerunnable.
                sent = None;
                held.rerunnable = None;
            }
            if let Some(s) = sent.as_mut() {
                s.push(msg.clone());
            }
            self.forward(&mut held, msg);
            let until = match tag {
                b'S' | b'Q' | b'F' => Some(Until::Ready),
                b'H' => Some(Until::Answered),
                _ => None,
            };
            let mut flushed = match until {
                Some(u) => self.exchange(&mut held, u).await,
                None if held.out.len() >= FLUSH_AT => send_under_lease(&mut held).await,
                None => Ok(()),
            };
            if flushed.is_ok() && held.rerun {
                held = match self.rerun(held, sent.take().unwrap_or_default()).await {
                    Ok(h) => h,
                    Err((code, msg)) => {
                        messages::error(&mut self.wbuf, "ERROR", code, &msg);
                        messages::ready_for_query(&mut self.wbuf, b'I');
                        return true;
                    }
                };
                flushed = self.exchange(&mut held, Until::Ready).await;
            }
            if until.is_some() {
                sent = None;
                held.rerunnable = None;
            }
            match flushed {
                Ok(()) => {}
                Err(Gone::Server) => {
                    self.core.metrics().wire.count(WireEvent::ServerLost);
                    held.broken = true;
                    let reported = held.lost_reported;
                    self.release(held).await;
                    if !reported {
                        messages::error(&mut self.wbuf, "ERROR", RESOLUTION_UNKNOWN, LOST);
                    }
                    // A session-mode client learns at its next message that its session
                    // is gone (closed then), after this statement's outcome.
                    self.session_lost = self.pooling.mode == PoolMode::Session;
                    messages::ready_for_query(&mut self.wbuf, b'I');
                    return true;
                }
                Err(Gone::Client) => {
                    held.broken = true;
                    self.release(held).await;
                    return false;
                }
            }
            if held.pending == 0 && held.status == b'I' && until == Some(Until::Ready) {
                self.finish(held).await;
                return true;
            }
            msg = match self.next_client().await {
                Some(m) => m,
                None => {
                    held.broken = true;
                    self.release(held).await;
                    return false;
                }
            };
        }
    }

    /// Sends what waits for the server, then relays its answers until `until`.
    async fn exchange(&mut self, held: &mut Held, until: Until) -> Result<(), Gone> {
        send_under_lease(held).await?;
        self.drive(held, until).await
    }

    /// Gives back the replica that refused `sent` as a write and sends `sent` to the
    /// leader instead (nothing of the replica's answer reached the client).
    async fn rerun(
        &mut self,
        replica: Held,
        sent: Vec<BytesMut>,
    ) -> Result<Held, (&'static str, String)> {
        self.core.metrics().wire.count(WireEvent::ReadOnlyReruns);
        debug!("a replica refused a write (25006): rerunning it on the leader");
        self.release(replica).await;
        let mut held = self
            .checkout(Intent::Write)
            .await
            .map(|h| self.cancels_to(h))?;
        for m in sent {
            self.forward(&mut held, m);
        }
        Ok(held)
    }

    /// Relays the server's messages to the client until `until` holds.
    async fn drive(&mut self, held: &mut Held, until: Until) -> Result<(), Gone> {
        loop {
            loop {
                let (_, rbuf) = held.lent().conn.relay_io();
                let m = match messages::take(rbuf, MAX_SERVER_MESSAGE) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => return Err(Gone::Server),
                };
                if held.hidden > 0 && m[0] != b'E' {
                    if m[0] == b'Z' {
                        held.hidden -= 1;
                        held.pending = held.pending.saturating_sub(1);
                        held.status = m.get(5).copied().unwrap_or(b'E');
                    }
                    continue;
                }
                if held.rerun && m[0] != b'Z' {
                    continue;
                }
                match m[0] {
                    b'Z' => {
                        held.status = m.get(5).copied().unwrap_or(b'E');
                        held.pending = held.pending.saturating_sub(1);
                        held.expected = 0;
                        held.swallow = 0;
                        held.parses.clear();
                        if held.rerun {
                            if held.pending == 0 {
                                return Ok(());
                            }
                            continue;
                        }
                        self.wbuf.extend_from_slice(&m);
                        if held.pending == 0 {
                            if held.status == b'I' {
                                cached::committed(self).await;
                            }
                            return self.flush_client().await;
                        }
                        continue;
                    }
                    b'1' => {
                        held.parses.pop_front();
                        held.expected = held.expected.saturating_sub(1);
                        if held.swallow > 0 {
                            held.swallow -= 1;
                            continue;
                        }
                    }
                    b'2' | b'3' | b'n' | b's' | b'C' | b'I' | b'T' => {
                        held.expected = held.expected.saturating_sub(1);
                    }
                    b'E' => {
                        // The server skips to the next Sync: Parses not yet answered
                        // created nothing.
                        held.expected = 0;
                        let unanswered = std::mem::take(&mut held.parses);
                        let relayed = held.lent().conn.relayed_statements();
                        for name in unanswered.into_iter().flatten() {
                            relayed.remove(&name);
                        }
                        if is_fatal(messages::body(&m)) {
                            // The server ends the session: the client's session goes on
                            // (on another server connection), told the outcome is unknown.
                            held.broken = true;
                            let said = error_field(messages::body(&m), b'M')
                                .map(String::from_utf8_lossy)
                                .unwrap_or_default();
                            messages::error(
                                &mut self.wbuf,
                                "ERROR",
                                RESOLUTION_UNKNOWN,
                                &format!("{LOST} (the server said: {said})"),
                            );
                            held.lost_reported = true;
                            continue;
                        }
                        let refused_write =
                            error_field(messages::body(&m), b'C') == Some(READ_ONLY);
                        match held.rerunnable {
                            Some((mark, flushes)) if refused_write && flushes == self.flushes => {
                                self.wbuf.truncate(mark);
                                held.rerun = true;
                                continue;
                            }
                            _ => {}
                        }
                    }
                    b'G' => {
                        self.wbuf.extend_from_slice(&m);
                        self.flush_client().await?;
                        self.copy_in(held).await?;
                        continue;
                    }
                    _ => {}
                }
                self.wbuf.extend_from_slice(&m);
                if self.wbuf.len() >= FLUSH_AT {
                    self.flush_client().await?;
                }
            }
            if until == Until::Answered && held.expected == 0 && held.pending == 0 {
                return self.flush_client().await;
            }
            let lease = held.checkout.lease().cloned();
            let (stream, rbuf) = held.lent().conn.relay_io();
            match under_lease(lease.as_ref(), stream.read_into(rbuf, CHUNK)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(Gone::Server),
                Err(_) => {
                    self.core.metrics().wire.count(WireEvent::LeaseAbandoned);
                    return Err(Gone::Server);
                }
            }
        }
    }

    /// Relays the client's `COPY ... FROM STDIN` data until `CopyDone` or `CopyFail`.
    async fn copy_in(&mut self, held: &mut Held) -> Result<(), Gone> {
        loop {
            let m = self.next_client().await.ok_or(Gone::Client)?;
            match m[0] {
                b'd' => {
                    held.out.extend_from_slice(&m);
                    if held.out.len() >= FLUSH_AT {
                        send_under_lease(held).await?;
                    }
                }
                b'c' | b'f' => {
                    held.out.extend_from_slice(&m);
                    return send_under_lease(held).await;
                }
                // Ignored by the server during COPY IN.
                b'H' | b'S' => {}
                _ => return Err(Gone::Client),
            }
        }
    }

    /// Appends a client message to what goes to the server, rewriting statement names.
    fn forward(&mut self, held: &mut Held, msg: BytesMut) {
        let written = cached::written_by(&self.core, &msg, |name| self.statement_rest(name));
        self.cache.wrote(written);
        let body = messages::body(&msg);
        match msg[0] {
            b'Q' => {
                held.pending += 1;
                let sql = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body));
                if let Some(why) = self.session_only(&sql) {
                    let refusal = refusal_sql(why);
                    messages::frontend(&mut held.out, b'Q', &[refusal.as_bytes(), b"\0"]);
                    return;
                }
                let lower = sql.trim_start().to_ascii_lowercase();
                if is_session_set(&lower) && self.sets.len() < MAX_SETS {
                    self.sets.push(sql.into_owned());
                    held.dirty = true;
                }
                if lower.starts_with("discard all") || lower.starts_with("deallocate all") {
                    held.lent().conn.relayed_statements().clear();
                }
                held.out.extend_from_slice(&msg);
            }
            b'S' | b'F' => {
                held.pending += 1;
                held.out.extend_from_slice(&msg);
            }
            b'P' => {
                held.expected += 1;
                let Some((name, rest)) = messages::split_cstr(body) else {
                    held.parses.push_back(None);
                    return held.out.extend_from_slice(&msg);
                };
                let sql = messages::split_cstr(rest)
                    .map(|(q, _)| String::from_utf8_lossy(q))
                    .unwrap_or_default();
                let refused;
                let rest: &[u8] = match self.session_only(&sql) {
                    Some(why) => {
                        let types = messages::split_cstr(rest)
                            .map(|(_, t)| t)
                            .unwrap_or(b"\0\0");
                        let mut r = refusal_sql(why).into_bytes();
                        r.push(0);
                        r.extend_from_slice(types);
                        refused = r;
                        &refused
                    }
                    None => rest,
                };
                if name.is_empty() || self.statements.len() >= MAX_STATEMENTS {
                    // A client's own name kept as is (past the limit) is not tracked.
                    held.parses.push_back(None);
                    messages::frontend(&mut held.out, b'P', &[name, b"\0", rest]);
                    return;
                }
                let server = server_name(rest);
                let relayed = held.lent().conn.relayed_statements();
                if relayed.contains(&server) {
                    held.parses.push_back(None);
                    messages::frontend(&mut held.out, b'P', &[b"\0", rest]);
                } else {
                    relayed.insert(server.clone());
                    held.parses.push_back(Some(server.clone()));
                    messages::frontend(&mut held.out, b'P', &[server.as_bytes(), b"\0", rest]);
                }
                self.statements.insert(
                    Bytes::copy_from_slice(name),
                    Prepared {
                        server,
                        rest: Bytes::copy_from_slice(rest),
                    },
                );
            }
            b'B' => {
                held.expected += 1;
                let parts = messages::split_cstr(body)
                    .and_then(|(portal, r)| messages::split_cstr(r).map(|(s, r)| (portal, s, r)));
                match parts {
                    Some((portal, stmt, rest)) if !stmt.is_empty() => {
                        match self.statements.get(stmt) {
                            Some(p) => {
                                ensure(held, p);
                                messages::frontend(
                                    &mut held.out,
                                    b'B',
                                    &[portal, b"\0", p.server.as_bytes(), b"\0", rest],
                                );
                            }
                            None => held.out.extend_from_slice(&msg),
                        }
                    }
                    _ => held.out.extend_from_slice(&msg),
                }
            }
            b'D' => {
                held.expected += 1;
                match statement_named(body).and_then(|n| self.statements.get(n)) {
                    Some(p) => {
                        ensure(held, p);
                        messages::frontend(
                            &mut held.out,
                            b'D',
                            &[b"S", p.server.as_bytes(), b"\0"],
                        );
                    }
                    None => held.out.extend_from_slice(&msg),
                }
            }
            b'C' => {
                held.expected += 1;
                match statement_named(body) {
                    Some(n) => {
                        self.statements.remove(n);
                        messages::frontend(&mut held.out, b'C', &[b"S", CLOSED_NAME]);
                    }
                    None => held.out.extend_from_slice(&msg),
                }
            }
            b'E' => {
                held.expected += 1;
                held.out.extend_from_slice(&msg);
            }
            _ => held.out.extend_from_slice(&msg),
        }
    }

    /// Whether the result cache may answer the client's next statement: transaction
    /// mode (a session-mode client's own server session may hold temporary tables or
    /// settings the cache knows nothing of) and no `BEGIN` deferred (the client is in a
    /// transaction).
    /// The `Parse` body after the name (text, NUL, parameter types) of the client's named
    /// statement `name`.
    fn statement_rest(&self, name: &[u8]) -> Option<Bytes> {
        self.statements.get(name).map(|p| p.rest.clone())
    }

    /// A server connection for the client's role, with its `SET`s replayed. Waits out a
    /// failover (no leader, unreachable member) up to `RINGGATE_FAILOVER_WAIT`: nothing was
    /// sent yet.
    async fn checkout(&mut self, intent: Intent) -> Result<Held, (&'static str, String)> {
        let started = Instant::now();
        let deadline = started + self.core.config.failover_wait;
        let mut stale = 0;
        let (checkout, lent) = loop {
            match self
                .db
                .checkout(&self.tenant, &self.credentials, intent)
                .await
            {
                // A leader whose lease may have run out, or that stopped answering its
                // probe, takes nothing new (as for /sql): nothing was sent yet, so the
                // transaction waits for the next leader.
                Ok(c) if c.lease().is_some_and(|l| !l.may_send()) => {
                    c.discard();
                    if Instant::now() >= deadline {
                        return Err((
                            CANNOT_CONNECT,
                            "the primary's leadership lease lapsed and no new primary took over within the failover wait; nothing was sent".into(),
                        ));
                    }
                    sleep(Duration::from_millis(50)).await;
                }
                Ok(mut c) => {
                    let Some(mut lent) = c.conn().lend().await else {
                        c.discard();
                        continue;
                    };
                    // A pooled connection the server has spoken on (a FATAL for a
                    // terminated backend, a shutdown) or closed is not used: nothing
                    // was sent on it yet, so another is taken.
                    let fd = lent.conn.socket_fd();
                    let quiet = lent.conn.relay_io().1.is_empty()
                        && crate::socket_peek::peek(&fd) == crate::socket_peek::Peek::Empty;
                    if quiet || stale >= MAX_STALE {
                        break (c, lent);
                    }
                    stale += 1;
                    self.core.metrics().wire.count(WireEvent::StaleSkipped);
                    debug!("a pooled server connection was ended by the server; taking another");
                    lent.conn.relay_done(b'I', true);
                    lent.give_back();
                    c.discard();
                }
                Err(
                    PoolError::NoPrimary
                    | PoolError::LeaseLapsed
                    | PoolError::Closed
                    | PoolError::Connect { .. }
                    | PoolError::ConnectTimeout { .. },
                ) if Instant::now() < deadline => sleep(Duration::from_millis(50)).await,
                // Refused during startup (a restarting server: "the database system is
                // starting up", a closed socket): nothing was sent yet.
                Err(PoolError::Pg(e))
                    if crate::sql::is_disconnect(&e) && Instant::now() < deadline =>
                {
                    sleep(Duration::from_millis(50)).await
                }
                Err(PoolError::Backend(e))
                    if e.as_db_error().is_none() && Instant::now() < deadline =>
                {
                    sleep(Duration::from_millis(50)).await
                }
                // The leader's connections are all stuck (a frozen leader): a write waits
                // while the lease decides, within the failover wait (as /sql's).
                Err(PoolError::Exhausted { .. })
                    if intent == Intent::Write && Instant::now() < deadline =>
                {
                    sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(pool_refusal(&e)),
            }
        };
        let metrics = &self.core.metrics().wire;
        metrics.waited(started.elapsed());
        metrics.class_waited(self.pooling.class, started.elapsed());
        let figure = match self.pooling.mode {
            PoolMode::Transaction => ClassFigure::ServersTransaction,
            PoolMode::Session => ClassFigure::ServersSession,
        };
        metrics.class_add(self.pooling.class, figure, 1);
        let mut held = Held {
            checkout,
            lent: Some(lent),
            out: std::mem::take(&mut self.spare_out),
            pending: 0,
            expected: 0,
            swallow: 0,
            parses: VecDeque::new(),
            status: b'I',
            dirty: false,
            broken: false,
            lost_reported: false,
            rerunnable: None,
            rerun: false,
            figure,
            hidden: 0,
            taken: Instant::now(),
        };
        if !self.sets.is_empty() {
            held.dirty = true;
            let sets = self.sets.join(";\n");
            if let Err(e) = held.lent().conn.simple(&sets).await {
                held.broken = true;
                self.release(held).await;
                let msg = format!("replaying the session's SET commands failed: {e}");
                return Err((FEATURE_NOT_SUPPORTED, msg));
            }
        }
        Ok(held)
    }

    /// Points the client's cancel key at `held` (until it is released): a transaction of
    /// its own. (A shared read's key points at the connection only while the read runs.)
    fn cancels_to(&self, mut held: Held) -> Held {
        *self.key.slot.lock() = Some(held.checkout.conn().canceller());
        held
    }

    /// Gives the server connection back: to its pool when idle and sound, else closed.
    async fn release(&mut self, mut held: Held) {
        *self.key.slot.lock() = None;
        if held.out.capacity() <= FLUSH_AT * 2 {
            held.out.clear();
            self.spare_out = std::mem::take(&mut held.out);
        }
        give_back(&self.core, self.pooling, held).await
    }
    /// Answers a message that could not get a server connection: an error, and after the
    /// rest of an extended-protocol batch (up to its `Sync`), `ReadyForQuery`.
    async fn refuse(&mut self, tag: u8, code: &str, msg: &str) -> bool {
        debug!(code, msg, "no server connection for the client");
        messages::error(&mut self.wbuf, "ERROR", code, msg);
        if tag != b'Q' && tag != b'S' {
            loop {
                match self.next_client().await {
                    Some(m) if m[0] == b'S' => break,
                    Some(m) if m[0] == b'X' => return false,
                    Some(_) => {}
                    None => return false,
                }
            }
        }
        messages::ready_for_query(&mut self.wbuf, b'I');
        true
    }

    /// The client's next message between transactions (answers written first); `None`
    /// when it left, broke the framing, its session-mode server connection ended, or the
    /// core drains. A session-mode client's server connection is watched meanwhile: its
    /// notifications, notices and parameter changes reach the client as they come.
    async fn next_idle(&mut self) -> Option<BytesMut> {
        loop {
            match messages::take(&mut self.rbuf, messages::MAX_MESSAGE_BYTES) {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => {
                    fatal(&mut self.client, "08P01", &e.to_string()).await;
                    return None;
                }
            }
            // Bytes the server sent after its last `ReadyForQuery`, in the same read.
            if let Err(lost) = self.relay_idle_server() {
                self.idle_server_lost(lost).await;
                return None;
            }
            self.flush_client().await.ok()?;
            let woke = match self.kept.is_some() {
                true => self.wait_both().await,
                false => self.wait_client().await,
            };
            match woke {
                Woke::Client => self.client.read_into(&mut self.rbuf, CHUNK).await.ok()?,
                Woke::Read => 0,
                Woke::Server => {
                    if let Err(lost) = self.read_idle_server().await {
                        self.idle_server_lost(lost).await;
                        return None;
                    }
                    0
                }
                Woke::Gone => return None,
                Woke::Drain => {
                    fatal(
                        &mut self.client,
                        ADMIN_SHUTDOWN,
                        "terminating connection: ringgate is shutting down",
                    )
                    .await;
                    return None;
                }
            };
        }
    }

    /// Reads from the client (no server connection is held) unless the core drains.
    async fn wait_client(&mut self) -> Woke {
        let read = self.client.read_into(&mut self.rbuf, CHUNK);
        monoio::select! {
            r = read => if r.is_ok() { Woke::Read } else { Woke::Gone },
            _ = self.core.drain.signaled() => Woke::Drain,
        }
    }

    /// Waits for whichever of the client and the kept server connection speaks first (or
    /// the drain). Both waits are readiness only, so the one that loses the race is dropped
    /// with no byte read: what it would have read stays in its socket for the next turn.
    async fn wait_both(&mut self) -> Woke {
        let Some(held) = self.kept.as_mut() else {
            return Woke::Gone;
        };
        let server = held.lent().conn.relay_io().0.readable();
        let client = self.client.readable();
        monoio::select! {
            r = client => if r.is_ok() { Woke::Client } else { Woke::Gone },
            // An error is the server connection's end, which its read reports.
            _ = server => Woke::Server,
            _ = self.core.drain.signaled() => Woke::Drain,
        }
    }

    /// Reads what the kept server connection sent while its client is idle (it said it
    /// had something: the read returns at once); an end of stream or a read error means
    /// the connection is gone.
    async fn read_idle_server(&mut self) -> Result<(), IdleLoss> {
        let Some(held) = self.kept.as_mut() else {
            return Ok(());
        };
        let (stream, rbuf) = held.lent().conn.relay_io();
        match stream.read_into(rbuf, CHUNK).await {
            Ok(_) => Ok(()),
            Err(e) => Err(IdleLoss::Read(e.to_string())),
        }
    }

    /// Queues for the client the asynchronous messages (`NotificationResponse`,
    /// `NoticeResponse`, `ParameterStatus`) read from the kept server connection while its
    /// client is idle; a partial message stays for the next read. Anything else (a FATAL
    /// error before the server closes) means the connection is gone.
    fn relay_idle_server(&mut self) -> Result<(), IdleLoss> {
        let Some(held) = self.kept.as_mut() else {
            return Ok(());
        };
        loop {
            let (_, rbuf) = held.lent().conn.relay_io();
            let m = match messages::take(rbuf, MAX_SERVER_MESSAGE) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => return Err(IdleLoss::Unexpected(e.to_string())),
            };
            match m[0] {
                b'A' | b'N' | b'S' => self.wbuf.extend_from_slice(&m),
                // A FATAL (the backend terminated, the server shutting down): its words.
                b'E' => {
                    let said = error_field(messages::body(&m), b'M')
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .unwrap_or_default();
                    return Err(IdleLoss::Said(said));
                }
                other => {
                    let what = format!("message type {:?} while idle", other as char);
                    return Err(IdleLoss::Unexpected(what));
                }
            }
        }
    }

    /// Ends a session whose kept server connection ended while the client was idle: what
    /// the server sent before is delivered, then a FATAL `08006` (the session's state went
    /// with the connection, so it is not continued on another).
    async fn idle_server_lost(&mut self, lost: IdleLoss) {
        debug!(%lost, "a session-mode server connection ended while its client was idle");
        self.core.metrics().wire.count(WireEvent::ServerLost);
        if let Some(mut held) = self.kept.take() {
            held.broken = true;
            self.release(held).await;
        }
        let _ = self.flush_client().await;
        let msg = format!("{SESSION_LOST} ({lost})");
        fatal(&mut self.client, CONNECTION_FAILURE, &msg).await;
    }

    /// The client's next message inside a transaction; `None` when it left or broke the
    /// framing (then told so with a FATAL `08P01`).
    async fn next_client(&mut self) -> Option<BytesMut> {
        loop {
            match messages::take(&mut self.rbuf, messages::MAX_MESSAGE_BYTES) {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => {
                    let _ = self.flush_client().await;
                    fatal(&mut self.client, "08P01", &e.to_string()).await;
                    return None;
                }
            }
            self.flush_client().await.ok()?;
            self.client.read_into(&mut self.rbuf, CHUNK).await.ok()?;
        }
    }

    async fn flush_client(&mut self) -> Result<(), Gone> {
        self.cache.capture(&self.wbuf);
        if !self.wbuf.is_empty() {
            self.flushes += 1;
        }
        self.client
            .write_all(&mut self.wbuf)
            .await
            .map_err(|_| Gone::Client)
    }
}

impl cached::Relayed for Relay {
    fn core(&self) -> Rc<Core> {
        self.core.clone()
    }

    fn cache(&mut self) -> &mut cached::Session {
        &mut self.cache
    }

    fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    fn sets(&self) -> &[String] {
        &self.sets
    }

    fn unread(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    fn to_client(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    fn cache_may_answer(&self) -> bool {
        self.pooling.mode == PoolMode::Transaction
            && self.deferred_begin.is_none()
            && self.kept.is_none()
    }

    fn statement_rest(&self, name: &[u8]) -> Option<Bytes> {
        Relay::statement_rest(self, name)
    }

    async fn next_client(&mut self) -> Option<BytesMut> {
        Relay::next_client(self).await
    }

    async fn flush_client(&mut self) -> bool {
        Relay::flush_client(self).await.is_ok()
    }

    async fn transaction(&mut self, first: BytesMut) -> bool {
        Relay::transaction(self, first).await
    }
}

/// [`Relay::release`]'s part that needs no session: the connection back to its pool when
/// idle and sound, else closed (a shared read's runner gives its connection back with it
/// while it writes its own answer).
async fn give_back(core: &Core, pooling: Pooling, mut held: Held) {
    let Some(mut lent) = held.lent.take() else {
        return;
    };
    core.metrics().wire.class_sub(pooling.class, held.figure);
    let sound = !held.broken && held.status == b'I' && held.pending == 0;
    let mut broken = !sound;
    if sound && pooling.mode == PoolMode::Session {
        // Temp tables, LISTENs, advisory locks, prepared statements, settings.
        broken = lent.conn.simple("DISCARD ALL").await.is_err();
        lent.conn.relayed_statements().clear();
    } else if sound && held.dirty {
        broken = lent.conn.simple("RESET ALL").await.is_err();
    }
    lent.conn.relay_done(held.status, broken);
    lent.give_back();
    if broken {
        held.checkout.discard();
    }
}

/// Sends what waits for the server; on a leader connection only while its lease may take
/// writes (held while it may not, abandoned when it is lost).
async fn send_under_lease(held: &mut Held) -> Result<(), Gone> {
    if held.out.is_empty() {
        return Ok(());
    }
    if let Some(lease) = held.checkout.lease() {
        while !lease.may_send() {
            if !lease.state().is_valid() {
                return Err(Gone::Server);
            }
            sleep(LEASE_POLL).await;
        }
    }
    let mut out = std::mem::take(&mut held.out);
    let r = held.lent().conn.relay_io().0.write_all(&mut out).await;
    held.out = out;
    r.map_err(|_| Gone::Server)
}

/// Prepares `p` on the held connection first when it lacks it (its answer not relayed).
fn ensure(held: &mut Held, p: &Prepared) {
    let relayed = held.lent().conn.relayed_statements();
    // Looked up first: the name is cloned only when it is new to the connection.
    if !relayed.contains(&p.server) {
        relayed.insert(p.server.clone());
        held.parses.push_back(Some(p.server.clone()));
        messages::frontend(&mut held.out, b'P', &[p.server.as_bytes(), b"\0", &p.rest]);
        held.swallow += 1;
        held.expected += 1;
    }
}

/// A statement's name on server connections: from its text and parameter types.
fn server_name(rest: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, rest);
    format!("rgw_{}", hex::encode(&d.as_ref()[..16]))
}

/// Whether an `ErrorResponse` body has severity FATAL or PANIC (the server closes).
fn is_fatal(body: &[u8]) -> bool {
    error_field(body, b'V')
        .or_else(|| error_field(body, b'S'))
        .is_some_and(|v| v == b"FATAL" || v == b"PANIC")
}

/// One field of an `ErrorResponse` body.
fn error_field(body: &[u8], want: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, next) = messages::split_cstr(after)?;
        if field == want {
            return Some(value);
        }
        rest = next;
    }
    None
}

impl Relay {
    /// [`session_only`], in transaction mode (session mode has a session of its own).
    fn session_only(&self, sql: &str) -> Option<&'static str> {
        match self.pooling.mode {
            PoolMode::Transaction => session_only(sql),
            PoolMode::Session => None,
        }
    }
}

/// Why a statement needs a session of its own, when it does.
/// Looked at once per `Query` and `Parse` in transaction mode, so it compares without
/// lowercasing a copy of the statement.
pub fn session_only(sql: &str) -> Option<&'static str> {
    let text = sql.trim_start().as_bytes();
    let starts = |p: &str| {
        text.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
    };
    let contains = |p: &str| {
        text.windows(p.len())
            .any(|w| w.eq_ignore_ascii_case(p.as_bytes()))
    };
    if starts("listen") {
        return Some("LISTEN needs a session of its own; ringgate pools by transaction");
    }
    if starts("prepare ") {
        return Some("SQL PREPARE needs a session of its own; ringgate pools by transaction (protocol-level prepared statements work)");
    }
    if starts("declare") && contains("with hold") {
        return Some(
            "WITH HOLD cursors need a session of their own; ringgate pools by transaction",
        );
    }
    let session_lock = ["pg_advisory_lock", "pg_try_advisory_lock"]
        .iter()
        .any(|f| contains(f));
    if session_lock {
        return Some("session advisory locks need a session of their own; ringgate pools by transaction (use pg_advisory_xact_lock)");
    }
    None
}

/// Whether a (lowercased) statement changes a session parameter for the session.
fn is_session_set(lower: &str) -> bool {
    if let Some(rest) = lower.strip_prefix("set ") {
        let rest = rest.trim_start();
        return !(rest.starts_with("local ")
            || rest.starts_with("transaction")
            || rest.starts_with("constraints"));
    }
    lower.starts_with("reset ")
}

/// A statement that fails with [`FEATURE_NOT_SUPPORTED`] and `why`.
fn refusal_sql(why: &str) -> String {
    format!(
        "DO $ringgate$BEGIN RAISE EXCEPTION USING ERRCODE = '{FEATURE_NOT_SUPPORTED}', MESSAGE = '{}'; END$ringgate$",
        why.replace('\'', "")
    )
}

/// A pool error as the client's error: SQLSTATE and message.
fn pool_refusal(e: &PoolError) -> (&'static str, String) {
    match e {
        PoolError::Exhausted { .. } | PoolError::Budget { .. } => {
            (TOO_MANY_CONNECTIONS, e.to_string())
        }
        PoolError::Pg(pg) => match pg.db() {
            // The server refused the role (e.g. its password changed since): its words.
            Some(db) => (
                if db.code.starts_with("28") {
                    "28P01"
                } else {
                    CANNOT_CONNECT
                },
                db.message.clone(),
            ),
            None => (CANNOT_CONNECT, pg.to_string()),
        },
        other => (CANNOT_CONNECT, other.to_string()),
    }
}

/// The named prepared statement a Describe or Close body (`S` + name) refers to; `None`
/// for a portal or the unnamed statement.
fn statement_named(body: &[u8]) -> Option<&[u8]> {
    let (kind, rest) = body.split_first()?;
    if *kind != b'S' {
        return None;
    }
    messages::split_cstr(rest)
        .map(|(name, _)| name)
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_only_features_are_recognised() {
        assert!(session_only("LISTEN foo").is_some());
        assert!(session_only("  prepare p as select 1").is_some());
        assert!(session_only("DECLARE c CURSOR WITH HOLD FOR SELECT 1").is_some());
        assert!(session_only("select pg_advisory_lock(1)").is_some());
        assert!(session_only("select pg_try_advisory_lock(1)").is_some());
        assert!(session_only("select pg_advisory_xact_lock(1)").is_none());
        assert!(session_only("select * from pgbench_accounts where aid = $1").is_none());
        assert!(session_only("DECLARE c CURSOR FOR SELECT 1").is_none());
        // Any case, no copy made.
        assert!(session_only("LiStEn x").is_some());
        assert!(session_only("Select PG_Advisory_Lock(1)").is_some());
        assert!(session_only("declare c cursor With Hold for select 1").is_some());
        assert!(session_only("").is_none());
        assert!(session_only("lis").is_none());
    }

    #[test]
    fn session_sets_are_told_from_local_ones() {
        assert!(is_session_set("set search_path = x"));
        assert!(is_session_set("reset search_path"));
        assert!(!is_session_set("set local search_path = x"));
        assert!(!is_session_set(
            "set transaction isolation level serializable"
        ));
        assert!(!is_session_set("select 1"));
    }

    #[test]
    fn server_names_follow_text_and_types() {
        let a = server_name(b"select $1\0\0\x01\0\0\0\x17");
        assert_eq!(a, server_name(b"select $1\0\0\x01\0\0\0\x17"));
        assert_ne!(a, server_name(b"select $1\0\0\0"));
        assert!(a.len() < 64, "fits NAMEDATALEN");
    }

    #[test]
    fn fatal_errors_are_recognised() {
        let mut out = BytesMut::new();
        messages::error(&mut out, "FATAL", "57P01", "bye");
        assert!(is_fatal(messages::body(&out)));
        let mut out = BytesMut::new();
        messages::error(&mut out, "ERROR", "42P01", "no table");
        assert!(!is_fatal(messages::body(&out)));
    }
}
