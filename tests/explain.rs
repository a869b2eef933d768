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

    let r = reqwest::Client::new()
        .delete(gw.proxy_url("/local/records/7"))
        .header("Host", "localhost")
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        (
            p["reason"].as_str(),
            p["stage"].as_str(),
            p["rule"].as_str()
        ),
        (
            Some("not_permitted"),
            Some("authorization"),
            Some("rbac.roles[0].deny[0]")
        ),
        "{p}"
    );
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
    assert_eq!(
        (
            doc["decision"].as_str(),
            doc["stage"].as_str(),
            doc["rule"].as_str()
        ),
        (
            Some("refused"),
            Some("authorization"),
            Some("rbac.roles[0].deny[0]")
        ),
        "{doc}"
    );
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
        json!({"placement": "query", "name": "appid"})
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

    terminate(&mut gw);
    let audit =
        std::fs::read_to_string(gw.config_path.parent().unwrap().join("audit.jsonl")).unwrap();
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
        let p: Value = reqwest::Client::new()
            .delete(gw.proxy_url("/local/records/7"))
            .header("Host", "localhost")
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap()
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
