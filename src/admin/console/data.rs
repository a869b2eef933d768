//! What each console view shows, as JSON: the documents `/console/api/*` return and the
//! pages render, built once here so a script and a person see the same thing.

use serde_json::{json, Value};

use crate::audit::activity::{Activity, Window};
use crate::audit::search::{self, Query};
use crate::config::AuditSink;
use crate::error::GatewayError;
use crate::gateway::Gateway;

/// `/console/api/apis`: each API with its health, latency percentiles, error rate, calls
/// per minute, credential mode and tool surface.
pub fn apis(gw: &Gateway, activity: &Activity) -> Value {
    let surface = gw.surface.load();
    let list: Vec<Value> = gw
        .config
        .apis
        .iter()
        .map(|api| {
            let a = activity.api(&api.name);
            let credential = match (&api.dynamic_credential, &api.credential) {
                (Some(d), _) => json!({"mode": d.mode.as_str()}),
                (None, Some(c)) => json!({"mode": "static", "fingerprint": &*c.fingerprint}),
                (None, None) => json!({"mode": "none"}),
            };
            let tools = surface
                .generated
                .values()
                .filter(|g| g.api.name == api.name)
                .count();
            let doc = surface.documents.get(&api.name);
            let served = surface.apis.get(&api.name);
            let surface_json = match (&api.openapi, doc) {
                (None, _) => json!({"status": "none"}),
                (Some(_), d) => json!({
                    "status": match d {
                        Some(d) if d.error.is_some() => "unreadable",
                        Some(d) if d.drifted => "drifted",
                        _ if served.is_none() => "not_served",
                        _ => "pinned_or_current",
                    },
                    "tools": tools,
                    "operations": served.map_or(0, |s| s.operations.len()),
                    "progressive": served.is_some_and(|s| s.progressive),
                    "sha256": served.map(|s| s.doc_sha256.clone()),
                    "error": d.and_then(|d| d.error.clone()),
                }),
            };
            let (health, hour, day, latency, per_minute, last_error) = match &a {
                Some(a) => (
                    a.health,
                    a.hour.json(),
                    a.day.json(),
                    a.latency_ms
                        .as_ref()
                        .map(|l| json!({"p50": l[0], "p95": l[1], "p99": l[2]})),
                    json!(a.per_minute),
                    a.last_error
                        .as_ref()
                        .map(|(t, w)| json!({"at": crate::audit::rfc3339_of(*t), "reason": w})),
                ),
                None => ("idle", json!(null), json!(null), None, json!([]), None),
            };
            let error_rate = a.as_ref().map(|a| {
                let admitted = a.hour.calls - a.hour.refusals;
                if admitted == 0 {
                    0.0
                } else {
                    (a.hour.errors as f64 / admitted as f64 * 1e4).round() / 1e4
                }
            });
            json!({
                "name": api.name,
                "base_url": api.base.original,
                "health": health,
                "last_hour": hour,
                "last_day": day,
                "error_rate_1h": error_rate,
                "latency_ms_1h": latency,
                "calls_per_minute": per_minute,
                "last_error": last_error,
                "credential": credential,
                "surface": surface_json,
            })
        })
        .collect();
    json!({"since": crate::audit::rfc3339_of(activity.started), "apis": list})
}

/// `/console/api/usage`: calls, refusals, errors, bytes and cost per principal × API in
/// each window (or the one asked for), with totals per principal and per API.
pub fn usage(activity: &Activity, only: Option<Window>) -> Value {
    let windows: Vec<Window> = match only {
        Some(w) => vec![w],
        None => vec![Window::Hour, Window::Day, Window::Week],
    };
    let mut out = serde_json::Map::new();
    for w in windows {
        let rows = activity.usage(w);
        let mut by_principal: std::collections::BTreeMap<&str, crate::audit::activity::Counts> =
            Default::default();
        let mut by_api: std::collections::BTreeMap<&str, crate::audit::activity::Counts> =
            Default::default();
        for (p, a, c) in &rows {
            by_principal.entry(p).or_default().add(c);
            by_api.entry(a).or_default().add(c);
        }
        let totals = |m: &std::collections::BTreeMap<&str, crate::audit::activity::Counts>,
                      k: &str| {
            let mut v: Vec<Value> = m
                .iter()
                .map(|(n, c)| {
                    let mut j = c.json();
                    j[k] = json!(n);
                    j
                })
                .collect();
            v.sort_by_key(|j| std::cmp::Reverse(j["calls"].as_u64().unwrap_or(0)));
            v
        };
        out.insert(
            w.as_str().into(),
            json!({
                "pairs": rows.iter().map(|(p, a, c)| {
                    let mut j = c.json();
                    j["principal"] = json!(p);
                    j["api"] = json!(a);
                    j
                }).collect::<Vec<_>>(),
                "principals": totals(&by_principal, "principal"),
                "apis": totals(&by_api, "api"),
            }),
        );
    }
    json!({"since": crate::audit::rfc3339_of(activity.started), "windows": out})
}

