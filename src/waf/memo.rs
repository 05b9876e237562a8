//! Values the rules already found nothing in: a per-thread memo of (kind, name, value)
//! keys, so a value that repeats across requests (the `Host`, `Accept` and `User-Agent`
//! headers of a keep-alive connection, the path, argument names, common argument values
//! such as `page=2` or `lang=en`) is evaluated once and then only looked up.
//!
//! # Why it is exact
//! Whether any rule's first condition matches a value depends only on the compiled
//! engine, the value's kind, its name and its bytes (targets select by kind and name;
//! transformations and operators read only the value). Chained conditions, exclusions and
//! "one match per rule" only act on a value that produced a hit, and such a value is
//! never stored. So a stored key answers exactly as a fresh evaluation would. Keys are
//! compared byte for byte: the hash (foldhash with a random per-thread seed) only picks
//! a set of two slots, so a collision can evict an entry but never make an unseen value
//! pass. The memo belongs to one engine: a reload empties it.
//!
//! A value with values found inside it (base64 text, escapes, GraphQL strings: see
//! [`super::derived`], which depend only on the value, its kind and name) is stored only
//! after those were evaluated too and none had a hit (a derived value is never skipped
//! as a repeat of another for this). A stored value therefore also vouches for what is
//! inside it: when nothing but the native engine reads the values (no CRS, no chained or
//! `pass` condition on derived values), the collection does not look inside a value the
//! memo knows ([`super::request::Item::known_clean`]), which saves the base64 and escape
//! scans of every repeated value.
//!
//! # Cost and memory
//! A lookup hashes the key and compares it with two slots (a 2-way set): ~100
//! instructions against the ~1,500 a short value costs to evaluate. [`SLOTS`] slots hold
//! keys of at most [`MAX_KEY_BYTES`] bytes (longer values are always evaluated); a slot's
//! buffer is allocated on its first store and reused, so at most ~300 KiB per worker
//! thread and no allocation per request once warm. Values with unique bytes (a search
//! term, a JSON body's text) miss and cost the lookup and one store.
//!
//! # What is never stored
//! Secrets: cookies, credential headers (`Authorization`, `Cookie`, `X-Api-Key`…),
//! values of fields named like secrets ([`super::redact`]), and the raw query, URI,
//! request line or body of a request one of whose arguments is named like a secret (a
//! flag set while the names are collected, so the raw strings are not scanned). The
//! memo lives only in memory, but a lookup is faster than an evaluation, and a client
//! must not be able to time whether someone else recently sent a given password or token.

use std::hash::BuildHasher;

use super::redact;
use super::rule::Kind;

/// Slots in the memo (a power of two).
pub const SLOTS: usize = 1024;

/// Longest key stored: kind, name and value together.
pub const MAX_KEY_BYTES: usize = 256;

/// Values shorter than this are not checked for secret names (a 5-byte secret is no
/// secret): the check costs more than such a value's evaluation saves.
const SECRET_CHECK_FROM: usize = 6;

#[derive(Default)]
struct Slot {
    hash: u64,
    /// Kind byte, name length (2 bytes, little endian), name, value; empty: unused.
    key: Vec<u8>,
}

/// The memo; see the module docs.
#[derive(Default)]
pub struct CleanValues {
    slots: Vec<Slot>,
    state: foldhash::fast::RandomState,
    /// Lookups that found the value, since the last [`CleanValues::clear`] (for tests).
    pub hits: u64,
}

/// A value that may be stored and looked up: its hash.
#[derive(Debug, Clone, Copy)]
pub struct Key(u64);

impl CleanValues {
    /// Forgets every value (the engine changed).
    pub fn clear(&mut self) {
        for s in &mut self.slots {
            s.key.clear();
        }
        self.hits = 0;
    }

    /// The key of a value, or `None` when it may not be stored (too long, or a secret).
    /// `secrets`: the request's query and body carry a field named like a secret
    /// ([`super::request::Items::secret_query`], `secret_body`): then the raw query
    /// (`uri`, `query`, `request_line`) or body is not stored either.
    #[inline]
    pub fn key(&self, kind: Kind, name: &[u8], value: &[u8], secrets: (bool, bool)) -> Option<Key> {
        if 3 + name.len() + value.len() > MAX_KEY_BYTES || !storable(kind, name, value, secrets) {
            return None;
        }
        Some(Key(self.state.hash_one((kind as u8, name, value))))
    }

    /// Whether the value was stored as clean.
    #[inline]
    pub fn contains(&mut self, key: Key, kind: Kind, name: &[u8], value: &[u8]) -> bool {
        let set = Self::set(key);
        let Some(pair) = self.slots.get(set..set + 2) else {
            return false;
        };
        let found = pair.iter().any(|slot| {
            let k = &slot.key;
            slot.hash == key.0
                && k.len() == 3 + name.len() + value.len()
                && k[0] == kind as u8
                && k[1..3] == (name.len() as u16).to_le_bytes()
                && k[3..3 + name.len()] == *name
                && k[3 + name.len()..] == *value
        });
        self.hits += u64::from(found);
        found
    }

