//! The approval stage: whether an `[[approvals]]` rule holds the call for a person, and
//! whether an approval for exactly this call exists. The third outcome of admission, "needs
//! approval", is a refusal of kind `approval_required` that names the request (`approval_id`,
//! `retry_after_s`, `expires`); a door turns it into a 202, an elicitation or a task.

use serde_json::{json, Value};

use crate::approvals::{self, CallShape, Record, Status};
use crate::auth::Caller;
use crate::config::{Api, ApprovalMode, ApprovalRule, Approvals};
use crate::egress::EndpointPath;
use crate::error::{GatewayError, Reason};

use super::paths::RequestPath;

/// What a call brings to the approval stage.
pub struct Ask<'a> {
    pub api: &'a Api,
    pub method: &'a http::Method,
    pub endpoint: &'a EndpointPath,
    pub path: &'a RequestPath<'a>,
    pub extra_query: &'a [(String, String)],
    /// The headers that go upstream (name lower-case, value).
    pub headers: Vec<(String, String)>,
    /// The whole body when the door has it (MCP); `None` while it streams (proxy).
    pub body: Option<&'a [u8]>,
    /// The proxy door's `Approval-Id` header.
    pub approval_id: Option<&'a str>,
    /// The proxy door's `Content-Length`.
    pub body_len: Option<u64>,
    /// The proxy door's body comes chunked (no length declared).
    pub chunked: bool,
}

/// An approval used by an admitted call.
#[derive(Debug, Clone)]
pub struct Used {
    pub id: String,
    pub digest: String,
    /// The body a streamed request must carry: its SHA-256.
    pub body_sha256: Option<[u8; 32]>,
    /// From its request to its use.
    pub waited_s: u64,
    /// The approved record, used (approved → consumed) only once every later stage has
    /// admitted the call, so a call refused after this stage keeps its approval.
    pub record: Option<Box<Record>>,
}

/// The rule that holds a call (API, method, path, caller) for approval, if any.
pub fn rule_for<'r>(
    approvals: &'r Approvals,
    api: &Api,
    method: &http::Method,
    path: &RequestPath<'_>,
    caller: &Caller,
) -> Option<&'r ApprovalRule> {
    approvals.rules.iter().find(|r| {
        r.api == api.name
            && (r.methods.is_empty() || r.methods.contains(method))
            && (r.paths.is_empty() || r.paths.iter().any(|p| path.denied_by(p)))
            && (r.roles.is_empty() || r.roles.iter().any(|x| caller.principal.roles.contains(x)))
    })
}

/// The canonical call, to digest: the query as sent (raw, in order; the tool's `query`
/// argument pairs after it, in order) and the headers in the order they came, so two calls
/// an upstream could read differently never share a digest.
pub fn shape<'a>(ask: &'a Ask<'a>) -> CallShape<'a> {
    let mut query: Vec<(String, String)> = ask
        .endpoint
        .query()
        .map(|q| vec![("?".to_string(), q.to_string())])
        .unwrap_or_default();
    query.extend(ask.extra_query.iter().cloned());
    CallShape {
        api: &ask.api.name,
        method: ask.method.as_str(),
        path: ask.endpoint.path(),
        query,
        headers: ask.headers.clone(),
    }
}

/// What the approver is shown of the call, as the rule's `summary` lists it, redacted.
pub fn summary(rule: &ApprovalRule, ask: &Ask<'_>, body: Option<&[u8]>) -> Value {
    let redactor = crate::egress::Redactor::for_api(ask.api);
    let mut counts = Default::default();
    let mut out = serde_json::Map::new();
    for field in &rule.summary {
        let v = match field.as_str() {
            "method" => json!(ask.method.as_str()),
            "endpoint" => json!(ask.endpoint.path()),
            "query" => json!(shape(ask).query),
            "headers" => json!(ask.headers),
            "body" => match body {
                None => Value::Null,
                Some(b) => match serde_json::from_slice::<Value>(b) {
                    Ok(v) => v,
                    Err(_) => json!(String::from_utf8_lossy(&b[..b.len().min(2000)])),
                },
            },
            _ => continue,
        };
        out.insert(field.clone(), redactor.value(v, &mut counts));
    }
    cap_summary(Value::Object(out))
}

