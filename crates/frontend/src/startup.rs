//! The startup phase before authentication: TLS (an SSLRequest answered `S` and the handshake,
//! or PostgreSQL 17's direct TLS) when a certificate is configured, else `N`; GSS encryption
//! declined; a cancel request recognised; newer protocol minors negotiated down to 3.0; a
//! plain-text startup refused where TLS is required.

use crate::SessionError;
use crate::client::ClientConn;
use switchyard_proto::{StartupPacket, backend, decode_startup};

/// What the client wants after the startup phase.
pub enum Hello {
    Startup { params: Vec<(String, String)> },
    Cancel { process_id: i32, secret: Vec<u8> },
}

/// The first byte of a TLS handshake record: a client starting with it wants direct TLS.
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn negotiate(
    client: &mut ClientConn,
    tls: &switchyard_tls::FromClient,
) -> Result<Hello, SessionError> {
    if tls.offered() && starts_with_tls(client).await? {
        client.start_tls(tls, true).await?;
    }
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
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                if !client.buf.is_empty() {
                    // Bytes after the request before our answer: a man-in-the-middle signature
                    // (CVE-2021-23214); PostgreSQL refuses them too.
                    return Err(SessionError::Unsupported(
                        "unencrypted data after SSL request".into(),
                    ));
                }
                let ssl = matches!(packet, StartupPacket::SslRequest);
                if ssl && tls.offered() && !client.stream.is_tls() {
                    client.write(b"S").await?;
                    client.start_tls(tls, false).await?;
                } else {
                    // GSS encryption is not offered, nor TLS without a certificate (or twice):
                    // 'N' tells the client to go on as it is.
                    client.write(b"N").await?;
                }
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
                if tls.required() && !client.stream.is_tls() {
                    return Err(SessionError::TlsRequired {
                        mode: tls.mode().name(),
                    });
                }
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

/// Whether the client's first byte (looked at, not taken) begins a TLS handshake.
async fn starts_with_tls(client: &ClientConn) -> Result<bool, SessionError> {
    let Some(tcp) = client.stream.tcp() else {
        return Ok(false);
    };
    if !client.buf.is_empty() {
        return Ok(client.buf[0] == TLS_HANDSHAKE);
    }
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => Err(SessionError::ClientGone(
            std::io::ErrorKind::UnexpectedEof.into(),
        )),
        Ok(_) => Ok(first[0] == TLS_HANDSHAKE),
        Err(e) => Err(SessionError::ClientGone(e)),
    }
}
