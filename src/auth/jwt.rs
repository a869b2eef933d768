//! JWT bearer tokens. Per issuer: an algorithm allow-list (`none` cannot be configured and is
//! never parsed), one key source (HS secret, static public keys, or a JWKS URL), required
//! `exp`, `iss` and `aud`, checked `nbf`, a leeway and an optional maximum lifetime.
//!
//! JWKS documents are cached for `jwks_ttl`. A token with an unknown `kid` triggers a refetch,
//! but at most one per `jwks_cooldown`, and concurrent misses share one fetch (single-flight).
//! When the identity provider is down, the last good key set stays in use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{roles_from_claims, unauthorized, Principal, PrincipalKind};
use crate::config::{Api, JwtIssuer, JwtKeys};
use crate::egress::{Egress, OutboundRequest};
use crate::error::GatewayError;

/// A verification key, with the algorithm its JWK pins (if any).
#[derive(Clone)]
struct KeyEntry {
    key: DecodingKey,
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct JwksState {
    by_kid: HashMap<String, KeyEntry>,
    /// Keys without a `kid`, tried for tokens without one.
    unnamed: Vec<KeyEntry>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// A cached JWKS document.
pub struct JwksCache {
    target: Api,
    ttl: Duration,
    cooldown: Duration,
    state: RwLock<JwksState>,
    /// Held while fetching: concurrent misses wait for one fetch instead of starting many.
    flight: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    egress: Arc<Egress>,
}

impl JwksCache {
    fn lookup(&self, kid: Option<&str>) -> (Vec<KeyEntry>, bool) {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let fresh = s.fetched_at.is_some_and(|t| t.elapsed() < self.ttl);
        let keys = match kid {
            Some(k) => s.by_kid.get(k).cloned().into_iter().collect(),
            None => s.unnamed.clone(),
        };
        (keys, fresh)
    }

    /// Keys for `kid`, fetching the document when it is stale or lacks the kid, subject to the
    /// cooldown.
    async fn keys(&self, kid: Option<&str>) -> Vec<KeyEntry> {
        let (keys, fresh) = self.lookup(kid);
        if fresh && !keys.is_empty() {
            return keys;
        }
        let _flight = self.flight.lock().await;
        // Another caller may have fetched while this one waited.
        let (keys, fresh) = self.lookup(kid);
        if fresh && !keys.is_empty() {
            return keys;
        }
        let cooling = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            s.last_attempt.is_some_and(|t| t.elapsed() < self.cooldown)
        };
        if cooling {
            return keys;
        }
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        // Boxed: the fetch is rare and its future large; inline, every verification's
        // future would carry it.
        match Box::pin(self.fetch()).await {
            Ok((by_kid, unnamed)) => {
                let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
                s.by_kid = by_kid;
                s.unnamed = unnamed;
                s.fetched_at = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(
                    url = %self.target.base.original,
                    error = %e,
                    "JWKS fetch failed; keeping the last good keys"
                );
            }
        }
        self.lookup(kid).0
    }

    #[allow(clippy::type_complexity)]
    async fn fetch(&self) -> Result<(HashMap<String, KeyEntry>, Vec<KeyEntry>), String> {
        let path = self.target.base.request_path();
        let resp = self
            .egress
            .fetch(
                &self.target,
                OutboundRequest {
                    method: http::Method::GET,
                    path_and_query: path,
                    headers: Vec::new(),
                    body: None,
                },
                1 << 20,
            )
            .await
            .map_err(|e| e.to_string())?;
        if resp.status != 200 || resp.truncated {
            return Err(format!("status {}", resp.status));
        }
        let set: JwkSet =
            serde_json::from_slice(&resp.body).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut by_kid = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            let entry = KeyEntry { key, alg };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), entry);
                }
                None => unnamed.push(entry),
            }
        }
        Ok((by_kid, unnamed))
    }

    /// How many fetches were started (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }
}

struct IssuerState {
    cfg: JwtIssuer,
    jwks: Option<JwksCache>,
    validation: Validation,
}

