//! Every SHOW: PgBouncer's column names and rows that match what is going on; errors that
//! leave the console usable; non-admin users refused.

use crate::common::*;
use crate::psql::{Shown, console, console_error, num, psql};
use crate::{backend_pid, harness, wait_primary};

const CLIENT_COLUMNS: &str = "type user database state addr port local_addr local_port \
    connect_time request_time wait wait_us ptr link remote_pid tls";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_has_pgbouncer_columns_and_sensible_rows() {
    let h = harness(|_| {}).await;
    wait_primary(&h, true).await;
    // One client inside a transaction (an active server), one idle (its server back in the pool).
    let busy = h.client().await;
    within(STEP, "begin", busy.simple_query("begin"))
        .await
        .unwrap();
    let busy_pid = backend_pid(&busy).await.to_string();
    let idle = h.client().await;
    within(STEP, "a transaction", idle.simple_query("select 1"))
        .await
        .unwrap();

    show_pools(&h).await;
    let clients = show_clients(&h, &busy_pid).await;
    show_servers(&h, &busy_pid, &clients).await;
    show_stats_and_databases(&h).await;
    within(STEP, "commit", busy.simple_query("commit"))
        .await
        .unwrap();
    show_config(&h).await;
    show_clusters_events_incidents(&h).await;
}

async fn show_pools(h: &Harness) {
    let pools = console(h.port(), "SHOW POOLS").await;
    pools.assert_columns(
        "SHOW POOLS",
        "database user cl_active cl_waiting sv_active sv_idle sv_used sv_tested sv_login \
         maxwait maxwait_us pool_mode server cluster",
    );
    let addr = h.pg.addr();
    let row = pools.one("SHOW POOLS", &[("database", "app"), ("server", &addr)]);
    let counts = ["cl_active", "cl_waiting", "sv_active", "sv_idle"].map(|c| num(row, c));
    assert_eq!(counts, [2, 0, 1, 1], "{row:?}");
    assert_eq!(row["pool_mode"], "transaction");
    assert_eq!(row["cluster"], "main");
}

async fn show_clients(h: &Harness, busy_pid: &str) -> Shown {
    let clients = console(h.port(), "show clients;").await;
    clients.assert_columns("SHOW CLIENTS", CLIENT_COLUMNS);
    let active = clients.one("SHOW CLIENTS", &[("state", "active"), ("database", "app")]);
    assert_eq!(active["link"], busy_pid);
    assert_eq!(active["addr"], "127.0.0.1");
    assert_eq!(active["local_port"], h.port().to_string());
    assert!(active["connect_time"].ends_with(" UTC"), "{active:?}");
    clients.one("SHOW CLIENTS", &[("state", "idle"), ("database", "app")]);
    let itself = [("database", "switchyard"), ("user", "postgres")];
    clients.one("the console itself", &itself);
    clients
}

async fn show_servers(h: &Harness, busy_pid: &str, clients: &Shown) {
    let servers = console(h.port(), "SHOW SERVERS").await;
    servers.assert_columns("SHOW SERVERS", CLIENT_COLUMNS);
    let s = servers.one("SHOW SERVERS", &[("state", "active"), ("ptr", busy_pid)]);
    assert_eq!((s["type"].as_str(), s["database"].as_str()), ("S", "app"));
    let client = clients.one("its client", &[("link", busy_pid)]);
    assert_eq!(s["link"], client["ptr"], "the server links to its client");
    servers.one("SHOW SERVERS", &[("state", "idle"), ("database", "app")]);
}

