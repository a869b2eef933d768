//! Admission: the one function both doors call to decide a call, [`Pipeline::admit`]. A door
//! describes its call as a door-neutral [`Call`] and gets an [`Outcome`] back: admitted, with
//! everything egress needs, or refused, with a typed reason. The doors only translate that
//! outcome into HTTP or MCP; no policy decision is made anywhere else.
//!
//! The stages, each in its own file where it is more than a line:
//! [`access`] (client address, header limits, framing, RBAC), [`body`] (size, content type,
//! digest), [`limits`] (rate limits), [`outbound`] (caller headers, credential, redirects).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::audit::Auditor;
use crate::auth::signature::SignatureVerifier;
pub use crate::auth::Caller;
use crate::auth::{unauthorized, Authenticator, Principal, PrincipalKind};
use crate::config::{Api, Config};
use crate::egress::{upstream_path_and_query, Egress, EndpointPath};
use crate::error::{ErrorKind, GatewayError, Reason, Stage};
use crate::ratelimit::{Limiter, PolicyState, RedisLimiter};
use crate::trace::TraceContext;
pub use crate::types::Door;

pub mod access;
pub mod approval;
pub mod body;
pub mod limits;
pub mod outbound;
pub mod paths;
/// The headers of a call that go upstream, lower-case, for an approval's digest: the MCP
/// door's vetted `headers` argument; on the proxy door, the caller's headers the outbound
/// rule does not strip.
fn upstream_headers(payload: &Payload<'_>, plan: &OutboundHeaders) -> Vec<(String, String)> {
    let text = |k: &HeaderName, v: &HeaderValue| {
        let value = match v.to_str() {
            Ok(t) => t.to_string(),
            Err(_) => format!("hex:{}", hex::encode(v.as_bytes())),
        };
        (k.as_str().to_string(), value)
    };
    match payload {
        Payload::Whole { .. } => plan.forward.iter().map(|(k, v)| text(k, v)).collect(),
        Payload::Streamed { headers } => headers
            .iter()
            .filter(|(k, _)| {
                !plan.strip.contains(k) && !crate::types::headers::is_framing_header(k)
            })
            .map(|(k, v)| text(k, v))
            .collect(),
    }
}

/// Names the rule of a refusal that did not name its own: the config key (or `builtin.*`
/// rule) its stage and reason point at, so every refusal carries one.
fn name_rule(e: GatewayError, api: Option<&str>) -> GatewayError {
    if e.rule.is_some() {
        return e;
    }
    let api_key = |key: &str| match api {
        Some(a) => format!("apis[{a}].{key}"),
        None => format!("apis.{key}"),
    };
    let rule = match (e.stage, e.reason, e.kind) {
        (_, Some(Reason::ConnectMethod), _) => "builtin.connect".to_string(),
        (_, Some(Reason::AmbiguousFraming), _) => "builtin.framing".to_string(),
        (_, _, ErrorKind::HeadersTooLarge) => "security.request.max_headers".to_string(),
        (_, Some(Reason::MissingCredentials), _) => "auth.required".to_string(),
        (_, Some(Reason::MethodNotEnabled), _) => "auth.methods".to_string(),
        (_, Some(Reason::InvalidApiKey | Reason::RevokedApiKey), _) => "auth.api_keys".to_string(),
        (_, Some(Reason::InactiveToken | Reason::IntrospectionUnavailable), _) => {
            "auth.oauth2".to_string()
        }
        (Some(Stage::Authentication), _, _) => "auth.jwt".to_string(),
        (Some(Stage::Signature), _, _) => "security.signatures".to_string(),
        (_, Some(Reason::SignatureMissing), _) => api_key("require_signature"),
        (_, Some(Reason::CredentialParam), _) => api_key("credentials"),
        (_, _, ErrorKind::UnknownApi) => "apis".to_string(),
        (_, _, ErrorKind::InvalidEndpoint) => "builtin.endpoint".to_string(),
        (_, _, ErrorKind::PayloadTooLarge) => "security.request.max_body_size".to_string(),
        (_, _, ErrorKind::UnsupportedMediaType) => {
            "security.request.allowed_content_types".to_string()
        }
        (Some(Stage::Body), _, _) => "security.signatures".to_string(),
        (_, Some(Reason::CredentialHeader), _) => api_key("credentials"),
        (Some(Stage::Credential), _, _) => api_key("credentials"),
        (Some(Stage::Headers), _, _) => "builtin.outbound_headers".to_string(),
        (Some(Stage::Audit), _, _) => "audit.on_failure".to_string(),
        (_, _, ErrorKind::RateLimited) => match &e.rate_limit {
            Some(d) => format!("rate_limits[{}]", d.policy),
            None => "rate_limits".to_string(),
        },
        (_, _, ErrorKind::LimiterUnavailable) => "rate_limits.redis.on_error".to_string(),
        (_, _, ErrorKind::EgressDenied) => api_key("allow_private_network"),
        (Some(Stage::Destination), _, _) => "builtin.dns".to_string(),
        (Some(s), _, _) => format!("builtin.{}", s.as_str()),
        (None, _, _) => return e,
    };
    e.by_rule(rule)
}

#[cfg(test)]
mod tests;

