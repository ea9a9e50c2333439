//! The relay against real PostgreSQL with tokio-postgres: queries, transactions, pipelines,
//! prepared statements across server connections, COPY, parameters, cancel, pool limits.

mod common;

use common::*;
use futures_util::{SinkExt, TryStreamExt, future};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use switchyard_config::{Duration as CfgDuration, PoolMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_in_both_modes() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = Harness::start(mode).await;
        let c = h.client().await;
        let rows = within(
            STEP,
            "simple query",
            c.simple_query("select 1; select 'two'"),
        )
        .await
        .unwrap();
        let data_rows = rows
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(data_rows, 2, "{mode:?}");
        let n: i32 = within(
            STEP,
            "extended query",
            c.query_one("select $1::int4 + 1", &[&41i32]),
        )
        .await
        .unwrap()
        .get(0);
        assert_eq!(n, 42);
        let err = within(STEP, "error", c.simple_query("select 1/0"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), "22012");
        within(STEP, "after error", c.simple_query("select 1"))
            .await
            .expect("connection survives an error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_keep_one_server_and_roll_back() {
    let h = Harness::start(PoolMode::Transaction).await;
    let mut c = h.client().await;
    c.batch_execute("create table tx_t(a int)").await.unwrap();
    let tx = c.transaction().await.unwrap();
    let pid1: i32 = tx
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    tx.execute("insert into tx_t values (1)", &[])
        .await
        .unwrap();
    let pid2: i32 = tx
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid1, pid2, "a transaction stays on one server connection");
    tx.rollback().await.unwrap();
    let n: i64 = c
        .query_one("select count(*) from tx_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// Named statements prepared once keep working while transactions land on different server
/// connections (pool of 4, 8 clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_clients_across_server_connections() {
    let h = Harness::start(PoolMode::Transaction).await;
    let mut tasks = Vec::new();
    for i in 0..8i32 {
        let c = h.client().await;
        tasks.push(tokio::spawn(async move {
            let pid = c.prepare("select pg_backend_pid()").await.unwrap();
            let add = c.prepare("select $1::int4 + $2::int4").await.unwrap();
            let mut pids = HashSet::new();
            for j in 0..40i32 {
                pids.insert(c.query_one(&pid, &[]).await.unwrap().get::<_, i32>(0));
                let s: i32 = c.query_one(&add, &[&i, &j]).await.unwrap().get(0);
                assert_eq!(s, i + j);
            }
            pids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(within(STEP * 3, "prepared workload", t).await.unwrap());
    }
    assert!(
        all.len() > 1,
        "transactions should have used several server connections: {all:?}"
    );
    assert!(all.len() <= 4, "pool size is 4: {all:?}");
}

/// Many queries in flight on one connection (tokio-postgres pipelines them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_return_in_order() {
    let h = Harness::start(PoolMode::Transaction).await;
    let c = h.client().await;
    let stmt = c.prepare("select $1::int4 * 2").await.unwrap();
    let args: Vec<i32> = (0..200).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
        args.iter().map(|i| [i as _]).collect();
    let futs: Vec<_> = params.iter().map(|p| c.query_one(&stmt, p)).collect();
    let rows = within(STEP, "pipeline", future::try_join_all(futs))
        .await
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.get::<_, i32>(0), i as i32 * 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = Harness::start(mode).await;
        let c = h.client().await;
        c.batch_execute("create table copy_t(a int, b text)")
            .await
            .unwrap();
        let sink = c.copy_in("copy copy_t from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        let data: String = (0..1000).map(|i| format!("{i}\trow {i}\n")).collect();
        within(STEP, "copy in", sink.send(bytes::Bytes::from(data)))
            .await
            .unwrap();
        let n = within(STEP, "copy finish", sink.finish()).await.unwrap();
        assert_eq!(n, 1000);
        if mode == PoolMode::Transaction {
            // The Sync tokio-postgres sends after the COPY's Execute is ignored by the server
            // in copy-in mode: the transaction is over and its connection back in the pool.
            wait_for_servers_in_use(&h.proxy, "the COPY's connection released", |n| n == 0).await;
        }
        let out = c
            .copy_out("copy (select * from copy_t order by a) to stdout")
            .await
            .unwrap();
        let chunks: Vec<bytes::Bytes> = within(STEP, "copy out", out.try_collect()).await.unwrap();
        let text: String = chunks
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.starts_with("0\trow 0\n"));
    }
}

/// A SET outside a transaction belongs to the client, not to the server connection it ran on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_the_client() {
    let h = Harness::start_with(PoolMode::Transaction, |c| c.pool.size = 1).await;
    let a = h.client().await;
    let b = h.client().await;
    a.batch_execute("set timezone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let tz_b: String = b.query_one("show timezone", &[]).await.unwrap().get(0);
    assert_ne!(tz_b, "Asia/Tokyo", "b must not inherit a's setting");
    let tz_a: String = a.query_one("show timezone", &[]).await.unwrap().get(0);
    assert_eq!(tz_a, "Asia/Tokyo");
}

/// A SQL `SET search_path` (a setting PostgreSQL 15 does not report) follows the client to
/// another server connection, and is undone for the next client of the one it ran on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_set_search_path_follows_the_client_and_not_the_connection() {
    let h = Harness::start_with(PoolMode::Transaction, |c| c.pool.size = 2).await;
    let a = h.client().await;
    let b = h.client().await;
    within(
        STEP,
        "schema",
        a.batch_execute("create schema sp_a; create table sp_a.only_here (x int); insert into sp_a.only_here values (7)"),
    )
    .await
    .expect("schema");
    let x = first_column(
        &a,
        "set search_path to sp_a, public; select pg_backend_pid()",
    )
    .await;
    // a's session gives its connection back just after the answer: wait for that.
    wait_for_servers_in_use(&h.proxy, "a's connection back in the pool", |n| n == 0).await;
    // The connection `a` just gave back goes to `b` (the pool hands out the most recent).
    let on_x = first_column(&b, "begin; select pg_backend_pid()").await;
    assert_eq!(on_x, x, "b holds the connection a's SET ran on");
    assert_eq!(
        first_column(&b, "show search_path").await,
        "\"$user\", public",
        "a's search_path does not reach b"
    );
    assert_ne!(
        first_column(&a, "select pg_backend_pid()").await,
        x,
        "a is elsewhere now"
    );
    assert_eq!(first_column(&a, "show search_path").await, "sp_a, public");
    assert_eq!(first_column(&a, "select x from only_here").await, "7");
    within(STEP, "commit", b.batch_execute("commit"))
        .await
        .expect("commit");
}

/// Startup parameters (application_name, search_path) are applied on every server connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_are_applied() {
    let h = Harness::start_with(PoolMode::Transaction, |c| c.pool.size = 1).await;
    let info = format!(
        "{} application_name=myapp options='-c search_path=other'",
        h.conninfo("postgres", "", "app")
    );
    let a = connect(&info).await.unwrap();
    let b = h.client().await;
    let app: String = a
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "myapp");
    let sp: String = a.query_one("show search_path", &[]).await.unwrap().get(0);
    assert_eq!(sp, "other", "startup options are applied");
    let app_b: String = b
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(app_b, "myapp");
}

