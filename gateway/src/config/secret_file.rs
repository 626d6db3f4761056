//! `X_FILE` for every variable `X`: the value is the trimmed content of the file it names,
//! so secrets can come from files (Docker and Kubernetes secrets are mounted under
//! `/run/secrets/`) instead of the environment, where `docker inspect` and `/proc` show
//! them. Applies to every variable the configuration reads (`RINGGATE_*`, `DATABASE_URL`,
//! `READ_REPLICA_URL`), through [`resolve`] in both [`Strings`](super::Strings) sources.

use super::EnvError;

/// What is appended to a variable's name for the variable naming its file.
pub const FILE_SUFFIX: &str = "_FILE";

/// The value of `key` given `raw`, the source's own lookup (`None` when unset or empty):
/// `key` itself, or the trimmed content of the file `key_FILE` names. Both set is an
/// error naming `key`; a file that cannot be read (or is not UTF-8) is an error naming
/// `key_FILE` and the path. A file that is empty after trimming reads as unset.
pub fn resolve(
    key: &str,
    raw: impl Fn(&str) -> Result<Option<String>, EnvError>,
) -> Result<Option<String>, EnvError> {
    let file_key = format!("{key}{FILE_SUFFIX}");
    let value = raw(key)?;
    let Some(path) = raw(&file_key)? else {
        return Ok(value);
    };
    if value.is_some() {
        return Err(EnvError::ValueAndFile {
            name: key.to_string(),
        });
    }
    match std::fs::read_to_string(&path) {
        Ok(content) => {
            let value = content.trim();
            Ok((!value.is_empty()).then(|| value.to_string()))
        }
        Err(e) => Err(EnvError::File {
            name: file_key,
            path,
            error: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::PathBuf};

    use super::FILE_SUFFIX;
    use crate::config::{Config, Env, EnvError, Strings};

    /// The value through the [`Strings`] lookup (a `HashMap`'s own `get` would shadow it).
    fn get(m: &HashMap<&str, &str>, key: &str) -> Result<Option<String>, EnvError> {
        Strings::get(m, key)
    }

    /// A file in the temporary directory with `content`, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, content: &[u8]) -> Self {
            let path =
                std::env::temp_dir().join(format!("ringgate-secret-{}-{name}", std::process::id()));
            std::fs::write(&path, content).expect("write a temporary file");
            TempFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().expect("a UTF-8 temporary path")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_file_variable_supplies_the_trimmed_content() {
        let f = TempFile::new("token", b"  s3cret-admin-token-0123\n");
        let file_var = format!("RINGGATE_ADMIN_TOKEN{FILE_SUFFIX}");
        let m = HashMap::from([(file_var.as_str(), f.path())]);
        assert_eq!(
            get(&m, "RINGGATE_ADMIN_TOKEN"),
            Ok(Some("s3cret-admin-token-0123".to_string()))
        );
        // Through the whole configuration, for a URL too.
        let url = TempFile::new("url", b"postgres://app:pw@127.0.0.1:5433/control\n");
        let c = Config::from_strings(&HashMap::from([
            ("RINGGATE_ADMIN_TOKEN_FILE", f.path()),
            ("DATABASE_URL_FILE", url.path()),
        ]))
        .expect("valid");
        assert_eq!(c.admin_token.as_deref(), Some("s3cret-admin-token-0123"));
        let db = c.database.expect("DATABASE_URL from its file");
        let primary = db.primary.expect("a primary URL");
        assert_eq!(primary.credentials.password, "pw");
    }

    #[test]
    fn a_variable_without_a_file_is_read_as_before() {
        let m = HashMap::from([("RINGGATE_ADMIN_TOKEN", "plain")]);
        assert_eq!(
            get(&m, "RINGGATE_ADMIN_TOKEN"),
            Ok(Some("plain".to_string()))
        );
        assert_eq!(get(&m, "RINGGATE_LISTEN"), Ok(None));
        // An empty file reads as unset, like an empty variable.
        let f = TempFile::new("empty", b" \n");
        let m = HashMap::from([("RINGGATE_ADMIN_TOKEN_FILE", f.path())]);
        assert_eq!(get(&m, "RINGGATE_ADMIN_TOKEN"), Ok(None));
    }

    #[test]
    fn both_the_variable_and_its_file_is_an_error_naming_the_variable() {
        let f = TempFile::new("both", b"from-file");
        let m = HashMap::from([
            ("RINGGATE_REDIS_PASSWORD", "from-env"),
            ("RINGGATE_REDIS_PASSWORD_FILE", f.path()),
        ]);
        let e = get(&m, "RINGGATE_REDIS_PASSWORD").unwrap_err();
        assert_eq!(
            e,
            EnvError::ValueAndFile {
                name: "RINGGATE_REDIS_PASSWORD".into()
            }
        );
        assert!(e
            .to_string()
            .contains("RINGGATE_REDIS_PASSWORD and RINGGATE_REDIS_PASSWORD_FILE"));
        // And the configuration as a whole fails (main exits 64).
        assert_eq!(Config::from_strings(&m).unwrap_err(), e);
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_the_file_variable_and_path() {
        let missing =
            std::env::temp_dir().join(format!("ringgate-secret-{}-missing", std::process::id()));
        let missing = missing.to_str().unwrap();
        let m = HashMap::from([("DATABASE_URL_FILE", missing)]);
        let e = get(&m, "DATABASE_URL").unwrap_err();
        match &e {
            EnvError::File { name, path, .. } => {
                assert_eq!(
                    (name.as_str(), path.as_str()),
                    ("DATABASE_URL_FILE", missing)
                );
            }
            other => panic!("expected EnvError::File, got {other:?}"),
        }
        assert!(e.to_string().starts_with("DATABASE_URL_FILE="));
        assert_eq!(Config::from_strings(&m).unwrap_err(), e);
        // Not UTF-8 is unreadable too.
        let f = TempFile::new("binary", &[0xff, 0xfe, 0x00]);
        let m = HashMap::from([("RINGGATE_ADMIN_TOKEN_FILE", f.path())]);
        assert!(matches!(
            get(&m, "RINGGATE_ADMIN_TOKEN"),
            Err(EnvError::File { .. })
        ));
    }

    #[test]
    fn the_process_environment_reads_file_variables_too() {
        // No set_var (clippy forbids it): a name nobody sets reads as unset through Env,
        // which goes through the same resolve as the map.
        assert_eq!(Env.get("RINGGATE_SECRET_FILE_TEST_UNSET"), Ok(None));
    }
}
