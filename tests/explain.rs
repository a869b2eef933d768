//! `explain` and the rule ids of refusals: a refusal names its stage and rule on both doors
//! and in the audit record, `explain` reaches the same verdict for the same call without
//! making it, and `security.explain_denials` decides how much a caller is told.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// A writer may do anything on `local` but DELETE under /records (rbac.roles[0].deny[0]).
fn config(up: u16, extra: &'static str) -> impl Fn((u16, u16, u16)) -> String {
    move |(m, p, a)| {
        format!(
            "{}{}{extra}\n[[rbac.roles]]\nname = \"writer\"\n\
             allow = [{{ api = \"local\" }}]\n\
             deny = [{{ api = \"local\", methods = [\"DELETE\"], paths = [\"/records/**\"] }}]\n\n\
             [[rbac.roles]]\nname = \"reader\"\nallow = [{{ api = \"local\", methods = [\"GET\"] }}]\n\n\
             [[apis]]\nname = \"local\"\nbase_url = \"http://127.0.0.1:{up}\"\nallow_private_network = true\n\
             methods = [\"GET\", \"DELETE\"]\npaths = [\"/**\"]\n\
             credentials = {{ query = \"appid\", value = \"${{AGM_TEST_SECRET}}\" }}\n",
            listen_section((m, p, a), 2),
            auth_section(true),
        )
    }
}

/// A proxy-door call as `auth`, with the Host the door serves.
async fn proxy(gw: &Gateway, method: reqwest::Method, path: &str, auth: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(method, gw.proxy_url(path))
        .header("Host", "localhost")
        .header("Authorization", auth)
        .send()
        .await
        .unwrap()
}

/// The audit file of a stopped gateway.
fn audit_of(gw: &mut Gateway) -> String {
    terminate(gw);
    std::fs::read_to_string(gw.config_path.parent().unwrap().join("audit.jsonl")).unwrap()
}

/// `explain` arguments for the call the tests refuse: wanda, a writer, deleting a record.
const WANDA_DELETES: &[&str] = &[
    "--door",
    "proxy",
    "--api",
    "local",
    "--method",
    "DELETE",
    "--endpoint",
    "/records/7",
    "--principal",
    r#"{"subject": "wanda", "roles": ["writer"]}"#,
];

/// A refusal's (reason, stage, rule), from a problem, a tool result or an explanation.
fn verdict(v: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        v["reason"].as_str(),
        v["stage"].as_str(),
        v["rule"].as_str(),
    )
}

const DENIED: (Option<&str>, Option<&str>, Option<&str>) = (
    Some("not_permitted"),
    Some("authorization"),
    Some("rbac.roles[0].deny[0]"),
);

