//! The request as CRS variables: items by kind (ARGS, REQUEST_HEADERS, …), scalars
//! (REQUEST_FILENAME, REQBODY_PROCESSOR, UNIQUE_ID…), XML and multipart bodies reprocessed
//! as ModSecurity's body processors would, and target collection with exclusions.

use super::*;

/// Request data, read-only while rules run.
pub(super) struct Data<'a> {
    pub(super) req: &'a RequestParts<'a>,
    /// The rule set's TX names (to look up a name made at run time).
    pub(super) tx_names: &'a TxNames,
    pub(super) items: Items,
    /// Item indices by [`Kind`](crate::waf::rule::Kind).
    pub(super) by_kind: Vec<Vec<u32>>,
    /// Each item's byte set.
    pub(super) item_bs: Vec<ByteSet>,
    /// Each item's first item with the same value bytes.
    pub(super) canon: Vec<u32>,
    /// Whether the item's value occurs more than once.
    pub(super) repeated: Vec<bool>,
    /// Scalars fixed for the request ([`CACHED_SCALARS`]), as values after the items
    /// (their bytes appended to `items.buf`): their transformations and literal scans
    /// are cached like an item's. `canon`, `item_bs` and `repeated` cover them too.
    pub(super) scalars: Vec<(Var, u32, Range<u32>)>,
    /// Where the items' bytes end in `items.buf` (the scalars' start).
    items_end: usize,
    pub(super) filename: Vec<u8>,
    pub(super) basename: Option<Range<usize>>,
    /// REQUEST_URI: the target from its path on.
    pub(super) uri: &'a [u8],
    pub(super) processor: &'static str,
    pub(super) xml_text: Option<Vec<u8>>,
    pub(super) xml_attrs: Vec<Vec<u8>>,
    pub(super) part_headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) files_size: usize,
    /// UNIQUE_ID, made when a rule first reads it.
    pub(super) unique_id: std::cell::OnceCell<String>,
}

static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// Whether `var:key` is excluded from `link` (its `!VAR:key` targets, or a
/// `ctl:ruleRemoveTarget*` of this request).
pub(super) fn is_excluded(var: Var, key: &[u8], link: &Rule, head: &Rule, st: &State) -> bool {
    link.excludes
        .iter()
        .any(|(v, s)| *v == var && s.matches(key))
        || st.removed_targets.iter().any(
            |RemovedTarget {
                 id,
                 tag,
                 var: v,
                 key: k,
             }| {
                *v == var
                    && k.as_deref().is_none_or(|k| k.eq_ignore_ascii_case(key))
                    && (id.is_some_and(|id| id == head.id)
                        || tag
                            .as_ref()
                            .is_some_and(|t| head.tags.iter().any(|x| x == t)))
            },
        )
}

