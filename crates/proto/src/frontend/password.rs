//! PasswordMessage ('p') in its three shapes: cleartext/md5 password, SASLInitialResponse and
//! SASLResponse. Which one a 'p' frame holds depends on what the server asked for.

use crate::cursor::Cursor;
use crate::{Frame, ProtoError};
use bytes::{BufMut, Bytes, BytesMut};

/// PostgreSQL's cap on an authentication message (`PG_MAX_AUTH_TOKEN_LENGTH`): password and
/// SASL messages arrive before the client is known, so they get this, not `max_message_size`.
pub const MAX_AUTH_MESSAGE: usize = 65_535;

/// Longest SASL mechanism name accepted (the registered ones are under 30 bytes).
pub const MAX_MECHANISM_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitial {
    pub mechanism: String,
    pub data: Bytes,
}

impl SaslInitial {
    pub fn decode(frame: &Frame) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(frame.tag, frame.body.clone());
        let mechanism = c.cstr()?;
        if mechanism.len() > MAX_MECHANISM_NAME {
            return Err(ProtoError::Malformed {
                what: "SASL mechanism name (too long)",
            });
        }
        let len = c.i32()?;
        let data = if len < 0 {
            Bytes::new()
        } else {
            c.bytes(len as usize)?
        };
        Ok(Self { mechanism, data })
    }
}

/// Reads a cleartext or md5 password.
pub fn decode_password(frame: &Frame) -> Result<Bytes, ProtoError> {
    Cursor::new(frame.tag, frame.body.clone()).cstr_bytes()
}

pub fn password_message(password: &[u8]) -> Frame {
    let mut b = BytesMut::with_capacity(password.len() + 1);
    b.put_slice(password);
    b.put_u8(0);
    Frame::new(super::tag::PASSWORD, b.freeze())
}

pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Frame {
    let mut b = BytesMut::new();
    b.put_slice(mechanism.as_bytes());
    b.put_u8(0);
    b.put_i32(data.len() as i32);
    b.put_slice(data);
    Frame::new(super::tag::PASSWORD, b.freeze())
}

pub fn sasl_response(data: &[u8]) -> Frame {
    Frame::new(super::tag::PASSWORD, Bytes::copy_from_slice(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let f = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc");
        let s = SaslInitial::decode(&f).unwrap();
        assert_eq!(
            (s.mechanism.as_str(), &s.data[..]),
            ("SCRAM-SHA-256", &b"n,,n=,r=abc"[..])
        );
        assert_eq!(
            &decode_password(&password_message(b"pw")).unwrap()[..],
            b"pw"
        );
        assert!(
            SaslInitial::decode(&Frame::new(b'p', Bytes::from_static(b"M\0\0\0\0\x09ab"))).is_err()
        );
    }
}