/// A summary an approver can read and a record can hold: at most 4,000 characters of JSON
/// (a larger one is replaced by its first characters, as text).
pub fn cap_summary(v: Value) -> Value {
    const MAX: usize = 4000;
    let text = v.to_string();
    if text.len() <= MAX {
        return v;
    }
    let cut: String = text.chars().take(MAX).collect();
    json!({"truncated": format!("{cut}…")})
}

/// The refusal that says a call waits: `approval_pending` with the request's id, when to
/// look again, and until when it waits.
pub fn pending(rec: &Record) -> GatewayError {
    let now = approvals_now();
    let wait = rec.expires.saturating_sub(now);
    let who = if rec.mode == "self" {
        "the calling user's confirmation"
    } else {
        "an approver's decision"
    };
    GatewayError::because(
        Reason::ApprovalPending,
        format!(
            "this call waits for {who} (approval {}, rule {:?}); call again with the same arguments once it is approved",
            rec.id, rec.rule
        ),
    )
    .with_detail("approval_id", json!(rec.id))
    .with_detail("retry_after_s", json!(wait.clamp(1, 5)))
    .with_detail("expires", json!(crate::audit::rfc3339_of(rec.expires)))
    .with_detail("approval_mode", json!(rec.mode))
}

fn approvals_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a named approval cannot be used for this call.
pub fn unusable(rec: &Record, status: Status) -> GatewayError {
    let id = json!(rec.id);
    match status {
        Status::Pending => pending(rec),
        Status::Denied => GatewayError::because(
            Reason::ApprovalDenied,
            format!(
                "approval {} was denied{}",
                rec.id,
                rec.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        )
        .by_rule(format!("approvals[{}]", rec.rule))
        .with_detail("approval_id", id),
        Status::Expired => GatewayError::because(
            Reason::ApprovalExpired,
            format!(
                "approval {} expired; make the call again for a new request",
                rec.id
            ),
        )
        .with_detail("approval_id", id),
        Status::Consumed => GatewayError::because(
            Reason::ApprovalConsumed,
            format!(
                "approval {} was used already: one approval runs one call",
                rec.id
            ),
        )
        .with_detail("approval_id", id),
        Status::Approved => GatewayError::because(
            Reason::ApprovalMismatch,
            format!("approval {} does not fit this call", rec.id),
        )
        .with_detail("approval_id", id),
    }
}

/// A record that is not for this call (another caller, other arguments, older rules).
pub fn mismatch(id: &str, what: &str) -> GatewayError {
    GatewayError::because(
        Reason::ApprovalMismatch,
        format!("approval {id} was given for {what}; an approval covers exactly the call it was asked for"),
    )
    .with_detail("approval_id", json!(id))
}

/// The mode's name in refusals and explanations.
pub fn mode_name(rule: &ApprovalRule) -> &'static str {
    match rule.mode {
        ApprovalMode::SelfConfirm => "self",
        ApprovalMode::External => "external",
        ApprovalMode::Shadow => "shadow",
    }
}

/// Decides a pending request: approved (usable for the rule's `grant_ttl`) or denied.
/// Returns the record as decided, or why it could not be.
pub async fn decide(
    store: &approvals::ApprovalStore,
    rec: &Record,
    approve: bool,
    by: &str,
    reason: Option<String>,
) -> Result<Record, GatewayError> {
    let now = approvals_now();
    let status = rec.effective(now);
    if status != Status::Pending {
        return Err(unusable(rec, status));
    }
    let mut next = rec.clone();
    next.status = if approve {
        Status::Approved
    } else {
        Status::Denied
    };
    next.decided_by = Some(by.to_string());
    next.decided_at = Some(now);
    next.reason = reason;
    if approve {
        next.grant_expires = Some(now + rec.grant_ttl_s);
    }
    match store.transition(Status::Pending, &next).await {
        Ok(Ok(())) => Ok(next),
        Ok(Err(found)) => Err(unusable(rec, found.unwrap_or(Status::Expired))),
        Err(e) => Err(store_down(e)),
    }
}

