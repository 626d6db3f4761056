//! Pipelining of single reads. While as many reads of one tenant run on this core as the
//! tenant may have connections here (its limit, or the connections this core holds when
//! the tenant is at its limit: see `Shard::read_slots`), further reads wait in a queue; each connection that
//! finishes a batch takes the whole queue (up to [`MAX_BATCH`]) and sends it in one write,
//! so the backend runs those statements without sleeping in between and the core pays one
//! send and one wake-up per batch instead of per statement.
//!
//! The batch is one write of Parse (for texts new to the connection), Bind, Execute and
//! Sync per read, so one read's error does not touch the others.
//!
//! Only reads ride along: a broken connection fails every statement of its batch, and only a
//! read is safe to rerun then (a queued read whose batch failed goes the ordinary way, with
//! its own checkout and retries). Writes and batch transactions keep a connection each.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, VecDeque},
    rc::Rc,
};

use futures_util::future::join_all;
use ringgate_pool::{settle, Answer, Checkout, Credentials, Intent};

use super::{
    exec::{ExecError, QueryResult},
    exec_error, is_disconnect, pool_error,
    request::{SqlRequest, Statement},
    response::result_response,
    Ctx,
};
use crate::{http::Response, metrics::SqlEvent};

/// Most statements sent in one write.
pub const MAX_BATCH: usize = 32;

/// Batches one connection serves after its own before it goes back to the pool, so
/// writes waiting for a connection of the same pool are not starved by a stream of reads.
const MAX_ROUNDS: usize = 16;

/// Queues kept before idle ones are dropped.
const MAX_QUEUES: usize = 4096;

/// The result handed back to a queued read.
type Outcome = Result<QueryResult, ExecError>;

/// A read waiting for a connection.
struct Job {
    st: Statement,
    done: local_sync::oneshot::Sender<Outcome>,
}

/// One tenant's (project and credentials) queue on this core.
#[derive(Default)]
struct Queue {
    jobs: RefCell<VecDeque<Job>>,
    /// Reads holding a connection and serving the queue.
    drivers: Cell<usize>,
}

impl Queue {
    /// Up to [`MAX_BATCH`] queued reads whose clients are still waiting.
    fn take(&self) -> Vec<Job> {
        let mut jobs = self.jobs.borrow_mut();
        let mut batch = Vec::with_capacity(jobs.len().min(MAX_BATCH));
        while batch.len() < MAX_BATCH {
            match jobs.pop_front() {
                Some(job) if job.done.is_closed() => {}
                Some(job) => batch.push(job),
                None => break,
            }
        }
        batch
    }
}

/// Marks a read as serving its queue; the last one to stop hands the queued reads back to
/// the ordinary path (dropping their senders).
struct Driving(Rc<Queue>);

impl Driving {
    fn new(q: &Rc<Queue>) -> Self {
        q.drivers.set(q.drivers.get() + 1);
        Self(q.clone())
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        let left = self.0.drivers.get() - 1;
        self.0.drivers.set(left);
        if left == 0 {
            self.0.jobs.borrow_mut().clear();
        }
    }
}

/// This core's read queues, by project and then credentials (so a batch never mixes
/// tenants or roles).
#[derive(Default)]
pub struct ReadQueues {
    queues: RefCell<HashMap<String, RoleQueues>>,
}

/// One project's queues, by credentials (a project has few roles).
type RoleQueues = Vec<(Credentials, Rc<Queue>)>;

impl std::fmt::Debug for ReadQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadQueues")
            .field("projects", &self.queues.borrow().len())
            .finish()
    }
}

impl ReadQueues {
    fn queue(&self, project: &str, credentials: &Credentials) -> Rc<Queue> {
        let mut queues = self.queues.borrow_mut();
        // Looked up by reference first: the common case allocates nothing.
        if let Some(q) = queues
            .get(project)
            .and_then(|roles| roles.iter().find(|(c, _)| c == credentials))
        {
            return q.1.clone();
        }
        if queues.values().map(Vec::len).sum::<usize>() >= MAX_QUEUES {
            queues.retain(|_, roles| {
                roles.retain(|(_, q)| q.drivers.get() > 0);
                !roles.is_empty()
            });
        }
        let q = Rc::new(Queue::default());
        queues
            .entry(project.to_string())
            .or_default()
            .push((credentials.clone(), q.clone()));
        q
    }
}

