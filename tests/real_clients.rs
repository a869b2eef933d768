//! Real MCP clients against the real gateway, over Streamable HTTP and over stdio:
//! the official TypeScript SDK, the Python `mcp` package (legacy and `mode="auto"`, which
//! negotiates 2026-07-28 through `server/discover`), and the MCP Inspector CLI.
//!
//! The clients are installed by `scripts/setup.sh` into `.tools/` (or `$AGM_TOOLS`).

mod common;
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("client failed to start")
}

fn last_json_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in client output: {stdout}"));
    serde_json::from_str(line).unwrap()
}

/// A config file for `stdio`, pointing at the upstream.
fn stdio_config(dir: &tempfile::TempDir, up: u16) -> PathBuf {
    let path = dir.path().join("stdio.toml");
    // Stdio clients start the server with a filtered environment, so the secret is written
    // into the file rather than taken from ${AGM_TEST_SECRET}.
    let text = test_config(up, free_port(), free_port(), free_port())
        .replace("${AGM_TEST_SECRET}", SECRET);
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_client_result(v: &Value, up: &Upstream, marker: &str) {
    let tools: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tools, vec!["api_gateway", "list_apis"], "{v}");
    assert_eq!(v["ok"]["isError"], false, "{v}");
    assert_eq!(v["ok"]["structured"]["status"], 200, "{v}");
    assert_eq!(v["ok"]["structured"]["data"]["ok"], true, "{v}");
    assert_eq!(v["denied"]["isError"], true, "{v}");
    let code = v["denied"]["structured"]["error"].as_str().unwrap();
    assert!(code == "forbidden" || code == "invalid_endpoint", "{v}");
    let seen = up.seen();
    assert_eq!(
        seen.len(),
        1,
        "only the allowed call may reach the upstream: {seen:?}"
    );
    assert!(
        seen[0].target.starts_with(&format!("/base/{marker}")),
        "{seen:?}"
    );
    assert_eq!(seen[0].header("x-upstream-key"), Some(SECRET));
}

fn ts(args: &[&str]) -> Output {
    ts_env(args, &[])
}

fn py(args: &[&str]) -> Output {
    py_env(args, &[])
}

#[test]
fn typescript_sdk_over_http() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let v = last_json_line(&ts(&["http", &gw.mcp_url()]));
    assert_client_result(&v, &up, "from-ts");
    assert_eq!(up.seen()[0].body, br#"{"n":1}"#);
}

#[test]
fn typescript_sdk_over_stdio() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = stdio_config(&dir, up.port);
    let v = last_json_line(&ts(&["stdio", bin(), cfg.to_str().unwrap()]));
    assert_client_result(&v, &up, "from-ts");
}

#[test]
fn python_sdk_over_http_legacy_and_auto() {
    for mode in ["legacy", "auto"] {
        let up = Upstream::start();
        let gw = Gateway::start(up.port);
        let v = last_json_line(&py(&["http", &gw.mcp_url(), mode]));
        assert_client_result(&v, &up, "from-python");
        let protocol = v["protocol"].as_str().unwrap();
        if mode == "auto" {
            assert_eq!(
                protocol, "2026-07-28",
                "auto mode must negotiate the stateless era: {v}"
            );
        } else {
            assert!(protocol < "2026-07-28", "legacy mode used {protocol}");
        }
    }
}

#[test]
fn python_sdk_over_stdio_legacy_and_auto() {
    for mode in ["legacy", "auto"] {
        let up = Upstream::start();
        let dir = tempfile::tempdir().unwrap();
        let cfg = stdio_config(&dir, up.port);
        let v = last_json_line(&py(&["stdio", mode, bin(), cfg.to_str().unwrap()]));
        assert_client_result(&v, &up, "from-python");
    }
}

fn inspector(target: &[&str], args: &[&str], home: &tempfile::TempDir) -> Output {
    let t = tools_dir();
    let launcher =
        t.join("node/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js");
    let mut cmd = Command::new(t.join("node-bin"));
    cmd.arg(launcher)
        .arg("--cli")
        .args(target)
        .args(args)
        .env("HOME", home.path())
        .env("MCP_CATALOG_PATH", home.path().join("catalog.json"))
        .env("AGM_TEST_SECRET", SECRET);
    run(cmd)
}

