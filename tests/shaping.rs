//! What the model sees of an answer, through the MCP door: large JSON cut so it still parses,
//! secrets redacted wherever they appear, `project` and the caller's `select` applied, and
//! the audit record holding the sizes and redaction counts (never the values).

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

const GITHUB_TOKEN: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";

/// An upstream with the answers these tests need.
fn upstream() -> Upstream {
    Upstream::start_with(Arc::new(|seen: &Seen| {
        let path = seen.target.split('?').next().unwrap_or("");
        let key = seen.header("x-upstream-key").unwrap_or("").to_string();
        let json = |status: u16, v: Value| {
            Some((
                status,
                "application/json".to_string(),
                v.to_string().into_bytes(),
            ))
        };
        match path.rsplit('/').next().unwrap_or("") {
            // About 5 MB of JSON: 20,000 items of 250 bytes.
            "huge" => {
                let items: Vec<Value> = (0..20_000)
                    .map(|i| json!({"id": i, "name": format!("item {i}"), "text": "y".repeat(200)}))
                    .collect();
                json(200, json!({"total_count": 20_000, "items": items}))
            }
            // The injected key echoed in JSON and in a header the model is shown, and a
            // token of the upstream's own.
            "leaky" => Some((
                200,
                "application/json".to_string(),
                json!({"seen_key": key, "nested": {"list": [format!("Bearer {key}")]},
                       "their_token": GITHUB_TOKEN, "user": {"email": "a@b.example", "name": "A"}})
                .to_string()
                .into_bytes(),
            )),
            "denied" => json(401, json!({"message": format!("bad key {key}")})),
            // The key in a header the model is shown (Location).
            "moved" => Some((303, format!("redirect:/elsewhere?key={key}"), Vec::new())),
            "list" => json(
                200,
                json!({"items": [{"id": 7, "name": "seven"}, {"id": 8, "name": "eight"}], "next": null}),
            ),
            _ => None,
        }
    }))
}

fn config(up: u16) -> impl Fn((u16, u16, u16)) -> String {
    move |(m, p, a)| {
        format!(
            r#"{server}
[audit]
enabled = true
sink = "file"
path = "audit.jsonl"

[[apis]]
name = "shaped"
base_url = "http://127.0.0.1:{up}"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]
credentials = {{ header = "X-Upstream-Key", value = "${{AGM_TEST_SECRET}}" }}

[apis.response]
allow_agent_select = true
redact = {{ json_paths = ["$.user.email"] }}

[[apis]]
name = "projected"
base_url = "http://127.0.0.1:{up}"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]

[apis.response]
project = "items[*].name"
max_result_chars = 2000
"#,
            server = server_section((m, p, a), 2)
        )
    }
}

#[tokio::test]
async fn a_5_mb_json_answer_is_cut_to_the_budget_and_still_parses() {
    let up = upstream();
    let mut gw = Gateway::start_generated(config(up.port));
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call("api_gateway", json!({"api": "shaped", "endpoint": "/huge"}))
        .await;
    assert_eq!(r["isError"], false, "{}", &r.to_string()[..500]);
    let sc = &r["structuredContent"];
    // The data is still the document: an object with its count and a prefix of its items.
    assert_eq!(sc["data"]["total_count"], 20_000);
    let kept = sc["data"]["items"].as_array().unwrap().len();
    assert!(kept > 50 && kept < 20_000, "{kept}");
    let data_chars = serde_json::to_string(&sc["data"]).unwrap().chars().count();
    assert!(data_chars <= 40_000, "{data_chars}");
    let meta = &r["_meta"];
    assert_eq!(meta["truncated"], true);
    assert_eq!(sc["truncated"], true);
    let original = meta["original_bytes"].as_u64().unwrap();
    assert!(original > 4_500_000, "{original}");
    assert_eq!(
        meta["returned_chars"].as_u64().unwrap() as usize,
        data_chars
    );
    let dropped: Vec<&str> = meta["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        dropped.iter().any(|d| d.starts_with("/items: kept")),
        "{meta}"
    );
    assert!(dropped.len() <= 3, "no trail of emptied items: {meta}");
    // The text the model reads first says what happened and how to ask for less.
    let first = r["content"][0]["text"].as_str().unwrap();
    assert!(
        first.contains("cut to") && first.contains("select"),
        "{first}"
    );
    // The audit record holds the original size.
    terminate(&mut gw);
    let audit =
        std::fs::read_to_string(gw.config_path.parent().unwrap().join("audit.jsonl")).unwrap();
    let rec: Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(rec["event"]["bytes_out"].as_u64(), Some(original), "{rec}");
    assert_eq!(rec["event"]["shaping"]["truncated"], true, "{rec}");
}

