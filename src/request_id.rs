//! Request ids: 16 hex digits, unique within a process and unpredictable across processes.
//!
//! An id is a bijective mix (splitmix64) of a per-process random seed plus a counter, so
//! two requests never share one and no lock or RNG call is needed. An `X-Request-Id` from a
//! trusted proxy is kept when it is short and plain.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish()
    })
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// A fresh id.
pub fn generate() -> HeaderValue {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let v = mix(seed().wrapping_add(n));
    let mut buf = [0u8; 16];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

/// Whether an incoming id (from a trusted proxy) may be kept.
pub fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_hex() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn odd_incoming_ids_are_refused() {
        assert!(acceptable(&HeaderValue::from_static("abc-123")));
        assert!(!acceptable(&HeaderValue::from_static("a b")));
        assert!(!acceptable(&HeaderValue::from_static("")));
    }
}
