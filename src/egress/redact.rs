//! Response-side hygiene: masking the API's credential in what an upstream sends back, and the
//! response headers a model is shown.

use bytes::Bytes;

use crate::config::Api;
use crate::error::{GatewayError, Reason};

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
// The MCP door marks the ones it has seen in a `u32`.
const _: () = assert!(SAFE_RESPONSE_HEADERS.len() <= 32);

/// Masks every occurrence of each form of the API's credential (the value, the token of a
/// `Bearer X` value, their percent-encoded and base64 forms: [`Credential::forms`]) with `*`
/// of the same length, so an upstream that echoes its request cannot leak the credential to
/// the caller. Overlapping occurrences are all masked. The length is kept so that
/// `Content-Length` framing on the proxy door stays valid. A body without a form is returned
/// as it is, without a copy.
///
/// [`Credential::forms`]: crate::config::Credential::forms
pub fn redact_credential(api: &Api, data: Bytes) -> Bytes {
    let Some(c) = &api.credential else {
        return data;
    };
    let mut out: Option<Vec<u8>> = None;
    for m in c.matcher.find_overlapping_iter(&data[..]) {
        out.get_or_insert_with(|| data.to_vec())[m.range()].fill(b'*');
    }
    out.map_or(data, Bytes::from)
}

/// The length of the API's longest credential form (0 without a credential): how far past a
/// cut a body must be read, and how much of a stream held back, to mask a form that straddles
/// it.
pub fn longest_credential_form(api: &Api) -> usize {
    api.credential
        .as_ref()
        .and_then(|c| c.forms.first())
        .map_or(0, String::len)
}

/// Masking needs the body as the upstream's plain bytes: an API with a credential may not
/// answer in a `Content-Encoding` the gateway cannot read (it asks for `identity`), or a
/// compressed echo of the credential would pass unmasked. 502 `unmaskable_encoding`.
pub fn check_inspectable(api: &Api, headers: &http::HeaderMap) -> Result<(), GatewayError> {
    if api.credential.is_none() {
        return Ok(());
    }
    for v in headers.get_all(http::header::CONTENT_ENCODING) {
        let v = v.to_str().unwrap_or("?").trim();
        if !v.is_empty() && !v.eq_ignore_ascii_case("identity") {
            return Err(GatewayError::because(
                Reason::UnmaskableEncoding,
                format!(
                    "the upstream of API {:?} answered in Content-Encoding {:?}, which the \
                     gateway cannot inspect to mask the API's credential",
                    api.name,
                    crate::types::truncate_chars(v, 32)
                ),
            ));
        }
    }
    Ok(())
}

/// An API that sets `response.max_upstream_bytes` is not streamed past it: an answer that
/// declares a larger `Content-Length` is refused before anything is sent (502
/// `upstream_response_too_large`), never passed on cut short.
pub fn check_declared_size(api: &Api, headers: &http::HeaderMap) -> Result<(), GatewayError> {
    let Some(cap) = api.response.proxy_max_bytes else {
        return Ok(());
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > cap as u64 => Err(GatewayError::because(
            Reason::UpstreamResponseTooLarge,
            format!(
                "the upstream of API {:?} answered {n} bytes, more than its \
                 response.max_upstream_bytes ({cap})",
                api.name
            ),
        )),
        _ => Ok(()),
    }
}

/// The length of the longest end of `data` that is the start (not the whole) of a form.
fn partial_form_at_end(api: &Api, data: &[u8]) -> usize {
    let (Some(c), Some(&last)) = (&api.credential, data.last()) else {
        return 0;
    };
    c.forms
        .iter()
        .filter_map(|f| {
            let f = f.as_bytes();
            (1..f.len().min(data.len() + 1))
                .rev()
                .find(|&k| f[k - 1] == last && data.ends_with(&f[..k]))
        })
        .max()
        .unwrap_or(0)
}

/// Masks a body that arrives in chunks (the proxy door), so that a form of the credential
/// split across two chunks is caught: the end of what arrived that could be the start of a
/// form is held back until the next chunk or the end (and nothing else is, so a stream
/// keeps streaming). Lengths are kept, so framing stays valid.
pub struct StreamRedactor {
    held: Vec<u8>,
}

