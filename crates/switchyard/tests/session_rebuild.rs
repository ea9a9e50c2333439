//! Session mode across a failover: a session idle when the primary fails (or is shut down
//! cleanly for a switchover, which ends its backend with the server's own 57P01) keeps what it
//! built (settings, SQL and protocol prepared statements, LISTEN) on the promoted standby, and
//! sees no error (tokio-postgres and psycopg); a rolled-back SET stays undone; a request in
//! flight gets 08007 and the session goes on; a session inside a transaction gets 40001 and
//! goes on once it ends it; a session with a temporary table ends with 57P01 naming it. (A backend an operator terminates while the primary stays ends the session with
//! the server's own FATAL: `server_faults`.)

mod common;
#[path = "clients/json.rs"]
#[allow(dead_code)]
mod json;
#[path = "clients/programs.rs"]
#[allow(dead_code)]
mod programs;

use common::cluster::{Cluster, ClusterOptions, Fault, blocking};
use common::*;
use std::time::Duration;
use switchyard_config::PoolMode;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// How long a first query after the fault may take: detection, promotion, the gate.
const AFTER_FAULT: Duration = Duration::from_secs(30);

/// What the client's connection task heard besides answers.
enum Heard {
    Notification(String),
    /// The connection ended with this error (code, message).
    Ended(String, String),
}

/// A session-mode client whose notifications and final error come on the channel.
async fn client(c: &Cluster) -> (Client, mpsc::UnboundedReceiver<Heard>) {
    let (client, mut connection) = within(
        STEP,
        "login",
        tokio_postgres::connect(&c.conninfo(""), NoTls),
    )
    .await
    .expect("login");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(Heard::Notification(n.payload().to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                    let message = e.as_db_error().map(|d| d.message().to_string());
                    let _ = tx.send(Heard::Ended(code, message.unwrap_or_else(|| e.to_string())));
                    return;
                }
                None => return,
            }
        }
    });
    (client, rx)
}

async fn start() -> Cluster {
    // The proxy's log, shown with a failure's output (these tests race a failover).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    Cluster::start(ClusterOptions {
        mode: PoolMode::Session,
        ..ClusterOptions::default()
    })
    .await
}

