//! `api-gateway-mcp explain`: runs the admission function on a described call, offline and
//! without side effects, and says what each stage decided, which rule refused, and, for an
//! admitted call, the upstream URL, the credential mode (never its value) and the rate-limit
//! policies that would count it.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{json, Value};

use crate::auth::{Caller, Principal, PrincipalKind};
use crate::config::{Config, CredentialPlacement};
use crate::error::Stage;
use crate::policy::{Call, CallerRequest, Payload, Pipeline, Who};
use crate::types::Door;

/// The order the stages run in (see [`Pipeline::admit`]).
pub const STAGES: [Stage; 11] = [
    Stage::Address,
    Stage::Request,
    Stage::Authentication,
    Stage::Signature,
    Stage::Target,
    Stage::Authorization,
    Stage::Body,
    Stage::Headers,
    Stage::Audit,
    Stage::RateLimit,
    Stage::Destination,
];

/// A call to explain, as the CLI and the admin listener's `POST /explain` describe it.
pub struct Described {
    pub door: Door,
    pub api: String,
    pub method: Method,
    pub endpoint: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub key: Option<String>,
    pub jwt: Option<String>,
    /// A caller stated without a token: `{"subject", "roles", "issuer"?, "allowed_apis"?}`.
    pub principal: Option<Value>,
    pub ip: Option<IpAddr>,
    pub resolve: bool,
    /// The endpoint was made from a generated tool's arguments (see
    /// [`Call::opaque_segments`]).
    pub opaque_segments: bool,
}

/// The explanation document (`explain --json`): `decision`, `reason`, `stage`, `rule`,
/// `message`, `status`, `stages` (one `{stage, verdict}` per stage), and for an admitted call
/// `upstream`, `credential` and `rate_limits`.
pub async fn explain(config: Arc<Config>, d: &Described) -> Result<Value, String> {
    Explainer::new(config)?.explain(d).await
}

/// A config's admission function, built once, for explaining many calls.
pub struct Explainer {
    pipeline: Pipeline,
}

impl Explainer {
    pub fn new(config: Arc<Config>) -> Result<Explainer, String> {
        let egress = Arc::new(crate::egress::Egress::with_nameservers(&config.nameservers));
        Ok(Explainer {
            pipeline: Pipeline::new(config, egress, None)?,
        })
    }

    /// See [`explain`].
    pub async fn explain(&self, d: &Described) -> Result<Value, String> {
        explain_with(&self.pipeline, d).await
    }
}

