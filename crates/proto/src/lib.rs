//! The PostgreSQL v3 wire protocol, sans-IO: framing with size caps, the startup packet, the
//! handful of messages the proxy must read or write, SQLSTATE constants, and SCRAM/MD5 maths.
//!
//! Every other message passes through Switchyard as an opaque [`Frame`]. Nothing here touches a
//! socket, and nothing here can panic on wire data: all reads go through [`cursor::Cursor`].
#![forbid(unsafe_code)]

pub mod backend;
pub mod cursor;
pub mod error;
pub mod frame;
pub mod frontend;
pub mod md5;
pub mod scram;
pub mod sqlstate;
pub mod startup;

pub use error::ProtoError;

/// Compares two secrets (a password hash, a SCRAM proof, a cancel key, a token) in time that
/// does not depend on where they differ, so a client cannot learn one byte by byte.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}
pub use frame::{Frame, FrameHeader, decode_frame, peek_header};
pub use startup::{StartupPacket, decode_startup};

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(super::secrets_equal(b"abc", b"abc"));
        assert!(!super::secrets_equal(b"abc", b"abd"));
        assert!(!super::secrets_equal(b"abc", b"abcd"));
        assert!(super::secrets_equal(b"", b""));
    }
}
