//! `[apis.response]`: how an API's answers are shaped before a model sees them — a hard cap
//! on what is read, a cap on what is returned (cut so JSON still parses), a JMESPath
//! projection and an optional caller `select`, and redaction of secrets.

use std::sync::Arc;

use serde::Deserialize;

use super::{err, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponse {
    max_upstream_bytes: Option<usize>,
    max_result_chars: Option<usize>,
    project: Option<String>,
    allow_agent_select: Option<bool>,
    redact: Option<RawRedact>,
    binary: Option<BinaryMode>,
}

/// What a binary answer (an image, a PDF, an archive) becomes for a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryMode {
    /// Images up to 1 MiB inline as image content; anything else stored for a while and
    /// returned as a `resource_link` that only the same caller can read (`resources/read`).
    #[default]
    ResourceLink,
    /// Images as image content, anything else as an embedded resource, in the result.
    Inline,
    /// `isError` `unsupported_media_type`.
    Reject,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedact {
    patterns: Option<Vec<String>>,
    json_paths: Option<Vec<String>>,
    proxy_door: Option<bool>,
}

/// A compiled JMESPath expression (the `project` of an API, or a caller's `select`).
#[derive(Clone)]
pub struct Query(Arc<jmespath::Expression<'static>>);

impl Query {
    /// Longest expression accepted: the language has no loops, so its cost is bounded by
    /// the expression's size times the document's; this bounds the first factor.
    pub const MAX_LEN: usize = 1024;

    pub fn compile(text: &str) -> Result<Query, String> {
        if text.len() > Query::MAX_LEN {
            return Err(format!(
                "a JMESPath expression may be at most {} characters",
                Query::MAX_LEN
            ));
        }
        jmespath::compile(text)
            .map(|e| Query(Arc::new(e)))
            .map_err(|e| e.to_string())
    }

    /// Applies the expression; an expression that does not fit the data (a function given
    /// the wrong type) is an error with the interpreter's message.
    pub fn apply(&self, data: &serde_json::Value) -> Result<serde_json::Value, String> {
        let found = self.0.search(data).map_err(|e| e.to_string())?;
        serde_json::to_value(&*found).map_err(|e| e.to_string())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Query({:?})", self.0.as_str())
    }
}

/// The secret formats redaction knows, by the name written in `redact.patterns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    Jwt,
    Github,
    Aws,
    Stripe,
    Pem,
    Slack,
}

impl SecretKind {
    pub const ALL: [SecretKind; 6] = [
        SecretKind::Jwt,
        SecretKind::Github,
        SecretKind::Aws,
        SecretKind::Stripe,
        SecretKind::Pem,
        SecretKind::Slack,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SecretKind::Jwt => "jwt",
            SecretKind::Github => "github",
            SecretKind::Aws => "aws",
            SecretKind::Stripe => "stripe",
            SecretKind::Pem => "pem",
            SecretKind::Slack => "slack",
        }
    }

    /// The regular expression that finds it.
    pub fn pattern(self) -> &'static str {
        match self {
            SecretKind::Jwt => r"eyJ[A-Za-z0-9_-]{6,}\.eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}",
            SecretKind::Github => r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
            SecretKind::Aws => r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
            SecretKind::Stripe => r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
            SecretKind::Pem => {
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
            }
            SecretKind::Slack => r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
        }
    }
}

/// What is redacted from an API's answers (besides its own credential, always).
#[derive(Debug, Clone)]
pub struct Redaction {
    /// Secret formats found anywhere in bodies, headers and error texts. Default: all.
    pub patterns: Vec<SecretKind>,
    /// JSONPath (RFC 9535) expressions whose values are replaced in JSON bodies.
    pub json_paths: Vec<(String, serde_json_path::JsonPath)>,
    /// Also redact on the proxy door: bodies are then held whole (up to the API's
    /// `max_upstream_bytes`) and sent chunked. Default false: the proxy door streams.
    pub proxy_door: bool,
}

