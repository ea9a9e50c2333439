//! LISTEN in transaction mode, against real PostgreSQL: a client's LISTEN is held by its hub's
//! own server connection, so it hears every NOTIFY whichever pooled connection sent it, and no
//! other client hears it; UNLISTEN stops it; a LISTEN that cannot be followed is refused or
//! warned about, never left on a pooled connection; after a failover the hub listens on the
//! new primary and the listener is told, with a NOTICE, for how long nobody listened.

mod common;

use common::cluster::{Cluster, ClusterOptions, Fault};
use common::*;
use std::time::Duration;
use switchyard_config::PoolMode;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// How long a first step after a fault may take: detection, promotion, the gate.
const AFTER_FAULT: Duration = Duration::from_secs(30);

/// What a client's connection task heard besides answers.
#[derive(Debug)]
enum Heard {
    Notification {
        channel: String,
        payload: String,
    },
    Notice(String),
    /// Read through `Debug` in failure messages.
    #[allow(dead_code)]
    Ended(String),
}

/// A client whose notifications and notices come on the channel.
async fn listener(conninfo: &str) -> (Client, mpsc::UnboundedReceiver<Heard>) {
    let (client, mut connection) = within(STEP, "login", tokio_postgres::connect(conninfo, NoTls))
        .await
        .expect("login");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let heard = match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => Heard::Notification {
                    channel: n.channel().to_string(),
                    payload: n.payload().to_string(),
                },
                Some(Ok(AsyncMessage::Notice(n))) => Heard::Notice(n.message().to_string()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Heard::Ended(e.to_string()),
                None => return,
            };
            let ended = matches!(heard, Heard::Ended(_));
            let _ = tx.send(heard);
            if ended {
                return;
            }
        }
    });
    (client, rx)
}

async fn next_heard(rx: &mut mpsc::UnboundedReceiver<Heard>, limit: Duration) -> Heard {
    within(limit, "something heard", rx.recv())
        .await
        .expect("the connection task is gone")
}

async fn expect_notification(
    rx: &mut mpsc::UnboundedReceiver<Heard>,
    channel: &str,
    payload: &str,
) {
    match next_heard(rx, STEP).await {
        Heard::Notification {
            channel: c,
            payload: p,
        } => {
            assert_eq!((c.as_str(), p.as_str()), (channel, payload));
        }
        other => panic!("expected a notification on {channel}, got {other:?}"),
    }
}

