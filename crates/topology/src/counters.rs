//! What the data path and the probes count, per cluster: transactions and their latency, the
//! outcomes of requests caught by a failover (held in the gate, rolled back, outcome unknown,
//! gate timeouts, re-sent), probe results, and which sites (databases) a failover touched.
//!
//! Plain atomics (striped where every transaction writes them: [`STRIPES`]), written on the
//! data path without locks (the set of touched sites takes a lock,
//! but only when a failover touches a request) and read at scrape time by the metrics, the admin
//! console and the incident tracker.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the transaction-latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// [`LATENCY_BUCKETS`] in microseconds: what the data path compares against (no float work per
/// request).
const LATENCY_BUCKETS_US: [u64; LATENCY_BUCKETS.len()] = {
    let mut us = [0u64; LATENCY_BUCKETS.len()];
    let mut i = 0;
    while i < us.len() {
        us[i] = (LATENCY_BUCKETS[i] * 1e6 + 0.5) as u64;
        i += 1;
    }
    us
};

/// How many stripes the counters every transaction updates are split into. With one atomic
/// per counter, every worker thread's every transaction would write the same few cache lines,
/// which then move between cores on each update: the first thing that stops a multi-threaded
/// proxy from scaling with cores. An update touches one stripe; a read (a scrape) sums them.
pub const STRIPES: usize = 8;

/// Which stripe an update goes to. Taken from the server connection's backend process id: two
/// transactions running at once never share a server connection, and backends' ids differ, so
/// updates made at the same moment spread over the stripes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stripe(usize);

impl Stripe {
    pub fn of(id: i32) -> Stripe {
        Stripe(id.unsigned_abs() as usize % STRIPES)
    }
}

/// A value on cache lines of its own (128 bytes: adjacent-line prefetching pairs 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A counter in [`STRIPES`] stripes.
#[derive(Debug, Default)]
pub struct StripedCounter([Padded<AtomicU64>; STRIPES]);

impl StripedCounter {
    pub fn add(&self, stripe: Stripe, n: u64) {
        self.0[stripe.0].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// A count that goes up and down (requests outstanding), in [`STRIPES`] stripes. An up and its
/// down must name the same stripe.
#[derive(Debug, Default)]
pub struct StripedGauge([Padded<AtomicU64>; STRIPES]);

impl StripedGauge {
    /// One more; true if its stripe was at zero (the whole may have been).
    pub fn up(&self, stripe: Stripe) -> bool {
        self.0[stripe.0].0.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// One fewer (never below zero).
    pub fn down(&self, stripe: Stripe) {
        let _ = self.0[stripe.0]
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|c| c.0.load(Ordering::Relaxed) == 0)
    }
}

/// One stripe of a [`LatencyHistogram`].
#[derive(Debug, Default)]
struct HistogramStripe {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// A latency histogram over [`LATENCY_BUCKETS`] (cumulative only when read), in [`STRIPES`]
/// stripes.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    stripes: [Padded<HistogramStripe>; STRIPES],
}

impl LatencyHistogram {
    /// Off the data path (probes): the first stripe.
    pub fn observe(&self, d: Duration) {
        self.observe_in(d, Stripe::default());
    }

    pub fn observe_in(&self, d: Duration, stripe: Stripe) {
        let s = &self.stripes[stripe.0].0;
        let us = d.as_micros() as u64;
        // The first bucket whose bound is at least `us` (none: only the +Inf bucket, the count).
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        if let Some(bucket) = s.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// How many were observed.
    pub fn count(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.count.load(Ordering::Relaxed))
            .sum()
    }

    /// `(sum in seconds, count, cumulative (upper bound, count) buckets)`, as Prometheus wants.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut running = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                running += self
                    .stripes
                    .iter()
                    .map(|s| s.0.buckets[i].load(Ordering::Relaxed))
                    .sum::<u64>();
                (b, running)
            })
            .collect();
        let sum_us: u64 = self
            .stripes
            .iter()
            .map(|s| s.0.sum_us.load(Ordering::Relaxed))
            .sum();
        (sum_us as f64 / 1e6, self.count(), buckets)
    }
}

/// How a request caught by a failover (or by a missing primary) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caught {
    /// Waited in the failover gate, then ran.
    Held(Duration),
    /// A COMMIT in flight when its server was lost, found committed on the primary that
    /// followed (commit outcome resolution): the client got its COMMIT.
    Committed,
    /// Rolled back: 40001 told to the client.
    RolledBack,
    /// Outcome unknown: 08007 told to the client.
    Unknown,
    /// No primary within the gate's deadline: 57P03.
    GateTimeout,
    /// Sent again through the gate (it never reached the server, or changed nothing).
    Retried,
    /// Session mode: the session ended with 57P01.
    SessionLost,
}

