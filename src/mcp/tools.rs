//! The tools each caller sees: the gateway's own over the APIs its roles reach, and the
//! generated tools whose operation its roles allow; and `list_apis`, which lists the APIs and
//! searches the operations of those too big to list as tools.

use std::sync::Arc;

use http::Method;
use rmcp::model::{CallToolResult, Tool};
use serde_json::{json, Map, Value};

use super::handler::GatewayMcp;
use crate::error::GatewayError;
use crate::openapi::{ApiSurface, Operation};
use crate::policy::Caller;
use crate::surface::builtin_tools;

/// Operations one `list_apis` search returns per page.
const PAGE: usize = 25;

impl GatewayMcp {
    /// The APIs this caller may use, each with the methods it may use on it.
    fn visible_apis(&self, caller: &Caller) -> Vec<(&Arc<crate::config::Api>, Vec<Method>)> {
        let access = self.gateway.pipeline.access();
        self.gateway
            .config
            .apis
            .iter()
            .map(|a| (a, access.visible_methods(&caller.principal, a)))
            .filter(|(_, m)| !m.is_empty())
            .collect()
    }

    /// Whether the caller's roles (and key) allow this operation: the same decision
    /// admission makes on its method and path template.
    pub(super) fn may_call(
        &self,
        caller: &Caller,
        api: &crate::config::Api,
        op: &Operation,
    ) -> bool {
        let segments: Vec<&str> = op.path.split('/').collect();
        let path = crate::policy::paths::RequestPath::new(segments);
        self.gateway
            .pipeline
            .access()
            .decide(
                &caller.principal,
                &api.name,
                &op.method,
                &path,
                api.path_case(),
                false,
            )
            .is_ok()
            && api.methods.contains(&op.method)
    }

    /// The tools, as this caller sees them: the `api` enum and the method list hold only what
    /// its roles permit, `api_gateway` is left out when nothing is permitted, and a generated
    /// tool is listed when its operation is permitted.
    pub(super) fn tools(&self, caller: &Caller) -> Vec<Tool> {
        let visible = self.visible_apis(caller);
        let cfg = &self.gateway.config;
        let mut tools = builtin_tools(&visible, cfg.apis.iter().any(|a| a.openapi.is_some()));
        let surface = self.gateway.surface.load();
        for g in surface.generated.values() {
            if visible.iter().any(|(a, _)| a.name == g.api.name)
                && self.may_call(caller, &g.api, &g.op)
            {
                tools.push(g.tool.clone());
            }
        }
        tools
    }