/// Whether an approved record can still be used.
pub fn usable(rec: &Record) -> Result<(), GatewayError> {
    match rec.effective(approvals_now()) {
        Status::Approved => Ok(()),
        s => Err(unusable(rec, s)),
    }
}

/// Uses an approved record, once: approved → consumed.
pub async fn consume(
    store: &approvals::ApprovalStore,
    rec: &Record,
) -> Result<Record, GatewayError> {
    let status = rec.effective(approvals_now());
    if status != Status::Approved {
        return Err(unusable(rec, status));
    }
    let mut next = rec.clone();
    next.status = Status::Consumed;
    match store.transition(Status::Approved, &next).await {
        Ok(Ok(())) => Ok(next),
        Ok(Err(found)) => Err(unusable(rec, found.unwrap_or(Status::Expired))),
        Err(e) => Err(store_down(e)),
    }
}

/// Marks a pending request that outlived its wait as expired (the one caller that wins the
/// move reports it).
pub async fn expire(store: &approvals::ApprovalStore, rec: &Record) -> bool {
    let mut next = rec.clone();
    next.status = Status::Expired;
    matches!(store.transition(rec.status, &next).await, Ok(Ok(())))
}

pub fn store_down(e: String) -> GatewayError {
    tracing::warn!(error = %e, "approval store failed");
    GatewayError::new(
        crate::error::ErrorKind::LimiterUnavailable,
        "the approval store is unavailable; retry later",
    )
}

fn audit_event(
    kind: &'static str,
    rec: &Record,
    via: &'static str,
    caller: Option<&Caller>,
    actor: &str,
) -> crate::audit::AuditEvent {
    let mut e =
        crate::audit::AuditEvent::new(crate::types::Door::Mcp, caller, &rec.method, &rec.endpoint);
    e.door = via;
    e.principal = actor.to_string();
    e.api = rec.api.clone();
    e.event = Some(kind);
    e.approval_id = Some(rec.id.clone());
    e.call_digest = Some(rec.digest.clone());
    e.rule = Some(format!("approvals[{}]", rec.rule));
    e.status = 0;
    e.decision = match kind {
        "approval_decided" if rec.status == Status::Denied => "deny",
        _ => "allow",
    };
    e.reason = rec.reason.as_ref().map(|_| "approver_reason");
    e
}

impl super::Pipeline {
    fn record_event(
        &self,
        kind: &'static str,
        rec: &Record,
        via: &'static str,
        caller: Option<&Caller>,
        actor: &str,
    ) {
        let m = crate::telemetry::metrics();
        let outcome = match kind {
            "approval_requested" => {
                m.approvals_pending.with_label_values(&[&rec.rule]).inc();
                "requested"
            }
            "approval_decided" => {
                m.approvals_pending.with_label_values(&[&rec.rule]).dec();
                let waited = rec
                    .decided_at
                    .unwrap_or(rec.created)
                    .saturating_sub(rec.created);
                m.approval_wait
                    .with_label_values(&[&rec.rule])
                    .observe(waited as f64);
                match (rec.status, rec.mode.as_str()) {
                    (Status::Approved, _) => "approved",
                    (_, "self") => "declined",
                    _ => "denied",
                }
            }
            "approval_expired" => {
                if rec.status == Status::Pending {
                    m.approvals_pending.with_label_values(&[&rec.rule]).dec();
                }
                "expired"
            }
            _ => "consumed",
        };
        m.approvals.with_label_values(&[&rec.rule, outcome]).inc();
        tracing::info!(
            approval = %rec.id,
            rule = %rec.rule,
            principal = %rec.principal,
            api = %rec.api,
            event = kind,
            "approval"
        );
        if let Some(a) = &self.audit {
            a.record(audit_event(kind, rec, via, caller, actor));
        }
    }

