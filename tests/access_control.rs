//! Access control through both front doors: the bad-input catalogue of tokens, keys,
//! addresses, signatures, bodies and framing, RBAC filtering, and the MCP authorization
//! metadata. Every refusal is checked for its status, its machine-readable reason, and that
//! the upstream never saw the request.

mod common;
use common::*;

use serde_json::{json, Value};

const REVOKED_KEY: &str = "agm_revoked-0123456789abcdefghijklmnopqrstuvwxyz";
const WRITER_KEY: &str = "agm_writer-0123456789abcdefghijklmnopqrstuvwxyz0";
const WEATHER_KEY: &str = "agm_weather-0123456789abcdefghijklmnopqrstuvwxyz";
const SIG_SECRET: &str = "signing-secret-0123456789abcdef-xyz";

/// A gateway that requires authentication, with RBAC, signatures and request guards.
fn access_config(up: u16, ports: (u16, u16, u16), security_extra: &str) -> String {
    let listen = listen_section(ports, 2);
    let auth = auth_section(true);
    let (revoked, writer, weather) = (
        sha256_hex(REVOKED_KEY),
        sha256_hex(WRITER_KEY),
        sha256_hex(WEATHER_KEY),
    );
    format!(
        r#"{listen}{auth}
[[auth.api_keys]]
name = "revoked"
key_sha256 = "{revoked}"
roles = ["reader"]
revoked = true

[[auth.api_keys]]
name = "writer"
key_sha256 = "{writer}"
roles = ["writer"]

[[auth.api_keys]]
name = "weather-only"
key_sha256 = "{weather}"
allowed_apis = ["weather"]

[[rbac.roles]]
name = "reader"
allow = [{{ api = "local", methods = ["GET"], paths = ["/**"] }}]

[[rbac.roles]]
name = "writer"
allow = [{{ api = "*" }}]
deny = [{{ api = "local", paths = ["/admin/**"] }}]

[security]
{security_extra}

[security.request]
max_body_size = 1048576
allowed_content_types = ["application/json"]
max_headers = 40

[security.signatures]
keys = [{{ id = "k1", secret = "{SIG_SECRET}" }}]

[[apis]]
name = "local"
base_url = "http://127.0.0.1:{up}"
allow_private_network = true
methods = ["GET", "POST"]
paths = ["/**"]
credentials = {{ header = "X-Upstream-Key", value = "${{AGM_TEST_SECRET}}" }}

[[apis]]
name = "weather"
base_url = "http://127.0.0.1:{up}/weather"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]

[[apis]]
name = "signed"
base_url = "http://127.0.0.1:{up}/signed"
allow_private_network = true
methods = ["POST"]
paths = ["/**"]
require_signature = true
"#
    )
}

fn start(up: &Upstream, security_extra: &str) -> Gateway {
    Gateway::start_generated(|ports| access_config(up.port, ports, security_extra))
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn problem(r: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, www, body)
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The bad-token catalogue: each gets 401, its reason, and `WWW-Authenticate` pointing at the
/// protected-resource metadata, on the proxy door and on the MCP door; none reaches upstream.
#[tokio::test]
async fn bad_tokens_are_refused_with_reasons_on_both_doors() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = reqwest::Client::new();
    let none_alg = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "x", "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "exp": now_s() + 60}))
    );
    let catalogue: Vec<(&str, Option<String>, &str)> = vec![
        ("no credentials", None, "missing_credentials"),
        ("alg none", Some(bearer(&none_alg)), "algorithm_not_allowed"),
        (
            "expired",
            Some(bearer(&jwt(
                json!({"exp": now_s() - 120, "iat": now_s() - 600}),
            ))),
            "token_expired",
        ),
        (
            "not yet valid",
            Some(bearer(&jwt(json!({"nbf": now_s() + 600})))),
            "token_not_yet_valid",
        ),
        (
            "wrong audience",
            Some(bearer(&jwt(json!({"aud": "another-service"})))),
            "invalid_audience",
        ),
        (
            "wrong issuer",
            Some(bearer(&jwt(json!({"iss": "https://evil.test"})))),
            "invalid_issuer",
        ),
        (
            "no exp",
            Some(bearer(&jwt(json!({"exp": null})))),
            "missing_claim",
        ),
        (
            "forged",
            Some(bearer(&jwt_signed(
                json!({}),
                "not-the-secret-not-the-secret-xx",
            ))),
            "invalid_signature",
        ),
        ("garbage", Some(bearer("abc.def.ghi")), "malformed_token"),
        (
            "basic auth",
            Some("Basic YWxpY2U6cHc=".to_string()),
            "unsupported_scheme",
        ),
    ];
    let metadata = format!(
        "resource_metadata=\"http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp\"",
        gw.mcp
    );
    for (what, authz, reason) in &catalogue {
        // Proxy door.
        let mut req = c.get(gw.proxy_url("/local/x"));
        if let Some(a) = authz {
            req = req.header("authorization", a);
        }
        let (status, www, body) = problem(req.send().await.unwrap()).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], "unauthorized", "{what}");
        assert_eq!(body["reason"], *reason, "{what}: {body}");
        let www = www.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
        assert!(
            www.starts_with("Bearer ") && www.contains(&metadata),
            "{what}: {www}"
        );
        assert_eq!(
            www.contains("error=\"invalid_token\""),
            authz.is_some(),
            "{what}: {www}"
        );

        // MCP door: the HTTP request itself is refused before any JSON-RPC handling.
        let mut req = c
            .post(gw.mcp_url())
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        if let Some(a) = authz {
            req = req.header("authorization", a);
        }
        let (status, www, body) = problem(req.send().await.unwrap()).await;
        assert_eq!(status, 401, "mcp {what}");
        assert_eq!(body["reason"], *reason, "mcp {what}: {body}");
        assert!(www.is_some_and(|w| w.contains(&metadata)), "mcp {what}");
    }
    assert_eq!(up.count(), 0, "no refused request may reach the upstream");
}

