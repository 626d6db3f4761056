//! SCRAM-SHA-256 (RFC 5802, RFC 7677) with keys instead of a password, for a proxy that
//! holds no tenant's password (PgBouncer's `auth_query` way).
//!
//! The server side ([`ServerExchange`]) checks a client's proof against the role's stored
//! verifier (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as in
//! `pg_authid.rolpassword`) and recovers the client's `ClientKey` from it
//! (`ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`). The client side
//! ([`KeyClient`]) then authenticates to the server with that `ClientKey`, and checks the
//! server's signature with the `ServerKey`. Over TLS the server side also takes
//! `SCRAM-SHA-256-PLUS` with `tls-server-end-point` channel binding ([`Binding`]);
//! [`Verifier::keys_for_password`] checks a cleartext password against the verifier.

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ring::{digest, hmac, rand::SecureRandom};

/// What can go wrong in an exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The stored verifier is not a SCRAM-SHA-256 one.
    #[error("not a SCRAM-SHA-256 verifier")]
    Verifier,
    /// A message of the exchange could not be parsed, or broke the protocol.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding, which is not offered.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// The client said it supports channel binding but thinks the server does not (`y`),
    /// while the server offered it: a downgrade (RFC 5802 §6).
    #[error("the client supports SCRAM channel binding but thinks the server does not; this server offers it")]
    Downgrade,
    /// The channel binding data does not match this connection's.
    #[error("SCRAM channel binding check failed")]
    BindingMismatch,
    /// The proof does not match the verifier: a wrong password.
    #[error("the client's proof does not match")]
    WrongProof,
    /// The server's signature does not match the ServerKey.
    #[error("the server's signature does not match")]
    ServerSignature,
}

/// A role's SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// The keys that authenticate as a role: recovered from a client's proof, never stored.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientKeys {
    /// `ClientKey` (HMAC(SaltedPassword, "Client Key")).
    pub client_key: [u8; 32],
    /// `ServerKey`, to check the server's signature.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKeys(..)")
    }
}

fn key32(b64: &str) -> Result<[u8; 32], ScramError> {
    B64.decode(b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(ScramError::Verifier)
}

impl Verifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::Verifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::Verifier)?;
        let (iterations, salt) = params.split_once(':').ok_or(ScramError::Verifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::Verifier)?;
        Ok(Self {
            iterations: iterations.parse().map_err(|_| ScramError::Verifier)?,
            salt: B64.decode(salt).map_err(|_| ScramError::Verifier)?,
            stored_key: key32(stored)?,
            server_key: key32(server)?,
        })
    }

    /// A verifier no proof matches (random keys), so an unknown role takes the same steps
    /// as a wrong password and is refused at the same point.
    pub fn impossible() -> Self {
        let mut v = Self {
            iterations: 4096,
            salt: vec![0; 16],
            stored_key: [0; 32],
            server_key: [0; 32],
        };
        let rng = ring::rand::SystemRandom::new();
        let _ = rng.fill(&mut v.salt);
        let _ = rng.fill(&mut v.stored_key);
        let _ = rng.fill(&mut v.server_key);
        v
    }

    /// The keys `password` proves, when it is this verifier's password (SaltedPassword →
    /// ClientKey → StoredKey, compared in constant time). The password is taken as given:
    /// no SASLprep, so a non-ASCII password that SASLprep would change does not match.
    pub fn keys_for_password(&self, password: &str) -> Option<ClientKeys> {
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(self.iterations.max(1)).expect("at least 1"),
            &self.salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        same(&sha256(&client_key), &self.stored_key).then_some(ClientKeys {
            client_key,
            server_key: self.server_key,
        })
    }

    /// The verifier of `password` with `salt` and `iterations` (for tests and tools).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations.max(1)).expect("at least 1"),
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, msg)
        .as_ref()
        .try_into()
        .expect("32-byte tag")
}

fn sha256(b: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, b)
        .as_ref()
        .try_into()
        .expect("32-byte digest")
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// A fresh printable nonce (18 random bytes, base64).
pub fn nonce() -> String {
    let mut b = [0u8; 18];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    B64.encode(b)
}

