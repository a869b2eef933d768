//! The admin console's JSON endpoints (`/console/api/*`) against the real binary: who may
//! use them (an admin by key, token or login session; 403 for anyone else), CSRF on every
//! change, and that each says what the traffic did.

mod common;

use common::*;
use serde_json::{json, Value};

fn url(gw: &Gateway, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", gw.admin)
}

/// Submits the login form with `credential`.
async fn login(gw: &Gateway, credential: &str) -> reqwest::Response {
    no_redirects()
        .post(url(gw, "/console/login"))
        .form(&[("credential", credential)])
        .send()
        .await
        .unwrap()
}

async fn get(gw: &Gateway, path: &str, header: (&str, &str)) -> (u16, Value) {
    let r = no_redirects()
        .get(url(gw, path))
        .header(header.0, header.1)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn call(gw: &Gateway, path: &str) -> u16 {
    get_status_with_host(gw, path).await
}

async fn get_status_with_host(gw: &Gateway, path: &str) -> u16 {
    reqwest::Client::new()
        .get(gw.proxy_url(path))
        .header("host", "localhost")
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const ENDPOINTS: &[&str] = &[
    "/console/api/apis",
    "/console/api/usage",
    "/console/api/limits",
    "/console/api/decisions?format=json",
    "/console/api/audit",
    "/console/api/approvals",
    "/console/api/config",
];

/// Every endpoint answers an admin (key or token) and refuses anyone else: 401 without a
/// credential, 403 `not_permitted` for a non-admin (pages too), and the console is 404
/// when it is off.
#[tokio::test]
async fn only_admins_reach_the_console() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|p| console_config(up.port, p));
    let reader = bearer_with_roles("rita", &["reader"]);
    let admin_token = bearer_with_roles("ada", &["admin"]);
    for e in ENDPOINTS {
        let (s, v) = get(&gw, e, ("x-api-key", CONSOLE_ADMIN_KEY)).await;
        assert_eq!(s, 200, "{e}: {v}");
        let (s, _) = get(&gw, e, ("authorization", &admin_token)).await;
        assert_eq!(s, 200, "{e} with an admin token");
        let (s, v) = get(&gw, e, ("x-api-key", API_KEY)).await;
        assert_eq!(
            (s, v["reason"].as_str()),
            (403, Some("not_permitted")),
            "{e}: {v}"
        );
        let (s, _) = get(&gw, e, ("authorization", &reader)).await;
        assert_eq!(s, 403, "{e} with a reader's token");
        let (s, v) = get(&gw, e, ("x-request", "none")).await;
        assert_eq!(s, 401, "{e} without a credential: {v}");
    }
    // The SSE stream and every page refuse a non-admin too; pages send others to log in.
    for page in [
        "/console/",
        "/console/usage",
        "/console/limits",
        "/console/decisions",
        "/console/audit",
        "/console/approvals",
        "/console/config",
        "/console/login",
        "/console/static/console.js",
        "/console/api/decisions",
    ] {
        let r = no_redirects()
            .get(url(&gw, page))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{page}");
    }
    let r = no_redirects()
        .get(url(&gw, "/console/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/login");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // Off unless [admin] console = true (and its config is refused without [auth]).
    let off = Gateway::start_generated(|p| {
        console_config(up.port, p).replace("console = true", "console = false")
    });
    let (s, _) = get(&off, "/console/api/apis", ("x-api-key", CONSOLE_ADMIN_KEY)).await;
    assert_eq!(s, 404);
}

/// The login form starts a session (HttpOnly, SameSite=Strict cookie); a change made with
/// the cookie needs the session's CSRF token and this origin; a non-admin cannot log in.
#[tokio::test]
async fn login_sessions_and_csrf() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|p| console_config(up.port, p));
    let c = no_redirects();
    let r = login(&gw, API_KEY).await;
    assert_eq!(r.status(), 403, "a reader's key is not an admin's");
    assert!(r.headers().get("set-cookie").is_none());
    let r = login(&gw, "agm_wrong").await;
    assert_eq!(r.status(), 401);
    let r = login(&gw, CONSOLE_ADMIN_KEY).await;
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    // The session reads the API and the pages; the page carries its CSRF token.
    let r = c
        .get(url(&gw, "/console/limits"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let (s, _) = get(&gw, "/console/api/apis", ("cookie", &cookie)).await;
    assert_eq!(s, 200);
    // A bearer token typed into the form works as well.
    let r = login(&gw, &jwt(json!({"sub": "ada", "roles": ["admin"]}))).await;
    assert_eq!(r.status(), 303);

    for _ in 0..3 {
        assert_eq!(call(&gw, "/w/x").await, 200);
    }
    assert_eq!(call(&gw, "/w/x").await, 429);
    let reset = |csrf: Option<&str>, origin: Option<&str>| {
        let mut form = vec![("principal", "key:suite"), ("api", "w")];
        if let Some(t) = csrf {
            form.push(("csrf", t));
        }
        let mut r = c
            .post(url(&gw, "/console/api/limits/reset"))
            .header("cookie", &cookie)
            .form(&form);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let r = reset(None, None).await.unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "csrf_rejected", "{v}");
    assert_eq!(
        reset(Some("0".repeat(64).as_str()), None)
            .await
            .unwrap()
            .status(),
        403
    );
    let token = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 64);
    let evil = reset(Some(&token), Some("http://evil.example"))
        .await
        .unwrap();
    assert_eq!(evil.status(), 403, "another origin");
    assert_eq!(
        call(&gw, "/w/x").await,
        429,
        "refused changes changed nothing"
    );
    let ok = reset(
        Some(&token),
        Some(&format!("http://127.0.0.1:{}", gw.admin)),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.unwrap();
    assert!(
        v["reset"].as_array().unwrap().iter().any(|k| k == "api:w"),
        "{v}"
    );
    assert_eq!(
        call(&gw, "/w/x").await,
        200,
        "the reset let the next call through"
    );

    // Logging out ends the session.
    let r = c
        .post(url(&gw, "/console/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let (s, _) = get(&gw, "/console/api/apis", ("cookie", &cookie)).await;
    assert_eq!(s, 401);
}

/// A session is checked against the config on every request: a reload that revokes the API
/// key it was opened with ends it, and a live decision stream opened with it closes.
#[tokio::test]
async fn a_reload_that_revokes_the_admin_key_ends_its_session() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|p| console_config(up.port, p));
    let c = no_redirects();
    let r = login(&gw, CONSOLE_ADMIN_KEY).await;
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (s, _) = get(&gw, "/console/api/apis", ("cookie", &cookie)).await;
    assert_eq!(s, 200);
    let mut stream = c
        .get(url(&gw, "/console/api/decisions"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let revoked = text.replacen(
        "roles = [\"admin\"]\n",
        "roles = [\"admin\"]\nrevoked = true\n",
        1,
    );
    assert_ne!(text, revoked);
    std::fs::write(&gw.config_path, revoked).unwrap();
    send_signal(&gw, "-HUP");
    let mut status = 0;
    for _ in 0..100 {
        status = get(&gw, "/console/api/apis", ("cookie", &cookie)).await.0;
        if status != 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 403);
    // The stream ends at its next check (a decision or its 15 s keep-alive).
    assert_eq!(call(&gw, "/w/private/x").await, 403);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its session");
}

/// Each endpoint says what the traffic did: APIs (health, latency, credential fingerprint),
/// usage per window, limits with their fill, decisions with an explain that names the same
/// rule, audit search with a cursor and export, chain verification naming an edited record,
/// approvals approved through the console, and the config with secrets masked.
#[tokio::test]
async fn endpoints_report_the_traffic() {
    let up = Upstream::start();
    let mut gw = Gateway::start_generated(|p| console_config(up.port, p));
    let admin = ("x-api-key", CONSOLE_ADMIN_KEY);
    assert_eq!(call(&gw, "/w/a").await, 200);
    assert_eq!(call(&gw, "/w/private/b").await, 403);
    // A call is counted when its record is finished, just after its answer is sent.
    let mut apis = Value::Null;
    for _ in 0..100 {
        apis = get(&gw, "/console/api/apis", admin).await.1;
        if apis["apis"][0]["last_hour"]["calls"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let w = &apis["apis"][0];
    assert_eq!(w["name"], "w");
    assert_eq!(w["health"], "up", "{w}");
    assert_eq!(w["last_hour"]["calls"], 2);
    assert_eq!(w["last_hour"]["refusals"], 1);
    assert!(w["latency_ms_1h"]["p99"].as_f64().unwrap() > 0.0, "{w}");
    assert_eq!(w["credential"]["mode"], "static");
    assert_eq!(w["credential"]["fingerprint"].as_str().unwrap().len(), 8);
    assert_eq!(w["calls_per_minute"].as_array().unwrap().len(), 60);

    let (_, usage) = get(&gw, "/console/api/usage", admin).await;
    for win in ["1h", "24h", "7d"] {
        let pair = &usage["windows"][win]["pairs"][0];
        assert_eq!(
            (&pair["principal"], &pair["calls"], &pair["refusals"]),
            (&json!("key:suite"), &json!(2), &json!(1)),
            "{win}: {usage}"
        );
    }
    let (s, _) = get(&gw, "/console/api/usage?window=2d", admin).await;
    assert_eq!(s, 400);

    let (_, limits) = get(&gw, "/console/api/limits", admin).await;
    assert_eq!(limits["store"], "memory");
    let p = &limits["entries"][0]["policies"][0];
    // The refused call was refused before the limiter: one counted of three.
    assert_eq!(
        (&p["key"], &p["remaining"], &p["requests"]),
        (&json!("api:w"), &json!(2), &json!(3)),
        "{limits}"
    );

    let (_, d) = get(&gw, "/console/api/decisions?format=json", admin).await;
    let refused = &d["decisions"][0];
    assert_eq!(refused["kind"], "refused");
    assert_eq!(refused["rule"], "rbac.roles[0].deny[0]");
    let explain = refused["explain"]
        .as_str()
        .unwrap()
        .replace("/console/", "/console/api/");
    let (s, e) = get(&gw, &explain, admin).await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["explain"]["decision"], "refused");
    assert_eq!(e["explain"]["rule"], refused["rule"], "{e}");

    // An approval requested through the proxy door, approved through the console.
    let body = r#"{"amount": 5}"#;
    let post = || {
        reqwest::Client::new()
            .post(gw.proxy_url("/w/refunds/9"))
            .header("host", "localhost")
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post().await.unwrap();
    assert_eq!(r.status(), 202);
    let (_, q) = get(&gw, "/console/api/approvals?status=pending", admin).await;
    let id = q["approvals"][0]["id"].as_str().unwrap().to_string();
    let r = no_redirects()
        .post(url(&gw, &format!("/console/api/approvals/{id}")))
        .header("x-api-key", CONSOLE_ADMIN_KEY)
        .json(&json!({"approve": true, "reason": "fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::Client::new()
        .post(gw.proxy_url("/w/refunds/9"))
        .header("host", "localhost")
        .header("x-api-key", API_KEY)
        .header("approval-id", &id)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, d) = get(&gw, "/console/api/decisions?format=json", admin).await;
    let kinds: Vec<&str> = d["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"approval_requested") && kinds.contains(&"approval_decided"),
        "{kinds:?}"
    );

    // Config: secrets masked, warnings listed; the upstream secret appears nowhere.
    let (_, cfg) = get(&gw, "/console/api/config", admin).await;
    let text = cfg.to_string();
    assert!(
        text.contains("${AGM_TEST_SECRET}") && !text.contains(SECRET),
        "{text}"
    );
    assert!(cfg["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["name"] == "ops"));
    assert!(
        !text.contains(&sha256_hex(CONSOLE_ADMIN_KEY)),
        "key digests are fingerprinted too"
    );

    // Audit: filtered pages with a cursor, export, verification.
    let mut gw_wait = 0;
    let records = loop {
        let (_, a) = get(&gw, "/console/api/audit?principal=key:suite&limit=2", admin).await;
        if a["records"].as_array().unwrap().len() == 2 || gw_wait > 40 {
            break a;
        }
        gw_wait += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let cursor = records["next_cursor"].as_str().unwrap().to_string();
    let first_seq = records["records"][0]["seq"].as_u64().unwrap();
    let (_, older) = get(
        &gw,
        &format!("/console/api/audit?principal=key:suite&limit=2&cursor={cursor}"),
        admin,
    )
    .await;
    assert!(older["records"][0]["seq"].as_u64().unwrap() < first_seq);
    let (_, denied) = get(
        &gw,
        "/console/api/audit?decision=deny&rule=rbac.roles[0].deny[0]",
        admin,
    )
    .await;
    assert_eq!(denied["records"].as_array().unwrap().len(), 1, "{denied}");
    assert_eq!(denied["records"][0]["event"]["path"], "/w/private/b");
    let (s, _) = get(&gw, "/console/api/audit?cursor=x", admin).await;
    assert_eq!(s, 400);
    // Times are UTC: a date, or a time with or without milliseconds.
    let (s, _) = get(&gw, "/console/api/audit?since=yesterday", admin).await;
    assert_eq!(s, 400);
    let (_, all) = get(
        &gw,
        "/console/api/audit?since=2026-01-01&until=2099-01-01T00:00:00Z",
        admin,
    )
    .await;
    let (_, none) = get(
        &gw,
        "/console/api/audit?until=2026-01-01T00:00:00.5Z",
        admin,
    )
    .await;
    assert!(
        !all["records"].as_array().unwrap().is_empty()
            && none["records"].as_array().unwrap().is_empty(),
        "{all} {none}"
    );
    let export = reqwest::Client::new()
        .get(url(&gw, "/console/api/audit?format=jsonl&decision=deny"))
        .header("x-api-key", CONSOLE_ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The rbac refusal and the approval request (held: decision deny, status 202).
    assert_eq!(export.lines().count(), 2, "{export}");
    assert!(export
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).unwrap()["event"]["decision"] == "deny"));
    let (_, v) = get(&gw, "/console/api/audit/verify", admin).await;
    assert_eq!(v["intact"], true, "{v}");
    // A record edited on disk: verification names it.
    let path = gw.config_path.with_file_name("audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("/w/private/b", "/w/private/c", 1)).unwrap();
    let (_, v) = get(&gw, "/console/api/audit/verify", admin).await;
    assert_eq!(v["intact"], false, "{v}");
    assert_eq!(v["first_broken"]["line"], 2, "{v}");

    // Resetting is audited.
    let r = no_redirects()
        .post(url(&gw, "/console/api/limits/reset"))
        .header("x-api-key", CONSOLE_ADMIN_KEY)
        .json(&json!({"principal": "key:suite", "api": "w"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    terminate(&mut gw);
    let audit = std::fs::read_to_string(&path).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"event\":\"limit_reset\"")
                && l.contains("\"principal\":\"key:ops\"")),
        "{audit}"
    );
    assert!(!audit.contains(SECRET));
    // The same search offline, from the CLI.
    let out = std::process::Command::new(bin())
        .args([
            "audit",
            "search",
            "--decision",
            "allow",
            "--principal",
            "key:ops",
            "--file",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|r| r["event"]["principal"] == "key:ops"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|r| r["event"]["event"] == "limit_reset"));
}

/// `check` refuses a console with no way to authenticate an admin.
#[test]
fn a_console_without_auth_is_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[admin]\nconsole = true\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("admin.console"), "{text}");
}
