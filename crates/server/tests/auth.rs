//! Server authentication cannot be downgraded (issue 16, item 6): a real PostgreSQL asking for
//! md5 is refused unless `require_auth` lists md5, and scripted servers — for what a real one
//! cannot be made to do — that ask for a cleartext password, skip authentication, or end a
//! SCRAM exchange with AuthenticationOk before proving they know the password are refused.

use bytes::{BufMut, BytesMut};
use std::time::Duration;
use switchyard_localpg::{PasswordKind, PgServer};
use switchyard_proto::scram::{ScramSecret, ServerExchange};
use switchyard_server::{AllowedAuth, ConnectParams, ServerConn, ServerError, SocketOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(20);

fn params(addr: String, user: &str, password: &str, allowed: AllowedAuth) -> ConnectParams {
    ConnectParams {
        addr,
        server_name: None,
        user: user.into(),
        database: "postgres".into(),
        credential: switchyard_server::Credential::Password(password.into()),
        connect_timeout: Duration::from_secs(5),
        socket: SocketOptions::default(),
        allowed_auth: allowed,
        tls: std::sync::Arc::new(switchyard_tls::ToServer::disabled()),
        probe_commits: false,
        probe_writes: false,
    }
}

async fn connect(p: &ConnectParams) -> Result<ServerConn, ServerError> {
    tokio::time::timeout(LIMIT, ServerConn::connect(p))
        .await
        .expect("connect within the limit")
}

#[tokio::test]
async fn md5_is_answered_only_when_allowed() {
    let pg = tokio::task::spawn_blocking(|| {
        let pg = PgServer::start().expect("start PostgreSQL");
        pg.create_user("md5_only", "pw-md5", PasswordKind::Md5)
            .expect("md5 user");
        pg
    })
    .await
    .expect("fixture");
    let refused = connect(&params(
        pg.addr(),
        "md5_only",
        "pw-md5",
        AllowedAuth::default(),
    ))
    .await;
    match refused {
        Err(ServerError::AuthNotAllowed { method: "md5" }) => {}
        other => panic!("want md5 refused by default, got {:?}", other.map(|_| ())),
    }
    let allowed = AllowedAuth {
        md5: true,
        ..AllowedAuth::default()
    };
    connect(&params(pg.addr(), "md5_only", "pw-md5", allowed))
        .await
        .expect("md5 answered once allowed");
}

/// What a scripted server does after the startup packet.
#[derive(Clone, Copy)]
enum Script {
    /// Asks for a cleartext password.
    Cleartext,
    /// AuthenticationOk at once.
    Trust,
    /// SCRAM up to the client's proof, then AuthenticationOk without SASLFinal.
    ScramWithoutFinal,
}

fn auth_message(code: i32, data: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(b'R');
    b.put_i32(8 + data.len() as i32);
    b.put_i32(code);
    b.put_slice(data);
    b.to_vec()
}

/// Reads one tagged message's body.
async fn read_message(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.expect("message header");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.expect("message body");
    body
}

/// Starts a one-connection scripted server; returns its address.
async fn scripted(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.expect("startup length");
        let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut startup).await.expect("startup");
        match script {
            Script::Cleartext => s.write_all(&auth_message(3, b"")).await,
            Script::Trust => s.write_all(&auth_message(0, b"")).await,
            Script::ScramWithoutFinal => {
                s.write_all(&auth_message(10, b"SCRAM-SHA-256\0\0"))
                    .await
                    .expect("SASL");
                let initial = read_message(&mut s).await;
                // Mechanism, NUL, length, client-first.
                let first = &initial[initial.iter().position(|&b| b == 0).expect("nul") + 5..];
                let secret = ScramSecret::from_password("any");
                let (_, server_first) = ServerExchange::start(secret, first).expect("first");
                s.write_all(&auth_message(11, server_first.as_bytes()))
                    .await
                    .expect("SASL continue");
                let _client_final = read_message(&mut s).await;
                s.write_all(&auth_message(0, b"")).await
            }
        }
        .expect("write");
        // Hold the connection until the client gives up on it.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    addr
}

#[tokio::test]
async fn a_server_cannot_downgrade_or_skip_authentication() {
    let cleartext = connect(&params(
        scripted(Script::Cleartext).await,
        "u",
        "secret",
        AllowedAuth::default(),
    ))
    .await;
    assert!(
        matches!(
            cleartext,
            Err(ServerError::AuthNotAllowed { method: "password" })
        ),
        "a cleartext request is refused by default: {:?}",
        cleartext.map(|_| ())
    );

    let no_auth = AllowedAuth {
        none: false,
        ..AllowedAuth::default()
    };
    let trust = connect(&params(
        scripted(Script::Trust).await,
        "u",
        "secret",
        no_auth,
    ))
    .await;
    assert!(
        matches!(trust, Err(ServerError::AuthNotAllowed { method: "none" })),
        "a login with no authentication is refused when none is not allowed: {:?}",
        trust.map(|_| ())
    );

    let unproven = connect(&params(
        scripted(Script::ScramWithoutFinal).await,
        "u",
        "secret",
        AllowedAuth::default(),
    ))
    .await;
    assert!(
        matches!(unproven, Err(ServerError::UnsupportedAuth(ref why)) if why.contains("proved")),
        "AuthenticationOk before the server's SCRAM signature is refused: {:?}",
        unproven.map(|_| ())
    );
}
