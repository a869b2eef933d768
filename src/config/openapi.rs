//! `[apis.openapi]`: where an API's OpenAPI document comes from (a file, a URL or inline
//! text), which of its operations become MCP tools and under what names, when the API
//! switches to progressive discovery, the limits that keep a hostile document cheap, and the
//! pin that holds the tool surface still until an operator approves a change.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{err, ConfigError, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOpenApi {
    file: Option<String>,
    url: Option<String>,
    inline: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    tool_prefix: Option<String>,
    max_tools: Option<usize>,
    max_list_bytes: Option<usize>,
    pin_sha256: Option<String>,
    on_change: Option<String>,
    refresh: Option<HumanDuration>,
    max_document_bytes: Option<usize>,
    max_schema_depth: Option<usize>,
    max_subschemas: Option<usize>,
}

/// Where the document is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentSource {
    /// A path; relative paths are resolved against the config file's directory.
    File(PathBuf),
    /// Fetched through the egress guard: no redirects, capped at `max_document_bytes`.
    Url(url::Url),
    /// The document itself, in the config.
    Inline(String),
}

/// What to do when the document, and so the tool surface, changes from the pinned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Keep serving the pinned surface (the default).
    Block,
    /// Serve the new surface, and report the drift.
    Warn,
    /// Serve the new surface when the change only adds; otherwise keep the pinned one.
    AcceptAdditive,
}

impl OnChange {
    pub fn as_str(self) -> &'static str {
        match self {
            OnChange::Block => "block",
            OnChange::Warn => "warn",
            OnChange::AcceptAdditive => "accept_additive",
        }
    }
}

/// One `include`/`exclude` entry: `tag:GLOB`, `method:METHOD`, or a glob over operation ids
/// (`*` and `?`; an operation without an id is matched by its generated name).
#[derive(Debug, Clone)]
pub enum OperationFilter {
    Tag(globset::GlobMatcher),
    Method(http::Method),
    Id(globset::GlobMatcher),
}

impl OperationFilter {
    /// Whether the filter selects an operation with this id, method and tags.
    pub fn matches(&self, id: &str, method: &http::Method, tags: &[String]) -> bool {
        match self {
            OperationFilter::Tag(g) => tags.iter().any(|t| g.is_match(t)),
            OperationFilter::Method(m) => m == method,
            OperationFilter::Id(g) => g.is_match(id),
        }
    }
}

/// A validated `[apis.openapi]`.
#[derive(Debug, Clone)]
pub struct OpenApiConfig {
    pub source: DocumentSource,
    pub include: Vec<OperationFilter>,
    pub exclude: Vec<OperationFilter>,
    /// Put before every generated tool name. Default `"{api name}_"`.
    pub tool_prefix: String,
    /// Above this many operations the API is not expanded into tools: its operations are
    /// found with `list_apis` and called with `api_gateway`'s `operation`. Default 64.
    pub max_tools: usize,
    /// The same switch by size: the API's generated tools as JSON over this many bytes.
    /// Default 256 KiB.
    pub max_list_bytes: usize,
    /// The approved document's canonical SHA-256 (hex).
    pub pin_sha256: Option<String>,
    pub on_change: OnChange,
    /// How often the document is read again (file) or fetched again (URL); none = only at
    /// start and reload.
    pub refresh: Option<Duration>,
    /// Default 32 MiB.
    pub max_document_bytes: usize,
    /// How deep one operation's schemas may nest. Default 64.
    pub max_schema_depth: usize,
    /// How many subschemas one operation's input and output may hold. Default 5000.
    pub max_subschemas: usize,
}

