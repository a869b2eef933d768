//! Human approval as a policy outcome, through the front doors: calls held by
//! `[[approvals]]` wait for a person, run once when approved, and are bound to the exact call.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

const HOOK_SECRET: &str = "webhook-signing-secret-3f9a";

/// A gateway whose API `pay` holds POSTs to `/refunds/**` for an approver holding role
/// `finance` (rule `refunds`), and DELETEs for the caller's own confirmation (rule `wipe`).
fn config(up: u16, hook: u16, ports: (u16, u16, u16), extra: &str) -> String {
    format!(
        "{}{}[[apis]]\nname = \"pay\"\nbase_url = \"http://127.0.0.1:{up}\"\nallow_private_network = true\n\
         methods = [\"GET\", \"POST\", \"DELETE\"]\npaths = [\"/**\"]\n\n\
         [[approvals]]\nid = \"refunds\"\napi = \"pay\"\nmethods = [\"POST\"]\npaths = [\"/refunds/**\"]\n\
         mode = \"external\"\napprovers = [\"finance\"]\nsummary = [\"method\", \"endpoint\", \"body\"]\n\
         webhook = {{ url = \"http://127.0.0.1:{hook}/hook\", secret_env = \"HOOK_SECRET\", allow_private_network = true }}\n\
         {extra}\n\
         [[approvals]]\nid = \"wipe\"\napi = \"pay\"\nmethods = [\"DELETE\"]\nmode = \"self\"\n\n\
         [[approvals]]\nid = \"peek\"\napi = \"pay\"\nmethods = [\"GET\"]\npaths = [\"/balance\"]\nmode = \"shadow\"\n",
        listen_section(ports, 2),
        auth_section(true),
    )
}

fn start(up: u16, hook: u16, extra: &str) -> Gateway {
    let extra = extra.to_string();
    Gateway::start_generated_env(
        move |ports| config(up, hook, ports, &extra),
        &[("HOOK_SECRET", HOOK_SECRET)],
    )
}

fn hook_server() -> Upstream {
    Upstream::start_with(Arc::new(|r: &Seen| {
        (r.target == "/hook").then(|| (204, "text/plain".to_string(), Vec::new()))
    }))
}

