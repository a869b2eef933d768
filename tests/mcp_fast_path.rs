//! The MCP door's fast path for stateless `tools/call` answers exactly as rmcp's transport
//! does: the same requests go to a gateway with `[mcp] stateless_fast_path` on and to one
//! with it off, and the raw HTTP answers (status line, headers, body) must match byte for
//! byte, apart from the `Date` header and each gateway's own port. The fast path must also
//! really be taken for the requests of its shape, and only for them
//! (`api_mcp_fast_path_requests_total`).

mod common;

use common::*;
use serde_json::{json, Value};

/// One request of the corpus: what it is, its `Mcp-Name` header (`None`: no header), extra
/// header lines, its body (a JSON string is sent as the raw text it holds), and whether the
/// fast path takes it.
struct Case {
    what: &'static str,
    name: Option<&'static str>,
    extra: &'static str,
    body: Value,
    fast: bool,
}

fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
           "io.modelcontextprotocol/clientCapabilities": {},
           "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}})
}

fn call(id: Value, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": arguments, "_meta": meta()}})
}

fn corpus() -> Vec<Case> {
    let gw = |endpoint: &str| json!({"api": "local", "endpoint": endpoint});
    let mut no_info = call(json!(3), "api_gateway", gw("/a"));
    no_info["params"]["_meta"]
        .as_object_mut()
        .unwrap()
        .remove("io.modelcontextprotocol/clientInfo");
    let mut no_caps = call(json!(3), "api_gateway", gw("/a"));
    no_caps["params"]["_meta"]
        .as_object_mut()
        .unwrap()
        .remove("io.modelcontextprotocol/clientCapabilities");
    let mut old_meta = call(json!(4), "api_gateway", gw("/a"));
    old_meta["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2025-11-25");
    let mut no_meta = call(json!(5), "api_gateway", gw("/a"));
    no_meta["params"].as_object_mut().unwrap().remove("_meta");
    let mut bad_state = call(json!(6), "api_gateway", gw("/a"));
    bad_state["params"]["requestState"] = json!("not-a-sealed-state");
    let mut tasks = call(json!(7), "api_gateway", gw("/a"));
    tasks["params"]["task"] = json!({"ttl": 1000});
    let mut progress = call(json!(8), "api_gateway", gw("/a"));
    progress["params"]["_meta"]["progressToken"] = json!(9);
    vec![
        Case {
            what: "a successful call",
            name: Some("api_gateway"),
            extra: "",
            body: call(json!(1), "api_gateway", gw("/data?x=1")),
            fast: true,
        },
        Case {
            what: "a string id, list_apis",
            name: Some("list_apis"),
            extra: "",
            body: call(json!("s-1"), "list_apis", json!({})),
            fast: true,
        },
        Case {
            what: "a denied path (tool error)",
            name: Some("api_gateway"),
            extra: "",
            body: call(json!(2), "api_gateway", gw("/secret/x")),
            fast: true,
        },
        Case {
            what: "the SSRF guard (tool error)",
            name: Some("api_gateway"),
            extra: "",
            body: call(
                json!(2),
                "api_gateway",
                json!({"api": "guarded", "endpoint": "/"}),
            ),
            fast: true,
        },
        Case {
            what: "arguments that are not valid (tool error)",
            name: Some("api_gateway"),
            extra: "",
            body: call(
                json!(2),
                "api_gateway",
                json!({"api": "local", "method": "BREW"}),
            ),
            fast: true,
        },
        Case {
            what: "an unknown tool (protocol error)",
            name: Some("nope"),
            extra: "",
            body: call(json!(2), "nope", json!({})),
            fast: true,
        },
        Case {
            what: "a request state that is not ours",
            name: Some("api_gateway"),
            extra: "",
            body: bad_state,
            fast: true,
        },
        Case {
            what: "a task request without the tasks capability",
            name: Some("api_gateway"),
            extra: "",
            body: tasks,
            fast: true,
        },
        Case {
            what: "a large id",
            name: Some("api_gateway"),
            extra: "",
            body: call(json!(9_007_199_254_740_993u64), "api_gateway", gw("/b")),
            fast: true,
        },
        Case {
            what: "Content-Type with a charset, Accept over two lines",
            name: Some("api_gateway"),
            extra: "Content-Type: Application/JSON; charset=utf-8\r\nAccept: text/event-stream\r\n",
            body: call(json!(1), "api_gateway", gw("/c")),
            fast: true,
        },
        Case {
            what: "_meta without clientInfo (2026-07-28 does not require it)",
            name: Some("api_gateway"),
            extra: "",
            body: no_info,
            fast: true,
        },
        // Everything below is rmcp's to answer (or refuse).
        Case {
            what: "a progress token (rmcp would stream progress first)",
            name: Some("api_gateway"),
            extra: "",
            body: progress,
            fast: false,
        },
        Case {
            what: "_meta without clientCapabilities",
            name: Some("api_gateway"),
            extra: "",
            body: no_caps,
            fast: false,
        },
        Case {
            what: "_meta naming another version than the header",
            name: Some("api_gateway"),
            extra: "",
            body: old_meta,
            fast: false,
        },
        Case {
            what: "no _meta",
            name: Some("api_gateway"),
            extra: "",
            body: no_meta,
            fast: false,
        },
        Case {
            what: "Mcp-Name naming another tool",
            name: Some("list_apis"),
            extra: "",
            body: call(json!(1), "api_gateway", gw("/a")),
            fast: false,
        },
        Case {
            what: "no Mcp-Name",
            name: None,
            extra: "",
            body: call(json!(1), "api_gateway", gw("/a")),
            fast: false,
        },
        Case {
            what: "Mcp-Name in Base64",
            name: Some("=?base64?YXBpX2dhdGV3YXk=?="),
            extra: "",
            body: call(json!(1), "api_gateway", gw("/a")),
            fast: false,
        },
        Case {
            what: "Accept with weights",
            name: Some("api_gateway"),
            extra: "Accept: application/json;q=0.9\r\n",
            body: call(json!(1), "api_gateway", gw("/a")),
            fast: false,
        },
        Case {
            what: "an Origin header",
            name: Some("api_gateway"),
            extra: "Origin: http://localhost\r\n",
            body: call(json!(1), "api_gateway", gw("/a")),
            fast: false,
        },
        Case {
            what: "a body that is no JSON-RPC request",
            name: Some("api_gateway"),
            extra: "",
            body: json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "api_gateway"}}),
            fast: false,
        },
        Case {
            what: "members rmcp does not read, and escapes in strings",
            name: Some("api_gateway"),
            extra: "",
            body: {
                let mut b = call(json!(11), "api_gateway", gw("/a"));
                b["x-extra"] = json!({"nested": [1, 2]});
                b["params"]["x-extra"] = json!(true);
                Value::String(b.to_string().replace("\"/a\"", "\"\\u002fa\""))
            },
            fast: true,
        },
        Case {
            what: "a request that also carries a result",
            name: Some("api_gateway"),
            extra: "",
            body: {
                let mut b = call(json!(12), "api_gateway", gw("/a"));
                b["result"] = json!({});
                b
            },
            fast: false,
        },
        Case {
            what: "a request with an error member that is null",
            name: Some("api_gateway"),
            extra: "",
            body: {
                let mut b = call(json!(13), "api_gateway", gw("/a"));
                b["error"] = Value::Null;
                b
            },
            fast: false,
        },
        Case {
            what: "a member sent twice",
            name: Some("api_gateway"),
            extra: "",
            body: Value::String(
                call(json!(14), "api_gateway", gw("/a"))
                    .to_string()
                    .replacen("{", "{\"method\":\"tools/list\",", 1),
            ),
            fast: false,
        },
        Case {
            what: "an id sent twice",
            name: Some("api_gateway"),
            extra: "",
            body: Value::String(
                call(json!(15), "api_gateway", gw("/a"))
                    .to_string()
                    .replacen("{", "{\"id\":16,", 1),
            ),
            fast: false,
        },
        Case {
            what: "a key written with an escape",
            name: Some("api_gateway"),
            extra: "",
            body: Value::String(
                call(json!(17), "api_gateway", gw("/a"))
                    .to_string()
                    .replacen("\"method\"", "\"m\\u0065thod\"", 1),
            ),
            fast: false,
        },
        Case {
            what: "trailing text after the request",
            name: Some("api_gateway"),
            extra: "",
            body: Value::String(format!("{} x", call(json!(18), "api_gateway", gw("/a")))),
            fast: false,
        },
        Case {
            what: "no jsonrpc member",
            name: Some("api_gateway"),
            extra: "",
            body: {
                let mut b = call(json!(19), "api_gateway", gw("/a"));
                b.as_object_mut().unwrap().remove("jsonrpc");
                b
            },
            fast: false,
        },
        Case {
            what: "arguments that are not an object",
            name: Some("api_gateway"),
            extra: "",
            body: json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "api_gateway", "arguments": 5, "_meta": meta()}}),
            fast: false,
        },
    ]
}