/// Per-cluster counters (see the module doc).
#[derive(Debug, Default)]
pub struct ClusterCounters {
    pub queries: StripedCounter,
    /// Its count is the number of transactions ([`ClusterCounters::transactions`]).
    pub transaction_latency: LatencyHistogram,
    /// From a request's (or pipelined batch's) last byte sent to its ReadyForQuery.
    pub query_latency: LatencyHistogram,
    pub held: AtomicU64,
    pub held_us: AtomicU64,
    pub longest_hold_us: AtomicU64,
    pub committed: AtomicU64,
    pub rolled_back: AtomicU64,
    pub unknown: AtomicU64,
    pub gate_timeouts: AtomicU64,
    pub retried: AtomicU64,
    pub sessions_lost: AtomicU64,
    /// Requests whose server connection was lost while the primary stayed the primary (a
    /// backend an operator terminated, a server-side timeout, a network blip): handled as a
    /// failover's are (sent again, or told 40001, 08007 or 57P01), but not counted as one.
    pub lost_outside_failover: AtomicU64,
    touched: Mutex<BTreeSet<String>>,
}

/// A copy of the failover outcomes, to compare two moments. Serialized flat into an incident's
/// scope, under the [`Outcome::key`] names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaughtTotals {
    pub held: u64,
    pub longest_hold_ms: u64,
    /// COMMITs in flight found committed (commit outcome resolution).
    #[serde(default)]
    pub committed: u64,
    pub rolled_back: u64,
    pub unknown: u64,
    pub gate_timeouts: u64,
    pub retried: u64,
    pub sessions_lost: u64,
}

/// One failover outcome as every surface shows it: metrics, status page, admin console and
/// notifications take them from [`CaughtTotals::outcomes`], in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The field's name in JSON (incident scope) and the admin console's column.
    pub key: &'static str,
    /// The `outcome` label of `switchyard_failover_requests_total`.
    pub label: &'static str,
    /// For people: status page headings and notification summaries.
    pub heading: &'static str,
    pub count: u64,
}

impl CaughtTotals {
    /// The request outcomes (not the longest hold), in the one order every surface uses.
    pub fn outcomes(&self) -> [Outcome; 7] {
        let o = |key, label, heading, count| Outcome {
            key,
            label,
            heading,
            count,
        };
        [
            o("held", "held", "held", self.held),
            o(
                "committed",
                "committed",
                "COMMIT in flight, found committed",
                self.committed,
            ),
            o(
                "rolled_back",
                "rolled_back",
                "rolled back (40001)",
                self.rolled_back,
            ),
            o(
                "unknown",
                "unknown",
                "outcome unknown (08007)",
                self.unknown,
            ),
            o(
                "gate_timeouts",
                "gate_timeout",
                "gate timeouts (57P03)",
                self.gate_timeouts,
            ),
            o("retried", "retried", "re-sent", self.retried),
            o(
                "sessions_lost",
                "session_lost",
                "sessions lost (57P01)",
                self.sessions_lost,
            ),
        ]
    }

    /// What happened between `earlier` and `self` (the longest hold is the later maximum).
    pub fn since(&self, earlier: &CaughtTotals) -> CaughtTotals {
        CaughtTotals {
            held: self.held.saturating_sub(earlier.held),
            longest_hold_ms: self.longest_hold_ms,
            committed: self.committed.saturating_sub(earlier.committed),
            rolled_back: self.rolled_back.saturating_sub(earlier.rolled_back),
            unknown: self.unknown.saturating_sub(earlier.unknown),
            gate_timeouts: self.gate_timeouts.saturating_sub(earlier.gate_timeouts),
            retried: self.retried.saturating_sub(earlier.retried),
            sessions_lost: self.sessions_lost.saturating_sub(earlier.sessions_lost),
        }
    }
}

impl ClusterCounters {
    /// One transaction (transaction mode) or session attachment ended, with its requests.
    pub fn transaction(&self, took: Duration, queries: u64, stripe: Stripe) {
        self.queries.add(stripe, queries);
        self.transaction_latency.observe_in(took, stripe);
    }

    /// Transactions (transaction mode) and session attachments ended so far.
    pub fn transactions(&self) -> u64 {
        self.transaction_latency.count()
    }

