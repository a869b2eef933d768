//! Per-principal upstream credentials through the front doors: each caller's own secret
//! injected on both doors, managed by admins and by callers themselves, sealed at rest, a
//! missing one turned into a next step (MCP `input_required`, `credential_required` with a
//! connect link, the connect page), key rotation by the CLI, and a Redis store shared by
//! replicas.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

const KEY1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const ALICE_SECRET: &str = "alice-upstream-token-7c1d0e";
const BOB_SECRET: &str = "bob-upstream-token-42aa19";

/// A gateway whose API `vault` injects each caller's own secret in `Authorization`, and
/// whose API `keyed` puts it in `X-Team-Token`; the store is SQLite under `key_env`.
fn config(up: u16, ports: (u16, u16, u16), store: &str, on_missing: &str) -> String {
    format!(
        "{}{}[credential_store]\n{store}\n\n\
         [[apis]]\nname = \"vault\"\nbase_url = \"http://127.0.0.1:{up}\"\nallow_private_network = true\n\
         methods = [\"GET\"]\npaths = [\"/**\"]\n\
         credentials = {{ mode = \"per_principal\", header = \"Authorization\", on_missing = \"{on_missing}\" }}\n\n\
         [[apis]]\nname = \"keyed\"\nbase_url = \"http://127.0.0.1:{up}\"\nallow_private_network = true\n\
         methods = [\"GET\"]\npaths = [\"/**\"]\n\
         credentials = {{ mode = \"per_principal\", header = \"X-Team-Token\", format = \"team {{secret}}\" }}\n",
        listen_section(ports, 2),
        auth_section(true),
    )
}

fn sqlite_store(key_env: &str) -> String {
    format!("kind = \"sqlite\"\npath = \"creds.db\"\nkey_env = \"{key_env}\"")
}

fn start(up: u16, on_missing: &str) -> Gateway {
    Gateway::start_generated_env(
        |ports| config(up, ports, &sqlite_store("AGM_CRED_KEY"), on_missing),
        // Everything the gateway logs, so the test can look for secrets in it.
        &[("AGM_CRED_KEY", KEY1), ("RUST_LOG", "debug")],
    )
}

