//! SHOW STATS: per cluster (Switchyard counts per cluster), PgBouncer's totals since start:
//! transactions, queries, time in transactions and time held in the failover gate (µs), and
//! the average transaction time. `database` lists the cluster's sites; `cluster` names it.

use std::sync::atomic::Ordering;

use switchyard_proto::backend::ColumnType;

use super::Ctx;
use super::table::{INT, TEXT, Table, int, text};

static COLUMNS: [(&str, ColumnType); 7] = [
    ("database", TEXT),
    ("total_xact_count", INT),
    ("total_query_count", INT),
    ("total_xact_time", INT),
    ("total_wait_time", INT),
    ("avg_xact_time", INT),
    ("cluster", TEXT),
];

pub fn table(ctx: &Ctx<'_>) -> Table {
    let live = ctx.proxy().live.load();
    let mut t = Table::new(&COLUMNS);
    for m in ctx.proxy().router.monitors() {
        let c = m.counters();
        let (sum_s, count, _) = c.transaction_latency.snapshot();
        let xact_us = (sum_s * 1e6) as u64;
        let sites: Vec<&str> = live
            .config
            .sites
            .iter()
            .filter(|s| s.cluster == m.name())
            .map(|s| s.database.as_str())
            .collect();
        t.row(vec![
            text(sites.join(",")),
            int(c.transactions()),
            int(c.queries.get()),
            int(xact_us),
            int(c.held_us.load(Ordering::Relaxed)),
            int(xact_us.checked_div(count).unwrap_or(0)),
            text(m.name()),
        ]);
    }
    t
}
