//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it: the server side for clients of the
//! proxy, the client side for the proxy's own server connections, and PostgreSQL's stored
//! verifier format `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
//!
//! Written here rather than taken from a crate: the maths is a few HMACs, and the crates that do it
//! either bring a whole server framework (pgwire) or are client-only (postgres-protocol).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub const MECHANISM: &str = "SCRAM-SHA-256";
const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("nonce mismatch")]
    Nonce,
    #[error("proof does not match")]
    BadProof,
    #[error("server signature does not match")]
    BadServerSignature,
    #[error("stored SCRAM secret is malformed")]
    BadSecret,
    /// A server asked for more key-derivation rounds than [`MAX_ITERATIONS`]: deriving the key
    /// would take a core for seconds or more.
    #[error("server asks for {0} SCRAM iterations, more than the {MAX_ITERATIONS} allowed")]
    TooManyIterations(u32),
}

/// Most PBKDF2 rounds a server may ask for (PostgreSQL's default is 4096; a million take about
/// a second of one core).
pub const MAX_ITERATIONS: u32 = 1_000_000;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// PBKDF2-HMAC-SHA256 for one 32-byte block (all SCRAM-SHA-256 needs).
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

fn nonce() -> String {
    B64.encode(rand::random::<[u8; 18]>())
}

/// What a server stores to verify a SCRAM client without knowing its password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramSecret(..)")
    }
}

impl ScramSecret {
    /// Derives a secret from a cleartext password with a fresh random salt.
    pub fn from_password(password: &str) -> Self {
        Self::derive(password, &rand::random::<[u8; 16]>(), DEFAULT_ITERATIONS)
    }

    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// A secret for a user that does not exist, as PostgreSQL makes one: the salt is the same
    /// every time for the same name (a real user's is too), the keys match no password, and no
    /// key derivation runs (a real user's exchange runs none either). `nonce` is the process's
    /// own random secret, so the salts cannot be predicted.
    pub fn mock(user: &str, nonce: &[u8; 32]) -> Self {
        let per_user = hmac(nonce, user.as_bytes());
        Self {
            iterations: DEFAULT_ITERATIONS,
            salt: per_user[..16].to_vec(),
            stored_key: hmac(&per_user, b"Stored Key"),
            server_key: hmac(&per_user, b"Server Key"),
        }
    }

    /// PostgreSQL's text form, as [`Self::parse`] reads it.
    pub fn to_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Parses PostgreSQL's `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadSecret)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(ScramError::BadSecret)?;
        let (iter, salt) = iter_salt.split_once(':').ok_or(ScramError::BadSecret)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadSecret)?;
        let key = |k: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(ScramError::BadSecret)
        };
        let iterations: u32 = iter.parse().map_err(|_| ScramError::BadSecret)?;
        if iterations == 0 {
            return Err(ScramError::BadSecret);
        }
        Ok(Self {
            iterations,
            salt: B64.decode(salt).map_err(|_| ScramError::BadSecret)?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

/// The two keys a SCRAM client proves and checks with: what a successful exchange reveals to the
/// server side (the ClientKey is recovered from the proof), and all the client side needs to log
/// in again to a server holding the same verifier, without the password (PgBouncer's
/// auth_query pass-through does the same).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(..)")
    }
}

