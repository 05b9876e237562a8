//! Backups and restore with real gateways and real files: a backup holds every table (and
//! the session key), restores entry by entry into a fresh data directory where the API rule,
//! the ban and the logged-in session work again; crafted archives (absolute paths, `..`,
//! links, duplicates, a tampered store, a decompression bomb) are refused without touching
//! anything; retention, permissions, metrics and failure events; archive listing and caps;
//! cron schedules with time zones.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use gateway::events::schema;
use serde_json::{json, Value};

use crate::support::*;

fn cli(args: &[&str], extra: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gateway"));
    c.args(args);
    for p in extra {
        c.arg(p);
    }
    c.output().unwrap()
}

fn ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Every table of a store file (closed), raw, by name; and the names of tables in the file
/// that the schema does not declare.
fn tables_of(store: &Path) -> (BTreeMap<String, Rows>, Vec<String>) {
    let db = redb::Database::open(store).unwrap();
    let tx = db.begin_read().unwrap();
    let all = schema::ALL
        .iter()
        .map(|t| (t.table_name().to_string(), t.raw_rows(&tx).unwrap()))
        .collect();
    (all, schema::unknown_tables(&tx).unwrap())
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

const SHOP: &str = r#"
[performance]
log_all = true

[events.retention]
audit = "1s"
performance = "1h"

[[apps]]
name = "shop"
routes = ["app"]
login = { path = "/login", user_field = "user", success_status = [302], success_location = "/home" }

[apps.session]
cookie = "sid"
idle_timeout = "1h"
absolute_timeout = "2h"
"#;

/// Fills every table of the store through the running gateway, as an operator and users
/// would: events, an investigation, an archived-and-restored batch (retention holds),
/// slow-request records and trends, an API IP rule, a manual ban, a logged-in session.
/// Returns the session cookie.
async fn fill_every_table(gw: &TestGateway) -> String {
    let mut s = Sender::plain(gw.addr("http")).await;
    fail_logins(gw, 3).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = api(gw, "POST", "/api/v1/archive/run", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let archive = r.json()["archives"][0]["file"]
        .as_str()
        .unwrap()
        .to_string();
    let name = Path::new(&archive).file_name().unwrap().to_str().unwrap();
    let r = api(
        gw,
        "POST",
        "/api/v1/archive/restore",
        Some(json!({"file": name})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let login = request_as(
        &mut s,
        "POST",
        "/login",
        "192.0.2.10",
        None,
        "user=alice&password=secret",
    )
    .await;
    assert_eq!(login.status, 302, "{}", login.text());
    let cookie = cookie_pair(&login);
    assert_eq!(
        request_as(&mut s, "GET", "/home", "192.0.2.10", Some(&cookie), "")
            .await
            .status,
        200
    );

    let r = api(
        gw,
        "POST",
        "/api/v1/ip-rules",
        Some(json!({"action": "deny", "cidr": "198.51.100.0/24", "comment": "scanner"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = api(
        gw,
        "POST",
        "/api/v1/bans",
        Some(json!({"ip": "203.0.113.9", "duration": "1h", "reason": "abuse report"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        request_as(&mut s, "GET", "/", "203.0.113.9", None, "")
            .await
            .status,
        403
    );
    assert_eq!(
        request_as(&mut s, "GET", "/", "198.51.100.7", None, "")
            .await
            .status,
        403
    );

    flush(gw).await;
    let banned = events_of(gw, "ip_banned").await;
    let id = banned[0]["id"].as_str().unwrap();
    let r = api(
        gw,
        "PATCH",
        &format!("/api/v1/events/{id}"),
        Some(json!({"status": "investigating", "note": "checking"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    flush(gw).await;
    cookie
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_holds_every_table_and_restores_into_a_fresh_data_dir() {
    let up = login_app().await;
    let gw = TestGateway::start(&trusted_config(&up, SHOP)).await;
    let cookie = fill_every_table(&gw).await;

    // The live path: a backup through the API verifies through the API.
    let r = api(&gw, "POST", "/api/v1/backups", None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let live = PathBuf::from(r.json()["file"].as_str().unwrap());
    assert!(live.to_str().unwrap().ends_with(".tar.zst"));
    let name = live.file_name().unwrap().to_str().unwrap().to_string();
    let v = api(&gw, "POST", &format!("/api/v1/backups/{name}/verify"), None).await;
    assert_eq!(v.status, 200, "{}", v.text());
    assert_eq!(
        v.json()["manifest"]["tables"].as_array().unwrap().len(),
        schema::ALL.len()
    );
    assert_eq!(
        api(&gw, "POST", "/api/v1/backups/nope.tar.zst/verify", None)
            .await
            .status,
        400
    );
    assert_eq!(
        api(&gw, "POST", "/api/v1/backups/backup-x.tar.zst/verify", None)
            .await
            .status,
        404
    );
    let metrics = admin(&gw, "GET", "/metrics", Some(TOKEN)).await.text();
    assert!(
        metrics.contains("gateway_task_last_success_timestamp_seconds{task=\"backup\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_task_last_records{task=\"archive\"}"));

    let config = gw.config_path();
    let old = gw.stop_keeping_files().await;
    let data = old.path().join("data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("events.redb")), 0o600);
    assert_eq!(mode(&live), 0o600);

    // Every table is filled (a table added later without a way to fill it here fails),
    // and the file holds no table the schema does not declare.
    let (source, unknown) = tables_of(&data.join("events.redb"));
    assert!(
        unknown.is_empty(),
        "tables outside events::schema: {unknown:?}"
    );
    for (table, rows) in &source {
        assert!(
            !rows.is_empty(),
            "table `{table}` was not filled by this test"
        );
    }

    // An offline backup of the stopped gateway, restored into a fresh data directory.
    let made = ok(&cli(&["backup", "create", "--config"], &[&config]));
    let file = PathBuf::from(made["file"].as_str().unwrap());
    let fresh = tempfile::tempdir().unwrap();
    std::fs::copy(&config, fresh.path().join("gateway.toml")).unwrap();
    let restored = ok(&cli(
        &["backup", "restore", file.to_str().unwrap(), "--config"],
        &[&fresh.path().join("gateway.toml")],
    ));
    assert!(restored["previous_store"].is_null());
    let (copy, _) = tables_of(&fresh.path().join("data/events.redb"));
    for (table, rows) in &source {
        let got = &copy[table];
        if table == "audit_events" {
            // Plus the one `data_restored` event the restore records.
            assert_eq!(got.len(), rows.len() + 1, "{table}");
            assert!(rows.iter().all(|r| got.contains(r)), "{table} lost entries");
            let extra: Vec<_> = got.iter().filter(|r| !rows.contains(r)).collect();
            assert!(String::from_utf8_lossy(&extra[0].1).contains("data_restored"));
        } else {
            assert_eq!(got, rows, "table `{table}` differs after restore");
        }
    }
    assert_eq!(
        std::fs::read(data.join("session.key")).unwrap(),
        std::fs::read(fresh.path().join("data/session.key")).unwrap()
    );
    // The config copy is beside it, with the inline admin token redacted.
    let cfg_copy = std::fs::read_to_string(
        Path::new(restored["config_dir"].as_str().unwrap()).join("gateway.toml"),
    )
    .unwrap();
    assert!(
        !cfg_copy.contains(TOKEN) && cfg_copy.contains("REDACTED"),
        "{cfg_copy}"
    );

    // Started on the restored data: the API rule, the ban and the session all hold.
    let gw = TestGateway::restart(fresh).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    assert_eq!(
        request_as(&mut s, "GET", "/", "198.51.100.7", None, "")
            .await
            .status,
        403
    );
    assert_eq!(
        request_as(&mut s, "GET", "/", "203.0.113.9", None, "")
            .await
            .status,
        403
    );
    let home = request_as(&mut s, "GET", "/home", "192.0.2.10", Some(&cookie), "").await;
    assert_eq!(
        home.status,
        200,
        "the restored session was not recognised: {}",
        home.text()
    );
    let rules = api(&gw, "GET", "/api/v1/ip-rules", None).await.text();
    assert!(rules.contains("scanner"), "{rules}");
    let bans = api(&gw, "GET", "/api/v1/bans", None).await.json();
    assert_eq!(bans["items"][0]["ip"], "203.0.113.9");
    let sessions = api(&gw, "GET", "/api/v1/sessions?user=alice", None)
        .await
        .json();
    assert_eq!(sessions["items"].as_array().unwrap().len(), 1, "{sessions}");
    let restores = events_of(&gw, "data_restored").await;
    // The archive restore while filling, and this backup restore.
    assert_eq!(restores.len(), 2);
    assert!(
        restores[0].to_string().contains("restored a backup"),
        "{:?}",
        restores[0]
    );
    gw.shutdown().await;
}

/// The entries of a backup, decompressed: (name, bytes) in order.
fn entries_of(file: &Path) -> Vec<(String, Vec<u8>)> {
    let dec = zstd::Decoder::new(std::fs::File::open(file).unwrap()).unwrap();
    let mut a = tar::Archive::new(dec);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_str().unwrap().to_string();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            (name, body)
        })
        .collect()
}

/// One tar entry as an attacker would write it: any name bytes, any type, any size.
struct Crafted {
    name: String,
    kind: tar::EntryType,
    body: Vec<u8>,
    link: Option<&'static str>,
    declared_size: Option<u64>,
}

fn file(name: &str, body: &[u8]) -> Crafted {
    Crafted {
        name: name.to_string(),
        kind: tar::EntryType::Regular,
        body: body.to_vec(),
        link: None,
        declared_size: None,
    }
}

fn write_crafted(path: &Path, entries: &[Crafted]) {
    let out = zstd::Encoder::new(std::fs::File::create(path).unwrap(), 1)
        .unwrap()
        .auto_finish();
    let mut b = tar::Builder::new(out);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let name = e.name.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(e.kind);
        h.set_mode(0o644);
        h.set_size(e.declared_size.unwrap_or(e.body.len() as u64));
        if let Some(l) = e.link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, &e.body[..]).unwrap();
    }
    b.finish().unwrap();
}

fn manifest_with(good: &[(String, Vec<u8>)], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut m: Value = serde_json::from_slice(&good[0].1).unwrap();
    edit(&mut m);
    serde_json::to_vec(&m).unwrap()
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

fn snapshot_dir(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(snapshot_dir(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn crafted_backups_are_refused_and_change_nothing() {
    let up = named_upstream("a", Duration::ZERO).await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    fail_logins(&gw, 1).await;
    let good = PathBuf::from(
        api(&gw, "POST", "/api/v1/backups", None).await.json()["file"]
            .as_str()
            .unwrap(),
    );
    let config = gw.config_path();
    let dir = gw.stop_keeping_files().await;
    let data = dir.path().join("data");
    let entries = entries_of(&good);
    assert_eq!(entries[0].0, "manifest.json");
    let store = entries
        .iter()
        .find(|e| e.0 == "events.redb")
        .unwrap()
        .1
        .clone();
    let rest: Vec<&(String, Vec<u8>)> = entries[1..].iter().collect();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("pwned");

    // A store holding a table this version does not know, with a manifest that matches it.
    let foreign = {
        let p = outside.path().join("foreign.redb");
        std::fs::write(&p, &store).unwrap();
        let db = redb::Database::open(&p).unwrap();
        let w = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("evil");
            w.open_table(def).unwrap().insert(1, 2).unwrap();
        }
        w.commit().unwrap();
        drop(db);
        std::fs::read(&p).unwrap()
    };
    let with_rest = |mut first: Vec<Crafted>| {
        for (n, b) in &rest {
            first.push(file(n, b));
        }
        first
    };
    let mut tampered = store.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x40;

    let cases: Vec<(&str, Vec<Crafted>, &str)> = vec![
        (
            "absolute path",
            with_rest(vec![
                good_manifest_clone(&entries),
                file(victim.to_str().unwrap(), b"x"),
            ]),
            "not allowed",
        ),
        (
            "dot-dot",
            with_rest(vec![
                good_manifest_clone(&entries),
                file("config/../../pwned", b"x"),
            ]),
            "not allowed",
        ),
        (
            "symlink",
            with_rest(vec![
                good_manifest_clone(&entries),
                Crafted {
                    kind: tar::EntryType::Symlink,
                    link: Some("/etc/passwd"),
                    ..file("config/link", b"")
                },
            ]),
            "not a regular file",
        ),
        (
            "hard link",
            with_rest(vec![
                good_manifest_clone(&entries),
                Crafted {
                    kind: tar::EntryType::Link,
                    link: Some("events.redb"),
                    ..file("config/hard", b"")
                },
            ]),
            "not a regular file",
        ),
        (
            "duplicate",
            {
                let mut v = vec![good_manifest_clone(&entries)];
                for (n, b) in &rest {
                    v.push(file(n, b));
                }
                v.push(file("events.redb", &tampered));
                v
            },
            "twice",
        ),
        (
            "tampered store",
            {
                let mut v = vec![good_manifest_clone(&entries)];
                for (n, b) in &rest {
                    v.push(file(n, if n == "events.redb" { &tampered } else { b }));
                }
                v
            },
            "checksum",
        ),
        (
            "foreign table, manifest rewritten",
            {
                let m = manifest_with(&entries, |m| {
                    for e in m["entries"].as_array_mut().unwrap() {
                        if e["name"] == "events.redb" {
                            e["sha256"] = json!(sha(&foreign));
                            e["bytes"] = json!(foreign.len());
                        }
                    }
                });
                let mut v = vec![file("manifest.json", &m)];
                for (n, b) in &rest {
                    v.push(file(n, if n == "events.redb" { &foreign } else { b }));
                }
                v
            },
            "does not know: evil",
        ),
        (
            "decompression bomb",
            {
                let m = manifest_with(&entries, |m| {
                    for e in m["entries"].as_array_mut().unwrap() {
                        if e["name"] == "events.redb" {
                            e["bytes"] = json!(1u64 << 50);
                        }
                    }
                });
                vec![
                    file("manifest.json", &m),
                    Crafted {
                        declared_size: Some(1 << 50),
                        ..file("events.redb", &vec![0u8; 1 << 20])
                    },
                ]
            },
            "refused",
        ),
        (
            "bomb that fits the disk",
            {
                let m = manifest_with(&entries, |m| {
                    for e in m["entries"].as_array_mut().unwrap() {
                        if e["name"] == "events.redb" {
                            e["bytes"] = json!(3u64 << 30);
                        }
                    }
                });
                vec![
                    file("manifest.json", &m),
                    Crafted {
                        declared_size: Some(3 << 30),
                        ..file("events.redb", &vec![0u8; 4 << 20])
                    },
                ]
            },
            "decompression bomb",
        ),
        (
            "manifest last",
            {
                let mut v: Vec<Crafted> = rest.iter().map(|(n, b)| file(n, b)).collect();
                v.push(file("manifest.json", &entries[0].1));
                v
            },
            "not manifest.json",
        ),
        (
            "unlisted entry",
            with_rest(vec![
                good_manifest_clone(&entries),
                file("config/extra.toml", b"x"),
            ]),
            "not in the manifest",
        ),
    ];
    let before = snapshot_dir(&data);
    for (what, crafted, expect) in cases {
        let path = outside.path().join("evil.tar.zst");
        write_crafted(&path, &crafted);
        let out = cli(
            &["backup", "restore", path.to_str().unwrap(), "--config"],
            &[&config],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(expect),
            "{what}: expected `{expect}` in: {err}"
        );
        assert!(!victim.exists(), "{what}: wrote outside the data directory");
        assert!(!dir.path().join("pwned").exists() && !outside.path().join("config").exists());
        assert_eq!(
            snapshot_dir(&data),
            before,
            "{what}: the data directory changed"
        );
        // verify refuses it too, through the CLI and (by name in the backup dir) the API.
        let out = cli(
            &["backup", "verify", path.to_str().unwrap(), "--config"],
            &[&config],
        );
        assert_eq!(out.status.code(), Some(1), "{what}");
    }
    // The good one still restores.
    let r = ok(&cli(
        &["backup", "restore", good.to_str().unwrap(), "--config"],
        &[&config],
    ));
    assert!(Path::new(r["previous_store"].as_str().unwrap()).exists());
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().unwrap().starts_with(".restore"))
        .collect();
    assert!(leftovers.is_empty());
}

fn good_manifest_clone(entries: &[(String, Vec<u8>)]) -> Crafted {
    file("manifest.json", &entries[0].1)
}

#[tokio::test]
async fn retention_keeps_by_count_and_age_and_failures_are_events_and_metrics() {
    let up = named_upstream("a", Duration::ZERO).await;
    let extra = "\n[events.backup]\nkeep = 3\nmax_age = \"30d\"\n";
    let gw = TestGateway::start(&base_config(&[up.url()], extra)).await;
    let mut made = Vec::new();
    for _ in 0..4 {
        let r = api(&gw, "POST", "/api/v1/backups", None).await;
        assert_eq!(r.status, 201, "{}", r.text());
        made.push(PathBuf::from(r.json()["file"].as_str().unwrap()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let listed = api(&gw, "GET", "/api/v1/backups", None).await.json();
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{listed}");
    assert!(!made[0].exists());
    // Backups older than max_age go at the next run (the newest always stays).
    let month_ago = std::time::SystemTime::now() - Duration::from_secs(40 * 24 * 3600);
    for f in &made[1..] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(month_ago)
            .unwrap();
    }
    // A temp file left by a killed backup is never listed.
    let dir = made[1].parent().unwrap().to_path_buf();
    std::fs::write(
        dir.join(".backup-2099-01-01T000000.000000Z.tar.zst.tmp"),
        b"partial",
    )
    .unwrap();
    assert_eq!(api(&gw, "POST", "/api/v1/backups", None).await.status, 201);
    let listed = api(&gw, "GET", "/api/v1/backups", None).await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");

    // A failing backup (its directory cannot be created) is a high-risk event, in the
    // stats and the metrics.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let r = api(&gw, "POST", "/api/v1/backups", None).await;
    assert_eq!(r.status, 500, "{}", r.text());
    let failed = events_of(&gw, "backup_failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["risk"], "high");
    let stats = api(&gw, "GET", "/api/v1/stats", None).await.json();
    assert_eq!(
        stats["task_failures"][0]["type"], "backup_failed",
        "{stats}"
    );
    let metrics = admin(&gw, "GET", "/metrics", Some(TOKEN)).await.text();
    assert!(
        metrics.contains("gateway_task_failures_total{task=\"backup\"} 1"),
        "{metrics}"
    );

    // Time parameters past what RFC 3339 can write, or inverted, are a 400, not a panic.
    for q in [
        "until=300000000000",
        "since=99999999999999999",
        "since=2030-01-01T00:00:00Z&until=2029-01-01T00:00:00Z",
    ] {
        let r = api(&gw, "GET", &format!("/api/v1/stats?{q}"), None).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }
    let r = api(&gw, "GET", "/api/v1/events?until=300000000000", None).await;
    assert_eq!(r.status, 400);
    let r = api(&gw, "GET", "/api/v1/perf/slow?since=300000000000", None).await;
    assert_eq!(r.status, 400);
    assert_eq!(api(&gw, "GET", "/api/v1/stats", None).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn archives_are_listed_and_a_restore_checks_the_whole_file_first() {
    let up = named_upstream("a", Duration::ZERO).await;
    let extra = "\n[events.retention]\naudit = \"1s\"\nperformance = \"1s\"\n";
    let gw = TestGateway::start(&base_config(&[up.url()], extra)).await;
    fail_logins(&gw, 3).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = api(&gw, "POST", "/api/v1/archive/run", None).await;
    let file = PathBuf::from(r.json()["archives"][0]["file"].as_str().unwrap());
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let listed = api(&gw, "GET", "/api/v1/archives", None).await.json();
    let item = &listed["items"][0];
    assert_eq!(item["name"], file.file_name().unwrap().to_str().unwrap());
    assert_eq!(item["audit"], 3);
    assert_eq!(item["present"], true);
    assert!(item["oldest"].as_str().unwrap() <= item["newest"].as_str().unwrap());
    let out = cli(&["archive", "list", "--config"], &[&gw.config_path()]);
    assert_eq!(ok(&out)["items"][0]["audit"], 3);

    // An archive whose manifest matches but holds an over-long line, or fewer records than
    // its manifest counts, is refused whole.
    let dir = file.parent().unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            dir.join(
                file.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .replace(".ndjson.zst", ".manifest.json"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    let craft = |name: &str, body: &[u8], records: u64| {
        let path = dir.join(format!("{name}.ndjson.zst"));
        std::fs::write(&path, zstd::encode_all(body, 1).unwrap()).unwrap();
        let mut m = manifest.clone();
        m["sha256"] = json!(sha(&std::fs::read(&path).unwrap()));
        m["audit"] = json!(records);
        m["performance"] = json!(0);
        std::fs::write(dir.join(format!("{name}.manifest.json")), m.to_string()).unwrap();
        format!("{name}.ndjson.zst")
    };
    let original = zstd::decode_all(std::fs::File::open(&file).unwrap()).unwrap();
    let mut long = original.clone();
    long.extend(vec![b'a'; 5 << 20]);
    long.push(b'\n');
    let cases = [
        (craft("archive-long", &long, 4), "longer than"),
        (
            craft("archive-short", &original, 9),
            "the manifest counts 9",
        ),
    ];
    for (name, expect) in cases {
        let r = api(
            &gw,
            "POST",
            "/api/v1/archive/restore",
            Some(json!({"file": name})),
        )
        .await;
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(r.text().contains(expect), "{}", r.text());
    }
    flush(&gw).await;
    assert!(
        events_of(&gw, "admin_auth_failed").await.is_empty(),
        "a refused archive restored records"
    );
    gw.shutdown().await;
}

/// Wall-clock schedules: a cron backup fires at the minute it names, the status shows each
/// job's next run in the configured zone, and bad schedules are named config errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedules_run_at_wall_clock_times_and_show_their_next_run() {
    let up = named_upstream("a", Duration::ZERO).await;
    let extra = r#"
[sessions]
cleanup_schedule = "*/15 * * * *"
cleanup_time_zone = "Asia/Kolkata"

[events.backup]
schedule = "* * * * *"

[events.retention]
schedule = "0 3 * * SUN"
time_zone = "Europe/Paris"
"#;
    let gw = TestGateway::start(&base_config(&[up.url()], extra)).await;
    let started = std::time::SystemTime::now();
    let status = api(&gw, "GET", "/api/v1/status", None).await.json();
    let s = &status["schedules"];
    let next = |job: &str| -> std::time::SystemTime {
        humantime::parse_rfc3339(s[job]["next_run"].as_str().unwrap_or_else(|| panic!("{s}")))
            .unwrap()
    };
    assert_eq!(s["archive"]["time_zone"], "Europe/Paris", "{s}");
    assert_eq!(
        s["archive"]["schedule"], "0 3 * * SUN (Europe/Paris)",
        "{s}"
    );
    // Sunday 03:00 in Paris is 01:00 or 02:00 UTC on a Sunday, within a week.
    let archive = next("archive");
    let secs = archive
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!((secs / 86400 + 4) % 7, 0, "a Sunday: {s}");
    assert!([1, 2].contains(&(secs % 86400 / 3600)), "{s}");
    assert_eq!(secs % 3600, 0, "{s}");
    assert!(archive > started && archive < started + Duration::from_secs(7 * 86400 + 60));
    // Every quarter hour in Kolkata (UTC+05:30) is a quarter hour in UTC too.
    let cleanup = next("session_cleanup");
    let secs = cleanup
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(secs % 900, 0, "{s}");
    assert!(cleanup < started + Duration::from_secs(901), "{s}");
    // The backup runs at the start of the next minute.
    let backup = next("backup");
    assert_eq!(
        backup
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 60,
        0,
        "{s}"
    );
    let deadline = backup + Duration::from_secs(20);
    let made = loop {
        let listed = api(&gw, "GET", "/api/v1/backups", None).await.json();
        if let Some(item) = listed["items"].as_array().and_then(|a| a.first()) {
            break item.clone();
        }
        assert!(
            std::time::SystemTime::now() < deadline,
            "no backup by {}",
            humantime::format_rfc3339_seconds(deadline)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(std::time::SystemTime::now() >= backup, "{made}");
    // ...and the next one is a minute later.
    let status = api(&gw, "GET", "/api/v1/status", None).await.json();
    let again =
        humantime::parse_rfc3339(status["schedules"]["backup"]["next_run"].as_str().unwrap())
            .unwrap();
    assert_eq!(
        again.duration_since(backup).unwrap(),
        Duration::from_secs(60)
    );
    gw.shutdown().await;

    // Mistakes are named by key.
    let bad = |extra: &str| config_errors(&base_config(&[up.url()], extra));
    let e = bad("\n[events.backup]\nevery = \"24h\"\nschedule = \"0 2 * * *\"\n");
    assert_eq!(e[0].key, "events.backup.schedule", "{e:?}");
    assert!(e[0].message.contains("not both"), "{e:?}");
    let e = bad("\n[events.backup]\nschedule = \"0 2 * *\"\n");
    assert_eq!(e[0].key, "events.backup.schedule", "{e:?}");
    let e = bad("\n[events.retention]\nschedule = \"0 2 * * *\"\ntime_zone = \"Mars/Olympus\"\n");
    assert_eq!(e[0].key, "events.retention.time_zone", "{e:?}");
    let e = bad("\n[sessions]\ncleanup_time_zone = \"UTC\"\n");
    assert_eq!(e[0].key, "sessions.cleanup_time_zone", "{e:?}");
    let e = bad("\n[events.backup]\nevery = \"10s\"\n");
    assert_eq!(e[0].key, "events.backup.every", "{e:?}");
}
