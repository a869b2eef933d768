//! The access-control part of the config: `[auth]`, `[[rbac.roles]]` and the caller-facing
//! parts of `[security]` (IP rules, trusted proxies, header limits, request signatures).
//! Raw schema first (unknown keys rejected), then validation into runtime types, with every
//! error naming its key path.

use std::collections::HashSet;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::{err, ConfigError, HumanDuration, PathPattern};

// ---------------------------------------------------------------------------------------
// Raw schema
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub required: Option<bool>,
    pub methods: Option<Vec<String>>,
    /// This gateway's resource identifier (RFC 9728), e.g. `https://gw.example.com/mcp`.
    pub resource: Option<String>,
    /// Authorization servers named in the protected-resource metadata.
    pub authorization_servers: Option<Vec<String>>,
    pub jwt: Option<RawJwtIssuer>,
    /// More JWT issuers, each with its own keys and algorithm allow-list.
    #[serde(default)]
    pub jwt_issuers: Vec<RawJwtIssuer>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    /// Optional pepper: with it, keys are stored as `key_hmac` = HMAC-SHA256(pepper, key).
    pub api_key_pepper: Option<String>,
    pub oauth2: Option<RawOAuth2>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwtIssuer {
    pub secret: Option<String>,
    #[serde(default)]
    pub public_keys: Vec<String>,
    pub jwks_url: Option<String>,
    pub jwks_ttl: Option<HumanDuration>,
    pub jwks_cooldown: Option<HumanDuration>,
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<HumanDuration>,
    pub max_lifetime: Option<HumanDuration>,
    pub roles_claim: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiKey {
    pub name: String,
    pub key_sha256: Option<String>,
    pub key_hmac: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub allowed_apis: Option<Vec<String>>,
    #[serde(default)]
    pub revoked: bool,
    pub rate_limit: Option<super::RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth2 {
    pub introspection_url: String,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub cache_ttl: Option<HumanDuration>,
    pub audience: Option<OneOrMany>,
    pub roles_claim: Option<String>,
    #[serde(default)]
    pub allow_private_network: Option<bool>,
    pub timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRbac {
    #[serde(default)]
    pub roles: Vec<RawRole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRole {
    pub name: String,
    #[serde(default)]
    pub allow: Vec<RawGrant>,
    #[serde(default)]
    pub deny: Vec<RawGrant>,
    #[serde(default)]
    pub mode: crate::types::RuleMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    pub api: String,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub mode: crate::types::RuleMode,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignatures {
    pub required: Option<bool>,
    #[serde(default)]
    pub keys: Vec<RawSigningKey>,
    pub max_skew: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigningKey {
    pub id: String,
    pub secret: String,
}

// ---------------------------------------------------------------------------------------
// Runtime types
// ---------------------------------------------------------------------------------------

/// Which authentication methods are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    BearerToken,
    ApiKey,
    OAuth2,
}

/// Caller authentication.
#[derive(Debug)]
pub struct AuthConfig {
    /// When false, callers without credentials are let in as `anonymous`.
    pub required: bool,
    pub methods: Vec<AuthMethod>,
    /// RFC 9728 resource identifier; `None` means "derive from the request's Host".
    pub resource: Option<String>,
    pub authorization_servers: Vec<String>,
    pub jwt_issuers: Vec<JwtIssuer>,
    pub api_keys: Vec<ApiKey>,
    pub api_key_pepper: Option<String>,
    pub oauth2: Option<OAuth2>,
}

impl AuthConfig {
    pub fn accepts(&self, m: AuthMethod) -> bool {
        self.methods.contains(&m)
    }
}

/// Where an issuer's verification keys come from.
pub enum JwtKeys {
    /// HS256/384/512 shared secret.
    Secret(DecodingKey),
    /// Static public keys (PEM), tried in order.
    Static(Vec<DecodingKey>),
    /// A JWKS document fetched from a URL and cached.
    Jwks {
        url: String,
        ttl: Duration,
        cooldown: Duration,
    },
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKeys::Secret(_) => f.write_str("Secret(<redacted>)"),
            JwtKeys::Static(k) => write!(f, "Static({} keys)", k.len()),
            JwtKeys::Jwks { url, .. } => write!(f, "Jwks({url})"),
        }
    }
}

/// One trusted token issuer.
#[derive(Debug)]
pub struct JwtIssuer {
    pub issuer: String,
    pub audience: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: JwtKeys,
    pub leeway: Duration,
    pub max_lifetime: Option<Duration>,
    /// The claim that carries roles; `None` means `roles`, then `scope`.
    pub roles_claim: Option<String>,
    /// Principal ids name the issuer: `jwt:{iss}#{sub}` (issuers of `[[auth.jwt_issuers]]`),
    /// rather than `jwt:{sub}` (`[auth.jwt]`), so two issuers' `sub = "alice"` are two
    /// principals.
    pub qualified_ids: bool,
}

/// One API key. Only its hash is held.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    /// SHA-256 of the key, or HMAC-SHA256(pepper, key) when a pepper is configured.
    pub digest: [u8; 32],
    pub roles: Vec<String>,
    pub allowed_apis: Option<Vec<String>>,
    pub revoked: bool,
    pub rate_limit: Option<super::Policy>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}, digest=<redacted>)", self.name)
    }
}

