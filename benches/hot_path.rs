//! Micro-benchmarks of the per-request hot path: what authentication, RBAC and the rest of
//! the policy pipeline cost each call. Run with `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;

use api_gateway_mcp::config::Config;
use api_gateway_mcp::egress::{self, Egress, EndpointPath};
use api_gateway_mcp::policy::{Call, Caller, CallerRequest, Door, Payload, Pipeline, Who};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};

const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef-0123";
const API_KEY: &str = "agm_bench-key-0123456789abcdefghijklmnopqrstuv";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// A config with JWT and API-key auth, 20 RBAC roles, IP rules, and 10 APIs.
fn config(required: bool, rbac: bool) -> Config {
    let mut text = format!(
        "[auth]\nrequired = {required}\nmethods = [\"bearer_token\", \"api_key\"]\n\
         [auth.jwt]\nsecret = \"{JWT_SECRET}\"\nissuer = \"https://issuer.test\"\n\
         audience = \"gw\"\nalgorithms = [\"HS256\"]\n\
         [[auth.api_keys]]\nname = \"bench\"\nkey_sha256 = \"{}\"\nroles = [\"role-19\"]\n\
         [security]\nip_allow = [\"10.0.0.0/8\", \"127.0.0.0/8\"]\nip_deny = [\"10.9.0.0/16\"]\n",
        sha256_hex(API_KEY)
    );
    for i in 0..10 {
        text.push_str(&format!(
            "[[apis]]\nname = \"api{i}\"\nbase_url = \"https://127.0.0.{}:443/v1\"\n\
             allow_private_network = true\n\
             methods = [\"GET\", \"POST\"]\npaths = [\"/users/*\", \"/repos/**\", \"/search\"]\n\
             deny_paths = [\"/repos/*/admin/**\"]\n",
            i + 1
        ));
    }
    if rbac {
        for i in 0..20 {
            text.push_str(&format!(
                "[[rbac.roles]]\nname = \"role-{i}\"\nallow = [{{ api = \"api{}\", methods = [\"GET\"], paths = [\"/repos/**\"] }}]\n\
                 deny = [{{ api = \"api{}\", paths = [\"/repos/secret/**\"] }}]\n",
                i % 10,
                i % 10
            ));
        }
    }
    Config::parse(&text, &|_| None).expect("bench config is valid")
}

fn token() -> String {
    let now = jsonwebtoken::get_current_timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "gw",
                            "exp": now + 3600, "iat": now, "roles": ["role-9", "role-19"]}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn pipeline(required: bool, rbac: bool) -> Pipeline {
    Pipeline::new(
        Arc::new(config(required, rbac)),
        Arc::new(Egress::new()),
        None,
    )
    .unwrap()
}

fn headers(authz: Option<String>, api_key: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", "localhost".parse().unwrap());
    h.insert("accept", "application/json".parse().unwrap());
    h.insert("user-agent", "bench/1.0".parse().unwrap());
    if let Some(a) = authz {
        h.insert("authorization", a.parse().unwrap());
    }
    if let Some(k) = api_key {
        h.insert("x-api-key", k.parse().unwrap());
    }
    h
}

async fn identify(p: &Pipeline, h: &HeaderMap) -> Caller {
    p.identify(&CallerRequest {
        door: Door::Proxy,
        peer: Some("127.0.0.1".parse().unwrap()),
        method: &Method::GET,
        path: "/api9/repos/o/r",
        query: "",
        headers: h,
        raw_head: None,
        body: None,
        trace: api_gateway_mcp::trace::TraceContext::new_root(),
    })
    .await
    .unwrap()
}

