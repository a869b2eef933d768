//! API keys. Config holds only `key_sha256` (or `key_hmac` = HMAC-SHA256(pepper, key)); a
//! presented key is hashed and compared with every configured digest in constant time.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{unauthorized, Principal, PrincipalKind};
use crate::config::ApiKey;
use crate::error::GatewayError;

/// Prefix of generated keys, so that secret scanners can recognise a leaked one.
pub const KEY_PREFIX: &str = "agm_";

pub struct KeyStore {
    keys: Vec<ApiKey>,
    pepper: Option<String>,
}

/// The digest stored in config for `key`.
pub fn digest(key: &str, pepper: Option<&str>) -> [u8; 32] {
    match pepper {
        Some(p) => {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(p.as_bytes()).expect("HMAC takes keys of any size");
            mac.update(key.as_bytes());
            mac.finalize().into_bytes().into()
        }
        None => Sha256::digest(key.as_bytes()).into(),
    }
}

/// A new random key (256 bits from the OS) and its digest as hex.
pub fn generate(pepper: Option<&str>) -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness available: {e}"))?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hex = hex::encode(digest(&key, pepper));
    Ok((key, hex))
}

impl KeyStore {
    pub fn new(keys: Vec<ApiKey>, pepper: Option<String>) -> Self {
        KeyStore { keys, pepper }
    }

    /// Finds the key's entry. Every digest is compared, whether or not an earlier one
    /// matched, so timing reveals nothing about which entry (if any) is close.
    pub fn verify(&self, presented: &str) -> Result<Principal, GatewayError> {
        if presented.is_empty() || presented.len() > 512 {
            return Err(unauthorized(
                crate::error::Reason::InvalidApiKey,
                "the API key is not valid",
            ));
        }
        let d = digest(presented, self.pepper.as_deref());
        let mut found: Option<&ApiKey> = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(k);
            }
        }
        match found {
            None => Err(unauthorized(
                crate::error::Reason::InvalidApiKey,
                "the API key is not valid",
            )),
            Some(k) if k.revoked => Err(unauthorized(
                crate::error::Reason::RevokedApiKey,
                "the API key has been revoked",
            )),
            Some(k) => Ok(Principal {
                id: format!("key:{}", k.name),
                kind: PrincipalKind::ApiKey,
                roles: k.roles.clone(),
                allowed_apis: k.allowed_apis.clone(),
                key_rate_limit: k.rate_limit.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, key: &str, pepper: Option<&str>, revoked: bool) -> ApiKey {
        ApiKey {
            name: name.into(),
            digest: digest(key, pepper),
            roles: vec!["r".into()],
            allowed_apis: None,
            revoked,
            rate_limit: None,
        }
    }

    #[test]
    fn keys_verify_by_digest_and_revocation_is_reported() {
        let store = KeyStore::new(
            vec![
                entry("a", "key-a", None, false),
                entry("b", "key-b", None, true),
            ],
            None,
        );
        assert_eq!(store.verify("key-a").unwrap().id, "key:a");
        assert_eq!(
            store
                .verify("key-b")
                .unwrap_err()
                .reason
                .map(crate::error::Reason::code),
            Some("revoked_api_key")
        );
        assert_eq!(
            store
                .verify("key-c")
                .unwrap_err()
                .reason
                .map(crate::error::Reason::code),
            Some("invalid_api_key")
        );
        assert_eq!(
            store
                .verify("")
                .unwrap_err()
                .reason
                .map(crate::error::Reason::code),
            Some("invalid_api_key")
        );
    }

    #[test]
    fn pepper_changes_the_digest() {
        let store = KeyStore::new(
            vec![entry("p", "key", Some("pepper"), false)],
            Some("pepper".into()),
        );
        assert!(store.verify("key").is_ok());
        let unpeppered = KeyStore::new(vec![entry("p", "key", Some("pepper"), false)], None);
        assert!(unpeppered.verify("key").is_err());
    }

    #[test]
    fn generated_keys_are_unique_and_match_their_digest() {
        let (k1, h1) = generate(None).unwrap();
        let (k2, _) = generate(None).unwrap();
        assert_ne!(k1, k2);
        assert!(k1.starts_with(KEY_PREFIX) && k1.len() == KEY_PREFIX.len() + 43);
        assert_eq!(h1, hex::encode(Sha256::digest(k1.as_bytes())));
    }
}
