//! A document's operations as tools: which are included, skipped (and why) or renamed; each
//! tool's name, description, input schema and response schema; and a tool call's arguments
//! turned into an HTTP request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use http::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use super::schema::Defs;
use super::{ApiSurface, Location, Operation, Param, Skipped, ToolCall};
use crate::config::{Api, CredentialPlacement, OpenApiConfig};
use crate::error::GatewayError;

/// What a path parameter or query value may keep unencoded: RFC 3986's unreserved
/// characters. Everything else, `/` and `?` among them, is percent-encoded, so a value stays
/// inside its one segment.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The methods, in document order, that become tools.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Headers a tool never takes: hop-by-hop ones, and those the gateway sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "accept",
    "authorization",
    "cookie",
];

/// Reads `bytes` as an OpenAPI document and makes the API's tools. Only an unreadable
/// document is an error; an operation that cannot be expressed is skipped, with its reason.
pub fn build(api: &Api, cfg: &OpenApiConfig, bytes: &[u8]) -> Result<ApiSurface, String> {
    let doc = super::doc::parse(bytes, cfg.max_document_bytes)?;
    let root = &doc.root;
    let mut defs = Defs::new(
        root,
        doc.version == "3.0",
        cfg.max_schema_depth,
        cfg.max_subschemas,
    );
    let mut operations = Vec::new();
    let mut skipped = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut used_defs = BTreeSet::new();

    let empty = Map::new();
    let paths = root["paths"].as_object().unwrap_or(&empty);
    let mut entries: Vec<(&String, &Value)> = paths.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (path, item) in entries {
        let item = match deref(root, item) {
            Ok(i) => i,
            Err(reason) => {
                skipped.push(Skipped {
                    chosen: false,
                    id: None,
                    method: "*".into(),
                    path: path.clone(),
                    reason,
                });
                continue;
            }
        };
        for (key, _) in item.as_object().into_iter().flatten() {
            if matches!(key.as_str(), "head" | "options" | "trace") {
                skipped.push(Skipped {
                    chosen: false,
                    id: item[key]["operationId"].as_str().map(str::to_string),
                    method: key.to_ascii_uppercase(),
                    path: path.clone(),
                    reason: format!("{} cannot be called as a tool", key.to_ascii_uppercase()),
                });
            }
        }
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).expect("a method");
            let id = op["operationId"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let skip = |reason: String| Skipped {
                chosen: false,
                id: id.clone(),
                method: method.to_string(),
                path: path.clone(),
                reason,
            };
            let tags: Vec<String> = op["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            let (base, mut renamed) = base_name(&cfg.tool_prefix, id.as_deref(), &method, path);
            let filter_id = id.clone().unwrap_or_else(|| base.clone());
            let included = (cfg.include.is_empty()
                || cfg
                    .include
                    .iter()
                    .any(|f| f.matches(&filter_id, &method, &tags)))
                && !cfg
                    .exclude
                    .iter()
                    .any(|f| f.matches(&filter_id, &method, &tags));
            if !included {
                skipped.push(Skipped {
                    chosen: true,
                    ..skip("excluded by include/exclude".into())
                });
                continue;
            }
            if let Err(why) = allowed_by_api(api, &method, path) {
                skipped.push(Skipped {
                    chosen: true,
                    ..skip(why)
                });
                continue;
            }
            let shape = match shape(root, api, &mut defs, item, op, path) {
                Ok(s) => s,
                Err(why) => {
                    skipped.push(skip(why));
                    continue;
                }
            };
            let (closure, closure_size) = match defs.closure(&shape.refs) {
                Ok(c) => c,
                Err(why) => {
                    skipped.push(skip(why));
                    continue;
                }
            };
            let total = shape.size + closure_size;
            if total > cfg.max_subschemas {
                skipped.push(skip(format!(
                    "its schemas hold {total} subschemas, over max_subschemas ({})",
                    cfg.max_subschemas
                )));
                continue;
            }
            // The name: unique within the API; a later collision gets a numbered suffix.
            let tool = super::unique_name(&base, |t| names.contains_key(t));
            if tool != base {
                renamed = Some(format!(
                    "the name {base} is taken by {}; suffixed {}",
                    names[&base],
                    &tool[tool.rfind('_').unwrap_or(0)..]
                ));
            }
            names.insert(tool.clone(), format!("{method} {path}"));
            used_defs.extend(closure.iter().cloned());
            let summary = op["summary"]
                .as_str()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            let description = describe(op, summary.as_deref(), &method, path);
            operations.push(Operation {
                id,
                tool,
                method,
                path: path.clone(),
                summary,
                description,
                tags,
                params: shape.params,
                body: shape.body,
                input: shape.input,
                response: shape.response,
                defs: closure.into_iter().collect(),
                renamed,
                fingerprint: String::new(),
            });
        }
    }
    let mut converted = BTreeMap::new();
    for d in used_defs {
        if let Ok(c) = defs.component(&d) {
            converted.insert(d, c.schema.clone());
        }
    }
    let mut surface = ApiSurface {
        api: api.name.clone(),
        doc_sha256: doc.sha256,
        version: doc.version,
        operations: Vec::new(),
        skipped,
        defs: converted,
        progressive: false,
        list_bytes: 0,
        hosts: hosts_in(root),
        source: bytes.into(),
    };
    for mut op in operations {
        op.fingerprint = fingerprint(&surface, &op);
        surface.operations.push(Arc::new(op));
    }
    Ok(surface)
}