/// Valid credentials of every kind get through, and none of the caller's credentials (its
/// token, cookies, API key, signature headers) ever reaches the upstream.
#[tokio::test]
async fn valid_callers_pass_and_their_credentials_never_reach_upstream() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = reqwest::Client::new();
    let token = jwt(json!({"roles": ["reader"]}));
    let r = c
        .get(gw.proxy_url("/local/echo"))
        .header("authorization", bearer(&token))
        .header("cookie", "session=agent-cookie")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let url = gw.proxy_url("/local/echo");
    assert_eq!(get_status_with(&c, &url, ("x-api-key", API_KEY)).await, 200);
    let api_key_scheme = format!("ApiKey {API_KEY}");
    assert_eq!(
        get_status_with(&c, &url, ("authorization", &api_key_scheme)).await,
        200
    );

    // MCP door, with the token on the HTTP request.
    let auth = bearer(&token);
    let mut s = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &auth)]).await;
    let result = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/echo"}))
        .await;
    assert_eq!(result["isError"], false, "{result}");

    let seen = up.seen();
    assert_eq!(seen.len(), 4);
    for req in &seen {
        for h in ["authorization", "cookie", "x-api-key"] {
            assert_eq!(req.header(h), None, "{h} reached the upstream: {req:?}");
        }
        assert_eq!(req.header("x-upstream-key"), Some(SECRET));
        let text = format!("{req:?}");
        assert!(!text.contains(&token) && !text.contains(API_KEY));
    }
}

#[tokio::test]
async fn revoked_and_garbled_api_keys_are_refused() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = reqwest::Client::new();
    for (key, reason) in [
        (REVOKED_KEY, "revoked_api_key"),
        ("agm_not-a-key", "invalid_api_key"),
        ("%%%\u{7f}", "invalid_api_key"),
        (&API_KEY[..API_KEY.len() - 1], "invalid_api_key"),
    ] {
        let mut req = c.get(gw.proxy_url("/local/x"));
        req = match http::HeaderValue::from_str(key) {
            Ok(v) => req.header("x-api-key", v),
            Err(_) => req.header(
                "x-api-key",
                http::HeaderValue::from_bytes(b"%%%\xff").unwrap(),
            ),
        };
        let (status, www, body) = problem(req.send().await.unwrap()).await;
        assert_eq!(status, 401, "{key}: {body}");
        assert!(
            body["reason"] == reason || body["reason"] == "malformed_credentials",
            "{key}: {body}"
        );
        assert!(www.is_some());
    }
    // Both schemes at once are ambiguous, not silently resolved.
    let (status, _, body) = problem(
        c.get(gw.proxy_url("/local/x"))
            .header("x-api-key", API_KEY)
            .header("authorization", bearer(&jwt(json!({}))))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("ambiguous_credentials"))
    );
    assert_eq!(up.count(), 0);
}

