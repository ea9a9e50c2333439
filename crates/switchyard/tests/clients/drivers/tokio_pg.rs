//! The driver matrix's scenarios with tokio-postgres, run in the test process (see README.md
//! here). Each returns its detail, fails with why, or is skipped.

use crate::common::{STEP, within};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_postgres::{AsyncMessage, Client, NoTls};

pub enum Outcome {
    Ok(String),
    Failed(String),
    Skipped(String),
}

/// Where and as whom the scenarios connect.
pub struct Target {
    pub conninfo: String,
    pub admin_conninfo: String,
    pub user: String,
    pub session: bool,
    pub table: String,
}

impl Target {
    /// Switchyard at `port`, database `db`: the SCRAM user, and `postgres` as admin.
    pub fn new(port: u16, db: &str, session: bool, table: &str) -> Self {
        use crate::common::{SCRAM_PASSWORD, SCRAM_USER};
        let base = format!("host=127.0.0.1 port={port} dbname={db}");
        Self {
            conninfo: format!("{base} user={SCRAM_USER} password='{SCRAM_PASSWORD}'"),
            admin_conninfo: format!("{base} user=postgres"),
            user: SCRAM_USER.into(),
            session,
            table: table.into(),
        }
    }
}

type Result<T = String> = std::result::Result<T, String>;

fn expect(cond: bool, what: impl std::fmt::Display) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(format!("expected: {what}"))
    }
}

fn db(e: tokio_postgres::Error) -> String {
    match e.code() {
        Some(c) => format!("{} {e}", c.code()),
        None => e.to_string(),
    }
}

/// Connects; notifications (if `notices` is given) go to it.
async fn connect_with(
    info: &str,
    notices: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>>,
) -> Result<Client> {
    let (client, mut conn) = within(STEP, "connect", tokio_postgres::connect(info, NoTls))
        .await
        .map_err(db)?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let (AsyncMessage::Notification(n), Some(tx)) = (m, &notices) {
                let _ = tx.send(n);
            }
        }
    });
    Ok(client)
}

async fn connect(t: &Target) -> Result<Client> {
    connect_with(&t.conninfo, None).await
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(c: &Client, sql: &str) -> Result<T> {
    let row = within(STEP, sql, c.query_one(sql, &[])).await.map_err(db)?;
    Ok(row.get(0))
}

async fn connect_scram(t: &Target) -> Result {
    let c = connect(t).await?;
    let user: String = one(&c, "SELECT current_user::text").await?;
    expect(user == t.user, &user)?;
    Ok(format!("as {user}"))
}

async fn simple_query(t: &Target) -> Result {
    let c = connect(t).await?;
    let got = within(STEP, "simple", c.simple_query("SELECT 1; SELECT 2"))
        .await
        .map_err(db)?;
    let rows = got
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    expect(rows == 2, format!("two rows, got {rows}"))?;
    Ok(String::new())
}

async fn extended_query(t: &Target) -> Result {
    let c = connect(t).await?;
    let row = within(STEP, "q", c.query_one("SELECT $1::int + 1", &[&41i32]))
        .await
        .map_err(db)?;
    expect(row.get::<_, i32>(0) == 42, "42")?;
    Ok(String::new())
}

async fn prepared_reuse(t: &Target) -> Result {
    let mut c = connect(t).await?;
    let stmt = within(STEP, "prepare", c.prepare("SELECT $1::int * 2"))
        .await
        .map_err(db)?;
    for i in 0..3i32 {
        let tx = within(STEP, "begin", c.transaction()).await.map_err(db)?;
        let row = within(STEP, "q", tx.query_one(&stmt, &[&i]))
            .await
            .map_err(db)?;
        expect(row.get::<_, i32>(0) == i * 2, i)?;
        within(STEP, "commit", tx.commit()).await.map_err(db)?;
    }
    Ok("prepare(), 3 transactions".into())
}

async fn pipeline(t: &Target) -> Result {
    let c = connect(t).await?;
    // Futures polled together are written in one flight.
    let queries = (0..10i32).map(|i| {
        let c = &c;
        async move { c.query_one("SELECT $1::int", &[&i]).await }
    });
    let rows = within(STEP, "pipeline", futures_util::future::join_all(queries)).await;
    for (i, r) in rows.into_iter().enumerate() {
        expect(r.map_err(db)?.get::<_, i32>(0) == i as i32, i)?;
    }
    Ok("10 queries polled together".into())
}

async fn copy(t: &Target) -> Result {
    let c = connect(t).await?;
    let table = &t.table;
    let ddl = format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, name text)");
    within(STEP, "ddl", c.batch_execute(&ddl))
        .await
        .map_err(db)?;
    let text: String = (0..1000).map(|i| format!("{i}\trow {i}\n")).collect();
    let sink = within(
        STEP,
        "copy in",
        c.copy_in(&format!("COPY {table} FROM STDIN")),
    )
    .await
    .map_err(db)?;
    futures_util::pin_mut!(sink);
    within(STEP, "send", sink.send(bytes::Bytes::from(text.clone())))
        .await
        .map_err(db)?;
    let n = within(STEP, "finish", sink.finish()).await.map_err(db)?;
    expect(n == 1000, n)?;
    let out = within(
        STEP,
        "copy out",
        c.copy_out(&format!("COPY {table} TO STDOUT")),
    )
    .await
    .map_err(db)?;
    let chunks: Vec<_> = within(STEP, "read", out.collect()).await;
    let mut got = Vec::new();
    for chunk in chunks {
        got.extend_from_slice(&chunk.map_err(db)?);
    }
    expect(got == text.as_bytes(), "the same rows out")?;
    within(
        STEP,
        "drop",
        c.batch_execute(&format!("DROP TABLE {table}")),
    )
    .await
    .map_err(db)?;
    Ok("1000 rows in and out".into())
}

