//! Small value types that config and the runtime modules share, at the bottom of the module
//! graph: they import nothing from the crate. Which door a call came through, path patterns,
//! the classes of HTTP headers, and the state of a rate-limit policy.

pub mod headers;
mod pattern;

pub use pattern::{Case, PathPattern};

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Characters that stay unencoded in query keys and values the gateway writes (RFC 3986
/// unreserved); everything else is percent-encoded.
pub const QUERY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Which front door a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Mcp,
    Proxy,
}

impl Door {
    /// The label used in metrics, spans, logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Mcp => "mcp",
            Door::Proxy => "proxy",
        }
    }
}

/// The state of one rate-limit policy after a decision, for rate-limit response fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    pub name: String,
    pub requests: u32,
    pub window: Duration,
    /// Requests that could still be admitted back to back now.
    pub remaining: u32,
    /// Time until the oldest admission in the window leaves it.
    pub reset: Duration,
}

/// At most `max` characters of `s`, for quoting caller input in an error message.
pub fn truncate_chars(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Whole seconds, rounded up, for `Retry-After` and `t=`.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}

/// How much a refused caller is told about the rule that refused it
/// (`[security] explain_denials`); the audit record always has all of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplainDenials {
    /// The stage, the rule id and the pattern that matched (`pattern`).
    Full,
    /// The stage and the rule id. Default.
    #[default]
    Rule,
    /// Neither the stage nor the rule.
    None,
}

/// Whether a rule is enforced or only evaluated (`mode = "shadow"`): a shadow rule's
/// would-be refusals are counted, audited and traced, and the call goes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    #[default]
    Enforce,
    Shadow,
}
