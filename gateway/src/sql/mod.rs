//! The Data API: `POST /sql`, speaking the HTTP protocol of Neon's serverless driver.
//!
//! A request names its tenant and credentials in `Neon-Connection-String`; its statements
//! are classified (read or write), checked out from the core's tenant pool on the member
//! the topology routes to, run with parameters bound (sent as text, typed by the server),
//! and answered in the driver's JSON shape with values as the server's own text output
//! and the server's command tag.
//!
//! A core with no idle connection for a tenant at its limit hands the request to a core
//! that holds one ([`handoff`]) rather than moving a connection.
//!
//! Failure rules: a statement that provably did not take effect is retried (it was not
//! sent: a dead pooled connection, a missing or unreachable leader for up to
//! `RINGGATE_FAILOVER_WAIT`; it was refused before binding, so never executed, see
//! [`exec::ExecError::NotRun`]; it was refused: a replica answering 25006; or the server
//! aborted it before committing, see `aborted_by_server`); a write whose connection broke
//! after it was sent is never retried and gets 503 `outcome_unknown`, and so is one whose
//! commit the server reported as local only (`commit_unconfirmed`, detected by the
//! connection, in `ringgate-pgwire`).

pub mod api_key;
pub mod cache;
pub mod classify;
pub mod exec;
pub mod handoff;
pub mod inbox;
pub mod lease;
pub mod memo;
pub mod pipeline;
pub mod request;
pub mod response;
pub mod tenant;

use std::{rc::Rc, time::Duration};

use http::{Method, StatusCode};
use monoio::time::{sleep, Instant};
use ringgate_discovery::Role;
use ringgate_pool::{Checkout, Error as PoolError, Intent, PgError, Shard};
use tracing::debug;

use self::{
    classify::{commits_with_transaction, Kind},
    exec::ExecError,
    lease::{under_lease, LeaseLost},
    request::{SqlRequest, SqlRequestError},
    response::{
        batch_response, db_error, gateway_error, result_response, startup_error, unavailable,
        write_result,
    },
};
use crate::{
    http::{ClientSocket, Request, Response},
    metrics::{SqlEvent, UNCLASSIFIED},
    per_core::Core,
};

/// Attempts at one statement that was provably not executed, made at once; after them,
/// attempts continue every [`RETRY_PAUSE`] until the failover wait has passed (a leader
/// being promoted refuses writes with 25006 for a moment).
const MAX_ATTEMPTS: usize = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Counts attempts at one statement and paces them.
struct Attempts {
    made: usize,
    deadline: Instant,
}

impl Attempts {
    fn new(wait: Duration) -> Self {
        Self {
            made: 0,
            deadline: Instant::now() + wait,
        }
    }

    /// Whether another attempt may be made (after a pause, once the quick ones are used).
    async fn next(&mut self) -> bool {
        self.made += 1;
        if self.made <= MAX_ATTEMPTS {
            return true;
        }
        if Instant::now() + RETRY_PAUSE >= self.deadline {
            return false;
        }
        sleep(RETRY_PAUSE).await;
        true
    }
}

/// Handles `POST /sql`, counting the answer under the project's tenant class.
pub async fn handle(core: &Rc<Core>, req: &Request) -> Response {
    let mut class = UNCLASSIFIED;
    let response = answer(core, req, &mut class).await;
    core.metrics().sql_answered(class, response.status.as_u16());
    response
}

async fn answer(core: &Rc<Core>, req: &Request, class: &mut usize) -> Response {
    if req.head.method != Method::POST {
        return gateway_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST /sql",
        )
        .with_header(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    }
    let Some(db) = core.db.clone() else {
        return gateway_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_database",
            "no database is configured (DATABASE_URL)",
        );
    };
    let sql = match admit(core, &db, req, class).await {
        Ok(sql) => sql,
        Err(refused) => return refused,
    };
    let ctx = Ctx::new(core, db, req);
    // Pinned once here and awaited through a reference: the statement's future is the
    // largest part of a request's state, and a by-value future would be copied into each
    // place `cache::serve` awaits it.
    let run = std::pin::pin!(ctx.run(&sql));
    cache::serve(core, &sql, &req.head.headers, *class, run).await
}