/// Collects the values of one target (`var` filtered by `sel`, minus exclusions).
pub(super) fn collect(
    target: &crate::waf::crs::compile::Target,
    link: &Rule,
    head: &Rule,
    data: &Data<'_>,
    st: &State,
    bufs: &mut Bufs,
) {
    // Exclusions are checked here only for counts; other values are checked once they
    // matched (most never do).
    let (var, sel) = (target.var, &target.sel);
    let excluded = |key: &[u8]| target.count && is_excluded(var, key, link, head, st);
    let kinds = var.kinds();
    if kinds != 0 {
        let mut bits = kinds;
        while bits != 0 {
            let kind = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            for &i in &data.by_kind[kind] {
                let it = &data.items.items[i as usize];
                let key = data.items.name(it);
                if !sel.matches(key) || excluded(key) {
                    continue;
                }
                bufs.vals.push(V {
                    var,
                    item: Some(i),
                    key: it.name.clone(),
                    val: it.value.clone(),
                    checked: false,
                });
            }
        }
        return;
    }
    // A value that is not a request item: copied into `vbuf`.
    let push_own = |key: &[u8], val: &[u8], bufs: &mut Bufs| {
        let key = push(&mut bufs.vbuf, key);
        let val = push(&mut bufs.vbuf, val);
        bufs.vals.push(V {
            var,
            item: None,
            key,
            val,
            checked: false,
        });
    };
    let own = |key: &[u8], val: &[u8], bufs: &mut Bufs| {
        if sel.matches(key) && !excluded(key) {
            push_own(key, val, bufs);
        }
    };
    match var {
        Var::Tx => {
            if let crate::waf::crs::compile::Sel::Name(n) = sel {
                let v = match target.tx_slot {
                    NO_TX => std::str::from_utf8(n)
                        .ok()
                        .and_then(|k| st.vars.get_named(data.tx_names, k)),
                    s => st.vars.get(s),
                };
                if let Some(v) = v {
                    if !excluded(n) {
                        push_own(n, v, bufs);
                    }
                }
            } else if let crate::waf::crs::compile::Sel::Regex(_) = sel {
                // The names known at load were matched then.
                for &s in &target.tx_selected {
                    if let Some(v) = st.vars.get(s) {
                        let k = data.tx_names.names[s as usize].as_bytes();
                        if !excluded(k) {
                            push_own(k, v, bufs);
                        }
                    }
                }
                for (k, v) in st.vars.others() {
                    if !k.starts_with('@') {
                        own(k.as_bytes(), v, bufs);
                    }
                }
            } else {
                for (k, v) in st.vars.iter(data.tx_names) {
                    if !k.starts_with('@') {
                        own(k.as_bytes(), v, bufs);
                    }
                }
            }
        }
        Var::MatchedVars => {
            for (k, v) in &st.matched_vars {
                own(k, v, bufs);
            }
        }
        Var::MatchedVarsNames => {
            for (k, _) in &st.matched_vars {
                own(k, k, bufs);
            }
        }
        Var::MultipartPartHeaders => {
            for (k, v) in &data.part_headers {
                own(k, v, bufs);
            }
        }
        Var::Xml => {
            let attrs = matches!(sel, crate::waf::crs::compile::Sel::Name(n) if n == b"//@*");
            if attrs {
                for a in &data.xml_attrs {
                    if !excluded(b"") {
                        push_own(b"", a, bufs);
                    }
                }
            } else if let Some(t) = &data.xml_text {
                push_own(b"", t, bufs);
            }
        }
        _ => {
            if let Some((_, id, val)) = data.scalars.iter().find(|(v, ..)| *v == var) {
                if matches!(sel, crate::waf::crs::compile::Sel::All) && !excluded(b"") {
                    bufs.vals.push(V {
                        var,
                        item: Some(*id),
                        key: 0..0,
                        val: val.clone(),
                        checked: false,
                    });
                }
            } else if let Some(v) = scalar(var, data, st) {
                if matches!(sel, crate::waf::crs::compile::Sel::All) && !excluded(b"") {
                    push_own(b"", &v, bufs);
                }
            }
        }
    }
}

/// The value of a scalar variable (`None`: not present in this request).
pub(super) fn scalar<'d>(var: Var, data: &'d Data<'_>, st: &'d State) -> Option<Cow<'d, [u8]>> {
    let b = |v: &'d [u8]| Some(Cow::Borrowed(v));
    match var {
        Var::MatchedVar => b(&st.matched_var),
        Var::MatchedVarName => b(&st.matched_name),
        Var::RequestBody => {
            // As in ModSecurity: with the URLENCODED processor, or when forced.
            let body = data.req.body?;
            if data.processor != "URLENCODED" && !st.force_body {
                return None;
            }
            b(body)
        }
        _ => request_scalar(var, data),
    }
}

/// Scalars a phase's rules cannot change, cached per request as values
/// ([`Data::scalars`]): the ones CRS reads under transformation chains.
const CACHED_SCALARS: &[Var] = &[
    Var::RequestUri,
    Var::RequestUriRaw,
    Var::RequestFilename,
    Var::RequestBasename,
    Var::RequestLine,
    Var::RequestMethod,
    Var::RequestProtocol,
    Var::QueryString,
    Var::ReqbodyProcessor,
];

