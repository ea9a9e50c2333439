//! Member health with hysteresis: consecutive-result thresholds stop one slow probe from moving
//! traffic, and one lucky probe from bringing a flapping member back.

/// How many consecutive results move a member between states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failures (counting the one that made it Suspect) before Down.
    pub down_after: u32,
    /// Consecutive successes before a Down member is Up again.
    pub up_after: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            down_after: 2,
            up_after: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Never probed successfully yet.
    Unknown,
    Up,
    /// Recent probes failed, fewer than `down_after` in a row.
    Suspect {
        failures: u32,
    },
    /// Probes keep failing; `successes` counts a recovery in progress.
    Down {
        successes: u32,
    },
}

impl Health {
    /// The state's name, without its counts: `Unknown`, `Up`, `Suspect` or `Down`.
    pub fn name(self) -> &'static str {
        match self {
            Health::Unknown => "Unknown",
            Health::Up => "Up",
            Health::Suspect { .. } => "Suspect",
            Health::Down { .. } => "Down",
        }
    }

    /// The one transition point: the next state after a probe result.
    pub fn observe(self, ok: bool, t: Thresholds) -> Health {
        use Health::*;
        match (self, ok) {
            (Unknown | Up | Suspect { .. }, true) => Up,
            (Down { successes }, true) if successes + 1 >= t.up_after => Up,
            (Down { successes }, true) => Down {
                successes: successes + 1,
            },
            (Up, false) if t.down_after <= 1 => Down { successes: 0 },
            (Up, false) => Suspect { failures: 1 },
            (Suspect { failures }, false) if failures + 1 >= t.down_after => Down { successes: 0 },
            (Suspect { failures }, false) => Suspect {
                failures: failures + 1,
            },
            (Unknown | Down { .. }, false) => Down { successes: 0 },
        }
    }

    /// May carry traffic (a Suspect member still does until it is Down).
    pub fn is_usable(self) -> bool {
        matches!(self, Health::Up | Health::Suspect { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::Health::*;
    use super::*;

    fn run(start: Health, results: &[bool], t: Thresholds) -> Vec<Health> {
        results
            .iter()
            .scan(start, |h, &ok| {
                *h = h.observe(ok, t);
                Some(*h)
            })
            .collect()
    }

    #[test]
    fn table() {
        let t = Thresholds {
            down_after: 3,
            up_after: 2,
        };
        let cases: &[(Health, &[bool], &[Health])] = &[
            (Unknown, &[true], &[Up]),
            (Unknown, &[false], &[Down { successes: 0 }]),
            (Up, &[false, true], &[Suspect { failures: 1 }, Up]),
            (
                Up,
                &[false, false, false],
                &[
                    Suspect { failures: 1 },
                    Suspect { failures: 2 },
                    Down { successes: 0 },
                ],
            ),
            (
                Down { successes: 0 },
                &[true, false, true, true],
                &[
                    Down { successes: 1 },
                    Down { successes: 0 },
                    Down { successes: 1 },
                    Up,
                ],
            ),
        ];
        for (start, results, want) in cases {
            assert_eq!(
                run(*start, results, t),
                want.to_vec(),
                "from {start:?} with {results:?}"
            );
        }
        assert_eq!(
            Up.observe(
                false,
                Thresholds {
                    down_after: 1,
                    up_after: 1
                }
            ),
            Down { successes: 0 }
        );
        assert!(Suspect { failures: 1 }.is_usable() && !Down { successes: 0 }.is_usable());
    }
}
