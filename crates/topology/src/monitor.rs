//! The cluster monitor: one probe loop per member and one decider loop per cluster.
//!
//! - Each **probe loop** probes its member every `probe_interval` on a dedicated connection
//!   (every `fast_interval` while the member is suspect, has requests outstanding, or was
//!   kicked by the data path), and sends each result to the decider.
//! - The **decider loop** owns member health and facts, runs [`decide`] after every result,
//!   and publishes a new [`TopologyView`] (with a new generation) whenever the answer changes.
//!
//! Both stop when the shutdown token fires.

use crate::carry::first_view;
use crate::counters::{Caught, ClusterCounters, ProbeCounters, Stripe, StripedGauge};
use crate::decide::{Decision, MemberView, decide};
use crate::health::{Health, Thresholds};
use crate::probe::{NodeFacts, ProbeError, probe};
use crate::view::{ClusterState, MemberStatus, TopologyView};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchyard_server::{ConnectParams, ServerConn};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSettings {
    pub probe_interval: Duration,
    pub fast_interval: Duration,
    pub probe_timeout: Duration,
    pub thresholds: Thresholds,
}

/// What the data path tells the monitor about one member.
#[derive(Default)]
struct MemberSignals {
    /// Wakes the probe loop to re-plan its wait.
    kick: Notify,
    /// Set with a kick: probe now.
    urgent: AtomicBool,
    outstanding: StripedGauge,
    /// The member is not Up: probe it at the fast pace.
    fast: AtomicBool,
    /// The cluster has no primary: every member is probed at the fast pace, so a promotion is
    /// seen within `fast_interval`.
    no_primary: AtomicBool,
    fenced: AtomicBool,
    /// The probe loop is in a slow-paced wait: the first new request should shorten it.
    sleeping_slow: AtomicBool,
    /// Carried over to a monitor that replaces this one (see [`Carried`]).
    probes: Arc<ProbeCounters>,
    /// Requests for a probe on a new connection, counted from 1 (see
    /// [`ClusterMonitor::moving_on_from`]: only a new connection tells a server refusing new
    /// work from one whose backends were terminated; the probe's own backend may not have
    /// been signalled yet when it answers).
    fresh_wanted: AtomicU64,
    /// The count of `fresh_wanted` the last answered probe's connection was opened after
    /// (written after `last_was_writable`), and whether that probe found the member a writable
    /// primary; waiters are woken by `answered`.
    last_fresh: AtomicU64,
    last_was_writable: AtomicBool,
    answered: Notify,
}

impl MemberSignals {
    fn probe_now(&self) {
        self.urgent.store(true, Ordering::Relaxed);
        self.kick.notify_one();
    }
}

/// A cluster's generation, shared by the monitors that follow one another for it (a reload
/// replaces one). Only the latest monitor publishes; handles of a replaced one still read the
/// current number, and can tell they are replaced.
#[derive(Default)]
struct ClusterGeneration {
    /// The current generation (a plain atomic: the data path reads it for every request, and
    /// a watch's read takes a lock).
    current: AtomicU64,
    /// The monitor that publishes: each takeover counts one up.
    owner: AtomicU64,
    changes: watch::Sender<u64>,
    /// Held while a monitor publishes and while another takes over, so that a replaced
    /// monitor's last answer cannot land after the takeover.
    publishing: std::sync::Mutex<()>,
}

impl ClusterGeneration {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.publishing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the caller the publisher, starting at the generation of the view `first` makes
    /// (no other monitor publishes meanwhile); returns the view and the caller's mark.
    fn take_over(&self, first: impl FnOnce() -> TopologyView) -> (TopologyView, u64) {
        let _publishing = self.lock();
        let view = first();
        let mark = self.owner.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(view.generation, Ordering::Release);
        let generation = view.generation;
        self.changes
            .send_if_modified(|g| std::mem::replace(g, generation) != generation);
        (view, mark)
    }
}

/// What a new monitor continues from.
#[derive(Clone, Default)]
pub struct Carried {
    /// Where generations continue when the primary cannot be kept: after every generation in
    /// use, so pools that retired the old monitor's generations never see a number twice.
    pub after_generation: u64,
    /// The monitor being replaced, if any.
    pub previous: Option<ClusterMonitor>,
}

impl Carried {
    /// The new monitor's first view, for members `addrs` (see [`first_view`]).
    pub(crate) fn first_view(&self, addrs: &[String]) -> TopologyView {
        // (Read without the publishing lock: the caller holds it.)
        let previous = self.previous.as_ref().map(|m| m.view.borrow().clone());
        let fenced = self
            .previous
            .as_ref()
            .map(ClusterMonitor::fenced_members)
            .unwrap_or_default();
        first_view(previous.as_deref(), &fenced, self.after_generation, addrs)
    }

