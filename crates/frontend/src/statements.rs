//! Named prepared statements in transaction pooling.
//!
//! A client's statement `foo` lives on the server under a name derived from its text and
//! parameter types (`sy_<hash>`), so identical statements from many clients share one server-side
//! statement, and a client's next transaction can land on any server connection: when a Bind or
//! Describe names a statement the connection lacks, the relay prepares it there first and hides
//! the extra ParseComplete from the client.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use switchyard_proto::ProtoError;
use switchyard_proto::frontend::Parse;

/// One statement as the server knows it.
#[derive(Debug, Clone)]
pub struct ServerStatement {
    pub server_name: Bytes,
    pub parse: Parse,
    /// What executing it may do to the transaction (commit it, roll it back).
    pub effect: crate::sql::Effect,
}

/// The client's named statements; most clients never name one, so the map is only allocated
/// for the first (an idle session carries a pointer, not an empty map).
#[derive(Debug, Default)]
pub struct Statements {
    #[expect(
        clippy::box_collection,
        reason = "an empty HashMap is 48 bytes in every idle session; the box is 8"
    )]
    by_name: Option<Box<HashMap<Bytes, ServerStatement>>>,
}

/// The server-side name for a statement: stable across clients and connections.
pub fn server_name(parse: &Parse) -> Bytes {
    let digest = Sha256::digest(&parse.tail);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    Bytes::from(format!("sy_{hex}"))
}

/// Most named statements one client may keep open in transaction pooling: each is remembered
/// (its text too) to be prepared on whichever server connection the client lands on. Generous
/// beside drivers' caches (pgjdbc keeps 256); a client that never closes its statements gets
/// 53400 instead of growing the proxy without bound.
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;

impl Statements {
    /// Records a client Parse and returns its server-side form.
    pub fn prepare(&mut self, parse: Parse) -> Result<ServerStatement, ProtoError> {
        let by_name = self.by_name.get_or_insert_default();
        if by_name.len() >= MAX_CLIENT_STATEMENTS && !by_name.contains_key(&parse.name) {
            return Err(ProtoError::TooManyStatements {
                max: MAX_CLIENT_STATEMENTS,
            });
        }
        let s = ServerStatement {
            server_name: server_name(&parse),
            effect: crate::sql::Effect::of(&parse.tail),
            parse: parse.clone(),
        };
        by_name.insert(parse.name, s.clone());
        Ok(s)
    }

    pub fn get(&self, name: &[u8]) -> Option<&ServerStatement> {
        self.by_name.as_ref()?.get(name)
    }

    /// Every named statement, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &ServerStatement> {
        self.by_name.iter().flat_map(|m| m.values())
    }

    pub fn close(&mut self, name: &[u8]) -> Option<ServerStatement> {
        self.by_name.as_mut()?.remove(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::Frame;

    fn parse(name: &str, sql: &str) -> Parse {
        let body = format!("{name}\0{sql}\0\0\0");
        Parse::decode(&Frame::new(b'P', Bytes::from(body))).unwrap()
    }

    #[test]
    fn same_text_shares_a_server_name() {
        let mut a = Statements::default();
        let s1 = a.prepare(parse("foo", "select 1")).unwrap();
        let s2 = a.prepare(parse("bar", "select 1")).unwrap();
        let s3 = a.prepare(parse("baz", "select 2")).unwrap();
        assert_eq!(s1.server_name, s2.server_name);
        assert_ne!(s1.server_name, s3.server_name);
        assert!(a.get(b"foo").is_some());
        assert!(a.close(b"foo").is_some() && a.get(b"foo").is_none());
    }

    #[test]
    fn a_client_keeps_a_bounded_number_open() {
        let mut a = Statements::default();
        for i in 0..MAX_CLIENT_STATEMENTS {
            a.prepare(parse(&format!("s{i}"), "select 1")).unwrap();
        }
        assert_eq!(
            a.prepare(parse("one_more", "select 1")).err(),
            Some(ProtoError::TooManyStatements {
                max: MAX_CLIENT_STATEMENTS
            })
        );
        assert!(
            a.prepare(parse("s0", "select 2")).is_ok(),
            "replacing one is fine"
        );
        a.close(b"s1");
        assert!(
            a.prepare(parse("one_more", "select 1")).is_ok(),
            "after a close"
        );
    }
}
