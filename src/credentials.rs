//! The HTTP routes around per-caller credentials, for the admin listener and the MCP
//! listener: management (`PUT`/`DELETE /credentials/{api}/{principal}` and
//! `GET /credentials/{api}` for admins; `GET /me/credentials`, `PUT`/`DELETE
//! /me/credentials/{api}` for the caller itself), the connect page a `connect_url` opens
//! (`/connect/{api}?t=…`: a form for a secret, or the start of an OAuth sign-in) and the
//! OAuth callback (`/oauth/callback`). Responses show fingerprints and dates, never a
//! secret; every change is audited.

use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::audit::AuditEvent;
use crate::config::CredentialMode;
use crate::error::{GatewayError, Reason};
use crate::gateway::Gateway;
use crate::vault::store::Record;

/// An answer: status, content type, body and extra headers.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: Bytes::from(v.to_string()),
            headers: Vec::new(),
        }
    }

    pub fn problem(e: &GatewayError) -> Reply {
        Reply {
            status: e.kind.status(),
            content_type: "application/problem+json",
            body: Bytes::from(e.problem_json().to_string()),
            headers: Vec::new(),
        }
    }

    fn html(status: u16, title: &str, body_html: &str) -> Reply {
        let page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
             <style>body{{font:16px system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}}\
             input{{font:inherit;width:100%;padding:.4rem;margin:.5rem 0}}button{{font:inherit;padding:.4rem 1rem}}</style>\
             </head><body><h1>{t}</h1>{body_html}</body></html>",
            t = escape(title)
        );
        Reply {
            status,
            content_type: "text/html; charset=utf-8",
            body: Bytes::from(page),
            headers: vec![
                (
                    "content-security-policy",
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'".into(),
                ),
                ("x-frame-options", "DENY".into()),
                ("referrer-policy", "no-referrer".into()),
            ],
        }
    }

    /// Writes the reply; false when the connection broke.
    pub async fn write(self, session: &mut ServerSession) -> bool {
        let Ok(mut h) = ResponseHeader::build(self.status, Some(4 + self.headers.len())) else {
            return false;
        };
        let mut ok = h
            .insert_header(http::header::CONTENT_TYPE, self.content_type)
            .is_ok()
            && h.insert_header(http::header::CONTENT_LENGTH, self.body.len().to_string())
                .is_ok()
            && h.insert_header(http::header::CACHE_CONTROL, "no-store")
                .is_ok();
        for (k, v) in self.headers {
            ok &= h.insert_header(k, v).is_ok();
        }
        ok && session.write_response_header(Box::new(h)).await.is_ok()
            && session.write_response_body(self.body, true).await.is_ok()
    }
}

/// Whether an `Origin` header names the origin of `public_url` (scheme, host, port).
fn same_origin(origin: &str, public_url: &str) -> bool {
    match (url::Url::parse(origin), url::Url::parse(public_url)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn record_json(r: &Record) -> Value {
    json!({
        "api": r.api,
        "principal": r.principal,
        "kind": r.kind,
        "fingerprint": r.fingerprint,
        "created": crate::audit::rfc3339_of(r.created),
        "updated": crate::audit::rfc3339_of(r.updated),
        "expires": r.expires.map(crate::audit::rfc3339_of),
    })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Audits a change to `subject`'s credential for `api` made by `actor`.
#[allow(clippy::too_many_arguments)]
fn audit_change(
    gw: &Gateway,
    door: &'static str,
    caller: Option<&crate::auth::Caller>,
    actor: &str,
    method: &str,
    path: &str,
    api: &str,
    subject: &str,
    status: u16,
    fingerprint: Option<String>,
) {
    gw.audit(|| {
        let mut e = AuditEvent::new(crate::types::Door::Mcp, caller, method, path);
        e.door = door;
        e.principal = actor.to_string();
        e.api = api.to_string();
        e.status = status;
        e.credential_source = Some("managed");
        e.credential_subject = Some(subject.to_string());
        e.credential_fingerprint = fingerprint;
        e
    });
}

/// The secret of a `PUT` body: `{"secret": "…"}`.
fn secret_of(body: &[u8]) -> Result<String, GatewayError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| GatewayError::invalid_arguments("send a JSON body {\"secret\": \"…\"}"))?;
    match v.get("secret") {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(GatewayError::invalid_arguments(
            "the body needs a string member \"secret\"",
        )),
    }
}

/// The API of a route, when it keeps per-caller credentials.
fn stored_api<'g>(
    gw: &'g Gateway,
    name: &str,
) -> Result<&'g std::sync::Arc<crate::config::Api>, GatewayError> {
    match gw.config.api(name) {
        Some(a) if a.dynamic_credential.as_ref().is_some_and(|d| d.mode.stored()) => Ok(a),
        Some(_) => Err(GatewayError::invalid_arguments(format!(
            "API {name:?} does not keep per-caller credentials (credentials.mode is not \"per_principal\" or \"user_oauth\")"
        ))),
        None => Err(GatewayError::unknown_api(format!("no API named {name:?}"))),
    }
}