pub use access::Access;
pub use outbound::OutboundHeaders;

/// The HTTP request a caller is identified from.
pub struct CallerRequest<'a> {
    /// The door the request came through (the proxy door also checks `Host` and `Origin`).
    pub door: Door,
    /// The TCP peer's address.
    pub peer: Option<IpAddr>,
    pub method: &'a Method,
    /// The request path and query as received (for signatures).
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The raw HTTP/1 request head, for framing checks the parsed headers cannot show.
    pub raw_head: Option<&'a [u8]>,
    /// The whole body, when the door has already read it (the MCP door); its digest is then
    /// checked against a signature at once. `None`: the body streams after admission, and
    /// the outcome carries the digest it must match.
    pub body: Option<&'a [u8]>,
    /// The caller's trace: the door's server span's, or read from `traceparent`.
    pub trace: TraceContext,
}

/// Who is calling.
pub enum Who<'a> {
    /// An HTTP request: the first four stages identify its caller.
    Request(CallerRequest<'a>),
    /// A caller identified already, by [`Pipeline::identify`] for this same HTTP request (the
    /// MCP door identifies each request once, as every JSON-RPC message needs a caller,
    /// `tools/list` too) or by [`Pipeline::identify_local`] for a stdio session.
    Identified(Arc<Caller>),
}

/// What the caller sends besides the target: its headers and body.
pub enum Payload<'a> {
    /// The proxy door: the whole request head; the body streams after admission.
    Streamed { headers: &'a HeaderMap },
    /// The MCP door: the tool's `headers` argument and the whole body.
    Whole {
        headers: &'a [(HeaderName, HeaderValue)],
        body: Option<&'a [u8]>,
    },
}

/// One call, as both doors describe it.
pub struct Call<'a> {
    pub door: Door,
    pub who: Who<'a>,
    /// The API name (or, on the MCP door, its base URL).
    pub api: &'a str,
    pub method: &'a Method,
    /// The endpoint as the caller wrote it, path and optional query.
    pub endpoint: &'a str,
    /// Query parameters given apart from the endpoint (the MCP tool's `query`).
    pub query: &'a [(String, String)],
    pub payload: Payload<'a>,
    /// The endpoint was built by the gateway from a generated tool's arguments, each path
    /// parameter percent-encoded whole: an encoded `/` inside a segment is that segment's
    /// text, not a separator.
    pub opaque_segments: bool,
}

/// An admitted call: everything egress needs.
#[derive(Debug)]
pub struct Admitted {
    pub caller: Arc<Caller>,
    pub api: Arc<Api>,
    pub endpoint: EndpointPath,
    /// The vetted address to dial (the API's host is kept for SNI and `Host`).
    pub addr: SocketAddr,
    /// The upstream request target: base path, endpoint, query, a query credential.
    pub path_and_query: String,
    /// What becomes of the caller's headers, and the credential header.
    pub headers: OutboundHeaders,
    /// Every rate-limit policy that applied, after this call was counted.
    pub rate_limits: Vec<PolicyState>,
    /// For a signed request whose body streams after admission: the SHA-256 the body must
    /// match ([`body::StreamGuard`]).
    pub body_digest: Option<[u8; 32]>,
    /// What rules in `mode = "shadow"` would have refused (stage, rule and reason named):
    /// counted, audited and traced by the door, never enforced.
    pub shadow: Vec<GatewayError>,
    /// How the credential injected into this call was obtained, when there is one.
    pub credential: Option<crate::vault::CredentialUse>,
    /// The approval this call used, when a rule held it for one.
    pub approval: Option<approval::Used>,
}

/// A refused call: the error the caller sees, and who the caller was when that was known.
#[derive(Debug)]
pub struct Refused {
    pub caller: Option<Arc<Caller>>,
    pub error: GatewayError,
    /// A call that needs approval whose body has not been read (proxy door): the request
    /// to complete with [`Pipeline::request_approval`] once the door has the body.
    pub approval_draft: Option<Box<crate::approvals::Record>>,
}

/// The verdict of [`Pipeline::admit`].
pub type Outcome = Result<Admitted, Box<Refused>>;

/// What [`Pipeline::explain`] found: the verdict the doors would reach, and the rate-limit
/// policies that would count the call (not consumed). Without `resolve`, an admitted call's
/// `addr` is unspecified (`0.0.0.0`).
pub struct Explanation {
    pub outcome: Outcome,
    pub rate_limits: Vec<String>,
    /// Where those policies stand now for this caller, read without consuming (the memory
    /// store; `None` with Redis).
    pub rate_limit_state: Option<Vec<PolicyState>>,
}

/// Whether the stages act (count limits, resolve, consult the audit trail) or only judge.
#[derive(Clone, Copy)]
enum Mode {
    Enforce,
    Explain { resolve: bool },
}