async fn admin_put(
    gw: &Gateway,
    api: &str,
    principal: &str,
    secret: &str,
    auth: &str,
) -> (u16, Value) {
    let r = no_redirects()
        .put(format!(
            "http://127.0.0.1:{}/credentials/{api}/{}",
            gw.admin,
            principal.replace(':', "%3A")
        ))
        .header("authorization", auth)
        .json(&json!({ "secret": secret }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn self_put(gw: &Gateway, api: &str, secret: &str, auth: (&str, &str)) -> (u16, Value) {
    let r = no_redirects()
        .put(format!("http://127.0.0.1:{}/me/credentials/{api}", gw.mcp))
        .header(auth.0, auth.1)
        .json(&json!({ "secret": secret }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn proxy_get(gw: &Gateway, path: &str, auth: (&str, &str)) -> reqwest::Response {
    no_redirects()
        .get(gw.proxy_url(path))
        .header("host", "localhost")
        .header(auth.0, auth.1)
        .send()
        .await
        .unwrap()
}

async fn get_json(url: String, auth: &str) -> Value {
    let r = no_redirects()
        .get(url)
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

fn fingerprint(secret: &str) -> String {
    sha256_hex(secret)[..8].to_string()
}

/// A stateless 2026-07-28 `tools/call` of `api_gateway` by a client that can open links.
async fn modern_call(gw: &Gateway, auth: &str, args: Value, extra: Value) -> Value {
    stateless_tool_call(
        gw,
        ("authorization", auth),
        json!({"elicitation": {"url": {}}}),
        args,
        extra,
    )
    .await
}

/// Two principals call the same `per_principal` API through each door: the upstream sees
/// each one's own secret, never the caller's token or key; one was stored by an admin, the
/// other by the caller itself. Listings show fingerprints, never secrets; the store, the
/// audit trail and `/metrics` hold no secret.
#[tokio::test]
async fn each_principal_calls_with_its_own_secret_on_both_doors() {
    let up = Upstream::start();
    let gw = start(up.port, "deny");
    let admin = bearer_with_roles("root", &["admin"]);
    let alice = bearer_with_roles("alice", &["reader"]);
    let bob = bearer_with_roles("bob", &["reader"]);

    // A non-admin may not manage someone else's credential.
    let (status, _) = admin_put(&gw, "vault", "jwt:alice", ALICE_SECRET, &bob).await;
    assert_eq!(status, 403);
    let (status, rec) = admin_put(&gw, "vault", "jwt:alice", ALICE_SECRET, &admin).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["fingerprint"], fingerprint(ALICE_SECRET));
    assert!(!rec.to_string().contains(ALICE_SECRET));
    let (status, rec) = self_put(&gw, "vault", BOB_SECRET, ("authorization", &bob)).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["principal"], "jwt:bob");
    // An API-key principal keeps its own too.
    let (status, _) = self_put(
        &gw,
        "vault",
        "key-principal-secret-1",
        ("x-api-key", API_KEY),
    )
    .await;
    assert_eq!(status, 200);

    for (auth, secret) in [(&alice, ALICE_SECRET), (&bob, BOB_SECRET)] {
        let r = proxy_get(&gw, "/vault/who", ("authorization", auth)).await;
        assert_eq!(r.status(), 200);
        let mut mcp = McpSession::connect_with(&gw.mcp_url(), &[("authorization", auth)]).await;
        let res = mcp
            .call("api_gateway", json!({"api": "vault", "endpoint": "/who"}))
            .await;
        assert_eq!(res["isError"], false, "{res}");
        let seen = up.seen();
        let last_two = &seen[seen.len() - 2..];
        for s in last_two {
            assert_eq!(
                s.header("authorization"),
                Some(format!("Bearer {secret}").as_str())
            );
        }
    }
    // An upstream that echoes the request: the caller's own secret comes back masked.
    let r = proxy_get(&gw, "/vault/echo", ("authorization", &alice)).await;
    let echoed = r.text().await.unwrap();
    assert!(
        echoed.contains("authorization") && !echoed.contains(ALICE_SECRET),
        "{echoed}"
    );
    let mut mcp = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &bob)]).await;
    let res = mcp
        .call("api_gateway", json!({"api": "vault", "endpoint": "/echo"}))
        .await;
    assert!(res.to_string().contains("[REDACTED:credential]"), "{res}");
    assert!(!res.to_string().contains(BOB_SECRET), "{res}");
    let r = proxy_get(&gw, "/vault/who", ("x-api-key", API_KEY)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.seen().last().unwrap().header("authorization"),
        Some("Bearer key-principal-secret-1")
    );
    // Nothing the callers presented reached the upstream.
    for s in up.seen() {
        let all = format!("{:?}", s.headers);
        assert!(!all.contains(API_KEY) && !all.contains(&alice[7..]) && !all.contains(&bob[7..]));
    }

    // The admin listing names principals and fingerprints only.
    let list = get_json(
        format!("http://127.0.0.1:{}/credentials/vault", gw.admin),
        &admin,
    )
    .await;
    let principals: Vec<&str> = list["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["principal"].as_str().unwrap())
        .collect();
    assert_eq!(principals, ["jwt:alice", "jwt:bob", "key:suite"]);
    assert!(!list.to_string().contains(ALICE_SECRET) && !list.to_string().contains(BOB_SECRET));
    // A caller sees its own, and only its own.
    let mine = get_json(format!("http://127.0.0.1:{}/me/credentials", gw.mcp), &bob).await;
    assert_eq!(mine["credentials"].as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(
        mine["credentials"][0]["fingerprint"],
        fingerprint(BOB_SECRET)
    );

    // Deleting bob's credential: his next call is refused, alice's still works.
    let r = no_redirects()
        .delete(format!("http://127.0.0.1:{}/me/credentials/vault", gw.mcp))
        .header("authorization", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = proxy_get(&gw, "/vault/who", ("authorization", &bob)).await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "credential_required");
    let r = proxy_get(&gw, "/vault/who", ("authorization", &alice)).await;
    assert_eq!(r.status(), 200);

    // The secret is sealed at rest and never recorded.
    let dir = gw.config_path.parent().unwrap();
    let db = std::fs::read(dir.join("creds.db")).unwrap();
    let wal = std::fs::read(dir.join("creds.db-wal")).unwrap_or_default();
    for secret in [ALICE_SECRET, BOB_SECRET, "key-principal-secret-1"] {
        let needle = secret.as_bytes();
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{secret} at rest"
            );
        }
    }
    let metrics = scrape(&gw).await;
    let mut audit = String::new();
    for _ in 0..50 {
        audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
        if audit.lines().count() >= 12 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for secret in [ALICE_SECRET, BOB_SECRET, "key-principal-secret-1"] {
        assert!(
            !metrics.contains(secret) && !audit.contains(secret),
            "{secret} recorded"
        );
    }
    // Calls name how their credential was obtained; changes name whose, and by whom.
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .collect();
    assert!(events.iter().any(|e| e["principal"] == "jwt:alice"
        && e["credential_source"] == "per_principal"
        && e["credential_fingerprint"] == fingerprint(ALICE_SECRET)));
    assert!(events.iter().any(|e| e["principal"] == "jwt:root"
        && e["door"] == "admin"
        && e["credential_subject"] == "jwt:alice"
        && e["credential_fingerprint"] == fingerprint(ALICE_SECRET)));
    assert!(events
        .iter()
        .any(|e| e["method"] == "DELETE" && e["credential_subject"] == "jwt:bob"));
}

/// A caller-supplied copy of the injected header is refused on both doors, and nothing
/// reaches the upstream; `Authorization` in the tool's headers is refused as the gateway's own.
#[tokio::test]
async fn a_callers_copy_of_the_injected_header_is_refused() {
    let up = Upstream::start();
    let gw = start(up.port, "deny");
    let alice = bearer_with_roles("alice", &["reader"]);
    self_put(&gw, "keyed", "team-secret-1", ("authorization", &alice)).await;
    self_put(&gw, "vault", ALICE_SECRET, ("authorization", &alice)).await;
    let r = no_redirects()
        .get(gw.proxy_url("/keyed/x"))
        .header("host", "localhost")
        .header("authorization", &alice)
        .header("x-team-token", "team forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "credential_header");
    let mut mcp = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &alice)]).await;
    for (api, header, reason) in [
        ("keyed", "X-Team-Token", "credential_header"),
        ("vault", "Authorization", "reserved_header"),
    ] {
        let res = mcp
            .call(
                "api_gateway",
                json!({"api": api, "endpoint": "/x", "headers": {header: "Bearer evil"}}),
            )
            .await;
        assert_eq!(res["isError"], true, "{res}");
        assert_eq!(res["structuredContent"]["reason"], reason, "{res}");
    }
    assert!(up.seen().is_empty());
    // Without the copy, the stored value goes out in the API's format.
    let r = proxy_get(&gw, "/keyed/x", ("authorization", &alice)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.seen()[0].header("x-team-token"),
        Some("team team-secret-1")
    );
}

/// A principal without a stored secret: a 2026-07-28 client that can open links gets
/// `input_required` with the connect page; a tampered (or another call's) request state is
/// `-32602` and calls nothing; once the secret is stored, the retry reaches the upstream
/// once. A legacy client gets `credential_required` with the link, the proxy door 403; the
/// link's page stores the secret.
#[tokio::test]
async fn a_missing_credential_is_a_next_step_on_every_door() {
    let up = Upstream::start();
    let gw = start(up.port, "connect");
    let carol = bearer_with_roles("carol", &["reader"]);
    let args = json!({"api": "vault", "endpoint": "/mine"});

    let first = modern_call(&gw, &carol, args.clone(), json!({})).await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let ask = &result["inputRequests"]["connect"];
    assert_eq!(ask["method"], "elicitation/create", "{first}");
    assert_eq!(ask["params"]["mode"], "url");
    let url = ask["params"]["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{}/connect/vault?t=", gw.mcp)),
        "{url}"
    );
    let state = result["requestState"].as_str().unwrap().to_string();
    assert!(up.seen().is_empty());

    // A tampered state, or the state of another call, is refused without calling anything.
    let mut tampered = state.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let other_args = json!({"api": "vault", "endpoint": "/other"});
    for (a, s) in [
        (args.clone(), tampered.as_str()),
        (other_args, state.as_str()),
    ] {
        let r = modern_call(&gw, &carol, a, json!({"requestState": s})).await;
        assert_eq!(r["error"]["code"], -32602, "{r}");
    }
    // Another caller cannot replay carol's state either.
    let dave = bearer_with_roles("dave", &["reader"]);
    let r = modern_call(&gw, &dave, args.clone(), json!({"requestState": state})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(up.seen().is_empty());

    // Carol stores her secret; the retry runs the call once.
    let (status, _) = self_put(&gw, "vault", "carol-secret-55", ("authorization", &carol)).await;
    assert_eq!(status, 200);
    let retry = modern_call(
        &gw,
        &carol,
        args.clone(),
        json!({"requestState": state, "inputResponses": {"connect": {"action": "accept"}}}),
    )
    .await;
    assert_eq!(retry["result"]["isError"], false, "{retry}");
    assert_eq!(up.count(), 1);
    assert_eq!(
        up.seen()[0].header("authorization"),
        Some("Bearer carol-secret-55")
    );

    // A legacy client without elicitation: credential_required with the link.
    let mut legacy = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &dave)]).await;
    let res = legacy.call("api_gateway", args.clone()).await;
    assert_eq!(res["isError"], true);
    let sc = &res["structuredContent"];
    assert_eq!(sc["reason"], "credential_required", "{res}");
    assert_eq!(sc["status"], 403);
    let link = sc["connect_url"].as_str().unwrap().to_string();
    // The refusal fits the tool's (closed) output schema, as clients check it.
    let schema = output_schema(&mut legacy, "api_gateway").await;
    let errors = validate_schema(
        schema,
        vec![json!({"name": "credential_required", "value": sc})],
    );
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(res["content"][0]["text"].as_str().unwrap().contains(&link));
    // The proxy door: 403 problem+json with the link.
    let r = proxy_get(&gw, "/vault/mine", ("authorization", &dave)).await;
    assert_eq!(r.status(), 403);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["reason"], "credential_required");
    assert!(p["connect_url"]
        .as_str()
        .unwrap()
        .contains("/connect/vault?t="));
    assert_eq!(up.count(), 1);

    // The link's page: a form, served with a strict CSP; posting it stores dave's secret.
    let page = no_redirects().get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("jwt:dave") && html.contains("<form"),
        "{html}"
    );
    let t = link.split("t=").nth(1).unwrap();
    let form = format!("t={t}&secret=dave-secret-77");
    let cross_site = no_redirects()
        .post(format!("http://127.0.0.1:{}/connect/vault", gw.mcp))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body(form.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let saved = no_redirects()
        .post(format!("http://127.0.0.1:{}/connect/vault", gw.mcp))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 200);
    assert!(saved
        .text()
        .await
        .unwrap()
        .contains(&fingerprint("dave-secret-77")));
    // A damaged link is refused.
    let bad = no_redirects().get(format!("{link}x")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let res = legacy.call("api_gateway", args).await;
    assert_eq!(res["isError"], false, "{res}");
    assert_eq!(
        up.seen()[1].header("authorization"),
        Some("Bearer dave-secret-77")
    );
}