/// One management request: set, delete or list `subject`'s credentials (`subject` is `None`
/// to list an API's). `actor` made it, through `door` (`admin` or `mcp`).
#[allow(clippy::too_many_arguments)]
pub async fn manage(
    gw: &Gateway,
    door: &'static str,
    caller: Option<&crate::auth::Caller>,
    actor: &str,
    method: &Method,
    path: &str,
    api: Option<&str>,
    subject: Option<&str>,
    body: &[u8],
) -> Reply {
    let vault = gw.pipeline.vault();
    let m = crate::telemetry::metrics();
    if caller.is_some_and(|c| c.principal.kind == crate::auth::PrincipalKind::Anonymous) {
        return Reply::problem(&GatewayError::because(
            Reason::NotPermitted,
            "anonymous callers share one identity and cannot keep credentials: authenticate first",
        ));
    }
    let result: Result<Reply, GatewayError> = async {
        match (method, api, subject) {
            (&Method::GET, api, _) => {
                if let Some(a) = api {
                    stored_api(gw, a)?;
                }
                let mut list = vault.list(api).await?;
                if let Some(s) = subject {
                    list.retain(|r| r.principal == s);
                }
                Ok(Reply::json(
                    200,
                    json!({"credentials": list.iter().map(record_json).collect::<Vec<_>>()}),
                ))
            }
            (&Method::PUT, Some(a), Some(s)) => {
                let api = stored_api(gw, a)?;
                let secret = secret_of(body)?;
                let rec = vault.set_secret(api, s, &secret).await?;
                m.credential_events.with_label_values(&[&api.name, "set"]).inc();
                audit_change(gw, door, caller, actor, "PUT", path, &api.name, s, 200, Some(rec.fingerprint.clone()));
                Ok(Reply::json(200, record_json(&rec)))
            }
            (&Method::DELETE, Some(a), Some(s)) => {
                let api = stored_api(gw, a)?;
                match vault.delete(api, s).await? {
                    Some(fp) => {
                        m.credential_events.with_label_values(&[&api.name, "delete"]).inc();
                        audit_change(gw, door, caller, actor, "DELETE", path, &api.name, s, 200, Some(fp.clone()));
                        Ok(Reply::json(200, json!({"api": api.name, "principal": s, "deleted": true, "fingerprint": fp})))
                    }
                    None => Ok(Reply::json(404, json!({"error": "not_found", "message": format!("{s:?} has no credential for API {:?}", api.name)}))),
                }
            }
            _ => Err(GatewayError::because(
                Reason::MethodNotAllowed,
                "use GET to list, PUT {\"secret\": …} to set, DELETE to remove",
            )),
        }
    }
    .await;
    result.unwrap_or_else(|e| Reply::problem(&e))
}

