//! The event store through the running gateway: events produced by real requests, reloads
//! and admin logins; queries, pagination, export; the investigation workflow; archive,
//! restart and kill -9 (backups: `backups.rs`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn items(r: &Reply) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn reloads_and_failed_admin_logins_become_events_with_their_risk() {
    let up = named_upstream("a", Duration::ZERO).await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;

    let r = api(&gw, "POST", "/api/v1/reload", None).await;
    assert_eq!(r.status, 200);
    std::fs::write(gw.config_path(), "[server\n").unwrap();
    assert_eq!(api(&gw, "POST", "/api/v1/reload", None).await.status, 422);
    // Four failures from one address are medium, the fifth within the window critical.
    fail_logins(&gw, 5).await;

    let reloaded = items(&api(&gw, "GET", "/api/v1/events?type=config_reloaded", None).await);
    assert_eq!(reloaded.len(), 1);
    assert_eq!(reloaded[0]["risk"], "low");
    assert_eq!(reloaded[0]["details"]["generation"], "2");
    let failed = items(&api(&gw, "GET", "/api/v1/events?type=config_reload_failed", None).await);
    assert_eq!(failed.len(), 1);

    let auth = items(&api(&gw, "GET", "/api/v1/events?type=admin_auth_failed", None).await);
    assert_eq!(auth.len(), 5);
    // Newest first: the fifth failure is critical, the others medium.
    assert_eq!(auth[0]["risk"], "critical");
    assert!(auth[1..].iter().all(|e| e["risk"] == "medium"));
    assert_eq!(auth[0]["client_ip"], "127.0.0.1");
    assert_eq!(auth[0]["path"], "/api/v1/status");
    assert_eq!(auth[0]["investigation"]["status"], "open");
    // The wrong token itself is stored nowhere.
    let all = api(&gw, "GET", "/api/v1/events/export", None).await.text();
    assert!(!all.contains("wrong-token"), "{all}");

    let critical = items(&api(&gw, "GET", "/api/v1/events?risk=critical", None).await);
    assert_eq!(critical.len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_requests_are_recorded_with_their_severity() {
    let slow = named_upstream("slow", Duration::from_millis(200)).await;
    let fast = named_upstream("fast", Duration::ZERO).await;
    let extra = format!(
        r#"
[[upstreams]]
name = "fast"
servers = ["{}"]

[[routes]]
name = "warn"
path_prefix = "/warn"
upstream = "app"
slow_threshold = "150ms"

[[routes]]
name = "crit"
path_prefix = "/crit"
upstream = "app"
slow_threshold = "30ms"

[[routes]]
name = "all"
path_prefix = "/all"
upstream = "fast"
log_all = true
"#,
        fast.url()
    );
    let gw = TestGateway::start(&base_config(&[slow.url()], &extra)).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/warn/x?q=1").await.status, 200);
    assert_eq!(c.get("/crit/y").await.status, 200);
    assert_eq!(c.get("/all/z").await.status, 200);
    // Under the default 1 s threshold: not recorded.
    assert_eq!(c.get("/other").await.status, 200);
    flush(&gw).await;

    let slow_list = items(&api(&gw, "GET", "/api/v1/perf/slow", None).await);
    assert_eq!(slow_list.len(), 3, "{slow_list:?}");
    let by_route = |r: &str| slow_list.iter().find(|e| e["route"] == r).unwrap().clone();
    let w = by_route("warn");
    assert_eq!(w["severity"], "warning");
    assert_eq!(w["path"], "/warn/x");
    assert_eq!(w["status"], 200);
    assert!(w["total_ms"].as_f64().unwrap() >= 200.0);
    assert!(w["upstream_ms"].as_f64().unwrap() >= 200.0);
    assert!(w["gateway_ms"].as_f64().unwrap() < 100.0);
    assert_eq!(w["threshold_ms"], 150.0);
    assert_eq!(by_route("crit")["severity"], "critical");
    assert_eq!(by_route("all")["severity"], "info");

    let only = items(
        &api(
            &gw,
            "GET",
            "/api/v1/perf/slow?route=crit&severity=critical",
            None,
        )
        .await,
    );
    assert_eq!(only.len(), 1);
    // Over 5x the threshold also raises an audit event.
    let alerts = items(&api(&gw, "GET", "/api/v1/events?type=performance_alert", None).await);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["route"], "crit");
    assert_eq!(alerts[0]["request_id"], by_route("crit")["request_id"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn filters_pagination_and_export_return_what_was_stored() {
    let up = named_upstream("a", Duration::ZERO).await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    fail_logins(&gw, 25).await;

    // Three pages of 10, 10 and 5, newest first, no repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/events?type=admin_auth_failed&limit=10&cursor={c}"),
            None => "/api/v1/events?type=admin_auth_failed&limit=10".into(),
        };
        let r = api(&gw, "GET", &path, None).await;
        let page = items(&r);
        seen.extend(page.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match r.json()["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages are newest first without repeats");

    assert_eq!(
        items(&api(&gw, "GET", "/api/v1/events?risk=medium", None).await).len(),
        4
    );
    assert_eq!(
        items(&api(&gw, "GET", "/api/v1/events?ip=127.0.0.1", None).await).len(),
        25
    );
    assert_eq!(
        items(&api(&gw, "GET", "/api/v1/events?ip=10.1.1.1", None).await).len(),
        0
    );
    assert_eq!(
        items(&api(&gw, "GET", "/api/v1/events?status=resolved", None).await).len(),
        0
    );
    let future = items(
        &api(
            &gw,
            "GET",
            "/api/v1/events?since=2999-01-01T00:00:00Z",
            None,
        )
        .await,
    );
    assert!(future.is_empty());
    let past = items(
        &api(
            &gw,
            "GET",
            "/api/v1/events?until=2000-01-01T00:00:00Z",
            None,
        )
        .await,
    );
    assert!(past.is_empty());

    for bad in [
        "risk=severe",
        "type=nope",
        "ip=1.2.3",
        "since=yesterday",
        "limit=0",
        "cursor=zz",
        "colour=red",
    ] {
        let r = api(&gw, "GET", &format!("/api/v1/events?{bad}"), None).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }

    let nd = api(
        &gw,
        "GET",
        "/api/v1/events/export?format=ndjson&type=admin_auth_failed",
        None,
    )
    .await;
    assert_eq!(nd.status, 200);
    assert_eq!(nd.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = nd
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 25);
    assert_eq!(lines[0]["id"].as_str().unwrap(), seen[0]);

    let csv = api(
        &gw,
        "GET",
        "/api/v1/events/export?format=csv&risk=critical",
        None,
    )
    .await;
    assert_eq!(csv.status, 200);
    let text = csv.text();
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("id,time,type,risk,status,client_ip"));
    assert_eq!(rows.len(), 1 + 21, "{text}");
    assert!(rows[1].contains(",admin_auth_failed,critical,open,127.0.0.1,"));
    assert_eq!(
        api(&gw, "GET", "/api/v1/events/export?format=xml", None)
            .await
            .status,
        400
    );

    let stats = api(&gw, "GET", "/api/v1/stats", None).await.json();
    assert_eq!(stats["by_type"]["admin_auth_failed"], 25);
    assert_eq!(stats["by_risk"]["critical"], 21);
    assert_eq!(stats["by_status"]["open"], 25);
    assert_eq!(stats["open_high_and_critical"], 21);
    assert_eq!(stats["events_dropped"]["low"], 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn investigation_moves_through_its_workflow_and_keeps_the_event_intact() {
    let up = named_upstream("a", Duration::ZERO).await;
    let gw = TestGateway::start(&base_config(&[up.url()], OPERATOR_TOKENS)).await;
    let (ana, bo) = (token_of(&gw, "ana"), token_of(&gw, "bo"));
    fail_logins(&gw, 5).await;
    let list = items(&api(&gw, "GET", "/api/v1/events", None).await);
    let id = list[0]["id"].as_str().unwrap().to_string();
    let other = list[1]["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/events/{id}");
    let before = api(&gw, "GET", &path, None).await.json();

    // open -> resolved skips investigating.
    let r = api_as(
        &gw,
        &ana,
        "PATCH",
        &path,
        Some(json!({"status": "resolved", "note": "x"})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    // Who acts and who is assigned are token names, not whatever the body says.
    let r = api_as(
        &gw,
        &ana,
        "PATCH",
        &path,
        Some(json!({"by": "bo", "status": "investigating"})),
    )
    .await;
    assert_eq!(r.status, 422, "ana cannot act as bo: {}", r.text());
    let r = api_as(
        &gw,
        &ana,
        "PATCH",
        &path,
        Some(json!({"status": "investigating", "assignee": "carol"})),
    )
    .await;
    assert_eq!(r.status, 422, "no token is named carol: {}", r.text());
    let r = api_as(
        &gw,
        &ana,
        "PATCH",
        &path,
        Some(json!({"status": "investigating", "assignee": "bo", "related": [other]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api_as(
        &gw,
        &bo,
        "PATCH",
        &path,
        Some(json!({"status": "resolved"})),
    )
    .await;
    assert_eq!(r.status, 422, "resolving needs a note: {}", r.text());
    let r = api_as(
        &gw,
        &bo,
        "PATCH",
        &path,
        Some(json!({"by": "bo", "status": "resolved", "note": "our own monitoring with an old token"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let after = api(&gw, "GET", &path, None).await.json();
    let inv = &after["investigation"];
    assert_eq!(inv["status"], "resolved");
    assert_eq!(inv["assignee"], "bo");
    assert_eq!(inv["resolved_by"], "bo");
    assert_eq!(inv["history"][0]["by"], "ana");
    assert_eq!(inv["notes"][0]["by"], "bo");
    assert!(inv["resolved_at"].is_string());
    assert_eq!(
        inv["notes"][0]["text"],
        "our own monitoring with an old token"
    );
    let fields: Vec<&str> = inv["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["status", "assignee", "related", "status", "notes"]);
    // The event itself is unchanged.
    for k in [
        "id",
        "time",
        "type",
        "risk",
        "client_ip",
        "message",
        "details",
    ] {
        assert_eq!(after[k], before[k], "{k}");
    }
    // Related: the other failures from the same address, and the manual link.
    let related: Vec<&str> = after["related"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(related.len(), 4);
    assert!(related.contains(&other.as_str()));

    assert_eq!(
        items(&api(&gw, "GET", "/api/v1/events?status=resolved", None).await).len(),
        1
    );
    assert_eq!(
        api(&gw, "GET", "/api/v1/stats", None).await.json()["open_high_and_critical"],
        0
    );
    let missing = "0".repeat(32);
    let r = api(
        &gw,
        "PATCH",
        &format!("/api/v1/events/{missing}"),
        Some(json!({"status": "investigating"})),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        api(&gw, "GET", &format!("/api/v1/events/{missing}"), None)
            .await
            .status,
        404
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn expired_events_archive_and_restore_round_trip() {
    let up = named_upstream("a", Duration::ZERO).await;
    let extra = "\n[events.retention]\naudit = \"1s\"\nperformance = \"1s\"\n\n[performance]\nlog_all = true\n";
    let gw = TestGateway::start(&base_config(&[up.url()], extra)).await;
    fail_logins(&gw, 5).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    for _ in 0..3 {
        assert_eq!(c.get("/").await.status, 200);
    }
    flush(&gw).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let r = api(&gw, "POST", "/api/v1/archive/run", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let archives = r.json()["archives"].as_array().unwrap().clone();
    assert_eq!(archives.len(), 1);
    // The four medium failures and three requests go; the unresolved critical one stays.
    assert_eq!(archives[0]["audit"], 4);
    assert_eq!(archives[0]["performance"], 3);
    let file = std::path::PathBuf::from(archives[0]["file"].as_str().unwrap());
    assert!(file.exists());
    let manifest = file.with_file_name(
        file.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace(".ndjson.zst", ".manifest.json"),
    );
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["sha256"], archives[0]["sha256"]);

    flush(&gw).await;
    let left = items(&api(&gw, "GET", "/api/v1/events?type=admin_auth_failed", None).await);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["risk"], "critical");
    assert!(items(&api(&gw, "GET", "/api/v1/perf/slow", None).await).is_empty());
    let archived = items(&api(&gw, "GET", "/api/v1/events?type=data_archived", None).await);
    assert_eq!(archived.len(), 1);

    let name = file.file_name().unwrap().to_str().unwrap();
    let r = api(
        &gw,
        "POST",
        "/api/v1/archive/restore",
        Some(json!({"file": name})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["restored"], 7);
    flush(&gw).await;
    assert_eq!(
        items(&api(&gw, "GET", "/api/v1/events?type=admin_auth_failed", None).await).len(),
        5
    );
    assert_eq!(
        items(&api(&gw, "GET", "/api/v1/perf/slow", None).await).len(),
        3
    );
    // Restored records are held: the next run leaves them alone.
    let r = api(&gw, "POST", "/api/v1/archive/run", None).await;
    assert_eq!(
        r.json()["archives"].as_array().unwrap().len(),
        0,
        "{}",
        r.text()
    );
    // Restoring twice adds nothing; a path outside the archive directory is refused.
    let r = api(
        &gw,
        "POST",
        "/api/v1/archive/restore",
        Some(json!({"file": name})),
    )
    .await;
    assert_eq!(r.json()["already_present"], 7);
    let r = api(
        &gw,
        "POST",
        "/api/v1/archive/restore",
        Some(json!({"file": "../gateway.toml"})),
    )
    .await;
    assert_eq!(r.status, 400);

    // A damaged archive is refused, nothing restored.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let r = api(
        &gw,
        "POST",
        "/api/v1/archive/restore",
        Some(json!({"file": name})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("damaged"));
    gw.shutdown().await;
}

#[tokio::test]
async fn latency_trends_survive_a_restart() {
    let up = named_upstream("a", Duration::from_millis(5)).await;
    let cfg = base_config(&[up.url()], "");
    let gw = TestGateway::start(&cfg).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    for _ in 0..20 {
        assert_eq!(c.get("/").await.status, 200);
    }
    drop(c);
    let t = TestGateway::restart(gw.stop_keeping_files().await).await;
    let r = api(&t, "GET", "/api/v1/perf/trends?route=app", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let points = r.json()["routes"]["app"].as_array().unwrap().clone();
    let count: u64 = points.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(count, 20, "{points:?}");
    let p50 = points[0]["p50_ms"].as_f64().unwrap();
    assert!((4.0..=50.0).contains(&p50), "{p50}");
    assert_eq!(
        api(&t, "GET", "/api/v1/perf/trends?granularity=day", None)
            .await
            .status,
        400
    );
    t.shutdown().await;
}

#[tokio::test]
async fn openapi_document_lists_every_endpoint() {
    let up = named_upstream("a", Duration::ZERO).await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let r = admin(&gw, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/events",
        "/events/{id}",
        "/events/export",
        "/stats",
        "/perf/slow",
        "/perf/trends",
        "/backups",
        "/backups/{name}/verify",
        "/archives",
        "/archive/run",
        "/archive/restore",
        "/reload",
        "/status",
        "/whoami",
        "/posture",
        "/ip-rules",
        "/ip-rules/{id}",
        "/ip-rules/test",
        "/bans",
        "/bans/{ip}",
        "/sessions",
        "/sessions/stats",
        "/sessions/{id}",
        "/users/{user}/sessions",
        "/login-locks",
        "/users/{user}/lock",
    ] {
        assert!(
            doc["paths"][format!("/api/v1{p}")].is_object(),
            "{p} is not documented"
        );
    }
    gw.shutdown().await;
}

/// Under heavy event traffic the gateway is killed with SIGKILL; the store then opens and
/// holds every event the gateway had counted as committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_committed_event() {
    let up = named_upstream("a", Duration::ZERO).await;
    let admin_port = free_port();
    let mut bg = BinaryGateway::start(|port| {
        binary_config(&[up.url()], port, false)
            .replace("[admin]\nenabled = false\n", "[admin]\n")
            .replace("bind = \"127.0.0.1:0\"\ntoken", &format!("bind = \"127.0.0.1:{admin_port}\"\ntoken"))
            + "\n[performance]\nlog_all = true\n\n[events]\nbatch_max_events = 256\nbatch_max_delay = \"5ms\"\n"
    })
    .await;
    let addr = bg.addr;
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut c = Sender::plain(addr).await;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c
                    .send(
                        hyper::Request::get("/load")
                            .header("host", "x")
                            .body(full(""))
                            .unwrap(),
                    )
                    .await
                {
                    Ok(_) => n += 1,
                    Err(_) => break,
                }
            }
            n
        }));
    }
    let committed = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("gateway_events_committed_total "))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut acknowledged = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while acknowledged < 3000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut s = Sender::plain(admin_addr).await;
        acknowledged = committed(&s.get("/metrics").await.text());
    }
    assert!(acknowledged >= 3000, "only {acknowledged} events committed");
    // Read the newest stored ids through the API, then kill at once, mid-traffic.
    let mut s = Sender::plain(admin_addr).await;
    let req = hyper::Request::get("/api/v1/perf/slow?limit=1000")
        .header("host", "admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full(""))
        .unwrap();
    let listed = Reply::from(s.send(req).await.unwrap()).await.json();
    let mut s = Sender::plain(admin_addr).await;
    let acknowledged = committed(&s.get("/metrics").await.text());
    bg.signal(libc::SIGKILL);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for c in clients {
        sent += c.await.unwrap();
    }
    let store_path = bg.path.parent().unwrap().join("data/events.redb");
    bg.child.wait().unwrap();
    let store = gateway::events::Store::open(&store_path).expect("the store opens after kill -9");
    let (audit, perf, _) = store.counts().unwrap();
    assert!(
        audit + perf >= acknowledged,
        "store holds {} records, {acknowledged} were committed",
        audit + perf
    );
    assert!(
        perf <= sent,
        "{perf} performance records for {sent} requests"
    );
    let mut stored = std::collections::HashSet::new();
    let mut cursor = None;
    loop {
        let page = store.list_perf(&Default::default(), cursor, 1000).unwrap();
        stored.extend(page.items.iter().map(|p| p.id.to_string()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(stored.len() as u64, perf);
    let listed = listed["items"].as_array().unwrap();
    assert_eq!(listed.len(), 1000);
    for e in listed {
        let id = e["id"].as_str().unwrap();
        assert!(stored.contains(id), "event {id} was listed, then lost");
    }
}
