//! Client authentication through the proxy against a real PostgreSQL: SCRAM, md5 and trust users
//! with right and wrong passwords, unknown users, SCRAM verifiers in the config, and logins the
//! server refuses (wrong server password, unknown database, bad startup settings), which must
//! fail with the server's error instead of hanging.

mod common;

use common::*;
use std::time::Duration;
use switchyard::serve;
use switchyard_config::{AuthMethod, PoolMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A login error as the client sees it: (severity, SQLSTATE, message).
fn db_error(e: &tokio_postgres::Error) -> (String, String, String) {
    match e.as_db_error() {
        Some(d) => (
            d.severity().to_string(),
            d.code().code().to_string(),
            d.message().to_string(),
        ),
        None => panic!("expected an ErrorResponse from the proxy, got {e:?}"),
    }
}

/// A conninfo for the proxy with every value quoted. (`Harness::conninfo` writes `password=`
/// unquoted, so an empty password swallows the next key: `password= dbname=app` sets the
/// password to "dbname=app" and leaves the database at its default.)
fn conninfo(h: &Harness, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user='{user}' password='{password}' dbname='{db}'",
        h.port()
    )
}

async fn login(
    h: &Harness,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect(&conninfo(h, user, password, db)).await
}

/// Logs in as `user` to `app`; `current_user` and `current_database()` must match.
async fn login_works(h: &Harness, user: &str, password: &str, expect_user: &str) {
    let c = login(h, user, password, "app")
        .await
        .unwrap_or_else(|e| panic!("{user} must log in: {e:?}"));
    let row = within(
        STEP,
        "current_user",
        c.query_one("select current_user::text, current_database()::text", &[]),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, String>(0), expect_user);
    assert_eq!(row.get::<_, String>(1), "app");
}

/// Logs in as `user` with `password`, which must fail with FATAL 28P01 naming `user`.
async fn login_refused(h: &Harness, user: &str, password: &str) {
    let err = match login(h, user, password, "app").await {
        Ok(_) => panic!("{user} with password {password:?} must be refused"),
        Err(e) => e,
    };
    let (severity, code, message) = db_error(&err);
    assert_eq!(code, "28P01", "{user}: {message}");
    assert_eq!(severity, "FATAL", "{user}: {message}");
    let wording = format!("password authentication failed for user \"{user}\"");
    assert!(
        message.contains(&wording),
        "{user}: message {message:?} must contain {wording:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_methods_accept_right_and_refuse_wrong_passwords() {
    let h = Harness::start(PoolMode::Transaction).await;
    login_works(&h, SCRAM_USER, SCRAM_PASSWORD, SCRAM_USER).await;
    login_refused(&h, SCRAM_USER, "not-the-password").await;
    login_works(&h, MD5_USER, MD5_PASSWORD, MD5_USER).await;
    login_refused(&h, MD5_USER, "not-the-password").await;
    login_works(&h, "postgres", "", "postgres").await;
    // A right password after wrong ones still works: a failure leaves nothing behind.
    login_works(&h, SCRAM_USER, SCRAM_PASSWORD, SCRAM_USER).await;
}

/// An unknown user gets the same error, in the same words, as a known user with a wrong password:
/// nothing tells the client the user does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_refused_like_a_wrong_password() {
    let h = Harness::start(PoolMode::Transaction).await;
    login_refused(&h, "ghost_user", "whatever").await;
    // The proxy keeps serving after the refusal.
    login_works(&h, "postgres", "", "postgres").await;
}

/// `scram_user` configured with the verifier PostgreSQL stores (not the cleartext password), and
/// `server_password` for the server side: clients log in with the real password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifier_in_config_authenticates_clients() {
    let pg = start_pg();
    let verifier = pg
        .psql("select rolpassword from pg_authid where rolname = 'scram_user'")
        .expect("read the stored verifier");
    assert!(
        verifier.starts_with("SCRAM-SHA-256$"),
        "PostgreSQL stores scram_user as a SCRAM verifier: {verifier:?}"
    );
    let mut config = config_for(&pg, PoolMode::Transaction);
    let user = config
        .users
        .iter_mut()
        .find(|u| u.name == SCRAM_USER)
        .expect("scram_user configured");
    assert_eq!(user.auth, AuthMethod::ScramSha256);
    user.password = Some(verifier);
    user.server_password = Some(SCRAM_PASSWORD.into());
    let proxy = within(STEP, "proxy start", serve::start(config))
        .await
        .expect("proxy starts with a verifier in the config");
    let h = Harness { pg, proxy };
    login_works(&h, SCRAM_USER, SCRAM_PASSWORD, SCRAM_USER).await;
    login_refused(&h, SCRAM_USER, "not-the-password").await;
}