/// Reads the request's statements and checks who may run them (an API key's tenant, or a
/// connection string's project), setting the tenant class; the refusal as a response.
async fn admit(
    core: &Rc<Core>,
    db: &Rc<Shard>,
    req: &Request,
    class: &mut usize,
) -> Result<SqlRequest, Response> {
    let headers = &req.head.headers;
    let api_key = crate::sessions::presented_key(headers);
    if api_key.is_some() && request::has_connection_string(headers) {
        return Err(gateway_error(
            StatusCode::BAD_REQUEST,
            "ambiguous_credentials",
            "send either an API key (apikey or Authorization: Bearer) or Neon-Connection-String, not both",
        ));
    }
    if let Some(key) = api_key {
        let (tenant, slot) = api_key::tenant(core, db, key, headers).await?;
        *class = slot;
        return request::parse_for(headers, &req.body, &core.config.sql, tenant)
            .map_err(|e| request_error(&e));
    }
    let mut sql = request::parse(headers, &req.body, &core.config.sql, &core.sql_memo.tenants)
        .map_err(|e| request_error(&e))?;
    if let Some(projects) = &core.projects {
        let p = check_project(projects, db, &sql, headers).await?;
        *class = p.class_slot;
        if p.statement_timeout_ms > 0 {
            sql.tenant.credentials.options =
                format!("-c statement_timeout={}", p.statement_timeout_ms);
        }
    }
    Ok(sql)
}

/// The project must exist and the connection string must name its database and one of its
/// roles; the refusal as a response when it does not.
async fn check_project(
    projects: &crate::projects::ProjectCache,
    db: &Rc<Shard>,
    sql: &SqlRequest,
    headers: &http::HeaderMap,
) -> Result<crate::projects::Project, Response> {
    let t = &sql.tenant;
    match projects.get(db, &t.project).await {
        Ok(Some(p))
            if p.database == t.credentials.database && p.roles.contains(&t.credentials.user) =>
        {
            Ok(p)
        }
        Ok(Some(_)) => Err(gateway_error(
            StatusCode::FORBIDDEN,
            "project_mismatch",
            &format!(
                "project {:?} does not use database {:?} with role {:?}",
                t.project, t.credentials.database, t.credentials.user
            ),
        )),
        Ok(None) => {
            // How the project was derived, never which projects exist.
            let how = request::project_origin(headers)
                .map(|o| format!(": {o}"))
                .unwrap_or_default();
            Err(gateway_error(
                StatusCode::NOT_FOUND,
                "unknown_project",
                &format!("no project {:?}{how}", t.project),
            ))
        }
        Err(e) => Err(unavailable("control_unavailable", &e.to_string(), 1)),
    }
}

