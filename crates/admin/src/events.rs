//! The event log: what changed and when (topology decisions, member health, fences, incident
//! transitions, operator commands), newest last, bounded to the last [`MAX_EVENTS`].

use serde::Serialize;
use std::collections::VecDeque;

/// Events kept in memory.
pub const MAX_EVENTS: usize = 1000;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at_ms: u64,
    /// Cluster it concerns ("" for the proxy as a whole).
    pub cluster: String,
    pub kind: EventKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The cluster's primary changed (or there is none, or a conflict).
    Topology,
    /// A member's health changed.
    Health,
    /// A member was fenced or unfenced.
    Fence,
    /// An incident changed stage.
    Incident,
    /// An operator command (console or API).
    Command,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Topology => "topology",
            EventKind::Health => "health",
            EventKind::Fence => "fence",
            EventKind::Incident => "incident",
            EventKind::Command => "command",
        }
    }
}

/// The bounded log.
#[derive(Debug, Default)]
pub struct EventLog {
    events: VecDeque<Event>,
}

impl EventLog {
    pub fn push(&mut self, event: Event) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The newest `limit` events, oldest first.
    pub fn latest(&self, limit: usize) -> Vec<Event> {
        let skip = self.events.len().saturating_sub(limit);
        self.events.iter().skip(skip).cloned().collect()
    }
}
