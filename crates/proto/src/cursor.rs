//! A panic-free reader over a message body: every read checks the remaining length first.

use crate::ProtoError;
use bytes::{Buf, Bytes};

/// Reads fields from one message body. `tag` names the message in errors.
pub struct Cursor {
    buf: Bytes,
    tag: char,
}

impl Cursor {
    pub fn new(tag: u8, buf: Bytes) -> Self {
        Self {
            buf,
            tag: tag as char,
        }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize) -> Result<(), ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated {
                tag: self.tag,
                needed: n - self.buf.len(),
            });
        }
        Ok(())
    }

    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub fn i16(&mut self) -> Result<i16, ProtoError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }

    pub fn i32(&mut self) -> Result<i32, ProtoError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }

    /// Takes `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, ProtoError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Takes everything left.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Reads a NUL-terminated string as raw bytes (without the NUL).
    pub fn cstr_bytes(&mut self) -> Result<Bytes, ProtoError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtoError::UnterminatedString { tag: self.tag })?;
        let s = self.buf.split_to(end);
        self.buf.advance(1);
        Ok(s)
    }

    /// Reads a NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<String, ProtoError> {
        let raw = self.cstr_bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| ProtoError::InvalidUtf8 { tag: self.tag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_checked() {
        let mut c = Cursor::new(b'X', Bytes::from_static(b"ab\0\x00\x01"));
        assert_eq!(c.cstr().unwrap(), "ab");
        assert!(c.i32().is_err());
        assert_eq!(c.i16().unwrap(), 1);
        assert!(c.u8().is_err());
        assert!(
            Cursor::new(b'X', Bytes::from_static(b"no-nul"))
                .cstr()
                .is_err()
        );
    }
}
