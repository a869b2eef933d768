//! The shared Redis rate-limit store, against a real `redis-server` spawned per test.

mod common;
use common::*;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(up: u16, url: &str, limit: &str, store_extra: &str, ports: (u16, u16, u16)) -> String {
    let server = server_section(ports, 1);
    let local = loopback_get_api("local", up, &format!("rate_limit = {limit}"));
    format!(
        r#"
{server}
[rate_limits]
store = {{ kind = "redis", url = "{url}"{store_extra} }}

{local}"#
    )
}

fn start(up: &Upstream, redis: u16, limit: &str, store_extra: &str) -> Gateway {
    start_url(
        up,
        &format!("redis://127.0.0.1:{redis}"),
        limit,
        store_extra,
    )
}

fn start_url(up: &Upstream, url: &str, limit: &str, store_extra: &str) -> Gateway {
    Gateway::start_generated(|ports| config(up.port, url, limit, store_extra, ports))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_limit_exactly() {
    let redis = three_replicas(100, 1000).await;
    let stats = redis.cmd(&["INFO", "commandstats"]);
    // The script prunes a log policy's sorted set once per decision it makes.
    let decisions = calls(&stats, "zremrangebyscore");
    let scripts = calls(&stats, "evalsha") + calls(&stats, "eval");
    assert!(decisions >= 100, "{stats}");
    // Blocked callers are answered from the local "blocked until" cache, not Redis.
    assert!(
        decisions < 1000,
        "every blocked call went to Redis: {decisions}"
    );
    // Concurrent decisions share script invocations (group commit).
    assert!(
        scripts < decisions,
        "{scripts} script calls for {decisions} decisions: {stats}"
    );
}

/// Above 1000 requests per window the ceiling is counted in slots (a hash of at most 64
/// counters, not a sorted set of every admission); the shared limit is still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_large_limit_exactly() {
    let redis = three_replicas(1200, 1500).await;
    let keys = redis.cmd(&["KEYS", "{agm}:slots:*"]);
    assert!(keys.contains("{agm}:slots:api:local"), "{keys}");
    assert!(!redis.cmd(&["KEYS", "{agm}:log:*"]).contains("api:local"));
    let hlen = redis.cmd(&["HLEN", "{agm}:slots:api:local"]);
    let hlen: u64 = hlen.trim().trim_start_matches(':').parse().unwrap();
    assert!(hlen <= 2 + 64, "{hlen} fields");
}

