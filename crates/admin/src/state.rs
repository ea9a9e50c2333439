//! [`AdminState`]: what the operator surfaces share — the proxy, the event log and the incident
//! history (kept in the store) — with the few operations that change them.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use switchyard_config::AdminConfig;
use switchyard_frontend::Proxy;
use switchyard_topology::counters::unix_ms;

use crate::events::{Event, EventKind, EventLog};
use crate::incident::{Delivery, Incident};
use crate::store::{MAX_KEPT, Store};

/// Shared by the tracker, the HTTP handlers, the console and the notifier.
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub token: Option<String>,
    pub resolve_after: Duration,
    pub started_ms: u64,
    store: Store,
    inner: Mutex<Inner>,
}

struct Inner {
    events: EventLog,
    /// Newest first.
    incidents: Vec<Incident>,
    /// Counts the copies of `incidents` taken for the store, so that it writes them in order.
    copies: u64,
    /// Failovers per cluster: those in the history at start, plus each incident that names a
    /// new primary since. Kept apart from `incidents`, which is capped: a counter never goes
    /// down while the process runs.
    failovers: BTreeMap<String, u64>,
    /// The incidents counted in `failovers` (an incident's new primary can come and go).
    counted: HashSet<u64>,
}

impl Inner {
    /// A numbered copy of the history, for [`Store::save`].
    fn copy_for_store(&mut self) -> (u64, Vec<Incident>) {
        self.copies += 1;
        (self.copies, self.incidents.clone())
    }
}

