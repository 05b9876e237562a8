//! The regexes of one paranoia level as one lazy DFA, for long values.
//!
//! A rule's own gates (required literals and bytes) keep its regex off most values, but
//! a long text passes them: a 64 KiB form field of prose holds nearly every byte, and
//! ~20 PL 1 regexes without a required literal each scanned all of it (~1.5 ns a byte
//! each). One [`RegexSet`] answers, in one pass, which of its regexes match anywhere in
//! a value: ~2 ns a byte for the 164 PL 1 regexes of CRS v4 once its states are built.
//! A regex the set rules out is a miss; one it reports is run on its own (captures,
//! `MATCHED_VAR`), so results are those of the single regexes.
//!
//! Cost and failure modes: the DFA's states are built lazily into a per-thread
//! [`SetCache`] (at most [`CACHE_BYTES`]) and kept across requests, so text like the
//! last requests' costs one pass. Text that keeps making new states (random bytes,
//! token soup) would spend ~15 ms per MiB of states: a scan gives up after
//! [`STATE_BUDGET`] bytes of new states (about 2 ms) or when the cache is cleared, and
//! the caller then runs the single regexes as without a set and does not ask that set
//! again during the request; after a give-up the thread also leaves the next long
//! values (1, 2, 4, up to [`MAX_BACKOFF`] in a row) to the single regexes, so text that
//! never lets a scan finish costs a fraction of a budget per value more than without
//! sets. The states a scan built stay, so benign text warms the cache over some
//! requests (a 58 KB prose field needs ~1.2 MB of states). Sets are per paranoia level so that the
//! counting regexes of higher levels (`{12}`-style repetitions, which multiply states)
//! do not slow the levels below them, and a level whose rules are skipped never builds
//! states.

use std::sync::atomic::{AtomicU64, Ordering};

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson;
use regex_automata::{Input, MatchKind};

/// A value at least this long is answered by its rules' sets; shorter values run their
/// gated regexes one by one (their gates skip most).
pub const LONG_VALUE: usize = 1024;
/// Most bytes of lazy-DFA states a set keeps per thread.
pub const CACHE_BYTES: usize = 4 << 20;
/// Most bytes of new states one scan may build before it gives up.
pub const STATE_BUDGET: usize = 64 << 10;
/// Bytes scanned between two checks of the budget.
const CHECK_EVERY: usize = 64;
/// Most long values a thread leaves to the single regexes after a scan gave up (the
/// count doubles with each give-up in a row, from 1).
const MAX_BACKOFF: u32 = 8;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Regexes compiled into one lazy DFA that reports every pattern matching somewhere.
pub struct RegexSet {
    dfa: DFA,
    /// Unique per build: a thread's cache made for another set (an earlier load) is
    /// made again.
    id: u64,
    /// The paranoia level of its rules (0: untagged).
    pub paranoia: u8,
    /// Offset of its words in a value's block of set results: one word of state
    /// ([`NOT_RUN`], [`RAN`], [`GAVE_UP`]), then one bit per pattern.
    pub at: usize,
}

/// A value's set result has not been computed.
pub const NOT_RUN: u64 = 0;
/// The pattern bits that follow are the set's answer.
pub const RAN: u64 = 1;
/// The scan gave up: run the single regexes.
pub const GAVE_UP: u64 = 2;

/// A thread's lazy-DFA states for one set.
pub struct SetCache {
    id: u64,
    cache: Cache,
    /// Scans still to skip after the last give-up, and the current backoff.
    skip: u32,
    backoff: u32,
}

