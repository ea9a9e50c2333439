//! Settings a client sends at startup are reported back as PostgreSQL spells them (issue 15):
//! `client_encoding=utf-8` is `UTF8`, `DateStyle=iso, mdy` is `ISO, MDY`, exactly what a
//! direct connection to the same server reports.

mod common;

use common::*;
use std::collections::BTreeMap;
use switchyard_config::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Logs in at `port` and returns the ParameterStatus values of the greeting.
async fn greeting(port: u16, settings: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut s = within(STEP, "connect", TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    s.write_all(&startup_packet("postgres", settings))
        .await
        .expect("startup");
    let mut reported = BTreeMap::new();
    within(STEP, "the greeting", async {
        loop {
            let mut head = [0u8; 5];
            s.read_exact(&mut head).await.expect("header");
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.expect("body");
            match head[0] {
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    let k = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    let v = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    reported.insert(k.into_owned(), v.into_owned());
                }
                b'E' => panic!("login refused: {}", String::from_utf8_lossy(&body)),
                b'Z' => return,
                _ => {}
            }
        }
    })
    .await;
    reported
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_come_back_in_the_servers_spelling() {
    let settings = [
        ("client_encoding", "utf-8"),
        ("DateStyle", "iso, mdy"),
        ("IntervalStyle", "ISO_8601"),
    ];
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = Harness::start(mode).await;
        let direct = greeting(h.pg.port(), &settings).await;
        let through = greeting(h.port(), &settings).await;
        assert_eq!(direct["client_encoding"], "UTF8", "{direct:?}");
        assert_eq!(direct["DateStyle"], "ISO, MDY", "{direct:?}");
        for (k, _) in settings {
            assert_eq!(through.get(k), direct.get(k), "{mode:?} {k}: {through:?}");
        }
    }
}

/// A login while there is no primary to ask (the server is down, the pool's greeting is
/// known): `client_encoding` is still reported in PostgreSQL's spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_encoding_is_spelled_right_with_no_server_to_ask() {
    let h = Harness::start(PoolMode::Transaction).await;
    // A first login makes the pool and learns the greeting.
    greeting(h.port(), &[]).await;
    h.pg.kill().expect("stop the only server");
    for (given, reported) in [("utf-8", "UTF8"), ("Unicode", "UTF8"), ("euc-jp", "EUC_JP")] {
        let through = greeting(h.port(), &[("client_encoding", given)]).await;
        assert_eq!(through["client_encoding"], reported, "{given}");
    }
}