fn inspector_checks(target: &[&str], up: &Upstream) {
    let home = tempfile::tempdir().unwrap();
    let out = inspector(target, &["--method", "tools/list"], &home);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "tools/list: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("api_gateway") && stdout.contains("list_apis"),
        "{stdout}"
    );

    let out = inspector(
        target,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "api_gateway",
            "--tool-arg",
            "api=local",
            "endpoint=/from-inspector",
        ],
        &home,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "tools/call: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"status\": 200") || stdout.contains("\"status\":200"),
        "{stdout}"
    );
    assert!(
        up.seen().iter().any(|s| s.target == "/base/from-inspector"),
        "{:?}",
        up.seen()
    );

    // An unknown tool is a protocol error, and the CLI must say so with a failing exit code.
    let out = inspector(
        target,
        &["--method", "tools/call", "--tool-name", "no_such_tool"],
        &home,
    );
    assert_ne!(
        out.status.code(),
        Some(0),
        "unknown tool must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn inspector_cli_over_http() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    inspector_checks(&[&gw.mcp_url(), "--transport", "http"], &up);
}

#[test]
fn inspector_cli_over_stdio() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = stdio_config(&dir, up.port);
    inspector_checks(
        &[
            "--transport",
            "stdio",
            bin(),
            "stdio",
            "-c",
            cfg.to_str().unwrap(),
        ],
        &up,
    );
}

/// The standard test config with authentication required.
fn auth_required(config: String) -> String {
    let optional = "[auth]\nrequired = false\n";
    assert!(config.contains(optional));
    config.replace(optional, "[auth]\nrequired = true\n")
}

fn with_env(mut out: Command, vars: &[(&str, &str)]) -> Output {
    out.envs(vars.iter().copied());
    run(out)
}

fn py_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(tools_dir().join("venv/bin/python"));
    cmd.arg(clients_dir().join("py_client.py")).args(args);
    with_env(cmd, vars)
}

fn ts_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let t = tools_dir();
    let script = t.join("node/ts_client.mjs");
    std::fs::copy(clients_dir().join("ts_client.mjs"), &script).unwrap();
    let mut cmd = Command::new(t.join("node-bin"));
    cmd.arg(&script).args(args);
    with_env(cmd, vars)
}

/// With `auth.required = true`, every real client gets in with a bearer token (over HTTP as
/// `Authorization`, over stdio from API_GATEWAY_MCP_TOKEN), is refused without one, and its
/// token never reaches the upstream.
#[test]
fn real_clients_authenticate_with_bearer_tokens() {
    let token = jwt(serde_json::json!({"sub": "agent-7"}));
    let bearer = [("MCP_BEARER", token.as_str())];

    let up = Upstream::start();
    let gw = Gateway::start_generated(|(m, p, a)| auth_required(test_config(up.port, m, p, a)));
    let v = last_json_line(&py_env(&["http", &gw.mcp_url(), "auto"], &bearer));
    assert_client_result(&v, &up, "from-python");
    up.clear();
    let v = last_json_line(&ts_env(&["http", &gw.mcp_url()], &bearer));
    assert_client_result(&v, &up, "from-ts");
    up.clear();

    let refused = py_env(&["http", &gw.mcp_url(), "legacy"], &[]);
    assert!(
        !refused.status.success(),
        "a client without a token must be refused"
    );
    let refused = ts_env(&["http", &gw.mcp_url()], &[]);
    assert!(
        !refused.status.success(),
        "a client without a token must be refused"
    );
    assert_eq!(up.count(), 0);

    // The Inspector CLI with --header.
    let home = tempfile::tempdir().unwrap();
    let header = format!("Authorization: Bearer {token}");
    let out = inspector(
        &[&gw.mcp_url(), "--transport", "http", "--header", &header],
        &["--method", "tools/list"],
        &home,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("api_gateway"),
        "{stdout}"
    );
    let out = inspector(
        &[&gw.mcp_url(), "--transport", "http"],
        &["--method", "tools/list"],
        &home,
    );
    assert!(
        !out.status.success(),
        "the Inspector without a token must be refused"
    );

    // Stdio: the token comes from the environment the client gives the server.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stdio-auth.toml");
    let text = auth_required(test_config(up.port, free_port(), free_port(), free_port()))
        .replace("${AGM_TEST_SECRET}", SECRET);
    std::fs::write(&path, text).unwrap();
    let v = last_json_line(&py_env(
        &["stdio", "auto", bin(), path.to_str().unwrap()],
        &bearer,
    ));
    assert_client_result(&v, &up, "from-python");
    up.clear();
    let v = last_json_line(&ts_env(&["stdio", bin(), path.to_str().unwrap()], &bearer));
    assert_client_result(&v, &up, "from-ts");
    let refused = py_env(&["stdio", "legacy", bin(), path.to_str().unwrap()], &[]);
    assert!(
        !refused.status.success(),
        "a stdio server without credentials must refuse to serve"
    );

    for s in up.seen() {
        assert_eq!(s.header("authorization"), None);
        assert!(!format!("{s:?}").contains(&token));
    }
}
