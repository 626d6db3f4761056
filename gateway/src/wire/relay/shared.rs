//! Shared round trips: autocommit reads of several clients sent to one server connection
//! in one write (transaction mode, `RINGGATE_PG_SHARED_READS`).
//!
//! A client's next transaction is a *read* here when it is one autocommit read whose
//! messages have all arrived: a `Query`, an unnamed `Parse`/`Bind`/`Describe`/`Execute`
//! ending in `Sync`, or a `Bind` of one of the client's named statements to the unnamed
//! portal with its `Describe`/`Execute`/`Sync`, classified a read as for the read/write
//! split. Each core keeps a queue of reads per role (tenant, role, database, options,
//! where it runs). A read starts a *runner* of its own while the queue has fewer runners
//! than the core's even share of the tenant's connections (or than all of them, while the
//! oldest queued read has waited [`STARVED_AFTER`]: the runners are held up by long reads
//! and other connections may be idle): the runner checks out a connection as a relay of
//! its own would (so with connections to spare a read runs at once, alone). Past that,
//! the read queues, and the next runner to have a connection sends its own read and up to
//! [`MAX_BATCH`] queued ones in one write and hands each client the server's answers up to
//! its `ReadyForQuery`. The server runs them one after another as it would from one
//! pipelining client: each ends with its own `Sync`, so an error in one is skipped to its
//! own `Sync` and the next runs as usual, and a read leaves the session idle and unchanged
//! for the next. What it saves is the server's and ringgate's per-read socket work: one
//! write, one server wake-up and fewer reads for the whole batch. A named statement the
//! connection lacks is prepared first in the same write (its `ParseComplete` not relayed).
//!
//! After a batch the runner hands its connection (and the runner's role) to the owner of
//! the oldest read still queued; the connection goes back to the pool instead when the
//! pool has other waiters (transactions that are not shared reads, runners checking out),
//! when another core waits for the tenant's permits (it is then closed so the permit
//! moves, as any returned connection would be), and once it has been handed on for
//! [`HAND_ON_FOR`] (a checkout looks at a replica's lag and at a session the server ended
//! again).
//!
//! Each owner writes its own answer: when it is complete, or as it comes once it holds
//! [`OWNER_BACKLOG`] bytes; the runner writes its own read's answer while it reads the
//! batch's. A client slow to read a long answer holds up the reads sent after its own for
//! [`OWNER_PATIENCE`] at most: then its answer is kept for it (up to [`OWNER_CAP`], beyond
//! which the runner waits for it as a relay of its own would; the runner's own client
//! waits with it). A read that runs long holds up the reads behind it on the same
//! connection; the batch is at most [`MAX_BATCH`] reads.
//!
//! A read's client can cancel it while it runs (its cancel key points at the connection
//! only then); a cancel that arrives while the read is still queued behind others is
//! dropped, as the server drops a cancel that finds nothing running. A cancel sent as its
//! read finishes can reach the read after it on the same connection, as with any
//! transaction pooler whose connection runs another client's statement next (here the
//! next read is already there). A server connection lost mid-batch answers every read not
//! yet answered with `08007` (the one running with the server's words), as a transaction
//! of its own would be. A read a replica refuses as a write (`25006`) is rerun by its
//! owner on the leader, alone, unless part of its answer already reached its client (rows
//! before the write): then the client gets the replica's error, as from a relay of its own
//! past its first write to the client.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, VecDeque},
    future::poll_fn,
    rc::{Rc, Weak},
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use ringgate_discovery::Role;
use ringgate_pool::Intent;

use super::{
    cached, error_field, give_back, is_fatal, messages, send_under_lease, Gone, Held, Pooling,
    Prepared, Relay, LOST, READ_ONLY, RESOLUTION_UNKNOWN,
};
use crate::{
    metrics::wire::WireEvent, per_core::Core, projects::PoolMode, sql::classify::Kind,
    wire::cancel::Slot,
};

/// Most reads one batch sends.
const MAX_BATCH: usize = 32;
/// How long a connection is handed from runner to runner before it goes back to the pool.
const HAND_ON_FOR: Duration = Duration::from_secs(1);
/// How long the oldest queued read waits before a read may start a runner beyond the
/// core's share of the tenant's connections.
const STARVED_AFTER: Duration = Duration::from_millis(100);
/// Answer bytes a runner keeps for an owner before it waits for the owner to write them.
const OWNER_BACKLOG: usize = 256 << 10;
/// How long a runner waits, once per read, for an owner to write its backlog: a client
/// slow to read its answer holds up the reads sent after its own for this long at most.
const OWNER_PATIENCE: Duration = Duration::from_millis(50);
/// Answer bytes a runner keeps for a slow owner before it waits for it, however long.
const OWNER_CAP: usize = 16 << 20;