    /// A member's probe counters: the replaced monitor's if it probed that member (counters
    /// never go down while the process runs).
    pub(crate) fn probe_counters(&self, addr: &str) -> Arc<ProbeCounters> {
        self.previous
            .as_ref()
            .and_then(|m| m.probe_counters(addr))
            .unwrap_or_default()
    }
}

/// The handle the rest of Switchyard holds.
#[derive(Clone)]
pub struct ClusterMonitor {
    name: Arc<str>,
    addrs: Arc<[String]>,
    signals: Arc<[MemberSignals]>,
    view: watch::Receiver<Arc<TopologyView>>,
    /// The generation and the counters belong to the cluster rather than to one monitor: a
    /// monitor that replaces another (a reload) takes them over (see [`Carried`]), so handles
    /// to the old one that sessions still hold see the current generation.
    generation: Arc<ClusterGeneration>,
    /// This monitor's mark in `generation.owner`.
    mark: u64,
    counters: Arc<ClusterCounters>,
    /// Longest the probes take to turn a lost primary into a new generation, from the first
    /// evidence of it (see [`ClusterMonitor::count_loss`]).
    detect_within: Duration,
}

impl ClusterMonitor {
    /// Starts the loops for a cluster. `params` gives, per member, how to connect for probes.
    pub fn start(
        name: &str,
        params: Vec<ConnectParams>,
        settings: MonitorSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self::start_after(name, params, settings, shutdown, Carried::default())
    }

    /// [`ClusterMonitor::start`] for a monitor that replaces another: see [`Carried`].
    pub fn start_after(
        name: &str,
        params: Vec<ConnectParams>,
        settings: MonitorSettings,
        shutdown: CancellationToken,
        carried: Carried,
    ) -> Self {
        let addrs: Arc<[String]> = params.iter().map(|p| p.addr.clone()).collect();
        let (generation, counters) = match &carried.previous {
            Some(m) => (m.generation.clone(), m.counters.clone()),
            None => Default::default(),
        };
        let (first, mark) = generation.take_over(|| carried.first_view(&addrs));
        let has_primary = matches!(first.state, ClusterState::Primary { .. });
        let signals: Arc<[MemberSignals]> = first
            .members
            .iter()
            .map(|m| MemberSignals {
                fenced: AtomicBool::new(m.fenced),
                fast: AtomicBool::new(m.health != Health::Up),
                no_primary: AtomicBool::new(!has_primary),
                probes: carried.probe_counters(&m.addr),
                ..MemberSignals::default()
            })
            .collect();
        // Evidence makes the member's probe run at once; each failure until Down takes at most a
        // probe timeout and a fast interval. The second of slack covers the decision and a
        // loaded machine.
        let detect_within = (settings.probe_timeout + settings.fast_interval)
            * settings.thresholds.down_after.max(1)
            + Duration::from_secs(1);
        let (tx, view) = watch::channel(Arc::new(first));
        let (results_tx, results_rx) = mpsc::channel(64);
        for (id, p) in params.into_iter().enumerate() {
            let probe_loop = ProbeLoop {
                id,
                params: p,
                settings: settings.clone(),
                signals: signals.clone(),
                results: results_tx.clone(),
            };
            tokio::spawn(probe_loop.run(shutdown.clone()));
        }
        let decider = Decider {
            generation: generation.clone(),
            mark,
            first_answer_pending: !has_primary,
            cluster: name.into(),
            settings,
            signals: signals.clone(),
            publish: tx,
        };
        tokio::spawn(decider.run(results_rx, shutdown));
        Self {
            name: name.into(),
            addrs,
            signals,
            view,
            generation,
            mark,
            counters,
            detect_within,
        }
    }

