//! The README's Quickstart, run as written: every shell block marked `sh runnable` is run
//! against the gateway on its embedded defaults (ports moved to free ones), so the first
//! steps a newcomer takes cannot rot. Also the start-up banner.

mod common;

use common::*;

/// The README's runnable shell blocks, in order.
fn runnable_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match &mut current {
            None if line.trim_end() == "```sh runnable" => current = Some(String::new()),
            Some(b) if line.trim_end() == "```" => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_quickstart_runs_as_written_against_the_embedded_defaults() {
    let blocks = runnable_blocks();
    assert!(
        blocks.len() >= 3,
        "expected the Quickstart's runnable blocks, found {}",
        blocks.len()
    );
    let demo = free_port();
    let gw = Gateway::start_generated(|(mcp, proxy, admin)| {
        api_gateway_mcp::config::EMBEDDED_DEFAULT
            .replace("127.0.0.1:3000", &format!("127.0.0.1:{mcp}"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{proxy}"))
            .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin}"))
            .replace("127.0.0.1:18081", &format!("127.0.0.1:{demo}"))
    });
    // The banner says where each door is and what to try.
    let log = gw.log();
    for want in [
        format!("MCP door    http://127.0.0.1:{}/mcp", gw.mcp),
        format!("demo        http://127.0.0.1:{demo}"),
        "auth        off".to_string(),
        format!(
            "curl -s 'http://127.0.0.1:{}/demo/hello?name=world'",
            gw.proxy
        ),
    ] {
        assert!(log.contains(&want), "banner lacks {want:?}:\n{log}");
    }
    // Logs written to a file carry no colour codes.
    assert!(!log.contains('\u{1b}'), "{log}");
    for (i, block) in blocks.iter().enumerate() {
        let script = block
            .replace("127.0.0.1:3000", &format!("127.0.0.1:{}", gw.mcp))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", gw.proxy))
            .replace("127.0.0.1:9090", &format!("127.0.0.1:{}", gw.admin));
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README block {i} failed:\n{script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
