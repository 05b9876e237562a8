//! Routing: host and path prefix to a route, compiled once per config.
//!
//! Exact hosts are looked up in a hash map; wildcard (`*.example.com`) hosts are tried by
//! longest suffix; routes without a host come last. Within a host, the longest matching
//! path prefix wins (a `case_insensitive` route's prefix in any ASCII case). A lookup is one
//! hash probe plus a scan of that host's prefixes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::proxy::route::Route;

#[derive(Default)]
pub struct Router {
    exact: HashMap<Box<str>, Vec<Arc<Route>>>,
    /// (suffix including the leading dot, routes), longest suffix first.
    wildcard: Vec<(Box<str>, Vec<Arc<Route>>)>,
    any_host: Vec<Arc<Route>>,
}

impl Router {
    /// Builds the router; `routes` are in config order, which breaks ties between equal prefixes.
    pub fn new(routes: &[Arc<Route>]) -> Router {
        let mut r = Router::default();
        for route in routes {
            match route.host.as_deref() {
                None | Some("*") => r.any_host.push(route.clone()),
                Some(h) if h.starts_with("*.") => {
                    let suffix: Box<str> = h[1..].to_ascii_lowercase().into();
                    match r.wildcard.iter_mut().find(|(s, _)| *s == suffix) {
                        Some((_, v)) => v.push(route.clone()),
                        None => r.wildcard.push((suffix, vec![route.clone()])),
                    }
                }
                Some(h) => r
                    .exact
                    .entry(h.to_ascii_lowercase().into())
                    .or_default()
                    .push(route.clone()),
            }
        }
        let by_prefix = |v: &mut Vec<Arc<Route>>| {
            // Stable sort keeps config order among equal prefix lengths.
            v.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        };
        r.exact.values_mut().for_each(by_prefix);
        r.wildcard.iter_mut().for_each(|(_, v)| by_prefix(v));
        by_prefix(&mut r.any_host);
        r.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        r
    }

    /// The route for a host (without port, any case) and path.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = strip_port(host);
        let mut lower = [0u8; 256];
        let host = if host.len() <= lower.len() && host.bytes().any(|b| b.is_ascii_uppercase()) {
            let buf = &mut lower[..host.len()];
            buf.copy_from_slice(host.as_bytes());
            buf.make_ascii_lowercase();
            std::str::from_utf8(buf).unwrap_or(host)
        } else {
            host
        };
        if let Some(routes) = self.exact.get(host) {
            if let Some(r) = first_prefix(routes, path) {
                return Some(r);
            }
        }
        for (suffix, routes) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(&**suffix) {
                if let Some(r) = first_prefix(routes, path) {
                    return Some(r);
                }
            }
        }
        first_prefix(&self.any_host, path)
    }
}

fn first_prefix<'a>(routes: &'a [Arc<Route>], path: &str) -> Option<&'a Arc<Route>> {
    routes.iter().find(|r| {
        if r.case_insensitive {
            let n = r.path_prefix.len();
            path.len() >= n && path.as_bytes()[..n].eq_ignore_ascii_case(r.path_prefix.as_bytes())
        } else {
            path.starts_with(&*r.path_prefix)
        }
    })
}

/// `example.com:8443` → `example.com`; `[::1]:8443` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