async fn show_stats_and_databases(h: &Harness) {
    let stats = console(h.port(), "SHOW STATS").await;
    stats.assert_columns(
        "SHOW STATS",
        "database total_xact_count total_query_count total_xact_time total_wait_time \
         avg_xact_time cluster",
    );
    let main = stats.one("SHOW STATS", &[("cluster", "main")]);
    assert!(num(main, "total_xact_count") >= 1, "{main:?}");
    assert!(num(main, "total_query_count") >= 1, "{main:?}");
    assert_eq!(main["database"], "*");

    let dbs = console(h.port(), "SHOW DATABASES").await;
    dbs.assert_columns(
        "SHOW DATABASES",
        "name host port database force_user pool_size pool_mode max_connections \
         current_connections paused disabled cluster",
    );
    let site = dbs.one("SHOW DATABASES", &[("name", "*")]);
    assert_eq!(site["host"], "127.0.0.1");
    assert_eq!(site["port"], h.pg.port().to_string());
    let numbers = ["pool_size", "current_connections", "paused"].map(|c| num(site, c));
    assert_eq!(numbers, [4, 2, 0], "{site:?}");
}

async fn show_config(h: &Harness) {
    let config = console(h.port(), "SHOW CONFIG").await;
    config.assert_columns("SHOW CONFIG", "key value default changeable");
    let size = config.one("SHOW CONFIG", &[("key", "pool.size")]);
    assert_eq!(
        (size["value"].as_str(), size["default"].as_str()),
        ("4", "20")
    );
    assert_eq!(size["changeable"], "yes");
    config.one(
        "SHOW CONFIG",
        &[("key", "proxy.listen"), ("changeable", "no")],
    );
    config.one(
        "SHOW CONFIG",
        &[("key", "admin.users"), ("value", "postgres")],
    );
    let users = config.one("SHOW CONFIG", &[("key", "users")]);
    assert_eq!(users["value"], format!("postgres,{SCRAM_USER},{MD5_USER}"));
    assert!(
        !config
            .rows
            .iter()
            .any(|r| r["value"].contains(SCRAM_PASSWORD)),
        "no secrets in SHOW CONFIG"
    );
}

