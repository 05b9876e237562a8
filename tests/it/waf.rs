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
        "json_raw" => {
            method = "POST".into();
            ctype(&mut headers, "application/json");
            body = c.value.clone().into_bytes();
        }
        "json_key" if c.value.trim_start().starts_with('{') => {
            method = "POST".into();
            ctype(&mut headers, "application/json");
            body = c.value.clone().into_bytes();
        }
        "json_key" => {
            method = "POST".into();
            ctype(&mut headers, "application/json");
            let mut m = serde_json::Map::new();
            m.insert(c.value.clone(), serde_json::Value::from(1));
            body = serde_json::to_vec(&serde_json::json!({ "filters": m })).unwrap();
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
        "path_segment" => {
            let seg: String = c
                .value
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            target = format!("/api/items/{seg}/details");
        }
        "xml" | "xml_attr" | "soap" | "xml_raw" => {
            method = "POST".into();
            let esc = |v: &str| {
                v.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&quot;")
            };
            let doc = match c.place.as_str() {
                "xml_raw" => c.value.clone(),
                "xml_attr" => format!(
                    "<?xml version=\"1.0\"?><request><item {}=\"{}\">x</item></request>",
                    c.name,
                    esc(&c.value)
                ),
                "soap" => format!(
                    "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><m:Lookup xmlns:m=\"urn:example\"><m:{n}>{}</m:{n}></m:Lookup></soap:Body></soap:Envelope>",
                    esc(&c.value),
                    n = c.name
                ),
                _ => format!(
                    "<?xml version=\"1.0\"?><request><{n}>{}</{n}><page>1</page></request>",
                    esc(&c.value),
                    n = c.name
                ),
            };
            // The XML placement writes the value raw: an injected tag is the point.
            let doc = if c.family == "xml" && c.place != "xml_raw" {
                doc.replace(&esc(&c.value), &c.value)
            } else {
                doc
            };
            ctype(
                &mut headers,
                if c.place == "soap" {
                    "application/soap+xml"
                } else {
                    "application/xml"
                },
            );
            body = doc.into_bytes();
        }
        "graphql" | "graphql_raw" => {
            method = "POST".into();
            ctype(&mut headers, "application/json");
            let query = if c.place == "graphql_raw" {
                c.value.clone()
            } else {
                format!(
                    "query {{ search({}: {}) {{ id title }} }}",
                    c.name,
                    serde_json::Value::String(c.value.clone())
                )
            };
            body =
                serde_json::to_vec(&serde_json::json!({"query": query, "variables": {}})).unwrap();
        }
        "base64_query" | "base64_json" | "base64_header" | "jwt" => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(c.value.as_bytes());
            match c.place.as_str() {
                "base64_query" => target = format!("/search?{}={}", enc(&c.name), enc(&b64)),
                "base64_json" => {
                    method = "POST".into();
                    ctype(&mut headers, "application/json");
                    body = serde_json::to_vec(&serde_json::json!({ c.name.clone(): b64 })).unwrap();
                }
                "base64_header" => {
                    headers.insert("x-data", HeaderValue::from_str(&b64).unwrap());
                }
                _ => {
                    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                    let claims = serde_json::json!({"sub": c.value, "iat": 1700000000});
                    let jwt = format!(
                        "{}.{}.{}",
                        url.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
                        url.encode(claims.to_string()),
                        url.encode(b"not-a-real-signature-bytes")
                    );
                    headers.insert(
                        "authorization",
                        HeaderValue::from_str(&format!("Bearer {jwt}")).unwrap(),
                    );
                }
            }
        }
        "jsesc_query" | "jsesc_header" => {
            // JavaScript escapes for everything but letters and digits: `\u003c`.
            let esc: String = c
                .value
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() {
                        ch.to_string()
                    } else {
                        format!("\\u{:04x}", ch as u32)
                    }
                })
                .collect();
            if c.place == "jsesc_query" {
                target = format!("/search?{}={}", enc(&c.name), enc(&esc));
            } else {
                headers.insert("x-data", HeaderValue::from_str(&esc).unwrap());
            }
        }
        "nested_url_query" => {
            // Percent-encoded twice before the query's own encoding: three layers.
            target = format!("/search?{}={}", enc(&c.name), enc(&enc(&enc(&c.value))));
        }
        "method" => method = c.value.clone(),
        "raw" => {
            let r = gateway::waf::tester::parse_raw(c.value.as_bytes()).unwrap();
            return (r.method, r.target, r.headers, r.body);
        }
        p if p.starts_with("header:") => {
            headers.insert(
                HeaderName::from_bytes(&p.as_bytes()["header:".len()..]).unwrap(),
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

/// One corpus case through the engine (default route policy).
fn inspect_case(waf: &Waf, c: &Case) -> gateway::waf::Verdict {
    let (method, target, headers, body) = build(c);
    waf.inspect(
        &RequestParts {
            canonical: None,
            client_ip: None,
            method: &method,
            target: &target,
            version: "HTTP/1.1",
            headers: &headers,
            body: (!body.is_empty()).then_some(&body[..]),
        },
        &RoutePolicy::default(),
        false,
    )
}

/// Runs the corpus; returns the failures (one line each) and per-family counts.
fn run_corpus(waf: &Waf) -> (Vec<String>, BTreeMap<String, (usize, usize)>) {
    let mut failures = Vec::new();
    let mut families: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in load_corpus() {
        let v = inspect_case(waf, &c);
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

/// Values found clean are remembered across requests (`waf::memo`): replaying the whole
/// corpus on a warm engine gives every request exactly the verdict it had the first time,
/// attacks included, and the second pass does reuse remembered values.
#[test]
fn remembered_clean_values_never_change_a_verdict() {
    let waf = default_waf(Strategy::Prefilter);
    let cases = load_corpus();
    let verdict = |c: &Case| {
        let v = inspect_case(&waf, c);
        let rules: Vec<u32> = v.matches.iter().map(|m| m.rule).collect();
        (v.blocked, v.score, rules)
    };
    let first: Vec<_> = cases.iter().map(verdict).collect();
    let hits_before = waf.engine.with_scratch(|s| s.memo.hits);
    // Reverse order too: a benign look-alike now comes before its attack.
    for (c, want) in cases.iter().zip(&first).rev() {
        assert_eq!(&verdict(c), want, "{} {} `{}`", c.family, c.place, c.value);
    }
    let hits_after = waf.engine.with_scratch(|s| s.memo.hits);
    assert!(
        hits_after - hits_before > cases.len() as u64,
        "the second pass reuses remembered values ({hits_before} → {hits_after})"
    );
    assert!(
        first.iter().filter(|v| v.0).count() > 100,
        "attacks still block"
    );
}

/// The memo of clean values never holds a secret: not a password argument, and not the
/// raw query, URI or body that carries one; the same request without a secret field is
/// remembered.
#[test]
fn remembered_clean_values_hold_no_secret() {
    use gateway::waf::rule::Kind;
    let waf = default_waf(Strategy::Prefilter);
    let inspect = |target: &str, ctype: &'static str, body: &[u8]| {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("shop.example"));
        h.insert("content-type", HeaderValue::from_static(ctype));
        let v = waf.inspect(
            &RequestParts {
                canonical: None,
                client_ip: None,
                method: "POST",
                target,
                version: "HTTP/1.1",
                headers: &h,
                body: Some(body),
            },
            &RoutePolicy::default(),
            false,
        );
        assert!(v.matches.is_empty(), "{target}: {:?}", v.matches);
    };
    // Remembered: (kind, name, value) as the engine saw it.
    let stored = |kind: Kind, name: &str, value: &str| {
        waf.engine.with_scratch(|s| {
            let key = s
                .memo
                .key(kind, name.as_bytes(), value.as_bytes(), (false, false));
            key.is_some_and(|k| s.memo.contains(k, kind, name.as_bytes(), value.as_bytes()))
        })
    };
    let secret = "/login?user=alice&password=correct-horse";
    let form = "application/x-www-form-urlencoded";
    inspect(secret, form, b"user=alice&pass_word=battery-staple");
    let query = "user=alice&password=correct-horse";
    assert!(!stored(Kind::Uri, "", secret));
    assert!(!stored(Kind::Query, "", query));
    assert!(!stored(
        Kind::RequestLine,
        "",
        &format!("POST {secret} HTTP/1.1")
    ));
    // A body the WAF reads raw (not as a form) that names a secret field.
    inspect(
        "/note",
        "text/plain",
        b"user=alice&pass_word=battery-staple",
    );
    assert!(!stored(
        Kind::Body,
        "",
        "user=alice&pass_word=battery-staple"
    ));
    // The harmless parts of the same request are remembered.
    assert!(stored(Kind::QueryArg, "user", "alice"));
    assert!(stored(Kind::Header, "host", "shop.example"));

    let plain = "/login?user=alice&colour=correct-horse";
    inspect(plain, form, b"user=alice&colour=battery-staple");
    inspect("/note", "text/plain", b"user=alice&colour=battery-staple");
    assert!(stored(Kind::Uri, "", plain));
    assert!(stored(Kind::Query, "", "user=alice&colour=correct-horse"));
    assert!(stored(Kind::BodyArg, "colour", "battery-staple"));
    assert!(stored(Kind::Body, "", "user=alice&colour=battery-staple"));
}

/// A value is remembered as clean only together with what was found inside it: base64
/// text that decodes to an attack blocks every time it is sent (the encoded value itself
/// matches nothing), also when another spelling of the same text came first in the
/// request; a benign base64 value is remembered and, from its second request on, not
/// decoded again.
#[test]
fn a_value_hiding_an_attack_is_never_remembered_as_clean() {
    use base64::Engine as _;
    use gateway::waf::rule::Kind;
    let waf = default_waf(Strategy::Prefilter);
    let inspect = |body: &str| {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("shop.example"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let v = waf.inspect(
            &RequestParts {
                canonical: None,
                client_ip: None,
                method: "POST",
                target: "/api/notes",
                version: "HTTP/1.1",
                headers: &h,
                body: Some(body.as_bytes()),
            },
            &RoutePolicy::default(),
            false,
        );
        v.blocked
    };
    let attack = "1' union select password from users where '1'='1' --";
    let padded = base64::engine::general_purpose::STANDARD.encode(attack);
    let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(attack);
    assert_ne!(padded, unpadded, "the attack's length needs padding");
    let note = |v: &str| format!(r#"{{"items":[{{"note":"{v}"}}]}}"#);
    for _ in 0..3 {
        assert!(inspect(&note(&padded)), "base64 attack, sent again");
    }
    // Both spellings in one request (with enough other values for the engine to skip
    // repeats) decode to the same text; the second one alone later.
    let others: String = (0..30)
        .map(|i| format!(r#",{{"sku":"SKU-{i:05}"}}"#))
        .collect();
    let both = format!(r#"{{"items":[{{"note":"{padded}"}},{{"note":"{unpadded}"}}{others}]}}"#);
    for _ in 0..2 {
        assert!(inspect(&both));
        assert!(inspect(&note(&unpadded)), "the other spelling alone");
        assert!(inspect(&note(&padded)));
    }
    let benign = base64::engine::general_purpose::STANDARD
        .encode("Leave the parcel at the side door, please. Thanks!");
    for round in 0..3 {
        assert!(!inspect(&note(&benign)), "benign base64 text passes");
        let (known, decoded) = waf.engine.with_scratch(|s| {
            let items = &s.items.items;
            (
                items.iter().any(|i| i.known_clean),
                items.iter().any(|i| i.kind == Kind::Decoded),
            )
        });
        assert_eq!(
            known,
            round > 0,
            "round {round}: remembered after the first"
        );
        assert_eq!(
            decoded,
            round == 0,
            "round {round}: decoded only the first time"
        );
    }
}

#[test]
fn default_rules_compile_into_one_group_per_transformation_chain() {
    let w = default_waf(Strategy::Prefilter);
    let stats = w.engine.stats();
    let chains: std::collections::HashSet<&String> = stats.iter().map(|g| &g.0).collect();
    assert_eq!(chains.len(), stats.len(), "one group per chain: {stats:?}");
    assert!(
        stats.len() <= 6,
        "the default rules share few chains: {stats:?}"
    );
    let members: usize = stats.iter().map(|g| g.1).sum();
    assert_eq!(
        members,
        w.engine.rule_count(),
        "every rule is in exactly one group"
    );
    let main = stats
        .iter()
        .find(|g| g.0 == "url_decode_uni,html_entity_decode,lowercase")
        .unwrap();
    assert!(
        main.1 >= 40 && main.2 > 0,
        "most rules share the main chain and its automaton: {main:?}"
    );
}

#[test]
fn every_strategy_gives_the_same_verdicts() {
    // The strategies are alternatives measured in benches/waf.rs; they must agree.
    for s in [Strategy::PerRule, Strategy::Hybrid, Strategy::Set] {
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
    let errs = gateway::waf::rule::load_files(std::slice::from_ref(&f)).unwrap_err();
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

/// `[waf]` with the repository's default rules, plus `extra` lines in the section.
fn waf_section(extra: &str) -> String {
    format!(
        "\n[waf]\nrules = [\"{}\"]\n{extra}\n",
        path_str(&repo().join("rules/*.toml"))
    )
}

/// An upstream that answers with the body it received.
async fn body_echo() -> Upstream {
    use http_body_util::BodyExt;
    upstream(|req: http::Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        http::Response::new(full(body))
    })
    .await
}

async fn send(
    c: &mut Sender,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> Reply {
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    Reply::from(c.send(b.body(full(body)).unwrap()).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_get_403_with_request_id_and_an_event_benign_json_reaches_the_app() {
    let up = body_echo().await;
    let gw = TestGateway::start(&base_config(&[up.url()], &waf_section(""))).await;
    let mut c = gw.tls().h2(gw.addr("https")).await;

    // A benign 2 KiB JSON body: forwarded byte for byte.
    let doc = serde_json::json!({
        "name": "Anne-Marie O'Neil", "comment": "Loved it -- will buy again <3; select the blue one",
        "address": {"street": "12 Rue de l'Église", "city": "Montréal"},
        "notes": "x".repeat(1800),
    })
    .to_string();
    let req = http::Request::post("https://localhost/orders")
        .header("content-type", "application/json")
        .body(full(doc.clone()))
        .unwrap();
    let r = Reply::from(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), doc, "the inspected body reaches the app intact");
    assert_eq!(up.hits(), 1);

    // SQL injection in a query argument: 403 with the request id, the app never sees it.
    let r = c.get("/search?q=1%27%20OR%20%271%27=%271").await;
    assert_eq!(r.status, 403);
    let rid = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(r.json()["request_id"], rid.as_str());
    assert_eq!(up.hits(), 1);

    // XSS in a cookie: blocked; the event names the rule and target but never the value.
    let req = http::Request::get("https://localhost/account")
        .header("cookie", "theme=<script>alert(1)</script>")
        .body(full(""))
        .unwrap();
    let r = Reply::from(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 403);
    assert_eq!(up.hits(), 1);

    let events = events_of(&gw, "waf_blocked").await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let sqli = events.iter().find(|e| e["path"] == "/search").unwrap();
    assert_eq!(sqli["request_id"], rid.as_str());
    let ids: Vec<&str> = sqli["rule_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ids.contains(&"4201"), "{ids:?}");
    assert!(sqli["details"]["targets"]
        .as_str()
        .unwrap()
        .contains("4201:args:q"));
    assert!(sqli["details"]["match.4201"]
        .as_str()
        .unwrap()
        .contains("1' OR '1'='1"));
    assert_eq!(sqli["risk"], "critical");
    let xss = events.iter().find(|e| e["path"] == "/account").unwrap();
    let text = xss.to_string();
    assert!(text.contains("cookies:theme"), "{text}");
    assert!(
        !text.contains("alert(1)"),
        "cookie value must be redacted: {text}"
    );
    assert!(text.contains("[redacted"), "{text}");

    // Metrics count the verdicts and the rules.
    let m = admin(&gw, "GET", "/metrics", Some(TOKEN)).await.text();
    assert!(
        m.contains("gateway_waf_inspections_total{result=\"blocked\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("gateway_waf_inspections_total{result=\"clean\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("gateway_waf_rule_matches_total{rule=\"4201\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_mode_forwards_and_reports_and_exclusions_silence_a_rule_on_a_path() {
    let up = body_echo().await;
    let extra = format!(
        r#"
[[routes]]
name = "legacy"
path_prefix = "/legacy"
upstream = "app"
waf = "detect"

[[routes]]
name = "docs"
path_prefix = "/docs"
upstream = "app"
{}
[[waf.exclusions]]
rules = [4201, 4203, 4210]
routes = ["docs"]
path_prefix = "/docs/sql"
target = "args:example"
"#,
        waf_section("")
    );
    let gw = TestGateway::start(&base_config(&[up.url()], &extra)).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let attack = "1%27%20OR%20%271%27=%271";

    // Detect: forwarded, reported as waf_detected.
    let r = c.get(&format!("/legacy/search?q={attack}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1);
    let detected = events_of(&gw, "waf_detected").await;
    assert_eq!(detected.len(), 1);
    assert_eq!(detected[0]["route"], "legacy");
    assert!(events_of(&gw, "waf_blocked").await.is_empty());

    // Excluded target on the excluded path: passes; another argument, or another path: 403.
    assert_eq!(
        c.get(&format!("/docs/sql/intro?example={attack}"))
            .await
            .status,
        200
    );
    assert_eq!(
        c.get(&format!("/docs/sql/intro?q={attack}")).await.status,
        403
    );
    assert_eq!(
        c.get(&format!("/docs/other?example={attack}")).await.status,
        403
    );
    assert_eq!(
        c.get(&format!("/search?example={attack}")).await.status,
        403
    );
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_beyond_the_inspection_limit_fail_closed_or_are_inspected_in_part() {
    let up = body_echo().await;
    // Default policy: block (413), whether the length is declared or not.
    let gw = TestGateway::start(&base_config(&[up.url()], &waf_section("body_limit = 1024"))).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let big = "a=".to_string() + &"x".repeat(4000);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = send(&mut c, "POST", "/form", &form, big.clone()).await;
    assert_eq!(r.status, 413);
    let mut c = gw.tls().h2(gw.addr("https")).await;
    let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> = (0..8)
        .map(|_| Ok(http_body::Frame::data(bytes::Bytes::from("x".repeat(512)))))
        .collect();
    use http_body_util::BodyExt;
    let streamed = http_body_util::StreamBody::new(futures_util::stream::iter(chunks))
        .map_err(|never| match never {})
        .boxed();
    let req = http::Request::post("https://localhost/stream")
        .header("content-type", "text/plain")
        .body(streamed)
        .unwrap();
    let r = Reply::from(c.send(req).await.unwrap()).await;
    assert_eq!(
        r.status, 413,
        "no declared length: refused once the limit is passed"
    );
    // A body within the limit passes.
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(
        send(&mut c, "POST", "/form", &form, "a=hello").await.status,
        200
    );
    assert_eq!(up.hits(), 1);
    let blocked = events_of(&gw, "waf_blocked").await;
    assert!(
        blocked.iter().any(|e| e["rule_ids"][0] == "104"),
        "{blocked:#?}"
    );
    gw.shutdown().await;

    // inspect_partial: the beginning is inspected, the whole body is forwarded.
    let gw = TestGateway::start(&base_config(
        &[up.url()],
        &waf_section("body_limit = 1024\nover_limit = \"inspect_partial\""),
    ))
    .await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let r = send(&mut c, "POST", "/form", &form, big.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), big, "the whole body reaches the app");
    let attack = "q=%3Cscript%3Ealert(1)%3C%2Fscript%3E&pad=".to_string() + &"x".repeat(4000);
    assert_eq!(
        send(&mut c, "POST", "/form", &form, attack).await.status,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_json_and_argument_floods_fail_closed_and_pass_rules_allow() {
    let up = body_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let allow = dir.path().join("allow.toml");
    std::fs::write(
        &allow,
        "[[rules]]\nid = 9001\nmsg = \"health checks are never inspected\"\ntargets = [\"path\"]\nmatch = { equals = \"/healthz\" }\naction = \"pass\"\n",
    )
    .unwrap();
    let extra = format!(
        "\n[waf]\nrules = [\"{}\", \"{}\"]\nmax_args = 20\n",
        path_str(&repo().join("rules/*.toml")),
        path_str(&allow)
    );
    let gw = TestGateway::start(&base_config(&[up.url()], &extra)).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let json = [("content-type", "application/json")];
    assert_eq!(
        send(&mut c, "POST", "/api", &json, "{\"a\": [1, 2")
            .await
            .status,
        403
    );
    assert_eq!(
        send(&mut c, "POST", "/api", &json, "{\"a\": [1, 2]}")
            .await
            .status,
        200
    );
    let many: Vec<String> = (0..30).map(|i| format!("a{i}=1")).collect();
    assert_eq!(
        c.get(&format!("/list?{}", many.join("&"))).await.status,
        403
    );
    assert_eq!(c.get("/healthz?q=%3Cscript%3E").await.status, 200);
    assert_eq!(c.get("/other?q=%3Cscript%3E").await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waf_test_command_prints_one_verdict_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        base_config(&["http://127.0.0.1:9".to_string()], &waf_section("")),
    )
    .unwrap();
    let attack = dir.path().join("attack.http");
    std::fs::write(
        &attack,
        "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 28\r\n\r\nuser=admin%27--&password=x\r\n",
    )
    .unwrap();
    let benign = dir.path().join("benign.http");
    std::fs::write(
        &benign,
        "GET /search?q=O%27Reilly+books HTTP/1.1\nHost: localhost\nUser-Agent: Mozilla/5.0\n\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["waf", "test", "--config"])
        .arg(&cfg)
        .arg(&attack)
        .arg(&benign)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["verdict"], "block");
    assert!(lines[0]["score"].as_u64().unwrap() >= 5);
    assert!(lines[0]["rules"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(4201)));
    assert_eq!(lines[0]["matches"][0]["target"], "args:user");
    assert_eq!(lines[1]["verdict"], "pass");
    assert_eq!(lines[1]["score"], 0);

    // From stdin.
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["waf", "test", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: ${jndi:ldap://x/a}\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["file"], "-");
    // Log4Shell's lookup (3401), and its ldap:// URL now that User-Agent is inspected as a
    // free-form header (3702).
    assert!(
        v["rules"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(3401)),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_file_stops_the_config_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("mine.toml"),
        "[[rules]]\nid = 7001\nmsg = \"x\"\ntargets = [\"args\"]\nmatch = { regex = \"a{99999999}\" }\n",
    )
    .unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        base_config(
            &["http://127.0.0.1:9".to_string()],
            "\n[waf]\nrules = [\"rules/*.toml\"]\n",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mine.toml:5:") && err.contains("rule 7001"),
        "{err}"
    );
}

#[test]
fn waf_eval_reports_blocked_share_per_label_and_the_rules_behind_false_positives() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        base_config(&["http://127.0.0.1:9".to_string()], &waf_section("")),
    )
    .unwrap();
    let traffic = dir.path().join("traffic");
    let write = |rel: &str, body: &str| {
        let p = traffic.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    write(
        "attacks/sqli/1.http",
        "GET /search?q=1%27%20OR%20%271%27%3D%271 HTTP/1.1\nHost: a\n\n",
    );
    write(
        "attacks/sqli/2.http",
        "GET /search?q=nothing-here HTTP/1.1\nHost: a\n\n",
    );
    write(
        "benign/search/1.http",
        "GET /search?q=O%27Reilly+books HTTP/1.1\nHost: a\n\n",
    );
    // Real traffic that trips a rule: reported as a false positive with its rule.
    write(
        "benign/search/2.http",
        "GET /search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E HTTP/1.1\nHost: a\n\n",
    );
    write(
        "capture.ndjson",
        &[
            serde_json::json!({"label": "ldap", "method": "GET", "target": "/u?user=*)(uid=*))(|(uid=*"}),
            serde_json::json!({"label": "benign/api", "raw": "POST /api HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\r\n{\"name\": \"Anne\"}"}),
            serde_json::json!({"label": "odd", "expect": "pass", "method": "GET", "target": "/"}),
        ]
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["waf", "eval", "--format", "json", "--config"])
        .arg(&cfg)
        .arg(&traffic)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["labels"]["attacks/sqli"]["requests"], 2);
    assert_eq!(r["labels"]["attacks/sqli"]["blocked"], 1);
    assert_eq!(r["labels"]["attacks/sqli"]["blocked_percent"], 50.0);
    assert_eq!(r["labels"]["benign/search"]["expect"], "pass");
    assert_eq!(r["labels"]["benign/search"]["blocked"], 1);
    assert_eq!(r["labels"]["ldap"]["blocked"], 1);
    assert_eq!(r["labels"]["odd"]["expect"], "pass");
    assert_eq!(
        (r["attacks"].as_u64(), r["attacks_blocked"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        (r["benign"].as_u64(), r["benign_blocked"].as_u64()),
        (Some(4), Some(1))
    );
    let fps = r["false_positives"].as_array().unwrap();
    assert_eq!(fps.len(), 1);
    assert!(fps[0]["source"]
        .as_str()
        .unwrap()
        .ends_with("benign/search/2.http"));
    assert!(!fps[0]["rules"].as_array().unwrap().is_empty());
    assert_eq!(r["missed"].as_array().unwrap().len(), 1);

    // The text report: a line per label and the totals.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["waf", "eval", "--config"])
        .arg(&cfg)
        .arg(&traffic)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("attacks/sqli"), "{text}");
    assert!(text.contains("attacks blocked: 2/3"), "{text}");
    assert!(text.contains("false positives:"), "{text}");
}

#[test]
fn graphql_limits_introspection_depth_aliases_and_batching() {
    let files = gateway::waf::rule::expand(&repo().join("rules/*.toml")).unwrap();
    let strict = Settings {
        graphql: gateway::waf::graphql::Limits {
            introspection: false,
            ..Default::default()
        },
        ..Settings::default()
    };
    let open = Waf::from_files(&files, Settings::default(), Strategy::Prefilter).unwrap();
    let closed = Waf::from_files(&files, strict, Strategy::Prefilter).unwrap();
    let judge = |waf: &Waf, ctype: &str, body: String| {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("api.example.com"));
        headers.insert("content-type", HeaderValue::from_str(ctype).unwrap());
        let v = waf.inspect(
            &RequestParts {
                canonical: None,
                client_ip: None,
                method: "POST",
                target: "/graphql",
                version: "HTTP/1.1",
                headers: &headers,
                body: Some(body.as_bytes()),
            },
            &RoutePolicy::default(),
            false,
        );
        (
            v.blocked,
            v.matches.iter().map(|m| m.rule).collect::<Vec<_>>(),
        )
    };
    let json = |q: &str| serde_json::json!({ "query": q }).to_string();
    let intro = "query IntrospectionQuery { __schema { queryType { name } types { name kind } } }";
    assert_eq!(
        judge(&open, "application/json", json(intro)),
        (false, vec![])
    );
    assert_eq!(judge(&closed, "application/json", json(intro)).1, vec![105]);
    assert_eq!(
        judge(&closed, "application/graphql", intro.to_string()).1,
        vec![105]
    );
    let ordinary = "query { product(id: \"42\") { name __typename reviews(first: 5) { text } } }";
    assert_eq!(
        judge(&closed, "application/json", json(ordinary)),
        (false, vec![])
    );

    let deep = format!("query {}id{}", "{ friends ".repeat(20), " }".repeat(20));
    assert_eq!(
        judge(&open, "application/json", json(&deep)),
        (true, vec![106])
    );
    let aliases: String = (0..100)
        .map(|i| format!("a{i}: login(user: \"admin\", pass: \"p{i}\") {{ token }} "))
        .collect();
    assert_eq!(
        judge(
            &open,
            "application/json",
            json(&format!("mutation {{ {aliases} }}"))
        ),
        (true, vec![107])
    );
    let batch = |n: usize| {
        serde_json::Value::Array(
            (0..n)
                .map(|_| serde_json::json!({"query": ordinary}))
                .collect(),
        )
        .to_string()
    };
    assert_eq!(judge(&open, "application/json", batch(3)), (false, vec![]));
    assert_eq!(
        judge(&open, "application/json", batch(12)),
        (true, vec![108])
    );
}

#[test]
fn a_payload_spelled_only_through_a_chain_still_reaches_its_rule() {
    // Rule 3008 (`url_decode_uni`, `cmd_line`) needs a `/`. A group is skipped for a value
    // without the bytes its rules need, traced back through the chain: this argument
    // holds no `/` at all, only `%2f` (sent double-encoded, so it survives the query's
    // own decoding) and a `^` that `cmd_line` removes, so the gate must let `%` through.
    for strategy in [Strategy::Prefilter, Strategy::PerRule] {
        let waf = default_waf(strategy);
        let inspect = |target: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("host", HeaderValue::from_static("localhost"));
            waf.inspect(
                &RequestParts {
                    canonical: None,
                    client_ip: None,
                    method: "GET",
                    target,
                    version: "HTTP/1.1",
                    headers: &headers,
                    body: None,
                },
                &RoutePolicy::default(),
                false,
            )
        };
        let v = inspect("/search?q=x%3Bc%5Eat%252fetc%252fpasswd");
        assert!(
            v.rule_ids().contains(&"3008".to_string()),
            "{strategy:?}: {:?}",
            v.rule_ids()
        );
        // The same words as prose, without `/` or `%`, are nobody's business.
        let v = inspect("/search?q=the+cat+etc+passwd");
        assert!(!v.blocked, "{strategy:?}: {:?}", v.rule_ids());
    }
}
