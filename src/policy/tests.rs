//! Admission without sockets: one case per refusal reason, the order between stages, and what
//! an admitted call carries. Every destination is a literal loopback address, so no DNS
//! query is made and nothing is dialled.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::*;
use crate::error::ErrorKind;

const JWT_SECRET: &str = "unit-test-jwt-secret-0123456789abcdef";
const KEY_OPS: &str = "agm_ops-0123456789abcdefghijklmnopqrstuvwxyz";
const KEY_READER: &str = "agm_reader-0123456789abcdefghijklmnopqrstuv";
const KEY_OLD: &str = "agm_old-0123456789abcdefghijklmnopqrstuvwxyz";
const KEY_SCOPED: &str = "agm_scoped-0123456789abcdefghijklmnopqrstuv";
const SIGNING_SECRET: &str = "signing-secret-0123456789abcdef-0123456789";

fn sha256_hex(s: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s))
}

fn config_text(extra: &str) -> String {
    format!(
        r#"
[auth]
required = true
methods = ["bearer_token", "api_key"]
[auth.jwt]
secret = "{JWT_SECRET}"
issuer = "https://issuer.test"
audience = "gw"
algorithms = ["HS256"]
[[auth.api_keys]]
name = "ops"
key_sha256 = "{ops}"
roles = ["ops"]
[[auth.api_keys]]
name = "reader"
key_sha256 = "{reader}"
roles = ["reader"]
[[auth.api_keys]]
name = "old"
key_sha256 = "{old}"
roles = ["ops"]
revoked = true
[[auth.api_keys]]
name = "scoped"
key_sha256 = "{scoped}"
roles = ["ops"]
allowed_apis = ["open"]

[security]
ip_deny = ["127.9.0.0/16"]
[security.request]
max_body_size = 64
allowed_content_types = ["application/json"]
max_headers = 12
[security.signatures]
keys = [{{ id = "k1", secret = "{SIGNING_SECRET}" }}]

[[rbac.roles]]
name = "ops"
allow = [{{ api = "*" }}]
[[rbac.roles]]
name = "reader"
allow = [{{ api = "open", methods = ["GET"] }}]
deny = [{{ api = "open", paths = ["/secret/**"] }}]

[[apis]]
name = "open"
base_url = "http://127.0.0.1:9/v1"
allow_private_network = true
methods = ["GET", "POST"]
paths = ["/**"]
deny_paths = ["/admin/**"]
credentials = {{ header = "x-upstream-key", value = "upstream-secret" }}

[[apis]]
name = "narrow"
base_url = "http://127.0.0.1:9"
allow_private_network = true
methods = ["GET"]
paths = ["/items/*"]
credentials = {{ query = "appid", value = "q-secret" }}

[[apis]]
name = "limited"
base_url = "http://127.0.0.1:9"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]
rate_limit = {{ requests = 1, window = "1h" }}

[[apis]]
name = "private"
base_url = "http://127.0.0.1:9"
methods = ["GET"]
paths = ["/**"]

[[apis]]
name = "signed"
base_url = "http://127.0.0.1:9"
allow_private_network = true
methods = ["GET", "POST"]
paths = ["/**"]
require_signature = true
{extra}
"#,
        ops = sha256_hex(KEY_OPS.as_bytes()),
        reader = sha256_hex(KEY_READER.as_bytes()),
        old = sha256_hex(KEY_OLD.as_bytes()),
        scoped = sha256_hex(KEY_SCOPED.as_bytes()),
    )
}

fn pipeline_with(extra: &str) -> Pipeline {
    let config = Config::parse(&config_text(extra), &|_| None).expect("test config is valid");
    Pipeline::new(Arc::new(config), Arc::new(Egress::new()), None).expect("pipeline")
}

fn pipeline() -> Pipeline {
    pipeline_with("")
}

fn jwt(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn good_jwt() -> String {
    jwt(
        serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "gw",
                           "exp": now() + 600, "iat": now(), "roles": ["ops"]}),
    )
}

/// One call, as a door would describe it; `Req::new` is an admitted proxy call by `ops`.
#[derive(Clone)]
struct Req {
    door: Door,
    peer: &'static str,
    headers: Vec<(String, String)>,
    api: &'static str,
    method: Method,
    endpoint: String,
    /// The MCP door's `headers` argument.
    tool_headers: Vec<(&'static str, &'static str)>,
    /// The MCP door's body (the proxy door declares its body in the headers).
    body: Option<Vec<u8>>,
}

