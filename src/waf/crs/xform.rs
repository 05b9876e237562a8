//! SecLang transformation names → the engine's transformations, plus the few CRS uses
//! that native rules do not (`utf8toUnicode`, `escapeSeqDecode`, `removeCommentsChar`,
//! `sha1`, `hexEncode`, `uppercase`, `trimLeft/Right`).

use sha1::{Digest, Sha1};

use crate::waf::operator::ByteSet;
use crate::waf::transform::{hex_val, is_space, Transform};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Xform {
    Std(Transform),
    Utf8ToUnicode,
    EscapeSeqDecode,
    RemoveCommentsChar,
    Sha1,
    HexEncode,
    Uppercase,
    TrimLeft,
    TrimRight,
}

impl Xform {
    /// `None` for `none` (which clears the list); `Err` for an unknown name.
    pub fn from_name(name: &str) -> Result<Option<Xform>, String> {
        let t = |t| Ok(Some(Xform::Std(t)));
        match name.to_ascii_lowercase().as_str() {
            "none" => Ok(None),
            "urldecode" => t(Transform::UrlDecode),
            "urldecodeuni" => t(Transform::UrlDecodeUni),
            "lowercase" => t(Transform::Lowercase),
            "htmlentitydecode" => t(Transform::HtmlEntityDecode),
            "jsdecode" => t(Transform::JsDecode),
            "cssdecode" => t(Transform::CssDecode),
            "normalizepath" | "normalisepath" => t(Transform::NormalizePath),
            "normalizepathwin" | "normalisepathwin" => t(Transform::NormalizePathWin),
            "compresswhitespace" => t(Transform::CompressWhitespace),
            "removewhitespace" => t(Transform::RemoveWhitespace),
            "removenulls" => t(Transform::RemoveNulls),
            "replacecomments" => t(Transform::ReplaceComments),
            "removecomments" => t(Transform::RemoveComments),
            "cmdline" => t(Transform::CmdLine),
            "base64decode" | "base64decodeext" => t(Transform::Base64Decode),
            "hexdecode" | "sqlhexdecode" => t(Transform::HexDecode),
            "trim" => t(Transform::Trim),
            "length" => t(Transform::Length),
            "utf8tounicode" => Ok(Some(Xform::Utf8ToUnicode)),
            "escapeseqdecode" => Ok(Some(Xform::EscapeSeqDecode)),
            "removecommentschar" => Ok(Some(Xform::RemoveCommentsChar)),
            "sha1" => Ok(Some(Xform::Sha1)),
            "hexencode" => Ok(Some(Xform::HexEncode)),
            "uppercase" => Ok(Some(Xform::Uppercase)),
            "trimleft" => Ok(Some(Xform::TrimLeft)),
            "trimright" => Ok(Some(Xform::TrimRight)),
            _ => Err(format!("unsupported transformation `{name}`")),
        }
    }

    /// Bytes this transformation may change: a value holding none of them comes out as it
    /// went in (`None`: it may change any value).
    pub fn trigger_set(self) -> Option<ByteSet> {
        Some(match self {
            Xform::Std(t) => ByteSet::from_bytes(t.triggers()?.iter().copied()),
            Xform::Utf8ToUnicode => ByteSet::from_bytes(0x80..=0xff),
            Xform::EscapeSeqDecode => ByteSet::from_bytes([b'\\']),
            Xform::RemoveCommentsChar => ByteSet::from_bytes(*b"/*-#"),
            Xform::Uppercase => ByteSet::from_bytes(b'a'..=b'z'),
            Xform::TrimLeft | Xform::TrimRight => ByteSet::from_bytes(*b" \t\n\r\x0b\x0c\xa0"),
            Xform::Sha1 | Xform::HexEncode => return None,
        })
    }

    /// Whether `input` may come out changed (a cheap check that saves a copy).
    pub fn may_change(self, input: &[u8]) -> bool {
        match self {
            Xform::Std(t) => match t.triggers() {
                Some(tr) => input.iter().any(|b| tr.contains(b)),
                None => true,
            },
            Xform::Utf8ToUnicode => input.iter().any(|&b| b >= 0x80),
            Xform::EscapeSeqDecode => input.contains(&b'\\'),
            Xform::RemoveCommentsChar => input
                .iter()
                .any(|&b| matches!(b, b'/' | b'*' | b'-' | b'#')),
            Xform::Uppercase => input.iter().any(u8::is_ascii_lowercase),
            Xform::TrimLeft | Xform::TrimRight => {
                input.first().is_some_and(|&b| is_space(b))
                    || input.last().is_some_and(|&b| is_space(b))
            }
            Xform::Sha1 | Xform::HexEncode => true,
        }
    }

