//! Server connections on the core's own monoio runtime. The only module doing socket I/O.
//!
//! Data-path connections ([`PgConn`]) speak the extended query protocol with text results
//! through `ringgate-pgwire`: every value is the server's own output text. A connection is
//! driven by a task on the core that opened it through a channel, so a request whose
//! caller gives up (a lapsed lease, a timeout) still runs to its end and leaves the
//! connection in a known state; between requests it waits in its `Home`, from which the
//! PostgreSQL front end borrows it directly ([`PgConn::lend`]). `LISTEN` connections
//! stay tokio-postgres clients over a `poll-io` stream.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    task::{Poll, Waker},
    time::Duration,
};

use futures_channel::{mpsc, oneshot};
use futures_util::StreamExt;
use monoio::io::IntoPollIo;
use ringgate_pgwire::{Answer, ConnectConfig, Connection};
use tokio_postgres::{Client, NoTls};
use tracing::{debug, warn};

use crate::{budget::Permit, error::Error};

/// Role and password a tenant connects with, and its database.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Database name.
    pub database: String,
    /// Role name.
    pub user: String,
    /// Password (never logged).
    pub password: String,
    /// Extra startup options, `-c name=value` (e.g. a project's statement timeout); part of
    /// a pool's identity, so a change opens fresh connections.
    pub options: String,
    /// SCRAM keys recovered from a client's proof (ringgate's PostgreSQL front end): when
    /// set, the server is authenticated to with them instead of `password`.
    pub keys: Option<ringgate_pgwire::ClientKeys>,
}

impl Credentials {
    /// Credentials without extra options.
    pub fn new(
        database: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            database: database.into(),
            user: user.into(),
            password: password.into(),
            options: String::new(),
            keys: None,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("database", &self.database)
            .field("user", &self.user)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Where and as whom a pool connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// Node name, for errors and metrics.
    pub node: String,
    /// Credentials.
    pub credentials: Credentials,
    /// `application_name`, so connections can be told apart in `pg_stat_activity`.
    pub application_name: String,
    /// Connect plus startup timeout.
    pub connect_timeout: Duration,
    /// Prepared statements kept per connection.
    pub statement_cache: usize,
    /// Server settings sent at startup, as `-c name=value` options.
    pub options: String,
    /// TLS, when configured.
    pub tls: Option<crate::tls::PgTls>,
    /// Host name as configured: the name the server's certificate must carry.
    pub host: String,
}

/// What it takes to cancel the statement a connection runs: the server's address, the
/// connection's cancel key and the TLS it connected with. A CancelRequest goes over a new
/// connection of its own, made here on the core's runtime.
#[derive(Clone)]
pub struct Canceller {
    token: ringgate_pgwire::CancelToken,
    tls: Option<(crate::tls::PgTls, String)>,
    timeout: Duration,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("addr", &self.token.addr())
            .finish_non_exhaustive()
    }
}

impl Canceller {
    /// Asks the server to cancel whatever the connection runs now, within the connect
    /// timeout. The server answers nothing: the statement, if it still runs, ends with
    /// `query_canceled` (57014) on its own connection.
    pub async fn cancel(&self) -> Result<(), Error> {
        let addr = self.token.addr();
        let tls = self
            .tls
            .as_ref()
            .map(|(t, host)| (t.0.clone(), host.as_str()));
        match monoio::time::timeout(self.timeout, self.token.cancel_over(tls)).await {
            Ok(r) => r.map_err(Error::Pg),
            Err(_) => Err(Error::ConnectTimeout { addr }),
        }
    }
}

/// One statement for [`PgConn::pipeline`]: SQL text and text parameters (`None` is NULL).
pub type Job = (String, Vec<Option<String>>);

