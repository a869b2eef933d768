//! The MCP door over Streamable HTTP, driven with raw JSON-RPC against a real upstream.

mod common;
use common::*;
use serde_json::{json, Value};

fn structured(result: &Value) -> &Value {
    &result["structuredContent"]
}

#[tokio::test]
async fn tools_list_shows_configured_apis() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let list = s.request("tools/list", json!({})).await;
    let tools = list["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["api_gateway", "list_apis"]);
    let api_enum = &tools[0]["inputSchema"]["properties"]["api"]["enum"];
    assert_eq!(api_enum, &json!(["local", "qapi", "readonly", "guarded"]));
    assert_eq!(tools[0]["annotations"]["openWorldHint"], true);
    assert_eq!(tools[0]["annotations"]["readOnlyHint"], false);

    let apis = s.call("list_apis", json!({})).await;
    let catalogue = &structured(&apis)["apis"];
    assert_eq!(catalogue[0]["name"], "local");
    assert_eq!(catalogue[0]["description"], "The test upstream");
    assert_eq!(catalogue[0]["methods"], json!(["GET", "POST"]));
    assert_eq!(catalogue[0]["deny_paths"], json!(["/secret/**"]));
}

#[tokio::test]
async fn allowed_call_returns_structured_content_and_injects_credential() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call(
            "api_gateway",
            json!({"api": "local", "endpoint": "/items?sort=asc", "method": "POST",
                   "query": {"page": 2, "q": "a b&c"}, "body": {"name": "x"},
                   "headers": {"X-Trace": "t1"}}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let sc = structured(&r);
    assert_eq!(sc["status"], 200);
    assert_eq!(sc["truncated"], false);
    assert_eq!(sc["data"]["ok"], true);
    assert_eq!(sc["headers"]["content-type"], "application/json");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/base/items?sort=asc&page=2&q=a%20b%26c");
    assert_eq!(seen[0].header("x-upstream-key"), Some(SECRET));
    assert_eq!(seen[0].header("x-trace"), Some("t1"));
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(seen[0].body, br#"{"name":"x"}"#);

    // The base URL is accepted in place of the name.
    let r = s
        .call(
            "api_gateway",
            json!({"api": format!("http://127.0.0.1:{}", up.port), "endpoint": "/w"}),
        )
        .await;
    assert_eq!(structured(&r)["status"], 200, "{r}");
    assert!(up.seen()[1]
        .target
        .contains(&format!("appid={QUERY_SECRET}")));
}

#[tokio::test]
async fn credentials_echoed_by_upstream_are_redacted() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/echo"}))
        .await;
    let text = r.to_string();
    assert_eq!(structured(&r)["status"], 200);
    assert!(
        !text.contains(SECRET),
        "credential leaked to the model: {text}"
    );
    assert!(text.contains("[REDACTED:credential]"), "{text}");
    assert_eq!(r["_meta"]["redacted"]["credential"], 1, "{r}");
}

#[tokio::test]
async fn denials_are_tool_errors_and_upstream_is_not_contacted() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let cases = [
        (
            json!({"api": "local", "endpoint": "/x", "method": "DELETE"}),
            "forbidden",
        ),
        (
            json!({"api": "readonly", "endpoint": "/x", "method": "POST"}),
            "forbidden",
        ),
        (
            json!({"api": "readonly", "endpoint": "/private"}),
            "forbidden",
        ),
        (
            json!({"api": "local", "endpoint": "/secret/k"}),
            "forbidden",
        ),
        (json!({"api": "nosuch", "endpoint": "/x"}), "unknown_api"),
        (json!({"api": "guarded", "endpoint": "/x"}), "egress_denied"),
        (
            json!({"api": "local", "endpoint": "/x", "headers": {"Authorization": "Bearer t"}}),
            "invalid_header",
        ),
        (
            json!({"api": "local", "endpoint": "/x", "headers": {"X-Upstream-Key": "forged"}}),
            "invalid_header",
        ),
        (
            json!({"api": "local", "endpoint": "/x", "method": "TRACE"}),
            "invalid_arguments",
        ),
        (
            json!({"api": "local", "endpoint": "/x", "method": "POST", "body": "y".repeat(2000)}),
            "payload_too_large",
        ),
        (
            json!({"api": "local", "endpoint": "/x", "method": "POST", "body": "x",
                "headers": {"Content-Type": "text/plain"}}),
            "unsupported_media_type",
        ),
    ];
    for (args, code) in cases {
        let r = s.call("api_gateway", args.clone()).await;
        assert_eq!(r["isError"], true, "{args}: {r}");
        assert_eq!(structured(&r)["error"], code, "{args}: {r}");
        assert!(structured(&r)["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
}

#[tokio::test]
async fn hostile_endpoints_are_invalid_endpoint() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let endpoints = [
        "/../etc/passwd",
        "..",
        "/a/../../b",
        "/%2e%2e/x",
        "/%2E%2e/x",
        "/.%2e/x",
        "/a/%2e%2e%2fb",
        "/a%2fb",
        "//evil.com/x",
        "http://evil.com/x",
        "evil.com:80/x",
        "/a\\..\\b",
        "\\\\evil\\share",
        "/a@evil.com",
        "@evil.com/x",
        "/a\r\nHost: evil",
        "/a%0d%0aX: y",
        "/a%00",
        "/..;/admin",
        "/%252e%252e/x",
        "/\u{FF0E}\u{FF0E}/x",
        "/a#frag",
        // Characters a request line cannot carry: the caller's error, not an internal one.
        "/a b",
        "/items?q=two words",
    ];
    for e in endpoints {
        let r = s
            .call("api_gateway", json!({"api": "local", "endpoint": e}))
            .await;
        assert_eq!(r["isError"], true, "{e:?}: {r}");
        assert_eq!(structured(&r)["error"], "invalid_endpoint", "{e:?}: {r}");
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
}

#[tokio::test]
async fn hanging_upstream_is_upstream_timeout() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/hang"}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(structured(&r)["error"], "upstream_timeout");
}

#[tokio::test]
async fn dead_upstream_is_upstream_error() {
    let (_held, dead) = refusing_port();
    let gw = Gateway::start(dead);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/x"}))
        .await;
    assert_eq!(structured(&r)["error"], "upstream_error", "{r}");
}

#[tokio::test]
async fn oversized_response_is_truncated_and_flagged() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/big"}))
        .await;
    let sc = structured(&r);
    assert_eq!(r["isError"], false);
    assert_eq!(sc["truncated"], true);
    // Read up to [mcp] max_response_bytes (65536 here), then cut to max_result_chars.
    let data = sc["data"].as_str().unwrap();
    assert!(
        data.len() <= 40_000 && data.len() > 39_000,
        "{}",
        data.len()
    );
    assert!(data.ends_with("chars]"), "the cut is marked");
    assert_eq!(r["_meta"]["truncated"], true);
    assert_eq!(r["_meta"]["original_bytes"], 300_000, "from Content-Length");
    assert!(
        r["content"][0]["text"].as_str().unwrap().contains("cut to"),
        "{}",
        r["content"][0]
    );
    // The connection was abandoned, not reused mid-body: the next call still works.
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/after"}))
        .await;
    assert_eq!(structured(&r)["data"]["target"], "/base/after");
}

#[tokio::test]
async fn redirect_is_returned_not_followed() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call(
            "api_gateway",
            json!({"api": "local", "endpoint": "/redirect"}),
        )
        .await;
    let sc = structured(&r);
    assert_eq!(sc["status"], 302);
    assert!(sc["headers"]["location"]
        .as_str()
        .unwrap()
        .contains("169.254.169.254"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn argument_errors_are_tool_errors_with_a_pointer_and_unknown_tools_protocol_errors() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .request("tools/call", json!({"name": "nope", "arguments": {}}))
        .await;
    assert_eq!(
        r["error"]["code"], -32602,
        "an unknown tool is a protocol error: {r}"
    );
    // Input validation failures are tool execution errors the model can read and fix.
    for (args, pointer, expected) in [
        (json!({}), "/api", "list_apis"),
        (json!({"api": "local"}), "/endpoint", "relative to the API"),
        (
            json!({"api": "local", "endpoint": "/", "bogus": 1}),
            "/bogus",
            "only api",
        ),
        (
            json!({"api": "local", "endpoint": 7}),
            "/endpoint",
            "a string",
        ),
        (
            json!({"api": "local", "endpoint": "/", "query": []}),
            "/query",
            "a map",
        ),
    ] {
        let r = s.call("api_gateway", args.clone()).await;
        assert_eq!(r["isError"], true, "{args}: {r}");
        let sc = structured(&r);
        assert_eq!(sc["reason"], "invalid_arguments", "{args}: {r}");
        assert_eq!(sc["pointer"], pointer, "{args}: {r}");
        assert!(
            sc["expected"].as_str().unwrap().contains(expected),
            "{args}: {r}"
        );
        // The first text says what to do, in a sentence.
        let advice = r["content"][0]["text"].as_str().unwrap();
        assert!(
            advice.contains(pointer) && advice.contains("Next:"),
            "{advice}"
        );
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn an_upstream_error_status_is_a_tool_error_with_retryable() {
    let up = Upstream::start_with(std::sync::Arc::new(|seen: &Seen| {
        let status = seen.target.rsplit('/').next()?.parse::<u16>().ok()?;
        Some((
            status,
            "application/json".to_string(),
            format!("{{\"code\":{status}}}").into_bytes(),
        ))
    }));
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    for (status, retryable) in [(404, false), (422, false), (429, true), (503, true)] {
        let r = s
            .call(
                "api_gateway",
                json!({"api": "local", "endpoint": format!("/status/{status}")}),
            )
            .await;
        assert_eq!(r["isError"], true, "{status}: {r}");
        let sc = structured(&r);
        assert_eq!(sc["status"], status, "{r}");
        assert_eq!(sc["retryable"], retryable, "{r}");
        assert_eq!(sc["reason"], "upstream_status", "{r}");
        // The upstream's own explanation is there for the model to read.
        assert_eq!(sc["data"]["code"], status, "{r}");
        let advice = r["content"][0]["text"].as_str().unwrap();
        assert!(advice.contains(&status.to_string()), "{advice}");
    }
    // A refusal by the gateway names its reason and the stage that refused.
    let r = s
        .call(
            "api_gateway",
            json!({"api": "local", "endpoint": "/secret/x"}),
        )
        .await;
    let sc = structured(&r);
    assert_eq!(
        (sc["reason"].as_str(), sc["stage"].as_str()),
        (Some("path_not_allowed"), Some("target")),
        "{r}"
    );
    let r = s
        .call("api_gateway", json!({"api": "nope", "endpoint": "/"}))
        .await;
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("list_apis"),
        "{r}"
    );
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/ok"}))
        .await;
    assert_eq!(r["isError"], false, "a 2xx is a result: {r}");
}

#[tokio::test]
async fn host_and_origin_are_validated_and_bad_json_rejected() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#;
    let req = |extra: &str, body: &[u8]| {
        let mut r = format!(
            "POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let ok = raw_http(gw.mcp, &req("Host: 127.0.0.1\r\n", init));
    assert_eq!(status_of(&ok), 200, "{ok}");
    let rebinding = raw_http(gw.mcp, &req("Host: evil.example\r\n", init));
    assert_eq!(status_of(&rebinding), 403, "{rebinding}");
    let origin = raw_http(
        gw.mcp,
        &req("Host: 127.0.0.1\r\nOrigin: http://evil.example\r\n", init),
    );
    assert_eq!(status_of(&origin), 403, "{origin}");
    assert!(
        origin.contains("\"reason\":\"origin_not_allowed\""),
        "{origin}"
    );
    assert!(origin.contains("mcp.allowed_origins"), "{origin}");
    assert!(
        rebinding.contains("\"reason\":\"host_not_allowed\""),
        "{rebinding}"
    );
    // A browser-based client on this machine (the Inspector's web UI, an IDE webview) is
    // served from a loopback origin on any port: accepted on a loopback listener. `null`,
    // look-alikes and foreign origins are not.
    for accepted in [
        "http://localhost:3000",
        "http://127.0.0.1:6274",
        "https://localhost",
        "http://[::1]:8080",
    ] {
        let r = raw_http(
            gw.mcp,
            &req(&format!("Host: 127.0.0.1\r\nOrigin: {accepted}\r\n"), init),
        );
        assert_eq!(status_of(&r), 200, "{accepted}: {r}");
    }
    for refused in [
        "null",
        "https://evil.example",
        "http://localhost.evil.example:3000",
        "http://127.0.0.1.nip.io",
        "file://localhost",
        "http://localhost:3000@evil.example",
    ] {
        let r = raw_http(
            gw.mcp,
            &req(&format!("Host: 127.0.0.1\r\nOrigin: {refused}\r\n"), init),
        );
        assert_eq!(status_of(&r), 403, "{refused}: {r}");
        assert!(r.contains("origin_not_allowed"), "{refused}: {r}");
    }
    // What is not one JSON-RPC 2.0 message gets its JSON-RPC error, with HTTP 400.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#;
    let old = br#"{"jsonrpc":"1.0","id":7,"method":"tools/list"}"#;
    for (body, code, id) in [
        (&b"{not json"[..], -32700, Value::Null),
        (deep.as_bytes(), -32700, Value::Null),
        (&batch[..], -32600, Value::Null),
        (&old[..], -32600, json!(7)),
    ] {
        let bad = raw_http(gw.mcp, &req("Host: 127.0.0.1\r\n", body));
        assert_eq!(status_of(&bad), 400, "{bad}");
        let reply: Value = serde_json::from_str(bad.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], code, "{bad}");
        assert_eq!(reply["id"], id, "{bad}");
    }
    // A body over mcp.max_request_bytes (4 MiB) is refused like every other refusal.
    let over = vec![b' '; (4 << 20) + 100];
    let big = raw_http(gw.mcp, &req("Host: 127.0.0.1\r\n", &over));
    assert_eq!(status_of(&big), 413, "{big}");
    assert!(big.contains("application/problem+json"), "{big}");
    assert!(big.contains("payload_too_large"), "{big}");
    let other = raw_http(
        gw.mcp,
        b"GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&other), 404);
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    for i in 0..5 {
        let r = s
            .call(
                "api_gateway",
                json!({"api": "local", "endpoint": format!("/n{i}")}),
            )
            .await;
        assert_eq!(structured(&r)["status"], 200);
    }
    let conns: std::collections::HashSet<usize> = up.seen().iter().map(|s| s.conn).collect();
    assert_eq!(up.count(), 5);
    assert_eq!(
        conns.len(),
        1,
        "five sequential calls should share one pooled connection: {conns:?}"
    );
}

/// A stateless (2026-07-28) client keeps its connection: a one-message reply is a single
/// `application/json` body with its Content-Length (`[mcp] json_response`), so its end is
/// marked and the next call goes over the same TCP connection.
#[test]
fn stateless_calls_share_one_kept_alive_connection() {
    use std::io::{Read, Write};
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.mcp)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    for i in 1..=3 {
        let body = json!({
            "jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": "api_gateway",
                       "arguments": {"api": "local", "endpoint": format!("/kept/{i}")},
                       "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                 "io.modelcontextprotocol/clientCapabilities": {},
                                 "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}}
        })
        .to_string();
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n\
             Mcp-Method: tools/call\r\nMcp-Name: api_gateway\r\nContent-Length: {}\r\n\r\n",
            gw.mcp,
            body.len()
        );
        conn.write_all(format!("{head}{body}").as_bytes()).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        // Read the head, then exactly Content-Length bytes of body.
        let complete = |out: &[u8]| {
            let text = String::from_utf8_lossy(out);
            let (head, body) = text.split_once("\r\n\r\n")?;
            let len: usize = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().ok())
            })??;
            Some(body.len() >= len)
        };
        while complete(&out) != Some(true) {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "call {i}: the connection was closed");
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"), "{text}");
        assert!(!lower.contains("transfer-encoding"), "{text}");
        assert!(
            text.contains(r#"\"isError\":false"#) || text.contains(r#""isError":false"#),
            "{text}"
        );
    }
    // All three reached the upstream, on behalf of one client connection.
    assert_eq!(
        up.seen()
            .iter()
            .filter(|r| r.target.starts_with("/base/kept/"))
            .count(),
        3
    );
}

