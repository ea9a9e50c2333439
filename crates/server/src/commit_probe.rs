//! [`CommitProbe`]: what Switchyard learns of a transaction in the same flight as its COMMIT
//! (its transaction id and the WAL position before the commit record), so that if the server
//! is lost before the COMMIT's answer the outcome can be asked of the new primary
//! (`frontend::session::resolve`).
//!
//! The probe is one simple Query sent just before the client's COMMIT; its answers come first
//! and are taken off the stream here, so the client never sees them.

use bytes::{Buf, BytesMut};
use switchyard_proto::backend::tag;
use switchyard_proto::{ProtoError, peek_header};

/// The probe: the transaction's id if it has one (a transaction that wrote nothing has none)
/// and the WAL insert position, which is before the commit record that follows.
pub const PROBE_SQL: &str =
    "SELECT pg_catalog.txid_current_if_assigned(), pg_catalog.pg_current_wal_insert_lsn()";

/// Whether the connection's user may run [`PROBE_SQL`] (asked once per connection, at login):
/// a probe refused inside a transaction would abort it, turning its COMMIT into a rollback.
pub(crate) const PRIVILEGE_SQL: &str = "SELECT pg_catalog.has_function_privilege(\
     'pg_catalog.txid_current_if_assigned()', 'EXECUTE') AND \
     pg_catalog.has_function_privilege('pg_catalog.pg_current_wal_insert_lsn()', 'EXECUTE')";

/// Largest answer message the probe can have (a row of two short values, an error).
const MAX_PROBE_MESSAGE: usize = 64 << 10;

/// Where the probe of the connection's current COMMIT stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CommitProbe {
    /// No COMMIT probed on this request.
    #[default]
    None,
    /// Sent with the COMMIT; its answers are the first to come.
    Sent,
    /// Answered: the transaction's id (none: it wrote nothing) and the WAL position before its
    /// commit record.
    Answered { xid: Option<u64>, lsn: u64 },
    /// The probe failed (an old server, a function missing): the outcome stays unknown.
    Failed,
}

impl CommitProbe {
    /// While `Sent`: takes the probe's answers off the front of `buf` once all have arrived
    /// (through its ReadyForQuery) and records what they said. `Ok(false)`: not all here yet.
    pub fn take_answer(&mut self, buf: &mut BytesMut) -> Result<bool, ProtoError> {
        if *self != Self::Sent {
            return Ok(true);
        }
        // Find the end of the answer first: nothing is consumed until it is all here.
        let mut at = 0;
        let mut row = None;
        let mut failed = false;
        loop {
            let Some(h) = peek_header(&buf[at..], MAX_PROBE_MESSAGE)? else {
                return Ok(false);
            };
            if buf.len() < at + h.wire_len {
                return Ok(false);
            }
            let body = &buf[at + 5..at + h.wire_len];
            match h.tag {
                tag::DATA_ROW => row = Some(parse_row(body)),
                tag::ERROR_RESPONSE => failed = true,
                tag::READY_FOR_QUERY => {
                    buf.advance(at + h.wire_len);
                    *self = match row.flatten() {
                        Some((xid, lsn)) if !failed => Self::Answered { xid, lsn },
                        _ => Self::Failed,
                    };
                    return Ok(true);
                }
                _ => {} // RowDescription, CommandComplete, notices
            }
            at += h.wire_len;
        }
    }
}

/// The probe's row: (xid or NULL, LSN).
fn parse_row(body: &[u8]) -> Option<(Option<u64>, u64)> {
    let mut c =
        switchyard_proto::cursor::Cursor::new(tag::DATA_ROW, bytes::Bytes::copy_from_slice(body));
    if c.i16().ok()? != 2 {
        return None;
    }
    let mut value = || -> Option<Option<String>> {
        let len = c.i32().ok()?;
        if len < 0 {
            return Some(None);
        }
        let b = c.bytes(len as usize).ok()?;
        Some(Some(String::from_utf8_lossy(&b).into_owned()))
    };
    let xid = match value()? {
        None => None,
        Some(x) => Some(x.parse().ok()?),
    };
    let lsn = parse_lsn(&value()??)?;
    Some((xid, lsn))
}

/// PostgreSQL's `X/Y` LSN text as a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        msg(b'D', &b)
    }

    #[test]
    fn takes_the_answer_off_the_stream_once_it_is_all_there() {
        let mut answer = msg(b'T', b"whatever");
        answer.extend(row(&[Some("742"), Some("0/3000148")]));
        answer.extend(msg(b'C', b"SELECT 1\0"));
        answer.extend(msg(b'Z', b"T"));
        let commit = msg(b'C', b"COMMIT\0");
        let mut buf = BytesMut::new();
        let mut probe = CommitProbe::Sent;
        for (i, byte) in answer.iter().enumerate() {
            buf.put_u8(*byte);
            let done = probe.take_answer(&mut buf).unwrap();
            assert_eq!(done, i == answer.len() - 1, "at byte {i}");
        }
        buf.extend_from_slice(&commit);
        assert_eq!(
            probe,
            CommitProbe::Answered {
                xid: Some(742),
                lsn: 0x3000148
            }
        );
        assert_eq!(&buf[..], &commit[..], "only the probe's answer was taken");
    }

    #[test]
    fn no_xid_and_errors() {
        let mut buf = BytesMut::new();
        buf.extend(row(&[None, Some("1/0")]));
        buf.extend(msg(b'Z', b"T"));
        let mut probe = CommitProbe::Sent;
        assert!(probe.take_answer(&mut buf).unwrap());
        assert_eq!(
            probe,
            CommitProbe::Answered {
                xid: None,
                lsn: 1 << 32
            }
        );
        let mut buf = BytesMut::new();
        buf.extend(msg(b'E', b"SERROR\0\0"));
        buf.extend(msg(b'Z', b"E"));
        let mut probe = CommitProbe::Sent;
        assert!(probe.take_answer(&mut buf).unwrap());
        assert_eq!(probe, CommitProbe::Failed);
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
    }
}
