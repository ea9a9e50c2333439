//! Fencing and the failover gate, end to end, against a real primary and streaming standby with
//! default failover settings (design.md §1 promises 1–5, §3):
//!
//! - an old primary that comes back writable on the old timeline (thawed after a freeze, or
//!   restarted after a crash) never receives a write once the standby was promoted;
//! - a split brain (standby promoted while the old primary keeps running) resolves to the higher
//!   timeline, also for a proxy that starts cold in the middle of it;
//! - with no primary, new work waits `failover_timeout` in the gate, then gets 57P03 on a
//!   connection that stays usable; work held in the gate runs on the standby once it is promoted;
//! - a slow query and a saturated pool cause no false failover.
//!
//! A same-timeline conflict (two writable members on one timeline) cannot be produced with real
//! servers; `decide`'s unit table ("split brain") covers it.
//!
//! Tests that inject faults or saturate the machine take [`SERIAL`], so their timings do not
//! disturb each other on a small machine; the slow-query test runs beside them on purpose.

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard::serve::{self, Running};
use switchyard_config::{Config, Duration as CfgDuration, PoolMode};
use switchyard_localpg::PgServer;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Fault and load tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a blocking fixture call without stalling the proxy's tasks on this worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// One member as a test sees it (plain data, taken from the monitor's view).
#[derive(Debug, Clone)]
struct MemberSeen {
    addr: String,
    health: String,
    writable: Option<bool>,
    timeline: Option<u32>,
}

/// A monitor view as a test sees it.
#[derive(Debug, Clone)]
struct Seen {
    /// When the test saw it.
    at: Instant,
    generation: u64,
    state: String,
    /// The member the state names as primary.
    primary: Option<String>,
    members: Vec<MemberSeen>,
}

/// Turns a `TopologyView` into a [`Seen`] (a macro: this crate does not depend on the topology
/// crate, so its types cannot be named here, only used).
macro_rules! seen {
    ($view:expr) => {{
        let v = $view;
        let state = format!("{:?}", v.state);
        let members: Vec<MemberSeen> = v
            .members
            .iter()
            .map(|m| MemberSeen {
                addr: m.addr.clone(),
                health: format!("{:?}", m.health),
                writable: m.facts.as_ref().map(|f| !f.in_recovery),
                timeline: m.facts.as_ref().map(|f| f.timeline),
            })
            .collect();
        let primary = state
            .starts_with("Primary")
            .then(|| {
                members
                    .iter()
                    .find(|m| state.contains(&format!("{:?}", m.addr)))
            })
            .flatten()
            .map(|m| m.addr.clone());
        Seen {
            at: Instant::now(),
            generation: v.generation,
            state,
            primary,
            members,
        }
    }};
}

/// The current view of cluster `main`.
fn view(proxy: &Running) -> Seen {
    let monitor = proxy.proxy.router.monitor("main").expect("cluster main");
    seen!(monitor.view())
}

