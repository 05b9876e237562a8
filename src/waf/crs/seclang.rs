//! The SecLang reader: `.conf` text → directives with their arguments, and the small
//! grammars inside them (variable lists, operators, action lists).
//!
//! It follows ModSecurity's quoting: a directive spans lines joined by a trailing `\`;
//! arguments are bare words or `"…"` strings in which only `\"` is an escape (every other
//! backslash stays, so regexes keep `\x5c`, `\s`…); action values may be `'…'` strings
//! in which `\'` is an escape and commas do not split.

use std::fmt;

/// One directive: `SecRule`, `SecAction`, `SecMarker`…
#[derive(Debug, Clone)]
pub struct Directive {
    /// 1-based line where the directive starts.
    pub line: usize,
    pub name: String,
    pub args: Vec<String>,
}

/// A syntax error, with its line.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

/// Splits a file into directives.
pub fn directives(text: &str) -> Result<Vec<Directive>, SyntaxError> {
    let mut out = Vec::new();
    let mut joined = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if joined.is_empty() {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            start = i + 1;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                continue;
            }
            None => joined.push_str(line),
        }
        let d = directive(&joined, start)?;
        out.push(d);
        joined.clear();
    }
    if !joined.is_empty() {
        out.push(directive(&joined, start)?);
    }
    Ok(out)
}

/// The quoted string starting at `start` (just after its opening `q`): its text with `\q`
/// unescaped (every other backslash kept) and the position after the closing `q`.
fn quoted(text: &str, start: usize, q: char) -> Option<(String, usize)> {
    let b = text.as_bytes();
    let qb = q as u8;
    let mut s = String::new();
    let (mut i, mut seg) = (start, start);
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&qb) {
            s.push_str(&text[seg..i]);
            s.push(q);
            i += 2;
            seg = i;
        } else if b[i] == qb {
            s.push_str(&text[seg..i]);
            return Some((s, i + 1));
        } else {
            i += 1;
        }
    }
    None
}

fn directive(text: &str, line: usize) -> Result<Directive, SyntaxError> {
    let err = |msg: &str| SyntaxError {
        line,
        msg: msg.to_string(),
    };
    let mut args = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if b[i] == b'"' {
            let (s, end) =
                quoted(text, i + 1, '"').ok_or_else(|| err("unterminated quoted argument"))?;
            i = end;
            args.push(s);
        } else {
            let st = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            args.push(text[st..i].to_string());
        }
    }
    if args.is_empty() {
        return Err(err("empty directive"));
    }
    let name = args.remove(0);
    Ok(Directive { line, name, args })
}

/// One `name[:value]` of an action list.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: String,
    pub value: Option<String>,
}

/// Splits `id:1,phase:2,msg:'a, b',t:none` into actions.
pub fn actions(text: &str) -> Result<Vec<Action>, String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let st = i;
        while i < b.len() && b[i] != b':' && b[i] != b',' {
            i += 1;
        }
        let name = text[st..i].trim().to_string();
        let mut value = None;
        if i < b.len() && b[i] == b':' {
            i += 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i < b.len() && b[i] == b'\'' {
                let (s, end) = quoted(text, i + 1, '\'')
                    .ok_or_else(|| format!("action `{name}`: unterminated quoted value"))?;
                i = end;
                value = Some(s);
            } else {
                let st = i;
                while i < b.len() && b[i] != b',' {
                    i += 1;
                }
                value = Some(text[st..i].trim().to_string());
            }
        }
        if name.is_empty() {
            return Err("empty action".into());
        }
        out.push(Action { name, value });
    }
    Ok(out)
}

/// One element of a variable list: `!ARGS:foo`, `&TX:x`, `REQUEST_HEADERS:/^x-/`.
#[derive(Debug, Clone, PartialEq)]
pub struct VarRef {
    pub name: String,
    pub selector: Option<Selector>,
    pub count: bool,
    pub exclude: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Name(String),
    Regex(String),
}

