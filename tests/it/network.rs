//! Egress control (`[network] egress_allow`, DNS answers checked at connect) and the
//! Kubernetes NetworkPolicy export.

use std::collections::BTreeSet;
use std::process::Command;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_reached_only_inside_egress_allow_even_through_dns() {
    let up = echo_upstream().await;
    // A host name resolving to loopback, with loopback outside the allowed networks.
    let by_name = format!("http://localhost:{}", up.addr.port());
    let cfg = base_config(
        std::slice::from_ref(&by_name),
        "[network]\negress_allow = [\"10.0.0.0/8\"]\n",
    );
    let gw = TestGateway::start(&cfg).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    let r = s.get("/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(up.hits(), 0, "no connection left the allowed networks");
    gw.shutdown().await;

    let cfg = base_config(
        &[by_name],
        "[network]\negress_allow = [\"127.0.0.0/8\", \"::1/128\"]\n",
    );
    let gw = TestGateway::start(&cfg).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    assert_eq!(s.get("/x").await.status, 200);
    assert_eq!(up.hits(), 1);
    gw.shutdown().await;
}

#[test]
fn egress_errors_are_named_by_key() {
    let errs = config_errors(&base_config(
        &["http://127.0.0.1:9".into()],
        r#"
[network]
egress_allow = ["10.0.0.0/8", "not-a-net"]

[[alerts.webhooks]]
name = "ops"
url = "http://169.254.169.254/hook"
secret_env = "X"
"#,
    ));
    let keys: BTreeSet<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "network.egress_allow[1]",
            "alerts.webhooks[0].url",
            "upstreams[0].servers[0]",
        ]),
        "{errs:?}"
    );
}

#[test]
fn the_network_policy_export_is_a_valid_policy_for_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    let cfg = base_config(
        &[
            "http://10.1.2.3:8080".into(),
            "http://app.internal:9000".into(),
        ],
        r#"
[network]
egress_allow = ["10.0.0.0/8"]

[ip_rules]
default = "deny"

[[ip_rules.rules]]
name = "office"
action = "allow"
cidr = "192.0.2.0/24"

[[alerts.webhooks]]
name = "ops"
url = "https://10.9.9.9/hook"
secret_env = "X"

[cluster]
backend = "redis"
url = "redis://10.7.7.7/0"
"#,
    )
    .replace("127.0.0.1:0\"\ntls = true", "0.0.0.0:8443\"\ntls = true")
    .replace(
        "name = \"http\"\nbind = \"127.0.0.1:0\"",
        "name = \"http\"\nbind = \"0.0.0.0:8080\"",
    )
    .replace("[admin]\n", "[admin]\nmetrics_bind = \"0.0.0.0:9090\"\n");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["export", "networkpolicy", "--namespace", "edge", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let j: serde_json::Value = serde_json::to_value(&p).unwrap();

    // Only fields of the networking.k8s.io/v1 NetworkPolicy schema.
    fn keys(v: &serde_json::Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }
    let set = |ks: &[&str]| ks.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(j["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(j["kind"], "NetworkPolicy");
    assert_eq!(keys(&j), set(&["apiVersion", "kind", "metadata", "spec"]));
    assert_eq!(j["metadata"]["namespace"], "edge");
    let spec = &j["spec"];
    assert!(keys(spec).is_subset(&set(&["podSelector", "policyTypes", "ingress", "egress"])));
    assert_eq!(
        spec["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "gateway"
    );
    let peer_fields = set(&["ipBlock", "namespaceSelector", "podSelector"]);
    let port_fields = set(&["protocol", "port", "endPort"]);
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        for rule in spec[dir].as_array().unwrap() {
            assert!(keys(rule).is_subset(&set(&["ports", peers])), "{rule}");
            for port in rule["ports"].as_array().unwrap() {
                assert!(keys(port).is_subset(&port_fields), "{port}");
                assert!(["TCP", "UDP"].contains(&port["protocol"].as_str().unwrap()));
                assert!(port["port"].as_u64().unwrap() > 0);
            }
            for peer in rule[peers].as_array().into_iter().flatten() {
                assert!(keys(peer).is_subset(&peer_fields), "{peer}");
                if let Some(c) = peer["ipBlock"]["cidr"].as_str() {
                    c.parse::<ipnet::IpNet>().unwrap();
                }
            }
        }
    }
    // Ingress: the listener ports from the allowed ranges (default deny), and metrics.
    let ingress = spec["ingress"].as_array().unwrap();
    let ports: BTreeSet<u64> = ingress[0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, BTreeSet::from([8443, 8080]));
    assert_eq!(ingress[0]["from"][0]["ipBlock"]["cidr"], "192.0.2.0/24");
    assert_eq!(ingress[1]["ports"][0]["port"], 9090);
    // Egress: the literal upstream, the named one within egress_allow, the webhook, the
    // cluster's Redis, DNS.
    let egress = spec["egress"].as_array().unwrap();
    let to = |i: usize| {
        egress[i]["to"][0]["ipBlock"]["cidr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        (to(0), egress[0]["ports"][0]["port"].as_u64()),
        ("10.1.2.3/32".into(), Some(8080))
    );
    assert_eq!(
        (to(1), egress[1]["ports"][0]["port"].as_u64()),
        ("10.0.0.0/8".into(), Some(9000))
    );
    assert_eq!(
        (to(2), egress[2]["ports"][0]["port"].as_u64()),
        ("10.9.9.9/32".into(), Some(443))
    );
    assert_eq!(
        (to(3), egress[3]["ports"][0]["port"].as_u64()),
        ("10.7.7.7/32".into(), Some(6379))
    );
    let dns = &egress[4];
    assert_eq!(dns["ports"].as_array().unwrap().len(), 2);
    assert!(dns["ports"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["port"] == 53));
}