    /// A generated tool the caller may call, by name; a hidden one is refused like a missing
    /// one.
    pub(super) fn generated(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Option<crate::surface::Generated> {
        let surface = self.gateway.surface.load();
        let g = surface.generated.get(name)?;
        self.may_call(caller, &g.api, &g.op).then(|| g.clone())
    }

    /// An operation of an API described by OpenAPI, by id or tool name, if the caller may
    /// call it; else an `invalid_arguments` error naming how to find one.
    pub(super) fn operation(
        &self,
        caller: &Caller,
        api: &str,
        name: &str,
    ) -> Result<(Arc<ApiSurface>, Arc<Operation>), GatewayError> {
        let not_found = || {
            GatewayError::invalid_arguments(format!(
                "API {api:?} has no operation {name:?} you may call; search with list_apis {{\"api\": \"{api}\", \"query\": \"...\"}}"
            ))
            .with_detail("pointer", json!("/operation"))
            .with_detail("expected", json!("an operation id from list_apis"))
        };
        let config_api = self.gateway.config.api(api).ok_or_else(not_found)?;
        let surface = self.gateway.surface.load();
        let s = surface
            .apis
            .get(&config_api.name)
            .ok_or_else(not_found)?
            .clone();
        let op = s.find(name).ok_or_else(not_found)?.clone();
        if !self.may_call(caller, config_api, &op) {
            return Err(not_found());
        }
        Ok((s, op))
    }

    pub(super) fn list_apis(&self, caller: &Caller, args: &Map<String, Value>) -> CallToolResult {
        if let Some(api) = args.get("api") {
            return match self.search_operations(caller, api, args) {
                Ok(v) => CallToolResult::structured(v),
                Err(e) => super::handler::tool_error(&e, self.gateway.config.explain_denials),
            };
        }
        if let Some(k) = args.keys().next() {
            let e = GatewayError::invalid_arguments(format!("{k} is given only with api"))
                .with_detail("pointer", json!(format!("/{k}")));
            return super::handler::tool_error(&e, self.gateway.config.explain_denials);
        }
        let limits = &self.gateway.config.rate_limits;
        let surface = self.gateway.surface.load();
        let apis: Vec<Value> = self
            .visible_apis(caller)
            .into_iter()
            .map(|(a, methods)| {
                let mut v = json!({
                    "name": a.name,
                    "description": a.description,
                    "methods": methods.iter().map(Method::as_str).collect::<Vec<_>>(),
                    "paths": a.paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    "deny_paths": a.deny_paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                });
                if let Some(p) = a.rate_limit.as_ref().or(limits.default.as_ref()) {
                    v["rate_limit"] = policy_json(p);
                }
                if let Some(p) = limits.per_user.as_ref() {
                    v["per_user_rate_limit"] = policy_json(p);
                }
                if let Some(p) = caller.principal.key_rate_limit.as_ref() {
                    v["per_key_rate_limit"] = policy_json(p);
                }
                if !a.endpoint_rate_limits.is_empty() {
                    v["endpoint_rate_limits"] = a
                        .endpoint_rate_limits
                        .iter()
                        .map(|(pat, p)| json!({"path": pat.as_str(), "policy": policy_json(p)}))
                        .collect();
                }
                if let Some(s) = surface.apis.get(&a.name) {
                    let mine = s.operations.iter().filter(|o| self.may_call(caller, a, o));
                    if s.progressive {
                        v["operations"] = json!(mine.count());
                    } else {
                        v["tools"] = mine
                            .filter(|o| surface.generated.contains_key(&o.tool))
                            .map(|o| o.tool.clone())
                            .collect();
                    }
                }
                v
            })
            .collect();
        CallToolResult::structured(json!({ "apis": apis }))
    }

    /// `list_apis {api, query?, cursor?}`: the caller's operations of the API that match;
    /// `{api, operation}`: one operation with its input schema.
    fn search_operations(
        &self,
        caller: &Caller,
        api: &Value,
        args: &Map<String, Value>,
    ) -> Result<Value, GatewayError> {
        let text = |k: &str| -> Result<Option<&str>, GatewayError> {
            match args.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(
                    GatewayError::invalid_arguments(format!("{k} must be a string"))
                        .with_detail("pointer", json!(format!("/{k}"))),
                ),
            }
        };
        if let Some(k) = args
            .keys()
            .find(|k| !matches!(k.as_str(), "api" | "query" | "cursor" | "operation"))
        {
            return Err(GatewayError::invalid_arguments(format!(
                "list_apis takes api, query, cursor and operation, not {k}"
            ))
            .with_detail("pointer", json!(format!("/{k}"))));
        }
        let api = api.as_str().ok_or_else(|| {
            GatewayError::invalid_arguments("api must be a string")
                .with_detail("pointer", json!("/api"))
        })?;
        if let Some(name) = text("operation")? {
            let (s, op) = self.operation(caller, api, name)?;
            return Ok(json!({"operation": {
                "operation": op.operation_name(),
                "method": op.method.as_str(),
                "path": op.path,
                "summary": op.one_line(),
                "description": op.description,
                "tool": self.gateway.surface.load().generated.contains_key(&op.tool).then(|| op.tool.clone()),
                "input_schema": s.input_schema(&op),
            }}));
        }
        let config_api = self
            .visible_apis(caller)
            .into_iter()
            .find(|(a, _)| a.name == api)
            .map(|(a, _)| a.clone());
        let surface = self.gateway.surface.load();
        let Some((a, s)) =
            config_api.and_then(|a| surface.apis.get(&a.name).map(|s| (a, s.clone())))
        else {
            return Err(GatewayError::invalid_arguments(format!(
                "{api:?} is not an API described by OpenAPI that you may call; call list_apis without arguments to see them"
            ))
            .with_detail("pointer", json!("/api")));
        };
        let start: usize = match text("cursor")? {
            None => 0,
            Some(c) => c.parse().map_err(|_| {
                GatewayError::invalid_arguments("cursor is not one list_apis returned")
                    .with_detail("pointer", json!("/cursor"))
            })?,
        };
        let query = text("query")?.unwrap_or("");
        let mut found = s
            .search(query)
            .filter(|o| self.may_call(caller, &a, o))
            .skip(start);
        let page: Vec<Value> = found
            .by_ref()
            .take(PAGE)
            .map(|o| {
                let mut v = json!({
                    "operation": o.operation_name(),
                    "method": o.method.as_str(),
                    "path": o.path,
                    "summary": o.one_line(),
                });
                if surface.generated.contains_key(&o.tool) {
                    v["tool"] = json!(o.tool);
                }
                v
            })
            .collect();
        let mut out = json!({"operations": page});
        if found.next().is_some() {
            out["next_cursor"] = json!((start + PAGE).to_string());
        }
        Ok(out)
    }
}

fn policy_json(p: &crate::ratelimit::Policy) -> Value {
    json!({"name": p.name, "requests": p.requests, "window_s": p.window.as_secs_f64(), "burst": p.burst})
}
