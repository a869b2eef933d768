//! How an API's upstream credential is obtained: `credentials.mode` per API (`static`, the
//! default; `per_principal`, a secret per caller from the credential store; `token_exchange`,
//! RFC 8693 against a token endpoint; `user_oauth`, the user's own account connected once),
//! and `[credential_store]`, where per-caller secrets live, encrypted.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::api::{Credential, CredentialPlacement};
use super::values::HumanDuration;
use super::{err, ConfigError};

/// `credentials = { … }` on an API, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredentials {
    mode: Option<String>,
    header: Option<String>,
    query: Option<String>,
    value: Option<String>,
    format: Option<String>,
    on_missing: Option<String>,
    token_endpoint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_auth: Option<String>,
    scope: Option<String>,
    audience: Option<String>,
    resource: Option<String>,
    requested_token_type: Option<String>,
    refresh_skew: Option<HumanDuration>,
    failure_ttl: Option<HumanDuration>,
    authorization_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    issuer: Option<String>,
    allow_private_network: Option<bool>,
    timeout: Option<HumanDuration>,
}

/// What becomes of a call whose caller has no credential for the API yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// Refused with `credential_required` and the `connect_url`.
    Deny,
    /// MCP clients that can elicit are sent to the connect page and the call is retried;
    /// everyone else is refused as with `Deny`.
    Connect,
}

/// How the gateway authenticates to the identity provider's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic` (RFC 6749 §2.3.1). The default.
    Basic,
    /// `client_secret_post`: the id and secret in the form.
    Post,
}

/// An OAuth client of the gateway's: where tokens come from and how it authenticates there.
#[derive(Clone)]
pub struct OAuthClient {
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_auth: ClientAuth,
    /// The endpoints may be on private addresses (an in-cluster identity provider).
    pub allow_private_network: bool,
    pub timeout: Duration,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OAuthClient({}, client_id={}, secret=<redacted>)",
            self.token_endpoint, self.client_id
        )
    }
}

/// `mode = "token_exchange"` (RFC 8693).
#[derive(Debug, Clone)]
pub struct TokenExchange {
    pub client: OAuthClient,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub requested_token_type: String,
    /// An exchanged token is used until `exp` minus this. Default 30 s.
    pub refresh_skew: Duration,
    /// A failed exchange is remembered this long, so a down endpoint is not hammered.
    /// Default 5 s.
    pub failure_ttl: Duration,
}

/// `mode = "user_oauth"`: authorization code with PKCE, the user's own account.
#[derive(Debug, Clone)]
pub struct UserOAuth {
    pub client: OAuthClient,
    pub authorization_endpoint: String,
    pub revocation_endpoint: Option<String>,
    /// The authorization server's issuer identifier, checked against the callback's `iss`
    /// (RFC 9207) when the server sends one.
    pub issuer: Option<String>,
    pub scope: Option<String>,
    /// Access tokens are refreshed this long before they expire. Default 30 s.
    pub refresh_skew: Duration,
}

/// Where a credential that is not static comes from.
#[derive(Debug, Clone)]
pub enum CredentialMode {
    PerPrincipal,
    TokenExchange(Box<TokenExchange>),
    UserOAuth(Box<UserOAuth>),
}

impl CredentialMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialMode::PerPrincipal => "per_principal",
            CredentialMode::TokenExchange(_) => "token_exchange",
            CredentialMode::UserOAuth(_) => "user_oauth",
        }
    }

    /// Whether the credential lives in the credential store.
    pub fn stored(&self) -> bool {
        !matches!(self, CredentialMode::TokenExchange(_))
    }
}

/// A credential obtained per call: where it goes, how its value is written, and where it
/// comes from.
#[derive(Debug, Clone)]
pub struct DynamicCredential {
    pub mode: CredentialMode,
    pub placement: CredentialPlacement,
    /// The injected value, with `{secret}` standing for the secret or token. Default
    /// `"Bearer {secret}"` in `Authorization`, else `"{secret}"`.
    pub format: String,
    pub on_missing: OnMissing,
}

impl DynamicCredential {
    /// The credential to inject for `secret`, with its masking forms worked out.
    pub fn with_secret(&self, secret: &str) -> Credential {
        Credential::new(
            self.placement.clone(),
            self.format.replace("{secret}", secret),
        )
    }
}

/// What an API's `credentials` table configures.
pub(super) enum Credentials {
    Static(Credential),
    Dynamic(DynamicCredential),
}

