//! SHOW DATABASES: one row per site with PgBouncer's columns, plus `cluster`. `host` and `port`
//! are the cluster's current primary (NULL while it has none); `database` is the server
//! database (`*`: the name the client asks for); `current_connections` counts the site's server
//! connections; `paused` is 1 when PAUSE covers the site's database (or everything).

use switchyard_proto::backend::ColumnType;

use super::Ctx;
use super::lookup::{primaries, site_of_pool};
use super::show_pools::mode_name;
use super::table::{INT, TEXT, Table, flag, host_port, int, text};

static COLUMNS: [(&str, ColumnType); 12] = [
    ("name", TEXT),
    ("host", TEXT),
    ("port", INT),
    ("database", TEXT),
    ("force_user", TEXT),
    ("pool_size", INT),
    ("pool_mode", TEXT),
    ("max_connections", INT),
    ("current_connections", INT),
    ("paused", INT),
    ("disabled", INT),
    ("cluster", TEXT),
];

pub fn table(ctx: &Ctx<'_>) -> Table {
    let proxy = ctx.proxy();
    let live = proxy.live.load();
    let config = &live.config;
    let primaries = primaries(proxy);
    let pools = proxy.pools.all();
    let paused = proxy.pauses.current();
    let mut t = Table::new(&COLUMNS);
    for site in &config.sites {
        let (host, port) = primaries
            .get(&site.cluster)
            .map_or((None, None), |p| host_port(p));
        let connections: usize = pools
            .iter()
            .filter(|(key, _)| {
                site_of_pool(config, key).is_some_and(|(_, s)| std::ptr::eq(s, site))
            })
            .map(|(_, pool)| {
                let s = pool.stats();
                s.active + s.idle
            })
            .sum();
        let server_db = site.server_database.as_deref().unwrap_or(&site.database);
        let pool = config.effective_pool(site);
        t.row(vec![
            text(site.database.clone()),
            host,
            port,
            text(server_db),
            None,
            int(pool.size as u64),
            text(mode_name(pool.mode)),
            int(0),
            int(connections as u64),
            flag(paused.covers(&site.cluster, server_db)),
            flag(false),
            text(site.cluster.clone()),
        ]);
    }
    t
}
