//! SHOW POOLS: one row per pool — (server database, server user) at one member — with
//! PgBouncer's columns, plus `server` and `cluster`. Clients are counted where they are: on the
//! pool of the server they use, else (idle or waiting) on the pool of their cluster's primary,
//! else, while the cluster has no primary, on a row with an empty `server` (the failover gate).

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_config::PoolMode;
use switchyard_frontend::ClientState;
use switchyard_proto::backend::ColumnType;

use super::Ctx;
use super::lookup::{primaries, site_of, site_of_pool};
use super::table::{INT, TEXT, Table, int, seconds_and_us, text};

static COLUMNS: [(&str, ColumnType); 14] = [
    ("database", TEXT),
    ("user", TEXT),
    ("cl_active", INT),
    ("cl_waiting", INT),
    ("sv_active", INT),
    ("sv_idle", INT),
    ("sv_used", INT),
    ("sv_tested", INT),
    ("sv_login", INT),
    ("maxwait", INT),
    ("maxwait_us", INT),
    ("pool_mode", TEXT),
    ("server", TEXT),
    ("cluster", TEXT),
];

#[derive(Default)]
struct Row {
    cl_active: u64,
    cl_waiting: u64,
    sv_active: usize,
    sv_idle: usize,
    maxwait: Duration,
    mode: Option<PoolMode>,
    cluster: String,
}

/// Rows by (database, user, server).
type Rows = BTreeMap<(String, String, String), Row>;

pub fn table(ctx: &Ctx<'_>) -> Table {
    let proxy = ctx.proxy();
    let live = proxy.live.load();
    let config = &live.config;
    let mut rows = Rows::new();
    for (key, pool) in proxy.pools.all() {
        let site = site_of_pool(config, &key);
        let stats = pool.stats();
        let row = rows
            .entry((key.database.clone(), key.user.clone(), key.addr.clone()))
            .or_default();
        row.sv_active = stats.active;
        row.sv_idle = stats.idle;
        row.mode = site.map(|(_, s)| config.effective_pool(s).mode);
        row.cluster = site.map(|(c, _)| c.to_owned()).unwrap_or_default();
    }
    count_clients(ctx, config, &mut rows);
    let mut t = Table::new(&COLUMNS);
    for ((database, user, server), r) in rows {
        let (maxwait, maxwait_us) = seconds_and_us(r.maxwait);
        t.row(vec![
            text(database),
            text(user),
            int(r.cl_active),
            int(r.cl_waiting),
            int(r.sv_active as u64),
            int(r.sv_idle as u64),
            int(0),
            int(0),
            int(0),
            maxwait,
            maxwait_us,
            r.mode.and_then(|m| text(mode_name(m))),
            text(server),
            text(r.cluster),
        ]);
    }
    t
}

/// Adds every client session to the row it belongs to (see the module comment).
fn count_clients(ctx: &Ctx<'_>, config: &switchyard_config::Config, rows: &mut Rows) {
    let primaries = primaries(ctx.proxy());
    for c in ctx.proxy().clients() {
        let Some(cluster) = c.cluster else {
            continue; // console connections
        };
        let server = match (&c.server, primaries.get(&cluster)) {
            (Some((addr, _)), _) => addr.to_string(),
            (None, Some(primary)) => primary.clone(),
            (None, None) => String::new(),
        };
        let row = rows
            .entry((c.server_db.clone(), c.server_user.clone(), server))
            .or_insert_with(|| Row {
                mode: site_of(config, &cluster, &c.server_db)
                    .map(|s| config.effective_pool(s).mode),
                cluster: cluster.clone(),
                ..Row::default()
            });
        if c.state == ClientState::Waiting {
            row.cl_waiting += 1;
            row.maxwait = row.maxwait.max(c.request_age.unwrap_or_default());
        } else {
            row.cl_active += 1;
        }
    }
}

pub fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}