/// `/console/api/limits`: for each principal × API seen in the last 7 days, the counters
/// its calls are kept under and how full each is now, read from the limiter's store.
pub async fn limits(gw: &Gateway, activity: &Activity) -> Value {
    let store = if gw.config.rate_limits.redis.is_some() {
        "redis"
    } else {
        "memory"
    };
    let mut entries = Vec::new();
    for (principal, api) in activity.pairs() {
        let Some(states) = gw.pipeline.limit_states(&principal, &api).await else {
            continue;
        };
        let policies = match states {
            Ok(s) => s
                .into_iter()
                .map(|(key, s, shared)| {
                    let used = s.requests.saturating_sub(s.remaining);
                    json!({
                        "policy": s.name,
                        "key": key,
                        "shared": shared,
                        "requests": s.requests,
                        "window_s": s.window.as_secs_f64(),
                        "remaining": s.remaining,
                        "reset_s": crate::ratelimit::ceil_secs(s.reset),
                        "fill": if s.requests == 0 { 0.0 } else {
                            (f64::from(used) / f64::from(s.requests) * 1000.0).round() / 1000.0
                        },
                    })
                })
                .collect::<Vec<_>>(),
            Err(e) => {
                entries.push(json!({"principal": principal, "api": api, "error": e}));
                continue;
            }
        };
        if !policies.is_empty() {
            entries.push(json!({"principal": principal, "api": api, "policies": policies}));
        }
    }
    json!({"store": store, "entries": entries})
}

/// Resets the counters of `principal` × `api` (only `policy`'s when named) and audits it
/// (`event: "limit_reset"`, the admin as principal, the keys reset).
pub async fn reset(
    gw: &Gateway,
    admin: &str,
    principal: &str,
    api: &str,
    policy: Option<&str>,
) -> Result<Value, GatewayError> {
    let keys = match gw.pipeline.reset_limits(principal, api, policy).await {
        None => {
            return Err(GatewayError::invalid_arguments(format!(
                "no API named {api:?}"
            )))
        }
        Some(Err(e)) => {
            return Err(GatewayError::new(
                crate::error::ErrorKind::LimiterUnavailable,
                format!("the rate-limit store could not be reset: {e}"),
            ))
        }
        Some(Ok(keys)) => keys,
    };
    gw.audit(|| {
        let mut e = crate::audit::AuditEvent::new(
            crate::types::Door::Proxy,
            None,
            "POST",
            "/console/api/limits/reset",
        );
        e.door = "admin";
        e.principal = admin.to_string();
        e.api = api.to_string();
        e.event = Some("limit_reset");
        e.decision = "allow";
        e.status = 200;
        e.credential_subject = Some(principal.to_string());
        e.rate_limit = Some(json!({"reset": keys, "policy": policy}));
        e
    });
    Ok(json!({"principal": principal, "api": api, "policy": policy, "reset": keys}))
}

/// The audit sink a search reads, or why there is none.
fn sink(gw: &Gateway) -> Result<&AuditSink, String> {
    if !gw.audit.as_ref().is_some_and(|a| a.writes()) {
        return Err("auditing is off (audit.enabled = false): there is no trail to search".into());
    }
    Ok(&gw.config.audit.sink)
}

