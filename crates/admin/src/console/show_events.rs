//! SHOW EVENTS: the event log, oldest first (topology decisions, member health, fences,
//! incident transitions, operator commands), as kept in memory (the last 1000).

use switchyard_proto::backend::ColumnType;

use super::Ctx;
use super::table::{TEXT, Table, text, timestamp_ms};
use crate::events::MAX_EVENTS;

static COLUMNS: [(&str, ColumnType); 4] = [
    ("at", TEXT),
    ("cluster", TEXT),
    ("kind", TEXT),
    ("detail", TEXT),
];

pub fn table(ctx: &Ctx<'_>) -> Table {
    let mut t = Table::new(&COLUMNS);
    for e in ctx.state.events(MAX_EVENTS) {
        t.row(vec![
            text(timestamp_ms(e.at_ms)),
            text(e.cluster),
            text(e.kind.name()),
            text(e.detail),
        ]);
    }
    t
}
