//! Cluster topology: which member is the primary, by evidence.
//!
//! - [`health`]: per-member health with hysteresis (`Unknown → Up ⇄ Suspect → Down`).
//! - [`decide`]: the pure function that names the primary from what the probes saw.
//! - [`probe`]: one probe of one member on its own dedicated connection.
//! - [`counters`]: what the data path and the probes count per cluster (metrics, incidents).
//! - [`monitor`]: the probe and decider loops, publishing a [`TopologyView`] per cluster.
//! - [`view`]: the published [`TopologyView`] and what can be read from it.
//! - [`carry`]: the first view of a monitor that replaces another (after a reload).
#![forbid(unsafe_code)]

pub mod carry;
pub mod counters;
pub mod decide;
pub mod health;
pub mod monitor;
pub mod probe;
pub mod view;

pub use counters::{Caught, CaughtTotals, ClusterCounters, Outcome, ProbeCounters, Stripe};
pub use decide::{Decision, MemberView, decide};
pub use health::{Health, Thresholds};
pub use monitor::{Carried, ClusterMonitor, MonitorSettings};
pub use probe::{NodeFacts, ProbeError};
pub use view::{ClusterState, MemberStatus, TopologyView};
