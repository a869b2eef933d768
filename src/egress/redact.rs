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

/// Masks every occurrence of each form of the API's credential (the value, the token of a
/// `Bearer X` value, their percent-encoded forms: [`Credential::forms`]) with `*` of the same
/// length, so an upstream that echoes its request cannot leak the credential to the caller.
/// The length is kept so that `Content-Length` framing on the proxy door stays valid.
///
/// On the proxy door the body is masked chunk by chunk; a value split across two chunks is
/// not caught there. The MCP door masks the whole (capped) body at once.
///
/// [`Credential::forms`]: crate::config::Credential::forms
pub fn redact_credential(api: &Api, data: Bytes) -> Bytes {
    let Some(c) = &api.credential else {
        return data;
    };
    let mut out: Option<Vec<u8>> = None;
    for form in &c.forms {
        let secret = form.as_bytes();
        let hay = out.as_deref().unwrap_or(&data);
        if !contains(hay, secret) {
            continue;
        }
        let buf = out.get_or_insert_with(|| data.to_vec());
        let mut i = 0;
        while i + secret.len() <= buf.len() {
            if buf[i..].starts_with(secret) {
                buf[i..i + secret.len()].fill(b'*');
                i += secret.len();
            } else {
                i += 1;
            }
        }
    }
    out.map_or(data, Bytes::from)
}

/// Whether `text` (a URL or part of one) carries a form of the API's credential, as written
/// or once percent-decoded.
pub fn carries_credential(api: &Api, text: &str) -> bool {
    let Some(c) = &api.credential else {
        return false;
    };
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    c.forms
        .iter()
        .any(|f| text.contains(f.as_str()) || decoded.contains(f.as_str()))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credential, CredentialPlacement};

    fn api(value: &str) -> Api {
        let mut a = Api::internal(
            "t",
            "https://api.example.com",
            false,
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        a.credential = Some(Credential::new(
            CredentialPlacement::Header(http::HeaderName::from_static("authorization")),
            value.into(),
        ));
        a
    }

    #[test]
    fn every_form_of_the_credential_is_masked_at_its_length() {
        let a = api("Bearer tok+en/42=");
        for (echo, masked) in [
            ("auth: Bearer tok+en/42=;", "auth: *****************;"),
            ("token tok+en/42= only", "token ********** only"),
            ("url ?k=tok%2Ben%2F42%3D&x", "url ?k=****************&x"),
            ("nothing here", "nothing here"),
        ] {
            let out = redact_credential(&a, Bytes::from(echo));
            assert_eq!(std::str::from_utf8(&out).unwrap(), masked, "{echo}");
        }
    }

    #[test]
    fn a_credential_is_found_in_a_url_raw_or_encoded() {
        let a = api("Bearer tok+en/42=");
        assert!(carries_credential(&a, "/landing?token=tok%2Ben%2F42%3D"));
        assert!(carries_credential(&a, "/landing?token=tok%2ben%2f42%3d"));
        assert!(carries_credential(&a, "/x/tok+en/42="));
        assert!(!carries_credential(&a, "/landing?token=other"));
    }
}