    /// Counts a request answered because its server connection (opened in `generation`) was
    /// lost: as caught by a failover once the generation moves on, which it does within
    /// `detect_within` when the primary really is lost; else, the primary having stayed, as
    /// lost outside a failover (a terminated backend is not a failover). Attributed in a task
    /// so that the client is answered at once.
    pub fn count_loss(self: &Arc<Self>, database: &str, what: Caught, generation: u64) {
        if self.generation() != generation {
            self.counters.caught(database, what);
            return;
        }
        let mut changes = self.generations();
        let (me, limit, database) = (self.clone(), self.detect_within, database.to_owned());
        tokio::spawn(async move {
            // The number itself is the truth (the watch only wakes this task up).
            let moved = tokio::time::timeout(limit, async {
                changes.borrow_and_update();
                while me.generation() == generation {
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            })
            .await
            .is_ok();
            if moved {
                me.counters.caught(&database, what);
            } else {
                me.counters
                    .lost_outside_failover
                    .fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// What the data path counts for this cluster.
    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    /// Each member's address and probe results, in member order.
    pub fn probes(&self) -> impl Iterator<Item = (&str, &ProbeCounters)> {
        self.addrs
            .iter()
            .map(String::as_str)
            .zip(self.signals.iter().map(|s| &*s.probes))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current view: never behind [`ClusterMonitor::generation`] read before this call
    /// (taken under the publishing lock, which the publisher holds while it updates both; the
    /// data path reads only the generation, so this lock is off it).
    pub fn view(&self) -> Arc<TopologyView> {
        let _publishing = self.generation.lock();
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<TopologyView>> {
        self.view.clone()
    }

    /// The current generation (of the view [`ClusterMonitor::view`] gives from now on). It
    /// moves before the new view is seen anywhere, so whoever saw that view (a watcher, the
    /// status page, a client told by either) finds the data path already on the new
    /// generation: a request sent after it never reaches the old primary.
    pub fn generation(&self) -> u64 {
        self.generation.current.load(Ordering::Acquire)
    }

    /// A reload replaced this monitor: ask the router for the current one. (Its generation is
    /// still right; its view, member signals and fences are no longer followed.)
    pub fn is_replaced(&self) -> bool {
        self.generation.owner.load(Ordering::Relaxed) != self.mark
    }

    /// Changes only when the generation does (the full view also changes on every probe):
    /// what a session watches.
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generation.changes.subscribe()
    }

    /// A member's probe counters, to carry over to a monitor that replaces this one.
    pub(crate) fn probe_counters(&self, addr: &str) -> Option<Arc<ProbeCounters>> {
        self.member(addr).map(|m| m.probes.clone())
    }

    fn member(&self, addr: &str) -> Option<&MemberSignals> {
        self.addrs
            .iter()
            .position(|a| a == addr)
            .and_then(|i| self.signals.get(i))
    }

    /// Evidence from the data path (a socket error, a read-only error, a slow request): probe
    /// this member now.
    pub fn suspect(&self, addr: &str) {
        if let Some(m) = self.member(addr) {
            m.fast.store(true, Ordering::Relaxed);
            m.probe_now();
        }
    }

    /// After `addr` ended a connection of `generation` on its own (FATAL 57P0x): whether the
    /// cluster is moving on from it (a shutdown for a switchover, a crash: `true` once the
    /// generation moves) or it stays the writable primary (`false` as soon as a probe on a
    /// connection opened after this call finds it so: the connection's backend was terminated,
    /// not the server). A shutting-down server refuses new connections at once, so that probe
    /// fails; a probe on the connection it already had could still be answered, by a backend
    /// not yet told of the shutdown. Waits at most `detect_within`, then answers `false` (the
    /// primary stayed).
    ///
    /// Cancel safety: cancel-safe.
    pub async fn moving_on_from(&self, addr: &str, generation: u64) -> bool {
        let Some(m) = self.member(addr) else {
            return self.generation() != generation;
        };
        let wanted = m.fresh_wanted.fetch_add(1, Ordering::AcqRel) + 1;
        m.fast.store(true, Ordering::Relaxed);
        m.probe_now();
        let mut changes = self.generations();
        let deadline = tokio::time::Instant::now() + self.detect_within;
        loop {
            let answered = m.answered.notified();
            let mut answered = std::pin::pin!(answered);
            answered.as_mut().enable();
            if self.generation() != generation {
                return true;
            }
            if m.last_fresh.load(Ordering::Acquire) >= wanted
                && m.last_was_writable.load(Ordering::Relaxed)
            {
                return false;
            }
            tokio::select! {
                () = answered => {}
                r = changes.changed() => {
                    if r.is_err() {
                        // The monitor stopped (process exit): nothing will move.
                        return false;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Requests outstanding on a member speed up its probing.
    pub fn request_started(&self, addr: &str, stripe: Stripe) {
        if let Some(m) = self.member(addr)
            && m.outstanding.up(stripe)
            // Read before written: under load the flag stays false, and its cache line is
            // then only read, not bounced between cores.
            && m.sleeping_slow.load(Ordering::Relaxed)
            && m.sleeping_slow.swap(false, Ordering::Relaxed)
        {
            // From quiet to busy: the probe loop shortens its wait to the fast pace.
            m.kick.notify_one();
        }
    }

    pub fn request_finished(&self, addr: &str, stripe: Stripe) {
        if let Some(m) = self.member(addr) {
            m.outstanding.down(stripe);
        }
    }

    /// The members an operator fenced (as set, before any probe has seen it).
    pub fn fenced_members(&self) -> Vec<String> {
        self.addrs
            .iter()
            .zip(self.signals.iter())
            .filter(|(_, s)| s.fenced.load(Ordering::Relaxed))
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Operator fence: the member never carries traffic until unfenced.
    pub fn set_fenced(&self, addr: &str, fenced: bool) -> bool {
        let Some(m) = self.member(addr) else {
            return false;
        };
        m.fenced.store(fenced, Ordering::Relaxed);
        m.probe_now();
        true
    }
}

struct ProbeLoop {
    id: usize,
    params: ConnectParams,
    settings: MonitorSettings,
    signals: Arc<[MemberSignals]>,
    results: mpsc::Sender<(usize, Result<NodeFacts, ProbeError>)>,
}

impl ProbeLoop {
    async fn run(self, shutdown: CancellationToken) {
        let mut conn: Option<ServerConn> = None;
        let Some(sig) = self.signals.get(self.id) else {
            return;
        };
        // The count of fresh connections asked for that `conn` was opened after.
        let mut fresh = 0;
        loop {
            let started = tokio::time::Instant::now();
            let wanted = sig.fresh_wanted.load(Ordering::Acquire);
            if wanted != fresh {
                conn = None;
                fresh = wanted;
            }
            let result = probe(&mut conn, &self.params, self.settings.probe_timeout).await;
            let failed = result.is_err();
            sig.probes.record(started.elapsed(), !failed);
            let writable = result.as_ref().is_ok_and(|f| !f.in_recovery);
            sig.last_was_writable.store(writable, Ordering::Relaxed);
            sig.last_fresh.store(fresh, Ordering::Release);
            sig.answered.notify_waiters();
            if self.results.send((self.id, result)).await.is_err() {
                return;
            }
            // Wait for the next probe. A kick re-plans the wait (new requests, no primary), or
            // ends it at once when urgent (evidence of trouble from the data path).
            loop {
                let fast = failed
                    || sig.fast.load(Ordering::Relaxed)
                    || sig.no_primary.load(Ordering::Relaxed)
                    || !sig.outstanding.is_zero();
                let interval = if fast {
                    self.settings.fast_interval
                } else {
                    self.settings.probe_interval
                };
                sig.sleeping_slow.store(!fast, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep_until(started + interval) => break,
                    _ = sig.kick.notified() => {
                        if sig.urgent.swap(false, Ordering::Relaxed) {
                            break;
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

struct Decider {
    cluster: Arc<str>,
    settings: MonitorSettings,
    signals: Arc<[MemberSignals]>,
    publish: watch::Sender<Arc<TopologyView>>,
    generation: Arc<ClusterGeneration>,
    /// This monitor's mark: it publishes while the cluster's generation has it as owner.
    mark: u64,
    /// No answer yet since start-up (the first one is news, not trouble).
    first_answer_pending: bool,
}

impl Decider {
    async fn run(
        mut self,
        mut results: mpsc::Receiver<(usize, Result<NodeFacts, ProbeError>)>,
        shutdown: CancellationToken,
    ) {
        loop {
            let (id, result) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                r = results.recv() => match r { Some(r) => r, None => return },
            };
            self.apply(id, result);
        }
    }

    /// Folds one probe result into the view, and publishes if the decision changed.
    fn apply(&mut self, id: usize, result: Result<NodeFacts, ProbeError>) {
        let old = self.publish.borrow().clone();
        let mut members = old.members.clone();
        let Some(m) = members.get_mut(id) else { return };
        let before = m.health;
        m.health = m.health.observe(result.is_ok(), self.settings.thresholds);
        m.fenced = self
            .signals
            .get(id)
            .is_some_and(|s| s.fenced.load(Ordering::Relaxed));
        if let Some(s) = self.signals.get(id) {
            s.fast
                .store(!matches!(m.health, Health::Up), Ordering::Relaxed);
        }
        match &result {
            Ok(f) => m.facts = Some(f.clone()),
            Err(e) if before != m.health => {
                tracing::warn!(cluster = %self.cluster, member = %m.addr, error = %e, "probe failed")
            }
            Err(_) => {}
        }
        if before != m.health {
            tracing::info!(cluster = %self.cluster, member = %m.addr, from = ?before, to = ?m.health, "member health changed");
        }
        let (state, system_id, max_timeline) = self.decide(&old, &members);
        if state == old.state && members == old.members {
            return;
        }
        let changed = state != old.state;
        let view = TopologyView {
            generation: old.generation + u64::from(changed),
            since: if changed { Instant::now() } else { old.since },
            state,
            members,
            system_id,
            max_timeline,
        };
        if changed && std::mem::take(&mut self.first_answer_pending) {
            // The first answer after start-up is news, not trouble.
            tracing::info!(cluster = %self.cluster, generation = view.generation, state = ?view.state, "topology known");
        } else if changed {
            tracing::warn!(cluster = %self.cluster, generation = view.generation, state = ?view.state, "topology changed");
        }
        let generation = view.generation;
        let shared = self.generation.clone();
        let _publishing = shared.lock();
        if shared.owner.load(Ordering::Relaxed) != self.mark {
            // A reload replaced this monitor; the new one answers from now on.
            return;
        }
        shared.current.store(generation, Ordering::Release);
        self.publish.send_replace(Arc::new(view));
        if changed {
            shared.changes.send_replace(generation);
            let none = !matches!(self.publish.borrow().state, ClusterState::Primary { .. });
            for s in self.signals.iter() {
                if s.no_primary.swap(none, Ordering::Relaxed) != none {
                    s.kick.notify_one();
                }
            }
        }
    }

    /// The state for `members`, with the system identifier and highest timeline known then.
    fn decide(
        &self,
        old: &TopologyView,
        members: &[MemberStatus],
    ) -> (ClusterState, Option<u64>, u32) {
        // Members never probed hold back the first decision (see [`decide`]); once there is a
        // primary (a monitor that took over from another, with members added) they only join.
        let has_primary = matches!(old.state, ClusterState::Primary { .. });
        let views: Vec<MemberView> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| !(has_primary && m.health == Health::Unknown))
            .map(|(id, m)| MemberView {
                id,
                health: m.health,
                facts: m.facts.clone(),
                fenced: m.fenced,
            })
            .collect();
        let (mut system_id, mut max_timeline) = (old.system_id, old.max_timeline);
        let state = match decide(&views, system_id, max_timeline) {
            Decision::Primary(id) => {
                let Some(m) = members.get(id) else {
                    return (ClusterState::NoPrimary, system_id, max_timeline);
                };
                if let Some(f) = &m.facts {
                    system_id.get_or_insert(f.system_id);
                    max_timeline = max_timeline.max(f.timeline);
                }
                ClusterState::Primary {
                    id,
                    addr: m.addr.clone(),
                }
            }
            Decision::NoPrimary => ClusterState::NoPrimary,
            Decision::Conflict(ids) => {
                tracing::error!(cluster = %self.cluster, members = ?ids, "two writable members on the same timeline: refusing writes");
                ClusterState::Conflict(ids)
            }
        };
        (state, system_id, max_timeline)
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;

    fn member(addr: &str, facts: Option<(bool, u64)>) -> MemberStatus {
        MemberStatus {
            addr: addr.into(),
            health: Health::Up,
            facts: facts.map(|(in_recovery, wal_lsn)| NodeFacts {
                in_recovery,
                timeline: 1,
                system_id: 7,
                wal_lsn,
            }),
            fenced: false,
        }
    }

    #[test]
    fn roles_and_lag_come_from_the_view() {
        let view = TopologyView {
            generation: 3,
            state: ClusterState::Primary {
                id: 0,
                addr: "a:1".into(),
            },
            members: vec![
                member("a:1", Some((false, 1000))),
                member("b:2", Some((true, 900))),
                member("c:3", Some((true, 400))),
                member("d:4", None),
                member("e:5", Some((false, 10))),
            ],
            since: Instant::now(),
            system_id: Some(7),
            max_timeline: 1,
        };
        let roles: Vec<&str> = view.members.iter().map(|m| view.role_of(m)).collect();
        assert_eq!(
            roles,
            [
                "primary",
                "standby",
                "standby",
                "unknown",
                "writable_not_primary"
            ]
        );
        assert_eq!(view.lag_of(&view.members[1]), Some(100));
        assert_eq!(
            view.lag_of(&view.members[0]),
            None,
            "the primary has no lag"
        );
        assert_eq!(view.standby_lag(), Some(100), "the most advanced standby");
        let none = TopologyView {
            state: ClusterState::NoPrimary,
            ..view
        };
        assert_eq!(none.standby_lag(), None);
        assert_eq!(none.role_of(&none.members[0]), "writable_not_primary");
    }
}
