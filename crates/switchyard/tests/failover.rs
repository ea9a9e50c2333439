//! Failover through the real proxy (design.md §1–§2, issue 3): for each fault — crash (SIGKILL),
//! freeze (SIGSTOP of the whole server) and blackhole (loopback packets dropped with iptables) —
//! one cluster (primary + synchronous streaming standby, DEFAULT failover settings, transaction
//! pooling) and clients in every state when the fault hits:
//!
//! | client  | state at the fault                              | must get                         |
//! | ------- | ----------------------------------------------- | -------------------------------- |
//! | idle    | connected, no transaction; speaks once the      | nothing; its statement waits in  |
//! |         | proxy has no primary                            | the gate, runs on the new        |
//! |         |                                                 | primary ≤ 2 s after promotion    |
//! | fresh   | idle, on a pool with no idle server connection; | the same: never an error, never  |
//! |         | its statement is sent right at the fault        | a write on the old primary       |
//! | txbusy  | inside a transaction, a statement running       | 40001 ≤ 3 s; ROLLBACK; retry     |
//! | txidle  | inside a transaction, next statement sent at    | 40001 ≤ 3 s; ROLLBACK; retry     |
//! |         | the fault                                       |                                  |
//! | long    | long autocommit query running                   | 08007 ≤ 3 s                      |
//! | commit  | COMMIT running (a deferred trigger sleeps)      | 08007 ≤ 3 s                      |
//! | commit… | the same COMMIT sent as a named statement       | 08007 ≤ 3 s (never 40001: the    |
//! |         | prepared earlier, as an unnamed extended-       | transaction may have committed)  |
//! |         | protocol statement, and as `INSERT …; COMMIT`   |                                  |
//! | writer  | autocommit inserts in a loop, throughout        | at most one error, 08007         |
//!
//! Then every connection must still work and land on the promoted standby
//! (`pg_is_in_recovery()` false, `inet_server_port()` = its port), every commit the old primary
//! acknowledged must be on the new one (synchronous replication), and once the old primary is
//! back (restarted, thawed, unblocked; its synchronous-commit waits released so that whatever
//! reached it becomes visible) the proxy keeps it fenced and it holds nothing written after the
//! fault was detected. Contract checks after the promotion are collected and reported together.
//!
//! Each run holds a process-wide lock so the three faults do not compete for the (2-core) machine
//! under `cargo test`; the measured figures are printed with `eprintln!`.

mod common;

use common::cluster::{
    Answer, Cluster, ClusterOptions, Fault, Injected, Promotion, blocking, first_value, send, step,
    where_am_i, why,
};
use common::{STEP, backend_pid, connect, sqlstate, within};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use switchyard_localpg::iptables_available;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement};

/// Fault → answer for every in-flight client (target 2 s, plus slack).
const ANSWER_BOUND: Duration = Duration::from_secs(3);
/// Promotion → first successful write (target 1 s, plus slack).
const PROMOTION_BOUND: Duration = Duration::from_secs(2);
const LONG_SQL: &str = "select pg_sleep(60) /* long */";
const TXBUSY_SQL: &str = "select pg_sleep(60) /* txbusy */";
/// Pause between two writer inserts: keeps the loop from eating a core the timers need.
const WRITER_PACE: Duration = Duration::from_millis(10);
/// Commits the writer makes before the fault.
const WRITES_BEFORE_FAULT: usize = 20;
/// Server connections per pool: more than the test's clients, so none waits for a slot.
const POOL_SIZE: usize = 16;
/// The database of the `fresh` client: its pool's only server connection is held by another
/// client, so the `fresh` statement needs a new one.
const FRESH_DB: &str = "app2";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SCHEMA: &str = "\
CREATE TABLE t (id bigserial PRIMARY KEY, who text NOT NULL, phase text NOT NULL, n int);
CREATE TABLE slow_commit (x int);
CREATE FUNCTION sleep_at_commit() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER sleep_at_commit AFTER INSERT ON slow_commit
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION sleep_at_commit();";