/// [`explain`] on a pipeline that already exists (the serving one, for the admin listener's
/// `POST /explain`): explaining consumes no limit and writes no audit record.
pub async fn explain_with(pipeline: &Pipeline, d: &Described) -> Result<Value, String> {
    let mut headers = HeaderMap::new();
    for (k, v) in &d.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("--header: {k:?} is not a header name"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("--header: the value of {k} is not a header value"))?;
        headers.append(name, value);
    }
    if let Some(t) = &d.jwt {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| "--jwt: not a token".to_string())?;
        headers.insert(http::header::AUTHORIZATION, v);
    }
    if let Some(k) = &d.key {
        let v = HeaderValue::from_str(k).map_err(|_| "--key: not a key".to_string())?;
        headers.insert(HeaderName::from_static("x-api-key"), v);
    }
    let asserted = d.principal.as_ref().map(principal_of).transpose()?;
    let (path, query) = match d.endpoint.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (d.endpoint.clone(), String::new()),
    };
    let request_path = match d.door {
        Door::Proxy => format!("/{}{}", d.api, path),
        Door::Mcp => "/mcp".to_string(),
    };
    let who = match asserted {
        Some(p) => Who::Identified(Arc::new(Caller {
            principal: p,
            client_ip: d.ip,
            signature: None,
            trace: crate::trace::TraceContext::from_headers(&headers),
            shadow: Vec::new(),
            subject_token: None,
        })),
        None => Who::Request(CallerRequest {
            door: d.door,
            peer: d.ip.or(Some(IpAddr::from([127, 0, 0, 1]))),
            method: &d.method,
            path: &request_path,
            query: &query,
            headers: &headers,
            raw_head: None,
            body: None,
            trace: crate::trace::TraceContext::from_headers(&headers),
        }),
    };
    let asserted = matches!(who, Who::Identified(_));
    let whole: Vec<(HeaderName, HeaderValue)> = Vec::new();
    let call = Call {
        door: d.door,
        who,
        api: &d.api,
        method: &d.method,
        endpoint: &d.endpoint,
        query: &d.query,
        opaque_segments: d.opaque_segments,
        payload: match d.door {
            Door::Proxy => Payload::Streamed { headers: &headers },
            Door::Mcp => Payload::Whole {
                headers: &whole,
                body: None,
            },
        },
    };
    let found = pipeline.explain(&call, d.resolve).await;
    let refused_at = found.outcome.as_ref().err().and_then(|r| r.error.stage);
    let mut stages = Vec::new();
    let mut reached = true;
    for stage in STAGES {
        let verdict = if asserted && STAGES[..4].contains(&stage) {
            "skipped (principal asserted)"
        } else if !reached {
            "not reached"
        } else if Some(stage) == refused_at {
            reached = false;
            "refused"
        } else if found.outcome.is_err() && refused_at.is_none() {
            "not reached"
        } else {
            match stage {
                Stage::Audit => "not checked offline",
                Stage::Destination if !d.resolve => "not resolved (pass --resolve)",
                _ => "pass",
            }
        };
        stages.push(json!({"stage": stage.as_str(), "verdict": verdict}));
    }
    let mut doc = match &found.outcome {
        Ok(a) => {
            let url = a
                .api
                .base
                .url_of(&a.path_and_query)
                .map(|u| u.to_string())
                .unwrap_or_default();
            // A query credential is in the URL: shown masked, never its value.
            let url = String::from_utf8_lossy(&crate::egress::redact_credential(
                &a.api,
                bytes::Bytes::from(url),
            ))
            .into_owned();
            // Where the credential goes and how it is obtained; a per-caller one is not
            // looked up (nor exchanged) by an explanation.
            let mode = a
                .api
                .dynamic_credential
                .as_ref()
                .map_or("static", |d| d.mode.as_str());
            let credential = a.api.credential_placement().map(|p| match p {
                CredentialPlacement::Header(h) => {
                    json!({"placement": "header", "name": h.as_str(), "mode": mode})
                }
                CredentialPlacement::Query(q) => {
                    json!({"placement": "query", "name": q, "mode": mode})
                }
            });
            let mut doc = json!({
                "decision": "admitted",
                "api": a.api.name,
                "principal": a.caller.principal.id,
                "upstream": url,
                "credential": credential,
                "rate_limits": found.rate_limits,
                "shadow": a.shadow.iter().map(|e| json!({
                    "stage": e.stage.map(Stage::as_str),
                    "rule": e.rule,
                    "reason": e.reason_code(),
                })).collect::<Vec<_>>(),
            });
            if d.resolve {
                doc["address"] = json!(a.addr.to_string());
            }
            // Where the caller stands now, read without consuming (the serving pipeline's
            // memory store, on the admin listener; a fresh one offline).
            if let Some(states) = &found.rate_limit_state {
                doc["rate_limit_state"] = Value::Array(
                    states
                        .iter()
                        .map(|s| {
                            json!({"policy": s.name, "limit": s.requests, "remaining": s.remaining,
                                   "reset_s": crate::types::ceil_secs(s.reset)})
                        })
                        .collect(),
                );
            }
            doc
        }
        Err(r) => {
            let e = &r.error;
            json!({
                "decision": "refused",
                "status": e.kind.status(),
                "error": e.kind.code(),
                "reason": e.reason_code(),
                "stage": e.stage.map(Stage::as_str),
                "rule": e.rule,
                "message": e.message,
                "principal": r.caller.as_ref().map(|c| c.principal.id.clone()),
            })
        }
    };
    doc["door"] = json!(d.door.as_str());
    doc["principal_asserted"] = json!(asserted);
    doc["stages"] = Value::Array(stages);
    Ok(doc)
}

