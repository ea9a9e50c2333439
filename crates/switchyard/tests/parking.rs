//! Parked idle clients (`park_idle_after`), against a real PostgreSQL: an idle client gives up
//! its task and is woken by its next request, which is answered as if nothing happened; a
//! client that leaves while parked is forgotten; `client_idle_timeout` still ends a parked
//! client on time; a shutdown reaches parked clients; a client in a transaction or listening is
//! never parked and keeps what it has.

mod common;
#[path = "clients/json.rs"]
#[allow(dead_code)]
mod json;
#[path = "clients/programs.rs"]
#[allow(dead_code)]
mod programs;

use common::*;
use std::time::{Duration, Instant};
use switchyard_config::{Config, Duration as CfgDuration, PoolMode};
use switchyard_frontend::Proxy;
use tokio_postgres::{AsyncMessage, NoTls};

/// Sweeps every 100 ms: a client idle for 100–200 ms is parked.
fn park_fast(c: &mut Config) {
    c.proxy.park_idle_after = CfgDuration::millis(100);
}

/// Runs `sql` (bounded), failing the test on an error.
async fn exec(c: &tokio_postgres::Client, sql: &str) {
    within(STEP, sql, c.batch_execute(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Waits (bounded) until `want` parked clients.
async fn wait_parked(proxy: &Proxy, want: usize) {
    wait_parked_within(proxy, want, STEP).await;
}

async fn wait_parked_within(proxy: &Proxy, want: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while proxy.parked_count() != want {
        assert!(
            Instant::now() < deadline,
            "{} clients parked after {limit:?}, not {want}",
            proxy.parked_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Clients that log in and send nothing are parked by the quick sweep (a tenth of
/// `park_idle_after`), not left in tasks until a full sweep: a crowd logging in at once costs
/// what parked clients cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_log_in_and_send_nothing_are_parked_soon() {
    let h = Harness::start_with(PoolMode::Transaction, |c: &mut Config| {
        // Full sweeps every 10 s (the first 10 s after the start); quick ones every second.
        c.proxy.park_idle_after = CfgDuration::secs(10);
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(h.client().await);
    }
    // A quick sweep within 1 s of the last login, one more for a client caught before its
    // first idle wait; slack for a loaded machine, well short of the first full sweep.
    wait_parked_within(&h.proxy.proxy, 20, Duration::from_secs(6)).await;
    assert_eq!(first_column(&clients[3], "select 3").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_are_answered_when_they_speak_again() {
    let h = Harness::start_with(PoolMode::Transaction, park_fast).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(h.client().await);
    }
    for c in &clients {
        assert_eq!(first_column(c, "select 1").await, "1");
    }
    wait_parked(&h.proxy.proxy, 20).await;
    for round in 0..2 {
        for (i, c) in clients.iter().enumerate() {
            // Extended protocol, a parameter, a prepared statement: the session is all there.
            let row = within(
                STEP,
                "query after parking",
                c.query_one("select $1::int + 1", &[&(i as i32)]),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}, client {i}: {e:?}"));
            assert_eq!(row.get::<_, i32>(0), i as i32 + 1);
        }
        // Parked again.
        wait_parked(&h.proxy.proxy, 20).await;
    }
    assert_eq!(h.proxy.proxy.client_count(), 20);
}

/// Session pooling holds a server connection from the login on, so its clients never park; a
/// session-mode client keeps working however long it idles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_client_is_never_parked() {
    let h = Harness::start_with(PoolMode::Session, park_fast).await;
    let c = h.client().await;
    let other = h.client().await;
    exec(&c, "set application_name = 'kept'").await;
    // A transaction-mode-style wait would have parked by now: wait for sweeps to pass by
    // parking nothing, then check the session kept its setting.
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_millis(500) {
        assert_eq!(h.proxy.proxy.parked_count(), 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first_column(&c, "show application_name").await, "kept");
    assert_eq!(first_column(&other, "select 2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_parked_is_forgotten() {
    let h = Harness::start_with(PoolMode::Transaction, park_fast).await;
    let stays = h.client().await;
    let leaves = h.client().await;
    wait_parked(&h.proxy.proxy, 2).await;
    drop(leaves);
    within(STEP, "the client that left to be gone", async {
        while h.proxy.proxy.client_count() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        first_column(&stays, "select 'still here'").await,
        "still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_ends_a_parked_client_on_time() {
    const LIMIT: Duration = Duration::from_secs(1);
    let h = Harness::start_with(PoolMode::Transaction, |c: &mut Config| {
        park_fast(c);
        c.pool.client_idle_timeout = CfgDuration::secs(1);
    })
    .await;
    let (client, conn) = connect_watched(&h.conninfo("postgres", "", "app")).await;
    // The idle clock starts as the proxy answers: no earlier than the request is sent.
    let idle_since = Instant::now();
    assert_eq!(first_column(&client, "select 1").await, "1");
    wait_parked(&h.proxy.proxy, 1).await;
    ends_with_fatal(conn, "57P05", idle_since, LIMIT, Duration::from_secs(4)).await;
    assert_eq!(h.proxy.proxy.parked_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_reaches_parked_clients() {
    let h = Harness::start_with(PoolMode::Transaction, park_fast).await;
    let mut watched = Vec::new();
    for _ in 0..5 {
        watched.push(connect_watched(&h.conninfo("postgres", "", "app")).await);
    }
    wait_parked(&h.proxy.proxy, 5).await;
    let proxy = h.proxy.proxy.clone();
    let drain = tokio::spawn(h.proxy.drain(Duration::from_secs(10)));
    for (_client, conn) in watched {
        let end = within(STEP, "the shutdown's FATAL", conn)
            .await
            .expect("connection task");
        let e = end.expect_err("ended by the proxy");
        assert_eq!(sqlstate(&e), "57P01", "{e:?}");
    }
    within(STEP, "the drain", drain).await.expect("drain task");
    assert_eq!(proxy.client_count(), 0);
    assert_eq!(proxy.parked_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_a_transaction_or_listening_is_not_parked() {
    let h = Harness::start_with(PoolMode::Transaction, park_fast).await;
    let info = h.conninfo("postgres", "", "app");
    let in_tx = h.client().await;
    exec(
        &in_tx,
        "create table t (v int); begin; insert into t values (1)",
    )
    .await;
    let (listening, mut connection) = within(STEP, "login", tokio_postgres::connect(&info, NoTls))
        .await
        .expect("login");
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    exec(&listening, "LISTEN jobs").await;
    // A third client is parked: sweeps have run past the other two.
    let idle = h.client().await;
    wait_parked(&h.proxy.proxy, 1).await;
    // Through several more sweeps, the other two stay unparked (nothing to wait for: a
    // window to look in).
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(500) {
        assert_eq!(
            h.proxy.proxy.parked_count(),
            1,
            "a client in a transaction or listening parked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sender = h.client().await;
    exec(&sender, "NOTIFY jobs, 'hello'").await;
    let payload = within(STEP, "the notification", heard.recv()).await;
    assert_eq!(payload.as_deref(), Some("hello"));
    // The transaction commits on its own connection.
    exec(&in_tx, "commit").await;
    assert_eq!(first_column(&idle, "select count(*) from t").await, "1");
}

/// A parked client's `client_idle_timeout` is kept to within a quick sweep (a tenth of
/// `park_idle_after`), not a full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_is_kept_to_a_quick_sweep() {
    const LIMIT: Duration = Duration::from_secs(3);
    let h = Harness::start_with(PoolMode::Transaction, |c: &mut Config| {
        // Full sweeps every 10 s, quick ones every second.
        c.proxy.park_idle_after = CfgDuration::secs(10);
        c.pool.client_idle_timeout = CfgDuration::secs(3);
    })
    .await;
    // The idle clock starts after the login, so no earlier than this.
    let before_login = Instant::now();
    let (_client, conn) = connect_watched(&h.conninfo("postgres", "", "app")).await;
    let logged_in = Instant::now();
    // The quick sweep after the login parks it, well before its limit.
    wait_parked_within(&h.proxy.proxy, 1, Duration::from_millis(2500)).await;
    ends_with_fatal(conn, "57P05", before_login, LIMIT, Duration::from_secs(5)).await;
    // One quick sweep late at most, with slack for a loaded machine; a full sweep (10 s) fails.
    let late = logged_in.elapsed().saturating_sub(LIMIT);
    assert!(
        late < Duration::from_secs(3),
        "ended {late:?} after client_idle_timeout"
    );
}

/// A TLS client keeps its task (its TLS state is not parked) and keeps working through the
/// sweeps that park a plain client beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_is_not_parked_and_keeps_working() {
    let certs = switchyard_localpg::TestCerts::generate(&["127.0.0.1"]).expect("certificates");
    let h = Harness::start_with(PoolMode::Transaction, |c: &mut Config| {
        park_fast(c);
        c.proxy.tls_cert_file = certs.cert.display().to_string();
        c.proxy.tls_key_file = certs.key.display().to_string();
    })
    .await;
    let plain = h.client().await;
    wait_parked(&h.proxy.proxy, 1).await;
    // psql over TLS (sslmode=require: TLS or no connection): a query, a second idle (sweeps
    // every 100 ms), another query.
    let mut psql = programs::pg_program("psql");
    psql.args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres dbname=app sslmode=require",
            h.port()
        ));
    let script = b"select 1;\n\\! sleep 1\nselect 'after ' || 2;\n";
    let run = tokio::spawn(programs::run(psql, Some(script), STEP, "psql over TLS"));
    while !run.is_finished() {
        assert!(
            h.proxy.proxy.parked_count() <= 1,
            "the TLS client was parked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ran = run
        .await
        .expect("psql task")
        .expect_success("psql over TLS");
    assert!(ran.stdout.contains("after 2"), "{}", ran.stdout);
    assert_eq!(first_column(&plain, "select 'plain'").await, "plain");
}