impl AdminState {
    /// Builds the state, loading the incident history from the store.
    pub fn new(proxy: Arc<Proxy>, config: &AdminConfig) -> Arc<AdminState> {
        let store = Store::new(&config.incidents_file);
        let mut incidents = store.load();
        // The tracker starts afresh: what was open before the restart is followed no more.
        let now = unix_ms();
        for i in &mut incidents {
            i.close_unfollowed(now, "not followed further: Switchyard restarted");
        }
        if let Some(path) = store.path() {
            tracing::info!(path = %path.display(), incidents = incidents.len(), "incident history loaded");
        }
        let mut failovers = BTreeMap::new();
        let mut counted = HashSet::new();
        for i in incidents.iter().filter(|i| i.is_failover()) {
            *failovers.entry(i.cluster.clone()).or_default() += 1;
            counted.insert(i.id);
        }
        Arc::new(AdminState {
            proxy,
            token: config.token.clone(),
            resolve_after: config.resolve_after.get(),
            started_ms: unix_ms(),
            store,
            inner: Mutex::new(Inner {
                events: EventLog::default(),
                incidents,
                copies: 0,
                failovers,
                counted,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event (and logs it).
    pub fn event(&self, cluster: &str, kind: EventKind, detail: String) {
        tracing::info!(cluster, kind = kind.name(), %detail, "event");
        self.lock().events.push(Event {
            at_ms: unix_ms(),
            cluster: cluster.to_owned(),
            kind,
            detail,
        });
    }

    /// The newest `limit` events, oldest first.
    pub fn events(&self, limit: usize) -> Vec<Event> {
        self.lock().events.latest(limit)
    }

    /// The incident history, newest first.
    pub fn incidents(&self) -> Vec<Incident> {
        self.lock().incidents.clone()
    }

    /// Failovers followed per cluster (see `Inner::failovers`).
    pub fn failovers(&self) -> BTreeMap<String, u64> {
        self.lock().failovers.clone()
    }

    /// The highest incident number used so far.
    pub fn last_incident_id(&self) -> u64 {
        self.lock()
            .incidents
            .iter()
            .map(|i| i.id)
            .max()
            .unwrap_or(0)
    }

    /// Stores a new or changed incident (keeping the deliveries recorded for it); `persist`
    /// writes the history to the store (on stage changes, not on every scope refresh).
    pub fn put_incident(&self, incident: &Incident, persist: bool) {
        let snapshot = {
            let mut inner = self.lock();
            match inner.incidents.iter_mut().find(|i| i.id == incident.id) {
                Some(kept) => {
                    let notifications = std::mem::take(&mut kept.notifications);
                    *kept = incident.clone();
                    kept.notifications = notifications;
                }
                None => {
                    inner.incidents.insert(0, incident.clone());
                    inner.incidents.truncate(MAX_KEPT);
                }
            }
            if incident.is_failover() && inner.counted.insert(incident.id) {
                *inner.failovers.entry(incident.cluster.clone()).or_default() += 1;
            }
            persist.then(|| inner.copy_for_store())
        };
        if let Some((version, all)) = snapshot {
            self.store.save(version, &all);
        }
    }

    /// Closes the open incidents of a cluster that left the configuration, and persists them.
    pub fn close_incidents_of(&self, cluster: &str, note: &str) {
        let snapshot = {
            let mut inner = self.lock();
            let now = unix_ms();
            let mut closed = false;
            for i in inner.incidents.iter_mut().filter(|i| i.cluster == cluster) {
                closed |= i.close_unfollowed(now, note);
            }
            closed.then(|| inner.copy_for_store())
        };
        if let Some((version, all)) = snapshot {
            self.store.save(version, &all);
        }
    }

    /// Records the state of a notification's delivery (replacing the earlier state of the same
    /// webhook and stage) and persists it.
    pub fn record_delivery(&self, incident_id: u64, delivery: Delivery) {
        let snapshot = {
            let mut inner = self.lock();
            let Some(inc) = inner.incidents.iter_mut().find(|i| i.id == incident_id) else {
                return;
            };
            match inc
                .notifications
                .iter_mut()
                .find(|d| d.url == delivery.url && d.stage == delivery.stage)
            {
                Some(kept) => *kept = delivery,
                None => inc.notifications.push(delivery),
            }
            inner.copy_for_store()
        };
        self.store.save(snapshot.0, &snapshot.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::{Scope, Stage};

    fn failover(id: u64) -> Incident {
        Incident {
            id,
            cluster: "c".into(),
            title: format!("incident {id}"),
            stage: Stage::Investigating,
            opened_ms: id,
            resolved_ms: None,
            timeline: Vec::new(),
            old_primary: Some("a:1".into()),
            new_primary: None,
            detection_ms: None,
            at_risk_lag_bytes: None,
            scope: Scope::default(),
            notifications: Vec::new(),
        }
    }

    /// The failover counter counts each incident once, however often it changes, and does not
    /// go down when the history drops its oldest incidents.
    #[tokio::test]
    async fn failovers_count_each_incident_once_and_never_go_down() {
        let toml = "[clusters.c]\nmembers = [\"127.0.0.1:1\"]\n[[sites]]\ndatabase = \"*\"\n\
                    cluster = \"c\"\n[[users]]\nname = \"u\"\nauth = \"trust\"\n\
                    [admin]\nlisten = \"\"\nincidents_file = \"\"\n";
        let config = switchyard_config::Config::from_toml(toml).unwrap();
        let proxy = Proxy::new(config.clone()).unwrap();
        let state = AdminState::new(proxy.clone(), &config.admin);
        let count = || state.failovers().get("c").copied().unwrap_or(0);
        for id in 1..=(MAX_KEPT as u64 + 10) {
            let mut inc = failover(id);
            state.put_incident(&inc, false);
            assert_eq!(count(), id - 1, "no new primary yet");
            inc.new_primary = Some("b:2".into());
            state.put_incident(&inc, false);
            // The new primary is lost and found again: still one failover.
            inc.new_primary = None;
            state.put_incident(&inc, false);
            inc.new_primary = Some("b:2".into());
            state.put_incident(&inc, false);
            assert_eq!(count(), id);
        }
        assert_eq!(state.incidents().len(), MAX_KEPT);
        proxy.background.cancel();
    }
}
