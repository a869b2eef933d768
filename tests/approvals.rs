//! Human approval as a policy outcome, through the front doors: calls held by
//! `[[approvals]]` wait for a person, run once when approved, and are bound to the exact call.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

const HOOK_SECRET: &str = "webhook-signing-secret-3f9a";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

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
         [[approvals]]\nid = \"wipe\"\napi = \"pay\"\nmethods = [\"DELETE\"]\nmode = \"self\"\n",
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

fn bearer(sub: &str, roles: &[&str]) -> String {
    format!("Bearer {}", jwt(json!({"sub": sub, "roles": roles})))
}

async fn decide(gw: &Gateway, id: &str, auth: &str, approve: bool) -> (u16, Value) {
    let r = http()
        .post(format!("http://127.0.0.1:{}/approvals/{id}", gw.admin))
        .header("authorization", auth)
        .json(&json!({"approve": approve, "reason": "checked the ticket"}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn refund(gw: &Gateway, body: &str, approval: Option<&str>) -> reqwest::Response {
    let mut req = http()
        .post(gw.proxy_url("/pay/refunds/r-17"))
        .header("host", "localhost")
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(id) = approval {
        req = req.header("approval-id", id);
    }
    req.send().await.unwrap()
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
    let finance = bearer("fiona", &["finance"]);
    let queue: Value = http()
        .get(format!(
            "http://127.0.0.1:{}/approvals?status=pending",
            gw.admin
        ))
        .header("authorization", &finance)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let own = http()
        .post(format!("http://127.0.0.1:{}/approvals/{id}", gw.admin))
        .header("x-api-key", API_KEY)
        .json(&json!({"approve": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 403);
    let (status, rec) = decide(&gw, &id, &bearer("otto", &["ops"]), true).await;
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
    let finance = bearer("fiona", &["finance"]);
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
}

/// The MCP door without tasks or elicitation: `approval_pending` with the id and when to
/// retry; once approved the identical call runs once, and the same call again is a new
/// request; a call with another body is another request.
#[tokio::test]
async fn an_mcp_call_waits_and_runs_once_approved() {
    let up = Upstream::start();
    let hook = hook_server();
    let gw = start(up.port, hook.port, "");
    let finance = bearer("fiona", &["finance"]);
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
    let other = json!({"api": "pay", "method": "POST", "endpoint": "/refunds/r-9", "body": {"amount": 700}});
    let res = mcp.call("api_gateway", other).await;
    let id3 = res["structuredContent"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id3 != id2 && id3 != id);
    assert_eq!(up.count(), 1);
}
