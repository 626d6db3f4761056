//! Starting a PostgreSQL session: the project's checks (as `/sql` makes them), then
//! SCRAM-SHA-256 against the role's verifier, read through the control database's
//! `ringgate_auth.scram_verifier` (a `SECURITY DEFINER` function, see
//! `compose/config/bootstrap.sql`). The client's proof yields its `ClientKey`, which is
//! what ringgate authenticates to the server with: no password is ever held.

use std::rc::Rc;

use bytes::BytesMut;
use monoio::time::timeout;
use ringgate_pgwire::scram::{ScramError, ServerExchange, Verifier};
use ringgate_pool::{Credentials, Intent, Shard};
use tracing::debug;

use super::{
    cancel::CancelKey,
    fatal, messages,
    relay::{Pooling, Relay, Upstream},
    route,
    startup::Params,
    stream::ClientStream,
};
use crate::{core::Core, metrics::wire::WireEvent, projects::ProjectCache};

/// Rows of the verifier query are small.
const ROW_LIMIT: usize = 16 << 10;
/// The auth query (see `compose/config/bootstrap.sql`).
const VERIFIER_QUERY: &str = "SELECT ringgate_auth.scram_verifier($1, $2)";
/// SASL messages from a client are small.
const MAX_SASL_BYTES: usize = 4096;

/// SQLSTATE `invalid_catalog_name`: no such project, or not its database.
const INVALID_CATALOG_NAME: &str = "3D000";
/// SQLSTATE `invalid_authorization_specification`: the role may not use the project.
const INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE `invalid_password`.
const INVALID_PASSWORD: &str = "28P01";
/// SQLSTATE `protocol_violation`.
const PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE `sqlclient_unable_to_establish_sqlconnection`.
const CANNOT_CONNECT: &str = "08001";

/// Checks, authenticates and then relays one session until it ends.
pub async fn run(
    core: Rc<Core>,
    mut stream: ClientStream,
    buf: BytesMut,
    params: Params,
    sni: Option<String>,
    key: CancelKey,
) {
    let (Some(db), Some(projects)) = (core.db.clone(), core.projects.as_ref()) else {
        return refuse(
            &core,
            &mut stream,
            CANNOT_CONNECT,
            "no database is configured",
        )
        .await;
    };
    let (project, origin) = route::project(sni.as_deref(), &params.options, &params.database);
    let found = match projects.get(&db, &project).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            let msg = format!("project \"{project}\" does not exist ({origin})");
            return refuse(&core, &mut stream, INVALID_CATALOG_NAME, &msg).await;
        }
        Err(e) => {
            let msg = format!("cannot check the project: {e}");
            return refuse(&core, &mut stream, CANNOT_CONNECT, &msg).await;
        }
    };
    // The database named must be the project's (unless the name chose the project).
    if origin != route::Origin::Database && params.database != found.database {
        let msg = format!(
            "database \"{}\" is not project \"{project}\"'s",
            params.database
        );
        return refuse(&core, &mut stream, INVALID_CATALOG_NAME, &msg).await;
    }
    if !found.roles.contains(&params.user) {
        let msg = format!(
            "role \"{}\" may not connect to project \"{project}\"",
            params.user
        );
        return refuse(&core, &mut stream, INVALID_AUTHORIZATION, &msg).await;
    }
    let mut auth = Auth {
        stream: &mut stream,
        buf,
        wait: core.config.http.header_read_timeout,
    };
    let keys = match auth
        .scram(verifier(&db, projects, &project, &params.user).await)
        .await
    {
        Ok(k) => k,
        Err(AuthFailure::Refused(code, mut msg)) => {
            debug!(project, user = %params.user, msg, "authentication failed");
            if code == INVALID_PASSWORD {
                msg = format!(
                    "password authentication failed for user \"{}\"",
                    params.user
                );
            }
            return refuse(&core, auth.stream, code, &msg).await;
        }
        Err(AuthFailure::Gone) => return,
    };
    let buf = auth.buf;
    let metrics = &core.metrics().wire;
    metrics.count(WireEvent::ClientsTotal);
    metrics.count(WireEvent::ClientsOpen);
    let mut options = String::new();
    if found.statement_timeout_ms > 0 {
        options = format!("-c statement_timeout={}", found.statement_timeout_ms);
    }
    let credentials = Credentials {
        database: found.database.clone(),
        user: params.user.clone(),
        password: String::new(),
        options,
        keys: Some(keys),
    };
    let relay = Relay::new(
        core.clone(),
        db,
        Upstream {
            // The front end's pools are its own: their credentials (keys, no password)
            // differ from /sql's for the same role, and a pool is keyed by one set. They
            // count against the project's one budget all the same
            // (`ringgate_pool::shard::budget_of`).
            tenant: format!("{project}/pg"),
            credentials,
        },
        stream,
        buf,
        key,
        Pooling {
            mode: found.pool_mode,
            read_split: found.read_split,
            class: found.class_slot,
        },
    );
    relay.start().await;
    core.metrics().wire.client_closed();
}

