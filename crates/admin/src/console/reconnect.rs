//! RECONNECT [db]: close the server connections of a database (as clients name it), or of all:
//! idle ones now, busy ones when their transaction (or session) gives them back. New
//! connections are opened as needed — after a server-side change of settings, credentials or
//! extensions, say.

use super::lookup::{cluster_of_member, resolve_database};
use super::{ConsoleError, Ctx};

pub fn run(ctx: &Ctx<'_>, database: Option<&str>) -> Result<&'static str, ConsoleError> {
    let live = ctx.proxy().live.load();
    let config = &live.config;
    let only = database
        .map(|name| resolve_database(config, name))
        .transpose()?;
    let mut pools = 0;
    for (key, pool) in ctx.proxy().pools.all() {
        let matches = only.as_ref().is_none_or(|(cluster, server_db)| {
            key.database == *server_db
                && cluster_of_member(config, &key.addr) == Some(cluster.as_str())
        });
        if matches {
            pool.reconnect();
            pools += 1;
        }
    }
    let what = database.map_or("every database".to_owned(), str::to_owned);
    let cluster = only.as_ref().map_or("", |(c, _)| c.as_str());
    ctx.record(
        cluster,
        format!("RECONNECT {what}: {pools} pool(s); idle connections closed, busy ones close when released"),
    );
    Ok("RECONNECT")
}
