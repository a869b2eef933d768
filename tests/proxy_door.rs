//! The reverse-proxy door, driven over real sockets against a real upstream.

mod common;
use common::*;

#[tokio::test]
async fn allowed_call_reaches_upstream_with_injected_credential_and_no_caller_token() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let r = no_redirects()
        .get(gw.proxy_url("/local/items/42?x=1&y=two"))
        .header(
            "Authorization",
            format!("Bearer {}", jwt(serde_json::json!({}))),
        )
        .header("Cookie", "session=agent")
        .header("X-Forwarded-For", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ok"], true);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.target, "/base/items/42?x=1&y=two");
    assert_eq!(s.header("x-upstream-key"), Some(SECRET));
    assert_eq!(
        s.header("authorization"),
        None,
        "the agent's token must never go upstream"
    );
    assert_eq!(s.header("cookie"), None);
    assert_eq!(s.header("x-forwarded-for"), None);
    assert_eq!(
        s.header("host"),
        Some(format!("127.0.0.1:{}", up.port).as_str())
    );
}

/// The header the API's credential goes in is the gateway's: a caller that sets it is
/// refused (the same reason as on the MCP door), and nothing reaches the upstream.
#[tokio::test]
async fn a_caller_setting_the_credential_header_is_refused() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let r = no_redirects()
        .get(gw.proxy_url("/local/items/42"))
        .header(
            "Authorization",
            format!("Bearer {}", jwt(serde_json::json!({}))),
        )
        .header("X-Upstream-Key", "caller-forged-value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_header");
    assert_eq!(body["reason"], "credential_header");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn query_credential_is_injected_and_cannot_be_overridden() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    // A caller's own copy of the credential parameter is refused, never forwarded.
    let r = no_redirects()
        .get(gw.proxy_url("/qapi/weather?q=London&appid=caller-value"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "credential_param");
    assert!(up.seen().is_empty());
    let r = no_redirects()
        .get(gw.proxy_url("/qapi/weather?q=London"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = &up.seen()[0];
    assert_eq!(s.target, format!("/weather?q=London&appid={QUERY_SECRET}"));
}

#[tokio::test]
async fn disallowed_api_method_and_path_are_denied_without_contacting_upstream() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let c = no_redirects();
    let cases = [
        ("DELETE", "/local/items/1", 403, "forbidden"),
        ("PUT", "/readonly/public/x", 403, "forbidden"),
        ("GET", "/readonly/private/x", 403, "forbidden"),
        ("GET", "/local/secret/keys", 403, "forbidden"),
        ("GET", "/nosuchapi/x", 404, "unknown_api"),
        ("GET", "/", 404, "unknown_api"),
        ("GET", "/guarded/x", 403, "egress_denied"),
    ];
    for (method, path, status, code) in cases {
        let r = c
            .request(method.parse().unwrap(), gw.proxy_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/problem+json",
            "{method} {path}"
        );
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["error"], code, "{method} {path}: {p}");
        assert_eq!(p["status"], status);
    }
    assert_eq!(
        up.count(),
        0,
        "denied requests reached the upstream: {:?}",
        up.seen()
    );
}