/// The raw request for `case` to a gateway's MCP port.
fn request(case: &Case, port: u16) -> Vec<u8> {
    let body = match &case.body {
        Value::String(raw) => raw.clone(),
        v => v.to_string(),
    };
    let name = case
        .name
        .map(|n| format!("Mcp-Name: {n}\r\n"))
        .unwrap_or_default();
    // Extra lines that set Content-Type or Accept replace the default ones.
    let mut head = format!("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    if !case.extra.to_ascii_lowercase().contains("content-type:") {
        head.push_str("Content-Type: application/json\r\n");
    }
    if !case.extra.to_ascii_lowercase().contains("accept:") {
        head.push_str("Accept: application/json, text/event-stream\r\n");
    } else if case.extra.contains("text/event-stream") {
        head.push_str("Accept: application/json\r\n");
    }
    format!(
        "{head}{}MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n{name}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        case.extra,
        body.len()
    )
    .into_bytes()
}

/// A raw answer without its `Date` header, with the gateway's ports written as `PORT`.
fn normalised(raw: &str, gw: &Gateway) -> String {
    let mut text = raw
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    for port in [gw.mcp, gw.proxy, gw.admin] {
        text = text.replace(&port.to_string(), "PORT");
    }
    text
}

/// Sends `case` to a gateway's MCP port and returns the raw answer.
async fn ask(case: &Case, gw: &Gateway) -> String {
    let (port, r) = (gw.mcp, request(case, gw.mcp));
    tokio::task::spawn_blocking(move || raw_http(port, &r))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_fast_path_answers_byte_for_byte_as_rmcp() {
    let up = Upstream::start();
    let with = |on: bool| {
        Gateway::start_generated(move |(mcp, proxy, admin)| {
            test_config(up.port, mcp, proxy, admin)
                .replace("[mcp]\n", &format!("[mcp]\nstateless_fast_path = {on}\n"))
        })
    };
    let fast = with(true);
    let rmcp = with(false);
    let cases = corpus();
    let mut taken = 0.0;
    for case in &cases {
        let before = metric(&fast, "api_mcp_fast_path_requests_total").await;
        let a = ask(case, &fast).await;
        let b = ask(case, &rmcp).await;
        assert!(status_of(&a) > 0, "{}: no answer: {a:?}", case.what);
        assert_eq!(
            normalised(&a, &fast),
            normalised(&b, &rmcp),
            "{}: the fast path and rmcp answered differently",
            case.what
        );
        if case.fast {
            taken += 1.0;
        }
        let after = counter_at(&fast, "api_mcp_fast_path_requests_total", taken).await;
        assert_eq!(
            after - before,
            if case.fast { 1.0 } else { 0.0 },
            "{}: expected the fast path {}",
            case.what,
            if case.fast {
                "to take it"
            } else {
                "to leave it to rmcp"
            }
        );
    }
    // The corpus reaches the upstream and covers both kinds of answer.
    assert!(up.seen().iter().any(|s| s.target.starts_with("/base/data")));
    assert_eq!(
        metric(&rmcp, "api_mcp_fast_path_requests_total").await,
        0.0,
        "with stateless_fast_path = false everything goes through rmcp"
    );
}