/// Runs a single read, pipelined with other reads of its tenant when all the tenant's
/// connections on this core are busy. `None`: its connection broke (or refused it as
/// read-only), so nothing is known about it; the caller runs it the ordinary way, with its
/// retries.
pub(super) async fn read(ctx: &Ctx, sql: &SqlRequest, st: &Statement) -> Option<Response> {
    let q = ctx
        .memo
        .read_queues
        .queue(&sql.tenant.project, &sql.tenant.credentials);
    let drivers = q.drivers.get();
    let outcome = if drivers > 0
        && drivers
            >= ctx.db.read_slots(
                &sql.tenant.project,
                &sql.tenant.credentials,
                ctx.prefer.as_deref(),
            ) {
        let (done, result) = local_sync::oneshot::channel();
        q.jobs.borrow_mut().push_back(Job {
            st: st.clone(),
            done,
        });
        // Bounded like a checkout: a read queued behind slow statements gets the same 503.
        let started = monoio::time::Instant::now();
        match ctx
            .memo
            .deadlines
            .within(ctx.db.wait_timeout(), result)
            .await
        {
            Some(outcome) => {
                let outcome = outcome.ok()?;
                ctx.event(SqlEvent::Pipelined);
                outcome
            }
            None => {
                let e = ctx
                    .db
                    .reads_exhausted(&sql.tenant.project, started.elapsed());
                return Some(pool_error(&e));
            }
        }
    } else {
        let driving = Driving::new(&q);
        let mut c = match ctx.checkout(sql, Intent::Read).await {
            Ok(c) => c,
            Err(e) => return Some(pool_error(&e)),
        };
        let jobs = q.take();
        let canceller = c.conn().canceller();
        let alone = jobs.is_empty();
        let mut answers = send(&mut c, Some(st), &jobs, ctx.limit).into_iter();
        let mine = settle(answers.next().expect("an answer for this read"));
        let mine = async { ExecError::check(mine.await, ctx.limit) };
        let (mine, batch_broke) = if alone {
            // Alone on its connection: a cancel can only hit this read.
            (ctx.cancellable(canceller, mine).await, false)
        } else {
            futures_util::future::join(mine, hand_back(jobs, answers, ctx.limit)).await
        };
        if broke(&mine) || batch_broke {
            c.discard();
        } else if !q.jobs.borrow().is_empty() {
            monoio::spawn(serve(c, q.clone(), driving, ctx.limit));
        }
        mine
    };
    match outcome {
        Ok(r) => Some(result_response(
            &r,
            st.array_mode.unwrap_or(sql.array_mode),
            sql.raw_text,
        )),
        // Refused as read-only, or the connection broke: the ordinary path reruns it.
        Err(e) if disconnected(&e) || refused_read_only(&e) => None,
        Err(e) => Some(exec_error(&e)),
    }
}

/// Whether the connection broke under this statement.
fn disconnected(e: &ExecError) -> bool {
    e.pg().is_some_and(is_disconnect)
}

fn refused_read_only(e: &ExecError) -> bool {
    e.pg()
        .and_then(|pg| pg.db())
        .is_some_and(|db| db.code == super::READ_ONLY_SQL_TRANSACTION)
}

fn broke(r: &Outcome) -> bool {
    r.as_ref().err().is_some_and(disconnected)
}

/// Keeps serving the queue on `c` for up to [`MAX_ROUNDS`] batches.
async fn serve(mut c: Checkout, q: Rc<Queue>, driving: Driving, limit: usize) {
    for _ in 0..MAX_ROUNDS {
        let jobs = q.take();
        if jobs.is_empty() {
            break;
        }
        let answers = send(&mut c, None, &jobs, limit);
        if hand_back(jobs, answers.into_iter(), limit).await {
            c.discard();
            break;
        }
    }
    drop(driving);
}

/// Sends `first` (when given) and the queued `jobs` in one write on `c`; one answer each,
/// in that order.
fn send(
    c: &mut Checkout,
    first: Option<&Statement>,
    jobs: &[Job],
    limit: usize,
) -> Vec<futures_channel::oneshot::Receiver<Answer>> {
    let batch = first
        .into_iter()
        .chain(jobs.iter().map(|j| &j.st))
        .map(|st| (st.sql.clone(), st.params.clone()))
        .collect();
    c.conn().pipeline(batch, limit)
}

/// Hands each queued read its answer as soon as it is complete; true when the connection
/// broke.
async fn hand_back(
    jobs: Vec<Job>,
    answers: impl Iterator<Item = futures_channel::oneshot::Receiver<Answer>>,
    limit: usize,
) -> bool {
    let broken = Cell::new(false);
    join_all(jobs.into_iter().zip(answers).map(|(job, answer)| {
        let broken = &broken;
        async move {
            let r = ExecError::check(settle(answer).await, limit);
            if broke(&r) {
                broken.set(true);
            }
            // A reader that went away (its client disconnected) needs no answer.
            let _ = job.done.send(r);
        }
    }))
    .await;
    broken.get()
}