    /// The first of the two slots a key may be in.
    #[inline]
    fn set(key: Key) -> usize {
        (key.0 as usize & (SLOTS / 2 - 1)) * 2
    }

    /// Stores the value as clean. Each key has a set of two slots, the newest first: two
    /// values that share a set (about two pairs among 60 values) both stay, rather than
    /// evicting each other on every request.
    pub fn insert(&mut self, key: Key, kind: Kind, name: &[u8], value: &[u8]) {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, Slot::default);
        }
        let set = Self::set(key);
        let i = if self.slots[set].hash == key.0 {
            set
        } else if self.slots[set + 1].hash == key.0 {
            set + 1
        } else {
            // The older of the two goes; the newer moves second.
            self.slots.swap(set, set + 1);
            set
        };
        let slot = &mut self.slots[i];
        slot.hash = key.0;
        slot.key.clear();
        slot.key.push(kind as u8);
        slot.key
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        slot.key.extend_from_slice(name);
        slot.key.extend_from_slice(value);
    }
}

/// Not a secret (see the module docs).
#[inline]
fn storable(kind: Kind, name: &[u8], value: &[u8], (query, body): (bool, bool)) -> bool {
    match kind {
        Kind::Cookie => false,
        Kind::Header | Kind::HeaderArg => !redact::is_secret_header(name),
        // No argument of the query (body) is named like a secret: nothing to check.
        Kind::QueryArg if !query => true,
        Kind::BodyArg if !body => true,
        Kind::QueryArg | Kind::BodyArg | Kind::Decoded | Kind::XmlValue | Kind::Embedded => {
            value.len() < SECRET_CHECK_FROM || !redact::is_secret_name(name)
        }
        // Raw strings that carry a secret field (`…&password=…`).
        Kind::Uri | Kind::Query | Kind::RequestLine => !query,
        Kind::Body | Kind::RequestBody => !body && !redact::mentions_secret(value),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_values_of_one_set_both_stay_and_a_third_evicts_the_older() {
        let mut m = CleanValues::default();
        let set_mates = [5u64, 5 + SLOTS as u64 / 2, 5 + SLOTS as u64];
        let value = |i: usize| format!("value {i}");
        let has = |m: &mut CleanValues, i: usize| {
            m.contains(Key(set_mates[i]), Kind::QueryArg, b"q", value(i).as_bytes())
        };
        for (i, &h) in set_mates[..2].iter().enumerate() {
            m.insert(Key(h), Kind::QueryArg, b"q", value(i).as_bytes());
        }
        assert!(has(&mut m, 0) && has(&mut m, 1));
        // Storing one of them again keeps both.
        m.insert(Key(set_mates[1]), Kind::QueryArg, b"q", value(1).as_bytes());
        assert!(has(&mut m, 0) && has(&mut m, 1));
        m.insert(Key(set_mates[2]), Kind::QueryArg, b"q", value(2).as_bytes());
        assert!(!has(&mut m, 0), "the older one went");
        assert!(has(&mut m, 1) && has(&mut m, 2));
    }

    #[test]
    fn stores_exact_keys_and_never_secrets() {
        let mut m = CleanValues::default();
        let none = (false, false);
        let k = m.key(Kind::QueryArg, b"page", b"2", none).unwrap();
        assert!(!m.contains(k, Kind::QueryArg, b"page", b"2"));
        m.insert(k, Kind::QueryArg, b"page", b"2");
        assert!(m.contains(k, Kind::QueryArg, b"page", b"2"));
        // Same hash slot, other bytes: not found (a forged key never passes).
        assert!(!m.contains(k, Kind::QueryArg, b"page", b"3"));
        assert!(!m.contains(k, Kind::BodyArg, b"page", b"2"));
        assert!(!m.contains(k, Kind::QueryArg, b"pag", b"e2"));
        m.clear();
        assert!(!m.contains(k, Kind::QueryArg, b"page", b"2"));

        assert!(m.key(Kind::Cookie, b"sid", b"abcdef0123", none).is_none());
        assert!(m
            .key(Kind::Header, b"authorization", b"Bearer x", none)
            .is_none());
        assert!(m.key(Kind::HeaderArg, b"x-api-key", b"k", none).is_none());
        assert!(m
            .key(Kind::BodyArg, b"password", b"hunter2!", (false, true))
            .is_none());
        assert!(m
            .key(Kind::Query, b"", b"user=a&pwd=hunter2", (true, false))
            .is_none());
        assert!(m.key(Kind::Query, b"", b"user=a&q=x", none).is_some());
        assert!(m
            .key(Kind::RequestBody, b"", b"user=a&pwd=x", (false, true))
            .is_none());
        assert!(m.key(Kind::Body, b"", b"{\"Password\": 1}", none).is_none());
        assert!(m
            .key(Kind::Header, b"user-agent", b"curl/8", none)
            .is_some());
        assert!(m
            .key(Kind::QueryArg, b"q", &[b'a'; MAX_KEY_BYTES], none)
            .is_none());
    }
}