/// Verifies tokens against the configured issuers.
pub struct JwtVerifier {
    issuers: Vec<IssuerState>,
}

impl JwtVerifier {
    pub fn new(issuers: &[JwtIssuer], egress: Arc<Egress>) -> Result<Self, String> {
        let mut out = Vec::new();
        for cfg in issuers {
            let jwks = match &cfg.keys {
                JwtKeys::Jwks { url, ttl, cooldown } => Some(JwksCache {
                    // The identity provider is named by the operator, often inside the network.
                    target: Api::internal("jwks", url, true, Duration::from_secs(5))
                        .map_err(|e| format!("auth.jwt.jwks_url: {e}"))?,
                    ttl: *ttl,
                    cooldown: *cooldown,
                    state: RwLock::default(),
                    flight: tokio::sync::Mutex::new(()),
                    fetches: AtomicU64::new(0),
                    egress: egress.clone(),
                }),
                _ => None,
            };
            let mut validation = Validation::new(Algorithm::HS256);
            validation.set_issuer(&[&cfg.issuer]);
            validation.set_audience(&cfg.audience);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            validation.leeway = cfg.leeway.as_secs();
            validation.validate_nbf = true;
            validation.validate_exp = true;
            out.push(IssuerState {
                cfg: clone_issuer(cfg),
                jwks,
                validation,
            });
        }
        Ok(JwtVerifier { issuers: out })
    }

