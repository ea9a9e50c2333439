//! Authentication ('R'): requests a server makes, and the ones the proxy makes of its clients.

use crate::cursor::Cursor;
use crate::{Frame, ProtoError};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue {
        data: Bytes,
    },
    SaslFinal {
        data: Bytes,
    },
    /// Kerberos, GSS, SSPI: not supported against servers.
    Other(i32),
}

impl AuthRequest {
    pub fn decode(frame: &Frame) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(frame.tag, frame.body.clone());
        Ok(match c.i32()? {
            0 => Self::Ok,
            3 => Self::Cleartext,
            5 => {
                let s = c.bytes(4)?;
                Self::Md5 {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = c.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                Self::Sasl { mechanisms }
            }
            11 => Self::SaslContinue { data: c.rest() },
            12 => Self::SaslFinal { data: c.rest() },
            other => Self::Other(other),
        })
    }

    pub fn encode(&self) -> Frame {
        let mut b = BytesMut::new();
        match self {
            Self::Ok => b.put_i32(0),
            Self::Cleartext => b.put_i32(3),
            Self::Md5 { salt } => {
                b.put_i32(5);
                b.put_slice(salt);
            }
            Self::Sasl { mechanisms } => {
                b.put_i32(10);
                for m in mechanisms {
                    b.put_slice(m.as_bytes());
                    b.put_u8(0);
                }
                b.put_u8(0);
            }
            Self::SaslContinue { data } => {
                b.put_i32(11);
                b.put_slice(data);
            }
            Self::SaslFinal { data } => {
                b.put_i32(12);
                b.put_slice(data);
            }
            Self::Other(code) => b.put_i32(*code),
        }
        Frame::new(super::tag::AUTHENTICATION, b.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for r in [
            AuthRequest::Ok,
            AuthRequest::Md5 { salt: [1, 2, 3, 4] },
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256".into()],
            },
            AuthRequest::SaslFinal {
                data: Bytes::from_static(b"v=abc"),
            },
        ] {
            assert_eq!(AuthRequest::decode(&r.encode()).unwrap(), r);
        }
        assert!(
            AuthRequest::decode(&Frame::new(b'R', Bytes::from_static(b"\0\0\0\x05\x01"))).is_err()
        );
    }
}
