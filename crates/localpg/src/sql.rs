//! Running SQL on a fixture server through the real `psql` client, and the role and database
//! helpers built on it.

use std::process::Command;
use std::time::Duration;

use crate::cmd;
use crate::server::HOST;
use crate::{FixtureError, PgServer};

/// Overall deadline for one `psql` run without an explicit connect timeout.
const PSQL_TIMEOUT: Duration = Duration::from_secs(120);

/// How a role's password is stored (`password_encryption` when it is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordKind {
    /// `scram-sha-256`: the verifier starts with `SCRAM-SHA-256$`.
    Scram,
    /// `md5`: the hash starts with `md5`.
    Md5,
}

impl PasswordKind {
    /// The `password_encryption` value for this kind.
    pub fn encryption(self) -> &'static str {
        match self {
            PasswordKind::Scram => "scram-sha-256",
            PasswordKind::Md5 => "md5",
        }
    }
}

/// Who connects, where, and how long a connection attempt may take.
pub(crate) struct Login<'a> {
    user: &'a str,
    password: Option<&'a str>,
    db: &'a str,
    connect_timeout: Option<Duration>,
}

impl<'a> Login<'a> {
    /// `postgres` (trusted, no password) in database `db`.
    pub(crate) fn superuser(db: &'a str, connect_timeout: Option<Duration>) -> Login<'a> {
        Login {
            user: "postgres",
            password: None,
            db,
            connect_timeout,
        }
    }
}

impl PgServer {
    /// Runs `sql` as `postgres` in database `postgres` over TCP; returns trimmed stdout
    /// (unaligned, tuples only: `select 1` gives `"1"`). Errors carry psql's stderr.
    pub fn psql(&self, sql: &str) -> Result<String, FixtureError> {
        self.psql_db("postgres", sql)
    }

    /// Like [`PgServer::psql`], in database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String, FixtureError> {
        self.run_psql(&Login::superuser(db, None), sql)
    }

    /// Like [`PgServer::psql`], giving up connecting after `connect_timeout` (`PGCONNECT_TIMEOUT`,
    /// whole seconds, at least 2 as libpq enforces). Use it against frozen or unreachable servers.
    pub fn psql_with_timeout(
        &self,
        sql: &str,
        connect_timeout: Duration,
    ) -> Result<String, FixtureError> {
        self.run_psql(&Login::superuser("postgres", Some(connect_timeout)), sql)
    }

    /// Runs `sql` as `user` with `password` (passed through `PGPASSWORD`) in database `db`, so
    /// the server's md5/SCRAM authentication is exercised.
    pub fn psql_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> Result<String, FixtureError> {
        let login = Login {
            user,
            password: Some(password),
            db,
            connect_timeout: None,
        };
        self.run_psql(&login, sql)
    }

    /// Creates a login role with `password`, stored as `kind` says.
    pub fn create_user(
        &self,
        name: &str,
        password: &str,
        kind: PasswordKind,
    ) -> Result<(), FixtureError> {
        let sql = format!(
            "SET password_encryption = '{}'; CREATE ROLE {} LOGIN PASSWORD {}",
            kind.encryption(),
            quote_ident(name),
            quote_literal(password)
        );
        self.psql(&sql).map(drop)
    }

    /// Creates database `name` owned by role `owner`.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<(), FixtureError> {
        let sql = format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(name),
            quote_ident(owner)
        );
        self.psql(&sql).map(drop)
    }

    fn run_psql(&self, login: &Login<'_>, sql: &str) -> Result<String, FixtureError> {
        psql_on(&self.host(), self.port(), login, sql)
    }
}

/// Runs `sql` with `psql` against `127.0.0.1:port` as `login` says; returns trimmed stdout
/// (unaligned, tuples only). Errors carry psql's stderr.
pub(crate) fn psql_at(port: u16, login: &Login<'_>, sql: &str) -> Result<String, FixtureError> {
    psql_on(HOST, port, login, sql)
}

/// [`psql_at`] against `host:port`.
pub(crate) fn psql_on(
    host: &str,
    port: u16,
    login: &Login<'_>,
    sql: &str,
) -> Result<String, FixtureError> {
    let port = port.to_string();
    let mut psql = Command::new(crate::pg_bin_dir().join("psql"));
    psql.args(["-X", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", host, "-p", &port, "-U", login.user, "-d", login.db])
        .arg("-c")
        .arg(sql)
        .env_remove("PGPASSWORD")
        .env_remove("PGCONNECT_TIMEOUT");
    if let Some(password) = login.password {
        psql.env("PGPASSWORD", password);
    }
    let mut deadline = PSQL_TIMEOUT;
    if let Some(timeout) = login.connect_timeout {
        let secs = timeout.as_secs().max(2);
        psql.env("PGCONNECT_TIMEOUT", secs.to_string());
        deadline = Duration::from_secs(secs + 30);
    }
    // The label leaves out the SQL, which may hold passwords.
    let label = format!("psql -h {host} -p {port} -U {} -d {}", login.user, login.db);
    let out = cmd::run_labelled(psql, &label, deadline)?;
    Ok(out.stdout.trim().to_owned())
}

/// Quotes an SQL identifier: `a"b` becomes `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard-conforming strings): `it's` becomes `'it''s'`.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"back\slash"), r"'back\slash'");
    }
}
