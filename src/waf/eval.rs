//! `gateway waf eval`: replays labelled traffic through the config's WAF (exactly as
//! `gateway waf test` judges one request) and reports, per label, how much was blocked —
//! so an operator can try a rule change on their own attacks and their own real traffic
//! before deploying it.
//!
//! Input, any mix of:
//! - a directory tree of raw HTTP/1.1 request files (see [`super::tester`]); a file's label
//!   is its directory relative to the root given (`eval/benign/search/1.http` →
//!   `benign/search`);
//! - NDJSON files (`*.ndjson`, `*.jsonl`), one request per line:
//!   `{"label": "sqli", "raw": "GET /?q=… HTTP/1.1\r\nHost: a\r\n\r\n"}` or
//!   `{"label": "…", "method": "POST", "target": "/login", "headers": {"content-type": "…"},
//!   "body": "…"}`, with an optional `"expect": "block" | "pass"`.
//!
//! A label whose first part is `benign`, `legit`, `good` or `pass` is expected to pass;
//! every other label is expected to be blocked (an explicit `expect` wins). The report lists
//! blocked % per label and per label prefix (`payload/sqli/base64/json` also counts towards
//! `payload/sqli/base64`, `payload/sqli` and `payload`), and every false positive with the
//! rules behind it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::tester::{judge, parse_raw, RawRequest};
use super::Waf;
use crate::runtime::Runtime;

/// One labelled request.
pub struct Sample {
    pub label: String,
    pub source: String,
    pub expect_block: bool,
    pub request: Result<RawRequest, String>,
}

/// Counts for one label.
#[derive(Debug, Default, Serialize)]
pub struct LabelStats {
    pub expect: &'static str,
    pub requests: usize,
    pub blocked: usize,
    pub blocked_percent: f64,
    pub unreadable: usize,
}

/// A request judged against its expectation the wrong way.
#[derive(Debug, Serialize)]
pub struct Miss {
    pub label: String,
    pub source: String,
    pub rules: Vec<u32>,
    pub matches: Vec<serde_json::Value>,
}

/// The whole evaluation.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub labels: BTreeMap<String, LabelStats>,
    /// Every proper prefix of a label with more than one part (`payload/sqli` for
    /// `payload/sqli/query`), summed over the labels under it.
    pub groups: BTreeMap<String, LabelStats>,
    /// Expected to pass, blocked: with the rules that blocked.
    pub false_positives: Vec<Miss>,
    /// Expected to be blocked, passed.
    pub missed: Vec<Miss>,
    pub attacks: usize,
    pub attacks_blocked: usize,
    pub benign: usize,
    pub benign_blocked: usize,
}

fn expected_block(label: &str) -> bool {
    let first = label.split('/').next().unwrap_or("").to_ascii_lowercase();
    !matches!(
        first.as_str(),
        "benign" | "legit" | "legitimate" | "good" | "pass"
    )
}