impl StreamRedactor {
    /// `None` when the API has no credential to mask.
    pub fn new(api: &Api) -> Option<StreamRedactor> {
        (longest_credential_form(api) > 0).then(|| StreamRedactor { held: Vec::new() })
    }

    /// Takes the next chunk (or none) and gives what may leave now: everything at `end`.
    pub fn push(&mut self, api: &Api, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
        let data = match (self.held.is_empty(), chunk) {
            (true, chunk) => chunk.unwrap_or_default(),
            (false, chunk) => {
                let mut all = std::mem::take(&mut self.held);
                all.extend_from_slice(chunk.as_deref().unwrap_or_default());
                Bytes::from(all)
            }
        };
        let masked = redact_credential(api, data);
        let cut = if end {
            masked.len()
        } else {
            masked.len() - partial_form_at_end(api, &masked)
        };
        self.held = masked[cut..].to_vec();
        (cut > 0).then(|| masked.slice(..cut))
    }
}

/// Whether `text` (a URL, a redirect target) carries any form of the API's credential, as
/// written or percent-decoded.
pub fn carries_credential(api: &Api, text: &str) -> bool {
    let Some(c) = &api.credential else {
        return false;
    };
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    c.matcher.is_match(text) || c.matcher.is_match(decoded.as_ref())
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

    /// Wherever a chunk boundary falls, every form is masked and nothing is lost or added.
    #[test]
    fn a_form_split_across_chunks_is_masked() {
        let a = api("Bearer tok+en/42=");
        let body = b"<<tok%2Ben%2F42%3D>> and tok+en/42= end";
        let expected = redact_credential(&a, Bytes::from_static(body));
        assert!(!expected.windows(3).any(|w| w == b"tok"));
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut r = StreamRedactor::new(&a).unwrap();
                let mut out = Vec::new();
                for (chunk, end) in [
                    (&body[..i], false),
                    (&body[i..j], false),
                    (&body[j..], true),
                ] {
                    if let Some(b) = r.push(&a, Some(Bytes::copy_from_slice(chunk)), end) {
                        out.extend_from_slice(&b);
                    }
                }
                assert_eq!(out, expected, "split at {i}, {j}");
            }
        }
        // An end without a chunk flushes what was held back.
        let mut r = StreamRedactor::new(&a).unwrap();
        let first = r.push(&a, Some(Bytes::from_static(b"abc tok+en")), false);
        assert_eq!(
            first.as_deref(),
            Some(&b"abc "[..]),
            "only what may start a form waits"
        );
        let rest = r.push(&a, None, true).unwrap();
        assert_eq!(&rest[..], b"tok+en");
        // Text that cannot start a form is not held at all.
        let mut r = StreamRedactor::new(&a).unwrap();
        let all = r.push(&a, Some(Bytes::from_static(b"plain")), false);
        assert_eq!(all.as_deref(), Some(&b"plain"[..]));
    }

    #[test]
    fn an_encoded_body_is_refused_only_where_a_credential_must_be_masked() {
        let mut h = http::HeaderMap::new();
        h.insert("content-encoding", "gzip".parse().unwrap());
        let e = check_inspectable(&api("Bearer tok+en/42="), &h).unwrap_err();
        assert_eq!(
            (e.kind.status(), e.reason_code()),
            (502, "unmaskable_encoding")
        );
        let mut plain = Api::internal(
            "t",
            "https://api.example.com",
            false,
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        assert!(check_inspectable(&plain, &h).is_ok());
        plain = api("Bearer tok+en/42=");
        h.insert("content-encoding", "identity".parse().unwrap());
        assert!(check_inspectable(&plain, &h).is_ok());
    }

    /// An upstream that echoes its request inside base64 text (a JSON field, a signed blob)
    /// has the secret masked wherever it falls in the 3-byte groups, in either alphabet, and
    /// at most two bytes of it at each end are left to decode.
    #[test]
    fn a_credential_inside_base64_text_is_masked_at_every_alignment() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        use base64::Engine;
        let secret = "sk_live_0123456789abcdef?>?";
        let a = api(&format!("Bearer {secret}"));
        for prefix in ["", "a", "ab", "abc"] {
            for engine in [STANDARD, URL_SAFE] {
                let echoed =
                    engine.encode(format!("{prefix}{{\"authorization\":\"Bearer {secret}\"}}"));
                let out = redact_credential(&a, Bytes::from(echoed.clone()));
                let out = std::str::from_utf8(&out).unwrap();
                assert!(out.contains("********"), "{prefix:?}: {out}");
                // Decode what is left around the stars: no run of 3 secret bytes survives.
                let kept: String = out
                    .chars()
                    .map(|c| if c == '*' { 'A' } else { c })
                    .collect();
                let decoded = engine.decode(kept.as_bytes()).unwrap_or_default();
                let text = String::from_utf8_lossy(&decoded);
                let framing = format!("{prefix}{{\"authorization\":\"Bearer \"}}");
                for w in secret.as_bytes().windows(3) {
                    let w = std::str::from_utf8(w).unwrap();
                    assert!(
                        !text.contains(w) || framing.contains(w),
                        "{prefix:?}: {w:?} decodes from {out}"
                    );
                }
            }
        }
    }

    /// `Basic` credentials are also masked as the decoded `user:pass` and as the password.
    #[test]
    fn a_basic_credential_is_masked_decoded_too() {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode("robot:hunter2-long");
        let a = api(&format!("Basic {token}"));
        for (echo, must_not) in [
            ("{\"user\":\"robot:hunter2-long\"}".to_string(), "hunter2"),
            ("password=hunter2-long".to_string(), "hunter2"),
            (format!("auth {token}"), token.as_str()),
        ] {
            let out = redact_credential(&a, Bytes::from(echo.clone()));
            let out = String::from_utf8_lossy(&out);
            assert!(!out.contains(must_not), "{echo} gave {out}");
        }
    }

    /// Two forms that overlap in the text are both masked, whole.
    #[test]
    fn overlapping_forms_are_all_masked() {
        let a = api("Bearer abcdefgh");
        let forms = &a.credential.as_ref().unwrap().forms;
        assert!(forms.contains(&"abcdefgh".to_string()));
        let out = redact_credential(&a, Bytes::from_static(b"xBearer abcdefghabcdefgh!"));
        assert_eq!(&out[..], b"x***********************!");
    }

    #[test]
    fn a_credential_is_found_in_a_url_raw_or_encoded() {
        let a = api("Bearer tok+en/42=");
        assert!(carries_credential(&a, "/landing?token=tok%2Ben%2F42%3D"));
        assert!(carries_credential(&a, "/landing?token=tok%2ben%2f42%3d"));
        assert!(carries_credential(&a, "/x/tok+en/42="));
        assert!(!carries_credential(&a, "/landing?token=other"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// For any secret (with the characters URLs encode), any body that echoes it in
            /// any of its forms, and any way the body is cut into chunks, the streamed
            /// masking equals the whole-body masking and no form survives.
            #[test]
            fn masking_holds_for_any_secret_echo_and_split(
                secret in "[A-Za-z0-9+/=_.-]{6,24}",
                scheme in prop::bool::ANY,
                form in 0usize..4,
                before in "[ -~]{0,40}",
                after in "[ -~]{0,40}",
                cuts in prop::collection::vec(0usize..200, 0..6),
            ) {
                let value = if scheme { format!("Bearer {secret}") } else { secret.clone() };
                let a = api(&value);
                let forms = &a.credential.as_ref().unwrap().forms;
                let echoed = forms[form % forms.len()].clone();
                let body = format!("{before}{echoed}{after}");
                let whole = redact_credential(&a, Bytes::from(body.clone()));
                for f in forms {
                    prop_assert!(
                        !whole.windows(f.len()).any(|w| w == f.as_bytes()),
                        "{} survives in {:?}", f, String::from_utf8_lossy(&whole)
                    );
                }
                let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
                points.sort_unstable();
                let mut r = StreamRedactor::new(&a).unwrap();
                let mut out = Vec::new();
                let mut last = 0;
                for p in points {
                    if let Some(b) = r.push(&a, Some(Bytes::copy_from_slice(&body.as_bytes()[last..p])), false) {
                        out.extend_from_slice(&b);
                    }
                    last = p;
                }
                if let Some(b) = r.push(&a, Some(Bytes::copy_from_slice(&body.as_bytes()[last..])), true) {
                    out.extend_from_slice(&b);
                }
                prop_assert_eq!(out, whole.to_vec());
            }
        }
    }
}
