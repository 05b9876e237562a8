//! GraphQL abuse limits: introspection (when the operator turns it off), selection depth,
//! aliases per document, and operations per request (batching). Applied to every GraphQL
//! document a request carries — a `query` argument (query string, form, or JSON body
//! `{"query": …}`, one per element of a batched JSON array) or an `application/graphql`
//! body.
//!
//! Cost: one pass over each document, no allocation. The scan is lexical (strings, block
//! strings and comments skipped; braces and parentheses counted), which is all the limits
//! need; it does not validate the document (the GraphQL server does).

/// `[waf.graphql]`, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Allow `__schema` / `__type` introspection.
    pub introspection: bool,
    pub max_depth: usize,
    pub max_aliases: usize,
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            introspection: true,
            max_depth: 15,
            max_aliases: 30,
            max_batch: 10,
        }
    }
}

/// What the limits look at in one document.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Deepest nesting of selection sets.
    pub depth: usize,
    /// `alias: field` pairs in selection sets.
    pub aliases: usize,
    /// Uses `__schema` or `__type` (`__typename` is ordinary).
    pub introspection: bool,
}

impl Shape {
    /// The deepest, most aliased of two shapes; introspection when either has it.
    pub fn max(self, o: Shape) -> Shape {
        Shape {
            depth: self.depth.max(o.depth),
            aliases: self.aliases.max(o.aliases),
            introspection: self.introspection || o.introspection,
        }
    }
}

/// The shape of a GraphQL document.
pub fn shape(doc: &[u8]) -> Shape {
    let mut s = Shape::default();
    let (mut braces, mut parens) = (0usize, 0usize);
    let mut i = 0;
    // The last identifier seen at selection level, for `alias:`.
    let mut ident_end: Option<usize> = None;
    while i < doc.len() {
        let b = doc[i];
        match b {
            b'#' => {
                while i < doc.len() && doc[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                if doc[i..].starts_with(b"\"\"\"") {
                    i = memchr::memmem::find(&doc[i + 3..], b"\"\"\"")
                        .map_or(doc.len(), |e| i + 3 + e + 3);
                } else {
                    i += 1;
                    while i < doc.len() && doc[i] != b'"' {
                        if doc[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                }
                ident_end = None;
                continue;
            }
            b'{' if parens == 0 => {
                braces += 1;
                s.depth = s.depth.max(braces);
            }
            b'}' if parens == 0 => braces = braces.saturating_sub(1),
            b'(' => parens += 1,
            b')' => parens = parens.saturating_sub(1),
            b':' if parens == 0 && braces > 0 && ident_end.is_some() => s.aliases += 1,
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let start = i;
                while i < doc.len() && (doc[i].is_ascii_alphanumeric() || doc[i] == b'_') {
                    i += 1;
                }
                let word = &doc[start..i];
                if word == b"__schema" || word == b"__type" {
                    s.introspection = true;
                }
                ident_end = Some(i);
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' | b',' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        ident_end = None;
        i += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_aliases_and_introspection() {
        let s = shape(
            br#"query Q($id: ID!) { a: user(id: $id) { b: name friends { name } } __typename }"#,
        );
        assert_eq!((s.depth, s.aliases, s.introspection), (3, 2, false));
        let s = shape(br#"{ __schema { types { name } } }"#);
        assert!(s.introspection);
        let s = shape(br#"{ search(q: "__schema { a: b }") { id } } # __type"#);
        assert_eq!((s.depth, s.aliases, s.introspection), (2, 0, false));
        let many: String = (0..50).map(|i| format!("a{i}: me {{ id }} ")).collect();
        assert_eq!(shape(format!("{{ {many} }}").as_bytes()).aliases, 50);
        let deep = format!("{}{}", "{ a ".repeat(20), "}".repeat(20));
        assert_eq!(shape(deep.as_bytes()).depth, 20);
    }
}
