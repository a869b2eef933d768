//! Who is calling: JWT bearer tokens (HS/RS/PS/ES/EdDSA, static keys or JWKS), API keys
//! (hashed at rest, compared in constant time), OAuth2 token introspection (RFC 7662), HMAC
//! request signatures, and the MCP authorization metadata (RFC 9728).
//!
//! Both doors hand the caller's HTTP headers to [`Authenticator::authenticate`] and get a
//! [`Principal`] or a 401. The caller's credentials are consumed here and never forwarded.

pub mod apikey;
pub mod jwt;
pub mod oauth2;
pub mod signature;

use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value;

use crate::config::{AuthMethod, Config};
use crate::egress::Egress;
use crate::error::{ErrorKind, GatewayError};
use crate::ratelimit::Policy;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Anonymous,
    Jwt,
    ApiKey,
    OAuth2,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Anonymous => "anonymous",
            PrincipalKind::Jwt => "jwt",
            PrincipalKind::ApiKey => "api_key",
            PrincipalKind::OAuth2 => "oauth2",
        }
    }
}

/// An authenticated (or anonymous) caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Stable identity, e.g. `jwt:alice`, `key:ci`, `anonymous`. Used for per-user limits.
    pub id: String,
    pub kind: PrincipalKind,
    pub roles: Vec<String>,
    /// From an API key's `allowed_apis`: the only APIs it may call.
    pub allowed_apis: Option<Vec<String>>,
    /// An API key's own rate limit.
    pub key_rate_limit: Option<Policy>,
}

impl Principal {
    /// The principal of a caller without credentials when `auth.required = false`. It holds
    /// the role `anonymous`, so RBAC can grant it exactly what anonymous callers may do.
    pub fn anonymous() -> Principal {
        Principal {
            id: "anonymous".into(),
            kind: PrincipalKind::Anonymous,
            roles: vec!["anonymous".into()],
            allowed_apis: None,
            key_rate_limit: None,
        }
    }
}

/// A 401 with a machine-readable reason.
/// Who is calling, as established once per HTTP request (or once per stdio session).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The client's address (behind trusted proxies, the forwarded one).
    pub client_ip: Option<std::net::IpAddr>,
    /// A verified request signature, if the request carried one.
    pub signature: Option<signature::Verified>,
    /// The caller's W3C trace context, or a new trace.
    pub trace: crate::trace::TraceContext,
    /// Refusals by rules in shadow mode while the caller was identified (the IP rules under
    /// `ip_mode = "shadow"`): recorded with the call, never enforced.
    pub shadow: Vec<crate::error::GatewayError>,
    /// The bearer token the caller authenticated with, for an API that exchanges it
    /// (`credentials.mode = "token_exchange"`). Never forwarded, logged or shown.
    pub subject_token: Option<SubjectToken>,
}

/// A caller's own token, held only to be exchanged; its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SubjectToken(std::sync::Arc<str>);