async fn decide(gw: &Gateway, id: &str, auth: &str, approve: bool) -> (u16, Value) {
    let r = no_redirects()
        .post(format!("http://127.0.0.1:{}/approvals/{id}", gw.admin))
        .header("authorization", auth)
        .json(&json!({"approve": approve, "reason": "checked the ticket"}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A proxy-door request by the suite's API key (principal `key:suite`).
fn by_suite(gw: &Gateway, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    no_redirects()
        .request(method, gw.proxy_url(path))
        .header("host", "localhost")
        .header("x-api-key", API_KEY)
}

async fn refund(gw: &Gateway, body: &str, approval: Option<&str>) -> reqwest::Response {
    let mut req = by_suite(gw, reqwest::Method::POST, "/pay/refunds/r-17")
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(id) = approval {
        req = req.header("approval-id", id);
    }
    req.send().await.unwrap()
}

/// The pending approval requests `auth` may see.
async fn pending(gw: &Gateway, auth: &str) -> Value {
    let url = format!("http://127.0.0.1:{}/approvals?status=pending", gw.admin);
    let r = no_redirects()
        .get(url)
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

/// Waits for the webhook's `n`th delivery.
async fn hooks(hook: &Upstream, n: usize) -> Vec<Seen> {
    for _ in 0..100 {
        let seen: Vec<Seen> = hook
            .seen()
            .into_iter()
            .filter(|s| s.target == "/hook")
            .collect();
        if seen.len() >= n {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the webhook was not called {n} time(s)");
}

/// The proxy door: the first sending answers 202 with `Location` and the approval id, and
/// the webhook is told (signed); the requester cannot approve its own call; an approver
/// approves; the identical request with `Approval-Id` runs once; a second use is 409
/// `approval_consumed`; a changed body 409 `approval_mismatch`.
#[tokio::test]
async fn an_external_approval_runs_the_proxy_call_once() {
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "");
    let body = r#"{"amount": 25, "currency": "EUR"}"#;

    let r = refund(&gw, body, None).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("retry-after"));
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["reason"], "approval_pending", "{p}");
    let id = p["approval_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/approvals/{id}"));
    assert!(up.seen().is_empty());

    // The webhook: the request, signed over timestamp and body.
    let delivered = &hooks(&hook, 1).await[0];
    let ts = delivered.header("x-signature-timestamp").unwrap();
    let mut signed = ts.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(&delivered.body);
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(&signed);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(delivered.header("x-signature"), Some(expected.as_str()));
    let announced: Value = serde_json::from_slice(&delivered.body).unwrap();
    assert_eq!(announced["id"], id.as_str());
    assert_eq!(announced["principal"], "key:suite");
    assert_eq!(announced["summary"]["body"]["amount"], 25);
    assert_eq!(announced["link"], location.as_str());

    // Sending it again before a decision: the same request, still pending.
    let again: Value = refund(&gw, body, None).await.json().await.unwrap();
    assert_eq!(again["approval_id"], id.as_str());

    // The queue shows it; the requester may not decide; an approver may.
    let finance = bearer_with_roles("fiona", &["finance"]);
    let queue: Value = pending(&gw, &finance).await;
    let first = &queue.as_array().unwrap()[0];
    assert_eq!(
        (
            &first["id"],
            &first["principal"],
            &first["api"],
            &first["method"],
            &first["endpoint"],
            &first["status"]
        ),
        (
            &json!(id),
            &json!("key:suite"),
            &json!("pay"),
            &json!("POST"),
            &json!("/refunds/r-17"),
            &json!("pending")
        )
    );
    let own = no_redirects()
        .post(format!("http://127.0.0.1:{}/approvals/{id}", gw.admin))
        .header("x-api-key", API_KEY)
        .json(&json!({"approve": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 403);
    let (status, rec) = decide(&gw, &id, &bearer_with_roles("otto", &["ops"]), true).await;
    assert_eq!(status, 403, "{rec}");
    let (status, rec) = decide(&gw, &id, &finance, true).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["status"], "approved");
    assert_eq!(rec["decided_by"], "jwt:fiona");

    // A changed body does not fit the approval.
    let changed = refund(&gw, r#"{"amount": 2500, "currency": "EUR"}"#, Some(&id)).await;
    assert_eq!(changed.status(), 409);
    let p: Value = changed.json().await.unwrap();
    assert_eq!(p["reason"], "approval_mismatch");
    assert!(up.seen().is_empty());

    let ok = refund(&gw, body, Some(&id)).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(up.count(), 1);
    assert_eq!(up.seen()[0].body, body.as_bytes());
    assert!(up.seen()[0].header("approval-id").is_none());
    let used = refund(&gw, body, Some(&id)).await;
    assert_eq!(used.status(), 409);
    let p: Value = used.json().await.unwrap();
    assert_eq!(p["reason"], "approval_consumed");
    assert_eq!(up.count(), 1);
}

/// An approval not used within its `grant_ttl` is gone (410); a denied request is 403 with
/// the rule's id.
#[tokio::test]
async fn expired_and_denied_approvals_are_refused() {
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "grant_ttl = \"1s\"");
    let finance = bearer_with_roles("fiona", &["finance"]);
    let body = r#"{"amount": 1}"#;
    let p: Value = refund(&gw, body, None).await.json().await.unwrap();
    let id = p["approval_id"].as_str().unwrap().to_string();
    assert_eq!(decide(&gw, &id, &finance, true).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = refund(&gw, body, Some(&id)).await;
    assert_eq!(r.status(), 410);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["reason"], "approval_expired");

    let p: Value = refund(&gw, r#"{"amount": 2}"#, None)
        .await
        .json()
        .await
        .unwrap();
    let id2 = p["approval_id"].as_str().unwrap().to_string();
    assert_ne!(id, id2);
    assert_eq!(decide(&gw, &id2, &finance, false).await.0, 200);
    let r = refund(&gw, r#"{"amount": 2}"#, Some(&id2)).await;
    assert_eq!(r.status(), 403);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["reason"], "approval_denied");
    assert_eq!(p["rule"], "approvals[refunds]");
    assert!(up.seen().is_empty());

    // A body of the same length but other bytes is caught as it streams: 409
    // approval_mismatch, the upstream never gets a whole request, and the approval is spent.
    let p: Value = refund(&gw, r#"{"amount": 25}"#, None)
        .await
        .json()
        .await
        .unwrap();
    let id3 = p["approval_id"].as_str().unwrap().to_string();
    assert_eq!(decide(&gw, &id3, &finance, true).await.0, 200);
    let r = refund(&gw, r#"{"amount": 52}"#, Some(&id3)).await;
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["reason"], "approval_mismatch", "{p}");
    assert!(up.seen().is_empty());
    let r = refund(&gw, r#"{"amount": 25}"#, Some(&id3)).await;
    assert_eq!(r.status(), 409);
}

/// The MCP door without tasks or elicitation: `approval_pending` with the id and when to
/// retry; once approved the identical call runs once, and the same call again is a new
/// request; a call with another body is another request.
#[tokio::test]
async fn an_mcp_call_waits_and_runs_once_approved() {
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "");
    let finance = bearer_with_roles("fiona", &["finance"]);
    let mut mcp = McpSession::connect_with(&gw.mcp_url(), &[("x-api-key", API_KEY)]).await;
    let args =
        json!({"api": "pay", "method": "POST", "endpoint": "/refunds/r-9", "body": {"amount": 7}});
    let res = mcp.call("api_gateway", args.clone()).await;
    assert_eq!(res["isError"], true, "{res}");
    let sc = &res["structuredContent"];
    assert_eq!(sc["reason"], "approval_pending", "{res}");
    assert!(sc["retry_after_s"].as_u64().unwrap() >= 1);
    let id = sc["approval_id"].as_str().unwrap().to_string();
    // Still waiting: the same answer, the same request.
    let res = mcp.call("api_gateway", args.clone()).await;
    assert_eq!(res["structuredContent"]["approval_id"], id.as_str());
    assert_eq!(decide(&gw, &id, &finance, true).await.0, 200);
    let res = mcp.call("api_gateway", args.clone()).await;
    assert_eq!(res["isError"], false, "{res}");
    assert_eq!(up.count(), 1);
    // The approval is used up: the same call is a new request.
    let res = mcp.call("api_gateway", args.clone()).await;
    assert_eq!(res["structuredContent"]["reason"], "approval_pending");
    let id2 = res["structuredContent"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(id2, id);
    // Other arguments: another request.
    // The waiting answer fits the tool's (closed) output schema, as clients check it.
    let schema = output_schema(&mut mcp, "api_gateway").await;
    let errors = validate_schema(
        schema,
        vec![json!({"name": "pending", "value": res["structuredContent"]})],
    );
    assert!(errors.is_empty(), "{errors:#?}");
    let other = json!({"api": "pay", "method": "POST", "endpoint": "/refunds/r-9", "body": {"amount": 700}});
    let res = mcp.call("api_gateway", other).await;
    let id3 = res["structuredContent"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id3 != id2 && id3 != id);
    assert_eq!(up.count(), 1);
}

fn py_approve(gw: &Gateway, mode: &str) -> std::process::Child {
    std::process::Command::new(tools_dir().join("venv/bin/python"))
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/py_approve.py"))
        .args([&gw.mcp_url(), mode])
        .env("MCP_API_KEY", API_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python client")
}

fn client_result(child: std::process::Child) -> Value {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// `self` rules with real clients that can ask their user (the Python SDK): a legacy
/// session is asked with `elicitation/create` during the call, a 2026-07-28 client gets
/// `input_required` and retries; a confirmation runs the call once, a refusal never.
#[test]
fn the_user_confirms_through_a_real_client_in_both_eras() {
    for (mode, hits, declined) in [
        ("legacy-confirm", 1, false),
        ("auto-confirm", 1, false),
        ("auto-decline", 0, true),
    ] {
        let up = Upstream::start();
        let hook = hook_server();
        let gw = start(up.port, hook.port, "");
        let v = client_result(py_approve(&gw, mode));
        assert_eq!(
            v["elicitations"].as_array().unwrap().len(),
            1,
            "{mode}: {v}"
        );
        let message = v["elicitations"][0]["message"].as_str().unwrap();
        assert!(message.contains("DELETE /accounts/7"), "{message}");
        assert_eq!(v["isError"], declined, "{mode}: {v}");
        if declined {
            assert_eq!(v["structured"]["reason"], "approval_declined", "{v}");
        }
        assert_eq!(up.count(), hits, "{mode}");
    }
}

/// A tasks-capable client (the Python SDK with the tasks extension): the call becomes a
/// task that works while it waits, and completes with the call's result once an approver
/// approves through the admin listener.
#[test]
fn a_task_completes_with_the_result_after_approval() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "");
    let child = py_approve(&gw, "auto-task");
    // The approver finds the request in the queue and approves it.
    let finance = bearer_with_roles("fiona", &["finance"]);
    let id = rt.block_on(async {
        for _ in 0..100 {
            let q: Value = pending(&gw, &finance).await;
            if let Some(id) = q[0]["id"].as_str() {
                return id.to_string();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no pending approval appeared");
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(up.count(), 0, "nothing runs before the decision");
    assert_eq!(rt.block_on(decide(&gw, &id, &finance, true)).0, 200);
    let v = client_result(child);
    assert_eq!(v["isError"], false, "{v}");
    assert_eq!(v["structured"]["status"], 200, "{v}");
    let polls: Vec<&str> = v["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        polls.contains(&"working") && polls.last() == Some(&"completed"),
        "{polls:?}"
    );
    assert_eq!(up.count(), 1);
}

/// `self` over raw 2026-07-28 requests: a confirmation's request state works once (replayed
/// it is `approval_consumed`, no second call); a tampered one is `-32602`.
#[tokio::test]
async fn a_confirmation_state_is_single_use_and_sealed() {
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "");
    let caps = json!({"elicitation": {"form": {}}});
    let args = json!({"api": "pay", "method": "DELETE", "endpoint": "/accounts/9"});
    let call = |extra: Value| {
        stateless_tool_call(
            &gw,
            ("x-api-key", API_KEY),
            caps.clone(),
            args.clone(),
            extra,
        )
    };
    let first = call(json!({})).await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let form = &result["inputRequests"]["approve"]["params"];
    assert_eq!(form["mode"], "form", "{first}");
    assert_eq!(
        form["requestedSchema"]["properties"]["confirm"]["type"],
        "boolean"
    );
    let state = result["requestState"].as_str().unwrap().to_string();
    let yes = json!({"approve": {"action": "accept", "content": {"confirm": true}}});

    let mut bad = state.clone().into_bytes();
    let i = bad.len() - 4;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    let r =
        call(json!({"requestState": String::from_utf8(bad).unwrap(), "inputResponses": yes})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert_eq!(up.count(), 0);

    let ok = call(json!({"requestState": state, "inputResponses": yes})).await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");
    assert_eq!(up.count(), 1);
    let replay = call(json!({"requestState": state, "inputResponses": yes})).await;
    assert_eq!(replay["result"]["isError"], true, "{replay}");
    assert_eq!(
        replay["result"]["structuredContent"]["reason"],
        "approval_consumed"
    );
    assert_eq!(up.count(), 1);
}

/// Three replicas on one Redis: an approval made through one is seen by all, and of 20
/// concurrent retries of the approved call across them exactly one runs; the rest are
/// `approval_consumed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_approved_call_runs_once_across_replicas() {
    let up = Upstream::start();
    let hook = hook_server();
    let redis = Redis::start();
    let extra = format!(
        "\n[rate_limits]\nstore = {{ kind = \"redis\", url = \"redis://127.0.0.1:{}\" }}\n",
        redis.port
    );
    let replicas: Vec<Gateway> = (0..3)
        .map(|_| {
            let extra = extra.clone();
            Gateway::start_generated_env(
                move |ports| format!("{}{extra}", config(up.port, hook.port, ports, "")),
                &[("HOOK_SECRET", HOOK_SECRET)],
            )
        })
        .collect();
    let body = r#"{"amount": 99}"#;
    let p: Value = refund(&replicas[0], body, None).await.json().await.unwrap();
    let id = p["approval_id"].as_str().unwrap().to_string();
    // Decided on another replica than the one that took the request.
    let (status, _) = decide(
        &replicas[1],
        &id,
        &bearer_with_roles("fiona", &["finance"]),
        true,
    )
    .await;
    assert_eq!(status, 200);
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let url = replicas[i % 3].proxy_url("/pay/refunds/r-17");
            let id = id.clone();
            tokio::spawn(async move {
                no_redirects()
                    .post(url)
                    .header("host", "localhost")
                    .header("x-api-key", API_KEY)
                    .header("content-type", "application/json")
                    .header("approval-id", id)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for h in handles {
        statuses.push(h.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(up.count(), 1);
}

/// The audit trail holds the approval's life, in order and under one id (requested,
/// decided, consumed, and for a request nobody answered, expired), and `audit verify` passes.
#[tokio::test]
async fn the_audit_trail_tells_each_approval_in_order() {
    let up = Upstream::start();
    let hook = hook_server();
    let mut gw = start(up.port, hook.port, "ttl = \"1s\"");
    let finance = bearer_with_roles("fiona", &["finance"]);
    let p: Value = refund(&gw, r#"{"amount": 3}"#, None)
        .await
        .json()
        .await
        .unwrap();
    let id = p["approval_id"].as_str().unwrap().to_string();
    assert_eq!(decide(&gw, &id, &finance, true).await.0, 200);
    assert_eq!(
        refund(&gw, r#"{"amount": 3}"#, Some(&id)).await.status(),
        200
    );
    // A request nobody answers expires: its caller's next identical call finds it so.
    let mut mcp = McpSession::connect_with(&gw.mcp_url(), &[("x-api-key", API_KEY)]).await;
    let args =
        json!({"api": "pay", "method": "POST", "endpoint": "/refunds/r-4", "body": {"amount": 4}});
    let first = mcp.call("api_gateway", args.clone()).await;
    let lapsed = first["structuredContent"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let again = mcp.call("api_gateway", args).await;
    assert_ne!(again["structuredContent"]["approval_id"], lapsed.as_str());
    terminate(&mut gw);

    let path = gw.config_path.parent().unwrap().join("audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .collect();
    let life = |id: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["approval_id"] == id && e["event"].is_string())
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        life(&id),
        [
            "approval_requested",
            "approval_decided",
            "approval_consumed"
        ]
    );
    assert_eq!(life(&lapsed), ["approval_requested", "approval_expired"]);
    let digests: Vec<&Value> = events
        .iter()
        .filter(|e| e["approval_id"] == id.as_str())
        .map(|e| &e["call_digest"])
        .collect();
    assert!(
        digests.len() >= 4 && digests.iter().all(|d| *d == digests[0]),
        "{digests:?}"
    );
    // The call that used the approval names it too.
    assert!(events
        .iter()
        .any(|e| e["approval_id"] == id.as_str() && e["status"] == 200 && e["event"].is_null()));
    let out = std::process::Command::new(bin())
        .args(["audit", "verify", "--file"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A reload that changes the approval rules voids what was asked and given under the old
/// ones: an unused approval is 410 `approval_expired`.
#[tokio::test]
async fn a_reload_that_changes_the_rules_voids_approvals() {
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "");
    let body = r#"{"amount": 8}"#;
    let p: Value = refund(&gw, body, None).await.json().await.unwrap();
    let id = p["approval_id"].as_str().unwrap().to_string();
    assert_eq!(
        decide(&gw, &id, &bearer_with_roles("fiona", &["finance"]), true)
            .await
            .0,
        200
    );
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        text.replace(
            "approvers = [\"finance\"]",
            "approvers = [\"finance\", \"cfo\"]",
        ),
    )
    .unwrap();
    send_signal(&gw, "-HUP");
    assert_eq!(
        counter_at(&gw, "api_config_reloads_total{result=\"success\"}", 1.0).await,
        1.0
    );
    let r = refund(&gw, body, Some(&id)).await;
    assert_eq!(r.status(), 410);
    assert!(up.seen().is_empty());
}

/// A `self` rule on the proxy door, which cannot ask a user: refused, 403
/// `confirmation_unavailable`; `explain` names the rule that holds such calls.
#[tokio::test]
async fn self_rules_are_for_clients_that_can_ask_and_explain_names_them() {
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "");
    let r = by_suite(&gw, reqwest::Method::DELETE, "/pay/accounts/7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["reason"], "confirmation_unavailable");
    assert_eq!(p["rule"], "approvals[wipe]");
    assert!(up.seen().is_empty());
    let out = std::process::Command::new(bin())
        .args(["explain", "--json", "-c"])
        .arg(&gw.config_path)
        .args([
            "--door",
            "proxy",
            "--api",
            "pay",
            "--method",
            "POST",
            "--endpoint",
            "/refunds/x",
            "--key",
            API_KEY,
        ])
        .env("HOOK_SECRET", HOOK_SECRET)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(out.status.code(), Some(3), "{doc}");
    assert_eq!(doc["reason"], "approval_pending", "{doc}");
    assert_eq!(doc["rule"], "approvals[refunds]", "{doc}");
}

/// A `shadow` rule holds nothing: the call runs, and "would need approval" is counted as a
/// shadow decision of the rule.
#[tokio::test]
async fn a_shadow_rule_records_and_lets_the_call_run() {
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "");
    let r = by_suite(&gw, reqwest::Method::GET, "/pay/balance")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    let series = "api_policy_shadow_decisions_total{decision=\"approval_pending\",rule=\"approvals[peek]\",stage=\"approval\"}";
    assert_eq!(counter_at(&gw, series, 1.0).await, 1.0);
}

/// A `self` request is decided only by its user's confirmation in the MCP client: its
/// requester cannot approve it on the admin listener. And an approval covers the query as
/// sent: the same pairs in another order are another call.
#[tokio::test]
async fn self_requests_are_not_approved_by_hand_and_query_order_counts() {
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "");
    let mut mcp = McpSession::connect_with(&gw.mcp_url(), &[("x-api-key", API_KEY)]).await;
    let res = mcp
        .call(
            "api_gateway",
            json!({"api": "pay", "method": "DELETE", "endpoint": "/accounts/3"}),
        )
        .await;
    let id = res["structuredContent"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    let own = no_redirects()
        .post(format!("http://127.0.0.1:{}/approvals/{id}", gw.admin))
        .header("x-api-key", API_KEY)
        .json(&json!({"approve": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 403);

    let send = |query: &'static str, approval: Option<String>| {
        let mut req = by_suite(
            &gw,
            reqwest::Method::POST,
            &format!("/pay/refunds/q?{query}"),
        )
        .header("content-type", "application/json")
        .body("{}");
        if let Some(id) = approval {
            req = req.header("approval-id", id);
        }
        req.send()
    };
    let p: Value = send("to=a&to=b", None).await.unwrap().json().await.unwrap();
    let id = p["approval_id"].as_str().unwrap().to_string();
    assert_eq!(
        decide(&gw, &id, &bearer_with_roles("fiona", &["finance"]), true)
            .await
            .0,
        200
    );
    let swapped = send("to=b&to=a", Some(id.clone())).await.unwrap();
    assert_eq!(swapped.status(), 409);
    assert!(up.seen().is_empty());
    assert_eq!(send("to=a&to=b", Some(id)).await.unwrap().status(), 200);
}