/// `requests` admitted of `total` concurrent calls spread over three gateways sharing Redis.
async fn three_replicas(requests: u32, total: usize) -> Redis {
    let redis = Redis::start();
    let up = Upstream::start();
    let limit = format!("{{ requests = {requests}, window = \"1m\" }}");
    let extra = r#", timeout = "2s""#;
    let gws: Vec<Gateway> = (0..3)
        .map(|_| start(&up, redis.port, &limit, extra))
        .collect();
    let client = reqwest::Client::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..total {
        let url = gws[i % 3].proxy_url("/local/x");
        let (c, sem) = (client.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            get_status(&c, &url).await
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, requests as usize, "admitted across replicas");
    assert_eq!(limited, total - requests as usize);
    assert_eq!(up.count(), requests as usize);
    redis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_restart_and_script_flush_are_survived() {
    let redis = Redis::start();
    let up = Upstream::start();
    let extra = r#", timeout = "500ms", cooldown = "100ms""#;
    let gw = start(&up, redis.port, r#"{ requests = 3, window = "1m" }"#, extra);
    let c = reqwest::Client::new();
    assert_eq!(get_status(&c, &gw.proxy_url("/local/a")).await, 200);

    // Redis restarts empty on the same port: nothing crashes and the shared store is used again.
    let port = redis.port;
    drop(redis);
    let redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = get_status(&c, &gw.proxy_url("/local/b")).await;
        assert!(s == 200 || s == 429, "{s}");
        if redis.dbsize() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never used the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One call is now counted in the fresh Redis. SCRIPT FLUSH must not lose or break that.
    assert_eq!(redis.cmd(&["SCRIPT", "FLUSH"]).trim(), "+OK");
    let mut admitted = 0;
    loop {
        match get_status(&c, &gw.proxy_url("/local/c")).await {
            200 => admitted += 1,
            429 => break,
            other => panic!("unexpected {other}"),
        }
        assert!(admitted <= 3);
    }
    assert_eq!(admitted, 2, "the count must survive SCRIPT FLUSH");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_falls_back_within_budget_and_recovers() {
    let redis = Redis::start();
    let up = Upstream::start();
    let extra = r#", timeout = "50ms", cooldown = "300ms", on_error = "local", local_share = 0.5"#;
    let gw = start(
        &up,
        redis.port,
        r#"{ requests = 1000, window = "1m" }"#,
        extra,
    );
    let c = reqwest::Client::new();
    assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 200);
    assert!(redis.dbsize() > 0, "the shared store was not used");

    let port = redis.port;
    redis.signal("-KILL");
    drop(redis);
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let t = Instant::now();
        let s = get_status(&c, &gw.proxy_url("/local/x")).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            s, 200,
            "on_error = local keeps admitting within the local share"
        );
    }
    // Loose bound on purpose: the budget is 50 ms; this only catches multi-second stalls.
    assert!(
        slowest < Duration::from_millis(1500),
        "a call stalled for {slowest:?}"
    );
    // Each fallback decision is counted, and the store is reported down.
    assert_eq!(
        metric(&gw, "api_rate_limiter_fallbacks_total{on_error=\"local\"}").await,
        30.0
    );
    assert_eq!(metric(&gw, "api_rate_limiter_store_up").await, 0.0);

    let redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.dbsize() == 0 {
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis came back"
        );
        assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&gw, "api_rate_limiter_store_up").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_does_not_stall_and_deny_fails_closed() {
    let redis = Redis::start();
    let up = Upstream::start();
    let limit = r#"{ requests = 1000, window = "1m" }"#;
    let local = start(
        &up,
        redis.port,
        limit,
        r#", timeout = "50ms", on_error = "local""#,
    );
    let deny = start(
        &up,
        redis.port,
        limit,
        r#", timeout = "50ms", on_error = "deny""#,
    );
    let allow = start(
        &up,
        redis.port,
        limit,
        r#", timeout = "50ms", on_error = "allow""#,
    );
    let c = reqwest::Client::new();
    redis.signal("-STOP");
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        for (gw, expected) in [(&local, 200), (&deny, 503), (&allow, 200)] {
            let t = Instant::now();
            let r = c.get(gw.proxy_url("/local/x")).send().await.unwrap();
            slowest = slowest.max(t.elapsed());
            assert_eq!(r.status().as_u16(), expected);
            if expected == 503 {
                let p: serde_json::Value = r.json().await.unwrap();
                assert_eq!(p["error"], "rate_limiter_unavailable");
            }
        }
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "a call stalled for {slowest:?}"
    );
    redis.signal("-CONT");
}

/// Signature nonces live in Redis when the limiter does: a signed request accepted by one
/// replica is a replay at another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_nonces_are_shared_across_replicas() {
    let redis = Redis::start();
    let up = Upstream::start();
    let secret = "shared-signing-secret-0123456789abcdef";
    let make = |ports| {
        format!(
            "{}\n[security.signatures]\nrequired = true\nkeys = [{{ id = \"k\", secret = \"{secret}\" }}]\n",
            config(up.port, &format!("redis://127.0.0.1:{}", redis.port), r#"{ requests = 1000, window = "1m" }"#, r#", timeout = "2s""#, ports)
        )
    };
    let a = Gateway::start_generated(make);
    let b = Gateway::start_generated(make);
    let c = reqwest::Client::new();
    let signed = |gw: &Gateway, nonce: &str| {
        let mut req = c.get(gw.proxy_url("/local/x"));
        for (k, v) in signature_headers("k", secret, "GET", "/local/x", "", b"", now_s(), nonce) {
            req = req.header(k, v);
        }
        req.send()
    };
    assert_eq!(
        signed(&a, "nonce-shared-000001").await.unwrap().status(),
        200
    );
    let r = signed(&b, "nonce-shared-000001").await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "signature_replayed");
    assert_eq!(
        signed(&b, "nonce-shared-000002").await.unwrap().status(),
        200
    );
    let keys = redis.cmd(&["KEYS", "{agm}:nonce:*"]);
    assert!(keys.contains("nonce-shared-000001"), "{keys}");
    assert_eq!(up.count(), 2);
}