/// What identifies a tool: its name, title, description and full schemas.
fn fingerprint(surface: &ApiSurface, op: &Operation) -> String {
    let mut response = op.response.clone().unwrap_or(Value::Null);
    if !op.defs.is_empty() && !response.is_null() {
        response = json!({"schema": response, "$defs": surface.defs_for(op)});
    }
    super::doc::canonical_sha256(&json!({
        "name": op.tool,
        "title": op.summary,
        "description": op.description,
        "input": surface.input_schema(op),
        "response": response,
    }))
}

/// A path item or parameter that may be a local `$ref`.
fn deref<'a>(root: &'a Value, v: &'a Value) -> Result<&'a Value, String> {
    let mut v = v;
    for _ in 0..8 {
        match v.get("$ref").and_then(Value::as_str) {
            None => return Ok(v),
            Some(r) if r.starts_with('#') => {
                v = super::doc::resolve_local(root, r)
                    .ok_or_else(|| format!("$ref {r} points at nothing"))?;
            }
            Some(r) => {
                return Err(format!(
                    "$ref {r:?} points outside the document: network references are not followed"
                ))
            }
        }
    }
    Err("a $ref chain longer than 8".into())
}

/// `{tool_prefix}{operationId}`, sanitised to MCP's tool-name characters and 128 bytes, or a
/// name from the method and path; and why it is not simply prefix + id.
fn base_name(
    prefix: &str,
    id: Option<&str>,
    method: &Method,
    path: &str,
) -> (String, Option<String>) {
    let (raw, mut why) = match id {
        Some(id) => (format!("{prefix}{id}"), None),
        None => {
            let words: Vec<String> = path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| s.trim_matches(|c| c == '{' || c == '}').to_string())
                .collect();
            (
                format!(
                    "{prefix}{}_{}",
                    method.as_str().to_ascii_lowercase(),
                    words.join("_")
                ),
                Some("no operationId: named from its method and path".to_string()),
            )
        }
    };
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name != raw && why.is_none() {
        why = Some("the operationId has characters MCP does not allow in tool names".into());
    }
    if name.len() > 128 {
        name = cut(&name, 128).to_string();
        why.get_or_insert_with(|| "the name was cut to 128 characters".into());
    }
    (name, why)
}

fn cut(s: &str, n: usize) -> &str {
    &s[..s.len().min(n)]
}

/// Whether the API's own methods, paths and deny_paths let the operation through.
fn allowed_by_api(api: &Api, method: &Method, path: &str) -> Result<(), String> {
    if !api.methods.contains(method) {
        return Err(format!("{method} is not in apis[{}].methods", api.name));
    }
    let segments: Vec<&str> = path.split('/').collect();
    if api
        .deny_paths
        .iter()
        .any(|p| p.matches_case(&segments, crate::types::Case::Insensitive))
    {
        return Err(format!("{path} matches apis[{}].deny_paths", api.name));
    }
    if !api
        .paths
        .iter()
        .any(|p| p.matches_case(&segments, api.path_case()))
    {
        return Err(format!("{path} is not under apis[{}].paths", api.name));
    }
    Ok(())
}

