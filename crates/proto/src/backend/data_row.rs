//! DataRow ('D'): one row of a result Switchyard builds itself, every value in text format.

use super::tag;
use crate::Frame;
use bytes::{BufMut, BytesMut};

/// One row; `None` is SQL NULL.
pub fn data_row<'a>(values: impl ExactSizeIterator<Item = Option<&'a str>>) -> Frame {
    let mut b = BytesMut::new();
    b.put_i16(i16::try_from(values.len()).unwrap_or(i16::MAX));
    for v in values.take(i16::MAX as usize) {
        match v {
            Some(v) => {
                b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                b.put_slice(&v.as_bytes()[..v.len().min(i32::MAX as usize)]);
            }
            None => b.put_i32(-1),
        }
    }
    Frame::new(tag::DATA_ROW, b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Cursor;

    #[test]
    fn values_and_nulls() {
        let f = data_row([Some("ab"), None, Some("")].into_iter());
        let mut c = Cursor::new(f.tag, f.body.clone());
        assert_eq!(c.i16().unwrap(), 3);
        assert_eq!(c.i32().unwrap(), 2);
        assert_eq!(&c.bytes(2).unwrap()[..], b"ab");
        assert_eq!(c.i32().unwrap(), -1);
        assert_eq!(c.i32().unwrap(), 0);
        assert_eq!(c.remaining(), 0);
    }
}
