//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, installed by
//! `scripts/setup.sh`) against the real gateway, one server scenario at a time. A scenario
//! passes when none of its checks fails, except checks the suite marks "Not testable" because
//! the server does not carry the suite's own fixture tools (`test_logging_tool` and the like):
//! a gateway exposes its APIs, not test fixtures.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// The scenarios the gateway must pass, in both protocol eras: the legacy handshake and
/// sessions (2025-11-25), and the stateless 2026-07-28 wire with its header rules.
const SCENARIOS: &[&str] = &[
    "server-initialize",
    "server-session-lifecycle",
    "server-stateless",
    "tools-list",
    "dns-rebinding-protection",
    "http-header-validation",
    "server-sse-multiple-streams",
];

#[test]
fn the_official_conformance_scenarios_pass() {
    let tools = tools_dir();
    let suite = tools.join("node/node_modules/@modelcontextprotocol/conformance/dist/index.js");
    assert!(
        suite.exists(),
        "run scripts/setup.sh: {} is missing",
        suite.display()
    );
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let out = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for scenario in SCENARIOS {
        let dir = out.path().join(scenario);
        let run = Command::new(tools.join("node-bin"))
            .arg(&suite)
            .args([
                "server",
                "--url",
                &gw.mcp_url(),
                "--scenario",
                scenario,
                "-o",
            ])
            .arg(&dir)
            .output()
            .expect("the conformance suite starts");
        let stdout = String::from_utf8_lossy(&run.stdout);
        // The suite writes DIR/server-<scenario>-<timestamp>/checks.json.
        let checks_file = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{scenario}: no results ({e}):\n{stdout}"))
            .flatten()
            .map(|e| e.path().join("checks.json"))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{scenario}: no checks.json:\n{stdout}"));
        let checks: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&checks_file).unwrap()).unwrap();
        let count = |status: &str| checks.iter().filter(|c| c["status"] == status).count();
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| c["status"] == "FAILURE")
            .filter(|c| {
                !c["errorMessage"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Not testable"))
            })
            .map(|c| format!("{}: {}", c["id"], c["errorMessage"]))
            .collect();
        assert!(
            failed.is_empty(),
            "{scenario} failed:\n{}\n{stdout}",
            failed.join("\n")
        );
        assert!(
            count("SUCCESS") > 0,
            "{scenario}: nothing was checked:\n{stdout}"
        );
        report.push(format!("{scenario}: {} passed", count("SUCCESS")));
    }
    eprintln!("{}", report.join("\n"));
}
