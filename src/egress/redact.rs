//! Response-side hygiene: masking the API's credential in what an upstream sends back, and the
//! response headers a model is shown.

use bytes::Bytes;

use crate::config::Api;

/// Response headers passed back to a model in `structuredContent.headers`.
pub const SAFE_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-language",
    "location",
    "retry-after",
    "etag",
    "last-modified",
    "cache-control",
    "link",
    "x-request-id",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
];

/// Masks every occurrence of the API's credential value with `*` of the same length, so an
/// upstream that echoes its request cannot leak the credential to the caller. The length is
/// kept so that `Content-Length` framing on the proxy door stays valid.
///
/// On the proxy door the body is masked chunk by chunk; a value split across two chunks is
/// not caught there. The MCP door masks the whole (capped) body at once.
pub fn redact_credential(api: &Api, data: Bytes) -> Bytes {
    let Some(c) = &api.credential else {
        return data;
    };
    let secret = c.value.as_bytes();
    if secret.len() < 4 || !contains(&data, secret) {
        return data;
    }
    let mut out = data.to_vec();
    let mut i = 0;
    while i + secret.len() <= out.len() {
        if out[i..].starts_with(secret) {
            out[i..i + secret.len()].fill(b'*');
            i += secret.len();
        } else {
            i += 1;
        }
    }
    Bytes::from(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
