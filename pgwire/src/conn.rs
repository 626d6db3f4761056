//! One server connection: connect and authenticate, then run statements with the extended
//! query protocol, results in text format.
//!
//! Every statement is `Parse` (only the first time on this connection: statements are
//! cached by their text) + `Describe` + `Bind` + `Execute` + `Sync`, all in one write, so a
//! statement costs one round trip even the first time. Several statements can go in one
//! write ([`Connection::pipeline`]); each ends with its own `Sync`, so one's error does not
//! touch the others (outside an explicit transaction).

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use monoio::net::TcpStream;
use postgres_protocol::{
    authentication::{
        md5_hash,
        sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256},
    },
    message::{backend::Message, frontend},
    IsNull,
};

use crate::{
    error::{DbError, Error},
    scram::{ClientKeys, KeyClient},
    stream::Stream,
};

/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// Notices kept per connection (the newest).
const NOTICES_KEPT: usize = 16;

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ConnectConfig {
    /// The server.
    pub addr: SocketAddr,
    /// Its host name (TLS server name).
    pub host: String,
    /// Role.
    pub user: String,
    /// Password (never logged).
    pub password: String,
    /// Database.
    pub database: String,
    /// Startup `options` (`-c name=value ...`), empty for none.
    pub options: String,
    /// `application_name`.
    pub application_name: String,
    /// TLS, when wanted (`SSLRequest`; the server must accept).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("options", &self.options)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A result column, as `RowDescription` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Table OID, 0 when not a table column.
    pub table_oid: u32,
    /// Column number in that table, 0 when not a table column.
    pub column_id: i16,
    /// Type modifier.
    pub type_modifier: i32,
    /// Type size (negative: variable).
    pub type_size: i16,
}

/// A statement prepared on one connection.
#[derive(Debug, Clone)]
pub struct Prepared {
    name: String,
    /// Parameter type OIDs, as the server inferred them.
    pub params: Arc<[u32]>,
    /// Result columns (empty for statements that return none).
    pub columns: Arc<[Column]>,
}

/// One row: each value in the server's text format, `None` for NULL.
pub type Row = Vec<Option<String>>;

/// A statement's result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryResult {
    /// The server's command tag (`INSERT 0 3`, `SELECT 2`, `CREATE TABLE`).
    pub tag: String,
    /// Its command word (`INSERT`, `SELECT`, `CREATE`), as node-postgres reads it.
    pub command: String,
    /// The row count the tag ends with, else the rows returned.
    pub row_count: u64,
    /// Result columns.
    pub columns: Arc<[Column]>,
    /// Rows.
    pub rows: Vec<Row>,
}

impl QueryResult {
    fn with_tag(mut self, tag: &str) -> Self {
        self.tag = tag.to_string();
        let mut words = tag.split(' ');
        self.command = words.next().unwrap_or("").to_string();
        self.row_count = tag
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(self.rows.len() as u64);
        self
    }
}

/// One job's result in a pipeline, with whether it may have run.
#[derive(Debug)]
pub struct Answer {
    /// The result.
    pub result: Result<QueryResult, Error>,
    /// False when the statement provably never executed: it was not sent, or the server
    /// refused it before binding (a parse or bind error, or the session ended before the
    /// server read it). A write that failed with this false can be rerun safely.
    pub may_have_run: bool,
    /// Whether the connection was broken once this answer was read.
    pub broken: bool,
    /// [`Connection::commit_unconfirmed`] once this answer was read.
    pub commit_unconfirmed: bool,
}

impl Answer {
    fn not_run(e: Error) -> Self {
        Self {
            result: Err(e),
            may_have_run: false,
            broken: false,
            commit_unconfirmed: false,
        }
    }
}

/// Which of a job's acknowledgements were read.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    parsed: bool,
    described: bool,
    bound: bool,
}

/// How a pipeline's row limit applies.
#[derive(Debug, Clone, Copy)]
enum Budget {
    /// One limit for all jobs together.
    Shared(usize),
    /// The same limit for each job.
    Each(usize),
}

/// What is needed to cancel a connection's running query from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelToken {
    addr: SocketAddr,
    process_id: i32,
    secret_key: i32,
}