/// A request to a connection's task.
enum Request {
    /// Statements sent in one write; each answer goes back on its own channel. With
    /// `check`, the connection first looks for a session that ended while it was idle.
    Jobs {
        jobs: Vec<Job>,
        limit: usize,
        check: bool,
        answers: Vec<oneshot::Sender<Answer>>,
    },
    /// Look (without waiting) for a session that ended while the connection was idle.
    Check { done: oneshot::Sender<()> },
    /// A simple query (no parameters, results discarded).
    Simple {
        sql: String,
        done: oneshot::Sender<Result<(), ringgate_pgwire::Error>>,
    },
    /// Say when the requests sent before it are done (see [`PgConn::lend`]).
    Lend { done: oneshot::Sender<()> },
}

/// Where a connection waits between requests, on its core (pools are per core). Its task
/// takes it out to run a request and puts it back; [`PgConn::lend`] takes it out directly
/// when no request is queued, so lending a connection to a protocol relay, once per
/// transaction, wakes no task and allocates nothing (it went through the task and a
/// thread-local map before: two task wake-ups and three allocations per transaction in
/// `bench/pg-cpu.sh`'s profile).
struct Home {
    conn: RefCell<Option<Box<Connection>>>,
    /// Requests sent and not yet finished by the task.
    queued: Cell<usize>,
    /// The connection is lent: the task waits for it to come back before a request.
    lent: Cell<bool>,
    /// The task, waiting for a lent connection to come back.
    waiting: Cell<Option<Waker>>,
    node: String,
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Home")
            .field("queued", &self.queued.get())
            .field("lent", &self.lent.get())
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Home {
    /// The connection once no lend holds it (`None`: a lend dropped it, so it is closed).
    async fn take(&self) -> Option<Box<Connection>> {
        std::future::poll_fn(|cx| {
            if self.lent.get() {
                self.waiting.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            Poll::Ready(self.conn.borrow_mut().take())
        })
        .await
    }

    fn put(&self, conn: Box<Connection>) {
        *self.conn.borrow_mut() = Some(conn);
    }

    fn lend_ended(&self) {
        self.lent.set(false);
        if let Some(w) = self.waiting.take() {
            w.wake();
        }
    }
}

/// A connection lent to a protocol relay; [`Lent::give_back`] returns it. A `Lent`
/// dropped without being given back closes the connection.
#[derive(Debug)]
pub struct Lent {
    /// The connection.
    pub conn: Box<Connection>,
    lend: Lend,
}

impl Lent {
    /// Returns the connection to its handle (and so to its pool, with the checkout).
    pub fn give_back(self) {
        let Lent { conn, mut lend } = self;
        lend.returned = true;
        warn_unconfirmed(
            &lend.home.node,
            lend.shared.unconfirmed.load(Relaxed),
            &conn,
        );
        publish(&lend.shared, &conn);
        lend.home.put(conn);
    }
}

/// Ends a lend: a connection not given back is marked broken (it closed with its socket).
#[derive(Debug)]
struct Lend {
    home: Rc<Home>,
    shared: Arc<Shared>,
    returned: bool,
}

impl Drop for Lend {
    fn drop(&mut self) {
        if !self.returned {
            self.shared.broken.store(true, Relaxed);
        }
        self.home.lend_ended();
    }
}

/// What a connection's task publishes for its handle after each request.
#[derive(Debug, Default)]
struct Shared {
    broken: AtomicBool,
    unconfirmed: AtomicBool,
    statements: AtomicUsize,
    /// A caller gave up on its statement before the answer (see [`Abandon`]): the
    /// connection is never reused, so a cancel sent for it cannot hit another request.
    abandoned: AtomicBool,
}

/// A pooled server connection: a handle to the task that owns it on its core. Statements
/// are prepared once per connection (cached by text, up to the target's cache size).
#[derive(Debug)]
pub struct PgConn {
    requests: mpsc::UnboundedSender<Request>,
    home: Rc<Home>,
    shared: Arc<Shared>,
    canceller: Canceller,
    /// Asks this connection's cancel task to send a CancelRequest.
    cancel: mpsc::UnboundedSender<()>,
}

/// Armed while a caller awaits its statement: dropped armed (the caller gave up: a lease
/// that ran out, a request dropped), it marks the connection abandoned and has its running
/// statement cancelled. Dropping needs no runtime (it only sends on a channel).
struct Abandon<'a> {
    conn: &'a PgConn,
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.shared.abandoned.store(true, Relaxed);
            let _ = self.conn.cancel.unbounded_send(());
        }
    }
}

