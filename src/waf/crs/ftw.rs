//! CRS's regression suite (go-ftw YAML: `tests/<family>/<rule>.yaml`) replayed through
//! the compiled CRS, the way CRS's own CI runs it: paranoia level 4, detection only,
//! each stage's `output.log.expect_ids` / `no_expect_ids` checked against the ids the
//! engine logged. Requests are checked as the gateway's HTTP layer would first (a request
//! target or header that hyper/`http` refuse never reaches the WAF and is answered 400).
//! Override files (go-ftw's `test_overrides`) replace a test's expected output, with a
//! reason; an override without output marks the test ignored (and it is listed).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Crs, CrsSettings};
use crate::waf::operator::compile_regex;
use crate::waf::request::RequestParts;
use crate::waf::transform::Transform;

#[derive(Debug, Deserialize)]
struct TestFile {
    #[serde(default)]
    tests: Vec<Test>,
}

#[derive(Debug, Deserialize)]
struct Test {
    test_id: u32,
    #[serde(default)]
    stages: Vec<Stage>,
}

#[derive(Debug, Deserialize)]
struct Stage {
    #[serde(default)]
    input: Input,
    #[serde(default)]
    output: Output,
}

#[derive(Debug, Deserialize, Default)]
struct Input {
    method: Option<String>,
    uri: Option<String>,
    version: Option<String>,
    #[serde(default)]
    headers: serde_yaml::Mapping,
    data: Option<String>,
    encoded_request: Option<String>,
    autocomplete_headers: Option<bool>,
}

#[derive(Debug, Deserialize, Default, Clone)]
struct Output {
    #[serde(default)]
    log: Option<LogExpect>,
    status: Option<serde_yaml::Value>,
    #[serde(default)]
    expect_error: Option<bool>,
}

#[derive(Debug, Deserialize, Default, Clone)]
struct LogExpect {
    #[serde(default)]
    expect_ids: Vec<u32>,
    #[serde(default)]
    no_expect_ids: Vec<u32>,
    match_regex: Option<String>,
    no_match_regex: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OverrideFile {
    #[serde(default)]
    test_overrides: Vec<Override>,
}

#[derive(Debug, Deserialize)]
struct Override {
    rule_id: u32,
    #[serde(default)]
    test_ids: Vec<u32>,
    #[serde(default)]
    reason: String,
    output: Option<Output>,
}

/// Per-family counts.
#[derive(Debug, Default, Clone)]
pub struct FamilyResult {
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub families: BTreeMap<String, FamilyResult>,
    /// `942100-3: reason`.
    pub failures: Vec<String>,
    pub ignored: Vec<String>,
    /// Response-phase test files, not run (the gateway does not inspect responses).
    pub response_files: usize,
    pub rules_loaded: usize,
    /// Heap bytes of the compiled rules ([`Crs::memory_usage`]).
    pub memory: usize,
    pub untranslatable: Vec<(u32, String)>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.families.values().map(|f| f.passed).sum()
    }
    pub fn failed(&self) -> usize {
        self.families.values().map(|f| f.failed).sum()
    }
    /// Passed / (passed + failed), in percent.
    pub fn pass_rate(&self) -> f64 {
        let run = self.passed() + self.failed();
        if run == 0 {
            0.0
        } else {
            100.0 * self.passed() as f64 / run as f64
        }
    }

