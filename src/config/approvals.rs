//! `[[approvals]]`: calls that wait for a person before they run. A rule matches calls by
//! API, methods, paths and (optionally) the caller's roles; `mode` says who decides (`self`:
//! the calling user confirms; `external`: an approver with one of `approvers`' roles) or
//! that the rule only records what would need approval (`shadow`).

use std::time::Duration;

use http::Method;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::values::HumanDuration;
use super::{err, ConfigError, PathPattern};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApproval {
    id: Option<String>,
    api: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    mode: Option<String>,
    #[serde(default)]
    approvers: Vec<String>,
    ttl: Option<HumanDuration>,
    grant_ttl: Option<HumanDuration>,
    summary: Option<Vec<String>>,
    webhook: Option<RawWebhook>,
    on_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    secret_env: String,
    timeout: Option<HumanDuration>,
    #[serde(default)]
    allow_private_network: bool,
}

/// Who decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalMode {
    /// The calling user confirms (MCP elicitation).
    SelfConfirm,
    /// An approver decides on the admin listener (`POST /approvals/{id}`).
    External,
    /// Nothing waits: the call runs, and "would need approval" is recorded.
    Shadow,
}

impl ApprovalMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalMode::SelfConfirm => "self",
            ApprovalMode::External => "external",
            ApprovalMode::Shadow => "shadow",
        }
    }
}

/// Where a new approval request is announced: a POST signed with HMAC-SHA256 over
/// `{timestamp}.{body}` (headers `X-Signature-Timestamp`, `X-Signature: sha256=…`).
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
    pub timeout: Duration,
    pub allow_private_network: bool,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Webhook({}, secret=<redacted>)", self.url)
    }
}

/// What of the call an approver is shown.
pub const SUMMARY_FIELDS: &[&str] = &["method", "endpoint", "query", "body", "headers"];

/// One `[[approvals]]` rule.
#[derive(Debug, Clone)]
pub struct ApprovalRule {
    pub id: String,
    pub api: String,
    /// Empty: every method.
    pub methods: Vec<Method>,
    /// Empty: every path. Matched like deny rules (either form of the path, case folded),
    /// so no spelling of a path slips past its approval.
    pub paths: Vec<PathPattern>,
    /// Empty: every caller; else callers holding one of these roles.
    pub roles: Vec<String>,
    pub mode: ApprovalMode,
    pub approvers: Vec<String>,
    /// How long a request waits for a decision. Default 15 minutes.
    pub ttl: Duration,
    /// How long an approval can be used once given. Default 5 minutes.
    pub grant_ttl: Duration,
    pub summary: Vec<String>,
    pub webhook: Option<Webhook>,
}

/// The approval rules, and a version that changes whenever any of them does: a request or
/// approval made under another version is void.
#[derive(Debug, Clone, Default)]
pub struct Approvals {
    pub rules: Vec<ApprovalRule>,
    pub version: String,
}

