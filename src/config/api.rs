//! `[[apis]]`: each allow-listed upstream API, its base URL, methods and paths, credential,
//! limits and timeouts, validated into an [`Api`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

use super::{err, rate_policy, ConfigError, HumanDuration, PathPattern, Policy, RawRateLimit};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    name: String,
    base_url: String,
    description: Option<String>,
    methods: Option<Vec<String>>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    deny_paths: Vec<String>,
    timeout: Option<HumanDuration>,
    connect_timeout: Option<HumanDuration>,
    #[serde(default)]
    allow_private_network: bool,
    #[serde(default)]
    case_insensitive_paths: bool,
    credentials: Option<super::credentials::RawCredentials>,
    max_response_bytes: Option<usize>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    endpoint_rate_limits: Vec<RawEndpointRateLimit>,
    #[serde(default)]
    require_signature: bool,
    follow_redirects: Option<u8>,
    cost_per_call: Option<f64>,
    response: Option<super::response::RawResponse>,
    #[serde(default)]
    mode: crate::types::RuleMode,
    openapi: Option<super::openapi::RawOpenApi>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpointRateLimit {
    path: String,
    requests: u32,
    window: HumanDuration,
    burst: Option<u32>,
}

/// One allow-listed upstream API.
#[derive(Debug, Clone)]
pub struct Api {
    pub name: String,
    pub base: BaseUrl,
    pub description: String,
    pub methods: Vec<Method>,
    pub paths: Vec<PathPattern>,
    pub deny_paths: Vec<PathPattern>,
    /// Total deadline for one upstream exchange. Default 30 s.
    pub timeout: Duration,
    /// TCP (+TLS) connect deadline. Default 5 s.
    pub connect_timeout: Duration,
    /// Allow private, loopback and link-local destinations. Default false.
    pub allow_private_network: bool,
    /// The upstream routes paths regardless of case: `paths` and endpoint limits then match
    /// case-insensitively (deny rules always do). Default false.
    pub case_insensitive_paths: bool,
    /// The credential injected into every call: a static one from config, or, for an API
    /// whose credential is obtained per call (`dynamic_credential`), the caller's, set on the
    /// per-call copy of the API that admission hands to egress.
    pub credential: Option<Credential>,
    /// `credentials.mode` other than `static`: how the caller's credential is obtained.
    pub dynamic_credential: Option<Arc<super::credentials::DynamicCredential>>,
    /// This API's limit, named `api.NAME`; when absent `rate_limits.default` applies.
    pub rate_limit: Option<Policy>,
    /// Extra limits for paths matching a pattern, named `api.NAME:PATTERN`, checked on top of
    /// the API's limit.
    pub endpoint_rate_limits: Vec<(PathPattern, Policy)>,
    /// Calls to this API must carry a valid request signature.
    pub require_signature: bool,
    /// Redirects followed on the MCP door (0 = returned to the caller). At most 3.
    pub follow_redirects: u8,
    /// What one call costs, for the `api_cost_total` business metric.
    pub cost_per_call: Option<f64>,
    /// `[apis.response]`: how answers are shaped for a model on the MCP door.
    pub response: super::response::ResponseShaping,
    /// `mode = "shadow"`: the API's method and path rules are evaluated, never enforced.
    pub shadow: bool,
    /// `[apis.openapi]`: the API's operations as MCP tools.
    pub openapi: Option<super::openapi::OpenApiConfig>,
}

impl Api {
    /// Where this API's credential goes, whether it is static or obtained per call.
    pub fn credential_placement(&self) -> Option<&CredentialPlacement> {
        match (&self.credential, &self.dynamic_credential) {
            (Some(c), _) => Some(&c.placement),
            (None, Some(d)) => Some(&d.placement),
            (None, None) => None,
        }
    }

    /// Whether the gateway injects a credential into calls to this API.
    pub fn injects_credential(&self) -> bool {
        self.credential.is_some() || self.dynamic_credential.is_some()
    }
}

/// A parsed `base_url`: where an API lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`""` for the root).
    pub path: String,
    /// The URL as written, for matching the MCP `api` argument.
    pub original: String,
    /// The `Host` header value, worked out once (see [`BaseUrl::host_header`]).
    authority: String,
}

impl BaseUrl {
    /// The base path as a request target (`/` for the root), for the gateway's own requests
    /// to an identity provider.
    pub fn request_path(&self) -> String {
        if self.path.is_empty() {
            "/".to_string()
        } else {
            self.path.clone()
        }
    }