/// The reads of one role on one core waiting for a runner.
#[derive(Default)]
pub(super) struct Queue {
    /// Reads waiting to be sent, oldest first.
    waiting: RefCell<VecDeque<Rc<Unit>>>,
    /// Runners now (holding a connection or checking one out).
    runners: Cell<usize>,
}

/// What a queued read's owner is told.
enum State {
    /// Waiting for a runner.
    Queued,
    /// Sent; `answer` holds what the owner has not written yet, `done` once its
    /// `ReadyForQuery` (or the error that ends it) is in.
    Answering { answer: BytesMut, done: bool },
    /// A replica refused it as a write: the owner reruns it on the leader.
    Rerun,
    /// The owner runs the next batch, on this connection (`None`: it checks one out).
    Run(Option<Box<Held>>),
}

/// One client's read, shared between its owner and the runner that sends it.
pub(super) struct Unit {
    /// When its owner asked.
    since: Instant,
    /// The client's messages as sent to the server, the `Sync` (or the `Query`) last.
    msgs: BytesMut,
    /// The client's messages as it sent them, when `msgs` renamed its statement.
    original: Option<BytesMut>,
    /// The client's statement it binds: its server name and `Parse` body after the name.
    statement: Option<(String, Bytes)>,
    /// This batch prepares `statement` on the connection first.
    ensure: Cell<bool>,
    /// The `ParseComplete` of that `Parse` is still to come (and not to relay).
    swallow: Cell<bool>,
    state: RefCell<State>,
    /// The owner, woken when `state` changes.
    owner: Cell<Option<Waker>>,
    /// The runner, woken when the owner wrote what waited.
    runner: Cell<Option<Waker>>,
    /// The owner's cancel slot: pointed at the connection while the read runs.
    cancel: Slot,
    /// The owner left (its client is gone): answers are dropped, it is not handed a
    /// connection.
    abandoned: Cell<bool>,
    /// The owner waits for this read (and writes its answer as it comes): a runner may
    /// wait for it to write a long answer. A runner listens for its own read while the
    /// batch holding it runs; one busy running a batch without it is not waited for (two
    /// runners could otherwise wait for each other).
    listening: Cell<bool>,
    /// Part of the answer went to the owner's client: the read can no longer be rerun
    /// unseen.
    sent: Cell<bool>,
    /// The owner did not write its backlog within [`OWNER_PATIENCE`]: its answer is kept
    /// (up to [`OWNER_CAP`]) rather than waited for.
    slow: Cell<bool>,
}

impl Unit {
    fn set(&self, state: State) {
        *self.state.borrow_mut() = state;
        wake(&self.owner);
    }

    /// Adds answer bytes (dropped when the owner left).
    fn answer(&self, bytes: &[u8]) {
        if let State::Answering { answer, .. } = &mut *self.state.borrow_mut() {
            if !self.abandoned.get() {
                answer.extend_from_slice(bytes);
            }
        }
    }

    /// Ends the answer: the owner writes what is left and goes on.
    fn finish(&self) {
        if let State::Answering { done, .. } = &mut *self.state.borrow_mut() {
            *done = true;
        }
        wake(&self.owner);
    }

    /// Drops what the answer holds so far.
    fn clear(&self) {
        if let State::Answering { answer, .. } = &mut *self.state.borrow_mut() {
            answer.clear();
        }
    }

    fn backlog(&self) -> usize {
        match &*self.state.borrow() {
            State::Answering { answer, .. } if !self.abandoned.get() => answer.len(),
            _ => 0,
        }
    }
}

fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

thread_local! {
    /// Each core's queues (a core is one thread), by role, database, tenant and intent;
    /// a queue lives as long as a relay of its role holds it.
    static QUEUES: RefCell<HashMap<String, Weak<Queue>>> = RefCell::default();
}

/// The queue for `key` on this core.
fn queue_for(key: String) -> Rc<Queue> {
    QUEUES.with(|q| {
        let mut table = q.borrow_mut();
        if let Some(found) = table.get(&key).and_then(Weak::upgrade) {
            return found;
        }
        if table.len() >= 64 && table.len().is_power_of_two() {
            table.retain(|_, w| w.strong_count() > 0);
        }
        let queue = Rc::new(Queue::default());
        table.insert(key, Rc::downgrade(&queue));
        queue
    })
}