impl Req {
    fn new() -> Req {
        Req {
            door: Door::Proxy,
            peer: "127.0.0.1",
            headers: vec![("x-api-key".into(), KEY_OPS.into())],
            api: "open",
            method: Method::GET,
            endpoint: "/items/1".into(),
            tool_headers: Vec::new(),
            body: None,
        }
    }
    fn mcp(mut self) -> Req {
        self.door = Door::Mcp;
        self
    }
    fn api(mut self, api: &'static str, endpoint: &str) -> Req {
        self.api = api;
        self.endpoint = endpoint.into();
        self
    }
    fn method(mut self, m: Method) -> Req {
        self.method = m;
        self
    }
    fn peer(mut self, p: &'static str) -> Req {
        self.peer = p;
        self
    }
    fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }
    /// Replaces the caller's credential.
    fn auth(mut self, k: &str, v: &str) -> Req {
        self.headers.retain(|(n, _)| n != "x-api-key");
        self.headers.push((k.into(), v.into()));
        self
    }
    fn anonymous(mut self) -> Req {
        self.headers.retain(|(n, _)| n != "x-api-key");
        self
    }
    fn tool_header(mut self, k: &'static str, v: &'static str) -> Req {
        self.tool_headers.push((k, v));
        self
    }
    fn body(mut self, b: &[u8]) -> Req {
        self.body = Some(b.to_vec());
        self
    }
    /// Signs the request as `X-Signature-*` headers describe, over `digest_of` as the body.
    fn signed(self, path: &str, digest_of: &[u8], nonce: &str, ts: u64) -> Req {
        use hmac::Mac;
        let content = sha256_hex(digest_of);
        let canonical = format!(
            "AGM-HMAC-SHA256\nk1\n{ts}\n{nonce}\n{}\n{path}\n\n{content}",
            self.method
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SIGNING_SECRET.as_bytes())
            .expect("any key length");
        mac.update(canonical.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        self.header("x-signature-key-id", "k1")
            .header("x-signature-timestamp", &ts.to_string())
            .header("x-signature-nonce", nonce)
            .header("x-content-sha256", &content)
            .header("x-signature", &sig)
    }
}

/// Runs admission: the proxy door's request is identified inside admission; the MCP door's
/// is identified first, as its HTTP bridge does, then admitted as an identified caller.
async fn admit(p: &Pipeline, r: &Req) -> Result<Admitted, GatewayError> {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (path, query) = match r.endpoint.split_once('?') {
        Some((p, q)) => (format!("/{}{p}", r.api), q.to_string()),
        None => (format!("/{}{}", r.api, r.endpoint), String::new()),
    };
    let caller_req = CallerRequest {
        door: r.door,
        peer: Some(r.peer.parse().unwrap()),
        method: &r.method,
        path: &path,
        query: &query,
        headers: &headers,
        raw_head: None,
        body: r
            .body
            .as_deref()
            .or(Some(b""))
            .filter(|_| r.door == Door::Mcp),
        trace: TraceContext::new_root(),
    };
    let tool_headers: Vec<(HeaderName, HeaderValue)> = r
        .tool_headers
        .iter()
        .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
        .collect();
    let who = match r.door {
        Door::Proxy => Who::Request(caller_req),
        Door::Mcp => Who::Identified(Arc::new(p.identify(&caller_req).await?)),
    };
    let payload = match r.door {
        Door::Proxy => Payload::Streamed { headers: &headers },
        Door::Mcp => Payload::Whole {
            headers: &tool_headers,
            body: r.body.as_deref(),
        },
    };
    p.admit(&Call {
        door: r.door,
        who,
        api: r.api,
        method: &r.method,
        endpoint: &r.endpoint,
        query: &[],
        payload,
        opaque_segments: false,
    })
    .await
    .map_err(|r| r.error)
}

/// Runs a future to its end on a runtime of its own.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn run(p: &Pipeline, r: &Req) -> Result<Admitted, GatewayError> {
    block_on(admit(p, r))
}