/// Who calls is decided from the request head: a caller without credentials is refused
/// before its body is read, so a stranger's large body costs no memory (the gateway used to
/// read it whole first).
#[test]
fn an_unauthenticated_request_is_refused_before_its_body_is_read() {
    use std::io::{Read, Write};
    let up = Upstream::start();
    let gw = Gateway::start_generated(|ports| {
        format!(
            "{}{}[[apis]]\nname = \"local\"\nbase_url = \"http://127.0.0.1:{}\"\n\
             allow_private_network = true\npaths = [\"/**\"]\n",
            listen_section(ports, 1),
            auth_section(true),
            up.port
        )
    });
    let addr = gw
        .mcp_url()
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // A 3 MB body is announced (under the 4 MiB cap) and never sent.
    s.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Accept: application/json, text/event-stream\r\nContent-Length: 3000000\r\n\r\n{\"jsonrpc\"",
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).expect("an answer without the body");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains("missing_credentials"), "{text}");
}

/// Legacy sessions are bounded per caller (`mcp.max_sessions_per_caller`): one more is refused
/// with 429 `session_limit`, and closing one makes room again.
#[tokio::test]
async fn legacy_sessions_are_capped_per_caller() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|ports| {
        format!(
            "{}[mcp]\nmax_sessions_per_caller = 2\n[[apis]]\nname = \"local\"\n\
             base_url = \"http://127.0.0.1:{}\"\nallow_private_network = true\npaths = [\"/**\"]\n",
            server_section(ports, 1),
            up.port
        )
    });
    let c = reqwest::Client::new();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let open = || {
        c.post(gw.mcp_url())
            .header("accept", "application/json, text/event-stream")
            .json(&init)
            .send()
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = open().await.unwrap();
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["mcp-session-id"].to_str().unwrap().to_string());
    }
    let r = open().await.unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "session_limit", "{body}");
    let closed = c
        .delete(gw.mcp_url())
        .header("mcp-session-id", &ids[0])
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    assert_eq!(open().await.unwrap().status(), 200, "closing one made room");
}