/// The proxy's own credentials for the server are wrong: the client's login fails promptly with
/// the server's 28P01, as a FATAL, instead of waiting for a server connection that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_password_fails_login_with_the_server_error() {
    let h = Harness::start_with(PoolMode::Transaction, |c| {
        let u = c
            .users
            .iter_mut()
            .find(|u| u.name == MD5_USER)
            .expect("md5_user configured");
        u.server_password = Some("wrong-server-pw".into());
    })
    .await;
    // Well under query_wait_timeout (120 s by default) and the login timeout (15 s).
    let err = within(
        Duration::from_secs(8),
        "login with a wrong server password",
        login(&h, MD5_USER, MD5_PASSWORD, "app"),
    )
    .await
    .expect_err("login must fail: the server refuses the proxy's password");
    let (severity, code, message) = db_error(&err);
    assert_eq!(code, "28P01", "{message}");
    assert_eq!(severity, "FATAL", "{message}");
    assert!(
        message.contains("password authentication failed for user \"md5_user\""),
        "the server's message is passed along: {message:?}"
    );
    // A second attempt fails the same way (no pool left stuck by the first).
    let err = within(
        Duration::from_secs(8),
        "second login with a wrong server password",
        login(&h, MD5_USER, MD5_PASSWORD, "app"),
    )
    .await
    .expect_err("second login must fail too");
    assert_eq!(sqlstate(&err), "28P01");
    login_works(&h, SCRAM_USER, SCRAM_PASSWORD, SCRAM_USER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_fails_login_with_3d000() {
    let h = Harness::start(PoolMode::Transaction).await;
    for (user, password) in [("postgres", ""), (SCRAM_USER, SCRAM_PASSWORD)] {
        let err = within(
            Duration::from_secs(8),
            "login to a missing database",
            login(&h, user, password, "no_such_db"),
        )
        .await
        .expect_err("login to a missing database must fail");
        let (severity, code, message) = db_error(&err);
        assert_eq!(code, "3D000", "{user}: {message}");
        assert_eq!(severity, "FATAL", "{user}: {message}");
        assert!(message.contains("no_such_db"), "{message:?}");
    }
    login_works(&h, "postgres", "", "postgres").await;
}

/// `options=-c statement_timeout=bad` at startup: PostgreSQL refuses such a login with 22023;
/// through the proxy the login must fail the same way, not succeed with the option ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_options_fail_login() {
    let h = Harness::start(PoolMode::Transaction).await;
    // What PostgreSQL itself says, for reference.
    let direct = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app options='-c statement_timeout=bad'",
        h.pg.port()
    );
    let direct_err = connect(&direct).await.expect_err("PostgreSQL refuses");
    assert_eq!(sqlstate(&direct_err), "22023");

    let info = format!(
        "{} options='-c statement_timeout=bad'",
        conninfo(&h, "postgres", "", "app")
    );
    let result = within(
        Duration::from_secs(10),
        "login with bad options",
        connect(&info),
    )
    .await;
    let err = match result {
        Err(e) => e,
        Ok(c) => {
            let st: String = within(STEP, "show", c.query_one("show statement_timeout", &[]))
                .await
                .map(|r| r.get(0))
                .unwrap_or_else(|e| format!("<{e}>"));
            panic!(
                "login with options='-c statement_timeout=bad' succeeded through the proxy \
                 (statement_timeout is {st:?}): the startup options were ignored"
            );
        }
    };
    let (_, code, message) = db_error(&err);
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("statement_timeout"), "{message:?}");
}

/// A valid `options=-c ...` at startup is applied to the client's session, as on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_are_applied() {
    let h = Harness::start(PoolMode::Transaction).await;
    let info = format!(
        "{} options='-c statement_timeout=12345'",
        conninfo(&h, "postgres", "", "app")
    );
    let c = connect(&info).await.expect("valid options log in");
    let st: String = within(STEP, "show", c.query_one("show statement_timeout", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        st, "12345ms",
        "options='-c statement_timeout=12345' is applied"
    );
}

