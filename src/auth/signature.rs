//! HMAC-SHA256 request signatures with replay protection.
//!
//! A signed request carries five headers:
//! - `X-Signature-Key-Id`: the id of a key in `security.signatures.keys`;
//! - `X-Signature-Timestamp`: Unix seconds; accepted within ±`max_skew` (default 300 s);
//! - `X-Signature-Nonce`: 16 to 128 characters of `[A-Za-z0-9_-]`, never reused;
//! - `X-Content-SHA256`: lower-case hex SHA-256 of the request body (of nothing, when empty);
//! - `X-Signature`: lower-case hex HMAC-SHA256(secret, canonical string).
//!
//! The canonical string is these lines joined by `\n`, with no trailing newline:
//! ```text
//! AGM-HMAC-SHA256
//! {key id}
//! {timestamp}
//! {nonce}
//! {METHOD}
//! {path, exactly as sent, e.g. /github/user or /mcp}
//! {query string as sent, without '?', or empty}
//! {X-Content-SHA256}
//! ```
//! The body itself is checked against `X-Content-SHA256` by the door that reads it. SHA-1 is
//! never used. Nonces are remembered for twice the skew: in memory, or in Redis when the rate
//! limiter uses Redis, so that a replay to another replica is caught too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use subtle::ConstantTimeEq;

use super::unauthorized;
use crate::config::Signatures;
use crate::error::{ErrorKind, GatewayError};
use crate::ratelimit::Limiter;

pub const KEY_ID: &str = "x-signature-key-id";
pub const TIMESTAMP: &str = "x-signature-timestamp";
pub const NONCE: &str = "x-signature-nonce";
pub const CONTENT_SHA256: &str = "x-content-sha256";
pub const SIGNATURE: &str = "x-signature";
/// Every signature header: consumed by the gateway, never forwarded.
pub const HEADERS: &[&str] = &[KEY_ID, TIMESTAMP, NONCE, CONTENT_SHA256, SIGNATURE];

/// A verified signature.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key_id: String,
    /// The body digest the signature covers; the door checks the body against it.
    pub content_sha256: [u8; 32],
}

/// The canonical string a signature covers.
pub fn canonical(
    key_id: &str,
    timestamp: &str,
    nonce: &str,
    method: &str,
    path: &str,
    query: &str,
    content_sha256: &str,
) -> String {
    format!("AGM-HMAC-SHA256\n{key_id}\n{timestamp}\n{nonce}\n{method}\n{path}\n{query}\n{content_sha256}")
}