fn request_error(e: &SqlRequestError) -> Response {
    let (status, code) = match e {
        SqlRequestError::QueryTooLong { .. }
        | SqlRequestError::TooManyParams { .. }
        | SqlRequestError::BatchSize { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded"),
        SqlRequestError::NoConnectionString | SqlRequestError::ConnectionString(_) => {
            (StatusCode::BAD_REQUEST, "bad_connection_string")
        }
        _ => (StatusCode::BAD_REQUEST, "bad_request"),
    };
    gateway_error(status, code, &e.to_string())
}

/// What one request needs to run.
struct Ctx {
    /// The core, for its memo tables and metrics.
    memo: Rc<Core>,
    db: Rc<Shard>,
    wait: Duration,
    limit: usize,
    /// The client's socket: a statement whose client goes away is cancelled.
    client: Option<ClientSocket>,
    /// Handed over by another core: run here, never handed on.
    handed: bool,
    /// The member the handing core routed to (where this core holds connections).
    prefer: Option<String>,
}

impl Ctx {
    fn new(core: &Rc<Core>, db: Rc<Shard>, req: &Request) -> Self {
        Self {
            memo: core.clone(),
            db,
            wait: core.config.failover_wait,
            limit: core.config.sql.max_response_bytes,
            client: req.client,
            handed: false,
            prefer: None,
        }
    }

    /// A request another core handed over, routed there to `node`.
    fn handed(core: &Rc<Core>, db: Rc<Shard>, client: Option<ClientSocket>, node: String) -> Self {
        Self {
            memo: core.clone(),
            db,
            wait: core.config.failover_wait,
            limit: core.config.sql.max_response_bytes,
            client,
            handed: true,
            prefer: Some(node),
        }
    }

    /// Runs `statement`, which has its connection to itself. If the client goes away
    /// meanwhile, the server is asked to cancel it (through `canceller`) and it is still
    /// waited for: it ends with `query_canceled`, or with its result if that came first, and
    /// its connection goes back to the pool as after any error.
    async fn cancellable<T>(
        &self,
        canceller: ringgate_pool::Canceller,
        statement: impl std::future::Future<Output = T>,
    ) -> T {
        // Pinned before either branch so that the statement has one slot in this state.
        let mut statement = std::pin::pin!(statement);
        let Some(client) = self.client else {
            return statement.await;
        };
        let gone = std::pin::pin!(client.gone(&self.memo.deadlines));
        match futures_util::future::select(statement.as_mut(), gone).await {
            futures_util::future::Either::Left((done, _)) => done,
            futures_util::future::Either::Right(((), _)) => {
                self.event(SqlEvent::ClientGone);
                // Boxed: a cancel opens its own (TLS) connection, a large state that only
                // a client that left needs.
                if let Err(error) = Box::pin(canceller.cancel()).await {
                    debug!(%error, "the client went away; its statement could not be cancelled");
                }
                statement.await
            }
        }
    }

    async fn run(&self, sql: &SqlRequest) -> Response {
        let intent = match sql.batch {
            true if sql.txn.read_only => Intent::Read,
            true => Intent::Write,
            false => match sql.statements[0].kind(&self.memo.sql_memo) {
                Kind::Read => Intent::Read,
                Kind::Write => Intent::Write,
            },
        };
        if let Some(r) = handoff::run_elsewhere(self, sql, intent).await {
            return r;
        }
        self.run_here(sql).await
    }

    /// Runs `sql` on this core's pool.
    async fn run_here(&self, sql: &SqlRequest) -> Response {
        if sql.batch {
            // Boxed: a transaction's state is large and batches are the rarer request.
            Box::pin(self.batch(sql)).await
        } else {
            self.single(sql).await
        }
    }

    async fn single(&self, sql: &SqlRequest) -> Response {
        let st = &sql.statements[0];
        let kind = st.kind(&self.memo.sql_memo);
        if kind == Kind::Read {
            if let Some(r) = pipeline::read(self, sql, st).await {
                return r;
            }
        }
        // Boxed: attempts, leases and failover waits make this state several KiB, and most
        // statements are reads answered above; inline, every request's future would carry
        // it (and be copied into its box with it).
        Box::pin(self.single_attempts(sql, kind)).await
    }

    /// Runs a single statement with retries: a write on the leader under its lease, or a
    /// read the pipelined path gave back (refused as read-only, or its connection broke).
    async fn single_attempts(&self, sql: &SqlRequest, kind: Kind) -> Response {
        let st = &sql.statements[0];
        let mut intent = match kind {
            Kind::Read => Intent::Read,
            Kind::Write => Intent::Write,
        };
        let array_mode = st.array_mode.unwrap_or(sql.array_mode);
        let mut attempts = Attempts::new(self.wait);
        while attempts.next().await {
            let mut c = match self.checkout(sql, intent).await {
                Ok(c) => c,
                Err(e) => return pool_error(&e),
            };
            let mut budget = self.limit;
            let lease = match intent {
                Intent::Write => c.lease().cloned(),
                Intent::Read => None,
            };
            // Nothing is sent under a lease that is no longer valid: held for the next
            // leader.
            if lease.as_ref().is_some_and(|l| !l.state().is_valid()) {
                c.discard();
                self.event(SqlEvent::RerunNotSent);
                continue;
            }
            let canceller = c.conn().canceller();
            let sent =
                self.cancellable(canceller, exec::run(c.conn(), st, &mut budget, self.limit));
            let result = match under_lease(lease.as_ref(), sent).await {
                Ok(result) => result,
                Err(LeaseLost) => return self.unknown(c, Unknown::LeaseLost),
            };
            match result {
                Ok(_) if c.conn().commit_unconfirmed() => {
                    return self.unknown(c, Unknown::CommitUnconfirmed)
                }
                Ok(r) => {
                    if kind == Kind::Write {
                        reset_then_release(c);
                    }
                    return result_response(&r, array_mode, sql.raw_text);
                }
                Err(e) => {
                    match self.after_failure(c, intent, &e, || commits_with_transaction(&st.sql)) {
                        Next::Retry(next) => intent = next,
                        Next::Answer(r) => return r,
                    }
                }
            }
        }
        unavailable(
            "backend_unavailable",
            "the statement could not be run after retries",
            1,
        )
    }

    async fn batch(&self, sql: &SqlRequest) -> Response {
        let intent = if sql.txn.read_only {
            Intent::Read
        } else {
            Intent::Write
        };
        let mut begin = String::from("BEGIN");
        if let Some(level) = sql.txn.isolation {
            begin.push_str(" ISOLATION LEVEL ");
            begin.push_str(level);
        }
        if sql.txn.read_only {
            begin.push_str(" READ ONLY");
        }
        if sql.txn.deferrable {
            begin.push_str(" DEFERRABLE");
        }
        let rerunnable = || {
            sql.statements
                .iter()
                .all(|st| commits_with_transaction(&st.sql))
        };
        let mut attempts = Attempts::new(self.wait);
        'attempt: while attempts.next().await {
            let mut c = match self.checkout(sql, intent).await {
                Ok(c) => c,
                Err(e) => return pool_error(&e),
            };
            let lease = match intent {
                Intent::Write => c.lease().cloned(),
                Intent::Read => None,
            };
            // BEGIN runs nothing: a connection that fails it is retried.
            let begun = match under_lease(lease.as_ref(), c.conn().simple(&begin)).await {
                Ok(r) => r,
                Err(LeaseLost) => {
                    c.discard();
                    self.event(SqlEvent::RerunNotSent);
                    continue 'attempt;
                }
            };
            if let Err(e) = begun {
                match self.after_failure(c, intent, &ExecError::NotRun(e), || false) {
                    Next::Retry(_) => continue,
                    Next::Answer(r) => return r,
                }
            }
            let mut budget = self.limit;
            let mut results = Vec::with_capacity(sql.statements.len());
            for st in &sql.statements {
                // Nothing commits before COMMIT: a lease lost before it is a batch held
                // for the next leader (closing the connection aborts the transaction).
                let canceller = c.conn().canceller();
                let ran = match under_lease(
                    lease.as_ref(),
                    self.cancellable(canceller, exec::run(c.conn(), st, &mut budget, self.limit)),
                )
                .await
                {
                    Ok(r) => r,
                    Err(LeaseLost) => {
                        c.discard();
                        self.event(SqlEvent::RerunNotSent);
                        continue 'attempt;
                    }
                };
                match ran {
                    Ok(r) => {
                        let mut one = String::new();
                        write_result(
                            &mut one,
                            &r,
                            st.array_mode.unwrap_or(sql.array_mode),
                            sql.raw_text,
                        );
                        results.push(one);
                    }
                    Err(e) => {
                        if e.pg().is_some_and(aborted_by_server) && rerunnable() {
                            // The transaction died with its backend before COMMIT.
                            c.discard();
                            self.event(SqlEvent::RerunAbortedByServer);
                            continue 'attempt;
                        }
                        if c.conn().simple("ROLLBACK").await.is_err() {
                            c.discard();
                            // The server rolls back a transaction whose connection died.
                            return match e.pg().and_then(PgError::db) {
                                Some(db) => db_error(db),
                                None => unavailable("connection_lost", "the connection broke inside the batch transaction; nothing was committed", 1),
                            };
                        }
                        return exec_error(&e);
                    }
                }
            }
            let committed = match under_lease(lease.as_ref(), c.conn().simple("COMMIT")).await {
                Ok(r) => r,
                Err(LeaseLost) => return self.unknown(c, Unknown::LeaseLost),
            };
            return match committed {
                Ok(()) if c.conn().commit_unconfirmed() => {
                    self.unknown(c, Unknown::CommitUnconfirmed)
                }
                Ok(()) => {
                    reset_then_release(c);
                    batch_response(&results)
                }
                Err(_) if c.conn().commit_unconfirmed() => {
                    self.unknown(c, Unknown::CommitUnconfirmed)
                }
                Err(e) if aborted_by_server(&e) && rerunnable() => {
                    c.discard();
                    self.event(SqlEvent::RerunAbortedByServer);
                    continue 'attempt;
                }
                Err(e) if e.db().is_some() && !is_disconnect(&e) => {
                    db_error(e.db().expect("checked"))
                }
                Err(_) => self.unknown(c, Unknown::ConnectionLost),
            };
        }
        unavailable(
            "backend_unavailable",
            "the batch could not be started after retries",
            1,
        )
    }

    /// Checks out a connection; a write with no reachable leader waits for one up to the
    /// failover wait (nothing has been sent yet, so waiting is safe).
    async fn checkout(&self, sql: &SqlRequest, intent: Intent) -> Result<Checkout, PoolError> {
        let started = Instant::now();
        let deadline = started + self.wait;
        let mut held = false;
        let metrics = self.memo.metrics();
        loop {
            let asked = Instant::now();
            let result = self
                .db
                .checkout_on(
                    &sql.tenant.project,
                    &sql.tenant.credentials,
                    intent,
                    self.prefer.as_deref(),
                )
                .await;
            metrics.pool_waited(asked.elapsed());
            // A write routed to a leader whose lease may have run out, or that stopped
            // answering its probe, is held like one with no leader: nothing has been sent
            // on the connection.
            let result = match result {
                Ok(c) if intent == Intent::Write && c.lease().is_some_and(|l| !l.may_send()) => {
                    Err(PoolError::LeaseLapsed)
                }
                other => other,
            };
            let waitable = match &result {
                Err(
                    PoolError::NoPrimary
                    | PoolError::LeaseLapsed
                    | PoolError::Connect { .. }
                    | PoolError::ConnectTimeout { .. }
                    // The pool closed under a waiting checkout: its member left or changed
                    // role (a failover); the write waits for the next leader.
                    | PoolError::Closed,
                ) => true,
                // The leader's connections are all stuck (a frozen leader): writes wait
                // while the lease decides, within the failover wait.
                Err(PoolError::Exhausted { .. }) => intent == Intent::Write,
                // Refused during startup (closed by a proxy with no server behind it, or
                // "the database system is starting up"): nothing was sent yet.
                Err(PoolError::Pg(e)) => e.db().is_none() || is_disconnect(e),
                Err(PoolError::Backend(e)) => e.as_db_error().is_none(),
                _ => false,
            };
            if !waitable || Instant::now() >= deadline {
                if held && intent == Intent::Write {
                    metrics.write_held(started.elapsed());
                    if waitable {
                        metrics.sql_event(SqlEvent::WriteNoLeader);
                    }
                }
                return result;
            }
            held = true;
            debug!(tenant = %sql.tenant.project, "no usable leader yet; waiting for failover");
            // On the core's deadline timer: a monoio `Sleep` would be inline in every
            // checkout's state.
            self.memo
                .deadlines
                .until(Instant::now() + Duration::from_millis(50))
                .await;
        }
    }

    fn event(&self, e: SqlEvent) {
        self.memo.metrics().sql_event(e);
    }

    /// Decides what follows a failed statement; `rerunnable` says whether the statement
    /// takes effect only through its transaction's commit (asked only when that matters).
    fn after_failure(
        &self,
        c: Checkout,
        intent: Intent,
        e: &ExecError,
        rerunnable: impl FnOnce() -> bool,
    ) -> Next {
        let (pg, sent) = match e {
            ExecError::NotRun(pg) => (pg, false),
            ExecError::Db(pg) => (pg, true),
            other => return Next::Answer(exec_error(other)),
        };
        if pg
            .db()
            .is_some_and(|db| db.code == READ_ONLY_SQL_TRANSACTION)
        {
            // Refused, so not applied: rerun on the leader.
            if c.role() == Role::Leader {
                self.db.report_read_only(c.node());
            }
            self.event(SqlEvent::RerunReadOnly);
            return Next::Retry(Intent::Write);
        }
        if let Some(db) = pg.db() {
            if !is_disconnect(pg) {
                return Next::Answer(db_error(db));
            }
        }
        // The connection is gone.
        let mut c = c;
        if c.conn().commit_unconfirmed() {
            return Next::Answer(self.unknown(c, Unknown::CommitUnconfirmed));
        }
        c.discard();
        if intent == Intent::Read {
            self.event(SqlEvent::RerunRead);
            return Next::Retry(intent);
        }
        if !sent {
            self.event(SqlEvent::RerunNotSent);
            return Next::Retry(intent);
        }
        if aborted_by_server(pg) && rerunnable() {
            self.event(SqlEvent::RerunAbortedByServer);
            return Next::Retry(intent);
        }
        self.event(SqlEvent::OutcomeUnknown);
        Next::Answer(outcome_unknown(Unknown::ConnectionLost))
    }

    /// Closes the connection of a write whose fate cannot be known and answers so.
    fn unknown(&self, c: Checkout, why: Unknown) -> Response {
        c.discard();
        self.event(match why {
            Unknown::ConnectionLost => SqlEvent::OutcomeUnknown,
            Unknown::LeaseLost => SqlEvent::OutcomeUnknownLease,
            Unknown::CommitUnconfirmed => SqlEvent::OutcomeUnknownUnconfirmed,
        });
        outcome_unknown(why)
    }
}

