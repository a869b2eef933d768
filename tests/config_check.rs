//! `api-gateway-mcp check`: every example config passes; broken configs name their key path.

mod common;
use std::process::Command;

/// Environment variables the example configs reference.
const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("OPENWEATHER_API_KEY", "ow-test"),
    ("GITHUB_TOKEN", "gh-test"),
    ("STRIPE_SECRET_KEY", "sk-test"),
    ("TWILIO_BASIC_AUTH", "dHdpbGlv"),
    ("JWT_SECRET", "0123456789abcdef0123456789abcdef-jwt"),
    (
        "WEATHER_API_KEY_SHA256",
        "1111111111111111111111111111111111111111111111111111111111111111",
    ),
    (
        "GITHUB_API_KEY_SHA256",
        "2222222222222222222222222222222222222222222222222222222222222222",
    ),
    (
        "CI_KEY_SHA256",
        "3333333333333333333333333333333333333333333333333333333333333333",
    ),
    (
        "OPS_KEY_SHA256",
        "4444444444444444444444444444444444444444444444444444444444444444",
    ),
    (
        "AGENT_KEY_SHA256",
        "5555555555555555555555555555555555555555555555555555555555555555",
    ),
    ("SIGNING_SECRET", "0123456789abcdef0123456789abcdef-sig"),
    ("INTROSPECTION_CLIENT_SECRET", "client-secret"),
    (
        "CREDENTIAL_KEY",
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    ),
    ("TOKEN_EXCHANGE_SECRET", "tx-secret"),
    ("GITHUB_CLIENT_SECRET", "gh-client-secret"),
    ("PAYMENTS_KEY", "pay-test"),
    ("APPROVAL_WEBHOOK_SECRET", "hook-secret"),
];

fn check(path: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(common::bin())
        // --strict: the examples must load without warnings too.
        .args(["check", "--strict", "-c"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn every_example_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    // config/tls.toml names certificate files, which `check` loads.
    let pki = common::Pki::new();
    let files = [
        ("TLS_CERT_FILE", pki.path("server.pem")),
        ("TLS_KEY_FILE", pki.path("server.key")),
        ("TLS_CLIENT_CA_FILE", pki.path("ca.pem")),
    ];
    let mut env: Vec<(&str, &str)> = EXAMPLE_ENV.to_vec();
    env.extend(files.iter().map(|(k, v)| (*k, v.as_str())));
    env.push((
        "AGENT_KEY_SHA256",
        "4444444444444444444444444444444444444444444444444444444444444444",
    ));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out) = check(&path, &env);
            assert_eq!(code, 0, "{}: {out}", path.display());
            assert_eq!(out.trim(), "OK");
            n += 1;
        }
    }
    assert!(n >= 3, "expected the example configs, found {n}");
}

#[test]
fn missing_environment_variable_is_named() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/seed-example.toml");
    let (code, out) = check(&path, &EXAMPLE_ENV[1..]);
    assert_eq!(code, 1);
    assert!(out.contains("apis[0].credentials.value"), "{out}");
    assert!(out.contains("OPENWEATHER_API_KEY"), "{out}");
}

const BASE: &str = "[auth]\nrequired = false\n";
const API: &str = "[[apis]]\nname = \"a\"\nbase_url = \"https://example.com\"\npaths = [\"/**\"]\n";