fn explain(gw: &Gateway, args: &[&str]) -> (i32, Value) {
    let out = Command::new(bin())
        .args(["explain", "-c"])
        .arg(&gw.config_path)
        .args(args)
        .arg("--json")
        .env("AGM_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| json!({"stderr": String::from_utf8_lossy(&out.stderr)}));
    (out.status.code().unwrap_or(-1), doc)
}

#[tokio::test]
async fn a_deny_rule_is_named_on_both_doors_in_the_audit_and_by_explain() {
    let up = Upstream::start();
    let mut gw = Gateway::start_generated(config(up.port, ""));
    let token = jwt(json!({"sub": "wanda", "roles": ["writer"]}));
    let auth = format!("Bearer {token}");

    let r = proxy(&gw, reqwest::Method::DELETE, "/local/records/7", &auth).await;
    assert_eq!(r.status(), 403);
    let p: Value = r.json().await.unwrap();
    assert_eq!(verdict(&p), DENIED, "{p}");
    assert!(
        p.get("pattern").is_none(),
        "the pattern is only shown with explain_denials = full"
    );

    let mut s = McpSession::connect_with(&gw.mcp_url(), &[("Authorization", &auth)]).await;
    let r = s
        .call(
            "api_gateway",
            json!({"api": "local", "endpoint": "/records/7", "method": "DELETE"}),
        )
        .await;
    let sc = &r["structuredContent"];
    assert_eq!(
        (sc["stage"].as_str(), sc["rule"].as_str()),
        (Some("authorization"), Some("rbac.roles[0].deny[0]")),
        "{r}"
    );

    // explain reaches the same verdict without making the call.
    let (code, doc) = explain(
        &gw,
        &[
            "--door",
            "proxy",
            "--api",
            "local",
            "--method",
            "DELETE",
            "--endpoint",
            "/records/7",
            "--jwt",
            &token,
        ],
    );
    assert_eq!(code, 3, "{doc}");
    assert_eq!(doc["decision"], "refused", "{doc}");
    assert_eq!(verdict(&doc), DENIED, "{doc}");
    let verdicts: Vec<&str> = doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        &verdicts[..6],
        ["pass", "pass", "pass", "pass", "pass", "refused"],
        "{doc}"
    );
    assert!(verdicts[6..].iter().all(|v| *v == "not reached"), "{doc}");
    // The same call as a GET is admitted: the upstream URL and the credential's mode, never
    // its value.
    let (code, doc) = explain(
        &gw,
        &[
            "--door",
            "mcp",
            "--api",
            "local",
            "--endpoint",
            "/records/7",
            "--principal",
            r#"{"subject": "wanda", "roles": ["writer"]}"#,
        ],
    );
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["decision"], "admitted");
    assert_eq!(
        doc["credential"],
        json!({"placement": "query", "name": "appid", "mode": "static"})
    );
    let upstream = doc["upstream"].as_str().unwrap();
    assert!(
        upstream.starts_with(&format!("http://127.0.0.1:{}/records/7?appid=", up.port)),
        "{upstream}"
    );
    assert!(!doc.to_string().contains(SECRET), "{doc}");
    // Nothing reached the upstream: only the refused calls were made.
    assert_eq!(up.count(), 0);
    // A usage error is exit 2.
    let (code, _) = explain(
        &gw,
        &[
            "--door",
            "proxy",
            "--api",
            "local",
            "--endpoint",
            "/",
            "--principal",
            "{",
        ],
    );
    assert_eq!(code, 2);

    let audit = audit_of(&mut gw);
    let denied: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .filter(|e| e["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 2);
    assert!(denied
        .iter()
        .all(|e| e["rule"] == "rbac.roles[0].deny[0]" && e["stage"] == "authorization"));
}

#[tokio::test]
async fn explain_denials_decides_what_a_caller_is_told_not_what_is_audited() {
    let up = Upstream::start();
    let auth = format!(
        "Bearer {}",
        jwt(json!({"sub": "wanda", "roles": ["writer"]}))
    );
    for (mode, stage, rule, pattern) in [
        ("none", None, None, None),
        (
            "rule",
            Some("authorization"),
            Some("rbac.roles[0].deny[0]"),
            None,
        ),
        (
            "full",
            Some("authorization"),
            Some("rbac.roles[0].deny[0]"),
            Some("/records/**"),
        ),
    ] {
        let extra: &'static str =
            Box::leak(format!("[security]\nexplain_denials = \"{mode}\"\n").into_boxed_str());
        let mut gw = Gateway::start_generated(config(up.port, extra));
        let p: Value = proxy(&gw, reqwest::Method::DELETE, "/local/records/7", &auth)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(p["reason"], "not_permitted", "{mode}: {p}");
        assert_eq!(
            (
                p["stage"].as_str(),
                p["rule"].as_str(),
                p["pattern"].as_str()
            ),
            (stage, rule, pattern),
            "{mode}: {p}"
        );
        terminate(&mut gw);
        let audit =
            std::fs::read_to_string(gw.config_path.parent().unwrap().join("audit.jsonl")).unwrap();
        assert!(
            audit.contains("\"rule\":\"rbac.roles[0].deny[0]\""),
            "{mode}: the audit keeps the rule"
        );
    }
}

/// One source of truth: for 2,000 generated calls (APIs real and missing, methods, endpoints
/// hostile and plain, principals with and without roles, addresses allowed and denied),
/// `explain`'s decision, stage and rule equal what the proxy door answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_proxy_door_on_generated_calls() {
    use api_gateway_mcp::explain::{Described, Explainer};
    let up = Upstream::start();
    let extra = "[security]\nip_deny = [\"127.0.0.9/32\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
    let gw = Gateway::start_generated(move |(m, p, a)| {
        format!(
            "{}\n[[apis]]\nname = \"guarded\"\nbase_url = \"http://127.0.0.1:{}\"\nmethods = [\"GET\"]\npaths = [\"/**\"]\n",
            config(up.port, extra)((m, p, a)),
            up.port
        )
    });
    std::env::set_var("AGM_TEST_SECRET", SECRET);
    let cfg = std::sync::Arc::new(api_gateway_mcp::config::Config::load(&gw.config_path).unwrap());
    let explainer = Explainer::new(cfg).unwrap();
    let tokens = [
        None,
        Some(jwt(json!({"sub": "w", "roles": ["writer"]}))),
        Some(jwt(json!({"sub": "r", "roles": ["reader"]}))),
        Some(jwt(json!({"sub": "n", "roles": []}))),
        Some("not-a-token".to_string()),
    ];
    let apis = ["local", "guarded", "ghost"];
    let methods = [http::Method::GET, http::Method::DELETE, http::Method::POST];
    let endpoints = [
        "/x",
        "/records/7",
        "/records",
        "/Records/7",
        "/records;v=1/7",
        "/a/../b",
        "/%2e%2e/x",
        "/ok?q=1",
        "/a%2fb",
        "/deep/er/path",
    ];
    let ips = ["127.0.0.1", "127.0.0.9", "127.0.0.2"];
    let client = reqwest::Client::new();
    // A small deterministic generator: the same 2,000 calls on every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut checked = 0;
    for _ in 0..2000 {
        let api = apis[next(apis.len())];
        let method = methods[next(methods.len())].clone();
        let endpoint = endpoints[next(endpoints.len())];
        let token = tokens[next(tokens.len())].clone();
        let ip = ips[next(ips.len())];
        // The client normalises the URL (dot segments, even encoded ones) before sending; the
        // door judges what arrives, so explain is given that.
        let url = reqwest::Url::parse(&gw.proxy_url(&format!("/{api}{endpoint}"))).unwrap();
        let sent = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let (sent_api, sent_endpoint) = match sent.trim_start_matches('/').split_once('/') {
            Some((a, rest)) => (a.to_string(), format!("/{rest}")),
            None => (sent.trim_start_matches('/').to_string(), "/".to_string()),
        };
        let mut req = client
            .request(method.clone(), url)
            .header("Host", "localhost")
            .header("X-Forwarded-For", ip);
        if let Some(t) = &token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let door: Value = if status == 200 {
            json!({"decision": "admitted"})
        } else {
            let p: Value = resp.json().await.unwrap_or(Value::Null);
            json!({"decision": "refused", "status": status, "reason": p["reason"], "stage": p["stage"], "rule": p["rule"]})
        };
        let described = Described {
            door: api_gateway_mcp::types::Door::Proxy,
            api: sent_api,
            method,
            endpoint: sent_endpoint,
            query: Vec::new(),
            headers: vec![
                ("host".into(), "localhost".into()),
                ("x-forwarded-for".into(), ip.into()),
            ],
            key: None,
            jwt: token,
            principal: None,
            ip: Some("127.0.0.1".parse().unwrap()),
            resolve: true,
            opaque_segments: false,
        };
        let doc = explainer.explain(&described).await.unwrap();
        let said = if doc["decision"] == "admitted" {
            json!({"decision": "admitted"})
        } else {
            json!({"decision": "refused", "status": doc["status"], "reason": doc["reason"], "stage": doc["stage"], "rule": doc["rule"]})
        };
        assert_eq!(said, door, "{api} {} {endpoint} as {ip}", described.method);
        checked += 1;
    }
    assert_eq!(checked, 2000);
}