/// One autocommit read found at the head of a client's messages.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ReadUnit<'a> {
    /// Its statement's text.
    pub text: &'a [u8],
    /// The length of the rest of its messages after the first, through its `Sync`.
    pub rest: usize,
    /// The client's named statement it binds, with its name (`None`: unnamed).
    pub named: Option<(&'a [u8], &'a Prepared)>,
}

/// The read `first` starts, with the rest of its messages in `rest`, when it can share a
/// round trip: a `Query`; an unnamed `Parse` followed by unnamed `Bind`, `Describe` and
/// `Execute` and a `Sync`; or a `Bind` of a named statement of the client's (`statement`
/// finds it) to the unnamed portal, followed by `Describe` of that portal or statement,
/// `Execute` and a `Sync` — all arrived. `None` for anything else.
pub(super) fn read_unit<'a>(
    first: &'a [u8],
    rest: &[u8],
    statement: impl Fn(&[u8]) -> Option<&'a Prepared>,
) -> Option<ReadUnit<'a>> {
    let body = messages::body(first);
    let (text, named) = match first[0] {
        b'Q' => {
            let text = body.strip_suffix(b"\0")?;
            return Some(ReadUnit {
                text,
                rest: 0,
                named: None,
            });
        }
        b'P' => {
            let (name, after) = messages::split_cstr(body)?;
            let (text, _) = messages::split_cstr(after)?;
            if !name.is_empty() {
                return None;
            }
            (text, None)
        }
        b'B' => {
            let (portal, after) = messages::split_cstr(body)?;
            let (name, _) = messages::split_cstr(after)?;
            if !portal.is_empty() || name.is_empty() {
                return None;
            }
            let p = statement(name)?;
            let (text, _) = messages::split_cstr(&p.rest)?;
            (text, Some((name, p)))
        }
        _ => return None,
    };
    let mut at = 0;
    loop {
        let header = rest.get(at..at + 5)?;
        let len = u32::from_be_bytes(header[1..5].try_into().ok()?) as usize;
        if len < 4 {
            // Not a message: left for the relay's framing check to refuse.
            return None;
        }
        let msg = rest.get(at..at + 1 + len)?;
        at += 1 + len;
        let body = messages::body(msg);
        let fits = match (msg[0], named) {
            (b'S', _) => {
                return Some(ReadUnit {
                    text,
                    rest: at,
                    named,
                })
            }
            // Bind after an unnamed Parse: portal and statement both unnamed.
            (b'B', None) => body.starts_with(b"\0\0"),
            // Describe of the unnamed portal, or of the statement the read binds.
            (b'D', _) if body == b"P\0" => true,
            (b'D', None) => body == b"S\0",
            (b'D', Some((name, _))) => {
                body.strip_prefix(b"S").and_then(|b| b.strip_suffix(b"\0")) == Some(name)
            }
            // Execute of the unnamed portal.
            (b'E', _) => body.first() == Some(&0),
            _ => false,
        };
        if !fits {
            return None;
        }
    }
}

