//! Upstream credentials obtained per caller over OAuth, through the real binary against an
//! authorization server served by the test: `token_exchange` (RFC 8693: the caller's bearer
//! token exchanged for one the upstream API accepts, single-flight, cached, failures cached)
//! and `user_oauth` (the user's own account connected once with authorization code + PKCE,
//! refreshed at expiry, revoked on disconnect).

mod common;
use common::*;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};

const TX_CLIENT_SECRET: &str = "gw-secret";
const TE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// `user_oauth` secrets: distinctive, so a leak into a log or a record cannot be mistaken
/// for an unrelated string.
const UO_CLIENT_SECRET: &str = "uo-client-secret-6a1f0c";
const CODE: &str = "authcode-77c1d9e4";
const AT1: &str = "uat-first-4f9c2e81";
const RT1: &str = "urt-first-8d1b7a30";
const AT2: &str = "uat-second-2c6d0f57";
const RT2: &str = "urt-second-9e3a51b6";
const CRED_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The form fields of a request body.
fn form(req: &Seen) -> HashMap<String, String> {
    url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect()
}

/// `Authorization: Basic …` for a client id and secret.
fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// The first 8 hex digits of a token's SHA-256, as the audit record shows it.
fn fp(token: &str) -> String {
    sha256_hex(token)[..8].to_string()
}

/// The requests the authorization server saw at `path`.
fn at(idp: &Upstream, path: &str) -> Vec<Seen> {
    idp.seen()
        .into_iter()
        .filter(|s| s.target.split('?').next() == Some(path))
        .collect()
}

/// A 200 JSON answer.
fn json_ok(v: Value) -> Option<(u16, String, Vec<u8>)> {
    Some((200, "application/json".into(), v.to_string().into_bytes()))
}

/// GETs a proxy-door URL with an `Authorization` or `X-Api-Key` header: status, content
/// type and JSON body (`null` when the body is not JSON).
async fn get_as(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    header: (&str, &str),
) -> (u16, String, Value) {
    let r = c
        .get(url)
        .header("Host", "localhost")
        .header(header.0, header.1)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

/// The audit file of a stopped gateway (`audit.jsonl` beside its config) and its events.
fn audit_records(dir: &std::path::Path) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    let records = text
        .lines()
        .map(|l| {
            // Each line is a hash-chained envelope around the event.
            let v: Value = serde_json::from_str(l).unwrap();
            v.get("event").cloned().unwrap_or(v)
        })
        .collect();
    (text, records)
}

fn tx_credentials(idp_port: u16, api_extra: &str) -> String {
    format!(
        "credentials = {{ mode = \"token_exchange\", header = \"Authorization\", \
         token_endpoint = \"http://127.0.0.1:{idp_port}/token\", client_id = \"gw\", \
         client_secret = \"{TX_CLIENT_SECRET}\", audience = \"upstream-api\", scope = \"read\", \
         allow_private_network = true, failure_ttl = \"2s\"{api_extra} }}"
    )
}

