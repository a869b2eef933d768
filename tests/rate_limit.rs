//! Rate limits through both doors, with the in-memory store.

mod common;
use common::*;
use serde_json::json;

fn limited_config(up: u16, mcp: u16, proxy: u16, admin: u16) -> String {
    let server = server_section((mcp, proxy, admin), 2);
    let local = loopback_get_api(
        "local",
        up,
        r#"rate_limit = { requests = 3, window = "10s" }"#,
    );
    let search = loopback_get_api(
        "search",
        up,
        r#"endpoint_rate_limits = [{ path = "/search/**", requests = 1, window = "1m" }]"#,
    );
    format!(
        r#"
{server}
[rate_limits]
per_user = {{ requests = 100, window = "1m", burst = 50 }}
legacy_headers = true
store = {{ kind = "memory" }}

{local}
{search}"#
    )
}

fn start(up: &Upstream) -> Gateway {
    Gateway::start_generated(|(mcp, proxy, admin)| limited_config(up.port, mcp, proxy, admin))
}

#[tokio::test]
async fn proxy_door_429_with_retry_after_and_ratelimit_fields() {
    let up = Upstream::start();
    let gw = start(&up);
    let c = reqwest::Client::new();
    // Calls refused for other reasons cost no quota.
    for _ in 0..5 {
        let r = c.delete(gw.proxy_url("/local/x")).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
    for i in 0..3u32 {
        let r = c.get(gw.proxy_url("/local/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "call {i}");
        let h = r.headers();
        assert_eq!(
            h["ratelimit-policy"].to_str().unwrap(),
            "\"api.local\";q=3;w=10, \"per_user\";q=100;w=60"
        );
        let limit = h["ratelimit"].to_str().unwrap();
        assert!(
            limit.starts_with(&format!("\"api.local\";r={};t=", 2 - i)),
            "{limit}"
        );
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(
            h["x-ratelimit-remaining"].to_str().unwrap(),
            (2 - i).to_string()
        );
    }
    let r = c.get(gw.proxy_url("/local/x")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (9..=10).contains(&retry),
        "the sliding window frees a slot 10 s after the first call: {retry}"
    );
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"api.local\";r=0;"));
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["error"], "rate_limited");
    assert_eq!(p["policy"], "api.local");
    assert_eq!(p["retry_after_s"], retry);
    assert_eq!(up.count(), 3, "a limited call reached the upstream");
}

#[tokio::test]
async fn mcp_door_rate_limited_tool_error() {
    let up = Upstream::start();
    let gw = start(&up);
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let catalogue = s.call("list_apis", json!({})).await;
    let rl = &catalogue["structuredContent"]["apis"][0]["rate_limit"];
    assert_eq!(rl["requests"], 3);
    assert_eq!(rl["burst"], 3);
    for _ in 0..3 {
        let r = s
            .call("api_gateway", json!({"api": "local", "endpoint": "/x"}))
            .await;
        assert_eq!(r["isError"], false, "{r}");
    }
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/x"}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    let sc = &r["structuredContent"];
    assert_eq!(sc["error"], "rate_limited");
    assert_eq!(sc["policy"], "api.local");
    assert_eq!(sc["status"], 429);
    let retry = sc["retry_after_s"].as_u64().unwrap();
    assert!((9..=10).contains(&retry), "{r}");
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn both_doors_share_one_limiter() {
    let up = Upstream::start();
    let gw = start(&up);
    let c = reqwest::Client::new();
    for _ in 0..2 {
        assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 200);
    }
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/x"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/x"}))
        .await;
    assert_eq!(r["structuredContent"]["error"], "rate_limited", "{r}");
    assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 429);
}

#[tokio::test]
async fn endpoint_limits_apply_only_to_matching_paths() {
    let up = Upstream::start();
    let gw = start(&up);
    let c = reqwest::Client::new();
    assert_eq!(
        get_status(&c, &gw.proxy_url("/search/search/q1")).await,
        200
    );
    let r = c
        .get(gw.proxy_url("/search/search/q2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["policy"], "api.search:/search/**");
    // Other paths of the same API are not limited by the endpoint policy.
    for i in 0..5 {
        let r = c
            .get(gw.proxy_url(&format!("/search/items/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// Per-principal limits: `per_user` counts each authenticated principal separately (two
/// users do not share a budget), and an API key's own `rate_limit` applies on top, named
/// `key.NAME`, on both doors.
#[tokio::test]
async fn per_user_and_per_key_limits_follow_the_principal() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(|ports| {
        let listen = listen_section(ports, 2);
        let auth = auth_section(true);
        let key_hash = sha256_hex("agm_limited-key-0123456789abcdefghijklmnop");
        let local = loopback_get_api("local", up.port, "");
        format!(
            "{listen}{auth}[[auth.api_keys]]\nname = \"limited\"\nkey_sha256 = \"{key_hash}\"\n\
             rate_limit = {{ requests = 2, window = \"1m\" }}\n\n\
             [rate_limits]\nper_user = {{ requests = 3, window = \"1m\" }}\n\n{local}"
        )
    });
    let c = reqwest::Client::new();
    let get = |authz: String| {
        c.get(gw.proxy_url("/local/x"))
            .header("authorization", authz)
            .send()
    };
    let alice = format!("Bearer {}", jwt(json!({"sub": "alice"})));
    let bob = format!("Bearer {}", jwt(json!({"sub": "bob"})));
    for _ in 0..3 {
        assert_eq!(get(alice.clone()).await.unwrap().status(), 200);
    }
    let r = get(alice.clone()).await.unwrap();
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["policy"], "per_user");
    // Bob has his own budget; a fresh token for alice does not reset hers.
    assert_eq!(get(bob.clone()).await.unwrap().status(), 200);
    let alice_again = format!("Bearer {}", jwt(json!({"sub": "alice", "jti": "2"})));
    assert_eq!(get(alice_again).await.unwrap().status(), 429);

    // The key's own limit (2) bites before per_user (3), and is reported by name.
    let key = "ApiKey agm_limited-key-0123456789abcdefghijklmnop".to_string();
    for _ in 0..2 {
        let r = get(key.clone()).await.unwrap();
        assert_eq!(r.status(), 200);
        let policy = r.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(policy.contains("\"key.limited\";q=2;w=60"), "{policy}");
    }
    let r = get(key.clone()).await.unwrap();
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["policy"], "key.limited");

    // The MCP door shares the same counters.
    let mut s = McpSession::connect_with(&gw.mcp_url(), &[("authorization", &bob)]).await;
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/x"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/x"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let r = s
        .call("api_gateway", json!({"api": "local", "endpoint": "/x"}))
        .await;
    assert_eq!(r["structuredContent"]["error"], "rate_limited", "{r}");
    assert_eq!(r["structuredContent"]["policy"], "per_user");
}
