//! The MCP tool surface: the gateway's own tools (`api_gateway`, `list_apis`) over the
//! configured APIs, and the tools generated from their OpenAPI documents.
//!
//! A [`Surface`] is what one config serves, unfiltered; each caller sees the part its roles
//! allow. It knows each tool's fingerprint and the surface's hash, which a lock file
//! (`api-gateway-mcp lock`) pins, and decides, per API and its `on_change`, whether a new
//! version of a document replaces the one served ([`Surface::judge`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};

use crate::config::{Api, Config, DocumentSource, OnChange};
use crate::openapi::drift::Drift;
use crate::openapi::{ApiSurface, Operation};

/// Methods the `api_gateway` tool accepts, in schema order.
pub const TOOL_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The `_meta` key of `tools/list` that carries the surface hash.
pub const SURFACE_META: &str = "api-gateway-mcp/surface_sha256";

/// One generated tool: the API it calls, its operation and its definition.
#[derive(Debug, Clone)]
pub struct Generated {
    pub api: Arc<Api>,
    pub op: Arc<Operation>,
    pub tool: Tool,
}

/// Where an API's document stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentState {
    /// The source it was read from, as configured (a changed source starts afresh).
    pub source: String,
    /// The canonical hash of the document last read.
    pub seen: Option<String>,
    /// The document differs from the pin (or, unpinned, from the one first served).
    pub drifted: bool,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
}

/// A drift to audit: the API, the two document hashes, what `on_change` did, the diff.
#[derive(Debug, Clone)]
pub struct DriftReport {
    pub api: String,
    pub from: Option<String>,
    pub to: String,
    pub on_change: OnChange,
    /// Whether the new document is served.
    pub applied: bool,
    pub drift: Drift,
}

impl DriftReport {
    pub fn to_json(&self) -> Value {
        json!({
            "api": self.api,
            "from_sha256": self.from,
            "to_sha256": self.to,
            "on_change": self.on_change.as_str(),
            "applied": self.applied,
            "critical": !self.drift.critical.is_empty(),
            "diff": self.drift.to_json(),
        })
    }
}

/// What one config serves.
#[derive(Debug, Default)]
pub struct Surface {
    /// Each OpenAPI API's served document surface.
    pub apis: BTreeMap<String, Arc<ApiSurface>>,
    pub documents: BTreeMap<String, DocumentState>,
    /// Every tool, unfiltered: the gateway's own, then the generated ones.
    pub tools: Arc<Vec<Tool>>,
    /// Generated tools by name.
    pub generated: BTreeMap<String, Generated>,
    /// Each lock entry: tool name (or `{api}#operations` for an API found by search) to its
    /// fingerprint.
    pub fingerprints: BTreeMap<String, String>,
    /// SHA-256 over `fingerprints`.
    pub sha256: String,
}

impl Surface {
    /// The surface of `config`: each API's document read (a file or inline; a URL document
    /// is the one `previous` served, built again under this config, or is fetched by
    /// [`Surface::with_urls_fetched`]), and judged against its pin and against what
    /// `previous` served.
    pub fn build(config: &Config, previous: Option<&Surface>) -> (Surface, Vec<DriftReport>) {
        let mut apis = BTreeMap::new();
        let mut documents = BTreeMap::new();
        let mut reports = Vec::new();
        for api in &config.apis {
            let Some(cfg) = &api.openapi else { continue };
            // What was served counts only for the same source.
            let source = format!("{:?}", cfg.source);
            let (served, state) = match previous.and_then(|p| {
                p.documents
                    .get(&api.name)
                    .map(|d| (p.apis.get(&api.name), d))
            }) {
                Some((served, d)) if d.source == source => (served, d.clone()),
                _ => (
                    None,
                    DocumentState {
                        source,
                        ..Default::default()
                    },
                ),
            };
            let fresh = match crate::openapi::read_local(cfg) {
                Some(bytes) => bytes,
                None => match served {
                    Some(s) => Ok(s.source.to_vec()),
                    None => {
                        documents.insert(api.name.clone(), state);
                        continue;
                    }
                },
            };
            let (serve, state, report) = judge(api, served, &state, fresh);
            if let Some(s) = serve {
                apis.insert(api.name.clone(), s);
            }
            documents.insert(api.name.clone(), state);
            reports.extend(report);
        }
        // An API no longer configured drifts no more.
        for name in previous.into_iter().flat_map(|p| p.documents.keys()) {
            if !documents.contains_key(name) {
                let _ = crate::telemetry::metrics()
                    .surface_drift
                    .remove_label_values(&[name]);
            }
        }
        release_freed_memory(!documents.is_empty());
        (Surface::assemble(config, apis, documents), reports)
    }

