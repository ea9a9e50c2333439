//! The proxy's side of server authentication: SCRAM-SHA-256, md5, cleartext and trust.

use crate::{ConnectParams, ServerConn, ServerError};
use switchyard_proto::backend::{AuthRequest, ErrorFields, tag};
use switchyard_proto::frontend;
use switchyard_proto::scram::{ClientExchange, MECHANISM};

/// Answers authentication requests until AuthenticationOk.
pub(crate) async fn authenticate(
    conn: &mut ServerConn,
    p: &ConnectParams,
) -> Result<(), ServerError> {
    let mut scram: Option<ClientExchange> = None;
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
        let password = || {
            p.password
                .as_deref()
                .ok_or_else(|| ServerError::NoPassword {
                    user: p.user.clone(),
                })
        };
        match AuthRequest::decode(&f)? {
            AuthRequest::Ok => return Ok(()),
            AuthRequest::Cleartext => {
                conn.send(&frontend::password_message(password()?.as_bytes()))
                    .await?
            }
            AuthRequest::Md5 { salt } => {
                let r = switchyard_proto::md5::response(&p.user, password()?, salt);
                conn.send(&frontend::password_message(r.as_bytes())).await?;
            }
            AuthRequest::Sasl { mechanisms } => {
                if !mechanisms.iter().any(|m| m == MECHANISM) {
                    return Err(ServerError::UnsupportedAuth(mechanisms.join(",")));
                }
                let (ex, first) = ClientExchange::start(password()?);
                scram = Some(ex);
                conn.send(&frontend::sasl_initial_response(
                    MECHANISM,
                    first.as_bytes(),
                ))
                .await?;
            }
            AuthRequest::SaslContinue { data } => {
                let ex = scram.as_mut().ok_or(ServerError::UnsupportedAuth(
                    "SASL continue without start".into(),
                ))?;
                let fin = ex.respond(&data)?;
                conn.send(&frontend::sasl_response(fin.as_bytes())).await?;
            }
            AuthRequest::SaslFinal { data } => {
                scram
                    .as_ref()
                    .ok_or(ServerError::UnsupportedAuth(
                        "SASL final without start".into(),
                    ))?
                    .verify(&data)?;
            }
            AuthRequest::Other(code) => {
                return Err(ServerError::UnsupportedAuth(format!("code {code}")));
            }
        }
    }
}