/// Splits `a=x,b=y` SCRAM attributes.
fn attr(msg: &str, name: char) -> Option<&str> {
    msg.split(',')
        .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

/// The server side of one SCRAM exchange with a client.
pub struct ServerExchange {
    secret: ScramSecret,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

impl ServerExchange {
    /// Takes the client-first message; returns the exchange and the server-first message.
    pub fn start(secret: ScramSecret, client_first: &[u8]) -> Result<(Self, String), ScramError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let gs2_len = match msg.as_bytes().first() {
            Some(b'n') | Some(b'y') => msg.match_indices(',').nth(1).map(|(i, _)| i + 1),
            Some(b'p') => return Err(ScramError::ChannelBinding),
            _ => None,
        }
        .ok_or(ScramError::Malformed("gs2 header"))?;
        let (gs2_header, bare) = msg.split_at(gs2_len);
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        let client_nonce = attr(bare, 'r').ok_or(ScramError::Malformed("client nonce"))?;
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        let ex = Self {
            secret,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            gs2_header: gs2_header.to_string(),
            nonce,
        };
        Ok((ex, server_first))
    }

    /// Checks the client-final message; returns the server-final message and the client's
    /// keys on success.
    pub fn finish(&self, client_final: &[u8]) -> Result<(String, ScramKeys), ScramError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("proof"))?;
        let binding = attr(without_proof, 'c').ok_or(ScramError::Malformed("channel binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::ChannelBinding);
        }
        if attr(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::Malformed("proof encoding"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !crate::secrets_equal(&sha256(&client_key), &self.secret.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        let keys = ScramKeys {
            client_key,
            server_key: self.secret.server_key,
        };
        Ok((format!("v={}", B64.encode(server_signature)), keys))
    }
}

/// What the client side proves itself with.
enum ClientSecret {
    Password(String),
    /// Keys from a client's exchange against the same verifier: no key derivation, and the
    /// server's salt and iteration count are whatever that verifier says.
    Keys(ScramKeys),
}

/// The client side of one SCRAM exchange with a server.
pub struct ClientExchange {
    secret: ClientSecret,
    client_first_bare: String,
    client_nonce: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ClientExchange {
    /// Returns the exchange and the client-first message to send.
    pub fn start(password: &str) -> (Self, String) {
        Self::start_with(ClientSecret::Password(password.to_string()))
    }

    /// As [`Self::start`], proving with keys a client's own exchange revealed.
    pub fn start_with_keys(keys: ScramKeys) -> (Self, String) {
        Self::start_with(ClientSecret::Keys(keys))
    }

    fn start_with(secret: ClientSecret) -> (Self, String) {
        let client_nonce = nonce();
        let client_first_bare = format!("n=,r={client_nonce}");
        let first = format!("n,,{client_first_bare}");
        let ex = Self {
            secret,
            client_first_bare,
            client_nonce,
            expected_server_signature: None,
        };
        (ex, first)
    }

    /// Takes the server-first message; returns the client-final message.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let msg =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let nonce = attr(msg, 'r').ok_or(ScramError::Malformed("nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = attr(msg, 's')
            .and_then(|s| B64.decode(s).ok())
            .ok_or(ScramError::Malformed("salt"))?;
        let iterations: u32 = attr(msg, 'i')
            .and_then(|i| i.parse().ok())
            .filter(|&i| i > 0)
            .ok_or(ScramError::Malformed("iterations"))?;
        if iterations > MAX_ITERATIONS {
            return Err(ScramError::TooManyIterations(iterations));
        }
        let (client_key, server_key) = match &self.secret {
            ClientSecret::Password(password) => {
                let salted = salted_password(password.as_bytes(), &salt, iterations);
                (hmac(&salted, b"Client Key"), hmac(&salted, b"Server Key"))
            }
            ClientSecret::Keys(k) => (k.client_key, k.server_key),
        };
        let stored_key = sha256(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let proof = xor(&client_key, &hmac(&stored_key, auth_message.as_bytes()));
        self.expected_server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let msg =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let got = attr(msg, 'v').and_then(|v| B64.decode(v).ok());
        match (got, self.expected_server_signature) {
            (Some(got), Some(want)) if crate::secrets_equal(&got, &want) => Ok(()),
            _ => Err(ScramError::BadServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(client_pw: &str, server_pw: &str) -> Result<(), ScramError> {
        let (mut client, first) = ClientExchange::start(client_pw);
        let (server, server_first) =
            ServerExchange::start(ScramSecret::from_password(server_pw), first.as_bytes())?;
        let client_final = client.respond(server_first.as_bytes())?;
        let (server_final, _) = server.finish(client_final.as_bytes())?;
        client.verify(server_final.as_bytes())
    }

    #[test]
    fn keys_from_a_clients_login_log_in_again_without_the_password() {
        let verifier = ScramSecret::from_password("pw");
        let (mut client, first) = ClientExchange::start("pw");
        let (server, server_first) =
            ServerExchange::start(verifier.clone(), first.as_bytes()).expect("client first");
        let client_final = client.respond(server_first.as_bytes()).unwrap();
        let (_, keys) = server.finish(client_final.as_bytes()).unwrap();
        // A second server holding the same verifier accepts the keys, and proves itself.
        let (mut again, first) = ClientExchange::start_with_keys(keys.clone());
        let (server, server_first) = ServerExchange::start(verifier, first.as_bytes()).unwrap();
        let client_final = again.respond(server_first.as_bytes()).unwrap();
        let (server_final, _) = server.finish(client_final.as_bytes()).unwrap();
        again.verify(server_final.as_bytes()).unwrap();
        // A server with another verifier refuses them.
        let (mut other, first) = ClientExchange::start_with_keys(keys);
        let (server, server_first) =
            ServerExchange::start(ScramSecret::from_password("pw"), first.as_bytes()).unwrap();
        let client_final = other.respond(server_first.as_bytes()).unwrap();
        assert_eq!(
            server.finish(client_final.as_bytes()).err(),
            Some(ScramError::BadProof)
        );
    }

    #[test]
    fn an_unknown_users_mock_secret_is_stable_per_name_and_accepts_no_password() {
        let nonce = [7u8; 32];
        let a = ScramSecret::mock("ghost", &nonce);
        assert_eq!(
            a.salt,
            ScramSecret::mock("ghost", &nonce).salt,
            "stable salt"
        );
        assert_ne!(a.salt, ScramSecret::mock("other", &nonce).salt);
        assert_ne!(a.salt, ScramSecret::mock("ghost", &[8u8; 32]).salt);
        assert_eq!((a.salt.len(), a.iterations), (16, DEFAULT_ITERATIONS));
        for pw in ["", "ghost", "password"] {
            let (mut client, first) = ClientExchange::start(pw);
            let (server, server_first) =
                ServerExchange::start(ScramSecret::mock("ghost", &nonce), first.as_bytes())
                    .unwrap();
            let client_final = client.respond(server_first.as_bytes()).unwrap();
            assert_eq!(
                server.finish(client_final.as_bytes()).err(),
                Some(ScramError::BadProof)
            );
        }
    }

    #[test]
    fn exchange_succeeds_and_fails() {
        assert_eq!(run("pw", "pw"), Ok(()));
        assert_eq!(run("pw", "other"), Err(ScramError::BadProof));
    }

    #[test]
    fn refuses_zero_iterations_and_servers_asking_too_many() {
        let s = ScramSecret::derive("pw", b"0123456789abcdef", 4096);
        let with = |iterations: u32| {
            format!(
                "SCRAM-SHA-256${iterations}:{}${}:{}",
                B64.encode(&s.salt),
                B64.encode(s.stored_key),
                B64.encode(s.server_key)
            )
        };
        assert!(ScramSecret::parse(&with(4096)).is_ok());
        assert_eq!(
            ScramSecret::parse(&with(0)).err(),
            Some(ScramError::BadSecret)
        );
        let (mut c, _) = ClientExchange::start("pw");
        let nonce = c.client_nonce.clone();
        let first = format!("r={nonce}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=2000000000");
        assert_eq!(
            c.respond(first.as_bytes()).err(),
            Some(ScramError::TooManyIterations(2_000_000_000))
        );
    }

    #[test]
    fn parses_postgres_verifier() {
        let s = ScramSecret::derive("pw", b"0123456789abcdef", 4096);
        assert_eq!(ScramSecret::parse(&s.to_text()).unwrap(), s);
        assert!(ScramSecret::parse("SCRAM-SHA-256$x").is_err());
    }

    #[test]
    fn rfc7677_salted_password() {
        // RFC 7677 §3 test vector: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let s = ScramSecret::derive("pencil", &salt, 4096);
        let client_key = hmac(&salted_password(b"pencil", &salt, 4096), b"Client Key");
        assert_eq!(s.stored_key, sha256(&client_key));
        let mut client = ClientExchange {
            secret: ClientSecret::Password("pencil".into()),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            client_nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            expected_server_signature: None,
        };
        let fin = client
            .respond(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }
}