impl CancelToken {
    /// Sends `CancelRequest` on a new connection (the server cancels whatever the
    /// connection runs now, if anything; it answers nothing).
    pub async fn cancel(&self) -> Result<(), Error> {
        self.cancel_over(None).await
    }

    /// As [`CancelToken::cancel`], over TLS when `tls` is given (its configuration and the
    /// server's host name), for servers that accept only TLS connections.
    pub async fn cancel_over(
        &self,
        tls: Option<(Arc<rustls::ClientConfig>, &str)>,
    ) -> Result<(), Error> {
        let mut out = BytesMut::with_capacity(16);
        frontend::cancel_request(self.process_id, self.secret_key, &mut out);
        let tcp = TcpStream::connect(self.addr).await?;
        let mut s = match tls {
            None => Stream::Plain(tcp),
            Some((config, host)) => Stream::tls(tcp, config, host).await?,
        };
        s.write_all(&mut out).await
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// One server connection. Not shared: one request at a time drives it.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    read: BytesMut,
    write: BytesMut,
    cancel: CancelToken,
    statements: HashMap<String, Prepared>,
    statement_cache: usize,
    next_statement: u64,
    notices: Vec<DbError>,
    commit_unconfirmed: bool,
    broken: bool,
    transaction_status: u8,
    /// `ParameterStatus` values the server reported (the latest of each).
    server_params: Vec<(String, String)>,
    /// Names of statements a protocol relay prepared on this connection.
    relayed: std::collections::HashSet<String>,
    /// The TCP socket's descriptor (under TLS too), for a relay's non-consuming peek.
    fd: std::os::fd::RawFd,
}

/// One statement of a [`Connection::pipeline`]: SQL text and text parameters.
pub type Job<'a> = (&'a str, &'a [Option<String>]);

impl Connection {
    /// Connects, negotiates TLS when configured, and authenticates (SCRAM-SHA-256, MD5 or
    /// cleartext, as the server asks). Statements are cached up to `statement_cache`.
    pub async fn connect(cfg: &ConnectConfig, statement_cache: usize) -> Result<Self, Error> {
        Self::connect_with_keys(cfg, None, statement_cache).await
    }

    /// As [`Connection::connect`]; with `keys`, SCRAM-SHA-256 authenticates with them
    /// instead of the password (see [`crate::scram`]).
    pub async fn connect_with_keys(
        cfg: &ConnectConfig,
        keys: Option<&ClientKeys>,
        statement_cache: usize,
    ) -> Result<Self, Error> {
        let tcp = TcpStream::connect(cfg.addr).await?;
        let _ = tcp.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        let stream = match &cfg.tls {
            None => Stream::Plain(tcp),
            Some(tls) => Stream::tls(tcp, tls.clone(), &cfg.host).await?,
        };
        let mut conn = Connection {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: BytesMut::with_capacity(1024),
            cancel: CancelToken {
                addr: cfg.addr,
                process_id: 0,
                secret_key: 0,
            },
            statements: HashMap::new(),
            statement_cache,
            next_statement: 0,
            notices: Vec::new(),
            commit_unconfirmed: false,
            broken: false,
            transaction_status: b'I',
            server_params: Vec::new(),
            relayed: Default::default(),
            fd,
        };
        conn.startup(cfg, keys).await?;
        Ok(conn)
    }

