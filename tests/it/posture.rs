//! Security posture: `gateway posture` on a config and its files, and `GET /api/v1/posture`
//! on the running gateway (event and metric).

use std::process::Command;

use serde_json::Value;

use crate::support::*;

fn posture_cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("posture")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_of<'a>(report: &'a Value, id: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}"))["status"]
        .as_str()
        .unwrap()
}

#[test]
fn the_cli_reports_checks_with_evidence_controls_and_scores_and_gates_on_a_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, shipped_config_on_free_ports()).unwrap();
    let (code, out, err) = posture_cli(&cfg, &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    for c in r["checks"].as_array().unwrap() {
        assert!(!c["evidence"].as_str().unwrap().is_empty(), "{c}");
        assert!(!c["controls"].as_array().unwrap().is_empty(), "{c}");
        if c["status"] == "fail" {
            assert!(!c["recommendation"].as_str().unwrap().is_empty(), "{c}");
        }
    }
    // What the shipped config is: a plain listener beside TLS, a development certificate
    // (once created), the admin API on loopback, the WAF blocking, no CRS.
    assert_eq!(status_of(&r, "plain_listeners"), "fail");
    assert_eq!(status_of(&r, "admin_exposure"), "pass");
    assert_eq!(status_of(&r, "waf_blocking"), "pass");
    assert_eq!(status_of(&r, "waf_crs"), "fail");
    assert_eq!(status_of(&r, "rate_limits"), "pass");
    assert_eq!(status_of(&r, "login_lockout"), "pass");
    assert_eq!(status_of(&r, "session_timeouts"), "pass");
    assert_eq!(status_of(&r, "audit_retention"), "pass");
    assert_eq!(
        status_of(&r, "events_complete"),
        "skipped",
        "needs the running gateway"
    );
    let frameworks: Vec<&str> = r["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["framework"].as_str().unwrap())
        .collect();
    assert_eq!(
        frameworks,
        ["PCI DSS v4", "SOC 2", "ISO 27001:2022", "HIPAA", "GDPR"]
    );
    let overall = r["overall"].as_u64().unwrap();
    assert!(overall > 0 && overall < 100, "{overall}");
    let (p, f) = (r["passed"].as_u64().unwrap(), r["failed"].as_u64().unwrap());
    assert_eq!(overall, 100 * p / (p + f));

    // The text form names each check and the scores; --min-score gates.
    let (code, text, _) = posture_cli(&cfg, &[]);
    assert_eq!(code, 0);
    assert!(
        text.contains("FAIL  plain_listeners") && text.contains("PCI DSS v4"),
        "{text}"
    );
    let (code, _, err) = posture_cli(&cfg, &["--min-score", "100"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("below --min-score 100"), "{err}");
    let (code, _, _) = posture_cli(&cfg, &["--min-score", &overall.to_string()]);
    assert_eq!(code, 0);

    // A weaker config scores lower, and says why.
    let weaker = shipped_config_on_free_ports()
        .replace("mode = \"block\"  ", "mode = \"detect\" ")
        .replace("max_failures = 5 ", "max_failures = 50");
    std::fs::write(&cfg, weaker).unwrap();
    let (_, out, _) = posture_cli(&cfg, &["--format", "json"]);
    let w: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status_of(&w, "waf_blocking"), "fail");
    assert_eq!(status_of(&w, "login_lockout"), "fail");
    assert!(w["overall"].as_u64().unwrap() < overall);

    std::fs::write(&cfg, "[server]\nnope = 1\n").unwrap();
    assert_eq!(posture_cli(&cfg, &[]).0, 2, "a bad config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_gateway_checks_backups_and_dropped_events_and_records_the_result() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(
        &[up.url()],
        &format!("{OPERATOR_TOKENS}\n[events.backup]\nevery = \"24h\"\n"),
    ))
    .await;
    let r = api(&gw, "GET", "/api/v1/posture", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = r.json();
    assert_eq!(status_of(&before, "backups_recent"), "fail");
    assert_eq!(status_of(&before, "events_complete"), "pass");
    // The test config writes its token inline.
    assert_eq!(status_of(&before, "admin_tokens"), "fail");
    assert_eq!(status_of(&before, "admin_roles"), "pass");

    assert_eq!(api(&gw, "POST", "/api/v1/backups", None).await.status, 201);
    // A viewer may read the posture.
    let vi = token_of(&gw, "vi");
    let r = api_as(&gw, &vi, "GET", "/api/v1/posture", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after = r.json();
    assert_eq!(status_of(&after, "backups_recent"), "pass");
    assert_eq!(status_of(&after, "backups_verified"), "pass");
    assert!(after["overall"].as_u64() > before["overall"].as_u64());
    let r = api(&gw, "GET", "/api/v1/posture?verify_backup=false", None).await;
    assert_eq!(status_of(&r.json(), "backups_verified"), "skipped");
    assert_eq!(
        api(&gw, "GET", "/api/v1/posture?verify=1", None)
            .await
            .status,
        400
    );

    let events = events_of(&gw, "posture_checked").await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[1]["details"]["score"], after["overall"].to_string());
    assert_eq!(events[1]["risk"], "medium", "some checks failed");
    let metrics = admin(&gw, "GET", "/metrics", None).await.text();
    let line = format!(
        "gateway_posture_score{{framework=\"overall\"}} {}",
        r.json()["overall"]
    );
    assert!(metrics.contains(&line), "{line} not in /metrics");
    assert!(metrics.contains("gateway_posture_score{framework=\"pci_dss_v4\"}"));
    gw.shutdown().await;
}
