//! The startup phase before authentication: SSL/GSS requests are declined ('N'), a direct-TLS
//! hello is refused, a cancel request is recognised, and newer protocol minors are negotiated
//! down to 3.0.

use crate::SessionError;
use crate::client::ClientConn;
use switchyard_proto::{StartupPacket, backend, decode_startup};

/// What the client wants after the startup phase.
pub enum Hello {
    Startup { params: Vec<(String, String)> },
    Cancel { process_id: i32, secret: Vec<u8> },
}

pub async fn negotiate(client: &mut ClientConn) -> Result<Hello, SessionError> {
    loop {
        let Some(packet) = decode_startup(&mut client.buf)? else {
            if !client.fill().await? {
                return Err(SessionError::ClientGone(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            continue;
        };
        match packet {
            // TLS and GSS encryption are not offered: 'N' tells the client to go on in plain text.
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                if !client.buf.is_empty() {
                    // Bytes after the request before our answer: a man-in-the-middle signature
                    // (CVE-2021-23214); PostgreSQL refuses them too.
                    return Err(SessionError::Unsupported(
                        "unencrypted data after SSL request".into(),
                    ));
                }
                client.write(b"N").await?;
            }
            StartupPacket::DirectTls => return Err(SessionError::DirectTls),
            StartupPacket::Cancel { process_id, secret } => {
                return Ok(Hello::Cancel { process_id, secret });
            }
            StartupPacket::Startup {
                minor,
                params,
                protocol_options,
            } => {
                if minor > 0 || !protocol_options.is_empty() {
                    client
                        .send(&[backend::negotiate_protocol_version(0, &protocol_options)])
                        .await?;
                }
                if params
                    .iter()
                    .any(|(k, v)| k == "replication" && v != "false" && v != "0")
                {
                    return Err(SessionError::Unsupported(
                        "replication connections are not supported".into(),
                    ));
                }
                return Ok(Hello::Startup { params });
            }
        }
    }
}