async fn show_clusters_events_incidents(h: &Harness) {
    let port = h.port();
    let clusters = console(port, "SHOW CLUSTERS").await;
    clusters.assert_columns(
        "SHOW CLUSTERS",
        "cluster member role health fenced timeline lag_bytes generation primary",
    );
    let addr = h.pg.addr();
    let m = clusters.one("SHOW CLUSTERS", &[("member", &addr)]);
    assert_eq!((m["role"].as_str(), m["fenced"].as_str()), ("primary", "0"));
    assert_eq!(
        (m["cluster"].as_str(), m["primary"].as_str()),
        ("main", addr.as_str())
    );
    assert!(
        num(m, "generation") >= 1 && num(m, "timeline") >= 1,
        "{m:?}"
    );

    crate::psql::command(port, "RECONNECT").await;
    let events = console(port, "SHOW EVENTS").await;
    events.assert_columns("SHOW EVENTS", "at cluster kind detail");
    let e = events.one("SHOW EVENTS", &[("kind", "command")]);
    assert!(e["detail"].starts_with("RECONNECT every database"), "{e:?}");
    assert!(e["detail"].ends_with("(by postgres)"), "{e:?}");

    let incidents = console(port, "SHOW INCIDENTS").await;
    incidents.assert_columns(
        "SHOW INCIDENTS",
        "id cluster stage title opened resolved sites held committed rolled_back unknown gate_timeouts \
         retried sessions_lost longest_hold_ms notifications",
    );
    assert!(incidents.rows.is_empty(), "no failover, no incident");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_leave_the_console_usable() {
    let h = harness(|_| {}).await;
    let port = h.port();
    // One psql connection: an unknown command, then a SHOW that must still work.
    let ran = psql(
        port,
        "postgres",
        "",
        "switchyard",
        &["SHOW NONSENSE", "SHOW HELP"],
    )
    .await;
    let unknown = "ERROR:  42601: switchyard: unknown command \"SHOW NONSENSE\"";
    assert!(ran.stderr.contains(unknown), "{}", ran.stderr);
    let hint = "HINT:  commands: SHOW POOLS | CLIENTS | SERVERS";
    assert!(ran.stderr.contains(hint), "{}", ran.stderr);
    assert!(ran.stdout.contains("FENCE member"), "{}", ran.stdout);

    for (statement, error) in [
        (
            "FENCE 10.9.9.9:5432",
            "42704: switchyard: no cluster has a member",
        ),
        (
            "PAUSE app extra",
            "42601: switchyard: usage: PAUSE [database]",
        ),
        ("RESUME", "55000: switchyard: nothing is paused"),
        ("RELOAD", "55000: switchyard: RELOAD needs a config file"),
    ] {
        let err = console_error(port, statement).await;
        assert!(err.contains(error), "{statement}: {err}");
    }

    // A driver's extended protocol gets a clear error; simple queries go on working.
    let c = connect(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=switchyard"
    ))
    .await
    .expect("tokio-postgres reaches the console");
    let e = within(STEP, "extended query", c.query("SHOW POOLS", &[]))
        .await
        .expect_err("the extended protocol is refused");
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    let rows = within(
        STEP,
        "simple query",
        c.simple_query("SHOW POOLS; SHOW STATS"),
    )
    .await
    .expect("simple queries work after the error");
    assert!(
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))),
        "SHOW POOLS and SHOW STATS answer with rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_users_are_refused() {
    let h = harness(|_| {}).await;
    let ran = psql(
        h.port(),
        SCRAM_USER,
        SCRAM_PASSWORD,
        "switchyard",
        &["SHOW POOLS"],
    )
    .await;
    assert_eq!(
        ran.status.code(),
        Some(2),
        "psql could not connect: {}",
        ran.stderr
    );
    let refused =
        format!("FATAL:  switchyard: user \"{SCRAM_USER}\" is not allowed on the admin console");
    assert!(ran.stderr.contains(&refused), "{}", ran.stderr);
    let e = h
        .client_as(SCRAM_USER, SCRAM_PASSWORD, "switchyard")
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&e), "28000", "{e:?}");
    // Authentication comes first, as for any database: a wrong password says so.
    let e = h
        .client_as(SCRAM_USER, "wrong", "switchyard")
        .await
        .expect_err("wrong password");
    assert_eq!(sqlstate(&e), "28P01", "{e:?}");
    // The same user reaches ordinary databases.
    let c = h
        .client_as(SCRAM_USER, SCRAM_PASSWORD, "app")
        .await
        .expect("scram user logs in to app");
    within(STEP, "select", c.simple_query("select 1"))
        .await
        .unwrap();
}

/// `admin.stats_users` may look (every SHOW) but not change anything; `admin.users` may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_users_may_look_but_not_operate() {
    let h = harness(|c| c.admin.stats_users = vec![SCRAM_USER.into()]).await;
    let viewer = h
        .client_as(SCRAM_USER, SCRAM_PASSWORD, "switchyard")
        .await
        .expect("a stats user logs in to the console");
    for show in ["SHOW POOLS", "SHOW CLUSTERS", "SHOW INCIDENTS"] {
        within(STEP, show, viewer.simple_query(show))
            .await
            .unwrap_or_else(|e| panic!("{show}: {e:?}"));
    }
    for command in [
        "PAUSE",
        "RELOAD",
        "SHUTDOWN",
        "FENCE 127.0.0.1:1",
        "RECONNECT",
    ] {
        let e = within(STEP, command, viewer.simple_query(command))
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&e), "42501", "{command}: {e:?}");
    }
    assert!(
        !h.proxy.proxy.pauses.any(),
        "the refused PAUSE paused nothing"
    );
    within(STEP, "SHOW POOLS", viewer.simple_query("SHOW POOLS"))
        .await
        .expect("the console stays usable");
    let operator = h
        .client_as("postgres", "", "switchyard")
        .await
        .expect("an admin user logs in");
    within(STEP, "PAUSE", operator.simple_query("PAUSE"))
        .await
        .expect("an admin user may PAUSE");
    within(STEP, "RESUME", operator.simple_query("RESUME"))
        .await
        .expect("and RESUME");
}
