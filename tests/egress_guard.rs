//! Egress guarantees that need their own upstreams: TLS verification with SNI, and the SSRF
//! guard applied after DNS resolution.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `path` on `api` is refused on both doors with `error`: a problem+json with `status` from
/// the proxy door, an `isError` result from the MCP tool. Returns the tool result.
async fn refused_on_both_doors(
    gw: &Gateway,
    api: &str,
    path: &str,
    status: u16,
    error: &str,
) -> serde_json::Value {
    let r = reqwest::get(gw.proxy_url(&format!("/{api}{path}")))
        .await
        .unwrap();
    assert_eq!(r.status(), status, "{api}");
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["error"], error, "{api}: {p}");
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": api, "endpoint": path}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["error"], error, "{api}: {r}");
    r
}

fn start_with_apis(apis: &str) -> Gateway {
    Gateway::start_generated(|ports| format!("{}\n{apis}", server_section(ports, 1)))
}

/// A TLS server with a certificate for `localhost` from a throwaway CA, which the gateway
/// must not trust.
struct SelfSignedTls {
    child: Child,
    port: u16,
    _pki: Pki,
}

impl SelfSignedTls {
    fn start() -> SelfSignedTls {
        let pki = Pki::new();
        let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "TLS server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        SelfSignedTls {
            child,
            port,
            _pki: pki,
        }
    }
}

impl Drop for SelfSignedTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_refused_on_both_doors() {
    let tls = SelfSignedTls::start();
    let apis = format!(
        "[[apis]]\nname = \"tls\"\nbase_url = \"https://localhost:{}\"\nallow_private_network = true\npaths = [\"/**\"]\ntimeout = \"3s\"\n",
        tls.port
    );
    let gw = start_with_apis(&apis);

    // A self-signed certificate must not be trusted.
    let r = refused_on_both_doors(&gw, "tls", "/", 502, "upstream_error").await;
    assert!(
        r["structuredContent"]["message"]
            .as_str()
            .unwrap()
            .contains("TLS"),
        "{r}"
    );
}

#[tokio::test]
async fn hostname_resolving_to_loopback_is_refused_without_allow_private_network() {
    let up = Upstream::start();
    let apis = format!(
        "[[apis]]\nname = \"byname\"\nbase_url = \"http://localhost:{0}\"\npaths = [\"/**\"]\n\n[[apis]]\nname = \"mapped\"\nbase_url = \"http://[::ffff:127.0.0.1]:{0}\"\npaths = [\"/**\"]\n",
        up.port
    );
    let gw = start_with_apis(&apis);
    for api in ["byname", "mapped"] {
        refused_on_both_doors(&gw, api, "/x", 403, "egress_denied").await;
    }
    assert_eq!(up.count(), 0);
}

/// Names resolved through `egress.nameservers` (a real DNS server in the test) pass the same
/// SSRF guard: a metadata address, or any private answer among public ones, is refused on
/// both doors; an allowed private API resolves and works.
#[tokio::test]
async fn private_answers_from_dns_are_refused() {
    let up = Upstream::start();
    let dns = DnsServer::start(vec![
        (
            "metadata.evil.test",
            vec!["169.254.169.254".parse().unwrap()],
        ),
        (
            "mixed.evil.test",
            vec![
                "93.184.216.34".parse().unwrap(),
                "10.0.0.7".parse().unwrap(),
            ],
        ),
        ("internal.test", vec!["127.0.0.1".parse().unwrap()]),
    ]);
    let apis = format!(
        "[egress]\nnameservers = [\"127.0.0.1:{dns}\"]\n\n\
         [[apis]]\nname = \"meta\"\nbase_url = \"http://metadata.evil.test:{up}\"\npaths = [\"/**\"]\n\n\
         [[apis]]\nname = \"mixed\"\nbase_url = \"http://mixed.evil.test:{up}\"\npaths = [\"/**\"]\n\n\
         [[apis]]\nname = \"internal\"\nbase_url = \"http://internal.test:{up}\"\npaths = [\"/**\"]\nallow_private_network = true\n",
        dns = dns.port,
        up = up.port
    );
    let gw = start_with_apis(&apis);
    for api in ["meta", "mixed"] {
        refused_on_both_doors(&gw, api, "/latest/meta-data/", 403, "egress_denied").await;
    }
    assert_eq!(up.count(), 0);
    assert!(
        dns.queries.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the names must have been resolved by the configured DNS server"
    );

    let r = reqwest::get(gw.proxy_url("/internal/x")).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "a name the operator allowed resolves and works"
    );
    assert_eq!(up.count(), 1);
}