    /// The human-readable report: failures, per family, the total.
    pub fn render(&self, list_failures: bool) -> String {
        let mut s = String::new();
        if list_failures {
            for f in &self.failures {
                let _ = writeln!(s, "FAIL {f}");
            }
            for f in &self.ignored {
                let _ = writeln!(s, "IGNORED {f}");
            }
            for (id, why) in &self.untranslatable {
                let _ = writeln!(s, "UNTRANSLATED rule {id}: {why}");
            }
        }
        let _ = writeln!(
            s,
            "{:<48} {:>7} {:>7} {:>7} {:>8}",
            "family", "passed", "failed", "ignored", "rate"
        );
        for (name, f) in &self.families {
            let run = f.passed + f.failed;
            let rate = if run == 0 {
                100.0
            } else {
                100.0 * f.passed as f64 / run as f64
            };
            let _ = writeln!(
                s,
                "{name:<48} {:>7} {:>7} {:>7} {rate:>7.1}%",
                f.passed, f.failed, f.ignored
            );
        }
        let _ = writeln!(
            s,
            "CRS rules loaded: {} ({:.1} MiB compiled), untranslatable: {}; response-phase test files not run: {}",
            self.rules_loaded,
            self.memory as f64 / (1024.0 * 1024.0),
            self.untranslatable.len(),
            self.response_files
        );
        let _ = writeln!(
            s,
            "{} passed, {} failed ({:.2}% of request-phase tests), {} ignored",
            self.passed(),
            self.failed(),
            self.pass_rate(),
            self.ignored.len()
        );
        s
    }
}

/// The settings CRS's CI uses for its tests (`tests/README.md`): PL 4, detection only.
pub fn test_settings(crs_dir: &Path) -> CrsSettings {
    let mut s = CrsSettings::new(crs_dir);
    s.paranoia_level = 4;
    s.detection_paranoia_level = 4;
    s.allow_partial = true;
    s.remove_ids = vec![910000];
    for (k, v) in [
        ("crs_validate_utf8_encoding", "1"),
        ("arg_name_length", "100"),
        ("arg_length", "400"),
        ("total_arg_length", "64000"),
        ("max_num_args", "255"),
        ("max_file_size", "64100"),
        ("combined_file_sizes", "65535"),
    ] {
        s.setup.push((k.into(), v.into()));
    }
    s
}

/// Runs every test under `crs_dir/tests` (or only `rule`'s) with `overrides` applied.
pub fn run(crs_dir: &Path, overrides: &[PathBuf], rule: Option<u32>) -> Result<Report, String> {
    run_with(crs_dir, overrides, rule, |_| {})
}

