//! SHOW SERVERS: every server connection, with SHOW CLIENTS' columns (PgBouncer's). Idle ones
//! come from the pools; active ones from the clients using them, so their `connect_time` and
//! `local_*` are not known (NULL). `ptr` and `remote_pid` are the server's backend process id,
//! `link` the key of the client using it (SHOW CLIENTS' `ptr`).

use std::time::Instant;

use super::Ctx;
use super::show_clients::COLUMNS;
use super::table::{Table, host_port, int, text, timestamp, unix_s_ago};

pub fn table(ctx: &Ctx<'_>) -> Table {
    let proxy = ctx.proxy();
    let mut t = Table::new(&COLUMNS);
    for c in proxy.clients() {
        let Some((addr, pid)) = c.server else {
            continue;
        };
        let (host, port) = host_port(&addr);
        t.row(vec![
            text("S"),
            text(c.server_user),
            text(c.server_db),
            text("active"),
            host,
            port,
            None,
            None,
            None,
            c.request_age.map(|a| timestamp(unix_s_ago(a))),
            int(0),
            int(0),
            int(pid),
            int(c.process_id),
            int(pid),
            text(""),
        ]);
    }
    let now = Instant::now();
    for (key, pool) in proxy.pools.all() {
        let (host, port) = host_port(&key.addr);
        for s in pool.idle_servers() {
            t.row(vec![
                text("S"),
                text(key.user.clone()),
                text(key.database.clone()),
                text("idle"),
                host.clone(),
                port.clone(),
                s.local_addr.map(|a| a.ip().to_string()),
                s.local_addr.map(|a| a.port().to_string()),
                text(timestamp(unix_s_ago(now.duration_since(s.created)))),
                text(timestamp(unix_s_ago(now.duration_since(s.last_used)))),
                int(0),
                int(0),
                int(s.pid),
                None,
                int(s.pid),
                text(""),
            ]);
        }
    }
    t
}
