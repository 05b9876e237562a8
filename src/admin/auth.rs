//! Who is calling the admin API, and what their role lets them do.
//!
//! Every admin token has a name and a role (`viewer` < `operator` < `admin`, see
//! [`Role`]). `[admin] token` / `token_file` / `GATEWAY_ADMIN_TOKEN` is the token named
//! `admin` with the `admin` role; `[[admin.tokens]]` adds named ones whose secrets live
//! in files or environment variables, never in the config.
//!
//! Only SHA-256 digests of the tokens are kept in memory. A presented token is hashed
//! and compared in constant time with every configured digest (all of them, always), so
//! neither a token's bytes nor which token matched shows in the timing.
//!
//! What each role may do is one table, [`required_role`]: reads are `viewer`;
//! investigations, sessions, bans and IP rules are `operator`; everything else
//! (reload, backups, archives, and any route the table does not name) is `admin` —
//! a new route is admin-only until the table says otherwise.

use std::sync::Arc;

use http::Method;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::StartError;
use crate::runtime::AdminSettings;
use crate::secrets::SecretError;

pub use crate::config::AdminRole as Role;

/// The signed-in holder of a token: what `by` and `assignee` record.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub role: Role,
}

/// One configured token, by digest.
struct Credential {
    name: Arc<str>,
    role: Role,
    digest: [u8; 32],
}

/// Every token the admin API accepts.
#[derive(Default)]
pub struct Credentials {
    tokens: Vec<Credential>,
}

/// A token's secret as read at start (for the command-line client, which must present one).
pub struct Secret {
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// The shortest secret accepted from a file or the environment.
const MIN_TOKEN_LEN: usize = 16;

/// Reads every token's secret: the `admin` token (`GATEWAY_ADMIN_TOKEN`, else
/// `admin.token`, else `admin.token_file`, created when missing), then `[[admin.tokens]]`
/// in config order (files created with a random token when missing).
pub fn read_secrets(admin: &AdminSettings) -> Result<Vec<Secret>, StartError> {
    let mut out = Vec::new();
    if let Some(token) = super::resolve_token(admin)? {
        out.push(Secret {
            name: "admin".into(),
            role: Role::Admin,
            token: token.to_string(),
        });
    }
    for t in &admin.tokens {
        let token = t.source.read().map_err(|e| match e {
            SecretError::File { path, source } => StartError::SecretFile {
                what: "admin token",
                path,
                source,
            },
            e @ SecretError::Env(_) => {
                StartError::AdminToken(format!("admin token `{}`: {e}", t.name))
            }
        })?;
        if token.len() < MIN_TOKEN_LEN {
            return Err(StartError::AdminToken(format!(
                "admin token `{}` is shorter than {MIN_TOKEN_LEN} characters",
                t.name
            )));
        }
        if out.iter().any(|s: &Secret| s.name == t.name) {
            return Err(StartError::AdminToken(format!(
                "two admin tokens are named `{}`",
                t.name
            )));
        }
        if out.iter().any(|s: &Secret| s.token == token) {
            return Err(StartError::AdminToken(format!(
                "admin token `{}` has the same secret as another token",
                t.name
            )));
        }
        out.push(Secret {
            name: t.name.clone(),
            role: t.role,
            token,
        });
    }
    Ok(out)
}

impl Credentials {
    /// Keeps the digests of `secrets` (the secrets themselves are dropped by the caller).
    pub fn new(secrets: &[Secret]) -> Credentials {
        Credentials {
            tokens: secrets
                .iter()
                .map(|s| Credential {
                    name: s.name.as_str().into(),
                    role: s.role,
                    digest: Sha256::digest(s.token.as_bytes()).into(),
                })
                .collect(),
        }
    }

    /// No token configured: the API does not run.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The holder of `presented`, if it is a configured token.
    pub fn identify(&self, presented: &[u8]) -> Option<Caller> {
        if presented.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for t in &self.tokens {
            // Every digest is compared, whichever matched.
            if bool::from(t.digest.ct_eq(&digest)) {
                found = Some(Caller {
                    name: t.name.clone(),
                    role: t.role,
                });
            }
        }
        found
    }

    /// Whether a token is named `name` (assignees must be real operators).
    pub fn knows(&self, name: &str) -> bool {
        self.tokens.iter().any(|t| &*t.name == name)
    }

