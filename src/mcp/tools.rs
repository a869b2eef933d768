//! The MCP tool definitions: the `api_gateway` and `list_apis` schemas, filtered per caller
//! and built once per config, and the `list_apis` result.

use std::sync::Arc;

use http::Method;
use rmcp::model::{CallToolResult, JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};

use super::handler::GatewayMcp;
use crate::gateway::Gateway;
use crate::policy::Caller;

/// Methods the `api_gateway` tool accepts, in schema order.
pub(super) const TOOL_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

impl GatewayMcp {
    /// Every tool, unfiltered, over the gateway's APIs: built once per config.
    pub(super) fn all_tools(gateway: &Gateway) -> Arc<Vec<Tool>> {
        gateway
            .mcp_tools
            .get_or_init(|| Arc::new(Self::build_all_tools(gateway)))
            .clone()
    }

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

    /// The tools, as this caller sees them: the `api` enum and the method list hold only what
    /// its roles permit, and `api_gateway` is left out when nothing is permitted.
    pub(super) fn tools(&self, caller: &Caller) -> Vec<Tool> {
        Self::tools_for(&self.visible_apis(caller))
    }

    /// Every tool over every configured API.
    fn build_all_tools(gateway: &Gateway) -> Vec<Tool> {
        let all: Vec<_> = gateway
            .config
            .apis
            .iter()
            .map(|a| (a, a.methods.clone()))
            .collect();
        Self::tools_for(&all)
    }

    fn tools_for(visible: &[(&Arc<crate::config::Api>, Vec<Method>)]) -> Vec<Tool> {
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
        // One schema for both outcomes: clients (the TypeScript SDK among them) validate
        // `structuredContent` against it even on `isError` results.
        let output = json!({
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
        });
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
        call.output_schema = Some(Arc::new(as_object(output)));
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
        let mut list = Tool::new(
            "list_apis",
            "List the APIs you may call with api_gateway: names, descriptions, methods and path patterns.",
            as_object(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        );
        let policy = json!({"type": ["object", "null"], "properties": {
            "name": {"type": "string"}, "requests": {"type": "integer"},
            "window_s": {"type": "number"}, "burst": {"type": "integer"}},
            "required": ["name", "requests", "window_s", "burst"], "additionalProperties": false});
        list.output_schema = Some(Arc::new(as_object(json!({
            "type": "object",
            "properties": {"apis": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "methods": {"type": "array", "items": {"type": "string"}},
                    "paths": {"type": "array", "items": {"type": "string"}},
                    "deny_paths": {"type": "array", "items": {"type": "string"}},
                    "rate_limit": policy.clone(),
                    "per_user_rate_limit": policy
                },
                "required": ["name", "description", "methods", "paths", "deny_paths"],
                "additionalProperties": false
            }}},
            "required": ["apis"],
            "additionalProperties": false
        }))));
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

    pub(super) fn list_apis(&self, caller: &Caller) -> CallToolResult {
        let limits = &self.gateway.config.rate_limits;
        let apis: Vec<Value> = self
            .visible_apis(caller)
            .into_iter()
            .map(|(a, methods)| {
                json!({
                    "name": a.name,
                    "description": a.description,
                    "methods": methods.iter().map(Method::as_str).collect::<Vec<_>>(),
                    "paths": a.paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    "deny_paths": a.deny_paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    "rate_limit": a.rate_limit.as_ref().or(limits.default.as_ref()).map(policy_json),
                    "per_user_rate_limit": limits.per_user.as_ref().map(policy_json),
                })
            })
            .collect();
        CallToolResult::structured(json!({ "apis": apis }))
    }
}

fn policy_json(p: &crate::ratelimit::Policy) -> Value {
    json!({"name": p.name, "requests": p.requests, "window_s": p.window.as_secs_f64(), "burst": p.burst})
}

fn as_object(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    }
}
