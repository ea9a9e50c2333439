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
use switchyard_proto::frontend::Parse;

/// One statement as the server knows it.
#[derive(Debug, Clone)]
pub struct ServerStatement {
    pub server_name: Bytes,
    pub parse: Parse,
    /// Executing it may commit a transaction (COMMIT, END, PREPARE TRANSACTION).
    pub commits: bool,
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

impl Statements {
    /// Records a client Parse and returns its server-side form.
    pub fn prepare(&mut self, parse: Parse) -> ServerStatement {
        let s = ServerStatement {
            server_name: server_name(&parse),
            commits: crate::sql::may_commit(&parse.tail),
            parse: parse.clone(),
        };
        self.by_name
            .get_or_insert_default()
            .insert(parse.name, s.clone());
        s
    }

    pub fn get(&self, name: &[u8]) -> Option<&ServerStatement> {
        self.by_name.as_ref()?.get(name)
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
        let s1 = a.prepare(parse("foo", "select 1"));
        let s2 = a.prepare(parse("bar", "select 1"));
        let s3 = a.prepare(parse("baz", "select 2"));
        assert_eq!(s1.server_name, s2.server_name);
        assert_ne!(s1.server_name, s3.server_name);
        assert!(a.get(b"foo").is_some());
        assert!(a.close(b"foo").is_some() && a.get(b"foo").is_none());
    }
}