/// The admission order. Built once per config, shared by every request.
pub struct Pipeline {
    config: Arc<Config>,
    /// Shared with the pipelines of later configs: limits survive a reload.
    limiter: Arc<Limiter>,
    auth: Authenticator,
    /// Shared likewise: a nonce seen before a reload stays seen.
    signatures: Arc<SignatureVerifier>,
    egress: Arc<Egress>,
    /// The audit writer, whose health can refuse calls (`audit.on_failure = "block"`).
    audit: Option<Arc<Auditor>>,
    /// Per-caller credentials (`credentials.mode` other than `static`).
    vault: Arc<crate::vault::Vault>,
    /// Approval records: shared with the pipelines of later configs (a reload voids
    /// requests made under other rules by their version, not by forgetting them).
    approvals: Arc<crate::approvals::ApprovalStore>,
}

impl Pipeline {
    /// Fails only when the Redis client cannot be created (an invalid URL); Redis itself is
    /// contacted lazily, so the gateway starts while Redis is down.
    pub fn new(
        config: Arc<Config>,
        egress: Arc<Egress>,
        audit: Option<Arc<Auditor>>,
    ) -> Result<Self, String> {
        let limiter = match &config.rate_limits.redis {
            Some(settings) => {
                let m = crate::telemetry::metrics();
                let report = crate::ratelimit::redis::StoreReport {
                    store_up: m.limiter_store_up.clone(),
                    fallbacks: m.limiter_fallbacks.clone(),
                };
                Limiter::Redis(Box::new(
                    RedisLimiter::new(settings.clone())?.reporting_to(report),
                ))
            }
            None => Limiter::memory(),
        };
        Ok(Pipeline {
            auth: Authenticator::new(config.clone(), egress.clone())?,
            vault: Arc::new(crate::vault::Vault::new(config.clone(), egress.clone())?),
            approvals: Arc::new(crate::approvals::ApprovalStore::new(
                &config,
                egress.clone(),
            )?),
            signatures: Arc::new(SignatureVerifier::new()),
            config,
            limiter: Arc::new(limiter),
            egress,
            audit,
        })
    }

    /// The pipeline of a reloaded config: new policies and credentials, the same limiter
    /// state, nonce memory, egress pool and audit writer.
    pub fn reconfigured(&self, config: Arc<Config>) -> Result<Self, String> {
        Ok(Pipeline {
            auth: Authenticator::new(config.clone(), self.egress.clone())?,
            vault: Arc::new(self.vault.reconfigured(config.clone())?),
            approvals: self.approvals.clone(),
            signatures: self.signatures.clone(),
            limiter: self.limiter.clone(),
            egress: self.egress.clone(),
            audit: self.audit.clone(),
            config,
        })
    }

    /// The rate-limit counters `principal`'s calls to `api` are kept under (see
    /// [`limits::counters`]), with their state now, read without counting: the console's
    /// limits view. `None` for an API this config does not have.
    pub async fn limit_states(
        &self,
        principal: &str,
        api: &str,
    ) -> Option<Result<Vec<(String, crate::ratelimit::PolicyState, bool)>, String>> {
        let api = self.config.api(api)?;
        let who = self.stated_principal(principal);
        let checks = limits::counters(&self.config.rate_limits, api, |_| true, &who, None);
        let shared: Vec<bool> = checks
            .iter()
            .map(|(k, _)| k.starts_with("api:") || k.starts_with("ep:"))
            .collect();
        Some(self.limiter.peek_states(&checks).await.map(|states| {
            checks
                .into_iter()
                .zip(states)
                .zip(shared)
                .map(|(((k, _), s), shared)| (k, s, shared))
                .collect()
        }))
    }

    /// Forgets the counts `principal`'s calls to `api` are kept under (only `policy`'s, when
    /// named): the next call starts afresh. Returns the keys reset; `None` for an unknown
    /// API.
    pub async fn reset_limits(
        &self,
        principal: &str,
        api: &str,
        policy: Option<&str>,
    ) -> Option<Result<Vec<String>, String>> {
        let api = self.config.api(api)?;
        let who = self.stated_principal(principal);
        let keys: Vec<String> =
            limits::counters(&self.config.rate_limits, api, |_| true, &who, None)
                .into_iter()
                .filter(|(_, p)| policy.is_none_or(|n| p.name == n))
                .map(|(k, _)| k)
                .collect();
        Some(self.limiter.reset(&keys).await.map(|()| keys))
    }

    /// A principal known only by its id (from the audit trail or the console): its kind
    /// from the id's prefix, and an API key's own rate limit from the config.
    fn stated_principal(&self, id: &str) -> Principal {
        let kind = match id.split(':').next() {
            _ if id == "anonymous" || id.starts_with("anonymous@") => PrincipalKind::Anonymous,
            Some("key") => PrincipalKind::ApiKey,
            Some("oauth2") => PrincipalKind::OAuth2,
            _ => PrincipalKind::Jwt,
        };
        let key_rate_limit = id
            .strip_prefix("key:")
            .and_then(|n| self.config.auth.api_keys.iter().find(|k| k.name == n))
            .and_then(|k| k.rate_limit.clone());
        Principal {
            id: id.to_string(),
            kind,
            roles: Vec::new(),
            allowed_apis: None,
            key_rate_limit,
        }
    }

    /// Per-caller credentials, for the management routes and the connect pages.
    pub fn vault(&self) -> &Arc<crate::vault::Vault> {
        &self.vault
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// Role-based access, for the doors' listings (`tools/list`, `list_apis`).
    pub fn access(&self) -> Access<'_> {
        Access {
            rbac: &self.config.rbac,
        }
    }