// === impl PgConn ===

impl PgConn {
    /// What cancels the statement this connection runs.
    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// Runs `sql` with text `params` (types inferred by the server); its rows may take at
    /// most `limit` bytes. The connection first checks (without waiting) that its session
    /// did not end while idle, so a statement is never sent into a closed session, where
    /// its fate would look unknown: it is answered as not run instead.
    pub async fn query(&self, sql: &str, params: &[Option<String>], limit: usize) -> Answer {
        let jobs = vec![(sql.to_string(), params.to_vec())];
        let mut answers = self.send(jobs, limit, true);
        let mut guard = Abandon {
            conn: self,
            armed: true,
        };
        let answer = settle(answers.pop().expect("one answer per job")).await;
        guard.armed = false;
        answer
    }

    /// Sends `jobs` in one write (reads, which are safe to rerun: no idle check); each
    /// answer is awaited on its own (they are ready in order), each job's rows bounded by
    /// `limit`.
    pub fn pipeline(&self, jobs: Vec<Job>, limit: usize) -> Vec<oneshot::Receiver<Answer>> {
        self.send(jobs, limit, false)
    }

    fn send(&self, jobs: Vec<Job>, limit: usize, check: bool) -> Vec<oneshot::Receiver<Answer>> {
        let (answers, receivers): (Vec<_>, Vec<_>) =
            jobs.iter().map(|_| oneshot::channel()).unzip();
        let sent = self.request(Request::Jobs {
            jobs,
            limit,
            check,
            answers,
        });
        // The task is gone: nothing was sent.
        if let Err(e) = sent {
            if let Request::Jobs { answers, .. } = e.into_inner() {
                for a in answers {
                    let _ = a.send(Answer {
                        result: Err(ringgate_pgwire::Error::Closed),
                        may_have_run: false,
                        broken: true,
                        commit_unconfirmed: false,
                    });
                }
            }
        }
        receivers
    }

    /// Runs `sql` with the simple query protocol (several statements allowed, results
    /// discarded): `BEGIN`, `COMMIT`, `ROLLBACK`, session resets, pings.
    pub async fn simple(&self, sql: &str) -> Result<(), ringgate_pgwire::Error> {
        let (done, result) = oneshot::channel();
        let request = Request::Simple {
            sql: sql.to_string(),
            done,
        };
        if self.request(request).is_err() {
            return Err(ringgate_pgwire::Error::Closed);
        }
        let mut guard = Abandon {
            conn: self,
            armed: true,
        };
        let r = result.await.unwrap_or(Err(ringgate_pgwire::Error::Closed));
        guard.armed = false;
        r
    }

    /// Whether the session ended while the connection was idle (the server closed it or
    /// sent an error), looked at without waiting; also true when the connection is
    /// already known to be closed.
    pub async fn ended_while_idle(&self) -> bool {
        let (done, checked) = oneshot::channel();
        if self.request(Request::Check { done }).is_err() {
            return true;
        }
        let _ = checked.await;
        self.is_closed()
    }

    /// Lends the connection itself to a caller that speaks the protocol on it (ringgate's
    /// PostgreSQL front end relays a client's messages), once the requests sent before are
    /// done; `None` when the connection is closed.
    pub async fn lend(&self) -> Option<Lent> {
        if self.home.queued.get() > 0 {
            let (done, finished) = oneshot::channel();
            self.request(Request::Lend { done }).ok()?;
            finished.await.ok()?;
        }
        if self.home.lent.get() {
            return None;
        }
        let conn = self.home.conn.borrow_mut().take()?;
        self.home.lent.set(true);
        Some(Lent {
            conn,
            lend: Lend {
                home: self.home.clone(),
                shared: self.shared.clone(),
                returned: false,
            },
        })
    }