    /// The approval stage for a call `rule` holds: use an approval for exactly this call, or
    /// say that it waits (creating the request when there is none).
    pub(super) async fn approval(
        &self,
        rule: &ApprovalRule,
        ask: &Ask<'_>,
        caller: &Caller,
        draft: &mut Option<Record>,
    ) -> Result<Used, GatewayError> {
        let store = &self.approvals;
        let version = &self.config.approvals.version;
        let principal = &caller.principal.id;
        let shape = shape(ask);
        let door = if ask.body.is_some() { "mcp" } else { "proxy" };
        // The proxy door names the approval it retries with.
        if let Some(id) = ask.approval_id {
            let rec = store.get(id).await.map_err(store_down)?.ok_or_else(|| {
                GatewayError::because(
                    Reason::ApprovalUnknown,
                    format!("no approval {id:?} exists (it may have been removed after it ended)"),
                )
            })?;
            if rec.principal != *principal {
                return Err(mismatch(id, "another caller"));
            }
            if rec.version != *version || rec.rule != rule.id {
                return Err(GatewayError::because(
                    Reason::ApprovalExpired,
                    format!("approval {id} was given under approval rules that have changed since; make the call again"),
                ));
            }
            if shape.digest(&rec.body_sha256) != rec.digest {
                return Err(mismatch(id, "another method, endpoint, query or headers"));
            }
            // The body streams after admission: its length must be declared, so a body the
            // approval does not cover is refused before any of it goes upstream; its bytes
            // are checked as they pass.
            if ask.chunked {
                return Err(mismatch(
                    id,
                    "a body without Content-Length (send the approved body with its length)",
                ));
            }
            if ask.body_len.unwrap_or(0) != rec.body_len {
                return Err(mismatch(id, "a body of another length"));
            }
            usable(&rec)?;
            let mut sha = [0u8; 32];
            hex::decode_to_slice(&rec.body_sha256, &mut sha)
                .map_err(|_| mismatch(id, "another body"))?;
            return Ok(Used {
                id: rec.id.clone(),
                digest: rec.digest.clone(),
                body_sha256: Some(sha),
                waited_s: approvals_now().saturating_sub(rec.created),
                record: Some(Box::new(rec)),
            });
        }
        let summary_fields = summary(rule, ask, ask.body);
        let Some(body) = ask.body else {
            // The proxy door's first sending: its body streams after admission, so the
            // request is completed by the door once it has read the body.
            let mut d = approvals::request(
                rule,
                version,
                principal,
                &ask.api.name,
                ask.method.as_str(),
                ask.endpoint.path(),
                shape.canonical(),
                String::new(),
                0,
                summary_fields,
            );
            d.mode = mode_name(rule).to_string();
            *draft = Some(d);
            return Err(match rule.mode {
                ApprovalMode::SelfConfirm => GatewayError::because(
                    Reason::ConfirmationUnavailable,
                    "this call needs the calling user's confirmation, which only an MCP client that can ask its user (elicitation) can give",
                ),
                _ => GatewayError::because(Reason::ApprovalPending, "this call waits for approval"),
            });
        };
        let body_sha256 = approvals::sha256_hex(body);
        let digest = shape.digest(&body_sha256);
        let now = approvals_now();
        if let Some(rec) = store.find(principal, &digest).await.map_err(store_down)? {
            if rec.version == *version {
                match rec.effective(now) {
                    Status::Approved => {
                        return Ok(Used {
                            id: rec.id.clone(),
                            digest: rec.digest.clone(),
                            body_sha256: None,
                            waited_s: now.saturating_sub(rec.created),
                            record: Some(Box::new(rec)),
                        });
                    }
                    Status::Pending => return Err(pending(&rec)),
                    Status::Denied if now < rec.expires => {
                        return Err(unusable(&rec, Status::Denied))
                    }
                    // A request that outlived its wait: reported once, by whoever moves it.
                    Status::Expired
                        if rec.status == Status::Pending && expire(store, &rec).await =>
                    {
                        self.record_event("approval_expired", &rec, door, Some(caller), "gateway");
                    }
                    _ => {}
                }
            }
        }
        let rec = approvals::request(
            rule,
            version,
            principal,
            &ask.api.name,
            ask.method.as_str(),
            ask.endpoint.path(),
            digest,
            body_sha256,
            body.len() as u64,
            summary_fields,
        );
        self.open_request(rule, &rec, door, caller).await?;
        Err(pending(&rec))
    }