fn cli(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(bin())
        .arg("credentials")
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Key rotation: a record written under key 1 is read by a gateway whose current key is 2
/// (key 1 listed as old); `credentials rotate-key` re-seals it, after which key 1 can go and
/// everything still reads. The CLI sets, lists and deletes.
#[tokio::test]
async fn records_survive_key_rotation() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let write = |store: &str| {
        std::fs::write(
            &path,
            config(
                up.port,
                (free_port(), free_port(), free_port()),
                store,
                "deny",
            ),
        )
        .unwrap()
    };
    write(&sqlite_store("K1"));
    let k1 = [("K1", KEY1)];
    let (ok, out) = cli(
        &path,
        &["set", "--api", "vault", "--principal", "jwt:erin"],
        &k1,
        "erin-secret-3\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains(&fingerprint("erin-secret-3")), "{out}");
    let (ok, out) = cli(&path, &["list"], &k1, "");
    assert!(
        ok && out.contains("jwt:erin") && !out.contains("erin-secret-3"),
        "{out}"
    );

    // Key 2 current, key 1 old: the record still opens.
    write(&format!("{}\nold_key_envs = [\"K1\"]", sqlite_store("K2")));
    let both = [("K1", KEY1), ("K2", KEY2)];
    let db = dir.path().join("creds.db");
    let erin = bearer_with_roles("erin", &["reader"]);
    let call = |env: &'static [(&'static str, &'static str)]| {
        let db = db.clone();
        let up_port = up.port;
        let erin = erin.clone();
        async move {
            let store = format!(
                "kind = \"sqlite\"\npath = \"{}\"\nkey_env = \"K2\"{}",
                db.display(),
                if env.len() == 2 {
                    "\nold_key_envs = [\"K1\"]"
                } else {
                    ""
                }
            );
            let gw =
                Gateway::start_generated_env(|ports| config(up_port, ports, &store, "deny"), env);
            let r = proxy_get(&gw, "/vault/x", ("authorization", &erin)).await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    static BOTH: [(&str, &str); 2] = [("K1", KEY1), ("K2", KEY2)];
    static ONLY2: [(&str, &str); 1] = [("K2", KEY2)];
    let (status, _) = call(&BOTH).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.seen().last().unwrap().header("authorization"),
        Some("Bearer erin-secret-3")
    );
    // Without key 1 and before rotation, the record cannot be read: a clear, retryable error.
    let (status, body) = call(&ONLY2).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (502, Some("credential_unavailable")),
        "{body}"
    );

    let (ok, out) = cli(&path, &["rotate-key"], &both, "");
    assert!(ok && out.contains("re-sealed 1 of 1"), "{out}");
    write(&sqlite_store("K2"));
    let (status, _) = call(&ONLY2).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.seen().last().unwrap().header("authorization"),
        Some("Bearer erin-secret-3")
    );
    let only2 = [("K2", KEY2)];
    let (ok, out) = cli(
        &path,
        &["delete", "--api", "vault", "--principal", "jwt:erin"],
        &only2,
        "",
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(&path, &["list"], &only2, "");
    assert!(ok && !out.contains("jwt:erin"), "{out}");
    // A key of the wrong size is refused at its key path.
    let (ok, out) = cli(&path, &["list"], &[("K2", "c2hvcnQ=")], "");
    assert!(
        !ok && out.contains("credential_store.key_env") && out.contains("32 bytes"),
        "{out}"
    );
}

