//! Incidents kept across restarts: one JSON file holding the latest [`MAX_KEPT`] incidents,
//! rewritten whole (to a temporary file, then renamed over) after every change. Incidents are
//! few and small, so a file is all the store this needs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::incident::Incident;

/// Incidents kept in the file (and in memory), newest first.
pub const MAX_KEPT: usize = 200;

/// Where incidents are kept; `None`: memory only.
#[derive(Debug)]
pub struct Store {
    path: Option<PathBuf>,
    /// The version last written. Held while writing: the tracker and every webhook delivery
    /// save, from different threads; one at a time, and never an older copy over a newer one.
    written: Mutex<u64>,
}

impl Store {
    pub fn new(path: &str) -> Store {
        Store {
            path: (!path.is_empty()).then(|| PathBuf::from(path)),
            written: Mutex::new(0),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The incidents kept so far, newest first; a missing file is an empty history, an
    /// unreadable one is reported and set aside (renamed `*.unreadable`), never fatal.
    pub fn load(&self) -> Vec<Incident> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the incidents file; starting with none");
                return Vec::new();
            }
        };
        match serde_json::from_str::<Vec<Incident>>(&text) {
            Ok(mut incidents) => {
                incidents.truncate(MAX_KEPT);
                incidents
            }
            Err(e) => {
                let aside = path.with_extension("unreadable");
                let _ = std::fs::rename(path, &aside);
                tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(), "the incidents file is not valid; set aside, starting with none");
                Vec::new()
            }
        }
    }

    /// Writes `incidents` (newest first), copy number `version` of the history (taken in
    /// order by the caller); skipped if a later copy was written already. Errors are logged:
    /// losing the history must not stop the proxy.
    pub fn save(&self, version: u64, incidents: &[Incident]) {
        let Some(path) = &self.path else {
            return;
        };
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if *written >= version {
            return;
        }
        *written = version;
        let tmp = path.with_extension("tmp");
        let json = match serde_json::to_vec_pretty(incidents) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode incidents");
                return;
            }
        };
        if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the incidents file");
        }
    }
}
