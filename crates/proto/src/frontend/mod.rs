//! Messages a client sends after startup that the proxy must read or rewrite: Parse, Bind,
//! Describe/Close (statement targets), Query, and the password/SASL messages. Everything else
//! (Execute, Sync, Flush, CopyData, FunctionCall, ...) passes through as a raw frame.

pub mod bind;
pub mod parse;
pub mod password;
pub mod target;

pub use bind::Bind;
pub use parse::Parse;
pub use password::{SaslInitial, password_message, sasl_initial_response, sasl_response};
pub use target::{Target, TargetKind};

/// Tags of frontend messages the relay looks at.
pub mod tag {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
}

/// Builds a simple Query ('Q') frame.
pub fn query(sql: &str) -> crate::Frame {
    let mut b = bytes::BytesMut::with_capacity(sql.len() + 1);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0]);
    crate::Frame::new(tag::QUERY, b.freeze())
}

/// Builds the messages of one extended-protocol query with text parameters, unnamed statement
/// and portal, ending in Sync: Parse, Bind, Execute, Sync. For the proxy's own lookups, where a
/// value must never be spliced into SQL text.
pub fn extended_query(sql: &str, params: &[&str]) -> Vec<crate::Frame> {
    vec![
        parse_unnamed(sql.as_bytes()),
        bind_unnamed_portal(b"", params),
        execute_all(),
        crate::Frame::new(tag::SYNC, bytes::Bytes::new()),
    ]
}

/// A Parse of `sql` as the unnamed statement, parameter types inferred.
pub fn parse_unnamed(sql: &[u8]) -> crate::Frame {
    use bytes::BufMut;
    let mut parse = bytes::BytesMut::with_capacity(sql.len() + 4);
    parse.put_u8(0); // unnamed statement
    parse.put_slice(sql);
    parse.put_u8(0);
    parse.put_i16(0); // parameter types: inferred
    crate::Frame::new(tag::PARSE, parse.freeze())
}

/// A Bind of `statement` (empty: the unnamed one) to the unnamed portal, with text
/// parameters and text results.
pub fn bind_unnamed_portal(statement: &[u8], params: &[&str]) -> crate::Frame {
    use bytes::BufMut;
    let mut bind = bytes::BytesMut::new();
    bind.put_u8(0); // unnamed portal
    bind.put_slice(statement);
    bind.put_u8(0);
    bind.put_i16(0); // parameter formats: all text
    bind.put_i16(params.len() as i16);
    for p in params {
        bind.put_i32(p.len() as i32);
        bind.put_slice(p.as_bytes());
    }
    bind.put_i16(0); // result formats: all text
    crate::Frame::new(tag::BIND, bind.freeze())
}

/// An Execute of every row of the unnamed portal.
pub fn execute_all() -> crate::Frame {
    crate::Frame::new(tag::EXECUTE, bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))
}