/// `rediss://` with a username and password: TLS verified against a CA the gateway is told
/// to trust (`SSL_CERT_FILE`), ACL authentication, and the shared limit enforced through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_username_and_password() {
    let pki = Pki::new();
    let p = |n: &str| pki.path(n);

    let port = free_port();
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &p("server.pem"),
            "--tls-key-file",
            &p("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &p("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--user", "default", "off"])
        .args(["--user", "agm", "on", ">s3cret-pass", "~*", "&*", "+@all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let up = Upstream::start();
    let ca = p("ca.pem");
    let make = |ports| {
        let server = server_section(ports, 1);
        let local = loopback_get_api(
            "local",
            up.port,
            r#"rate_limit = { requests = 3, window = "1m" }"#,
        );
        format!(
            "{server}\n[rate_limits]\nstore = {{ kind = \"redis\", url = \"rediss://agm:s3cret-pass@127.0.0.1:{port}\", \
             timeout = \"2s\", on_error = \"deny\" }}\n\n{local}"
        )
    };
    let gw = Gateway::start_generated_env(make, &[("SSL_CERT_FILE", &ca)]);
    let c = reqwest::Client::new();
    let url = gw.proxy_url("/local/x");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get_status(&c, &url).await);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 3, "the limit holds through the TLS store: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "on_error = deny would give 503: {statuses:?}"
    );

    // A gateway that does not trust the CA cannot use the store and (on_error = deny) says so.
    let untrusting = Gateway::start_generated_env(make, &[("SSL_CERT_FILE", "/nonexistent.pem")]);
    assert_eq!(get_status(&c, &untrusting.proxy_url("/local/x")).await, 503);
    let _ = child.kill();
    let _ = child.wait();
}

/// A Redis limiter on `redis`, called directly (no gateway): a 2 s budget, and failures
/// refuse (`on_error = "deny"`) so no fallback can hide a wrong answer. It owns a runtime,
/// so build and drop it outside any other.
fn direct_limiter(redis: &Redis) -> api_gateway_mcp::ratelimit::Limiter {
    use api_gateway_mcp::ratelimit::{Limiter, OnError, RedisLimiter, RedisSettings};
    Limiter::Redis(Box::new(
        RedisLimiter::new(RedisSettings {
            url: format!("redis://127.0.0.1:{}", redis.port),
            timeout: Duration::from_secs(2),
            cooldown: Duration::from_secs(1),
            on_error: OnError::Deny,
            topology: api_gateway_mcp::config::Topology::Standalone,
        })
        .unwrap(),
    ))
}

