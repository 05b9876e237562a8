//! Client IP: the TCP peer, unless the peer is a trusted proxy, in which case the
//! `X-Forwarded-For` chain is walked from the right, skipping trusted hops.
//!
//! Walking from the right is what makes this spoof-proof: a client can prepend anything to
//! the header, but only the hops our trusted proxies appended are believed.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The networks whose forwarding headers are believed. Compiled once per config.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address for a request that arrived from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.nets.is_empty() || !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        // Several X-Forwarded-For fields form one list, in order; walk it from the end.
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            for hop in value.as_bytes().rsplit(|&b| b == b',') {
                let hop = std::str::from_utf8(hop).unwrap_or("").trim();
                match parse_hop(hop) {
                    Some(ip) => {
                        client = ip;
                        if !self.contains(ip) {
                            return ip;
                        }
                    }
                    // Garbage in the chain: stop believing it; the last good hop stands.
                    None => return client,
                }
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses are treated as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The address a client is counted under (rate limits, bans, brute force): an IPv6
/// address is cut to its first `v6_prefix` bits, since a host can pick any address in its
/// /64 at no cost; IPv4 stays whole.
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) if v6_prefix < 128 => {
            let bits = u128::from(v6);
            let mask = if v6_prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(v6_prefix))
            };
            IpAddr::V6((bits & mask).into())
        }
        other => other,
    }
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // "[2001:db8::1]:443" or "192.0.2.1:8080"
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

/// Parses `10.0.0.0/8` or a bare address (as a host route).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::new(vec![parse_net("10.0.0.0/8").unwrap()]);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(t.client_ip(peer, &headers(&["1.2.3.4"])), peer);
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let t = TrustedProxies::new(vec![parse_net("10.0.0.0/8").unwrap()]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(
            t.client_ip(peer, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn garbage_stops_the_walk() {
        let t = TrustedProxies::new(vec![parse_net("10.0.0.0/8").unwrap()]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(t.client_ip(peer, &headers(&["1.1.1.1, nonsense"])), peer);
    }

    #[test]
    fn mapped_v6_peer_matches_v4_net() {
        let t = TrustedProxies::new(vec![parse_net("127.0.0.1").unwrap()]);
        let peer: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(t.contains(peer));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1"), 48),
            ip("2001:db8:1::")
        );
        assert_eq!(client_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_key(ip("192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
    }
}