    /// Stores a new request, announces it and records it.
    async fn open_request(
        &self,
        rule: &ApprovalRule,
        rec: &Record,
        door: &'static str,
        caller: &Caller,
    ) -> Result<(), GatewayError> {
        self.approvals.create(rec).await.map_err(store_down)?;
        self.record_event(
            "approval_requested",
            rec,
            door,
            Some(caller),
            &caller.principal.id,
        );
        if let (Some(w), ApprovalMode::External) = (&rule.webhook, rule.mode) {
            let link = format!("/approvals/{}", rec.id);
            self.approvals.announce(w, rec, link);
        }
        Ok(())
    }

    pub(super) async fn use_approval(
        &self,
        rec: &Record,
        door: &'static str,
        caller: &Caller,
    ) -> Result<Record, GatewayError> {
        let used = consume(&self.approvals, rec).await;
        if let Err(e) = &used {
            if e.reason == Some(Reason::ApprovalExpired) && rec.status == Status::Approved {
                let mut gone = rec.clone();
                gone.status = Status::Expired;
                if matches!(
                    self.approvals.transition(Status::Approved, &gone).await,
                    Ok(Ok(()))
                ) {
                    self.record_event("approval_expired", rec, door, Some(caller), "gateway");
                }
            }
        }
        let used = used?;
        self.record_event(
            "approval_consumed",
            &used,
            door,
            Some(caller),
            &caller.principal.id,
        );
        Ok(used)
    }