/// At least 15 traversal and host-escape targets, sent raw so no client normalises them.
#[test]
fn hostile_targets_never_reach_upstream() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let targets = [
        "/local/../x",
        "/local/a/../../x",
        "/local/%2e%2e/x",
        "/local/%2E%2E/x",
        "/local/.%2e/x",
        "/local/%2e/x",
        "/local/a/..%2f..%2fx",
        "/local/a%2fb",
        "/local//evil.com/x",
        "/local/a%5c..%5cx",
        "/local/@evil.com",
        "/local/a@evil.com/x",
        "/local/%252e%252e/x",
        "/local/..;/x",
        "/local/a%0d%0aX-Injected:%20y",
        "/local/a%00b",
        "/local/http://evil.com/x",
        "/local/%ef%bc%8e%ef%bc%8e/x",
        "/local/a//b",
        "/local/a%zz",
    ];
    for t in targets {
        let raw = raw_http(
            gw.proxy,
            format!("GET {t} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let status = status_of(&raw);
        assert_eq!(status, 400, "{t}: {raw}");
        assert!(raw.contains("invalid_endpoint"), "{t}: {raw}");
    }
    // Raw backslashes and CR/LF in the request line never parse as a request at all.
    for t in ["/local/a\\..\\x", "/local/a\r\nX: y"] {
        let raw = raw_http(
            gw.proxy,
            format!("GET {t} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let status = status_of(&raw);
        assert!(status == 400 || raw.is_empty(), "{t:?}: {raw}");
    }
    assert_eq!(
        up.count(),
        0,
        "hostile targets reached the upstream: {:?}",
        up.seen()
    );
}

#[tokio::test]
async fn body_guards_give_413_and_415() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let c = no_redirects();
    let r = c
        .post(gw.proxy_url("/local/items"))
        .header("content-type", "application/json")
        .body(vec![b'1'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(gw.proxy_url("/local/items"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(up.count(), 0);

    // A streamed (chunked) body without a length is counted as it flows.
    let stream = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 400]))),
    );
    let r = c
        .post(gw.proxy_url("/local/items"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = c
        .post(gw.proxy_url("/local/items"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let last = up.seen().pop().unwrap();
    assert_eq!(last.method, "POST");
    assert_eq!(last.body, br#"{"a":1}"#);
}

#[tokio::test]
async fn hanging_upstream_gives_504() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let started = std::time::Instant::now();
    let r = no_redirects()
        .get(gw.proxy_url("/local/hang"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["error"], "upstream_timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn dead_upstream_gives_502() {
    let (_held, dead) = refusing_port();
    let gw = Gateway::start(dead);
    let r = no_redirects()
        .get(gw.proxy_url("/local/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["error"], "upstream_error");
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let r = no_redirects()
        .get(gw.proxy_url("/local/redirect"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .contains("169.254.169.254"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn connection_nominated_headers_are_stripped() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let raw = raw_http(
        gw.proxy,
        b"GET /local/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: 5\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(status_of(&raw), 200, "{raw}");
    let s = &up.seen()[0];
    assert_eq!(s.header("x-hop"), None);
    assert_eq!(s.header("keep-alive"), None);
    assert_eq!(s.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn admin_health_endpoints() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let c = no_redirects();
    let r = c
        .get(format!("http://127.0.0.1:{}/healthz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("http://127.0.0.1:{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["apis"], 4);
    let r = c
        .get(format!("http://127.0.0.1:{}/nope", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn credentials_echoed_by_upstream_are_masked() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let r = no_redirects()
        .get(gw.proxy_url("/local/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(SECRET), "credential leaked: {text}");
    assert!(text.contains(&"*".repeat(SECRET.len())), "{text}");
    // The upstream did receive it.
    assert_eq!(up.seen()[0].header("x-upstream-key"), Some(SECRET));
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let c = no_redirects();
    for i in 0..5 {
        let r = c
            .get(gw.proxy_url(&format!("/local/n{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let conns: std::collections::HashSet<usize> = up.seen().iter().map(|s| s.conn).collect();
    assert_eq!(up.count(), 5);
    // Pingora's pool is per worker thread, so allow one connection per proxy thread (2).
    assert!(
        conns.len() <= 2,
        "sequential requests were not pooled: {conns:?}"
    );
}

#[tokio::test]
async fn response_body_streams_through() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let started = std::time::Instant::now();
    let mut r = no_redirects()
        .get(gw.proxy_url("/local/slow-stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"first");
    assert!(
        first_at < std::time::Duration::from_millis(450),
        "the first chunk waited for the whole body ({first_at:?})"
    );
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"second");
}

/// A redirect that lands in an allow-listed API is rewritten to go back through the gateway
/// (absolute or relative); a redirect elsewhere is returned as it is.
#[tokio::test]
async fn redirects_into_an_api_point_back_through_the_gateway() {
    use std::sync::Arc;
    let port = Arc::new(std::sync::atomic::AtomicU16::new(0));
    let p = port.clone();
    let up = Upstream::start_with(Arc::new(move |req: &Seen| {
        let port = p.load(std::sync::atomic::Ordering::SeqCst);
        let to = match req.target.split('?').next().unwrap_or("") {
            "/base/absolute" => format!("http://127.0.0.1:{port}/base/landing?x=1"),
            "/base/relative" => "/base/other".to_string(),
            "/base/sibling" => "elsewhere/x".to_string(),
            "/next" => format!("/next2?page=2&appid={QUERY_SECRET}"),
            _ => return None,
        };
        Some((302, format!("redirect:{to}"), b"moved".to_vec()))
    }));
    port.store(up.port, std::sync::atomic::Ordering::SeqCst);
    let gw = Gateway::start(up.port);
    let location = |path: &'static str| {
        let url = gw.proxy_url(path);
        async move {
            let r = no_redirects().get(url).send().await.unwrap();
            assert_eq!(r.status(), 302);
            r.headers()["location"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(location("/local/absolute").await, "/local/landing?x=1");
    assert_eq!(location("/local/relative").await, "/local/other");
    assert_eq!(location("/local/sibling").await, "/local/elsewhere/x");
    assert!(location("/local/redirect")
        .await
        .contains("169.254.169.254"));
    // The query-credential API: its injected appid never comes back in a rewritten Location.
    assert_eq!(location("/qapi/next").await, "/qapi/next2?page=2");
}

/// Headers that would make the upstream see another method or URL than the one admitted are
/// refused; a caller's claims about its own address are not passed on.
#[tokio::test]
async fn override_headers_are_refused_and_client_address_claims_stripped() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let auth = format!("Bearer {}", jwt(serde_json::json!({})));
    for (h, v) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Original-URL", "/admin/secret"),
        ("X-Rewrite-URL", "/admin/secret"),
    ] {
        let r = no_redirects()
            .get(gw.proxy_url("/local/items/1"))
            .header("Authorization", &auth)
            .header(h, v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{h}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], "override_header", "{h}");
    }
    assert!(up.seen().is_empty());
    let r = no_redirects()
        .get(gw.proxy_url("/local/items/1"))
        .header("Authorization", &auth)
        .header("True-Client-IP", "6.6.6.6")
        .header("X-Client-IP", "6.6.6.6")
        .header("X-Cluster-Client-IP", "6.6.6.6")
        .header("CF-Connecting-IP", "6.6.6.6")
        .header("X-Custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    for h in [
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
    ] {
        assert_eq!(seen[0].header(h), None, "{h}");
    }
    assert_eq!(seen[0].header("x-custom"), Some("kept"));
}

/// A web page of another site cannot use a browser to reach the APIs: on a loopback listener
/// only loopback names are served (DNS rebinding), and a request that carries a browser
/// `Origin` is refused unless `proxy.allowed_origins` names it.
#[tokio::test]
async fn foreign_hosts_and_browser_origins_are_refused() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let auth = format!("Bearer {}", jwt(serde_json::json!({})));
    for (h, v, reason) in [
        ("Host", "evil.example", "host_not_allowed"),
        ("Origin", "http://evil.example", "origin_not_allowed"),
    ] {
        let r = no_redirects()
            .post(gw.proxy_url("/local/items"))
            .header("Authorization", &auth)
            .header(h, v)
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{h}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], reason, "{h}");
    }
    assert!(up.seen().is_empty(), "nothing reached the upstream");
    let r = no_redirects()
        .get(gw.proxy_url("/local/items/1"))
        .header("Authorization", &auth)
        .header("Host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A deny rule cannot be sidestepped by spelling: it folds case and sees through matrix
/// parameters, which many upstream frameworks ignore.
#[tokio::test]
async fn deny_rules_hold_against_case_and_matrix_parameters() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let auth = format!("Bearer {}", jwt(serde_json::json!({})));
    for path in ["/local/Secret/x", "/local/SECRET", "/local/secret;v=1/x"] {
        let r = no_redirects()
            .get(gw.proxy_url(path))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], "path_not_allowed", "{path}");
    }
    assert!(up.seen().is_empty());
}

/// A malformed chunked request body is the caller's error (400, reason `malformed_body`),
/// not the gateway's.
#[tokio::test]
async fn a_malformed_chunked_body_is_a_bad_request() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let token = jwt(serde_json::json!({}));
    let raw = raw_http(
        gw.proxy,
        format!(
            "POST /local/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert!(raw.contains("malformed_body"), "{raw}");
}