/// Why a write's outcome cannot be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unknown {
    /// The connection broke after the write was sent.
    ConnectionLost,
    /// The leader's lease ran out or passed to another leader before the answer came.
    LeaseLost,
    /// The server said the commit is local only (its wait for a synchronous standby was
    /// cancelled).
    CommitUnconfirmed,
}

/// What to do after a failure.
enum Next {
    Retry(Intent),
    Answer(Response),
}

/// SQLSTATE `read_only_sql_transaction`: a replica (or a leader being demoted) refused a
/// write.
pub(super) const READ_ONLY_SQL_TRANSACTION: &str = "25006";
/// SQLSTATE `admin_shutdown`.
const ADMIN_SHUTDOWN: &str = "57P01";
/// SQLSTATE `crash_shutdown`.
const CRASH_SHUTDOWN: &str = "57P02";
/// SQLSTATE `cannot_connect_now`.
const CANNOT_CONNECT_NOW: &str = "57P03";

/// Whether the error means the server connection is gone (closed, or terminated by the
/// server: admin shutdown, crash shutdown, cannot connect now).
pub(crate) fn is_disconnect(e: &PgError) -> bool {
    // A server error is judged by its code alone: a FATAL refusal at startup (no such
    // database, no permission) is an answer, not an outage.
    match e.db() {
        None => true,
        Some(db) => {
            [ADMIN_SHUTDOWN, CRASH_SHUTDOWN, CANNOT_CONNECT_NOW].contains(&db.code.as_str())
        }
    }
}