    /// JWKS fetches started so far, summed over issuers.
    pub fn jwks_fetches(&self) -> u64 {
        self.issuers
            .iter()
            .filter_map(|i| i.jwks.as_ref())
            .map(JwksCache::fetch_count)
            .sum()
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, GatewayError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            if declared_alg(token).is_some_and(|a| a.eq_ignore_ascii_case("none")) {
                unauthorized(
                    crate::error::Reason::AlgorithmNotAllowed,
                    "unsigned tokens (alg none) are never accepted",
                )
            } else {
                unauthorized(
                    crate::error::Reason::MalformedToken,
                    "the bearer token is not a well-formed JWT",
                )
            }
        })?;
        let issuer = match self.issuers.as_slice() {
            [] => {
                return Err(unauthorized(
                    crate::error::Reason::MethodNotEnabled,
                    "bearer tokens are not accepted",
                ))
            }
            // One issuer: no need to peek; validation checks `iss` against it.
            [only] => Some(only),
            list => {
                let iss = jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token)
                    .ok()
                    .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_string));
                iss.and_then(|iss| list.iter().find(|i| i.cfg.issuer == iss))
            }
        }
        .ok_or_else(|| {
            unauthorized(
                crate::error::Reason::InvalidIssuer,
                "the token's issuer is not trusted",
            )
        })?;

        if !issuer.cfg.algorithms.contains(&header.alg) {
            return Err(unauthorized(
                crate::error::Reason::AlgorithmNotAllowed,
                format!("algorithm {:?} is not allowed for this issuer", header.alg),
            ));
        }
        let candidates: Vec<KeyEntry> = match (&issuer.cfg.keys, &issuer.jwks) {
            (JwtKeys::Secret(k), _) => vec![KeyEntry {
                key: k.clone(),
                alg: None,
            }],
            (JwtKeys::Static(keys), _) => keys
                .iter()
                .filter(|k| k.family() == header.alg.family())
                .map(|k| KeyEntry {
                    key: k.clone(),
                    alg: None,
                })
                .collect(),
            (JwtKeys::Jwks { .. }, Some(cache)) => cache.keys(header.kid.as_deref()).await,
            (JwtKeys::Jwks { .. }, None) => Vec::new(),
        };
        let candidates: Vec<KeyEntry> = candidates
            .into_iter()
            .filter(|k| {
                k.alg.is_none_or(|a| a == header.alg) && k.key.family() == header.alg.family()
            })
            .collect();
        if candidates.is_empty() {
            return Err(unauthorized(
                crate::error::Reason::UnknownKey,
                "no trusted key matches the token's kid and algorithm",
            ));
        }
        let mut validation = issuer.validation.clone();
        validation.algorithms = vec![header.alg];
        let mut last = None;
        for k in &candidates {
            match jsonwebtoken::decode::<Value>(token, &k.key, &validation) {
                Ok(data) => return self.principal(issuer, data.claims),
                Err(e) => last = Some(e),
            }
        }
        let e = last.expect("candidates is not empty");
        Err(match e.kind() {
            JwtErrorKind::ExpiredSignature => {
                unauthorized(crate::error::Reason::TokenExpired, "the token has expired")
            }
            JwtErrorKind::ImmatureSignature => unauthorized(
                crate::error::Reason::TokenNotYetValid,
                "the token is not valid yet (nbf)",
            ),
            JwtErrorKind::InvalidAudience => unauthorized(
                crate::error::Reason::InvalidAudience,
                "the token was not issued for this gateway (aud)",
            ),
            JwtErrorKind::InvalidIssuer => unauthorized(
                crate::error::Reason::InvalidIssuer,
                "the token's issuer is not trusted",
            ),
            JwtErrorKind::MissingRequiredClaim(c) => unauthorized(
                crate::error::Reason::MissingClaim,
                format!("the token lacks the required claim {c:?}"),
            ),
            JwtErrorKind::InvalidSignature => unauthorized(
                crate::error::Reason::InvalidSignature,
                "the token's signature is not valid",
            ),
            JwtErrorKind::InvalidAlgorithm => unauthorized(
                crate::error::Reason::AlgorithmNotAllowed,
                "the token's algorithm does not match its key",
            ),
            _ => unauthorized(
                crate::error::Reason::MalformedToken,
                "the bearer token could not be verified",
            ),
        })
    }

    fn principal(&self, issuer: &IssuerState, claims: Value) -> Result<Principal, GatewayError> {
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if let Some(max) = issuer.cfg.max_lifetime {
            let start = claims
                .get("iat")
                .and_then(Value::as_u64)
                .unwrap_or_else(jsonwebtoken::get_current_timestamp);
            if exp.saturating_sub(start) > max.as_secs() {
                return Err(unauthorized(
                    crate::error::Reason::TokenLifetimeTooLong,
                    format!("tokens may live at most {} s", max.as_secs()),
                ));
            }
        }
        let sub = claims.get("sub").and_then(Value::as_str).ok_or_else(|| {
            unauthorized(
                crate::error::Reason::MissingClaim,
                "the token lacks a sub claim",
            )
        })?;
        // A second issuer's ids name it; so does a first issuer's when the subject holds the
        // separator (so `jwt:{sub}` can never read as another issuer's `jwt:{iss}#{sub}`).
        let id = if issuer.cfg.qualified_ids || sub.contains('#') {
            format!("jwt:{}#{sub}", issuer.cfg.issuer)
        } else {
            format!("jwt:{sub}")
        };
        Ok(Principal {
            id,
            kind: PrincipalKind::Jwt,
            roles: roles_from_claims(&claims, issuer.cfg.roles_claim.as_deref()),
            allowed_apis: None,
            key_rate_limit: None,
        })
    }
}