/// Waits (bounded) until the view of cluster `main` satisfies `pred`.
async fn wait_for(
    proxy: &Running,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Seen) -> bool,
) -> Seen {
    let mut rx = proxy
        .proxy
        .router
        .monitor("main")
        .expect("cluster main")
        .subscribe();
    let wait = async {
        loop {
            let s = seen!(rx.borrow_and_update().clone());
            if pred(&s) {
                return s;
            }
            rx.changed().await.expect("monitor stopped");
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(s) => s,
        Err(_) => panic!(
            "timed out after {limit:?} waiting for {what}; last view: {:?}",
            view(proxy)
        ),
    }
}

/// Every view cluster `main` publishes while this lives.
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    fn start(proxy: &Running) -> Self {
        let mut rx = proxy
            .proxy
            .router
            .monitor("main")
            .expect("cluster main")
            .subscribe();
        let seen = Arc::new(Mutex::new(vec![seen!(rx.borrow_and_update().clone())]));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let s = seen!(rx.borrow_and_update().clone());
                sink.lock().expect("recorder lock").push(s);
            }
        });
        Self { seen, task }
    }

    fn all(&self) -> Vec<Seen> {
        self.seen.lock().expect("recorder lock").clone()
    }

    /// Distinct generations seen, and every member health other than `Up` (with its address).
    fn summary(&self) -> (Vec<u64>, Vec<String>) {
        let all = self.all();
        let mut generations: Vec<u64> = all.iter().map(|s| s.generation).collect();
        generations.dedup();
        let mut blips: Vec<String> = all
            .iter()
            .flat_map(|s| s.members.iter())
            .filter(|m| m.health != "Up")
            .map(|m| format!("{} {}", m.addr, m.health))
            .collect();
        blips.dedup();
        (generations, blips)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A PostgreSQL with the test users and the `fence_t` table in `app`.
fn start_primary() -> PgServer {
    let pg = start_pg();
    pg.psql_db(
        "app",
        "create table fence_t(id serial primary key, marker text not null, port int not null)",
    )
    .expect("create fence_t");
    pg
}

/// A primary (with the `fence_t` table in `app`), maybe a streaming standby, and a proxy in
/// transaction mode in front of both.
struct Cluster {
    primary: PgServer,
    standby: Option<PgServer>,
    proxy: Running,
    /// The proxy's config (a second instance may start on it).
    config: Config,
}

impl Cluster {
    async fn start(with_standby: bool, tweak: impl FnOnce(&mut Config)) -> Cluster {
        let (primary, standby) = blocking(|| {
            let primary = start_primary();
            let standby = with_standby.then(|| primary.start_standby().expect("start standby"));
            (primary, standby)
        });
        let mut config = config_for(&primary, PoolMode::Transaction);
        config
            .clusters
            .get_mut("main")
            .expect("cluster main")
            .members = std::iter::once(&primary)
            .chain(standby.as_ref())
            .map(PgServer::addr)
            .collect();
        tweak(&mut config);
        let proxy = within(STEP, "proxy start", serve::start(config.clone()))
            .await
            .expect("proxy starts");
        let addr = primary.addr();
        wait_for(&proxy, STEP, "the first primary", |s| {
            s.primary.as_deref() == Some(addr.as_str())
        })
        .await;
        Cluster {
            primary,
            standby,
            proxy,
            config,
        }
    }

    fn standby(&self) -> &PgServer {
        self.standby.as_ref().expect("cluster has a standby")
    }

    async fn client(&self) -> Client {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres dbname=app",
            self.proxy.addr.port()
        );
        connect(&conninfo).await.expect("connect through the proxy")
    }
}

/// Inserts a row tagged `marker` through `c`, returning the port of the server that took it.
async fn write(c: &Client, marker: &str) -> Result<u16, tokio_postgres::Error> {
    let sql = format!(
        "insert into fence_t(marker, port) values ('{marker}', inet_server_port()) returning port"
    );
    let rows = c.simple_query(&sql).await?;
    let port = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse().ok()),
        _ => None,
    });
    Ok(port.expect("insert returned a port"))
}

/// Rows tagged `marker` on `pg`, asked directly (not through the proxy).
fn rows_on(pg: &PgServer, marker: &str) -> u64 {
    let sql = format!("select count(*) from fence_t where marker = '{marker}'");
    blocking(|| pg.psql_db("app", &sql))
        .expect("count rows")
        .parse()
        .expect("a count")
}

