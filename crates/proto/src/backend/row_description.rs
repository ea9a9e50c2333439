//! RowDescription ('T'): the columns of a result Switchyard builds itself (the admin console).
//! Every column is sent in text format and belongs to no table.

use super::tag;
use crate::Frame;
use bytes::{BufMut, BytesMut};

/// The PostgreSQL type a column is described as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `text` (OID 25).
    Text,
    /// `bigint` (OID 20): clients align and parse it as a number.
    Int8,
}

impl ColumnType {
    pub fn oid(self) -> i32 {
        match self {
            Self::Text => 25,
            Self::Int8 => 20,
        }
    }

    fn size(self) -> i16 {
        match self {
            Self::Text => -1,
            Self::Int8 => 8,
        }
    }
}

/// Describes columns `(name, type)`, all in text format.
pub fn row_description<'a>(columns: impl ExactSizeIterator<Item = (&'a str, ColumnType)>) -> Frame {
    let mut b = BytesMut::new();
    b.put_i16(i16::try_from(columns.len()).unwrap_or(i16::MAX));
    for (name, ty) in columns.take(i16::MAX as usize) {
        b.put_slice(name.replace('\0', "").as_bytes());
        b.put_u8(0);
        b.put_i32(0); // table OID
        b.put_i16(0); // column number
        b.put_i32(ty.oid());
        b.put_i16(ty.size());
        b.put_i32(-1); // type modifier
        b.put_i16(0); // text format
    }
    Frame::new(tag::ROW_DESCRIPTION, b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Cursor;

    #[test]
    fn describes_each_column() {
        let f = row_description([("a", ColumnType::Text), ("n", ColumnType::Int8)].into_iter());
        assert_eq!(f.tag, b'T');
        let mut c = Cursor::new(f.tag, f.body.clone());
        assert_eq!(c.i16().unwrap(), 2);
        assert_eq!(c.cstr().unwrap(), "a");
        c.bytes(6).unwrap();
        assert_eq!(c.i32().unwrap(), 25);
        assert_eq!(c.i16().unwrap(), -1);
        c.bytes(6).unwrap();
        assert_eq!(c.cstr().unwrap(), "n");
        c.bytes(6).unwrap();
        assert_eq!(c.i32().unwrap(), 20);
        assert_eq!(c.i16().unwrap(), 8);
        c.bytes(6).unwrap();
        assert_eq!(c.remaining(), 0);
    }
}