    async fn startup(
        &mut self,
        cfg: &ConnectConfig,
        keys: Option<&ClientKeys>,
    ) -> Result<(), Error> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &cfg.user),
            ("database", &cfg.database),
            ("application_name", &cfg.application_name),
            ("client_encoding", "UTF8"),
        ];
        if !cfg.options.trim().is_empty() {
            params.push(("options", cfg.options.trim()));
        }
        frontend::startup_message(params.iter().copied(), &mut self.write)?;
        self.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        let mut key_client: Option<KeyClient> = None;
        loop {
            match self.next().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(cfg.password.as_bytes(), &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(b) => {
                    let hash = md5_hash(cfg.user.as_bytes(), cfg.password.as_bytes(), b.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(b) => {
                    let mut mechanisms = b.mechanisms();
                    let mut scram_offered = false;
                    while let Some(m) = mechanisms.next()? {
                        scram_offered |= m == SCRAM_SHA_256;
                    }
                    if !scram_offered {
                        return Err(Error::Auth("SASL without SCRAM-SHA-256".into()));
                    }
                    if let Some(keys) = keys {
                        let (client, first) = KeyClient::start(keys.clone());
                        frontend::sasl_initial_response(
                            SCRAM_SHA_256,
                            first.as_bytes(),
                            &mut self.write,
                        )?;
                        self.flush().await?;
                        key_client = Some(client);
                        continue;
                    }
                    let s =
                        ScramSha256::new(cfg.password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.write)?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(b) if key_client.is_some() => {
                    let answer = key_client
                        .as_mut()
                        .expect("checked")
                        .respond(b.data())
                        .map_err(|e| Error::Auth(e.to_string()))?;
                    frontend::sasl_response(answer.as_bytes(), &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(b) if key_client.is_some() => {
                    key_client
                        .as_ref()
                        .expect("checked")
                        .finish(b.data())
                        .map_err(|e| Error::Auth(e.to_string()))?;
                }
                Message::AuthenticationSaslContinue(b) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::Protocol("SASL continue before start".into()))?;
                    s.update(b.data())?;
                    frontend::sasl_response(s.message(), &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(b) => {
                    scram
                        .as_mut()
                        .ok_or_else(|| Error::Protocol("SASL final before start".into()))?
                        .finish(b.data())?;
                }
                Message::BackendKeyData(b) => {
                    self.cancel.process_id = b.process_id();
                    self.cancel.secret_key = b.secret_key();
                }
                Message::ReadyForQuery(b) => {
                    self.transaction_status = b.status();
                    return Ok(());
                }
                Message::ErrorResponse(b) => {
                    self.broken = true;
                    return Err(Error::Db(Box::new(DbError::parse(b.fields())?)));
                }
                Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential => {
                    return Err(Error::Auth("GSS, SSPI, Kerberos or SCM".into()));
                }
                _ => return Err(Error::Protocol("unexpected message during startup".into())),
            }
        }
    }

    /// The `ParameterStatus` values the server reported at startup (and since).
    pub fn server_params(&self) -> &[(String, String)] {
        &self.server_params
    }

    /// The socket and the bytes read from it but not yet parsed, for a relay that speaks
    /// the protocol itself (ringgate's PostgreSQL front end). The relay must leave the
    /// connection at a `ReadyForQuery` and report it with [`Connection::relay_done`].
    pub fn relay_io(&mut self) -> (&mut Stream, &mut BytesMut) {
        (&mut self.stream, &mut self.read)
    }

    /// What a relay left: the last `ReadyForQuery` status, and whether the connection
    /// broke (or was left in an unknown state).
    pub fn relay_done(&mut self, transaction_status: u8, broken: bool) {
        self.transaction_status = transaction_status;
        self.broken |= broken;
    }

    /// The descriptor of the connection's TCP socket (valid while the connection lives).
    pub fn socket_fd(&self) -> std::os::fd::RawFd {
        self.fd
    }

    /// The names of statements a relay prepared on this connection (kept for its life).
    pub fn relayed_statements(&mut self) -> &mut std::collections::HashSet<String> {
        &mut self.relayed
    }

    /// The token to cancel this connection's running query.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel
    }

    /// Whether the connection can no longer be used (the socket failed, the server closed
    /// it, or an answer was abandoned half-read).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// `I` (idle), `T` (in a transaction) or `E` (in a failed transaction), as the last
    /// `ReadyForQuery` said.
    pub fn transaction_status(&self) -> u8 {
        self.transaction_status
    }

    /// Whether the server warned, since this connection opened, that a transaction "has
    /// already committed locally, but might not have been replicated to the standby" (its
    /// wait for a synchronous standby was cancelled).
    pub fn commit_unconfirmed(&self) -> bool {
        self.commit_unconfirmed
    }

    /// The notices received since the last call (the newest [`NOTICES_KEPT`]).
    pub fn take_notices(&mut self) -> Vec<DbError> {
        std::mem::take(&mut self.notices)
    }

    /// Statements cached on this connection.
    pub fn cached_statements(&self) -> usize {
        self.statements.len()
    }

    /// Runs `sql` with text `params`; the rows may take at most `limit` bytes (value
    /// lengths plus column names), else [`Error::TooLarge`] (the rest is read and dropped,
    /// the connection stays usable).
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[Option<String>],
        limit: usize,
    ) -> Result<QueryResult, Error> {
        self.pipeline(&[(sql, params)], limit)
            .await
            .pop()
            .expect("one result per job")
    }

    /// Sends every job in one write and reads their results in order; `limit` bounds all
    /// their rows together.
    pub async fn pipeline(
        &mut self,
        jobs: &[Job<'_>],
        limit: usize,
    ) -> Vec<Result<QueryResult, Error>> {
        let mut out = Vec::with_capacity(jobs.len());
        self.run_jobs(jobs, Budget::Shared(limit), |_, a| out.push(a.result))
            .await;
        out
    }

    /// Sends every job in one write and hands each [`Answer`] to `each` (with the job's
    /// index) as soon as it is read; each job's rows may take at most `limit` bytes.
    pub async fn pipeline_each(
        &mut self,
        jobs: &[Job<'_>],
        limit: usize,
        each: impl FnMut(usize, Answer),
    ) {
        self.run_jobs(jobs, Budget::Each(limit), each).await
    }

    /// Marks an answer with the connection's state as it is now.
    fn stamp(&self, mut a: Answer) -> Answer {
        a.broken = self.broken;
        a.commit_unconfirmed = self.commit_unconfirmed;
        a
    }

    async fn run_jobs(
        &mut self,
        jobs: &[Job<'_>],
        limit: Budget,
        mut each: impl FnMut(usize, Answer),
    ) {
        if self.broken {
            for i in 0..jobs.len() {
                each(i, self.stamp(Answer::not_run(Error::Closed)));
            }
            return;
        }
        let mut pending: Vec<Option<String>> = Vec::with_capacity(jobs.len());
        let mut encoded: Vec<Result<(), Error>> = Vec::with_capacity(jobs.len());
        // A text new to this connection is parsed once even when it comes twice.
        let mut fresh: HashMap<&str, String> = HashMap::new();
        for (sql, params) in jobs {
            let (name, new) = match (self.statements.get(*sql), fresh.get(*sql)) {
                (Some(p), _) => (p.name.clone(), false),
                (None, Some(name)) => (name.clone(), false),
                (None, None) => {
                    self.next_statement += 1;
                    let name = format!("rg{}", self.next_statement);
                    fresh.insert(sql, name.clone());
                    (name, true)
                }
            };
            let mark = self.write.len();
            let r = self.encode(sql, &name, new, params);
            if r.is_err() {
                // Nothing of a job that could not be encoded is sent.
                self.write.truncate(mark);
                if new {
                    fresh.remove(*sql);
                }
            }
            pending.push((new && r.is_ok()).then_some(name));
            encoded.push(r);
        }
        if let Err(e) = self.flush().await {
            self.broken = true;
            let reason = e.to_string();
            for (i, encoded) in encoded.iter().enumerate() {
                // Part of the write may have reached the server.
                let a = Answer {
                    may_have_run: encoded.is_ok(),
                    ..Answer::not_run(Error::Io(std::io::Error::other(reason.clone())))
                };
                each(i, self.stamp(a));
            }
            return;
        }
        let (mut shared, per_job) = match limit {
            Budget::Shared(l) => (l, None),
            Budget::Each(l) => (l, Some(l)),
        };
        let cap = per_job.unwrap_or(shared);
        for (i, (sql, _)) in jobs.iter().enumerate() {
            if let Err(e) = std::mem::replace(&mut encoded[i], Ok(())) {
                each(i, self.stamp(Answer::not_run(e)));
                continue;
            }
            if self.broken {
                each(i, self.stamp(Answer::not_run(Error::Closed)));
                continue;
            }
            if let Some(l) = per_job {
                shared = l;
            }
            let cached = self.statements.get(*sql).cloned();
            let (answer, prepared) = self
                .read_result(cached, pending[i].take(), &mut shared, cap)
                .await;
            if let Some(p) = prepared {
                self.remember(sql, p).await;
            }
            each(i, self.stamp(answer));
        }
    }

    /// Reads what the server sent while the connection was idle, without waiting: notices
    /// are kept, and an error or the end of the stream (the server ended the session: a
    /// terminate, a shutdown, a crash) marks the connection broken, so statements are not
    /// sent into a session that is already gone (their fate would look unknown). Plain
    /// TCP only (see [`Stream::probe`]).
    pub async fn check_idle(&mut self) {
        if self.broken {
            return;
        }
        match self.stream.probe(&mut self.read).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => {
                self.broken = true;
                return;
            }
        }
        loop {
            match Message::parse(&mut self.read) {
                Ok(Some(Message::NoticeResponse(b))) => {
                    if let Ok(notice) = DbError::parse(b.fields()) {
                        self.keep_notice(notice);
                    }
                }
                Ok(Some(Message::ParameterStatus(_) | Message::NotificationResponse(_))) => {}
                // A partial message waits for the rest with the next answer.
                Ok(None) => return,
                // Anything else while idle (an ErrorResponse: the session is ending).
                Ok(Some(_)) | Err(_) => {
                    self.broken = true;
                    return;
                }
            }
        }
    }

    fn keep_notice(&mut self, notice: DbError) {
        if is_local_only_commit(&notice) {
            self.commit_unconfirmed = true;
        }
        if self.notices.len() == NOTICES_KEPT {
            self.notices.remove(0);
        }
        self.notices.push(notice);
    }

    /// Caches a statement this connection parsed; when the cache is full every cached
    /// statement is closed first (one round trip, rare), rather than tracking recency.
    async fn remember(&mut self, sql: &str, prepared: Prepared) {
        let mut close: Vec<String> = Vec::new();
        if self.statement_cache == 0 {
            close.push(prepared.name);
        } else {
            if self.statements.len() >= self.statement_cache {
                close.extend(self.statements.drain().map(|(_, p)| p.name));
            }
            self.statements.insert(sql.to_string(), prepared);
        }
        if close.is_empty() || self.broken {
            return;
        }
        for name in &close {
            let _ = frontend::close(b'S', name, &mut self.write);
        }
        frontend::sync(&mut self.write);
        if self.flush().await.is_err() {
            return;
        }
        loop {
            match self.next().await {
                Ok(Message::ReadyForQuery(b)) => {
                    self.transaction_status = b.status();
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Encodes one job: Parse + Describe when `new`, then Bind (text in, text out),
    /// Execute, Sync.
    fn encode(
        &mut self,
        sql: &str,
        name: &str,
        new: bool,
        params: &[Option<String>],
    ) -> Result<(), Error> {
        if new {
            frontend::parse(name, sql, std::iter::empty(), &mut self.write)?;
            frontend::describe(b'S', name, &mut self.write)?;
        }
        let bound = frontend::bind(
            "",
            name,
            std::iter::once(0i16),
            params.iter(),
            |p, buf| match p {
                None => Ok(IsNull::Yes),
                Some(v) => {
                    buf.extend_from_slice(v.as_bytes());
                    Ok(IsNull::No)
                }
            },
            std::iter::once(0i16),
            &mut self.write,
        );
        match bound {
            Ok(()) => {}
            Err(frontend::BindError::Serialization(e)) => return Err(Error::Io(e)),
            Err(frontend::BindError::Conversion(e)) => {
                return Err(Error::Protocol(format!("cannot encode a parameter: {e}")))
            }
        }
        frontend::execute("", 0, &mut self.write)?;
        frontend::sync(&mut self.write);
        Ok(())
    }

    /// Reads one job's answer up to its `ReadyForQuery`; returns the statement's
    /// description when this answer carried one (a new statement).
    async fn read_result(
        &mut self,
        cached: Option<Prepared>,
        new_name: Option<String>,
        budget: &mut usize,
        limit: usize,
    ) -> (Answer, Option<Prepared>) {
        let mut seen = Seen::default();
        let mut columns: Arc<[Column]> = cached
            .as_ref()
            .map_or_else(|| Arc::from([]), |p| p.columns.clone());
        let mut params: Arc<[u32]> = cached
            .as_ref()
            .map_or_else(|| Arc::from([]), |p| p.params.clone());
        let r = self
            .read_answer(&mut seen, &mut columns, &mut params, budget, limit)
            .await;
        // A statement parsed and described is kept even when its execution failed.
        let prepared = match (new_name, seen.parsed && seen.described) {
            (Some(name), true) => Some(Prepared {
                name,
                params,
                columns: columns.clone(),
            }),
            _ => None,
        };
        // An error read before BindComplete (the server answers in order) proves Execute
        // never ran: Parse or Bind failed, or the server ended the session before reading
        // this job (its FATAL was already on the way). Anything else (no answer at all, a
        // broken socket after the write) may follow an execution whose output was still
        // buffered on the server.
        let may_have_run = seen.bound || !matches!(r, Err(Error::Db(_)));
        (
            Answer {
                result: r.map(|mut q| {
                    q.columns = columns;
                    q
                }),
                may_have_run,
                broken: false,
                commit_unconfirmed: false,
            },
            prepared,
        )
    }

    async fn read_answer(
        &mut self,
        seen: &mut Seen,
        columns: &mut Arc<[Column]>,
        params: &mut Arc<[u32]>,
        budget: &mut usize,
        limit: usize,
    ) -> Result<QueryResult, Error> {
        let mut result = QueryResult::default();
        let mut error: Option<Error> = None;
        loop {
            let message = match self.next().await {
                Ok(m) => m,
                Err(e) => {
                    self.broken = true;
                    return Err(error.unwrap_or(e));
                }
            };
            match message {
                Message::ParseComplete => seen.parsed = true,
                Message::ParameterDescription(b) => {
                    *params = b.parameters().collect::<Vec<u32>>()?.into();
                }
                Message::RowDescription(b) => {
                    *columns = b
                        .fields()
                        .map(|f| {
                            Ok(Column {
                                name: f.name().to_string(),
                                type_oid: f.type_oid(),
                                table_oid: f.table_oid(),
                                column_id: f.column_id(),
                                type_modifier: f.type_modifier(),
                                type_size: f.type_size(),
                            })
                        })
                        .collect::<Vec<_>>()?
                        .into();
                    seen.described = true;
                }
                Message::NoData => {
                    *columns = Arc::from([]);
                    seen.described = true;
                }
                Message::BindComplete => seen.bound = true,
                Message::CloseComplete | Message::PortalSuspended => {}
                Message::DataRow(b) => {
                    if error.is_some() {
                        continue;
                    }
                    let buf = b.buffer();
                    let mut ranges = b.ranges();
                    let mut row = Vec::with_capacity(columns.len());
                    let mut i = 0;
                    while let Some(range) = ranges.next()? {
                        let value = range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned());
                        let name = columns.get(i).map_or(0, |c| c.name.len());
                        let cost = value.as_ref().map_or(4, |v| v.len() + 2) + name;
                        i += 1;
                        match budget.checked_sub(cost) {
                            Some(left) => *budget = left,
                            None => {
                                error = Some(Error::TooLarge { limit });
                                break;
                            }
                        }
                        row.push(value);
                    }
                    if error.is_none() {
                        result.rows.push(row);
                    }
                }
                Message::CommandComplete(b) => {
                    let tag = b.tag()?.to_string();
                    result = std::mem::take(&mut result).with_tag(&tag);
                }
                Message::EmptyQueryResponse => {}
                Message::ErrorResponse(b) => {
                    let e = DbError::parse(b.fields())?;
                    let fatal = e.severity == "FATAL" || e.severity == "PANIC";
                    if error.is_none() || fatal {
                        error = Some(Error::Db(Box::new(e)));
                    }
                    if fatal {
                        self.broken = true;
                        return Err(error.expect("just set"));
                    }
                }
                Message::ReadyForQuery(b) => {
                    self.transaction_status = b.status();
                    break;
                }
                Message::CopyInResponse(_)
                | Message::CopyOutResponse(_)
                | Message::CopyData(_)
                | Message::CopyDone => {
                    self.broken = true;
                    return Err(Error::Protocol("COPY is not supported on this path".into()));
                }
                _ => {
                    self.broken = true;
                    return Err(Error::Protocol(
                        "unexpected message in a query's answer".into(),
                    ));
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    /// Runs `sql` with the simple query protocol (several statements allowed, no
    /// parameters, results discarded): `BEGIN`, `COMMIT`, `ROLLBACK`, session resets.
    pub async fn simple(&mut self, sql: &str) -> Result<(), Error> {
        if self.broken {
            return Err(Error::Closed);
        }
        frontend::query(sql, &mut self.write)?;
        if let Err(e) = self.flush().await {
            self.broken = true;
            return Err(e);
        }
        let mut error = None;
        loop {
            match self.next().await {
                Err(e) => {
                    self.broken = true;
                    return Err(error.unwrap_or(e));
                }
                Ok(Message::ReadyForQuery(b)) => {
                    self.transaction_status = b.status();
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
                Ok(Message::ErrorResponse(b)) => {
                    let e = DbError::parse(b.fields())?;
                    let fatal = e.severity == "FATAL" || e.severity == "PANIC";
                    error.get_or_insert(Error::Db(Box::new(e)));
                    if fatal {
                        self.broken = true;
                        return Err(error.expect("just set"));
                    }
                }
                Ok(Message::CopyInResponse(_) | Message::CopyOutResponse(_)) => {
                    self.broken = true;
                    return Err(Error::Protocol("COPY is not supported on this path".into()));
                }
                Ok(_) => {}
            }
        }
    }

    /// Ends the session politely (`Terminate`) and waits until the server has closed its
    /// side: PostgreSQL ends the backend (and its `pg_stat_activity` row) before the socket
    /// closes. Callers bound the wait.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.write);
        if self.flush().await.is_err() {
            return;
        }
        loop {
            self.read.clear();
            if self.stream.read_into(&mut self.read, 512).await.is_err() {
                return;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), Error> {
        if self.write.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&mut self.write).await;
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// The next message, with asynchronous ones (notices, parameter status,
    /// notifications) handled on the way.
    async fn next(&mut self) -> Result<Message, Error> {
        loop {
            match Message::parse(&mut self.read)? {
                Some(Message::NoticeResponse(b)) => {
                    let notice = DbError::parse(b.fields())?;
                    self.keep_notice(notice);
                }
                Some(Message::ParameterStatus(b)) => {
                    if let (Ok(name), Ok(value)) = (b.name(), b.value()) {
                        self.server_params.retain(|(n, _)| n != name);
                        self.server_params
                            .push((name.to_string(), value.to_string()));
                    }
                }
                Some(Message::NotificationResponse(_)) => {}
                Some(m) => return Ok(m),
                None => {
                    if let Err(e) = self.stream.read_into(&mut self.read, READ_CHUNK).await {
                        self.broken = true;
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Whether a notice is PostgreSQL's warning that a commit's wait for synchronous
/// replication was cancelled (`SyncRepWaitForLSN`): by a cancel (the commit then
/// completes) or a terminate (the connection then closes without an error).
pub fn is_local_only_commit(notice: &DbError) -> bool {
    notice.message.contains("synchronous replication")
        || notice
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("committed locally"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_and_row_count_come_from_the_tag() {
        let q = |tag: &str, rows: usize| {
            QueryResult {
                rows: vec![vec![]; rows],
                ..Default::default()
            }
            .with_tag(tag)
        };
        let r = q("INSERT 0 3", 0);
        assert_eq!((r.command.as_str(), r.row_count), ("INSERT", 3));
        let r = q("SELECT 2", 2);
        assert_eq!((r.command.as_str(), r.row_count), ("SELECT", 2));
        let r = q("CREATE TABLE", 0);
        assert_eq!((r.command.as_str(), r.row_count), ("CREATE", 0));
        let r = q("UPDATE 7", 0);
        assert_eq!(
            (r.command.as_str(), r.row_count, r.tag.as_str()),
            ("UPDATE", 7, "UPDATE 7")
        );
    }

    #[test]
    fn a_cancelled_wait_for_the_standby_is_recognised() {
        let cancelled = DbError {
            severity: "WARNING".into(),
            code: "01000".into(),
            message: "canceling wait for synchronous replication due to user request".into(),
            detail: Some("The transaction has already committed locally, but might not have been replicated to the standby.".into()),
            ..Default::default()
        };
        assert!(is_local_only_commit(&cancelled));
        let other = DbError {
            severity: "NOTICE".into(),
            message: "table \"t\" does not exist, skipping".into(),
            ..Default::default()
        };
        assert!(!is_local_only_commit(&other));
    }
}