/// An invalid TimeZone in the startup packet: the login fails with the server's error (22023).
/// tokio-postgres cannot send arbitrary startup parameters, so this speaks the protocol itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_timezone_at_startup_fails_login() {
    let h = Harness::start(PoolMode::Transaction).await;
    let params = [
        ("user", "postgres"),
        ("database", "app"),
        ("TimeZone", "Not/AZone"),
    ];
    // PostgreSQL itself refuses it.
    let direct = within(
        STEP,
        "raw login to PostgreSQL",
        raw_login(&h.pg.addr(), &params),
    )
    .await;
    match direct {
        RawLogin::Refused(f) => assert_eq!(f.code, "22023", "{f:?}"),
        other => panic!("PostgreSQL should refuse an invalid TimeZone: {other:?}"),
    }
    let through = within(
        Duration::from_secs(10),
        "raw login through the proxy",
        raw_login(&h.addr().to_string(), &params),
    )
    .await;
    match through {
        RawLogin::Refused(f) => {
            assert_eq!(f.code, "22023", "{f:?}");
            assert_eq!(f.severity, "FATAL", "{f:?}");
            assert!(f.message.contains("TimeZone"), "{f:?}");
        }
        other => panic!("the proxy must refuse an invalid TimeZone: {other:?}"),
    }
    // A valid one is accepted and reported.
    let ok = within(
        STEP,
        "raw login with a valid TimeZone",
        raw_login(
            &h.addr().to_string(),
            &[
                ("user", "postgres"),
                ("database", "app"),
                ("TimeZone", "Asia/Tokyo"),
            ],
        ),
    )
    .await;
    match ok {
        RawLogin::Ready(params) => assert!(
            params
                .iter()
                .any(|(k, v)| k == "TimeZone" && v == "Asia/Tokyo"),
            "{params:?}"
        ),
        other => panic!("a valid TimeZone logs in: {other:?}"),
    }
}

#[derive(Debug)]
struct RawError {
    severity: String,
    code: String,
    message: String,
}

#[derive(Debug)]
enum RawLogin {
    /// ReadyForQuery arrived; the ParameterStatus pairs seen before it.
    Ready(Vec<(String, String)>),
    Refused(RawError),
    /// The connection closed or something unexpected came (shown in failure messages).
    Other(#[allow(dead_code)] String),
}

/// Sends a protocol-3.0 startup packet with `params` (trust auth only) and reads until
/// ReadyForQuery, an ErrorResponse or the end of the connection.
async fn raw_login(addr: &str, params: &[(&str, &str)]) -> RawLogin {
    let mut s = TcpStream::connect(addr).await.expect("tcp connect");
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    s.write_all(&packet).await.expect("send startup");
    let mut reported = Vec::new();
    loop {
        let mut header = [0u8; 5];
        if let Err(e) = s.read_exact(&mut header).await {
            return RawLogin::Other(format!("connection ended: {e}"));
        }
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let mut msg = vec![0u8; (len as usize).saturating_sub(4)];
        if let Err(e) = s.read_exact(&mut msg).await {
            return RawLogin::Other(format!("connection ended mid-message: {e}"));
        }
        match header[0] {
            b'R' if msg.get(..4) == Some(&[0, 0, 0, 0]) => {}
            b'R' => return RawLogin::Other(format!("asked for authentication {msg:?}")),
            b'S' => {
                let mut parts = msg.split(|b| *b == 0).map(String::from_utf8_lossy);
                let k = parts.next().unwrap_or_default().into_owned();
                let v = parts.next().unwrap_or_default().into_owned();
                reported.push((k, v));
            }
            b'K' | b'N' => {}
            b'Z' => return RawLogin::Ready(reported),
            b'E' => return RawLogin::Refused(parse_error(&msg)),
            t => return RawLogin::Other(format!("unexpected message {:?}", t as char)),
        }
    }
}

fn parse_error(body: &[u8]) -> RawError {
    let mut e = RawError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
    };
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'V' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            _ => {}
        }
    }
    e
}