/// Signs a canonical string (for clients, tests and the docs' examples).
pub fn sign(secret: &[u8], canonical: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key size");
    mac.update(canonical.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub struct SignatureVerifier {
    local_nonces: Mutex<HashMap<String, Instant>>,
}

impl Default for SignatureVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl SignatureVerifier {
    pub fn new() -> Self {
        SignatureVerifier {
            local_nonces: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies the request's signature. `Ok(None)`: the request carries no signature headers
    /// at all. Any signature header present makes the whole set mandatory and checked.
    pub async fn verify(
        &self,
        cfg: &Signatures,
        limiter: &Limiter,
        method: &str,
        path: &str,
        query: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Verified>, GatewayError> {
        if !HEADERS.iter().any(|h| headers.contains_key(*h)) {
            return Ok(None);
        }
        if cfg.keys.is_empty() {
            return Err(unauthorized(
                crate::error::Reason::SignatureInvalid,
                "request signatures are not configured on this gateway",
            ));
        }
        let get = |name: &str| -> Result<&str, GatewayError> {
            let mut all = headers.get_all(name).iter();
            match (all.next(), all.next()) {
                (Some(v), None) => v.to_str().map_err(|_| {
                    unauthorized(
                        crate::error::Reason::SignatureInvalid,
                        format!("{name} is not text"),
                    )
                }),
                (None, _) => Err(unauthorized(
                    crate::error::Reason::SignatureMissing,
                    format!("a signed request needs the {name} header"),
                )),
                (Some(_), Some(_)) => Err(unauthorized(
                    crate::error::Reason::SignatureInvalid,
                    format!("more than one {name} header"),
                )),
            }
        };
        let (key_id, ts, nonce, digest, sig) = (
            get(KEY_ID)?,
            get(TIMESTAMP)?,
            get(NONCE)?,
            get(CONTENT_SHA256)?,
            get(SIGNATURE)?,
        );
        let ts_val: i64 = ts.parse().map_err(|_| {
            unauthorized(
                crate::error::Reason::SignatureInvalid,
                "X-Signature-Timestamp must be Unix seconds",
            )
        })?;
        let now = jsonwebtoken::get_current_timestamp() as i64;
        if (now - ts_val).unsigned_abs() > cfg.max_skew.as_secs() {
            return Err(unauthorized(
                crate::error::Reason::SignatureExpired,
                format!(
                    "the signature timestamp is more than {} s from the gateway's clock",
                    cfg.max_skew.as_secs()
                ),
            ));
        }
        if !(16..=128).contains(&nonce.len())
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(unauthorized(
                crate::error::Reason::SignatureInvalid,
                "X-Signature-Nonce must be 16-128 characters of [A-Za-z0-9_-]",
            ));
        }
        let mut content = [0u8; 32];
        hex::decode_to_slice(digest, &mut content).map_err(|_| {
            unauthorized(
                crate::error::Reason::SignatureInvalid,
                "X-Content-SHA256 must be 64 hex characters",
            )
        })?;
        let Some((_, secret)) = cfg.keys.iter().find(|(id, _)| id == key_id) else {
            return Err(unauthorized(
                crate::error::Reason::SignatureInvalid,
                "the signature is not valid",
            ));
        };
        let expected = sign(
            secret,
            &canonical(
                key_id,
                ts,
                nonce,
                method,
                path,
                query,
                &digest.to_ascii_lowercase(),
            ),
        );
        if !bool::from(
            expected
                .as_bytes()
                .ct_eq(sig.to_ascii_lowercase().as_bytes()),
        ) {
            return Err(unauthorized(
                crate::error::Reason::SignatureInvalid,
                "the signature is not valid",
            ));
        }
        // Only a valid signature may claim its nonce, so forgeries cannot burn nonces.
        let ttl = cfg.max_skew * 2;
        let fresh = self
            .claim(limiter, &format!("{key_id}:{nonce}"), ttl)
            .await?;
        if !fresh {
            return Err(unauthorized(
                crate::error::Reason::SignatureReplayed,
                "this signature's nonce was already used",
            ));
        }
        Ok(Some(Verified {
            key_id: key_id.to_string(),
            content_sha256: content,
        }))
    }

    async fn claim(
        &self,
        limiter: &Limiter,
        key: &str,
        ttl: Duration,
    ) -> Result<bool, GatewayError> {
        if let Some(redis) = limiter.redis() {
            match redis.claim_nonce(key, ttl).await {
                Ok(fresh) => return Ok(fresh),
                Err(deny) if deny => {
                    return Err(GatewayError::new(
                        ErrorKind::LimiterUnavailable,
                        "the shared nonce store is unavailable; signed requests are refused until it recovers",
                    ))
                }
                Err(_) => {} // on_error = local/allow: remember the nonce locally instead
            }
        }
        let now = Instant::now();
        let mut set = self.local_nonces.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() > 100_000 {
            set.retain(|_, until| *until > now);
        }
        match set.get(key) {
            Some(until) if *until > now => Ok(false),
            _ => {
                set.insert(key.to_string(), now + ttl);
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Signatures {
        Signatures {
            required: false,
            keys: vec![("k1".into(), b"0123456789abcdef0123456789abcdef".to_vec())],
            max_skew: Duration::from_secs(300),
        }
    }

    fn signed(ts: i64, nonce: &str, secret: &[u8], path: &str) -> HeaderMap {
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b""));
        let c = canonical("k1", &ts.to_string(), nonce, "GET", path, "a=1", &digest);
        let mut h = HeaderMap::new();
        h.insert(KEY_ID, "k1".parse().unwrap());
        h.insert(TIMESTAMP, ts.to_string().parse().unwrap());
        h.insert(NONCE, nonce.parse().unwrap());
        h.insert(CONTENT_SHA256, digest.parse().unwrap());
        h.insert(SIGNATURE, sign(secret, &c).parse().unwrap());
        h
    }

    #[tokio::test]
    async fn valid_stale_forged_and_replayed_signatures() {
        let v = SignatureVerifier::new();
        let l = Limiter::memory();
        let c = cfg();
        let secret = &c.keys[0].1.clone();
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let check = |h: HeaderMap, path: &'static str| {
            let (v, l, c) = (&v, &l, &c);
            async move { v.verify(c, l, "GET", path, "a=1", &h).await }
        };
        assert!(check(HeaderMap::new(), "/x").await.unwrap().is_none());
        let h = signed(now, "nonce-0000000001", secret, "/x");
        assert!(check(h.clone(), "/x").await.unwrap().is_some());
        let reason =
            |r: Result<Option<Verified>, GatewayError>| r.unwrap_err().reason.unwrap().code();
        assert_eq!(reason(check(h, "/x").await), "signature_replayed");
        let h = signed(now - 301, "nonce-0000000002", secret, "/x");
        assert_eq!(reason(check(h, "/x").await), "signature_expired");
        let h = signed(
            now,
            "nonce-0000000003",
            b"wrong-secret-wrong-secret-wrong!!",
            "/x",
        );
        assert_eq!(reason(check(h, "/x").await), "signature_invalid");
        // Signed for one path, replayed against another.
        let h = signed(now, "nonce-0000000004", secret, "/x");
        assert_eq!(reason(check(h, "/y").await), "signature_invalid");
        let mut h = signed(now, "nonce-0000000005", secret, "/x");
        h.remove(NONCE);
        assert_eq!(reason(check(h, "/x").await), "signature_missing");
    }
}
