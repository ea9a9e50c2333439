//! Parse ('P'): statement name, query text, parameter type OIDs.

use crate::cursor::Cursor;
use crate::{Frame, ProtoError};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    pub name: Bytes,
    /// Query text and parameter types exactly as sent (everything after the name).
    pub tail: Bytes,
}

impl Parse {
    pub fn decode(frame: &Frame) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(frame.tag, frame.body.clone());
        let name = c.cstr_bytes()?;
        let tail = c.rest();
        // Validate the tail's shape once, so a malformed Parse is refused here.
        let mut t = Cursor::new(frame.tag, tail.clone());
        t.cstr_bytes()?;
        let n = t.i16()?;
        if n < 0 || t.remaining() != n as usize * 4 {
            return Err(ProtoError::Malformed {
                what: "Parse parameter types",
            });
        }
        Ok(Self { name, tail })
    }

    /// The same statement under another name.
    pub fn renamed(&self, name: &[u8]) -> Frame {
        let mut b = BytesMut::with_capacity(name.len() + 1 + self.tail.len());
        b.put_slice(name);
        b.put_u8(0);
        b.put_slice(&self.tail);
        Frame::new(super::tag::PARSE, b.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_and_rename() {
        let f = Frame::new(b'P', Bytes::from_static(b"s1\0select $1\0\0\x01\0\0\0\x17"));
        let p = Parse::decode(&f).unwrap();
        assert_eq!(&p.name[..], b"s1");
        let r = Parse::decode(&p.renamed(b"sy_x")).unwrap();
        assert_eq!((&r.name[..], &r.tail), (&b"sy_x"[..], &p.tail));
        assert!(Parse::decode(&Frame::new(b'P', Bytes::from_static(b"s1\0q\0\0\x02\0"))).is_err());
    }
}
