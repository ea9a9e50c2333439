//! Framing of regular (tagged) messages: a 1-byte tag, a 4-byte length that counts itself, a body.

use crate::ProtoError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// One complete tagged message. The body excludes the tag and the length word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Self {
        Self {
            tag,
            body: body.into(),
        }
    }

    /// Bytes on the wire: tag, length, body.
    pub fn wire_len(&self) -> usize {
        5 + self.body.len()
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.wire_len());
        out.put_u8(self.tag);
        out.put_i32((self.body.len() + 4) as i32);
        out.put_slice(&self.body);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.wire_len());
        self.encode(&mut out);
        out.freeze()
    }
}

/// The tag and total wire length of the message at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    /// Tag + length word + body.
    pub wire_len: usize,
}

/// Looks at the next message header without consuming anything. `Ok(None)` means fewer than five
/// bytes are buffered. Lengths below 4 or above `max` are protocol violations.
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<FrameHeader>, ProtoError> {
    let Some(head) = buf.get(..5) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len < 4 {
        return Err(ProtoError::LengthTooShort { len });
    }
    let body = len as usize - 4;
    if body > max {
        return Err(ProtoError::TooLarge { len: body, max });
    }
    Ok(Some(FrameHeader {
        tag: head[0],
        wire_len: body + 5,
    }))
}

/// Splits one complete message off the front of `buf`, or returns `Ok(None)` if it is not all
/// here yet (reserving room for the rest). Bodies larger than `max` bytes are refused before any
/// allocation.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtoError> {
    let Some(h) = peek_header(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < h.wire_len {
        buf.reserve(h.wire_len - buf.len());
        return Ok(None);
    }
    let tag = buf.get_u8();
    buf.advance(4);
    let body = buf.split_to(h.wire_len - 5).freeze();
    Ok(Some(Frame { tag, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_partial() {
        let f = Frame::new(b'Q', Bytes::from_static(b"select 1\0"));
        let wire = f.to_bytes();
        for split in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..split]);
            assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None);
        }
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(decode_frame(&mut buf, 1024).unwrap(), Some(f));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = BytesMut::from(&b"Q\x00\x00\x00\x03"[..]);
        assert!(matches!(
            decode_frame(&mut buf, 10),
            Err(ProtoError::LengthTooShort { .. })
        ));
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            decode_frame(&mut buf, 10),
            Err(ProtoError::TooLarge { .. })
        ));
    }
}