    /// Completes a proxy-door request once its body is read: the pending request for this
    /// exact call (an earlier identical sending's, or a new one). Returns the refusal that
    /// tells the caller to wait.
    pub async fn request_approval(
        &self,
        mut draft: Record,
        body: &[u8],
        caller: &Caller,
    ) -> GatewayError {
        let body_sha256 = approvals::sha256_hex(body);
        draft.digest = approvals::digest_of(&draft.digest, &body_sha256);
        draft.body_sha256 = body_sha256;
        draft.body_len = body.len() as u64;
        let Some(rule) = self
            .config
            .approvals
            .rules
            .iter()
            .find(|r| r.id == draft.rule)
        else {
            return GatewayError::internal("the approval rule is gone");
        };
        if let (Some(api), true) = (
            self.config.api(&draft.api),
            rule.summary.iter().any(|f| f == "body"),
        ) {
            let redactor = crate::egress::Redactor::for_api(api);
            let v = serde_json::from_slice::<Value>(body)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&body[..body.len().min(2000)])));
            draft.summary["body"] = redactor.value(v, &mut Default::default());
            draft.summary = cap_summary(std::mem::take(&mut draft.summary));
        }
        let door = "proxy";
        let now = approvals_now();
        match self.approvals.find(&draft.principal, &draft.digest).await {
            Ok(Some(rec))
                if rec.version == draft.version && rec.effective(now) == Status::Pending =>
            {
                return pending(&rec)
                    .at(crate::error::Stage::Approval)
                    .by_rule(format!("approvals[{}]", rec.rule));
            }
            Err(e) => return store_down(e),
            _ => {}
        }
        let rule_key = format!("approvals[{}]", draft.rule);
        match self.open_request(rule, &draft, door, caller).await {
            Ok(()) => pending(&draft)
                .at(crate::error::Stage::Approval)
                .by_rule(rule_key),
            Err(e) => e,
        }
    }

    /// The requester withdraws its own pending request (an MCP task cancelled): denied,
    /// with the reason saying so.
    pub async fn withdraw_approval(
        &self,
        id: &str,
        by: &crate::auth::Principal,
    ) -> Result<Record, GatewayError> {
        let rec = self
            .approval_record(id)
            .await?
            .filter(|r| r.principal == by.id)
            .ok_or_else(|| {
                GatewayError::because(Reason::ApprovalUnknown, "no such request of yours")
            })?;
        let d = decide(
            &self.approvals,
            &rec,
            false,
            &by.id,
            Some("withdrawn by the requester".into()),
        )
        .await?;
        self.record_event("approval_decided", &d, "mcp", None, &by.id);
        Ok(d)
    }

    /// Expires pending requests past their wait, and reports the oldest waiting request's
    /// age per rule as a share of the rule's `ttl`.
    pub async fn sweep_approvals(&self) {
        let now = approvals_now();
        let Ok(all) = self.approvals.list(1000).await else {
            return;
        };
        let mut oldest: std::collections::HashMap<&str, f64> = self
            .config
            .approvals
            .rules
            .iter()
            .map(|r| (r.id.as_str(), 0.0))
            .collect();
        for rec in &all {
            match (rec.status, rec.effective(now)) {
                (Status::Pending, Status::Expired) if expire(&self.approvals, rec).await => {
                    self.record_event("approval_expired", rec, "gateway", None, "gateway");
                }
                (Status::Pending, Status::Pending) => {
                    let ttl = rec.expires.saturating_sub(rec.created).max(1) as f64;
                    let ratio = now.saturating_sub(rec.created) as f64 / ttl;
                    if let Some(o) = oldest.get_mut(rec.rule.as_str()) {
                        *o = o.max(ratio);
                    }
                }
                _ => {}
            }
        }
        let m = crate::telemetry::metrics();
        for (rule, ratio) in oldest {
            m.approval_oldest_pending
                .with_label_values(&[rule])
                .set(ratio);
        }
    }

    /// An approval record by id.
    pub async fn approval_record(&self, id: &str) -> Result<Option<Record>, GatewayError> {
        self.approvals.get(id).await.map_err(store_down)
    }

    /// Approval records, newest first, optionally of one status (as of now).
    pub async fn approval_records(
        &self,
        status: Option<Status>,
    ) -> Result<Vec<Record>, GatewayError> {
        let now = approvals_now();
        let all = self.approvals.list(1000).await.map_err(store_down)?;
        Ok(all
            .into_iter()
            .filter(|r| status.is_none_or(|s| r.effective(now) == s))
            .collect())
    }

    /// A person's decision on a pending request. `by` must hold one of the rule's
    /// `approvers` roles (external) or be the caller itself (self), and may not decide their
    /// own external request.
    pub async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &crate::auth::Principal,
        reason: Option<String>,
        door: &'static str,
    ) -> Result<Record, GatewayError> {
        let rec = self.approval_record(id).await?.ok_or_else(|| {
            GatewayError::because(
                Reason::ApprovalUnknown,
                format!("no approval {id:?} exists"),
            )
        })?;
        let rule = self
            .config
            .approvals
            .rules
            .iter()
            .find(|r| r.id == rec.rule);
        let may = match (rule, rec.mode.as_str()) {
            // The user's own confirmation comes only from its MCP client's elicitation.
            (_, "self") => by.id == rec.principal && door == "mcp",
            (Some(rule), _) => {
                by.id != rec.principal && by.roles.iter().any(|r| rule.approvers.contains(r))
            }
            (None, _) => false,
        };
        if !may {
            let why = if by.id == rec.principal {
                "a caller may not approve its own call"
            } else {
                "deciding this approval needs one of the rule's approvers roles"
            };
            return Err(GatewayError::because(Reason::NotPermitted, why)
                .at(crate::error::Stage::Approval)
                .by_rule(format!("approvals[{}].approvers", rec.rule)));
        }
        if rec.version != self.config.approvals.version {
            return Err(GatewayError::because(
                Reason::ApprovalExpired,
                "the approval rules changed since this request was made",
            ));
        }
        let decided = decide(&self.approvals, &rec, approve, &by.id, reason).await;
        match &decided {
            Ok(d) => self.record_event("approval_decided", d, door, None, &by.id),
            Err(e) if e.reason == Some(Reason::ApprovalExpired) => {
                if rec.status == Status::Pending && expire(&self.approvals, &rec).await {
                    self.record_event("approval_expired", &rec, door, None, "gateway");
                }
            }
            Err(_) => {}
        }
        decided
    }
}
