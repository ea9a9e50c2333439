//! Every driver of the matrix (tests/drivers.rs) through a freeze of the primary and the
//! standby's promotion, in both pool modes: each keeps one connection writing every 50 ms and
//! reconnects after an error that ended it. What each sees must be the error contract
//! (design.md §2) and nothing else, no statement may hang, and writes resume on the new
//! primary.

mod common;
#[allow(dead_code)]
#[path = "clients/json.rs"]
mod json;
#[allow(dead_code)] // shared with tests/clients.rs, which uses the rest
#[path = "clients/programs.rs"]
mod programs;
#[path = "clients/drivers/readme_table.rs"]
mod readme_table;
#[allow(dead_code)] // the matrix uses all of it
#[path = "clients/drivers/registry.rs"]
mod registry;
#[allow(dead_code)] // the matrix's scenarios are tests/drivers.rs's
#[path = "clients/drivers/tokio_pg.rs"]
mod tokio_pg;

use common::cluster::{Cluster, ClusterOptions, Fault};
use common::*;
use json::Json;
use programs::{last_json, run};
use registry::{DRIVERS, Driver, driver_env, mode_name};
use std::time::Duration;
use switchyard_config::PoolMode;

const TABLE: &str = "matrix_failover";
/// How long each driver writes: its start (a Java compile takes seconds), the fault once every
/// driver is writing, detection (~2 s), promotion, and writes on the new primary.
const WRITING: Duration = Duration::from_secs(18);
/// Longest any one statement may take: held in the gate from the freeze to the promotion.
const LONGEST: Duration = Duration::from_secs(10);

/// What one driver saw (printed for the test log).
#[derive(Debug)]
#[allow(dead_code)] // `total` is read through Debug
struct Seen {
    errors: Vec<String>,
    longest: f64,
    total: i64,
    after_last_error: i64,
}

fn from_json(r: &Json) -> Seen {
    let f = r.get("failover");
    Seen {
        errors: f
            .get("errors")
            .as_array()
            .iter()
            .map(|e| e.as_str().to_string())
            .collect(),
        longest: f.get("longest").as_f64(),
        total: f.get("total").as_i64(),
        after_last_error: f.get("after_last_error").as_i64(),
    }
}

async fn ride(c: &Cluster, driver: Driver, mode: PoolMode) -> (Driver, Seen) {
    let seen = match driver.command() {
        Some(mut cmd) => {
            driver_env(&mut cmd, c.port(), mode, ("app", TABLE), "failover");
            cmd.env("SY_SECONDS", WRITING.as_secs().to_string());
            let what = format!(
                "{} through a freeze in {} mode",
                driver.name(),
                mode_name(mode)
            );
            let ran = run(cmd, None, WRITING * 4, &what).await;
            from_json(&last_json(ran.expect_success(&what), &what))
        }
        None => {
            let target = tokio_pg::Target::new(c.port(), "app", mode == PoolMode::Session, TABLE);
            let log = tokio_pg::failover(&target, WRITING).await;
            Seen {
                errors: log.errors,
                longest: log.longest.as_secs_f64(),
                total: log.total.into(),
                after_last_error: log.after_last_error.into(),
            }
        }
    };
    (driver, seen)
}

/// Waits until every driver has written a few rows (polling the table through the proxy).
async fn every_driver_writing(c: &Cluster) {
    let client = c.client().await;
    let want = DRIVERS.len() as i64;
    within(Duration::from_secs(60), "every driver writing", async {
        loop {
            let sql = format!(
                "SELECT count(*) FROM (SELECT driver FROM {TABLE} GROUP BY driver \
                 HAVING count(*) >= 3) d"
            );
            let n: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
            if n == want {
                return;
            }
            // A poll interval while the programs start, not a synchronisation.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// The SQLSTATEs a client may see for a write when the primary fails over (design.md §2):
/// 08007 (in flight, outcome unknown), 40001 (its transaction was rolled back), 57P01 (session
/// mode: the session's server is gone), 57P03 (no primary within the failover timeout).
const CONTRACT: [&str; 4] = ["08007", "40001", "57P01", "57P03"];

/// A session-mode connection the server's 57P01 ended while idle: asyncpg takes the FATAL then
/// and reports the next use as ConnectionDoesNotExistError, its own 08003.
const ENDED_WHILE_IDLE: &str = "08003";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_rides_out_a_freeze() {
    let mut wrong = Vec::new();
    let table = render();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let opts = ClusterOptions {
            mode,
            ..ClusterOptions::default()
        };
        let c = Cluster::start_with(opts, |cfg| cfg.pool.size = 40).await;
        let admin = c.client().await;
        let ddl = format!(
            "CREATE TABLE {TABLE} (driver text, at timestamptz DEFAULT now()); \
             GRANT ALL ON {TABLE} TO PUBLIC"
        );
        within(STEP, "table", admin.batch_execute(&ddl))
            .await
            .unwrap();
        let rides = futures_util::future::join_all(DRIVERS.map(|d| ride(&c, d, mode)));
        let fault = async {
            every_driver_writing(&c).await;
            let injected = c.inject(Fault::Freeze).await;
            c.wait_for_no_primary(Duration::from_secs(10)).await;
            c.promote_standby().await;
            c.wait_for_primary(&c.standby.addr(), STEP).await;
            injected
        };
        let (seen, injected) = tokio::join!(rides, fault);
        c.restore(injected).await;
        for (driver, s) in seen {
            let who = format!("{} / {}", driver.name(), mode_name(mode));
            eprintln!("{who}: {s:?}");
            let outside: Vec<_> = s
                .errors
                .iter()
                .filter(|e| !CONTRACT.contains(&e.as_str()))
                .filter(|e| !(mode == PoolMode::Session && e.as_str() == ENDED_WHILE_IDLE))
                .collect();
            if !outside.is_empty() {
                wrong.push(format!("{who}: errors outside the contract: {outside:?}"));
            }
            if s.longest > LONGEST.as_secs_f64() {
                wrong.push(format!("{who}: a statement took {:.1} s", s.longest));
            }
            if s.after_last_error < 3 {
                wrong.push(format!(
                    "{who}: writes did not resume after the failover ({s:?})"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    readme_table::check("driver-failover", &table);
}

/// The README's failover table, one row per driver: every cell is a pass (the test fails
/// otherwise), so the table only changes when the drivers do.
fn render() -> String {
    let mut t = String::from("| driver | session mode | transaction mode |\n| --- | --- | --- |\n");
    for d in DRIVERS {
        t.push_str(&format!("| {} | ✓ | ✓ |\n", d.name()));
    }
    t
}
