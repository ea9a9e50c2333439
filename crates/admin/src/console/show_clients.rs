//! SHOW CLIENTS: every logged-in client (sessions and console connections) with PgBouncer's
//! columns. `ptr` is the client's backend key (what a cancel request names), `link` the backend
//! process id of the server connection it uses (SHOW SERVERS' `ptr`), `state` is `idle`,
//! `waiting` (PAUSE, the failover gate or a full pool) or `active` (using a server).

use switchyard_frontend::ClientState;
use switchyard_frontend::console::CONSOLE_DATABASE;
use switchyard_proto::backend::ColumnType;

use super::Ctx;
use super::lookup::client_database;
use super::table::{INT, TEXT, Table, int, seconds_and_us, text, timestamp, unix_s_ago};

/// The columns of SHOW CLIENTS and SHOW SERVERS.
pub static COLUMNS: [(&str, ColumnType); 16] = [
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT),
    ("local_addr", TEXT),
    ("local_port", INT),
    ("connect_time", TEXT),
    ("request_time", TEXT),
    ("wait", INT),
    ("wait_us", INT),
    ("ptr", INT),
    ("link", INT),
    ("remote_pid", INT),
    ("tls", TEXT),
];

pub fn table(ctx: &Ctx<'_>) -> Table {
    let live = ctx.proxy().live.load();
    let (local_addr, local_port) = match ctx.hooks.listen {
        Some(a) => (text(a.ip().to_string()), int(a.port())),
        None => (None, None),
    };
    let mut t = Table::new(&COLUMNS);
    for c in ctx.proxy().clients() {
        let database = match &c.cluster {
            Some(cluster) => client_database(&live.config, cluster, &c.server_db),
            None => CONSOLE_DATABASE.to_owned(),
        };
        let waited = match (c.state, c.request_age) {
            (ClientState::Waiting, Some(age)) => age,
            _ => std::time::Duration::ZERO,
        };
        let (wait, wait_us) = seconds_and_us(waited);
        t.row(vec![
            text("C"),
            text(c.user),
            text(database),
            text(c.state.name()),
            c.peer.map(|p| p.ip().to_string()),
            c.peer.map(|p| p.port().to_string()),
            local_addr.clone(),
            local_port.clone(),
            text(timestamp(c.connected_unix_s)),
            c.request_age.map(|a| timestamp(unix_s_ago(a))),
            wait,
            wait_us,
            int(c.process_id),
            c.server.map(|(_, pid)| pid.to_string()),
            int(0),
            text(""),
        ]);
    }
    t
}
