//! TLS to a real PostgreSQL serving TLS with a test CA's certificate (issue 11): each mode of
//! `[server] tls` connects, checks or refuses as libpq's `sslmode` of the same name would, and
//! what PostgreSQL itself reports (`pg_stat_ssl`) confirms the connection is encrypted.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard_localpg::{PgOptions, PgServer, TestCerts};
use switchyard_server::{AllowedAuth, ConnectParams, ServerConn, ServerError, SocketOptions};
use switchyard_tls::{ServerTlsMode, TlsError, ToServer};

const LIMIT: Duration = Duration::from_secs(20);

/// A TLS server whose certificate names `names`, and its certificates.
async fn tls_server(names: &'static [&'static str]) -> (PgServer, Arc<TestCerts>) {
    tokio::task::spawn_blocking(move || {
        let certs = Arc::new(TestCerts::generate(names).expect("certificates"));
        let pg = PgServer::start_with(PgOptions {
            tls: Some(certs.clone()),
            ..PgOptions::default()
        })
        .expect("start PostgreSQL with TLS");
        (pg, certs)
    })
    .await
    .expect("fixture")
}

async fn plain_server() -> PgServer {
    tokio::task::spawn_blocking(|| PgServer::start().expect("start PostgreSQL"))
        .await
        .expect("fixture")
}

fn params(addr: String, mode: ServerTlsMode, ca: Option<&Path>) -> ConnectParams {
    ConnectParams {
        addr,
        server_name: None,
        user: "postgres".into(),
        database: "postgres".into(),
        credential: Default::default(),
        connect_timeout: Duration::from_secs(5),
        socket: SocketOptions::default(),
        allowed_auth: AllowedAuth::any(),
        tls: Arc::new(ToServer::new(mode, ca).expect("TLS settings")),
        probe_commits: false,
        probe_writes: false,
    }
}

async fn connect(p: &ConnectParams) -> Result<ServerConn, ServerError> {
    tokio::time::timeout(LIMIT, ServerConn::connect(p))
        .await
        .expect("connect within the limit")
}

/// What PostgreSQL says of this connection's encryption.
async fn server_sees_tls(conn: &mut ServerConn) -> bool {
    let row = tokio::time::timeout(
        LIMIT,
        conn.query_row("select ssl from pg_stat_ssl where pid = pg_backend_pid()"),
    )
    .await
    .expect("in time")
    .expect("query");
    row.first().cloned().flatten().as_deref() == Some("t")
}

fn tls_error(r: Result<ServerConn, ServerError>) -> String {
    match r {
        Err(e @ ServerError::Tls { .. }) => e.to_string(),
        Err(e) => panic!("not a TLS error: {e}"),
        Ok(_) => panic!("connected"),
    }
}

#[tokio::test]
async fn verify_full_checks_the_chain_and_the_name() {
    let (pg, certs) = tls_server(&["localhost", "127.0.0.1"]).await;
    let mut conn = connect(&params(
        pg.addr(),
        ServerTlsMode::VerifyFull,
        Some(&certs.ca),
    ))
    .await
    .expect("verify-full with the right CA and name");
    assert!(conn.stream.is_tls());
    assert!(server_sees_tls(&mut conn).await, "pg_stat_ssl says TLS");
    // Another CA: refused.
    let other = TestCerts::generate(&["localhost"]).expect("other CA");
    let e = tls_error(
        connect(&params(
            pg.addr(),
            ServerTlsMode::VerifyFull,
            Some(&other.ca),
        ))
        .await,
    );
    assert!(e.contains("certificate"), "{e}");
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_name_and_verify_ca_accepts_it() {
    let (pg, certs) = tls_server(&["db.example.internal"]).await;
    let e = tls_error(
        connect(&params(
            pg.addr(),
            ServerTlsMode::VerifyFull,
            Some(&certs.ca),
        ))
        .await,
    );
    assert!(
        e.contains("not valid for name") || e.contains("NotValidForName"),
        "{e}"
    );
    let mut conn = connect(&params(pg.addr(), ServerTlsMode::VerifyCa, Some(&certs.ca)))
        .await
        .expect("verify-ca ignores the name");
    assert!(server_sees_tls(&mut conn).await);
    // verify-ca still checks the chain.
    let other = TestCerts::generate(&["db.example.internal"]).expect("other CA");
    tls_error(connect(&params(pg.addr(), ServerTlsMode::VerifyCa, Some(&other.ca))).await);
}

#[tokio::test]
async fn prefer_and_require_encrypt_without_checking() {
    let (pg, _certs) = tls_server(&["db.example.internal"]).await;
    for mode in [ServerTlsMode::Prefer, ServerTlsMode::Require] {
        let mut conn = connect(&params(pg.addr(), mode, None))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(server_sees_tls(&mut conn).await, "{mode:?}");
    }
}

#[tokio::test]
async fn a_server_without_tls_is_plain_under_prefer_and_refused_under_require() {
    let pg = plain_server().await;
    let mut conn = connect(&params(pg.addr(), ServerTlsMode::Prefer, None))
        .await
        .expect("prefer falls back to plain");
    assert!(!conn.stream.is_tls());
    assert!(!server_sees_tls(&mut conn).await);
    let certs = TestCerts::generate(&["localhost"]).expect("CA");
    for (mode, ca) in [
        (ServerTlsMode::Require, None),
        (ServerTlsMode::VerifyFull, Some(certs.ca.as_path())),
    ] {
        let r = connect(&params(pg.addr(), mode, ca)).await;
        match r {
            Err(ServerError::Tls {
                source: TlsError::ServerRefused(_),
                ..
            }) => {}
            Err(e) => panic!("{mode:?}: {e}"),
            Ok(_) => panic!("{mode:?}: connected without TLS"),
        }
    }
}

#[tokio::test]
async fn disable_never_asks() {
    let (pg, _certs) = tls_server(&["localhost"]).await;
    let mut conn = connect(&params(pg.addr(), ServerTlsMode::Disable, None))
        .await
        .expect("plain");
    assert!(!conn.stream.is_tls());
    assert!(!server_sees_tls(&mut conn).await);
}