pub(super) fn validate_approvals(
    raw: Vec<RawApproval>,
    apis: &std::collections::HashSet<String>,
    roles: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Approvals {
    let mut rules = Vec::new();
    let mut version = Sha256::new();
    for (i, a) in raw.into_iter().enumerate() {
        let p = format!("approvals[{i}]");
        version.update(format!("{a:?}").as_bytes());
        let before = errors.len();
        let id = a.id.unwrap_or_default();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            errors.push(err(
                format!("{p}.id"),
                "is required: letters, digits, '-', '_' or '.' (it names the rule in refusals and audit records)",
            ));
        } else if rules.iter().any(|r: &ApprovalRule| r.id == id) {
            errors.push(err(format!("{p}.id"), format!("{id:?} is used twice")));
        }
        let api = a.api.unwrap_or_default();
        if !apis.contains(&api) {
            errors.push(err(
                format!("{p}.api"),
                format!("no API named {api:?} is configured"),
            ));
        }
        let mut methods = Vec::new();
        for (j, m) in a.methods.iter().enumerate() {
            match m.to_ascii_uppercase().parse::<Method>() {
                Ok(m) if super::SUPPORTED_METHODS.contains(&m.as_str()) => methods.push(m),
                _ => errors.push(err(
                    format!("{p}.methods[{j}]"),
                    format!(
                        "{m:?} is not one of {}",
                        super::SUPPORTED_METHODS.join(", ")
                    ),
                )),
            }
        }
        let mut paths = Vec::new();
        for (j, s) in a.paths.iter().enumerate() {
            match PathPattern::parse(s) {
                Ok(pat) => paths.push(pat),
                Err(m) => errors.push(err(format!("{p}.paths[{j}]"), m)),
            }
        }
        let mode = match a.mode.as_deref() {
            Some("self") => ApprovalMode::SelfConfirm,
            Some("external") => ApprovalMode::External,
            Some("shadow") => ApprovalMode::Shadow,
            other => {
                errors.push(err(
                    format!("{p}.mode"),
                    format!(
                        "{} is not one of \"self\", \"external\", \"shadow\"",
                        other.map_or("nothing".to_string(), |o| format!("{o:?}"))
                    ),
                ));
                ApprovalMode::Shadow
            }
        };
        if mode == ApprovalMode::External && a.approvers.is_empty() {
            errors.push(err(
                format!("{p}.approvers"),
                "mode = \"external\" needs the roles that may approve, e.g. [\"finance-lead\"]",
            ));
        }
        for (key, list) in [("roles", &a.roles), ("approvers", &a.approvers)] {
            for (j, r) in list.iter().enumerate() {
                if !roles.is_empty() && !roles.contains(r) && r != "admin" {
                    errors.push(err(
                        format!("{p}.{key}[{j}]"),
                        format!("no role named {r:?} in [[rbac.roles]]"),
                    ));
                }
            }
        }
        let ttl = a.ttl.map_or(Duration::from_secs(15 * 60), |d| d.0);
        let grant_ttl = a.grant_ttl.map_or(Duration::from_secs(5 * 60), |d| d.0);
        for (key, d) in [("ttl", ttl), ("grant_ttl", grant_ttl)] {
            if d < Duration::from_secs(1) {
                errors.push(err(format!("{p}.{key}"), "must be at least 1s"));
            }
        }
        let summary = a
            .summary
            .unwrap_or_else(|| vec!["method".into(), "endpoint".into(), "query".into()]);
        for (j, f) in summary.iter().enumerate() {
            if !SUMMARY_FIELDS.contains(&f.as_str()) {
                errors.push(err(
                    format!("{p}.summary[{j}]"),
                    format!("{f:?} is not one of {}", SUMMARY_FIELDS.join(", ")),
                ));
            }
        }
        match a.on_timeout.as_deref() {
            None | Some("deny") => {}
            Some(o) => errors.push(err(
                format!("{p}.on_timeout"),
                format!("{o:?} is not \"deny\" (an unanswered request is never approved)"),
            )),
        }
        let webhook = a.webhook.and_then(|w| {
            let ok = url::Url::parse(&w.url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                errors.push(err(
                    format!("{p}.webhook.url"),
                    format!("{:?} is not an absolute http(s) URL", w.url),
                ));
            }
            match env(&w.secret_env) {
                Some(secret) if !secret.is_empty() => Some(Webhook {
                    url: w.url,
                    secret,
                    timeout: w.timeout.map_or(Duration::from_secs(5), |d| d.0),
                    allow_private_network: w.allow_private_network,
                }),
                _ => {
                    errors.push(err(
                        format!("{p}.webhook.secret_env"),
                        format!(
                            "the environment variable {} is not set (the webhook's signing secret)",
                            w.secret_env
                        ),
                    ));
                    None
                }
            }
        });
        if errors.len() == before {
            rules.push(ApprovalRule {
                id,
                api,
                methods,
                paths,
                roles: a.roles,
                mode,
                approvers: a.approvers,
                ttl,
                grant_ttl,
                summary,
                webhook,
            });
        }
    }
    Approvals {
        rules,
        version: hex::encode(&version.finalize()[..8]),
    }
}