/// Keys that belong to each mode; anything else set in the table is an error at its path.
const MODE_KEYS: &[(&str, &[&str])] = &[
    ("static", &["mode", "header", "query", "value"]),
    (
        "per_principal",
        &["mode", "header", "query", "format", "on_missing"],
    ),
    (
        "token_exchange",
        &[
            "mode",
            "header",
            "query",
            "format",
            "token_endpoint",
            "client_id",
            "client_secret",
            "client_auth",
            "scope",
            "audience",
            "resource",
            "requested_token_type",
            "refresh_skew",
            "failure_ttl",
            "allow_private_network",
            "timeout",
        ],
    ),
    (
        "user_oauth",
        &[
            "mode",
            "header",
            "query",
            "format",
            "on_missing",
            "token_endpoint",
            "client_id",
            "client_secret",
            "client_auth",
            "scope",
            "refresh_skew",
            "authorization_endpoint",
            "revocation_endpoint",
            "issuer",
            "allow_private_network",
            "timeout",
        ],
    ),
];

/// Validates an API's `credentials` table (`cp` is its key path).
pub(super) fn validate_credentials(
    cp: &str,
    c: RawCredentials,
    errors: &mut Vec<ConfigError>,
) -> Option<Credentials> {
    let mode = c.mode.clone().unwrap_or_else(|| "static".to_string());
    let Some((_, allowed)) = MODE_KEYS.iter().find(|(m, _)| *m == mode) else {
        errors.push(err(
            format!("{cp}.mode"),
            format!(
                "{mode:?} is not one of \"static\", \"per_principal\", \"token_exchange\", \"user_oauth\""
            ),
        ));
        return None;
    };
    let set: [(&str, bool); 21] = [
        ("mode", c.mode.is_some()),
        ("header", c.header.is_some()),
        ("query", c.query.is_some()),
        ("value", c.value.is_some()),
        ("format", c.format.is_some()),
        ("on_missing", c.on_missing.is_some()),
        ("token_endpoint", c.token_endpoint.is_some()),
        ("client_id", c.client_id.is_some()),
        ("client_secret", c.client_secret.is_some()),
        ("client_auth", c.client_auth.is_some()),
        ("scope", c.scope.is_some()),
        ("audience", c.audience.is_some()),
        ("resource", c.resource.is_some()),
        ("requested_token_type", c.requested_token_type.is_some()),
        ("refresh_skew", c.refresh_skew.is_some()),
        ("failure_ttl", c.failure_ttl.is_some()),
        ("authorization_endpoint", c.authorization_endpoint.is_some()),
        ("revocation_endpoint", c.revocation_endpoint.is_some()),
        ("issuer", c.issuer.is_some()),
        ("allow_private_network", c.allow_private_network.is_some()),
        ("timeout", c.timeout.is_some()),
    ];
    let before = errors.len();
    for (key, present) in set {
        if present && !allowed.contains(&key) {
            errors.push(err(
                format!("{cp}.{key}"),
                format!("does not apply to mode = {mode:?}"),
            ));
        }
    }
    let placement = placement(cp, c.header, c.query, errors);
    if mode == "static" {
        let value = match c.value {
            Some(v) if v.is_empty() => {
                errors.push(err(
                    format!("{cp}.value"),
                    "is empty (did the environment variable expand to nothing?)",
                ));
                return None;
            }
            Some(v) => v,
            None => {
                errors.push(err(
                    format!("{cp}.value"),
                    "is required for mode = \"static\" (the credential itself, e.g. \"Bearer ${TOKEN}\")",
                ));
                return None;
            }
        };
        if http::HeaderValue::from_str(&value).is_err() {
            errors.push(err(
                format!("{cp}.value"),
                "contains characters not allowed in a header",
            ));
        }
        return placement.map(|p| Credentials::Static(Credential::new(p, value)));
    }

    let placement = placement?;
    let format = c.format.unwrap_or_else(|| match &placement {
        CredentialPlacement::Header(h) if h == http::header::AUTHORIZATION => {
            "Bearer {secret}".to_string()
        }
        _ => "{secret}".to_string(),
    });
    if !format.contains("{secret}") {
        errors.push(err(
            format!("{cp}.format"),
            format!("{format:?} does not contain {{secret}}, where the secret goes"),
        ));
    }
    let on_missing = match c.on_missing.as_deref() {
        None | Some("connect") => OnMissing::Connect,
        Some("deny") => OnMissing::Deny,
        Some(other) => {
            errors.push(err(
                format!("{cp}.on_missing"),
                format!("{other:?} is not one of \"deny\", \"connect\""),
            ));
            OnMissing::Deny
        }
    };
    let timeout = c.timeout.map_or(Duration::from_secs(10), |d| d.0);
    let refresh_skew = c.refresh_skew.map_or(Duration::from_secs(30), |d| d.0);
    let mut url = |key: &str, v: Option<String>, required: bool| -> Option<String> {
        match v {
            Some(u) => match url::Url::parse(&u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => Some(u),
                _ => {
                    errors.push(err(
                        format!("{cp}.{key}"),
                        format!("{u:?} is not an absolute http(s) URL such as \"https://idp.example/oauth/token\""),
                    ));
                    None
                }
            },
            None if required => {
                errors.push(err(
                    format!("{cp}.{key}"),
                    format!("is required for mode = {mode:?}"),
                ));
                None
            }
            None => None,
        }
    };
    let token_endpoint = url("token_endpoint", c.token_endpoint, mode != "per_principal");
    let authorization_endpoint = url(
        "authorization_endpoint",
        c.authorization_endpoint,
        mode == "user_oauth",
    );
    let revocation_endpoint = url("revocation_endpoint", c.revocation_endpoint, false);
    let client_auth = match c.client_auth.as_deref() {
        None | Some("basic") => ClientAuth::Basic,
        Some("post") => ClientAuth::Post,
        Some(other) => {
            errors.push(err(
                format!("{cp}.client_auth"),
                format!("{other:?} is not one of \"basic\", \"post\""),
            ));
            ClientAuth::Basic
        }
    };
    if mode != "per_principal" && c.client_id.as_deref().is_none_or(str::is_empty) {
        errors.push(err(
            format!("{cp}.client_id"),
            format!("is required for mode = {mode:?} (the gateway's client at the token endpoint)"),
        ));
    }
    if errors.len() > before {
        return None;
    }
    let client = token_endpoint.map(|token_endpoint| OAuthClient {
        token_endpoint,
        client_id: c.client_id.unwrap_or_default(),
        client_secret: c.client_secret.filter(|s| !s.is_empty()),
        client_auth,
        allow_private_network: c.allow_private_network.unwrap_or(false),
        timeout,
    });
    let mode = match (mode.as_str(), client) {
        ("per_principal", _) => CredentialMode::PerPrincipal,
        ("token_exchange", Some(client)) => {
            CredentialMode::TokenExchange(Box::new(TokenExchange {
                client,
                audience: c.audience,
                resource: c.resource,
                scope: c.scope,
                requested_token_type: c
                    .requested_token_type
                    .unwrap_or_else(|| "urn:ietf:params:oauth:token-type:access_token".to_string()),
                refresh_skew,
                failure_ttl: c.failure_ttl.map_or(Duration::from_secs(5), |d| d.0),
            }))
        }
        ("user_oauth", Some(client)) => CredentialMode::UserOAuth(Box::new(UserOAuth {
            client,
            authorization_endpoint: authorization_endpoint?,
            revocation_endpoint,
            issuer: c.issuer,
            scope: c.scope,
            refresh_skew,
        })),
        _ => return None,
    };
    Some(Credentials::Dynamic(DynamicCredential {
        mode,
        placement,
        format,
        on_missing,
    }))
}

