//! SHOW INCIDENTS: the incident history, newest first, with each incident's scope of impact
//! and the state of its webhook notifications (`url stage: Delivered (1 attempt)`, …).

use switchyard_proto::backend::ColumnType;

use super::Ctx;
use super::table::{INT, TEXT, Table, int, text, timestamp_ms};
use crate::incident::{Delivery, DeliveryState};

static COLUMNS: [(&str, ColumnType); 15] = [
    ("id", INT),
    ("cluster", TEXT),
    ("stage", TEXT),
    ("title", TEXT),
    ("opened", TEXT),
    ("resolved", TEXT),
    ("sites", TEXT),
    ("held", INT),
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
        t.row(vec![
            int(i.id),
            text(i.cluster.clone()),
            text(i.stage.name()),
            text(i.title.clone()),
            text(timestamp_ms(i.opened_ms)),
            i.resolved_ms.map(timestamp_ms),
            text(s.sites.join(",")),
            int(s.held),
            int(s.rolled_back),
            int(s.unknown),
            int(s.gate_timeouts),
            int(s.retried),
            int(s.sessions_lost),
            int(s.longest_hold_ms),
            text(notifications.join("; ")),
        ]);
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