    /// Queues `request` for the connection's task.
    fn request(&self, request: Request) -> Result<(), mpsc::TrySendError<Request>> {
        self.requests.unbounded_send(request)?;
        self.home.queued.set(self.home.queued.get() + 1);
        Ok(())
    }

    /// Statements cached on this connection (as of its last request).
    pub fn cached_statements(&self) -> usize {
        self.shared.statements.load(Relaxed)
    }

    /// Whether the server warned, since this connection opened, that a transaction "has
    /// already committed locally, but might not have been replicated to the standby": its
    /// wait for a synchronous standby was cancelled (a statement timeout, a cancel, a
    /// shutdown). Such a commit is neither proof of success (it may be lost in a
    /// failover) nor of failure (it must never be rerun).
    pub fn commit_unconfirmed(&self) -> bool {
        self.shared.unconfirmed.load(Relaxed)
    }

    /// Whether the connection can no longer be used (or must not be: a caller abandoned a
    /// statement on it).
    pub fn is_closed(&self) -> bool {
        self.shared.broken.load(Relaxed)
            || self.shared.abandoned.load(Relaxed)
            || self.requests.is_closed()
    }
}

/// An answer from a connection's task; a task that went away before answering leaves the
/// job's fate unknown.
pub async fn settle(answer: oneshot::Receiver<Answer>) -> Answer {
    answer.await.unwrap_or(Answer {
        result: Err(ringgate_pgwire::Error::Closed),
        may_have_run: true,
        broken: true,
        commit_unconfirmed: false,
    })
}

/// Owns a data-path connection until its handle is dropped: runs its requests in order,
/// publishes its state, then ends the session politely and waits (up to [`CLOSE_WAIT`])
/// for the server to close its side before giving the budget permit back, so its backend
/// has left `pg_stat_activity` before another core may open one in its place.
async fn serve(
    home: Rc<Home>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    shared: Arc<Shared>,
    _permit: Permit,
) {
    while let Some(request) = requests.next().await {
        let Some(mut conn) = home.take().await else {
            // A lend dropped it: its state was unknown; it closed with its socket.
            shared.broken.store(true, Relaxed);
            return;
        };
        let was_unconfirmed = shared.unconfirmed.load(Relaxed);
        let mut lend = None;
        match request {
            Request::Jobs {
                jobs,
                limit,
                check,
                mut answers,
            } => {
                if check {
                    conn.check_idle().await;
                }
                let borrowed: Vec<ringgate_pgwire::Job<'_>> = jobs
                    .iter()
                    .map(|(sql, params)| (sql.as_str(), params.as_slice()))
                    .collect();
                let mut slots: Vec<Option<oneshot::Sender<Answer>>> =
                    answers.drain(..).map(Some).collect();
                let shared = &shared;
                conn.pipeline_each(&borrowed, limit, |i, answer| {
                    // Published before the answer, so its reader sees the state it left.
                    shared.broken.store(answer.broken, Relaxed);
                    if answer.commit_unconfirmed {
                        shared.unconfirmed.store(true, Relaxed);
                    }
                    if let Some(tx) = slots.get_mut(i).and_then(Option::take) {
                        let _ = tx.send(answer);
                    }
                })
                .await;
            }
            Request::Check { done } => {
                conn.check_idle().await;
                publish(&shared, &conn);
                let _ = done.send(());
            }
            Request::Simple { sql, done } => {
                let r = conn.simple(&sql).await;
                publish(&shared, &conn);
                let _ = done.send(r);
            }
            Request::Lend { done } => lend = Some(done),
        }
        warn_unconfirmed(&home.node, was_unconfirmed, &conn);
        publish(&shared, &conn);
        home.put(conn);
        home.queued.set(home.queued.get() - 1);
        if let Some(done) = lend {
            let _ = done.send(());
        }
    }
    if let Some(conn) = home.take().await {
        let _ = monoio::time::timeout(CLOSE_WAIT, conn.close()).await;
    }
}