/// Constant-time equality of two keys.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of attribute `name` (`name=value`) among comma-separated attributes.
fn attr(msg: &str, name: char) -> Option<&str> {
    msg.split(',').find_map(|a| {
        let mut c = a.chars();
        (c.next() == Some(name) && c.next() == Some('=')).then(|| &a[2..])
    })
}

/// `tls-server-end-point` channel binding data (RFC 5929 §4.1): the hash of the server's
/// certificate (DER) with the hash function of the certificate's signature algorithm,
/// SHA-256 for MD5 and SHA-1, as libpq and the server compute it. Algorithms with no single
/// hash function of their own (Ed25519, RSASSA-PSS) and certificates that do not parse get
/// SHA-256 (PostgreSQL refuses channel binding over those).
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    let algorithm = match signature_algorithm(cert_der) {
        Some(SHA384_WITH_RSA | ECDSA_WITH_SHA384) => &digest::SHA384,
        Some(SHA512_WITH_RSA | ECDSA_WITH_SHA512) => &digest::SHA512,
        _ => &digest::SHA256,
    };
    digest::digest(algorithm, cert_der).as_ref().to_vec()
}

/// DER contents of the signature algorithm OIDs whose hash is not SHA-256.
const SHA384_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const ECDSA_WITH_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_WITH_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