/// The code a refusal is known by: its reason, else its kind.
fn refusal(p: &Pipeline, r: &Req) -> (u16, &'static str) {
    match run(p, r) {
        Ok(a) => panic!("admitted: {:?}", a.path_and_query),
        Err(e) => (e.kind.status(), e.reason_code()),
    }
}

#[test]
fn one_case_per_refusal_reason() {
    let p = pipeline();
    let expired = jwt(
        serde_json::json!({"sub": "a", "iss": "https://issuer.test", "aud": "gw",
                                         "exp": now() - 3600, "iat": now() - 7200}),
    );
    let future = jwt(
        serde_json::json!({"sub": "a", "iss": "https://issuer.test", "aud": "gw",
                                        "exp": now() + 7200, "nbf": now() + 3600, "iat": now()}),
    );
    let other_aud = jwt(
        serde_json::json!({"sub": "a", "iss": "https://issuer.test", "aud": "x",
                                           "exp": now() + 600, "iat": now()}),
    );
    let other_iss = jwt(
        serde_json::json!({"sub": "a", "iss": "https://evil.test", "aud": "gw",
                                           "exp": now() + 600, "iat": now()}),
    );
    let no_exp = jwt(serde_json::json!({"sub": "a", "iss": "https://issuer.test", "aud": "gw"}));
    // The signature's first character changed: its first byte differs (the last character
    // may only carry padding bits).
    let good = good_jwt();
    let at = good.rfind('.').unwrap() + 1;
    let first = if good[at..].starts_with('A') {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{first}{}", &good[..at], &good[at + 1..]);
    let bearer = |t: &str| format!("Bearer {t}");
    let ts = now();
    let many_headers = (0..12).fold(Req::new(), |r, i| r.header(&format!("x-h{i}"), "v"));

    let cases: Vec<(&str, Req, u16, &str)> = vec![
        // 1. Client address.
        ("ip_denied", Req::new().peer("127.9.0.1"), 403, "ip_denied"),
        // 2. Header limits and framing.
        ("too many headers", many_headers, 431, "headers_too_large"),
        (
            "Content-Length with Transfer-Encoding",
            Req::new()
                .header("content-length", "3")
                .header("transfer-encoding", "chunked"),
            400,
            "ambiguous_framing",
        ),
        (
            "proxy door Host of another site",
            Req::new().header("host", "evil.example:8080"),
            403,
            "host_not_allowed",
        ),
        (
            "proxy door request from a web page",
            Req::new().header("origin", "http://evil.example"),
            403,
            "origin_not_allowed",
        ),
        // 3. Authentication.
        (
            "no credential",
            Req::new().anonymous(),
            401,
            "missing_credentials",
        ),
        (
            "unknown key",
            Req::new().auth("x-api-key", "agm_nobody-0123456789abcdefghijkl"),
            401,
            "invalid_api_key",
        ),
        (
            "revoked key",
            Req::new().auth("x-api-key", KEY_OLD),
            401,
            "revoked_api_key",
        ),
        (
            "both a token and a key",
            Req::new().header("authorization", &bearer(&good_jwt())),
            401,
            "ambiguous_credentials",
        ),
        (
            "Basic scheme",
            Req::new().auth("authorization", "Basic YTpi"),
            401,
            "unsupported_scheme",
        ),
        (
            "not a JWT",
            Req::new().auth("authorization", "Bearer not-a-jwt"),
            401,
            "malformed_token",
        ),
        (
            "expired",
            Req::new().auth("authorization", &bearer(&expired)),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            Req::new().auth("authorization", &bearer(&future)),
            401,
            "token_not_yet_valid",
        ),
        (
            "other audience",
            Req::new().auth("authorization", &bearer(&other_aud)),
            401,
            "invalid_audience",
        ),
        (
            "other issuer",
            Req::new().auth("authorization", &bearer(&other_iss)),
            401,
            "invalid_issuer",
        ),
        (
            "no exp",
            Req::new().auth("authorization", &bearer(&no_exp)),
            401,
            "missing_claim",
        ),
        (
            "forged signature",
            Req::new().auth("authorization", &bearer(&forged)),
            401,
            "invalid_signature",
        ),
        // 4. Request signature.
        (
            "stale signature",
            Req::new().signed("/open/items/1", b"", "nonce-stale-0000000001", ts - 3600),
            401,
            "signature_expired",
        ),
        (
            "signature over another path",
            Req::new().signed("/open/other", b"", "nonce-other-0000000001", ts),
            401,
            "signature_invalid",
        ),
        (
            "signature without its key id",
            Req::new().header("x-signature", "00"),
            401,
            "signature_missing",
        ),
        // 5. API, endpoint, method, path.
        (
            "missing API (a key limited to some APIs sees no others)",
            Req::new()
                .auth("x-api-key", KEY_SCOPED)
                .api("narrow", "/items/1"),
            403,
            "not_permitted",
        ),
        (
            "escaping endpoint",
            Req::new().api("open", "/a/%2e%2e/%2e%2e/etc"),
            400,
            "invalid_endpoint",
        ),
        (
            "method",
            Req::new().method(Method::DELETE),
            403,
            "method_not_allowed",
        ),
        (
            "denied path",
            Req::new().api("open", "/admin/users"),
            403,
            "path_not_allowed",
        ),
        (
            "denied path in another case",
            Req::new().api("open", "/Admin/users"),
            403,
            "path_not_allowed",
        ),
        (
            "denied path behind a matrix parameter",
            Req::new().api("open", "/admin;v=1/users"),
            403,
            "path_not_allowed",
        ),
        (
            "path outside paths",
            Req::new().api("narrow", "/other"),
            403,
            "path_not_allowed",
        ),
        // 6. RBAC, and an API's own signature requirement.
        (
            "role denies the path",
            Req::new()
                .auth("x-api-key", KEY_READER)
                .api("open", "/secret/x"),
            403,
            "not_permitted",
        ),
        (
            "role denies the method",
            Req::new()
                .auth("x-api-key", KEY_READER)
                .method(Method::POST),
            403,
            "not_permitted",
        ),
        (
            "unsigned call to a signed API",
            Req::new().api("signed", "/x"),
            401,
            "signature_missing",
        ),
        // 7. Body guards.
        (
            "declared body too large",
            Req::new()
                .method(Method::POST)
                .header("content-type", "application/json")
                .header("content-length", "65"),
            413,
            "payload_too_large",
        ),
        (
            "content type",
            Req::new()
                .method(Method::POST)
                .header("content-type", "text/plain")
                .header("content-length", "2"),
            415,
            "unsupported_media_type",
        ),
        (
            "Content-Length not a number",
            Req::new()
                .method(Method::POST)
                .header("content-length", "ten"),
            400,
            "invalid_header",
        ),
        (
            "MCP body over the limit",
            Req::new()
                .mcp()
                .method(Method::POST)
                .tool_header("content-type", "application/json")
                .body(&[b'1'; 65]),
            413,
            "payload_too_large",
        ),
        // 8. Caller headers.
        (
            "MCP caller sets Authorization",
            Req::new().mcp().tool_header("authorization", "Bearer x"),
            400,
            "reserved_header",
        ),
        (
            "MCP caller sets X-Forwarded-For",
            Req::new().mcp().tool_header("x-forwarded-for", "1.2.3.4"),
            400,
            "reserved_header",
        ),
        (
            "MCP caller sets the API's credential header",
            Req::new().mcp().tool_header("x-upstream-key", "mine"),
            400,
            "credential_header",
        ),
        (
            "proxy caller sets the API's credential header",
            Req::new().header("x-upstream-key", "mine"),
            400,
            "credential_header",
        ),
        (
            "method override",
            Req::new().header("x-http-method-override", "DELETE"),
            400,
            "override_header",
        ),
        (
            "MCP URL override",
            Req::new().mcp().tool_header("x-original-url", "/admin"),
            400,
            "override_header",
        ),
        // 11. Destination.
        (
            "loopback without allow_private_network",
            Req::new().api("private", "/x"),
            403,
            "egress_denied",
        ),
    ];
    assert!(cases.len() >= 25);
    for (name, req, status, code) in cases {
        assert_eq!(refusal(&p, &req), (status, code), "{name}");
    }
}

#[test]
fn unknown_api_is_404_without_rbac_and_looks_like_a_hidden_one_with_it() {
    let open = pipeline_with("").config.clone();
    assert!(open.rbac.enabled());
    // With RBAC, a missing API and one the caller may not use look the same.
    let p = pipeline();
    let missing = refusal(
        &p,
        &Req::new().auth("x-api-key", KEY_READER).api("nope", "/x"),
    );
    let hidden = refusal(
        &p,
        &Req::new()
            .auth("x-api-key", KEY_READER)
            .api("narrow", "/items/1"),
    );
    assert_eq!(missing, (403, "not_permitted"));
    assert_eq!(hidden, missing);
    // Without RBAC, a missing API is 404.
    let text = r#"
[auth]
required = false
[[apis]]
name = "a"
base_url = "http://127.0.0.1:9"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]
"#;
    let config = Config::parse(text, &|_| None).unwrap();
    let p = Pipeline::new(Arc::new(config), Arc::new(Egress::new()), None).unwrap();
    assert_eq!(
        refusal(&p, &Req::new().anonymous().api("nope", "/x")),
        (404, "unknown_api")
    );
    assert!(run(&p, &Req::new().anonymous().api("a", "/x")).is_ok());
}