/// Reads every sample under `roots` (directories or files), in a stable order.
pub fn load(roots: &[PathBuf]) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for root in roots {
        let mut files = Vec::new();
        if root.is_dir() {
            walk(root, &mut files).map_err(|e| format!("{}: {e}", root.display()))?;
        } else {
            files.push(root.clone());
        }
        files.sort();
        for f in files {
            let base = if root.is_dir() {
                root.as_path()
            } else {
                f.parent().unwrap_or(Path::new(""))
            };
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "ndjson" | "jsonl") {
                load_ndjson(&f, &mut out)?;
            } else {
                let label = f
                    .parent()
                    .and_then(|p| p.strip_prefix(base).ok())
                    .map(|p| {
                        p.iter()
                            .filter_map(|c| c.to_str())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .filter(|l| !l.is_empty())
                    .unwrap_or_else(|| "unlabelled".to_string());
                let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                out.push(Sample {
                    expect_block: expected_block(&label),
                    label,
                    source: f.display().to_string(),
                    request: parse_raw(&bytes),
                });
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let kind = e.file_type()?;
        if kind.is_dir() {
            walk(&e.path(), out)?;
        } else if kind.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

fn load_ndjson(f: &Path, out: &mut Vec<Sample>) -> Result<(), String> {
    let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let source = format!("{}:{}", f.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{source}: {e}"))?;
        let label = v["label"].as_str().unwrap_or("unlabelled").to_string();
        let expect_block = match v["expect"].as_str() {
            Some("block") => true,
            Some("pass") => false,
            _ => expected_block(&label),
        };
        let request = match v["raw"].as_str() {
            Some(raw) => parse_raw(raw.as_bytes()),
            None => from_fields(&v),
        };
        out.push(Sample {
            label,
            source,
            expect_block,
            request,
        });
    }
    Ok(())
}

/// A request from `{"method", "target", "headers": {…} | [[name, value]…], "body"}`.
fn from_fields(v: &serde_json::Value) -> Result<RawRequest, String> {
    let mut headers = http::HeaderMap::new();
    let mut add = |n: &str, val: &str| -> Result<(), String> {
        headers.append(
            http::HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("bad header `{n}`"))?,
            http::HeaderValue::from_str(val).map_err(|_| format!("bad value for `{n}`"))?,
        );
        Ok(())
    };
    match &v["headers"] {
        serde_json::Value::Object(m) => {
            for (n, val) in m {
                add(n, val.as_str().unwrap_or(""))?;
            }
        }
        serde_json::Value::Array(a) => {
            for pair in a {
                add(
                    pair[0].as_str().unwrap_or(""),
                    pair[1].as_str().unwrap_or(""),
                )?;
            }
        }
        _ => {}
    }
    if !headers.contains_key(http::header::HOST) {
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
    }
    let body = v["body"].as_str().unwrap_or("").as_bytes().to_vec();
    // As a client sends it: a body comes with its length.
    if !body.is_empty()
        && !headers.contains_key(http::header::CONTENT_LENGTH)
        && !headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(body.len()),
        );
    }
    Ok(RawRequest {
        method: v["method"].as_str().unwrap_or("GET").to_string(),
        target: v["target"]
            .as_str()
            .or(v["uri"].as_str())
            .unwrap_or("/")
            .to_string(),
        version: "HTTP/1.1".to_string(),
        headers,
        body,
    })
}

/// Judges every sample.
pub fn run(rt: &Runtime, waf: &Waf, samples: &[Sample]) -> Report {
    let mut r = Report::default();
    for s in samples {
        let stats = r.labels.entry(s.label.clone()).or_default();
        stats.expect = if s.expect_block { "block" } else { "pass" };
        stats.requests += 1;
        let raw = match &s.request {
            Ok(raw) => raw,
            Err(_) => {
                stats.unreadable += 1;
                continue;
            }
        };
        let v = judge(rt, waf, &s.source, raw);
        let blocked = v["verdict"] == "block";
        if blocked {
            stats.blocked += 1;
        }
        if s.expect_block {
            r.attacks += 1;
            r.attacks_blocked += usize::from(blocked);
        } else {
            r.benign += 1;
            r.benign_blocked += usize::from(blocked);
        }
        if blocked != s.expect_block {
            let miss = Miss {
                label: s.label.clone(),
                source: s.source.clone(),
                rules: v["rules"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_u64())
                            .map(|x| x as u32)
                            .collect()
                    })
                    .unwrap_or_default(),
                matches: v["matches"].as_array().cloned().unwrap_or_default(),
            };
            if blocked {
                r.false_positives.push(miss);
            } else {
                r.missed.push(miss);
            }
        }
    }
    for (label, s) in &r.labels {
        let mut end = 0;
        while let Some(i) = label[end..].find('/') {
            end += i;
            let g = r.groups.entry(label[..end].to_string()).or_default();
            if g.requests == 0 {
                g.expect = s.expect;
            } else if g.expect != s.expect {
                g.expect = "mixed";
            }
            g.requests += s.requests;
            g.blocked += s.blocked;
            g.unreadable += s.unreadable;
            end += 1;
        }
    }
    for s in r.labels.values_mut().chain(r.groups.values_mut()) {
        let judged = s.requests - s.unreadable;
        s.blocked_percent = if judged == 0 {
            0.0
        } else {
            100.0 * s.blocked as f64 / judged as f64
        };
    }
    r
}

impl Report {
    /// A table per label, the totals, then each false positive with its rules.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<40} {:>6} {:>9} {:>8} {:>9}",
            "label", "expect", "requests", "blocked", "blocked %"
        );
        let mut rows: Vec<(&String, &LabelStats, &str)> = self
            .labels
            .iter()
            .map(|(l, s)| (l, s, ""))
            .chain(self.groups.iter().map(|(l, s)| (l, s, "  (all under it)")))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        for (label, s, note) in rows {
            let _ = writeln!(
                out,
                "{:<40} {:>6} {:>9} {:>8} {:>8.1}%{}{}",
                label,
                s.expect,
                s.requests,
                s.blocked,
                s.blocked_percent,
                note,
                if s.unreadable > 0 {
                    format!("  ({} unreadable)", s.unreadable)
                } else {
                    String::new()
                }
            );
        }
        let pct = |a: usize, b: usize| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        let _ = writeln!(
            out,
            "\nattacks blocked: {}/{} ({:.1}%); benign blocked: {}/{} ({:.1}%)",
            self.attacks_blocked,
            self.attacks,
            pct(self.attacks_blocked, self.attacks),
            self.benign_blocked,
            self.benign,
            pct(self.benign_blocked, self.benign)
        );
        if !self.false_positives.is_empty() {
            let _ = writeln!(out, "\nfalse positives:");
            for m in &self.false_positives {
                let _ = writeln!(out, "  {} [{}] rules {:?}", m.source, m.label, m.rules);
                for x in &m.matches {
                    let _ = writeln!(
                        out,
                        "    {} {} = {}",
                        x["rule"],
                        x["target"].as_str().unwrap_or(""),
                        x["value"].as_str().unwrap_or("")
                    );
                }
            }
        }
        out
    }
}