    /// This surface with every URL document not read yet fetched now, on a thread of its
    /// own (at start and reload, before the surface is checked against the lock).
    pub fn with_urls_fetched(self, config: &Config) -> (Surface, Vec<DriftReport>) {
        let pending: Vec<Arc<Api>> = config
            .apis
            .iter()
            .filter(|a| {
                matches!(
                    a.openapi.as_ref().map(|o| &o.source),
                    Some(DocumentSource::Url(_))
                )
            })
            .filter(|a| self.documents.get(&a.name).is_none_or(|d| d.seen.is_none()))
            .cloned()
            .collect();
        if pending.is_empty() {
            return (self, Vec::new());
        }
        type Fetched = Vec<(Arc<Api>, Result<Vec<u8>, String>)>;
        let fetched: Fetched = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string());
                    pending
                        .iter()
                        .map(|a| {
                            let bytes = match &rt {
                                Ok(rt) => rt.block_on(read_document(config, a)),
                                Err(e) => Err(e.clone()),
                            };
                            (a.clone(), bytes)
                        })
                        .collect()
                })
                .join()
                .unwrap_or_default()
        });
        let mut surface = self;
        let mut reports = Vec::new();
        for (api, bytes) in fetched {
            let (next, report) = surface.refreshed(config, &api, bytes);
            reports.extend(report);
            if let Some(n) = next {
                surface = n;
            }
        }
        (surface, reports)
    }

    /// This surface with one API's document read again: `None` when nothing served changes
    /// (the same document, or a change `on_change` keeps out, which still reports).
    pub fn refreshed(
        &self,
        config: &Config,
        api: &Arc<Api>,
        bytes: Result<Vec<u8>, String>,
    ) -> (Option<Surface>, Option<DriftReport>) {
        let Some(cfg) = &api.openapi else {
            return (None, None);
        };
        let served = self.apis.get(&api.name);
        let state = self
            .documents
            .get(&api.name)
            .cloned()
            .unwrap_or_else(|| DocumentState {
                source: format!("{:?}", cfg.source),
                ..Default::default()
            });
        let (serve, new_state, report) = judge(api, served, &state, bytes);
        let same = match (&serve, served) {
            (Some(a), Some(b)) => a.doc_sha256 == b.doc_sha256,
            (None, None) => true,
            _ => false,
        };
        if same && new_state == state {
            return (None, report);
        }
        let mut apis = self.apis.clone();
        match serve {
            Some(s) if !same => apis.insert(api.name.clone(), s),
            Some(_) => None,
            None => apis.remove(&api.name),
        };
        let mut documents = self.documents.clone();
        documents.insert(api.name.clone(), new_state);
        (Some(Surface::assemble(config, apis, documents)), report)
    }

    /// The same served documents with `other`'s document states: a change the lock file
    /// refused is remembered as seen, not served.
    pub fn with_states_of(&self, config: &Config, other: &Surface) -> Surface {
        Surface::assemble(config, self.apis.clone(), other.documents.clone())
    }

    fn assemble(
        config: &Config,
        apis: BTreeMap<String, Arc<ApiSurface>>,
        documents: BTreeMap<String, DocumentState>,
    ) -> Surface {
        let visible: Vec<(&Arc<Api>, Vec<Method>)> =
            config.apis.iter().map(|a| (a, a.methods.clone())).collect();
        let mut tools = builtin_tools(&visible, config.apis.iter().any(|a| a.openapi.is_some()));
        let envelope = result_envelope();
        let mut generated = BTreeMap::new();
        let mut fingerprints = BTreeMap::new();
        for t in &tools {
            fingerprints.insert(
                t.name.to_string(),
                crate::openapi::doc::canonical_sha256(&serde_json::to_value(t).unwrap_or_default()),
            );
        }
        for (name, s) in &apis {
            let Some(api) = config.apis.iter().find(|a| &a.name == name) else {
                continue;
            };
            if s.progressive {
                let all: Vec<&str> = s
                    .operations
                    .iter()
                    .map(|o| o.fingerprint.as_str())
                    .collect();
                fingerprints.insert(
                    format!("{name}#operations"),
                    crate::openapi::doc::canonical_sha256(&json!(all)),
                );
                continue;
            }
            for op in &s.operations {
                // A name another API's tool (or the gateway's own) has: a numbered suffix,
                // in config order.
                let tool_name = crate::openapi::unique_name(&op.tool, |t| {
                    generated.contains_key(t) || fingerprints.contains_key(t)
                });
                if tool_name != op.tool {
                    tracing::warn!(api = %name, tool = %op.tool, served_as = %tool_name, "a generated tool's name is taken by another tool (set tool_prefix)");
                }
                let mut def = s.tool_json(op, &envelope);
                def["name"] = json!(tool_name);
                let tool = match serde_json::from_value::<Tool>(def) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(api = %name, tool = %op.tool, error = %e, "a generated tool could not be defined; it is left out");
                        continue;
                    }
                };
                fingerprints.insert(tool_name.clone(), op.fingerprint.clone());
                tools.push(tool.clone());
                generated.insert(
                    tool_name,
                    Generated {
                        api: api.clone(),
                        op: op.clone(),
                        tool,
                    },
                );
            }
        }
        let sha256 = crate::openapi::doc::canonical_sha256(&json!(fingerprints));
        Surface {
            apis,
            documents,
            tools: Arc::new(tools),
            generated,
            fingerprints,
            sha256,
        }
    }

    /// The lock file's content: every tool's fingerprint and the total.
    pub fn lock_json(&self) -> Value {
        json!({
            "surface_sha256": self.sha256,
            "tools": self.fingerprints,
        })
    }

    /// How this surface differs from a lock file's, if it does: tools added, removed and
    /// changed, by name.
    pub fn differs_from_lock(&self, lock: &Value) -> Option<String> {
        let locked = lock["tools"].as_object();
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for (name, fp) in &self.fingerprints {
            match locked.and_then(|l| l.get(name)).and_then(Value::as_str) {
                None => added.push(name.as_str()),
                Some(f) if f != fp => changed.push(name.as_str()),
                Some(_) => {}
            }
        }
        let removed: Vec<&str> = locked
            .into_iter()
            .flat_map(|l| l.keys())
            .filter(|k| !self.fingerprints.contains_key(*k))
            .map(String::as_str)
            .collect();
        if added.is_empty() && changed.is_empty() && removed.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        for (what, list) in [("added", added), ("changed", changed), ("removed", removed)] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        Some(parts.join("; "))
    }

    /// Checks this surface against `[mcp] surface_lock`: `Err` with the difference when it
    /// differs and `on_mismatch = "refuse"`; a warning when `"warn"`.
    pub fn check_lock(&self, config: &Config) -> Result<(), String> {
        let Some(path) = &config.mcp.surface_lock else {
            return Ok(());
        };
        let lock: Value = std::fs::read(path)
            .map_err(|e| format!("mcp.surface_lock: cannot read {}: {e}", path.display()))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| {
                    format!(
                        "mcp.surface_lock: {} is not a lock file: {e}",
                        path.display()
                    )
                })
            })?;
        match self.differs_from_lock(&lock) {
            None => Ok(()),
            Some(diff) if config.mcp.refuse_lock_mismatch => Err(format!(
                "mcp.surface_lock: the tool surface differs from {} ({diff}); review it and run `api-gateway-mcp lock`",
                path.display()
            )),
            Some(diff) => {
                tracing::warn!(lock = %path.display(), difference = %diff, "the tool surface differs from the lock file");
                Ok(())
            }
        }
    }
}