async fn cancel(t: &Target) -> Result {
    let c = connect(t).await?;
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let r = within(
        Duration::from_secs(25),
        "sleep",
        c.simple_query("SELECT pg_sleep(20)"),
    )
    .await;
    let took = started.elapsed();
    let code = r.err().and_then(|e| e.code().map(|c| c.code().to_string()));
    expect(
        code.as_deref() == Some("57014"),
        format!("57014, got {code:?}"),
    )?;
    expect(took < Duration::from_secs(10), format!("took {took:?}"))?;
    within(STEP, "canceller", canceller)
        .await
        .map_err(|e| e.to_string())?
        .map_err(db)?;
    let after: String = one(&c, "SELECT 'after'::text").await?;
    expect(after == "after", "usable after")?;
    Ok(format!("cancelled after {:.2}s", took.as_secs_f64()))
}

async fn listen_notify(t: &Target) -> Result<Outcome> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = connect_with(&t.conninfo, Some(tx)).await?;
    let sender = connect(t).await?;
    within(STEP, "listen", listener.batch_execute("LISTEN matrix"))
        .await
        .map_err(db)?;
    within(
        STEP,
        "notify",
        sender.batch_execute("NOTIFY matrix, 'hello'"),
    )
    .await
    .map_err(db)?;
    let n = within(Duration::from_secs(10), "notification", rx.recv())
        .await
        .ok_or("no notification")?;
    expect(n.payload() == "hello", n.payload())?;
    if !t.session {
        return Ok(Outcome::Ok(TRANSACTION_NOTIFY.into()));
    }
    // tokio-postgres keeps the key to itself: the sender's own pg_backend_pid() stands in.
    let pid: i32 = one(&sender, "SELECT pg_backend_pid()").await?;
    expect(
        n.process_id() == pid,
        format!("sender pid {} vs {pid}", n.process_id()),
    )?;
    Ok(Outcome::Ok(
        "delivered; sender pid is the sender's backend".into(),
    ))
}