/// A principal stated with `--principal`.
fn principal_of(v: &Value) -> Result<Principal, String> {
    let bad = |what: &str| {
        format!("--principal: {what} (e.g. '{{\"subject\": \"alice\", \"roles\": [\"reader\"]}}')")
    };
    let subject = v["subject"]
        .as_str()
        .ok_or_else(|| bad("\"subject\" must be a string"))?;
    let roles = match &v["roles"] {
        Value::Null => Vec::new(),
        Value::Array(a) => a
            .iter()
            .map(|r| r.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("\"roles\" must be strings"))?,
        _ => return Err(bad("\"roles\" must be an array")),
    };
    let allowed_apis = match &v["allowed_apis"] {
        Value::Null => None,
        Value::Array(a) => Some(
            a.iter()
                .map(|r| r.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("\"allowed_apis\" must be strings"))?,
        ),
        _ => return Err(bad("\"allowed_apis\" must be an array")),
    };
    let id = match (v["id"].as_str(), v["issuer"].as_str()) {
        (Some(id), _) => id.to_string(),
        (None, Some(iss)) => format!("jwt:{iss}#{subject}"),
        (None, None) => format!("jwt:{subject}"),
    };
    Ok(Principal {
        id,
        kind: PrincipalKind::Jwt,
        roles,
        allowed_apis,
        key_rate_limit: None,
    })
}

/// The document as lines for a person.
pub fn text(doc: &Value) -> String {
    let mut out = String::new();
    for s in doc["stages"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<15} {}\n",
            s["stage"].as_str().unwrap_or(""),
            s["verdict"].as_str().unwrap_or("")
        ));
    }
    if doc["decision"] == "admitted" {
        out.push_str(&format!(
            "\nADMITTED for {}\nupstream:    {}\ncredential:  {}\nrate limits: {}\n",
            doc["principal"].as_str().unwrap_or("?"),
            doc["upstream"].as_str().unwrap_or(""),
            match &doc["credential"] {
                Value::Null => "none".to_string(),
                c => format!(
                    "{} {} ({})",
                    c["placement"].as_str().unwrap_or(""),
                    c["name"].as_str().unwrap_or(""),
                    c["mode"].as_str().unwrap_or("static")
                ),
            },
            doc["rate_limits"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_else(|| "none".to_string()),
        ));
        if let Some(a) = doc["address"].as_str() {
            out.push_str(&format!("address:     {a}\n"));
        }
    } else {
        out.push_str(&format!(
            "\nREFUSED {} {} at stage {} by rule {}\n{}\n",
            doc["status"],
            doc["reason"].as_str().unwrap_or(""),
            doc["stage"].as_str().unwrap_or("?"),
            doc["rule"].as_str().unwrap_or("?"),
            doc["message"].as_str().unwrap_or("")
        ));
    }
    if doc["principal_asserted"] == true {
        out.push_str("(the caller was stated with --principal, not authenticated)\n");
    }
    out
}

/// A tool call as the call admission judges: the API, method, endpoint, query and headers of
/// `tool` with `arguments` (`api_gateway`'s own, an `operation` of it, or a generated tool's).
pub struct ToolCall {
    pub api: String,
    pub method: Method,
    pub endpoint: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub opaque_segments: bool,
}

impl ToolCall {
    pub fn new(
        surface: &crate::surface::Surface,
        tool: &str,
        arguments: &Value,
    ) -> Result<ToolCall, String> {
        let empty = serde_json::Map::new();
        let args = match arguments {
            Value::Null => &empty,
            Value::Object(m) => m,
            _ => return Err("arguments must be an object".into()),
        };
        let strings = |v: Option<&Value>| -> Vec<(String, String)> {
            v.and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect()
        };
        let generated =
            |api: String, op: &crate::openapi::Operation, args: &serde_json::Map<String, Value>| {
                let c = op.to_call(args).map_err(|e| e.message)?;
                Ok(ToolCall {
                    api,
                    method: c.method,
                    endpoint: c.endpoint,
                    query: Vec::new(),
                    headers: strings(Some(&Value::Object(c.headers))),
                    opaque_segments: true,
                })
            };
        if tool != "api_gateway" {
            let g = surface
                .generated
                .get(tool)
                .ok_or_else(|| format!("no tool named {tool:?}"))?;
            return generated(g.api.name.clone(), &g.op, args);
        }
        let api = args
            .get("api")
            .and_then(Value::as_str)
            .ok_or("arguments.api (a string) is required")?
            .to_string();
        if let Some(name) = args.get("operation").and_then(Value::as_str) {
            let op = surface
                .apis
                .get(&api)
                .and_then(|s| s.find(name))
                .ok_or_else(|| format!("API {api:?} has no operation {name:?}"))?;
            let parts: serde_json::Map<String, Value> = args
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "path" | "query" | "headers" | "body"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            return generated(api, op, &parts);
        }
        let method = args.get("method").and_then(Value::as_str).unwrap_or("GET");
        Ok(ToolCall {
            api,
            method: Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("method {method:?} is not a method"))?,
            endpoint: args
                .get("endpoint")
                .and_then(Value::as_str)
                .ok_or("arguments.endpoint (a string) is required")?
                .to_string(),
            query: strings(args.get("query")),
            headers: strings(args.get("headers")),
            opaque_segments: false,
        })
    }
}