/// RBAC: roles grant APIs, methods and paths; deny rules win; a key's `allowed_apis`
/// restricts it; listings show only what the caller may use; a hidden API and a missing one
/// are refused the same way.
#[tokio::test]
async fn rbac_filters_listings_and_refuses_without_revealing() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = reqwest::Client::new();
    let reader = bearer(&jwt(json!({"roles": ["reader"]})));
    let call = |method: reqwest::Method, path: &str, who: &str| {
        c.request(method, gw.proxy_url(path))
            .header("authorization", who.to_string())
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    assert_eq!(
        call(reqwest::Method::GET, "/local/a", &reader)
            .await
            .unwrap()
            .status(),
        200
    );
    let (s, _, denied_post) = problem(
        call(reqwest::Method::POST, "/local/a", &reader)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, denied_post["reason"].as_str()),
        (403, Some("not_permitted"))
    );
    let (s, _, hidden) = problem(
        call(reqwest::Method::GET, "/weather/now", &reader)
            .await
            .unwrap(),
    )
    .await;
    let (s2, _, missing) = problem(
        call(reqwest::Method::GET, "/nosuchapi/now", &reader)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, s2), (403, 403));
    assert_eq!(hidden["reason"], missing["reason"]);
    assert_eq!(
        hidden["detail"].as_str().unwrap().replace("weather", "X"),
        missing["detail"]
            .as_str()
            .unwrap()
            .replace("nosuchapi", "X"),
        "a hidden API must look exactly like a missing one"
    );

    let writer = format!("ApiKey {WRITER_KEY}");
    assert_eq!(
        call(reqwest::Method::POST, "/local/a", &writer)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        call(reqwest::Method::GET, "/weather/now", &writer)
            .await
            .unwrap()
            .status(),
        200
    );
    let (s, _, b) = problem(
        call(reqwest::Method::GET, "/local/admin/users", &writer)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["reason"].as_str()),
        (403, Some("not_permitted")),
        "deny wins over allow"
    );

    let weather_only = format!("ApiKey {WEATHER_KEY}");
    assert_eq!(
        call(reqwest::Method::GET, "/weather/now", &weather_only)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        call(reqwest::Method::GET, "/local/a", &weather_only)
            .await
            .unwrap()
            .status(),
        403
    );

    // What each caller is shown over MCP.
    async fn shown(gw: &Gateway, authz: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut s = McpSession::connect_with(&gw.mcp_url(), &[("authorization", authz)]).await;
        let tools = s.request("tools/list", json!({})).await;
        let tools = tools["result"]["tools"].as_array().unwrap().clone();
        let names = |v: &Value| -> Vec<String> {
            let mut n: Vec<String> = v
                .as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            n.sort();
            n
        };
        let gateway_tool = tools.iter().find(|t| t["name"] == "api_gateway");
        let enum_apis = gateway_tool
            .map(|t| names(&t["inputSchema"]["properties"]["api"]["enum"]))
            .unwrap_or_default();
        let methods = gateway_tool
            .map(|t| names(&t["inputSchema"]["properties"]["method"]["enum"]))
            .unwrap_or_default();
        let listed = s.call("list_apis", json!({})).await;
        let mut apis: Vec<String> = listed["structuredContent"]["apis"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect();
        apis.sort();
        assert_eq!(apis, enum_apis, "list_apis and the api enum must agree");
        (enum_apis, methods, apis)
    }
    let (apis, methods, _) = shown(&gw, &reader).await;
    assert_eq!(
        (apis, methods),
        (vec!["local".to_string()], vec!["GET".to_string()])
    );
    let (apis, methods, _) = shown(&gw, &writer).await;
    assert_eq!(apis, vec!["local", "signed", "weather"]);
    assert_eq!(methods, vec!["GET", "POST"]);
    let (apis, _, _) = shown(&gw, &weather_only).await;
    assert_eq!(apis, vec!["weather"]);

    // Over MCP a hidden API is a `forbidden` tool result, not a protocol error.
    let mut s = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &reader)]).await;
    let r = s
        .call("api_gateway", json!({"api": "weather", "endpoint": "/now"}))
        .await;
    assert_eq!(r["isError"], true);
    assert_eq!(r["structuredContent"]["error"], "forbidden");
}