/// Session mode resets a server connection before the next client gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_server_state() {
    let h = Harness::start_with(PoolMode::Session, |c| c.pool.size = 1).await;
    {
        let a = h.client().await;
        a.batch_execute(
            "set work_mem = '1234kB'; create temp table tmp_a(x int); prepare p as select 1",
        )
        .await
        .unwrap();
    }
    let b = within(STEP, "second client gets the only server", h.client()).await;
    let wm: String = within(STEP, "show", b.query_one("show work_mem", &[]))
        .await
        .unwrap()
        .get(0);
    assert_ne!(wm, "1234kB");
    let n: i64 = b
        .query_one(
            "select count(*) from pg_prepared_statements where name = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = Harness::start(mode).await;
        let c = h.client().await;
        let token = c.cancel_token();
        let started = Instant::now();
        let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(30)").await });
        // The cancel must find the query running on the server: watch for it there.
        let direct = format!(
            "host=127.0.0.1 port={} user=postgres dbname=app",
            h.pg.port()
        );
        let direct = connect(&direct).await.expect("a direct connection");
        within(STEP, "the query to run on the server", async {
            let sql = "select count(*) from pg_stat_activity where wait_event = 'PgSleep'";
            while first_column(&direct, sql).await != "1" {
                tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
            }
        })
        .await;
        within(STEP, "cancel", token.cancel_query(tokio_postgres::NoTls))
            .await
            .unwrap();
        let err = within(STEP, "cancelled query", sleeper)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(sqlstate(&err), "57014", "{mode:?}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "cancel took {:?}",
            started.elapsed()
        );
    }
}

/// A transaction that cannot get a server within query_wait_timeout gets 53300 and keeps its
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_wait_is_bounded() {
    let h = Harness::start_with(PoolMode::Transaction, |c| {
        c.pool.size = 1;
        c.pool.query_wait_timeout = CfgDuration::millis(500);
    })
    .await;
    let a = h.client().await;
    let b = h.client().await;
    a.batch_execute("begin").await.unwrap();
    let started = Instant::now();
    let err = within(STEP, "pool wait", b.simple_query("select 1"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "53300", "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(400)
            && started.elapsed() < Duration::from_secs(5)
    );
    let err = within(
        STEP,
        "extended pool wait",
        b.query("select $1::int4", &[&1i32]),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), "53300", "{err}");
    a.batch_execute("commit").await.unwrap();
    within(STEP, "b after a commits", b.simple_query("select 1"))
        .await
        .expect("b's connection still works");
}

/// Drives a connection and hands its asynchronous messages (notices, notifications) to a channel.
fn forward_messages<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
) -> tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut stream).await {
            let _ = tx.send(m);
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_are_relayed() {
    let h = Harness::start(PoolMode::Transaction).await;
    let (client, conn) = within(
        STEP,
        "connect",
        tokio_postgres::connect(&h.conninfo("postgres", "", "app"), tokio_postgres::NoTls),
    )
    .await
    .unwrap();
    let mut rx = forward_messages(conn);
    client
        .batch_execute("do $$ begin raise notice 'hello from the server'; end $$")
        .await
        .unwrap();
    match within(STEP, "notice", rx.recv()).await {
        Some(tokio_postgres::AsyncMessage::Notice(n)) => {
            assert_eq!(n.message(), "hello from the server")
        }
        other => panic!("expected a notice, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_in_session_mode() {
    let h = Harness::start(PoolMode::Session).await;
    let (listener, conn) = within(
        STEP,
        "connect",
        tokio_postgres::connect(&h.conninfo("postgres", "", "app"), tokio_postgres::NoTls),
    )
    .await
    .unwrap();
    let mut rx = forward_messages(conn);
    listener.batch_execute("listen chan").await.unwrap();
    let sender = h.client().await;
    sender
        .batch_execute("notify chan, 'payload-1'")
        .await
        .unwrap();
    match within(STEP, "notification", rx.recv()).await {
        Some(tokio_postgres::AsyncMessage::Notification(n)) => {
            assert_eq!((n.channel(), n.payload()), ("chan", "payload-1"))
        }
        other => panic!("expected a notification, got {other:?}"),
    }
}
