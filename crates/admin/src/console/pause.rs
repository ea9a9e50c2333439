//! PAUSE [db] and RESUME [db]: hold new transactions of a database (as clients name it), or of
//! every database, until RESUME; transactions already running finish. Held requests wait at
//! most `failover_timeout`, then get 57P03 (see `switchyard_frontend::pause`).

use super::lookup::resolve_database;
use super::{ConsoleError, Ctx};

pub fn pause(ctx: &Ctx<'_>, database: Option<&str>) -> Result<&'static str, ConsoleError> {
    let live = ctx.proxy().live.load();
    match database {
        None => {
            ctx.proxy().pauses.pause(None);
            ctx.record(
                "",
                "PAUSE: new transactions of every database wait for RESUME".into(),
            );
        }
        Some(name) => {
            let (cluster, server_db) = resolve_database(&live.config, name)?;
            ctx.proxy().pauses.pause(Some((cluster.clone(), server_db)));
            ctx.record(
                &cluster,
                format!("PAUSE {name}: its new transactions wait for RESUME"),
            );
        }
    }
    Ok("PAUSE")
}

pub fn resume(ctx: &Ctx<'_>, database: Option<&str>) -> Result<&'static str, ConsoleError> {
    let live = ctx.proxy().live.load();
    let pauses = &ctx.proxy().pauses;
    match database {
        None => {
            if !pauses.resume(None) {
                return Err(ConsoleError::NothingPaused);
            }
            ctx.record("", "RESUME: every database".into());
        }
        Some(name) => {
            let db = resolve_database(&live.config, name)?;
            if !pauses.resume(Some(&db)) {
                return Err(if pauses.current().all {
                    ConsoleError::AllPaused
                } else {
                    ConsoleError::NotPaused(name.to_owned())
                });
            }
            ctx.record(&db.0, format!("RESUME {name}"));
        }
    }
    Ok("RESUME")
}
