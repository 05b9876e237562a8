//! Maps key paths (`routes[1].upstream`) to line and column in the config text, and byte
//! offsets back to key paths, using `toml_edit`'s span-preserving parse.
//!
//! Serde's structs do not remember where a value came from; keeping spans out of them keeps
//! them plain. Lookups happen only when an error is reported, never on the request path.

use std::fmt;
use std::path::PathBuf;

use toml_edit::{ImDocument, Item, Value};

use super::ConfigError;

/// A path of keys and array indexes into the config document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    /// This path extended by a key.
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Key(k.to_string()));
        KeyPath(v)
    }
    /// This path extended by an array index.
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Index(i));
        KeyPath(v)
    }
    /// Shorthand for a path of keys: `KeyPath::of(&["admin", "bind"])`.
    pub fn of(keys: &[&str]) -> Self {
        KeyPath(keys.iter().map(|k| Segment::Key(k.to_string())).collect())
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The config text and its span-preserving parse.
pub struct Locator {
    file: PathBuf,
    doc: Option<ImDocument<String>>,
    text: String,
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locator").field("file", &self.file).finish()
    }
}

impl Locator {
    pub fn new(file: PathBuf, text: String) -> Self {
        let doc = ImDocument::parse(text.clone()).ok();
        Locator { file, doc, text }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// An error located at the value of `path`, or at the nearest enclosing item that exists.
    pub fn error(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        let offset = self.span_of(path).unwrap_or(0);
        let (line, column) = self.line_col(offset);
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: path.to_string(),
            message: message.into(),
        }
    }

    /// Converts a syntax or type error from the `toml` crate.
    pub fn from_toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let (line, column) = self.line_col(offset);
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: self
                .key_at(offset)
                .map(|k| k.to_string())
                .unwrap_or_default(),
            message: e.message().trim().to_string(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    /// Start offset of the item at `path`, falling back to the deepest ancestor that exists.
    fn span_of(&self, path: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut best: Option<usize> = None;
        let mut cur = Cur::Table(doc.as_table());
        for seg in &path.0 {
            let next = match (&cur, seg) {
                (Cur::Table(t), Segment::Key(k)) => t.get_key_value(k).map(|(key, item)| {
                    if let Some(s) = key.span() {
                        best = Some(s.start);
                    }
                    Cur::from_item(item)
                }),
                (Cur::Inline(t), Segment::Key(k)) => t.get_key_value(k).map(|(key, v)| {
                    if let Some(s) = key.span() {
                        best = Some(s.start);
                    }
                    Cur::from_item(v)
                }),
                (Cur::Tables(a), Segment::Index(i)) => a.get(*i).map(Cur::Table),
                (Cur::Array(a), Segment::Index(i)) => a.get(*i).map(Cur::from_value),
                _ => None,
            };
            match next {
                Some(n) => {
                    if let Some(s) = n.span() {
                        best = Some(s);
                    }
                    cur = n;
                }
                None => break,
            }
        }
        best
    }

    /// The deepest key path whose item contains `offset`.
    fn key_at(&self, offset: usize) -> Option<KeyPath> {
        let doc = self.doc.as_ref()?;
        let mut path = KeyPath::root();
        let mut cur = Cur::Table(doc.as_table());
        'outer: loop {
            match cur {
                Cur::Table(t) => {
                    for (k, item) in t.iter() {
                        let c = Cur::from_item(item);
                        let key_span = t.key(k).and_then(|key| key.span());
                        let hit = c.contains(offset)
                            || key_span.is_some_and(|s| s.contains(&offset))
                            || matches!(c, Cur::Tables(_)) && c.contains_deep(offset);
                        if hit {
                            path = path.key(k);
                            cur = c;
                            continue 'outer;
                        }
                    }
                    return Some(path);
                }
                Cur::Tables(a) => {
                    for (i, t) in a.iter().enumerate() {
                        if t.span().is_some_and(|s| s.contains(&offset))
                            || table_contains_deep(t, offset)
                        {
                            path = path.index(i);
                            cur = Cur::Table(t);
                            continue 'outer;
                        }
                    }
                    return Some(path);
                }
                Cur::Inline(t) => {
                    for (k, v) in t.iter() {
                        let c = Cur::from_value(v);
                        if c.contains(offset) {
                            path = path.key(k);
                            cur = c;
                            continue 'outer;
                        }
                    }
                    return Some(path);
                }
                Cur::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        let c = Cur::from_value(v);
                        if c.contains(offset) {
                            path = path.index(i);
                            cur = c;
                            continue 'outer;
                        }
                    }
                    return Some(path);
                }
                Cur::Value(_) => return Some(path),
            }
        }
    }
}

fn table_contains_deep(t: &toml_edit::Table, offset: usize) -> bool {
    t.iter()
        .any(|(_, item)| Cur::from_item(item).contains(offset))
}

enum Cur<'a> {
    Table(&'a toml_edit::Table),
    Tables(&'a toml_edit::ArrayOfTables),
    Inline(&'a toml_edit::InlineTable),
    Array(&'a toml_edit::Array),
    Value(&'a Value),
}

impl<'a> Cur<'a> {
    fn from_item(item: &'a Item) -> Cur<'a> {
        match item {
            Item::Table(t) => Cur::Table(t),
            Item::ArrayOfTables(a) => Cur::Tables(a),
            Item::Value(v) => Cur::from_value(v),
            Item::None => Cur::Array(empty_array()),
        }
    }
    fn from_value(v: &'a Value) -> Cur<'a> {
        match v {
            Value::InlineTable(t) => Cur::Inline(t),
            Value::Array(a) => Cur::Array(a),
            other => Cur::Value(other),
        }
    }
    fn span(&self) -> Option<usize> {
        match self {
            Cur::Table(t) => t.span().map(|s| s.start),
            Cur::Tables(a) => a.span().map(|s| s.start),
            Cur::Inline(t) => t.span().map(|s| s.start),
            Cur::Array(a) => a.span().map(|s| s.start),
            Cur::Value(v) => v.span().map(|s| s.start),
        }
    }
    fn contains(&self, offset: usize) -> bool {
        let span = match self {
            Cur::Table(t) => t.span(),
            Cur::Tables(a) => a.span(),
            Cur::Inline(t) => t.span(),
            Cur::Array(a) => a.span(),
            Cur::Value(v) => v.span(),
        };
        span.is_some_and(|s| s.contains(&offset))
    }
    fn contains_deep(&self, offset: usize) -> bool {
        match self {
            Cur::Tables(a) => a.iter().any(|t| {
                t.span().is_some_and(|s| s.contains(&offset)) || table_contains_deep(t, offset)
            }),
            other => other.contains(offset),
        }
    }
}

fn empty_array() -> &'static toml_edit::Array {
    static EMPTY: std::sync::OnceLock<toml_edit::Array> = std::sync::OnceLock::new();
    EMPTY.get_or_init(toml_edit::Array::new)
}
