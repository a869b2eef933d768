//! TLS and mTLS on the gateway's listeners (`[server.tls]`), checked with a rustls client
//! that verifies the gateway's certificate, and bad certificate files refused by `check`.

mod common;
use common::*;
use std::process::Command;

fn tls_config<'a>(up: u16, pki: &'a Pki, extra: &str) -> impl Fn((u16, u16, u16)) -> String + 'a {
    let extra = extra.to_string();
    move |ports| {
        let server = listen_section(ports, 1);
        let local = loopback_get_api("local", up, "");
        format!(
            "{server}[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}\n{}\n{local}",
            pki.path("server.pem"),
            pki.path("server.key"),
            auth_section(false),
        )
    }
}

/// The proxy and MCP listeners speak TLS with the configured certificate; a client that
/// verifies it against the CA gets through, a client that does not trust the CA does not,
/// and plain HTTP is not answered as HTTP. The admin listener stays plain for probes, and
/// the protected-resource metadata names an https resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_serve_tls_that_a_verifying_client_accepts() {
    let pki = Pki::new();
    let up = Upstream::start();
    let gw = Gateway::start_generated(tls_config(up.port, &pki, ""));
    let ca = pki.path("ca.pem");

    let (status, body) = https_request(gw.proxy, &https_get("/local/x"), &ca, None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.count(), 1);

    let meta = "/.well-known/oauth-protected-resource";
    let (status, body) = https_request(gw.mcp, &https_get(meta), &ca, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        doc["resource"].as_str().unwrap().starts_with("https://"),
        "{doc}"
    );

    // Not trusting the gateway's CA: the handshake fails on certificate verification.
    let e = https_request(
        gw.proxy,
        &https_get("/local/x"),
        &pki.path("rogue-ca.pem"),
        None,
    )
    .await
    .unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let raw = raw_http(
        gw.proxy,
        b"GET /local/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    assert!(!raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(up.count(), 1);

    let c = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{}/healthz", gw.admin);
    assert_eq!(get_status(&c, &admin).await, 200);
}

/// With `client_ca_file`, the handshake requires a client certificate from that CA: none,
/// or one from another CA, is refused before any HTTP is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let pki = Pki::new();
    let up = Upstream::start();
    let extra = format!("client_ca_file = \"{}\"", pki.path("ca.pem"));
    let gw = Gateway::start_generated(tls_config(up.port, &pki, &extra));
    let ca = pki.path("ca.pem");
    let req = https_get("/local/x");

    let client = (pki.path("client.pem"), pki.path("client.key"));
    let (status, _) = https_request(gw.proxy, &req, &ca, Some((&client.0, &client.1)))
        .await
        .unwrap();
    assert_eq!(status, 200);

    let e = https_request(gw.proxy, &req, &ca, None).await.unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let rogue = (pki.path("rogue.pem"), pki.path("rogue.key"));
    let e = https_request(gw.proxy, &req, &ca, Some((&rogue.0, &rogue.1)))
        .await
        .unwrap_err();
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("UnknownCA"),
        "{e}"
    );
    assert_eq!(
        up.count(),
        1,
        "only the verified client reached the upstream"
    );
}

/// Bad certificate files are config errors naming their key, from `check` and from `serve`
/// (which exits instead of panicking).
#[test]
fn bad_certificate_files_are_config_errors() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let cases = [
        (
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"",
                pki.path("missing.pem"),
                pki.path("server.key")
            ),
            "server.tls.cert_file",
            "cannot read",
        ),
        (
            format!(
                "cert_file = \"{garbage}\"\nkey_file = \"{}\"",
                pki.path("server.key")
            ),
            "server.tls.cert_file",
            "PEM certificate",
        ),
        (
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"",
                pki.path("server.pem"),
                pki.path("client.key")
            ),
            "server.tls.cert_file",
            "does not fit",
        ),
        (
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{garbage}\"",
                pki.path("server.pem"),
                pki.path("server.key")
            ),
            "server.tls.client_ca_file",
            "no CA certificate",
        ),
        (
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\nclient_auth = \"optional\"",
                pki.path("server.pem"),
                pki.path("server.key")
            ),
            "server.tls.client_auth",
            "client_ca_file",
        ),
    ];
    for (tls, key, why) in cases {
        let path = pki.path("gw.toml");
        std::fs::write(
            &path,
            format!("[server.tls]\n{tls}\n\n{}", auth_section(false)),
        )
        .unwrap();
        for cmd in ["check", "serve"] {
            let out = Command::new(bin())
                .args([cmd, "-c", &path])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} accepted {tls}: {text}");
            assert!(text.contains(key) && text.contains(why), "{cmd}: {text}");
            assert!(!text.contains("panicked"), "{text}");
        }
    }
}
