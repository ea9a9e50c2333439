//! Bind ('B'): portal name, statement name, then parameters the proxy never reads.

use crate::cursor::Cursor;
use crate::{Frame, ProtoError};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: Bytes,
    pub statement: Bytes,
    /// Formats, parameter values and result formats, untouched.
    pub tail: Bytes,
}

impl Bind {
    pub fn decode(frame: &Frame) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(frame.tag, frame.body.clone());
        let portal = c.cstr_bytes()?;
        let statement = c.cstr_bytes()?;
        Ok(Self {
            portal,
            statement,
            tail: c.rest(),
        })
    }

    /// The same Bind against another statement name.
    pub fn with_statement(&self, statement: &[u8]) -> Frame {
        let mut b =
            BytesMut::with_capacity(self.portal.len() + statement.len() + 2 + self.tail.len());
        b.put_slice(&self.portal);
        b.put_u8(0);
        b.put_slice(statement);
        b.put_u8(0);
        b.put_slice(&self.tail);
        Frame::new(super::tag::BIND, b.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_and_rewrite() {
        let f = Frame::new(b'B', Bytes::from_static(b"\0s1\0\0\0\0\0\0\0"));
        let b = Bind::decode(&f).unwrap();
        assert_eq!((&b.portal[..], &b.statement[..]), (&b""[..], &b"s1"[..]));
        let r = Bind::decode(&b.with_statement(b"sy_1")).unwrap();
        assert_eq!((&r.statement[..], &r.tail), (&b"sy_1"[..], &b.tail));
        assert!(Bind::decode(&Frame::new(b'B', Bytes::from_static(b"\0s1"))).is_err());
    }
}