/// The admin listener's `/credentials/…` routes: `(api, principal)` from the path.
pub fn admin_route(path: &str) -> Option<(Option<String>, Option<String>)> {
    let rest = path.strip_prefix("/credentials")?;
    let parts: Vec<&str> = rest.trim_start_matches('/').splitn(2, '/').collect();
    match parts.as_slice() {
        [""] => Some((None, None)),
        [api] => Some((Some(percent_decode(api)), None)),
        [api, principal] if !principal.is_empty() => {
            Some((Some(percent_decode(api)), Some(percent_decode(principal))))
        }
        _ => None,
    }
}

/// The MCP listener's `/me/credentials[/{api}]` route: the API, if named.
pub fn self_route(path: &str) -> Option<Option<String>> {
    let rest = path.strip_prefix("/me/credentials")?;
    match rest.trim_start_matches('/') {
        "" => Some(None),
        api if !api.contains('/') => Some(Some(percent_decode(api))),
        _ => None,
    }
}

/// A query or form parameter.
fn param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `GET`/`POST /connect/{api}`: the page a `connect_url` opens. The sealed `t` names the
/// principal and API; it is the only authority the browser holds.
pub async fn connect(
    gw: &Gateway,
    method: &Method,
    path: &str,
    query: &str,
    origin: Option<&str>,
    body: &[u8],
) -> Reply {
    let vault = gw.pipeline.vault();
    let api_name = percent_decode(path.trim_start_matches("/connect/"));
    let form = String::from_utf8_lossy(body);
    let token = match method {
        &Method::POST => param(&form, "t"),
        _ => param(query, "t"),
    };
    let claim = token.as_deref().and_then(|t| vault.open_connect(t));
    let Some(claim) = claim.filter(|c| c.a == api_name) else {
        return Reply::html(
            400,
            "This link does not work",
            "<p>The link is damaged, was made for another API, or has expired (links last 15 minutes). Ask your agent to make the call again for a fresh link.</p>",
        );
    };
    let Some(api) = gw.config.api(&claim.a) else {
        return Reply::html(
            404,
            "Unknown API",
            "<p>This API is no longer configured.</p>",
        );
    };
    let mode = api.dynamic_credential.as_ref().map(|d| &d.mode);
    match (mode, method) {
        (Some(CredentialMode::UserOAuth(_)), &Method::GET) => {
            // One sign-in per link, bound to this browser by a cookie the callback needs.
            if !vault.consume(token.as_deref().unwrap_or("")).await {
                return Reply::html(400, "This link was used already", "<p>Each link starts one sign-in. Ask your agent to make the call again for a fresh link.</p>");
            }
            let mut nonce = [0u8; 16];
            crate::trace::fill_random_id(&mut nonce);
            let nonce = hex::encode(nonce);
            match vault.authorize_url(api, &claim.p, &nonce) {
            Ok(url) => {
                let secure = if gw.config.mcp.public_url.starts_with("https:") { "; Secure" } else { "" };
                Reply {
                status: 302,
                content_type: "text/plain",
                body: Bytes::from_static(b"Redirecting to sign in.\n"),
                headers: vec![
                    ("location", url),
                    ("referrer-policy", "no-referrer".into()),
                    (
                        "set-cookie",
                        format!("{SIGN_IN_COOKIE}={nonce}; HttpOnly; SameSite=Lax; Path=/oauth/callback; Max-Age=900{secure}"),
                    ),
                ],
            }},
            Err(e) => Reply::html(502, "Cannot start the sign-in", &format!("<p>{}</p>", escape(&e.message))),
        }},
        (Some(CredentialMode::PerPrincipal), &Method::GET) => Reply::html(
            200,
            &format!("Your credential for {}", api.name),
            &format!(
                "<p>Signed in as <b>{who}</b>. Paste the credential the gateway should use for you when calling <b>{api}</b>. It is stored encrypted and is never shown again.</p>\
                 <form method=\"post\" action=\"/connect/{api_path}\"><input type=\"hidden\" name=\"t\" value=\"{t}\">\
                 <input type=\"password\" name=\"secret\" autocomplete=\"off\" required aria-label=\"credential\"><button type=\"submit\">Save</button></form>",
                who = escape(&claim.p),
                api = escape(&api.name),
                api_path = escape(&percent_encoding::utf8_percent_encode(&api.name, crate::types::QUERY_ENCODE).to_string()),
                t = escape(token.as_deref().unwrap_or("")),
            ),
        ),
        (Some(CredentialMode::PerPrincipal), &Method::POST) => {
            // A form post from another site is refused: the browser names the page's origin.
            // `null`: the page's no-referrer policy makes some browsers send that; the sealed
            // link stays the authority.
            if origin.is_some_and(|o| o != "null" && !same_origin(o, &gw.config.mcp.public_url)) {
                return Reply::html(403, "Refused", "<p>This form may only be sent from the gateway's own page.</p>");
            }
            let Some(secret) = param(&form, "secret") else {
                return Reply::html(400, "Nothing to save", "<p>The form had no credential.</p>");
            };
            if !vault.consume(token.as_deref().unwrap_or("")).await {
                return Reply::html(400, "This link was used already", "<p>Each link stores one credential. Ask your agent to make the call again for a fresh link.</p>");
            }
            match vault.set_secret(api, &claim.p, &secret).await {
                Ok(rec) => {
                    crate::telemetry::metrics().credential_events.with_label_values(&[&api.name, "set"]).inc();
                    audit_change(gw, "mcp", None, &claim.p, "POST", path, &api.name, &claim.p, 200, Some(rec.fingerprint.clone()));
                    Reply::html(200, "Saved", &format!(
                        "<p>Your credential for <b>{}</b> is stored (fingerprint <code>{}</code>). You can close this window and go back to your agent.</p>",
                        escape(&api.name), escape(&rec.fingerprint)))
                }
                Err(e) => Reply::html(e.kind.status(), "Not saved", &format!("<p>{}</p>", escape(&e.message))),
            }
        }
        _ => Reply::html(405, "Not here", "<p>This API does not take a credential through this page.</p>"),
    }
}

