//! Egress guarantees that need their own upstreams: TLS verification with SNI, and the SSRF
//! guard applied after DNS resolution.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start_with_apis(apis: &str) -> Gateway {
    Gateway::start_generated(|ports| format!("{}\n{apis}", server_section(ports, 1)))
}

/// A TLS server with a self-signed certificate for `localhost`, which the gateway must not trust.
struct SelfSignedTls {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SelfSignedTls {
    fn start() -> SelfSignedTls {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl could not make a certificate");
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
            _dir: dir,
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

    let r = reqwest::get(gw.proxy_url("/tls/")).await.unwrap();
    assert_eq!(
        r.status(),
        502,
        "a self-signed certificate must not be trusted"
    );
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["error"], "upstream_error");

    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "tls", "endpoint": "/"}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["error"], "upstream_error");
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
        let r = reqwest::get(gw.proxy_url(&format!("/{api}/x")))
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{api}");
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["error"], "egress_denied", "{api}: {p}");
    }
    let mut s = McpSession::connect(&gw.mcp_url()).await;
    let r = s
        .call(
            "api_gateway",
            serde_json::json!({"api": "byname", "endpoint": "/x"}),
        )
        .await;
    assert_eq!(r["structuredContent"]["error"], "egress_denied", "{r}");
    assert_eq!(up.count(), 0);
}