/// IP rules: an address outside `ip_allow` is refused; a forged `X-Forwarded-For` from a peer
/// that is not a trusted proxy changes nothing; from a trusted proxy it is believed.
#[tokio::test]
async fn ip_rules_and_forwarded_headers_from_untrusted_peers() {
    let up = Upstream::start();
    let c = reqwest::Client::new();
    let key = format!("ApiKey {WRITER_KEY}");
    let get = |gw: &Gateway, xff: Option<&str>| {
        let mut r = c
            .get(gw.proxy_url("/local/a"))
            .header("authorization", key.clone());
        if let Some(x) = xff {
            r = r.header("x-forwarded-for", x);
        }
        r.send()
    };

    let untrusted = start(&up, "ip_allow = [\"10.0.0.0/8\"]");
    let (s, _, b) = problem(get(&untrusted, None).await.unwrap()).await;
    assert_eq!((s, b["reason"].as_str()), (403, Some("ip_denied")));
    let (s, _, _) = problem(get(&untrusted, Some("10.1.2.3")).await.unwrap()).await;
    assert_eq!(
        s, 403,
        "a spoofed X-Forwarded-For from an untrusted peer must not count"
    );
    let r = c
        .post(untrusted.mcp_url())
        .header("authorization", key.clone())
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the MCP door applies the same IP rules");

    let trusted = start(
        &up,
        "ip_allow = [\"10.0.0.0/8\", \"::ffff:192.0.2.0/120\"]\nip_deny = [\"10.9.0.0/16\"]\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    assert_eq!(get(&trusted, Some("10.1.2.3")).await.unwrap().status(), 200);
    assert_eq!(
        get(&trusted, Some("192.0.2.7")).await.unwrap().status(),
        200,
        "v4-mapped allow entry"
    );
    assert_eq!(
        get(&trusted, Some("10.9.0.1")).await.unwrap().status(),
        403,
        "deny first"
    );
    assert_eq!(get(&trusted, None).await.unwrap().status(), 403);
    // A proxy that sets Forwarded is believed over an X-Forwarded-For its client sent.
    let both = c
        .get(trusted.proxy_url("/local/a"))
        .header("authorization", key.clone())
        .header("forwarded", "for=10.9.0.1")
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 403, "Forwarded wins over X-Forwarded-For");
    assert_eq!(
        up.seen()
            .iter()
            .filter(|s| s.header("x-forwarded-for").is_some())
            .count(),
        0,
        "forwarding headers are never passed upstream"
    );
}

fn signed_post(
    c: &reqwest::Client,
    url: &str,
    path: &str,
    body: &'static str,
    signed_body: &str,
    ts: u64,
    nonce: &str,
) -> reqwest::RequestBuilder {
    let mut req = c
        .post(url)
        .header("authorization", format!("ApiKey {WRITER_KEY}"))
        .header("content-type", "application/json");
    for (k, v) in signature_headers(
        "k1",
        SIG_SECRET,
        "POST",
        path,
        "",
        signed_body.as_bytes(),
        ts,
        nonce,
    ) {
        req = req.header(k, v);
    }
    req.body(body)
}