    /// Admits or refuses one call. The stages run in this order; the first refusal wins:
    ///
    /// 1. client address (forwarded headers count only from `security.trusted_proxies`),
    ///    then `security.ip_deny` / `ip_allow` — 403 `ip_denied`;
    /// 2. CONNECT (405 `connect_method`), header count and size (431) and framing (400
    ///    `ambiguous_framing`);
    /// 3. authentication — 401 with a reason (anonymous only when `auth.required = false`);
    /// 4. the request signature, when present or required — 401 `signature_*`;
    /// 5. API, endpoint, method, path — 404 `unknown_api` (with RBAC, 403 `not_permitted`,
    ///    the same for a hidden API as for a missing one), 400 `invalid_endpoint`, 403
    ///    `method_not_allowed` / `path_not_allowed`;
    /// 6. RBAC: the caller's roles and its key's `allowed_apis` — 403 `not_permitted`; a
    ///    signature when the API requires one — 401 `signature_missing`;
    /// 7. body size (413), content type (415) and, for a body already read, its digest;
    /// 8. caller headers: the outbound rule ([`outbound`]) — 400 `reserved_header` /
    ///    `credential_header` / `credential_param`;
    ///
    ///    8½. approval, where an `[[approvals]]` rule holds the call ([`approval`]): an
    ///    approval for exactly this call is used once, else 202 `approval_pending` (the third
    ///    outcome: the call waits), or 403 / 409 / 410 for a denied, used or expired one;
    /// 9. the audit trail can record the call (`audit.on_failure = "block"`) — 503;
    /// 10. rate limits — 429 (or 503 while a shared store is down and `on_error = "deny"`),
    ///     checked after every other judgement of the call, so a refused call costs no quota;
    /// 11. destination: DNS, then the SSRF guard on every address — 403 `egress_denied`;
    /// 12. the credential (static, or the caller's own from [`crate::vault`]: 403
    ///     `credential_required`, 502 `credential_unavailable`) and the upstream target.
    pub async fn admit(&self, call: &Call<'_>) -> Outcome {
        // 1–4. Who is calling.
        let caller = match &call.who {
            Who::Request(req) => self.identify(req).await.map(Arc::new).map_err(|error| {
                Box::new(Refused {
                    caller: None,
                    error,
                    approval_draft: None,
                })
            })?,
            Who::Identified(c) => c.clone(),
        };
        let mut draft = None;
        self.judge_with(call, &caller, Mode::Enforce, &mut draft)
            .await
            .map_err(|e| {
                Box::new(Refused {
                    caller: Some(caller.clone()),
                    error: name_rule(e, Some(call.api)),
                    approval_draft: draft.map(Box::new),
                })
            })
    }

    /// A principal authenticated as on the doors (the admin listener's approval routes,
    /// which approvers use without holding `[admin] role`).
    pub async fn authenticate_principal(
        &self,
        headers: &HeaderMap,
    ) -> Result<Principal, GatewayError> {
        self.auth
            .authenticate(headers)
            .await
            .map_err(|e| name_rule(e.at(Stage::Authentication), None))
    }

    /// Whether `p` may see the requests of approval rule `rule`: an admin, or one of its
    /// approvers.
    pub fn sees_rule(&self, p: &Principal, rule: &str) -> bool {
        p.roles.contains(&self.config.admin.role)
            || self
                .config
                .approvals
                .rules
                .iter()
                .any(|r| r.id == rule && r.approvers.iter().any(|a| p.roles.contains(a)))
    }

    /// Whether `p` may see the approval queue: an admin, or an approver of some rule.
    pub fn sees_approvals(&self, p: &Principal) -> bool {
        self.config
            .approvals
            .rules
            .iter()
            .any(|r| self.sees_rule(p, &r.id))
            || p.roles.contains(&self.config.admin.role)
    }

    /// The admin listener's rule for every route beyond health and metrics: a principal
    /// authenticated as on the doors (401 with its reason otherwise) that holds
    /// `[admin] role` (403 `not_permitted`, rule `admin.role`, otherwise).
    pub async fn authenticate_admin(&self, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        let principal = self
            .auth
            .authenticate(headers)
            .await
            .map_err(|e| name_rule(e.at(Stage::Authentication), None))?;
        let role = &self.config.admin.role;
        if principal.roles.iter().any(|r| r == role) {
            Ok(principal)
        } else {
            Err(GatewayError::because(
                Reason::NotPermitted,
                format!("admin routes need the role {role:?} ([admin] role)"),
            )
            .at(Stage::Authorization)
            .by_rule("admin.role"))
        }
    }

