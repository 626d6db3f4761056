//! Starting a PostgreSQL session: the project's checks (as `/sql` makes them), then
//! authentication against the role's SCRAM verifier, read through the control database's
//! `ringgate_auth.scram_verifier` (a `SECURITY DEFINER` function, see
//! `compose/config/bootstrap.sql`). Either way the client proves a `ClientKey`, which is
//! what ringgate authenticates to the server with: no password is held.
//!
//! Which way (`Method`): SCRAM-SHA-256 on plaintext (a password never crosses it: a
//! `PasswordMessage` sent unasked is refused); over TLS SCRAM-SHA-256 and
//! SCRAM-SHA-256-PLUS (`tls-server-end-point` channel binding) by default, or the
//! cleartext password with `RINGGATE_PG_TLS_AUTH=password`; over WebSocket with TLS the
//! cleartext password (Neon's driver sends it with its startup message, unasked).

use std::rc::Rc;

use bytes::BytesMut;
use monoio::time::timeout;
use ringgate_pgwire::scram::{self, Binding, ScramError, ServerExchange, Verifier};
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
use crate::{metrics::wire::WireEvent, per_core::Core, projects::ProjectCache};

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
    let tls_cleartext = core.config.pg.is_some_and(|p| p.tls_cleartext);
    let method = Method::for_stream(&stream, tls_cleartext);
    let mut auth = Auth {
        stream: &mut stream,
        buf,
        wait: core.config.http.header_read_timeout,
    };
    let verifier = verifier(&db, projects, &project, &params.user).await;
    let keys = match method {
        Method::Cleartext => auth.cleartext(verifier).await,
        Method::Scram { end_point } => auth.scram(verifier, end_point.as_deref()).await,
    };
    let keys = match keys {
        Ok(k) => k,
        Err(AuthFailure::Refused(code, mut msg)) => {
            debug!(project, user = %params.user, msg, "authentication failed");
            if code == INVALID_PASSWORD {
                msg = format!(
                    "password authentication failed for user \"{}\"{}",
                    params.user,
                    if msg.contains("channel binding") {
                        ": SCRAM channel binding check failed"
                    } else {
                        ""
                    }
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

/// How a client is asked to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Method {
    /// `AuthenticationCleartextPassword` (TLS only), checked against the verifier.
    Cleartext,
    /// SCRAM-SHA-256, and SCRAM-SHA-256-PLUS bound to this certificate's hash when set.
    Scram { end_point: Option<Vec<u8>> },
}

impl Method {
    /// Cleartext only over TLS: WebSocket over TLS always (Neon's driver pipelines its
    /// password), TCP over TLS when `tls_cleartext`; SCRAM otherwise, with channel binding
    /// when the client's PostgreSQL layer runs the TLS itself.
    fn for_stream(stream: &ClientStream, tls_cleartext: bool) -> Self {
        if stream.is_tls() && (stream.is_websocket() || tls_cleartext) {
            return Method::Cleartext;
        }
        Method::Scram {
            end_point: stream.tls_certificate().map(scram::tls_server_end_point),
        }
    }
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
    /// Asks for the cleartext password (over TLS only) and checks it against the
    /// verifier; the keys it yields. A password the client sent unasked, with its startup
    /// message, is read the same way (it is already in the buffer).
    async fn cleartext(
        &mut self,
        verifier: Result<Option<Verifier>, String>,
    ) -> Result<ringgate_pool::ClientKeys, AuthFailure> {
        let (known, verifier) = known_verifier(verifier)?;
        let mut out = BytesMut::new();
        messages::auth_cleartext(&mut out);
        self.send(&mut out).await?;
        let message = self.read_sasl().await?;
        let password = password(&message).ok_or_else(malformed)?;
        let password =
            std::str::from_utf8(password).map_err(|_| scram_failure(ScramError::WrongProof))?;
        // PBKDF2 with the verifier's iterations (a few ms at PostgreSQL's 4096), for an
        // unknown role too, so that it fails after the same work.
        let keys = verifier.keys_for_password(password);
        match keys {
            Some(keys) if known => {
                messages::auth_ok(&mut out);
                self.send(&mut out).await?;
                Ok(keys)
            }
            _ => Err(scram_failure(ScramError::WrongProof)),
        }
    }

    /// Runs SCRAM-SHA-256 with the client (SCRAM-SHA-256-PLUS also offered when
    /// `end_point`, this TLS connection's `tls-server-end-point` data, is given); the keys
    /// its proof yields.
    async fn scram(
        &mut self,
        verifier: Result<Option<Verifier>, String>,
        end_point: Option<&[u8]>,
    ) -> Result<ringgate_pool::ClientKeys, AuthFailure> {
        let (known, verifier) = known_verifier(verifier)?;
        let mut out = BytesMut::new();
        messages::auth_sasl(&mut out, end_point.is_some());
        self.send(&mut out).await?;
        let first = self.read_sasl().await?;
        let (mechanism, rest) = match messages::split_cstr(&first) {
            Some((m, r))
                if m == messages::SCRAM.as_bytes() || m == messages::SCRAM_PLUS.as_bytes() =>
            {
                (m, r)
            }
            _ if password(&first).is_some() => return Err(unasked_password(self.stream.is_tls())),
            _ => {
                return Err(AuthFailure::Refused(
                    INVALID_AUTHORIZATION,
                    "only SCRAM-SHA-256 and SCRAM-SHA-256-PLUS are supported".into(),
                ))
            }
        };
        let binding = match (mechanism, end_point) {
            (m, Some(data)) if m == messages::SCRAM_PLUS.as_bytes() => Binding::Required(data),
            (m, None) if m == messages::SCRAM_PLUS.as_bytes() => {
                return Err(AuthFailure::Refused(
                    PROTOCOL_VIOLATION,
                    "SCRAM-SHA-256-PLUS was not offered".into(),
                ))
            }
            (_, Some(_)) => Binding::Declined,
            (_, None) => Binding::NotOffered,
        };
        let data = rest.get(4..).ok_or_else(malformed)?;
        let (exchange, server_first) =
            ServerExchange::start(verifier, data, binding).map_err(scram_failure)?;
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

/// The verifier, or an impossible one for an unknown role (which goes through the same
/// steps and fails at the same point), and whether the role is known.
fn known_verifier(
    verifier: Result<Option<Verifier>, String>,
) -> Result<(bool, Verifier), AuthFailure> {
    match verifier {
        Ok(Some(v)) => Ok((true, v)),
        Ok(None) => Ok((false, Verifier::impossible())),
        Err(e) => Err(AuthFailure::Refused(
            CANNOT_CONNECT,
            format!("cannot read the role's verifier: {e}"),
        )),
    }
}

/// The password of a `PasswordMessage` body: one NUL-terminated string, nothing after it.
fn password(body: &[u8]) -> Option<&[u8]> {
    match messages::split_cstr(body) {
        Some((p, [])) => Some(p),
        _ => None,
    }
}

/// A `PasswordMessage` where a SASL message was due: never read as a password.
fn unasked_password(tls: bool) -> AuthFailure {
    AuthFailure::Refused(
        INVALID_AUTHORIZATION,
        if tls {
            "a password was sent unasked: ringgate asked for SCRAM-SHA-256 on this connection"
        } else {
            "ringgate accepts a cleartext password only over TLS: it asked for SCRAM-SHA-256 (use sslmode=require, or wss:// with the pipelined password)"
        }
        .into(),
    )
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
            PROTOCOL_VIOLATION,
            "channel binding was not offered on this connection (it is over TLS only)".into(),
        ),
        ScramError::BindingMismatch => AuthFailure::Refused(
            INVALID_PASSWORD,
            "SCRAM channel binding check failed".into(),
        ),
        other => AuthFailure::Refused(PROTOCOL_VIOLATION, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_message_is_told_from_a_sasl_initial_response() {
        assert_eq!(password(b"s3cret\0"), Some(&b"s3cret"[..]));
        let mut sasl = b"SCRAM-SHA-256\0".to_vec();
        sasl.extend_from_slice(&5i32.to_be_bytes());
        sasl.extend_from_slice(b"n,,n=");
        assert_eq!(password(&sasl), None);
        assert_eq!(password(b"no terminator"), None);
        assert_eq!(password(b"two\0strings\0"), None);
    }
}
