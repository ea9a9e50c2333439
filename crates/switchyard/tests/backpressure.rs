//! Flow in both directions at once (issue 16, item 10), against the real `switchyard serve`:
//! while a request is still being written to a server that has stopped reading because it is
//! busy writing answers, Switchyard keeps reading those answers and passing them on, so a
//! pipelining client that reads is never stalled (PostgreSQL reads no request while its output
//! is blocked: two writers and no reader is a deadlock until TCP gives up); and a server row
//! far larger than any buffer is passed through in pieces, never held whole. Both also over TLS
//! to the server, where written bytes can wait in the TLS session.

mod common;

use common::served::Served;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::{PoolMode, ServerTls};
use switchyard_localpg::{PgOptions, PgServer, TestCerts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// Reads messages, dropping their bodies unread in 64 KiB pieces, until `n` ReadyForQuery have
/// come; returns the tags of the other messages (DataRow lengths summed into the second value).
async fn read_answers(r: &mut OwnedReadHalf, n: usize) -> (Vec<u8>, u64) {
    let mut tags = Vec::new();
    let mut row_bytes = 0u64;
    let mut ready = 0;
    let mut chunk = vec![0u8; 64 << 10];
    while ready < n {
        let mut head = [0u8; 5];
        r.read_exact(&mut head).await.expect("message header");
        let mut left = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
        if head[0] == b'D' {
            row_bytes += left as u64;
        }
        while left > 0 {
            let take = left.min(chunk.len());
            r.read_exact(&mut chunk[..take])
                .await
                .expect("message body");
            left -= take;
        }
        match head[0] {
            b'Z' => ready += 1,
            b'D' => {}
            t => tags.push(t),
        }
    }
    (tags, row_bytes)
}

/// Logs in as postgres (trust) and returns the two halves, past the first ReadyForQuery.
async fn login(port: u16) -> (OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf) {
    let s = within(STEP, "connect", TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    let (mut r, mut w) = s.into_split();
    w.write_all(&startup_packet("postgres", &[]))
        .await
        .expect("startup");
    within(STEP, "login", read_answers(&mut r, 1)).await;
    (r, w)
}

/// PostgreSQL, serving TLS when `tls`, and Switchyard in front of it (verifying the server's
/// certificate when `tls`).
async fn start(tls: bool) -> (Served, switchyard_localpg::PgServer, Option<Arc<TestCerts>>) {
    if !tls {
        let pg = start_pg();
        let served = Served::start(config_for(&pg, PoolMode::Transaction)).await;
        return (served, pg, None);
    }
    let certs = Arc::new(TestCerts::generate(&["127.0.0.1"]).expect("certificates"));
    let pg = PgServer::start_with(PgOptions {
        tls: Some(certs.clone()),
        ..PgOptions::default()
    })
    .expect("PostgreSQL with TLS");
    pg.create_database("app", "postgres").expect("app database");
    let mut config = config_for(&pg, PoolMode::Transaction);
    config.server.tls = ServerTls::VerifyFull;
    config.server.tls_ca_file = certs.ca.display().to_string();
    let served = Served::start(config).await;
    (served, pg, Some(certs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_written_to_a_busy_server_does_not_stall_its_answers() {
    request_written_to_a_busy_server(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_written_to_a_busy_server_over_tls_does_not_stall_its_answers() {
    request_written_to_a_busy_server(true).await;
}

async fn request_written_to_a_busy_server(tls: bool) {
    let (served, _pg, _certs) = start(tls).await;
    let (mut r, mut w) = login(served.port).await;
    // The first request keeps the server quiet for a moment, so Switchyard reads the second one
    // whole and writes it while the server is not reading; then the server writes 64 MiB, far
    // more than the sockets between them hold, before it reads another byte.
    let first = query_message(
        "select pg_sleep(0.3); select repeat('x', 65536) from generate_series(1, 1024)",
    );
    let second = query_message(&format!("select length('{}')", "y".repeat(16 << 20)));
    let writer = tokio::spawn(async move {
        w.write_all(&first).await.expect("first request");
        w.write_all(&second).await.expect("second request");
        w
    });
    let (tags, row_bytes) = within(
        Duration::from_secs(60),
        "both answers while the second request is still being written",
        read_answers(&mut r, 2),
    )
    .await;
    assert!(
        !tags.contains(&b'E'),
        "an error came back: {tags:?}\n{}",
        served.log()
    );
    assert!(row_bytes > 64 << 20, "only {row_bytes} bytes of rows came");
    within(STEP, "the writer", writer).await.expect("writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_row_is_passed_through_in_pieces() {
    huge_row(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_row_from_a_tls_server_is_passed_through_in_pieces() {
    huge_row(true).await;
}

async fn huge_row(tls: bool) {
    const ROW: usize = 192 << 20;
    let (served, _pg, _certs) = start(tls).await;
    let (mut r, mut w) = login(served.port).await;
    let before = served.status_kib("VmHWM");
    w.write_all(&query_message(&format!("select repeat('x', {ROW})")))
        .await
        .expect("request");
    let (tags, row_bytes) = within(
        Duration::from_secs(60),
        "the huge row",
        read_answers(&mut r, 1),
    )
    .await;
    assert!(!tags.contains(&b'E'), "an error came back: {tags:?}");
    assert!(
        row_bytes >= ROW as u64,
        "only {row_bytes} bytes of the row came"
    );
    let grew_mib = (served.status_kib("VmHWM").saturating_sub(before)) / 1024;
    assert!(
        grew_mib < 64,
        "Switchyard's peak resident memory grew by {grew_mib} MiB relaying a {} MiB row",
        ROW >> 20
    );
    // The connection goes on.
    w.write_all(&query_message("select 1"))
        .await
        .expect("request");
    within(STEP, "the next answer", read_answers(&mut r, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_lost_in_the_middle_of_a_row_closes_the_client_without_garbage() {
    const ROW: usize = 64 << 20;
    let pg = start_pg();
    let served = Served::start(config_for(&pg, PoolMode::Transaction)).await;
    let (mut r, mut w) = login(served.port).await;
    w.write_all(&query_message(&format!(
        "select repeat('z', {ROW}) as huge_row"
    )))
    .await
    .expect("request");
    // Read into the row, then stop reading: the server blocks in the middle of sending it.
    let row_len = within(STEP, "the row's start", async {
        loop {
            let mut head = [0u8; 5];
            r.read_exact(&mut head).await.expect("header");
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
            if head[0] == b'D' {
                break len;
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await.expect("body");
        }
    })
    .await;
    let mut piece = vec![0u8; 1 << 20];
    within(STEP, "a first piece of the row", r.read_exact(&mut piece))
        .await
        .expect("piece");
    let direct = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        pg.port()
    ))
    .await
    .expect("direct connection");
    let terminated = direct
        .query(
            "select pg_terminate_backend(pid) from pg_stat_activity where query like '%huge_row' and pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("terminate");
    assert_eq!(terminated.len(), 1, "the backend sending the row");
    // The client reads on: what had come of the row, then the end of the connection, with no
    // error message pretending to be part of the row.
    let mut rest = Vec::new();
    within(STEP, "the connection's end", r.read_to_end(&mut rest))
        .await
        .expect("read to the end");
    let got = piece.len() + rest.len();
    assert!(got < row_len, "{got} bytes of a {row_len}-byte row");
    assert!(
        rest.iter().all(|&b| b == b'z'),
        "something other than the row came after it"
    );
    // Nothing else was affected.
    let (mut r2, mut w2) = login(served.port).await;
    w2.write_all(&query_message("select 1"))
        .await
        .expect("request");
    within(STEP, "another client's answer", read_answers(&mut r2, 1)).await;
}
