//! What a decision tells the client and the audit log: the IETF `RateLimit-Policy` and
//! `RateLimit` header fields, and the tightest policy's summary.

use super::{ceil_secs, PolicyState};

/// `RateLimit-Policy` and `RateLimit` field values (draft-ietf-httpapi-ratelimit-headers,
/// structured-field lists), one list member per policy.
pub fn header_values(states: &[PolicyState]) -> (String, String) {
    use std::fmt::Write;
    // Written straight into two strings: this runs on every admitted response.
    let mut policy = String::with_capacity(32 * states.len());
    let mut limit = String::with_capacity(32 * states.len());
    for (i, s) in states.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
            limit.push_str(", ");
        }
        let _ = write!(
            policy,
            "\"{}\";q={};w={}",
            s.name,
            s.requests,
            s.window.as_secs().max(1)
        );
        let _ = write!(
            limit,
            "\"{}\";r={};t={}",
            s.name,
            s.remaining,
            ceil_secs(s.reset)
        );
    }
    (policy, limit)
}

/// The policy with the least room left, for the audit record: `{policy, remaining}`.
pub fn tightest_json(states: &[PolicyState]) -> Option<serde_json::Value> {
    states
        .iter()
        .min_by_key(|s| s.remaining)
        .map(|s| serde_json::json!({"policy": s.name, "remaining": s.remaining}))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn header_syntax() {
        let s = PolicyState {
            name: "api.local".into(),
            requests: 5,
            window: Duration::from_secs(10),
            remaining: 4,
            reset: Duration::from_millis(9500),
        };
        let (policy, limit) = header_values(std::slice::from_ref(&s));
        assert_eq!(policy, "\"api.local\";q=5;w=10");
        assert_eq!(limit, "\"api.local\";r=4;t=10");
        let other = PolicyState {
            name: "per_user".into(),
            requests: 100,
            window: Duration::from_millis(200),
            remaining: 0,
            reset: Duration::from_millis(1),
        };
        let (policy, limit) = header_values(&[s, other]);
        assert_eq!(policy, "\"api.local\";q=5;w=10, \"per_user\";q=100;w=1");
        assert_eq!(limit, "\"api.local\";r=4;t=10, \"per_user\";r=0;t=1");
    }
}
