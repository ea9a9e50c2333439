//! The options of `switchyard drill`: which fault, which cluster manager, how many site backends,
//! and the phases' lengths.

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `switchyard drill`.
#[derive(Debug, Clone, Args)]
pub struct DrillArgs {
    /// The fault injected on both primaries at once.
    #[arg(long, value_enum, default_value_t = FaultKind::Freeze)]
    pub fault: FaultKind,
    /// Who promotes the standby: `builtin` promotes it `--promote-after` the fault, as RDS would;
    /// `patroni` runs a real Patroni + etcd stack that notices the failure and promotes by itself.
    #[arg(long, value_enum, default_value_t = ManagerKind::Builtin)]
    pub manager: ManagerKind,
    /// How Switchyard finds the members: `members` lists both addresses; `dns` gives it one
    /// name (a real dnsmasq) that moves to the standby when it is promoted, as a managed
    /// database's endpoint does (builtin manager; crash or freeze: the two members share a
    /// port, so a blackhole by port would take both).
    #[arg(long, value_enum, default_value_t = TopologyKind::Members)]
    pub topology: TopologyKind,
    /// Session pooling: each site backend's connection is one server session that builds
    /// state when it connects (a setting, a prepared statement) and every read uses it, so a
    /// session that lost it fails. Switchyard must rebuild idle sessions on the new primary.
    #[arg(long)]
    pub sessions: bool,
    /// Switchyard with `[failover] resolve_commits = true`: a COMMIT or autocommit write in
    /// flight at the fault gets its true answer instead of 08007.
    #[arg(long)]
    pub resolve_commits: bool,
    /// Builtin manager: time from the fault to the promotion.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub promote_after: Duration,
    /// Concurrent site backends per path, one database per site.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub sites: u16,
    /// Normal traffic before the fault.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// How long the drill keeps watching after the promotion before it ends.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub observe: Duration,
    /// Longest wait for the manager's promotion (the drill ends after it plus `--observe`).
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub promotion_timeout: Duration,
    /// Pause between two requests of one site backend.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub think_time: Duration,
    /// Directory for report.json, report.txt, latency.svg and the proxy's config and log.
    #[arg(long, default_value = "switchyard-drill")]
    pub out: PathBuf,
    /// No progress display on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// The Switchyard program to run as the proxy [default: this program].
    #[arg(long, hide = true)]
    pub proxy_exe: Option<PathBuf>,
}

/// A fault on the primary's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// SIGKILL of every PostgreSQL process: sockets are reset, clients hear about it at once.
    Crash,
    /// SIGSTOP of every PostgreSQL process: the kernel still accepts and ACKs, nothing answers.
    Freeze,
    /// Every packet to and from the primary's port dropped (iptables): nothing comes back.
    Blackhole,
}

/// The cluster manager that promotes the standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerKind {
    /// The drill itself promotes the standby `--promote-after` the fault.
    Builtin,
    /// Patroni (with etcd) from Debian's packages detects the failure and promotes.
    Patroni,
}

/// How Switchyard is told where the members are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopologyKind {
    /// Both members' addresses in the config.
    Members,
    /// One DNS name that follows the primary.
    Dns,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Freeze => "freeze",
            FaultKind::Blackhole => "blackhole",
        }
    }
}

impl ManagerKind {
    pub fn name(self) -> &'static str {
        match self {
            ManagerKind::Builtin => "builtin",
            ManagerKind::Patroni => "patroni",
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    switchyard_config::Duration::parse(text).map(|d| d.get())
}
