//! Describe ('D') and Close ('C'): a kind byte ('S' statement or 'P' portal) and a name.

use crate::cursor::Cursor;
use crate::{Frame, ProtoError};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Statement,
    Portal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: TargetKind,
    pub name: Bytes,
}

impl Target {
    pub fn decode(frame: &Frame) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(frame.tag, frame.body.clone());
        let kind = match c.u8()? {
            b'S' => TargetKind::Statement,
            b'P' => TargetKind::Portal,
            _ => {
                return Err(ProtoError::Malformed {
                    what: "Describe/Close target kind",
                });
            }
        };
        let name = c.cstr_bytes()?;
        Ok(Self { kind, name })
    }

    /// Encodes with message tag `tag` (Describe or Close) and the given name.
    pub fn encode(tag: u8, kind: TargetKind, name: &[u8]) -> Frame {
        let mut b = BytesMut::with_capacity(name.len() + 2);
        b.put_u8(match kind {
            TargetKind::Statement => b'S',
            TargetKind::Portal => b'P',
        });
        b.put_slice(name);
        b.put_u8(0);
        Frame::new(tag, b.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = Target::encode(b'C', TargetKind::Statement, b"s1");
        assert_eq!(
            Target::decode(&f).unwrap(),
            Target {
                kind: TargetKind::Statement,
                name: Bytes::from_static(b"s1")
            }
        );
        assert!(Target::decode(&Frame::new(b'C', Bytes::from_static(b"Xs\0"))).is_err());
    }
}