/// The OID (its DER contents) of a certificate's `signatureAlgorithm` (RFC 5280 §4.1:
/// `SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, ... }, ... }`).
/// A walk over three headers rather than an X.509 crate: nothing else here parses
/// certificates (rustls hands them over as DER).
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, rest) = der_element(certificate)?; // tbsCertificate
    if tag != 0x30 {
        return None;
    }
    let (tag, algorithm, _) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element at the start of `b`: its tag, its contents and what follows it.
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (usize::from(first), b)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |l, &x| (l << 8) | usize::from(x));
        (len, &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// What the server offered and the client chose, for channel binding (RFC 5802 §6).
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// `SCRAM-SHA-256`, and `-PLUS` was not offered (no TLS): flag `n` or `y`.
    NotOffered,
    /// `SCRAM-SHA-256` although `-PLUS` was offered: flag `n`; `y` is a downgrade.
    Declined,
    /// `SCRAM-SHA-256-PLUS`: flag `p=tls-server-end-point` with this connection's data.
    Required(&'a [u8]),
}

/// The server side of one exchange, after the client's first message.
#[derive(Debug)]
pub struct ServerExchange {
    verifier: Verifier,
    /// What the client's final message must carry in `c=` (the gs2 header, then the
    /// channel binding data when bound).
    gs2_header: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerExchange {
    /// Reads the client's first message and answers with the server's first message.
    pub fn start(
        verifier: Verifier,
        client_first: &[u8],
        binding: Binding<'_>,
    ) -> Result<(Self, String), ScramError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("utf-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed("gs2"))?;
        let mut cbind_data: &[u8] = &[];
        match (flag, binding) {
            ("n", Binding::NotOffered | Binding::Declined) => {}
            ("y", Binding::NotOffered) => {}
            ("y", Binding::Declined) => return Err(ScramError::Downgrade),
            ("p=tls-server-end-point", Binding::Required(data)) => cbind_data = data,
            ("n" | "y", Binding::Required(_)) => {
                return Err(ScramError::Malformed(
                    "SCRAM-SHA-256-PLUS chosen without channel binding",
                ))
            }
            (f, Binding::Required(_)) if f.starts_with("p=") => {
                return Err(ScramError::Malformed(
                    "unsupported channel binding type (tls-server-end-point only)",
                ))
            }
            (f, _) if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("cbind flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("gs2"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authzid is not supported"));
        }
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        let client_nonce = attr(bare, 'r').ok_or(ScramError::Malformed("no nonce"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ScramError::Malformed("nonce"));
        }
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            Self {
                gs2_header: [format!("{flag},{authzid},").as_bytes(), cbind_data].concat(),
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                verifier,
            },
            server_first,
        ))
    }

    /// Checks the client's final message; on success, the keys it proves and the server's
    /// final message (its signature).
    pub fn finish(self, client_final: &[u8]) -> Result<(ClientKeys, String), ScramError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("utf-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let binding = attr(without_proof, 'c').ok_or(ScramError::Malformed("no binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(&self.gs2_header[..]) {
            return Err(ScramError::BindingMismatch);
        }
        if attr(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::Malformed("proof"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &signature);
        if !same(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok((
            ClientKeys {
                client_key,
                server_key: self.verifier.server_key,
            },
            format!("v={}", B64.encode(server_signature)),
        ))
    }
}

/// The client side of one exchange, authenticating with [`ClientKeys`].
#[derive(Debug)]
pub struct KeyClient {
    keys: ClientKeys,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl KeyClient {
    /// A new exchange and the client's first message.
    pub fn start(keys: ClientKeys) -> (Self, String) {
        let bare = format!("n=,r={}", nonce());
        let first = format!("n,,{bare}");
        (
            Self {
                keys,
                client_first_bare: bare,
                server_signature: None,
            },
            first,
        )
    }

    /// Reads the server's first message and answers with the client's final one.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("utf-8"))?;
        let nonce = attr(msg, 'r').ok_or(ScramError::Malformed("no nonce"))?;
        let ours = attr(&self.client_first_bare, 'r').unwrap_or_default();
        if !nonce.starts_with(ours) || nonce.len() == ours.len() {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.client_first_bare);
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof = xor(&self.keys.client_key, &signature);
        self.server_signature = Some(hmac_sha256(&self.keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server's final message (its signature).
    pub fn finish(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let msg = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("utf-8"))?;
        let v = attr(msg, 'v').ok_or(ScramError::Malformed("no signature"))?;
        let got: [u8; 32] = B64
            .decode(v)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::ServerSignature)?;
        match &self.server_signature {
            Some(want) if same(want, &got) => Ok(()),
            _ => Err(ScramError::ServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// postgres-protocol's client (the one libpq-compatible drivers use) against our server,
    /// then our key client against our server with the recovered keys.
    #[test]
    fn a_password_client_is_verified_and_its_keys_authenticate_again() {
        let verifier = Verifier::from_password("s3cret", b"0123456789abcdef", 4096);
        let mut client = ScramSha256::new(b"s3cret", ChannelBinding::unsupported());
        let (server, first) =
            ServerExchange::start(verifier.clone(), client.message(), Binding::NotOffered).unwrap();
        client.update(first.as_bytes()).unwrap();
        let (keys, last) = server.finish(client.message()).unwrap();
        client.finish(last.as_bytes()).unwrap();

        let (mut kc, first) = KeyClient::start(keys);
        let (server, server_first) =
            ServerExchange::start(verifier, first.as_bytes(), Binding::NotOffered).unwrap();
        let fin = kc.respond(server_first.as_bytes()).unwrap();
        let (_, server_final) = server.finish(fin.as_bytes()).unwrap();
        kc.finish(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn a_wrong_password_is_refused() {
        let verifier = Verifier::from_password("right", b"salt-salt-salt!!", 4096);
        let mut client = ScramSha256::new(b"wrong", ChannelBinding::unsupported());
        let (server, first) =
            ServerExchange::start(verifier, client.message(), Binding::NotOffered).unwrap();
        client.update(first.as_bytes()).unwrap();
        assert_eq!(
            server.finish(client.message()).unwrap_err(),
            ScramError::WrongProof
        );
    }

    #[test]
    fn verifiers_parse_as_postgres_stores_them() {
        let v = Verifier::parse("SCRAM-SHA-256$4096:aQ4s7UU7bfTX+aLj/mNTUw==$lDJLSIUqwqYlYPtFEKZwBrKLW2Hxr1qmRELWAM/FCwE=:beO9Cz6kZ6nM1hHcyL2NlYVD/tfTIYKx9YWRN9be2BM=").unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        assert!(Verifier::parse("md5abcdef").is_err());
        assert!(Verifier::parse("SCRAM-SHA-256$x:y$z:w").is_err());
    }

    #[test]
    fn channel_binding_requests_are_refused() {
        let v = Verifier::impossible();
        assert_eq!(
            ServerExchange::start(v, b"p=tls-server-end-point,,n=,r=abc", Binding::NotOffered)
                .unwrap_err(),
            ScramError::ChannelBinding
        );
    }

    /// postgres-protocol's client with `tls-server-end-point` data: the same data passes,
    /// other data (another certificate) fails; `y` while `-PLUS` was offered is refused.
    #[test]
    fn channel_binding_is_verified_and_a_downgrade_refused() {
        let verifier = Verifier::from_password("s3cret", b"0123456789abcdef", 4096);
        let ours = tls_server_end_point(b"our certificate");
        let run = |client_data: Vec<u8>| {
            let mut client =
                ScramSha256::new(b"s3cret", ChannelBinding::tls_server_end_point(client_data));
            let (server, first) =
                ServerExchange::start(verifier.clone(), client.message(), Binding::Required(&ours))
                    .unwrap();
            client.update(first.as_bytes()).unwrap();
            server.finish(client.message()).map(drop)
        };
        assert_eq!(run(ours.clone()), Ok(()));
        assert_eq!(
            run(tls_server_end_point(b"a man in the middle's certificate")),
            Err(ScramError::BindingMismatch)
        );
        let y = ScramSha256::new(b"s3cret", ChannelBinding::unrequested());
        assert_eq!(
            ServerExchange::start(verifier.clone(), y.message(), Binding::Declined).unwrap_err(),
            ScramError::Downgrade
        );
        let y = ScramSha256::new(b"s3cret", ChannelBinding::unrequested());
        assert!(ServerExchange::start(verifier.clone(), y.message(), Binding::NotOffered).is_ok());
        let n = ScramSha256::new(b"s3cret", ChannelBinding::unsupported());
        assert!(matches!(
            ServerExchange::start(verifier, n.message(), Binding::Required(&ours)),
            Err(ScramError::Malformed(_))
        ));
    }

    #[test]
    fn a_cleartext_password_is_checked_against_the_verifier() {
        let verifier = Verifier::from_password("s3cret", b"0123456789abcdef", 4096);
        let keys = verifier
            .keys_for_password("s3cret")
            .expect("the right password");
        // The keys authenticate as a proof would.
        let (mut kc, first) = KeyClient::start(keys);
        let (server, server_first) =
            ServerExchange::start(verifier.clone(), first.as_bytes(), Binding::NotOffered).unwrap();
        let fin = kc.respond(server_first.as_bytes()).unwrap();
        assert!(server.finish(fin.as_bytes()).is_ok());
        assert!(verifier.keys_for_password("S3cret").is_none());
        assert!(verifier.keys_for_password("").is_none());
    }

    /// DER of a PEM certificate fixture in `pgwire/tests/certs/`.
    fn fixture(name: &str) -> Vec<u8> {
        let pem = std::fs::read(format!(
            "{}/tests/certs/{name}.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let cert = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .unwrap()
            .unwrap();
        cert.as_ref().to_vec()
    }

    #[test]
    fn end_point_data_hashes_with_the_certificates_signature_hash() {
        // Made with `openssl req -x509 -newkey ... -sha384` etc.: what libpq computes.
        for (name, algorithm) in [
            ("p256", &digest::SHA256),
            ("p384", &digest::SHA384),
            ("rsa512", &digest::SHA512),
            // Ed25519 has no hash of its own: SHA-256 (PostgreSQL refuses binding there).
            ("ed", &digest::SHA256),
        ] {
            let der = fixture(name);
            let want = digest::digest(algorithm, &der);
            assert_eq!(tls_server_end_point(&der), want.as_ref(), "{name}");
        }
        // Not a certificate: SHA-256 of the bytes, no panic.
        assert_eq!(tls_server_end_point(b"\x30\x85"), sha256(b"\x30\x85"));
        assert_eq!(signature_algorithm(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