/// Splits `ARGS|!ARGS:/^x/|&TX:foo` (a `|` inside a `/regex/` selector does not split).
pub fn variables(text: &str) -> Result<Vec<VarRef>, String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let mut v = VarRef {
            name: String::new(),
            selector: None,
            count: false,
            exclude: false,
        };
        loop {
            match b.get(i) {
                Some(b'!') => v.exclude = true,
                Some(b'&') => v.count = true,
                Some(b' ') => {}
                _ => break,
            }
            i += 1;
        }
        let st = i;
        while i < b.len() && b[i] != b':' && b[i] != b'|' {
            i += 1;
        }
        v.name = text[st..i].trim().to_ascii_uppercase();
        if v.name.is_empty() {
            return Err(format!("empty variable in `{text}`"));
        }
        if i < b.len() && b[i] == b':' && v.name == "XML" {
            // An XPath expression, taken as written.
            i += 1;
            let st = i;
            while i < b.len() && b[i] != b'|' {
                i += 1;
            }
            v.selector = Some(Selector::Name(text[st..i].to_string()));
        } else if i < b.len() && b[i] == b':' {
            i += 1;
            let quoted = b.get(i) == Some(&b'\'');
            if quoted {
                i += 1;
            }
            if b.get(i) == Some(&b'/') {
                i += 1;
                let st = i;
                while i < b.len() && !(b[i] == b'/' && b[i - 1] != b'\\') {
                    i += 1;
                }
                if i >= b.len() {
                    return Err(format!("unterminated regex selector in `{text}`"));
                }
                v.selector = Some(Selector::Regex(text[st..i].to_string()));
                i += 1;
                if quoted && b.get(i) == Some(&b'\'') {
                    i += 1;
                }
            } else {
                let st = i;
                while i < b.len() && b[i] != b'|' && b[i] != b'\'' {
                    i += 1;
                }
                v.selector = Some(Selector::Name(text[st..i].trim().to_string()));
                if b.get(i) == Some(&b'\'') {
                    i += 1;
                }
            }
        }
        out.push(v);
        while i < b.len() && (b[i] == b'|' || b[i] == b' ') {
            i += 1;
        }
    }
    Ok(out)
}

/// `"!@rx a"` → (negated, operator name, argument); a bare pattern is `@rx`.
pub fn operator(text: &str) -> (bool, String, String) {
    let t = text.trim_start();
    let (neg, t) = match t.strip_prefix('!') {
        Some(r) => (true, r.trim_start()),
        None => (false, t),
    };
    match t.strip_prefix('@') {
        Some(r) => {
            let (name, arg) = r.split_once(' ').unwrap_or((r, ""));
            (neg, name.to_string(), arg.to_string())
        }
        None => (neg, "rx".to_string(), t.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_lines_and_unquotes() {
        let d = directives(
            "# c\nSecRule ARGS \"@rx a\\\"b\\x5c\" \\\n    \"id:1,\\\n    msg:'x, y'\"\nSecMarker END\n",
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].line, 2);
        assert_eq!(
            d[0].args,
            vec!["ARGS", "@rx a\"b\\x5c", "id:1,    msg:'x, y'"]
        );
        let a = actions(&d[0].args[2]).unwrap();
        assert_eq!(a[1].value.as_deref(), Some("x, y"));
        assert_eq!(d[1].name, "SecMarker");
    }

    #[test]
    fn variable_lists() {
        let v = variables("REQUEST_COOKIES|!REQUEST_COOKIES:/__utm|x/|&TX:a|XML:/*").unwrap();
        assert_eq!(v.len(), 4);
        assert!(v[1].exclude);
        assert_eq!(v[1].selector, Some(Selector::Regex("__utm|x".into())));
        assert!(v[2].count);
        assert_eq!(v[3].selector, Some(Selector::Name("/*".into())));
        assert_eq!(
            operator("!@within %{tx.a}"),
            (true, "within".into(), "%{tx.a}".into())
        );
        assert_eq!(operator("^a b$"), (false, "rx".into(), "^a b$".into()));
    }
}