    pub fn apply(self, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match self {
            Xform::Std(t) => t.apply(input, out),
            Xform::Utf8ToUnicode => utf8_to_unicode(input, out),
            Xform::EscapeSeqDecode => escape_seq_decode(input, out),
            Xform::RemoveCommentsChar => remove_comments_char(input, out),
            Xform::Sha1 => out.extend_from_slice(&Sha1::digest(input)),
            Xform::HexEncode => {
                for b in input {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
            }
            Xform::Uppercase => out.extend(input.iter().map(u8::to_ascii_uppercase)),
            Xform::TrimLeft => {
                let s = input
                    .iter()
                    .position(|&b| !is_space(b))
                    .unwrap_or(input.len());
                out.extend_from_slice(&input[s..]);
            }
            Xform::TrimRight => {
                let e = input
                    .iter()
                    .rposition(|&b| !is_space(b))
                    .map_or(0, |e| e + 1);
                out.extend_from_slice(&input[..e]);
            }
        }
    }
}

/// UTF-8 sequences → `%uXXXX`; other bytes as they are.
fn utf8_to_unicode(input: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        let len = match b {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 1,
        };
        if len > 1 && i + len <= input.len() {
            if let Ok(s) = std::str::from_utf8(&input[i..i + len]) {
                let c = s.chars().next().map_or(0, |c| c as u32);
                out.extend_from_slice(format!("%u{:04x}", c & 0xffff).as_bytes());
                i += len;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
}

/// ANSI C escapes (`\n`, `\x41`, `\101`…) decoded; invalid ones kept.
fn escape_seq_decode(input: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\\' || i + 1 >= input.len() {
            out.push(input[i]);
            i += 1;
            continue;
        }
        let c = input[i + 1];
        let simple = match c {
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(11),
            b'\\' | b'?' | b'\'' | b'"' => Some(c),
            _ => None,
        };
        if let Some(v) = simple {
            out.push(v);
            i += 2;
            continue;
        }
        if c == b'x' || c == b'X' {
            if let (Some(h), Some(l)) = (
                input.get(i + 2).and_then(|&b| hex_val(b)),
                input.get(i + 3).and_then(|&b| hex_val(b)),
            ) {
                out.push(h << 4 | l);
                i += 4;
                continue;
            }
        }
        if (b'0'..=b'7').contains(&c) {
            let mut v: u32 = 0;
            let mut j = i + 1;
            while j < input.len() && j < i + 4 && (b'0'..=b'7').contains(&input[j]) {
                v = v * 8 + u32::from(input[j] - b'0');
                j += 1;
            }
            out.push(v as u8);
            i = j;
            continue;
        }
        out.push(b'\\');
        out.push(c);
        i += 2;
    }
}

/// Removes the comment characters `/*`, `*/`, `--` and `#`.
fn remove_comments_char(input: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < input.len() {
        let two = input.get(i..i + 2);
        if matches!(two, Some(b"/*") | Some(b"*/") | Some(b"--")) {
            i += 2;
        } else if input[i] == b'#' {
            i += 1;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &str, v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Xform::from_name(t).unwrap().unwrap().apply(v, &mut out);
        out
    }

    #[test]
    fn crs_transformations() {
        assert_eq!(run("utf8toUnicode", "aé".as_bytes()), b"a%u00e9");
        assert_eq!(run("escapeSeqDecode", br"a\x41\101\n\q"), b"aAA\n\\q");
        assert_eq!(run("removeCommentsChar", b"a/*b*/c--d#e"), b"abcde");
        assert_eq!(run("hexEncode", b"\x01A"), b"0141");
        assert_eq!(run("sha1", b"").len(), 20);
        assert!(Xform::from_name("none").unwrap().is_none());
        assert!(Xform::from_name("bogus").is_err());
    }
}
