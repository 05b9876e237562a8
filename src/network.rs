//! Network policy: where the gateway may connect (egress), and the Kubernetes
//! `NetworkPolicy` that states the same for its pod.
//!
//! `[network] egress_allow` lists the networks upstream servers, their health checks and
//! alert webhooks may reach. Empty (the default) allows everything. With a list, an
//! upstream or webhook whose address is a literal outside it is a config error, and every
//! connection to a host name is checked on the DNS answers at connect: only allowed
//! addresses are tried, and with none the connection fails (a DNS answer pointing inside
//! the network cannot turn the gateway into a proxy to it).
//!
//! `gateway export networkpolicy` writes the pod's policy from the config: ingress to the
//! listener ports (from the IP rules' allowed ranges when the default is deny, from
//! everywhere otherwise) and the metrics port, egress to the upstreams, the webhooks and
//! DNS.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use ipnet::IpNet;
use serde_json::{json, Value};

use crate::config::RawConfig;

/// The networks the gateway may connect to (`None`: anywhere).
#[derive(Debug, Clone, Default)]
pub struct Egress {
    allow: Option<Arc<Vec<IpNet>>>,
}

impl Egress {
    pub fn new(allow: Vec<IpNet>) -> Egress {
        Egress {
            allow: (!allow.is_empty()).then(|| Arc::new(allow)),
        }
    }

    /// Whether the gateway may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)))
    }

    /// The allowed ones of `answers`, or why there is none.
    pub fn filter(
        &self,
        host: &str,
        answers: impl Iterator<Item = SocketAddr>,
    ) -> std::io::Result<Vec<SocketAddr>> {
        let all: Vec<SocketAddr> = answers.collect();
        let allowed: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.allows(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "egress to {host} ({}) is outside [network] egress_allow",
                    all.iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(allowed)
    }

    /// A resolver for the upstream client that drops answers outside the allowed
    /// networks.
    pub fn resolver(&self) -> EgressResolver {
        EgressResolver {
            egress: self.clone(),
            inner: GaiResolver::new(),
        }
    }
}

/// hyper-util's system resolver, with the answers filtered by [`Egress`].
#[derive(Clone)]
pub struct EgressResolver {
    egress: Egress,
    inner: GaiResolver,
}

type Answers = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for EgressResolver {
    type Response = Answers;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Answers, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let egress = self.egress.clone();
        let host = name.as_str().to_string();
        let lookup = self.inner.call(name);
        Box::pin(async move {
            let answers = lookup.await?;
            Ok(egress.filter(&host, answers)?.into_iter())
        })
    }
}

/// `host:port` of an `http(s)://` URL (default ports filled in).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let default = match uri.scheme_str()? {
        "http" => 80,
        "https" => 443,
        "redis" | "rediss" => 6379,
        _ => return None, // builtin:echo: nothing to reach
    };
    let port = uri.port_u16().unwrap_or(default);
    Some((uri.host()?.trim_matches(['[', ']']).to_string(), port))
}

fn port_of(bind: &str) -> Option<u16> {
    bind.parse::<SocketAddr>().ok().map(|a| a.port())
}

/// An egress rule to `host:port`: the address itself when it is a literal, else the
/// allowed networks (or anywhere) on that port.
fn egress_to(host: &str, port: u16, allow: &[IpNet]) -> Value {
    let blocks: Vec<Value> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![json!({"ipBlock": {"cidr": IpNet::from(ip).to_string()}})],
        Err(_) if !allow.is_empty() => allow
            .iter()
            .map(|n| json!({"ipBlock": {"cidr": n.to_string()}}))
            .collect(),
        Err(_) => vec![
            json!({"ipBlock": {"cidr": "0.0.0.0/0"}}),
            json!({"ipBlock": {"cidr": "::/0"}}),
        ],
    };
    json!({"to": blocks, "ports": [{"protocol": "TCP", "port": port}]})
}

/// The Kubernetes `NetworkPolicy` (networking.k8s.io/v1) for the gateway's pod, selected
/// by `pod_label` (`key=value`).
pub fn network_policy(
    raw: &RawConfig,
    namespace: &str,
    name: &str,
    pod_label: (&str, &str),
) -> Value {
    let allow: Vec<IpNet> = raw
        .network
        .egress_allow
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let ports: Vec<Value> = raw
        .listeners
        .iter()
        .filter_map(|l| port_of(&l.bind))
        .map(|p| json!({"protocol": "TCP", "port": p}))
        .collect();
    let mut rule = json!({"ports": ports});
    if raw.ip_rules.default == crate::ip_rules::Action::Deny {
        let from: Vec<Value> = raw
            .ip_rules
            .rules
            .iter()
            .filter(|r| r.action == crate::ip_rules::Action::Allow)
            .filter_map(|r| r.cidr.parse::<IpNet>().ok())
            .map(|n| json!({"ipBlock": {"cidr": n.to_string()}}))
            .collect();
        rule["from"] = Value::Array(from);
    }
    let mut ingress = vec![rule];
    if let Some(port) = raw.admin.metrics_bind.as_deref().and_then(port_of) {
        ingress.push(json!({"ports": [{"protocol": "TCP", "port": port}]}));
    }
    let mut egress = Vec::new();
    for u in &raw.upstreams {
        for s in &u.servers {
            if let Some((host, port)) = host_port(s) {
                egress.push(egress_to(&host, port, &allow));
            }
        }
    }
    for w in &raw.alerts.webhooks {
        if let Some((host, port)) = host_port(&w.url) {
            egress.push(egress_to(&host, port, &allow));
        }
    }
    for url in raw.cluster.iter().flat_map(|c| c.urls()) {
        if let Some((host, port)) = host_port(url) {
            egress.push(egress_to(&host, port, &allow));
        }
    }
    egress.push(json!({
        "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }));
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {pod_label.0: pod_label.1}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_filters_answers_and_maps_v4_in_v6() {
        let e = Egress::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        assert!(e.allows("10.1.2.3".parse().unwrap()));
        assert!(e.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!e.allows("169.254.169.254".parse().unwrap()));
        let answers = ["169.254.169.254:80", "10.0.0.5:80"]
            .iter()
            .map(|a| a.parse().unwrap());
        assert_eq!(
            e.filter("h", answers).unwrap(),
            ["10.0.0.5:80".parse().unwrap()]
        );
        let err = e
            .filter(
                "metadata",
                ["169.254.169.254:80".parse().unwrap()].into_iter(),
            )
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(Egress::default().allows("169.254.169.254".parse().unwrap()));
    }
}