/// Admission of an identified caller's call: stages 5–12 (the destination is a literal
/// address, so no DNS query is made).
async fn evaluate(p: &Pipeline, caller: &Arc<Caller>) {
    let headers = HeaderMap::new();
    let d = p
        .admit(&Call {
            door: Door::Proxy,
            who: Who::Identified(caller.clone()),
            api: "api9",
            method: &Method::GET,
            endpoint: "/repos/o/r/issues?state=open",
            query: &[],
            opaque_segments: false,
            payload: Payload::Streamed { headers: &headers },
        })
        .await;
    assert!(d.is_ok(), "{d:?}");
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Authentication alone.
    let anon = pipeline(false, false);
    let authed = pipeline(true, true);
    let bearer = headers(Some(format!("Bearer {}", token())), None);
    let keyed = headers(None, Some(API_KEY));
    let none = headers(None, None);
    let mut g = c.benchmark_group("identify");
    g.bench_function("anonymous", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(identify(&anon, &none).await) })
    });
    g.bench_function("jwt_hs256", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(identify(&authed, &bearer).await) })
    });
    g.bench_function("api_key", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(identify(&authed, &keyed).await) })
    });
    g.finish();

    // The policy decision (allow-lists, RBAC, limits off) for an identified caller.
    let anon_caller = Arc::new(rt.block_on(identify(&anon, &none)));
    let jwt_caller = Arc::new(rt.block_on(identify(&authed, &bearer)));
    let mut g = c.benchmark_group("evaluate");
    g.bench_function("no_rbac", |b| {
        b.to_async(&rt)
            .iter(|| async { evaluate(&anon, &anon_caller).await })
    });
    g.bench_function("rbac_20_roles", |b| {
        b.to_async(&rt)
            .iter(|| async { evaluate(&authed, &jwt_caller).await })
    });
    g.finish();

    // The whole per-request access cost: identify + evaluate.
    let mut g = c.benchmark_group("identify_and_evaluate");
    g.bench_function("anonymous_no_rbac", |b| {
        b.to_async(&rt).iter(|| async {
            let caller = Arc::new(identify(&anon, &none).await);
            evaluate(&anon, &caller).await
        })
    });
    g.bench_function("jwt_rbac", |b| {
        b.to_async(&rt).iter(|| async {
            let caller = Arc::new(identify(&authed, &bearer).await);
            evaluate(&authed, &caller).await
        })
    });
    g.bench_function("api_key_rbac", |b| {
        b.to_async(&rt).iter(|| async {
            let caller = Arc::new(identify(&authed, &keyed).await);
            evaluate(&authed, &caller).await
        })
    });
    g.finish();

    // URL building: endpoint validation and the upstream path.
    let cfg = config(false, false);
    let api = cfg.api("api3").unwrap().clone();
    c.bench_function("url_build", |b| {
        b.iter(|| {
            let e =
                EndpointPath::parse(black_box("/repos/owner/name/issues?state=open&per_page=50"))
                    .unwrap();
            black_box(egress::upstream_path_and_query(&api, &e, &[]))
        })
    });
}

/// Rate-limit decisions: the memory backend, and the Redis backend against a redis-server
/// spawned here (skipped when redis-server is not installed).
fn limiter_benches(c: &mut Criterion) {
    use api_gateway_mcp::ratelimit::{Limiter, OnError, Policy, RedisLimiter, RedisSettings};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api = Policy {
        name: "api.bench".into(),
        requests: u32::MAX / 2,
        window: std::time::Duration::from_secs(60),
        burst: u32::MAX / 2,
        shadow: false,
    };
    let user = Policy {
        name: "per_user".into(),
        ..api.clone()
    };
    let checks = vec![
        ("api:bench".to_string(), &api),
        ("user:alice".to_string(), &user),
    ];
    let memory = Limiter::memory();
    let mut g = c.benchmark_group("limiter");
    g.bench_function("memory_two_policies", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(memory.check(&checks).await.is_ok()) })
    });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(std::process::Stdio::null())
        .spawn();
    let Ok(mut server) = server else {
        eprintln!("redis-server not found: skipping limiter/redis_two_policies");
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let redis = Limiter::Redis(Box::new(
        RedisLimiter::new(RedisSettings {
            url: format!("redis://127.0.0.1:{port}"),
            timeout: std::time::Duration::from_secs(1),
            cooldown: std::time::Duration::from_secs(1),
            on_error: OnError::Deny,
            topology: api_gateway_mcp::config::Topology::Standalone,
        })
        .unwrap(),
    ));
    g.bench_function("redis_two_policies", |b| {
        b.to_async(&rt)
            .iter(|| async { assert!(redis.check(&checks).await.is_ok()) })
    });
    // 32 callers at once, as under load: they share script calls (group commit). Criterion
    // reports decisions per second.
    g.throughput(criterion::Throughput::Elements(32));
    g.bench_function("redis_two_policies_32_concurrent", |b| {
        b.to_async(&rt).iter(|| async {
            let all = futures::future::join_all((0..32).map(|_| redis.check(&checks))).await;
            assert!(all.iter().all(|d| d.is_ok()));
        })
    });
    g.finish();
    let _ = server.kill();
    let _ = server.wait();
}