/// Refuses the session with a FATAL error, counted.
async fn refuse(core: &Core, stream: &mut ClientStream, code: &str, msg: &str) {
    core.metrics().wire.count(WireEvent::Refused);
    fatal(stream, code, msg).await
}

/// The role's SCRAM verifier (`None` when it has none ringgate may use).
async fn verifier(
    db: &Rc<Shard>,
    projects: &ProjectCache,
    project: &str,
    role: &str,
) -> Result<Option<Verifier>, String> {
    let mut c = db
        .checkout("ringgate-control", projects.control(), Intent::Read)
        .await
        .map_err(|e| e.to_string())?;
    let r = c
        .conn()
        .query(
            VERIFIER_QUERY,
            &[Some(project.to_string()), Some(role.to_string())],
            ROW_LIMIT,
        )
        .await
        .result
        .map_err(|e| e.to_string())?;
    let text = r
        .rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next().flatten());
    Ok(text.and_then(|t| Verifier::parse(&t).ok()))
}

/// How authentication failed.
enum AuthFailure {
    /// Refused, with this SQLSTATE and message.
    Refused(&'static str, String),
    /// The client went away.
    Gone,
}

/// The client side of the SASL exchange.
struct Auth<'a> {
    stream: &'a mut ClientStream,
    buf: BytesMut,
    wait: std::time::Duration,
}

impl Auth<'_> {
    /// Runs SCRAM-SHA-256 with the client; the keys its proof yields.
    async fn scram(
        &mut self,
        verifier: Result<Option<Verifier>, String>,
    ) -> Result<ringgate_pool::ClientKeys, AuthFailure> {
        let verifier = match verifier {
            Ok(v) => v,
            Err(e) => {
                return Err(AuthFailure::Refused(
                    CANNOT_CONNECT,
                    format!("cannot read the role's verifier: {e}"),
                ))
            }
        };
        let known = verifier.is_some();
        // An unknown role goes through the same steps and fails at the same point.
        let verifier = verifier.unwrap_or_else(Verifier::impossible);
        let mut out = BytesMut::new();
        messages::auth_sasl(&mut out);
        self.send(&mut out).await?;
        let first = self.read_sasl().await?;
        let (mechanism, rest) = messages::split_cstr(&first).ok_or_else(malformed)?;
        if mechanism != b"SCRAM-SHA-256" {
            return Err(AuthFailure::Refused(
                INVALID_AUTHORIZATION,
                "only SCRAM-SHA-256 is supported".into(),
            ));
        }
        let data = rest.get(4..).ok_or_else(malformed)?;
        let (exchange, server_first) =
            ServerExchange::start(verifier, data).map_err(scram_failure)?;
        messages::auth_sasl_data(&mut out, 11, server_first.as_bytes());
        self.send(&mut out).await?;
        let last = self.read_sasl().await?;
        let (keys, server_final) = exchange.finish(&last).map_err(scram_failure)?;
        if !known {
            return Err(scram_failure(ScramError::WrongProof));
        }
        messages::auth_sasl_data(&mut out, 12, server_final.as_bytes());
        messages::auth_ok(&mut out);
        // Held until the server's parameters follow (see `Relay::start`).
        self.stream
            .write_all(&mut out)
            .await
            .map_err(|_| AuthFailure::Gone)?;
        Ok(keys)
    }

    async fn send(&mut self, out: &mut BytesMut) -> Result<(), AuthFailure> {
        self.stream
            .write_all(out)
            .await
            .map_err(|_| AuthFailure::Gone)
    }

    /// The body of the client's next `SASLInitialResponse`/`SASLResponse` (`p`).
    async fn read_sasl(&mut self) -> Result<BytesMut, AuthFailure> {
        let read = async {
            loop {
                match messages::take(&mut self.buf, MAX_SASL_BYTES) {
                    Ok(Some(mut m)) if m[0] == b'p' => {
                        let _ = m.split_to(5);
                        return Ok(m);
                    }
                    Ok(Some(_)) => return Err(malformed()),
                    Err(_) => return Err(malformed()),
                    Ok(None) => {}
                }
                self.stream
                    .read_into(&mut self.buf, 512)
                    .await
                    .map_err(|_| AuthFailure::Gone)?;
            }
        };
        match timeout(self.wait, read).await {
            Ok(r) => r,
            Err(_) => Err(AuthFailure::Refused(
                PROTOCOL_VIOLATION,
                "authentication timed out".into(),
            )),
        }
    }
}

fn malformed() -> AuthFailure {
    AuthFailure::Refused(PROTOCOL_VIOLATION, "malformed SASL message".into())
}

fn scram_failure(e: ScramError) -> AuthFailure {
    match e {
        ScramError::WrongProof | ScramError::Verifier => {
            AuthFailure::Refused(INVALID_PASSWORD, "password authentication failed".into())
        }
        ScramError::ChannelBinding => AuthFailure::Refused(
            INVALID_AUTHORIZATION,
            "channel binding is not supported yet (use channel_binding=disable or prefer)".into(),
        ),
        other => AuthFailure::Refused(PROTOCOL_VIOLATION, other.to_string()),
    }
}