/// RFC 7662 token introspection.
#[derive(Clone)]
pub struct OAuth2 {
    pub introspection_url: String,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub cache_ttl: Duration,
    pub audience: Vec<String>,
    pub roles_claim: Option<String>,
    pub allow_private_network: bool,
    pub timeout: Duration,
}

impl std::fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OAuth2({}, secret=<redacted>)", self.introspection_url)
    }
}

/// One grant or deny rule of a role.
#[derive(Debug, Clone)]
pub struct Grant {
    /// API name, or `*` for every API.
    pub api: String,
    /// Empty means every method.
    pub methods: Vec<Method>,
    /// Empty means every path.
    pub paths: Vec<PathPattern>,
    /// `mode = "shadow"` (on the rule or its role): evaluated, never enforced.
    pub shadow: bool,
}

impl Grant {
    pub fn covers_api(&self, api: &str) -> bool {
        self.api == "*" || self.api == api
    }

    /// Whether the grant covers `method` on the API, and the path by `matches` (a grant
    /// without paths covers every path).
    pub fn covers(
        &self,
        api: &str,
        method: &Method,
        matches: impl Fn(&PathPattern) -> bool,
    ) -> bool {
        self.covers_api(api)
            && (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty() || self.paths.iter().any(matches))
    }
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub allow: Vec<Grant>,
    pub deny: Vec<Grant>,
}

/// Role-based access. With no roles configured, RBAC is off: every authenticated principal
/// may use every API (within the API's own allow-lists and its key's `allowed_apis`).
#[derive(Debug, Default)]
pub struct Rbac {
    pub roles: Vec<Role>,
    /// Some role or rule is in `mode = "shadow"`: only then is a call judged a second time
    /// with the shadow rules counted.
    pub shadow: bool,
}

impl Rbac {
    pub fn enabled(&self) -> bool {
        !self.roles.is_empty()
    }
}

/// IP rules and trusted proxies.
#[derive(Debug, Default)]
pub struct IpRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// `[security] ip_mode = "shadow"` (or `[policy] mode = "shadow"`): `ip_allow` and
    /// `ip_deny` are evaluated, never enforced.
    pub shadow: bool,
}

/// Header count and size limits.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

/// HMAC request signatures.
#[derive(Default)]
pub struct Signatures {
    pub required: bool,
    pub keys: Vec<(String, Vec<u8>)>,
    pub max_skew: Duration,
}

impl std::fmt::Debug for Signatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Signatures(required={}, {} keys, skew={:?})",
            self.required,
            self.keys.len(),
            self.max_skew
        )
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

