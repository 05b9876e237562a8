//! A JSON reader that yields each leaf (string, number, boolean) with its dotted key
//! path, for the WAF: no tree is built, strings are unescaped into a reused buffer.
//! Nesting deeper than [`MAX_DEPTH`] or trailing garbage is an error (the engine fails
//! closed on a body it cannot read).

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Calls `leaf(path, value)` for every leaf of `body`.
pub fn leaves(
    body: &[u8],
    path: &mut Vec<u8>,
    text: &mut Vec<u8>,
    mut leaf: impl FnMut(&[u8], &[u8]),
) -> Result<(), &'static str> {
    path.clear();
    let mut p = Parser { s: body, i: 0 };
    p.ws();
    p.value(path, text, &mut leaf, 0)?;
    p.ws();
    if p.i != body.len() {
        return Err("JSON body has data after its end");
    }
    Ok(())
}

/// The first `"` or `\\` of `s`. Keys and most values are short: eight bytes at a time
/// in a register first (a library search costs ~60 instructions to set up), then the
/// vector search for what is still left after 32 bytes.
fn quote_or_escape(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let (q, e) = (w ^ (ONES * u64::from(b'"')), w ^ (ONES * u64::from(b'\\')));
        // A zero byte of `q` or `e` is a match; the lowest flagged byte always is one.
        let found = (q.wrapping_sub(ONES) & !q | e.wrapping_sub(ONES) & !e) & HIGH;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
        if i == 32 {
            return memchr::memchr2(b'"', b'\\', &s[i..]).map(|p| p + i);
        }
    }
    s[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .map(|p| p + i)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

const BAD: &str = "JSON body does not parse";

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn value(
        &mut self,
        path: &mut Vec<u8>,
        text: &mut Vec<u8>,
        leaf: &mut impl FnMut(&[u8], &[u8]),
        depth: usize,
    ) -> Result<(), &'static str> {
        if depth > MAX_DEPTH {
            return Err("JSON body nested too deeply");
        }
        match self.peek().ok_or(BAD)? {
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(BAD);
                    }
                    let key = self.string(text)?;
                    let keep = path.len();
                    if !path.is_empty() {
                        path.push(b'.');
                    }
                    path.extend_from_slice(key.unwrap_or(text));
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(BAD);
                    }
                    self.i += 1;
                    self.ws();
                    self.value(path, text, leaf, depth + 1)?;
                    path.truncate(keep);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(BAD),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.value(path, text, leaf, depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(BAD),
                    }
                }
            }
            b'"' => {
                let v = self.string(text)?;
                leaf(path, v.unwrap_or(text));
                Ok(())
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(self.s[self.i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z')
                {
                    self.i += 1;
                }
                let tok = &self.s[start..self.i];
                let ok = matches!(tok, b"true" | b"false" | b"null")
                    || (!tok.is_empty()
                        && tok
                            .iter()
                            .all(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')));
                if !ok {
                    return Err(BAD);
                }
                // `null` is a member with an empty value (its name still counts:
                // `{"password": {"$ne": null}}`).
                leaf(path, if tok == b"null" { b"" } else { tok });
                Ok(())
            }
        }
    }

    /// Reads a string at `self.i` (an opening quote): a string without escapes is
    /// returned as it is in the body (most are: no copy); otherwise it is unescaped into
    /// `out` and `None` is returned.
    fn string(&mut self, out: &mut Vec<u8>) -> Result<Option<&'a [u8]>, &'static str> {
        self.i += 1;
        let s: &'a [u8] = self.s;
        let start = self.i;
        let p = quote_or_escape(&s[start..]).ok_or(BAD)?;
        if s[start + p] == b'"' {
            self.i = start + p + 1;
            return Ok(Some(&s[start..start + p]));
        }
        // An escape: unescape from here on (the bytes before it are copied as they are).
        out.clear();
        out.extend_from_slice(&s[start..start + p]);
        self.i = start + p;
        loop {
            let rest = &self.s[self.i..];
            let Some(p) = quote_or_escape(rest) else {
                return Err(BAD);
            };
            out.extend_from_slice(&rest[..p]);
            self.i += p;
            if self.s[self.i] == b'"' {
                self.i += 1;
                return Ok(None);
            }
            let esc = *self.s.get(self.i + 1).ok_or(BAD)?;
            self.i += 2;
            match esc {
                b'u' => {
                    let hex = self.s.get(self.i..self.i + 4).ok_or(BAD)?;
                    let mut cp = 0u32;
                    for &h in hex {
                        cp = cp * 16 + u32::from(super::transform::hex_val(h).ok_or(BAD)?);
                    }
                    self.i += 4;
                    // Surrogate pairs become one character; a lone surrogate U+FFFD.
                    if (0xd800..0xdc00).contains(&cp)
                        && self.s.get(self.i..self.i + 2) == Some(b"\\u")
                    {
                        let lo = self.s.get(self.i + 2..self.i + 6).ok_or(BAD)?;
                        let mut l = 0u32;
                        for &h in lo {
                            l = l * 16 + u32::from(super::transform::hex_val(h).ok_or(BAD)?);
                        }
                        if (0xdc00..0xe000).contains(&l) {
                            cp = 0x10000 + ((cp - 0xd800) << 10) + (l - 0xdc00);
                            self.i += 6;
                        }
                    }
                    let c = char::from_u32(cp).unwrap_or('\u{fffd}');
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'"' | b'\\' | b'/' => out.push(esc),
                _ => return Err(BAD),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_at_a_time_search_finds_what_memchr_finds() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"ab\"\\ \x80\xff\x22\x5c\x21\x23\x5b\x5d\x00\x01";
        for _ in 0..50_000 {
            crate::waf::xorshift(&mut seed);
            let len = (seed % 80) as usize;
            let rare = 1 + (seed >> 8) % 40;
            let v: Vec<u8> = (0..len)
                .map(|j| {
                    let r = seed.rotate_left(j as u32 * 5) ^ (j as u64).wrapping_mul(0x2545_f491);
                    if r % rare == 0 {
                        alphabet[(r / rare % alphabet.len() as u64) as usize]
                    } else {
                        b'a' + (r % 26) as u8
                    }
                })
                .collect();
            assert_eq!(
                quote_or_escape(&v),
                memchr::memchr2(b'"', b'\\', &v),
                "{v:?}"
            );
        }
    }
}
