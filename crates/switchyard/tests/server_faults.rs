//! What a server does wrong is not blamed on the client (issue 16, item 12): a server that sends
//! a malformed message loses its connection, and the client gets the error contract's answer
//! (08007 for an autocommit request in flight) and keeps its own connection — not FATAL 08P01
//! "protocol violation" as if it had broken the protocol. A backend terminated by an operator
//! on a healthy primary is not a failover: the topology's generation stays. PostgreSQL cannot be
//! made to send a malformed message, so a loopback relay in front of it injects one.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use switchyard_config::{Config, PoolMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The text that makes the relay corrupt the answer to the request carrying it.
const MARKER: &[u8] = b"corrupt_this_answer";

/// A loopback relay to `upstream`. On a connection where the proxy has sent [`MARKER`], the
/// next bytes from the server are replaced by a ReadyForQuery with an invalid status.
async fn corrupting_relay(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = TcpStream::connect(&upstream).await else {
                continue;
            };
            tokio::spawn(pipe(down, up));
        }
    });
    addr
}

async fn pipe(down: TcpStream, up: TcpStream) {
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let armed = Arc::new(AtomicBool::new(false));
    let to_server = {
        let armed = armed.clone();
        async move {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = dr.read(&mut buf).await {
                if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                if buf[..n].windows(MARKER.len()).any(|w| w == MARKER) {
                    armed.store(true, Ordering::SeqCst);
                }
            }
        }
    };
    let to_proxy = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = ur.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let bytes: &[u8] = if armed.swap(false, Ordering::SeqCst) {
                b"Z\x00\x00\x00\x05X"
            } else {
                &buf[..n]
            };
            if dw.write_all(bytes).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(to_server, to_proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_server_message_is_not_the_clients_fault() {
    let pg = start_pg();
    let relay = corrupting_relay(pg.addr()).await;
    let mut config = config_for(&pg, PoolMode::Transaction);
    config
        .clusters
        .get_mut("main")
        .expect("cluster main")
        .members = vec![relay];
    let h = Harness::from_parts(pg, config).await;
    let client = h.client().await;
    within(STEP, "select 1", client.simple_query("select 1"))
        .await
        .expect("served through the relay");
    let e = within(
        STEP,
        "the corrupted answer",
        client.simple_query("select 'corrupt_this_answer'"),
    )
    .await
    .expect_err("the server's answer was malformed");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("no error response: {e:?}"));
    assert_eq!(
        (db.severity(), db.code().code()),
        ("ERROR", "08007"),
        "an autocommit request in flight on a broken server connection: {}",
        db.message()
    );
    assert!(
        db.message().contains("server broke the protocol"),
        "{}",
        db.message()
    );
    let again = within(STEP, "the next request", client.simple_query("select 2")).await;
    assert!(again.is_ok(), "the client keeps its connection: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_on_a_healthy_primary_is_not_a_failover() {
    let h = Harness::start_with(PoolMode::Transaction, |_: &mut Config| {}).await;
    let client = h.client().await;
    let monitor = h.proxy.proxy.router.monitor("main").expect("monitor");
    let generation = monitor.generation();
    within(STEP, "begin", client.batch_execute("BEGIN; SELECT 1"))
        .await
        .expect("begin");
    let pid = backend_pid(&client).await;
    let admin = h.client().await;
    let killed = first_column(&admin, &format!("select pg_terminate_backend({pid})")).await;
    assert_eq!(killed, "t");
    let e = within(STEP, "the next statement", client.simple_query("select 1"))
        .await
        .expect_err("the transaction is gone");
    assert_eq!(sqlstate(&e), "40001", "{e:?}");
    within(STEP, "rollback", client.batch_execute("ROLLBACK"))
        .await
        .expect("the client ends its transaction");
    within(STEP, "select 1", client.simple_query("select 1"))
        .await
        .expect("and goes on");
    assert_eq!(monitor.generation(), generation, "no topology change");
    // Counted as a loss outside a failover once the primary is seen to have stayed, and not
    // in the failover outcomes.
    let counters = monitor.counters();
    within(STEP, "the loss to be attributed", async {
        while counters.lost_outside_failover.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(counters.lost_outside_failover.load(Ordering::Relaxed), 1);
    assert_eq!(
        counters.caught_totals(),
        switchyard_topology::CaughtTotals::default(),
        "no failover outcome counted"
    );
    assert_eq!(monitor.generation(), generation, "still no topology change");
}

/// Terminates `pid` on the server with a direct connection.
async fn terminate(pg_port: u16, pid: i32) {
    let admin = connect(&format!(
        "host=127.0.0.1 port={pg_port} user=postgres dbname=postgres"
    ))
    .await
    .expect("direct connection");
    let killed = first_column(&admin, &format!("select pg_terminate_backend({pid})")).await;
    assert_eq!(killed, "t");
}

/// The FATAL a connection's task ended with, once the server terminated its backend.
async fn ended_with(
    task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> (String, String) {
    let ended = within(STEP, "the connection to end", task)
        .await
        .expect("connection task");
    let e = ended.expect_err("the connection ends with an error");
    let db = e.as_db_error().expect("a FATAL from the server");
    (db.code().code().to_owned(), db.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_session_mode_a_terminated_backend_ends_the_session_as_it_would_directly() {
    let h = Harness::start(PoolMode::Session).await;
    let monitor = h.proxy.proxy.router.monitor("main").expect("monitor");
    // Directly: what a client sees when an operator terminates its backend.
    let (direct, direct_task) = connect_watched(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        h.pg.port()
    ))
    .await;
    terminate(h.pg.port(), backend_pid(&direct).await).await;
    let expected = ended_with(direct_task).await;
    assert_eq!(expected.0, "57P01", "{expected:?}");
    // Through Switchyard in session mode: the same FATAL, and the connection ends.
    let (client, task) = connect_watched(&h.conninfo("postgres", "", "app")).await;
    let pid = backend_pid(&client).await;
    let generation = monitor.generation();
    terminate(h.pg.port(), pid).await;
    assert_eq!(ended_with(task).await, expected);
    assert!(client.is_closed());
    // Not a failover: counted as a loss outside one once the primary is seen to have stayed.
    let counters = monitor.counters();
    within(STEP, "the loss to be attributed", async {
        while counters.lost_outside_failover.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        (counters.caught_totals().sessions_lost, monitor.generation()),
        (0, generation),
        "lost outside {}",
        counters.lost_outside_failover.load(Ordering::Relaxed)
    );
    assert_eq!(monitor.generation(), generation);
}
