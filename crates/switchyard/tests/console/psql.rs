//! Talking to the admin console through PostgreSQL 15's psql, as an operator does: one psql
//! run per call (`-c` per statement, one connection), its output parsed into rows by column
//! name, every run bounded.

use crate::common::STEP;
use crate::programs::{Ran, pg_program, run};
use std::collections::HashMap;

/// Field separator psql is told to use (never inside a value).
const SEP: &str = "\u{1f}";

/// One result row, by column name.
pub type Row = HashMap<String, String>;

/// psql's result: the column names and rows of each SHOW, in order.
pub struct Shown {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

/// Runs psql against `port` as `user` on database `db`, one `-c` per statement, all on one
/// connection, going on after errors (psql's default). `password` goes through PGPASSWORD.
pub async fn psql(port: u16, user: &str, password: &str, db: &str, statements: &[&str]) -> Ran {
    let mut cmd = pg_program("psql");
    cmd.args([
        "-X",
        "-A",
        "-P",
        "footer=off",
        "-v",
        "VERBOSITY=verbose",
        "-F",
        SEP,
    ])
    .args(["-h", "127.0.0.1", "-p"])
    .arg(port.to_string())
    .args(["-U", user, "-d", db]);
    if !password.is_empty() {
        cmd.env("PGPASSWORD", password);
    }
    for s in statements {
        cmd.arg("-c").arg(s);
    }
    run(cmd, None, STEP, &format!("psql {statements:?}")).await
}

/// Runs one console statement as `postgres`, which must succeed; its result.
pub async fn console(port: u16, statement: &str) -> Shown {
    let ran = psql(port, "postgres", "", "switchyard", &[statement])
        .await
        .expect_success(statement);
    assert!(
        ran.stderr.is_empty(),
        "{statement}: unexpected stderr:\n{}",
        ran.stderr
    );
    parse(&ran.stdout)
}

/// Runs a console command that returns no rows (PAUSE, FENCE, …), which must succeed.
pub async fn command(port: u16, statement: &str) {
    let ran = psql(port, "postgres", "", "switchyard", &[statement])
        .await
        .expect_success(statement);
    assert!(
        ran.stderr.is_empty(),
        "{statement}: unexpected stderr:\n{}",
        ran.stderr
    );
}

/// A console statement that must fail: psql's stderr (with the SQLSTATE, VERBOSITY=verbose).
pub async fn console_error(port: u16, statement: &str) -> String {
    let ran = psql(port, "postgres", "", "switchyard", &[statement]).await;
    assert!(
        ran.stderr.contains("ERROR:"),
        "{statement} must fail; stdout:\n{}\nstderr:\n{}",
        ran.stdout,
        ran.stderr
    );
    ran.stderr
}

/// Parses `-A` output of one SHOW: a header line, then rows.
pub fn parse(stdout: &str) -> Shown {
    let mut lines = stdout.lines();
    let columns: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(SEP)
        .map(str::to_owned)
        .collect();
    let rows = lines
        .map(|l| {
            columns
                .iter()
                .cloned()
                .zip(l.split(SEP).map(str::to_owned))
                .collect()
        })
        .collect();
    Shown { columns, rows }
}

impl Shown {
    /// Asserts the column names, in order (`expected`: separated by whitespace).
    pub fn assert_columns(&self, what: &str, expected: &str) {
        let expected: Vec<&str> = expected.split_whitespace().collect();
        assert_eq!(self.columns, expected, "{what}: columns");
    }

    /// The rows where every `(column, value)` matches.
    pub fn find(&self, matching: &[(&str, &str)]) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| {
                matching
                    .iter()
                    .all(|(k, v)| r.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The one row matching, or a failure that shows them all.
    pub fn one(&self, what: &str, matching: &[(&str, &str)]) -> &Row {
        let found = self.find(matching);
        assert_eq!(
            found.len(),
            1,
            "{what}: want one row with {matching:?} in {:#?}",
            self.rows
        );
        found[0]
    }
}

/// A column of a row as a number.
pub fn num(row: &Row, column: &str) -> i64 {
    row.get(column)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{column} is not a number in {row:?}"))
}
