//! Config errors name file, line, column and key, all at once; `gateway check` and
//! `gateway run` exit 2 on a bad config and bind nothing.

use std::process::Command;

use crate::support::*;

const BAD: &str = r#"[server]
trusted_proxies = ["10.0.0.0/8", "not-a-net"]

[[listeners]]
name = "web"
bind = "127.0.0.1:99999"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
tls = true

[[upstreams]]
name = "app"
servers = ["ftp://nope"]

[[routes]]
name = "r"
path_prefix = "no-slash"
upstream = "missing"
"#;

#[test]
fn every_error_is_reported_with_its_line_and_key() {
    let errs = config_errors(BAD);
    let found: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
    let expect = [
        (2, "server.trusted_proxies[1]"),
        (6, "listeners[0].bind"),
        (9, "listeners[1].name"),
        (11, "listeners[1].tls"),
        (15, "upstreams[0].servers[0]"),
        (19, "routes[0].path_prefix"),
        (20, "routes[0].upstream"),
    ];
    for e in expect {
        assert!(found.contains(&e), "missing {e:?} in {found:?}");
    }
    assert_eq!(errs.len(), expect.len(), "{errs:?}");
    assert!(errs
        .iter()
        .all(|e| e.file.ends_with("bad.toml") && e.column > 0));
    let text = errs[0].to_string();
    assert!(text.contains("bad.toml:2:"), "{text}");
}

#[test]
fn unknown_keys_and_wrong_types_are_located() {
    let errs = config_errors("[server]\naccess_log = true\nacess_log = false\n");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 3);
    assert!(
        errs[0].message.contains("unknown field"),
        "{}",
        errs[0].message
    );

    let errs = config_errors("[timeouts]\nidle = 5\n");
    assert_eq!(errs[0].line, 2);
    assert_eq!(errs[0].key, "timeouts.idle");
}

#[test]
fn admin_on_a_public_address_must_be_asked_for() {
    let cfg = base_config(&["http://127.0.0.1:1".into()], "").replace(
        "bind = \"127.0.0.1:0\"\ntoken",
        "bind = \"0.0.0.0:0\"\ntoken",
    );
    let errs = config_errors(&cfg);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "admin.bind");
}

#[test]
fn check_and_run_exit_2_on_a_bad_config_and_bind_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    // A valid listener on a free port, and one error elsewhere.
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nname = \"http\"\nbind = \"127.0.0.1:{port}\"\n\n[[upstreams]]\nname = \"a\"\nservers = [\"builtin:echo\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"b\"\n"
    );
    std::fs::write(&path, cfg).unwrap();
    let bin = env!("CARGO_BIN_EXE_gateway");
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:11:") && stderr.contains("routes[0].upstream"),
        "{stderr}"
    );

    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    // The port was never bound (we can bind it ourselves).
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port left free");

    let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The container's config is the shipped one rewritten by the Dockerfile's rootfs script:
/// it must stay valid, keep every state path in the volume, and serve metrics where
/// compose.yaml's Prometheus scrapes.
#[test]
fn the_container_config_is_valid_and_compose_scrapes_its_metrics_listener() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = crate::container::assemble_rootfs(
        dir.path(),
        std::path::Path::new(env!("CARGO_BIN_EXE_gateway")),
    );
    // The config with the rules beside it, as the image has them.
    let cfg = rootfs.join("etc/gateway/gateway.toml");
    let loaded = gateway::check_config(&cfg).expect("the container's config is valid");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(!text.contains("\"data/"), "a state path outside the volume");
    assert_eq!(
        loaded.raw.server.data_dir,
        std::path::Path::new("/var/lib/gateway")
    );
    assert_eq!(
        loaded.raw.admin.metrics_bind.as_deref(),
        Some("0.0.0.0:9090")
    );
    assert!(
        loaded.raw.admin.bind.starts_with("127.0.0.1:"),
        "the API stays on loopback"
    );
    assert!(dockerfile.contains("VOLUME /var/lib/gateway"));
    assert!(dockerfile
        .lines()
        .any(|l| l.starts_with("EXPOSE") && l.contains("9090")));

    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("compose.yaml")).unwrap()).unwrap();
    assert!(compose["services"]["gateway"]["volumes"][0]
        .as_str()
        .unwrap()
        .ends_with(":/var/lib/gateway"));
    let scrape: serde_yaml::Value = serde_yaml::from_str(
        compose["configs"]["prometheus"]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        scrape["scrape_configs"][0]["static_configs"][0]["targets"][0],
        "gateway:9090"
    );
}