/// The sign-in nonce among a request's cookies.
fn browser_nonce(cookies: &str) -> String {
    cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SIGN_IN_COOKIE)
        .map(|(_, v)| v.to_string())
        .unwrap_or_default()
}

/// The cookie that binds a sign-in to the browser that started it.
const SIGN_IN_COOKIE: &str = "agm_sign_in";

/// `GET /oauth/callback`: the authorization server sends the browser back here.
pub async fn callback(gw: &Gateway, path: &str, query: &str, cookies: &str) -> Reply {
    if let Some(err) = param(query, "error") {
        return Reply::html(
            400,
            "Not connected",
            &format!("<p>The sign-in did not complete: {}.</p>", escape(&err)),
        );
    }
    let (Some(code), Some(state)) = (param(query, "code"), param(query, "state")) else {
        return Reply::html(
            400,
            "Not connected",
            "<p>The sign-in answer lacks its code or state.</p>",
        );
    };
    let iss = param(query, "iss");
    match gw
        .pipeline
        .vault()
        .callback(&code, &state, iss.as_deref(), &browser_nonce(cookies))
        .await
    {
        Ok((api, principal, rec)) => {
            audit_change(
                gw,
                "mcp",
                None,
                &principal,
                "GET",
                path,
                &api,
                &principal,
                200,
                Some(rec.fingerprint.clone()),
            );
            Reply::html(200, "Connected", &format!(
                "<p>Your account is connected to <b>{}</b>. You can close this window and go back to your agent.</p>",
                escape(&api)))
        }
        Err(e) => Reply::html(
            e.kind.status(),
            "Not connected",
            &format!("<p>{}</p>", escape(&e.message)),
        ),
    }
}