/// The clients whose state the fault interrupts.
struct Clients {
    idle: Arc<Client>,
    txbusy: Arc<Client>,
    txidle: Arc<Client>,
    long: Arc<Client>,
    commit: Arc<Client>,
    /// In a transaction with a named `COMMIT` statement prepared earlier (as pgjdbc does).
    commit_named: (Arc<Client>, Statement),
    /// In a transaction; sends COMMIT as an unnamed extended-protocol statement.
    commit_unnamed: Arc<Client>,
    /// In a transaction; sends `INSERT …; COMMIT` as one simple query.
    commit_multi: Arc<Client>,
    fresh: Arc<Client>,
    /// Idle before the fault; sends a lone BEGIN at the fault.
    begin: Arc<Client>,
    /// Holds the only server connection of the `fresh` client's pool (inside a transaction).
    _hold: Client,
}

/// Requests running on the primary when the fault hits.
struct InFlight {
    txbusy: JoinHandle<Answer>,
    long: JoinHandle<Answer>,
    commit: JoinHandle<Answer>,
    commit_named: JoinHandle<Answer>,
    commit_unnamed: JoinHandle<Answer>,
    commit_multi: JoinHandle<Answer>,
}

/// The sleeping statements [`start_in_flight`] waits for on the primary.
const IN_FLIGHT_SLEEPS: &str = "6";

/// Executes a statement prepared earlier (Bind/Execute of a named statement) from a task.
fn send_prepared(client: &Arc<Client>, statement: &Statement) -> JoinHandle<Answer> {
    let (client, statement) = (client.clone(), statement.clone());
    tokio::spawn(async move {
        let r = client.execute(&statement, &[]).await.map(|_| Vec::new());
        (r, Instant::now())
    })
}

/// Sends `sql` as an unnamed extended-protocol statement (Parse/Bind/Execute/Sync at once).
fn send_unnamed(client: &Arc<Client>, sql: &'static str) -> JoinHandle<Answer> {
    let client = client.clone();
    tokio::spawn(async move {
        let r = client.query_typed(sql, &[]).await.map(|_| Vec::new());
        (r, Instant::now())
    })
}

async fn connect_clients(c: &Cluster) -> Clients {
    let client = || async { Arc::new(c.client().await) };
    let app2 = |c: &Cluster| {
        c.conninfo("")
            .replace("dbname=app", &format!("dbname={FRESH_DB}"))
    };
    let fresh = Arc::new(connect(&app2(c)).await.expect("connect to app2"));
    let hold = connect(&app2(c)).await.expect("connect to app2");
    let named = client().await;
    let commit_statement = within(STEP, "prepare COMMIT", named.prepare("COMMIT"))
        .await
        .expect("prepare COMMIT");
    let clients = Clients {
        idle: client().await,
        txbusy: client().await,
        txidle: client().await,
        long: client().await,
        commit: client().await,
        commit_named: (named, commit_statement),
        commit_unnamed: client().await,
        commit_multi: client().await,
        fresh,
        begin: client().await,
        _hold: hold,
    };
    step(&clients.idle, "select 1").await;
    step(&clients.begin, "select 1").await;
    step(&clients._hold, "BEGIN; select 1").await;
    step(
        &clients.txbusy,
        "BEGIN; INSERT INTO t (who, phase) VALUES ('txbusy', 'pre')",
    )
    .await;
    step(
        &clients.txidle,
        "BEGIN; INSERT INTO t (who, phase) VALUES ('txidle', 'pre')",
    )
    .await;
    step(&clients.commit, "BEGIN; INSERT INTO slow_commit VALUES (1)").await;
    let slow = "BEGIN; INSERT INTO slow_commit VALUES (1)";
    step(&clients.commit_named.0, slow).await;
    step(&clients.commit_unnamed, slow).await;
    step(&clients.commit_multi, "BEGIN").await;
    clients
}