impl Described {
    /// The admin listener's JSON: `{"door", "api", "method"?, "endpoint", "principal"?,
    /// "ip"?, "query"?: {k: v}, "headers"?: {k: v}, "resolve"?}`; or, for an MCP call,
    /// `{"tool", "arguments", …}` in place of door, api, method, endpoint, query and headers.
    pub fn from_json(v: &Value, surface: &crate::surface::Surface) -> Result<Described, String> {
        if let Some(tool) = v["tool"].as_str() {
            let call = ToolCall::new(surface, tool, &v["arguments"])?;
            let mut rest = v.clone();
            if let Value::Object(m) = &mut rest {
                m.remove("tool");
                m.remove("arguments");
                m.insert("door".into(), json!("mcp"));
                m.insert("api".into(), json!(call.api));
                m.insert("method".into(), json!(call.method.as_str()));
                m.insert("endpoint".into(), json!(call.endpoint));
                m.insert(
                    "query".into(),
                    Value::Object(call.query.into_iter().map(|(k, v)| (k, json!(v))).collect()),
                );
                m.insert(
                    "headers".into(),
                    Value::Object(
                        call.headers
                            .into_iter()
                            .map(|(k, v)| (k, json!(v)))
                            .collect(),
                    ),
                );
            }
            let mut d = Self::from_json(&rest, surface)?;
            d.opaque_segments = call.opaque_segments;
            return Ok(d);
        }
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let pairs = |k: &str| -> Result<Vec<(String, String)>, String> {
            match &v[k] {
                Value::Null => Ok(Vec::new()),
                Value::Object(m) => m
                    .iter()
                    .map(|(a, b)| {
                        b.as_str()
                            .map(|b| (a.clone(), b.to_string()))
                            .ok_or_else(|| format!("{k}.{a} must be a string"))
                    })
                    .collect(),
                _ => Err(format!("{k} must be an object of strings")),
            }
        };
        let door = match v["door"].as_str() {
            Some("mcp") => Door::Mcp,
            Some("proxy") => Door::Proxy,
            _ => return Err("door must be \"mcp\" or \"proxy\"".into()),
        };
        let method = text("method").unwrap_or_else(|| "GET".into());
        Ok(Described {
            door,
            api: text("api").ok_or("api (a string) is required")?,
            method: Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("method {method:?} is not a method"))?,
            endpoint: text("endpoint").ok_or("endpoint (a string) is required")?,
            query: pairs("query")?,
            headers: pairs("headers")?,
            key: None,
            jwt: None,
            principal: (!v["principal"].is_null()).then(|| v["principal"].clone()),
            ip: match text("ip") {
                Some(ip) => Some(
                    ip.parse()
                        .map_err(|_| format!("ip {ip:?} is not an address"))?,
                ),
                None => None,
            },
            resolve: v["resolve"].as_bool().unwrap_or(false),
            opaque_segments: false,
        })
    }
}