fn warn_unconfirmed(node: &str, was_unconfirmed: bool, conn: &Connection) {
    if !was_unconfirmed && conn.commit_unconfirmed() {
        warn!(
            node,
            "a commit is local only: its wait for a synchronous standby was cancelled"
        );
    }
}

fn publish(shared: &Shared, conn: &Connection) {
    shared.broken.store(conn.is_broken(), Relaxed);
    shared.statements.store(conn.cached_statements(), Relaxed);
    if conn.commit_unconfirmed() {
        shared.unconfirmed.store(true, Relaxed);
    }
}

/// Notifications (`LISTEN`/`NOTIFY` payloads) from a listening connection.
pub type Notifications = futures_channel::mpsc::UnboundedReceiver<String>;

/// Opens an unpooled connection whose `NOTIFY` payloads are forwarded; the receiver ends
/// when the connection does. The caller issues `LISTEN`.
pub async fn connect_listening(target: &Target) -> Result<(Client, Notifications), Error> {
    let (tx, rx) = futures_channel::mpsc::unbounded();
    Ok((open_listening(target, tx).await?, rx))
}

/// Connects a tokio-postgres client (TCP, optional TLS, startup) within the connect timeout
/// and spawns its connection task on this runtime, notifications going to `notify`.
async fn open_listening(
    target: &Target,
    notify: futures_channel::mpsc::UnboundedSender<String>,
) -> Result<Client, Error> {
    let addr = current_addr(target).await;
    let mut config = tokio_postgres::Config::new();
    config
        .dbname(&target.credentials.database)
        .user(&target.credentials.user)
        .password(&target.credentials.password)
        .application_name(&target.application_name);
    let options = startup_options(target);
    if !options.is_empty() {
        config.options(&options);
    }
    let node = target.node.clone();
    let setup = async {
        let stream = monoio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let stream = stream
            .into_poll_io()
            .map_err(|source| Error::Connect { addr, source })?;
        let stream = UntilClosed::new(stream);
        let client = match &target.tls {
            None => {
                let (client, connection) = config.connect_raw(stream, NoTls).await?;
                monoio::spawn(drive(connection, notify, node));
                client
            }
            Some(tls) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let connector = crate::tls::RustlsConnect::new(tls, &target.host)
                    .map_err(|e| Error::Tls(e.to_string()))?;
                let (client, connection) = config.connect_raw(stream, connector).await?;
                monoio::spawn(drive(connection, notify, node));
                client
            }
        };
        Ok::<_, Error>(client)
    };
    match monoio::time::timeout(target.connect_timeout, setup).await {
        Ok(r) => r,
        Err(_) => Err(Error::ConnectTimeout { addr }),
    }
}

/// The startup `options`: the target's, then the credentials' (so a project's settings win
/// over the defaults).
fn startup_options(target: &Target) -> String {
    format!("{} {}", target.options, target.credentials.options)
        .trim()
        .to_string()
}

/// Where to connect for `target` now: its host looked up again when it is a name (a
/// server that moved, `DATABASE_URL`'s host included, is found on the next connect, not
/// only at start), the address of the family it had first; its last known address when the
/// host is an IP address or the lookup fails or takes longer than the connect timeout. The
/// lookup (`getaddrinfo`, which may wait for DNS) runs on a thread of its own, never on a
/// core.
pub async fn current_addr(target: &Target) -> SocketAddr {
    let known = target.addr;
    let host = target.host.trim_matches(['[', ']']);
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return known;
    }
    let (tx, rx) = futures_channel::oneshot::channel();
    let (name, port) = (host.to_string(), known.port());
    let spawned = std::thread::Builder::new()
        .name("ringgate-resolve".into())
        .spawn(move || {
            use std::net::ToSocketAddrs;
            let _ = tx.send(
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|a| a.collect::<Vec<_>>()),
            );
        });
    if spawned.is_err() {
        return known;
    }
    match monoio::time::timeout(target.connect_timeout, rx).await {
        Ok(Ok(Ok(found))) => found
            .iter()
            .find(|a| a.is_ipv4() == known.is_ipv4())
            .or(found.first())
            .copied()
            .unwrap_or(known),
        Ok(Ok(Err(error))) => {
            debug!(host, %error, "lookup failed; connecting to the last known address");
            known
        }
        _ => known,
    }
}