/// Starts the long requests and waits until the primary is really running all three of them.
async fn start_in_flight(c: &Cluster, cl: &Clients) -> InFlight {
    let in_flight = InFlight {
        txbusy: send(&cl.txbusy, TXBUSY_SQL),
        long: send(&cl.long, LONG_SQL),
        commit: send(&cl.commit, "COMMIT"),
        commit_named: send_prepared(&cl.commit_named.0, &cl.commit_named.1),
        commit_unnamed: send_unnamed(&cl.commit_unnamed, "COMMIT"),
        commit_multi: send(
            &cl.commit_multi,
            "INSERT INTO slow_commit VALUES (1); COMMIT",
        ),
    };
    let primary = c.primary.clone();
    let running = blocking("the sleeps to run on the primary", move || {
        let deadline = Instant::now() + STEP;
        loop {
            let n = primary
                .psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")?;
            if n == IN_FLIGHT_SLEEPS || Instant::now() >= deadline {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;
    assert_eq!(
        running, IN_FLIGHT_SLEEPS,
        "sleeping statements on the primary"
    );
    in_flight
}

/// What the writer saw: acknowledged `n`s with the port that acknowledged them, and errors.
#[derive(Debug, Default)]
struct WriterLog {
    acked: Vec<(i32, i32, Instant)>,
    errors: Vec<(i32, String, Instant)>,
}

/// Waits until the writer has [`WRITES_BEFORE_FAULT`] acknowledged commits.
async fn wait_for_writer(progress: &AtomicUsize) {
    within(STEP, "the writer's first commits", async {
        while progress.load(Ordering::SeqCst) < WRITES_BEFORE_FAULT {
            tokio::time::sleep(WRITER_PACE).await;
        }
    })
    .await;
}

fn start_writer(
    client: Client,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> JoinHandle<WriterLog> {
    tokio::spawn(async move {
        let mut log = WriterLog::default();
        let stmt = client
            .prepare(
                "INSERT INTO t (who, phase, n) VALUES ('writer', 'any', $1) \
                 RETURNING inet_server_port()",
            )
            .await
            .expect("prepare the writer's insert");
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            match tokio::time::timeout(STEP, client.query_one(&stmt, &[&n])).await {
                Ok(Ok(row)) => {
                    log.acked.push((n, row.get(0), Instant::now()));
                    progress.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Err(e)) => log.errors.push((n, short(&e), Instant::now())),
                Err(_) => {
                    log.errors.push((n, "stuck".into(), Instant::now()));
                    break;
                }
            }
            tokio::time::sleep(WRITER_PACE).await;
        }
        log
    })
}

/// The SQLSTATE alone when it is the expected 08007, else the whole story.
fn short(e: &tokio_postgres::Error) -> String {
    if sqlstate(e) == "08007" {
        "08007".into()
    } else {
        why(e)
    }
}

/// Contract violations found after the promotion, reported together at the end.
#[derive(Default)]
struct Verdict(Vec<String>);

impl Verdict {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn finish(self, fault: Fault) {
        assert!(
            self.0.is_empty(),
            "failover[{fault:?}]: {} contract violation(s):\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

/// Awaits an in-flight request and checks its SQLSTATE and fault → answer time.
async fn expect_error(
    name: &str,
    h: JoinHandle<Answer>,
    want: &str,
    fault_at: Instant,
) -> Duration {
    let (r, at) = within(STEP, name, h).await.expect("request task");
    let took = at.saturating_duration_since(fault_at);
    match r {
        Ok(_) => panic!("{name}: succeeded after {took:?}, expected {want}"),
        Err(e) => assert_eq!(sqlstate(&e), want, "{name}: {} (after {took:?})", why(&e)),
    }
    assert!(
        took <= ANSWER_BOUND,
        "{name}: answered {took:?} after the fault (bound {ANSWER_BOUND:?})"
    );
    took
}

/// After a 40001: ROLLBACK on the same connection, then the retried transaction commits on the
/// new primary.
async fn rollback_and_retry(
    name: &'static str,
    client: &Client,
    new_port: i32,
) -> Result<(), String> {
    let step = |what: &'static str, r: Result<(), tokio_postgres::Error>| {
        r.map_err(|e| format!("{name}: {what}: {}", why(&e)))
    };
    let rollback = within(STEP, name, client.batch_execute("ROLLBACK")).await;
    step("ROLLBACK after 40001", rollback)?;
    step(
        "BEGIN of the retry",
        within(STEP, name, client.batch_execute("BEGIN")).await,
    )?;
    let sql = "INSERT INTO t (who, phase) VALUES ($1, 'post')";
    let insert = within(STEP, name, client.execute(sql, &[&name])).await;
    step("retried INSERT", insert.map(drop))?;
    let here = where_am_i(name, client).await;
    if here != (false, new_port) {
        return Err(format!(
            "{name}: retry ran on {here:?}, not the new primary"
        ));
    }
    step(
        "COMMIT of the retry",
        within(STEP, name, client.batch_execute("COMMIT")).await,
    )
}

/// The cluster and its clients.
struct Scene {
    c: Cluster,
    cl: Clients,
    old_port: i32,
    new_port: i32,
}

/// Measured figures of one run, printed before the contract checks are judged.
#[derive(Debug, Default)]
struct Figures {
    injected_in: Duration,
    detected: Duration,
    answers: Vec<(&'static str, Duration)>,
    promote_took: Duration,
    monitor_follows: Duration,
    first_write: Duration,
    writer_acked: usize,
    writer_errors: Vec<String>,
    timeline: Vec<String>,
}

impl Figures {
    fn print(&self, fault: Fault, started: Instant) {
        for line in &self.timeline {
            eprintln!("failover[{fault:?}]   {line}");
        }
        eprintln!(
            "failover[{fault:?}]: fault injected in {:?}; no primary after {:?}; answers {:?}; \
             pg_ctl promote took {:?}; promotion → monitor follows {:?}, → first write {:?}; \
             writer acked {} (errors {:?}); {:?} so far",
            self.injected_in,
            self.detected,
            self.answers,
            self.promote_took,
            self.monitor_follows,
            self.first_write,
            self.writer_acked,
            self.writer_errors,
            started.elapsed(),
        );
    }
}

async fn set_up() -> Scene {
    let options = ClusterOptions {
        sync_replication: true,
        ..ClusterOptions::default()
    };
    // Room for every client at once: nobody waits for a pool slot when the fault hits.
    let c = Cluster::start_with(options, |config| config.pool.size = POOL_SIZE).await;
    Cluster::psql_on(&c.primary, "app", SCHEMA).await;
    Cluster::psql_on(
        &c.primary,
        "postgres",
        &format!("CREATE DATABASE {FRESH_DB}"),
    )
    .await;
    Cluster::psql_on(&c.primary, FRESH_DB, "CREATE TABLE late (who text)").await;
    let cl = connect_clients(&c).await;
    Scene {
        old_port: i32::from(c.primary.port()),
        new_port: i32::from(c.standby.port()),
        c,
        cl,
    }
}

/// Injects the fault with every client in its state and checks each in-flight answer; returns
/// when the proxy has no primary (and the instant it was seen), the `fresh` client's request,
/// and what must be undone.
async fn hit(s: &Scene, fault: Fault, fig: &mut Figures) -> (Instant, Instant, Late, Injected) {
    let in_flight = start_in_flight(&s.c, &s.cl).await;
    let gen_before = s.c.topology().generation;
    // Times are measured from the START of the fault action (a kill waits for the processes to
    // be gone; clients may hear of it before it returns).
    let fault_at = Instant::now();
    let injected = s.c.inject(fault).await;
    fig.injected_in = fault_at.elapsed();
    let txidle = send(
        &s.cl.txidle,
        "INSERT INTO t (who, phase) VALUES ('txidle', 'during')",
    );
    let late = Late {
        fresh: send(
            &s.cl.fresh,
            "INSERT INTO late (who) VALUES ('fresh') RETURNING inet_server_port()",
        ),
        begin: send(&s.cl.begin, "BEGIN"),
    };
    let answers = async {
        vec![
            (
                "txbusy",
                expect_error("txbusy", in_flight.txbusy, "40001", fault_at).await,
            ),
            (
                "txidle",
                expect_error("txidle", txidle, "40001", fault_at).await,
            ),
            (
                "long",
                expect_error("long", in_flight.long, "08007", fault_at).await,
            ),
            (
                "commit",
                expect_error("commit", in_flight.commit, "08007", fault_at).await,
            ),
            (
                "commit_named",
                expect_error("commit_named", in_flight.commit_named, "08007", fault_at).await,
            ),
            (
                "commit_unnamed",
                expect_error(
                    "commit_unnamed",
                    in_flight.commit_unnamed,
                    "08007",
                    fault_at,
                )
                .await,
            ),
            (
                "commit_multi",
                expect_error("commit_multi", in_flight.commit_multi, "08007", fault_at).await,
            ),
        ]
    };
    let ((view, detected_at), answers) = tokio::join!(s.c.wait_for_no_primary(STEP), answers);
    assert!(view.generation > gen_before, "{view:?}");
    fig.detected = detected_at.saturating_duration_since(fault_at);
    fig.answers = answers;
    (fault_at, detected_at, late, injected)
}

/// Requests sent at the fault that must wait for the new primary rather than fail.
struct Late {
    fresh: JoinHandle<Answer>,
    begin: JoinHandle<Answer>,
}

/// The idle client's next statement waits in the gate until the test promotes the standby,
/// then runs there; the other clients' connections work on the new primary. Returns the
/// promotion's instants (see [`Promotion`]).
async fn promote(s: &Scene, fig: &mut Figures) -> Promotion {
    let client = s.cl.idle.clone();
    let idle = tokio::spawn(async move {
        let r = client
            .query_one(
                "INSERT INTO t (who, phase) VALUES ('idle', 'post') \
                 RETURNING pg_is_in_recovery(), inet_server_port()",
                &[],
            )
            .await;
        (r, Instant::now())
    });
    let promotion = s.c.promote_standby().await;
    fig.promote_took = promotion.took();
    let (_, followed_at) = s.c.wait_for_primary(&s.c.standby.addr(), STEP).await;
    fig.monitor_follows = promotion.then_until(followed_at);
    let (idle_r, idle_at) = within(STEP, "the idle client's gated statement", idle)
        .await
        .expect("task");
    let row = idle_r.unwrap_or_else(|e| panic!("idle: gated statement: {}", why(&e)));
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, i32>(1)),
        (false, s.new_port),
        "idle: the gated statement runs on the new primary"
    );
    fig.first_write = promotion.then_until(idle_at);
    assert!(
        fig.first_write <= PROMOTION_BOUND && promotion.may_precede(idle_at),
        "promotion → first write took {:?} (bound {PROMOTION_BOUND:?}; pg_ctl promote took {:?})",
        fig.first_write,
        promotion.took()
    );
    let others = [
        ("long", &s.cl.long),
        ("commit", &s.cl.commit),
        ("idle", &s.cl.idle),
    ];
    for (name, client) in others {
        let here = where_am_i(name, client).await;
        assert_eq!(
            here,
            (false, s.new_port),
            "{name}: next statement on the new primary"
        );
    }
    promotion
}

/// The writer saw at most one error, 08007 (its insert in flight at the fault); everything the
/// old primary acknowledged is on the new one; the old primary acknowledged nothing after the
/// fault was detected.
async fn check_writer(s: &Scene, log: &WriterLog, detected_at: Instant) {
    let bad: Vec<_> = log.errors.iter().filter(|e| e.1 != "08007").collect();
    assert!(
        bad.is_empty() && log.errors.len() <= 1,
        "writer errors: {:?}",
        log.errors
    );
    let by = |port: i32| log.acked.iter().filter(move |a| a.1 == port);
    assert!(
        by(s.old_port).count() >= WRITES_BEFORE_FAULT,
        "writes before the fault"
    );
    assert!(by(s.new_port).count() > 0, "writes after the failover");
    let late: Vec<_> = by(s.old_port).filter(|a| a.2 > detected_at).collect();
    assert!(
        late.is_empty(),
        "acknowledged by the old primary after detection: {late:?}"
    );
    let sql = "SELECT string_agg(n::text, ',') FROM t WHERE who = 'writer'";
    let on_new = Cluster::psql_on(&s.c.standby, "app", sql).await;
    let on_new: Vec<i32> = on_new.split(',').filter_map(|v| v.parse().ok()).collect();
    let lost: Vec<i32> = log
        .acked
        .iter()
        .map(|a| a.0)
        .filter(|n| !on_new.contains(n))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged commits missing on the new primary: {lost:?}"
    );
}

/// The old primary is back (writable, old timeline): the proxy keeps it fenced, and it holds
/// nothing written after the fault was detected.
async fn check_old_primary_fenced(s: &Scene, log: &WriterLog, v: &mut Verdict) {
    let old = s.c.primary.addr();
    let what = "the old primary to be probed again";
    let (view, _) = s.c.wait_for(STEP, what, |t| t.is_up(&old)).await;
    let new = Some(s.c.standby.addr());
    v.check(view.primary == new, || {
        format!("old primary not fenced: {view:?}")
    });
    let client = s.c.client().await;
    let sql = "INSERT INTO t (who, phase) VALUES ('after-return', 'post') \
               RETURNING inet_server_port()";
    match within(
        STEP,
        "a write after the old primary came back",
        client.query_one(sql, &[]),
    )
    .await
    {
        Ok(row) => v.check(row.get::<_, i32>(0) == s.new_port, || {
            format!(
                "write after the old primary came back ran on port {}",
                row.get::<_, i32>(0)
            )
        }),
        Err(e) => v.0.push(format!(
            "write after the old primary came back: {}",
            why(&e)
        )),
    }
    s.c.release_sync_waits_on_primary().await;
    let post = Cluster::psql_on(
        &s.c.primary,
        "app",
        "SELECT count(*) FROM t WHERE phase = 'post'",
    );
    let post = post.await;
    v.check(post == "0", || {
        format!("{post} row(s) written after the fault on the old primary")
    });
    let ns: Vec<String> = log
        .acked
        .iter()
        .filter(|a| a.1 == s.new_port)
        .map(|a| a.0.to_string())
        .collect();
    let sql = format!(
        "SELECT count(*) FROM t WHERE who = 'writer' AND n IN ({})",
        ns.join(",")
    );
    let dup = Cluster::psql_on(&s.c.primary, "app", &sql).await;
    v.check(dup == "0", || {
        format!("{dup} writer row(s) of the new primary on the old one")
    });
}

/// The `fresh` client's statement, sent at the fault while its pool had to open a connection,
/// is held in the gate and runs on the new primary — never an error, never the old primary.
async fn check_fresh(s: &Scene, fresh: JoinHandle<Answer>, promotion: Promotion, v: &mut Verdict) {
    let (r, at) = within(STEP, "the fresh client's statement", fresh)
        .await
        .expect("task");
    let after = promotion.then_until(at);
    match r {
        Ok(rows) => {
            let port = first_value(&rows);
            v.check(port == Some(s.new_port.to_string()), || {
                format!("fresh: statement sent at the fault ran on port {port:?}")
            });
            v.check(
                promotion.may_precede(at) && after <= PROMOTION_BOUND,
                || {
                    format!(
                        "fresh: answered {after:?} after the promotion (bound {PROMOTION_BOUND:?})"
                    )
                },
            );
        }
        Err(e) => v.0.push(format!(
            "fresh: statement sent at the fault (idle client, no idle server connection) got {} \
             — {:?} after the promotion{}",
            why(&e),
            after,
            if !promotion.may_precede(at) {
                " (answered BEFORE it)"
            } else {
                ""
            },
        )),
    }
    let on_old = Cluster::psql_on(&s.c.primary, FRESH_DB, "SELECT count(*) FROM late").await;
    v.check(on_old == "0", || {
        "fresh: the statement sent at the fault was executed on the OLD primary".into()
    });
}

/// A lone BEGIN sent at the fault changed nothing, so it is sent again on the new primary:
/// the client sees no error, and its transaction runs and commits there.
async fn check_begin(s: &Scene, begin: JoinHandle<Answer>, v: &mut Verdict) {
    let (r, _) = within(STEP, "the BEGIN sent at the fault", begin)
        .await
        .expect("task");
    if let Err(e) = r {
        v.0.push(format!(
            "begin: a lone BEGIN sent at the fault got {}",
            why(&e)
        ));
        return;
    }
    let sql = "INSERT INTO t (who, phase) VALUES ('begin', 'post') RETURNING inet_server_port()";
    let port = match within(
        STEP,
        "the statement after BEGIN",
        s.cl.begin.simple_query(sql),
    )
    .await
    {
        Ok(rows) => first_value(&rows),
        Err(e) => {
            v.0.push(format!(
                "begin: the statement after the BEGIN got {}",
                why(&e)
            ));
            return;
        }
    };
    v.check(port == Some(s.new_port.to_string()), || {
        format!("begin: the transaction ran on port {port:?}")
    });
    if let Err(e) = within(
        STEP,
        "COMMIT after BEGIN",
        s.cl.begin.simple_query("COMMIT"),
    )
    .await
    {
        v.0.push(format!("begin: COMMIT got {}", why(&e)));
    }
}

async fn run(fault: Fault) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut fig = Figures::default();
    let mut verdict = Verdict::default();
    let s = set_up().await;
    let stop_writer = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = start_writer(s.c.client().await, stop_writer.clone(), progress.clone());
    wait_for_writer(&progress).await;

    let topology_log = s.c.record_topology();
    let (fault_at, detected_at, late, injected) = hit(&s, fault, &mut fig).await;
    let promotion = promote(&s, &mut fig).await;
    stop_writer.store(true, Ordering::SeqCst);
    let log = within(STEP, "the writer to stop", writer)
        .await
        .expect("writer task");
    fig.writer_acked = log.acked.len();
    fig.writer_errors = log.errors.iter().map(|e| e.1.clone()).collect();
    let views = topology_log.stop().await;
    fig.timeline = views
        .iter()
        .map(|(at, t)| {
            let since = at.saturating_duration_since(fault_at);
            format!("+{since:?} gen {} {} {:?}", t.generation, t.state, t.health)
        })
        .collect();
    fig.print(fault, started);
    check_writer(&s, &log, detected_at).await;

    // The old primary comes back; the clients that lost their transaction retry only now, so
    // their retries also prove that writes stay off it.
    s.c.restore(injected).await;
    check_old_primary_fenced(&s, &log, &mut verdict).await;
    let mut post_rows = vec!["after-return", "begin", "idle"];
    for (name, client) in [("txbusy", &s.cl.txbusy), ("txidle", &s.cl.txidle)] {
        match rollback_and_retry(name, client, s.new_port).await {
            Ok(()) => post_rows.push(name),
            Err(e) => verdict.0.push(e),
        }
    }
    check_fresh(&s, late.fresh, promotion, &mut verdict).await;
    check_begin(&s, late.begin, &mut verdict).await;
    let post = "SELECT string_agg(who, ',' ORDER BY who) FROM t WHERE phase = 'post'";
    let on_new = Cluster::psql_on(&s.c.standby, "app", post).await;
    let want = post_rows.join(",");
    verdict.check(on_new == want, || {
        format!("rows written after the failover on the new primary: {on_new:?}, want {want:?}")
    });
    eprintln!("failover[{fault:?}]: done in {:?}", started.elapsed());
    verdict.finish(fault);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_of_the_primary() {
    run(Fault::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn freeze_of_the_primary() {
    run(Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blackhole_of_the_primary() {
    if !iptables_available() {
        eprintln!("skipped: iptables is not usable here (needs root and the iptables package)");
        return;
    }
    run(Fault::Blackhole).await;
}

/// A reload that restarts the cluster's monitor (its probe settings changed) after a failover:
/// the new monitor numbers its generations after the old one's, so the pools, which retired the
/// old numbers, serve requests of sessions old and new at once (they were sent back to the gate
/// over and over until failover_timeout when a new monitor counted from zero again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_after_a_failover_keeps_requests_flowing() {
    let cl = Cluster::start(ClusterOptions::default()).await;
    let old = cl.client().await;
    step(&old, "select 1").await;
    let primary = cl.primary.clone();
    blocking("kill the primary", move || primary.kill()).await;
    cl.wait_for_no_primary(STEP).await;
    cl.promote_standby().await;
    let standby = cl.standby.addr();
    cl.wait_for_primary(&standby, STEP).await;
    step(&old, "select 1").await;

    let mut config = cl.proxy.proxy.live.load().config.clone();
    config.failover.probe_interval = switchyard_config::Duration::millis(900);
    cl.proxy.proxy.reload(config).expect("reload");
    cl.wait_for_primary(&standby, STEP).await;
    let new = cl.client().await;
    for (who, c) in [("a session from before", &old), ("a new session", &new)] {
        let started = Instant::now();
        within(STEP, who, c.simple_query("select 1"))
            .await
            .unwrap_or_else(|e| panic!("{who}: {}", why(&e)));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{who} waited {:?}",
            started.elapsed()
        );
    }
}

/// A reload that restarts the cluster's monitor while the primary is healthy (a probe setting
/// changed, a member was added) is invisible to the data path: a transaction open across it
/// commits, idle connections are reused, the generation stays, and the cluster's counters go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_restarts_the_monitor_leaves_open_transactions_alone() {
    let cl = Cluster::start(ClusterOptions::default()).await;
    let c = cl.client().await;
    step(&c, "create table reload_t (x int)").await;
    step(&c, "begin; insert into reload_t values (1)").await;
    let backend = backend_pid(&c).await;
    let proxy = &cl.proxy.proxy;
    let before = proxy.router.monitor("main").expect("monitor");
    let generation = before.generation();
    let transactions = before.counters().transactions();
    assert!(transactions > 0, "counted before the reload");

    let mut config = proxy.live.load().config.clone();
    config.failover.probe_interval = switchyard_config::Duration::millis(900);
    // A member that accepts connections and never answers: it stays unprobed for a whole
    // probe_timeout, is then found down, and changes nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    config
        .clusters
        .get_mut("main")
        .expect("cluster main")
        .members
        .push(silent_addr.clone());
    proxy.reload(config).expect("reload");
    let after = proxy.router.monitor("main").expect("monitor");
    assert!(
        !Arc::ptr_eq(&before, &after),
        "the reload restarted the monitor"
    );
    let primary = cl.primary.addr();
    assert_eq!(
        after.view().primary_addr(),
        Some(primary.as_str()),
        "kept at once"
    );

    step(&c, "insert into reload_t values (2); commit").await;
    let rows = within(
        STEP,
        "count",
        c.query_one("select count(*) from reload_t", &[]),
    )
    .await
    .expect("count");
    assert_eq!(
        rows.get::<_, i64>(0),
        2,
        "the transaction open across the reload committed"
    );
    // The added member's first probe fails; the primary and its generation stay.
    cl.wait_for(STEP, "the added member to be probed", |t| {
        t.health
            .iter()
            .any(|(a, h)| *a == silent_addr && h != "Unknown")
    })
    .await;
    assert_eq!(
        backend_pid(&c).await,
        backend,
        "the same server connection, kept idle"
    );
    assert_eq!(after.generation(), generation, "no topology change");
    assert_eq!(before.generation(), generation, "the old handle agrees");
    assert!(
        after.counters().transactions() > transactions,
        "the cluster's counters carried on"
    );
}

/// A reload that takes the primary out of the members: the new monitor has no primary under a
/// new generation, and a transaction open on the removed primary is answered as in a failover
/// instead of going on writing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_primary_cuts_off_its_transactions() {
    let cl = Cluster::start(ClusterOptions::default()).await;
    let c = cl.client().await;
    step(&c, "create table removed_t (x int)").await;
    step(&c, "begin; insert into removed_t values (1)").await;
    let proxy = &cl.proxy.proxy;
    let generation = proxy.router.monitor("main").expect("monitor").generation();
    let mut config = proxy.live.load().config.clone();
    config
        .clusters
        .get_mut("main")
        .expect("cluster main")
        .members
        .retain(|m| *m != cl.primary.addr());
    proxy.reload(config).expect("reload");
    let after = proxy.router.monitor("main").expect("monitor");
    assert!(after.generation() > generation, "a new generation");
    assert_eq!(
        after.view().primary_addr(),
        None,
        "the standby is no primary"
    );
    let e = within(
        STEP,
        "the open transaction",
        c.batch_execute("insert into removed_t values (2); commit"),
    )
    .await
    .expect_err("no more writes to the removed primary");
    let code = sqlstate(&e);
    assert!(["40001", "08007"].contains(&code.as_str()), "{e:?}");
}