/// [`run`] with the compiled rules changed by `tune` first (tests compare engine
/// settings, such as which values the regex sets answer, on the whole suite).
pub fn run_with(
    crs_dir: &Path,
    overrides: &[PathBuf],
    rule: Option<u32>,
    tune: impl FnOnce(&mut Crs),
) -> Result<Report, String> {
    let mut crs = Crs::load(&test_settings(crs_dir)).map_err(|e| e.to_string())?;
    tune(&mut crs);
    let mut report = Report {
        rules_loaded: crs.report.rules,
        memory: crs.memory_usage(),
        untranslatable: crs.report.untranslatable.clone(),
        ..Report::default()
    };
    let mut over: HashMap<(u32, u32), (String, Option<Output>)> = HashMap::new();
    for f in overrides {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let of: OverrideFile =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        for o in of.test_overrides {
            for t in &o.test_ids {
                over.insert((o.rule_id, *t), (o.reason.clone(), o.output.clone()));
            }
        }
    }
    let tests_dir = crs_dir.join("tests");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .map_err(|e| format!("{}: {e}", tests_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let family = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        if !family.starts_with("REQUEST-") {
            report.response_files += files.len();
            continue;
        }
        for f in files {
            let stem = f.file_stem().unwrap_or_default().to_string_lossy();
            let rule_id: u32 = stem.parse().unwrap_or(0);
            if rule.is_some_and(|r| r != rule_id) {
                continue;
            }
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let tf: TestFile =
                serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
            let fam = report.families.entry(family.clone()).or_default();
            for t in &tf.tests {
                let name = format!("{rule_id}-{}", t.test_id);
                let ov = over.get(&(rule_id, t.test_id));
                if let Some((reason, None)) = ov {
                    fam.ignored += 1;
                    report.ignored.push(format!("{name}: {reason}"));
                    continue;
                }
                let mut failure = None;
                for stage in &t.stages {
                    let expected = ov
                        .and_then(|(_, o)| o.clone())
                        .unwrap_or_else(|| stage.output.clone());
                    if let Err(why) = run_stage(&crs, &stage.input, &expected) {
                        failure = Some(why);
                        break;
                    }
                }
                match failure {
                    None => fam.passed += 1,
                    Some(why) => {
                        fam.failed += 1;
                        report.failures.push(format!("{name}: {why}"));
                    }
                }
            }
        }
    }
    report
        .families
        .retain(|_, f| f.passed + f.failed + f.ignored > 0);
    Ok(report)
}

/// A request as the test describes it.
struct Req {
    method: String,
    target: String,
    version: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
}

fn build(input: &Input) -> Result<Req, String> {
    if let Some(enc) = &input.encoded_request {
        let mut raw = Vec::new();
        Transform::Base64Decode.apply(enc.trim().as_bytes(), &mut raw);
        return Ok(parse_raw(&raw));
    }
    let mut r = Req {
        method: input.method.clone().unwrap_or_else(|| "GET".into()),
        target: input.uri.clone().unwrap_or_else(|| "/".into()),
        version: input.version.clone().unwrap_or_else(|| "HTTP/1.1".into()),
        headers: Vec::new(),
        body: input.data.clone().unwrap_or_default().into_bytes(),
    };
    for (k, v) in &input.headers {
        let k = yaml_str(k);
        let v = yaml_str(v);
        r.headers.push((k.into_bytes(), v.into_bytes()));
    }
    if input.autocomplete_headers.unwrap_or(true) {
        let has = |r: &Req, n: &str| {
            r.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
        };
        // go-ftw sends a Content-Length with every request it completes (0 without data).
        if !has(&r, "content-length") && !has(&r, "transfer-encoding") {
            let n = r.body.len().to_string().into_bytes();
            r.headers.push((b"Content-Length".to_vec(), n));
        }
        if !has(&r, "connection") {
            r.headers.push((b"Connection".to_vec(), b"close".to_vec()));
        }
    }
    Ok(r)
}

fn yaml_str(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn parse_raw(raw: &[u8]) -> Req {
    let (head, body) = match memchr::memmem::find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => (raw, &b""[..]),
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut parts = first.splitn(3, ' ');
    let method = parts.next().unwrap_or("GET").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let version = parts.next().unwrap_or("HTTP/1.1").to_string();
    let headers = lines
        .filter_map(|l| {
            let i = memchr::memchr(b':', l)?;
            Some((l[..i].to_vec(), l[i + 1..].trim_ascii().to_vec()))
        })
        .collect();
    Req {
        method,
        target,
        version,
        headers,
        body: body.to_vec(),
    }
}

/// What the gateway's HTTP/1 layer (hyper) does with the request before the WAF: the
/// headers and body the WAF sees, or `Err(status)` when it refuses the request. As hyper
/// does: only HTTP/1.0 and 1.1; a request target `http::Uri` accepts; `Content-Length`
/// digits only, repeated only with one value; `Transfer-Encoding` (HTTP/1.1 only, ending
/// in `chunked`) wins over `Content-Length`, which is dropped; neither means no body.
fn http_layer(r: &Req) -> Result<(String, http::HeaderMap, Vec<u8>), u16> {
    if http::Method::from_bytes(r.method.as_bytes()).is_err() {
        return Err(400);
    }
    let uri: http::Uri = r.target.parse().map_err(|_| 400u16)?;
    // What the WAF phase reads from the parsed URI (a fragment is dropped).
    let target = crate::waf::request::target_of(&uri).to_string();
    let http11 = match r.version.as_str() {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(400),
    };
    let mut h = http::HeaderMap::new();
    for (k, v) in &r.headers {
        let name = http::HeaderName::from_bytes(k).map_err(|_| 400u16)?;
        let value = http::HeaderValue::from_bytes(v).map_err(|_| 400u16)?;
        h.append(name, value);
    }
    let te = h
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .cloned();
    if let Some(te) = te {
        if !http11 {
            return Err(400);
        }
        let chunked = te
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|l| l.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if !chunked {
            return Err(400);
        }
        h.remove(http::header::CONTENT_LENGTH);
        return Ok((target, h, dechunk(&r.body).ok_or(400u16)?));
    }
    let mut len: Option<u64> = None;
    for v in h.get_all(http::header::CONTENT_LENGTH) {
        let b = v.as_bytes();
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return Err(400);
        }
        let n: u64 = std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(400u16)?;
        if len.is_some_and(|l| l != n) {
            return Err(400);
        }
        len = Some(n);
    }
    let body = match len {
        Some(n) => r.body[..r.body.len().min(n as usize)].to_vec(),
        None => Vec::new(),
    };
    Ok((target, h, body))
}

/// A chunked body decoded (`None`: malformed).
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = memchr::memmem::find(b, b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..nl]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

fn run_stage(crs: &Crs, input: &Input, expected: &Output) -> Result<(), String> {
    let r = build(input)?;
    let (status, ids, log, would_deny) = match http_layer(&r) {
        Err(status) => (status, Vec::new(), String::new(), false),
        Ok((target, headers, body)) => {
            let body = (!body.is_empty()).then_some(&body[..]);
            let req = RequestParts {
                canonical: None,
                method: &r.method,
                target: &target,
                version: &r.version,
                headers: &headers,
                body,
                client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            };
            let out = crs.evaluate(&req, false, &[]);
            let ids: Vec<u32> = out.ids().collect();
            let log = out.log_lines().collect::<Vec<_>>().join("\n");
            (200, ids, log, out.would_deny.is_some())
        }
    };
    let mut why = Vec::new();
    if let Some(l) = &expected.log {
        let missing: Vec<u32> = l
            .expect_ids
            .iter()
            .copied()
            .filter(|i| !ids.contains(i))
            .collect();
        if !missing.is_empty() {
            why.push(format!("expected {missing:?} not logged"));
        }
        let unwanted: Vec<u32> = l
            .no_expect_ids
            .iter()
            .copied()
            .filter(|i| ids.contains(i))
            .collect();
        if !unwanted.is_empty() {
            why.push(format!("unexpected {unwanted:?} logged"));
        }
        if let Some(re) = &l.match_regex {
            if !compile_regex(re).is_ok_and(|re| re.is_match(log.as_bytes())) {
                why.push(format!("log does not match /{re}/"));
            }
        }
        if let Some(re) = &l.no_match_regex {
            if compile_regex(re).is_ok_and(|re| re.is_match(log.as_bytes())) {
                why.push(format!("log matches /{re}/"));
            }
        }
    }
    if let Some(s) = &expected.status {
        let want: Vec<u64> = match s {
            serde_yaml::Value::Sequence(v) => v.iter().filter_map(|x| x.as_u64()).collect(),
            v => v.as_u64().into_iter().collect(),
        };
        // Detection only: the upstream answers (200) unless the HTTP layer refused; a
        // test written for blocking mode (403) passes when CRS would have denied.
        let blocked_ok = would_deny && want.contains(&403);
        if !want.contains(&u64::from(status)) && !blocked_ok {
            why.push(format!("status {status}, expected {want:?}"));
        }
    }
    if expected.expect_error == Some(true) && status == 200 {
        why.push("expected the request to be refused".into());
    }
    if why.is_empty() {
        Ok(())
    } else {
        if status != 200 {
            why.push(format!(
                "the HTTP layer refuses the request ({status}) before the WAF"
            ));
        }
        why.push(format!("logged {ids:?}"));
        Err(why.join("; "))
    }
}
