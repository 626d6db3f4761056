//! Helpers for tests of the PostgreSQL front end's pooling: projects with a pool mode and
//! the read/write split, ringgate with its PostgreSQL listener and a replica, and
//! tokio-postgres clients that keep the server's notifications (the front end's common
//! helpers are in [`crate::pg`]).

use std::{net::SocketAddr, process::Command};

use tokio_postgres::{AsyncMessage, Client, Notification};

use crate::{
    backend::{apply_bootstrap_part, pg_admin_url, psql, required},
    pg::alpha,
};

/// The front end's columns of `ringgate.projects` and its auth function, applied once per
/// test process.
pub fn ensure_schema() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        apply_bootstrap_part(
            "-- The PostgreSQL front end's pooling",
            Some("-- Every change is announced"),
            Some("ringgate_app"),
        );
    });
    crate::pg::ensure_auth_function();
}

/// Makes project `id` on tenant alpha's database and role, with `pool_mode` and
/// `read_split` (a row added at run time, as an operator would).
pub fn alpha_project(id: &str, pool_mode: &str, read_split: bool) {
    ensure_schema();
    // One at a time: the projects trigger grants alpha's key login to the database, and two
    // transactions granting the same thing at once may fail with "tuple concurrently
    // updated" (seen when CI ran two of these tests together).
    static ADDING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    let _one = ADDING.lock();
    let sql = format!(
        "\\connect ringgate_control\nSET ROLE ringgate_app;\n\
         INSERT INTO ringgate.projects (project_id, database, roles, pool_mode, read_split) \
         VALUES ('{id}', 'tenant_alpha', ARRAY['alpha_owner'], '{pool_mode}', {read_split}) \
         ON CONFLICT (project_id) DO UPDATE SET pool_mode = EXCLUDED.pool_mode, \
         read_split = EXCLUDED.read_split, roles = EXCLUDED.roles, database = EXCLUDED.database"
    );
    let file =
        std::env::temp_dir().join(format!("ringgate-project-{id}-{}.sql", std::process::id()));
    std::fs::write(&file, sql).unwrap();
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &pg_admin_url(),
            "-f",
        ])
        .arg(&file)
        .output()
        .expect("psql is installed");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "adding project {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts ringgate with the PostgreSQL listener, the leader (`DATABASE_URL`) and a replica
/// (`READ_REPLICA_URL`), and `extra`; returns it with its HTTP and PostgreSQL addresses.
pub fn start_pg_with_replica(
    extra: &[(&str, &str)],
) -> (ringgate::Gateway, SocketAddr, SocketAddr) {
    ensure_schema();
    let (db, control, replica) = (
        pg_admin_url(),
        required("RINGGATE_CONTROL_DATABASE_URL"),
        required("READ_REPLICA_URL"),
    );
    let mut env = vec![
        ("DATABASE_URL", db.as_str()),
        ("READ_REPLICA_URL", replica.as_str()),
        ("RINGGATE_CONTROL_DATABASE_URL", control.as_str()),
        ("RINGGATE_PG_LISTEN", "127.0.0.1:0"),
    ];
    env.extend_from_slice(extra);
    let (g, http) = crate::gateway::start(&env);
    let pg = g.pg_addr().expect("PostgreSQL listener");
    (g, http, pg)
}

/// A libpq connection string to `project` (on tenant alpha's database) as alpha's owner.
pub fn conninfo(addr: SocketAddr, project: &str) -> String {
    let (user, password) = alpha();
    format!(
        "host={} port={} user={user} password={password} dbname=tenant_alpha connect_timeout=5 options=endpoint={project}",
        addr.ip(),
        addr.port()
    )
}

/// A tokio-postgres client of `project` through ringgate (plain TCP) as alpha's owner, and
/// its connection (to be driven by the caller).
async fn connect_raw(
    addr: SocketAddr,
    project: &str,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio::net::TcpStream, tokio_postgres::tls::NoTlsStream>,
    ),
    tokio_postgres::Error,
> {
    let (user, password) = alpha();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .user(&user)
        .password(&password)
        .dbname("tenant_alpha")
        .options(format!("endpoint={project}"));
    config.connect_raw(tcp, tokio_postgres::NoTls).await
}

/// A client of `project` through ringgate, as alpha's owner; the notifications the server
/// sends it arrive on the receiver.
pub async fn connect(
    addr: SocketAddr,
    project: &str,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<Notification>), tokio_postgres::Error> {
    let (client, mut conn) = connect_raw(addr, project).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok((client, rx))
}

/// What a client watched by [`connect_watching`] got from the server unasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unasked {
    /// A `NotificationResponse`: channel and payload.
    Notification(String, String),
    /// A `NoticeResponse`'s message.
    Notice(String),
    /// The connection ended: with the SQLSTATE of the server's error, if it sent one.
    Ended(Option<String>),
}

/// [`connect`], with everything the server sends unasked on the receiver, the end of the
/// connection (and the error that ended it) included.
pub async fn connect_watching(
    addr: SocketAddr,
    project: &str,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<Unasked>), tokio_postgres::Error> {
    let (client, mut conn) = connect_raw(addr, project).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let event = match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    Unasked::Notification(n.channel().into(), n.payload().into())
                }
                Some(Ok(AsyncMessage::Notice(n))) => Unasked::Notice(n.message().into()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Unasked::Ended(e.as_db_error().map(|d| d.code().code().into())),
                None => Unasked::Ended(None),
            };
            let ended = matches!(event, Unasked::Ended(_));
            let _ = tx.send(event);
            if ended {
                break;
            }
        }
    });
    Ok((client, rx))
}

/// Runs `f` on a fresh single-threaded tokio runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The SQLSTATE of a tokio-postgres error (or a description when it has none).
pub fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a server error: {e}"))
}

/// Server connections ringgate opened for `project`'s wire front end pools.
pub fn server_connections(project: &str) -> usize {
    psql(
        &pg_admin_url(),
        &format!(
            "select count(*) from pg_stat_activity where application_name like 'ringgate/{project}/pg/%'"
        ),
    )
    .parse()
    .unwrap()
}