pub(super) fn validate_auth(raw: Option<RawAuth>, errors: &mut Vec<ConfigError>) -> AuthConfig {
    let raw = raw.unwrap_or_default();
    let required = raw.required.unwrap_or(true);
    let mut methods = Vec::new();
    let method_list = raw.methods.clone().unwrap_or_else(|| {
        // Without an explicit list, every configured method is enabled.
        let mut m = Vec::new();
        if raw.jwt.is_some() || !raw.jwt_issuers.is_empty() {
            m.push("bearer_token".to_string());
        }
        if !raw.api_keys.is_empty() {
            m.push("api_key".to_string());
        }
        if raw.oauth2.is_some() {
            m.push("oauth2".to_string());
        }
        m
    });
    for (i, m) in method_list.iter().enumerate() {
        let parsed = match m.as_str() {
            "bearer_token" | "jwt" => AuthMethod::BearerToken,
            "api_key" => AuthMethod::ApiKey,
            "oauth2" => AuthMethod::OAuth2,
            other => {
                errors.push(err(
                    format!("auth.methods[{i}]"),
                    format!("{other:?} is not one of \"bearer_token\", \"api_key\", \"oauth2\""),
                ));
                continue;
            }
        };
        if methods.contains(&parsed) {
            errors.push(err(format!("auth.methods[{i}]"), "listed twice"));
        }
        methods.push(parsed);
    }

    let mut jwt_issuers = Vec::new();
    let has_jwt = raw.jwt.is_some() || !raw.jwt_issuers.is_empty();
    if let Some(j) = raw.jwt {
        if let Some(i) = validate_issuer("auth.jwt", j, raw.resource.as_deref(), errors) {
            jwt_issuers.push(i);
        }
    }
    for (n, j) in raw.jwt_issuers.into_iter().enumerate() {
        let path = format!("auth.jwt_issuers[{n}]");
        if let Some(i) = validate_issuer(&path, j, raw.resource.as_deref(), errors) {
            if jwt_issuers.iter().any(|o: &JwtIssuer| o.issuer == i.issuer) {
                errors.push(err(
                    format!("{path}.issuer"),
                    format!("issuer {:?} is configured twice", i.issuer),
                ));
            }
            jwt_issuers.push(i);
        }
    }
    if methods.contains(&AuthMethod::BearerToken) && !has_jwt {
        errors.push(err(
            "auth.jwt",
            "\"bearer_token\" is enabled in auth.methods but no [auth.jwt] issuer is configured",
        ));
    }

    let pepper = raw.api_key_pepper.filter(|p| !p.is_empty());
    let mut api_keys = Vec::new();
    let mut key_names = HashSet::new();
    for (n, k) in raw.api_keys.into_iter().enumerate() {
        let path = format!("auth.api_keys[{n}]");
        if k.name.is_empty() {
            errors.push(err(format!("{path}.name"), "must not be empty"));
        } else if !key_names.insert(k.name.clone()) {
            errors.push(err(
                format!("{path}.name"),
                format!("duplicate key name {:?}", k.name),
            ));
        }
        let digest = match (&k.key_sha256, &k.key_hmac, &pepper) {
            (Some(h), None, None) => parse_digest(&format!("{path}.key_sha256"), h, errors),
            (None, Some(h), Some(_)) => parse_digest(&format!("{path}.key_hmac"), h, errors),
            (None, Some(_), None) => {
                errors.push(err(
                    format!("{path}.key_hmac"),
                    "needs auth.api_key_pepper (or store the key as key_sha256)",
                ));
                None
            }
            (Some(_), None, Some(_)) => {
                errors.push(err(
                    format!("{path}.key_sha256"),
                    "auth.api_key_pepper is set, so keys must be stored as key_hmac \
                     (`api-gateway-mcp hash-key --pepper` prints it)",
                ));
                None
            }
            (Some(_), Some(_), _) => {
                errors.push(err(path.clone(), "set key_sha256 or key_hmac, not both"));
                None
            }
            (None, None, _) => {
                errors.push(err(
                    path.clone(),
                    "needs key_sha256 (generate a key and its hash with `api-gateway-mcp hash-key`)",
                ));
                None
            }
        };
        let rate_limit = k.rate_limit.and_then(|r| {
            super::rate_policy(
                &format!("{path}.rate_limit"),
                &format!("key.{}", k.name),
                r,
                errors,
            )
        });
        if let Some(digest) = digest {
            api_keys.push(ApiKey {
                name: k.name,
                digest,
                roles: k.roles,
                allowed_apis: k.allowed_apis,
                revoked: k.revoked,
                rate_limit,
            });
        }
    }
    if methods.contains(&AuthMethod::ApiKey) && api_keys.is_empty() {
        errors.push(err(
            "auth.api_keys",
            "\"api_key\" is enabled in auth.methods but no [[auth.api_keys]] are configured",
        ));
    }

    let oauth2 = raw.oauth2.map(|o| {
        let url_ok = url::Url::parse(&o.introspection_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if url_ok.is_none() {
            errors.push(err(
                "auth.oauth2.introspection_url",
                format!("{:?} is not an http(s) URL", o.introspection_url),
            ));
        }
        let audience = o.audience.map(OneOrMany::into_vec).unwrap_or_default();
        OAuth2 {
            introspection_url: o.introspection_url,
            client_id: o.client_id,
            client_secret: o.client_secret,
            cache_ttl: o.cache_ttl.map_or(Duration::from_secs(30), |d| d.0),
            audience,
            roles_claim: o.roles_claim,
            allow_private_network: o.allow_private_network.unwrap_or(false),
            timeout: o.timeout.map_or(Duration::from_secs(5), |d| d.0),
        }
    });
    if methods.contains(&AuthMethod::OAuth2) && oauth2.is_none() {
        errors.push(err(
            "auth.oauth2",
            "\"oauth2\" is enabled in auth.methods but [auth.oauth2] is not configured",
        ));
    }

    if required && methods.is_empty() {
        errors.push(err(
            "auth.required",
            "authentication is required (the secure default) but no method is configured: \
             add [auth.jwt], [[auth.api_keys]] or [auth.oauth2], or set `[auth] required = false` \
             to serve anonymous callers",
        ));
    }
    let authorization_servers = raw.authorization_servers.unwrap_or_else(|| {
        jwt_issuers
            .iter()
            .map(|i: &JwtIssuer| i.issuer.clone())
            .collect()
    });
    AuthConfig {
        required,
        methods,
        resource: raw.resource,
        authorization_servers,
        jwt_issuers,
        api_keys,
        api_key_pepper: pepper,
        oauth2,
    }
}

fn parse_digest(path: &str, hex_digest: &str, errors: &mut Vec<ConfigError>) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    match hex::decode_to_slice(hex_digest.trim(), &mut out) {
        Ok(()) => Some(out),
        Err(_) => {
            errors.push(err(
                path,
                "must be 64 hex characters (a SHA-256 digest, never the key itself)",
            ));
            None
        }
    }
}

