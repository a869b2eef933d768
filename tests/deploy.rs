//! The deployment artefacts: Kubernetes manifests validated against the schemas, the configs
//! they and the container image carry accepted by `check`, and the image's health check.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv_bin(name: &str) -> PathBuf {
    let tools = std::env::var_os("AGM_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools"));
    tools.join("venv/bin").join(name)
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict"])
        .args(files)
        .output()
        .expect("kubernetes-validate must be installed (scripts/setup.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn every_manifest_passes_kubernetes_validate_and_a_broken_one_does_not() {
    let files = manifests();
    assert!(files.len() >= 2, "sidecar and shared-gateway manifests");
    let (ok, out) = validate(&files);
    assert!(ok, "{out}");
    // The validator really checks: a wrong type is refused.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/gateway.yaml")).unwrap();
    std::fs::write(&broken, text.replacen("replicas: 3", "replicas: three", 1)).unwrap();
    let (ok, out) = validate(&[broken]);
    assert!(!ok, "a broken manifest must fail: {out}");
}

/// Every gateway config shipped inside a ConfigMap, and the image's default config, passes
/// `api-gateway-mcp check`.
#[test]
fn shipped_gateway_configs_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs: Vec<PathBuf> = vec![root().join("docker/gateway.toml")];
    for (i, m) in manifests().iter().enumerate() {
        // PyYAML comes with kubernetes-validate.
        let script = "import sys, yaml\n\
            for d in yaml.safe_load_all(open(sys.argv[1])):\n\
            \x20   if d and d.get('kind') == 'ConfigMap' and 'gateway.toml' in d.get('data', {}):\n\
            \x20       sys.stdout.write(d['data']['gateway.toml'])\n";
        let out = Command::new(venv_bin("python"))
            .args(["-c", script])
            .arg(m)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.path().join(format!("cm{i}.toml"));
        std::fs::write(&path, &out.stdout).unwrap();
        assert!(!out.stdout.is_empty(), "{} has a gateway.toml", m.display());
        configs.push(path);
    }
    let env = [
        ("GITHUB_TOKEN", "t"),
        ("OPENWEATHER_API_KEY", "k"),
        (
            "RESEARCH_AGENT_KEY_SHA256",
            "1111111111111111111111111111111111111111111111111111111111111111",
        ),
        ("REDIS_PASSWORD", "p"),
        (
            "AGM_API_KEY_SHA256",
            "2222222222222222222222222222222222222222222222222222222222222222",
        ),
        ("AGM_UPSTREAM_URL", "https://api.example.com"),
    ];
    for c in &configs {
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(c)
            .envs(env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {text}", c.display());
    }
}

/// The image runs non-root from a distroless base and checks its health with the binary
/// itself: `api-gateway-mcp health` exits 0 against a live admin listener, 1 otherwise.
#[test]
fn the_image_is_non_root_and_its_health_check_works() {
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
    assert!(dockerfile.contains("distroless/static") && dockerfile.contains("USER nonroot"));
    assert!(
        dockerfile.contains("+crt-static"),
        "a static binary for distroless/static"
    );
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"health\""));

    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let status = |admin: String| {
        Command::new(bin())
            .args(["health", "--admin", &admin])
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(status(format!("127.0.0.1:{}", gw.admin)), Some(0));
    let (_hold, dead) = refusing_port();
    assert_eq!(status(format!("127.0.0.1:{dead}")), Some(1));
}

/// SIGTERM: `/readyz` fails at once while the doors keep serving for `server.drain_delay`, a
/// call in flight completes, and the process exits 0.
#[tokio::test]
async fn sigterm_fails_readiness_then_drains_and_exits_cleanly() {
    let up = Upstream::start();
    let mut gw = Gateway::start_generated(|ports| {
        format!(
            "{}{}",
            server_section(ports, 1).replace(
                "shutdown_grace = \"1s\"",
                "shutdown_grace = \"3s\"\ndrain_delay = \"1500ms\""
            ),
            loopback_get_api("local", up.port, "")
        )
    });
    let c = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{}/readyz", gw.admin);
    assert_eq!(get_status(&c, &ready).await, 200);
    // A slow call in flight (600 ms between its two chunks).
    let slow = tokio::spawn({
        let url = gw.proxy_url("/local/slow-stream");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    send_signal(&gw, "-TERM");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Draining: not ready, but still serving new calls.
    assert_eq!(get_status(&c, &ready).await, 503);
    assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 200);
    assert_eq!(slow.await.unwrap(), (200, "firstsecond".to_string()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// The Helm chart: YAML lint, its values (and the CI values files) valid against
/// values.schema.json while broken values are refused, balanced template actions, the
/// alert rules and dashboard it ships identical to deploy/, and the gateway config each
/// values file carries accepted by `check`.
#[test]
fn the_helm_chart_lints_validates_and_carries_configs_that_pass_check() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(venv_bin("python"))
        .arg(root().join("tests/helm/check_chart.py"))
        .arg(root().join("helm/api-gateway-mcp"))
        .arg(root().join("deploy"))
        .arg(out_dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("OK: 3 values files, 7 broken ones refused"),
        "{text}"
    );

    // The chart writes [server] itself (see templates/_helpers.tpl); the rest comes from
    // values. Each body, under the [server] the chart would write, passes `check`.
    let env = [
        (
            "RESEARCH_AGENT_KEY_SHA256",
            "1111111111111111111111111111111111111111111111111111111111111111",
        ),
        ("OPENWEATHER_API_KEY", "k"),
        ("REDIS_PASSWORD", "p"),
        ("GITHUB_TOKEN", "t"),
    ];
    let mut checked = 0;
    for name in ["values", "sidecar-values", "gateway-redis-values"] {
        let body = std::fs::read_to_string(out_dir.path().join(format!("{name}.toml"))).unwrap();
        let host = if name.starts_with("sidecar") {
            "127.0.0.1"
        } else {
            "0.0.0.0"
        };
        let config = format!(
            "[server]\nmcp_listen = \"{host}:3000\"\nproxy_listen = \"{host}:8080\"\n\
             admin_listen = \"0.0.0.0:9090\"\nthreads = 2\ngrace_period = \"10s\"\nwatch_config = true\n\n{body}"
        );
        let path = out_dir.path().join(format!("{name}.gateway.toml"));
        std::fs::write(&path, config).unwrap();
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(&path)
            .envs(env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {text}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}
