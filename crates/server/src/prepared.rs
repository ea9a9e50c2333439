//! The prepared statements that exist on one server connection (transaction pooling names them
//! after their text), with the order they were last used in, so that the least recently used
//! goes first when a connection holds `max_prepared_statements` (PgBouncer's setting): the relay
//! closes it on the server, and prepares it again there if a client needs it later.

use bytes::Bytes;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Prepared {
    /// Server-side name → when it was last used (a counter, not a clock: no clock read).
    used: HashMap<Bytes, u64>,
    tick: u64,
    /// The tick the current client's attachment began at: statements used since may have
    /// portals open on them (closing a statement closes its portals), so they are not evicted.
    attached_at: u64,
    /// The record may miss statements the server has (an error made the server skip messages
    /// the record had counted): a Parse must close its name first.
    uncertain: bool,
}

impl Prepared {
    /// A client is attached: what it uses from now on stays until it detaches.
    pub fn begin_attachment(&mut self) {
        self.tick += 1;
        self.attached_at = self.tick;
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.used.contains_key(name)
    }

    /// Marks `name` used now (a Bind or Describe went to it).
    pub fn touch(&mut self, name: &[u8]) {
        self.tick += 1;
        if let Some(t) = self.used.get_mut(name) {
            *t = self.tick;
        }
    }

    /// Records `name` as prepared on the server. If the connection then holds more than `max`,
    /// returns the least recently used statement not used by the attached client, for the
    /// caller to close on the server (none while every one is in use: the bound is exceeded
    /// until the client detaches, rather than a portal closed under it).
    pub fn insert(&mut self, name: Bytes, max: usize) -> Option<Bytes> {
        self.tick += 1;
        self.used.insert(name.clone(), self.tick);
        if self.used.len() <= max.max(1) {
            return None;
        }
        // Only when full: a scan of at most `max` entries, once per statement prepared beyond it.
        let victim = self
            .used
            .iter()
            .filter(|(_, t)| **t < self.attached_at)
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())?;
        self.used.remove(&victim);
        Some(victim)
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.used.remove(name);
    }

    /// The server has none (after DISCARD ALL, DEALLOCATE ALL, or a reset).
    pub fn clear(&mut self) {
        self.used.clear();
        self.uncertain = false;
    }

    /// An error made the server skip messages the record counted: forget everything, and
    /// have every later Parse close its name first (harmless if absent).
    pub fn forget_uncertain(&mut self) {
        self.used.clear();
        self.uncertain = true;
    }

    /// Whether a statement not in the record may still be on the server.
    pub fn is_uncertain(&self) -> bool {
        self.uncertain
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut p = Prepared::default();
        let name = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(p.insert(name("a"), 2), None);
        assert_eq!(p.insert(name("b"), 2), None);
        p.begin_attachment();
        p.touch(b"a");
        assert_eq!(
            p.insert(name("c"), 2),
            Some(name("b")),
            "b was used least recently"
        );
        assert!(p.contains(b"a") && p.contains(b"c") && !p.contains(b"b"));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn statements_the_attached_client_used_are_kept() {
        let mut p = Prepared::default();
        let name = |s: &'static str| Bytes::from_static(s.as_bytes());
        p.insert(name("old"), 1);
        p.begin_attachment();
        p.touch(b"old");
        assert_eq!(p.insert(name("new"), 1), None, "old may have a portal open");
        assert_eq!(p.len(), 2, "over the bound until the client detaches");
        p.begin_attachment();
        assert_eq!(p.insert(name("next"), 1), Some(name("old")));
    }
}