#[test]
fn broken_configs_name_the_key_path() {
    let cases: Vec<(String, &str)> = vec![
        (format!("{BASE}{API}[[apis]]\nname = \"b\"\nbase_url = \"ftp://x\"\npaths = [\"/**\"]\n"), "apis[1].base_url"),
        (format!("{BASE}{API}[[apis]]\nname = \"b\"\nbase_url = \"https://x\"\npaths = [\"/**\"]\n[[apis]]\nname = \"c\"\nbase_url = \"https://u:p@x\"\npaths = [\"/**\"]\n"), "apis[2].base_url"),
        (format!("{BASE}{API}bogus = 1\n"), "apis[0]"),
        (format!("{BASE}{API}timeout = \"10 parsecs\"\n"), "apis[0].timeout"),
        (format!("{BASE}{API}methods = [\"BREW\"]\n"), "apis[0].methods[0]"),
        (format!("{BASE}{API}deny_paths = [\"no-slash\"]\n"), "apis[0].deny_paths[0]"),
        (format!("{BASE}[[apis]]\nname = \"a\"\nbase_url = \"https://example.com\"\n"), "apis[0].paths"),
        (format!("{BASE}[[apis]]\nname = \"Bad Name\"\nbase_url = \"https://example.com\"\npaths = [\"/**\"]\n"), "apis[0].name"),
        (format!("{BASE}{API}{API}"), "apis[1].name"),
        (format!("{BASE}{API}credentials = {{ header = \"X-Key\", query = \"k\", value = \"v\" }}\n"), "apis[0].credentials"),
        (format!("{BASE}{API}credentials = {{ header = \"X-Key\", value = \"${{AGM_UNSET_VAR_FOR_TEST}}\" }}\n"), "apis[0].credentials.value"),
        (format!("{BASE}{API}credentials = {{ header = \"Host\", value = \"v\" }}\n"), "apis[0].credentials.header"),
        (format!("[server]\nmcp_listen = \"nowhere\"\n{BASE}{API}"), "server.mcp_listen"),
        (format!("[server]\nmcp_listen = \"127.0.0.1:7000\"\nproxy_listen = \"127.0.0.1:7000\"\n{BASE}{API}"), "server.proxy_listen"),
        (format!("[server]\nthreads = 0\n{BASE}{API}"), "server.threads"),
        (format!("[server]\ngrace_period = \"5s\"\nshutdown_grace = \"5s\"\n{BASE}{API}"), "server.grace_period"),
        (format!("[server]\nlisten = \"x\"\n{BASE}{API}"), "server"),
        (format!("[mcp]\nallowed_origins = [\"example.com\"]\n{BASE}{API}"), "mcp.allowed_origins[0]"),
        (format!("{BASE}[security.request]\nallowed_content_types = [\"json\"]\n{API}"), "security.request.allowed_content_types[0]"),
        (format!("{BASE}{API}rate_limit = {{ requests = 5, window = \"10s\", burst = 6 }}\n"), "apis[0].rate_limit.burst"),
        (format!("{BASE}{API}rate_limit = {{ requests = 0, window = \"10s\" }}\n"), "apis[0].rate_limit.requests"),
        (format!("{BASE}[rate_limits]\ndefault = {{ requests = 5, window = \"0s\" }}\n{API}"), "rate_limits.default.window"),
        (format!("{BASE}[rate_limits]\nstore = {{ kind = \"redis\", url = \"redis://127.0.0.1:6390\", on_error = \"panic\" }}\n{API}"), "rate_limits.store.on_error"),
        (format!("{BASE}[rate_limits]\nstore = {{ kind = \"redis\", url = \"http://x\" }}\n{API}"), "rate_limits.store.url"),
        (format!("{BASE}[rate_limits]\nstore = {{ kind = \"memory\", url = \"redis://x\" }}\n{API}"), "rate_limits.store.url"),
        (format!("{BASE}[rate_limits]\nstore = {{ kind = \"etcd\" }}\n{API}"), "rate_limits.store.kind"),
        (format!("{BASE}[rate_limits]\nper_user = {{ requests = 5, window = \"1m\", jitter = 1 }}\n{API}"), "rate_limits.per_user"),
        (API.to_string(), "auth.required"),
        (format!("[auth]\nmethods = [\"kerberos\"]\n{API}"), "auth.methods[0]"),
        (format!("[auth]\nmethods = [\"bearer_token\"]\n{API}"), "auth.jwt"),
        (format!("[auth.jwt]\nsecret = \"0123456789abcdef0123456789abcdef\"\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"none\"]\n{API}"), "auth.jwt.algorithms[0]"),
        (format!("[auth.jwt]\nsecret = \"short\"\nissuer = \"i\"\naudience = \"a\"\n{API}"), "auth.jwt.secret"),
        (format!("[auth.jwt]\nsecret = \"0123456789abcdef0123456789abcdef\"\nissuer = \"i\"\n{API}"), "auth.jwt.audience"),
        (format!("[auth.jwt]\njwks_url = \"https://idp\"\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\n{API}"), "auth.jwt.algorithms"),
        (format!("[auth.jwt]\npublic_keys = [\"not a pem\"]\nissuer = \"i\"\naudience = \"a\"\n{API}"), "auth.jwt.public_keys[0]"),
        (format!("[[auth.api_keys]]\nname = \"k\"\nkey_sha256 = \"plaintext-key\"\n{API}"), "auth.api_keys[0].key_sha256"),
        (format!("[[auth.api_keys]]\nname = \"k\"\nkey_sha256 = \"{}\"\nallowed_apis = [\"nope\"]\n{API}", "a".repeat(64)), "auth.api_keys[0].allowed_apis[0]"),
        (format!("{BASE}[[rbac.roles]]\nname = \"r\"\nallow = [{{ api = \"ghost\" }}]\n{API}"), "rbac.roles[0].allow[0].api"),
        (format!("{BASE}[[rbac.roles]]\nname = \"r\"\nallow = [{{ api = \"a\", methods = [\"BREW\"] }}]\n{API}"), "rbac.roles[0].allow[0].methods[0]"),
        (format!("{BASE}[security]\nip_allow = [\"10.0.0.0/33\"]\n{API}"), "security.ip_allow[0]"),
        (format!("{BASE}[security]\ntrusted_proxies = [\"proxy\"]\n{API}"), "security.trusted_proxies[0]"),
        (format!("{BASE}[security.signatures]\nkeys = [{{ id = \"k\", secret = \"short\" }}]\n{API}"), "security.signatures.keys[0].secret"),
        (format!("{BASE}{API}require_signature = true\n"), "security.signatures"),
        (format!("{BASE}{API}follow_redirects = 5\n"), "apis[0].follow_redirects"),
        (format!("{BASE}[egress]\nnameservers = [\"dns.google\"]\n{API}"), "egress.nameservers[0]"),
        (format!("{BASE}[security.request]\nmax_headers = 0\n{API}"), "security.request.max_headers"),
        (format!("{BASE}[audit]\nsink = \"kafka\"\n{API}"), "audit.sink"),
        (format!("{BASE}[audit]\non_failure = \"shrug\"\n{API}"), "audit.on_failure"),
        (format!("{BASE}[audit]\nsink = \"stdout\"\nretention = \"90d\"\n{API}"), "audit.retention"),
        (format!("{BASE}[audit]\nrotate = true\n{API}"), "audit"),
        (BASE.to_string(), "apis"),
        ("this is = = not toml".to_string(), "invalid TOML"),
        (format!("{BASE}{API}[apis.openapi]\nfile = \"/nonexistent/openapi.json\"\n"), "apis[0].openapi: cannot read"),
        (format!("{BASE}{API}[apis.openapi]\ninline = '{{\"swagger\": \"2.0\"}}'\n"), "apis[0].openapi: Swagger 2.0"),
        (format!("{BASE}{API}[apis.openapi]\nurl = \"https://x/o.json\"\nfile = \"o.json\"\n"), "apis[0].openapi"),
        (format!("{BASE}{API}[apis.openapi]\ninline = \"{{}}\"\non_change = \"ignore\"\n"), "apis[0].openapi.on_change"),
        (format!("{BASE}{API}[apis.openapi]\ninline = \"{{}}\"\npin_sha256 = \"abc\"\n"), "apis[0].openapi.pin_sha256"),
        (format!("{BASE}{API}[apis.openapi]\ninline = \"{{}}\"\ninclude = [\"method:BREW\"]\n"), "apis[0].openapi.include[0]"),
        (format!("{BASE}{API}[apis.openapi]\ninline = \"{{}}\"\nrefresh = \"1m\"\n"), "apis[0].openapi.refresh"),
        (format!("{BASE}[mcp]\nsurface_lock = \"/nonexistent/surface.lock.json\"\n{API}"), "mcp.surface_lock: cannot read"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("broken{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, out) = check(&path, &[]);
        assert_eq!(code, 1, "case {i} should fail:\n{text}\n{out}");
        let errors: Vec<&str> = out.lines().skip(1).map(str::trim).collect();
        assert!(
            errors.iter().any(|l| l.starts_with(expected)),
            "case {i}: expected an error starting with {expected:?}, got:\n{out}"
        );
    }
}

#[test]
fn serve_exits_with_the_key_when_a_listen_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = format!(
        "[server]\nmcp_listen = \"127.0.0.1:{port}\"\nproxy_listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n{BASE}{API}",
        common::free_port(),
        common::free_port()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(common::bin())
        .args(["serve", "-c"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve kept running on a taken address instead of failing");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("server.mcp_listen"), "{err}");
    drop(taken);
}

/// `check` warns about rules that cannot do what their author meant, with a code and the key
/// path; `--strict` fails on them, plain `check` passes with a count.
#[test]
fn strict_check_fails_on_a_grant_that_can_never_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lint.toml");
    std::fs::write(
        &path,
        "[auth]\nrequired = false\n\
         [[rbac.roles]]\nname = \"reader\"\nallow = [{ api = \"gh\", paths = [\"/users/**\"] }, { api = \"gh\" }]\n\
         [[apis]]\nname = \"gh\"\nbase_url = \"https://gh.example\"\nmethods = [\"GET\"]\npaths = [\"/repos/**\"]\n",
    )
    .unwrap();
    let (code, out) = check(&path, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("W001 rbac.roles[0].allow[0]: its path \"/users/**\"")),
        "{out}"
    );
    let plain = Command::new(common::bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stdout).contains("OK (1 warning(s))"));
}