    /// A request of a client of `database` was caught by a failover.
    pub fn caught(&self, database: &str, what: Caught) {
        let counter = match what {
            Caught::Held(waited) => {
                let us = waited.as_micros() as u64;
                self.held_us.fetch_add(us, Ordering::Relaxed);
                self.longest_hold_us.fetch_max(us, Ordering::Relaxed);
                &self.held
            }
            Caught::Committed => &self.committed,
            Caught::RolledBack => &self.rolled_back,
            Caught::Unknown => &self.unknown,
            Caught::GateTimeout => &self.gate_timeouts,
            Caught::Retried => &self.retried,
            Caught::SessionLost => &self.sessions_lost,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        if !touched.contains(database) {
            touched.insert(database.to_owned());
        }
    }

    /// The failover outcomes so far. `longest_hold_ms` is the longest since the last
    /// [`ClusterCounters::take_touched`].
    pub fn caught_totals(&self) -> CaughtTotals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CaughtTotals {
            held: load(&self.held),
            longest_hold_ms: load(&self.longest_hold_us) / 1000,
            committed: load(&self.committed),
            rolled_back: load(&self.rolled_back),
            unknown: load(&self.unknown),
            gate_timeouts: load(&self.gate_timeouts),
            retried: load(&self.retried),
            sessions_lost: load(&self.sessions_lost),
        }
    }

    /// The sites touched since the last call, and a fresh start for the longest hold (an
    /// incident's scope).
    pub fn take_touched(&self) -> BTreeSet<String> {
        self.longest_hold_us.store(0, Ordering::Relaxed);
        std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The sites touched since the last [`ClusterCounters::take_touched`], without resetting.
    pub fn touched(&self) -> BTreeSet<String> {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Probe results of one member.
#[derive(Debug, Default)]
pub struct ProbeCounters {
    pub ok: AtomicU64,
    /// Wall-clock time of the last successful probe (Unix ms; 0: none yet).
    pub last_ok_unix_ms: AtomicU64,
    pub failed: AtomicU64,
    pub last_latency_us: AtomicU64,
    pub latency: LatencyHistogram,
}

impl ProbeCounters {
    pub fn record(&self, took: Duration, ok: bool) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.last_ok_unix_ms.store(unix_ms(), Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.last_latency_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.latency.observe(took);
    }
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_sums() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(120));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 120.0033).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 2));
        // A bound is inclusive: exactly 1 ms falls in the 1 ms bucket.
        h.observe(Duration::from_millis(1));
        assert_eq!(h.snapshot().2[1], (0.001, 2));
        assert_eq!(
            buckets.last(),
            Some(&(60.0, 2)),
            "beyond the last bucket: only +Inf"
        );
        assert_eq!(LATENCY_BUCKETS_US[0], 500);
        assert_eq!(LATENCY_BUCKETS_US[13], 60_000_000);
    }

    #[test]
    fn stripes_add_up() {
        let h = LatencyHistogram::default();
        let c = StripedCounter::default();
        let g = StripedGauge::default();
        for pid in [1, 2, 9, -3, 100_007] {
            h.observe_in(Duration::from_micros(400), Stripe::of(pid));
            c.add(Stripe::of(pid), 2);
            assert!(g.up(Stripe::of(pid)) || pid == 9, "1 and 9 share a stripe");
        }
        assert_eq!(Stripe::of(1), Stripe::of(9));
        assert_eq!((h.count(), c.get()), (5, 10));
        assert_eq!(h.snapshot().2[0], (0.0005, 5));
        assert!((h.snapshot().0 - 0.002).abs() < 1e-9);
        assert!(!g.is_zero());
        for pid in [1, 2, 9, -3, 100_007, 2] {
            g.down(Stripe::of(pid)); // the extra down stays at zero
        }
        assert!(g.is_zero());
        assert!(g.up(Stripe::of(2)), "not below zero");
    }

    #[test]
    fn caught_requests_count_and_name_their_sites() {
        let c = ClusterCounters::default();
        let before = c.caught_totals();
        c.caught("site_01", Caught::Held(Duration::from_millis(1500)));
        c.caught("site_02", Caught::RolledBack);
        c.caught("site_01", Caught::Unknown);
        let d = c.caught_totals().since(&before);
        assert_eq!((d.held, d.rolled_back, d.unknown), (1, 1, 1));
        assert_eq!(d.longest_hold_ms, 1500);
        let touched: Vec<String> = c.take_touched().into_iter().collect();
        assert_eq!(touched, ["site_01", "site_02"]);
        assert!(c.touched().is_empty());
        assert_eq!(c.caught_totals().longest_hold_ms, 0);
    }
}