/// An operation's parameters and schemas.
struct Shape {
    params: Vec<Param>,
    body: Option<bool>,
    input: Value,
    response: Option<Value>,
    refs: BTreeSet<String>,
    size: usize,
}

fn shape(
    root: &Value,
    api: &Api,
    defs: &mut Defs<'_>,
    item: &Value,
    op: &Value,
    path: &str,
) -> Result<Shape, String> {
    let mut refs = BTreeSet::new();
    let mut size = 0;
    let mut convert = |defs: &mut Defs<'_>, v: &Value| -> Result<Value, String> {
        let c = defs.convert(v)?;
        refs.extend(c.refs);
        size += c.size;
        Ok(c.schema)
    };
    // Path-level parameters, overridden by the operation's own of the same name and place.
    let mut declared: Vec<&Value> = Vec::new();
    for list in [&item["parameters"], &op["parameters"]] {
        for p in list.as_array().into_iter().flatten() {
            let p = deref(root, p)?;
            let key = (&p["name"], &p["in"]);
            declared.retain(|q| (&q["name"], &q["in"]) != key);
            declared.push(p);
        }
    }
    let credential_header = match api.credential_placement() {
        Some(CredentialPlacement::Header(h)) => Some(h.as_str().to_string()),
        _ => None,
    };
    let credential_query = match api.credential_placement() {
        Some(CredentialPlacement::Query(q)) => Some(q.clone()),
        _ => None,
    };
    let mut params = Vec::new();
    let mut groups: BTreeMap<&str, (Map<String, Value>, Vec<String>)> = BTreeMap::new();
    for p in declared {
        let name = p["name"].as_str().ok_or("a parameter has no name")?;
        let location = match p["in"].as_str() {
            Some("path") => Location::Path,
            Some("query") => Location::Query,
            Some("header") => Location::Header,
            Some("cookie") => {
                return Err(format!("cookie parameter {name:?}: cookies cannot be sent"))
            }
            other => return Err(format!("parameter {name:?} is in {other:?}")),
        };
        if location == Location::Header {
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str())
                || credential_header.as_deref() == Some(&lower)
            {
                continue; // set by the gateway
            }
        }
        if location == Location::Query && credential_query.as_deref() == Some(name) {
            continue;
        }
        if location == Location::Path && !path.contains(&format!("{{{name}}}")) {
            continue; // declared but not in the template: nothing to fill
        }
        let required = location == Location::Path || p["required"] == true;
        let mut schema = match (&p["schema"], &p["content"]) {
            (Value::Null, Value::Null) => json!({"type": "string"}),
            (Value::Null, _) => {
                return Err(format!(
                    "parameter {name:?} is described by content, not schema"
                ))
            }
            (s, _) => convert(defs, s)?,
        };
        if let (Some(d), Value::Object(m)) = (p["description"].as_str(), &mut schema) {
            m.entry("description").or_insert_with(|| json!(d));
        }
        let group = groups.entry(location.argument()).or_default();
        group.0.insert(name.to_string(), schema);
        if required {
            group.1.push(name.to_string());
        }
        params.push(Param {
            name: name.to_string(),
            location,
            required,
        });
    }
    // Every `{name}` in the template must be declared: an undeclared one cannot be filled.
    for piece in template(path)? {
        if let Piece::Param(name) = piece {
            if !params
                .iter()
                .any(|p| p.location == Location::Path && p.name == name)
            {
                return Err(format!("path parameter {name:?} is not declared"));
            }
        }
    }
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (arg, (props, req)) in groups {
        if !req.is_empty() {
            required.push(arg.to_string());
        }
        properties.insert(
            arg.to_string(),
            json!({"type": "object", "properties": props, "required": req, "additionalProperties": false}),
        );
    }
    let mut body = None;
    if !op["requestBody"].is_null() {
        let rb = deref(root, &op["requestBody"])?;
        let body_required = rb["required"] == true;
        let content = rb["content"].as_object();
        let json_type = content.and_then(|c| c.keys().find(|k| is_json(k)));
        match json_type {
            Some(t) => {
                let schema = &rb["content"][t]["schema"];
                let mut s = if schema.is_null() {
                    json!({})
                } else {
                    convert(defs, schema)?
                };
                if let (Some(d), Value::Object(m)) = (rb["description"].as_str(), &mut s) {
                    m.entry("description").or_insert_with(|| json!(d));
                }
                properties.insert("body".into(), s);
                if body_required {
                    required.push("body".into());
                }
                body = Some(body_required);
            }
            None if body_required => {
                let types: Vec<&str> = content
                    .map(|c| c.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                return Err(format!(
                    "its request body is {} only; only JSON bodies can be sent",
                    if types.is_empty() {
                        "undescribed".to_string()
                    } else {
                        types.join(", ")
                    }
                ));
            }
            None => {}
        }
    }
    let mut response = None;
    if let Some(responses) = op["responses"].as_object() {
        let mut codes: Vec<&String> = responses.keys().filter(|k| k.starts_with('2')).collect();
        codes.sort();
        for code in codes {
            let r = deref(root, &responses[code])?;
            let Some(content) = r["content"].as_object() else {
                continue;
            };
            if let Some(t) = content.keys().find(|k| is_json(k)) {
                if !content[t]["schema"].is_null() {
                    response = Some(convert(defs, &content[t]["schema"])?);
                }
                break;
            }
        }
    }
    let input = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    });
    Ok(Shape {
        params,
        body,
        input,
        response,
        refs,
        size,
    })
}