/// Redirects on the MCP door: not followed by default; when an API allows them, each hop is
/// re-checked: a hop to a destination outside the allow-list is refused, a same-origin hop
/// keeps the credential and a cross-origin hop to another allowed API drops it.
#[tokio::test]
async fn redirects_are_rechecked_and_drop_credentials_across_origins() {
    use std::sync::Arc;
    let up_port = Arc::new(std::sync::atomic::AtomicU16::new(0));
    let p = up_port.clone();
    let up = Upstream::start_with(Arc::new(move |req: &Seen| {
        let port = p.load(std::sync::atomic::Ordering::SeqCst);
        let to = match req.target.as_str() {
            "/a/to-metadata" => "http://169.254.169.254/latest/meta-data/".to_string(),
            "/a/same-origin" => "/a/landing".to_string(),
            "/a/cross-origin" => format!("http://localhost:{port}/b/landing"),
            "/a/to-denied-path" => "/a/private/x".to_string(),
            "/a/loop" => "/a/loop".to_string(),
            _ => return None,
        };
        Some((302, format!("redirect:{to}"), b"moved".to_vec()))
    }));
    up_port.store(up.port, std::sync::atomic::Ordering::SeqCst);
    let apis = format!(
        "[[apis]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:{0}/a\"\nallow_private_network = true\n\
         paths = [\"/**\"]\ndeny_paths = [\"/private/**\"]\nfollow_redirects = 3\n\
         credentials = {{ header = \"X-Upstream-Key\", value = \"${{AGM_TEST_SECRET}}\" }}\n\n\
         [[apis]]\nname = \"b\"\nbase_url = \"http://localhost:{0}/b\"\nallow_private_network = true\npaths = [\"/**\"]\n\n\
         [[apis]]\nname = \"nofollow\"\nbase_url = \"http://127.0.0.1:{0}/a\"\nallow_private_network = true\npaths = [\"/**\"]\n",
        up.port
    );
    let gw = start_with_apis(&apis);
    let mut s = McpSession::connect(&gw.mcp_url()).await;

    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "a", "endpoint": "/to-metadata"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["error"], "forbidden", "{r}");
    assert_eq!(r["structuredContent"]["reason"], "redirect_denied", "{r}");
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "a", "endpoint": "/to-denied-path"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["error"], "forbidden", "{r}");

    up.clear();
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "a", "endpoint": "/same-origin"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["status"], 200, "{r}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].target, "/a/landing");
    assert_eq!(
        seen[1].header("x-upstream-key"),
        Some(SECRET),
        "same origin keeps it"
    );

    up.clear();
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "a", "endpoint": "/cross-origin"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["status"], 200, "{r}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].target, "/b/landing");
    assert_eq!(
        seen[1].header("x-upstream-key"),
        None,
        "credential dropped cross-origin"
    );

    up.clear();
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "a", "endpoint": "/loop"}),
        )
        .await;
    assert_eq!(
        r["structuredContent"]["status"], 302,
        "stops after 3 hops: {r}"
    );
    assert_eq!(up.count(), 4, "the first request and 3 hops");

    up.clear();
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "nofollow", "endpoint": "/same-origin"}),
        )
        .await;
    assert_eq!(
        r["structuredContent"]["status"], 302,
        "not followed by default: {r}"
    );
    assert_eq!(up.count(), 1);
}