    /// Runs [`Pipeline::admit`]'s stages without their side effects, for `explain`: rate
    /// limits are named, not counted; the audit trail's health is not consulted; the
    /// destination is resolved (and put past the SSRF guard) only with `resolve`.
    pub async fn explain(&self, call: &Call<'_>, resolve: bool) -> Explanation {
        let caller = match &call.who {
            Who::Request(req) => match self.identify(req).await {
                Ok(c) => Arc::new(c),
                Err(error) => {
                    return Explanation {
                        outcome: Err(Box::new(Refused {
                            caller: None,
                            error,
                            approval_draft: None,
                        })),
                        rate_limits: Vec::new(),
                        rate_limit_state: None,
                    }
                }
            },
            Who::Identified(c) => c.clone(),
        };
        let outcome = self
            .judge_with(call, &caller, Mode::Explain { resolve }, &mut None)
            .await
            .map_err(|e| {
                Box::new(Refused {
                    caller: Some(caller.clone()),
                    error: name_rule(e, Some(call.api)),
                    approval_draft: None,
                })
            });
        let (rate_limits, rate_limit_state) = match &outcome {
            Ok(a) => {
                let path = paths::RequestPath::new(a.endpoint.decoded_segments());
                let checks = limits::applicable(&self.config.rate_limits, &a.api, &path, &caller);
                (
                    checks.iter().map(|(_, p)| p.name.clone()).collect(),
                    self.limiter.peek(&checks),
                )
            }
            Err(_) => (Vec::new(), None),
        };
        Explanation {
            outcome,
            rate_limits,
            rate_limit_state,
        }
    }

