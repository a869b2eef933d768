//! Where the upstream URL is built: a caller's endpoint is validated into an [`EndpointPath`],
//! and [`upstream_path_and_query`] joins it to the API's base, query and credential.

use percent_encoding::{percent_decode_str, utf8_percent_encode};

use crate::config::{Api, CredentialPlacement};
use crate::error::GatewayError;

/// Longest endpoint (path and query) accepted from a caller.
const MAX_ENDPOINT_LEN: usize = 4096;

/// A caller's endpoint, validated: a path that stays under the API's base, and a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPath {
    /// The path as sent upstream (original percent-encoding kept), always starting with `/`.
    path: String,
    /// Percent-decoded segments, for matching path patterns.
    decoded: Vec<String>,
    /// The raw query string without `?`, if any.
    query: Option<String>,
}

impl EndpointPath {
    /// Validates an endpoint such as `/repos/o/r/issues?state=open`. A missing leading `/` is
    /// added. Refused with `invalid_endpoint`, naming the reason:
    /// - control characters (CR, LF, NUL, …), non-ASCII, backslashes, `@`, `#`;
    /// - a scheme (`http:`, `//host`, `://`);
    /// - empty segments (`a//b`), dot segments (`.`, `..`, also `..;x` and look-alike dots);
    /// - percent-encodings that decode to `/`, `\`, `%`, a dot segment or a control character,
    ///   and malformed `%` escapes.
    pub fn parse(raw: &str) -> Result<EndpointPath, GatewayError> {
        Self::parse_with(raw, false)
    }