async fn run(client: &Client, sql: &str) {
    within(STEP, sql, client.batch_execute(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// One pooled server connection: every other client's transaction runs on the connection a
/// LISTEN would have been left on.
fn one_connection(c: &mut switchyard_config::Config) {
    c.pool.size = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_hears_every_notify_and_nobody_else_does() {
    let h = Harness::start_with(PoolMode::Transaction, one_connection).await;
    let info = h.conninfo("postgres", "", "app");
    let (a, mut heard_a) = listener(&info).await;
    let (b, mut heard_b) = listener(&info).await;
    run(&a, "LISTEN jobs; LISTEN \"Other\"").await;
    run(&b, "NOTIFY jobs, 'one'").await;
    expect_notification(&mut heard_a, "jobs", "one").await;
    // b's transactions run on the one pooled connection: had the LISTEN been left there, the
    // notification would reach b before this query's answer.
    run(&b, "SELECT 1").await;
    assert!(heard_b.try_recv().is_err(), "b heard a's notification");
    // UNLISTEN stops it: the notification on "Other", sent after, comes first.
    run(&a, "UNLISTEN jobs").await;
    run(&b, "NOTIFY jobs, 'two'").await;
    run(&b, "NOTIFY \"Other\", 'three'").await;
    expect_notification(&mut heard_a, "Other", "three").await;
    // Requests that only LISTEN take no pooled connection; the hub holds one of its own.
    let pools = h.proxy.proxy.pools.all();
    assert_eq!(
        pools.iter().map(|(_, p)| p.stats().active).sum::<usize>(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_protocol_listen_is_followed() {
    // tokio-postgres prepares by name; a raw unnamed Parse/Bind/Describe/Execute/Sync is what
    // psycopg, pgjdbc and node-postgres send.
    let h = Harness::start(PoolMode::Transaction).await;
    let info = h.conninfo("postgres", "", "app");
    let (notifier, _) = listener(&info).await;
    use tokio::io::AsyncWriteExt;
    let mut raw = raw_client(&h).await;
    let mut got = Vec::new();
    let flight = [
        msg(b'P', b"\0LISTEN jobs\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'D', b"P\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    raw.write_all(&flight).await.unwrap();
    got.clear();
    read_until(&mut raw, &mut got, b"Z\0\0\0\x05I").await;
    let tags: Vec<u8> = frames(&got).iter().map(|f| f.0).collect();
    assert_eq!(tags, b"12nCZ", "{got:?}");
    run(&notifier, "NOTIFY jobs, 'raw'").await;
    got.clear();
    read_until(&mut raw, &mut got, b"raw\0").await;
    let (tag, body) = frames(&got).into_iter().next().unwrap();
    assert_eq!(tag, b'A');
    assert!(body.ends_with(b"jobs\0raw\0"), "{body:?}");
}

/// One protocol message: tag, length, body.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    switchyard_proto::Frame::new(tag, bytes::Bytes::copy_from_slice(body))
        .to_bytes()
        .to_vec()
}

/// Reads from `raw` into `got` until `end` is in it.
async fn read_until(raw: &mut tokio::net::TcpStream, got: &mut Vec<u8>, end: &[u8]) {
    use tokio::io::AsyncReadExt;
    within(STEP, "the answer", async {
        while !got.windows(end.len()).any(|w| w == end) {
            let mut buf = [0u8; 4096];
            let n = raw.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed; got {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
}

/// The messages in `bytes` (tag and body).
fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((bytes[at], bytes[at + 5..at + 1 + len].to_vec()));
        at += 1 + len;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_that_cannot_be_followed_is_refused_or_warned_about() {
    let h = Harness::start_with(PoolMode::Transaction, one_connection).await;
    let info = h.conninfo("postgres", "", "app");
    let (a, mut heard_a) = listener(&info).await;
    let (b, mut heard_b) = listener(&info).await;
    let e = within(STEP, "mixed", a.batch_execute("LISTEN jobs; SELECT 1"))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    // Inside a transaction it reaches the server; that connection is closed, not pooled, and
    // the client is warned.
    run(&a, "BEGIN; LISTEN jobs; COMMIT").await;
    match next_heard(&mut heard_a, STEP).await {
        Heard::Notice(m) => assert!(m.contains("not followed"), "{m}"),
        other => panic!("expected the warning, got {other:?}"),
    }
    run(&b, "NOTIFY jobs, 'leak'").await;
    run(&b, "SELECT 1").await;
    run(&a, "SELECT 1").await;
    assert!(heard_b.try_recv().is_err(), "b heard a notification");
    assert!(
        heard_a.try_recv().is_err(),
        "a heard from a closed connection"
    );
}

async fn listens_across(fault: Fault) {
    let c = Cluster::start(ClusterOptions::default()).await;
    let info = c.conninfo("");
    let (a, mut heard) = listener(&info).await;
    run(&a, "LISTEN jobs").await;
    Cluster::psql_on(&c.primary, "app", "NOTIFY jobs, 'before'").await;
    expect_notification(&mut heard, "jobs", "before").await;
    let _fault = c.inject(fault).await;
    c.promote_standby().await;
    // The client sends nothing: the hub listens again by itself and tells it of the gap.
    match next_heard(&mut heard, AFTER_FAULT).await {
        Heard::Notice(m) => {
            assert!(m.contains("nobody listened on jobs"), "{m}");
        }
        other => panic!("expected the gap notice, got {other:?}"),
    }
    Cluster::psql_on(&c.standby, "app", "NOTIFY jobs, 'after'").await;
    expect_notification(&mut heard, "jobs", "after").await;
    // And the client's own requests go on.
    run(&a, "SELECT 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_hears_on_after_a_crash() {
    listens_across(Fault::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_hears_on_after_a_freeze() {
    listens_across(Fault::Freeze).await;
}

/// A raw client logged in through the proxy, its greeting read.
async fn raw_client(h: &Harness) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    raw.write_all(&startup_packet("postgres", &[]))
        .await
        .unwrap();
    read_until(&mut raw, &mut Vec::new(), b"Z\0\0\0\x05I").await;
    raw
}

/// Notifications waiting while the client's next request arrives in pieces reach it, and the
/// request is answered once whole (the idle wait once spun on the waiting mail instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waiting_while_a_request_arrives_in_pieces_is_delivered() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(PoolMode::Transaction).await;
    let (notifier, _) = listener(&h.conninfo("postgres", "", "app")).await;
    let mut raw = raw_client(&h).await;
    raw.write_all(&query_message("LISTEN jobs")).await.unwrap();
    read_until(&mut raw, &mut Vec::new(), b"Z\0\0\0\x05I").await;
    let request = query_message("SELECT 'whole'");
    let (head, tail) = request.split_at(9);
    raw.write_all(head).await.unwrap();
    // The first piece goes before the NOTIFY, so the proxy holds it when the mail comes.
    run(&notifier, "NOTIFY jobs, 'mail'").await;
    read_until(&mut raw, &mut Vec::new(), b"mail\0").await;
    raw.write_all(tail).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut raw, &mut got, b"Z\0\0\0\x05I").await;
    assert!(got.windows(5).any(|w| w == b"whole"), "{got:?}");
}

/// A refused LISTEN in an extended flight ended by a Flush gets its error at once (the client
/// waits for it, with no Sync sent), and its ReadyForQuery at the Sync that follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_listen_before_a_flush_is_answered_at_once() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(PoolMode::Transaction).await;
    let mut raw = raw_client(&h).await;
    let flight = [
        msg(b'P', b"\0LISTEN jobs\0\0\0"),
        msg(b'P', b"s2\0SELECT 1\0\0\0"),
        msg(b'D', b"Ss2\0"),
        msg(b'H', b""),
    ]
    .concat();
    raw.write_all(&flight).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut raw, &mut got, b"0A000").await;
    assert_eq!(frames(&got).first().map(|f| f.0), Some(b'E'), "{got:?}");
    raw.write_all(&msg(b'S', b"")).await.unwrap();
    read_until(&mut raw, &mut got, b"Z\0\0\0\x05I").await;
    raw.write_all(&query_message("SELECT 'next'"))
        .await
        .unwrap();
    let mut next = Vec::new();
    read_until(&mut raw, &mut next, b"Z\0\0\0\x05I").await;
    assert!(next.windows(4).any(|w| w == b"next"), "{next:?}");
}
