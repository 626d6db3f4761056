//! `/sql` requests that present an API key instead of a connection string.
//!
//! The key's session (from Redis) names the project and the role; the project's row names
//! the database. ringgate connects as the role's own key login (`<prefix><role>`, see
//! [`KeyLogin`](crate::config::KeyLogin)) with `-c role=<role>`. The fence is PostgreSQL's:
//! that login is granted the session's role alone and may connect only to the databases of
//! the projects that list the role, so no statement the key holder sends (`SET ROLE`,
//! `RESET ROLE`, `SET SESSION AUTHORIZATION`, `set_config`, functions, `DO` blocks) reaches
//! any other role. When the request's `Host` names a project (its first label), it must be
//! the session's.

use std::rc::Rc;

use http::{HeaderMap, StatusCode};
use ringgate_pool::{Credentials, Shard};
use tracing::warn;

use super::{
    request::project_of,
    response::{gateway_error, unavailable},
    tenant::Tenant,
};
use crate::{http::Response, per_core::Core, sessions::SessionError};

/// Whether `role` can go into a `-c role=` startup option as is.
fn plain_identifier(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 63
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The project named by the `Host` header's first label, if any.
fn host_project(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    project_of(host)
}

/// The tenant an API key stands for with its project's tenant-class slot, or the refusal
/// to send.
pub async fn tenant(
    core: &Core,
    db: &Rc<Shard>,
    key: &str,
    headers: &HeaderMap,
) -> Result<(Tenant, usize), Response> {
    let (Some(sessions), Some(key_login)) = (&core.sessions, &core.config.key_login) else {
        return Err(gateway_error(
            StatusCode::UNAUTHORIZED,
            "api_keys_disabled",
            "API keys are not enabled here; send Neon-Connection-String",
        ));
    };
    let Some(projects) = &core.projects else {
        return Err(gateway_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_control_database",
            "API keys need the project table (RINGGATE_CONTROL_DATABASE_URL)",
        ));
    };
    let session = match sessions.lookup(key).await {
        Ok(s) => s,
        Err(SessionError::Unknown) => {
            return Err(gateway_error(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "unknown or expired API key",
            ))
        }
        Err(e @ SessionError::Malformed) => {
            warn!(error = %e, "API key rejected");
            return Err(gateway_error(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                &e.to_string(),
            ));
        }
        Err(SessionError::Store(e)) => {
            return Err(unavailable("session_store_unavailable", &e.to_string(), 1))
        }
    };
    if let Some(host) = host_project(headers) {
        if host != session.project {
            return Err(gateway_error(
                StatusCode::FORBIDDEN,
                "project_mismatch",
                &format!(
                    "the API key belongs to project {:?}, not {host:?}",
                    session.project
                ),
            ));
        }
    }
    let project = match projects.get(db, &session.project).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(gateway_error(
                StatusCode::NOT_FOUND,
                "unknown_project",
                &format!(
                    "no project {:?}: it is the project the API key's session names in Redis \
                     (ringgate:apikey:<sha256 of the key>); store the key again with an existing project",
                    session.project
                ),
            ))
        }
        Err(e) => return Err(unavailable("control_unavailable", &e.to_string(), 1)),
    };
    let login = match project.roles.contains(&session.role) && plain_identifier(&session.role) {
        true => key_login.login_for(&session.role),
        false => None,
    };
    let Some((user, password)) = login else {
        return Err(gateway_error(
            StatusCode::FORBIDDEN,
            "role_not_allowed",
            &format!(
                "role {:?} is not one of project {:?}'s roles usable with API keys",
                session.role, session.project
            ),
        ));
    };
    let mut options = format!("-c role={}", session.role);
    if project.statement_timeout_ms > 0 {
        options.push_str(&format!(
            " -c statement_timeout={}",
            project.statement_timeout_ms
        ));
    }
    let tenant = Tenant {
        project: session.project,
        credentials: Credentials {
            database: project.database,
            user,
            password,
            options,
            keys: None,
        },
    };
    Ok((tenant, project.class_slot))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn roles_go_into_options_only_when_plain() {
        assert!(plain_identifier("alpha_owner"));
        assert!(!plain_identifier("Alpha"));
        assert!(!plain_identifier("a b"));
        assert!(!plain_identifier("a\\"));
        assert!(!plain_identifier(""));
    }

    #[test]
    fn host_names_a_project_by_its_first_label() {
        let mut h = HeaderMap::new();
        assert_eq!(host_project(&h), None);
        h.insert(
            "host",
            HeaderValue::from_static("alpha.db.example.com:8080"),
        );
        assert_eq!(host_project(&h).as_deref(), Some("alpha"));
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(host_project(&h), None);
    }
}
