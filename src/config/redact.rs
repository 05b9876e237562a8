//! Inline secrets removed from a config file's text, for copies that leave the machine's
//! config directory (backups). Comments and layout are kept; the value of every key that
//! names a secret (`token`, `secret`, `password`, `passwd`, or one ending in `_token`,
//! `_secret`, `_password`, `_passwd`, `_api_key`), and the password of any URL with
//! credentials (`redis://user:pass@host`), becomes [`REDACTED`]. Paths to secret files
//! (`token_file`, `secret_file`) are kept: they name a file, not its content.

use toml_edit::{DocumentMut, Item, Value};

/// What a redacted value reads as.
pub const REDACTED: &str = "REDACTED";

/// The config text with inline secrets replaced, and how many were; an error when the
/// text is not TOML (nothing is returned then, so nothing leaks).
pub fn redact_secrets(text: &str) -> Result<(String, usize), toml_edit::TomlError> {
    let mut doc: DocumentMut = text.parse()?;
    let mut n = 0;
    redact_table(doc.as_table_mut(), &mut n);
    Ok((doc.to_string(), n))
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["token", "secret", "password", "passwd"].contains(&k.as_str())
        || ["_token", "_secret", "_password", "_passwd", "_api_key"]
            .iter()
            .any(|s| k.ends_with(s))
}

fn redact_table(t: &mut dyn toml_edit::TableLike, n: &mut usize) {
    for (key, item) in t.iter_mut() {
        let secret = is_secret_key(key.get());
        redact_item(item, secret, n);
    }
}

fn redact_item(item: &mut Item, secret: bool, n: &mut usize) {
    match item {
        Item::Table(t) => redact_table(t, n),
        Item::ArrayOfTables(a) => {
            for t in a.iter_mut() {
                redact_table(t, n);
            }
        }
        Item::Value(v) => redact_value(v, secret, n),
        Item::None => {}
    }
}

fn redact_value(v: &mut Value, secret: bool, n: &mut usize) {
    match v {
        Value::InlineTable(t) => redact_table(t, n),
        Value::Array(a) => {
            for v in a.iter_mut() {
                redact_value(v, secret, n);
            }
        }
        Value::String(s) if secret => {
            let decor = s.decor().clone();
            *v = Value::from(REDACTED);
            *v.decor_mut() = decor;
            *n += 1;
        }
        Value::String(s) => {
            if let Some(clean) = without_url_password(s.value()) {
                let decor = s.decor().clone();
                *v = Value::from(clean);
                *v.decor_mut() = decor;
                *n += 1;
            }
        }
        _ => {}
    }
}

/// `scheme://user:password@rest` → `scheme://user:REDACTED@rest`; `None` when `s` has no
/// password in a URL.
fn without_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let (user, _password) = rest[..at].split_once(':')?;
    Some(format!("{scheme}://{user}:{REDACTED}{}", &rest[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secrets_are_redacted_and_the_rest_kept() {
        let text = r#"# the admin port
[admin]
token = "s3cret-admin"   # inline
token_file = "data/admin.token"

[[apps]]
name = "demo"
[apps.session]
keys = [{ id = "k1", secret = "0123456789abcdef" }]

[cluster]
url = "rediss://gw:hunter2@redis.internal:6380/0"
webhook_secret = "whsec"
"#;
        let (out, n) = redact_secrets(text).unwrap();
        assert_eq!(n, 4, "{out}");
        for leaked in ["s3cret-admin", "0123456789abcdef", "hunter2", "whsec"] {
            assert!(!out.contains(leaked), "{leaked} left in:\n{out}");
        }
        assert!(out.contains("# the admin port"));
        assert!(out.contains("token = \"REDACTED\"   # inline"), "{out}");
        assert!(out.contains("token_file = \"data/admin.token\""));
        assert!(out.contains("rediss://gw:REDACTED@redis.internal:6380/0"));
        assert!(redact_secrets("not = [toml").is_err());
    }
}
