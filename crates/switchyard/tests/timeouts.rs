//! Limits on what a logged-in client may hold (issue 16, item 7), against a real PostgreSQL:
//! `client_idle_timeout` ends an idle session (57P05), `idle_transaction_timeout` ends a session
//! idle inside a transaction (25P03) and rolls the transaction back, `query_timeout` cancels a
//! request (57014) and the connection goes on, and `max_pending_logins_per_address` bounds the
//! logins one address may have under way.

mod common;

use common::*;
use std::time::{Duration, Instant};
use switchyard_config::{Config, Duration as CfgDuration, PoolMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The limit each test sets.
const LIMIT: Duration = Duration::from_secs(1);
/// Longest after the limit the answer may take.
const SLACK: Duration = Duration::from_secs(4);

/// The connection ends with a FATAL `code` between `LIMIT` after `since` and `SLACK` later.
async fn ends_with(
    conn: JoinHandle<Result<(), tokio_postgres::Error>>,
    code: &str,
    since: Instant,
) -> String {
    ends_with_fatal(conn, code, since, LIMIT, SLACK).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_disconnected_after_client_idle_timeout() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = Harness::start_with(mode, |c: &mut Config| {
            c.pool.client_idle_timeout = CfgDuration::secs(1)
        })
        .await;
        let (client, conn) = connect_watched(&h.conninfo("postgres", "", "app")).await;
        // The proxy's idle clock starts as it answers, a moment before the answer arrives: the
        // earliest instant it can start is when the request is sent.
        let idle_since = Instant::now();
        within(STEP, "select 1", client.simple_query("select 1"))
            .await
            .expect("served");
        let said = ends_with(conn, "57P05", idle_since).await;
        assert!(said.contains("client_idle_timeout"), "{mode:?}: {said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_is_rolled_back_after_idle_transaction_timeout() {
    let h = Harness::start_with(PoolMode::Transaction, |c: &mut Config| {
        c.pool.idle_transaction_timeout = CfgDuration::secs(1);
        c.pool.size = 1;
    })
    .await;
    let setup = h.client().await;
    within(
        STEP,
        "create",
        setup.batch_execute("CREATE TABLE held (x int)"),
    )
    .await
    .expect("create");
    drop(setup);
    let (client, conn) = connect_watched(&h.conninfo("postgres", "", "app")).await;
    let idle_since = Instant::now(); // the earliest the proxy's clock can start (see above)
    within(
        STEP,
        "begin",
        client.batch_execute("BEGIN; INSERT INTO held VALUES (1)"),
    )
    .await
    .expect("begin and insert");
    let said = ends_with(conn, "25P03", idle_since).await;
    assert!(said.contains("rolled back"), "{said}");
    // The pool's only connection was closed with the transaction: the next client gets one,
    // and the row is not there.
    let next = h.client().await;
    let n = within(
        STEP,
        "count",
        next.query_one("SELECT count(*) FROM held", &[]),
    )
    .await
    .expect("the next client is served");
    assert_eq!(
        n.get::<_, i64>(0),
        0,
        "the open transaction was rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_query_timeout_is_cancelled_and_the_connection_goes_on() {
    let h = Harness::start_with(PoolMode::Transaction, |c: &mut Config| {
        c.pool.query_timeout = CfgDuration::secs(1)
    })
    .await;
    let client = h.client().await;
    let sent = Instant::now();
    let e = within(
        LIMIT + SLACK,
        "the slow query",
        client.simple_query("select pg_sleep(30)"),
    )
    .await
    .expect_err("cancelled");
    let took = sent.elapsed();
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    assert!(took >= LIMIT, "cancelled after {took:?}, before the limit");
    let fast = within(STEP, "a fast query", client.simple_query("select 1")).await;
    assert!(fast.is_ok(), "the connection goes on: {fast:?}");
}

/// An SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_may_have_only_so_many_logins_under_way() {
    let h = Harness::start_with(PoolMode::Transaction, |c: &mut Config| {
        c.proxy.max_pending_logins_per_address = 3
    })
    .await;
    // Three connections that never finish logging in hold the address's three places. Each
    // sends an SSLRequest and waits for its 'N': the proxy answers it inside the login, so the
    // place is counted before the next connection comes (accepted connections' tasks may
    // otherwise run in any order).
    let mut silent = Vec::new();
    for _ in 0..3 {
        let mut s = within(STEP, "connect", TcpStream::connect(h.addr()))
            .await
            .expect("connect");
        s.write_all(&SSL_REQUEST).await.expect("SSLRequest");
        let mut n = [0u8; 1];
        within(STEP, "the SSLRequest's answer", s.read_exact(&mut n))
            .await
            .expect("read");
        assert_eq!(&n, b"N");
        silent.push(s);
    }
    let mut fourth = within(STEP, "connect", TcpStream::connect(h.addr()))
        .await
        .expect("connect");
    let mut answer = Vec::new();
    within(STEP, "the refusal", fourth.read_to_end(&mut answer))
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.first() == Some(&b'E') && text.contains("53300") && text.contains("logging in"),
        "the fourth login is refused with 53300: {text:?}"
    );
    // A login that finishes frees its place; one that is cut off frees it too.
    drop(silent.pop());
    let c = within(STEP, "a real login", async {
        loop {
            // The proxy notices the closed connection a moment later.
            if let Ok(c) = connect(&h.conninfo("postgres", "", "app")).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
        }
    })
    .await;
    within(STEP, "select 1", c.simple_query("select 1"))
        .await
        .expect("served");
}
