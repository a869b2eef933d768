//! The admin console (`[admin] console = true`): server-rendered pages at `/console/` and
//! the JSON endpoints behind them at `/console/api/` on the admin listener.
//!
//! Access: every route but the login page and the two static files needs a principal
//! holding `[admin] role`, authenticated as on the doors (`X-API-Key` or `Authorization:
//! Bearer` on each request), or through the login form, which checks the same credential
//! once and sets an `HttpOnly`, `SameSite=Strict` session cookie (8 hours). A request that
//! carries a non-admin credential gets 403 on every console route. A change (POST) made
//! with the cookie must carry the session's CSRF token (form field `csrf` or header
//! `X-CSRF-Token`), and a POST from another origin is refused. Every answer carries a strict
//! Content-Security-Policy (scripts and styles from this origin only, no inline code).

mod data;
mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::{GatewayError, Reason};
use crate::gateway::{Gateway, Live};

/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 1000;
const COOKIE: &str = "agm_console";
/// Scripts, styles and connections from this origin only; no inline code, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's state that outlives a reload: its login sessions.
#[derive(Default)]
pub struct Console {
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    principal: Principal,
    csrf: String,
    /// At most [`SESSION_TTL`], and never past the login token's own `exp`.
    expires: Instant,
}

/// How the admin proved who they are.
enum Via {
    /// A credential on this request: not ambient, so no CSRF token is needed.
    Header,
    /// The session cookie, whose CSRF token a change must echo.
    Cookie { csrf: String, id: String },
}

struct Admin {
    principal: Principal,
    via: Via,
}

impl Admin {
    fn csrf(&self) -> &str {
        match &self.via {
            Via::Cookie { csrf, .. } => csrf,
            Via::Header => "",
        }
    }
}

/// A complete answer.
pub struct Reply {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Reply {
        Reply::new(status, "application/json", v.to_string())
    }

    fn html(status: u16, s: String) -> Reply {
        Reply::new(status, "text/html; charset=utf-8", s)
    }

    fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn redirect(to: &str) -> Reply {
        let mut r = Reply::new(303, "text/plain; charset=utf-8", "");
        r.headers.push(("location", to.to_string()));
        r
    }

    fn problem(e: &GatewayError) -> Reply {
        Reply::new(
            e.kind.status(),
            "application/problem+json",
            e.problem_json().to_string(),
        )
    }