/// Request signatures: valid, replayed, stale, tampered body and missing, on an API that
/// requires them. A tampered body never reaches the upstream complete.
#[tokio::test]
async fn signatures_valid_replayed_stale_tampered_and_missing() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = reqwest::Client::new();
    let url = gw.proxy_url("/signed/orders");
    let body = r#"{"amount": 10}"#;
    let now = now_s();

    let ok = signed_post(
        &c,
        &url,
        "/signed/orders",
        body,
        body,
        now,
        "nonce-aaaaaaaaaaaa01",
    );
    assert_eq!(ok.send().await.unwrap().status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body.as_bytes());
    for h in [
        "x-signature",
        "x-signature-nonce",
        "x-content-sha256",
        "x-signature-key-id",
    ] {
        assert_eq!(seen[0].header(h), None, "{h} must not be forwarded");
    }

    let replay = signed_post(
        &c,
        &url,
        "/signed/orders",
        body,
        body,
        now,
        "nonce-aaaaaaaaaaaa01",
    );
    let (s, _, b) = problem(replay.send().await.unwrap()).await;
    assert_eq!((s, b["reason"].as_str()), (401, Some("signature_replayed")));

    let stale = signed_post(
        &c,
        &url,
        "/signed/orders",
        body,
        body,
        now - 301,
        "nonce-aaaaaaaaaaaa02",
    );
    let (s, _, b) = problem(stale.send().await.unwrap()).await;
    assert_eq!((s, b["reason"].as_str()), (401, Some("signature_expired")));

    let other_path = signed_post(
        &c,
        &gw.proxy_url("/signed/refunds"),
        "/signed/orders",
        body,
        body,
        now,
        "nonce-aaaaaaaaaaaa03",
    );
    let (s, _, b) = problem(other_path.send().await.unwrap()).await;
    assert_eq!((s, b["reason"].as_str()), (401, Some("signature_invalid")));

    // The body differs from the digest that was signed: refused, and the upstream never
    // receives the complete request.
    let tampered = signed_post(
        &c,
        &url,
        "/signed/orders",
        r#"{"amount": 99}"#,
        body,
        now,
        "nonce-aaaaaaaaaaaa04",
    );
    let r = tampered.send().await.unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["reason"], "signature_invalid");

    let unsigned = c
        .post(&url)
        .header("authorization", format!("ApiKey {WRITER_KEY}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (s, _, b) = problem(unsigned).await;
    assert_eq!((s, b["reason"].as_str()), (401, Some("signature_missing")));
    assert_eq!(
        up.count(),
        1,
        "only the valid signed request reached the upstream"
    );
}

/// Body and framing guards: a 2 MB body against a 1 MB limit is refused before it is read,
/// a wrong content type is 415, smuggling shapes are 400 and too many headers 431. The
/// upstream is contacted by none of them.
#[tokio::test]
async fn body_content_type_framing_and_header_guards() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = reqwest::Client::new();
    let key = format!("ApiKey {WRITER_KEY}");
    let big = vec![b'a'; 2 << 20];
    let r = c
        .post(gw.proxy_url("/local/upload"))
        .header("authorization", key.clone())
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await;
    // The gateway may answer and close before the client finishes sending 2 MB.
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    let r = c
        .post(gw.proxy_url("/local/upload"))
        .header("authorization", key.clone())
        .header("content-type", "text/xml")
        .body("<x/>")
        .send()
        .await
        .unwrap();
    let (s, _, b) = problem(r).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    let smuggle = format!(
        "POST /local/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let raw = raw_http(gw.proxy, smuggle.as_bytes());
    assert_eq!(status_of(&raw) / 100, 4, "CL+TE must be refused: {raw}");
    let dup_cl = format!(
        "POST /local/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
    );
    let raw = raw_http(gw.proxy, dup_cl.as_bytes());
    assert_eq!(
        status_of(&raw) / 100,
        4,
        "duplicate Content-Length must be refused: {raw}"
    );

    let mut req = c
        .get(gw.proxy_url("/local/x"))
        .header("authorization", key.clone());
    for i in 0..50 {
        req = req.header(format!("x-extra-{i}"), "v");
    }
    let (s, _, b) = problem(req.send().await.unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (431, Some("headers_too_large")));
    assert_eq!(up.count(), 0, "no refused request may reach the upstream");
}

/// RFC 9728 protected-resource metadata on the MCP listener, at the well-known path and at
/// its /mcp-suffixed form.
#[tokio::test]
async fn protected_resource_metadata_is_served() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = reqwest::Client::new();
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let r = c
            .get(format!("http://127.0.0.1:{}{path}", gw.mcp))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let doc: Value = r.json().await.unwrap();
        assert_eq!(doc["resource"], format!("http://127.0.0.1:{}/mcp", gw.mcp));
        assert_eq!(doc["authorization_servers"], json!([JWT_ISSUER]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
}

/// An MCP session belongs to the caller that created it: the same session id with another
/// caller's (valid) credentials is refused, so a leaked session id is useless to others.
#[tokio::test]
async fn sessions_belong_to_the_caller_that_created_them() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let writer = format!("ApiKey {WRITER_KEY}");
    let reader = bearer(&jwt(json!({"roles": ["reader"]})));
    let mut s = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &writer)]).await;
    let r = s
        .call("api_gateway", json!({"api": "weather", "endpoint": "/now"}))
        .await;
    assert_eq!(r["isError"], false, "the writer may call weather: {r}");
    let sid = s.session_id().expect("a legacy session id");

    let c = reqwest::Client::new();
    let r = c
        .post(gw.mcp_url())
        .header("authorization", &reader)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "api_gateway", "arguments": {"api": "weather", "endpoint": "/now"}}}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = problem(r).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("session_not_owned"))
    );
    assert_eq!(up.count(), 1, "only the owner's call reached the upstream");
}