/// `header` or `query`: exactly one, naming where the credential goes.
fn placement(
    cp: &str,
    header: Option<String>,
    query: Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<CredentialPlacement> {
    match (header, query) {
        (Some(h), None) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) if !crate::types::headers::is_framing_header(&name) => {
                Some(CredentialPlacement::Header(name))
            }
            Ok(_) => {
                errors.push(err(
                    format!("{cp}.header"),
                    format!("{h:?} cannot carry a credential"),
                ));
                None
            }
            Err(_) => {
                errors.push(err(
                    format!("{cp}.header"),
                    format!("{h:?} is not a valid header name"),
                ));
                None
            }
        },
        (None, Some(q)) if !q.is_empty() => Some(CredentialPlacement::Query(q)),
        (None, Some(_)) => {
            errors.push(err(format!("{cp}.query"), "must not be empty"));
            None
        }
        _ => {
            errors.push(err(cp, "set exactly one of `header` or `query`"));
            None
        }
    }
}

/// `[credential_store]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredentialStore {
    kind: String,
    path: Option<PathBuf>,
    url: Option<String>,
    prefix: Option<String>,
    key_env: String,
    #[serde(default)]
    old_key_envs: Vec<String>,
}

/// Where per-caller credentials are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// One replica: a SQLite file.
    Sqlite(PathBuf),
    /// Many replicas: Redis (`url`, default the rate limiter's), keys under `prefix`.
    Redis { url: String, prefix: String },
}