async fn terminated_backend(t: &Target) -> Result {
    let c = connect(t).await?;
    let admin = connect_with(&t.admin_conninfo, None).await?;
    let pid: i32 = one(&c, "SELECT pg_backend_pid()").await?;
    let ended: bool = one(&admin, &format!("SELECT pg_terminate_backend({pid}, 5000)")).await?;
    // (Transaction mode: another client may have ended that server process already.)
    expect(ended || !t.session, "terminated")?;
    if t.session {
        let next = within(STEP, "next", c.simple_query("SELECT 1")).await;
        let state = match next {
            Ok(_) => return Err("the next query still ran".into()),
            Err(e) => e
                .code()
                .map_or("connection closed".into(), |c| c.code().to_string()),
        };
        let again = connect(t).await?;
        let v: i32 = one(&again, "SELECT 1").await?;
        expect(v == 1, "new connection")?;
        return Ok(format!("next query: {state}; a new connection works"));
    }
    let v: i32 = one(&c, "SELECT 1").await?;
    expect(v == 1, "next query")?;
    Ok("next query works".into())
}

async fn client_encoding(t: &Target) -> Result {
    let c = connect(t).await?;
    within(
        STEP,
        "set",
        c.batch_execute("SET client_encoding = 'utf-8'"),
    )
    .await
    .map_err(db)?;
    let shown: String = one(&c, "SHOW client_encoding").await?;
    expect(shown == "UTF8", format!("SHOW {shown}"))?;
    Ok("SHOW: UTF8".into())
}

/// In transaction mode a notification comes through the listener's hub: its sender pid is the
/// pooled server process the NOTIFY ran on, not the process id of the sender's key.
pub const TRANSACTION_NOTIFY: &str =
    "delivered through the hub (transaction mode: the sender pid is its server's)";

fn outcome(r: Result) -> Outcome {
    match r {
        Ok(d) => Outcome::Ok(d),
        Err(e) => Outcome::Failed(e),
    }
}

/// Every scenario, in the matrix's order.
pub async fn run_all(t: &Target) -> Vec<(&'static str, Outcome)> {
    vec![
        ("connect_scram", outcome(connect_scram(t).await)),
        ("simple_query", outcome(simple_query(t).await)),
        ("extended_query", outcome(extended_query(t).await)),
        ("prepared_reuse", outcome(prepared_reuse(t).await)),
        ("pipeline", outcome(pipeline(t).await)),
        ("copy", outcome(copy(t).await)),
        ("cancel", outcome(cancel(t).await)),
        (
            "listen_notify",
            listen_notify(t).await.unwrap_or_else(Outcome::Failed),
        ),
        ("terminated_backend", outcome(terminated_backend(t).await)),
        ("client_encoding", outcome(client_encoding(t).await)),
        (
            "pool_health",
            Outcome::Skipped(
                "tokio-postgres has no pool of its own (deadpool or bb8 bring one)".into(),
            ),
        ),
    ]
}

/// What a client saw while the primary failed over (the other drivers print the same).
#[derive(Debug, Default)]
pub struct FailoverLog {
    pub errors: Vec<String>,
    pub longest: Duration,
    pub total: u32,
    pub after_last_error: u32,
}

/// One connection writing every 50 ms for `seconds`, reconnecting after an error that ended it.
pub async fn failover(t: &Target, seconds: Duration) -> FailoverLog {
    let mut log = FailoverLog::default();
    let deadline = Instant::now() + seconds;
    let mut conn: Option<Client> = None;
    let sql = format!("INSERT INTO {} (driver) VALUES ('tokio_pg')", t.table);
    while Instant::now() < deadline {
        let started = Instant::now();
        let wrote = async {
            if conn.is_none() {
                conn = Some(connect(t).await?);
            }
            let c = conn.as_ref().expect("connected");
            c.batch_execute(&sql).await.map_err(db)
        };
        match tokio::time::timeout(Duration::from_secs(30), wrote).await {
            Ok(Ok(())) => {
                log.total += 1;
                log.after_last_error += 1;
            }
            Ok(Err(e)) => {
                // `db` puts the SQLSTATE first when there is one.
                let code = e.split(' ').next().filter(|c| c.len() == 5);
                log.errors
                    .push(code.unwrap_or("connection error").to_string());
                log.after_last_error = 0;
                conn = None;
            }
            Err(_) => {
                log.errors.push("hung for 30 s".into());
                conn = None;
            }
        }
        log.longest = log.longest.max(started.elapsed());
        // Pacing of the workload, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log
}