/// A 2026-07-28 `tools/list` carries cache hints: public while every caller sees the same
/// list, private once roles (or a key's allowed_apis) can filter it.
#[test]
fn tools_list_cache_hints_are_private_when_the_list_is_per_caller() {
    let list = |port: u16, extra: &str| {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {},
                      "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}}})
        .to_string();
        let raw = raw_http(
            port,
            format!(
                "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                 Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n\
                 Mcp-Method: tools/list\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let reply: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        reply["result"].clone()
    };
    let up = Upstream::start();
    let open = Gateway::start(up.port);
    let r = list(open.mcp, "");
    assert_eq!(
        (r["cacheScope"].as_str(), r["ttlMs"].as_u64()),
        (Some("public"), Some(60_000)),
        "{r}"
    );
    let token = jwt(json!({"sub": "reader", "roles": ["reader"]}));
    let rbac = Gateway::start_generated(|(m, p, a)| {
        format!(
            "{}{}[[rbac.roles]]\nname = \"reader\"\nallow = [{{ api = \"local\", methods = [\"GET\"] }}]\n\n{}",
            listen_section((m, p, a), 2),
            auth_section(true),
            loopback_get_api("local", up.port, "")
        )
    });
    let r = list(rbac.mcp, &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(r["cacheScope"], "private", "{r}");
}
