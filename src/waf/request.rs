//! Turns a request into the list of values rules look at: each value with its kind
//! (query argument, header, JSON leaf…) and name.
//!
//! Everything is written into one reused byte buffer with ranges into it, so a request
//! costs no allocation once the buffers have grown. Query strings and urlencoded forms
//! are percent-decoded once (as ModSecurity does for ARGS); JSON leaves are unescaped and
//! named by their dotted key path (`user.address.city`; array elements take their
//! parent's name); multipart parts give fields, upload file names and part names.
//! A body that claims a type it does not parse as (broken JSON, multipart without its
//! closing boundary) is flagged, and the engine fails closed on it.

use std::ops::Range;

use http::HeaderMap;

use super::memo::CleanValues;
use super::rule::Kind;

/// The parts of a request the engine reads.
/// Most derived values that are looked at once more for escapes (a request with hundreds
/// of base64 values does not get hundreds of second looks).
const DERIVED_SECOND_LOOK: usize = 64;

#[derive(Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query, or absolute form): raw URI, request
    /// line, and everything CRS reads (as ModSecurity sees it).
    pub target: &'a str,
    /// The canonical target (what the upstream receives) when it differs from `target`:
    /// the decoded path and route exclusions are taken from it.
    pub canonical: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2.0`…
    pub version: &'a str,
    pub headers: &'a HeaderMap,
    /// The body (or its inspected beginning), when it was read.
    pub body: Option<&'a [u8]>,
    /// The client's address (CRS's `REMOTE_ADDR`), when known.
    pub client_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub kind: Kind,
    pub name: Range<u32>,
    pub value: Range<u32>,
    /// For a value found inside another ([`Items::derive`]): the index of the request's
    /// own value it came from (through every layer); [`NO_ORIGIN`] for the others.
    pub origin: u32,
    /// Values were found inside this one (derived items name it as their origin).
    pub has_derived: bool,
    /// The memo knows this value as clean, with everything found inside it: it was
    /// not searched for derived values and needs no evaluation (see [`super::memo`]).
    pub known_clean: bool,
}

/// [`Item::origin`] of a value that was not found inside another.
pub const NO_ORIGIN: u32 = u32::MAX;

impl Item {
    fn new(kind: Kind, name: Range<u32>, value: Range<u32>) -> Item {
        Item {
            kind,
            name,
            value,
            origin: NO_ORIGIN,
            has_derived: false,
            known_clean: false,
        }
    }
}

/// The request target the WAF inspects: path and query as sent (a fragment is not part
/// of a parsed URI), or the authority of an authority-form target (`CONNECT host:443`).
pub fn target_of(uri: &http::Uri) -> &str {
    match (uri.path_and_query(), uri.authority()) {
        (Some(pq), _) => pq.as_str(),
        (None, Some(a)) => a.as_str(),
        (None, None) => uri.path(),
    }
}

/// How the body was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyParse {
    None,
    Ok,
    /// The body does not parse as its declared type (perhaps only because it was cut at
    /// the inspection limit).
    Failed(&'static str),
    /// The body breaks its format within what was read: refused even when truncated.
    Invalid(&'static str),
}

impl BodyParse {
    /// The reason, when the body did not parse.
    pub fn failure(self) -> Option<&'static str> {
        match self {
            BodyParse::Failed(m) | BodyParse::Invalid(m) => Some(m),
            BodyParse::None | BodyParse::Ok => None,
        }
    }
}

/// The values of one request.
#[derive(Default)]
pub struct Items {
    pub buf: Vec<u8>,
    pub items: Vec<Item>,
    pub body: Option<BodyParse>,
    /// Argument count (query and body) and the largest name+value and total sizes.
    pub args: usize,
    pub largest_arg: usize,
    pub arg_bytes: usize,
    /// List a repeated argument name every time (ModSecurity's `ARGS_NAMES`), not once.
    pub repeat_names: bool,
    /// An argument of the query (of the body) is named like a secret (`password=…`): the
    /// raw query (body) holds a secret value.
    pub secret_query: bool,
    pub secret_body: bool,
    path_buf: Vec<u8>,
    text_buf: Vec<u8>,
    /// Scratch for values read back out of `buf` while appending to it (derived values).
    derive_buf: Vec<u8>,
    /// Hashes of argument names already listed (a JSON array repeats its keys), in
    /// order, and by hash (the index into `seen_names` of the first with that hash).
    seen_names: Vec<Range<u32>>,
    seen_index: std::collections::HashMap<u64, u32, foldhash::fast::FixedState>,
    /// Names listed lately, by [`recent_slot`]: (names kind + 1, or 0 when empty; the
    /// listed name's place in `buf`).
    recent_names: [(u8, u32, u32); RECENT_NAMES],
}

impl Items {
    pub fn name(&self, it: &Item) -> &[u8] {
        &self.buf[it.name.start as usize..it.name.end as usize]
    }
    pub fn value(&self, it: &Item) -> &[u8] {
        &self.buf[it.value.start as usize..it.value.end as usize]
    }

    fn span(&mut self, bytes: &[u8]) -> Range<u32> {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(bytes);
        start..self.buf.len() as u32
    }

    fn push(&mut self, kind: Kind, name: Range<u32>, value: &[u8]) {
        let value = self.span(value);
        self.items.push(Item::new(kind, name, value));
    }

    /// A value percent-decoded as a path (`+` stays), with no name.
    fn push_path_decoded(&mut self, kind: Kind, raw: &[u8]) {
        let start = self.buf.len() as u32;
        percent_decode(raw, &mut self.buf);
        let value = start..self.buf.len() as u32;
        self.items.push(Item::new(kind, 0..0, value));
    }

    /// A copy of `buf[r]` in the reused scratch buffer (for decoding out of `buf` into
    /// its own tail); hand it back with `self.derive_buf = copy`.
    fn scratch_copy(&mut self, r: Range<usize>) -> Vec<u8> {
        let mut copy = std::mem::take(&mut self.derive_buf);
        copy.clear();
        copy.extend_from_slice(&self.buf[r]);
        copy
    }

    /// The bytes decoded into the buffer's tail from `start` on become a `decoded` value
    /// found inside item `source` (named as it is) when `keep`, and are dropped otherwise.
    fn keep_decoded(&mut self, start: usize, source: usize, keep: bool) {
        if keep {
            self.push_derived(source, Kind::Decoded, start);
        } else {
            self.buf.truncate(start);
        }
    }

    /// The buffer's tail from `start` on as a value of `kind` found inside item `source`
    /// (named as it is); its origin is the source's origin, or the source itself.
    fn push_derived(&mut self, source: usize, kind: Kind, start: usize) {
        let src = &self.items[source];
        let origin = match src.origin {
            NO_ORIGIN => source as u32,
            o => o,
        };
        let mut item = Item::new(kind, src.name.clone(), start as u32..self.buf.len() as u32);
        item.origin = origin;
        self.items[origin as usize].has_derived = true;
        self.items.push(item);
    }

    fn push_decoded(&mut self, kind: Kind, name: Range<u32>, raw: &[u8]) {
        let start = self.buf.len() as u32;
        super::transform::url_decode(raw, &mut self.buf, false);
        let value = start..self.buf.len() as u32;
        self.items.push(Item::new(kind, name, value));
    }

    /// Collects the values of `req` of the kinds in `wanted` (a bit set of [`Kind`]s).
    pub fn collect(&mut self, req: &RequestParts<'_>, wanted: u32) {
        self.collect_as(req, wanted, None, None);
    }

    /// [`Items::collect`], with the body parsed as `body_type` (a media type) whatever the
    /// request's `Content-Type` says (ModSecurity's forced body processor). With a `memo`,
    /// a value it knows as clean (with everything found inside it) is marked
    /// [`Item::known_clean`] and not searched for derived values: for a reader that
    /// evaluates derived values only as part of their origin (the native engine without
    /// chained conditions on them, see [`super::memo`]).
    pub fn collect_as(
        &mut self,
        req: &RequestParts<'_>,
        wanted: u32,
        body_type: Option<&str>,
        memo: Option<&mut CleanValues>,
    ) {
        self.buf.clear();
        self.items.clear();
        self.body = None;
        self.args = 0;
        self.largest_arg = 0;
        self.arg_bytes = 0;
        self.seen_names.clear();
        self.seen_index.clear();
        self.recent_names = Default::default();
        self.secret_query = false;
        self.secret_body = false;
        let want = |k: Kind| wanted & k.bit() != 0;
        let none = 0..0;

        if want(Kind::Method) {
            self.push(Kind::Method, none.clone(), req.method.as_bytes());
        }
        let (path, query) = match req.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.target, None),
        };
        let path = match req.canonical {
            Some(c) => c.split_once('?').map_or(c, |(p, _)| p),
            None => path,
        };
        if want(Kind::Path) {
            self.push_path_decoded(Kind::Path, path.as_bytes());
        }
        if want(Kind::Uri) {
            self.push(Kind::Uri, none.clone(), req.target.as_bytes());
        }
        if want(Kind::Protocol) {
            self.push(Kind::Protocol, none.clone(), req.version.as_bytes());
        }
        if want(Kind::RequestLine) {
            let start = self.buf.len() as u32;
            self.buf.extend_from_slice(req.method.as_bytes());
            self.buf.push(b' ');
            self.buf.extend_from_slice(req.target.as_bytes());
            self.buf.push(b' ');
            self.buf.extend_from_slice(req.version.as_bytes());
            let value = start..self.buf.len() as u32;
            self.items
                .push(Item::new(Kind::RequestLine, none.clone(), value));
        }
        if let Some(q) = query {
            if want(Kind::Query) {
                self.push(Kind::Query, none.clone(), q.as_bytes());
            }
            self.form(q.as_bytes(), Kind::QueryArg, Kind::QueryArgName);
        }
        for (name, value) in req.headers {
            if name == http::header::COOKIE {
                self.cookies(value.as_bytes());
            }
            if want(Kind::HeaderArg) && is_free_form_header(name) {
                let n = self.span(name.as_str().as_bytes());
                self.push(Kind::HeaderArg, n, value.as_bytes());
            }
            if want(Kind::Header) || want(Kind::HeaderName) {
                let n = self.span(name.as_str().as_bytes());
                if want(Kind::Header) {
                    self.push(Kind::Header, n.clone(), value.as_bytes());
                }
                if want(Kind::HeaderName) {
                    self.items.push(Item::new(Kind::HeaderName, n.clone(), n));
                }
            }
        }
        if let Some(body) = req.body.filter(|b| !b.is_empty()) {
            if want(Kind::RequestBody) {
                self.push(Kind::RequestBody, none.clone(), body);
            }
            let ctype = body_type.unwrap_or_else(|| {
                req.headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            });
            let mime = ctype
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let parsed = if mime == "application/x-www-form-urlencoded" {
                self.form(body, Kind::BodyArg, Kind::BodyArgName);
                BodyParse::Ok
            } else if mime == "application/json" || mime.ends_with("+json") {
                let mut path = std::mem::take(&mut self.path_buf);
                let mut text = std::mem::take(&mut self.text_buf);
                let r = super::json::leaves(body, &mut path, &mut text, |name, value| {
                    self.arg(Kind::BodyArg, name, value)
                });
                self.path_buf = path;
                self.text_buf = text;
                match r {
                    Ok(()) => BodyParse::Ok,
                    Err(e) => BodyParse::Failed(e),
                }
            } else if mime == "text/xml" || mime == "application/xml" || mime.ends_with("+xml") {
                if want(Kind::Body) {
                    self.push(Kind::Body, none.clone(), body);
                }
                if want(Kind::XmlValue) {
                    super::derived::xml_values(body, |name, value| {
                        let n = self.span(name);
                        self.push(Kind::XmlValue, n, value);
                    });
                }
                BodyParse::None
            } else if mime == "multipart/form-data" {
                match super::multipart::boundary(ctype.as_bytes()) {
                    Ok(b) => self.multipart(body, b, want(Kind::Body)),
                    Err(e) => BodyParse::Invalid(e.message()),
                }
            } else {
                if want(Kind::Body) {
                    self.push(Kind::Body, none.clone(), body);
                }
                // A body without a type (or `text/plain`) that reads as a form is inspected
                // as one too: a backend that parses it regardless would otherwise get
                // arguments the rules never saw.
                if (mime.is_empty() || mime == "text/plain") && looks_like_form(body) {
                    self.form(body, Kind::BodyArg, Kind::BodyArgName);
                }
                BodyParse::None
            };
            self.body = Some(parsed);
        }
        if want(Kind::PathSegment) {
            let mut special = 0;
            for seg in path.split('/').filter(|s| !s.is_empty()) {
                let plain = seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
                // A plain segment is a value only when it may be base64url text.
                if plain && super::derived::base64_candidate(seg.as_bytes(), 0).is_none() {
                    continue;
                }
                special += 1;
                self.push_path_decoded(Kind::PathSegment, seg.as_bytes());
            }
            // A payload with slashes in it (`1/**/union/**/select`, `</script>`) spans
            // segments: the whole decoded path is a value too once any segment is special.
            if special > 0 && path.len() > 1 {
                self.push_path_decoded(Kind::PathSegment, path.as_bytes());
            }
        }
        // Items nobody asked for are dropped here rather than tested at every push
        // (before deriving: derived items name their origin by index).
        if wanted != u32::MAX {
            self.items.retain(|i| wanted & i.kind.bit() != 0);
        }
        if want(Kind::Decoded) || want(Kind::Embedded) {
            self.derive(want(Kind::Decoded), want(Kind::Embedded), memo);
        }
    }

    /// Values found inside other values: the text of base64 / JWT values and GraphQL string
    /// literals (see [`super::derived`]), named as the value they came from. Cookies are
    /// not decoded (their values are secrets, and sessions are often base64).
    fn derive(&mut self, decoded: bool, embedded: bool, mut memo: Option<&mut CleanValues>) {
        let n = self.items.len();
        // Values derived here (base64 text) get a second look for escapes and nested
        // percent-encoding (items from `n` on), but are never base64-decoded again.
        let mut i = 0;
        while i < self.items.len() {
            let it = self.items[i].clone();
            i += 1;
            let source = if i > n {
                it.kind == Kind::Decoded && i <= DERIVED_SECOND_LOOK + n
            } else {
                matches!(
                    it.kind,
                    Kind::QueryArg
                        | Kind::BodyArg
                        | Kind::HeaderArg
                        | Kind::PathSegment
                        | Kind::XmlValue
                )
            };
            if !source {
                continue;
            }
            let (vs, ve) = (it.value.start as usize, it.value.end as usize);
            if let Some(m) = memo.as_deref_mut().filter(|_| i <= n) {
                let name = &self.buf[it.name.start as usize..it.name.end as usize];
                let value = &self.buf[vs..ve];
                let known = m
                    .key(it.kind, name, value, (self.secret_query, self.secret_body))
                    .is_some_and(|k| m.contains(k, it.kind, name, value));
                if known {
                    self.items[i - 1].known_clean = true;
                    continue;
                }
            }
            // One pass for the bytes every decoder below needs (`\` escapes, `%` escapes,
            // the lead byte of fullwidth forms): most values hold none.
            if decoded && memchr::memchr3(b'\\', b'%', 0xEF, &self.buf[vs..ve]).is_some() {
                use super::derived as d;
                type Probe = fn(&[u8]) -> bool;
                type Decode = fn(&[u8], &mut Vec<u8>) -> bool;
                let decoders: [(Probe, Decode); 3] = [
                    (d::has_fullwidth, d::fold_fullwidth),
                    (d::has_js_escape, d::unescape_js),
                    (d::has_escape, d::url_unnest),
                ];
                for (probe, decode) in decoders {
                    if !probe(&self.buf[vs..ve]) {
                        continue;
                    }
                    let start = self.buf.len();
                    let src = self.scratch_copy(vs..ve);
                    let changed = decode(&src, &mut self.buf);
                    self.derive_buf = src;
                    self.keep_decoded(start, i - 1, changed);
                }
            }
            if decoded && i <= n {
                let mut k = 0;
                while let Some(range) = super::derived::base64_candidate(&self.buf[vs..ve], k) {
                    k += 1;
                    let start = self.buf.len();
                    let (a, b) = (vs + range.start, vs + range.end);
                    // Decoded into the buffer's tail, kept only when it is text.
                    let src = self.scratch_copy(a..b);
                    super::transform::base64_decode(&src, &mut self.buf);
                    self.derive_buf = src;
                    let text = super::derived::is_text(&self.buf[start..]);
                    self.keep_decoded(start, i - 1, text);
                }
            }
            if embedded
                && i <= n
                && matches!(it.kind, Kind::QueryArg | Kind::BodyArg)
                && super::derived::is_graphql_query(
                    &self.buf[it.name.start as usize..it.name.end as usize],
                    &self.buf[vs..ve],
                )
            {
                let src = self.scratch_copy(vs..ve);
                super::derived::graphql_strings(&src, |lit| {
                    let start = self.buf.len();
                    self.buf.extend_from_slice(lit);
                    self.push_derived(i - 1, Kind::Embedded, start);
                });
                self.derive_buf = src;
            }
        }
    }

    /// One argument: its name as a `*_names` value and its value. A name listed before
    /// is not copied again (a JSON array of records repeats its keys).
    fn arg(&mut self, kind: Kind, name: &[u8], value: &[u8]) {
        self.count_arg(name.len() + value.len());
        let names = names_of(kind);
        // The names of a JSON array of records come back in turn: a small table by length
        // and a few bytes finds them without hashing the whole name.
        let slot = recent_slot(name);
        if !self.repeat_names {
            let (k, start, end) = self.recent_names[slot];
            if k == names as u8 + 1 && self.buf[start as usize..end as usize] == *name {
                self.push(kind, start..end, value);
                return;
            }
        }
        let h = Self::name_hash(names, name);
        let n = match self.listed_name(h, name) {
            Some(r) => r,
            None => {
                let r = self.span(name);
                self.list_name(names, r.clone(), h);
                r
            }
        };
        if !self.repeat_names {
            self.recent_names[slot] = (names as u8 + 1, n.start, n.end);
        }
        self.push(kind, n, value);
    }

    fn name_hash(kind: Kind, bytes: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::with_seed(kind as u64).hash_one(bytes)
    }

    /// Where `bytes` (with [`Items::name_hash`] `h`) already is in the buffer as a listed
    /// name, if it is.
    fn listed_name(&self, h: u64, bytes: &[u8]) -> Option<Range<u32>> {
        if self.repeat_names {
            return None;
        }
        let &i = self.seen_index.get(&h)?;
        let r = &self.seen_names[i as usize];
        // Equal hashes are compared byte for byte: a crafted collision cannot hide a name.
        (self.buf[r.start as usize..r.end as usize] == *bytes).then(|| r.clone())
    }

    /// A `*_names` item, once per distinct name and kind.
    fn push_name(&mut self, kind: Kind, name: Range<u32>) {
        let h = Self::name_hash(kind, &self.buf[name.start as usize..name.end as usize]);
        self.list_name(kind, name, h);
    }

    /// [`Items::push_name`] with the name's hash already computed.
    fn list_name(&mut self, kind: Kind, name: Range<u32>, h: u64) {
        let item = Item::new(kind, name.clone(), name.clone());
        if self.repeat_names {
            self.note_secret_name(kind, &name);
            self.items.push(item);
            return;
        }
        if self
            .listed_name(h, &self.buf[name.start as usize..name.end as usize])
            .is_some()
        {
            return;
        }
        self.note_secret_name(kind, &name);
        // On a collision the first name keeps the index: later ones are listed each time.
        self.seen_index
            .entry(h)
            .or_insert(self.seen_names.len() as u32);
        self.seen_names.push(name);
        self.items.push(item);
    }

    /// Marks the query or body as carrying a secret field when an argument's name is
    /// one (see [`super::redact`]).
    fn note_secret_name(&mut self, kind: Kind, name: &Range<u32>) {
        let flag = match kind {
            Kind::QueryArgName => &mut self.secret_query,
            Kind::BodyArgName => &mut self.secret_body,
            _ => return,
        };
        if !*flag {
            *flag =
                super::redact::is_secret_name(&self.buf[name.start as usize..name.end as usize]);
        }
    }

    fn count_arg(&mut self, size: usize) {
        self.args += 1;
        self.arg_bytes += size;
        self.largest_arg = self.largest_arg.max(size);
    }

    /// `a=1&b=2`, percent-decoded.
    fn form(&mut self, s: &[u8], kind: Kind, names: Kind) {
        for pair in s.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (n, v) = match memchr::memchr(b'=', pair) {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            self.count_arg(n.len() + v.len());
            let start = self.buf.len() as u32;
            super::transform::url_decode(n, &mut self.buf, false);
            let name = start..self.buf.len() as u32;
            self.push_name(names, name.clone());
            self.push_decoded(kind, name, v);
        }
    }

    fn cookies(&mut self, header: &[u8]) {
        for c in header.split(|&b| b == b';') {
            let c = trim(c);
            if c.is_empty() {
                continue;
            }
            let (n, v) = match memchr::memchr(b'=', c) {
                Some(i) => (&c[..i], &c[i + 1..]),
                None => (c, &b""[..]),
            };
            let name = self.span(n);
            self.items
                .push(Item::new(Kind::CookieName, name.clone(), name.clone()));
            self.push(Kind::Cookie, name, v);
        }
    }

    /// Parts of a multipart body (strictly, see [`super::multipart`]): fields and parts
    /// with an empty `filename` are body arguments (every occurrence); uploads give their
    /// file name, field name and contents (as `body` values named by the field).
    fn multipart(&mut self, body: &[u8], boundary: &[u8], want_content: bool) -> BodyParse {
        let mark = (
            self.buf.len(),
            self.items.len(),
            self.seen_names.len(),
            (self.args, self.largest_arg, self.arg_bytes),
        );
        let r = super::multipart::parse(body, boundary, |p| self.part(p, want_content));
        if let Err(super::multipart::Error::Invalid(_)) = r {
            // Refused, but still inspected and reported in full: the parts as a lenient
            // parser (ModSecurity's) reads them.
            self.buf.truncate(mark.0);
            self.items.truncate(mark.1);
            self.seen_names.truncate(mark.2);
            self.seen_index.retain(|_, i| (*i as usize) < mark.2);
            self.recent_names = Default::default();
            (self.args, self.largest_arg, self.arg_bytes) = mark.3;
            super::multipart::parse_lenient(body, boundary, |p| self.part(p, want_content));
        }
        match r {
            Ok(()) => BodyParse::Ok,
            Err(super::multipart::Error::Incomplete) => {
                BodyParse::Failed(super::multipart::Error::Incomplete.message())
            }
            Err(e) => BodyParse::Invalid(e.message()),
        }
    }
}

impl Items {
    fn part(&mut self, part: super::multipart::Part<'_>, want_content: bool) {
        match part.filename {
            Some(f) if !f.is_empty() => {
                let n = self.span(part.name);
                self.items
                    .push(Item::new(Kind::FileName, n.clone(), n.clone()));
                self.push(Kind::File, n.clone(), f);
                if want_content && !part.content.is_empty() {
                    self.push(Kind::Body, n, part.content);
                }
            }
            _ => self.arg(Kind::BodyArg, part.name, part.content),
        }
    }
}

/// `name=value[&…]`: a name of word characters (and `.[]-`) right at the start, then `=`.
fn looks_like_form(body: &[u8]) -> bool {
    let name = body
        .iter()
        .take_while(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'[' | b']' | b'-' | b'%')
        })
        .count();
    name > 0 && name <= 256 && body.get(name) == Some(&b'=')
}

/// Headers whose values are protocol structure, not application data: not inspected as
/// arguments (they still are as `headers` where a rule names them).
fn is_free_form_header(name: &http::HeaderName) -> bool {
    use http::header::*;
    let structured = [
        ACCEPT,
        ACCEPT_ENCODING,
        ACCEPT_LANGUAGE,
        ACCEPT_CHARSET,
        CACHE_CONTROL,
        CONNECTION,
        CONTENT_LENGTH,
        CONTENT_TYPE,
        CONTENT_ENCODING,
        CONTENT_LANGUAGE,
        COOKIE,
        HOST,
        IF_MATCH,
        IF_MODIFIED_SINCE,
        IF_NONE_MATCH,
        IF_RANGE,
        IF_UNMODIFIED_SINCE,
        PRAGMA,
        RANGE,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        UPGRADE_INSECURE_REQUESTS,
        DNT,
        VIA,
        FORWARDED,
    ];
    if structured.contains(name) {
        return false;
    }
    let n = name.as_str();
    !(n.starts_with("sec-")
        || n.starts_with("x-forwarded-")
        || matches!(
            n,
            "keep-alive"
                | "priority"
                | "x-real-ip"
                | "x-request-id"
                | "traceparent"
                | "tracestate"
                | "x-requested-with"
        ))
}

/// Slots of [`Items::recent_names`].
const RECENT_NAMES: usize = 16;

/// The slot of a name in [`Items::recent_names`]: its length and first, last and
/// second-to-last bytes.
fn recent_slot(name: &[u8]) -> usize {
    let at = |i: usize| name.get(i).map_or(0, |&b| usize::from(b));
    let n = name.len();
    (n.wrapping_mul(31)
        ^ at(0).wrapping_mul(7)
        ^ at(n.wrapping_sub(1))
        ^ at(n.wrapping_sub(2)) << 3)
        % RECENT_NAMES
}

fn names_of(kind: Kind) -> Kind {
    match kind {
        Kind::QueryArg => Kind::QueryArgName,
        _ => Kind::BodyArgName,
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Percent-decoding without `+` (paths).
fn percent_decode(s: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (
                super::transform::hex_val(s[i + 1]),
                super::transform::hex_val(s[i + 2]),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Vec<(Kind, String, String)> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let mut items = Items::default();
        items.collect(
            &RequestParts {
                canonical: None,
                client_ip: None,
                method: "POST",
                target,
                version: "HTTP/1.1",
                headers: &map,
                body,
            },
            u32::MAX,
        );
        items
            .items
            .iter()
            .map(|i| {
                (
                    i.kind,
                    String::from_utf8_lossy(items.name(i)).into_owned(),
                    String::from_utf8_lossy(items.value(i)).into_owned(),
                )
            })
            .collect()
    }

    fn has(v: &[(Kind, String, String)], kind: Kind, name: &str, value: &str) -> bool {
        v.iter()
            .any(|(k, n, x)| *k == kind && n == name && x == value)
    }

    #[test]
    fn query_headers_cookies() {
        let v = collect(
            "/a%20b?q=one+two&x=%27&flag",
            &[("cookie", "sid=abc; theme=dark"), ("user-agent", "curl/8")],
            None,
        );
        assert!(has(&v, Kind::Path, "", "/a b"));
        assert!(has(&v, Kind::QueryArg, "q", "one two"));
        assert!(has(&v, Kind::QueryArg, "x", "'"));
        assert!(has(&v, Kind::QueryArg, "flag", ""));
        assert!(has(&v, Kind::QueryArgName, "q", "q"));
        assert!(has(&v, Kind::Cookie, "theme", "dark"));
        assert!(has(&v, Kind::Header, "user-agent", "curl/8"));
        assert!(has(
            &v,
            Kind::RequestLine,
            "",
            "POST /a%20b?q=one+two&x=%27&flag HTTP/1.1"
        ));
    }

    #[test]
    fn bodies() {
        let v = collect(
            "/",
            &[("content-type", "application/json")],
            Some(br#"{"user":{"name":"O\u0027Neil","tags":["a","b"]},"n":5}"#),
        );
        assert!(has(&v, Kind::BodyArg, "user.name", "O'Neil"));
        assert!(has(&v, Kind::BodyArg, "user.tags", "b"));
        assert!(has(&v, Kind::BodyArg, "n", "5"));
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\nhello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"up\"; filename=\"a.php\"\r\nContent-Type: text/plain\r\n\r\n<?php ?>\r\n--XyZ--\r\n";
        let v = collect(
            "/",
            &[("content-type", "multipart/form-data; boundary=XyZ")],
            Some(body),
        );
        assert!(has(&v, Kind::BodyArg, "comment", "hello"));
        assert!(has(&v, Kind::File, "up", "a.php"));
        assert!(has(&v, Kind::FileName, "up", "up"));
        let v = collect("/", &[("content-type", "text/xml")], Some(b"<a/>"));
        assert!(has(&v, Kind::Body, "", "<a/>"));
    }

    #[test]
    fn broken_bodies_are_flagged() {
        let mut items = Items::default();
        let mut map = HeaderMap::new();
        map.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        items.collect(
            &RequestParts {
                canonical: None,
                client_ip: None,
                method: "POST",
                target: "/",
                version: "HTTP/1.1",
                headers: &map,
                body: Some(b"{\"a\": "),
            },
            u32::MAX,
        );
        assert!(matches!(items.body, Some(BodyParse::Failed(_))));
    }
}
