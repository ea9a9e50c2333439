//! The untagged packets a client may send first: StartupMessage, SSLRequest, GSSENCRequest and
//! CancelRequest, plus detection of a direct-TLS ClientHello (PostgreSQL 17 `sslnegotiation=direct`).

use crate::ProtoError;
use crate::cursor::Cursor;
use bytes::{Buf, BytesMut};

/// PostgreSQL's own cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// First byte of a TLS record carrying a handshake: a direct-TLS client sends this instead of a
/// length word.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    /// A TLS ClientHello arrived where a startup packet belongs.
    DirectTls,
    Cancel {
        process_id: i32,
        secret: Vec<u8>,
    },
    Startup {
        /// Requested minor version of protocol 3 (0 for 3.0, 2 for 3.2).
        minor: u16,
        /// Ordinary parameters (user, database, application_name, options, ...).
        params: Vec<(String, String)>,
        /// `_pq_.*` protocol options, which this server does not support.
        protocol_options: Vec<String>,
    },
}

/// Decodes one startup-phase packet from the front of `buf`, or `Ok(None)` if more bytes are needed.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtoError> {
    if buf.first() == Some(&TLS_HANDSHAKE_RECORD) {
        return Ok(Some(StartupPacket::DirectTls));
    }
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if len < 8 {
        return Err(ProtoError::BadStartup {
            what: "length below 8",
        });
    }
    let len = len as usize;
    if len > MAX_STARTUP_PACKET {
        return Err(ProtoError::TooLarge {
            len,
            max: MAX_STARTUP_PACKET,
        });
    }
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut c = Cursor::new(0, buf.split_to(len - 4).freeze());
    let code = c.i32()?;
    let packet = match code {
        SSL_REQUEST => StartupPacket::SslRequest,
        GSSENC_REQUEST => StartupPacket::GssEncRequest,
        CANCEL_REQUEST => {
            let process_id = c.i32()?;
            let secret = c.rest().to_vec();
            if secret.len() < 4 || secret.len() > 256 {
                return Err(ProtoError::BadStartup {
                    what: "cancel key length",
                });
            }
            StartupPacket::Cancel { process_id, secret }
        }
        _ => decode_startup_message(code, c)?,
    };
    Ok(Some(packet))
}

fn decode_startup_message(code: i32, mut c: Cursor) -> Result<StartupPacket, ProtoError> {
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(ProtoError::UnsupportedProtocol { major, minor });
    }
    let mut params = Vec::new();
    let mut protocol_options = Vec::new();
    loop {
        let name = c.cstr()?;
        if name.is_empty() {
            break;
        }
        let value = c.cstr()?;
        if name.starts_with("_pq_.") {
            protocol_options.push(name);
        } else {
            params.push((name, value));
        }
    }
    if c.remaining() != 0 {
        return Err(ProtoError::BadStartup {
            what: "bytes after the parameter list",
        });
    }
    Ok(StartupPacket::Startup {
        minor,
        params,
        protocol_options,
    })
}

/// Encodes a StartupMessage for protocol 3.0 (used on the proxy's own server connections).
pub fn encode_startup(params: &[(&str, &str)], out: &mut BytesMut) {
    use bytes::BufMut;
    let body_len: usize = params
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>()
        + 1;
    out.put_i32((8 + body_len) as i32);
    out.put_i32(196_608);
    for (k, v) in params {
        out.put_slice(k.as_bytes());
        out.put_u8(0);
        out.put_slice(v.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
}

/// Encodes a CancelRequest for a server's backend key.
pub fn encode_cancel(process_id: i32, secret: &[u8], out: &mut BytesMut) {
    use bytes::BufMut;
    out.put_i32((12 + secret.len()) as i32);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(process_id);
    out.put_slice(secret);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&((8 + rest.len()) as i32).to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn decodes_startup_and_options() {
        let mut b = packet(196_610, b"user\0bob\0_pq_.x\0y\0\0");
        let p = decode_startup(&mut b).unwrap().unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                minor: 2,
                params: vec![("user".into(), "bob".into())],
                protocol_options: vec!["_pq_.x".into()],
            }
        );
    }

    #[test]
    fn round_trips_our_own_startup_and_cancel() {
        let mut b = BytesMut::new();
        encode_startup(&[("user", "u"), ("database", "d")], &mut b);
        assert!(matches!(
            decode_startup(&mut b).unwrap(),
            Some(StartupPacket::Startup { minor: 0, .. })
        ));
        let mut b = BytesMut::new();
        encode_cancel(7, &[1, 2, 3, 4], &mut b);
        assert_eq!(
            decode_startup(&mut b).unwrap(),
            Some(StartupPacket::Cancel {
                process_id: 7,
                secret: vec![1, 2, 3, 4]
            })
        );
    }

    #[test]
    fn rejects_bad_packets() {
        assert!(decode_startup(&mut packet(196_608, b"user\0bob")).is_err());
        assert!(decode_startup(&mut packet(196_608, b"user\0bob\0\0junk")).is_err());
        assert!(decode_startup(&mut packet(0x0002_0000, b"\0")).is_err());
        let mut huge = BytesMut::new();
        huge.extend_from_slice(&20_000i32.to_be_bytes());
        assert!(matches!(
            decode_startup(&mut huge),
            Err(ProtoError::TooLarge { .. })
        ));
        assert_eq!(
            decode_startup(&mut BytesMut::from(&[0x16u8, 3, 1][..])).unwrap(),
            Some(StartupPacket::DirectTls)
        );
        assert_eq!(
            decode_startup(&mut BytesMut::from(&[0u8, 0][..])).unwrap(),
            None
        );
    }
}
