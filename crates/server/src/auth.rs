//! The proxy's side of server authentication: SCRAM-SHA-256, md5, cleartext and trust, each
//! answered only if [`AllowedAuth`] lists it, and a SCRAM login accepted only once the server
//! has proved it knows the password (its signature checked before AuthenticationOk counts).

use crate::{ConnectParams, Credential, ServerConn, ServerError, ServerSecret};
use switchyard_proto::backend::{AuthRequest, ErrorFields, tag};
use switchyard_proto::scram::{ClientExchange, MECHANISM};
use switchyard_proto::{frontend, md5};

/// The authentication methods a server may ask for (libpq's `require_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedAuth {
    /// No authentication at all: AuthenticationOk straight away.
    pub none: bool,
    pub password: bool,
    pub md5: bool,
    pub scram: bool,
}

impl Default for AllowedAuth {
    /// SCRAM or none: never a password in cleartext or in md5's weak hash.
    fn default() -> Self {
        Self {
            none: true,
            password: false,
            md5: false,
            scram: true,
        }
    }
}

impl AllowedAuth {
    /// Every method (for tests and tools that talk to a known local server).
    pub fn any() -> Self {
        Self {
            none: true,
            password: true,
            md5: true,
            scram: true,
        }
    }

    fn check(&self, allowed: bool, method: &'static str) -> Result<(), ServerError> {
        if allowed {
            Ok(())
        } else {
            Err(ServerError::AuthNotAllowed { method })
        }
    }
}

/// Where a SCRAM exchange with the server stands.
enum Scram {
    NotStarted,
    Started(ClientExchange),
    /// The server's final message carried the right signature.
    Verified,
}

/// Answers authentication requests until AuthenticationOk.
pub(crate) async fn authenticate(
    conn: &mut ServerConn,
    p: &ConnectParams,
) -> Result<(), ServerError> {
    let allowed = p.allowed_auth;
    let mut scram = Scram::NotStarted;
    let mut asked = false;
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            tag::AUTHENTICATION => {}
            tag::ERROR_RESPONSE => {
                return Err(ServerError::Refused(Box::new(ErrorFields::decode(&f)?)));
            }
            other => {
                return Err(switchyard_proto::ProtoError::Unexpected {
                    tag: other as char,
                    during: "authentication",
                }
                .into());
            }
        }
        let no_password = || ServerError::NoPassword {
            user: p.user.clone(),
        };
        let request = AuthRequest::decode(&f)?;
        let first = !asked;
        asked = true;
        match request {
            AuthRequest::Ok => {
                return match scram {
                    Scram::Started(_) => Err(ServerError::UnsupportedAuth(
                        "AuthenticationOk before the server proved it knows the password (SCRAM)"
                            .into(),
                    )),
                    _ if first => allowed.check(allowed.none, "none"),
                    _ => Ok(()),
                };
            }
            AuthRequest::Cleartext => {
                allowed.check(allowed.password, "password")?;
                let Credential::Password(password) = &p.credential else {
                    return Err(no_password());
                };
                conn.send(&frontend::password_message(password.as_bytes()))
                    .await?
            }
            AuthRequest::Md5 { salt } => {
                allowed.check(allowed.md5, "md5")?;
                let r = match &p.credential {
                    Credential::Password(pw) => md5::response(&p.user, pw, salt),
                    Credential::Learned(l) => match l.get() {
                        Some(ServerSecret::Md5(stored)) => md5::response_from_stored(&stored, salt),
                        _ => return Err(no_password()),
                    },
                    Credential::None => return Err(no_password()),
                };
                conn.send(&frontend::password_message(r.as_bytes())).await?;
            }
            AuthRequest::Sasl { mechanisms } => {
                allowed.check(allowed.scram, "scram-sha-256")?;
                if !mechanisms.iter().any(|m| m == MECHANISM) {
                    return Err(ServerError::UnsupportedAuth(mechanisms.join(",")));
                }
                let (ex, first) = match &p.credential {
                    Credential::Password(pw) => ClientExchange::start(pw),
                    Credential::Learned(l) => match l.get() {
                        Some(ServerSecret::Scram(keys)) => ClientExchange::start_with_keys(keys),
                        _ => return Err(no_password()),
                    },
                    Credential::None => return Err(no_password()),
                };
                scram = Scram::Started(ex);
                conn.send(&frontend::sasl_initial_response(
                    MECHANISM,
                    first.as_bytes(),
                ))
                .await?;
            }
            AuthRequest::SaslContinue { data } => {
                let Scram::Started(mut ex) = std::mem::replace(&mut scram, Scram::NotStarted)
                else {
                    return Err(ServerError::UnsupportedAuth(
                        "SASL continue out of order".into(),
                    ));
                };
                // The key derivation takes milliseconds of CPU (more with a server's higher
                // iteration count): off the threads that relay everyone's traffic.
                let (ex, fin) = tokio::task::spawn_blocking(move || {
                    let fin = ex.respond(&data);
                    (ex, fin)
                })
                .await
                .map_err(|_| ServerError::UnsupportedAuth("SCRAM key derivation failed".into()))?;
                scram = Scram::Started(ex);
                conn.send(&frontend::sasl_response(fin?.as_bytes())).await?;
            }
            AuthRequest::SaslFinal { data } => {
                let Scram::Started(ex) = &scram else {
                    return Err(ServerError::UnsupportedAuth(
                        "SASL final out of order".into(),
                    ));
                };
                ex.verify(&data)?;
                scram = Scram::Verified;
            }
            AuthRequest::Other(code) => {
                return Err(ServerError::UnsupportedAuth(format!("code {code}")));
            }
        }
    }
}