/// Whether the server aborted the statement's transaction before it could commit: a FATAL
/// `admin_shutdown` (57P01) error that arrived in place of the statement's completion
/// (fast shutdown as in a Patroni switchover, `pg_terminate_backend`, a backend noticing
/// its postmaster died while it waited for input).
///
/// Why that proves "not applied": PostgreSQL raises this FATAL only when a backend
/// processes its pending die interrupt, and interrupts are held off while a commit is
/// written. The paths that end a backend after its commit record and before
/// ReadyForQuery (a cancelled synchronous-replication wait, a blocked socket write) first
/// switch its output off, so the client sees the connection close, never this error; an
/// immediate shutdown or crash (`quickdie`) reports with WARNING severity and is not
/// matched. A backend exiting with FATAL aborts its open transaction. It holds only for
/// statements that commit with their transaction (see [`commits_with_transaction`]).
fn aborted_by_server(e: &PgError) -> bool {
    e.db()
        .is_some_and(|db| server_aborted(&db.code, &db.severity))
}

/// [`aborted_by_server`] on the error's fields.
fn server_aborted(code: &str, severity: &str) -> bool {
    code == ADMIN_SHUTDOWN && severity == "FATAL"
}

/// 503 `outcome_unknown` with PostgreSQL's own code for it, 08007
/// (transaction_resolution_unknown).
fn outcome_unknown(why: Unknown) -> Response {
    let cause = match why {
        Unknown::ConnectionLost => "the connection to the primary broke after the statement was sent",
        Unknown::LeaseLost => "the primary lost its leadership (its lease ran out or passed to another member) before it answered",
        Unknown::CommitUnconfirmed => "the primary committed locally but its synchronous standby never confirmed it",
    };
    Response::json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "code": "outcome_unknown",
            "sqlstate": "08007",
            "message": format!("{cause}; it may or may not have been applied, and was not retried"),
        }),
    )
    .with_header(http::header::RETRY_AFTER, http::HeaderValue::from(1u32))
}

