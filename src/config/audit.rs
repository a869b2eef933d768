//! `[audit]`: whether calls are audited, the sink, retention and what to do when the sink
//! fails.

use std::time::Duration;

use serde::Deserialize;

use super::{err, positive, ConfigError, HumanDuration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    enabled: Option<bool>,
    sink: Option<SinkKind>,
    path: Option<String>,
    retention: Option<HumanDuration>,
    on_failure: Option<OnFailure>,
    buffer: Option<usize>,
}

/// `audit.sink` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SinkKind {
    File,
    Stdout,
    Sqlite,
}

/// `audit.on_failure`: what happens to calls while the sink cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Calls go on; the failure is logged and counted. The default.
    #[default]
    Continue,
    /// Calls are refused with 503 `audit_unavailable` until the sink recovers.
    Block,
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// JSON lines appended to a file (relative paths are resolved against the config file's
    /// directory).
    File(std::path::PathBuf),
    /// JSON lines on stdout (not with the stdio transport, which owns stdout).
    Stdout,
    /// Rows of an embedded SQLite database, queryable with `json_extract(event, '$.api')`.
    Sqlite(std::path::PathBuf),
}

/// `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub enabled: bool,
    pub sink: AuditSink,
    /// Records older than this are purged from the head of the file.
    pub retention: Option<Duration>,
    /// What happens to calls while the sink cannot be written.
    pub on_failure: OnFailure,
    /// Events queued for the writer before the queue counts as full.
    pub buffer: usize,
}

pub(super) fn validate_audit(a: RawAudit, errors: &mut Vec<ConfigError>) -> AuditConfig {
    let sink = match a.sink.unwrap_or(SinkKind::File) {
        SinkKind::File => AuditSink::File(a.path.unwrap_or_else(|| "audit.jsonl".into()).into()),
        SinkKind::Stdout => {
            if a.path.is_some() {
                errors.push(err("audit.path", "only applies to sink = \"file\""));
            }
            AuditSink::Stdout
        }
        SinkKind::Sqlite => AuditSink::Sqlite(a.path.unwrap_or_else(|| "audit.db".into()).into()),
    };
    if a.retention.is_some() && sink == AuditSink::Stdout {
        errors.push(err(
            "audit.retention",
            "needs a stored sink (\"file\" or \"sqlite\")",
        ));
    }
    if a.retention.is_some_and(|r| r.0 < Duration::from_secs(60)) {
        errors.push(err("audit.retention", "must be at least \"1m\""));
    }
    AuditConfig {
        enabled: a.enabled.unwrap_or(true),
        sink,
        retention: a.retention.map(|d| d.0),
        on_failure: a.on_failure.unwrap_or_default(),
        buffer: positive(errors, "audit.buffer", a.buffer, 10_000),
    }
}
