//! PAUSE and RESUME: an operator holds new transactions of one database (or of all) until
//! RESUME, while transactions already running finish. The hold is part of attaching (see
//! `session/attach.rs`), bounded by `failover_timeout` like the failover gate, and costs one
//! atomic load when nothing is paused.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;
use tokio::time::Instant;

/// What is paused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paused {
    /// Everything (PAUSE without a database).
    pub all: bool,
    /// `(cluster, server database)` pairs.
    pub databases: BTreeSet<(String, String)>,
}

impl Paused {
    pub fn covers(&self, cluster: &str, server_db: &str) -> bool {
        self.all
            || self
                .databases
                .iter()
                .any(|(c, d)| c == cluster && d == server_db)
    }
}

/// The pause state every session consults.
pub struct Pauses {
    /// Anything paused at all: the one load on the hot path.
    any: AtomicBool,
    paused: Mutex<Paused>,
    /// Bumped on every change, so waiting sessions look again.
    changed: watch::Sender<()>,
}

impl Default for Pauses {
    fn default() -> Self {
        Self {
            any: AtomicBool::new(false),
            paused: Mutex::default(),
            changed: watch::Sender::new(()),
        }
    }
}

impl Pauses {
    fn update<R>(&self, f: impl FnOnce(&mut Paused) -> R) -> R {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut p);
        self.any
            .store(p.all || !p.databases.is_empty(), Ordering::Relaxed);
        drop(p);
        self.changed.send_replace(());
        r
    }

    /// Pauses everything (`None`) or one `(cluster, server database)`.
    pub fn pause(&self, what: Option<(String, String)>) {
        self.update(|p| match what {
            None => p.all = true,
            Some(db) => {
                p.databases.insert(db);
            }
        });
    }

    /// Resumes everything (`None`: also every database paused alone) or one database; false if
    /// it was not paused.
    pub fn resume(&self, what: Option<&(String, String)>) -> bool {
        self.update(|p| match what {
            None => {
                let was = p.all || !p.databases.is_empty();
                *p = Paused::default();
                was
            }
            Some(db) => p.databases.remove(db),
        })
    }

    /// Whether anything is paused (one atomic load).
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    pub fn current(&self) -> Paused {
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_paused(&self, cluster: &str, server_db: &str) -> bool {
        self.any()
            && self
                .paused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .covers(cluster, server_db)
    }

    /// Waits until the database is not paused; false if it still is at `until`.
    ///
    /// Cancel safety: cancel-safe.
    pub(crate) async fn wait_resumed(
        &self,
        cluster: &str,
        server_db: &str,
        until: Instant,
    ) -> bool {
        let mut changes = self.changed.subscribe();
        loop {
            if !self.is_paused(cluster, server_db) {
                return true;
            }
            match tokio::time::timeout_at(until, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return !self.is_paused(cluster, server_db),
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn db(c: &str, d: &str) -> (String, String) {
        (c.to_owned(), d.to_owned())
    }

    #[test]
    fn pause_and_resume_by_database_or_all() {
        let p = Pauses::default();
        assert!(!p.any());
        p.pause(Some(db("main", "app")));
        assert!(p.is_paused("main", "app"));
        assert!(!p.is_paused("main", "other"));
        assert!(!p.is_paused("other", "app"));
        assert!(p.resume(Some(&db("main", "app"))));
        assert!(!p.any());
        p.pause(None);
        assert!(p.is_paused("x", "y"));
        assert!(!p.resume(Some(&db("x", "y"))), "only paused as a whole");
        assert!(p.resume(None));
        assert!(!p.any());
        assert!(!p.resume(None));
    }

    #[tokio::test]
    async fn a_wait_ends_at_resume_or_at_its_deadline() {
        let p = Arc::new(Pauses::default());
        p.pause(None);
        let until = Instant::now() + Duration::from_millis(50);
        assert!(!p.wait_resumed("main", "app", until).await, "times out");
        let mut waiter = {
            let p = p.clone();
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(20);
                p.wait_resumed("main", "app", until).await
            })
        };
        let early = tokio::time::timeout(Duration::from_millis(100), &mut waiter).await;
        assert!(early.is_err(), "still paused");
        p.resume(None);
        let resumed = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(resumed.expect("wakes at RESUME").unwrap());
    }
}
