//! Gateway-issued session cookies: `KID.ID.MAC`, where ID is a random 128-bit session id
//! and MAC the first 128 bits of HMAC-SHA256 over `KID.ID` with the key named KID.
//!
//! Keys come from config, newest first: the first signs, every listed key verifies, so a
//! key is rotated by adding a new one in front and removing the old one once its sessions
//! have expired. A cookie is checked here, without a table lookup, before the revocation
//! check; tampered values and retired keys fail. Cost: one HMAC (two SHA-256 blocks with
//! the key's inner and outer states precomputed) and a constant-time comparison.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{ConfigErrors, KeyPath, LoadedConfig, SigningKeySection};

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET: usize = 32;

/// Why a signed cookie was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignedError {
    #[error("malformed session cookie")]
    Malformed,
    #[error("session cookie signed with an unknown or retired key")]
    UnknownKey,
    #[error("session cookie signature does not match")]
    BadSignature,
}

/// The signing keys of one app.
#[derive(Clone, Default)]
pub struct SigningKeys {
    keys: Vec<(String, HmacSha256)>,
}

impl SigningKeys {
    pub fn compile(
        cfg: &LoadedConfig,
        errs: &mut ConfigErrors,
        at: &KeyPath,
        raw: &[SigningKeySection],
    ) -> SigningKeys {
        let mut keys = Vec::new();
        for (i, k) in raw.iter().enumerate() {
            let kat = at.index(i);
            if k.id.is_empty()
                || k.id.len() > 16
                || !k
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                errs.push(cfg.error(&kat.key("id"), "1 to 16 letters, digits, `-` or `_`"));
                continue;
            }
            if keys.iter().any(|(id, _)| id == &k.id) {
                errs.push(cfg.error(&kat.key("id"), format!("key `{}` is listed twice", k.id)));
                continue;
            }
            let secret = match (&k.secret, &k.secret_file) {
                (Some(s), None) => s.trim().as_bytes().to_vec(),
                (None, Some(f)) => match std::fs::read_to_string(cfg.resolve(f)) {
                    Ok(s) => s.trim().as_bytes().to_vec(),
                    Err(e) => {
                        errs.push(cfg.error(
                            &kat.key("secret_file"),
                            format!("cannot read {}: {e}", cfg.resolve(f).display()),
                        ));
                        continue;
                    }
                },
                _ => {
                    errs.push(cfg.error(&kat, "give exactly one of secret and secret_file"));
                    continue;
                }
            };
            if secret.len() < MIN_SECRET {
                errs.push(cfg.error(
                    &kat,
                    format!("the secret must be at least {MIN_SECRET} bytes"),
                ));
                continue;
            }
            keys.push((k.id.clone(), key(&secret)));
        }
        SigningKeys { keys }
    }

    /// Keys from raw secrets (tests and benches).
    pub fn from_secrets(keys: &[(&str, &[u8])]) -> SigningKeys {
        SigningKeys {
            keys: keys
                .iter()
                .map(|(id, s)| (id.to_string(), key(s)))
                .collect(),
        }
    }

    /// The cookie value for session `id`, signed with the newest key.
    pub fn sign(&self, id: u128) -> Option<String> {
        let (kid, key) = self.keys.first()?;
        let mut value = format!("{kid}.{id:032x}.");
        let mac = mac(key, value.as_bytes()[..value.len() - 1].as_ref());
        for b in mac {
            let _ = write!(value, "{b:02x}");
        }
        Some(value)
    }

    /// The session id in a cookie value, when its signature holds.
    pub fn verify(&self, value: &[u8]) -> Result<u128, SignedError> {
        let mut parts = value.rsplitn(2, |&b| b == b'.');
        let (Some(sig), Some(signed)) = (parts.next(), parts.next()) else {
            return Err(SignedError::Malformed);
        };
        let dot = signed
            .iter()
            .position(|&b| b == b'.')
            .ok_or(SignedError::Malformed)?;
        let (kid, id_hex) = (&signed[..dot], &signed[dot + 1..]);
        if id_hex.len() != 32 || sig.len() != 32 {
            return Err(SignedError::Malformed);
        }
        let id = u128::from_be_bytes(hex16(id_hex).ok_or(SignedError::Malformed)?);
        let given = hex16(sig).ok_or(SignedError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|(k, _)| k.as_bytes() == kid)
            .map(|(_, k)| k)
            .ok_or(SignedError::UnknownKey)?;
        let expected = mac(key, signed);
        if subtle::ConstantTimeEq::ct_eq(&expected[..], &given[..]).into() {
            Ok(id)
        } else {
            Err(SignedError::BadSignature)
        }
    }
}

/// 32 lowercase or uppercase hex digits as 16 bytes.
fn hex16(hex: &[u8]) -> Option<[u8; 16]> {
    use crate::waf::transform::hex_val as nibble;
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn key(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes any key length")
}

fn mac(key: &HmacSha256, data: &[u8]) -> [u8; 16] {
    let mut m = key.clone();
    m.update(data);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifies_and_refuses_tampering_and_retired_keys() {
        let old = SigningKeys::from_secrets(&[("k1", &[1u8; 32])]);
        let rotated = SigningKeys::from_secrets(&[("k2", &[2u8; 32]), ("k1", &[1u8; 32])]);
        let retired = SigningKeys::from_secrets(&[("k2", &[2u8; 32])]);
        let id = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        let v = old.sign(id).unwrap();
        assert!(v.starts_with("k1."));
        assert_eq!(old.verify(v.as_bytes()), Ok(id));
        assert_eq!(rotated.verify(v.as_bytes()), Ok(id));
        assert!(rotated.sign(id).unwrap().starts_with("k2."));
        assert_eq!(retired.verify(v.as_bytes()), Err(SignedError::UnknownKey));

        // Another session id under the same signature.
        let mut forged = v.clone().into_bytes();
        let i = 3 + 31;
        forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
        assert_eq!(old.verify(&forged), Err(SignedError::BadSignature));
        // The key id swapped for another valid one.
        let swapped = v.replacen("k1.", "k2.", 1);
        assert_eq!(
            rotated.verify(swapped.as_bytes()),
            Err(SignedError::BadSignature)
        );
        for bad in ["", "k1", "k1..", "k1.zz.zz", &v[..v.len() - 1]] {
            assert_eq!(
                old.verify(bad.as_bytes()),
                Err(SignedError::Malformed),
                "{bad}"
            );
        }
    }
}
