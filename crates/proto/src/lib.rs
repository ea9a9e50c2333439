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
pub use frame::{Frame, FrameHeader, decode_frame, peek_header};
pub use startup::{StartupPacket, decode_startup};