/// A credential never leaves through a redirect or an echo, in any form the gateway sent it.
/// A query credential with `+`, `/` and `=` goes out percent-encoded; a followed redirect
/// drops the credential's own parameter, and is refused when the credential stands under
/// another name; on the proxy door an echo of it and a `Location` carrying it are masked.
#[tokio::test]
async fn a_query_credential_never_leaves_through_a_redirect_or_an_echo() {
    use std::sync::atomic::{AtomicU16, Ordering::SeqCst};
    use std::sync::Arc;
    const KEY: &str = "k3y+with/special=chars";
    const ENCODED: &str = "k3y%2Bwith%2Fspecial%3Dchars";
    let up_port = Arc::new(AtomicU16::new(0));
    let p = up_port.clone();
    let up = Upstream::start_with(Arc::new(move |req: &Seen| {
        let port = p.load(SeqCst);
        let to = match req.target.split('?').next().unwrap_or("") {
            "/q/named" => format!("http://localhost:{port}/b/landing?appid={ENCODED}&x=1"),
            "/q/renamed" => format!("http://localhost:{port}/b/landing?token={ENCODED}"),
            "/q/echo" => {
                let body = format!("you sent {}", req.target).into_bytes();
                return Some((200, "text/plain".into(), body));
            }
            _ => return None,
        };
        Some((302, format!("redirect:{to}"), b"moved".to_vec()))
    }));
    up_port.store(up.port, SeqCst);
    let apis = format!(
        "[[apis]]\nname = \"q\"\nbase_url = \"http://127.0.0.1:{0}/q\"\nallow_private_network = true\n\
         paths = [\"/**\"]\nfollow_redirects = 3\n\
         credentials = {{ query = \"appid\", value = \"{KEY}\" }}\n\n\
         [[apis]]\nname = \"b\"\nbase_url = \"http://localhost:{0}/b\"\nallow_private_network = true\npaths = [\"/**\"]\n",
        up.port
    );
    let gw = start_with_apis(&apis);
    let mut s = McpSession::connect(&gw.mcp_url()).await;

    // The credential's own parameter in the Location is dropped, and the hop to another
    // origin carries no credential.
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "q", "endpoint": "/named"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["status"], 200, "{r}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, format!("/q/named?appid={ENCODED}"));
    assert_eq!(seen[1].target, "/b/landing?x=1");

    // Under another name it cannot be stripped: the redirect is not followed.
    up.clear();
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "q", "endpoint": "/renamed"}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["reason"], "redirect_denied", "{r}");
    assert_eq!(up.count(), 1, "the other origin is never called");

    // The proxy door masks the echo, raw or encoded, at its length.
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let body = c
        .get(gw.proxy_url("/q/echo"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains(ENCODED) && !body.contains(KEY), "{body}");
    assert!(
        body.contains(&format!("appid={}", "*".repeat(ENCODED.len()))),
        "{body}"
    );
    // A Location that carries the credential is not rewritten, and is masked.
    let r = c.get(gw.proxy_url("/q/renamed")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(!loc.contains(ENCODED) && loc.contains("token=*"), "{loc}");
}

const TOKEN: &str = "s3cr3t-t0ken+value";

/// What the raw upstream answers: `/split` echoes the token in two writes that split it,
/// `/gzip` answers compressed, `/cut` places the token across a 20-byte cut.
fn token_echoes(head: &str) -> Vec<Vec<u8>> {
    let path = head.split(' ').nth(1).unwrap_or("");
    let plain = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    if path.ends_with("/split") {
        let whole = plain(&format!("echo: {TOKEN} done"));
        let at = whole.find(TOKEN).unwrap() + 6;
        vec![whole[..at].into(), whole[at..].into()]
    } else if path.ends_with("/gzip") {
        vec![b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd".to_vec()]
    } else {
        vec![plain(&format!("{}{TOKEN} and more", "x".repeat(15))).into_bytes()]
    }
}

/// Masking cannot be sidestepped: a token split across two writes is masked on the proxy
/// door; an API with a credential is asked for plain bodies and a compressed answer is
/// refused on the proxy door (the MCP door decompresses it, and refuses one that does not
/// decompress) rather than passed unmasked; on the MCP door a cut that falls inside the
/// token leaves none of it.
#[tokio::test]
async fn masking_holds_across_chunks_encodings_and_cuts() {
    let up = RawUpstream::start(token_echoes);
    let apis = format!(
        "[[apis]]\nname = \"t\"\nbase_url = \"http://127.0.0.1:{}\"\nallow_private_network = true\n\
         paths = [\"/**\"]\nmax_response_bytes = 20\n\
         credentials = {{ header = \"Authorization\", value = \"Bearer {TOKEN}\" }}\n",
        up.port
    );
    let gw = start_with_apis(&apis);
    let c = reqwest::Client::new();

    let r = c
        .get(gw.proxy_url("/t/split"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(body, format!("echo: {} done", "*".repeat(TOKEN.len())));
    let head = up.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.contains("accept-encoding: identity"), "{head}");
    assert!(!head.contains("gzip"), "{head}");

    let r = c.get(gw.proxy_url("/t/gzip")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["reason"], "unmaskable_encoding", "{p}");

    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "t", "endpoint": "/cut"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["truncated"], true, "{r}");
    let data = r["structuredContent"]["data"].as_str().unwrap().to_string();
    assert_eq!(data, format!("{}{}", "x".repeat(15), "*".repeat(5)));
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "t", "endpoint": "/gzip"}),
        )
        .await;
    // The MCP door decompresses gzip to mask and shape it; this "gzip" does not decompress,
    // so it is refused rather than passed on.
    assert_eq!(
        r["structuredContent"]["reason"], "malformed_upstream_body",
        "{r}"
    );
}
