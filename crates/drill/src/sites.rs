//! The sites' databases on a path's primary (made before the traffic starts), and the check, on
//! the new primary after the drill, that every acknowledged write is there.

use std::collections::HashSet;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::error::DrillError;
use crate::workload::{SITE_SCHEMA, site_database};

/// Deadline for one connection or statement of the set-up and the check.
const STEP: Duration = Duration::from_secs(20);

/// The database the sites' databases are copied from.
const TEMPLATE: &str = "site_template";

async fn connect(addr: &str, database: &str) -> Result<Client, DrillError> {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "5432"));
    let config = format!(
        "host={host} port={port} user=postgres dbname={database} connect_timeout=5 \
         application_name=switchyard-drill"
    );
    let step = "connect to a primary";
    let (client, connection) = bounded(step, tokio_postgres::connect(&config, NoTls))
        .await?
        .map_err(DrillError::sql(step))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn bounded<T>(step: &'static str, work: impl Future<Output = T>) -> Result<T, DrillError> {
    tokio::time::timeout(STEP, work)
        .await
        .map_err(|_| DrillError::Timeout {
            step,
            secs: STEP.as_secs(),
        })
}

async fn execute(client: &Client, step: &'static str, sql: &str) -> Result<(), DrillError> {
    bounded(step, client.batch_execute(sql))
        .await?
        .map_err(DrillError::sql(step))
}

/// Creates `site_01` … `site_NN`, each with the workload's tables, on the primary at `addr`.
pub async fn create(addr: &str, sites: u16) -> Result<(), DrillError> {
    let admin = connect(addr, "postgres").await?;
    let step = "create the sites' databases";
    execute(&admin, step, &format!("CREATE DATABASE {TEMPLATE}")).await?;
    let template = connect(addr, TEMPLATE).await?;
    execute(&template, "create the sites' tables", SITE_SCHEMA).await?;
    drop(template);
    for i in 0..sites {
        let sql = format!("CREATE DATABASE {} TEMPLATE {TEMPLATE}", site_database(i));
        execute(&admin, step, &sql).await?;
    }
    Ok(())
}

/// How many of `acked` (per site, the `seq` of each acknowledged write) are missing on the
/// primary at `addr`.
pub async fn count_lost(addr: &str, acked: &[Vec<i64>]) -> Result<u64, DrillError> {
    let mut lost = 0;
    for (i, acked) in acked.iter().enumerate() {
        let client = connect(addr, &site_database(i as u16)).await?;
        let step = "read the sites' writes on the new primary";
        let rows = bounded(step, client.query("SELECT seq FROM events", &[]))
            .await?
            .map_err(DrillError::sql(step))?;
        let present: HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        lost += acked.iter().filter(|seq| !present.contains(seq)).count() as u64;
    }
    Ok(lost)
}