    /// Stages 5–12 of [`Pipeline::admit`], for an identified caller. A proxy-door call that
    /// needs approval leaves its request in `draft`, to be completed with its body.
    async fn judge_with(
        &self,
        call: &Call<'_>,
        caller: &Arc<Caller>,
        mode: Mode,
        draft: &mut Option<crate::approvals::Record>,
    ) -> Result<Admitted, GatewayError> {
        let principal = &caller.principal;

        // 5–6. API, endpoint, method, path, RBAC.
        let target = |e: GatewayError| match e.reason {
            Some(Reason::NotPermitted | Reason::SignatureMissing) => e.at(Stage::Authorization),
            _ => e.at(Stage::Target),
        };
        let api = self.find_api(principal, call.api).map_err(target)?;
        let endpoint =
            EndpointPath::parse_with(call.endpoint, call.opaque_segments).map_err(target)?;
        let path = paths::RequestPath::new(endpoint.decoded_segments());
        // Refusals by rules in `mode = "shadow"`: recorded, not enforced.
        let mut shadows = caller.shadow.clone();
        self.check_rules(
            principal,
            api,
            call.method,
            &endpoint,
            &path,
            Some(&mut shadows),
        )
        .map_err(target)?;
        // A generated tool's path parameter with an encoded `/`: refused if the path an
        // upstream that decodes it would route is.
        if let Some(read) = endpoint.as_decoding_upstream_reads() {
            let alt = paths::RequestPath::new(read.iter().map(String::as_str).collect());
            self.check_rules(
                principal,
                api,
                call.method,
                &endpoint,
                &alt,
                Some(&mut shadows),
            )
            .map_err(target)?;
        }
        if api.require_signature && caller.signature.is_none() {
            return Err(unauthorized(
                Reason::SignatureMissing,
                format!(
                    "calls to API {:?} must be signed (X-Signature headers)",
                    api.name
                ),
            )
            .at(Stage::Authorization));
        }

        // 7. Body size, content type, digest.
        let at_body = |e: GatewayError| e.at(Stage::Body);
        let shape = body::BodyShape::of(&call.payload).map_err(at_body)?;
        body::check(&self.config.request, &shape).map_err(at_body)?;
        let body_digest = match (&caller.signature, &call.payload) {
            // Nothing will stream, so the digest is checked now.
            (Some(v), Payload::Streamed { .. }) if !shape.has_body => {
                body::check_digest(&v.content_sha256, b"").map_err(at_body)?;
                None
            }
            (Some(v), Payload::Streamed { .. }) => Some(v.content_sha256),
            // On the MCP door the signature covers the HTTP request, whose whole body was
            // checked when the request was identified.
            (_, Payload::Whole { .. }) | (None, _) => None,
        };

        // 8. Caller headers, by the outbound rule.
        let headers = match &call.payload {
            Payload::Streamed { headers } => outbound::plan(call.door, api, headers.iter()),
            Payload::Whole { headers, .. } => {
                outbound::plan(call.door, api, headers.iter().map(|(k, v)| (k, v)))
            }
        }
        .map_err(|e| e.at(Stage::Headers))?;
        outbound::check_query(api, &endpoint, call.query).map_err(|e| e.at(Stage::Headers))?;

        // 8½. Approval: a rule that holds the call for a person, and an approval for exactly
        //     this call (used here, once).
        let mut approval_used = None;
        if let Some(rule) =
            approval::rule_for(&self.config.approvals, api, call.method, &path, caller)
        {
            // What the approval is bound to is read only here: a call no rule holds pays
            // nothing for it.
            let streamed = match &call.payload {
                Payload::Streamed { headers } => Some(*headers),
                Payload::Whole { .. } => None,
            };
            let ask = &approval::Ask {
                api,
                method: call.method,
                endpoint: &endpoint,
                path: &path,
                extra_query: call.query,
                headers: upstream_headers(&call.payload, &headers),
                body: match &call.payload {
                    Payload::Whole { body, .. } => Some(body.unwrap_or(b"")),
                    Payload::Streamed { .. } => None,
                },
                approval_id: streamed
                    .and_then(|h| h.get("approval-id"))
                    .and_then(|v| v.to_str().ok()),
                body_len: streamed
                    .and_then(|h| h.get(http::header::CONTENT_LENGTH))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
                chunked: streamed.is_some_and(|h| h.contains_key(http::header::TRANSFER_ENCODING)),
            };
            let rule_key = format!("approvals[{}]", rule.id);
            let at = |e: GatewayError| e.at(Stage::Approval).by_rule(rule_key.clone());
            match (rule.mode, mode) {
                (crate::config::ApprovalMode::Shadow, _) => {
                    shadows.push(at(GatewayError::because(
                        Reason::ApprovalPending,
                        "this call would wait for approval",
                    )))
                }
                (_, Mode::Explain { .. }) => {
                    return Err(at(GatewayError::because(
                        Reason::ApprovalPending,
                        format!(
                            "this call would wait for approval ({} mode)",
                            approval::mode_name(rule)
                        ),
                    )))
                }
                (_, Mode::Enforce) => {
                    approval_used = Some(
                        Box::pin(self.approval(rule, ask, caller, draft))
                            .await
                            .map_err(at)?,
                    )
                }
            }
        }
        let body_digest = match (&approval_used, body_digest) {
            (
                Some(approval::Used {
                    body_sha256: Some(a),
                    id,
                    ..
                }),
                Some(signed),
            ) if *a != signed => {
                return Err(
                    approval::mismatch(id, "another body than the signed one").at(Stage::Approval)
                )
            }
            (
                Some(approval::Used {
                    body_sha256: Some(d),
                    ..
                }),
                _,
            ) => Some(*d),
            (_, d) => d,
        };

        // 9. The audit trail can record the call.
        if let (Some(a), Mode::Enforce) = (&self.audit, mode) {
            a.admit().map_err(|e| e.at(Stage::Audit))?;
        }

        // 10. Rate limits, last of the judgements: a call refused above costs no quota.
        let rate_limits = match mode {
            Mode::Enforce => {
                let everything = self.config.policy_mode == crate::types::RuleMode::Shadow;
                let (states, shadowed) = limits::check(
                    &self.config.rate_limits,
                    &self.limiter,
                    api,
                    &path,
                    caller,
                    everything,
                )
                .await
                .map_err(|e| e.at(Stage::RateLimit))?;
                shadows.extend(shadowed.map(|e| e.at(Stage::RateLimit)));
                states
            }
            Mode::Explain { .. } => Vec::new(),
        };

        // 11. Destination: DNS, and every address past the SSRF guard.
        let addr = match mode {
            Mode::Explain { resolve: false } => {
                SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), api.base.port)
            }
            _ => self
                .egress
                .resolve(api)
                .await
                .map_err(|e| e.at(Stage::Destination))?,
        };

        // 12. The credential: static, or the caller's (per principal, exchanged, or a
        //     connected account's), set on a per-call copy of the API. Then the upstream
        //     target, with a query credential when the API puts it there.
        let (api, credential) = match (&api.dynamic_credential, mode) {
            (Some(dc), Mode::Enforce) => {
                // Boxed, as the approvals here: these futures are large, and inline they
                // would make every call's admission future (moved per request) as large.
                let r = Box::pin(self.vault.resolve(api, dc, caller))
                    .await
                    .map_err(|e| e.at(Stage::Credential))?;
                (r.api, Some(r.used))
            }
            (Some(_), Mode::Explain { .. }) => (api.clone(), None),
            (None, _) => (
                api.clone(),
                api.credential
                    .as_ref()
                    .map(|c| crate::vault::CredentialUse {
                        source: "static",
                        fingerprint: c.fingerprint.clone(),
                        fetched: None,
                    }),
            ),
        };
        let mut headers = headers;
        if api.dynamic_credential.is_some() {
            headers.credential = outbound::credential_header(&api);
        }
        // The approval, checked at 8½, is used now that every stage has admitted the call.
        if let Some(used) = approval_used.as_mut() {
            if let Some(rec) = used.record.take() {
                let door = match call.door {
                    Door::Proxy => "proxy",
                    Door::Mcp => "mcp",
                };
                Box::pin(self.use_approval(&rec, door, caller))
                    .await
                    .map_err(|e| {
                        e.at(Stage::Approval)
                            .by_rule(format!("approvals[{}]", rec.rule))
                    })?;
            }
        }
        let path_and_query = upstream_path_and_query(&api, &endpoint, call.query);
        let shadow = shadows
            .into_iter()
            .map(|e| name_rule(target(e), Some(&api.name)))
            .collect();
        Ok(Admitted {
            caller: caller.clone(),
            api,
            endpoint,
            addr,
            path_and_query,
            headers,
            rate_limits,
            body_digest,
            shadow,
            credential,
            approval: approval_used,
        })
    }

    /// Stages 1–4 of [`Pipeline::admit`]: establishes who is calling.
    pub async fn identify(&self, req: &CallerRequest<'_>) -> Result<Caller, GatewayError> {
        self.identify_stages(req)
            .await
            .map_err(|e| name_rule(e, None))
    }

    async fn identify_stages(&self, req: &CallerRequest<'_>) -> Result<Caller, GatewayError> {
        let cfg = &self.config;
        // 1. Client address and IP rules.
        let client_ip = access::client_ip(&cfg.ip_rules, req.peer, Some(req.headers));
        let mut shadow = Vec::new();
        if let Err(e) = access::check_ip(&cfg.ip_rules, client_ip) {
            let e = name_rule(e.at(Stage::Address), None);
            if !cfg.ip_rules.shadow {
                return Err(e);
            }
            shadow.push(e);
        }
        // 2. CONNECT, header limits, framing, and the door's Host and Origin rule.
        let at_request = |e: GatewayError| e.at(Stage::Request);
        if req.method == http::Method::CONNECT {
            return Err(at_request(GatewayError::because(
                Reason::ConnectMethod,
                "CONNECT is not served: this gateway forwards requests to configured APIs, it is not a tunnel",
            )));
        }
        access::check_headers(&cfg.header_limits, req.headers).map_err(at_request)?;
        access::check_raw_framing(req.raw_head).map_err(at_request)?;
        let browser = match req.door {
            Door::Proxy => &cfg.proxy.browser,
            Door::Mcp => &cfg.mcp.browser,
        };
        access::check_host_origin(browser, req.headers).map_err(at_request)?;
        // 3. Authentication.
        let principal = self
            .auth
            .authenticate(req.headers)
            .await
            .map_err(|e| e.at(Stage::Authentication))?;
        // 4. Signature.
        let signature = self
            .signatures
            .verify(
                &cfg.signatures,
                &self.limiter,
                req.method.as_str(),
                req.path,
                req.query,
                req.headers,
            )
            .await
            .map_err(|e| e.at(Stage::Signature))?;
        match (&signature, req.body) {
            (None, _) if cfg.signatures.required => {
                return Err(unauthorized(
                    Reason::SignatureMissing,
                    "this gateway requires signed requests (X-Signature headers)",
                )
                .at(Stage::Signature))
            }
            (Some(v), Some(body)) => {
                body::check_digest(&v.content_sha256, body).map_err(|e| e.at(Stage::Signature))?
            }
            _ => {}
        }
        let subject_token = matches!(principal.kind, PrincipalKind::Jwt | PrincipalKind::OAuth2)
            .then(|| crate::auth::SubjectToken::from_headers(req.headers))
            .flatten();
        Ok(Caller {
            principal,
            client_ip,
            signature,
            trace: req.trace.clone(),
            shadow,
            subject_token,
        })
    }

    /// The caller of a stdio session: a local process the operator started, identified by
    /// the `API_GATEWAY_MCP_TOKEN` or `API_GATEWAY_MCP_API_KEY` environment variable (or
    /// anonymous when `auth.required = false`). IP rules do not apply to a local pipe.
    pub async fn identify_local(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Caller, GatewayError> {
        let mut headers = HeaderMap::new();
        let bad = |_| {
            unauthorized(
                Reason::MalformedCredentials,
                "the credential is not valid text",
            )
        };
        if let Some(t) = env("API_GATEWAY_MCP_TOKEN").filter(|t| !t.is_empty()) {
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().map_err(bad)?,
            );
        }
        if let Some(k) = env("API_GATEWAY_MCP_API_KEY").filter(|k| !k.is_empty()) {
            headers.insert("x-api-key", k.parse().map_err(bad)?);
        }
        let principal = self.auth.authenticate(&headers).await?;
        let subject_token = matches!(principal.kind, PrincipalKind::Jwt | PrincipalKind::OAuth2)
            .then(|| crate::auth::SubjectToken::from_headers(&headers))
            .flatten();
        Ok(Caller {
            principal,
            client_ip: None,
            signature: None,
            trace: TraceContext::new_root(),
            shadow: Vec::new(),
            subject_token,
        })
    }

    /// Stage 5's first step: the API exists and is visible to the caller.
    fn find_api(&self, principal: &Principal, name: &str) -> Result<&Arc<Api>, GatewayError> {
        if name.is_empty() {
            return Err(GatewayError::unknown_api(
                "no API named: route requests as /{api}/{path}, or set the tool's `api`",
            ));
        }
        let hides = self.config.rbac.enabled() || principal.allowed_apis.is_some();
        let api = match self.config.api(name) {
            // With RBAC (or a key's allowed_apis), an API the caller cannot use and an API
            // that does not exist look the same: nothing about what exists is revealed.
            Some(api) if hides && self.access().visible_methods(principal, api).is_empty() => None,
            found => found,
        };
        api.ok_or_else(|| {
            let name = crate::types::truncate_chars(name, 64);
            if hides {
                // The same rule for both, so the rule does not tell them apart either.
                GatewayError::because(
                    Reason::NotPermitted,
                    format!("API {name:?} is not available to you"),
                )
                .by_rule(if self.config.rbac.enabled() {
                    "rbac.roles"
                } else {
                    "auth.api_keys.allowed_apis"
                })
            } else {
                GatewayError::unknown_api(format!("no API named {name:?} is configured"))
            }
        })
    }

    /// Stages 5–6 for one destination: the endpoint is safe, and the API's method and path
    /// rules and the caller's roles allow it. Also judges each redirect hop.
    pub fn check_target(
        &self,
        principal: &Principal,
        api: &Api,
        method: &Method,
        endpoint: &str,
    ) -> Result<EndpointPath, GatewayError> {
        let endpoint = EndpointPath::parse(endpoint)?;
        let path = paths::RequestPath::new(endpoint.decoded_segments());
        self.check_rules(principal, api, method, &endpoint, &path, None)?;
        Ok(endpoint)
    }

    /// The method, path and role rules for a parsed endpoint and its [`paths::RequestPath`].
    /// With `shadows`, a refusal by a rule in `mode = "shadow"` (the API's, a role's or a
    /// grant's, or any of them under `[policy] mode = "shadow"`) is recorded there and the
    /// call goes on; without (a redirect hop), every rule is enforced.
    fn check_rules(
        &self,
        principal: &Principal,
        api: &Api,
        method: &Method,
        endpoint: &EndpointPath,
        path: &paths::RequestPath<'_>,
        mut shadows: Option<&mut Vec<GatewayError>>,
    ) -> Result<(), GatewayError> {
        let everything = self.config.policy_mode == crate::types::RuleMode::Shadow;
        let mut judge = |e: GatewayError, shadow: bool| match shadows.as_deref_mut() {
            Some(list) if shadow || everything => {
                list.push(e);
                Ok(())
            }
            _ => Err(e),
        };
        if !api.methods.contains(method) {
            judge(
                GatewayError::because(
                    Reason::MethodNotAllowed,
                    format!(
                        "method {} is not allowed for API {:?}; allowed: {}",
                        method,
                        api.name,
                        api.methods
                            .iter()
                            .map(Method::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .by_rule(format!("apis[{}].methods", api.name)),
                api.shadow,
            )?;
        }
        let case = api.path_case();
        let not_allowed = || {
            GatewayError::because(
                Reason::PathNotAllowed,
                format!(
                    "path {} is not allowed for API {:?}",
                    endpoint.path(),
                    api.name
                ),
            )
        };
        if let Some(i) = api.deny_paths.iter().position(|p| path.denied_by(p)) {
            judge(
                not_allowed()
                    .by_rule(format!("apis[{}].deny_paths[{i}]", api.name))
                    .with_detail("pattern", serde_json::json!(api.deny_paths[i].as_str())),
                api.shadow,
            )?;
        } else if !api.paths.iter().any(|p| path.allowed_by(p, case)) {
            judge(
                not_allowed().by_rule(format!("apis[{}].paths", api.name)),
                api.shadow,
            )?;
        }
        let refusal = |(rule, pattern): (String, Option<String>)| {
            let e = GatewayError::because(
                Reason::NotPermitted,
                format!(
                    "{} {} on API {:?} is not permitted for your roles",
                    method,
                    endpoint.path(),
                    api.name
                ),
            )
            .by_rule(rule);
            match pattern {
                Some(p) => e.with_detail("pattern", serde_json::json!(p)),
                None => e,
            }
        };
        let access = self.access();
        // The enforced rules decide; the shadow ones, when there are any, only say what
        // they would have done.
        match access.decide(principal, &api.name, method, path, case, false) {
            Err(r) => judge(refusal(r), false)?,
            Ok(()) if self.config.rbac.shadow => {
                if let Err(r) = access.decide(principal, &api.name, method, path, case, true) {
                    judge(refusal(r), true)?
                }
            }
            Ok(()) => {}
        }
        Ok(())
    }

    /// A redirect hop, judged again like a new call: the `Location` must land in an
    /// allow-listed API and path the caller may use with `method`, and its address must pass
    /// the SSRF guard. Returns the hop's API (without the credential when the hop leaves
    /// `from`'s origin), its vetted address and its upstream target.
    pub async fn admit_redirect(
        &self,
        caller: &Caller,
        from: &Arc<Api>,
        here: &url::Url,
        location: &str,
        method: &Method,
    ) -> Result<(Arc<Api>, SocketAddr, String), GatewayError> {
        let (next_api, endpoint) = outbound::redirect_target(&self.config, from, here, location)
            .ok_or_else(outbound::redirect_denied)?;
        // A hop the caller's roles refuse says so; any other refused hop is `redirect_denied`,
        // so a caller can tell a refused redirect from a refusal of its own call.
        let endpoint = self
            .check_target(&caller.principal, next_api, method, &endpoint)
            .map_err(|e| match e.reason {
                Some(Reason::NotPermitted) => {
                    outbound::redirect_denied().with_reason(Reason::NotPermitted)
                }
                _ => outbound::redirect_denied(),
            })?;
        if next_api.require_signature && caller.signature.is_none() {
            return Err(outbound::redirect_denied());
        }
        // The hop is called with the first API's credential, and only on its origin; and
        // within the first API's deadline.
        let mut hop = (**next_api).clone();
        hop.credential = if outbound::same_origin(from, next_api) {
            from.credential.clone()
        } else {
            None
        };
        hop.timeout = from.timeout;
        let hop = Arc::new(hop);
        let addr = self.egress.resolve(&hop).await?;
        let path_and_query = upstream_path_and_query(&hop, &endpoint, &[]);
        Ok((hop, addr, path_and_query))
    }
}
