//! Per-address connection cap: how many connections one client address may hold open on
//! a listener at once, so a single address cannot exhaust the listener's limit (or the
//! memory behind it) with thousands of idle or slow connections.
//!
//! Cost: one short mutex section (a hash-map update, no await inside) when a connection
//! is admitted and one when it closes; nothing per request. Memory: one entry per address
//! with an open connection, removed when its last connection closes. Trusted proxies
//! (`[server] trusted_proxies`) are exempt: they carry many clients' connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per client address on one listener.
#[derive(Default)]
pub struct PerAddress {
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// Held for as long as a connection is open; gives its place back when dropped.
pub struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// A slot for one more connection from `ip`, or `None` when it already holds `max`
    /// (`max` 0: no cap).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Option<AddressSlot>> {
        if max == 0 {
            return Some(None);
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n as usize >= max {
            return None;
        }
        *n += 1;
        Some(Some(AddressSlot {
            owner: self.clone(),
            ip,
        }))
    }

    /// Connections open from `ip` (for tests and diagnostics).
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_max_and_gets_its_place_back() {
        let p = Arc::new(PerAddress::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = p.admit(a, 2).unwrap();
        let s2 = p.admit(a, 2).unwrap();
        assert!(
            p.admit(a, 2).is_none(),
            "third connection from one address refused"
        );
        assert!(p.admit(b, 2).is_some(), "another address is not affected");
        drop(s1);
        assert_eq!(p.open_from(a), 1);
        assert!(p.admit(a, 2).is_some());
        drop(s2);
        assert!(
            p.admit(a, 0).unwrap().is_none(),
            "0: no cap, no bookkeeping"
        );
    }

    #[test]
    fn entries_are_removed_with_the_last_connection() {
        let p = Arc::new(PerAddress::default());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let s = p.admit(a, 5).unwrap();
        drop(s);
        assert!(p.open.lock().unwrap().is_empty());
    }
}