/// `api-gateway-mcp token`: a token this issuer's validation accepts, for development and
/// tests. `secret` signs HS tokens; `pem` (a private key) signs RS, PS, ES and EdDSA ones.
pub fn mint(
    issuer: &JwtIssuer,
    secret: Option<&[u8]>,
    pem: Option<&[u8]>,
    sub: &str,
    roles: &[String],
    ttl: Duration,
) -> Result<String, String> {
    use jsonwebtoken::EncodingKey;
    if let Some(max) = issuer.max_lifetime {
        if ttl > max {
            return Err(format!(
                "--ttl {}s is longer than the issuer's max_lifetime ({}s): the gateway would refuse the token",
                ttl.as_secs(),
                max.as_secs()
            ));
        }
    }
    let alg = *issuer
        .algorithms
        .first()
        .ok_or("the issuer allows no algorithm")?;
    let key = match (alg, secret, pem) {
        (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, Some(s), _) => {
            EncodingKey::from_secret(s)
        }
        (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, None, _) => {
            return Err(format!("{alg:?} needs the shared secret: --secret-env VAR"))
        }
        (Algorithm::ES256 | Algorithm::ES384, _, Some(p)) => {
            EncodingKey::from_ec_pem(p).map_err(|e| format!("--key: not an EC private key: {e}"))?
        }
        (Algorithm::EdDSA, _, Some(p)) => EncodingKey::from_ed_pem(p)
            .map_err(|e| format!("--key: not an Ed25519 private key: {e}"))?,
        (_, _, Some(p)) => EncodingKey::from_rsa_pem(p)
            .map_err(|e| format!("--key: not an RSA private key: {e}"))?,
        (_, _, None) => return Err(format!("{alg:?} needs a private key: --key FILE.pem")),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "iss": issuer.issuer,
        "sub": sub,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    if let Some(aud) = issuer.audience.first() {
        claims["aud"] = Value::String(aud.clone());
    }
    if !roles.is_empty() {
        // A dotted claim (`realm_access.roles`) is nested, as the verifier reads it.
        let claim = issuer.roles_claim.as_deref().unwrap_or("roles");
        let mut slot = &mut claims;
        for part in claim.split('.') {
            if !slot.get(part).is_some_and(Value::is_object) {
                slot[part] = serde_json::json!({});
            }
            slot = &mut slot[part];
        }
        *slot = serde_json::json!(roles);
    }
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).map_err(|e| e.to_string())
}

/// The `alg` a token's header claims, read without trusting it (to name `none` precisely).
fn declared_alg(token: &str) -> Option<String> {
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg").and_then(Value::as_str).map(str::to_string)
}

