//! The drivers of the matrix (README.md here): their names, what each lacks, and how each
//! external one is started, with the environment its program reads.

use crate::common::{SCRAM_PASSWORD, SCRAM_USER};
use crate::programs::{clean_command, clients_dir, python};
use std::path::Path;
use switchyard_config::PoolMode;

#[derive(Clone, Copy)]
pub enum Driver {
    Psycopg,
    PsycopgAsync,
    Asyncpg,
    NodePostgres,
    Pgjdbc,
    TokioPostgres,
}

pub const DRIVERS: [Driver; 6] = [
    Driver::Psycopg,
    Driver::PsycopgAsync,
    Driver::Asyncpg,
    Driver::NodePostgres,
    Driver::Pgjdbc,
    Driver::TokioPostgres,
];

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Self::Psycopg => "psycopg 3.3 (sync, psycopg_pool)",
            Self::PsycopgAsync => "psycopg 3.3 (asyncio, AsyncConnectionPool)",
            Self::Asyncpg => "asyncpg 0.32",
            Self::NodePostgres => "node-postgres 8.23",
            Self::Pgjdbc => "pgjdbc 42.5",
            Self::TokioPostgres => "tokio-postgres 0.7",
        }
    }

    pub fn slug(self) -> &'static str {
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
    pub fn lacks(self, scenario: &str) -> bool {
        matches!(
            (self, scenario),
            (Self::NodePostgres, "pipeline")
                | (Self::Pgjdbc, "pool_health")
                | (Self::TokioPostgres, "pool_health")
        )
    }

    /// The external program, if the driver is not in this process.
    pub fn command(self) -> Option<tokio::process::Command> {
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

pub fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        _ => "transaction",
    }
}

/// What every driver program reads (see README.md here): Switchyard at `port`, its database,
/// the SCRAM user, `postgres` as the admin user, the pool mode, its own table and the scenario
/// set.
pub fn driver_env(
    cmd: &mut tokio::process::Command,
    port: u16,
    mode: PoolMode,
    (db, table): (&str, &str),
    scenario: &str,
) {
    cmd.env("SY_HOST", "127.0.0.1")
        .env("SY_PORT", port.to_string())
        .env("SY_DB", db)
        .env("SY_USER", SCRAM_USER)
        .env("SY_PASSWORD", SCRAM_PASSWORD)
        .env("SY_ADMIN_USER", "postgres")
        .env("SY_MODE", mode_name(mode))
        .env("SY_TABLE", table)
        .env("SY_SCENARIO", scenario);
}
