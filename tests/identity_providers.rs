//! Identity providers served by real HTTP servers in the test: a JWKS endpoint (RS256 keys
//! made with openssl) and an RFC 7662 introspection endpoint.

mod common;
use common::*;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

struct RsaKey {
    private_pem: Vec<u8>,
    public_pem: Vec<u8>,
    n: String,
}

fn rsa_key(dir: &std::path::Path, name: &str) -> RsaKey {
    let key = dir.join(format!("{name}.pem"));
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl must be installed (scripts/setup.sh installs it)");
    assert!(ok.status.success());
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    let modulus = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    let hex_n = String::from_utf8(modulus.stdout).unwrap();
    let bytes = hex::decode(hex_n.trim().trim_start_matches("Modulus=")).unwrap();
    use base64::Engine;
    RsaKey {
        private_pem: std::fs::read(&key).unwrap(),
        public_pem: public.stdout,
        n: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    }
}

fn rs256(key: &RsaKey, kid: &str, extra: Value) -> String {
    let mut claims = json!({"sub": "carol", "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
                            "iat": now_s(), "exp": now_s() + 300, "roles": ["reader"]});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        claims[k] = v;
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&key.private_pem).unwrap(),
    )
    .unwrap()
}

fn api(up: u16) -> String {
    loopback_get_api("local", up, "")
}

async fn status_and_reason(r: reqwest::Response) -> (u16, String) {
    let s = r.status().as_u16();
    let b: Value = r.json().await.unwrap_or(Value::Null);
    (s, b["reason"].as_str().unwrap_or("").to_string())
}

/// JWKS: keys are fetched and cached; a flood of unknown `kid`s costs at most one fetch per
/// cooldown; the last good keys keep working while the identity provider is down; an
/// RS→HS key-confusion token and a token from a foreign key are refused.
#[tokio::test]
async fn jwks_cache_cooldown_and_last_good_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = rsa_key(dir.path(), "good");
    let foreign = rsa_key(dir.path(), "foreign");
    let hits = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
                                "n": good.n, "e": "AQAB"}]})
    .to_string();
    let (h, d) = (hits.clone(), down.clone());
    let idp = Upstream::start_with(Arc::new(move |req: &Seen| {
        if !req.target.starts_with("/jwks.json") {
            return None;
        }
        h.fetch_add(1, Ordering::SeqCst);
        if d.load(Ordering::SeqCst) {
            Some((503, "text/plain".into(), b"down".to_vec()))
        } else {
            Some((200, "application/json".into(), jwks.clone().into_bytes()))
        }
    }));
    let up = Upstream::start();
    let gw = Gateway::start_generated(|ports| {
        format!(
            "{}[auth]\nrequired = true\nmethods = [\"bearer_token\"]\n[auth.jwt]\n\
             jwks_url = \"http://127.0.0.1:{}/jwks.json\"\njwks_ttl = \"1s\"\njwks_cooldown = \"1s\"\n\
             issuer = \"{JWT_ISSUER}\"\naudience = \"{JWT_AUDIENCE}\"\nalgorithms = [\"RS256\"]\n\n{}",
            listen_section(ports, 2),
            idp.port,
            api(up.port)
        )
    });
    let c = reqwest::Client::new();
    let get = |token: String| {
        c.get(gw.proxy_url("/local/x"))
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    // A cold cache hit by 20 callers at once: one fetch serves them all (single-flight).
    let cold: Vec<_> = (0..20)
        .map(|_| get(rs256(&good, "k1", json!({}))))
        .collect();
    for r in futures::future::join_all(cold).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "concurrent misses must share one fetch"
    );

    // A flood of unknown kids, concurrently: all refused, and no fetch storm.
    let flood: Vec<_> = (0..40)
        .map(|i| get(rs256(&foreign, &format!("unknown-{i}"), json!({}))))
        .collect();
    for r in futures::future::join_all(flood).await {
        let (s, reason) = status_and_reason(r.unwrap()).await;
        assert_eq!((s, reason.as_str()), (401, "unknown_key"));
    }
    assert!(
        hits.load(Ordering::SeqCst) <= 2,
        "unknown kids must not each fetch the JWKS: {} fetches",
        hits.load(Ordering::SeqCst)
    );

    // Key confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &json!({"sub": "mallory", "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "exp": now_s() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(&good.public_pem),
    )
    .unwrap();
    let (s, reason) = status_and_reason(get(confused).await.unwrap()).await;
    assert_eq!((s, reason.as_str()), (401, "algorithm_not_allowed"));
    // A right kid with a foreign key's signature.
    let (s, reason) = status_and_reason(get(rs256(&foreign, "k1", json!({}))).await.unwrap()).await;
    assert_eq!((s, reason.as_str()), (401, "invalid_signature"));

    // The identity provider goes down: after the TTL the refetch fails, and the last good
    // keys are kept.
    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = hits.load(Ordering::SeqCst);
    assert_eq!(
        get(rs256(&good, "k1", json!({}))).await.unwrap().status(),
        200
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before + 1,
        "a stale cache is refreshed"
    );
    assert_eq!(
        get(rs256(&good, "k1", json!({}))).await.unwrap().status(),
        200
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before + 1,
        "a failed refresh is not retried before the cooldown"
    );
    assert_eq!(up.count(), 22);
}

