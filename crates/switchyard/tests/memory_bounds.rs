//! Memory a client can make the real `switchyard serve` process allocate (issue 16, item 2):
//! before login a password or SASL message is capped as PostgreSQL caps it (64 KiB), so a huge
//! one is refused with FATAL 08P01 as soon as its header arrives; after login a message's length
//! field alone reserves nothing — the buffer grows only with the bytes that really came.

mod common;

use common::served::Served;
use common::*;
use std::time::Duration;
use switchyard_config::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections opened at once by each test.
const CLIENTS: usize = 20;
/// Length each client's message claims: close to `max_message_size` (256 MiB).
const CLAIMED: u32 = 200 << 20;
/// Bytes of it each client really sends.
const SENT: usize = 4 << 20;

/// Resident and virtual data size of the process, in KiB.
fn memory_kib(served: &Served) -> (u64, u64) {
    (served.status_kib("VmRSS"), served.status_kib("VmData"))
}

/// Reads messages until one with tag `want`; returns its body, or None if the proxy closed.
async fn read_until(s: &mut TcpStream, want: u8) -> Option<Vec<u8>> {
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.checked_sub(4)?];
        s.read_exact(&mut body).await.ok()?;
        if head[0] == want {
            return Some(body);
        }
    }
}

/// Connects, sends a startup packet as `user` and reads up to the first message tagged
/// `until` (`R`: the authentication request; `Z`: logged in).
async fn start_login(port: u16, user: &str, until: u8) -> TcpStream {
    let mut s = within(STEP, "connect", TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    s.write_all(&startup_packet(user, &[]))
        .await
        .expect("startup");
    let got = within(STEP, "the login's answer", read_until(&mut s, until)).await;
    assert!(got.is_some(), "{user}: no {:?} message", until as char);
    s
}

/// The SQLSTATE field of an ErrorResponse body.
fn code(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// Sends a header claiming [`CLAIMED`] bytes for a message of type `tag`, then up to [`SENT`]
/// bytes of it (stopping early if the proxy closes); returns the bytes written.
async fn send_huge(s: &mut TcpStream, tag: u8) -> usize {
    let mut head = vec![tag];
    head.extend_from_slice(&CLAIMED.to_be_bytes());
    if s.write_all(&head).await.is_err() {
        return 0;
    }
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0;
    while sent < SENT {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break, // closed, or no longer read: either way nothing more goes in
        }
    }
    sent
}

async fn start() -> (Served, switchyard_localpg::PgServer) {
    let pg = start_pg();
    let served = Served::start(config_for(&pg, PoolMode::Transaction)).await;
    (served, pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_messages_before_login_are_refused_at_their_header() {
    let (served, _pg) = start().await;
    let before = memory_kib(&served);
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let user = if i % 2 == 0 { SCRAM_USER } else { MD5_USER };
        clients.push(start_login(served.port, user, b'R').await);
    }
    let during = futures_util::future::join_all(clients.iter_mut().map(|s| async move {
        let sent = send_huge(s, b'p').await;
        let answer = within(STEP, "the answer", read_until(s, b'E')).await;
        (sent, answer.map(|b| code(&b)))
    }));
    let answers = within(Duration::from_secs(60), "the huge messages", during).await;
    let after = memory_kib(&served);
    eprintln!(
        "memory before login: RSS {} -> {} KiB, data {} -> {} KiB; answers {:?}",
        before.0,
        after.0,
        before.1,
        after.1,
        answers.iter().map(|a| &a.1).collect::<Vec<_>>()
    );
    for (i, (_, answer)) in answers.iter().enumerate() {
        assert_eq!(
            answer.as_deref(),
            Some("08P01"),
            "client {i}: a 200 MiB password message is a protocol violation"
        );
    }
    assert!(
        after.0 < before.0 + 16 * 1024,
        "resident memory grew from {} to {} KiB with {CLIENTS} huge pre-login messages",
        before.0,
        after.0
    );
    assert!(
        after.1 < before.1 + 64 * 1024,
        "data segment grew from {} to {} KiB: space reserved from a length field",
        before.1,
        after.1
    );
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        served.port
    ))
    .await
    .expect("a normal client still logs in");
    within(STEP, "select 1", c.simple_query("select 1"))
        .await
        .expect("and is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_field_after_login_reserves_nothing() {
    let (served, _pg) = start().await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(start_login(served.port, "postgres", b'Z').await);
    }
    let before = memory_kib(&served);
    // The header and a few bytes of a 200 MiB query, then one byte more once those are read
    // (a buffer makes room for a message when more of it comes); the rest never comes.
    let mut head = vec![b'Q'];
    head.extend_from_slice(&CLAIMED.to_be_bytes());
    head.extend_from_slice(b"select ");
    for bytes in [&head[..], b"1"] {
        for s in &mut clients {
            s.write_all(bytes).await.expect("write");
        }
        wait_until_read(served.port, &clients).await;
    }
    let after = memory_kib(&served);
    eprintln!(
        "memory after login: data {} -> {} KiB with {CLIENTS} 200 MiB headers",
        before.1, after.1
    );
    assert!(
        after.1 < before.1 + 64 * 1024,
        "data segment grew from {} to {} KiB: space reserved from a length field alone",
        before.1,
        after.1
    );
}

/// Waits until the proxy has read everything `clients` sent it: the receive queues of its
/// ends of their connections (`/proc/net/tcp`) are empty.
async fn wait_until_read(proxy_port: u16, clients: &[TcpStream]) {
    let ours: Vec<u16> = clients
        .iter()
        .map(|s| s.local_addr().expect("local addr").port())
        .collect();
    within(STEP, "the proxy to read what was sent", async {
        loop {
            let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
            let unread = table.lines().skip(1).any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = |addr: &str| {
                    addr.rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                };
                let rx = f
                    .get(4)
                    .and_then(|q| q.split(':').nth(1))
                    .and_then(|q| u64::from_str_radix(q, 16).ok());
                f.len() > 4
                    && port(f[1]) == Some(proxy_port)
                    && port(f[2]).is_some_and(|p| ours.contains(&p))
                    && rx != Some(0)
            });
            if !unread {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
        }
    })
    .await;
}
