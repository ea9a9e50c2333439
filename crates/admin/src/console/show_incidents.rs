//! SHOW INCIDENTS: the incident history, newest first, with each incident's scope of impact
//! and the state of its webhook notifications (`url stage: Delivered (1 attempt)`, …).

use switchyard_proto::backend::ColumnType;

use super::Ctx;
use super::table::{INT, TEXT, Table, int, text, timestamp_ms};
use crate::incident::{Delivery, DeliveryState};

/// Where the outcome columns start.
const FIRST_OUTCOME: usize = 7;

static COLUMNS: [(&str, ColumnType); 16] = [
    ("id", INT),
    ("cluster", TEXT),
    ("stage", TEXT),
    ("title", TEXT),
    ("opened", TEXT),
    ("resolved", TEXT),
    ("sites", TEXT),
    ("held", INT),
    ("committed", INT),
    ("rolled_back", INT),
    ("unknown", INT),
    ("gate_timeouts", INT),
    ("retried", INT),
    ("sessions_lost", INT),
    ("longest_hold_ms", INT),
    ("notifications", TEXT),
];

pub fn table(ctx: &Ctx<'_>) -> Table {
    let mut t = Table::new(&COLUMNS);
    for i in ctx.state.incidents() {
        let s = &i.scope;
        let notifications: Vec<String> = i.notifications.iter().map(delivery).collect();
        let mut row = vec![
            int(i.id),
            text(i.cluster.clone()),
            text(i.stage.name()),
            text(i.title.clone()),
            text(timestamp_ms(i.opened_ms)),
            i.resolved_ms.map(timestamp_ms),
            text(s.sites.join(",")),
        ];
        debug_assert_eq!(row.len(), FIRST_OUTCOME);
        // The outcomes follow in `CaughtTotals::outcomes` order (COLUMNS names them so).
        row.extend(s.caught.outcomes().iter().map(|o| int(o.count)));
        row.push(int(s.caught.longest_hold_ms));
        row.push(text(notifications.join("; ")));
        t.row(row);
    }
    t
}

/// `url stage: Delivered (1 attempt)`, with the error of a failed or retrying delivery.
fn delivery(d: &Delivery) -> String {
    let state = match d.state {
        DeliveryState::Pending => "Pending",
        DeliveryState::Delivered => "Delivered",
        DeliveryState::Failed => "Failed",
    };
    let attempts = match d.attempts {
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    };
    let error = d
        .error
        .as_deref()
        .map_or(String::new(), |e| format!(": {e}"));
    format!("{} {}: {state} ({attempts}){error}", d.url, d.stage.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_columns_follow_the_outcomes() {
        let keys: Vec<&str> = switchyard_topology::CaughtTotals::default()
            .outcomes()
            .iter()
            .map(|o| o.key)
            .collect();
        let columns: Vec<&str> = COLUMNS[FIRST_OUTCOME..FIRST_OUTCOME + keys.len()]
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(columns, keys);
        assert_eq!(COLUMNS[FIRST_OUTCOME + keys.len()].0, "longest_hold_ms");
    }
}
