//! The cache key of a read within its project: the role, a digest of the password it
//! presented (a hit is served without the server checking credentials, so a wrong password
//! must never find a right one's entry), the database, the options that change the body,
//! the normalised statement and its parameters.

use super::vet::Vetted;
use crate::sql::request::{SqlRequest, Statement};

/// The key of `st` (of request `sql`, vetted as `v`) within the request's project. Every
/// part is length-prefixed, so no two different requests share a key.
pub fn key(sql: &SqlRequest, st: &Statement, v: &Vetted) -> String {
    let creds = &sql.tenant.credentials;
    let mut k = String::with_capacity(v.normalised.len() + 64);
    let mut part = |s: &str| {
        k.push_str(itoa::Buffer::new().format(s.len()));
        k.push(':');
        k.push_str(s);
    };
    part(&creds.user);
    let secret = ring::digest::digest(&ring::digest::SHA256, creds.password.as_bytes());
    part(&hex::encode(&secret.as_ref()[..16]));
    part(&creds.database);
    part(if st.array_mode.unwrap_or(sql.array_mode) {
        "A"
    } else {
        "O"
    });
    part(if sql.raw_text { "T" } else { "J" });
    part(&v.normalised);
    for p in &st.params {
        // NULL as a part no text parameter can be: a lone NUL.
        part(p.as_deref().unwrap_or("\0"));
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{cache::vet::vet_read, request::TxnOptions, tenant::Tenant};

    fn req(user: &str, password: &str, params: Vec<Option<String>>, array: bool) -> SqlRequest {
        SqlRequest {
            statements: vec![Statement {
                sql: "select * from items where id = $1".into(),
                params,
                array_mode: None,
                kind: Default::default(),
            }],
            batch: false,
            array_mode: array,
            raw_text: false,
            txn: TxnOptions::default(),
            tenant: Tenant {
                project: "alpha".into(),
                credentials: ringgate_pool::Credentials {
                    database: "db".into(),
                    user: user.into(),
                    password: password.into(),
                    options: String::new(),
                    keys: None,
                },
            },
        }
    }

    #[test]
    fn role_password_params_and_options_change_the_key() {
        let v = vet_read("select * from items where id = $1").unwrap();
        let k = |r: &SqlRequest| key(r, &r.statements[0], &v);
        let base = k(&req("a", "pw", vec![Some("1".into())], false));
        assert_eq!(base, k(&req("a", "pw", vec![Some("1".into())], false)));
        for other in [
            req("b", "pw", vec![Some("1".into())], false),
            req("a", "other", vec![Some("1".into())], false),
            req("a", "pw", vec![Some("2".into())], false),
            req("a", "pw", vec![None], false),
            req("a", "pw", vec![Some("1".into())], true),
        ] {
            assert_ne!(base, k(&other));
        }
        assert!(!base.contains("pw"));
    }
}
