//! A request body's `Content-Encoding` undone for inspection, when the operator chose
//! `[requests] content_encoding = "decode"` (the default refuses such requests with 415).
//!
//! Only `gzip` (`x-gzip`) and `deflate` (zlib, or raw deflate as some clients send it), a
//! single coding; phase 1 refuses the rest. The output is bounded twice: by the inspection
//! limit (a longer result is a body beyond the limit, handled as `waf.over_limit` says) and
//! by a ratio to the compressed size (a decompression bomb is refused). The upstream still
//! receives the body as sent; the rules, CRS and the login phase read the decoded bytes.
//!
//! Cost: one pass of miniz_oxide over at most the inspected prefix, output into one buffer
//! of at most the limit.

use std::io::Read;

use http::header::CONTENT_ENCODING;
use http::HeaderMap;

/// The codings this module undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
}

impl Coding {
    /// The request's coding: `Ok(None)` for none or `identity`, an error for anything this
    /// module cannot undo (another coding, or more than one).
    pub fn of(headers: &HeaderMap) -> Result<Option<Coding>, UnknownCoding> {
        let mut found = None;
        for v in headers.get_all(CONTENT_ENCODING) {
            for token in v.as_bytes().split(|&b| b == b',') {
                let t = token.trim_ascii();
                let c = if t.is_empty() || t.eq_ignore_ascii_case(b"identity") {
                    continue;
                } else if t.eq_ignore_ascii_case(b"gzip") || t.eq_ignore_ascii_case(b"x-gzip") {
                    Coding::Gzip
                } else if t.eq_ignore_ascii_case(b"deflate") {
                    Coding::Deflate
                } else {
                    return Err(UnknownCoding);
                };
                if found.replace(c).is_some() {
                    return Err(UnknownCoding);
                }
            }
        }
        Ok(found)
    }
}

/// A `Content-Encoding` this module cannot undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCoding;

/// Why a body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request body does not decode as its Content-Encoding")]
    Corrupt,
    #[error("request body decompresses beyond the allowed ratio")]
    Ratio,
}

/// The decoded body: its bytes (at most `limit`) and whether it went on beyond `limit`.
pub struct Decoded {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

/// Decodes `body` (the whole body, or its beginning when `complete` is false) up to
/// `limit` bytes and at most `max_ratio` times its size.
pub fn decode(
    coding: Coding,
    body: &[u8],
    complete: bool,
    limit: usize,
    max_ratio: usize,
) -> Result<Decoded, DecodeError> {
    let cap = limit.min(body.len().saturating_mul(max_ratio).max(1024));
    let mut out = Vec::with_capacity(cap.min(64 * 1024));
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Coding::Deflate if looks_like_zlib(body) => Box::new(flate2::read::ZlibDecoder::new(body)),
        Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(body)),
    };
    // One byte past the cap tells "exactly the cap" from "more".
    let mut limited = reader.take(cap as u64 + 1);
    match limited.read_to_end(&mut out) {
        Ok(_) => {}
        // A prefix cut at the inspection limit ends early: what came out is inspected.
        Err(_) if !complete => {}
        Err(_) => return Err(DecodeError::Corrupt),
    }
    if out.len() > cap {
        out.truncate(cap);
        if cap < limit {
            return Err(DecodeError::Ratio);
        }
        return Ok(Decoded {
            bytes: out,
            truncated: true,
        });
    }
    Ok(Decoded {
        bytes: out,
        truncated: !complete,
    })
}

/// A zlib header: CM 8, and the header checksum RFC 1950 asks for.
fn looks_like_zlib(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0f == 8 && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_within_limit_and_ratio() {
        let form = b"q=1%27+UNION+SELECT+password+FROM+users--";
        let d = decode(Coding::Gzip, &gzip(form), true, 1024, 100).unwrap();
        assert_eq!(d.bytes, form);
        assert!(!d.truncated);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(form).unwrap();
        let d = decode(Coding::Deflate, &z.finish().unwrap(), true, 1024, 100).unwrap();
        assert_eq!(d.bytes, form);
        // Beyond the limit: the beginning, marked truncated.
        let big = vec![b'a'; 10_000];
        let d = decode(Coding::Gzip, &gzip(&big), true, 5_000, 1_000).unwrap();
        assert_eq!(d.bytes.len(), 5_000);
        assert!(d.truncated);
        // A bomb: far more out than the ratio allows.
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert_eq!(
            decode(Coding::Gzip, &bomb, true, 1 << 20, 10).err(),
            Some(DecodeError::Ratio)
        );
        assert_eq!(
            decode(Coding::Gzip, b"not gzip at all", true, 1024, 100).err(),
            Some(DecodeError::Corrupt)
        );
    }

    #[test]
    fn only_one_known_coding() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CONTENT_ENCODING, v.parse().unwrap());
            m
        };
        assert_eq!(Coding::of(&HeaderMap::new()), Ok(None));
        assert_eq!(Coding::of(&h("identity")), Ok(None));
        assert_eq!(Coding::of(&h("GZIP")), Ok(Some(Coding::Gzip)));
        assert_eq!(Coding::of(&h("deflate")), Ok(Some(Coding::Deflate)));
        assert_eq!(Coding::of(&h("br")), Err(UnknownCoding));
        assert_eq!(Coding::of(&h("gzip, gzip")), Err(UnknownCoding));
    }
}
