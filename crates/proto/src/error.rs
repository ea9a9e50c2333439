//! Errors raised while decoding wire data: all of them mean "the peer broke the protocol".

/// A protocol violation found while decoding. Every variant but `TooManyStatements` maps to
/// SQLSTATE 08P01.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtoError {
    #[error("message length {len} is invalid (minimum is 4)")]
    LengthTooShort { len: i32 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("message {tag:?} is truncated: needed {needed} more bytes")]
    Truncated { tag: char, needed: usize },
    #[error("string in message {tag:?} is not NUL-terminated")]
    UnterminatedString { tag: char },
    #[error("string in message {tag:?} is not valid UTF-8")]
    InvalidUtf8 { tag: char },
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("startup packet is malformed: {what}")]
    BadStartup { what: &'static str },
    #[error("unexpected message {tag:?} {during}")]
    Unexpected { tag: char, during: &'static str },
    #[error("malformed {what}")]
    Malformed { what: &'static str },
    /// A client keeps more named prepared statements than a proxy will remember for it (not a
    /// protocol violation: mapped to 53400 configuration_limit_exceeded).
    #[error(
        "more than {max} named prepared statements open on one connection; close some (Close or DEALLOCATE)"
    )]
    TooManyStatements { max: usize },
}