fn validate_issuer(
    path: &str,
    j: RawJwtIssuer,
    resource: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> Option<JwtIssuer> {
    let before = errors.len();
    let issuer = j.issuer.unwrap_or_default();
    if issuer.is_empty() {
        errors.push(err(
            format!("{path}.issuer"),
            "is required: tokens must name their issuer",
        ));
    } else if issuer.contains('#') {
        errors.push(err(
            format!("{path}.issuer"),
            "must not contain '#' (an issuer identifier has no fragment)",
        ));
    }
    let audience = match j.audience.map(OneOrMany::into_vec) {
        Some(a) if !a.is_empty() => a,
        _ => match resource {
            Some(r) => vec![r.to_string()],
            None => {
                errors.push(err(
                    format!("{path}.audience"),
                    "is required: tokens must be minted for this gateway (or set auth.resource)",
                ));
                Vec::new()
            }
        },
    };
    let mut algorithms = Vec::new();
    let names = j.algorithms.unwrap_or_else(|| {
        if j.secret.is_some() {
            vec!["HS256".into()]
        } else {
            vec!["RS256".into(), "ES256".into()]
        }
    });
    for (i, a) in names.iter().enumerate() {
        if a.eq_ignore_ascii_case("none") {
            errors.push(err(
                format!("{path}.algorithms[{i}]"),
                "\"none\" is never accepted",
            ));
            continue;
        }
        match a.parse::<Algorithm>() {
            Ok(alg) => algorithms.push(alg),
            Err(_) => errors.push(err(
                format!("{path}.algorithms[{i}]"),
                format!("{a:?} is not a JWS algorithm (HS256, RS256, PS256, ES256, EdDSA, …)"),
            )),
        }
    }
    let is_hmac =
        |a: &Algorithm| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    let sources = [
        j.secret.is_some(),
        !j.public_keys.is_empty(),
        j.jwks_url.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources != 1 {
        errors.push(err(
            path,
            "set exactly one of secret (HS*), public_keys or jwks_url",
        ));
    }
    let keys = if let Some(secret) = j.secret {
        if secret.len() < 32 {
            errors.push(err(
                format!("{path}.secret"),
                "must be at least 32 bytes: a short HMAC secret can be brute-forced",
            ));
        }
        if let Some(a) = algorithms.iter().find(|a| !is_hmac(a)) {
            errors.push(err(
                format!("{path}.algorithms"),
                format!("{a:?} needs a public key; a shared secret only verifies HS256/384/512"),
            ));
        }
        JwtKeys::Secret(DecodingKey::from_secret(secret.as_bytes()))
    } else {
        // Key confusion guard: an issuer with public keys never accepts HMAC algorithms.
        if let Some(a) = algorithms.iter().find(|a| is_hmac(a)) {
            errors.push(err(
                format!("{path}.algorithms"),
                format!("{a:?} needs a shared secret; this issuer uses public keys"),
            ));
        }
        if let Some(url) = j.jwks_url {
            if url::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .is_none()
            {
                errors.push(err(
                    format!("{path}.jwks_url"),
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            JwtKeys::Jwks {
                url,
                ttl: j.jwks_ttl.map_or(Duration::from_secs(300), |d| d.0),
                cooldown: j.jwks_cooldown.map_or(Duration::from_secs(30), |d| d.0),
            }
        } else {
            let mut keys = Vec::new();
            for (i, pem) in j.public_keys.iter().enumerate() {
                let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                    .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
                    .or_else(|_| DecodingKey::from_ed_pem(pem.as_bytes()));
                match key {
                    Ok(k) => keys.push(k),
                    Err(_) => errors.push(err(
                        format!("{path}.public_keys[{i}]"),
                        "is not a PEM RSA, EC or Ed25519 public key",
                    )),
                }
            }
            JwtKeys::Static(keys)
        }
    };
    (errors.len() == before).then(|| JwtIssuer {
        issuer,
        audience,
        algorithms,
        keys,
        leeway: j.leeway.map_or(Duration::from_secs(30), |d| d.0),
        max_lifetime: j.max_lifetime.map(|d| d.0),
        roles_claim: j.roles_claim,
        qualified_ids: path != "auth.jwt",
    })
}

pub(super) fn validate_rbac(
    raw: RawRbac,
    api_names: &HashSet<String>,
    errors: &mut Vec<ConfigError>,
) -> Rbac {
    let mut roles: Vec<Role> = Vec::new();
    for (i, r) in raw.roles.into_iter().enumerate() {
        let path = format!("rbac.roles[{i}]");
        if r.name.is_empty() {
            errors.push(err(format!("{path}.name"), "must not be empty"));
        }
        if roles.iter().any(|o| o.name == r.name) {
            errors.push(err(
                format!("{path}.name"),
                format!("duplicate role {:?}", r.name),
            ));
        }
        let role_shadow = r.mode == crate::types::RuleMode::Shadow;
        let mut grants = |list: Vec<RawGrant>, kind: &str| -> Vec<Grant> {
            let mut out = Vec::new();
            for (g, raw) in list.into_iter().enumerate() {
                let gp = format!("{path}.{kind}[{g}]");
                if raw.api != "*" && !api_names.contains(&raw.api) {
                    errors.push(err(
                        format!("{gp}.api"),
                        format!("no API named {:?} is configured", raw.api),
                    ));
                }
                let mut methods = Vec::new();
                for (m, name) in raw.methods.unwrap_or_default().iter().enumerate() {
                    let upper = name.to_ascii_uppercase();
                    match Method::from_bytes(upper.as_bytes()) {
                        Ok(x) if super::SUPPORTED_METHODS.contains(&upper.as_str()) => {
                            methods.push(x)
                        }
                        _ => errors.push(err(
                            format!("{gp}.methods[{m}]"),
                            format!(
                                "{name:?} is not one of {}",
                                super::SUPPORTED_METHODS.join(", ")
                            ),
                        )),
                    }
                }
                let mut paths = Vec::new();
                for (p, pat) in raw.paths.unwrap_or_default().iter().enumerate() {
                    match PathPattern::parse(pat) {
                        Ok(x) => paths.push(x),
                        Err(e) => errors.push(err(format!("{gp}.paths[{p}]"), e)),
                    }
                }
                out.push(Grant {
                    api: raw.api,
                    methods,
                    paths,
                    shadow: role_shadow || raw.mode == crate::types::RuleMode::Shadow,
                });
            }
            out
        };
        let allow = grants(r.allow, "allow");
        let deny = grants(r.deny, "deny");
        roles.push(Role {
            name: r.name,
            allow,
            deny,
        });
    }
    let shadow = roles
        .iter()
        .any(|r| r.allow.iter().chain(&r.deny).any(|g| g.shadow));
    Rbac { roles, shadow }
}

pub(super) fn parse_nets(
    path: &str,
    list: Option<Vec<String>>,
    errors: &mut Vec<ConfigError>,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in list.unwrap_or_default().iter().enumerate() {
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => out.push(normalise_net(n)),
            Err(_) => errors.push(err(
                format!("{path}[{i}]"),
                format!("{s:?} is not an IP address or CIDR like \"10.0.0.0/8\" or \"fd00::/8\""),
            )),
        }
    }
    out
}

/// `::ffff:10.0.0.0/104` is the same set as `10.0.0.0/8`: store it as IPv4.
fn normalise_net(n: IpNet) -> IpNet {
    if let IpNet::V6(v6) = n {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                if let Ok(net) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(net.trunc());
                }
            }
        }
    }
    n.trunc()
}

pub(super) fn validate_signatures(
    raw: Option<RawSignatures>,
    errors: &mut Vec<ConfigError>,
) -> Signatures {
    let Some(raw) = raw else {
        return Signatures {
            max_skew: Duration::from_secs(300),
            ..Default::default()
        };
    };
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, k) in raw.keys.into_iter().enumerate() {
        let path = format!("security.signatures.keys[{i}]");
        if k.id.is_empty() || keys.iter().any(|(id, _)| *id == k.id) {
            errors.push(err(format!("{path}.id"), "must be non-empty and unique"));
        }
        if k.secret.len() < 32 {
            errors.push(err(format!("{path}.secret"), "must be at least 32 bytes"));
        }
        keys.push((k.id, k.secret.into_bytes()));
    }
    let required = raw.required.unwrap_or(false);
    if keys.is_empty() {
        errors.push(err(
            "security.signatures.keys",
            "at least one signing key is needed to verify signatures",
        ));
    }
    Signatures {
        required,
        keys,
        max_skew: raw.max_skew.map_or(Duration::from_secs(300), |d| d.0),
    }
}