#[tokio::test]
async fn secrets_are_redacted_in_bodies_headers_and_error_bodies() {
    let up = upstream();
    let mut gw = Gateway::start_generated(config(up.port));
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call(
            "api_gateway",
            json!({"api": "shaped", "endpoint": "/leaky"}),
        )
        .await;
    let text = r.to_string();
    assert!(
        !text.contains(SECRET),
        "the injected key reached the model: {text}"
    );
    assert!(!text.contains(GITHUB_TOKEN), "{text}");
    let data = &r["structuredContent"]["data"];
    assert_eq!(data["seen_key"], "[REDACTED:credential]");
    assert_eq!(data["nested"]["list"][0], "Bearer [REDACTED:credential]");
    assert_eq!(data["their_token"], "[REDACTED:github]");
    assert_eq!(data["user"]["email"], "[REDACTED:json_path]");
    assert_eq!(data["user"]["name"], "A", "only the configured path");
    assert_eq!(
        r["_meta"]["redacted"],
        json!({"credential": 2, "github": 1, "json_path": 1})
    );

    // A header the model is shown is redacted too.
    let r = s
        .call(
            "api_gateway",
            json!({"api": "shaped", "endpoint": "/moved"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["status"], 303, "{r}");
    assert_eq!(
        r["structuredContent"]["headers"]["location"], "/elsewhere?key=[REDACTED:credential]",
        "{r}"
    );
    assert!(!r.to_string().contains(SECRET));

    // An upstream error body is shaped the same way.
    let r = s
        .call(
            "api_gateway",
            json!({"api": "shaped", "endpoint": "/denied"}),
        )
        .await;
    assert_eq!(r["isError"], true);
    assert_eq!(r["structuredContent"]["status"], 401);
    let text = r.to_string();
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("bad key [REDACTED:credential]"), "{text}");

    terminate(&mut gw);
    let audit =
        std::fs::read_to_string(gw.config_path.parent().unwrap().join("audit.jsonl")).unwrap();
    assert!(!audit.contains(SECRET) && !audit.contains(GITHUB_TOKEN));
    assert!(
        audit.contains("\"github\":1"),
        "counts are audited: {audit}"
    );
}

#[tokio::test]
async fn select_and_project_narrow_the_answer() {
    let up = upstream();
    let gw = Gateway::start_generated(config(up.port));
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    // The tool offers select, naming the APIs that take it, and states its result cap.
    let tools = s.request("tools/list", json!({})).await;
    let call = &tools["result"]["tools"][0];
    assert_eq!(call["name"], "api_gateway");
    let select = call["inputSchema"]["properties"]["select"]["description"]
        .as_str()
        .unwrap();
    assert!(
        select.contains("shaped") && !select.contains("projected"),
        "{select}"
    );
    assert!(
        call["_meta"]["anthropic/maxResultSizeChars"]
            .as_u64()
            .unwrap()
            >= 40_000
    );
    let r = s
        .call(
            "api_gateway",
            json!({"api": "shaped", "endpoint": "/list", "select": "items[0].id"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["data"], 7, "{r}");
    // A malformed select is the caller's to fix, before the upstream is called.
    let before = up.count();
    let r = s
        .call(
            "api_gateway",
            json!({"api": "shaped", "endpoint": "/list", "select": "items[0"}),
        )
        .await;
    assert_eq!(r["isError"], true);
    assert_eq!(r["structuredContent"]["reason"], "invalid_select", "{r}");
    assert_eq!(r["structuredContent"]["pointer"], "/select");
    assert_eq!(up.count(), before);
    // An API that does not allow select refuses it.
    let r = s
        .call(
            "api_gateway",
            json!({"api": "projected", "endpoint": "/list", "select": "items"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["reason"], "invalid_select", "{r}");
    // The API's own projection applies to every answer.
    let r = s
        .call(
            "api_gateway",
            json!({"api": "projected", "endpoint": "/list"}),
        )
        .await;
    assert_eq!(
        r["structuredContent"]["data"],
        json!(["seven", "eight"]),
        "{r}"
    );
}

#[test]
fn a_bad_projection_is_a_config_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[apis]]\nname = \"a\"\nbase_url = \"https://a.example\"\nmethods = [\"GET\"]\npaths = [\"/**\"]\n\
         [apis.response]\nproject = \"items[\"\nredact = { patterns = [\"jwt\", \"nope\"], json_paths = [\"user.email\"] }\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("apis[0].response.project"), "{text}");
    assert!(
        text.contains("apis[0].response.redact.patterns[1]"),
        "{text}"
    );
    assert!(
        text.contains("apis[0].response.redact.json_paths[0]"),
        "{text}"
    );
}

/// The proxy door streams bodies through as they are, but not past an API's
/// `response.max_upstream_bytes`: a declared length over it is a 502 problem before anything
/// is sent, and a chunked body that outgrows it is broken off, never passed on cut short.
#[tokio::test]
async fn the_proxy_door_streams_under_the_cap_and_refuses_over_it() {
    // 30 MB with a Content-Length, and 2 MB chunked, from a raw upstream.
    let raw = RawUpstream::start(|head: &str| {
        let block = vec![b'z'; 1 << 20];
        let mut out = Vec::new();
        if head.contains("/chunked") {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
            for _ in 0..2 {
                out.extend_from_slice(format!("{:x}\r\n", block.len()).as_bytes());
                out.extend_from_slice(&block);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", 30 * block.len()).as_bytes());
            for _ in 0..30 {
                out.extend_from_slice(&block);
            }
        }
        vec![out]
    });
    let port = raw.port;
    let gw = Gateway::start_generated(move |(m, p, a)| {
        format!(
            "{}{}[apis.response]\nmax_upstream_bytes = 40000000\n\n{}[apis.response]\nmax_upstream_bytes = 1048576\n",
            server_section((m, p, a), 2),
            loopback_get_api("roomy", port, ""),
            loopback_get_api("tight", port, ""),
        )
    });
    let client = reqwest::Client::new();
    let r = client
        .get(gw.proxy_url("/roomy/file"))
        .header("Host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 30 << 20, "streamed through whole");
    assert!(body.iter().all(|b| *b == b'z'));

    let r = client
        .get(gw.proxy_url("/tight/file"))
        .header("Host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["reason"], "upstream_response_too_large",
        "{problem}"
    );

    let r = client
        .get(gw.proxy_url("/tight/chunked"))
        .header("Host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the head had gone out before the body outgrew the cap"
    );
    let read = r.bytes().await;
    assert!(
        read.is_err() || read.as_ref().unwrap().len() <= 1 << 20,
        "a body over the cap is broken off, not delivered whole: {:?}",
        read.map(|b| b.len())
    );
}

/// Binary answers: a small image comes inline as image content; a 20 MB PDF becomes a
/// `resource_link` that only the caller it was made for can read, until it expires; an API
/// set to `binary = "reject"` refuses them.
#[tokio::test]
async fn binary_answers_are_images_links_or_refusals() {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR-not-really-an-image";
    let up = Upstream::start_with(Arc::new(|seen: &Seen| {
        match seen.target.rsplit('/').next() {
            Some("doc.pdf") => Some((200, "application/pdf".to_string(), vec![0xA5; 20 << 20])),
            Some("pic.png") => Some((200, "image/png".to_string(), PNG.to_vec())),
            _ => None,
        }
    }));
    let gw = Gateway::start_generated(move |(m, p, a)| {
        format!(
            "{}{}[mcp]\nresource_ttl = \"2s\"\n\n{}[apis.response]\nmax_upstream_bytes = 33554432\n\n{}[apis.response]\nbinary = \"reject\"\n",
            listen_section((m, p, a), 2),
            auth_section(true),
            loopback_get_api("files", up.port, ""),
            loopback_get_api("textonly", up.port, ""),
        )
    });
    let alice = format!("Bearer {}", jwt(json!({"sub": "alice"})));
    let bob = format!("Bearer {}", jwt(json!({"sub": "bob"})));
    let mut a = McpSession::connect_with(&gw.mcp_url(), &[("Authorization", &alice)]).await;
    let mut b = McpSession::connect_with(&gw.mcp_url(), &[("Authorization", &bob)]).await;

    let r = a
        .call(
            "api_gateway",
            json!({"api": "files", "endpoint": "/pic.png"}),
        )
        .await;
    let image = r["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "image")
        .unwrap();
    assert_eq!(image["mimeType"], "image/png");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(image["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, PNG);
    assert_eq!(r["structuredContent"]["data"]["binary"], true);

    let r = a
        .call(
            "api_gateway",
            json!({"api": "files", "endpoint": "/doc.pdf"}),
        )
        .await;
    assert_eq!(
        r["isError"],
        false,
        "{}",
        &r.to_string()[..400.min(r.to_string().len())]
    );
    let link = r["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "resource_link")
        .unwrap();
    let uri = link["uri"].as_str().unwrap().to_string();
    assert_eq!(link["mimeType"], "application/pdf");
    assert_eq!(link["size"], 20 << 20);
    assert_eq!(r["structuredContent"]["data"]["resource"], uri.as_str());
    assert!(
        r.to_string().len() < 10_000,
        "the PDF itself is not in the result"
    );

    let read = a.request("resources/read", json!({"uri": uri})).await;
    let blob = read["result"]["contents"][0]["blob"].as_str().unwrap();
    let pdf = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .unwrap();
    assert_eq!(pdf.len(), 20 << 20);
    assert!(pdf.iter().all(|x| *x == 0xA5));
    let other = b.request("resources/read", json!({"uri": uri})).await;
    assert_eq!(
        other["error"]["code"], -32002,
        "another caller cannot read it: {other}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let late = a.request("resources/read", json!({"uri": uri})).await;
    assert_eq!(
        late["error"]["code"], -32002,
        "gone after mcp.resource_ttl: {late}"
    );

    let r = a
        .call(
            "api_gateway",
            json!({"api": "textonly", "endpoint": "/pic.png"}),
        )
        .await;
    assert_eq!(r["isError"], true);
    assert_eq!(
        r["structuredContent"]["error"], "unsupported_media_type",
        "{r}"
    );
}

/// Every shape a result can take validates against the outputSchema its tool declares
/// (checked with a JSON Schema validator, the `jsonschema` package of the test tools): a
/// JSON answer, a cut one, text, a binary link, an upstream error status, refusals at
/// several stages, invalid arguments and invalid selects, and list_apis.
#[tokio::test]
async fn every_result_shape_validates_against_the_declared_output_schema() {
    let up = upstream();
    let gw = Gateway::start_generated(config(up.port));
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let tools = s.request("tools/list", json!({})).await;
    let schema_of = |name: &str| {
        tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["outputSchema"]
            .clone()
    };
    let calls = [
        ("json", json!({"api": "shaped", "endpoint": "/list"})),
        ("cut", json!({"api": "shaped", "endpoint": "/huge"})),
        ("redacted", json!({"api": "shaped", "endpoint": "/leaky"})),
        ("text", json!({"api": "shaped", "endpoint": "/plain"})),
        (
            "upstream 401",
            json!({"api": "shaped", "endpoint": "/denied"}),
        ),
        (
            "selected",
            json!({"api": "shaped", "endpoint": "/list", "select": "items[*].id"}),
        ),
        (
            "bad select",
            json!({"api": "shaped", "endpoint": "/list", "select": "["}),
        ),
        (
            "projected",
            json!({"api": "projected", "endpoint": "/list"}),
        ),
        ("unknown api", json!({"api": "nope", "endpoint": "/"})),
        (
            "bad endpoint",
            json!({"api": "shaped", "endpoint": "/../x"}),
        ),
        (
            "bad method",
            json!({"api": "shaped", "endpoint": "/x", "method": "DELETE"}),
        ),
        ("missing argument", json!({"api": "shaped"})),
        (
            "unknown argument",
            json!({"api": "shaped", "endpoint": "/", "x": 1}),
        ),
    ];
    let mut instances = Vec::new();
    for (name, args) in calls {
        let r = s.call("api_gateway", args).await;
        assert!(r["structuredContent"].is_object(), "{name}: {r}");
        instances.push(json!({"name": name, "value": r["structuredContent"]}));
    }
    let validate = validate_schema;
    let errors = validate(schema_of("api_gateway"), instances);
    assert!(errors.is_empty(), "{errors:#?}");
    let list = s.call("list_apis", json!({})).await;
    let errors = validate(
        schema_of("list_apis"),
        vec![json!({"name": "list_apis", "value": list["structuredContent"]})],
    );
    assert!(errors.is_empty(), "{errors:#?}");
    // The validator does catch a shape the schema does not declare.
    let errors = validate(
        schema_of("api_gateway"),
        vec![json!({"name": "stray", "value": {"status": 200, "surprise": 1}})],
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
}

/// A raw upstream answering gzip: `/gz` a JSON echo of the credential, `/bomb` 10 MB of
/// zeros in about 10 KB.
fn gzip_upstream() -> RawUpstream {
    use std::io::Write;
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let echo = gz(json!({"seen": SECRET, "token": GITHUB_TOKEN})
        .to_string()
        .as_bytes());
    let bomb = gz(&vec![0u8; 10 << 20]);
    RawUpstream::start(move |head: &str| {
        let body = if head.contains("/bomb") { &bomb } else { &echo };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        vec![out]
    })
}

/// A gzip answer is decompressed on the MCP door, so it is masked and shaped like any other
/// (even for an API whose credential must be masked); one that expands more than 100 times
/// is refused as a bomb.
#[tokio::test]
async fn compressed_answers_are_decompressed_with_a_ratio_guard() {
    let up = gzip_upstream();
    let port = up.port;
    let gw = Gateway::start_generated(move |(m, p, a)| {
        format!(
            "{}{}",
            server_section((m, p, a), 2),
            loopback_get_api(
                "zipped",
                port,
                "credentials = { header = \"X-Upstream-Key\", value = \"${AGM_TEST_SECRET}\" }"
            )
        )
    });
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call("api_gateway", json!({"api": "zipped", "endpoint": "/gz"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let data = &r["structuredContent"]["data"];
    assert_eq!(data["seen"], "[REDACTED:credential]", "{r}");
    assert_eq!(data["token"], "[REDACTED:github]", "{r}");
    let r = s
        .call("api_gateway", json!({"api": "zipped", "endpoint": "/bomb"}))
        .await;
    assert_eq!(r["isError"], true);
    assert_eq!(
        r["structuredContent"]["reason"], "upstream_response_too_large",
        "{r}"
    );
}

/// An API may opt in to redaction on the proxy door: the body is then held whole, redacted
/// like an MCP answer, and sent chunked; without the opt-in the proxy door only masks the
/// credential, at its length.
#[tokio::test]
async fn the_proxy_door_redacts_when_the_api_opts_in() {
    let up = upstream();
    let gw = Gateway::start_generated(move |(m, p, a)| {
        let key = "credentials = { header = \"X-Upstream-Key\", value = \"${AGM_TEST_SECRET}\" }";
        format!(
            "{}{}[apis.response]\nredact = {{ proxy_door = true, json_paths = [\"$.user.email\"] }}\n\n{}",
            server_section((m, p, a), 2),
            loopback_get_api("redacting", up.port, key),
            loopback_get_api("streaming", up.port, key),
        )
    });
    let c = reqwest::Client::new();
    let r = c
        .get(gw.proxy_url("/redacting/leaky"))
        .header("Host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "its length changed: sent chunked"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["seen_key"], "[REDACTED:credential]");
    assert_eq!(v["their_token"], "[REDACTED:github]");
    assert_eq!(v["user"]["email"], "[REDACTED:json_path]");
    let r = c
        .get(gw.proxy_url("/streaming/leaky"))
        .header("Host", "localhost")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(SECRET) && text.contains(&"*".repeat(SECRET.len())),
        "{text}"
    );
    assert!(
        text.contains(GITHUB_TOKEN),
        "without the opt-in only the credential is masked"
    );
}
