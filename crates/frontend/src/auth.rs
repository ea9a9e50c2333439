//! Client authentication against the configured users: trust, md5, SCRAM-SHA-256 and a TLS
//! client certificate. An unknown user goes through a SCRAM exchange that cannot succeed, so
//! user names do not leak.

use crate::client::ClientConn;
use crate::{SessionError, UserAuth};
use switchyard_proto::backend::AuthRequest;
use switchyard_proto::frontend::password::{MAX_AUTH_MESSAGE, decode_password};
use switchyard_proto::frontend::{SaslInitial, tag};
use switchyard_proto::scram::{MECHANISM, ScramKeys, ScramSecret, ServerExchange};
use switchyard_proto::{Frame, ProtoError};

/// `mock_nonce`: the process's random secret for the exchange of an unknown user (see
/// [`ScramSecret::mock`]). A SCRAM login returns the keys the client proved (what its server
/// logins can reuse when its password is only in the database).
pub async fn authenticate(
    client: &mut ClientConn,
    user: &str,
    auth: Option<&UserAuth>,
    mock_nonce: &[u8; 32],
) -> Result<Option<ScramKeys>, SessionError> {
    let failed = || SessionError::AuthFailed {
        user: user.to_string(),
    };
    let mut keys = None;
    match auth {
        Some(UserAuth::Trust) => {}
        // The certificate was verified in the handshake (client_tls = verify-ca or
        // verify-full); its common name must be the user's.
        Some(UserAuth::Cert) if client.stream.peer_common_name().as_deref() == Some(user) => {}
        Some(UserAuth::Cert) => {
            return Err(SessionError::CertAuthFailed {
                user: user.to_string(),
            });
        }
        Some(UserAuth::Md5 { stored }) => {
            let salt = rand::random::<[u8; 4]>();
            client.send(&[AuthRequest::Md5 { salt }.encode()]).await?;
            let answer = decode_password(&password_frame(client).await?)?;
            let want = switchyard_proto::md5::response_from_stored(stored, salt);
            if !switchyard_proto::secrets_equal(&answer, want.as_bytes()) {
                return Err(failed());
            }
        }
        Some(UserAuth::Scram { secret }) => {
            let proved = scram(client, secret.clone()).await.map_err(|e| match e {
                SessionError::AuthFailed { .. } => failed(),
                other => other,
            })?;
            keys = Some(proved);
        }
        None => {
            // Same exchange as a real user (same cost, a salt as stable), against a secret
            // that matches no password.
            let dummy = ScramSecret::mock(user, mock_nonce);
            return match scram(client, dummy).await {
                Err(SessionError::AuthFailed { .. }) | Ok(_) => Err(failed()),
                Err(other) => Err(other),
            };
        }
    }
    client.send(&[AuthRequest::Ok.encode()]).await?;
    Ok(keys)
}

async fn password_frame(client: &mut ClientConn) -> Result<Frame, SessionError> {
    let f = client.read_frame_within(MAX_AUTH_MESSAGE).await?;
    if f.tag != tag::PASSWORD {
        return Err(ProtoError::Unexpected {
            tag: f.tag as char,
            during: "authentication",
        }
        .into());
    }
    Ok(f)
}

async fn scram(client: &mut ClientConn, secret: ScramSecret) -> Result<ScramKeys, SessionError> {
    let failed = || SessionError::AuthFailed {
        user: String::new(),
    };
    client
        .send(&[AuthRequest::Sasl {
            mechanisms: vec![MECHANISM.into()],
        }
        .encode()])
        .await?;
    let initial = SaslInitial::decode(&password_frame(client).await?)?;
    if initial.mechanism != MECHANISM {
        return Err(SessionError::Unsupported(format!(
            "SASL mechanism {:?} is not supported",
            initial.mechanism
        )));
    }
    let (exchange, server_first) =
        ServerExchange::start(secret, &initial.data).map_err(|_| failed())?;
    client
        .send(&[AuthRequest::SaslContinue {
            data: server_first.into_bytes().into(),
        }
        .encode()])
        .await?;
    let response = password_frame(client).await?;
    let (server_final, keys) = exchange.finish(&response.body).map_err(|_| failed())?;
    client
        .send(&[AuthRequest::SaslFinal {
            data: server_final.into_bytes().into(),
        }
        .encode()])
        .await?;
    Ok(keys)
}