/// How an API's answers are shaped on the MCP door.
#[derive(Debug, Clone)]
pub struct ResponseShaping {
    /// The most body bytes read from the upstream; the read stops there. `None`: the
    /// gateway-wide `[mcp] max_response_bytes` (default 10 MiB).
    pub max_upstream_bytes: Option<usize>,
    /// The proxy door's cap: `max_upstream_bytes` when written under `[apis.response]` (the
    /// older `max_response_bytes` caps only the MCP door, as it always did).
    pub proxy_max_bytes: Option<usize>,
    /// The most characters of data a model is given; larger JSON is cut so it still parses.
    /// Default 40,000.
    pub max_result_chars: usize,
    /// Applied to a JSON body before anything else.
    pub project: Option<Query>,
    /// Callers may pass `select` (JMESPath) to `api_gateway`.
    pub allow_agent_select: bool,
    pub redact: Redaction,
    pub binary: BinaryMode,
}

impl Default for ResponseShaping {
    fn default() -> Self {
        ResponseShaping {
            max_upstream_bytes: None,
            proxy_max_bytes: None,
            max_result_chars: 40_000,
            project: None,
            allow_agent_select: false,
            binary: BinaryMode::default(),
            redact: Redaction {
                patterns: SecretKind::ALL.to_vec(),
                json_paths: Vec::new(),
                proxy_door: false,
            },
        }
    }
}

/// Validates `apis[i].response` (`p` is `apis[i]`); `legacy_cap` is the API's older
/// `max_response_bytes`, the read cap when `max_upstream_bytes` is not set.
pub(super) fn validate(
    p: &str,
    raw: Option<RawResponse>,
    legacy_cap: Option<usize>,
    errors: &mut Vec<ConfigError>,
) -> ResponseShaping {
    let d = ResponseShaping::default();
    let Some(raw) = raw else {
        return ResponseShaping {
            max_upstream_bytes: legacy_cap,
            ..d
        };
    };
    let positive = |errors: &mut Vec<ConfigError>, key: &str, v: Option<usize>, default| match v {
        Some(0) => {
            errors.push(err(format!("{p}.response.{key}"), "must be greater than 0"));
            default
        }
        Some(n) => n,
        None => default,
    };
    let proxy_max_bytes = raw
        .max_upstream_bytes
        .map(|n| positive(errors, "max_upstream_bytes", Some(n), n));
    let max_upstream_bytes = proxy_max_bytes.or(legacy_cap);
    if raw.max_upstream_bytes.is_some() && legacy_cap.is_some() {
        errors.push(err(
            format!("{p}.max_response_bytes"),
            "set response.max_upstream_bytes or its older name max_response_bytes, not both",
        ));
    }
    let max_result_chars = positive(
        errors,
        "max_result_chars",
        raw.max_result_chars,
        d.max_result_chars,
    );
    if max_result_chars < 200 {
        errors.push(err(
            format!("{p}.response.max_result_chars"),
            "must be at least 200: a model needs room for the result's envelope",
        ));
    }
    let project = raw.project.and_then(|text| {
        Query::compile(&text)
            .map_err(|e| {
                errors.push(err(
                    format!("{p}.response.project"),
                    format!("not a JMESPath expression: {e}"),
                ))
            })
            .ok()
    });
    let mut redact = d.redact;
    if let Some(r) = raw.redact {
        redact.proxy_door = r.proxy_door.unwrap_or(false);
        if let Some(names) = r.patterns {
            redact.patterns = Vec::new();
            for (i, name) in names.iter().enumerate() {
                match SecretKind::ALL.iter().find(|k| k.name() == name) {
                    Some(k) => redact.patterns.push(*k),
                    None => errors.push(err(
                        format!("{p}.response.redact.patterns[{i}]"),
                        format!(
                            "unknown secret format {name:?}; known: {}",
                            SecretKind::ALL.map(SecretKind::name).join(", ")
                        ),
                    )),
                }
            }
        }
        for (i, path) in r.json_paths.unwrap_or_default().into_iter().enumerate() {
            match serde_json_path::JsonPath::parse(&path) {
                Ok(q) => redact.json_paths.push((path, q)),
                Err(e) => errors.push(err(
                    format!("{p}.response.redact.json_paths[{i}]"),
                    format!("not a JSONPath expression (e.g. \"$.user.email\"): {e}"),
                )),
            }
        }
    }
    ResponseShaping {
        max_upstream_bytes,
        proxy_max_bytes,
        max_result_chars,
        project,
        allow_agent_select: raw.allow_agent_select.unwrap_or(false),
        redact,
        binary: raw.binary.unwrap_or_default(),
    }
}