criterion_group!(hot_path, benches, limiter_benches, mcp_benches);
criterion_main!(hot_path);

/// An upstream on a loopback port that answers every request on a kept-alive connection
/// with the same small JSON document.
fn fixed_upstream(rt: &tokio::runtime::Runtime) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                const BODY: &str = r#"{"ok":true,"n":42}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
                    BODY.len()
                );
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// The MCP door's JSON-RPC handling, in process: a stateless (2026-07-28) `tools/call`
/// through rmcp's Streamable HTTP service and the gateway's tool handler, from the HTTP
/// request to the encoded SSE response. `list_apis` is the handling alone; `api_gateway` adds
/// the pipeline and one upstream request over a pooled loopback connection.
fn mcp_benches(c: &mut Criterion) {
    use api_gateway_mcp::gateway::Gateway;
    use http_body_util::{BodyExt, Full};
    // One thread drives everything, so the figures are CPU time rather than hand-offs
    // between threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = fixed_upstream(&rt);
    let config = Config::parse(
        &format!(
            "[auth]\nrequired = false\n[audit]\nenabled = false\n[[apis]]\nname = \"local\"\n\
             base_url = \"http://127.0.0.1:{port}\"\nallow_private_network = true\n\
             methods = [\"GET\"]\npaths = [\"/**\"]\n"
        ),
        &|_| None,
    )
    .unwrap();
    let gateway = Gateway::new(config).unwrap();
    let service = api_gateway_mcp::mcp::http_service(
        api_gateway_mcp::gateway::Live::new(gateway.clone(), None),
        tokio_util::sync::CancellationToken::new(),
    );
    let caller = Arc::new(
        rt.block_on(gateway.pipeline.identify_local(&|_| None))
            .unwrap(),
    );
    let call = |tool: &str, args: serde_json::Value| {
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": args, "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"}}}
        })
        .to_string();
        let tool = tool.to_string();
        let service = service.clone();
        let caller = caller.clone();
        move || {
            let mut request = http::Request::builder()
                .method("POST")
                .uri("http://127.0.0.1/mcp")
                .header("host", "127.0.0.1")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", tool.as_str())
                .body(Full::new(bytes::Bytes::from(body.clone())))
                .unwrap();
            request.extensions_mut().insert(caller.clone());
            let service = service.clone();
            async move {
                let response = service.handle(request).await;
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let ok = body.windows(9).any(|w| w == b"\"result\":")
                    && !body.windows(13).any(|w| w == b"\"isError\":true");
                assert!(ok, "{}", String::from_utf8_lossy(&body));
                black_box(body)
            }
        }
    };
    let list = call("list_apis", serde_json::json!({}));
    let fetch = call(
        "api_gateway",
        serde_json::json!({"api": "local", "endpoint": "/data.json"}),
    );
    let mut g = c.benchmark_group("mcp");
    g.bench_function("tools_call_list_apis", |b| b.to_async(&rt).iter(&list));
    g.bench_function("tools_call_api_gateway", |b| b.to_async(&rt).iter(&fetch));
    g.finish();
}