    /// Names and roles, for the dashboard's assignee list.
    pub fn names(&self) -> impl Iterator<Item = (&str, Role)> {
        self.tokens.iter().map(|t| (&*t.name, t.role))
    }
}

/// The least role that may call `method path` (`path` with or without `/api/v1`).
/// Reads need `viewer`; investigations, sessions, bans and IP rules `operator`;
/// anything else `admin`.
pub fn required_role(method: &Method, path: &str) -> Role {
    let p = path.strip_prefix("/api/v1").unwrap_or(path);
    let mut seg = p.trim_matches('/').split('/');
    let (a, b, c, rest) = (seg.next(), seg.next(), seg.next(), seg.next());
    if rest.is_some() {
        return Role::Admin;
    }
    if *method == Method::GET || *method == Method::HEAD {
        return Role::Viewer;
    }
    match (method.as_str(), a, b, c) {
        // The rule tester changes nothing.
        ("POST", Some("ip-rules"), Some("test"), None) => Role::Viewer,
        ("PATCH", Some("events"), Some(_), None)
        | ("POST", Some("ip-rules"), None, None)
        | ("PATCH" | "DELETE", Some("ip-rules"), Some(_), None)
        | ("POST", Some("bans"), None, None)
        | ("DELETE", Some("bans"), Some(_), None)
        | ("DELETE", Some("sessions"), Some(_), None)
        | ("DELETE", Some("users"), Some(_), Some("sessions" | "lock")) => Role::Operator,
        _ => Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, role: Role, token: &str) -> Secret {
        Secret {
            name: name.into(),
            role,
            token: token.into(),
        }
    }

    #[test]
    fn identifies_each_token_by_its_secret_only() {
        let c = Credentials::new(&[
            secret("admin", Role::Admin, "aaaaaaaaaaaaaaaaaaaa"),
            secret("ana", Role::Operator, "bbbbbbbbbbbbbbbbbbbb"),
            secret("vi", Role::Viewer, "cccccccccccccccccccc"),
        ]);
        let who = |t: &str| {
            c.identify(t.as_bytes())
                .map(|c| (c.name.to_string(), c.role))
        };
        assert_eq!(
            who("bbbbbbbbbbbbbbbbbbbb"),
            Some(("ana".into(), Role::Operator))
        );
        assert_eq!(
            who("cccccccccccccccccccc"),
            Some(("vi".into(), Role::Viewer))
        );
        assert_eq!(
            who("aaaaaaaaaaaaaaaaaaaa"),
            Some(("admin".into(), Role::Admin))
        );
        assert_eq!(who("bbbbbbbbbbbbbbbbbbb"), None);
        assert_eq!(who(""), None);
        assert!(c.knows("ana") && !c.knows("bo"));
    }

    #[test]
    fn the_permission_table() {
        let r = |m: &str, p: &str| required_role(&Method::from_bytes(m.as_bytes()).unwrap(), p);
        for p in [
            "/api/v1/events",
            "/api/v1/events/export",
            "/api/v1/backups",
            "/api/v1/status",
        ] {
            assert_eq!(r("GET", p), Role::Viewer, "{p}");
        }
        assert_eq!(r("POST", "/api/v1/ip-rules/test"), Role::Viewer);
        assert_eq!(r("PATCH", "/api/v1/events/0001"), Role::Operator);
        assert_eq!(r("POST", "/api/v1/ip-rules"), Role::Operator);
        assert_eq!(r("DELETE", "/api/v1/ip-rules/7"), Role::Operator);
        assert_eq!(r("POST", "/api/v1/bans"), Role::Operator);
        assert_eq!(r("DELETE", "/api/v1/bans/10.0.0.1"), Role::Operator);
        assert_eq!(r("DELETE", "/api/v1/sessions/abc"), Role::Operator);
        assert_eq!(r("DELETE", "/api/v1/users/ana/sessions"), Role::Operator);
        assert_eq!(r("DELETE", "/api/v1/users/ana/lock"), Role::Operator);
        for (m, p) in [
            ("POST", "/api/v1/reload"),
            ("POST", "/api/v1/backups"),
            ("POST", "/api/v1/backups/b.tar.zst/verify"),
            ("POST", "/api/v1/archive/run"),
            ("POST", "/api/v1/archive/restore"),
            ("DELETE", "/api/v1/events/1"),
            ("PUT", "/api/v1/bans"),
            ("DELETE", "/api/v1/users/ana/sessions/extra"),
        ] {
            assert_eq!(r(m, p), Role::Admin, "{m} {p}");
        }
    }
}
