//! Classes of HTTP header names that config validation and the outbound rule share.

use http::HeaderName;

/// Framing, hop-by-hop and routing headers: owned by the gateway, never set by a caller or
/// a credential.
pub fn is_framing_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "proxy-connection"
    )
}