pub(super) fn validate_openapi(
    p: &str,
    raw: RawOpenApi,
    api_name: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<OpenApiConfig> {
    let before = errors.len();
    let source = match (raw.file, raw.url, raw.inline) {
        (Some(f), None, None) if !f.is_empty() => Some(DocumentSource::File(PathBuf::from(f))),
        (None, Some(u), None) => match url::Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(DocumentSource::Url(url))
            }
            Ok(_) => {
                errors.push(err(
                    format!("{p}.url"),
                    format!("{u:?} must be an http:// or https:// URL with a host"),
                ));
                None
            }
            Err(e) => {
                errors.push(err(
                    format!("{p}.url"),
                    format!("{u:?} is not an absolute URL ({e})"),
                ));
                None
            }
        },
        (None, None, Some(text)) => Some(DocumentSource::Inline(text)),
        (None, None, None) | (Some(_), None, None) => {
            errors.push(err(
                p,
                "set one of file, url or inline: where the OpenAPI document comes from",
            ));
            None
        }
        _ => {
            errors.push(err(p, "set only one of file, url and inline"));
            None
        }
    };
    let mut filters = |key: &str, list: Vec<String>| -> Vec<OperationFilter> {
        let mut out = Vec::new();
        for (j, entry) in list.into_iter().enumerate() {
            let glob = |g: &str| {
                globset::GlobBuilder::new(g)
                    .literal_separator(false)
                    .build()
                    .map(|g| g.compile_matcher())
            };
            let f = if let Some(tag) = entry.strip_prefix("tag:") {
                glob(tag)
                    .map(OperationFilter::Tag)
                    .map_err(|e| e.to_string())
            } else if let Some(m) = entry.strip_prefix("method:") {
                let upper = m.to_ascii_uppercase();
                if super::api::SUPPORTED_METHODS.contains(&upper.as_str()) {
                    http::Method::from_bytes(upper.as_bytes())
                        .map(OperationFilter::Method)
                        .map_err(|e| e.to_string())
                } else {
                    Err(format!(
                        "method {m:?} is not one of {}",
                        super::api::SUPPORTED_METHODS.join(", ")
                    ))
                }
            } else {
                glob(&entry)
                    .map(OperationFilter::Id)
                    .map_err(|e| e.to_string())
            };
            match f {
                Ok(f) => out.push(f),
                Err(m) => errors.push(err(
                    format!("{p}.{key}[{j}]"),
                    format!("{entry:?}: {m} (entries are \"tag:GLOB\", \"method:GET\" or an operationId glob)"),
                )),
            }
        }
        out
    };
    let include = filters("include", raw.include);
    let exclude = filters("exclude", raw.exclude);
    let tool_prefix = raw.tool_prefix.unwrap_or_else(|| format!("{api_name}_"));
    if tool_prefix.len() > 65
        || !tool_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        errors.push(err(
            format!("{p}.tool_prefix"),
            format!(
                "{tool_prefix:?} must be at most 65 characters of A-Z, a-z, 0-9, '_', '-' or '.' \
                 (the characters MCP allows in tool names)"
            ),
        ));
    }
    let pin_sha256 = match raw.pin_sha256 {
        Some(pin) => {
            let lower = pin.to_ascii_lowercase();
            if lower.len() == 64 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
                Some(lower)
            } else {
                errors.push(err(
                    format!("{p}.pin_sha256"),
                    "must be 64 hex digits: the document's fingerprint as `surface diff` or \
                     `openapi inspect` prints it",
                ));
                None
            }
        }
        None => None,
    };
    let on_change = match raw.on_change.as_deref() {
        None | Some("block") => OnChange::Block,
        Some("warn") => OnChange::Warn,
        Some("accept_additive") => OnChange::AcceptAdditive,
        Some(other) => {
            errors.push(err(
                format!("{p}.on_change"),
                format!("{other:?} is not one of \"block\", \"warn\", \"accept_additive\""),
            ));
            OnChange::Block
        }
    };
    let refresh = raw.refresh.map(|d| d.0);
    if refresh.is_some_and(|d| d < Duration::from_millis(100)) {
        errors.push(err(format!("{p}.refresh"), "must be at least 100ms"));
    }
    if refresh.is_some() && matches!(source, Some(DocumentSource::Inline(_))) {
        errors.push(err(
            format!("{p}.refresh"),
            "an inline document never changes: refresh applies to file and url",
        ));
    }
    let positive =
        |key: &str, v: Option<usize>, default: usize, errors: &mut Vec<ConfigError>| match v {
            Some(0) => {
                errors.push(err(format!("{p}.{key}"), "must be at least 1"));
                default
            }
            Some(n) => n,
            None => default,
        };
    let max_tools = positive("max_tools", raw.max_tools, 64, errors);
    let max_list_bytes = positive("max_list_bytes", raw.max_list_bytes, 256 * 1024, errors);
    let max_document_bytes = positive(
        "max_document_bytes",
        raw.max_document_bytes,
        32 << 20,
        errors,
    );
    let max_schema_depth = positive("max_schema_depth", raw.max_schema_depth, 64, errors);
    let max_subschemas = positive("max_subschemas", raw.max_subschemas, 5000, errors);
    if errors.len() != before {
        return None;
    }
    Some(OpenApiConfig {
        source: source?,
        include,
        exclude,
        tool_prefix,
        max_tools,
        max_list_bytes,
        pin_sha256,
        on_change,
        refresh,
        max_document_bytes,
        max_schema_depth,
        max_subschemas,
    })
}
