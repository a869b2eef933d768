//! Prometheus metrics on the admin listener, driven through both doors.

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn calls_refusals_and_latency_are_counted_per_door() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let c = reqwest::Client::new();
    for _ in 0..2 {
        assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 200);
    }
    assert_eq!(
        c.delete(gw.proxy_url("/local/x"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let expired = jwt(json!({"exp": now_s() - 120, "iat": now_s() - 600}));
    let r = c
        .get(gw.proxy_url("/local/x"))
        .header("authorization", format!("Bearer {expired}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(get_status(&c, &gw.proxy_url("/guarded/x")).await, 403);
    assert_eq!(get_status(&c, &gw.proxy_url("/no-such-api/x")).await, 404);

    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/y"}))
        .await;
    assert_eq!(r["isError"], false);
    let r = s
        .call(
            "api_gateway",
            json!({"api": "local", "endpoint": "/../etc"}),
        )
        .await;
    assert_eq!(r["isError"], true);
    // An MCP request refused before any tool (a bad token) is counted too.
    let r = c
        .post(gw.mcp_url())
        .header("authorization", format!("Bearer {expired}"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let m = |series: &'static str, want: f64| counter_at(&gw, series, want);
    assert_eq!(
        m(
            "api_calls_total{api=\"local\",door=\"proxy\",method=\"GET\",status=\"200\"}",
            2.0
        )
        .await,
        2.0
    );
    assert_eq!(
        m(
            "api_calls_total{api=\"local\",door=\"proxy\",method=\"DELETE\",status=\"403\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        m(
            "api_calls_total{api=\"local\",door=\"mcp\",method=\"GET\",status=\"200\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        m(
            "api_calls_total{api=\"unknown\",door=\"proxy\",method=\"GET\",status=\"404\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        m(
            "api_response_time_seconds_count{api=\"local\",door=\"proxy\"}",
            4.0
        )
        .await,
        4.0
    );
    assert_eq!(
        m(
            "api_errors_total{api=\"local\",door=\"mcp\",error=\"invalid_endpoint\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        m(
            "api_auth_failures_total{door=\"proxy\",reason=\"token_expired\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        m(
            "api_auth_failures_total{door=\"mcp\",reason=\"token_expired\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(m("api_token_expired_total{door=\"proxy\"}", 1.0).await, 1.0);
    assert_eq!(
        m(
            "api_policy_denials_total{door=\"proxy\",reason=\"egress_denied\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        m(
            "api_policy_denials_total{door=\"proxy\",reason=\"method_not_allowed\"}",
            1.0
        )
        .await,
        1.0
    );
    // Only the calls that reached the upstream count as upstream requests; the proxy door's
    // second call goes over the pooled connection of the first.
    let fresh = m(
        "api_upstream_requests_total{api=\"local\",door=\"proxy\",reused=\"false\"}",
        1.0,
    )
    .await;
    let reused = m(
        "api_upstream_requests_total{api=\"local\",door=\"proxy\",reused=\"true\"}",
        1.0,
    )
    .await;
    assert_eq!((fresh, reused), (1.0, 1.0));
    let mcp_total = metric(
        &gw,
        "api_upstream_requests_total{api=\"local\",door=\"mcp\",reused=\"false\"}",
    )
    .await
        + metric(
            &gw,
            "api_upstream_requests_total{api=\"local\",door=\"mcp\",reused=\"true\"}",
        )
        .await;
    assert_eq!(mcp_total, 1.0);
    // Secrets never become label values.
    let text = scrape(&gw).await;
    assert!(!text.contains(&expired) && !text.contains(SECRET));
}

#[tokio::test]
async fn rate_limit_violations_are_counted_by_policy() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|ports| {
        format!(
            "{}{}",
            server_section(ports, 1),
            loopback_get_api(
                "local",
                up.port,
                "rate_limit = { requests = 2, window = \"1m\" }\ncost_per_call = 0.25"
            )
        )
    });
    let c = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get_status(&c, &gw.proxy_url("/local/x")).await);
    }
    assert_eq!(statuses, vec![200, 200, 429, 429, 429]);
    assert_eq!(
        counter_at(
            &gw,
            "api_rate_limit_violations_total{api=\"local\",door=\"proxy\",policy=\"api.local\"}",
            3.0
        )
        .await,
        3.0
    );
    // Business metric: only admitted calls cost anything.
    assert_eq!(
        counter_at(&gw, "api_cost_total{api=\"local\"}", 0.5).await,
        0.5
    );
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (scripts/setup.sh installs Debian's prometheus)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `promtool check metrics` accepts a live scrape; the alert rules are valid and their unit
/// tests (deploy/prometheus/alerts_test.yaml) pass.
#[tokio::test]
async fn promtool_accepts_the_metrics_and_the_alert_rules() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let c = reqwest::Client::new();
    assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 200);
    assert_eq!(get_status(&c, &gw.proxy_url("/guarded/x")).await, 403);
    let scrape = scrape(&gw).await;
    assert!(scrape.contains("api_calls_total"), "{scrape}");
    let (ok, out) = promtool(&["check", "metrics"], Some(&scrape));
    assert!(ok, "promtool check metrics: {out}");
    let (ok, out) = promtool(&["check", "rules", "alerts.yaml"], None);
    assert!(ok && out.contains("10 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yaml"], None);
    assert!(ok, "{out}");
    // Every metric the rules use is one the gateway exports.
    let names = api_gateway_mcp::telemetry::metrics().names();
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yaml"
    ))
    .unwrap();
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:") || l.contains("(api_"))
    {
        for name in line
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("api_") && w.len() > 4)
        {
            let base = name.trim_end_matches("_bucket");
            assert!(
                names.iter().any(|n| n == base),
                "{name} in the alert rules is not exported"
            );
        }
    }
}

/// The Grafana dashboard's queries are valid PromQL (checked by promtool as recording rules)
/// and use only metrics the gateway exports.
#[tokio::test]
async fn the_dashboard_queries_are_valid_and_use_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/api-gateway-mcp.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().replace("$api", ".*"))
        .collect();
    assert!(
        exprs.len() >= 15,
        "performance, security and business panels"
    );

    let names = api_gateway_mcp::telemetry::metrics().names();
    let exported: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    assert!(exported.contains("api_calls_total") && exported.len() >= 13);
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("api_") && w.len() > 4)
        {
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(exported.contains(base), "{name} in {e:?} is not exported");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"record": format!("dashboard:panel_{i}"), "expr": e}))
        .collect();
    let file = dir.path().join("dashboard_rules.json");
    // JSON is YAML, so promtool reads this as a rules file.
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    let (ok, out) = promtool(&["check", "rules", file.to_str().unwrap()], None);
    assert!(ok, "{out}");
}

