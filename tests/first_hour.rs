//! What a newcomer meets in the first hour: config errors that point at the fix, refusal log
//! lines an operator can act on (text and JSON), and `token` for trying bearer auth.

mod common;

use common::*;
use serde_json::Value;

fn check(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

const API: &str = "[auth]\nrequired = false\n[[apis]]\nname = \"a\"\nbase_url = \"https://example.com\"\npaths = [\"/**\"]\n";

#[test]
fn config_errors_point_at_the_fix() {
    // A syntax error: the line, the column and the line itself.
    let out = check("[server]\nthreads = 2\nmcp_listen = \"127.0.0.1:3000\n");
    assert!(out.contains("invalid TOML at line 3, column"), "{out}");
    assert!(
        out.contains("    3 | mcp_listen = \"127.0.0.1:3000"),
        "{out}"
    );
    assert!(out.contains('^'), "{out}");
    // A typo: did you mean.
    let out = check(&format!("{API}tmeout = \"5s\"\n"));
    assert!(
        out.contains("apis[0].tmeout: unknown key (did you mean `timeout`?)"),
        "{out}"
    );
    // A wrong type, in words.
    let out = check(&format!("[server]\nthreads = \"two\"\n{API}"));
    assert!(
        out.contains("server.threads") && out.contains("expected a whole number"),
        "{out}"
    );
    // A base URL without a scheme says what one looks like.
    let out = check("[auth]\nrequired = false\n[[apis]]\nname = \"a\"\nbase_url = \"api.example.com\"\npaths = [\"/**\"]\n");
    assert!(
        out.contains("apis[0].base_url") && out.contains("https://api.example.com/v1"),
        "{out}"
    );
    // The demo upstream stays on this machine.
    let out = check(&format!("{API}[demo]\nlisten = \"0.0.0.0:18081\"\n"));
    assert!(
        out.contains("demo.listen: must be a loopback address"),
        "{out}"
    );
}

/// `token` mints a token the config's issuer accepts; the refusal and the success are logged
/// as JSON lines with the request id, door, API, method, path, principal and reason.
#[tokio::test]
async fn a_minted_token_is_accepted_and_refusals_are_logged_as_json() {
    let up = Upstream::start();
    let gw = Gateway::start_generated_env(
        |ports| {
            format!(
                "{}{}[log]\nformat = \"json\"\n{}",
                listen_section(ports, 2),
                auth_section(true),
                loopback_get_api("local", up.port, "")
            )
        },
        &[("RUST_LOG", "info")],
    );
    let out = std::process::Command::new(bin())
        .args(["token", "-c"])
        .arg(&gw.config_path)
        .args(["--sub", "zed", "--roles", "reader,ops", "--ttl", "10m"])
        .env("JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let claims: Value = {
        use base64::Engine;
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["sub"], "zed");
    assert_eq!(claims["roles"], serde_json::json!(["reader", "ops"]));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        600
    );
    let c = reqwest::Client::new();
    let ok = c
        .get(gw.proxy_url("/local/x"))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = c
        .delete(gw.proxy_url("/local/secret?token=abc"))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // Without the secret: a clear error.
    let out = std::process::Command::new(bin())
        .args(["token", "-c"])
        .arg(&gw.config_path)
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--secret-env"),
        "{out:?}"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let line = loop {
        let log = gw.log();
        let lines: Vec<Value> = log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
            .collect();
        if let Some(l) = lines.into_iter().find(|l| l["message"] == "call refused") {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal line in {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(line["door"], "proxy", "{line}");
    assert_eq!(line["api"], "local");
    assert_eq!(line["method"], "DELETE");
    assert_eq!(
        line["path"], "/local/secret?token=*",
        "query values are redacted: {line}"
    );
    assert_eq!(line["principal"], "jwt:zed");
    assert_eq!(line["reason"], "method_not_allowed");
    assert_eq!(line["status"], 403);
    assert_eq!(
        line["request_id"].as_str().map(str::len),
        Some(16),
        "{line}"
    );
    // The request id is the audit record's.
    let audit =
        std::fs::read_to_string(gw.config_path.with_file_name("audit.jsonl")).unwrap_or_default();
    assert!(
        audit.contains(line["request_id"].as_str().unwrap()),
        "{audit}"
    );
}

/// `list_apis` shows every limit that applies to the caller (the API's, per user, per key,
/// per endpoint) and leaves out the ones that do not (no nulls).
#[tokio::test]
async fn list_apis_shows_each_limit_that_applies_and_no_nulls() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|ports| {
        format!(
            "{}[auth]\nrequired = false\nmethods = [\"api_key\"]\n[[auth.api_keys]]\nname = \"ci\"\nkey_sha256 = \"{}\"\n\
             rate_limit = {{ requests = 7, window = \"1m\" }}\n[rate_limits]\nper_user = {{ requests = 50, window = \"1m\" }}\n{}{}",
            listen_section(ports, 2),
            sha256_hex(API_KEY),
            loopback_get_api(
                "limited",
                up.port,
                "rate_limit = { requests = 100, window = \"1m\" }\n\
                 endpoint_rate_limits = [{ path = \"/search/**\", requests = 5, window = \"1m\" }]"
            ),
            loopback_get_api("plain", up.port, ""),
        )
    });
    let mut keyed = McpSession::connect_with(&gw.mcp_url(), &[("x-api-key", API_KEY)]).await;
    let r = keyed.call("list_apis", serde_json::json!({})).await;
    let apis = r["structuredContent"]["apis"].as_array().unwrap().clone();
    let limited = apis.iter().find(|a| a["name"] == "limited").unwrap();
    assert_eq!(limited["rate_limit"]["requests"], 100, "{limited}");
    assert_eq!(limited["per_user_rate_limit"]["requests"], 50);
    assert_eq!(limited["per_key_rate_limit"]["requests"], 7);
    assert_eq!(limited["endpoint_rate_limits"][0]["path"], "/search/**");
    assert_eq!(limited["endpoint_rate_limits"][0]["policy"]["requests"], 5);
    let plain = apis.iter().find(|a| a["name"] == "plain").unwrap();
    assert!(
        plain.get("rate_limit").is_none() && plain.get("endpoint_rate_limits").is_none(),
        "{plain}"
    );
    assert!(!r.to_string().contains("null"), "{r}");
    // An anonymous caller has no key limit.
    let mut anon = McpSession::connect(&gw.mcp_url()).await;
    let r = anon.call("list_apis", serde_json::json!({})).await;
    assert!(
        r["structuredContent"]["apis"][0]
            .get("per_key_rate_limit")
            .is_none(),
        "{r}"
    );
}
