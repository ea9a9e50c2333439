//! ErrorResponse ('E') and NoticeResponse ('N'): the fields the proxy reads and writes.

use crate::cursor::Cursor;
use crate::{Frame, ProtoError};
use bytes::{BufMut, BytesMut};

/// The fields of an ErrorResponse that the proxy uses. Switchyard's own messages start with
/// `switchyard:` so a client can tell them from the server's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// ERROR, FATAL or PANIC (NOTICE, WARNING... for notices).
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorFields {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            ..Self::default()
        }
    }

    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self {
            severity: "FATAL".into(),
            ..Self::error(code, message)
        }
    }

    /// A notice (NoticeResponse) at WARNING severity: something the client should know that
    /// is not an error of its request.
    pub fn warning(code: &str, message: impl Into<String>) -> Self {
        Self {
            severity: "WARNING".into(),
            ..Self::error(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }

    pub fn decode(frame: &Frame) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(frame.tag, frame.body.clone());
        let mut out = Self::default();
        loop {
            let kind = c.u8()?;
            if kind == 0 {
                return Ok(out);
            }
            let value = String::from_utf8_lossy(&c.cstr_bytes()?).into_owned();
            match kind {
                b'V' => out.severity = value,
                b'S' if out.severity.is_empty() => out.severity = value,
                b'C' => out.code = value,
                b'M' => out.message = value,
                b'D' => out.detail = Some(value),
                b'H' => out.hint = Some(value),
                _ => {}
            }
        }
    }

    /// Encodes as an ErrorResponse.
    pub fn to_frame(&self) -> Frame {
        self.encode_as(super::tag::ERROR_RESPONSE)
    }

    /// Encodes as a NoticeResponse.
    pub fn to_notice_frame(&self) -> Frame {
        self.encode_as(super::tag::NOTICE_RESPONSE)
    }

    fn encode_as(&self, tag: u8) -> Frame {
        let mut b = BytesMut::new();
        let mut field = |k: u8, v: &str| {
            b.put_u8(k);
            // A NUL inside a value would end the field early: drop it.
            b.put_slice(v.replace('\0', "").as_bytes());
            b.put_u8(0);
        };
        field(b'S', &self.severity);
        field(b'V', &self.severity);
        field(b'C', &self.code);
        field(b'M', &self.message);
        if let Some(d) = &self.detail {
            field(b'D', d);
        }
        if let Some(h) = &self.hint {
            field(b'H', h);
        }
        b.put_u8(0);
        Frame::new(tag, b.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = ErrorFields::fatal("08P01", "switchyard: bad")
            .with_detail("d")
            .with_hint("h");
        assert_eq!(ErrorFields::decode(&e.to_frame()).unwrap(), e);
        assert!(e.is_fatal());
    }
}