    /// The absolute URL of a request sent to this base (for resolving redirects).
    pub fn url_of(&self, path_and_query: &str) -> Option<url::Url> {
        let scheme = if self.tls { "https" } else { "http" };
        url::Url::parse(&format!(
            "{scheme}://{}{path_and_query}",
            self.host_header()
        ))
        .ok()
    }

    /// The value for the upstream `Host` header: the host, plus the port if not the default.
    pub fn host_header(&self) -> &str {
        &self.authority
    }
}

/// `host[:port]` as a `Host` header names it: an IPv6 literal in brackets, the port only when
/// it is not the scheme's default.
fn authority(tls: bool, host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == if tls { 443 } else { 80 } {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Where an upstream credential goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialPlacement {
    Header(http::HeaderName),
    Query(String),
}

/// An upstream credential, injected by the gateway. Its value is never logged or shown.
#[derive(Clone)]
pub struct Credential {
    pub placement: CredentialPlacement,
    pub value: String,
    /// `value` as a header value (marked sensitive), parsed once while loading; `Some` for a
    /// header placement.
    pub header_value: Option<http::HeaderValue>,
    /// Every form of the value an upstream may echo, longest first, for masking echoes and
    /// checking redirect targets: the value; the token of a scheme-prefixed value (`Bearer X`
    /// gives `X`; `Basic` also gives the decoded `user:pass` and the password); each as the
    /// URL builder percent-encodes it; and each as it appears inside base64 text (standard
    /// and URL-safe alphabets, at each of the three byte alignments, the characters that
    /// depend on the secret alone). Forms under 4 bytes (8 for base64) are left out: masking
    /// them would mangle ordinary text.
    pub forms: Vec<String>,
    /// All of `forms` in one automaton, so a body is scanned once for every form; it
    /// reports overlapping matches, for masking every byte any form covers.
    pub matcher: aho_corasick::AhoCorasick,
    /// The same forms, longest match first, for replacing each occurrence with a marker.
    pub replacer: aho_corasick::AhoCorasick,
    /// The first 8 hex digits of the value's SHA-256, for audit records.
    pub fingerprint: Arc<str>,
}

impl Credential {
    /// A credential placed as `placement`, with its header value and forms worked out once.
    pub fn new(placement: CredentialPlacement, value: String) -> Credential {
        let header_value = match placement {
            CredentialPlacement::Header(_) => {
                http::HeaderValue::from_str(&value).ok().map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
            }
            CredentialPlacement::Query(_) => None,
        };
        let forms = credential_forms(&value);
        // The forms are a few dozen short strings: building cannot exceed the defaults'
        // limits, and an empty automaton (no form) matches nothing.
        let build = |kind| {
            aho_corasick::AhoCorasick::builder()
                .match_kind(kind)
                .build(&forms)
                .unwrap_or_else(|_| aho_corasick::AhoCorasick::new([""; 0]).expect("empty"))
        };
        use sha2::Digest;
        Credential {
            fingerprint: hex::encode(&sha2::Sha256::digest(value.as_bytes())[..4]).into(),
            matcher: build(aho_corasick::MatchKind::Standard),
            replacer: build(aho_corasick::MatchKind::LeftmostLongest),
            forms,
            header_value,
            placement,
            value,
        }
    }
}

fn credential_forms(value: &str) -> Vec<String> {
    use base64::Engine;
    let mut plain = vec![value.to_string()];
    if let Some((scheme, token)) = value.split_once(' ') {
        let token = token.trim();
        if !scheme.is_empty()
            && scheme.chars().all(|c| c.is_ascii_alphabetic())
            && !token.is_empty()
        {
            plain.push(token.to_string());
            // `Basic` carries `user:pass` in base64: an upstream may echo it decoded.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            if let (true, Some(pair)) = (scheme.eq_ignore_ascii_case("basic"), decoded) {
                if let Some((_, password)) = pair.split_once(':') {
                    plain.push(password.to_string());
                }
                plain.push(pair);
            }
        }
    }
    let mut forms = Vec::new();
    for p in &plain {
        let encoded =
            percent_encoding::utf8_percent_encode(p, crate::types::QUERY_ENCODE).to_string();
        if encoded != *p {
            forms.push(encoded);
        }
        forms.push(p.clone());
    }
    forms.retain(|f| f.len() >= 4);
    for p in &plain {
        forms.extend(base64_forms(p.as_bytes()));
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms
}

/// How `secret` shows inside any base64 text that contains it: for each of the three places
/// it can start within a 3-byte group, the characters of the whole groups it fills, in the
/// standard and the URL-safe alphabet. At most two bytes at each end stay visible.
fn base64_forms(secret: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let mut out = Vec::new();
    for skip in 0..3 {
        let Some(rest) = secret.get(skip..) else {
            break;
        };
        let whole = rest.len() / 3 * 3;
        if whole < 6 {
            continue;
        }
        for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
            let form = engine.encode(&rest[..whole]);
            if !out.contains(&form) {
                out.push(form);
            }
        }
    }
    out
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match &self.placement {
            CredentialPlacement::Header(h) => format!("header {h}"),
            CredentialPlacement::Query(q) => format!("query {q}"),
        };
        write!(f, "Credential({place}, value=<redacted>)")
    }
}