#[test]
fn stages_run_in_order() {
    let p = pipeline();
    // Authentication before the API: an unauthenticated call to a missing API is 401.
    assert_eq!(
        refusal(&p, &Req::new().anonymous().api("nope", "/x")),
        (401, "missing_credentials")
    );
    // The address before authentication: a denied address with a bad credential is 403.
    assert_eq!(
        refusal(
            &p,
            &Req::new()
                .peer("127.9.0.1")
                .auth("x-api-key", "agm_nobody-0123456789abcdefghijkl")
        ),
        (403, "ip_denied")
    );
    // Host and Origin before authentication, and loopback names pass on a loopback listener.
    assert_eq!(
        refusal(
            &p,
            &Req::new().anonymous().header("host", "rebound.example")
        ),
        (403, "host_not_allowed")
    );
    for host in ["127.0.0.1:8080", "LOCALHOST", "[::1]:8080"] {
        assert!(run(&p, &Req::new().header("host", host)).is_ok(), "{host}");
    }
    // The MCP door has the same rule, from `[mcp]`, and accepts loopback browser origins.
    assert_eq!(
        refusal(&p, &Req::new().mcp().header("host", "elsewhere.example")),
        (403, "host_not_allowed")
    );
    assert!(run(
        &p,
        &Req::new().mcp().header("origin", "http://localhost:6274")
    )
    .is_ok());
    assert_eq!(
        refusal(&p, &Req::new().header("origin", "http://localhost:6274")),
        (403, "origin_not_allowed"),
        "the proxy door accepts no browser origin by default"
    );
    // Header limits before authentication.
    let many = (0..13).fold(Req::new().anonymous(), |r, i| {
        r.header(&format!("x-h{i}"), "v")
    });
    assert_eq!(refusal(&p, &many), (431, "headers_too_large"));
    // The path before the method's body: a denied path with an oversized body is 403.
    assert_eq!(
        refusal(
            &p,
            &Req::new()
                .api("open", "/admin/x")
                .method(Method::POST)
                .header("content-length", "1000")
        ),
        (403, "path_not_allowed")
    );
    // The body before caller headers, and caller headers before rate limits.
    assert_eq!(
        refusal(
            &p,
            &Req::new()
                .mcp()
                .method(Method::POST)
                .tool_header("authorization", "Bearer x")
                .tool_header("content-type", "text/plain")
                .body(b"{}")
        ),
        (415, "unsupported_media_type")
    );
}

