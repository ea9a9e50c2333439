//! SHOW CLUSTERS: one row per member of every cluster — role, health, operator fence, timeline,
//! replication lag behind the primary (bytes of WAL), the cluster's generation and primary —
//! from the same snapshot as `/api/clusters` and the status page.

use switchyard_proto::backend::ColumnType;

use super::Ctx;
use super::table::{INT, TEXT, Table, flag, int, text};
use crate::snapshot;

static COLUMNS: [(&str, ColumnType); 9] = [
    ("cluster", TEXT),
    ("member", TEXT),
    ("role", TEXT),
    ("health", TEXT),
    ("fenced", INT),
    ("timeline", INT),
    ("lag_bytes", INT),
    ("generation", INT),
    ("primary", TEXT),
];

pub fn table(ctx: &Ctx<'_>) -> Table {
    let mut t = Table::new(&COLUMNS);
    for c in snapshot::clusters(ctx.state) {
        for m in &c.members {
            t.row(vec![
                text(c.name.clone()),
                text(m.addr.clone()),
                text(m.role),
                text(m.health.clone()),
                flag(m.fenced),
                m.timeline.and_then(int),
                m.lag_bytes.and_then(int),
                int(c.generation),
                c.primary.clone(),
            ]);
        }
    }
    t
}