/// The script's three ways of keeping the ceiling, called directly: GCRA alone (`burst = 1`),
/// the exact log, and slots above 1000 requests. Retry-After is exact for the first two and
/// at most one slot (window / 64) past the exact answer for slots.
#[test]
fn script_modes_agree_with_the_memory_limiter() {
    use api_gateway_mcp::ratelimit::{Ceiling, Limiter, Policy, RateLimitDecision};
    let redis = Redis::start();
    let shared = direct_limiter(&redis);
    let memory = Limiter::memory();
    let hour = Duration::from_secs(3600);
    // The Redis limiter owns a runtime, so it is built and dropped outside this one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cases = [
            (
                Policy {
                    name: "unit".into(),
                    requests: 5,
                    window: hour,
                    burst: 1,
                    shadow: false,
                },
                Ceiling::Gcra,
            ),
            (
                Policy {
                    name: "log".into(),
                    requests: 40,
                    window: hour,
                    burst: 40,
                    shadow: false,
                },
                Ceiling::Log,
            ),
            (
                Policy {
                    name: "slots".into(),
                    requests: 1500,
                    window: hour,
                    burst: 1500,
                    shadow: false,
                },
                Ceiling::Slots,
            ),
        ];
        for (p, ceiling) in &cases {
            assert_eq!(p.ceiling(), *ceiling);
            let key = format!("direct:{}", p.name);
            let started = Instant::now();
            for limiter in [&shared, &memory] {
                let checks = [(key.clone(), p)];
                let admitted_first = (0..p.burst)
                    .map(|_| async { limiter.check(&checks).await })
                    .collect::<Vec<_>>();
                let mut admitted = 0;
                for f in admitted_first {
                    if matches!(f.await.unwrap(), RateLimitDecision::Allowed { .. }) {
                        admitted += 1;
                    }
                }
                assert_eq!(admitted, p.burst, "{}: back-to-back admissions", p.name);
                let RateLimitDecision::Denied {
                    retry_after,
                    policy,
                    states,
                } = limiter.check(&checks).await.unwrap()
                else {
                    panic!("{}: admitted past the limit", p.name)
                };
                assert_eq!(policy, p.name);
                assert_eq!(states[0].remaining, 0);
                let elapsed = started.elapsed();
                let (low, high) = match ceiling {
                    // Next in the GCRA schedule: window / requests after the first admission.
                    Ceiling::Gcra => (hour / 5 - elapsed, hour / 5),
                    // The oldest admission leaves the window.
                    Ceiling::Log => (hour - elapsed, hour),
                    // …or, counted in slots, up to one slot later.
                    Ceiling::Slots => (hour - elapsed, hour + hour / 64),
                };
                assert!(
                    retry_after >= low && retry_after <= high,
                    "{}: retry after {retry_after:?}, not within {low:?}..{high:?}",
                    p.name
                );
            }
        }
    });
    // What each mode keeps in Redis.
    assert!(redis
        .cmd(&["TYPE", "{agm}:log:direct:log"])
        .contains("zset"));
    assert!(redis
        .cmd(&["TYPE", "{agm}:slots:direct:slots"])
        .contains("hash"));
    assert!(redis
        .cmd(&["TYPE", "{agm}:log:direct:unit"])
        .contains("none"));
    assert!(
        redis
            .cmd(&["PTTL", "{agm}:slots:direct:slots"])
            .trim_start_matches(':')
            .trim()
            .parse::<i64>()
            .unwrap()
            > 0
    );
}