#[test]
fn a_refused_call_costs_no_quota_and_the_limit_then_refuses() {
    let p = pipeline();
    // Refused for its path and for a header: neither is counted.
    assert_eq!(
        refusal(&p, &Req::new().api("limited", "/x").method(Method::POST)).1,
        "method_not_allowed"
    );
    assert_eq!(
        refusal(
            &p,
            &Req::new()
                .mcp()
                .api("limited", "/x")
                .tool_header("cookie", "c=1")
        )
        .1,
        "reserved_header"
    );
    let first = run(&p, &Req::new().api("limited", "/x")).expect("the one call of the hour");
    assert_eq!(first.rate_limits.len(), 1);
    assert_eq!(first.rate_limits[0].remaining, 0);
    let e = run(&p, &Req::new().api("limited", "/x")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    let d = e.rate_limit.expect("denial details");
    assert_eq!(d.policy, "api.limited");
    assert!(d.retry_after.as_secs() > 3000, "{:?}", d.retry_after);
}

#[test]
fn an_admitted_proxy_call_carries_its_target_and_header_plan() {
    let p = pipeline();
    let a = run(
        &p,
        &Req::new()
            .api("open", "/items/1?q=x")
            .header("accept", "application/json")
            .header("x-forwarded-for", "203.0.113.9")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("cookie", "session=1"),
    )
    .expect("admitted");
    assert_eq!(a.api.name, "open");
    assert_eq!(a.addr, "127.0.0.1:9".parse().unwrap());
    assert_eq!(a.path_and_query, "/v1/items/1?q=x");
    assert_eq!(a.caller.principal.id, "key:ops");
    // The caller's own credential and forwarding metadata stay at the gateway; the trace
    // header is replaced; other headers are the HTTP layer's to forward.
    let strip: Vec<&str> = a.headers.strip.iter().map(|h| h.as_str()).collect();
    for h in ["x-api-key", "x-forwarded-for", "cookie", "traceparent"] {
        assert!(strip.contains(&h), "{h} not stripped: {strip:?}");
    }
    assert!(!strip.contains(&"accept"));
    let (name, value) = a.headers.credential.expect("a header credential");
    assert_eq!(name, "x-upstream-key");
    assert_eq!(value, "upstream-secret");
    assert!(value.is_sensitive());
    assert!(a.body_digest.is_none());
}

#[test]
fn an_admitted_mcp_call_forwards_vetted_headers_and_a_query_credential() {
    let p = pipeline();
    // A caller's parameter of the credential's name is refused, like a credential header.
    let e = run(
        &p,
        &Req::new()
            .mcp()
            .api("narrow", "/items/7?appid=caller-guess&x=1"),
    )
    .expect_err("refused");
    assert_eq!(e.reason_code(), "credential_param");
    assert_eq!(e.rule.as_deref(), Some("apis[narrow].credentials"));
    let a = run(
        &p,
        &Req::new()
            .mcp()
            .api("narrow", "/items/7?x=1")
            .tool_header("accept", "text/plain"),
    )
    .expect("admitted");
    assert_eq!(a.path_and_query, "/items/7?x=1&appid=q-secret");
    assert_eq!(a.headers.forward.len(), 1);
    assert_eq!(a.headers.forward[0].0, "accept");
    assert!(a.headers.credential.is_none());
}

#[test]
fn a_signed_body_is_checked_now_when_whole_and_later_when_streamed() {
    let p = pipeline();
    let ts = now();
    // The MCP door has the body: a mismatch refuses at once.
    let bad = Req::new()
        .mcp()
        .api("signed", "/x")
        .method(Method::POST)
        .tool_header("content-type", "application/json")
        .body(b"{}")
        .signed("/signed/x", b"{\"other\":1}", "nonce-mcp-body-00000001", ts);
    assert_eq!(refusal(&p, &bad), (401, "signature_invalid"));
    // The proxy door streams the body: admission hands the digest on.
    let streamed = Req::new()
        .api("signed", "/x")
        .method(Method::POST)
        .header("content-type", "application/json")
        .header("content-length", "2")
        .signed("/signed/x", b"{}", "nonce-proxy-body-000001", ts);
    let a = run(&p, &streamed).expect("admitted");
    let digest = a.body_digest.expect("a digest to check");
    let mut good = body::StreamGuard::new(&p.config.request, Some(digest));
    assert!(good.chunk(b"{").is_ok() && good.chunk(b"}").is_ok());
    assert!(good.end().is_ok());
    let mut tampered = body::StreamGuard::new(&p.config.request, Some(digest));
    tampered.chunk(b"[]").unwrap();
    assert_eq!(
        tampered.end().unwrap_err().reason_code(),
        "signature_invalid"
    );
    // A streamed body is counted against max_body_size (64 here) as it comes.
    let mut sized = body::StreamGuard::new(&p.config.request, None);
    sized.chunk(&[b' '; 40]).unwrap();
    assert_eq!(sized.chunk(&[b' '; 25]).unwrap_err().kind.status(), 413);
    // The same signature again is a replay.
    assert_eq!(refusal(&p, &streamed), (401, "signature_replayed"));
}

/// Deny rules fold case and see through matrix parameters; allow rules and endpoint limits
/// follow the API's `case_insensitive_paths`.
#[test]
fn path_rules_read_the_path_their_safe_way() {
    let p = pipeline_with(
        r#"
[[apis]]
name = "folded"
base_url = "http://127.0.0.1:9"
allow_private_network = true
methods = ["GET"]
paths = ["/search/**", "/items/*"]
case_insensitive_paths = true
endpoint_rate_limits = [{ path = "/search/**", requests = 1, window = "1h" }]
"#,
    );
    // RBAC deny rules too: the reader may not see /secret in any case or spelling.
    for e in ["/Secret/x", "/secret;a=b/x", "/SECRET"] {
        let r = Req::new().auth("x-api-key", KEY_READER).api("open", e);
        assert_eq!(refusal(&p, &r), (403, "not_permitted"), "{e}");
    }
    // Allow rules: case-sensitive by default, folded where the API says so.
    assert_eq!(
        refusal(&p, &Req::new().api("narrow", "/Items/1")),
        (403, "path_not_allowed")
    );
    assert!(run(&p, &Req::new().api("folded", "/Items/1")).is_ok());
    // A limit on /search counts /Search on a case-insensitive API.
    assert!(run(&p, &Req::new().api("folded", "/search/a")).is_ok());
    let e = run(&p, &Req::new().api("folded", "/Search/b")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
}

#[test]
fn the_outbound_rule_table() {
    use outbound::{header_rule, HeaderRule};
    let p = pipeline();
    let api = p.config.api("open").unwrap().clone();
    let rule = |door, h: &'static str| header_rule(door, &api, &HeaderName::from_static(h));
    for h in [
        "authorization",
        "cookie",
        "x-api-key",
        "proxy-authorization",
        "x-signature",
    ] {
        assert_eq!(rule(Door::Proxy, h), HeaderRule::Strip, "{h}");
        assert_eq!(
            rule(Door::Mcp, h),
            HeaderRule::Refuse(Reason::ReservedHeader),
            "{h}"
        );
    }
    for h in [
        "forwarded",
        "x-forwarded-for",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
    ] {
        assert_eq!(rule(Door::Proxy, h), HeaderRule::Strip, "{h}");
        assert_eq!(
            rule(Door::Mcp, h),
            HeaderRule::Refuse(Reason::ReservedHeader),
            "{h}"
        );
    }
    for h in [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
    ] {
        assert_eq!(rule(Door::Proxy, h), HeaderRule::Framing, "{h}");
        assert_eq!(
            rule(Door::Mcp, h),
            HeaderRule::Refuse(Reason::ReservedHeader),
            "{h}"
        );
    }
    for door in [Door::Proxy, Door::Mcp] {
        for h in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
        ] {
            assert_eq!(
                rule(door, h),
                HeaderRule::Refuse(Reason::OverrideHeader),
                "{h}"
            );
        }
        assert_eq!(
            rule(door, "x-upstream-key"),
            HeaderRule::Refuse(Reason::CredentialHeader)
        );
        assert_eq!(rule(door, "traceparent"), HeaderRule::Strip);
        assert_eq!(rule(door, "accept"), HeaderRule::Forward);
        assert_eq!(rule(door, "x-custom"), HeaderRule::Forward);
    }
}

#[test]
fn a_redirect_hop_is_judged_again_and_the_credential_stays_on_its_origin() {
    let p = pipeline_with(
        r#"
[[apis]]
name = "other_origin"
base_url = "http://127.0.0.2:9"
allow_private_network = true
methods = ["GET"]
paths = ["/ok/**"]

[[apis]]
name = "signed_elsewhere"
base_url = "http://127.0.0.4:9"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]
require_signature = true
"#,
    );
    let caller = Arc::new(
        block_on(p.identify(&CallerRequest {
            door: Door::Mcp,
            peer: Some("127.0.0.1".parse().unwrap()),
            method: &Method::GET,
            path: "/mcp",
            query: "",
            headers: &{
                let mut h = HeaderMap::new();
                h.insert("x-api-key", KEY_OPS.parse().unwrap());
                h
            },
            raw_head: None,
            body: None,
            trace: TraceContext::new_root(),
        }))
        .unwrap(),
    );
    let open = p.config.api("open").unwrap().clone();
    let here = url::Url::parse("http://127.0.0.1:9/v1/items/1").unwrap();
    let hop = |loc: &str| block_on(p.admit_redirect(&caller, &open, &here, loc, &Method::GET));
    // Same origin: the credential goes along.
    let (api, _, target) = hop("/v1/items/2").unwrap();
    assert_eq!(target, "/v1/items/2");
    assert!(api.credential.is_some());
    // Another origin that is an allow-listed API: admitted, without the credential.
    let (api, addr, target) = hop("http://127.0.0.2:9/ok/x").unwrap();
    assert_eq!(
        (api.name.as_str(), target.as_str()),
        ("other_origin", "/ok/x")
    );
    assert_eq!(addr, "127.0.0.2:9".parse().unwrap());
    assert!(api.credential.is_none());
    // A path that API does not allow, a place no API covers, a denied path of the same API
    // and an API that requires a signature the caller did not give are refused, each as a
    // refused redirect.
    for loc in [
        "http://127.0.0.2:9/no",
        "http://127.0.0.3:9/ok",
        "/v1/admin/x",
        "http://127.0.0.4:9/x",
    ] {
        let e = hop(loc).unwrap_err();
        assert_eq!(
            (e.kind.status(), e.reason_code()),
            (403, "redirect_denied"),
            "{loc}"
        );
    }
    // A hop the caller's roles refuse says so.
    let reader = Arc::new(Caller {
        principal: Principal {
            roles: vec!["reader".into()],
            ..caller.principal.clone()
        },
        ..(*caller).clone()
    });
    let e = block_on(p.admit_redirect(&reader, &open, &here, "/v1/secret/x", &Method::GET))
        .unwrap_err();
    assert_eq!(e.reason_code(), "not_permitted");
}