/// Hands the pages freed after reading documents back to the system: a parsed document is
/// several times its size and is dropped once its tools are made, but glibc keeps the pages
/// it leaves between the surface's allocations (GitHub's 13 MB description: 130 MB resident
/// without this).
fn release_freed_memory(read_documents: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if read_documents {
        // SAFETY: malloc_trim only returns free memory to the system; it takes no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = read_documents;
}

/// Decides what an API serves once its document was read: the new surface, the one served
/// (built again under the current config), or none; the document's state; and the drift to
/// report when the document is new.
fn judge(
    api: &Api,
    served: Option<&Arc<ApiSurface>>,
    state: &DocumentState,
    bytes: Result<Vec<u8>, String>,
) -> (Option<Arc<ApiSurface>>, DocumentState, Option<DriftReport>) {
    let cfg = api.openapi.as_ref().expect("an OpenAPI API");
    let gauge = crate::telemetry::metrics()
        .surface_drift
        .with_label_values(&[&api.name]);
    let build = |b: &[u8]| {
        crate::openapi::build(api, cfg, b).map(|mut s| {
            choose_mode(&mut s, cfg);
            Arc::new(s)
        })
    };
    // What was served, under this config (its include, exclude and limits may have changed).
    let keep = || served.and_then(|s| build(&s.source).ok());
    let fresh = match bytes.and_then(|b| build(&b)) {
        Ok(f) => f,
        Err(e) => {
            if state.error.as_deref() != Some(&e) {
                tracing::warn!(api = %api.name, error = %e, "OpenAPI document unreadable; the API's tools are not served until it is");
            }
            let next = DocumentState {
                error: Some(e),
                ..state.clone()
            };
            return (keep(), next, None);
        }
    };
    let to = fresh.doc_sha256.clone();
    let repeat = state.seen.as_deref() == Some(to.as_str());
    if !repeat {
        for s in fresh.skipped.iter().filter(|s| !s.chosen) {
            tracing::warn!(api = %api.name, operation = %s.id.clone().unwrap_or_else(|| format!("{} {}", s.method, s.path)), reason = %s.reason, "OpenAPI operation skipped: it cannot be expressed as a tool");
        }
        tracing::info!(
            api = %api.name,
            document = %to,
            operations = fresh.operations.len(),
            skipped = fresh.skipped.len(),
            served_as = if fresh.progressive { "search" } else { "tools" },
            "OpenAPI document read"
        );
    }
    let pinned = cfg.pin_sha256.as_deref();
    // The pinned document, or (unpinned) the one served or the first: served, no new drift.
    // Unpinned, a drift once seen stays on the gauge until a restart or a pin.
    if pinned == Some(to.as_str())
        || (pinned.is_none() && served.is_none_or(|s| s.doc_sha256 == to))
    {
        let drifted = pinned.is_none() && state.drifted;
        gauge.set(drifted as i64);
        let next = DocumentState {
            seen: Some(to),
            drifted,
            error: None,
            source: state.source.clone(),
        };
        return (Some(fresh), next, None);
    }
    let drift = match served {
        Some(s) => crate::openapi::drift::classify(s, &fresh, &api.base.host),
        None => Drift {
            unclassified: true,
            critical: crate::openapi::drift::scan(&fresh),
            ..Default::default()
        },
    };
    let applied = match cfg.on_change {
        OnChange::Warn => true,
        OnChange::AcceptAdditive => drift.additive_only(),
        OnChange::Block => false,
    };
    gauge.set(1);
    let report = (!repeat).then(|| {
        let r = DriftReport {
            api: api.name.clone(),
            from: served.map(|s| s.doc_sha256.clone()),
            to: to.clone(),
            on_change: cfg.on_change,
            applied,
            drift,
        };
        if r.drift.critical.is_empty() {
            tracing::warn!(api = %api.name, on_change = cfg.on_change.as_str(), applied, diff = %r.drift.to_json(), "OpenAPI document changed from the pinned surface");
        } else {
            tracing::error!(api = %api.name, on_change = cfg.on_change.as_str(), applied, diff = %r.drift.to_json(), "OpenAPI document changed with instruction-like text (critical)");
        }
        r
    });
    let next = DocumentState {
        seen: Some(to),
        drifted: true,
        error: None,
        source: state.source.clone(),
    };
    // Kept out: the surface served stays (under `block`, only the pinned one).
    let kept = || {
        served
            .filter(|s| {
                cfg.on_change != OnChange::Block || pinned.is_none_or(|p| p == s.doc_sha256)
            })
            .and_then(|_| keep())
    };
    (if applied { Some(fresh) } else { kept() }, next, report)
}

/// Measures the API's generated tools and switches it to progressive discovery when they are
/// more than `max_tools` or their definitions more than `max_list_bytes`.
fn choose_mode(s: &mut ApiSurface, cfg: &crate::config::OpenApiConfig) {
    s.progressive = s.operations.len() > cfg.max_tools;
    if s.progressive {
        return;
    }
    let envelope = result_envelope();
    s.list_bytes = s
        .operations
        .iter()
        .map(|o| s.tool_json(o, &envelope).to_string().len())
        .sum();
    s.progressive = s.list_bytes > cfg.max_list_bytes;
}

/// An API's document now: read from its file or the config, or fetched (for the CLI).
pub async fn read_document(config: &Config, api: &Api) -> Result<Vec<u8>, String> {
    let cfg = api
        .openapi
        .as_ref()
        .ok_or_else(|| format!("API {:?} has no [apis.openapi]", api.name))?;
    match (crate::openapi::read_local(cfg), &cfg.source) {
        (Some(bytes), _) => bytes,
        (None, DocumentSource::Url(url)) => {
            let egress = crate::egress::Egress::with_nameservers(&config.nameservers);
            crate::openapi::fetch(&egress, api, url, cfg.max_document_bytes).await
        }
        _ => Err("no document source".into()),
    }
}

/// The surface `config` serves, every document read now (URL documents fetched): what
/// `lock` writes and `surface diff` compares.
pub async fn build_now(config: &Config) -> (Surface, Vec<DriftReport>) {
    let (mut surface, mut reports) = Surface::build(config, None);
    for api in &config.apis {
        if matches!(
            api.openapi.as_ref().map(|o| &o.source),
            Some(DocumentSource::Url(_))
        ) {
            let bytes = read_document(config, api).await;
            let (next, report) = surface.refreshed(config, api, bytes);
            reports.extend(report);
            if let Some(n) = next {
                surface = n;
            }
        }
    }
    (surface, reports)
}

/// What `check` says of the OpenAPI documents it can read without the network (files and
/// inline ones): each unreadable one, by key path, and, when every document was read, a
/// difference from the lock file.
pub fn check_documents(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    let mut all_local = true;
    for (i, api) in config.apis.iter().enumerate() {
        let Some(cfg) = &api.openapi else { continue };
        match crate::openapi::read_local(cfg) {
            Some(bytes) => {
                if let Err(e) = bytes.and_then(|b| crate::openapi::build(api, cfg, &b).map(|_| ()))
                {
                    errors.push(format!("apis[{i}].openapi: {e}"));
                }
            }
            None => all_local = false,
        }
    }
    if errors.is_empty() && all_local {
        if let Err(e) = Surface::build(config, None).0.check_lock(config) {
            errors.push(e);
        }
    }
    errors
}

/// `openapi inspect`: each operation of the API's document as included, renamed or skipped
/// (with why), the tool-list size and the mode.
pub fn inspect(api: &Api, bytes: &[u8]) -> Result<Value, String> {
    let cfg = api
        .openapi
        .as_ref()
        .ok_or_else(|| format!("API {:?} has no [apis.openapi]", api.name))?;
    let mut s = crate::openapi::build(api, cfg, bytes)?;
    choose_mode(&mut s, cfg);
    let s = s;
    let envelope = result_envelope();
    let mut ops: Vec<(String, String, Value)> = Vec::new();
    let mut list_bytes = 0;
    for o in &s.operations {
        let tool_bytes = s.tool_json(o, &envelope).to_string().len();
        list_bytes += tool_bytes;
        let schema_bytes = s.input_schema(o).to_string().len();
        let mut v = json!({
            "operation": o.operation_name(),
            "method": o.method.as_str(),
            "path": o.path,
            "status": if o.renamed.is_some() { "renamed" } else { "included" },
            "tool": o.tool,
            "input_schema_bytes": schema_bytes,
            "tool_bytes": tool_bytes,
        });
        if let Some(r) = &o.renamed {
            v["reason"] = json!(r);
        }
        ops.push((o.path.clone(), o.method.to_string(), v));
    }
    for k in &s.skipped {
        ops.push((
            k.path.clone(),
            k.method.clone(),
            json!({
                "operation": k.id.clone().unwrap_or_else(|| format!("{} {}", k.method, k.path)),
                "method": k.method,
                "path": k.path,
                "status": "skipped",
                "reason": k.reason,
            }),
        ));
    }
    ops.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Ok(json!({
        "api": api.name,
        "openapi": s.version,
        "document_sha256": s.doc_sha256,
        "pinned": cfg.pin_sha256.as_deref().map(|p| p == s.doc_sha256),
        "mode": if s.progressive { "search" } else { "tools" },
        "tools_list_bytes": list_bytes,
        "included": s.operations.len(),
        "skipped": s.skipped.len(),
        "operations": ops.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
    }))
}

/// Whether an API's document is read again on a timer: URL documents always (first at
/// start), files when `refresh` is set.
pub fn refresh_interval(api: &Api) -> Option<std::time::Duration> {
    let cfg = api.openapi.as_ref()?;
    match (&cfg.source, cfg.refresh) {
        (_, Some(d)) => Some(d),
        (DocumentSource::Url(_), None) => Some(std::time::Duration::from_secs(3600)),
        _ => None,
    }
}

/// The schema of every tool result the gateway returns for an upstream call (the data or the
/// refusal): one schema for both outcomes, since clients (the TypeScript SDK among them)
/// validate `structuredContent` against it even on `isError` results.
pub fn result_envelope() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status": {"type": "integer", "description": "Upstream HTTP status, or the gateway's status for an error"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "data": {"description": "JSON when the upstream sent JSON, else text"},
            "truncated": {"type": "boolean"},
            "error": {"type": "string", "description": "Machine-readable reason, on isError results only"},
            "message": {"type": "string"},
            "retry_after_s": {"type": "integer", "description": "With error rate_limited: seconds until a retry is admitted"},
            "policy": {"type": "string", "description": "With error rate_limited: the policy that refused"},
            "reason": {"type": "string", "description": "The finest machine-readable reason, e.g. token_expired, ip_denied, upstream_status"},
            "stage": {"type": "string", "description": "On a refusal: the admission stage that refused"},
            "rule": {"type": "string", "description": "On a refusal: the rule that refused, by config key (apis[x].deny_paths[1], rbac.roles[0].deny[0]) or builtin.* name"},
            "pattern": {"type": "string", "description": "With security.explain_denials = \"full\": the path pattern of the deny rule that matched"},
            "retryable": {"type": "boolean", "description": "On an upstream error status or credential_unavailable: whether a retry may succeed"},
            "approval_id": {"type": "string", "description": "With approval_pending (and other approval reasons): the approval request; call again with the same arguments once it is approved"},
            "approval_mode": {"type": "string", "description": "With approval_pending: who decides, \"external\" (an approver) or \"self\" (the user)"},
            "expires": {"type": "string", "description": "With approval_pending: until when the request waits (RFC 3339)"},
            "connect_url": {"type": "string", "description": "With credential_required: the page where the user stores their credential or connects their account; ask them to open it, then call again"},
            "pointer": {"type": "string", "description": "With invalid_arguments: the JSON pointer of the offending argument"},
            "expected": {"type": "string", "description": "With invalid_arguments: what the argument must be"}
        },
        "required": ["status"],
        "additionalProperties": false
    })
}