/// `/console/api/audit`: one page of matching records, newest first, and the cursor of the
/// next.
pub fn audit(gw: &Gateway, q: &Query) -> Result<Value, String> {
    let started = std::time::Instant::now();
    let page = search::search(sink(gw)?, q)?;
    Ok(json!({
        "records": page.records,
        "next_cursor": page.next.map(|n| n.to_string()),
        "scanned": page.scanned,
        "took_ms": (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
    }))
}

/// Most bytes one export holds.
pub const EXPORT_BYTES: usize = 64 << 20;

/// Every matching record as JSON lines, newest first: at most `max` records and
/// [`EXPORT_BYTES`].
pub fn export(gw: &Gateway, q: &Query, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut n = 0;
    search::scan(sink(gw)?, q, |_, r| {
        if let Some(r) = r {
            out.extend_from_slice(r.to_string().as_bytes());
            out.push(b'\n');
            n += 1;
        }
        n < max && out.len() < EXPORT_BYTES
    })?;
    Ok(out)
}

/// `/console/api/audit/verify`: the chain checked from its first record; a broken one is
/// named by its line (1-based) and `seq`.
pub fn verify(gw: &Gateway) -> Value {
    let verdict = match sink(gw) {
        Err(e) => return json!({"intact": null, "error": e}),
        Ok(AuditSink::File(p)) => crate::audit::verify_file(p),
        Ok(AuditSink::Sqlite(p)) => crate::audit::verify_sqlite(p),
        Ok(AuditSink::Stdout) => {
            Err("audit records go to stdout: there is no chain to verify here".into())
        }
    };
    match verdict {
        Ok(crate::audit::Verdict::Intact { records, first_seq }) => {
            json!({"intact": true, "records": records, "first_seq": first_seq})
        }
        Ok(crate::audit::Verdict::Broken { line, seq, why }) => json!({
            "intact": false,
            "first_broken": {"line": line, "seq": seq, "why": why},
        }),
        Err(e) => json!({"intact": null, "error": e}),
    }
}

/// `/console/api/approvals`: the approval queue (all records, or those with `status`).
pub async fn approvals(
    gw: &Gateway,
    status: Option<crate::approvals::Status>,
) -> Result<Value, GatewayError> {
    let list = gw.pipeline.approval_records(status).await?;
    Ok(json!({
        "rules": gw.config.approvals.rules.len(),
        "approvals": list.iter().map(|r| r.json()).collect::<Vec<_>>(),
    }))
}

/// `/console/api/config`: the config as written, secrets masked (a literal secret shows as
/// its fingerprint, a `${VAR}` reference as written), and `check`'s warnings.
pub fn config(gw: &Gateway, source: Option<&std::path::Path>) -> Value {
    let (text, from) = match source {
        Some(p) => (
            std::fs::read_to_string(p).unwrap_or_default(),
            p.display().to_string(),
        ),
        None => (
            crate::config::EMBEDDED_DEFAULT.to_string(),
            "embedded defaults".to_string(),
        ),
    };
    let masked = match toml::from_str::<toml::Value>(&text) {
        Ok(v) => mask(&v, false),
        // The parser's message quotes the line, which may hold a secret: say where only.
        Err(e) => {
            let at = e.span().map_or(String::new(), |sp| {
                let line = text[..sp.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            });
            json!({"error": format!("the file no longer parses{at}: run check")})
        }
    };
    let warnings: Vec<Value> = crate::config::lint::lint(&gw.config)
        .iter()
        .map(|w| json!({"code": w.code, "key": w.path, "message": w.message}))
        .collect();
    let keys: Vec<Value> = gw
        .config
        .auth
        .api_keys
        .iter()
        .map(|k| {
            json!({
                "name": k.name,
                "roles": k.roles,
                "revoked": k.revoked,
                "fingerprint": hex::encode(&k.digest[..4]),
            })
        })
        .collect();
    json!({
        "source": from,
        "config": masked,
        "warnings": warnings,
        "api_keys": keys,
    })
}

/// Key names whose values are secrets.
fn secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    if k.ends_with("_env") || k == "env" || k == "header" || k == "key_header" {
        return false;
    }
    [
        "secret",
        "password",
        "token",
        "key",
        "value",
        "credential",
        "authorization",
        "pepper",
        "hmac",
        "private",
        "cookie",
        // A webhook's URL is itself the credential of many services.
        "webhook",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// `v` as JSON with every string under a secret-named key (or in an array under one)
/// replaced by its fingerprint, unless it is wholly `${VAR}` references.
fn mask(v: &toml::Value, secret: bool) -> Value {
    match v {
        toml::Value::Table(t) => Value::Object(
            t.iter()
                // A secret-named table's URL (a webhook's) is secret too.
                .map(|(k, v)| (k.clone(), mask(v, secret_key(k) || (secret && k == "url"))))
                .collect(),
        ),
        toml::Value::Array(a) => Value::Array(a.iter().map(|v| mask(v, secret)).collect()),
        toml::Value::String(s) if secret && !s.is_empty() && !only_references(s) => {
            use sha2::Digest;
            json!(format!(
                "•••• sha256:{}",
                hex::encode(&sha2::Sha256::digest(s.as_bytes())[..4])
            ))
        }
        toml::Value::String(s) => json!(masked_url(s).unwrap_or_else(|| s.clone())),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => json!(d.to_string()),
    }
}

/// Whether `s` is nothing but `${VAR}` references, after at most a scheme word (`Bearer `,
/// `Basic `, `Token `). A reference with a default (`${VAR:-literal}`) holds a literal.
fn only_references(s: &str) -> bool {
    let Some(i) = s.find("${") else {
        return false;
    };
    if !["", "Bearer ", "Basic ", "Token "].contains(&&s[..i]) {
        return false;
    }
    let mut rest = &s[i..];
    while let Some(r) = rest.strip_prefix("${") {
        let Some(end) = r.find('}') else { return false };
        if r[..end].contains(":-") {
            return false;
        }
        rest = &r[end + 1..];
        if !rest.is_empty() && !rest.starts_with("${") {
            return false;
        }
    }
    true
}

/// A URL's password and query masked (either may carry a credential); `None` for text that
/// is not a URL with either.
fn masked_url(s: &str) -> Option<String> {
    let mut u = url::Url::parse(s).ok()?;
    if u.password().is_none() && u.query().is_none() {
        return None;
    }
    if u.password().is_some() {
        let _ = u.set_password(Some("****"));
    }
    if u.query().is_some() {
        u.set_query(Some("****"));
    }
    Some(u.to_string())
}

/// `/console/api/explain`: a recent decision judged again by the config now serving, next
/// to what was recorded.
pub async fn explain(gw: &Gateway, activity: &Activity, request_id: &str) -> Option<Value> {
    let e = activity.decision(request_id)?;
    let recorded = e["console"].clone();
    let explained = match crate::explain::Described::from_event(&e) {
        None => {
            json!({"note": "refused before an API was judged (address, request, authentication or signature), or not a call: the recorded decision stands"})
        }
        Some(d) => crate::explain::explain_with(&gw.pipeline, &d)
            .await
            .unwrap_or_else(|err| json!({"failed": err})),
    };
    Some(json!({"request_id": request_id, "recorded": recorded, "explain": explained}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fingerprinted_and_references_kept() {
        let v: toml::Value = toml::from_str(
            r#"
            [auth]
            jwt_secret = "s3cr3t-value-here"
            [[auth.api_keys]]
            name = "ci"
            key = "${CI_KEY}"
            [[apis]]
            name = "w"
            base_url = "https://example.com"
            [apis.credential]
            header = "Authorization"
            value = "Bearer ${UPSTREAM}"
            [apis.other]
            value = "Bearer abc123literal"
            [rate_limits.store]
            url = "rediss://agm:redis-pass-77@redis.internal:6380/0"
            [credential_store]
            url = "https://vault.example/v1?token=tok-99"
            pepper = "${PEPPER:-literal-default-1}"
            [[approvals]]
            webhook = { url = "https://hooks.example/T000/B000/XXXX" }
            [x]
            password = "hunterhunter${X}"
            "#,
        )
        .unwrap();
        let m = mask(&v, false).to_string();
        assert!(!m.contains("s3cr3t"), "{m}");
        assert!(!m.contains("abc123literal"), "{m}");
        for leaked in [
            "redis-pass-77",
            "tok-99",
            "literal-default-1",
            "XXXX",
            "hunterhunter",
        ] {
            assert!(!m.contains(leaked), "{leaked} in {m}");
        }
        assert!(m.contains("redis.internal"), "{m}");
        assert!(
            m.contains("${CI_KEY}") && m.contains("Bearer ${UPSTREAM}"),
            "{m}"
        );
        assert!(
            m.contains("https://example.com") && m.contains("\"Authorization\""),
            "{m}"
        );
    }
}