/// A path template's literal text and `{parameters}`.
enum Piece<'a> {
    Text(&'a str),
    Param(&'a str),
}

fn template(path: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or_else(|| format!("the path template {path:?} has an unclosed '{{'"))?;
        let name = &rest[open + 1..close];
        if name.is_empty() || name.contains(['{', '/']) {
            return Err(format!("the path template {path:?} is malformed"));
        }
        out.push(Piece::Text(&rest[..open]));
        out.push(Piece::Param(name));
        rest = &rest[close + 1..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

fn is_json(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// The tool description: summary, description (cut to 2,000 characters) and where it goes.
fn describe(op: &Value, summary: Option<&str>, method: &Method, path: &str) -> String {
    let mut parts = Vec::new();
    if op["deprecated"] == true {
        parts.push("Deprecated.".to_string());
    }
    if let Some(s) = summary {
        parts.push(s.to_string());
    }
    if let Some(d) = op["description"]
        .as_str()
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        if Some(d) != summary {
            let mut d: String = d.chars().take(2000).collect();
            if op["description"]
                .as_str()
                .is_some_and(|o| o.trim().chars().count() > 2000)
            {
                d.push('…');
            }
            parts.push(d);
        }
    }
    parts.push(format!("{method} {path}"));
    parts.join("\n\n")
}

/// The hosts of every URL in the document's text.
fn hosts_in(root: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    super::drift::each_text(root, &mut |s| {
        super::drift::url_hosts(s, &mut out);
    });
    out
}

pub(super) fn to_call(op: &Operation, args: &Map<String, Value>) -> Result<ToolCall, GatewayError> {
    let invalid = |pointer: String, expected: &str, message: String| {
        GatewayError::invalid_arguments(message)
            .with_detail("pointer", json!(pointer))
            .with_detail("expected", json!(expected))
    };
    for k in args.keys() {
        let known = match k.as_str() {
            "body" => op.body.is_some(),
            "path" => op.params.iter().any(|p| p.location == Location::Path),
            "query" => op.params.iter().any(|p| p.location == Location::Query),
            "headers" => op.params.iter().any(|p| p.location == Location::Header),
            _ => false,
        };
        if !known {
            return Err(invalid(
                format!("/{k}"),
                "only the arguments in the tool's input schema",
                format!("{} takes no argument {k:?}", op.tool),
            ));
        }
    }
    let section = |name: &str| -> Result<Map<String, Value>, GatewayError> {
        match args.get(name) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(_) => Err(invalid(
                format!("/{name}"),
                "an object",
                format!("{name} must be an object"),
            )),
        }
    };
    let mut given: HashMap<Location, Map<String, Value>> = HashMap::new();
    for loc in [Location::Path, Location::Query, Location::Header] {
        let m = section(loc.argument())?;
        for k in m.keys() {
            if !op.params.iter().any(|p| p.location == loc && &p.name == k) {
                return Err(invalid(
                    format!("/{}/{k}", loc.argument()),
                    "a parameter the operation declares",
                    format!("{} declares no {} parameter {k:?}", op.tool, loc.argument()),
                ));
            }
        }
        given.insert(loc, m);
    }
    let mut endpoint = String::with_capacity(op.path.len() + 16);
    let mut query = Vec::new();
    let mut headers = Map::new();
    for p in &op.params {
        let arg = p.location.argument();
        let Some(v) = given[&p.location].get(&p.name).filter(|v| !v.is_null()) else {
            if p.required {
                return Err(invalid(
                    format!("/{arg}/{}", p.name),
                    "a value: the parameter is required",
                    format!("{} needs {arg}.{}", op.tool, p.name),
                ));
            }
            continue;
        };
        let pointer = format!("/{arg}/{}", p.name);
        match p.location {
            Location::Path => {}
            Location::Query => {
                let values: Vec<&Value> = match v {
                    Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                for x in values {
                    let text = scalar(x).ok_or_else(|| {
                        invalid(
                            pointer.clone(),
                            "a string, number or boolean (or a list of them)",
                            format!("{arg}.{} must be a string, number or boolean", p.name),
                        )
                    })?;
                    query.push(format!(
                        "{}={}",
                        utf8_percent_encode(&p.name, COMPONENT),
                        utf8_percent_encode(&text, COMPONENT)
                    ));
                }
            }
            Location::Header => {
                let text = scalar(v).ok_or_else(|| {
                    invalid(
                        pointer.clone(),
                        "a string",
                        format!("header {} must be a string", p.name),
                    )
                })?;
                headers.insert(p.name.clone(), Value::String(text));
            }
        }
    }
    let pieces = template(&op.path).map_err(GatewayError::invalid_arguments)?;
    for piece in pieces {
        match piece {
            Piece::Param(name) => {
                let v = given[&Location::Path].get(name).unwrap_or(&Value::Null);
                let text = scalar(v).ok_or_else(|| {
                    invalid(
                        format!("/path/{name}"),
                        "a string, number or boolean",
                        format!("path.{name} must be a string, number or boolean"),
                    )
                })?;
                if text.is_empty() || text == "." || text == ".." {
                    return Err(invalid(
                        format!("/path/{name}"),
                        "a non-empty value other than \".\" or \"..\"",
                        format!("path.{name} cannot be {text:?}"),
                    ));
                }
                endpoint.extend(utf8_percent_encode(&text, COMPONENT));
            }
            Piece::Text(t) => endpoint.push_str(t),
        }
    }
    if endpoint.is_empty() {
        endpoint.push('/');
    }
    if !query.is_empty() {
        endpoint.push('?');
        endpoint.push_str(&query.join("&"));
    }
    let body = args.get("body").filter(|b| !b.is_null()).cloned();
    if op.body == Some(true) && body.is_none() {
        return Err(invalid(
            "/body".into(),
            "a JSON body: the operation requires one",
            format!("{} needs a body", op.tool),
        ));
    }
    Ok(ToolCall {
        method: op.method.clone(),
        endpoint,
        headers,
        body,
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(extra: &str) -> Arc<Api> {
        let text = format!(
            "[auth]\nrequired = false\n[[apis]]\nname = \"shop\"\nbase_url = \"https://shop.example.com/v1\"\n\
             methods = [\"GET\", \"POST\", \"DELETE\"]\npaths = [\"/**\"]\n\
             credentials = {{ header = \"X-Api-Key\", value = \"k-123456\" }}\n\
             [apis.openapi]\ninline = \"{{}}\"\n{extra}"
        );
        crate::config::Config::parse(&text, &|_| None).unwrap().apis[0].clone()
    }

    pub(super) fn api_for_properties() -> Arc<Api> {
        api("")
    }

    fn shop(extra: &str) -> ApiSurface {
        let api = api(extra);
        let doc = include_bytes!("../../tests/fixtures/openapi/shop-v1.json");
        build(&api, api.openapi.as_ref().unwrap(), doc).unwrap()
    }

    #[test]
    fn operations_are_named_included_or_skipped_with_reasons() {
        let s = shop("");
        let names: Vec<&str> = s.operations.iter().map(|o| o.tool.as_str()).collect();
        assert_eq!(
            names,
            [
                "shop_listItems",
                "shop_createItem",
                "shop_getItem",
                "shop_deleteItem",
                "shop_get_reports_name"
            ]
        );
        let report = s.find("shop_get_reports_name").unwrap();
        assert!(report
            .renamed
            .as_deref()
            .unwrap()
            .contains("no operationId"));
        let why = |id: &str| {
            s.skipped
                .iter()
                .find(|k| k.id.as_deref() == Some(id))
                .unwrap()
                .reason
                .clone()
        };
        assert!(
            why("getSession").contains("cookie"),
            "{}",
            why("getSession")
        );
        assert!(
            why("uploadFile").contains("multipart/form-data"),
            "{}",
            why("uploadFile")
        );
        // Declared headers only, never the credential's or Authorization.
        let list = s.find("listItems").unwrap();
        let headers = &list.input["properties"]["headers"]["properties"];
        assert!(headers.get("X-Request-Label").is_some());
        assert!(headers.get("Authorization").is_none());
        // The recursive schema is a reference into $defs, and 3.0's nullable is rewritten.
        let get = s.find("getItem").unwrap();
        assert_eq!(get.defs, ["Item"]);
        assert_eq!(
            s.defs["Item"]["properties"]["children"]["items"]["$ref"],
            "#/$defs/Item"
        );
        assert_eq!(
            s.defs["Item"]["properties"]["price"]["type"],
            json!(["number", "null"])
        );
        assert_eq!(get.input["required"], json!(["path"]));
    }

    #[test]
    fn include_exclude_and_the_api_allow_list_filter_operations() {
        let s = shop("include = [\"tag:items\"]\nexclude = [\"method:DELETE\", \"create*\"]\n");
        let names: Vec<&str> = s.operations.iter().map(|o| o.tool.as_str()).collect();
        assert_eq!(names, ["shop_listItems", "shop_getItem"]);
        assert!(
            s.skipped
                .iter()
                .any(|k| k.id.as_deref() == Some("deleteItem")
                    && k.reason.contains("include/exclude"))
        );
    }

    #[test]
    fn arguments_become_one_segment_per_path_parameter() {
        let s = shop("");
        let get = s.find("getItem").unwrap();
        let args = |v: Value| v.as_object().unwrap().clone();
        let c = get
            .to_call(&args(json!({"path": {"id": "../admin"}})))
            .unwrap();
        assert_eq!(c.endpoint, "/items/..%2Fadmin");
        let c = get
            .to_call(&args(json!({"path": {"id": "a b/c?d#e"}})))
            .unwrap();
        assert_eq!(c.endpoint, "/items/a%20b%2Fc%3Fd%23e");
        for bad in ["..", ".", ""] {
            let e = get
                .to_call(&args(json!({"path": {"id": bad}})))
                .unwrap_err();
            assert_eq!(e.details.unwrap()["pointer"], "/path/id");
        }
        let e = get.to_call(&args(json!({}))).unwrap_err();
        assert_eq!(e.details.unwrap()["pointer"], "/path/id");
        let e = get
            .to_call(&args(json!({"path": {"id": "1"}, "body": {}})))
            .unwrap_err();
        assert_eq!(e.details.unwrap()["pointer"], "/body");
        let list = s.find("listItems").unwrap();
        let c = list
            .to_call(&args(json!({"query": {"limit": 5, "tag": ["a&b", "c"]}, "headers": {"X-Request-Label": "t"}})))
            .unwrap();
        assert_eq!(c.endpoint, "/items?limit=5&tag=a%26b&tag=c");
        assert_eq!(c.headers["X-Request-Label"], "t");
        let e = list
            .to_call(&args(json!({"query": {"other": 1}})))
            .unwrap_err();
        assert_eq!(e.details.unwrap()["pointer"], "/query/other");
        let create = s.find("createItem").unwrap();
        let e = create.to_call(&args(json!({}))).unwrap_err();
        assert_eq!(e.details.unwrap()["pointer"], "/body");
    }

    #[test]
    fn names_are_sanitised_cut_and_made_unique() {
        let (n, why) = base_name("p_", Some("repos/list for user"), &Method::GET, "/x");
        assert_eq!(n, "p_repos_list_for_user");
        assert!(why.unwrap().contains("characters"));
        let (n, _) = base_name("p_", Some(&"x".repeat(300)), &Method::GET, "/x");
        assert_eq!(n.len(), 128);
        let doc = json!({"openapi": "3.1.0", "paths": {
            "/a": {"get": {"operationId": "same"}},
            "/b": {"get": {"operationId": "same"}},
            "/c/{x}.json": {"get": {"parameters": [{"name": "x", "in": "path", "required": true}]}}
        }});
        let api = api("");
        let s = build(
            &api,
            api.openapi.as_ref().unwrap(),
            doc.to_string().as_bytes(),
        )
        .unwrap();
        let names: Vec<&str> = s.operations.iter().map(|o| o.tool.as_str()).collect();
        assert_eq!(names, ["shop_same", "shop_same_2", "shop_get_c_x_.json"]);
        assert!(s.operations[1]
            .renamed
            .as_deref()
            .unwrap()
            .contains("taken by GET /a"));
        let c = s.operations[2]
            .to_call(json!({"path": {"x": "v/1"}}).as_object().unwrap())
            .unwrap();
        assert_eq!(c.endpoint, "/c/v%2F1.json");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Values a damaged or hostile document may hold where a schema, a parameter or a
    /// reference belongs.
    fn hostile() -> impl Strategy<Value = Value> {
        prop::sample::select(vec![
            json!(null),
            json!(true),
            json!(42),
            json!("text"),
            json!([]),
            json!({}),
            json!({"$ref": "#"}),
            json!({"$ref": "#/paths"}),
            json!({"$ref": "#/components/schemas/Item/properties/children"}),
            json!({"$ref": "https://evil.example/x.json"}),
            json!({"$ref": 7}),
            json!({"type": "object", "properties": []}),
            json!({"items": [{"$ref": "#/components/schemas/Item"}]}),
            json!({"name": "id", "in": "path"}),
            json!({"name": "{x}", "in": "query", "schema": {"$ref": "#/components/schemas/Missing"}}),
            json!({"allOf": [{"$ref": "#"}, {"$ref": "#"}]}),
            json!("{a}{b}/{"),
        ])
    }

    /// Every node of `v` by JSON pointer, for choosing one to damage.
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                )
            }),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| pointers(x, format!("{at}/{i}"), out)),
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// A document damaged at any node is read or refused with a reason, never a panic;
        /// each tool it still gives takes any arguments without panicking.
        #[test]
        fn damaged_documents_and_arguments_never_panic(
            which in any::<prop::sample::Index>(),
            value in hostile(),
            args in hostile(),
        ) {
            let doc: Value = serde_json::from_slice(include_bytes!("../../tests/fixtures/openapi/shop-v1.json")).unwrap();
            let mut all = Vec::new();
            pointers(&doc, String::new(), &mut all);
            let target = which.get(&all).clone();
            let mut damaged = doc.clone();
            if let Some(slot) = damaged.pointer_mut(&target) {
                *slot = value;
            }
            let api = tests::api_for_properties();
            if let Ok(s) = build(&api, api.openapi.as_ref().unwrap(), damaged.to_string().as_bytes()) {
                for op in &s.operations {
                    let _ = s.input_schema(op);
                    let mut map = Map::new();
                    for k in ["path", "query", "headers", "body"] {
                        map.insert(k.into(), args.clone());
                    }
                    let _ = op.to_call(&map);
                    if let Value::Object(m) = &args {
                        let _ = op.to_call(m);
                    }
                }
            }
        }
    }
}
