//! Parsing one console statement and running it: `SHOW <what>` or an operator command, case
//! insensitive, with at most one argument (a database or a member address; double quotes
//! around it are dropped).

use switchyard_proto::Frame;
use switchyard_proto::backend::command_complete;

use super::table::{TEXT, Table, text};
use super::{
    ConsoleError, Ctx, fence, pause, reconnect, reload, show_clients, show_clusters, show_config,
    show_databases, show_events, show_incidents, show_pools, show_servers, show_stats, shutdown,
};

/// Runs one statement, appending its answer to `out`.
pub fn run(ctx: &Ctx<'_>, statement: &str, out: &mut Vec<Frame>) -> Result<(), ConsoleError> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let verb = words
        .first()
        .map(|w| w.to_ascii_uppercase())
        .unwrap_or_default();
    let arg = words.get(1).map(|w| w.trim_matches('"'));
    if verb == "SHOW" {
        let what = arg.unwrap_or_default().to_ascii_uppercase();
        if words.len() != 2 {
            return Err(ConsoleError::Usage("SHOW POOLS | CLIENTS | SERVERS | …"));
        }
        let table = show(ctx, &what).ok_or_else(|| ConsoleError::Unknown(statement.into()))?;
        table.encode(out);
        return Ok(());
    }
    let at_most_one = |usage| {
        if words.len() > 2 {
            Err(ConsoleError::Usage(usage))
        } else {
            Ok(())
        }
    };
    let none = |usage| {
        if words.len() > 1 {
            Err(ConsoleError::Usage(usage))
        } else {
            Ok(())
        }
    };
    let changes_something = matches!(
        verb.as_str(),
        "PAUSE" | "RESUME" | "RECONNECT" | "RELOAD" | "SHUTDOWN" | "FENCE" | "UNFENCE"
    );
    if changes_something && !ctx.may_operate() {
        return Err(ConsoleError::NotOperator {
            user: ctx.user.to_owned(),
            command: verb,
        });
    }
    let tag = match verb.as_str() {
        "PAUSE" => at_most_one("PAUSE [database]").and_then(|()| pause::pause(ctx, arg))?,
        "RESUME" => at_most_one("RESUME [database]").and_then(|()| pause::resume(ctx, arg))?,
        "RECONNECT" => {
            at_most_one("RECONNECT [database]").and_then(|()| reconnect::run(ctx, arg))?
        }
        "RELOAD" => none("RELOAD").and_then(|()| reload::run(ctx))?,
        "SHUTDOWN" => none("SHUTDOWN").and_then(|()| shutdown::run(ctx))?,
        "FENCE" | "UNFENCE" => {
            let member = match (arg, words.len()) {
                (Some(m), 2) => m,
                _ => {
                    return Err(ConsoleError::Usage(
                        "FENCE member | UNFENCE member (host:port)",
                    ));
                }
            };
            fence::run(ctx, member, verb == "FENCE")?
        }
        // Drivers and tools set things on connect; like PgBouncer's console, accept and ignore.
        "SET" => "SET",
        _ => return Err(ConsoleError::Unknown(statement.into())),
    };
    out.push(command_complete(tag));
    Ok(())
}

/// The table of a `SHOW`, if there is one by that name.
fn show(ctx: &Ctx<'_>, what: &str) -> Option<Table> {
    Some(match what {
        "POOLS" => show_pools::table(ctx),
        "CLIENTS" => show_clients::table(ctx),
        "SERVERS" => show_servers::table(ctx),
        "STATS" => show_stats::table(ctx),
        "DATABASES" => show_databases::table(ctx),
        "CONFIG" => show_config::table(ctx),
        "CLUSTERS" => show_clusters::table(ctx),
        "EVENTS" => show_events::table(ctx),
        "INCIDENTS" => show_incidents::table(ctx),
        "HELP" => help(),
        _ => return None,
    })
}

/// SHOW HELP: every command, one a row.
fn help() -> Table {
    static COLUMNS: [(&str, switchyard_proto::backend::ColumnType); 2] =
        [("command", TEXT), ("does", TEXT)];
    let mut t = Table::new(&COLUMNS);
    for (command, does) in [
        (
            "SHOW POOLS",
            "pools per (database, user, server): clients and server connections",
        ),
        ("SHOW CLIENTS", "every logged-in client"),
        ("SHOW SERVERS", "every server connection"),
        (
            "SHOW STATS",
            "transactions, queries and their time, per cluster",
        ),
        (
            "SHOW DATABASES",
            "every site: where it is served, pool size, paused",
        ),
        (
            "SHOW CONFIG",
            "the running config, with defaults and what reloads live",
        ),
        (
            "SHOW CLUSTERS",
            "every member: role, health, fence, timeline, lag, generation",
        ),
        (
            "SHOW EVENTS",
            "the event log (topology, health, fences, incidents, commands)",
        ),
        (
            "SHOW INCIDENTS",
            "failover incidents with their scope and notifications",
        ),
        (
            "PAUSE [db]",
            "hold new transactions (of db, or all) until RESUME",
        ),
        ("RESUME [db]", "let held transactions go"),
        ("RELOAD", "reload the config file"),
        ("SHUTDOWN", "drain as on SIGTERM, then exit"),
        (
            "RECONNECT [db]",
            "close server connections (idle now, busy when released)",
        ),
        ("FENCE member", "move traffic off a member (host:port) now"),
        ("UNFENCE member", "let a fenced member carry traffic again"),
    ] {
        t.row(vec![text(command), text(does)]);
    }
    t
}
