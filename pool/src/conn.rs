//! Server connections on the core's own monoio runtime. The only module doing socket I/O.
//!
//! A monoio TCP stream is turned into a tokio-compatible one (`poll-io`), handed to
//! tokio-postgres' `connect_raw`, and the connection task is spawned with `monoio::spawn`,
//! so no tokio runtime is involved.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use monoio::io::IntoPollIo;
use tokio_postgres::{Client, NoTls, Statement};
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
/// connection of its own, made here on the core's runtime (tokio-postgres'
/// `CancelToken::cancel_query` would need a tokio runtime).
#[derive(Clone)]
pub struct Canceller {
    addr: SocketAddr,
    token: tokio_postgres::CancelToken,
    tls: Option<(crate::tls::PgTls, String)>,
    timeout: Duration,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Canceller {
    /// Asks the server to cancel whatever the connection runs now, within the connect
    /// timeout. The server answers nothing: the statement, if it still runs, ends with
    /// `query_canceled` (57014) on its own connection.
    pub async fn cancel(&self) -> Result<(), Error> {
        let addr = self.addr;
        let send = async {
            let stream = monoio::net::TcpStream::connect(addr)
                .await
                .map_err(|source| Error::Connect { addr, source })?;
            let stream = stream
                .into_poll_io()
                .map_err(|source| Error::Connect { addr, source })?;
            match &self.tls {
                None => self.token.cancel_query_raw(stream, NoTls).await?,
                Some((tls, host)) => {
                    let connector = crate::tls::RustlsConnect::new(tls, host)
                        .map_err(|e| Error::Tls(e.to_string()))?;
                    self.token.cancel_query_raw(stream, connector).await?
                }
            }
            Ok::<_, Error>(())
        };
        match monoio::time::timeout(self.timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout { addr }),
        }
    }
}

/// A server connection with its prepared-statement cache.
#[derive(Debug)]
pub struct PgConn {
    client: Client,
    canceller: Canceller,
    /// Set when the server said a commit is local only (its wait for a synchronous
    /// standby was cancelled); see [`PgConn::commit_unconfirmed`].
    unconfirmed: Arc<AtomicBool>,
    statements: HashMap<String, Statement>,
    statement_cache: usize,
}

// === impl PgConn ===

impl PgConn {
    /// The tokio-postgres client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// What cancels the statement this connection runs.
    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// Prepares `sql` once per connection and reuses the statement afterwards.
    pub async fn prepare_cached(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= self.statement_cache {
            // Simple and bounded: start over rather than track recency per statement.
            self.statements.clear();
        }
        if self.statement_cache > 0 {
            self.statements.insert(sql.to_string(), statement.clone());
        }
        Ok(statement)
    }

    /// Statements cached on this connection.
    pub fn cached_statements(&self) -> usize {
        self.statements.len()
    }

    /// Whether the server warned, since this connection opened, that a transaction "has
    /// already committed locally, but might not have been replicated to the standby": its
    /// wait for a synchronous standby was cancelled (a statement timeout, a cancel, a
    /// shutdown). Such a commit is neither proof of success (it may be lost in a
    /// failover) nor of failure (it must never be rerun).
    pub fn commit_unconfirmed(&self) -> bool {
        self.unconfirmed.load(Relaxed)
    }

    /// Whether the server side is gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Notifications (`LISTEN`/`NOTIFY` payloads) from a listening connection.
pub type Notifications = futures_channel::mpsc::UnboundedReceiver<String>;

/// Opens an unpooled connection whose `NOTIFY` payloads are forwarded; the receiver ends
/// when the connection does. The caller issues `LISTEN`.
pub async fn connect_listening(target: &Target) -> Result<(Client, Notifications), Error> {
    let (tx, rx) = futures_channel::mpsc::unbounded();
    Ok((open(target, Some(tx), Arc::default(), None).await?, rx))
}

/// Connects (TCP, optional TLS, startup) within the connect timeout and spawns the
/// connection task on this runtime; notifications go to `notify` when given. The task holds
/// `permit` until the server has closed the connection.
async fn open(
    target: &Target,
    notify: Option<futures_channel::mpsc::UnboundedSender<String>>,
    unconfirmed: Arc<AtomicBool>,
    permit: Option<Permit>,
) -> Result<Client, Error> {
    let addr = current_addr(target).await;
    let mut config = tokio_postgres::Config::new();
    config
        .dbname(&target.credentials.database)
        .user(&target.credentials.user)
        .password(&target.credentials.password)
        .application_name(&target.application_name);
    // The credentials' options come last, so a project's settings win over the defaults.
    let options = format!("{} {}", target.options, target.credentials.options);
    if !options.trim().is_empty() {
        config.options(options.trim());
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
                monoio::spawn(drive(connection, notify, unconfirmed.clone(), node, permit));
                client
            }
            Some(tls) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let connector = crate::tls::RustlsConnect::new(tls, &target.host)
                    .map_err(|e| Error::Tls(e.to_string()))?;
                let (client, connection) = config.connect_raw(stream, connector).await?;
                monoio::spawn(drive(connection, notify, unconfirmed.clone(), node, permit));
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

/// Runs a connection until it ends, forwarding notifications and noting warnings that a
/// commit is local only. A notice is handled before any message after it is delivered
/// (the connection reads in order), so the flag is set before the commit's answer arrives.
/// The budget permit is given back when the connection has ended: once the client is
/// dropped, only after the server closed its side ([`UntilClosed`]), so its backend has
/// left `pg_stat_activity` before another core may open one in its place.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notify: Option<futures_channel::mpsc::UnboundedSender<String>>,
    unconfirmed: Arc<AtomicBool>,
    node: String,
    _permit: Option<Permit>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                if let Some(tx) = &notify {
                    let _ = tx.unbounded_send(n.payload().to_string());
                }
            }
            Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => {
                if is_local_only_commit(&notice) {
                    warn!(
                        node,
                        message = notice.message(),
                        "a commit is local only: its wait for a synchronous standby was cancelled"
                    );
                    unconfirmed.store(true, Relaxed);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                debug!(%error, node, "server connection ended");
                return;
            }
            None => return,
        }
    }
}

/// Whether a notice is PostgreSQL's warning that a commit's wait for synchronous
/// replication was cancelled (`SyncRepWaitForLSN`): by a cancel or timeout (the commit
/// then completes), or by a terminate (the connection then closes without an error).
fn is_local_only_commit(notice: &tokio_postgres::error::DbError) -> bool {
    notice.message().contains("synchronous replication")
        || notice
            .detail()
            .is_some_and(|d| d.contains("committed locally"))
}

/// Opens a connection to `target` on the current monoio runtime, counted against `permit`.
pub async fn connect(target: &Target, permit: Permit) -> Result<PgConn, Error> {
    let unconfirmed = Arc::<AtomicBool>::default();
    let client = open(target, None, unconfirmed.clone(), Some(permit)).await?;
    let canceller = Canceller {
        addr: target.addr,
        token: client.cancel_token(),
        tls: target.tls.clone().map(|t| (t, target.host.clone())),
        timeout: target.connect_timeout,
    };
    Ok(PgConn {
        client,
        canceller,
        unconfirmed,
        statements: HashMap::new(),
        statement_cache: target.statement_cache,
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
