//! SCRAM-SHA-256 (RFC 5802, RFC 7677) with keys instead of a password, for a proxy that
//! holds no tenant's password (PgBouncer's `auth_query` way).
//!
//! The server side ([`ServerExchange`]) checks a client's proof against the role's stored
//! verifier (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as in
//! `pg_authid.rolpassword`) and recovers the client's `ClientKey` from it
//! (`ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`). The client side
//! ([`KeyClient`]) then authenticates to the server with that `ClientKey`, and checks the
//! server's signature with the `ServerKey`. Channel binding is not offered (no
//! `SCRAM-SHA-256-PLUS`).

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

/// The server side of one exchange, after the client's first message.
#[derive(Debug)]
pub struct ServerExchange {
    verifier: Verifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerExchange {
    /// Reads the client's first message and answers with the server's first message.
    pub fn start(verifier: Verifier, client_first: &[u8]) -> Result<(Self, String), ScramError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("utf-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed("gs2"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
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
                gs2_header: format!("{flag},{authzid},"),
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
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding data"));
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
        let (server, first) = ServerExchange::start(verifier.clone(), client.message()).unwrap();
        client.update(first.as_bytes()).unwrap();
        let (keys, last) = server.finish(client.message()).unwrap();
        client.finish(last.as_bytes()).unwrap();

        let (mut kc, first) = KeyClient::start(keys);
        let (server, server_first) = ServerExchange::start(verifier, first.as_bytes()).unwrap();
        let fin = kc.respond(server_first.as_bytes()).unwrap();
        let (_, server_final) = server.finish(fin.as_bytes()).unwrap();
        kc.finish(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn a_wrong_password_is_refused() {
        let verifier = Verifier::from_password("right", b"salt-salt-salt!!", 4096);
        let mut client = ScramSha256::new(b"wrong", ChannelBinding::unsupported());
        let (server, first) = ServerExchange::start(verifier, client.message()).unwrap();
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
            ServerExchange::start(v, b"p=tls-server-end-point,,n=,r=abc").unwrap_err(),
            ScramError::ChannelBinding
        );
    }
}
