//! The WAF: the table-driven corpus through the engine with the shipped default rules, and
//! end-to-end behaviour through a running gateway (403 with request id, events, detect
//! mode, exclusions, body limits, the tester command, located rule-file errors).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gateway::waf::engine::Strategy;
use gateway::waf::request::RequestParts;
use gateway::waf::{RoutePolicy, Settings, Waf};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::support::*;

#[derive(Debug, Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    family: String,
    expect: String,
    place: String,
    #[serde(default = "default_name")]
    name: String,
    value: String,
    #[serde(default)]
    note: String,
}

fn default_name() -> String {
    "q".into()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped default rule set, compiled as the proxy compiles it.
pub fn default_waf(strategy: Strategy) -> Waf {
    let files = gateway::waf::rule::expand(&repo().join("rules/*.toml")).unwrap();
    Waf::from_files(&files, Settings::default(), strategy).unwrap()
}

fn enc(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// A request (method, target, headers, body) that places the case's value.
fn build(c: &Case) -> (String, String, HeaderMap, Vec<u8>) {
    let mut method = "GET".to_string();
    let mut target = "/".to_string();
    let mut headers = HeaderMap::new();
    let mut body = Vec::new();
    headers.insert("host", HeaderValue::from_static("localhost"));
    headers.insert(
        "user-agent",
        HeaderValue::from_static(
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        ),
    );
    let ctype = |h: &mut HeaderMap, v: &str| {
        h.insert("content-type", HeaderValue::from_str(v).unwrap());
    };
    match c.place.as_str() {
        "query" => target = format!("/search?{}={}", enc(&c.name), enc(&c.value)),
        "form" => {
            method = "POST".into();
            ctype(&mut headers, "application/x-www-form-urlencoded");
            body = format!("{}={}", enc(&c.name), enc(&c.value)).into_bytes();
        }
        "json" => {
            method = "POST".into();
            ctype(&mut headers, "application/json");
            let mut m = serde_json::Map::new();
            m.insert(c.name.clone(), serde_json::Value::String(c.value.clone()));
            body = serde_json::to_vec(&serde_json::json!({ "data": m, "page": 1 })).unwrap();
        }
        "json_raw" | "json_key" => {
            method = "POST".into();
            ctype(&mut headers, "application/json");
            body = c.value.clone().into_bytes();
        }
        "multipart" | "file" => {
            method = "POST".into();
            ctype(&mut headers, "multipart/form-data; boundary=----b0undary");
            let part = if c.place == "file" {
                format!(
                    "Content-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\nfile content",
                    c.name, c.value
                )
            } else {
                format!(
                    "Content-Disposition: form-data; name=\"{}\"\r\n\r\n{}",
                    c.name, c.value
                )
            };
            body = format!(
                "------b0undary\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nabc123\r\n------b0undary\r\n{part}\r\n------b0undary--\r\n"
            )
            .into_bytes();
        }
        "cookie" => {
            headers.insert(
                "cookie",
                HeaderValue::from_str(&format!("sid=0123abcd; {}={}", c.name, c.value)).unwrap(),
            );
        }
        "path" | "uri" => target = c.value.clone(),
        "method" => method = c.value.clone(),
        "raw" => {
            let r = gateway::waf::tester::parse_raw(c.value.as_bytes()).unwrap();
            return (r.method, r.target, r.headers, r.body);
        }
        p if p.starts_with("header:") => {
            headers.insert(
                HeaderName::from_bytes(p["header:".len()..].as_bytes()).unwrap(),
                HeaderValue::from_str(&c.value).unwrap(),
            );
        }
        other => panic!("unknown place {other}"),
    }
    (method, target, headers, body)
}

fn load_corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(repo().join("tests/data/waf_corpus.toml")).unwrap();
    toml::from_str::<Corpus>(&text).unwrap().case
}

/// Runs the corpus; returns the failures (one line each) and per-family counts.
fn run_corpus(waf: &Waf) -> (Vec<String>, BTreeMap<String, (usize, usize)>) {
    let policy = RoutePolicy::default();
    let mut failures = Vec::new();
    let mut families: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in load_corpus() {
        let (method, target, headers, body) = build(&c);
        let v = waf.inspect(
            &RequestParts {
                method: &method,
                target: &target,
                version: "HTTP/1.1",
                headers: &headers,
                body: (!body.is_empty()).then_some(&body[..]),
            },
            &policy,
            false,
        );
        let want_block = c.expect == "block";
        let e = families.entry(c.family.clone()).or_default();
        e.1 += 1;
        if v.blocked == want_block {
            e.0 += 1;
        } else {
            failures.push(format!(
                "[{}] expected {} for {} `{}`={:?} {} (score {}, rules {:?})",
                c.family,
                c.expect,
                c.place,
                c.name,
                c.value,
                c.note,
                v.score,
                v.matches.iter().map(|m| m.rule).collect::<Vec<_>>()
            ));
        }
    }
    (failures, families)
}

#[test]
fn corpus_attacks_block_and_real_text_passes() {
    let waf = default_waf(Strategy::Prefilter);
    let (failures, families) = run_corpus(&waf);
    for (f, (ok, n)) in &families {
        eprintln!("{f:10} {ok}/{n}");
    }
    assert!(
        failures.is_empty(),
        "{} corpus failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_strategy_gives_the_same_verdicts() {
    // The strategies are alternatives measured in benches/waf.rs; they must agree.
    for s in [Strategy::Set, Strategy::PerRule] {
        let (failures, _) = run_corpus(&default_waf(s));
        assert!(failures.is_empty(), "{s:?}: {}", failures.join("\n"));
    }
}

#[test]
fn rule_file_errors_name_file_line_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[[rules]]\nid = 5001\nmsg = \"ok\"\ntargets = [\"args\"]\nmatch = { contains = \"x\" }\n\n\
         [[rules]]\nid = 5002\nmsg = \"bad regex\"\ntargets = [\"args\"]\nmatch = { regex = \"(unclosed\" }\n\n\
         [[rules]]\nid = 5003\nmsg = \"bad target\"\ntargets = [\"argz\"]\ntransforms = [\"lowercase\", \"rot13\"]\nmatch = { contains = \"x\" }\n\n\
         [[rules]]\nid = 5001\nmsg = \"dup\"\ntargets = [\"args\"]\nmatch = { contains = \"y\" }\n",
    )
    .unwrap();
    let errs = gateway::waf::rule::load_files(&[f.clone()]).unwrap_err();
    let text = errs.to_string();
    assert_eq!(errs.len(), 4, "{text}");
    assert!(
        text.contains("bad.toml:11:")
            && text.contains("rule 5002")
            && text.contains("rules[1].match")
            && text.contains("unclosed group"),
        "{text}"
    );
    assert!(
        text.contains("bad.toml:16:")
            && text.contains("rule 5003")
            && text.contains("unknown target `argz`"),
        "{text}"
    );
    assert!(text.contains("unknown transformation `rot13`"), "{text}");
    assert!(
        text.contains("bad.toml:21:") && text.contains("rule 5001: id already used"),
        "{text}"
    );
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}