/// Writes through `c` until one lands on `target`, for at most `limit`; returns when that
/// happened (since `since`) and the SQLSTATEs (with times since `since`) of the failures before.
async fn write_until_on(
    c: &Client,
    target: &PgServer,
    marker: &str,
    since: Instant,
    limit: Duration,
) -> (Duration, Vec<(String, Duration)>) {
    let mut failures = Vec::new();
    loop {
        let at = since.elapsed();
        match within(STEP, "a write during failover", write(c, marker)).await {
            Ok(port) if port == target.port() => return (since.elapsed(), failures),
            Ok(port) => failures.push((format!("ok on port {port}"), at)),
            Err(e) => failures.push((format!("{} {e}", sqlstate(&e)), at)),
        }
        assert!(
            since.elapsed() < limit,
            "no write reached {} within {limit:?}; failures: {failures:?}",
            target.addr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Freeze,
    Crash,
}

/// The primary fails, the standby is promoted, the old primary comes back writable on the old
/// timeline: no write reaches it, and the monitor keeps naming the promoted standby.
async fn old_primary_comes_back(fault: Fault) {
    let _serial = SERIAL.lock().await;
    let cl = Cluster::start(true, |_| {}).await;
    let (old, new) = (&cl.primary, cl.standby());
    // A second instance on the same config, sharing nothing with the first: it must come to
    // the same decisions from its own evidence.
    let second = within(STEP, "second proxy", serve::start(cl.config.clone()))
        .await
        .expect("second proxy starts");
    let c = cl.client().await;
    let port = within(STEP, "first write", write(&c, "before")).await;
    assert_eq!(port.expect("first write"), old.port());

    let rec = Recorder::start(&cl.proxy);
    let faulted = Instant::now();
    blocking(|| match fault {
        Fault::Freeze => old.freeze(),
        Fault::Crash => old.kill(),
    })
    .expect("inject the fault");
    // Bounds count from the request: the standby may take writes before promote returns.
    let promoted = Instant::now();
    blocking(|| new.promote()).expect("promote the standby");
    let (to_new, failures) =
        write_until_on(&c, new, "transition", promoted, Duration::from_secs(30)).await;
    eprintln!(
        "fencing[{fault:?}]: promote took {:?} after the fault; first write on the promoted \
         standby {to_new:?} after promotion; failures before: {failures:?}",
        promoted - faulted
    );

    let down = wait_for(&cl.proxy, STEP, "the old primary marked Down", |s| {
        s.members[0].health.starts_with("Down")
    })
    .await;
    eprintln!(
        "fencing[{fault:?}]: old primary Down {:?} after the fault (generation {})",
        faulted.elapsed(),
        down.generation
    );
    let back = Instant::now();
    blocking(|| match fault {
        Fault::Freeze => old.thaw(),
        Fault::Crash => old.start_again(),
    })
    .expect("bring the old primary back");
    let s = wait_for(&cl.proxy, STEP, "the old primary probed Up", |s| {
        s.members[0].health == "Up" && s.members[0].writable == Some(true)
    })
    .await;
    eprintln!(
        "fencing[{fault:?}]: old primary probed Up (timeline {:?}) {:?} after it came back",
        s.members[0].timeline,
        back.elapsed()
    );
    assert_eq!(s.primary.as_deref(), Some(new.addr().as_str()), "{s:?}");
    assert_eq!(
        blocking(|| old.psql("select pg_is_in_recovery()")).expect("ask the old primary"),
        "f",
        "the old primary is back and writable"
    );
    let generation = s.generation;

    for i in 0..50 {
        let port = within(
            STEP,
            "write after the old primary is back",
            write(&c, "after"),
        )
        .await
        .unwrap_or_else(|e| panic!("write {i} failed: {} {e}", sqlstate(&e)));
        assert_eq!(port, new.port(), "write {i} landed on port {port}");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(rows_on(old, "after"), 0, "writes reached the old primary");
    assert_eq!(rows_on(new, "after"), 50);
    // The second instance agrees: the old primary stays fenced for it too.
    let seen = wait_for(
        &second,
        STEP,
        "the second instance names the promoted standby",
        |s| s.primary.as_deref() == Some(new.addr().as_str()) && s.members[0].health == "Up",
    )
    .await;
    assert_eq!(seen.members[0].writable, Some(true), "{seen:?}");
    let info = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        second.addr.port()
    );
    let c2 = connect(&info)
        .await
        .expect("connect through the second proxy");
    for i in 0..10 {
        let port = within(STEP, "write through the second", write(&c2, "second"))
            .await
            .unwrap_or_else(|e| panic!("write {i} failed: {} {e}", sqlstate(&e)));
        assert_eq!(port, new.port(), "write {i} landed on port {port}");
    }
    assert_eq!(
        rows_on(old, "second"),
        0,
        "the second instance wrote to the old primary"
    );
    eprintln!(
        "fencing[{fault:?}]: transition rows on the old primary (in flight at the fault): {}",
        rows_on(old, "transition")
    );
    let s = view(&cl.proxy);
    assert_eq!(s.primary.as_deref(), Some(new.addr().as_str()), "{s:?}");
    assert_eq!(s.generation, generation, "{s:?}");
    // Once the promoted standby was named, no later view named anything else.
    let views = rec.all();
    let named: Vec<Option<&str>> = views
        .iter()
        .map(|s| s.primary.as_deref())
        .skip_while(|p| *p != Some(new.addr().as_str()))
        .collect();
    assert!(
        !named.is_empty() && named.iter().all(|p| *p == Some(new.addr().as_str())),
        "{views:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_old_primary_gets_no_writes() {
    old_primary_comes_back(Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_old_primary_gets_no_writes() {
    old_primary_comes_back(Fault::Crash).await;
}

/// What one write got, and how long it took.
type Timed = (Result<u16, String>, Duration);

/// Starts `n` writes through `c`, one after the other; returns what each got.
fn timed_writes(c: Arc<Client>, marker: &'static str, n: usize) -> JoinHandle<Vec<Timed>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            let r = write(&c, marker)
                .await
                .map_err(|e| format!("{} {e}", sqlstate(&e)));
            got.push((r, t.elapsed()));
        }
        got
    })
}

/// After one failed probe a member is Suspect and must be probed again at `fast_probe_interval`
/// (200 ms), so a crash with no traffic is noticed within about `probe_interval` + 200 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_is_followed_at_the_fast_interval() {
    let _serial = SERIAL.lock().await;
    let cl = Cluster::start(false, |_| {}).await;
    let rec = Recorder::start(&cl.proxy);
    // Times count from the kill's start: the processes die before it returns.
    let killed = Instant::now();
    blocking(|| cl.primary.kill()).expect("kill the primary");
    wait_for(&cl.proxy, STEP, "no primary", |s| s.primary.is_none()).await;
    let noticed = killed.elapsed();
    let all = rec.all();
    let first = |health: &str| {
        all.iter()
            .find(|s| s.members[0].health.starts_with(health))
            .map(|s| s.at)
    };
    // The watch channel keeps only the newest view, so a short-lived Suspect may go unseen;
    // the bound on the whole detection holds either way.
    eprintln!(
        "fencing[probe pace]: crash noticed after {noticed:?}; Suspect at {:?}, Down at {:?}",
        first("Suspect").map(|t| t - killed),
        first("Down").map(|t| t - killed)
    );
    assert!(
        noticed < Duration::from_millis(1600),
        "a crash with no traffic must be noticed within probe_interval + fast_probe_interval \
         (1.2 s) plus slack, took {noticed:?}"
    );
    if let (Some(suspect), Some(down)) = (first("Suspect"), first("Down")) {
        assert!(
            down - suspect < Duration::from_millis(600),
            "the probe after the first failure came {:?} later, want about fast_probe_interval",
            down - suspect
        );
    }
}

/// A client that has written once through the proxy (so an idle server connection to the
/// primary is pooled).
async fn client_that_wrote(cl: &Cluster) -> Arc<Client> {
    let c = Arc::new(cl.client().await);
    let port = within(STEP, "first write", write(&c, "before")).await;
    assert_eq!(port.expect("first write"), cl.primary.port());
    c
}

/// Kills the primary and waits until the monitor says there is no primary; returns when the
/// kill happened and how long noticing took.
async fn crash_and_notice(cl: &Cluster) -> (Instant, Duration) {
    // Times count from the kill's start: the processes die before it returns.
    let killed = Instant::now();
    blocking(|| cl.primary.kill()).expect("kill the primary");
    wait_for(&cl.proxy, STEP, "no primary", |s| s.primary.is_none()).await;
    (killed, killed.elapsed())
}

/// Promotes `pg` once `at` has passed; returns when the promotion was requested (the standby
/// may take writes before promote returns).
async fn promote_at(pg: &PgServer, at: Instant) -> Instant {
    tokio::time::sleep_until(at.into()).await;
    let requested = Instant::now();
    blocking(|| pg.promote()).expect("promote the standby");
    requested
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_primary_new_work_waits_then_gets_57p03_and_the_connection_survives() {
    let _serial = SERIAL.lock().await;
    let cl = Cluster::start(false, |cfg| {
        cfg.failover.failover_timeout = CfgDuration::secs(3);
    })
    .await;
    let pg = &cl.primary;
    let c = client_that_wrote(&cl).await;
    let (_, noticed) = crash_and_notice(&cl).await;
    let got = within(
        STEP,
        "a write with no primary",
        timed_writes(c.clone(), "held", 1),
    )
    .await;
    let got = got.expect("write task");
    eprintln!("fencing[no standby]: crash noticed after {noticed:?}; a write got {got:?}");
    let (r, t) = &got[0];
    assert!(
        matches!(r, Err(e) if e.starts_with("57P03"))
            && (Duration::from_millis(2500)..Duration::from_secs(8)).contains(t),
        "want 57P03 after ~3 s, got {r:?} after {t:?}"
    );

    // The connection stays usable: the next request is refused the same way, not cut off.
    let again = within(STEP, "another request", c.simple_query("select 1")).await;
    let again = again.expect_err("no primary yet");
    assert_eq!(sqlstate(&again), "57P03", "{again}");

    let restarted = Instant::now();
    blocking(|| pg.start_again()).expect("restart the primary");
    let (took, failures) = write_until_on(&c, pg, "after", restarted, STEP).await;
    eprintln!(
        "fencing[no standby]: a write succeeded {took:?} after the restart, on the same \
         connection; failures before: {failures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_held_in_the_gate_runs_on_the_promoted_standby() {
    let _serial = SERIAL.lock().await;
    let cl = Cluster::start(true, |_| {}).await;
    let new = cl.standby();
    let c = client_that_wrote(&cl).await;
    let (killed, noticed) = crash_and_notice(&cl).await;
    let started = Instant::now();
    let held = timed_writes(c, "held", 1);
    let promoted = promote_at(new, started + Duration::from_secs(2)).await;
    let got = within(STEP, "the held write", held)
        .await
        .expect("write task");
    let answered = Instant::now();
    eprintln!(
        "fencing[gate]: crash noticed after {noticed:?}; promoted {:?} after the crash; held \
         write {got:?}, answered {:?} after the promotion",
        promoted - killed,
        answered - promoted
    );
    let (r, t) = &got[0];
    assert_eq!(
        *r,
        Ok(new.port()),
        "the held write runs on the promoted standby"
    );
    assert!(*t < Duration::from_secs(8), "held {t:?}");
}

/// New work that reaches the proxy after the crash but before the monitor has noticed it must
/// be held like any other: neither the pooled connection (dead since the crash, the request
/// never reached a server) nor a refused connect to the dead primary is a reason to fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_sent_before_the_crash_is_noticed_is_held_too() {
    let _serial = SERIAL.lock().await;
    let cl = Cluster::start(true, |_| {}).await;
    let new = cl.standby();
    let c = client_that_wrote(&cl).await;
    // Times count from the kill's start: the processes die before it returns.
    let killed = Instant::now();
    blocking(|| cl.primary.kill()).expect("kill the primary");
    // The first write finds the pooled connection, the second opens a new one.
    let early = timed_writes(c, "early", 2);
    let promoted = promote_at(new, killed + Duration::from_secs(2)).await;
    let got = within(STEP * 2, "the early writes", early).await;
    let got = got.expect("write task");
    eprintln!(
        "fencing[early]: promoted {:?} after the crash; writes sent right after the crash: \
         {got:?}",
        promoted - killed
    );
    let ran = |(r, t): &Timed| *r == Ok(new.port()) && *t < Duration::from_secs(8);
    assert!(
        got.iter().all(ran),
        "want both held in the gate, then run on the promoted standby ({}); got {got:?}",
        new.port()
    );
}

/// The primary freezes; one write is in flight on the pooled connection (it reached the server:
/// 08007 is the honest answer), another opens a new connection to the frozen primary before the
/// monitor has noticed. That second one never reached a server: it must be held and run on the
/// promoted standby, not wait out `connect_timeout` on the frozen node and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_to_a_frozen_primary_does_not_fail_the_work() {
    let _serial = SERIAL.lock().await;
    let cl = Cluster::start(true, |_| {}).await;
    let new = cl.standby();
    let pooled = client_that_wrote(&cl).await;
    let fresh = Arc::new(cl.client().await);
    let frozen = Instant::now();
    blocking(|| cl.primary.freeze()).expect("freeze the primary");
    let in_flight = timed_writes(pooled, "in-flight", 1);
    // The in-flight write holds the pooled connection before the fresh one asks for another.
    wait_for_servers_in_use(
        &cl.proxy,
        "the in-flight write to take its connection",
        |n| n > 0,
    )
    .await;
    let opening = timed_writes(fresh, "fresh", 1);
    let promoted = promote_at(new, frozen + Duration::from_secs(2)).await;
    let in_flight = within(STEP, "the in-flight write", in_flight).await;
    let opening = within(STEP, "the fresh write", opening).await;
    let (in_flight, opening) = (in_flight.expect("task"), opening.expect("task"));
    eprintln!(
        "fencing[frozen connect]: promoted {:?} after the freeze; in flight: {in_flight:?}; new \
         connection: {opening:?}",
        promoted - frozen
    );
    let (r, t) = &in_flight[0];
    assert!(
        matches!(r, Err(e) if e.starts_with("08007")) && *t < Duration::from_secs(8),
        "the write in flight on the frozen primary: want 08007, got {r:?} after {t:?}"
    );
    let (r, t) = &opening[0];
    assert!(
        *r == Ok(new.port()) && *t < Duration::from_secs(8),
        "the write opening a new connection: want success on {} within 8 s, got {r:?} after \
         {t:?}",
        new.port()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_brain_resolves_to_the_higher_timeline() {
    let _serial = SERIAL.lock().await;
    let cl = Cluster::start(true, |_| {}).await;
    let (old, new) = (&cl.primary, cl.standby());
    let c = cl.client().await;
    let port = within(STEP, "first write", write(&c, "before")).await;
    assert_eq!(port.expect("first write"), old.port());

    // Promote without stopping the old primary: two writable members, timelines 1 and 2.
    // Bounds count from the request: the standby may take writes before promote returns.
    let promoted = Instant::now();
    blocking(|| new.promote()).expect("promote the standby");
    let (to_new, before) = write_until_on(&c, new, "switch", promoted, STEP).await;
    let on_old = before
        .iter()
        .filter(|(what, _)| what.starts_with("ok"))
        .count();
    eprintln!(
        "fencing[split brain]: first write on the promoted standby {to_new:?} after promotion; \
         {on_old} of {} writes before it were acknowledged by the old primary (timeline 1)",
        before.len()
    );
    let s = wait_for(&cl.proxy, STEP, "both members probed writable", |s| {
        s.members.iter().all(|m| m.writable == Some(true))
    })
    .await;
    assert!(s.state.starts_with("Primary"), "not a conflict: {s:?}");
    assert_eq!(s.primary.as_deref(), Some(new.addr().as_str()), "{s:?}");
    assert_eq!(
        (s.members[0].timeline, s.members[1].timeline),
        (Some(1), Some(2)),
        "{s:?}"
    );
    for i in 0..20 {
        let port = within(STEP, "write in the split brain", write(&c, "split"))
            .await
            .unwrap_or_else(|e| panic!("write {i} failed: {} {e}", sqlstate(&e)));
        assert_eq!(port, new.port(), "write {i}");
    }
    assert_eq!(rows_on(old, "split"), 0);
    assert_eq!(
        blocking(|| old.psql("select pg_is_in_recovery()")).expect("ask the old primary"),
        "f",
        "the old primary is still writable"
    );
}

/// A proxy that starts while two members are writable (the standby was promoted, the old
/// primary kept running) must never name the old one, not even before it has heard from every
/// member: the first probe answer must not win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_starting_in_a_split_brain_never_names_the_old_primary() {
    let _serial = SERIAL.lock().await;
    let (old, new) = blocking(|| {
        let old = start_primary();
        let new = old.start_standby().expect("start standby");
        new.promote().expect("promote the standby");
        (old, new)
    });
    let mut named_old = Vec::new();
    let mut writes = Vec::new();
    const STARTS: usize = 8;
    for _ in 0..STARTS {
        let mut config = config_for(&old, PoolMode::Transaction);
        config
            .clusters
            .get_mut("main")
            .expect("cluster main")
            .members = vec![old.addr(), new.addr()];
        let cold = within(STEP, "proxy start", serve::start(config))
            .await
            .expect("proxy starts");
        let rec = Recorder::start(&cold);
        // A client that connects and writes at once (its login waits in the gate).
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres dbname=app",
            cold.addr.port()
        );
        let first_write = tokio::spawn(async move {
            let c = connect(&conninfo).await.map_err(|e| e.to_string())?;
            write(&c, "cold")
                .await
                .map_err(|e| format!("{} {e}", sqlstate(&e)))
        });
        let s = wait_for(&cold, STEP, "a primary", |s| s.primary.is_some()).await;
        let first_write = within(STEP, "the first write", first_write).await;
        let first_write = first_write.expect("write task");
        writes.push(first_write.clone());
        let all = rec.all();
        // From generation 0 (no primary), generation 1 naming the promoted standby is the only
        // history that never named the old primary.
        if s.primary.as_deref() != Some(new.addr().as_str())
            || s.generation != 1
            || first_write != Ok(new.port())
            || all
                .iter()
                .any(|v| v.primary.as_deref() == Some(old.addr().as_str()))
        {
            named_old.push(all);
        }
        cold.drain(Duration::from_secs(1)).await;
    }
    eprintln!(
        "fencing[cold start]: old primary {}, promoted standby {}; first write through each \
         cold proxy: {writes:?}; rows on the old primary: {}",
        old.port(),
        new.port(),
        rows_on(&old, "cold")
    );
    assert!(
        named_old.is_empty(),
        "a cold proxy named the old primary (timeline 1, port {}) before the promoted one in {} \
         of {STARTS} starts (first writes: {writes:?}): {named_old:?}",
        old.port(),
        named_old.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_query_on_a_healthy_primary_is_not_a_failover() {
    let cl = Cluster::start(true, |_| {}).await;
    let rec = Recorder::start(&cl.proxy);
    let generation = view(&cl.proxy).generation;
    let slow = cl.client().await;
    let other = cl.client().await;
    let started = Instant::now();
    let sleeper = async {
        let r = slow.simple_query("select pg_sleep(30)").await;
        (r.map(drop), started.elapsed())
    };
    let neighbour = async {
        let mut writes = 0;
        while started.elapsed() < Duration::from_secs(29) {
            let port = within(
                STEP,
                "a write beside the slow query",
                write(&other, "beside"),
            )
            .await
            .unwrap_or_else(|e| panic!("write failed: {} {e}", sqlstate(&e)));
            assert_eq!(port, cl.primary.port());
            writes += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        writes
    };
    let ((r, took), writes) = within(
        Duration::from_secs(60),
        "the slow query",
        futures_util::future::join(sleeper, neighbour),
    )
    .await;
    let (generations, blips) = rec.summary();
    eprintln!(
        "fencing[slow query]: took {took:?}; {writes} writes beside it; generations \
         {generations:?}; health other than Up: {blips:?}"
    );
    r.expect("the slow query completes");
    assert!(took >= Duration::from_secs(30), "{took:?}");
    let s = view(&cl.proxy);
    assert_eq!(s.generation, generation, "{:?}", rec.all());
    assert_eq!(s.primary.as_deref(), Some(cl.primary.addr().as_str()));
}

/// Runs `pgbench` with `args` against the proxy, bounded by `limit`; returns stdout and stderr.
async fn pgbench(port: u16, args: &[&str], limit: Duration) -> (String, String) {
    let port = port.to_string();
    let child = tokio::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
        .args(args)
        .arg("app")
        .env("PGSSLMODE", "disable")
        .kill_on_drop(true)
        .output();
    let out = within(limit, "pgbench", child).await.expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pgbench {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_is_not_a_failover() {
    let _serial = SERIAL.lock().await;
    let cl = Cluster::start(true, |cfg| cfg.pool.size = 8).await;
    let port = cl.proxy.addr.port();
    pgbench(port, &["-i", "-s", "2", "-q"], Duration::from_secs(120)).await;
    let rec = Recorder::start(&cl.proxy);
    let generation = view(&cl.proxy).generation;
    let run = ["-c", "32", "-j", "2", "-T", "15"];
    let (stdout, stderr) = pgbench(port, &run, Duration::from_secs(60)).await;
    let (generations, blips) = rec.summary();
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_string()
    };
    eprintln!(
        "fencing[saturation]: {} | {} | {} | generations {generations:?}; health other than Up: \
         {blips:?}",
        line("number of transactions actually processed"),
        line("number of failed transactions"),
        line("tps"),
    );
    assert!(
        line("number of failed transactions").starts_with("number of failed transactions: 0 "),
        "{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("aborted"), "{stderr}");
    let s = view(&cl.proxy);
    assert_eq!(s.generation, generation, "{:?}", rec.all());
    assert_eq!(s.primary.as_deref(), Some(cl.primary.addr().as_str()));
}
