//! Which matched values must never reach an event or a log: values of fields and headers
//! named like secrets, and whole raw bodies, query strings or request lines that carry
//! such a field. Both engines (native rules and CRS) use it for their match excerpts.
//!
//! A name is secret when, lower-cased, it contains one of [`SECRET_WORDS`] (`password`,
//! `new_pass`, `user.pwd`, `X-Api-Key`, `otp_code`…); cookies and `Authorization` headers
//! always are. Redacting a harmless field by mistake costs an excerpt; missing one would
//! store a password for the retention period, so the list errs wide.

/// Parts of names that mark a secret.
pub const SECRET_WORDS: &[&[u8]] = &[
    b"pass",
    b"pwd",
    b"secret",
    b"token",
    b"key",
    b"otp",
    b"auth",
    b"credential",
    b"session",
    b"csrf",
    b"xsrf",
    b"cvv",
    b"ssn",
];

/// A header whose value is always secret.
pub fn is_secret_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"cookie")
        || name.eq_ignore_ascii_case(b"set-cookie")
        || is_secret_name(name)
}

/// A field or header name that contains a secret word (ASCII case-insensitive): one
/// Aho-Corasick scan, built on first use.
pub fn is_secret_name(name: &[u8]) -> bool {
    static WORDS: std::sync::LazyLock<aho_corasick::AhoCorasick> = std::sync::LazyLock::new(|| {
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(SECRET_WORDS)
            .expect("fixed word list")
    });
    WORDS.is_match(name)
}

/// A raw value (body, query string, request line) that names a secret field anywhere:
/// `password=…`, `"token": …`, `<pwd>…`.
pub fn mentions_secret(value: &[u8]) -> bool {
    is_secret_name(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_and_raw_values() {
        for n in [
            "password",
            "user.Password",
            "pwd",
            "new_pass",
            "X-API-Key",
            "otp_code",
            "access_token",
            "authorization",
        ] {
            assert!(is_secret_name(n.as_bytes()), "{n}");
        }
        for n in ["q", "search", "user", "email", "comment", "page"] {
            assert!(!is_secret_name(n.as_bytes()), "{n}");
        }
        assert!(mentions_secret(b"user=alice&password=x'--"));
        assert!(mentions_secret(br#"{"user":"a","pwd":"x"}"#));
        assert!(!mentions_secret(b"q=1' or 1=1--"));
        assert!(is_secret_header(b"Cookie") && is_secret_header(b"X-Auth-Token"));
        assert!(!is_secret_header(b"Referer"));
    }
}