impl SubjectToken {
    /// The bearer token of `headers`, when they carry one.
    pub fn from_headers(headers: &HeaderMap) -> Option<SubjectToken> {
        let v = headers
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .trim();
        let (scheme, token) = v.split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .then(|| SubjectToken(token.trim().into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectToken(<redacted>)")
    }
}

pub fn unauthorized(reason: crate::error::Reason, message: impl Into<String>) -> GatewayError {
    GatewayError::unauthorized(message).with_reason(reason)
}

/// The credential a request presents.
enum Presented<'a> {
    None,
    Bearer(&'a str),
    ApiKey(&'a str),
}

fn presented(headers: &HeaderMap) -> Result<Presented<'_>, GatewayError> {
    let text = |name: &str| -> Result<Option<&str>, GatewayError> {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(unauthorized(
                crate::error::Reason::AmbiguousCredentials,
                format!("more than one {name} header"),
            ));
        }
        first.to_str().map(|s| Some(s.trim())).map_err(|_| {
            unauthorized(
                crate::error::Reason::MalformedCredentials,
                format!("the {name} header is not text"),
            )
        })
    };
    let authz = text("authorization")?;
    let key = text("x-api-key")?;
    match (authz, key) {
        (Some(_), Some(_)) => Err(unauthorized(
            crate::error::Reason::AmbiguousCredentials,
            "send either Authorization or X-API-Key, not both",
        )),
        (None, Some(k)) => Ok(Presented::ApiKey(k)),
        (None, None) => Ok(Presented::None),
        (Some(a), None) => {
            let (scheme, rest) = a.split_once(' ').unwrap_or((a, ""));
            let rest = rest.trim();
            if rest.is_empty() {
                return Err(unauthorized(
                    crate::error::Reason::MalformedCredentials,
                    "the Authorization header has no credentials after its scheme",
                ));
            }
            if scheme.eq_ignore_ascii_case("bearer") {
                Ok(Presented::Bearer(rest))
            } else if scheme.eq_ignore_ascii_case("apikey") {
                Ok(Presented::ApiKey(rest))
            } else {
                Err(unauthorized(
                    crate::error::Reason::UnsupportedScheme,
                    "the Authorization scheme must be Bearer or ApiKey",
                ))
            }
        }
    }
}

/// Authenticates callers with the methods `auth.methods` enables.
pub struct Authenticator {
    config: Arc<Config>,
    jwt: jwt::JwtVerifier,
    keys: apikey::KeyStore,
    oauth2: Option<oauth2::Introspector>,
}

impl Authenticator {
    pub fn new(config: Arc<Config>, egress: Arc<Egress>) -> Result<Self, String> {
        let auth = &config.auth;
        let jwt = jwt::JwtVerifier::new(&auth.jwt_issuers, egress.clone())?;
        let keys = apikey::KeyStore::new(auth.api_keys.clone(), auth.api_key_pepper.clone());
        let oauth2 = match &auth.oauth2 {
            Some(o) => Some(oauth2::Introspector::new(o.clone(), egress)?),
            None => None,
        };
        Ok(Authenticator {
            config,
            jwt,
            keys,
            oauth2,
        })
    }

    pub fn jwt(&self) -> &jwt::JwtVerifier {
        &self.jwt
    }

    /// Identifies the caller from its headers. Without credentials the caller is anonymous
    /// when `auth.required = false`; credentials that are present but bad are always a 401,
    /// never silently downgraded to anonymous.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        let auth = &self.config.auth;
        match presented(headers)? {
            Presented::None if !auth.required => Ok(Principal::anonymous()),
            Presented::None => Err(unauthorized(
                crate::error::Reason::MissingCredentials,
                "authentication is required: send Authorization: Bearer <token> or X-API-Key",
            )),
            Presented::ApiKey(k) => {
                if !auth.accepts(AuthMethod::ApiKey) {
                    return Err(unauthorized(
                        crate::error::Reason::MethodNotEnabled,
                        "API keys are not accepted by this gateway",
                    ));
                }
                self.keys.verify(k)
            }
            Presented::Bearer(token) => {
                let jwt_shaped = token.split('.').count() == 3;
                let bearer = auth.accepts(AuthMethod::BearerToken);
                match (&self.oauth2, jwt_shaped && bearer) {
                    (_, true) => self.jwt.verify(token).await,
                    (Some(o), false) if auth.accepts(AuthMethod::OAuth2) => {
                        // Boxed: a network call with a large future, kept out of the API
                        // key's and the JWT's.
                        Box::pin(o.introspect(token)).await
                    }
                    _ if bearer => Err(unauthorized(
                        crate::error::Reason::MalformedToken,
                        "the bearer token is not a JWT",
                    )),
                    _ => Err(unauthorized(
                        crate::error::Reason::MethodNotEnabled,
                        "bearer tokens are not accepted by this gateway",
                    )),
                }
            }
        }
    }
}

/// Reads roles from claims: the configured claim (a dotted path such as
/// `realm_access.roles`), else `roles`, then `scope`/`scp`. Arrays and space-separated
/// strings are both accepted.
pub fn roles_from_claims(claims: &Value, claim: Option<&str>) -> Vec<String> {
    let pick = |path: &str| -> Option<&Value> {
        path.split('.')
            .try_fold(claims, |v, part| v.as_object().and_then(|o| o.get(part)))
    };
    let as_list = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    match claim {
        Some(c) => pick(c).map(as_list).unwrap_or_default(),
        None => ["roles", "scope", "scp"]
            .iter()
            .find_map(|c| pick(c))
            .map(as_list)
            .unwrap_or_default(),
    }
}

