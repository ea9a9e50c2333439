//! A result the console sends: named, typed columns and text rows, encoded as RowDescription,
//! DataRow… and CommandComplete; with the small formatters the SHOW commands share.

use std::time::Duration;
use switchyard_proto::Frame;
use switchyard_proto::backend::{ColumnType, command_complete, data_row, row_description};

/// Column types, short.
pub const TEXT: ColumnType = ColumnType::Text;
pub const INT: ColumnType = ColumnType::Int8;

/// One value; `None` is NULL.
pub type Value = Option<String>;

/// A result table.
pub struct Table {
    columns: &'static [(&'static str, ColumnType)],
    rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(columns: &'static [(&'static str, ColumnType)]) -> Self {
        Self {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing values are NULL, extra ones dropped.
    pub fn row(&mut self, mut values: Vec<Value>) {
        values.resize(self.columns.len(), None);
        self.rows.push(values);
    }

    #[cfg(test)]
    pub fn rows(&self) -> &[Vec<Value>] {
        &self.rows
    }

    /// RowDescription, the rows, and CommandComplete `SHOW`.
    pub fn encode(&self, out: &mut Vec<Frame>) {
        out.push(row_description(self.columns.iter().copied()));
        for r in &self.rows {
            out.push(data_row(r.iter().map(Option::as_deref)));
        }
        out.push(command_complete("SHOW"));
    }
}

pub fn text(s: impl Into<String>) -> Value {
    Some(s.into())
}

pub fn int(n: impl Into<i128>) -> Value {
    Some(n.into().to_string())
}

/// `0` or `1`, as PgBouncer shows flags.
pub fn flag(b: bool) -> Value {
    int(u8::from(b))
}

/// A duration as PgBouncer splits it: whole seconds, and the microseconds beyond them.
pub fn seconds_and_us(d: Duration) -> (Value, Value) {
    (int(d.as_secs()), int(d.subsec_micros()))
}

/// `host` and `port` of `host:port` (the port NULL if there is none).
pub fn host_port(addr: &str) -> (Value, Value) {
    match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => (
            text(host.trim_start_matches('[').trim_end_matches(']')),
            text(port),
        ),
        _ => (text(addr), None),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time in seconds, as PgBouncer shows times.
pub fn timestamp(unix_s: u64) -> String {
    let days = unix_s / 86_400;
    let s = unix_s % 86_400;
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// Like [`timestamp`], with milliseconds.
pub fn timestamp_ms(unix_ms: u64) -> String {
    let t = timestamp(unix_ms / 1000);
    let (date_time, utc) = t.split_at(t.len() - 4);
    format!("{date_time}.{:03}{utc}", unix_ms % 1000)
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    switchyard_topology::counters::unix_ms()
}

/// The wall-clock time (Unix seconds) of a moment `age` ago.
pub fn unix_s_ago(age: Duration) -> u64 {
    now_ms().saturating_sub(age.as_millis() as u64) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(timestamp(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(
            timestamp_ms(1_700_000_000_123),
            "2023-11-14 22:13:20.123 UTC"
        );
        assert_eq!(
            host_port("127.0.0.1:5432"),
            (text("127.0.0.1"), text("5432"))
        );
        assert_eq!(host_port("[::1]:6432"), (text("::1"), text("6432")));
        assert_eq!(host_port("db"), (text("db"), None));
        let (s, us) = seconds_and_us(Duration::from_micros(2_000_017));
        assert_eq!((s, us), (int(2), int(17)));
    }

    #[test]
    fn rows_are_padded_to_the_columns() {
        static COLS: [(&str, ColumnType); 2] = [("a", TEXT), ("b", INT)];
        let mut t = Table::new(&COLS);
        t.row(vec![text("x")]);
        t.row(vec![text("y"), int(1), text("extra")]);
        assert_eq!(t.rows()[0], vec![text("x"), None]);
        assert_eq!(t.rows()[1].len(), 2);
        let mut out = Vec::new();
        t.encode(&mut out);
        assert_eq!(out.len(), 4);
    }
}