/// Concurrent decisions travel together: one script invocation carries many of them, each
/// key's state is read once per batch and written back at its end, and the outcome is the
/// memory limiter's. Two policies per decision: GCRA with `burst = 10` over a slot-counted
/// ceiling, and an exact log without GCRA (`burst = requests`).
#[test]
fn concurrent_decisions_share_a_batch_and_agree_with_the_memory_limiter() {
    use api_gateway_mcp::ratelimit::{Limiter, Policy, RateLimitDecision};
    let redis = Redis::start();
    let shared = direct_limiter(&redis);
    let memory = Limiter::memory();
    let hour = Duration::from_secs(3600);
    let bursty = Policy {
        name: "bursty".into(),
        requests: 1500,
        window: hour,
        burst: 10,
        shadow: false,
    };
    let log = Policy {
        name: "log".into(),
        requests: 40,
        window: hour,
        burst: 40,
        shadow: false,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcomes = rt.block_on(async {
        let mut outcomes = Vec::new();
        for limiter in [&shared, &memory] {
            // Three callers interleaved, so one batch carries several groups: two with both
            // policies on their own keys, one with the log policy alone.
            let checks = [("b:k".to_string(), &bursty), ("l:k".to_string(), &log)];
            let other = [("b:j".to_string(), &bursty), ("l:j".to_string(), &log)];
            let log_only = [("l:x".to_string(), &log)];
            let callers: [&[(String, &Policy)]; 3] = [&checks, &other, &log_only];
            let decisions =
                futures::future::join_all((0..120).map(|i| limiter.check(callers[i % 3]))).await;
            // Per caller: the remaining counts of its admissions, and who refused the rest.
            let mut seen = vec![(Vec::new(), Vec::new()); 3];
            for (i, d) in decisions.into_iter().enumerate() {
                match d.unwrap() {
                    RateLimitDecision::Allowed { states } => seen[i % 3]
                        .0
                        .push(states.iter().map(|s| s.remaining).collect::<Vec<_>>()),
                    RateLimitDecision::Denied { policy, .. } => seen[i % 3].1.push(policy),
                }
            }
            for s in &mut seen {
                s.0.sort();
            }
            // After the batch, a lone decision sees what the batch wrote back.
            let RateLimitDecision::Denied {
                policy,
                retry_after,
                ..
            } = limiter.check(&checks).await.unwrap()
            else {
                panic!("admitted past the burst")
            };
            outcomes.push((seen, policy, retry_after));
        }
        outcomes
    });
    let (seen, policy, retry_after) = &outcomes[0];
    // Ten back to back (the burst), each leaving one fewer; the log counted each of them.
    let expected: Vec<Vec<u32>> = (0..10).map(|i| vec![i, 30 + i]).collect();
    for (remaining, refused_by) in &seen[..2] {
        assert_eq!(remaining, &expected);
        assert_eq!(refused_by.len(), 30);
        assert!(refused_by.iter().all(|p| p == "bursty"), "{refused_by:?}");
    }
    // The log alone admits all 40 of its caller's calls.
    let expected: Vec<Vec<u32>> = (0..40).map(|i| vec![i]).collect();
    assert_eq!(seen[2], (expected, Vec::new()));
    assert_eq!(policy, "bursty");
    // The next GCRA slot: one interval (window / requests = 2.4 s) after the burst began.
    assert!(
        *retry_after > Duration::from_millis(2000) && *retry_after <= Duration::from_millis(2400),
        "{retry_after:?}"
    );
    assert_eq!(outcomes[0].0, outcomes[1].0, "Redis and memory admit alike");
    assert_eq!(outcomes[0].1, outcomes[1].1);
    // Fewer script invocations than decisions: they were batched.
    let stats = redis.cmd(&["INFO", "commandstats"]);
    let scripts = calls(&stats, "evalsha") + calls(&stats, "eval");
    assert!(scripts > 0 && scripts < 121, "{stats}");
    // What the batch wrote back: ten admissions counted, a GCRA time, both with a TTL.
    let total = redis.cmd(&["HGET", "{agm}:slots:b:k", "t"]);
    assert!(total.contains("10"), "{total}");
    for key in ["{agm}:slots:b:k", "{agm}:gcra:b:k", "{agm}:log:l:k"] {
        let ttl: i64 = redis
            .cmd(&["PTTL", key])
            .trim_start_matches(':')
            .trim()
            .parse()
            .unwrap();
        assert!(ttl > 3_600_000, "{key}: {ttl}");
    }
    // No GCRA key for the log policy: burst = requests keeps the ceiling alone.
    assert!(redis.cmd(&["TYPE", "{agm}:gcra:l:k"]).contains("none"));
    drop(rt);
}

/// Statuses of `n` sequential GETs of `/local/x`, spread round-robin over the gateways.
async fn statuses(gws: &[&Gateway], n: usize) -> Vec<u16> {
    let c = reqwest::Client::new();
    let mut out = Vec::new();
    for i in 0..n {
        out.push(get_status(&c, &gws[i % gws.len()].proxy_url("/local/x")).await);
    }
    out
}

/// How often `cmd` ran, from `INFO commandstats`.
fn calls(stats: &str, cmd: &str) -> u64 {
    let prefix = format!("cmdstat_{cmd}:calls=");
    stats
        .lines()
        .filter_map(|l| {
            l.strip_prefix(&prefix)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn admitted(statuses: &[u16]) -> usize {
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    statuses.iter().filter(|s| **s == 200).count()
}

/// A real three-node Redis Cluster (`--cluster-enabled yes`, joined by `redis-cli --cluster
/// create`). Two gateways share it through `redis+cluster://`; the script's several keys
/// (per API and per user) all sit in `{agm}`'s slot, so no call meets CROSSSLOT, no call
/// falls back, and the shared limit is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_enforces_shared_limits_without_crossslot() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Redis> = (0..3)
        .map(|i| {
            let port = free_port();
            let conf = dir.path().join(format!("nodes-{i}.conf"));
            Redis::spawn(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--dir",
                    dir.path().to_str().unwrap(),
                ],
            )
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli must be installed (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes
        .iter()
        .all(|n| n.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        assert!(Instant::now() < deadline, "the cluster never became ok");
        std::thread::sleep(Duration::from_millis(100));
    }

    let up = Upstream::start();
    let url = format!("redis+cluster://{}", addrs.join(","));
    let extra = r#", timeout = "2s", on_error = "deny""#;
    let make = |ports| {
        config(
            up.port,
            &url,
            r#"{ requests = 7, window = "1m" }"#,
            extra,
            ports,
        )
        .replace(
            "[rate_limits]\n",
            "[rate_limits]\nper_user = { requests = 1000, window = \"1m\" }\n",
        )
    };
    let a = Gateway::start_generated(make);
    let b = Gateway::start_generated(make);
    let got = statuses(&[&a, &b], 20).await;
    // on_error = "deny" would answer 503: every decision came from the cluster.
    assert_eq!(admitted(&got), 7, "{got:?}");
    assert_eq!(up.count(), 7);
    for gw in [&a, &b] {
        assert_eq!(
            metric(gw, "api_rate_limiter_fallbacks_total{on_error=\"deny\"}").await,
            0.0
        );
    }
    // The counters live on exactly one node: the owner of {agm}'s slot.
    let slot = nodes[0].cmd(&["CLUSTER", "KEYSLOT", "{agm}"]);
    let with_keys: Vec<&Redis> = nodes.iter().filter(|n| n.dbsize() > 0).collect();
    assert_eq!(with_keys.len(), 1, "keys spread over nodes");
    let slot = slot.trim().trim_start_matches(':');
    let in_slot = with_keys[0].cmd(&["CLUSTER", "COUNTKEYSINSLOT", slot]);
    assert_eq!(
        in_slot
            .trim()
            .trim_start_matches(':')
            .parse::<u64>()
            .unwrap(),
        with_keys[0].dbsize()
    );
    assert!(with_keys[0].dbsize() >= 3, "per-API and per-user keys");
}

/// A Sentinel names the master: `redis+sentinel://host:port/NAME`. The limit is enforced on
/// the master it names; after `SENTINEL FAILOVER` promotes the replica, the gateway asks the
/// Sentinel again and keeps counting on the new master, where the replicated counts carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_names_the_master_and_a_failover_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let master = Redis::start();
    let replica_port = free_port();
    let replica = Redis::spawn(
        replica_port,
        &["--replicaof", "127.0.0.1", &master.port.to_string()],
    );
    let sentinel_port = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor agm 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds agm 1000\n\
             sentinel failover-timeout agm 5000\n",
            master.port
        ),
    )
    .unwrap();
    let sentinel = Redis::spawn(sentinel_port, &[conf.to_str().unwrap(), "--sentinel"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica
        .cmd(&["INFO", "replication"])
        .contains("master_link_status:up")
        || !sentinel
            .cmd(&["SENTINEL", "REPLICAS", "agm"])
            .contains(&replica_port.to_string())
    {
        assert!(
            Instant::now() < deadline,
            "replication or sentinel not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let up = Upstream::start();
    let url = format!("redis+sentinel://127.0.0.1:{sentinel_port}/agm");
    let extra = r#", timeout = "1s", cooldown = "100ms", on_error = "deny""#;
    let gw = start_url(&up, &url, r#"{ requests = 6, window = "1m" }"#, extra);
    assert_eq!(admitted(&statuses(&[&gw], 3).await), 3);
    assert!(master.dbsize() > 0, "counted on the master");

    // Fail over: the replica becomes the master.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replica
        .cmd(&["INFO", "replication"])
        .contains("role:master")
    {
        let _ = sentinel.try_cmd(&["SENTINEL", "FAILOVER", "agm"]);
        assert!(Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Calls during the switch may be refused (on_error = "deny": 503); once the gateway
    // follows the Sentinel, the three remaining admissions of the replicated count follow.
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ok = 0;
    loop {
        match get_status(&c, &gw.proxy_url("/local/x")).await {
            200 => ok += 1,
            429 => break,
            503 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected {other}"),
        }
        assert!(Instant::now() < deadline, "never settled on the new master");
    }
    assert_eq!(ok, 3, "the count carried over to the new master");
}

/// The console's read of a limit (a read-only script on Redis) agrees with the memory
/// limiter's for each way of keeping the ceiling, counts nothing, and a reset gives the key
/// its whole allowance back.
#[test]
fn peek_and_reset_agree_with_the_memory_limiter() {
    use api_gateway_mcp::ratelimit::{Limiter, Policy, RateLimitDecision};
    let redis = Redis::start();
    let shared = direct_limiter(&redis);
    let memory = Limiter::memory();
    let hour = Duration::from_secs(3600);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (name, requests, burst) in [("unit", 5, 1), ("log", 40, 40), ("slots", 1500, 1500)] {
            let p = Policy {
                name: name.into(),
                requests,
                window: hour,
                burst,
                shadow: false,
            };
            let key = format!("peek:{name}");
            let checks = [(key.clone(), &p)];
            let used = burst.min(3);
            for limiter in [&shared, &memory] {
                for _ in 0..used {
                    assert!(matches!(
                        limiter.check(&checks).await.unwrap(),
                        RateLimitDecision::Allowed { .. }
                    ));
                }
            }
            let a = shared.peek_states(&checks).await.unwrap();
            let b = memory.peek_states(&checks).await.unwrap();
            let again = shared.peek_states(&checks).await.unwrap();
            assert_eq!(a[0].remaining, b[0].remaining, "{name}: {a:?} vs {b:?}");
            assert_eq!(
                a[0].remaining, again[0].remaining,
                "{name}: a peek counts nothing"
            );
            assert_eq!(a[0].remaining, burst - used, "{name}");
            assert!(
                a[0].reset > Duration::ZERO && a[0].reset <= hour + hour / 64,
                "{name}: {a:?}"
            );
            shared.reset(std::slice::from_ref(&key)).await.unwrap();
            memory.reset(std::slice::from_ref(&key)).await.unwrap();
            for limiter in [&shared, &memory] {
                assert_eq!(
                    limiter.peek_states(&checks).await.unwrap()[0].remaining,
                    burst.min(requests)
                );
                for _ in 0..burst {
                    assert!(
                        matches!(
                            limiter.check(&checks).await.unwrap(),
                            RateLimitDecision::Allowed { .. }
                        ),
                        "{name}: the reset key admits its whole burst again"
                    );
                }
            }
        }
    });
    assert!(redis.cmd(&["EXISTS", "{agm}:gcra:peek:unit"]).contains('1'));
}
