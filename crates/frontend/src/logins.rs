//! Connections still logging in, counted per client address: one address may hold at most
//! `max_pending_logins_per_address` of them, so a flood from one host cannot take every
//! `max_client_conn` slot while authenticating nobody (each is also bounded by login_timeout).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

#[derive(Default)]
pub struct PendingLogins {
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One login under way; the count goes down when it drops, however the login ends.
pub struct PendingLogin<'a> {
    logins: &'a PendingLogins,
    address: IpAddr,
}

impl PendingLogins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.by_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a login from `address`, unless `max` are already under way.
    pub fn begin(&self, address: IpAddr, max: usize) -> Option<PendingLogin<'_>> {
        let mut by_address = self.lock();
        let n = by_address.entry(address).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PendingLogin {
            logins: self,
            address,
        })
    }

    /// Addresses with logins under way.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for PendingLogin<'_> {
    fn drop(&mut self) {
        let mut by_address = self.logins.lock();
        if let Some(n) = by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_each_address_and_forgets_it_when_done() {
        let logins = PendingLogins::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = logins.begin(a, 2).expect("first");
        let second = logins.begin(a, 2).expect("second");
        assert!(
            logins.begin(a, 2).is_none(),
            "a third from the same address"
        );
        let other = logins.begin(b, 2).expect("another address is not affected");
        drop(first);
        let again = logins.begin(a, 2).expect("room again");
        drop((second, again, other));
        assert_eq!(logins.addresses(), 0, "no entry left behind");
    }
}