/// `api_gateway` and `list_apis` over `visible` APIs, each with the methods shown for it.
/// With `operations`, some API has an OpenAPI document: `api_gateway` also takes an
/// `operation` and its `path` parameters, and `list_apis` searches operations.
pub fn builtin_tools(visible: &[(&Arc<Api>, Vec<Method>)], operations: bool) -> Vec<Tool> {
    let names: Vec<&str> = visible.iter().map(|(a, _)| a.name.as_str()).collect();
    let methods: Vec<&str> = TOOL_METHODS
        .iter()
        .copied()
        .filter(|m| {
            visible
                .iter()
                .any(|(_, ms)| ms.iter().any(|am| am.as_str() == *m))
        })
        .collect();
    let catalogue: Vec<String> = visible
        .iter()
        .map(|(a, _)| format!("- {}: {}", a.name, a.description))
        .collect();
    let mut input = json!({
        "type": "object",
        "properties": {
            "api": {"type": "string", "enum": names,
                    "description": "Name of the API to call (its configured base URL is accepted too)."},
            "endpoint": {"type": "string",
                         "description": "Path under the API's base URL, e.g. \"/v1/items\"; may include a query string."},
            "method": {"type": "string", "enum": methods, "default": "GET"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Extra request headers. Credentials are added by the gateway; do not send any."},
            "query": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]},
                      "description": "Query parameters."},
            "body": {"description": "JSON request body for POST, PUT and PATCH."}
        },
        "required": ["api", "endpoint"],
        "additionalProperties": false
    });
    if operations {
        input["properties"]["operation"] = json!({"type": "string",
            "description": "Instead of endpoint and method, for an API described by OpenAPI: the operation to call \
                            (its id from list_apis), with its parameters in path, query, headers and body."});
        input["properties"]["path"] = json!({"type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
            "description": "With operation: the path parameters."});
        input["properties"]["query"]["additionalProperties"] = json!({});
        input["required"] = json!(["api"]);
    }
    let selectable: Vec<&str> = visible
        .iter()
        .filter(|(a, _)| a.response.allow_agent_select)
        .map(|(a, _)| a.name.as_str())
        .collect();
    if !selectable.is_empty() {
        input["properties"]["select"] = json!({
            "type": "string",
            "description": format!(
                "JMESPath applied to a JSON answer before it is returned, to get only what you need \
                 (e.g. \"items[0:10].{{id: id, name: name}}\"). Accepted by: {}.",
                selectable.join(", ")
            )
        });
    }
    let read_only = methods.iter().all(|m| matches!(*m, "GET" | "HEAD"));
    let mut call = Tool::new(
        "api_gateway",
        format!(
            "Call an allow-listed HTTP API through the gateway. Credentials are injected for you; \
             redirects are returned unless the API is configured to follow them. Available APIs:\n{}",
            catalogue.join("\n")
        ),
        as_object(input),
    );
    call.output_schema = Some(Arc::new(as_object(result_envelope())));
    // The most a result can hold: the largest data budget plus room for its envelope.
    let max_chars = visible
        .iter()
        .map(|(a, _)| a.response.max_result_chars)
        .max()
        .unwrap_or(0);
    call.meta = Some(rmcp::model::MetaObject(as_object(json!({
        "anthropic/maxResultSizeChars": max_chars + 4096
    }))));
    call.annotations = Some(
        ToolAnnotations::with_title("API gateway")
            .read_only(read_only)
            .destructive(methods.contains(&"DELETE") || methods.contains(&"PUT"))
            .idempotent(read_only)
            .open_world(true),
    );
    let mut list_input = json!({"type": "object", "properties": {}, "additionalProperties": false});
    if operations {
        list_input["properties"] = json!({
            "api": {"type": "string", "description": "An API described by OpenAPI: search its operations"},
            "query": {"type": "string", "description": "With api: words every listed operation's id, path, tags or summary contain"},
            "cursor": {"type": "string", "description": "With api: next_cursor of the previous page"},
            "operation": {"type": "string", "description": "With api: one operation's id, to get its full input schema"}
        });
    }
    let mut list = Tool::new(
        "list_apis",
        if operations {
            "List the APIs you may call with api_gateway: names, descriptions, methods and path patterns. \
             For an API described by OpenAPI, pass {api, query} to search its operations and \
             {api, operation} for one operation's arguments."
        } else {
            "List the APIs you may call with api_gateway: names, descriptions, methods and path patterns."
        },
        as_object(list_input),
    );
    let policy = json!({"type": "object", "properties": {
        "name": {"type": "string"}, "requests": {"type": "integer"},
        "window_s": {"type": "number"}, "burst": {"type": "integer"}},
        "required": ["name", "requests", "window_s", "burst"], "additionalProperties": false});
    let mut out_props = json!({"apis": {"type": "array", "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "methods": {"type": "array", "items": {"type": "string"}},
            "paths": {"type": "array", "items": {"type": "string"}},
            "deny_paths": {"type": "array", "items": {"type": "string"}},
            "rate_limit": policy.clone(),
            "per_user_rate_limit": policy.clone(),
            "per_key_rate_limit": policy.clone(),
            "endpoint_rate_limits": {"type": "array", "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "policy": policy}
            }},
            "tools": {"type": "array", "items": {"type": "string"},
                      "description": "The API's operations as tools of their own"},
            "operations": {"type": "integer",
                           "description": "An API found by search: how many operations list_apis {api, query} can find"}
        },
        "required": ["name", "description", "methods", "paths", "deny_paths"],
        "additionalProperties": false
    }}});
    if operations {
        out_props["operations"] = json!({"type": "array", "items": {"type": "object", "properties": {
            "operation": {"type": "string"}, "method": {"type": "string"},
            "path": {"type": "string"}, "summary": {"type": "string"}, "tool": {"type": "string"}},
            "required": ["operation", "method", "path", "summary"]}});
        out_props["next_cursor"] = json!({"type": "string"});
        out_props["operation"] = json!({"type": "object", "description": "With {api, operation}: the operation and its input schema"});
    }
    let mut list_output = json!({
        "type": "object",
        "properties": out_props,
        "additionalProperties": false
    });
    if !operations {
        list_output["required"] = json!(["apis"]);
    }
    list.output_schema = Some(Arc::new(as_object(list_output)));
    list.annotations = Some(
        ToolAnnotations::with_title("List APIs")
            .read_only(true)
            .destructive(false)
            .idempotent(true)
            .open_world(false),
    );
    if names.is_empty() {
        return vec![list];
    }
    vec![call, list]
}

fn as_object(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    }
}