impl Described {
    /// The call an audit event records, as replay judges it: the recorded principal with
    /// its roles and `allowed_apis` stands in for its credentials, and the call is its door,
    /// API, method and path (query values are recorded masked, which no path rule reads).
    /// `None` for a record refused before an API was judged (address, request,
    /// authentication, signature), an unidentified caller, or a record that is not a call.
    pub fn from_event(e: &Value) -> Option<Described> {
        let early = e["stage"]
            .as_str()
            .is_some_and(|s| ["address", "request", "authentication", "signature"].contains(&s));
        let door = match e["door"].as_str() {
            Some("mcp") => Door::Mcp,
            Some("proxy") => Door::Proxy,
            _ => return None,
        };
        if early || e["principal"] == "unidentified" {
            return None;
        }
        let path = e["path"].as_str().unwrap_or("/");
        let (api, endpoint) = match door {
            // The proxy door records the request path, `/{api}/{endpoint}`.
            Door::Proxy => match path.trim_start_matches('/').split_once('/') {
                Some((a, rest)) => (a.to_string(), format!("/{rest}")),
                None => (path.trim_start_matches('/').to_string(), "/".to_string()),
            },
            Door::Mcp => (
                e["api"].as_str().unwrap_or("").to_string(),
                path.to_string(),
            ),
        };
        let method = Method::from_bytes(e["method"].as_str().unwrap_or("GET").as_bytes()).ok()?;
        Some(Described {
            door,
            api,
            method,
            endpoint,
            query: Vec::new(),
            headers: Vec::new(),
            key: None,
            jwt: None,
            principal: Some(json!({
                "id": e["principal"],
                "subject": e["principal"],
                "roles": e["roles"],
                "allowed_apis": e["allowed_apis"],
            })),
            ip: e["client_ip"].as_str().and_then(|ip| ip.parse().ok()),
            resolve: false,
            // A generated tool's endpoint, recorded as the gateway built it.
            opaque_segments: e["tool"].as_str().is_some_and(|t| t != "api_gateway"),
        })
    }
}

/// What `explain --replay` found: each recorded call judged again by a candidate config.
pub struct Replay {
    pub replayed: usize,
    /// Refused before an API was judged (address, request, authentication, signature):
    /// replay states the recorded caller instead of authenticating, so these are not judged.
    pub skipped: usize,
    pub changed: Vec<Value>,
}

impl Replay {
    pub fn to_json(&self) -> Value {
        let mut by_rule = serde_json::Map::new();
        for c in &self.changed {
            let rule = c["now"]["rule"]
                .as_str()
                .or(c["was"]["rule"].as_str())
                .unwrap_or("(none)")
                .to_string();
            let n = by_rule.get(&rule).and_then(Value::as_u64).unwrap_or(0);
            by_rule.insert(rule, json!(n + 1));
        }
        json!({
            "replayed": self.replayed,
            "skipped": self.skipped,
            "changed": self.changed.len(),
            "by_rule": by_rule,
            "calls": self.changed,
        })
    }
}

/// Judges recorded calls (audit events) again with `explainer`'s config: the caller is the
/// recorded principal with its roles and `allowed_apis`, the call its door, API, method and
/// path (query values are recorded masked, which no path rule reads).
pub async fn replay(explainer: &Explainer, events: &[Value]) -> Replay {
    let mut out = Replay {
        replayed: 0,
        skipped: 0,
        changed: Vec::new(),
    };
    for e in events {
        let Some(d) = Described::from_event(e) else {
            out.skipped += 1;
            continue;
        };
        let Ok(now) = explainer.explain(&d).await else {
            out.skipped += 1;
            continue;
        };
        out.replayed += 1;
        let was_admitted = matches!(e["decision"].as_str(), Some("allow" | "error"));
        let now_admitted = now["decision"] == "admitted";
        let differs = was_admitted != now_admitted
            || (!now_admitted
                && now["reason"]
                    != e["reason"]
                        .as_str()
                        .map_or(e["error"].clone(), |r| json!(r)));
        if differs {
            let verdict = |admitted: bool, reason: &Value, rule: &Value| {
                if admitted {
                    json!({"decision": "admitted"})
                } else {
                    json!({"decision": "refused", "reason": reason, "rule": rule})
                }
            };
            out.changed.push(json!({
                "request_id": e["request_id"],
                "ts": e["ts"],
                "door": e["door"],
                "principal": e["principal"],
                "method": e["method"],
                "path": e["path"],
                "was": verdict(was_admitted, &e["reason"].as_str().map_or(e["error"].clone(), |r| json!(r)), &e["rule"]),
                "now": verdict(now_admitted, &now["reason"], &now["rule"]),
            }));
        }
    }
    out
}