/// Two replicas share a Redis store: a secret stored through one is used by the other, and
/// deleted through the other, at once.
#[tokio::test]
async fn replicas_share_credentials_in_redis() {
    let up = Upstream::start();
    let redis = Redis::start();
    let port = redis.port;
    let store =
        format!("kind = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nkey_env = \"AGM_CRED_KEY\"");
    let start = || {
        Gateway::start_generated_env(
            |ports| config(up.port, ports, &store, "deny"),
            &[("AGM_CRED_KEY", KEY1)],
        )
    };
    let (a, b) = (start(), start());
    let frank = bearer_with_roles("frank", &["reader"]);
    let (status, _) = self_put(&a, "vault", "frank-secret-9", ("authorization", &frank)).await;
    assert_eq!(status, 200);
    let r = proxy_get(&b, "/vault/x", ("authorization", &frank)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.seen()[0].header("authorization"),
        Some("Bearer frank-secret-9")
    );
    let r = no_redirects()
        .delete(format!("http://127.0.0.1:{}/me/credentials/vault", b.mcp))
        .header("authorization", &frank)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = proxy_get(&a, "/vault/x", ("authorization", &frank)).await;
    assert_eq!(r.status(), 403);
    drop(redis);
}

/// A real MCP client (the Python SDK) that declares URL elicitation, in both eras: the legacy
/// session is asked with `elicitation/create` during the call, the 2026-07-28 client gets
/// `input_required` and retries; either way its user (the callback) stores a secret on the
/// connect page, and the one call then reaches the upstream, once, with that secret.
#[test]
fn real_clients_send_their_user_to_connect_in_both_eras() {
    for (mode, who) in [("legacy", "gina"), ("auto", "hank")] {
        let up = Upstream::start();
        let gw = start(up.port, "connect");
        let secret = format!("{who}-secret-from-the-page");
        let out = Command::new(tools_dir().join("venv/bin/python"))
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/clients/py_connect.py"),
            )
            .args([&gw.mcp_url(), mode, "vault", &secret])
            .env("MCP_BEARER", jwt(json!({"sub": who, "roles": ["reader"]})))
            .output()
            .expect("python client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(
            v["elicitations"].as_array().unwrap().len(),
            1,
            "{mode}: {v}"
        );
        assert_eq!(v["elicitations"][0]["mode"], "url", "{mode}: {v}");
        assert_eq!(v["isError"], false, "{mode}: {v}");
        let modern = v["protocol"] == "2026-07-28";
        assert_eq!(modern, mode == "auto", "{v}");
        assert_eq!(up.count(), 1, "{mode}");
        assert_eq!(
            up.seen()[0].header("authorization"),
            Some(format!("Bearer {secret}").as_str())
        );
    }
}