fn exec_error(e: &ExecError) -> Response {
    match e {
        ExecError::Db(d) | ExecError::NotRun(d) => match d.db() {
            Some(db) => db_error(db),
            None => unavailable("backend_unavailable", &d.to_string(), 1),
        },
        ExecError::TooLarge { .. } => gateway_error(
            StatusCode::INSUFFICIENT_STORAGE,
            "response_too_large",
            &e.to_string(),
        ),
    }
}

/// Session state a request can leave on its server connection (`SET`, `SET ROLE`, `LISTEN`,
/// advisory locks, temporary tables, sequence caches). `RESET ALL` and `RESET ROLE` return
/// to the connection's startup settings (its `-c` options: role, statement timeout).
/// Prepared statements stay: they are ringgate's own cache.
const RESET_SESSION: &str = "RESET ALL; RESET ROLE; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// Resets the session of a connection that ran a write or a batch, then returns it to its
/// pool; runs after the response is on its way, so the client waits for none of it. A
/// connection whose reset fails is closed. Plain reads (per the classifier) skip it.
fn reset_then_release(mut c: Checkout) {
    monoio::spawn(async move {
        if c.conn().simple(RESET_SESSION).await.is_err() {
            c.discard();
        }
    });
}

/// Pool errors as responses: limits and outages are 503 with `Retry-After`.
fn pool_error(e: &PoolError) -> Response {
    match e {
        PoolError::Exhausted { .. } => unavailable("pool_exhausted", &e.to_string(), 1),
        PoolError::Budget { .. } => unavailable("connection_budget_exhausted", &e.to_string(), 1),
        PoolError::NoPrimary => {
            unavailable("no_primary", "no primary is available; retry shortly", 1)
        }
        PoolError::LeaseLapsed => unavailable(
            "no_primary",
            "the primary's leadership lease lapsed and no new primary took over within the failover wait; nothing was sent",
            1,
        ),
        PoolError::Connect { .. }
        | PoolError::ConnectTimeout { .. }
        | PoolError::Closed
        | PoolError::Tls(_) => unavailable("backend_unavailable", &e.to_string(), 1),
        PoolError::Pg(pg) => match pg.db() {
            Some(db) => startup_error(db),
            None => unavailable("backend_unavailable", &pg.to_string(), 1),
        },
        PoolError::Backend(pg) => unavailable("backend_unavailable", &pg.to_string(), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fatal_admin_shutdown_counts_as_aborted() {
        assert!(server_aborted(ADMIN_SHUTDOWN, "FATAL"));
        // quickdie (immediate shutdown) reports 57P01 as a WARNING: it may follow a commit.
        assert!(!server_aborted(ADMIN_SHUTDOWN, "WARNING"));
        assert!(!server_aborted(CRASH_SHUTDOWN, "FATAL"));
        assert!(!server_aborted("57014", "ERROR"));
    }
}
#[cfg(test)]
mod future_size {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn size<'a, A: 'a, B: 'a, F: std::future::Future + 'a>(
        _: impl FnOnce(&'a A, &'a B) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_statement_carries_only_the_state_of_its_common_path() {
        // `/sql`'s future is boxed on its route, i.e. moved (copied) into its allocation
        // once per request: it once was 35 KiB (the statement's future copied into each
        // place the cache awaited it, a transaction's, retries' and a cancel's state, monoio
        // `Sleep`s inline) and that copy cost a fifth of the throughput. What is rare
        // (transactions, retries, cancels, the cache, a pool wait) is boxed where it
        // happens; timers are entries in the core's deadline timer. Now 1.4 KiB.
        let handle = size(|c: &Rc<Core>, r: &Request| handle(c, r));
        let single = size(|c: &Ctx, s: &SqlRequest| c.single(s));
        let read = size(|c: &Ctx, s: &SqlRequest| pipeline::read(c, s, &s.statements[0]));
        eprintln!("/sql future: {handle} bytes (single statement {single}, pipelined read {read})");
        assert!(handle <= 4 * 1024, "/sql future: {handle} bytes");
    }
}