/// Every refusal names its stage and the rule that refused, by config key or builtin name.
#[test]
fn refusals_name_their_stage_and_rule() {
    let p = pipeline();
    let named = |r: &Req| {
        let e = run(&p, r).expect_err("refused");
        (
            e.stage.map(Stage::as_str).unwrap_or("-"),
            e.rule.clone().unwrap_or_default(),
        )
    };
    let cases: Vec<(Req, (&str, &str))> = vec![
        (
            Req::new().peer("127.9.0.1"),
            ("address", "security.ip_deny[0]"),
        ),
        (
            Req::new().header("host", "rebound.example"),
            ("request", "proxy.allowed_hosts"),
        ),
        (Req::new().anonymous(), ("authentication", "auth.required")),
        // With RBAC, a missing API and a hidden one are refused alike.
        (
            Req::new().api("ghost", "/x"),
            ("authorization", "rbac.roles"),
        ),
        (
            Req::new()
                .auth("x-api-key", KEY_READER)
                .api("narrow", "/items/1"),
            ("authorization", "rbac.roles"),
        ),
        (
            Req::new().api("open", "/../x"),
            ("target", "builtin.endpoint"),
        ),
        (
            Req::new().api("narrow", "/items/1").method(Method::POST),
            ("target", "apis[narrow].methods"),
        ),
        (
            Req::new().api("open", "/admin/x"),
            ("target", "apis[open].deny_paths[0]"),
        ),
        (
            Req::new().api("narrow", "/other"),
            ("target", "apis[narrow].paths"),
        ),
        (
            Req::new()
                .auth("x-api-key", KEY_READER)
                .api("open", "/secret/x"),
            ("authorization", "rbac.roles[1].deny[0]"),
        ),
        (
            Req::new()
                .auth("x-api-key", KEY_READER)
                .api("open", "/x")
                .method(Method::POST),
            ("authorization", "rbac.roles"),
        ),
        // A key's allowed_apis hides the rest like RBAC does.
        (
            Req::new()
                .auth("x-api-key", KEY_SCOPED)
                .api("narrow", "/items/1"),
            ("authorization", "rbac.roles"),
        ),
        (
            Req::new().api("private", "/x"),
            ("destination", "apis[private].allow_private_network"),
        ),
    ];
    for (req, want) in cases {
        let (stage, rule) = named(&req);
        assert_eq!((stage, rule.as_str()), want, "{} {}", req.api, req.endpoint);
    }
}