/// The methods the `api_gateway` tool and the proxy door can forward.
pub const SUPPORTED_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// Validates every `[[apis]]` entry; names are unique. Returns the APIs and their names.
pub(super) fn validate_apis(
    raw: Vec<RawApi>,
    errors: &mut Vec<ConfigError>,
) -> (Vec<Arc<Api>>, HashSet<String>) {
    let mut apis = Vec::new();
    let mut names = HashSet::new();
    if raw.is_empty() {
        errors.push(err(
            "apis",
            "no APIs are configured: add at least one [[apis]] entry",
        ));
    }
    for (i, a) in raw.into_iter().enumerate() {
        let p = format!("apis[{i}]");
        if let Some(api) = validate_api(&p, a, errors) {
            if !names.insert(api.name.clone()) {
                errors.push(err(
                    format!("{p}.name"),
                    format!("duplicate API name {:?}", api.name),
                ));
            }
            apis.push(Arc::new(api));
        }
    }

    (apis, names)
}

fn validate_api(p: &str, a: RawApi, errors: &mut Vec<ConfigError>) -> Option<Api> {
    let before = errors.len();
    let name_ok = !a.name.is_empty()
        && a.name.len() <= 64
        && a.name
            .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && a.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        errors.push(err(
            format!("{p}.name"),
            format!(
                "{:?} must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit \
                 (it is the first path segment on the proxy door)",
                a.name
            ),
        ));
    }

    let base = match parse_base_url(&a.base_url) {
        Ok(b) => Some(b),
        Err(m) => {
            errors.push(err(format!("{p}.base_url"), m));
            None
        }
    };

    let mut methods = Vec::new();
    for (j, m) in a
        .methods
        .unwrap_or_else(|| vec!["GET".into()])
        .iter()
        .enumerate()
    {
        let upper = m.to_ascii_uppercase();
        if SUPPORTED_METHODS.contains(&upper.as_str()) {
            if let Ok(method) = Method::from_bytes(upper.as_bytes()) {
                if !methods.contains(&method) {
                    methods.push(method);
                }
            }
        } else {
            errors.push(err(
                format!("{p}.methods[{j}]"),
                format!("{m:?} is not one of {}", SUPPORTED_METHODS.join(", ")),
            ));
        }
    }
    if methods.is_empty() && errors.len() == before {
        errors.push(err(
            format!("{p}.methods"),
            "at least one method is required",
        ));
    }

    let mut patterns = |key: &str, list: &[String]| -> Vec<PathPattern> {
        list.iter()
            .enumerate()
            .filter_map(|(j, s)| match PathPattern::parse(s) {
                Ok(pat) => Some(pat),
                Err(m) => {
                    errors.push(err(format!("{p}.{key}[{j}]"), m));
                    None
                }
            })
            .collect()
    };
    let paths = patterns("paths", &a.paths);
    let deny_paths = patterns("deny_paths", &a.deny_paths);
    if a.paths.is_empty() {
        errors.push(err(
            format!("{p}.paths"),
            "no paths are allowed (deny by default): list patterns such as \"/v1/**\", or \"/**\" for all",
        ));
    }

    let (credential, dynamic_credential) = match a.credentials.and_then(|c| {
        super::credentials::validate_credentials(&format!("{p}.credentials"), c, errors)
    }) {
        Some(super::credentials::Credentials::Static(c)) => (Some(c), None),
        Some(super::credentials::Credentials::Dynamic(d)) => (None, Some(Arc::new(d))),
        None => (None, None),
    };

    let timeout = a.timeout.map_or(Duration::from_secs(30), |d| d.0);
    let connect_timeout = a.connect_timeout.map_or(Duration::from_secs(5), |d| d.0);
    if timeout.is_zero() {
        errors.push(err(format!("{p}.timeout"), "must be greater than 0"));
    }
    if connect_timeout.is_zero() {
        errors.push(err(
            format!("{p}.connect_timeout"),
            "must be greater than 0",
        ));
    }
    let rate_limit = a.rate_limit.and_then(|r| {
        rate_policy(
            &format!("{p}.rate_limit"),
            &format!("api.{}", a.name),
            r,
            errors,
        )
    });
    let mut endpoint_rate_limits = Vec::new();
    for (j, e) in a.endpoint_rate_limits.into_iter().enumerate() {
        let ep = format!("{p}.endpoint_rate_limits[{j}]");
        let pattern = match PathPattern::parse(&e.path) {
            Ok(pat) => Some(pat),
            Err(m) => {
                errors.push(err(format!("{ep}.path"), m));
                None
            }
        };
        let raw = RawRateLimit {
            requests: e.requests,
            window: e.window,
            burst: e.burst,
            mode: Default::default(),
        };
        let policy = rate_policy(&ep, &format!("api.{}:{}", a.name, e.path), raw, errors);
        if let (Some(pattern), Some(policy)) = (pattern, policy) {
            endpoint_rate_limits.push((pattern, policy));
        }
    }
    if a.max_response_bytes == Some(0) {
        errors.push(err(
            format!("{p}.max_response_bytes"),
            "must be greater than 0",
        ));
    }
    let response = super::response::validate(p, a.response, a.max_response_bytes, errors);

    if a.cost_per_call
        .is_some_and(|c| !(c.is_finite() && c >= 0.0))
    {
        errors.push(err(format!("{p}.cost_per_call"), "must be a number ≥ 0"));
    }
    let follow_redirects = a.follow_redirects.unwrap_or(0);
    if follow_redirects > 3 {
        errors.push(err(
            format!("{p}.follow_redirects"),
            "at most 3 redirects may be followed",
        ));
    }

    let openapi = a.openapi.and_then(|o| {
        super::openapi::validate_openapi(&format!("{p}.openapi"), o, &a.name, errors)
    });

    if errors.len() != before {
        return None;
    }
    Some(Api {
        openapi,
        cost_per_call: a.cost_per_call,
        require_signature: a.require_signature,
        follow_redirects,
        description: a
            .description
            .unwrap_or_else(|| format!("The {} API", a.name)),
        name: a.name,
        base: base?,
        methods,
        paths,
        deny_paths,
        timeout,
        connect_timeout,
        allow_private_network: a.allow_private_network,
        case_insensitive_paths: a.case_insensitive_paths,
        credential,
        dynamic_credential,
        response,
        shadow: a.mode == crate::types::RuleMode::Shadow,
        rate_limit,
        endpoint_rate_limits,
    })
}