/// `WWW-Authenticate` for a 401 (RFC 6750 + RFC 9728 `resource_metadata`).
pub fn www_authenticate(e: &GatewayError, metadata_url: &str) -> String {
    let mut v = format!("Bearer realm=\"api-gateway-mcp\", resource_metadata=\"{metadata_url}\"");
    if e.kind == ErrorKind::Unauthorized
        && e.reason != Some(crate::error::Reason::MissingCredentials)
    {
        // RFC 6750 §3.1: a presented but unusable token is `invalid_token`.
        v.push_str(", error=\"invalid_token\"");
    }
    v
}

/// The protected-resource metadata path for the MCP endpoint (RFC 9728 §3.1: the well-known
/// prefix is inserted before the resource's path).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The resource identifier: `auth.resource`, else `http://{Host}/mcp` (`https` when the MCP
/// listener has TLS).
pub fn resource_id(config: &Config, host: Option<&str>) -> String {
    let tls = config
        .server
        .tls
        .as_ref()
        .is_some_and(|t| t.covers(crate::config::Listener::Mcp));
    match &config.auth.resource {
        Some(r) => r.clone(),
        None => format!(
            "{}://{}/mcp",
            if tls { "https" } else { "http" },
            host.map(str::to_string)
                .unwrap_or_else(|| config.server.mcp_listen.to_string())
        ),
    }
}

/// The URL of the metadata document that a 401 points at.
pub fn metadata_url(config: &Config, host: Option<&str>) -> String {
    let resource = resource_id(config, host);
    match url::Url::parse(&resource) {
        Ok(u) => {
            let origin = u.origin().ascii_serialization();
            let path = u.path().trim_end_matches('/');
            format!("{origin}{METADATA_PATH}{path}")
        }
        Err(_) => format!("{resource}{METADATA_PATH}"),
    }
}

/// The RFC 9728 protected-resource metadata document.
pub fn resource_metadata(config: &Config, host: Option<&str>) -> Value {
    let mut doc = serde_json::json!({
        "resource": resource_id(config, host),
        "authorization_servers": config.auth.authorization_servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "api-gateway-mcp",
    });
    let scopes: Vec<&str> = config.rbac.roles.iter().map(|r| r.name.as_str()).collect();
    if !scopes.is_empty() {
        doc["scopes_supported"] = serde_json::json!(scopes);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_come_from_the_configured_claim_or_roles_then_scope() {
        let c = json!({"roles": ["a", "b"], "scope": "x y", "realm_access": {"roles": ["r"]}});
        assert_eq!(roles_from_claims(&c, None), vec!["a", "b"]);
        assert_eq!(roles_from_claims(&c, Some("scope")), vec!["x", "y"]);
        assert_eq!(roles_from_claims(&c, Some("realm_access.roles")), vec!["r"]);
        assert!(roles_from_claims(&c, Some("missing")).is_empty());
        assert_eq!(
            roles_from_claims(&json!({"scope": "s t"}), None),
            vec!["s", "t"]
        );
    }

    #[test]
    fn credentials_are_parsed_strictly() {
        let mut h = HeaderMap::new();
        assert!(matches!(presented(&h), Ok(Presented::None)));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(
            presented(&h)
                .err()
                .unwrap()
                .reason
                .map(crate::error::Reason::code),
            Some("unsupported_scheme")
        );
        h.insert("authorization", "ApiKey k1".parse().unwrap());
        assert!(matches!(presented(&h), Ok(Presented::ApiKey("k1"))));
        h.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(
            presented(&h)
                .err()
                .unwrap()
                .reason
                .map(crate::error::Reason::code),
            Some("ambiguous_credentials")
        );
        h.remove("authorization");
        h.append("x-api-key", "k3".parse().unwrap());
        assert_eq!(
            presented(&h)
                .err()
                .unwrap()
                .reason
                .map(crate::error::Reason::code),
            Some("ambiguous_credentials")
        );
    }
}