/// `msgs` (a read binding one of the client's statements, as [`read_unit`] found it: any
/// `Describe` of a statement names that one) with the statement named by `server`, its
/// name on server connections.
fn renamed(msgs: &[u8], server: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(msgs.len() + 2 * server.len());
    let mut at = 0;
    while at + 5 <= msgs.len() {
        let len = u32::from_be_bytes(msgs[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        let msg = &msgs[at..at + 1 + len];
        at += 1 + len;
        let body = messages::body(msg);
        match msg[0] {
            b'B' => {
                let (portal, after) = messages::split_cstr(body).expect("checked by read_unit");
                let (_, params) = messages::split_cstr(after).expect("checked by read_unit");
                messages::frontend(&mut out, b'B', &[portal, b"\0", server, b"\0", params]);
            }
            b'D' if body.first() == Some(&b'S') && body != b"S\0" => {
                messages::frontend(&mut out, b'D', &[b"S", server, b"\0"]);
            }
            _ => out.extend_from_slice(msg),
        }
    }
    out
}

impl Relay {
    /// The read `first` starts (see [`read_unit`]) when it may share a round trip now:
    /// a read, from a plain transaction-mode client (no session `SET`s to replay, no
    /// `BEGIN` deferred). Its rest's length and, for a read binding one of the client's
    /// statements, that statement's server name and `Parse` body after the name.
    pub(super) fn shareable(&self, first: &[u8]) -> Option<(usize, Option<(String, Bytes)>)> {
        let on = self.core.config.pg.is_some_and(|p| p.shared_reads);
        if !on
            || self.pooling.mode != PoolMode::Transaction
            || self.kept.is_some()
            || self.deferred_begin.is_some()
            || !self.sets.is_empty()
        {
            return None;
        }
        let unit = read_unit(first, &self.rbuf, |name| self.statements.get(name))?;
        let sql = std::str::from_utf8(unit.text).ok()?;
        let kind = self
            .core
            .sql_memo
            .kinds
            .get_or_try::<()>(sql, || Ok(crate::sql::classify::classify(sql)))
            .unwrap_or(Kind::Write);
        if kind != Kind::Read || super::session_only(sql).is_some() {
            return None;
        }
        let statement = unit.named.map(|(_, p)| (p.server.clone(), p.rest.clone()));
        Some((unit.rest, statement))
    }

    /// Runs the read made of `first` and the next `rest` bytes of the client's buffer on a
    /// shared round trip; false when the client is gone.
    pub(super) async fn shared(
        &mut self,
        first: BytesMut,
        (rest, statement): (usize, Option<(String, Bytes)>),
        intent: Intent,
    ) -> bool {
        // What the read writes, for the result cache (a function a read calls may write).
        let written = cached::written_by(&self.core, &first, |n| self.statement_rest(n));
        self.cache.wrote(written);
        let mut msgs = first;
        msgs.unsplit(self.rbuf.split_to(rest));
        let (msgs, original) = match &statement {
            Some((server, _)) => (renamed(&msgs, server.as_bytes()), Some(msgs)),
            None => (msgs, None),
        };
        let queue = self.shared_queue(intent);
        let unit = Rc::new(Unit {
            msgs,
            original,
            statement,
            ensure: Cell::new(false),
            swallow: Cell::new(false),
            state: RefCell::new(State::Queued),
            since: Instant::now(),
            owner: Cell::new(None),
            runner: Cell::new(None),
            cancel: self.key.slot.clone(),
            abandoned: Cell::new(false),
            listening: Cell::new(false),
            sent: Cell::new(false),
            slow: Cell::new(false),
        });
        // Counted as waiting until it is sent (by its own runner or another).
        let core = self.core.clone();
        let waiting = move || core.metrics().wire.count(WireEvent::SharedReadsWaiting);
        waiting();
        // A read that may start a runner keeps out of the queue: it is its runner's first,
        // so no other runner sends it while its owner is busy (every read in a batch has
        // its owner listening, and its answer's cap holds).
        let mut run = None;
        if queue.runners.get() < self.shared_runners(&queue) {
            queue.runners.set(queue.runners.get() + 1);
            run = Some(None);
        } else {
            queue.waiting.borrow_mut().push_back(unit.clone());
        }
        loop {
            let owned = match run.take() {
                Some(conn) => self.run_batch(&queue, conn, intent, &unit).await,
                None => None,
            };
            let owned = match owned {
                Some(o) => o,
                None => self.owned(&unit).await,
            };
            match owned {
                Owned::Answered => return true,
                Owned::ClientGone => return false,
                Owned::Run(conn) => {
                    // Taken out of the queue for its owner's batch: waiting for it again.
                    waiting();
                    run = Some(conn.map(|h| *h));
                }
                Owned::Rerun => {
                    // Back into the client's buffer, and relayed alone (the replica
                    // refuses it again and the relay reruns it on the leader).
                    // (The runner may still hold the read: its bytes are copied.)
                    let mut msgs = unit.original.as_ref().unwrap_or(&unit.msgs).clone();
                    let first = messages::take(&mut msgs, usize::MAX)
                        .ok()
                        .flatten()
                        .expect("a whole message");
                    msgs.unsplit(std::mem::take(&mut self.rbuf));
                    self.rbuf = msgs;
                    return self.relayed(first).await;
                }
            }
        }
    }

    /// This session's queue for `intent`.
    fn shared_queue(&mut self, intent: Intent) -> Rc<Queue> {
        let slot = match intent {
            Intent::Read => &mut self.shared_queues[0],
            Intent::Write => &mut self.shared_queues[1],
        };
        slot.get_or_insert_with(|| {
            let c = &self.credentials;
            queue_for(format!(
                "{}\0{}\0{}\0{}\0{intent:?}",
                self.tenant, c.user, c.database, c.options
            ))
        })
        .clone()
    }

    /// Runners `queue` may have now: this core's even share of the tenant's connections;
    /// up to all of them while its oldest read has waited [`STARVED_AFTER`] (its runners
    /// are held up by long reads: other connections may be idle).
    fn shared_runners(&self, queue: &Queue) -> usize {
        let limit = self.db.tenant_limit();
        let starved = queue
            .waiting
            .borrow()
            .front()
            .is_some_and(|u| u.since.elapsed() >= STARVED_AFTER);
        match starved {
            true => limit,
            false => limit.div_ceil(self.core.config.workers.max(1)),
        }
    }

    /// Waits for what the runner has for `unit`'s owner, writing its answer to the client
    /// as it comes.
    async fn owned(&mut self, unit: &Rc<Unit>) -> Owned {
        unit.listening.set(true);
        let owned = self.listen(unit).await;
        unit.listening.set(false);
        wake(&unit.runner);
        owned
    }

    async fn listen(&mut self, unit: &Rc<Unit>) -> Owned {
        loop {
            let ready = poll_fn(|cx| {
                let state = unit.state.borrow();
                let ready = match &*state {
                    State::Queued => false,
                    State::Answering { answer, done } => *done || !answer.is_empty(),
                    State::Rerun | State::Run(_) => true,
                };
                if ready {
                    Poll::Ready(())
                } else {
                    unit.owner.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            });
            ready.await;
            let finished = {
                let mut state = unit.state.borrow_mut();
                match &mut *state {
                    State::Answering { answer, done } => {
                        if !answer.is_empty() {
                            unit.sent.set(true);
                        }
                        self.wbuf.extend_from_slice(answer);
                        answer.clear();
                        *done
                    }
                    State::Rerun => return Owned::Rerun,
                    State::Run(_) => {
                        let State::Run(conn) = std::mem::replace(&mut *state, State::Queued) else {
                            unreachable!()
                        };
                        return Owned::Run(conn);
                    }
                    State::Queued => false,
                }
            };
            wake(&unit.runner);
            if self.flush_client().await.is_err() {
                unit.abandoned.set(true);
                wake(&unit.runner);
                return Owned::ClientGone;
            }
            if finished {
                return Owned::Answered;
            }
        }
    }

    /// Runs one batch from `queue` on `conn` (checked out when `None`), `mine` (the
    /// runner's own read, never queued) first, then hands the connection and the runner's
    /// role to the oldest read still queued (or gives the connection back and ends the
    /// role). The runner writes its own answer meanwhile, as any owner does: how that
    /// ended for its client (`None`: the batch was not sent, `mine` is answered already).
    async fn run_batch(
        &mut self,
        queue: &Rc<Queue>,
        conn: Option<Held>,
        intent: Intent,
        mine: &Rc<Unit>,
    ) -> Option<Owned> {
        let held = match conn {
            Some(h) => Ok(h),
            None => self.checkout(intent).await,
        };
        // (The runner's cancel key follows its own read, wherever it runs, as every
        // owner's does: a checkout does not point it at the connection.)
        let core = self.core.clone();
        let pooling = self.pooling;
        let mut held = match held {
            Ok(h) => h,
            Err((code, msg)) => {
                for u in self.take_batch(queue, mine, None) {
                    let mut answer = BytesMut::new();
                    messages::error(&mut answer, "ERROR", code, &msg);
                    messages::ready_for_query(&mut answer, b'I');
                    u.set(State::Answering { answer, done: true });
                }
                pass_on(&core, pooling, queue, None).await;
                return None;
            }
        };
        let batch = self.take_batch(queue, mine, Some(&mut held));
        if batch.len() > 1 {
            core.metrics()
                .wire
                .add(WireEvent::SharedReads, batch.len() as u64);
        }
        let answering = async {
            let mut held = held;
            send_batch(&core, &mut held, &batch).await;
            let others_wait = held.checkout.pool_waiters() > 0 || held.checkout.wanted_elsewhere();
            // A connection handed on for long would skip what a checkout looks at again
            // (a replica's lag, a session the server ended).
            let stale = held.taken.elapsed() >= HAND_ON_FOR;
            if held.broken || others_wait || stale {
                // Others wait for this pool (or another core for its permit): the next
                // runner queues for a connection too.
                give_back(&core, pooling, held).await;
                pass_on(&core, pooling, queue, None).await
            } else {
                pass_on(&core, pooling, queue, Some(held)).await
            }
        };
        // The runner's client reads its own answer as it comes, and a slow one is waited
        // for no longer than any owner: the connection goes on when the batch is answered,
        // whatever its own client still has to read.
        let ((), owned) = monoio::join!(answering, self.owned(mine));
        Some(owned)
    }
}

/// Hands the runner's role (with `conn`, when there is one) to the oldest read still
/// queued; with none queued, the role ends (and `conn` is given back).
async fn pass_on(core: &Core, pooling: Pooling, queue: &Rc<Queue>, conn: Option<Held>) {
    // A queued read's owner waits for it (runners keep theirs out of the queue): it takes
    // over at once.
    let next = pop(core, &mut queue.waiting.borrow_mut());
    match next {
        Some(u) => u.set(State::Run(conn.map(Box::new))),
        None => {
            queue.runners.set(queue.runners.get() - 1);
            if let Some(held) = conn {
                give_back(core, pooling, held).await;
            }
        }
    }
}

impl Relay {
    /// The next batch: `mine` first, then the oldest queued reads, up to
    /// [`MAX_BATCH`]. On `held`, a read whose statement the connection lacks has it
    /// prepared first; a second read of a statement this batch prepares waits for the next
    /// batch (should the `Parse` fail, it would fail as "does not exist" instead of with
    /// the statement's own error).
    fn take_batch(
        &self,
        queue: &Queue,
        mine: &Rc<Unit>,
        mut held: Option<&mut Held>,
    ) -> Vec<Rc<Unit>> {
        let mut waiting = queue.waiting.borrow_mut();
        let mut batch = Vec::with_capacity(waiting.len().min(MAX_BATCH) + 1);
        let mut later = Vec::new();
        let mut next = Some(mine.clone());
        while batch.len() < MAX_BATCH {
            let u = match next.take() {
                Some(mine) => {
                    self.core.metrics().wire.less(WireEvent::SharedReadsWaiting);
                    mine
                }
                None => match pop(&self.core, &mut waiting) {
                    Some(u) => u,
                    None => break,
                },
            };
            u.ensure.set(false);
            if let (Some((server, _)), Some(held)) = (&u.statement, held.as_deref_mut()) {
                let relayed = held.lent().conn.relayed_statements();
                if !relayed.contains(server) {
                    let preparing = batch.iter().any(|b: &Rc<Unit>| {
                        b.ensure.get() && b.statement.as_ref().is_some_and(|(s, _)| s == server)
                    });
                    if preparing {
                        later.push(u);
                        continue;
                    }
                    u.ensure.set(true);
                }
            }
            batch.push(u);
        }
        for u in later.into_iter().rev() {
            waiting.push_front(u);
            self.core
                .metrics()
                .wire
                .count(WireEvent::SharedReadsWaiting);
        }
        batch
    }
}

/// The oldest queued read whose owner is still there.
fn pop(core: &Core, waiting: &mut VecDeque<Rc<Unit>>) -> Option<Rc<Unit>> {
    while let Some(u) = waiting.pop_front() {
        core.metrics().wire.less(WireEvent::SharedReadsWaiting);
        if !u.abandoned.get() {
            return Some(u);
        }
    }
    None
}

/// Sends `batch` in one write and hands each read its answers; a lost connection answers
/// the reads not yet answered with `08007`.
async fn send_batch(core: &Core, held: &mut Held, batch: &[Rc<Unit>]) {
    let canceller = held.checkout.conn().canceller();
    for u in batch {
        if let Some((server, rest)) = u.statement.as_ref().filter(|_| u.ensure.get()) {
            held.lent().conn.relayed_statements().insert(server.clone());
            messages::frontend(&mut held.out, b'P', &[server.as_bytes(), b"\0", rest]);
            u.swallow.set(true);
        }
        held.out.extend_from_slice(&u.msgs);
        held.pending += 1;
        *u.state.borrow_mut() = State::Answering {
            answer: BytesMut::new(),
            done: false,
        };
    }
    *batch[0].cancel.lock() = Some(canceller.clone());
    let mut at = 0;
    let mut rerun = false;
    let mut said = None;
    let outcome = match send_under_lease(held).await {
        Ok(()) => {
            let progress = (&mut at, &mut rerun, &mut said);
            answer_batch(core, held, batch, &canceller, progress).await
        }
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        core.metrics().wire.count(WireEvent::ServerLost);
        held.broken = true;
        for u in &batch[at..] {
            *u.cancel.lock() = None;
            let mut tail = BytesMut::new();
            // The read that ran when the server ended the session hears its words.
            let lost = match said.take() {
                Some(said) => format!("{LOST} (the server said: {said})"),
                None => LOST.to_string(),
            };
            messages::error(&mut tail, "ERROR", RESOLUTION_UNKNOWN, &lost);
            messages::ready_for_query(&mut tail, b'I');
            u.answer(&tail);
            u.finish();
        }
    }
}

/// Reads the server's answers to `batch`, from its `at`th read on, handing each read its
/// own up to its `ReadyForQuery`.
async fn answer_batch(
    core: &Core,
    held: &mut Held,
    batch: &[Rc<Unit>],
    canceller: &ringgate_pool::Canceller,
    (at, rerun, said): (&mut usize, &mut bool, &mut Option<String>),
) -> Result<(), Gone> {
    let on_replica = held.checkout.role() == Role::Replica;
    loop {
        loop {
            let (_, rbuf) = held.lent().conn.relay_io();
            let m = match messages::take(rbuf, super::MAX_SERVER_MESSAGE) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => return Err(Gone::Server),
            };
            let unit = &batch[*at];
            match m[0] {
                b'Z' => {
                    held.status = m.get(5).copied().unwrap_or(b'E');
                    held.pending = held.pending.saturating_sub(1);
                    // A read leaves the session idle; anything else and the session is
                    // not given to anyone again.
                    held.broken |= held.status != b'I';
                    *unit.cancel.lock() = None;
                    if std::mem::take(rerun) {
                        unit.set(State::Rerun);
                    } else {
                        unit.answer(&m);
                        unit.finish();
                    }
                    *at += 1;
                    match batch.get(*at) {
                        Some(next) => *next.cancel.lock() = Some(canceller.clone()),
                        None => return Ok(()),
                    }
                    continue;
                }
                // The ParseComplete of the statement prepared for the read.
                b'1' if unit.swallow.replace(false) => continue,
                b'E' if is_fatal(messages::body(&m)) => {
                    // The server ends the session: the reads not answered are told their
                    // outcome is unknown (the caller does).
                    let words = error_field(messages::body(&m), b'M').unwrap_or_default();
                    *said = Some(String::from_utf8_lossy(words).into_owned());
                    return Err(Gone::Server);
                }
                b'E' if on_replica
                    && !*rerun
                    && !unit.sent.get()
                    && error_field(messages::body(&m), b'C') == Some(READ_ONLY) =>
                {
                    // Nothing of its answer reached its client: what came is dropped (the
                    // owner is not woken for it again) and the read reruns on the leader.
                    *rerun = true;
                    unit.clear();
                }
                b'E' if unit.swallow.replace(false) => {
                    // The statement's Parse failed (the server skipped to the read's Sync):
                    // the connection does not have it.
                    if let Some((server, _)) = &unit.statement {
                        held.lent().conn.relayed_statements().remove(server);
                    }
                    unit.answer(&m);
                }
                // A read never asks for COPY data.
                b'G' => return Err(Gone::Server),
                _ if *rerun => {}
                _ => unit.answer(&m),
            }
            let backlog = unit.backlog();
            if backlog >= OWNER_CAP || (backlog >= OWNER_BACKLOG && !unit.slow.get()) {
                drain_backlog(unit).await;
            }
        }
        let lease = held.checkout.lease().cloned();
        let (stream, rbuf) = held.lent().conn.relay_io();
        let read = stream.read_into(rbuf, super::CHUNK);
        match crate::sql::lease::under_lease(lease.as_ref(), read).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(Gone::Server),
            Err(_) => {
                core.metrics().wire.count(WireEvent::LeaseAbandoned);
                return Err(Gone::Server);
            }
        }
    }
}

/// Waits until `unit`'s owner wrote what its answer holds so far: [`OWNER_PATIENCE`] at
/// most, then not again below [`OWNER_CAP`]; not at all for an owner not listening.
async fn drain_backlog(unit: &Rc<Unit>) {
    wake(&unit.owner);
    let capped = unit.backlog() >= OWNER_CAP;
    let written = poll_fn(|cx| {
        if unit.backlog() < OWNER_BACKLOG || !unit.listening.get() {
            Poll::Ready(())
        } else {
            unit.runner.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    });
    if capped {
        written.await
    } else if monoio::time::timeout(OWNER_PATIENCE, written)
        .await
        .is_err()
    {
        unit.slow.set(true);
    }
}

/// How a shared read ended for its owner.
enum Owned {
    /// Its answer was written to the client.
    Answered,
    /// The client is gone.
    ClientGone,
    /// It is the runner now, with this connection (or to check one out).
    Run(Option<Box<Held>>),
    /// A replica refused it as a write: rerun it alone.
    Rerun,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn none<'a>(_: &[u8]) -> Option<&'a Prepared> {
        None
    }

    fn unnamed(text: &[u8], rest: usize) -> Option<ReadUnit<'_>> {
        Some(ReadUnit {
            text,
            rest,
            named: None,
        })
    }

    #[test]
    fn an_unnamed_extended_read_is_one_unit_through_its_sync() {
        let parse = msg(b'P', b"\0select 1\0\0\0");
        let mut rest = msg(b'B', b"\0\0\0\0\0\0\0\0");
        rest.extend(msg(b'D', b"P\0"));
        rest.extend(msg(b'E', b"\0\0\0\0\0"));
        let sync = msg(b'S', b"");
        let whole = [rest.clone(), sync.clone()].concat();
        assert_eq!(
            read_unit(&parse, &whole, none),
            unnamed(b"select 1", whole.len())
        );
        // Bytes after the Sync are the client's next transaction.
        let more = [whole.clone(), msg(b'Q', b"select 2\0")].concat();
        assert_eq!(
            read_unit(&parse, &more, none),
            unnamed(b"select 1", whole.len())
        );
        // Not all arrived yet, or no Sync: not shared.
        assert_eq!(read_unit(&parse, &rest, none), None);
        assert_eq!(read_unit(&parse, &whole[..whole.len() - 1], none), None);
        // A length that no message has (under its own four bytes): not looked into.
        for len in 0u32..4 {
            let mut bad = b"S".to_vec();
            bad.extend_from_slice(&len.to_be_bytes());
            assert_eq!(read_unit(&parse, &bad, none), None);
        }
    }

    #[test]
    fn named_portals_other_statements_and_flushes_are_not_shared() {
        let sync = msg(b'S', b"");
        let named = msg(b'P', b"s1\0select 1\0\0\0");
        assert_eq!(read_unit(&named, &sync, none), None);
        let parse = msg(b'P', b"\0select 1\0\0\0");
        for other in [
            msg(b'B', b"p1\0\0\0\0\0\0\0\0"),
            msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
            msg(b'D', b"Ss1\0"),
            msg(b'E', b"p1\0\0\0\0\0"),
            msg(b'H', b""),
            msg(b'C', b"S\0"),
        ] {
            let rest = [other, sync.clone()].concat();
            assert_eq!(read_unit(&parse, &rest, none), None);
        }
        // A Bind of the unnamed statement (parsed in an earlier transaction) or of a
        // statement the client never prepared.
        assert_eq!(
            read_unit(&msg(b'B', b"\0\0\0\0\0\0\0\0"), &sync, none),
            None
        );
        assert_eq!(
            read_unit(&msg(b'B', b"\0s1\0\0\0\0\0\0\0"), &sync, none),
            None
        );
        assert_eq!(
            read_unit(&msg(b'Q', b"select 1\0"), b"", none),
            unnamed(b"select 1", 0)
        );
    }

    #[test]
    fn a_bind_of_a_named_statement_is_shared_renamed() {
        let p = Prepared {
            server: "rgw_x".into(),
            rest: Bytes::from_static(b"select $1::int\0\0\0"),
        };
        let find = |n: &[u8]| (n == b"s1").then_some(&p);
        let bind = msg(b'B', b"\0s1\0\0\0\0\0\0\0");
        let mut rest = msg(b'D', b"Ss1\0");
        rest.extend(msg(b'D', b"P\0"));
        rest.extend(msg(b'E', b"\0\0\0\0\0"));
        rest.extend(msg(b'S', b""));
        assert_eq!(
            read_unit(&bind, &rest, find),
            Some(ReadUnit {
                text: b"select $1::int",
                rest: rest.len(),
                named: Some((b"s1", &p)),
            })
        );
        // Describing another statement: not one read.
        let other = [msg(b'D', b"Ss2\0"), msg(b'S', b"")].concat();
        assert_eq!(read_unit(&bind, &other, find), None);
        // Sent to the server under its server name, the rest as it was.
        let sent = renamed(&[bind.clone(), rest.clone()].concat(), b"rgw_x");
        let want = [
            msg(b'B', b"\0rgw_x\0\0\0\0\0\0\0"),
            msg(b'D', b"Srgw_x\0"),
            msg(b'D', b"P\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat();
        assert_eq!(&sent[..], &want[..]);
    }
}