/// A reload keeps the stored credentials and drops everything built from them: after the
/// API's format changes, each principal's next call carries its own secret in the new format
/// (nothing cached under the old config is used), on both doors.
#[tokio::test]
async fn a_reload_keeps_stored_credentials_and_drops_what_was_built() {
    let up = Upstream::start();
    let gw = start(up.port, "deny");
    let (alice, bob) = (
        bearer_with_roles("alice", &["reader"]),
        bearer_with_roles("bob", &["reader"]),
    );
    self_put(&gw, "keyed", "alice-team-1", ("authorization", &alice)).await;
    self_put(&gw, "keyed", "bob-team-2", ("authorization", &bob)).await;
    for auth in [&alice, &bob] {
        assert_eq!(
            proxy_get(&gw, "/keyed/x", ("authorization", auth))
                .await
                .status(),
            200
        );
    }
    let before: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.header("x-team-token").unwrap().to_string())
        .collect();
    assert_eq!(before, ["team alice-team-1", "team bob-team-2"]);

    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        text.replace("team {secret}", "crew {secret}"),
    )
    .unwrap();
    send_signal(&gw, "-HUP");
    let reloads = "api_config_reloads_total{result=\"success\"}";
    assert_eq!(counter_at(&gw, reloads, 1.0).await, 1.0);
    up.clear();
    assert_eq!(
        proxy_get(&gw, "/keyed/x", ("authorization", &bob))
            .await
            .status(),
        200
    );
    let mut mcp = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &alice)]).await;
    let res = mcp
        .call("api_gateway", json!({"api": "keyed", "endpoint": "/x"}))
        .await;
    assert_eq!(res["isError"], false, "{res}");
    let after: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.header("x-team-token").unwrap().to_string())
        .collect();
    assert_eq!(after, ["crew bob-team-2", "crew alice-team-1"]);
}