/// Runs a listening connection until it ends, forwarding notifications.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notify: futures_channel::mpsc::UnboundedSender<String>,
    node: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                let _ = notify.unbounded_send(n.payload().to_string());
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                debug!(%error, node, "listening connection ended");
                return;
            }
            None => return,
        }
    }
}

/// Opens a data-path connection to `target` on the current monoio runtime, counted against
/// `permit`, and spawns the task that owns it.
pub async fn connect(target: &Target, permit: Permit) -> Result<PgConn, Error> {
    let addr = current_addr(target).await;
    let config = ConnectConfig {
        addr,
        host: target.host.trim_matches(['[', ']']).to_string(),
        user: target.credentials.user.clone(),
        password: target.credentials.password.clone(),
        database: target.credentials.database.clone(),
        options: startup_options(target),
        application_name: target.application_name.clone(),
        tls: target.tls.as_ref().map(|t| t.0.clone()),
    };
    let opened = monoio::time::timeout(
        target.connect_timeout,
        Connection::connect_with_keys(
            &config,
            target.credentials.keys.as_ref(),
            target.statement_cache,
        ),
    )
    .await;
    let conn = match opened {
        Err(_) => return Err(Error::ConnectTimeout { addr }),
        Ok(Err(ringgate_pgwire::Error::Io(source))) => return Err(Error::Connect { addr, source }),
        Ok(Err(ringgate_pgwire::Error::Tls(e))) => return Err(Error::Tls(e)),
        Ok(Err(e)) => return Err(Error::Pg(e)),
        Ok(Ok(c)) => c,
    };
    let canceller = Canceller {
        token: conn.cancel_token(),
        tls: target.tls.clone().map(|t| (t, config.host.clone())),
        timeout: target.connect_timeout,
    };
    let (requests, rx) = mpsc::unbounded();
    let shared = Arc::new(Shared::default());
    let home = Rc::new(Home {
        conn: RefCell::new(Some(Box::new(conn))),
        queued: Cell::new(0),
        lent: Cell::new(false),
        waiting: Cell::new(None),
        node: target.node.clone(),
    });
    monoio::spawn(serve(home.clone(), rx, shared.clone(), permit));
    let (cancel, mut wanted) = mpsc::unbounded::<()>();
    let c = canceller.clone();
    // Ends with the handle (the last sender).
    monoio::spawn(async move {
        while wanted.next().await.is_some() {
            if let Err(error) = c.cancel().await {
                debug!(%error, "an abandoned statement could not be cancelled");
            }
        }
    });
    Ok(PgConn {
        requests,
        home,
        shared,
        canceller,
        cancel,
    })
}

/// How long a closing connection waits for the server to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A server stream whose shutdown completes when the server has closed its side too (or
/// after [`CLOSE_WAIT`]): PostgreSQL ends its backend (and its `pg_stat_activity` row)
/// before the socket closes, so a connection counted as closed is gone on the server.
struct UntilClosed<S> {
    inner: S,
    wait: Option<std::pin::Pin<Box<monoio::time::Sleep>>>,
}

impl<S> UntilClosed<S> {
    fn new(inner: S) -> Self {
        Self { inner, wait: None }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for UntilClosed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for UntilClosed<S>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::{future::Future, task::Poll};
        let this = &mut *self;
        if this.wait.is_none() {
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.wait = Some(Box::pin(monoio::time::sleep(CLOSE_WAIT)));
        }
        let mut scratch = [0u8; 512];
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        match this.wait.as_mut().map(|w| w.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }
}