/// token_exchange: 100 concurrent calls by one caller cost exactly one exchange (a
/// Basic-authenticated RFC 8693 form carrying the caller's own JWT as `subject_token`, with
/// the configured audience and scope); the upstream sees only the exchanged token, never the
/// caller's JWT; a second caller gets an exchange of its own; the MCP door uses the same
/// cached token; a token is used until `expires_in` minus the 30 s skew and then exchanged
/// anew; the metrics and audit records name the source and the token's fingerprint.
#[tokio::test]
async fn token_exchange_is_single_flight_per_caller_and_renewed_at_expiry() {
    let issued = Arc::new(AtomicUsize::new(0));
    let life = Arc::new(AtomicU64::new(3600));
    let (n, l) = (issued.clone(), life.clone());
    let idp = Upstream::start_with(Arc::new(move |req: &Seen| {
        if req.target != "/token" {
            return None;
        }
        // A slow endpoint, so the concurrent callers really wait on one exchange.
        std::thread::sleep(Duration::from_millis(300));
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        json_ok(json!({
            "access_token": format!("xt-{i}"),
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": l.load(Ordering::SeqCst),
        }))
    }));
    let up = Upstream::start();
    let mut gw = Gateway::start_generated(|ports| {
        format!(
            "{}{}{}[audit]\nsink = \"file\"\npath = \"audit.jsonl\"\n",
            listen_section(ports, 2),
            auth_section(false),
            loopback_get_api("tx", up.port, &tx_credentials(idp.port, ""))
        )
    });
    let c = reqwest::Client::new();
    let alice = jwt(json!({"sub": "alice"}));
    let alice_auth = format!("Bearer {alice}");

    let calls: Vec<_> = (0..100)
        .map(|i| {
            get_as(
                &c,
                gw.proxy_url(&format!("/tx/items/{i}")),
                ("authorization", &alice_auth),
            )
        })
        .collect();
    for (status, _, body) in futures::future::join_all(calls).await {
        assert_eq!(status, 200, "{body}");
    }
    let exchanges = at(&idp, "/token");
    assert_eq!(
        exchanges.len(),
        1,
        "100 concurrent calls with one caller token share one exchange"
    );
    let x = &exchanges[0];
    assert_eq!(x.method, "POST");
    assert_eq!(
        x.header("authorization"),
        Some(basic("gw", TX_CLIENT_SECRET).as_str()),
        "client_secret_basic is the default client authentication"
    );
    assert!(
        x.header("content-type")
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded")),
        "{:?}",
        x.headers
    );
    let f = form(x);
    assert_eq!(f.get("grant_type").map(String::as_str), Some(TE_GRANT));
    assert_eq!(
        f.get("subject_token"),
        Some(&alice),
        "the subject token is the caller's own JWT"
    );
    assert_eq!(
        f.get("subject_token_type").map(String::as_str),
        Some(ACCESS_TOKEN_TYPE)
    );
    assert_eq!(
        f.get("requested_token_type").map(String::as_str),
        Some(ACCESS_TOKEN_TYPE)
    );
    assert_eq!(f.get("audience").map(String::as_str), Some("upstream-api"));
    assert_eq!(f.get("scope").map(String::as_str), Some("read"));
    assert!(
        !f.contains_key("client_secret") && !f.contains_key("client_id"),
        "with Basic auth the client credentials stay out of the form: {f:?}"
    );

    let seen = up.seen();
    assert_eq!(seen.len(), 100);
    for s in &seen {
        assert_eq!(s.header("authorization"), Some("Bearer xt-1"), "{s:?}");
        assert!(
            s.headers.iter().all(|(_, v)| !v.contains(&alice)),
            "the caller's JWT reached the upstream API: {s:?}"
        );
    }
    assert_eq!(
        counter_at(
            &gw,
            "api_credential_events_total{api=\"tx\",event=\"exchange_cache_hit\"}",
            99.0
        )
        .await,
        99.0
    );
    assert_eq!(
        metric(
            &gw,
            "api_credential_events_total{api=\"tx\",event=\"exchange\"}"
        )
        .await,
        1.0
    );

    // A second caller: a second exchange, with its own subject token.
    let bob = jwt(json!({"sub": "bob"}));
    let (status, _, _) = get_as(
        &c,
        &gw.proxy_url("/tx/bob"),
        ("authorization", &format!("Bearer {bob}")),
    )
    .await;
    assert_eq!(status, 200);
    let exchanges = at(&idp, "/token");
    assert_eq!(
        exchanges.len(),
        2,
        "another caller's token is exchanged anew"
    );
    assert_eq!(form(&exchanges[1]).get("subject_token"), Some(&bob));
    assert_eq!(up.seen()[100].header("authorization"), Some("Bearer xt-2"));

    // Alice again, on the MCP door: her cached token, no exchange.
    let mut s = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &alice_auth)]).await;
    let r = s
        .call(
            "api_gateway",
            json!({"api": "tx", "endpoint": "/from-mcp", "method": "GET"}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["status"], 200, "{r}");
    assert_eq!(at(&idp, "/token").len(), 2, "alice's token is still cached");
    let last = up.seen().pop().unwrap();
    assert!(last.target.ends_with("/from-mcp"), "{last:?}");
    assert_eq!(last.header("authorization"), Some("Bearer xt-1"));
    assert!(last.headers.iter().all(|(_, v)| !v.contains(&alice)));

    // A token that lives 31 s is used for 31 s minus the 30 s skew: 1 s.
    life.store(31, Ordering::SeqCst);
    let carol_auth = format!("Bearer {}", jwt(json!({"sub": "carol"})));
    assert_eq!(
        get_as(&c, &gw.proxy_url("/tx/c1"), ("authorization", &carol_auth))
            .await
            .0,
        200
    );
    assert_eq!(
        get_as(&c, &gw.proxy_url("/tx/c2"), ("authorization", &carol_auth))
            .await
            .0,
        200
    );
    assert_eq!(
        at(&idp, "/token").len(),
        3,
        "within its life the token is reused"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get_as(&c, &gw.proxy_url("/tx/c3"), ("authorization", &carol_auth))
            .await
            .0,
        200
    );
    assert_eq!(
        at(&idp, "/token").len(),
        4,
        "past expires_in minus refresh_skew the token is exchanged again"
    );
    let carol_seen: Vec<Option<String>> = up
        .seen()
        .iter()
        .filter(|s| s.target.contains("/c"))
        .map(|s| s.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(
        carol_seen,
        vec![
            Some("Bearer xt-3".to_string()),
            Some("Bearer xt-3".to_string()),
            Some("Bearer xt-4".to_string())
        ]
    );
    assert_eq!(
        metric(
            &gw,
            "api_credential_events_total{api=\"tx\",event=\"exchange\"}"
        )
        .await,
        4.0
    );

    // The audit names where each call's credential came from, by fingerprint only.
    let metrics_text = scrape(&gw).await;
    terminate(&mut gw);
    let (text, records) = audit_records(gw.config_path.parent().unwrap());
    let calls: Vec<&Value> = records.iter().filter(|r| r["api"] == "tx").collect();
    assert_eq!(calls.len(), 105, "{} records", records.len());
    for r in &calls {
        assert_eq!(r["credential_source"], "token_exchange", "{r}");
        let want = match (
            r["principal"].as_str().unwrap(),
            r["path"].as_str().unwrap(),
        ) {
            ("jwt:alice", _) => fp("xt-1"),
            ("jwt:bob", _) => fp("xt-2"),
            ("jwt:carol", p) if p.ends_with("/c3") => fp("xt-4"),
            ("jwt:carol", _) => fp("xt-3"),
            other => panic!("unexpected record {other:?}: {r}"),
        };
        assert_eq!(r["credential_fingerprint"], want.as_str(), "{r}");
    }
    for secret in [alice.as_str(), "xt-1", "xt-2", TX_CLIENT_SECRET] {
        assert!(!text.contains(secret), "the audit holds {secret:?}");
        assert!(!metrics_text.contains(secret), "/metrics holds {secret:?}");
    }
}

/// token_exchange failures: a token endpoint answering 500 and one that refuses connections
/// make the call fail with `credential_unavailable` (retryable, 502) on both doors; the
/// failure is remembered for `failure_ttl`, so a second call does not hit the endpoint;
/// an API-key caller has no token to exchange and gets `credential_required` (403) without
/// an exchange; the upstream API is never called until the endpoint recovers and the
/// failure has expired.
#[tokio::test]
async fn token_exchange_failures_are_credential_unavailable_and_cached() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let idp = Upstream::start_with(Arc::new(move |req: &Seen| {
        if req.target != "/token" {
            return None;
        }
        if f.load(Ordering::SeqCst) {
            return Some((
                500,
                "application/json".into(),
                br#"{"error":"server_error"}"#.to_vec(),
            ));
        }
        json_ok(json!({"access_token": "xt-ok", "expires_in": 3600}))
    }));
    let (_dead, dead_port) = refusing_port();
    let up = Upstream::start();
    let gw = Gateway::start_generated(|ports| {
        let down = tx_credentials(idp.port, "").replace(
            &format!("127.0.0.1:{}/token", idp.port),
            &format!("127.0.0.1:{dead_port}/token"),
        );
        format!(
            "{}{}{}{}",
            listen_section(ports, 2),
            auth_section(false),
            loopback_get_api("tx", up.port, &tx_credentials(idp.port, "")),
            loopback_get_api("txdown", up.port, &down)
        )
    });
    let c = reqwest::Client::new();
    let alice_auth = format!("Bearer {}", jwt(json!({})));

    let mut s = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &alice_auth)]).await;
    let r = s
        .call(
            "api_gateway",
            json!({"api": "tx", "endpoint": "/x", "method": "GET"}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    let sc = &r["structuredContent"];
    assert_eq!(sc["reason"], "credential_unavailable", "{r}");
    assert_eq!(sc["retryable"], true, "{r}");
    assert_eq!(sc["status"], 502, "{r}");
    assert_eq!(at(&idp, "/token").len(), 1);

    // The proxy door, within failure_ttl: the remembered failure, no second request.
    let (status, ct, p) = get_as(&c, &gw.proxy_url("/tx/x"), ("authorization", &alice_auth)).await;
    assert_eq!(status, 502, "{p}");
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    assert_eq!(p["reason"], "credential_unavailable", "{p}");
    assert_eq!(p["status"], 502, "{p}");
    assert_eq!(
        at(&idp, "/token").len(),
        1,
        "a failed exchange is not retried within failure_ttl"
    );
    assert_eq!(
        counter_at(
            &gw,
            "api_credential_events_total{api=\"tx\",event=\"exchange_failure_cached\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "api_credential_events_total{api=\"tx\",event=\"exchange_failure\"}"
        )
        .await,
        1.0
    );

    // A token endpoint that refuses connections.
    let (status, _, p) = get_as(
        &c,
        &gw.proxy_url("/txdown/x"),
        ("authorization", &alice_auth),
    )
    .await;
    assert_eq!(
        (status, p["reason"].as_str()),
        (502, Some("credential_unavailable")),
        "{p}"
    );
    let r = s
        .call(
            "api_gateway",
            json!({"api": "txdown", "endpoint": "/x", "method": "GET"}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(
        r["structuredContent"]["reason"], "credential_unavailable",
        "{r}"
    );
    assert_eq!(r["structuredContent"]["retryable"], true, "{r}");

    // An API key is no token to exchange.
    let (status, ct, p) = get_as(&c, &gw.proxy_url("/tx/x"), ("x-api-key", API_KEY)).await;
    assert_eq!(
        (status, p["reason"].as_str()),
        (403, Some("credential_required")),
        "{p}"
    );
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    let mut k = McpSession::connect_with(&gw.mcp_url(), &[("x-api-key", API_KEY)]).await;
    let r = k
        .call(
            "api_gateway",
            json!({"api": "tx", "endpoint": "/x", "method": "GET"}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(
        r["structuredContent"]["reason"], "credential_required",
        "{r}"
    );
    assert_eq!(r["structuredContent"]["status"], 403, "{r}");
    assert_eq!(
        at(&idp, "/token").len(),
        1,
        "an API-key caller causes no exchange"
    );
    assert_eq!(
        up.count(),
        0,
        "no call reached the upstream API without its credential"
    );

    // The endpoint recovers; once the failure has expired the next call exchanges again.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, p) = get_as(
        &c,
        &gw.proxy_url("/tx/again"),
        ("authorization", &alice_auth),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(at(&idp, "/token").len(), 2);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), Some("Bearer xt-ok"));
}

/// A gateway process like the harness's, but with its log (`RUST_LOG=debug`) kept in a
/// file, so a test can show that no secret is ever written there.
struct LoggedGateway {
    child: Child,
    mcp: u16,
    proxy: u16,
    admin: u16,
    dir: tempfile::TempDir,
}

impl LoggedGateway {
    fn start(make: impl Fn((u16, u16, u16)) -> String, env: &[(&str, &str)]) -> LoggedGateway {
        for _ in 0..5 {
            let (mcp, proxy, admin) = (free_port(), free_port(), free_port());
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("gateway.toml");
            std::fs::write(&config, make((mcp, proxy, admin))).unwrap();
            let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
            let child = Command::new(bin())
                .args(["serve", "--config"])
                .arg(&config)
                .env("RUST_LOG", "debug")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            let mut g = LoggedGateway {
                child,
                mcp,
                proxy,
                admin,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if g.child.try_wait().unwrap().is_some() {
                    break; // a port was taken meanwhile: try new ones
                }
                let up = [mcp, proxy, admin]
                    .iter()
                    .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
                if up {
                    return g;
                }
                assert!(Instant::now() < deadline, "gateway did not become ready");
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("gateway did not start after 5 attempts");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.mcp)
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// SIGTERM and wait, so the audit queue is drained.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for LoggedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unix seconds now, with the fraction.
fn now_f() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// user_oauth, the whole life of a connected account: a caller without one is refused with
/// `credential_required` and a `connect_url` on both doors; the link redirects to the
/// authorization endpoint with PKCE (S256) and a sealed state; a damaged link, a tampered
/// state and a callback naming another issuer are refused without redeeming the code; the
/// right callback redeems the code with the verifier that matches the challenge, and calls
/// carry the user's access token (never the caller's JWT); at expiry the token is refreshed
/// once with the refresh token; disconnecting revokes the refresh token and the caller must
/// connect again. Metrics count the connect and the refresh, the audit records the source
/// and fingerprints, and no token, code, verifier or JWT is written to the audit, the
/// metrics or the debug log.
#[tokio::test]
async fn user_oauth_connect_refresh_disconnect() {
    let challenge = Arc::new(Mutex::new(String::new()));
    let redirect_uri = Arc::new(Mutex::new(String::new()));
    let (ch, ru) = (challenge.clone(), redirect_uri.clone());
    let idp = Upstream::start_with(Arc::new(move |req: &Seen| {
        let bad = |e: &str| {
            Some((
                400,
                "application/json".into(),
                json!({"error": e}).to_string().into_bytes(),
            ))
        };
        let f = form(req);
        match req.target.as_str() {
            "/token" => {
                if req.header("authorization") != Some(basic("gw", UO_CLIENT_SECRET).as_str()) {
                    return Some((
                        401,
                        "application/json".into(),
                        br#"{"error":"invalid_client"}"#.to_vec(),
                    ));
                }
                match f.get("grant_type").map(String::as_str) {
                    Some("authorization_code") => {
                        let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                        let derived = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
                        if f.get("code").map(String::as_str) != Some(CODE)
                            || f.get("redirect_uri") != Some(&*ru.lock().unwrap())
                            || derived != *ch.lock().unwrap()
                        {
                            return bad("invalid_grant");
                        }
                        json_ok(json!({"access_token": AT1, "refresh_token": RT1,
                                       "token_type": "Bearer", "expires_in": 3}))
                    }
                    Some("refresh_token")
                        if f.get("refresh_token").map(String::as_str) == Some(RT1) =>
                    {
                        json_ok(json!({"access_token": AT2, "refresh_token": RT2,
                                       "token_type": "Bearer", "expires_in": 3600}))
                    }
                    _ => bad("invalid_grant"),
                }
            }
            "/revoke" => Some((200, "text/plain".into(), Vec::new())),
            _ => None,
        }
    }));
    let up = Upstream::start();
    let idp_base = format!("http://127.0.0.1:{}", idp.port);
    let mut gw = LoggedGateway::start(
        |ports| {
            let creds = format!(
                "credentials = {{ mode = \"user_oauth\", header = \"Authorization\", \
                 authorization_endpoint = \"{idp_base}/authorize\", token_endpoint = \"{idp_base}/token\", \
                 revocation_endpoint = \"{idp_base}/revoke\", client_id = \"gw\", \
                 client_secret = \"{UO_CLIENT_SECRET}\", scope = \"repo\", issuer = \"{idp_base}\", \
                 allow_private_network = true, refresh_skew = \"1s\" }}"
            );
            format!(
                "{}{}[credential_store]\nkind = \"sqlite\"\npath = \"creds.db\"\nkey_env = \"AGM_CRED_KEY\"\n\n\
                 [mcp]\npublic_url = \"http://127.0.0.1:{}\"\n\n\
                 [audit]\nsink = \"file\"\npath = \"audit.jsonl\"\n\n{}",
                listen_section(ports, 2),
                auth_section(false),
                ports.0,
                loopback_get_api("gh", up.port, &creds)
            )
        },
        &[("AGM_CRED_KEY", CRED_KEY)],
    );
    let public = format!("http://127.0.0.1:{}", gw.mcp);
    *redirect_uri.lock().unwrap() = format!("{public}/oauth/callback");
    let c = reqwest::Client::new();
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let alice = jwt(json!({"sub": "alice"}));
    let alice_auth = format!("Bearer {alice}");
    let proxy = format!("http://127.0.0.1:{}/gh/user/repos", gw.proxy);

    // No connected account: refused on both doors, with the link that fixes it.
    let mut s = McpSession::connect_with(&gw.url("/mcp"), &[("authorization", &alice_auth)]).await;
    let call = json!({"api": "gh", "endpoint": "/user/repos", "method": "GET"});
    let r = s.call("api_gateway", call.clone()).await;
    assert_eq!(r["isError"], true, "{r}");
    let sc = &r["structuredContent"];
    assert_eq!(sc["reason"], "credential_required", "{r}");
    assert_eq!(sc["status"], 403, "{r}");
    let connect_url = sc["connect_url"].as_str().unwrap_or_default().to_string();
    assert!(
        connect_url.starts_with(&format!("{public}/connect/gh?t=")),
        "{r}"
    );
    let (status, ct, p) = get_as(&c, &proxy, ("authorization", &alice_auth)).await;
    assert_eq!(
        (status, p["reason"].as_str()),
        (403, Some("credential_required")),
        "{p}"
    );
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    assert!(
        p["connect_url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("{public}/connect/gh?t="))),
        "{p}"
    );

    // A damaged link is refused.
    let (base, t) = connect_url.split_once("?t=").unwrap();
    let mut damaged = t.to_string().into_bytes();
    let mid = damaged.len() / 2;
    damaged[mid] = if damaged[mid] == b'A' { b'B' } else { b'A' };
    let damaged = format!("{base}?t={}", String::from_utf8(damaged).unwrap());
    let r = browser.get(&damaged).send().await.unwrap();
    assert_eq!(r.status(), 400, "a damaged connect link");
    assert!(r.headers().get("location").is_none());

    // The link starts an authorization-code sign-in with PKCE.
    let r = browser.get(&connect_url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    // The sign-in is bound to this browser by a cookie only the callback path receives.
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("Path=/oauth/callback"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    // The link started its sign-in: it does not start another.
    let again = browser.get(&connect_url).send().await.unwrap();
    assert_eq!(again.status(), 400, "a connect link is good for one use");
    assert!(
        location.starts_with(&format!("{idp_base}/authorize?")),
        "{location}"
    );
    let q: HashMap<String, String> = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(q.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(q.get("client_id").map(String::as_str), Some("gw"));
    assert_eq!(
        q.get("redirect_uri"),
        Some(&format!("{public}/oauth/callback"))
    );
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert_eq!(q.get("scope").map(String::as_str), Some("repo"));
    let state = q["state"].clone();
    let code_challenge = q["code_challenge"].clone();
    assert_eq!(
        code_challenge.len(),
        43,
        "base64url of a SHA-256: {code_challenge}"
    );
    assert!(!location.contains("code_verifier"), "{location}");
    *challenge.lock().unwrap() = code_challenge.clone();

    let callback = |code: &str, state: &str, iss: &str| {
        let mut u = url::Url::parse(&format!("{public}/oauth/callback")).unwrap();
        u.query_pairs_mut()
            .append_pair("code", code)
            .append_pair("state", state)
            .append_pair("iss", iss);
        browser
            .get(u.as_str())
            .header("cookie", cookie.as_str())
            .send()
    };

    // Another browser (someone the sign-in link was sent to) cannot complete it: its
    // account would land in this principal's slot.
    let mut u = url::Url::parse(&format!("{public}/oauth/callback")).unwrap();
    u.query_pairs_mut()
        .append_pair("code", CODE)
        .append_pair("state", &state)
        .append_pair("iss", &idp_base);
    let r = browser.get(u.as_str()).send().await.unwrap();
    assert_eq!(r.status(), 400, "a callback without the sign-in's cookie");

    // A callback from another authorization server (mix-up) is refused before the code
    // is redeemed.
    let r = callback(CODE, &state, "https://evil.example")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Not connected"));
    // So is a state the gateway did not issue.
    let mut tampered = state.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let r = callback(CODE, &String::from_utf8(tampered).unwrap(), &idp_base)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(at(&idp, "/token").is_empty(), "no code was redeemed");
    let (status, _, p) = get_as(&c, &proxy, ("authorization", &alice_auth)).await;
    assert_eq!(
        (status, p["reason"].as_str()),
        (403, Some("credential_required")),
        "nothing was stored: {p}"
    );

    // The right callback: the code is redeemed with the verifier behind the challenge.
    let r = callback(CODE, &state, &idp_base).await.unwrap();
    // The tokens were stored (expires_at = then + 3, in whole seconds) before this.
    let connected = now_f();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("Connected"), "{page}");
    let redeemed = at(&idp, "/token");
    assert_eq!(redeemed.len(), 1);
    // The same callback again (a replay) is refused and redeems nothing.
    let replay = callback(CODE, &state, &idp_base).await.unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(at(&idp, "/token").len(), 1);
    let f = form(&redeemed[0]);
    assert_eq!(
        f.get("grant_type").map(String::as_str),
        Some("authorization_code")
    );
    assert_eq!(f.get("code").map(String::as_str), Some(CODE));
    assert_eq!(
        f.get("redirect_uri"),
        Some(&format!("{public}/oauth/callback"))
    );
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes())),
        code_challenge,
        "PKCE: the verifier hashes to the challenge"
    );
    assert_eq!(
        redeemed[0].header("authorization"),
        Some(basic("gw", UO_CLIENT_SECRET).as_str())
    );

    // Calls now carry the user's access token, never the caller's JWT.
    let (status, _, p) = get_as(&c, &proxy, ("authorization", &alice_auth)).await;
    assert_eq!(status, 200, "{p}");
    let r = s.call("api_gateway", call.clone()).await;
    assert_eq!(r["isError"], false, "{r}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for x in &seen {
        assert_eq!(
            x.header("authorization"),
            Some(format!("Bearer {AT1}").as_str())
        );
        assert!(x.headers.iter().all(|(_, v)| !v.contains(&alice)), "{x:?}");
    }
    assert_eq!(
        at(&idp, "/token").len(),
        1,
        "a fresh token is not refreshed"
    );

    // expires_in 3 with refresh_skew 1 s: refreshed once fewer than 1 s remain (whole
    // seconds), i.e. at the latest 2 s after the second in which the tokens were stored.
    let wait = connected.floor() + 2.05 - now_f();
    tokio::time::sleep(Duration::from_secs_f64(wait.max(0.0))).await;
    let (status, _, p) = get_as(&c, &proxy, ("authorization", &alice_auth)).await;
    assert_eq!(status, 200, "{p}");
    let refreshes = at(&idp, "/token");
    assert_eq!(refreshes.len(), 2, "one refresh at expiry");
    let f = form(&refreshes[1]);
    assert_eq!(
        f.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(f.get("refresh_token").map(String::as_str), Some(RT1));
    assert_eq!(
        up.seen().last().unwrap().header("authorization"),
        Some(format!("Bearer {AT2}").as_str())
    );
    let r = s.call("api_gateway", call.clone()).await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(
        up.seen().last().unwrap().header("authorization"),
        Some(format!("Bearer {AT2}").as_str())
    );
    assert_eq!(
        at(&idp, "/token").len(),
        2,
        "the refreshed token is used, not refreshed again"
    );
    assert_eq!(
        gw.metric("api_credential_events_total{api=\"gh\",event=\"connect\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("api_credential_events_total{api=\"gh\",event=\"refresh\"}")
            .await,
        1.0
    );

    // Disconnect: the refresh token is revoked and the account is gone.
    let r = c
        .delete(gw.url("/me/credentials/gh"))
        .header("authorization", &alice_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["deleted"], true, "{d}");
    assert_eq!(d["principal"], "jwt:alice", "{d}");
    assert_eq!(d["fingerprint"], fp(AT2).as_str(), "{d}");
    let revoked = at(&idp, "/revoke");
    assert_eq!(revoked.len(), 1);
    let f = form(&revoked[0]);
    assert_eq!(f.get("token").map(String::as_str), Some(RT2));
    assert_eq!(
        f.get("token_type_hint").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(
        revoked[0].header("authorization"),
        Some(basic("gw", UO_CLIENT_SECRET).as_str())
    );
    let (status, _, p) = get_as(&c, &proxy, ("authorization", &alice_auth)).await;
    assert_eq!(
        (status, p["reason"].as_str()),
        (403, Some("credential_required")),
        "{p}"
    );
    let r = s.call("api_gateway", call).await;
    assert_eq!(
        r["structuredContent"]["reason"], "credential_required",
        "{r}"
    );
    assert_eq!(
        up.count(),
        4,
        "no call reached the upstream after the disconnect"
    );

    // Records name the source and fingerprints; no secret is written anywhere.
    let metrics_text = gw.metrics().await;
    gw.stop();
    let (text, records) = audit_records(gw.dir.path());
    let ok: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["api"] == "gh" && r["status"] == 200 && r["credential_source"] == "user_oauth"
        })
        .collect();
    let fps: Vec<&str> = ok
        .iter()
        .map(|r| r["credential_fingerprint"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(fps, vec![fp(AT1), fp(AT1), fp(AT2), fp(AT2)], "{text}");
    assert!(
        records.iter().any(|r| r["credential_source"] == "managed"
            && r["method"] == "DELETE"
            && r["credential_subject"] == "jwt:alice"),
        "the disconnect is audited: {text}"
    );
    let log = gw.log();
    assert!(log.len() > 100, "the debug log was captured: {log}");
    let mut db = std::fs::read(gw.dir.path().join("creds.db")).unwrap_or_default();
    db.extend(std::fs::read(gw.dir.path().join("creds.db-wal")).unwrap_or_default());
    let db = String::from_utf8_lossy(&db);
    for secret in [
        AT1,
        RT1,
        AT2,
        RT2,
        CODE,
        verifier.as_str(),
        alice.as_str(),
        UO_CLIENT_SECRET,
        CRED_KEY,
    ] {
        assert!(!text.contains(secret), "the audit holds {secret:?}");
        assert!(!metrics_text.contains(secret), "/metrics holds {secret:?}");
        assert!(!log.contains(secret), "the gateway's log holds {secret:?}");
        assert!(
            !db.contains(secret),
            "the credential store holds {secret:?} in clear"
        );
    }
}