/// `POST /explain` on the admin listener answers the same document as the CLI, for admins
/// only: no credential is 401, a caller without `[admin] role` 403.
#[tokio::test]
async fn the_admin_listener_explains_for_admins_only() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(config(up.port, "[admin]\nrole = \"gatekeeper\"\n"));
    let url = format!("http://127.0.0.1:{}/explain", gw.admin);
    let c = reqwest::Client::new();
    let ask = json!({"door": "proxy", "api": "local", "method": "DELETE", "endpoint": "/records/7",
                     "principal": {"subject": "wanda", "roles": ["writer"]}});
    let r = c.post(&url).json(&ask).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let writer = format!("Bearer {}", jwt(json!({"sub": "w", "roles": ["writer"]})));
    let r = c
        .post(&url)
        .header("Authorization", &writer)
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["rule"], "admin.role", "{p}");
    let admin = format!(
        "Bearer {}",
        jwt(json!({"sub": "ops", "roles": ["gatekeeper"]}))
    );
    let r = c
        .post(&url)
        .header("Authorization", &admin)
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(
        (
            doc["decision"].as_str(),
            doc["rule"].as_str(),
            doc["principal_asserted"].as_bool()
        ),
        (Some("refused"), Some("rbac.roles[0].deny[0]"), Some(true)),
        "{doc}"
    );
    let (_, cli) = explain(&gw, WANDA_DELETES);
    assert_eq!(doc, cli, "the admin listener and the CLI say the same");
    // A malformed description is a 400 with the reason.
    let r = c
        .post(&url)
        .header("Authorization", &admin)
        .body("{\"door\": \"tunnel\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Health and metrics stay open.
    assert_eq!(
        c.get(format!("http://127.0.0.1:{}/healthz", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(up.count(), 0);
}

/// Replay: 200 calls recorded under one config, judged again by a stricter one: the output
/// lists exactly the calls the new rule refuses, counted by that rule.
#[tokio::test]
async fn replay_lists_exactly_the_calls_a_stricter_config_refuses() {
    let up = Upstream::start();
    let mut gw = Gateway::start_generated(config(up.port, ""));
    let auth = format!(
        "Bearer {}",
        jwt(json!({"sub": "wanda", "roles": ["writer"]}))
    );
    let c = reqwest::Client::new();
    let mut expected = std::collections::BTreeSet::new();
    for i in 0..200 {
        let (method, path) = match i % 4 {
            0 => (reqwest::Method::GET, format!("/local/other/{i}")),
            1 => (reqwest::Method::GET, format!("/local/records/{i}")),
            2 => (reqwest::Method::DELETE, format!("/local/records/{i}")),
            _ => (reqwest::Method::DELETE, format!("/local/other/{i}")),
        };
        let r = c
            .request(method, gw.proxy_url(&path))
            .header("Host", "localhost")
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            if i % 4 == 2 { 403 } else { 200 },
            "{path}"
        );
        if i % 4 == 0 {
            expected.insert(path);
        }
    }
    terminate(&mut gw);
    let audit = gw.config_path.parent().unwrap().join("audit.jsonl");
    // The candidate also refuses GET under /other.
    let stricter = std::fs::read_to_string(&gw.config_path).unwrap().replace(
        "deny = [{ api = \"local\", methods = [\"DELETE\"], paths = [\"/records/**\"] }]",
        "deny = [{ api = \"local\", methods = [\"DELETE\"], paths = [\"/records/**\"] }, \
         { api = \"local\", methods = [\"GET\"], paths = [\"/other/**\"] }]",
    );
    let candidate = gw.config_path.with_file_name("candidate.toml");
    std::fs::write(&candidate, stricter).unwrap();
    let out = Command::new(bin())
        .args(["explain", "--replay"])
        .arg(&audit)
        .arg("--config")
        .arg(&candidate)
        .arg("--json")
        .env("AGM_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["replayed"], 200, "{doc}");
    let listed: std::collections::BTreeSet<String> = doc["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(
        doc["by_rule"],
        json!({"rbac.roles[0].deny[1]": 50}),
        "{doc}"
    );
    assert!(doc["calls"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["was"]["decision"] == "admitted" && c["now"]["reason"] == "not_permitted"));
    // The recorded config itself changes nothing.
    let same = Command::new(bin())
        .args(["explain", "--replay"])
        .arg(&audit)
        .arg("--config")
        .arg(&gw.config_path)
        .env("AGM_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
}

/// The value of the shadow-decision counter for one rule (label order aside).
async fn shadow_count(gw: &Gateway, rule: &str) -> f64 {
    scrape(gw)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("api_policy_shadow_decisions_total{")
                && l.contains(&format!("rule=\"{rule}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`shadow_count`] once it has reached `want`, or after 5 s: the doors count after the
/// answer has gone out.
async fn shadow_count_at(gw: &Gateway, rule: &str, want: f64) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = shadow_count(gw, rule).await;
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Shadow mode: the deny rule set to `mode = "shadow"` lets the DELETE through, once, and the
/// would-be refusal is counted, audited and shown by explain; a shadowed limit of 2 per
/// minute admits 5 calls and counts 3 would-be refusals.
#[tokio::test]
async fn shadow_rules_are_evaluated_never_enforced() {
    let up = Upstream::start();
    let shadowed = |(m, p, a): (u16, u16, u16)| {
        config(up.port, "")((m, p, a))
            .replace(
                "paths = [\"/records/**\"] }]",
                "paths = [\"/records/**\"], mode = \"shadow\" }]",
            )
            .replace(
                "credentials = { query",
                "rate_limit = { requests = 2, window = \"1m\", mode = \"shadow\" }\ncredentials = { query",
            )
            + &format!(
                "\n[[apis]]\nname = \"legacy\"\nbase_url = \"http://127.0.0.1:{}\"\nallow_private_network = true\n\
                 methods = [\"GET\"]\npaths = [\"/v1/**\"]\nmode = \"shadow\"\n\n\
                 [[rbac.roles]]\nname = \"legacy-user\"\nallow = [{{ api = \"legacy\" }}]\n",
                up.port
            )
    };
    let mut gw = Gateway::start_generated(shadowed);
    let auth = format!(
        "Bearer {}",
        jwt(json!({"sub": "wanda", "roles": ["writer"]}))
    );
    let r = proxy(&gw, reqwest::Method::DELETE, "/local/records/7", &auth).await;
    assert_eq!(r.status(), 200, "a shadow rule does not refuse");
    assert_eq!(up.count(), 1);
    let rule = "rbac.roles[0].deny[0]";
    assert_eq!(shadow_count_at(&gw, rule, 1.0).await, 1.0);
    // explain shows it too.
    let (code, doc) = explain(&gw, WANDA_DELETES);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["shadow"][0]["rule"], rule, "{doc}");

    // The shadowed limit: 4 more calls (5 in all), all admitted, 3 over the limit counted.
    for i in 0..4 {
        let r = proxy(&gw, reqwest::Method::GET, &format!("/local/x/{i}"), &auth).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(up.count(), 5);
    let limit_rule = "rate_limits[api.local]";
    assert_eq!(shadow_count_at(&gw, limit_rule, 3.0).await, 3.0);

    // An API in shadow mode: its method and path rules report, the call goes through.
    let legacy = format!(
        "Bearer {}",
        jwt(json!({"sub": "lee", "roles": ["legacy-user"]}))
    );
    let r = proxy(&gw, reqwest::Method::DELETE, "/legacy/v2/old", &legacy).await;
    assert_eq!(r.status(), 200);
    assert_eq!(shadow_count_at(&gw, "apis[legacy].methods", 1.0).await, 1.0);
    assert_eq!(shadow_count_at(&gw, "apis[legacy].paths", 1.0).await, 1.0);

    let audit = audit_of(&mut gw);
    let first: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"]["decision"], "allow");
    assert_eq!(
        first["event"]["shadow"],
        json!([{"stage": "authorization", "rule": rule, "reason": "not_permitted"}]),
        "{first}"
    );
}

/// `[policy] mode = "shadow"` puts every policy rule in report mode at once; the safety
/// rules (endpoint validation, the SSRF guard) still refuse.
#[tokio::test]
async fn policy_mode_shadow_reports_every_policy_rule_but_keeps_the_safety_rules() {
    let up = Upstream::start();
    let mut gw = Gateway::start_generated(config(up.port, "[policy]\nmode = \"shadow\"\n"));
    let auth = format!(
        "Bearer {}",
        jwt(json!({"sub": "wanda", "roles": ["writer"]}))
    );
    let r = proxy(&gw, reqwest::Method::DELETE, "/local/records/7", &auth).await;
    assert_eq!(r.status(), 200);
    // Sent as written (an HTTP client would normalise the dots away).
    let raw = raw_http(
        gw.proxy,
        format!("GET /local/%2e%2e/etc HTTP/1.1\r\nHost: localhost\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(
        status_of(&raw),
        400,
        "endpoint validation is never shadowed: {raw}"
    );
    assert_eq!(up.count(), 1);
    let audit = audit_of(&mut gw);
    assert!(
        audit.contains(
            "\"shadow\":[{\"reason\":\"not_permitted\",\"rule\":\"rbac.roles[0].deny[0]\""
        ),
        "{audit}"
    );
}

/// `POST /explain` reads where the caller stands against its limits without consuming: after
/// two calls of three, three explanations all say one is left, and the third call still
/// passes.
#[tokio::test]
async fn the_admin_explanation_peeks_at_limits_without_consuming() {
    let up = Upstream::start();
    let limited = move |ports: (u16, u16, u16)| {
        config(up.port, "[admin]\nrole = \"gatekeeper\"\n")(ports).replace(
            "credentials = { query",
            "rate_limit = { requests = 3, window = \"1m\" }\ncredentials = { query",
        )
    };
    let gw = Gateway::start_generated(limited);
    let c = reqwest::Client::new();
    let writer = format!(
        "Bearer {}",
        jwt(json!({"sub": "wanda", "roles": ["writer"]}))
    );
    let call = || {
        c.get(gw.proxy_url("/local/x"))
            .header("Host", "localhost")
            .header("Authorization", &writer)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(call().await.unwrap().status(), 200);
    }
    let admin = format!(
        "Bearer {}",
        jwt(json!({"sub": "ops", "roles": ["gatekeeper"]}))
    );
    let ask = json!({"door": "proxy", "api": "local", "endpoint": "/x",
                     "principal": {"subject": "wanda", "roles": ["writer"]}});
    for _ in 0..3 {
        let doc: Value = c
            .post(format!("http://127.0.0.1:{}/explain", gw.admin))
            .header("Authorization", &admin)
            .json(&ask)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["rate_limits"], json!(["api.local"]), "{doc}");
        assert_eq!(doc["rate_limit_state"][0]["remaining"], 1, "{doc}");
    }
    assert_eq!(
        call().await.unwrap().status(),
        200,
        "explaining consumed nothing"
    );
    assert_eq!(call().await.unwrap().status(), 429);
}

/// `[security] ip_mode = "shadow"`: a denied address is let through and its would-be
/// refusal recorded.
#[tokio::test]
async fn ip_rules_can_be_shadowed() {
    let up = Upstream::start();
    let mut gw = Gateway::start_generated(config(
        up.port,
        "[security]\nip_deny = [\"127.0.0.1/32\"]\nip_mode = \"shadow\"\n",
    ));
    let auth = format!(
        "Bearer {}",
        jwt(json!({"sub": "wanda", "roles": ["writer"]}))
    );
    let r = proxy(&gw, reqwest::Method::GET, "/local/x", &auth).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    let audit = audit_of(&mut gw);
    assert!(
        audit.contains("\"shadow\":[{\"reason\":\"ip_denied\",\"rule\":\"security.ip_deny[0]\",\"stage\":\"address\"}]"),
        "{audit}"
    );
}