    /// [`EndpointPath::parse`], or with `opaque_segments` for an endpoint the gateway built
    /// from a generated tool's arguments, each path parameter percent-encoded whole: an
    /// encoded `/`, `\`, `%` or `@` is then text inside its one segment (it never splits
    /// it, for the gateway or, as sent, for the upstream). Dot segments and control
    /// characters are refused all the same.
    pub fn parse_with(raw: &str, opaque_segments: bool) -> Result<EndpointPath, GatewayError> {
        let bad = |why: &str| {
            Err(GatewayError::invalid_endpoint(format!(
                "endpoint rejected: {why}; give a path under the API's base such as \"/v1/items?limit=10\""
            )))
        };
        if raw.len() > MAX_ENDPOINT_LEN {
            return bad("longer than 4096 bytes");
        }
        if let Some(c) = raw.chars().find(|c| !c.is_ascii() || c.is_ascii_control()) {
            return if c.is_ascii_control() {
                bad("contains a control character (CR, LF, tab or NUL)")
            } else {
                bad("contains non-ASCII characters; percent-encode them")
            };
        }
        if raw.contains('\\') {
            return bad("contains a backslash");
        }
        // What the HTTP request line cannot carry (a space, '"', '<', …) is refused here, as
        // the caller's error, rather than failing when the upstream request is built.
        // Bytes RFC 3986 allows as they are pass at once; anything else is put to the parser
        // the upstream request is built with.
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
        if !raw.bytes().all(plain) {
            let target: std::borrow::Cow<str> = if raw.starts_with('/') {
                raw.into()
            } else {
                format!("/{raw}").into()
            };
            if http::uri::PathAndQuery::try_from(target.as_ref()).is_err() {
                return bad(
                    "contains characters a URL cannot carry (such as a space); percent-encode them",
                );
            }
        }
        if raw.contains('@') {
            return bad("contains '@'");
        }
        if raw.contains('#') {
            return bad("contains a fragment ('#')");
        }
        if raw.contains("://") {
            return bad("contains a URL scheme");
        }
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        if path.starts_with("//") {
            return bad("starts with '//' (a host reference)");
        }
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('/') {
            path.to_string()
        } else {
            let first = path.split('/').next().unwrap_or("");
            if first.contains(':') {
                return bad("looks like a URL scheme");
            }
            format!("/{path}")
        };

        let raw_segments: Vec<&str> = path[1..].split('/').collect();
        let last = raw_segments.len() - 1;
        let mut decoded = Vec::with_capacity(raw_segments.len());
        for (i, seg) in raw_segments.iter().enumerate() {
            if seg.is_empty() {
                if i == last {
                    // A trailing slash ("/items/") or the root ("/").
                    decoded.push(String::new());
                    continue;
                }
                return bad("contains an empty segment ('//')");
            }
            if !valid_percent_escapes(seg) {
                return bad("contains a malformed percent-escape");
            }
            let bytes: Vec<u8> = percent_decode_str(seg).collect();
            if bytes.iter().any(|&b| {
                (!opaque_segments && (b == b'/' || b == b'\\' || b == b'%' || b == b'@'))
                    || b < 0x20
                    || b == 0x7f
            }) {
                return bad("contains an encoded separator, '%', '@' or control character");
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if is_dot_segment(&text) {
                return bad("contains a dot segment ('.' or '..', possibly encoded)");
            }
            decoded.push(text);
        }
        if let Some(q) = query {
            if !valid_percent_escapes(q) {
                return bad("query contains a malformed percent-escape");
            }
        }
        Ok(EndpointPath {
            path,
            decoded,
            query: query.filter(|q| !q.is_empty()).map(str::to_string),
        })
    }

    /// The validated path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The caller's raw query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Percent-decoded segments for path-pattern matching.
    pub fn decoded_segments(&self) -> Vec<&str> {
        self.decoded.iter().map(String::as_str).collect()
    }

    /// For an endpoint with opaque segments that hold an encoded `/` or `\\`: the path an
    /// upstream that decodes them would route, split at them and with dot segments resolved
    /// (`/pets/..%2Fadmin` reads `/admin`). The policy judges both readings.
    pub fn as_decoding_upstream_reads(&self) -> Option<Vec<String>> {
        if !self.decoded.iter().any(|s| s.contains(['/', '\\'])) {
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        for part in self.decoded.iter().flat_map(|s| s.split(['/', '\\'])) {
            match part {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                p => out.push(p.to_string()),
            }
        }
        Some(out)
    }
}

fn valid_percent_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() {
                return false;
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// A segment that some server would treat as `.` or `..`: only dots (or Unicode dot
/// look-alikes), optionally followed by `;params` (Tomcat-style `..;`).
fn is_dot_segment(seg: &str) -> bool {
    let head = seg.split(';').next().unwrap_or("");
    !head.is_empty()
        && head
            .chars()
            .all(|c| matches!(c, '.' | '\u{2024}' | '\u{FE52}' | '\u{FF0E}' | '\u{3002}'))
}

use crate::types::QUERY_ENCODE;

/// Builds the upstream request target: the API's base path, the validated endpoint path, the
/// caller's query, extra `(key, value)` pairs (encoded here), and a query-placed credential.
/// A caller-supplied parameter with the credential's name is dropped so it cannot override it.
pub fn upstream_path_and_query(
    api: &Api,
    endpoint: &EndpointPath,
    extra_query: &[(String, String)],
) -> String {
    let mut out = String::with_capacity(api.base.path.len() + endpoint.path.len() + 32);
    out.push_str(&api.base.path);
    out.push_str(&endpoint.path);

    let credential_param = match &api.credential {
        Some(c) => match &c.placement {
            CredentialPlacement::Query(name) => Some((name.as_str(), c.value.as_str())),
            CredentialPlacement::Header(_) => None,
        },
        None => None,
    };
    let mut params: Vec<String> = Vec::new();
    if let Some(q) = endpoint.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let key = pair.split('=').next().unwrap_or("");
            let key_decoded = percent_decode_str(key).decode_utf8_lossy();
            if credential_param.is_some_and(|(name, _)| key_decoded == name) {
                continue;
            }
            params.push(pair.to_string());
        }
    }
    for (k, v) in extra_query {
        if credential_param.is_some_and(|(name, _)| k == name) {
            continue;
        }
        params.push(format!(
            "{}={}",
            utf8_percent_encode(k, QUERY_ENCODE),
            utf8_percent_encode(v, QUERY_ENCODE)
        ));
    }
    if let Some((name, value)) = credential_param {
        params.push(format!(
            "{}={}",
            utf8_percent_encode(name, QUERY_ENCODE),
            utf8_percent_encode(value, QUERY_ENCODE)
        ));
    }
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accepted() {
        let e = EndpointPath::parse("/repos/o/r/issues?state=open").unwrap();
        assert_eq!(e.path(), "/repos/o/r/issues");
        assert_eq!(e.query(), Some("state=open"));
        assert_eq!(EndpointPath::parse("users/1").unwrap().path(), "/users/1");
        assert_eq!(EndpointPath::parse("").unwrap().path(), "/");
        assert_eq!(
            EndpointPath::parse("/a%20b/c.json")
                .unwrap()
                .decoded_segments(),
            vec!["a b", "c.json"]
        );
        assert!(EndpointPath::parse("/v1/projects/p:run").is_ok());
        assert!(EndpointPath::parse("/files/.well-known").is_ok());
        assert!(EndpointPath::parse("/a/").is_ok());
    }

    #[test]
    fn hostile_endpoints_rejected() {
        for bad in [
            "/a b",
            "/a?q=x y",
            "/../etc/passwd",
            "..",
            "/a/../../b",
            "/a/./b",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2e/x",
            "/%2e/x",
            "/a/%2e%2e%2fb",
            "/a%2fb",
            "/a%5cb",
            "/%252e%252e/x",
            "//evil.com/x",
            "http://evil.com/x",
            "https:/evil.com",
            "evil.com:80/x",
            "/a\\b",
            "\\\\evil\\x",
            "/a@evil.com",
            "@evil.com",
            "/a\r\nHost: evil",
            "/a\nx",
            "/a%0d%0aX: y",
            "/a%00",
            "/a\t",
            "/..;/admin",
            "/\u{FF0E}\u{FF0E}/x",
            "/%EF%BC%8E%EF%BC%8E/x",
            "/a//b",
            "/a#frag",
            "/a%zz",
            "/a%2",
            "/x?y=%g1",
        ] {
            let r = EndpointPath::parse(bad);
            assert!(r.is_err(), "{bad:?} was accepted as {r:?}");
            assert_eq!(
                r.unwrap_err().kind,
                crate::error::ErrorKind::InvalidEndpoint
            );
        }
    }

    mod properties {
        use super::*;
        use crate::config::{Api, Credential, CredentialPlacement};
        use proptest::prelude::*;
        use std::time::Duration;

        fn api() -> Api {
            let mut a = Api::internal(
                "t",
                "https://api.example.com/base/v1",
                false,
                Duration::from_secs(1),
            )
            .unwrap();
            a.credential = Some(Credential::new(
                CredentialPlacement::Query("appid".into()),
                "SECRET".into(),
            ));
            a
        }

        /// Endpoints built from the pieces attackers use.
        fn hostile_endpoint() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just("%2e".to_string()),
                Just("%2E%2e".to_string()),
                Just("%252e".to_string()),
                Just("%2f".to_string()),
                Just("%5c".to_string()),
                Just("\\".to_string()),
                Just("@".to_string()),
                Just("?".to_string()),
                Just("&appid=x".to_string()),
                Just("#".to_string()),
                Just(";".to_string()),
                Just("%".to_string()),
                Just("%00".to_string()),
                Just("http:".to_string()),
                Just("//evil.test".to_string()),
                Just("\u{ff0e}".to_string()),
                "[a-z0-9_-]{1,6}",
            ];
            proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever the endpoint, an accepted one never leaves the API's host or base
            /// path, even after a URL parser normalises it, and never overrides the
            /// injected credential.
            #[test]
            fn url_builder_never_leaves_the_base(raw in hostile_endpoint()) {
                let a = api();
                if let Ok(e) = EndpointPath::parse(&raw) {
                    let pq = upstream_path_and_query(&a, &e, &[("appid".into(), "forged".into())]);
                    prop_assert!(pq.starts_with("/base/v1/") || pq == "/base/v1" || pq.starts_with("/base/v1?"), "{pq}");
                    let u = url::Url::parse("https://api.example.com").unwrap().join(&pq).unwrap();
                    prop_assert_eq!(u.host_str(), Some("api.example.com"));
                    prop_assert!(u.path().starts_with("/base/v1"), "{} from {:?}", u.path(), raw);
                    let appids: Vec<String> = u
                        .query_pairs()
                        .filter(|(k, _)| k == "appid")
                        .map(|(_, v)| v.into_owned())
                        .collect();
                    prop_assert_eq!(appids, vec!["SECRET".to_string()]);
                }
            }
        }
    }
}
