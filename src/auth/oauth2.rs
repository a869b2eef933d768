//! Opaque bearer tokens checked by OAuth 2.0 token introspection (RFC 7662). Answers are
//! cached for `cache_ttl` (never past the token's own `exp`), keyed by the token's SHA-256 so
//! that no token is held in memory as text. Negative answers are cached too, so a flood of
//! bad tokens does not become a flood of introspection calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{roles_from_claims, unauthorized, Principal, PrincipalKind};
use crate::config::{Api, OAuth2};
use crate::egress::{Egress, OutboundRequest};
use crate::error::{ErrorKind, GatewayError};

/// Entries kept at most; the cache is cleared of expired entries (or wholly) beyond this.
const MAX_ENTRIES: usize = 10_000;

type Verdict = Result<Principal, GatewayError>;

/// `application/x-www-form-urlencoded` (WHATWG URL §5.2): everything but ASCII alphanumerics
/// and `*-._` is percent-encoded.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// `Content-Type: application/x-www-form-urlencoded`.
pub fn form_content_type() -> (http::HeaderName, http::HeaderValue) {
    (
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-www-form-urlencoded"),
    )
}

/// A form body from `(name, value)` pairs.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, FORM),
                utf8_percent_encode(v, FORM)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `client_secret_basic` (RFC 6749 §2.3.1): the id and secret form-encoded, then Basic. The
/// header value is marked sensitive.
pub fn client_basic(id: &str, secret: Option<&str>) -> (http::HeaderName, http::HeaderValue) {
    let enc = |s: &str| utf8_percent_encode(s, FORM).to_string();
    let pair = format!("{}:{}", enc(id), enc(secret.unwrap_or("")));
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    let mut v = http::HeaderValue::from_str(&value)
        .unwrap_or_else(|_| http::HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    (http::header::AUTHORIZATION, v)
}

pub struct Introspector {
    cfg: OAuth2,
    target: Api,
    egress: Arc<Egress>,
    cache: Mutex<HashMap<[u8; 32], (Instant, Verdict)>>,
}

impl Introspector {
    pub fn new(cfg: OAuth2, egress: Arc<Egress>) -> Result<Self, String> {
        let target = Api::internal(
            "oauth2-introspection",
            &cfg.introspection_url,
            cfg.allow_private_network,
            cfg.timeout,
        )
        .map_err(|e| format!("auth.oauth2.introspection_url: {e}"))?;
        Ok(Introspector {
            cfg,
            target,
            egress,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub async fn introspect(&self, token: &str) -> Verdict {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((until, v)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if *until > now {
                return v.clone();
            }
        }
        let (verdict, ttl) = match self.call(token).await {
            Ok(v) => v,
            // The identity provider being down is not the caller's fault, and is not cached.
            Err(e) => return Err(e),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (now + ttl, verdict.clone()));
        verdict
    }

    async fn call(&self, token: &str) -> Result<(Verdict, Duration), GatewayError> {
        let form = form_encode(&[("token", token), ("token_type_hint", "access_token")]);
        let mut headers = vec![form_content_type()];
        if let Some(id) = &self.cfg.client_id {
            headers.push(client_basic(id, self.cfg.client_secret.as_deref()));
        }
        let path = self.target.base.request_path();
        let unavailable = || {
            GatewayError::new(
                ErrorKind::AuthUnavailable,
                "the token introspection endpoint is unavailable; retry later",
            )
            .with_reason(crate::error::Reason::IntrospectionUnavailable)
        };
        let resp = self
            .egress
            .fetch(
                &self.target,
                OutboundRequest {
                    method: http::Method::POST,
                    path_and_query: path,
                    headers,
                    body: Some(Bytes::from(form)),
                },
                256 << 10,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "token introspection failed");
                unavailable()
            })?;
        if resp.status != 200 {
            tracing::warn!(status = resp.status, "token introspection refused");
            return Err(unavailable());
        }
        let body: Value = serde_json::from_slice(&resp.body).map_err(|_| unavailable())?;
        Ok(self.judge(&body))
    }

    /// Turns an introspection response into a verdict and how long it may be cached.
    fn judge(&self, body: &Value) -> (Verdict, Duration) {
        let negative_ttl = self.cfg.cache_ttl.min(Duration::from_secs(5));
        if body.get("active").and_then(Value::as_bool) != Some(true) {
            return (
                Err(unauthorized(
                    crate::error::Reason::InactiveToken,
                    "the token is not active",
                )),
                negative_ttl,
            );
        }
        let now = jsonwebtoken::get_current_timestamp();
        let exp = body.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|e| e <= now) {
            return (
                Err(unauthorized(
                    crate::error::Reason::TokenExpired,
                    "the token has expired",
                )),
                negative_ttl,
            );
        }
        if !self.cfg.audience.is_empty() {
            let ok = match body.get("aud") {
                Some(Value::String(a)) => self.cfg.audience.contains(a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.cfg.audience.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return (
                    Err(unauthorized(
                        crate::error::Reason::InvalidAudience,
                        "the token was not issued for this gateway (aud)",
                    )),
                    negative_ttl,
                );
            }
        }
        // The id names the claim it came from, so a user and a client of the same name are
        // two principals; a token naming nobody is refused.
        let text = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let who = match (text("sub"), text("username"), text("client_id")) {
            (Some(sub), _, _) => sub.to_string(),
            (None, Some(user), _) => format!("user:{user}"),
            (None, None, Some(client)) => format!("client:{client}"),
            (None, None, None) => {
                return (
                    Err(unauthorized(
                        crate::error::Reason::MissingClaim,
                        "the introspected token names no subject (sub, username or client_id)",
                    )),
                    negative_ttl,
                )
            }
        };
        let ttl = match exp {
            Some(e) => self.cfg.cache_ttl.min(Duration::from_secs(e - now)),
            None => self.cfg.cache_ttl,
        };
        (
            Ok(Principal {
                id: format!("oauth2:{who}"),
                kind: PrincipalKind::OAuth2,
                roles: roles_from_claims(body, self.cfg.roles_claim.as_deref()),
                allowed_apis: None,
                key_rate_limit: None,
            }),
            ttl,
        )
    }
}