/// The value of a scalar that only depends on the request.
fn request_scalar<'d>(var: Var, data: &'d Data<'_>) -> Option<Cow<'d, [u8]>> {
    let req = data.req;
    let target = req.target.as_bytes();
    let b = |v: &'d [u8]| Some(Cow::Borrowed(v));
    let owned = |v: Vec<u8>| Some(Cow::Owned(v));
    match var {
        Var::RequestUri => b(data.uri),
        Var::RequestUriRaw => b(target),
        Var::RequestFilename => b(&data.filename),
        Var::RequestBasename => b(data.basename.clone().map_or(&[][..], |r| &data.filename[r])),
        Var::RequestLine => {
            let mut l = Vec::with_capacity(target.len() + 16);
            l.extend_from_slice(req.method.as_bytes());
            l.push(b' ');
            l.extend_from_slice(target);
            l.push(b' ');
            l.extend_from_slice(req.version.as_bytes());
            owned(l)
        }
        Var::RequestMethod => b(req.method.as_bytes()),
        Var::RequestProtocol => b(req.version.as_bytes()),
        Var::QueryString => b(req.target.split_once('?')?.1.as_bytes()),
        Var::RequestBodyLength => owned(req.body.map_or(0, <[u8]>::len).to_string().into_bytes()),
        Var::ReqbodyProcessor => b(data.processor.as_bytes()),
        Var::ReqbodyError => {
            let failed = data.items.body.and_then(BodyParse::failure).is_some();
            b(if failed { b"1" } else { b"0" })
        }
        Var::ArgsCombinedSize => owned(data.items.arg_bytes.to_string().into_bytes()),
        Var::FilesCombinedSize => owned(data.files_size.to_string().into_bytes()),
        Var::RemoteAddr => owned(
            req.client_ip
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
                .to_string()
                .into_bytes(),
        ),
        Var::UniqueId => b(data
            .unique_id
            .get_or_init(|| {
                let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
                format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            })
            .as_bytes()),
        _ => None,
    }
}