fn clone_issuer(i: &JwtIssuer) -> JwtIssuer {
    JwtIssuer {
        issuer: i.issuer.clone(),
        audience: i.audience.clone(),
        algorithms: i.algorithms.clone(),
        keys: match &i.keys {
            JwtKeys::Secret(k) => JwtKeys::Secret(k.clone()),
            JwtKeys::Static(k) => JwtKeys::Static(k.clone()),
            JwtKeys::Jwks { url, ttl, cooldown } => JwtKeys::Jwks {
                url: url.clone(),
                ttl: *ttl,
                cooldown: *cooldown,
            },
        },
        leeway: i.leeway,
        qualified_ids: i.qualified_ids,
        max_lifetime: i.max_lifetime,
        roles_claim: i.roles_claim.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(max_lifetime: Option<Duration>) -> JwtVerifier {
        let issuer = JwtIssuer {
            issuer: "https://issuer.test".into(),
            audience: vec!["gw".into()],
            algorithms: vec![Algorithm::HS256],
            keys: JwtKeys::Secret(DecodingKey::from_secret(SECRET.as_bytes())),
            leeway: Duration::from_secs(5),
            max_lifetime,
            roles_claim: None,
            qualified_ids: false,
        };
        JwtVerifier::new(&[issuer], Arc::new(Egress::new())).unwrap()
    }

    fn token(claims: Value, alg: Algorithm, secret: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    async fn reason(v: &JwtVerifier, t: &str) -> &'static str {
        v.verify(t).await.unwrap_err().reason.unwrap().code()
    }

    #[tokio::test]
    async fn the_token_catalogue() {
        let v = verifier(Some(Duration::from_secs(3600)));
        let good = json!({"sub": "alice", "iss": "https://issuer.test", "aud": "gw",
                          "exp": now() + 60, "iat": now(), "roles": ["reader"]});
        let p = v
            .verify(&token(good.clone(), Algorithm::HS256, SECRET))
            .await
            .unwrap();
        assert_eq!(
            (p.id.as_str(), p.roles.as_slice()),
            ("jwt:alice", &["reader".to_string()][..])
        );

        let mut c = good.clone();
        c["exp"] = json!(now() - 60);
        assert_eq!(
            reason(&v, &token(c, Algorithm::HS256, SECRET)).await,
            "token_expired"
        );
        let mut c = good.clone();
        c["nbf"] = json!(now() + 600);
        assert_eq!(
            reason(&v, &token(c, Algorithm::HS256, SECRET)).await,
            "token_not_yet_valid"
        );
        let mut c = good.clone();
        c["aud"] = json!("someone-else");
        assert_eq!(
            reason(&v, &token(c, Algorithm::HS256, SECRET)).await,
            "invalid_audience"
        );
        let mut c = good.clone();
        c["iss"] = json!("https://evil.test");
        assert_eq!(
            reason(&v, &token(c, Algorithm::HS256, SECRET)).await,
            "invalid_issuer"
        );
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            reason(&v, &token(c, Algorithm::HS256, SECRET)).await,
            "missing_claim"
        );
        let mut c = good.clone();
        c["exp"] = json!(now() + 7200);
        assert_eq!(
            reason(&v, &token(c, Algorithm::HS256, SECRET)).await,
            "token_lifetime_too_long"
        );
        let forged = token(
            good.clone(),
            Algorithm::HS256,
            "another-secret-another-secret-xx",
        );
        assert_eq!(reason(&v, &forged).await, "invalid_signature");
        let hs512 = token(good.clone(), Algorithm::HS512, SECRET);
        assert_eq!(reason(&v, &hs512).await, "algorithm_not_allowed");

        // alg none: a header that says so and an empty signature.
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&good)
        );
        assert_eq!(reason(&v, &none).await, "algorithm_not_allowed");
        assert_eq!(reason(&v, "not-a-token").await, "malformed_token");
    }

    #[tokio::test]
    async fn several_issuers_each_with_their_own_keys() {
        let issuer = |iss: &str, secret: &str| JwtIssuer {
            issuer: iss.into(),
            audience: vec!["gw".into()],
            algorithms: vec![Algorithm::HS256],
            keys: JwtKeys::Secret(DecodingKey::from_secret(secret.as_bytes())),
            leeway: Duration::from_secs(5),
            max_lifetime: None,
            roles_claim: None,
            // The second, as from [[auth.jwt_issuers]].
            qualified_ids: iss == "https://b.test",
        };
        let other = "ffffffffffffffffffffffffffffffff";
        let v = JwtVerifier::new(
            &[
                issuer("https://a.test", SECRET),
                issuer("https://b.test", other),
            ],
            Arc::new(Egress::new()),
        )
        .unwrap();
        let claims = |iss: &str| json!({"sub": "s", "iss": iss, "aud": "gw", "exp": now() + 60});
        let a = v
            .verify(&token(claims("https://a.test"), Algorithm::HS256, SECRET))
            .await
            .unwrap();
        let b = v
            .verify(&token(claims("https://b.test"), Algorithm::HS256, other))
            .await
            .unwrap();
        // Two issuers' `sub = "s"` are two principals.
        assert_eq!(a.id, "jwt:s");
        assert_eq!(b.id, "jwt:https://b.test#s");
        // A first-issuer subject that looks like a qualified id is qualified itself.
        let tricky = json!({"sub": "https://b.test#s", "iss": "https://a.test", "aud": "gw", "exp": now() + 60});
        let t = v
            .verify(&token(tricky, Algorithm::HS256, SECRET))
            .await
            .unwrap();
        assert_eq!(t.id, "jwt:https://a.test#https://b.test#s");
        assert_ne!(t.id, b.id);
        // Issuer b's token signed with issuer a's key is forged, and an unknown issuer is refused.
        assert_eq!(
            reason(
                &v,
                &token(claims("https://b.test"), Algorithm::HS256, SECRET)
            )
            .await,
            "invalid_signature"
        );
        assert_eq!(
            reason(
                &v,
                &token(claims("https://c.test"), Algorithm::HS256, SECRET)
            )
            .await,
            "invalid_issuer"
        );
    }
}
