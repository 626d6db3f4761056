//! Certificate reload: re-reads the PEM files and publishes a fresh config snapshot.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::ServerConfig;
use tracing::{error, info};

use crate::{chain_summary, load_server_config, Error};

/// The certificate and key files behind the HTTPS listener, and the config last loaded.
///
/// [`CertStore::reload`] keeps serving the previous config when the new files are bad, so
/// a botched certificate rotation never takes the listener down.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<ServerConfig>,
    fingerprint: String,
}

impl CertStore {
    /// Loads the files once; fails at start when they are missing or do not match.
    pub fn try_new(cert: &Path, key: &Path) -> Result<Self, Error> {
        let current = load_server_config(cert, key)?;
        let (fingerprint, chain) = chain_summary(cert)?;
        info!(cert = %cert.display(), %fingerprint, chain, "TLS certificate loaded");
        Ok(Self {
            cert: cert.into(),
            key: key.into(),
            current,
            fingerprint,
        })
    }

    /// The config currently served.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.clone()
    }

    /// Re-reads the files. On success the new snapshot becomes current and is returned; on
    /// failure the old one stays and the error is returned.
    pub fn reload(&mut self) -> Result<Arc<ServerConfig>, Error> {
        match load_server_config(&self.cert, &self.key) {
            Ok(config) => {
                let (fingerprint, chain) = chain_summary(&self.cert).unwrap_or_default();
                info!(
                    cert = %self.cert.display(),
                    %fingerprint,
                    previous = %self.fingerprint,
                    chain,
                    "TLS certificate reloaded; new connections get it, established ones keep theirs"
                );
                self.current = config.clone();
                self.fingerprint = fingerprint;
                Ok(config)
            }
            Err(error) => {
                error!(%error, fingerprint = %self.fingerprint, "TLS certificate reload failed; still serving the previous certificate");
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_swaps_on_success_and_keeps_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.pem");
        let k = dir.path().join("k.pem");
        let write = |name: &str| {
            let g = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            std::fs::write(&c, g.cert.pem()).unwrap();
            std::fs::write(&k, g.key_pair.serialize_pem()).unwrap();
        };
        write("one");
        let mut store = CertStore::try_new(&c, &k).unwrap();
        let first = store.current();
        write("two");
        let second = store.reload().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        std::fs::write(&k, "garbage").unwrap();
        assert!(store.reload().is_err());
        assert!(Arc::ptr_eq(&store.current(), &second));
    }
}