impl<'a> Data<'a> {
    pub(super) fn new(
        req: &'a RequestParts<'a>,
        tx_names: &'a TxNames,
        mut items: Items,
        by_kind: Vec<Vec<u32>>,
        item_bs: Vec<ByteSet>,
    ) -> Data<'a> {
        items.repeat_names = true;
        items.collect(req, crate::waf::crs::compile::ITEM_KINDS);
        let target = req.target.as_bytes();
        // An absolute-form target: REQUEST_URI and REQUEST_FILENAME start at the path.
        let absolute = !req.target.starts_with('/');
        let path_and_query: &[u8] = match req.target.find("://").filter(|_| absolute) {
            Some(i) => {
                let rest = &target[i + 3..];
                rest.iter()
                    .position(|&b| b == b'/')
                    .map_or(&b"/"[..], |p| &rest[p..])
            }
            None => target,
        };
        let path = match memchr::memchr(b'?', path_and_query) {
            Some(i) => &path_and_query[..i],
            None => path_and_query,
        };
        let mut filename = Vec::with_capacity(path.len());
        crate::waf::transform::url_decode(path, &mut filename, false);
        let basename = filename
            .iter()
            .rposition(|&b| b == b'/' || b == b'\\')
            .filter(|&i| i + 1 < filename.len())
            .map(|i| i + 1..filename.len());
        let ctype = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes().to_ascii_lowercase())
            .unwrap_or_default();
        let processor = processor_of(&ctype);
        let mut d = Data {
            req,
            tx_names,
            items,
            by_kind,
            item_bs,
            canon: Vec::new(),
            repeated: Vec::new(),
            scalars: Vec::new(),
            items_end: 0,
            filename,
            basename,
            uri: path_and_query,
            processor,
            xml_text: None,
            xml_attrs: Vec::new(),
            part_headers: Vec::new(),
            files_size: 0,
            unique_id: std::cell::OnceCell::new(),
        };
        if let Some(body) = req.body {
            if processor == "XML" {
                d.xml(body);
            } else if processor == "MULTIPART" {
                d.multipart(body);
            }
        }
        d.index();
        d
    }

    fn index(&mut self) {
        self.by_kind.resize(32, Vec::new());
        for k in &mut self.by_kind {
            k.clear();
        }
        self.item_bs.clear();
        self.canon.clear();
        self.repeated.clear();
        let items = &self.items;
        let mut first: foldhash::HashMap<&[u8], u32> =
            foldhash::HashMap::with_capacity_and_hasher(items.items.len(), Default::default());
        for (i, it) in items.items.iter().enumerate() {
            self.by_kind[it.kind as usize].push(i as u32);
            let v = items.value(it);
            self.item_bs.push(ByteSet::of(v));
            let c = *first.entry(v).or_insert(i as u32);
            self.canon.push(c);
            self.repeated.push(false);
            if c != i as u32 {
                self.repeated[c as usize] = true;
                self.repeated[i] = true;
            }
        }
        self.items_end = self.items.buf.len();
        self.cache_scalars();
    }

    /// Appends [`CACHED_SCALARS`] as values after the items.
    fn cache_scalars(&mut self) {
        let n = self.items.items.len();
        self.items.buf.truncate(self.items_end);
        self.canon.truncate(n);
        self.item_bs.truncate(n);
        self.repeated.truncate(n);
        self.scalars.clear();
        let mut tmp = Vec::new();
        for &var in CACHED_SCALARS {
            tmp.clear();
            match request_scalar(var, self) {
                Some(v) => tmp.extend_from_slice(&v),
                None => continue,
            }
            let id = (self.items.items.len() + self.scalars.len()) as u32;
            // The same bytes as an earlier scalar (REQUEST_URI and REQUEST_URI_RAW):
            // one value.
            let same = self
                .scalars
                .iter()
                .find(|(_, _, r)| self.items.buf[r.start as usize..r.end as usize] == tmp[..]);
            let (c, range) = match same {
                Some(&(_, c, ref r)) => (c, r.clone()),
                None => {
                    let start = self.items.buf.len() as u32;
                    self.items.buf.extend_from_slice(&tmp);
                    (id, start..self.items.buf.len() as u32)
                }
            };
            self.item_bs.push(ByteSet::of(&tmp));
            self.canon.push(c);
            self.repeated.push(c != id);
            if c != id {
                self.repeated[c as usize] = true;
            }
            self.scalars.push((var, id, range));
        }
        // REQUEST_BODY, which CRS reads under several chains: as URLENCODED, it is
        // there whatever the rules do (otherwise `scalar` reads it when forced).
        if let (Some(body), "URLENCODED") = (self.req.body, self.processor) {
            let id = (self.items.items.len() + self.scalars.len()) as u32;
            let start = self.items.buf.len() as u32;
            self.items.buf.extend_from_slice(body);
            self.item_bs.push(ByteSet::of(body));
            self.canon.push(id);
            self.repeated.push(false);
            self.scalars
                .push((Var::RequestBody, id, start..self.items.buf.len() as u32));
        }
    }

    /// Items and cached scalars: the values the per-request cache is indexed by.
    pub(super) fn values(&self) -> usize {
        self.items.items.len() + self.scalars.len()
    }

    /// `ctl:requestBodyProcessor=…`: the body parsed again as that type.
    pub(super) fn reprocess(&mut self, p: &str) {
        let ctype = match p {
            "URLENCODED" => "application/x-www-form-urlencoded",
            "JSON" => "application/json",
            "XML" => "application/xml",
            "MULTIPART" => return,
            _ => return,
        };
        let req = *self.req;
        self.processor = processor_of(ctype.as_bytes());
        if req.body.is_none_or(<[u8]>::is_empty) {
            // Without a body the items stay what they are (CRS forces URLENCODED on
            // every body-less request); REQBODY_PROCESSOR changed.
            self.cache_scalars();
            return;
        }
        self.items.collect_as(
            &req,
            crate::waf::crs::compile::ITEM_KINDS,
            Some(ctype),
            None,
        );
        self.index();
        if p == "XML" {
            if let Some(b) = req.body {
                self.xml(b);
            }
        }
    }

    /// Text content and attribute values of an XML body.
    fn xml(&mut self, body: &[u8]) {
        let mut text = Vec::new();
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'<' {
                if body[i..].starts_with(b"<![CDATA[") {
                    let s = i + 9;
                    let e = memchr::memmem::find(&body[s..], b"]]>").map_or(body.len(), |e| s + e);
                    text.extend_from_slice(&body[s..e.min(body.len())]);
                    i = e + 3;
                    continue;
                }
                let e = memchr::memchr(b'>', &body[i..]).map_or(body.len(), |e| i + e);
                let tag = &body[i..e.min(body.len())];
                if !tag.starts_with(b"<!") && !tag.starts_with(b"<?") {
                    let mut j = 0;
                    while let Some(q) = tag[j..].iter().position(|&b| b == b'"' || b == b'\'') {
                        let qc = tag[j + q];
                        let s = j + q + 1;
                        let Some(end) = tag[s..].iter().position(|&b| b == qc) else {
                            break;
                        };
                        self.xml_attrs.push(xml_unescape(&tag[s..s + end]));
                        j = s + end + 1;
                    }
                }
                i = e + 1;
            } else {
                text.push(body[i]);
                i += 1;
            }
        }
        self.xml_text = Some(xml_unescape(&text));
    }

    /// Part headers and upload sizes of a multipart body, read by the same strict parser
    /// as the arguments (a body it refuses has set `REQBODY_ERROR` already).
    fn multipart(&mut self, body: &[u8]) {
        let Some(ctype) = self.req.headers.get(http::header::CONTENT_TYPE) else {
            return;
        };
        let Ok(boundary) = crate::waf::multipart::boundary(ctype.as_bytes()) else {
            return;
        };
        let (part_headers, files_size) = (&mut self.part_headers, &mut self.files_size);
        let mut each = |part: crate::waf::multipart::Part<'_>| {
            if part.filename.is_some_and(|f| !f.is_empty()) {
                *files_size += part.content.len();
            }
            for line in part.header_lines() {
                part_headers.push((part.name.to_vec(), line.to_vec()));
            }
        };
        // A body the strict reader refuses is read as ModSecurity would (it is refused
        // anyway: `REQBODY_ERROR`).
        let refused = matches!(
            crate::waf::multipart::parse(body, boundary, |_| {}),
            Err(crate::waf::multipart::Error::Invalid(_))
        );
        if refused {
            crate::waf::multipart::parse_lenient(body, boundary, &mut each);
        } else {
            let _ = crate::waf::multipart::parse(body, boundary, &mut each);
        }
    }
}

/// Character and entity references decoded, as an XML parser hands values over.
fn xml_unescape(v: &[u8]) -> Vec<u8> {
    if !v.contains(&b'&') {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(v.len());
    crate::waf::transform::Transform::HtmlEntityDecode.apply(v, &mut out);
    out
}

/// REQBODY_PROCESSOR from a (lowercased) content type, as ModSecurity with its
/// recommended configuration sets it.
fn processor_of(ctype: &[u8]) -> &'static str {
    let mime = ctype
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    if mime == b"application/x-www-form-urlencoded" {
        "URLENCODED"
    } else if mime == b"multipart/form-data" {
        "MULTIPART"
    } else if mime.starts_with(b"application/json") || mime.ends_with(b"+json") {
        "JSON"
    } else if mime == b"text/xml"
        || mime == b"application/xml"
        || mime == b"application/soap+xml"
        || mime.ends_with(b"+xml")
    {
        "XML"
    } else {
        ""
    }
}
