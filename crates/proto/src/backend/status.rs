//! Small status messages: ReadyForQuery ('Z'), ParameterStatus ('S'), BackendKeyData ('K'),
//! CommandComplete ('C'), NegotiateProtocolVersion ('v') and the bare completions (ParseComplete,
//! CloseComplete, EmptyQueryResponse).

use super::tag;
use crate::cursor::Cursor;
use crate::{Frame, ProtoError};
use bytes::{BufMut, Bytes, BytesMut};

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

pub fn ready_for_query(status: TxStatus) -> Frame {
    Frame::new(
        tag::READY_FOR_QUERY,
        Bytes::copy_from_slice(&[status.byte()]),
    )
}

pub fn decode_ready_for_query(frame: &Frame) -> Result<TxStatus, ProtoError> {
    match frame.body.first() {
        Some(b'I') => Ok(TxStatus::Idle),
        Some(b'T') => Ok(TxStatus::InTransaction),
        Some(b'E') => Ok(TxStatus::Failed),
        _ => Err(ProtoError::Malformed {
            what: "ReadyForQuery status",
        }),
    }
}

pub fn parameter_status(name: &str, value: &str) -> Frame {
    let mut b = BytesMut::with_capacity(name.len() + value.len() + 2);
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_slice(value.as_bytes());
    b.put_u8(0);
    Frame::new(tag::PARAMETER_STATUS, b.freeze())
}

pub fn decode_parameter_status(frame: &Frame) -> Result<(String, String), ProtoError> {
    let mut c = Cursor::new(frame.tag, frame.body.clone());
    Ok((c.cstr()?, c.cstr()?))
}

pub fn backend_key_data(process_id: i32, secret: &[u8]) -> Frame {
    let mut b = BytesMut::with_capacity(4 + secret.len());
    b.put_i32(process_id);
    b.put_slice(secret);
    Frame::new(tag::BACKEND_KEY_DATA, b.freeze())
}

pub fn decode_backend_key_data(frame: &Frame) -> Result<(i32, Vec<u8>), ProtoError> {
    let mut c = Cursor::new(frame.tag, frame.body.clone());
    let pid = c.i32()?;
    Ok((pid, c.rest().to_vec()))
}

pub fn command_complete(command_tag: &str) -> Frame {
    let mut b = BytesMut::with_capacity(command_tag.len() + 1);
    b.put_slice(command_tag.as_bytes());
    b.put_u8(0);
    Frame::new(tag::COMMAND_COMPLETE, b.freeze())
}

pub fn decode_command_complete(frame: &Frame) -> Result<String, ProtoError> {
    Cursor::new(frame.tag, frame.body.clone()).cstr()
}

/// Tells a client the newest protocol 3 minor version this server speaks, and which `_pq_`
/// options it does not support. The field carries the whole version number, as PostgreSQL's
/// `PG_PROTOCOL(3, minor)`: libpq 18 refuses anything below 3.0.
pub fn negotiate_protocol_version(minor: u16, unsupported_options: &[String]) -> Frame {
    let mut b = BytesMut::new();
    b.put_i32((3 << 16) | i32::from(minor));
    b.put_i32(unsupported_options.len() as i32);
    for o in unsupported_options {
        b.put_slice(o.as_bytes());
        b.put_u8(0);
    }
    Frame::new(tag::NEGOTIATE_PROTOCOL_VERSION, b.freeze())
}

pub fn parse_complete() -> Frame {
    Frame::new(tag::PARSE_COMPLETE, Bytes::new())
}

pub fn close_complete() -> Frame {
    Frame::new(tag::CLOSE_COMPLETE, Bytes::new())
}

/// EmptyQueryResponse ('I'): the answer to a query string with no statement in it.
pub fn empty_query_response() -> Frame {
    Frame::new(tag::EMPTY_QUERY_RESPONSE, Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(
            decode_ready_for_query(&ready_for_query(TxStatus::Failed)).unwrap(),
            TxStatus::Failed
        );
        assert!(decode_ready_for_query(&Frame::new(b'Z', Bytes::new())).is_err());
        let (k, v) = decode_parameter_status(&parameter_status("TimeZone", "UTC")).unwrap();
        assert_eq!((k.as_str(), v.as_str()), ("TimeZone", "UTC"));
        assert_eq!(
            decode_backend_key_data(&backend_key_data(9, &[1, 2, 3, 4])).unwrap(),
            (9, vec![1, 2, 3, 4])
        );
        assert_eq!(
            decode_command_complete(&command_complete("SET")).unwrap(),
            "SET"
        );
    }
}