impl Api {
    /// How the API's allow rules and endpoint limits compare path literals.
    pub fn path_case(&self) -> crate::types::Case {
        if self.case_insensitive_paths {
            crate::types::Case::Insensitive
        } else {
            crate::types::Case::Sensitive
        }
    }

    /// An internal destination the gateway itself calls (a JWKS document, an introspection
    /// endpoint): same egress path, SSRF guard and deadlines as an API, no caller-facing rules.
    pub fn internal(
        name: &str,
        url: &str,
        allow_private_network: bool,
        timeout: Duration,
    ) -> Result<Api, String> {
        let base = parse_base_url(url)?;
        Ok(Api {
            name: name.to_string(),
            base,
            description: String::new(),
            methods: vec![Method::GET, Method::POST],
            paths: Vec::new(),
            deny_paths: Vec::new(),
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(5)),
            allow_private_network,
            case_insensitive_paths: false,
            credential: None,
            dynamic_credential: None,
            response: super::response::ResponseShaping {
                max_upstream_bytes: Some(1 << 20),
                ..Default::default()
            },
            shadow: false,
            rate_limit: None,
            endpoint_rate_limits: Vec::new(),
            require_signature: false,
            follow_redirects: 0,
            cost_per_call: None,
            openapi: None,
        })
    }
}

/// Parses and checks an API's `base_url`: http(s), a host, no credentials, query or fragment.
pub fn parse_base_url(s: &str) -> Result<BaseUrl, String> {
    let u = url::Url::parse(s).map_err(|e| {
        format!(
            "{s:?} is not an absolute URL ({e}): a base URL is a scheme, a host and an optional path, such as \"https://api.example.com/v1\""
        )
    })?;
    let tls = match u.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(format!(
                "scheme {other:?} is not supported; use http or https"
            ))
        }
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not contain credentials; use `credentials` instead".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not contain a query or fragment".into());
    }
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("has no host".into()),
    };
    let port = u
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    Ok(BaseUrl {
        authority: authority(tls, &host, port),
        tls,
        host,
        port,
        path: u.path().trim_end_matches('/').to_string(),
        original: s.to_string(),
    })
}