    fn with(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// The parts of a request the console reads.
struct Request {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    /// A POST's fields: a form, or a JSON object's scalar members.
    form: HashMap<String, String>,
}

impl Request {
    fn q(&self, k: &str) -> Option<String> {
        self.query.get(k).filter(|v| !v.is_empty()).cloned()
    }

    fn wants_api(&self) -> bool {
        self.path.starts_with("/console/api/")
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source");
    hex::encode(b)
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Whether the request carries a credential of its own (not the session cookie).
fn has_credential(headers: &HeaderMap) -> bool {
    headers.contains_key("x-api-key") || headers.contains_key(http::header::AUTHORIZATION)
}

fn parse_pairs(s: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl Console {
    /// Serves one console request; false when the connection cannot be reused.
    pub async fn handle(
        &self,
        live: &Live,
        session: &mut ServerSession,
        shutdown: &ShutdownWatch,
    ) -> bool {
        let gw = live.current();
        let head = session.req_header();
        let mut req = Request {
            method: head.method.clone(),
            path: head.uri.path().to_string(),
            query: parse_pairs(head.uri.query().unwrap_or("")),
            headers: head.headers.clone(),
            form: HashMap::new(),
        };
        if !gw.config.admin.console {
            let body = json!({"error": "not_found", "detail": "the console is off ([admin] console = true turns it on)"});
            return write(session, Reply::json(404, &body)).await;
        }
        if req.method == Method::POST {
            match super::read_body(session, 64 << 10).await {
                Ok(body) => req.form = fields(&req.headers, &body),
                Err(e) => return write(session, Reply::problem(&e)).await,
            }
        }
        let activity = gw.activity().cloned().unwrap_or_default();
        if req.path == "/console/api/decisions"
            && req.method == Method::GET
            && req.q("format").as_deref() != Some("json")
        {
            match self.identify(&gw, &req.headers).await {
                Ok(Some(admin)) => {
                    // A stream opened with a session ends with it (logout, expiry, a key
                    // revoked by a reload).
                    let alive = || match &admin.via {
                        Via::Cookie { id, .. } => self.session_live(&live.current(), id),
                        Via::Header => true,
                    };
                    return stream(session, &activity, shutdown, alive).await;
                }
                other => {
                    let reply = self.refuse(&req, other.err());
                    return write(session, reply).await;
                }
            }
        }
        let reply = self.route(live, &gw, &activity, &req).await;
        write(session, reply).await
    }

    /// The admin behind a request: `Ok(None)` when it carries no credential and no live
    /// session, `Err` when its credential fails or is not an admin's.
    async fn identify(
        &self,
        gw: &Gateway,
        headers: &HeaderMap,
    ) -> Result<Option<Admin>, GatewayError> {
        if has_credential(headers) {
            return gw
                .pipeline
                .authenticate_admin(headers)
                .await
                .map(|principal| {
                    Some(Admin {
                        principal,
                        via: Via::Header,
                    })
                });
        }
        match cookie(headers) {
            Some(id) => self.session(gw, id),
            None => Ok(None),
        }
    }

    /// The admin of login session `id`: `Ok(None)` when it is unknown or expired, `Err`
    /// when the config serving no longer lets its principal in.
    fn session(&self, gw: &Gateway, id: String) -> Result<Option<Admin>, GatewayError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&id) {
            Some(s) if s.expires > Instant::now() => {
                // Checked again on every request: a reload may have taken the role away, or
                // revoked or re-roled the API key the session was opened with.
                let role = &gw.config.admin.role;
                let key_ok = s.principal.id.strip_prefix("key:").is_none_or(|name| {
                    gw.config
                        .auth
                        .api_keys
                        .iter()
                        .any(|k| k.name == name && !k.revoked && k.roles.contains(role))
                });
                if !key_ok || !s.principal.roles.contains(role) {
                    sessions.remove(&id);
                    return Err(not_admin(gw));
                }
                Ok(Some(Admin {
                    principal: s.principal.clone(),
                    via: Via::Cookie {
                        csrf: s.csrf.clone(),
                        id,
                    },
                }))
            }
            Some(_) => {
                sessions.remove(&id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The answer to a request that is not an admin's: 401 (an endpoint) or the login page
    /// (a page) without a credential, the credential's own refusal (403 for a non-admin)
    /// with one.
    fn refuse(&self, req: &Request, e: Option<GatewayError>) -> Reply {
        match e {
            Some(e) if req.wants_api() => Reply::problem(&e),
            Some(e) => Reply::html(
                e.kind.status(),
                pages::render("denied.html", json!({"status": e.kind.status(), "message": e.message})),
            ),
            None if req.wants_api() => Reply::problem(&GatewayError::because(
                Reason::MissingCredentials,
                "the console's endpoints need an admin's X-API-Key or bearer token, or a login session",
            )),
            None => Reply::redirect("/console/login"),
        }
    }

    async fn route(
        &self,
        live: &Live,
        gw: &Arc<Gateway>,
        activity: &crate::audit::activity::Activity,
        req: &Request,
    ) -> Reply {
        // The static files and the login page are for anyone; a request carrying a
        // non-admin credential is refused even there.
        let who = self.identify(gw, &req.headers).await;
        if let Err(e) = &who {
            return self.refuse(req, Some(e.clone()));
        }
        if let Some(file) = req.path.strip_prefix("/console/static/") {
            return match pages::asset(file) {
                Some((ct, body)) => Reply::new(200, ct, body),
                None => Reply::json(404, &json!({"error": "not_found"})),
            };
        }
        if req.path == "/console/login" {
            return self.login(gw, req, who.ok().flatten()).await;
        }
        let Ok(Some(admin)) = who else {
            return self.refuse(req, None);
        };
        if req.method == Method::POST {
            if let Err(e) = check_csrf(req, &admin) {
                return self.refuse(req, Some(e));
            }
        }
        let page = |name: &str, mut ctx: Value| {
            ctx["admin"] = json!(admin.principal.id);
            ctx["csrf"] = json!(admin.csrf());
            ctx["nav"] = json!(name.trim_end_matches(".html"));
            Reply::html(200, pages::render(name, ctx))
        };
        let m = &req.method;
        match req.path.as_str() {
            "/console" => Reply::redirect("/console/"),
            "/console/logout" if *m == Method::POST => {
                if let Via::Cookie { id, .. } = &admin.via {
                    self.sessions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(id);
                }
                Reply::redirect("/console/login").with(
                    "set-cookie",
                    format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
                )
            }
            // APIs.
            "/console/api/apis" if *m == Method::GET => Reply::json(200, &data::apis(gw, activity)),
            "/console/" if *m == Method::GET => {
                page("apis.html", pages::apis_view(data::apis(gw, activity)))
            }
            // Usage.
            "/console/api/usage" | "/console/usage" if *m == Method::GET => {
                let window = match req.q("window") {
                    None => None,
                    Some(w) => match crate::audit::activity::Window::parse(&w) {
                        Some(w) => Some(w),
                        None => {
                            return Reply::problem(&GatewayError::invalid_arguments(
                                "window is one of 1h, 24h, 7d",
                            ))
                        }
                    },
                };
                if req.wants_api() {
                    Reply::json(200, &data::usage(activity, window))
                } else {
                    let w = window.unwrap_or(crate::audit::activity::Window::Day);
                    page(
                        "usage.html",
                        pages::usage_view(data::usage(activity, Some(w)), w.as_str()),
                    )
                }
            }
            // Limits.
            "/console/api/limits" | "/console/limits" if *m == Method::GET => {
                let v = data::limits(gw, activity).await;
                if req.wants_api() {
                    Reply::json(200, &v)
                } else {
                    let mut v = pages::limits_view(v);
                    v["reset"] = json!(req.q("reset"));
                    page("limits.html", v)
                }
            }
            "/console/api/limits/reset" | "/console/limits/reset" if *m == Method::POST => {
                let (Some(principal), Some(api)) = (req.form.get("principal"), req.form.get("api"))
                else {
                    return Reply::problem(&GatewayError::invalid_arguments(
                        "send principal and api (and optionally policy)",
                    ));
                };
                let policy = req.form.get("policy").filter(|p| !p.is_empty());
                match data::reset(
                    gw,
                    &admin.principal.id,
                    principal,
                    api,
                    policy.map(String::as_str),
                )
                .await
                {
                    Ok(v) if req.wants_api() => Reply::json(200, &v),
                    Ok(_) => Reply::redirect(&format!(
                        "/console/limits?reset={}",
                        url::form_urlencoded::byte_serialize(
                            format!("{principal} × {api}").as_bytes()
                        )
                        .collect::<String>()
                    )),
                    Err(e) => Reply::problem(&e),
                }
            }
            // Decisions (the stream itself is served before routing).
            "/console/api/decisions" if *m == Method::GET => Reply::json(
                200,
                &json!({"decisions": activity.recent(crate::audit::activity::RECENT), "dropped": activity.dropped.load(std::sync::atomic::Ordering::Relaxed)}),
            ),
            "/console/decisions" if *m == Method::GET => {
                let mut recent = activity.recent(100);
                recent.reverse();
                page(
                    "decisions.html",
                    json!({"decisions": recent, "dropped": activity.dropped.load(std::sync::atomic::Ordering::Relaxed)}),
                )
            }
            "/console/api/explain" | "/console/explain" if *m == Method::GET => {
                let Some(id) = req.q("request_id") else {
                    return Reply::problem(&GatewayError::invalid_arguments(
                        "request_id is required",
                    ));
                };
                match data::explain(gw, activity, &id).await {
                    Some(v) if req.wants_api() => Reply::json(200, &v),
                    Some(v) => page("explain.html", v),
                    None => Reply::json(
                        404,
                        &json!({"error": "not_found", "detail": format!("no recent decision has request id {id:?} (the console keeps the last {})", crate::audit::activity::RECENT)}),
                    ),
                }
            }
            // Audit.
            "/console/api/audit/verify" if *m == Method::GET => {
                Reply::json(200, &blocking(gw, data::verify).await)
            }
            "/console/api/audit" | "/console/audit" if *m == Method::GET => {
                let q = match audit_query(req) {
                    Ok(q) => q,
                    Err(e) => return Reply::problem(&GatewayError::invalid_arguments(e)),
                };
                if req.q("format").as_deref() == Some("jsonl") {
                    let max = req
                        .q("max")
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(100_000usize)
                        .min(100_000);
                    let (g, q) = (gw.clone(), q.clone());
                    let export = tokio::task::spawn_blocking(move || data::export(&g, &q, max))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                    return match export {
                        Ok(body) => Reply::new(200, "application/x-ndjson", body).with(
                            "content-disposition",
                            "attachment; filename=\"audit.jsonl\"".into(),
                        ),
                        Err(e) => {
                            Reply::json(409, &json!({"error": "audit_unavailable", "detail": e}))
                        }
                    };
                }
                let (g, query) = (gw.clone(), q.clone());
                let result = tokio::task::spawn_blocking(move || data::audit(&g, &query))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                if req.wants_api() {
                    return match result {
                        Ok(v) => Reply::json(200, &v),
                        Err(e) => {
                            Reply::json(409, &json!({"error": "audit_unavailable", "detail": e}))
                        }
                    };
                }
                let verify = match req.q("verify") {
                    Some(_) => Some(blocking(gw, data::verify).await),
                    None => None,
                };
                page("audit.html", pages::audit_view(result, &req.query, verify))
            }
            // Approvals.
            "/console/api/approvals" | "/console/approvals" if *m == Method::GET => {
                let status = match req.q("status").map(|s| crate::approvals::Status::parse(&s)) {
                    None => None,
                    Some(Some(s)) => Some(s),
                    Some(None) => {
                        return Reply::problem(&GatewayError::invalid_arguments(
                            "status is one of pending, approved, denied, expired, consumed",
                        ))
                    }
                };
                match data::approvals(gw, status).await {
                    Ok(v) if req.wants_api() => Reply::json(200, &v),
                    Ok(v) => page("approvals.html", v),
                    Err(e) => Reply::problem(&e),
                }
            }
            p if *m == Method::POST
                && (p.starts_with("/console/api/approvals/")
                    || p.starts_with("/console/approvals/")) =>
            {
                let id = p.rsplit('/').next().unwrap_or("");
                let approve = match req.form.get("approve").map(String::as_str) {
                    Some("true") => true,
                    Some("false") => false,
                    _ => {
                        return Reply::problem(&GatewayError::invalid_arguments(
                            "send approve = true or false (and optionally a reason)",
                        ))
                    }
                };
                let reason = req
                    .form
                    .get("reason")
                    .filter(|r| !r.is_empty())
                    .map(|r| r.chars().take(500).collect());
                match gw
                    .pipeline
                    .decide_approval(id, approve, &admin.principal, reason, "admin")
                    .await
                {
                    Ok(r) if req.wants_api() => Reply::json(200, &r.json()),
                    Ok(_) => Reply::redirect("/console/approvals"),
                    Err(e) => Reply::problem(&e),
                }
            }
            // Config.
            "/console/api/config" | "/console/config" if *m == Method::GET => {
                let v = data::config(gw, live.source());
                if req.wants_api() {
                    Reply::json(200, &v)
                } else {
                    page("config.html", pages::config_view(v))
                }
            }
            _ => Reply::json(404, &json!({"error": "not_found"})),
        }
    }

    /// `GET /console/login`: the form; `POST`: checks the credential typed in (as an API
    /// key, then as a bearer token) and starts a session for an admin.
    async fn login(&self, gw: &Gateway, req: &Request, already: Option<Admin>) -> Reply {
        if req.method == Method::GET {
            if already.is_some() {
                return Reply::redirect("/console/");
            }
            return Reply::html(200, pages::render("login.html", json!({})));
        }
        if req.method != Method::POST {
            return Reply::json(405, &json!({"error": "method_not_allowed"}));
        }
        if let Err(e) = same_origin(req) {
            return Reply::html(
                403,
                pages::render("login.html", json!({"error": e.message})),
            );
        }
        let secret = req.form.get("credential").map(|s| s.trim()).unwrap_or("");
        let mut last = GatewayError::because(
            Reason::MissingCredentials,
            "type an API key or a bearer token",
        );
        if !secret.is_empty() {
            for (name, value) in [
                ("x-api-key", secret.to_string()),
                ("authorization", format!("Bearer {secret}")),
            ] {
                let mut h = HeaderMap::new();
                let Ok(v) = http::HeaderValue::from_str(&value) else {
                    continue;
                };
                h.insert(name, v);
                match gw.pipeline.authenticate_admin(&h).await {
                    Ok(principal) => return self.start_session(principal, token_expiry(secret)),
                    // A known principal without the role: say so rather than "invalid".
                    Err(e) if e.kind == crate::error::ErrorKind::Forbidden => {
                        last = e;
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            // Slows guessing.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let status = last.kind.status();
        tracing::info!(
            reason = last.reason.map_or(last.kind.code(), Reason::code),
            "console login refused"
        );
        Reply::html(
            status,
            pages::render("login.html", json!({"error": last.message})),
        )
    }

    fn start_session(&self, principal: Principal, token_left: Option<Duration>) -> Reply {
        let id = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let ttl = token_left.map_or(SESSION_TTL, |t| t.min(SESSION_TTL));
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        tracing::info!(principal = %principal.id, "console login");
        sessions.insert(
            id.clone(),
            Session {
                principal,
                csrf: random_hex(),
                expires: now + ttl,
            },
        );
        Reply::redirect("/console/").with(
            "set-cookie",
            format!(
                "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
                ttl.as_secs()
            ),
        )
    }

    /// Whether a session still stands (for a stream opened with it).
    fn session_live(&self, gw: &Gateway, id: &str) -> bool {
        self.session(gw, id.to_string()).is_ok_and(|a| a.is_some())
    }
}

/// How long a bearer token typed into the login form has left (its `exp`, read without
/// checking the signature, which the login just did); `None` for an API key.
fn token_expiry(secret: &str) -> Option<Duration> {
    use base64::Engine;
    let payload = secret.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_u64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

fn not_admin(gw: &Gateway) -> GatewayError {
    GatewayError::because(
        Reason::NotPermitted,
        format!(
            "the console needs the role {:?} ([admin] role)",
            gw.config.admin.role
        ),
    )
}

/// A POST from a browser must come from this origin (when the browser says where from).
fn same_origin(req: &Request) -> Result<(), GatewayError> {
    let Some(origin) = req
        .headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return Ok(());
    };
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let ok = origin
        .split_once("://")
        .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest == host);
    if ok {
        Ok(())
    } else {
        Err(GatewayError::because(
            Reason::CsrfRejected,
            format!("a console change from origin {origin:?} is refused"),
        ))
    }
}

/// A change made with the session cookie must echo the session's CSRF token.
fn check_csrf(req: &Request, admin: &Admin) -> Result<(), GatewayError> {
    same_origin(req)?;
    let Via::Cookie { csrf, .. } = &admin.via else {
        return Ok(());
    };
    let sent = req
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.form.get("csrf").cloned())
        .unwrap_or_default();
    use subtle::ConstantTimeEq;
    if sent.len() == csrf.len() && bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
        Ok(())
    } else {
        Err(GatewayError::because(
            Reason::CsrfRejected,
            "this change needs the console session's CSRF token (form field csrf or header X-CSRF-Token)",
        ))
    }
}

/// A POST body's fields: a JSON object's scalar members, or a form.
fn fields(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if json {
        let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
            return HashMap::new();
        };
        return m
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Bool(b) => Some((k, b.to_string())),
                Value::Number(n) => Some((k, n.to_string())),
                _ => None,
            })
            .collect();
    }
    parse_pairs(std::str::from_utf8(body).unwrap_or(""))
}

fn audit_query(req: &Request) -> Result<crate::audit::search::Query, String> {
    let before = match req.q("cursor") {
        None => None,
        Some(c) => Some(
            c.parse::<u64>()
                .map_err(|_| format!("cursor {c:?} is not one this endpoint gave"))?,
        ),
    };
    let limit = match req.q("limit") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=crate::audit::search::MAX_PAGE).contains(l))
            .ok_or_else(|| format!("limit is 1 to {}", crate::audit::search::MAX_PAGE))?,
    };
    if let Some(d) = req.q("decision") {
        if !matches!(d.as_str(), "allow" | "deny" | "error" | "shadow") {
            return Err("decision is one of allow, deny, error, shadow".into());
        }
    }
    let time = |k: &str| -> Result<Option<String>, String> {
        req.q(k)
            .map(|t| {
                utc_millis(&t).ok_or_else(|| {
                    format!(
                        "{k} is a UTC time such as 2026-12-01T09:00:00Z (or a date, 2026-12-01)"
                    )
                })
            })
            .transpose()
    };
    Ok(crate::audit::search::Query {
        principal: req.q("principal"),
        api: req.q("api"),
        decision: req.q("decision"),
        rule: req.q("rule"),
        since: time("since")?,
        until: time("until")?,
        before,
        limit,
    })
}

/// Runs `f` (file or database reads) off the admin listener's thread, which also answers
/// health probes.
async fn blocking(gw: &Arc<Gateway>, f: fn(&Gateway) -> Value) -> Value {
    let g = gw.clone();
    tokio::task::spawn_blocking(move || f(&g))
        .await
        .unwrap_or_else(|e| json!({"intact": null, "error": e.to_string()}))
}

/// A UTC time as the audit trail writes it (`YYYY-MM-DDTHH:MM:SS.mmmZ`), from a date, or a
/// time with or without milliseconds; `None` for anything else.
fn utc_millis(t: &str) -> Option<String> {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let date_ok = |d: &str| {
        d.len() == 10
            && d.as_bytes()[4] == b'-'
            && d.as_bytes()[7] == b'-'
            && digits(&d[..4])
            && digits(&d[5..7])
            && digits(&d[8..])
    };
    if date_ok(t) {
        return Some(format!("{t}T00:00:00.000Z"));
    }
    let (d, rest) = t.split_once('T')?;
    let rest = rest.strip_suffix('Z')?;
    let (hms, ms) = rest.split_once('.').unwrap_or((rest, "000"));
    let hms_ok = hms.len() == 8
        && hms.as_bytes()[2] == b':'
        && hms.as_bytes()[5] == b':'
        && digits(&hms[..2])
        && digits(&hms[3..5])
        && digits(&hms[6..]);
    let ms_ok = (1..=3).contains(&ms.len()) && digits(ms);
    (date_ok(d) && hms_ok && ms_ok).then(|| format!("{d}T{hms}.{ms:0<3}Z"))
}

/// Writes a reply with the console's security headers.
async fn write(session: &mut ServerSession, r: Reply) -> bool {
    let Ok(mut h) = ResponseHeader::build(r.status, Some(10)) else {
        return false;
    };
    let mut ok = h
        .insert_header(http::header::CONTENT_TYPE, r.content_type)
        .is_ok()
        && h.insert_header(http::header::CONTENT_LENGTH, r.body.len().to_string())
            .is_ok();
    for (k, v) in security_headers() {
        ok &= h.insert_header(k, v).is_ok();
    }
    for (k, v) in r.headers {
        ok &= h.append_header(k, v).is_ok();
    }
    ok && session.write_response_header(Box::new(h)).await.is_ok()
        && session.write_response_body(r.body, true).await.is_ok()
}

fn security_headers() -> [(&'static str, &'static str); 5] {
    [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // `same-origin`, not `no-referrer`: with the latter a browser sends `Origin: null` on
        // the console's own form posts.
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ]
}

/// `GET /console/api/decisions` as Server-Sent Events: the last 50 decisions, then each as
/// it happens (`event: decision`); a subscriber that falls behind loses the oldest, which
/// are counted and announced (`event: dropped`). A comment every 15 s keeps it open.
async fn stream(
    session: &mut ServerSession,
    activity: &crate::audit::activity::Activity,
    shutdown: &ShutdownWatch,
    alive: impl Fn() -> bool,
) -> bool {
    use tokio::sync::broadcast::error::RecvError;
    let Ok(mut h) = ResponseHeader::build(200, Some(8)) else {
        return false;
    };
    let mut ok = h
        .insert_header(http::header::CONTENT_TYPE, "text/event-stream")
        .is_ok();
    for (k, v) in security_headers() {
        ok &= h.insert_header(k, v).is_ok();
    }
    if !ok || session.write_response_header(Box::new(h)).await.is_err() {
        return false;
    }
    let mut rx = activity.subscribe();
    let mut last = 0u64;
    let event = |v: &Value| Bytes::from(format!("id: {}\nevent: decision\ndata: {v}\n\n", v["id"]));
    for v in activity.recent(50) {
        last = v["id"].as_u64().unwrap_or(0);
        if session.write_response_body(event(&v), false).await.is_err() {
            return false;
        }
    }
    let mut shutdown = shutdown.clone();
    loop {
        if !alive() {
            break;
        }
        let chunk = tokio::select! {
            r = rx.recv() => match r {
                Ok(v) if v["id"].as_u64().unwrap_or(0) <= last => continue,
                Ok(v) => event(&v),
                Err(RecvError::Lagged(n)) => {
                    activity.count_dropped(n);
                    Bytes::from(format!("event: dropped\ndata: {{\"dropped\":{n}}}\n\n"))
                }
                Err(RecvError::Closed) => break,
            },
            _ = tokio::time::sleep(Duration::from_secs(15)) => Bytes::from_static(b": keep-alive\n\n"),
            _ = shutdown.changed() => break,
        };
        if session.write_response_body(chunk, false).await.is_err() {
            return false;
        }
    }
    let _ = session.write_response_body(Bytes::new(), true).await;
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times_are_written_as_the_trail_writes_them() {
        let t = super::utc_millis;
        assert_eq!(t("2026-12-01").as_deref(), Some("2026-12-01T00:00:00.000Z"));
        assert_eq!(
            t("2026-12-01T09:00:00Z").as_deref(),
            Some("2026-12-01T09:00:00.000Z")
        );
        assert_eq!(
            t("2026-12-01T09:00:00.5Z").as_deref(),
            Some("2026-12-01T09:00:00.500Z")
        );
        for bad in [
            "yesterday",
            "2026-12-01T09:00:00+01:00",
            "2026-12-1",
            "2026-12-01T9:00:00Z",
            "2026-12-01T09:00:00.1234Z",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