/// OAuth2 introspection: active tokens get in (and are cached), inactive ones get 401 (and
/// are cached briefly), a wrong audience is refused, the client authenticates with Basic, and
/// an unreachable endpoint is 503 `auth_unavailable`.
#[tokio::test]
async fn oauth2_introspection_cache_and_outage() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let idp = Upstream::start_with(Arc::new(move |req: &Seen| {
        if req.target != "/introspect" {
            return None;
        }
        h.fetch_add(1, Ordering::SeqCst);
        let body = String::from_utf8_lossy(&req.body).to_string();
        // Basic base64("gateway:s3cret")
        if req.header("authorization") != Some("Basic Z2F0ZXdheTpzM2NyZXQ=") {
            return Some((401, "application/json".into(), b"{}".to_vec()));
        }
        let answer = if body.contains("token=good-token") {
            json!({"active": true, "sub": "bob", "scope": "reader", "aud": JWT_AUDIENCE, "exp": now_s() + 300})
        } else if body.contains("token=other-aud") {
            json!({"active": true, "sub": "eve", "aud": "someone-else", "exp": now_s() + 300})
        } else {
            json!({"active": false})
        };
        Some((
            200,
            "application/json".into(),
            answer.to_string().into_bytes(),
        ))
    }));
    let up = Upstream::start();
    let make = |idp_port: u16| {
        let upp = up.port;
        move |ports| {
            format!(
                "{}[auth]\nrequired = true\nmethods = [\"oauth2\"]\n[auth.oauth2]\n\
                 introspection_url = \"http://127.0.0.1:{idp_port}/introspect\"\n\
                 client_id = \"gateway\"\nclient_secret = \"s3cret\"\naudience = \"{JWT_AUDIENCE}\"\n\
                 allow_private_network = true\ncache_ttl = \"1m\"\ntimeout = \"1s\"\n\n\
                 [[rbac.roles]]\nname = \"reader\"\nallow = [{{ api = \"local\", methods = [\"GET\"] }}]\n\n{}",
                listen_section(ports, 2),
                api(upp)
            )
        }
    };
    let gw = Gateway::start_generated(make(idp.port));
    let c = reqwest::Client::new();
    let get = |gw: &Gateway, token: &str| {
        c.get(gw.proxy_url("/local/x"))
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(get(&gw, "good-token").await.unwrap().status(), 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "active answers are cached");
    for _ in 0..3 {
        let (s, reason) = status_and_reason(get(&gw, "revoked-token").await.unwrap()).await;
        assert_eq!((s, reason.as_str()), (401, "inactive_token"));
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "negative answers are cached too"
    );
    let (s, reason) = status_and_reason(get(&gw, "other-aud").await.unwrap()).await;
    assert_eq!((s, reason.as_str()), (401, "invalid_audience"));
    assert!(up
        .seen()
        .iter()
        .all(|s| s.header("authorization").is_none()));
    assert_eq!(up.count(), 3);

    // The introspection endpoint is unreachable: 503, not a silent pass or a 401.
    let (_hold, dead) = refusing_port();
    let gw2 = Gateway::start_generated(make(dead));
    let (s, reason) = status_and_reason(get(&gw2, "good-token").await.unwrap()).await;
    assert_eq!((s, reason.as_str()), (503, "introspection_unavailable"));
}
