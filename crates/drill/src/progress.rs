//! The progress display on stderr while a drill runs: a line per second (rewritten in place on
//! a terminal, every fifth second otherwise) with each path's throughput and waiting requests,
//! and a line per drill event (fault, promotion, end).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::workload::{Outcome, SharedLog, lock};

/// Where the progress goes, and since when the drill runs.
#[derive(Clone)]
pub struct Progress {
    epoch: Instant,
    quiet: bool,
    terminal: bool,
}

impl Progress {
    pub fn new(epoch: Instant, quiet: bool) -> Progress {
        Progress {
            epoch,
            quiet,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Prints one drill event on its own line.
    pub fn event(&self, what: &str) {
        if self.quiet {
            return;
        }
        let clear = if self.terminal { "\r\x1b[K" } else { "" };
        eprintln!(
            "{clear}[{:>5.1}s] {what}",
            self.epoch.elapsed().as_secs_f64()
        );
    }

    /// Prints each path's state every second until `stop`.
    pub async fn run(self, paths: Vec<(&'static str, Vec<SharedLog>)>, stop: CancellationToken) {
        if self.quiet {
            return;
        }
        let mut last_ok = vec![0usize; paths.len()];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        for n in 1u64.. {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = self.epoch.elapsed();
            let parts: Vec<String> = paths
                .iter()
                .zip(last_ok.iter_mut())
                .map(|((name, logs), last)| {
                    let (ok, waiting, oldest) = summary(logs, now);
                    let rate = ok - *last;
                    *last = ok;
                    let oldest = oldest.map_or(String::new(), |d| {
                        format!(", oldest {:.0}s", d.as_secs_f64())
                    });
                    format!("{name}: {rate:>4} ok/s, {waiting:>3} waiting >1s{oldest}")
                })
                .collect();
            let line = format!("[{:>5.1}s] {}", now.as_secs_f64(), parts.join(" | "));
            if self.terminal {
                eprint!("\r\x1b[K{line}");
                let _ = std::io::stderr().flush();
            } else if n % 5 == 0 {
                eprintln!("{line}");
            }
        }
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }
}

/// Successful requests so far, requests waiting over a second, and the oldest wait.
fn summary(logs: &[SharedLog], now: Duration) -> (usize, usize, Option<Duration>) {
    let mut ok = 0;
    let mut waiting = 0;
    let mut oldest: Option<Duration> = None;
    for log in logs {
        let log = lock(log);
        ok += log.done.iter().filter(|r| r.outcome == Outcome::Ok).count();
        if let Some(r) = log.in_flight {
            let age = now.saturating_sub(r.start);
            if age > Duration::from_secs(1) {
                waiting += 1;
                oldest = Some(oldest.map_or(age, |o| o.max(age)));
            }
        }
    }
    (ok, waiting, oldest)
}