async fn show(client: &Client, sql: &str, limit: Duration) -> String {
    let rows = within(limit, sql, client.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default()
}

/// How the primary goes away.
#[derive(Clone, Copy)]
enum Ending {
    Fault(Fault),
    /// `pg_ctl stop -m fast`, as a switchover does it: every backend gets FATAL 57P01 and the
    /// server refuses new connections while it writes its shutdown checkpoint, which reaches
    /// the standby before the promotion.
    Switchover,
}

impl Cluster {
    async fn end_primary(&self, ending: Ending) {
        match ending {
            Ending::Fault(fault) => drop(self.inject(fault).await),
            Ending::Switchover => {
                let primary = self.primary.clone();
                blocking("stop the primary", move || primary.stop()).await;
            }
        }
    }
}

async fn survives(ending: Ending) {
    let c = start().await;
    let (client, mut heard) = client(&c).await;
    for sql in [
        "SET work_mem = '7MB'; PREPARE twice(int) AS SELECT $1 * 2; LISTEN jobs",
        // Rolled back: undone on the server, so not rebuilt either. (A PREPARE is not
        // transactional: it stays.)
        "BEGIN; SET statement_timeout = '1234'; PREPARE kept AS SELECT 1; ROLLBACK",
    ] {
        within(STEP, sql, client.batch_execute(sql)).await.unwrap();
    }
    let plus_one = within(STEP, "prepare", client.prepare("SELECT $1::int + 1"))
        .await
        .unwrap();
    // A COPY FROM STDIN through the extended protocol (its first Sync gets no answer), then
    // a setting: the record stays in step with the server's answers.
    within(
        STEP,
        "table",
        client.batch_execute("CREATE TABLE copied (a int)"),
    )
    .await
    .unwrap();
    let copied = async {
        use futures_util::SinkExt;
        let sink = client.copy_in("COPY copied FROM STDIN").await?;
        let mut sink = std::pin::pin!(sink);
        sink.send(bytes::Bytes::from_static(b"1\n")).await?;
        sink.as_mut().finish().await
    };
    assert_eq!(within(STEP, "copy", copied).await.unwrap(), 1);
    within(
        STEP,
        "set after copy",
        client.batch_execute("SET lock_timeout = '4s'"),
    )
    .await
    .unwrap();
    c.end_primary(ending).await;
    c.promote_standby().await;
    // The client stays idle through the failover (a request in flight at the fault would get
    // 08007: see the test of that below).
    c.wait_for_primary(&c.standby.addr(), AFTER_FAULT).await;
    assert_eq!(show(&client, "SHOW work_mem", AFTER_FAULT).await, "7MB");
    assert_eq!(show(&client, "SELECT pg_is_in_recovery()", STEP).await, "f");
    assert_eq!(show(&client, "SHOW lock_timeout", STEP).await, "4s");
    assert_eq!(show(&client, "EXECUTE twice(21)", STEP).await, "42");
    assert_eq!(show(&client, "SHOW statement_timeout", STEP).await, "0");
    assert_eq!(show(&client, "EXECUTE kept", STEP).await, "1");
    let row = within(
        STEP,
        "protocol statement",
        client.query_one(&plus_one, &[&41i32]),
    )
    .await
    .expect("the statement prepared before the failover");
    assert_eq!(row.get::<_, i32>(0), 42);
    Cluster::psql_on(&c.standby, "app", "NOTIFY jobs, 'after'").await;
    match within(STEP, "the notification", heard.recv()).await {
        Some(Heard::Notification(payload)) => assert_eq!(payload, "after"),
        Some(Heard::Ended(code, message)) => panic!("session ended: {code} {message}"),
        None => panic!("connection task gone"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_keeps_what_it_built_across_a_crash() {
    survives(Ending::Fault(Fault::Crash)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_keeps_what_it_built_across_a_clean_switchover() {
    survives(Ending::Switchover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_keeps_what_it_built_across_a_freeze() {
    survives(Ending::Fault(Fault::Freeze)).await;
}

/// The same with psycopg 3, which prepares its own statements (`prepare_threshold=0`): the
/// script builds its state, the failover happens while it waits, and it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psycopg_session_goes_on_after_a_failover() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let c = start().await;
    let mut cmd = programs::clean_command(programs::python());
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(programs::clients_dir().join("psycopg_session_rebuild.py"))
        .arg(c.conninfo(""))
        .stdin(std::process::Stdio::piped())
        // (Its traceback, if any, goes to the test's output.)
        .stderr(std::process::Stdio::inherit());
    let mut child = cmd.spawn().expect("start python");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = within(STEP, "READY", lines.next_line())
        .await
        .expect("read");
    assert_eq!(ready.as_deref(), Some("READY"), "the script's first line");
    let _crash = c.inject(Fault::Crash).await;
    c.promote_standby().await;
    c.wait_for_primary(&c.standby.addr(), AFTER_FAULT).await;
    within(STEP, "go", stdin.write_all(b"go\n"))
        .await
        .expect("write");
    let result = within(AFTER_FAULT, "the script's result", lines.next_line())
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("no result: see the script's traceback above"));
    let status = within(STEP, "exit", child.wait()).await.expect("wait");
    assert!(status.success(), "psycopg script failed: {result}");
    let r = json::Json::parse(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
    assert_eq!(r.get("work_mem").as_str(), "7MB", "{r}");
    assert_eq!(r.get("twice").as_i64(), 42, "{r}");
    assert_eq!(r.get("plus_one").as_i64(), 42, "{r}");
    assert_eq!(r.get("in_recovery").to_string(), "false", "{r}");
    assert_ne!(
        r.get("pid_before").as_i64(),
        r.get("pid_after").as_i64(),
        "{r}"
    );
    assert_eq!(r.get("notified").to_string(), "[\"after\"]", "{r}");
}

/// A request in flight outside a transaction is answered as in transaction mode (08007), and
/// the session goes on, rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_gets_08007_and_the_session_goes_on() {
    let c = start().await;
    let (client, mut heard) = client(&c).await;
    within(STEP, "set", client.batch_execute("SET work_mem = '7MB'"))
        .await
        .unwrap();
    let _freeze = c.inject(Fault::Freeze).await;
    let in_flight = within(
        AFTER_FAULT,
        "the request in flight",
        client.simple_query("SELECT 1"),
    )
    .await
    .expect_err("its server froze");
    assert_eq!(
        in_flight.code().map(|c| c.code()),
        Some("08007"),
        "{in_flight:?}"
    );
    c.promote_standby().await;
    assert_eq!(show(&client, "SHOW work_mem", AFTER_FAULT).await, "7MB");
    assert_eq!(show(&client, "SELECT pg_is_in_recovery()", STEP).await, "f");
    assert!(heard.try_recv().is_err(), "nothing else was heard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_a_temporary_table_ends_naming_it() {
    ends_naming_its_temporary_table(Ending::Fault(Fault::Crash)).await;
}

/// At a switchover too: not the server's own 57P01, which would not say what was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_switchover_a_session_with_a_temporary_table_ends_naming_it() {
    ends_naming_its_temporary_table(Ending::Switchover).await;
}

async fn ends_naming_its_temporary_table(ending: Ending) {
    let c = start().await;
    let (client, mut heard) = client(&c).await;
    within(
        STEP,
        "temp table",
        client.batch_execute("SET work_mem = '7MB'; CREATE TEMP TABLE scratch (a int)"),
    )
    .await
    .unwrap();
    c.end_primary(ending).await;
    c.promote_standby().await;
    match within(AFTER_FAULT, "the session's end", heard.recv()).await {
        Some(Heard::Ended(code, message)) => {
            assert_eq!(code, "57P01", "{message}");
            assert!(message.contains("a temporary table"), "{message}");
        }
        Some(Heard::Notification(_)) => panic!("a notification"),
        None => panic!("connection task gone without an error"),
    }
}

/// A session inside a transaction when the primary fails: the transaction is rolled back
/// (40001, then 25P02 until the client ends it, as in transaction mode), and the session goes
/// on, rebuilt with what it held before the transaction and what a rollback keeps (a
/// PREPARE), not what the transaction set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_inside_a_transaction_gets_40001_and_goes_on() {
    let c = start().await;
    let (client, mut heard) = client(&c).await;
    let sql = "SET work_mem = '7MB'";
    within(STEP, sql, client.batch_execute(sql)).await.unwrap();
    let sql = "BEGIN; SET lock_timeout = '9s'; PREPARE inside AS SELECT 2";
    within(STEP, sql, client.batch_execute(sql)).await.unwrap();
    let _crash = c.inject(Fault::Crash).await;
    c.promote_standby().await;
    c.wait_for_primary(&c.standby.addr(), AFTER_FAULT).await;
    let e = within(
        STEP,
        "in the lost transaction",
        client.simple_query("SELECT 1"),
    )
    .await
    .expect_err("its transaction is gone");
    assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{e:?}");
    let e = within(STEP, "still in it", client.simple_query("SELECT 1"))
        .await
        .expect_err("until it ends");
    assert_eq!(e.code().map(|c| c.code()), Some("25P02"), "{e:?}");
    within(STEP, "rollback", client.batch_execute("ROLLBACK"))
        .await
        .expect("the client ends it");
    assert_eq!(
        show(&client, "SELECT pg_is_in_recovery()", AFTER_FAULT).await,
        "f"
    );
    assert_eq!(show(&client, "SHOW work_mem", STEP).await, "7MB");
    assert_eq!(show(&client, "SHOW lock_timeout", STEP).await, "0");
    assert_eq!(show(&client, "EXECUTE inside", STEP).await, "2");
    assert!(heard.try_recv().is_err(), "nothing else was heard");
}

/// A COMMIT in flight when the primary fails, of a transaction that changed nothing the
/// session holds: answered as in transaction mode (08007, its outcome unknown), and the
/// session goes on, rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_flight_gets_08007_and_the_session_goes_on() {
    let c = start().await;
    let (client, mut heard) = client(&c).await;
    let sql = "SET work_mem = '7MB'; PREPARE twice(int) AS SELECT $1 * 2";
    within(STEP, sql, client.batch_execute(sql)).await.unwrap();
    let sql = "BEGIN; SELECT 1";
    within(STEP, sql, client.batch_execute(sql)).await.unwrap();
    let _freeze = c.inject(Fault::Freeze).await;
    let e = within(AFTER_FAULT, "the COMMIT", client.simple_query("COMMIT"))
        .await
        .expect_err("its server froze");
    assert_eq!(e.code().map(|c| c.code()), Some("08007"), "{e:?}");
    c.promote_standby().await;
    assert_eq!(show(&client, "SHOW work_mem", AFTER_FAULT).await, "7MB");
    assert_eq!(show(&client, "EXECUTE twice(2)", STEP).await, "4");
    assert_eq!(show(&client, "SELECT pg_is_in_recovery()", STEP).await, "f");
    assert!(heard.try_recv().is_err(), "nothing else was heard");
}

/// A driver's statement in a transaction (tokio-postgres prepares it by name, then binds it)
/// in flight when the primary fails: the transaction is rolled back (40001) and the session
/// goes on, since a statement the driver was never told is prepared is nothing it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_query_in_a_transaction_gets_40001_and_the_session_goes_on() {
    let c = start().await;
    let (client, mut heard) = client(&c).await;
    let sql = "SET work_mem = '7MB'";
    within(STEP, sql, client.batch_execute(sql)).await.unwrap();
    within(STEP, "begin", client.batch_execute("BEGIN"))
        .await
        .unwrap();
    let _freeze = c.inject(Fault::Freeze).await;
    let e = within(
        AFTER_FAULT,
        "the statement",
        client.query_one("SELECT $1::int", &[&1i32]),
    )
    .await
    .expect_err("its server froze");
    assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{e:?}");
    c.promote_standby().await;
    within(STEP, "rollback", client.batch_execute("ROLLBACK"))
        .await
        .expect("the client ends it");
    assert_eq!(show(&client, "SHOW work_mem", AFTER_FAULT).await, "7MB");
    assert_eq!(show(&client, "SELECT pg_is_in_recovery()", STEP).await, "f");
    assert!(heard.try_recv().is_err(), "nothing else was heard");
}

/// A failover during the rebuild itself: the primary that followed is lost while the session's
/// state is being replayed there (held on a lock its PREPARE needs); the rebuild goes back to
/// the gate and the session is rebuilt on the primary after it, with no error to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_lost_during_the_rebuild_is_followed_by_the_next() {
    let c = start().await;
    let (client, mut heard) = client(&c).await;
    let sql = "CREATE TABLE locked (a int); SET work_mem = '7MB'; \
               PREPARE counted AS SELECT count(*) FROM locked";
    within(STEP, sql, client.batch_execute(sql)).await.unwrap();
    let replicated = "SELECT count(*) FROM pg_class WHERE relname = 'locked'";
    within(STEP, "the table on the standby", async {
        while Cluster::psql_on(&c.standby, "app", replicated).await != "1" {
            // A poll interval, not a synchronisation.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Held in the gate (PAUSE) until the new primary's table is locked.
    let pauses = &c.proxy.proxy.pauses;
    pauses.pause(None);
    let _crash = c.inject(Fault::Crash).await;
    c.promote_standby().await;
    c.wait_for_primary(&c.standby.addr(), AFTER_FAULT).await;
    let direct = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        c.standby.port()
    );
    let (locker, connection) = within(STEP, "connect", tokio_postgres::connect(&direct, NoTls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let lock = "BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE";
    within(STEP, lock, locker.batch_execute(lock))
        .await
        .unwrap();
    pauses.resume(None);
    let replaying = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%PREPARE counted%' \
                     AND wait_event_type = 'Lock'";
    within(STEP, "the replay waiting on the lock", async {
        while Cluster::psql_on(&c.standby, "app", replaying).await != "1" {
            // A poll interval, not a synchronisation.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The new primary crashes (its lock goes with it) and comes back on its timeline.
    let standby = c.standby.clone();
    blocking("kill the new primary", move || standby.kill()).await;
    let standby = c.standby.clone();
    blocking("restart the new primary", move || standby.start_again()).await;
    assert_eq!(show(&client, "SHOW work_mem", AFTER_FAULT).await, "7MB");
    assert_eq!(show(&client, "EXECUTE counted", STEP).await, "0");
    assert_eq!(show(&client, "SELECT pg_is_in_recovery()", STEP).await, "f");
    assert!(heard.try_recv().is_err(), "nothing else was heard");
}