impl RegexSet {
    /// Compiles `patterns` (translated as every CRS regex is) into one set; `None` when
    /// the union is too large to compile (each rule then runs its regex alone).
    pub fn build(patterns: &[&str], paranoia: u8, at: usize) -> Option<RegexSet> {
        let dfa = DFA::builder()
            .syntax(crate::waf::operator::syntax_config())
            .thompson(
                thompson::Config::new()
                    .utf8(false)
                    .nfa_size_limit(Some(64 << 20)),
            )
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .cache_capacity(CACHE_BYTES),
            )
            .build_many(patterns)
            .ok()?;
        Some(RegexSet {
            dfa,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            paranoia,
            at,
        })
    }

    /// Patterns in the set.
    pub fn patterns(&self) -> usize {
        self.dfa.pattern_len()
    }

    /// Words of its result per value: the state word and the pattern bits.
    pub fn words(&self) -> usize {
        1 + self.patterns().div_ceil(64)
    }

    /// Heap bytes of its NFA (the lazy DFA's states are per thread, up to
    /// [`CACHE_BYTES`]).
    pub fn memory_usage(&self) -> usize {
        self.dfa.get_nfa().memory_usage()
    }

    /// Scans `hay` once: sets the bit (in `out`, after its state word) of every pattern
    /// matching somewhere and the state word to [`RAN`], or to [`GAVE_UP`] when the
    /// scan spent its budget of new states (the bits are then incomplete).
    pub fn scan(&self, caches: &mut Vec<SetCache>, index: usize, hay: &[u8], out: &mut [u64]) {
        if caches.len() <= index {
            caches.resize_with(index + 1, || SetCache {
                id: 0,
                cache: Cache::new(&self.dfa),
                skip: 0,
                backoff: 0,
            });
        }
        let c = &mut caches[index];
        if c.id != self.id {
            *c = SetCache {
                id: self.id,
                cache: self.dfa.create_cache(),
                skip: 0,
                backoff: 0,
            };
        }
        if c.skip > 0 {
            // Text that made the last scans give up is likely to come again.
            c.skip -= 1;
            out[0] = GAVE_UP;
            return;
        }
        // States built by a scan that gave up stay: the next value like it goes further.
        let done = self.run(&mut c.cache, hay, &mut out[1..]);
        out[0] = if done { RAN } else { GAVE_UP };
        c.backoff = if done {
            0
        } else {
            (c.backoff * 2).clamp(1, MAX_BACKOFF)
        };
        c.skip = c.backoff;
    }

    fn run(&self, cache: &mut Cache, hay: &[u8], bits: &mut [u64]) -> bool {
        let dfa = &self.dfa;
        let record = |cache: &Cache, sid: LazyStateID, bits: &mut [u64]| {
            for i in 0..dfa.match_len(cache, sid) {
                let p = dfa.match_pattern(cache, sid, i).as_usize();
                bits[p / 64] |= 1 << (p % 64);
            }
        };
        let Ok(mut sid) = dfa.start_state_forward(cache, &Input::new(hay)) else {
            return false;
        };
        let (grown_from, clears) = (cache.memory_usage(), cache.clear_count());
        for chunk in hay.chunks(CHECK_EVERY) {
            for &b in chunk {
                // Without a minimum clear count the lazy DFA never fails here.
                let Ok(next) = dfa.next_state(cache, sid, b) else {
                    return false;
                };
                sid = next;
                if sid.is_tagged() {
                    if sid.is_match() {
                        record(cache, sid, bits);
                    } else if sid.is_dead() {
                        return true;
                    } else if sid.is_quit() {
                        return false;
                    }
                }
            }
            if cache.clear_count() != clears
                || cache.memory_usage().saturating_sub(grown_from) > STATE_BUDGET
            {
                return false;
            }
        }
        let Ok(eoi) = dfa.next_eoi_state(cache, sid) else {
            return false;
        };
        if eoi.is_match() {
            record(cache, eoi, bits);
        }
        true
    }
}

impl std::fmt::Debug for RegexSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegexSet")
            .field("paranoia", &self.paranoia)
            .field("patterns", &self.patterns())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(set: &RegexSet, caches: &mut Vec<SetCache>, hay: &[u8]) -> (u64, Vec<usize>) {
        let mut out = vec![0u64; set.words()];
        set.scan(caches, 0, hay, &mut out);
        let pats = (0..set.patterns())
            .filter(|p| out[1 + p / 64] & (1 << (p % 64)) != 0)
            .collect();
        (out[0], pats)
    }

    #[test]
    fn a_set_reports_every_pattern_that_matches_anywhere_as_single_regexes_do() {
        let patterns = [
            r"(?i)\bunion\b.{0,20}\bselect\b",
            r"^admin$",
            r"<script",
            r"a[^b]*b",
            r"\d{3}$",
            r"(?i)on(?:error|load)\s*=",
        ];
        let set = RegexSet::build(&patterns, 1, 0).unwrap();
        let singles: Vec<_> = patterns
            .iter()
            .map(|p| crate::waf::operator::compile_regex(p).unwrap())
            .collect();
        let mut caches = Vec::new();
        let values: [&[u8]; 6] = [
            b"x UNION all SELECT y",
            b"line\nadmin\nmore",
            b"<img src=x onError = 1>",
            b"no match at all here",
            b"ends 123\nthen text", // `$` at a line end (multi-line)
            b"a\xff\x00b and 12",
        ];
        for v in values {
            let (state, got) = answer(&set, &mut caches, v);
            assert_eq!(state, RAN);
            let want: Vec<usize> = (0..patterns.len())
                .filter(|&i| singles[i].is_match(v))
                .collect();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(v));
        }
        // Overlapping matches of different patterns are all reported.
        let (_, got) = answer(&set, &mut caches, b"<script>aXb 999");
        assert_eq!(got, vec![2, 3, 4]);
    }

    #[test]
    fn a_scan_that_keeps_making_states_gives_up_and_a_cache_follows_its_set() {
        // Counting repetitions multiply lazy-DFA states; random bytes keep reaching new
        // ones.
        let patterns: Vec<String> = (0..24u8)
            .map(|i| {
                format!(
                    r"{}[^\n]{{{}}}{}",
                    (b'a' + i) as char,
                    12 + i,
                    (b'z' - i) as char
                )
            })
            .collect();
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let set = RegexSet::build(&refs, 2, 0).unwrap();
        let mut caches = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let hay: Vec<u8> = (0..256 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (state, _) = answer(&set, &mut caches, &hay);
        assert_eq!(state, GAVE_UP);
        // The next value is left to the single regexes; then short text is answered.
        assert_eq!(answer(&set, &mut caches, b"abc").0, GAVE_UP);
        let (state, got) = answer(&set, &mut caches, b"abc");
        assert_eq!((state, got.len()), (RAN, 0));
        // A cache made for another set is made again for this one.
        let other = RegexSet::build(&["abc"], 1, 0).unwrap();
        let (state, got) = answer(&other, &mut caches, b"xxabcxx");
        assert_eq!((state, got), (RAN, vec![0]));
        let (state, _) = answer(&set, &mut caches, b"abc");
        assert_eq!(state, RAN);
    }
}
