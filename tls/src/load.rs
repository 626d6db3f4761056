//! PEM files → `rustls::ServerConfig`.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer},
    sign::CertifiedKey,
    ServerConfig,
};

/// Why a certificate or key could not be loaded. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key.
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The PEM text is malformed.
    #[error("{path} is not valid PEM: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The key does not belong to the certificate, or is of an unsupported type.
    #[error("private key {key} does not match certificate {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// Loads `cert` (PEM chain, leaf first) and `key` into a server config: TLS 1.2 and 1.3,
/// ALPN `http/1.1`, no client authentication. Fails when the key does not match the leaf.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let provider = Arc::new(ring::default_provider());
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| Error::Mismatch {
            cert: cert.into(),
            key: key.into(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| Error::Mismatch {
        cert: cert.into(),
        key: key.into(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Mismatch {
            cert: cert.into(),
            key: key.into(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves one certified key whatever the SNI.
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })
}

/// The leaf certificate's SHA-256 fingerprint (hex, first 16 bytes) and the chain length,
/// for log lines that tell which certificate is in service.
pub fn chain_summary(path: &Path) -> Result<(String, usize), Error> {
    let chain = read_certs(path)?;
    let leaf = chain.first().map(|c| {
        let d = ::ring::digest::digest(&::ring::digest::SHA256, c.as_ref());
        d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    Ok((leaf.unwrap_or_default(), chain.len()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| Error::Pem {
            path: path.into(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| Error::NoKey { path: path.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn test_tls_rustls_config() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair("localhost");
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &key);
        let config = load_server_config(&c, &k).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let suites = &config.crypto_provider().cipher_suites;
        assert!(!suites.is_empty());
        assert!(suites.iter().all(|s| matches!(
            s.version().version,
            rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3
        )));
    }

    #[test]
    fn missing_unreadable_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair("localhost");
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &key);
        let missing = dir.path().join("nope.pem");
        let err = load_server_config(&missing, &k).unwrap_err();
        assert!(
            matches!(err, Error::Read { .. }) && err.to_string().contains("nope.pem"),
            "{err}"
        );
        let empty = write(dir.path(), "empty.pem", "");
        assert!(matches!(
            load_server_config(&empty, &k),
            Err(Error::NoCertificate { .. })
        ));
        assert!(matches!(
            load_server_config(&c, &empty),
            Err(Error::NoKey { .. })
        ));
        // A key file given as the certificate holds no certificate.
        assert!(matches!(
            load_server_config(&k, &k),
            Err(Error::NoCertificate { .. })
        ));
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = pair("localhost");
        let (_, other_key) = pair("localhost");
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &other_key);
        let err = load_server_config(&c, &k).unwrap_err();
        assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    }
}
