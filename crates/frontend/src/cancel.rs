//! Cancel routing. Each client gets a backend key of Switchyard's own; a CancelRequest with that
//! key is forwarded to whichever server connection the client is using at that moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_server::BackendKey;

/// Where a cancel for a client should go right now.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: Arc<str>,
    pub key: BackendKey,
}

struct Entry {
    secret: [u8; 4],
    target: Arc<Mutex<Option<CancelTarget>>>,
}

type Entries = Arc<Mutex<HashMap<i32, Entry>>>;

#[derive(Default)]
pub struct CancelRegistry {
    entries: Entries,
}

fn lock(entries: &Entries) -> std::sync::MutexGuard<'_, HashMap<i32, Entry>> {
    entries.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client's registration; unregisters on drop.
pub struct CancelHandle {
    entries: Entries,
    pub process_id: i32,
    pub secret: [u8; 4],
    target: Arc<Mutex<Option<CancelTarget>>>,
}

impl CancelRegistry {
    /// Gives a new client a unique key.
    pub fn register(&self) -> CancelHandle {
        let target = Arc::new(Mutex::new(None));
        let mut entries = lock(&self.entries);
        loop {
            let process_id = rand::random::<i32>() & 0x7fff_ffff;
            if process_id == 0 || entries.contains_key(&process_id) {
                continue;
            }
            let secret = rand::random::<[u8; 4]>();
            entries.insert(
                process_id,
                Entry {
                    secret,
                    target: target.clone(),
                },
            );
            return CancelHandle {
                entries: self.entries.clone(),
                process_id,
                secret,
                target,
            };
        }
    }

    /// Forwards a cancel if the key matches a client that is using a server right now.
    pub async fn cancel(&self, process_id: i32, secret: &[u8]) {
        let target = {
            let entries = lock(&self.entries);
            match entries.get(&process_id) {
                Some(e) if e.secret[..] == *secret => {
                    e.target.lock().unwrap_or_else(|p| p.into_inner()).clone()
                }
                _ => None,
            }
        };
        let Some(t) = target else {
            tracing::debug!(process_id, "cancel request for no active query");
            return;
        };
        if let Err(e) =
            switchyard_server::send_cancel(&t.addr, &t.key, Duration::from_secs(5)).await
        {
            tracing::warn!(process_id, error = %e, "forwarding cancel request failed");
        }
    }
}

impl CancelHandle {
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        lock(&self.entries).remove(&self.process_id);
    }
}