/// `[credential_store]`: where per-caller secrets live, and the keys that encrypt them.
#[derive(Clone)]
pub struct CredentialStoreConfig {
    pub kind: StoreKind,
    /// The key new records are sealed under (AES-256-GCM), from `key_env`.
    pub key: [u8; 32],
    /// Earlier keys, from `old_key_envs`: records sealed under them still open until
    /// `credentials rotate-key` has re-sealed them.
    pub old_keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for CredentialStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CredentialStore({:?}, keys=<redacted> ×{})",
            self.kind,
            1 + self.old_keys.len()
        )
    }
}

/// A 32-byte key from an environment variable: 64 hex digits, or base64 (standard or
/// URL-safe, padded or not).
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let t = text.trim();
    let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).ok()
    } else {
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines.iter().find_map(|e| e.decode(t).ok())
    };
    match bytes {
        Some(b) => b.try_into().map_err(|b: Vec<u8>| {
            format!("holds {} bytes; the key must be exactly 32 bytes (64 hex digits or 44 base64 characters; `openssl rand -base64 32` makes one)", b.len())
        }),
        None => Err("is neither 64 hex digits nor base64; `openssl rand -base64 32` makes a key".to_string()),
    }
}

/// Validates `[credential_store]`; `redis_url` is the rate limiter's store, the default for
/// a Redis credential store.
pub(super) fn validate_store(
    raw: RawCredentialStore,
    redis_url: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<CredentialStoreConfig> {
    let p = "credential_store";
    let kind = match raw.kind.as_str() {
        "sqlite" => match raw.path {
            Some(path) if !path.as_os_str().is_empty() => {
                if raw.url.is_some() || raw.prefix.is_some() {
                    errors.push(err(
                        format!("{p}.url"),
                        "`url` and `prefix` apply to kind = \"redis\"",
                    ));
                }
                Some(StoreKind::Sqlite(path))
            }
            _ => {
                errors.push(err(
                    format!("{p}.path"),
                    "is required for kind = \"sqlite\" (the database file, e.g. \"credentials.db\")",
                ));
                None
            }
        },
        "redis" => {
            if raw.path.is_some() {
                errors.push(err(format!("{p}.path"), "applies to kind = \"sqlite\""));
            }
            match raw.url.as_deref().or(redis_url) {
                Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {
                    Some(StoreKind::Redis {
                        url: u.to_string(),
                        prefix: raw.prefix.unwrap_or_else(|| "agm:cred:".to_string()),
                    })
                }
                Some(u) => {
                    errors.push(err(
                        format!("{p}.url"),
                        format!("{:?} is not a redis:// or rediss:// URL (cluster and sentinel URLs are not supported for the credential store)", u.split('@').next_back().unwrap_or("")),
                    ));
                    None
                }
                None => {
                    errors.push(err(
                        format!("{p}.url"),
                        "is required for kind = \"redis\" when [rate_limits] has no Redis store",
                    ));
                    None
                }
            }
        }
        other => {
            errors.push(err(
                format!("{p}.kind"),
                format!("{other:?} is not one of \"sqlite\", \"redis\""),
            ));
            None
        }
    };
    let mut key_from = |path: String, var: &str| -> Option<[u8; 32]> {
        match env(var) {
            None => {
                errors.push(err(
                    path,
                    format!("the environment variable {var} is not set (it must hold a 32-byte key, base64 or hex)"),
                ));
                None
            }
            Some(text) => decode_key(&text)
                .map_err(|m| errors.push(err(path, format!("the key in {var} {m}"))))
                .ok(),
        }
    };
    let key = key_from(format!("{p}.key_env"), &raw.key_env);
    let old_keys: Vec<[u8; 32]> = raw
        .old_key_envs
        .iter()
        .enumerate()
        .filter_map(|(i, v)| key_from(format!("{p}.old_key_envs[{i}]"), v))
        .collect();
    Some(CredentialStoreConfig {
        kind: kind?,
        key: key?,
        old_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(extra: &str, creds: &str) -> Result<Config, String> {
        let text = format!(
            "[auth]\nrequired = false\n{extra}\n[[apis]]\nname = \"a\"\nbase_url = \"https://a.example\"\n\
             methods = [\"GET\"]\npaths = [\"/**\"]\ncredentials = {{ {creds} }}\n"
        );
        Config::parse(&text, &|v| (v == "K").then(|| KEY.to_string())).map_err(|e| e.to_string())
    }

    /// Each mode takes its own keys; the rest are named as not applying, required ones as
    /// missing, and a per-caller mode without a store is refused.
    #[test]
    fn modes_are_validated_by_key_path() {
        let store = "[credential_store]\nkind = \"sqlite\"\npath = \"c.db\"\nkey_env = \"K\"";
        let ok = parse(
            store,
            "mode = \"per_principal\", header = \"Authorization\"",
        )
        .unwrap();
        let d = ok.apis[0].dynamic_credential.as_ref().unwrap();
        assert_eq!(d.format, "Bearer {secret}");
        assert_eq!(d.on_missing, OnMissing::Connect);
        assert_eq!(ok.mcp.public_url, "http://127.0.0.1:3000");
        for (extra, creds, wants) in [
            ("", "mode = \"per_principal\", header = \"X-T\"", "apis[0].credentials.mode: \"per_principal\" keeps each caller's credential in [credential_store]"),
            (store, "mode = \"per_principal\", header = \"X-T\", value = \"v\"", "apis[0].credentials.value: does not apply to mode = \"per_principal\""),
            (store, "mode = \"per_principal\", header = \"X-T\", format = \"token\"", "apis[0].credentials.format: \"token\" does not contain {secret}"),
            ("", "mode = \"token_exchange\", header = \"X-T\", client_id = \"g\"", "apis[0].credentials.token_endpoint: is required for mode = \"token_exchange\""),
            ("", "mode = \"token_exchange\", header = \"X-T\", token_endpoint = \"idp/token\", client_id = \"g\"", "is not an absolute http(s) URL"),
            (store, "mode = \"user_oauth\", header = \"X-T\", token_endpoint = \"https://i/t\", client_id = \"g\"", "apis[0].credentials.authorization_endpoint: is required"),
            ("", "mode = \"magic\", header = \"X-T\"", "apis[0].credentials.mode: \"magic\" is not one of"),
            ("", "header = \"X-T\"", "apis[0].credentials.value: is required for mode = \"static\""),
            ("[credential_store]\nkind = \"sqlite\"\npath = \"c.db\"\nkey_env = \"NOPE\"", "header = \"X-T\", value = \"v\"", "credential_store.key_env: the environment variable NOPE is not set"),
            ("[credential_store]\nkind = \"redis\"\nkey_env = \"K\"", "header = \"X-T\", value = \"v\"", "credential_store.url: is required for kind = \"redis\""),
        ] {
            let e = parse(extra, creds).unwrap_err();
            assert!(e.contains(wants), "{creds}: {e}");
        }
    }

    /// A per-caller API on a listener others reach, without `mcp.public_url`: W006.
    #[test]
    fn connect_links_to_loopback_are_warned_about() {
        let store = "[credential_store]\nkind = \"sqlite\"\npath = \"c.db\"\nkey_env = \"K\"";
        let creds = "mode = \"per_principal\", header = \"X-T\"";
        let open = format!("[server]\nmcp_listen = \"0.0.0.0:3000\"\n{store}");
        let c = parse(&open, creds).unwrap();
        let w = crate::config::lint::lint(&c);
        assert!(
            w.iter()
                .any(|w| w.code == "W006" && w.path == "apis[0].credentials"),
            "{w:?}"
        );
        let set = format!("{open}\n[mcp]\npublic_url = \"https://gw.example\"");
        let c = parse(&set, creds).unwrap();
        assert!(crate::config::lint::lint(&c)
            .iter()
            .all(|w| w.code != "W006"));
        assert_eq!(c.mcp.public_url, "https://gw.example");
    }

    #[test]
    fn keys_are_read_as_hex_or_base64_of_exactly_32_bytes() {
        let k = [7u8; 32];
        assert_eq!(decode_key(&hex::encode(k)).unwrap(), k);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(k);
        assert_eq!(decode_key(&b64).unwrap(), k);
        assert!(decode_key("c2hvcnQ=")
            .unwrap_err()
            .contains("holds 5 bytes"));
        assert!(decode_key("not a key!").unwrap_err().contains("neither"));
    }
}