/// `metrics.principal_label`: calls and cost per principal, with the label capped at
/// `max_principals` values; later principals share `other`.
#[tokio::test]
async fn principal_label_is_opt_in_and_capped() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|ports| {
        format!(
            "{}[metrics]\nprincipal_label = true\nmax_principals = 1\n\n{}",
            server_section(ports, 1),
            loopback_get_api("local", up.port, "cost_per_call = 0.5")
        )
    });
    let c = reqwest::Client::new();
    let url = gw.proxy_url("/local/x");
    for _ in 0..2 {
        assert_eq!(get_status_with(&c, &url, ("x-api-key", API_KEY)).await, 200);
    }
    let bearer = format!("Bearer {}", jwt(json!({})));
    assert_eq!(
        get_status_with(&c, &url, ("authorization", &bearer)).await,
        200
    );
    assert_eq!(get_status(&c, &url).await, 200);
    let m = |series: &'static str, want: f64| counter_at(&gw, series, want);
    assert_eq!(
        m(
            "api_principal_calls_total{api=\"local\",principal=\"key:suite\"}",
            2.0
        )
        .await,
        2.0
    );
    assert_eq!(
        m(
            "api_principal_cost_total{api=\"local\",principal=\"key:suite\"}",
            1.0
        )
        .await,
        1.0
    );
    // alice and anonymous came after the cap: one shared series.
    assert_eq!(
        m(
            "api_principal_calls_total{api=\"local\",principal=\"other\"}",
            2.0
        )
        .await,
        2.0
    );
    let text = scrape(&gw).await;
    assert!(!text.contains("alice") && !text.contains("principal=\"anonymous\""));
}

/// Without the opt-in, no per-principal series exists.
#[tokio::test]
async fn principal_label_is_off_by_default() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|ports| {
        format!(
            "{}{}",
            server_section(ports, 1),
            loopback_get_api("local", up.port, "")
        )
    });
    let c = reqwest::Client::new();
    let url = gw.proxy_url("/local/x");
    assert_eq!(get_status_with(&c, &url, ("x-api-key", API_KEY)).await, 200);
    assert_eq!(
        counter_at(
            &gw,
            "api_upstream_requests_total{api=\"local\",door=\"proxy\",reused=\"false\"}",
            1.0
        )
        .await,
        1.0
    );
    assert!(!scrape(&gw).await.contains("principal=\"key:suite\""));
}
