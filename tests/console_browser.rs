//! The admin console in a real browser: headless Chromium (the distribution's package),
//! driven by playwright-core from `tests/clients/console_browser.mjs`, against the real
//! binary. Screenshots of every page land in `target/console-screenshots/`.

mod common;

use common::*;

/// Logs in, watches an MCP refusal reach the decision stream within 2 s and its explain
/// name the same rule, resets a full limit, approves a held call, verifies an edited audit
/// trail, and finds the upstream secret in no page.
#[tokio::test]
async fn the_console_in_a_browser() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|p| console_config(up.port, p));
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new(tools_dir().join("node-bin"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/console_browser.mjs"
        ))
        .env("CONSOLE_URL", format!("http://127.0.0.1:{}", gw.admin))
        .env("PROXY_URL", gw.proxy_url(""))
        .env("MCP_URL", gw.mcp_url())
        .env("ADMIN_KEY", CONSOLE_ADMIN_KEY)
        .env("READER_KEY", API_KEY)
        .env("UPSTREAM_SECRET", SECRET)
        .env("AUDIT_PATH", gw.config_path.with_file_name("audit.jsonl"))
        .env("SHOTS", &shots)
        .env("NODE_MODULES", tools_dir().join("node/node_modules"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), out)
        .await
        .expect("the browser test finished within 2 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", gw.log());
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    eprintln!("console browser test: {summary}");
    assert!(
        summary["decision_to_page_ms"].as_u64().unwrap() <= 2000,
        "{summary}"
    );
    for page in [
        "login",
        "apis",
        "decisions",
        "explain",
        "limits",
        "approvals",
        "usage",
        "config",
        "audit",
        "audit-broken",
    ] {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5000,
            "{}",
            png.display()
        );
    }
}
