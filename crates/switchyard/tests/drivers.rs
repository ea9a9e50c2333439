//! The driver matrix (tests/clients/drivers/README.md): psycopg 3 (sync; asyncio with
//! psycopg_pool), asyncpg, node-postgres, pgjdbc and tokio-postgres run the same scenarios
//! through Switchyard in session and transaction mode. Every scenario passes in both modes
//! unless the driver itself has no such feature. The README's table is rendered from this run
//! and must match it (`SWITCHYARD_UPDATE_README=1` rewrites it).

mod common;
#[allow(dead_code)]
#[path = "clients/json.rs"]
mod json;
#[allow(dead_code)] // shared with tests/clients.rs, which uses the rest
#[path = "clients/programs.rs"]
mod programs;
#[path = "clients/drivers/readme_table.rs"]
mod readme_table;
#[path = "clients/drivers/registry.rs"]
mod registry;
#[allow(dead_code)] // the failover loop is tests/driver_failover.rs's
#[path = "clients/drivers/tokio_pg.rs"]
mod tokio_pg;

use common::*;
use json::Json;
use programs::{last_json, run};
use registry::{DRIVERS, Driver, driver_env, mode_name};
use std::time::Duration;
use switchyard_config::PoolMode;
use tokio_pg::Outcome;

const SCENARIOS: [&str; 11] = [
    "connect_scram",
    "simple_query",
    "extended_query",
    "prepared_reuse",
    "pipeline",
    "copy",
    "cancel",
    "listen_notify",
    "terminated_backend",
    "client_encoding",
    "pool_health",
];

/// One driver program's run: every scenario must finish well within this.
const PROGRAM: Duration = Duration::from_secs(240);

/// One driver's results in one mode, in [`SCENARIOS`] order.
struct Row {
    driver: Driver,
    mode: PoolMode,
    outcomes: Vec<(String, Outcome)>,
}

fn from_json(r: &Json) -> Vec<(String, Outcome)> {
    SCENARIOS
        .iter()
        .map(|s| {
            let o = match r.opt(s) {
                None => Outcome::Failed("not reported".into()),
                Some(v) if v.opt("skip").is_some() => {
                    Outcome::Skipped(v.get("skip").as_str().to_string())
                }
                Some(v) if v.get("ok").as_bool() => {
                    Outcome::Ok(v.get("detail").as_str().to_string())
                }
                Some(v) => Outcome::Failed(v.get("detail").as_str().to_string()),
            };
            (s.to_string(), o)
        })
        .collect()
}

async fn run_driver(h: &Harness, driver: Driver, mode: PoolMode) -> Row {
    let table = format!("matrix_{}_{}", driver.slug(), mode_name(mode));
    // A database of its own: its own pools, so one driver's terminated backends (transaction
    // mode hands a server process to whoever comes next) never land on another's work.
    let db = format!("app_{}", driver.slug());
    let outcomes = match driver.command() {
        Some(mut cmd) => {
            driver_env(&mut cmd, h.port(), mode, (&db, &table), "matrix");
            let what = format!("{} in {} mode", driver.name(), mode_name(mode));
            let ran = run(cmd, None, PROGRAM, &what).await;
            from_json(&last_json(ran.expect_success(&what), &what))
        }
        None => {
            let target = tokio_pg::Target::new(h.port(), &db, mode == PoolMode::Session, &table);
            tokio_pg::run_all(&target)
                .await
                .into_iter()
                .map(|(s, o)| (s.to_string(), o))
                .collect()
        }
    };
    Row {
        driver,
        mode,
        outcomes,
    }
}

/// Whether an outcome is what the matrix promises; `Err` says why not.
fn check(row: &Row, scenario: &str, o: &Outcome) -> Result<(), String> {
    match o {
        Outcome::Ok(_) if !row.driver.lacks(scenario) => Ok(()),
        Outcome::Skipped(_) if row.driver.lacks(scenario) => Ok(()),
        Outcome::Ok(d) => Err(format!("ran, but is expected to be skipped: {d}")),
        Outcome::Skipped(why) => Err(format!("skipped: {why}")),
        Outcome::Failed(why) => Err(format!("failed: {why}")),
    }
}

/// The README's table: one row per driver and mode.
fn render(rows: &[Row]) -> String {
    let mut t = String::from("| driver | mode |");
    for s in SCENARIOS {
        t.push_str(&format!(" {} |", s.replace('_', " ")));
    }
    t.push_str("\n| --- | --- |");
    t.push_str(&" --- |".repeat(SCENARIOS.len()));
    t.push('\n');
    for row in rows {
        t.push_str(&format!(
            "| {} | {} |",
            row.driver.name(),
            mode_name(row.mode)
        ));
        for (_, o) in &row.outcomes {
            t.push_str(match o {
                Outcome::Ok(_) => " ✓ |",
                Outcome::Skipped(_) => " – |",
                Outcome::Failed(_) => " ✗ |",
            });
        }
        t.push('\n');
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_in_both_modes() {
    let mut rows = Vec::new();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        // Room for every driver at once (each holds a few sessions in session mode).
        let h = Harness::start_with(mode, |c| c.pool.size = 10).await;
        for d in DRIVERS {
            let db = format!("app_{}", d.slug());
            h.pg.create_database(&db, "postgres").expect("database");
            h.pg.psql_db(&db, "GRANT ALL ON SCHEMA public TO PUBLIC")
                .expect("grant");
        }
        let runs = DRIVERS.map(|d| run_driver(&h, d, mode));
        rows.extend(futures_util::future::join_all(runs).await);
    }
    let mut wrong = Vec::new();
    for row in &rows {
        for (scenario, o) in &row.outcomes {
            if let Err(why) = check(row, scenario, o) {
                let mode = mode_name(row.mode);
                wrong.push(format!(
                    "{} / {mode} / {scenario}: {why}",
                    row.driver.name()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "driver matrix:\n{}", wrong.join("\n"));
    readme_table::check("driver-matrix", &render(&rows));
}
