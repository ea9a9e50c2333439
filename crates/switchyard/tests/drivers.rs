//! The driver matrix (tests/clients/drivers/README.md): psycopg 3 (sync; asyncio with
//! psycopg_pool), asyncpg, node-postgres, pgjdbc and tokio-postgres run the same scenarios
//! through Switchyard in session and transaction mode. Every scenario passes in session mode
//! unless the driver itself has no such feature; transaction mode differs only where session
//! state is needed. The README's table is rendered from this run and must match it
//! (`SWITCHYARD_UPDATE_README=1` rewrites it).

mod common;
#[allow(dead_code)]
#[path = "clients/json.rs"]
mod json;
#[allow(dead_code)] // shared with tests/clients.rs, which uses the rest
#[path = "clients/programs.rs"]
mod programs;
#[path = "clients/drivers/tokio_pg.rs"]
mod tokio_pg;

use common::*;
use json::Json;
use programs::{clean_command, clients_dir, last_json, python, run};
use std::path::{Path, PathBuf};
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

#[derive(Clone, Copy)]
enum Driver {
    Psycopg,
    PsycopgAsync,
    Asyncpg,
    NodePostgres,
    Pgjdbc,
    TokioPostgres,
}

const DRIVERS: [Driver; 6] = [
    Driver::Psycopg,
    Driver::PsycopgAsync,
    Driver::Asyncpg,
    Driver::NodePostgres,
    Driver::Pgjdbc,
    Driver::TokioPostgres,
];

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Self::Psycopg => "psycopg 3.3 (sync, psycopg_pool)",
            Self::PsycopgAsync => "psycopg 3.3 (asyncio, AsyncConnectionPool)",
            Self::Asyncpg => "asyncpg 0.32",
            Self::NodePostgres => "node-postgres 8.23",
            Self::Pgjdbc => "pgjdbc 42.5",
            Self::TokioPostgres => "tokio-postgres 0.7",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Psycopg => "psycopg",
            Self::PsycopgAsync => "psycopg_async",
            Self::Asyncpg => "asyncpg",
            Self::NodePostgres => "node",
            Self::Pgjdbc => "jdbc",
            Self::TokioPostgres => "tokio_pg",
        }
    }

    /// What the driver itself lacks (the scenario must then be skipped, not failed).
    fn lacks(self, scenario: &str) -> bool {
        matches!(
            (self, scenario),
            (Self::NodePostgres, "pipeline")
                | (Self::Pgjdbc, "pool_health")
                | (Self::TokioPostgres, "pool_health")
        )
    }

    /// The external program, if the driver is not in this process.
    fn command(self) -> Option<tokio::process::Command> {
        let dir = clients_dir().join("drivers");
        let python_script = |script: &str| {
            let mut cmd = clean_command(python());
            cmd.env("PYTHONDONTWRITEBYTECODE", "1")
                .arg(dir.join(script));
            cmd
        };
        Some(match self {
            Self::Psycopg => python_script("psycopg_sync.py"),
            Self::PsycopgAsync => python_script("psycopg_async.py"),
            Self::Asyncpg => python_script("asyncpg_matrix.py"),
            Self::NodePostgres => {
                let node_dir = dir.join("node");
                assert!(
                    node_dir.join("node_modules/pg").exists(),
                    "node-postgres is not installed in {}: run scripts/setup",
                    node_dir.display()
                );
                let mut cmd = clean_command("node");
                cmd.arg(node_dir.join("matrix.js"));
                cmd
            }
            Self::Pgjdbc => {
                let jar = Path::new("/usr/share/java/postgresql.jar");
                assert!(jar.exists(), "pgjdbc is not installed: run scripts/setup");
                let mut cmd = clean_command("java");
                cmd.arg("-cp").arg(jar).arg(dir.join("jdbc/Matrix.java"));
                cmd
            }
            Self::TokioPostgres => return None,
        })
    }
}

fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        _ => "transaction",
    }
}

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
    let outcomes = match driver.command() {
        Some(mut cmd) => {
            cmd.env("SY_HOST", "127.0.0.1")
                .env("SY_PORT", h.port().to_string())
                .env("SY_DB", "app")
                .env("SY_USER", SCRAM_USER)
                .env("SY_PASSWORD", SCRAM_PASSWORD)
                .env("SY_ADMIN_USER", "postgres")
                .env("SY_MODE", mode_name(mode))
                .env("SY_TABLE", &table);
            let what = format!("{} in {} mode", driver.name(), mode_name(mode));
            let ran = run(cmd, None, PROGRAM, &what).await;
            from_json(&last_json(ran.expect_success(&what), &what))
        }
        None => {
            let base = format!("host=127.0.0.1 port={} dbname=app", h.port());
            let target = tokio_pg::Target {
                conninfo: format!("{base} user={SCRAM_USER} password='{SCRAM_PASSWORD}'"),
                admin_conninfo: format!("{base} user=postgres"),
                user: SCRAM_USER.into(),
                session: mode == PoolMode::Session,
                table,
            };
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
    let session_state = scenario == "listen_notify" && row.mode != PoolMode::Session;
    match o {
        Outcome::Ok(_) if !(row.driver.lacks(scenario) || session_state) => Ok(()),
        Outcome::Skipped(_) if row.driver.lacks(scenario) || session_state => Ok(()),
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

fn readme() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")
}

const START: &str = "<!-- driver-matrix:start (generated by tests/drivers.rs) -->\n";
const END: &str = "<!-- driver-matrix:end -->";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_in_both_modes() {
    let mut rows = Vec::new();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        // Room for every driver at once (each holds a few sessions in session mode).
        let h = Harness::start_with(mode, |c| c.pool.size = 40).await;
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
    let table = render(&rows);
    let path = readme();
    let text = std::fs::read_to_string(&path).expect("read README.md");
    let (Some(a), Some(b)) = (text.find(START), text.find(END)) else {
        panic!("README.md has no driver-matrix markers");
    };
    let current = &text[a + START.len()..b];
    if std::env::var_os("SWITCHYARD_UPDATE_README").is_some() {
        let updated = format!("{}{START}{table}{}", &text[..a], &text[b..]);
        std::fs::write(&path, updated).expect("write README.md");
    } else {
        assert_eq!(
            current, table,
            "README.md's driver matrix differs from this run: rerun with \
             SWITCHYARD_UPDATE_README=1 and commit it"
        );
    }
}
