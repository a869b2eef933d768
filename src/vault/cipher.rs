//! Sealing per-caller secrets at rest: AES-256-GCM (the `aes-gcm` crate) under the
//! `[credential_store]` key, with a fresh random nonce per record. A record names the key it
//! was sealed under (the first 8 hex digits of the key's SHA-256), so records sealed under an
//! `old_key_envs` key still open, and `credentials rotate-key` can find and re-seal them. The
//! record's slot (API and principal) is bound in as associated data: a record copied to
//! another principal's slot does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The keys that seal and open records: the current one first.
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

/// A key's id: the first 8 hex digits of its SHA-256.
pub fn key_id(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

/// What a sealed record's slot binds: the API and the principal, unambiguously joined.
fn slot(api: &str, principal: &str) -> Vec<u8> {
    format!("agm-credential\u{0}{api}\u{0}{principal}").into_bytes()
}

impl Keyring {
    pub fn new(current: &[u8; 32], old: &[[u8; 32]]) -> Keyring {
        let keys = std::iter::once(current)
            .chain(old.iter())
            .map(|k| (key_id(k), Aes256Gcm::new(k.into())))
            .collect();
        Keyring { keys }
    }

    /// The id of the key new records are sealed under.
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    /// `v1.{key id}.{base64url(nonce ‖ ciphertext ‖ tag)}`.
    pub fn seal(&self, api: &str, principal: &str, plaintext: &[u8]) -> Result<String, String> {
        let (kid, cipher) = &self.keys[0];
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness for a nonce: {e}"))?;
        let aad = slot(api, principal);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("v1.{kid}.{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens a record sealed for this slot; also says whether it was sealed under an old key.
    pub fn open(
        &self,
        api: &str,
        principal: &str,
        sealed: &str,
    ) -> Result<(Vec<u8>, bool), String> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("the record is not in a format this gateway writes".into());
        };
        let Some(i) = self.keys.iter().position(|(k, _)| k == kid) else {
            return Err(format!(
                "the record is sealed under key {kid}, which is neither credential_store.key_env nor in old_key_envs"
            ));
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "the record is damaged".to_string())?;
        if bytes.len() < 12 + 16 {
            return Err("the record is damaged".into());
        }
        let (nonce, ct) = bytes.split_at(12);
        let aad = slot(api, principal);
        let plain = self.keys[i]
            .1
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| "the record does not open: damaged, or not this slot's".to_string())?;
        Ok((plain, i != 0))
    }
}

/// A secret's fingerprint, safe to show: the first 8 hex digits of its SHA-256.
pub fn fingerprint(secret: &[u8]) -> String {
    hex::encode(&Sha256::digest(secret)[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_open_only_in_their_slot_and_under_a_known_key() {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let old = Keyring::new(&k1, &[]);
        let sealed = old.seal("github", "jwt:alice", b"ghp_secret").unwrap();
        assert!(!sealed.contains("ghp_secret"));
        assert_eq!(
            old.open("github", "jwt:alice", &sealed).unwrap(),
            (b"ghp_secret".to_vec(), false)
        );
        // Another principal's slot, or another API's, does not open it.
        assert!(old.open("github", "jwt:bob", &sealed).is_err());
        assert!(old.open("gitlab", "jwt:alice", &sealed).is_err());
        // After rotation the old key still opens it, and says so.
        let rotated = Keyring::new(&k2, &[k1]);
        assert!(rotated.open("github", "jwt:alice", &sealed).unwrap().1);
        let resealed = rotated.seal("github", "jwt:alice", b"ghp_secret").unwrap();
        let only_new = Keyring::new(&k2, &[]);
        assert!(only_new
            .open("github", "jwt:alice", &sealed)
            .unwrap_err()
            .contains(&key_id(&k1)));
        assert_eq!(
            only_new.open("github", "jwt:alice", &resealed).unwrap().0,
            b"ghp_secret"
        );
        // A flipped byte is caught by the tag.
        let mut bad = resealed.clone().into_bytes();
        let n = bad.len() - 3;
        bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
        assert!(only_new
            .open("github", "jwt:alice", &String::from_utf8(bad).unwrap())
            .is_err());
    }
}
