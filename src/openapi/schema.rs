//! OpenAPI schemas into JSON Schema 2020-12, as MCP tool schemas need them.
//!
//! Component schemas (`#/components/schemas/X`) stay references, to `#/$defs/X`, so a
//! recursive schema is kept as a reference and never inlined without bound; each is
//! converted once per document and shared by every operation that reaches it. Other local
//! references are inlined, within the depth limit. A reference outside the document is never
//! followed: the schema is refused and the operation that uses it is skipped. OpenAPI 3.0's
//! dialect (`nullable`, boolean `exclusiveMaximum`, `example`) is rewritten; keywords JSON
//! Schema does not know (`discriminator`, `xml`, `externalDocs`, `x-*`) are dropped.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Map, Value};

const COMPONENT: &str = "#/components/schemas/";

/// A converted schema, the components it refers to, and how many subschemas it holds.
#[derive(Debug, Clone)]
pub struct Converted {
    pub schema: Value,
    pub refs: BTreeSet<String>,
    pub size: usize,
}

/// Component schemas converted so far, for one document.
pub struct Defs<'d> {
    root: &'d Value,
    openapi_30: bool,
    max_depth: usize,
    /// The most subschemas one conversion may visit: inlined local references count each
    /// time, so a document whose references fan out cannot make the work grow without bound.
    max_subschemas: usize,
    done: HashMap<String, Result<Converted, String>>,
}

impl<'d> Defs<'d> {
    pub fn new(
        root: &'d Value,
        openapi_30: bool,
        max_depth: usize,
        max_subschemas: usize,
    ) -> Defs<'d> {
        Defs {
            root,
            openapi_30,
            max_depth,
            max_subschemas,
            done: HashMap::new(),
        }
    }

    /// Converts a schema found in an operation.
    pub fn convert(&mut self, v: &Value) -> Result<Converted, String> {
        let mut refs = BTreeSet::new();
        let mut size = 0;
        let schema = self.walk(v, 0, &mut refs, &mut size)?;
        Ok(Converted { schema, refs, size })
    }

    /// Every component `refs` reaches, directly or not, and their subschemas counted: the
    /// `$defs` an operation's schemas need.
    pub fn closure(
        &mut self,
        refs: &BTreeSet<String>,
    ) -> Result<(BTreeSet<String>, usize), String> {
        let mut seen = BTreeSet::new();
        let mut queue: Vec<String> = refs.iter().cloned().collect();
        let mut size = 0;
        while let Some(name) = queue.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let c = self.component(&name)?;
            size += c.size;
            queue.extend(c.refs.iter().filter(|r| !seen.contains(*r)).cloned());
        }
        Ok((seen, size))
    }

    /// A converted component, by name.
    pub fn component(&mut self, name: &str) -> Result<&Converted, String> {
        if !self.done.contains_key(name) {
            let root: &'d Value = self.root;
            let result = match root["components"]["schemas"].get(name) {
                None => Err(format!("$ref {COMPONENT}{name} points at nothing")),
                Some(raw) => {
                    // References are only recorded here, never followed: a component
                    // that reaches itself is converted once.
                    self.convert(raw)
                        .map_err(|e| format!("components.schemas.{name}: {e}"))
                }
            };
            self.done.insert(name.to_string(), result);
        }
        self.done[name].as_ref().map_err(Clone::clone)
    }

    fn walk(
        &mut self,
        v: &Value,
        depth: usize,
        refs: &mut BTreeSet<String>,
        size: &mut usize,
    ) -> Result<Value, String> {
        if depth > self.max_depth {
            return Err(format!(
                "a schema nests deeper than max_schema_depth ({})",
                self.max_depth
            ));
        }
        *size += 1;
        if *size > self.max_subschemas {
            return Err(format!(
                "its schemas hold over max_subschemas ({}) subschemas",
                self.max_subschemas
            ));
        }
        let obj = match v {
            Value::Bool(_) => return Ok(v.clone()),
            Value::Object(o) => o,
            _ => return Err(format!("{} is not a schema", short(v))),
        };
        let mut out = Map::new();
        if let Some(r) = obj.get("$ref") {
            let r = r.as_str().ok_or("$ref is not a string")?;
            if let Some(rest) = r.strip_prefix(COMPONENT) {
                let token = rest.split('/').next().unwrap_or(rest);
                let name = token.replace("~1", "/").replace("~0", "~");
                let name = percent_encoding::percent_decode_str(&name)
                    .decode_utf8_lossy()
                    .into_owned();
                refs.insert(name);
                out.insert("$ref".into(), Value::String(format!("#/$defs/{rest}")));
            } else if r.starts_with('#') {
                let root: &'d Value = self.root;
                let target = super::doc::resolve_local(root, r)
                    .ok_or_else(|| format!("$ref {r} points at nothing"))?;
                let inner = self.walk(target, depth + 1, refs, size)?;
                if obj.len() == 1 {
                    return Ok(inner);
                }
                out.insert("allOf".into(), json!([inner]));
            } else {
                return Err(format!(
                    "$ref {r:?} points outside the document: network references are not followed"
                ));
            }
        }
        for (k, val) in obj {
            match k.as_str() {
                "$ref" | "nullable" | "discriminator" | "xml" | "externalDocs" => {}
                k if k.starts_with("x-") => {}
                "example" => {
                    if !obj.contains_key("examples") {
                        out.insert("examples".into(), json!([val]));
                    }
                }
                "properties" | "patternProperties" | "dependentSchemas" | "$defs"
                | "definitions" => {
                    let Value::Object(m) = val else {
                        return Err(format!("{k} is not an object"));
                    };
                    let mut conv = Map::new();
                    for (name, s) in m {
                        conv.insert(name.clone(), self.walk(s, depth + 1, refs, size)?);
                    }
                    out.insert(k.clone(), Value::Object(conv));
                }
                "items" if val.is_array() => {
                    out.insert("prefixItems".into(), self.walk_all(val, depth, refs, size)?);
                }
                "items"
                | "additionalProperties"
                | "not"
                | "if"
                | "then"
                | "else"
                | "contains"
                | "propertyNames"
                | "unevaluatedProperties"
                | "unevaluatedItems"
                | "additionalItems" => {
                    out.insert(k.clone(), self.walk(val, depth + 1, refs, size)?);
                }
                "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                    out.insert(k.clone(), self.walk_all(val, depth, refs, size)?);
                }
                "exclusiveMaximum" | "exclusiveMinimum" if val.is_boolean() => {
                    let bound = if k == "exclusiveMaximum" {
                        "maximum"
                    } else {
                        "minimum"
                    };
                    if val == &Value::Bool(true) {
                        if let Some(b) = obj.get(bound) {
                            out.insert(k.clone(), b.clone());
                        }
                    }
                }
                "maximum" | "minimum"
                    if obj
                        .get(&format!("exclusive{}", capitalised(k)))
                        .is_some_and(|b| b == &Value::Bool(true)) => {}
                _ => {
                    out.insert(k.clone(), val.clone());
                }
            }
        }
        if self.openapi_30 && obj.get("nullable") == Some(&Value::Bool(true)) {
            return Ok(nullable(out));
        }
        Ok(Value::Object(out))
    }

    fn walk_all(
        &mut self,
        v: &Value,
        depth: usize,
        refs: &mut BTreeSet<String>,
        size: &mut usize,
    ) -> Result<Value, String> {
        let Value::Array(items) = v else {
            return Err("a schema list is not an array".into());
        };
        items
            .iter()
            .map(|s| self.walk(s, depth + 1, refs, size))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    }
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `null` added to the type (and enum), or
/// the schema wrapped in `anyOf` with `null` when it has no single type.
fn nullable(mut out: Map<String, Value>) -> Value {
    if let Some(Value::Array(e)) = out.get_mut("enum") {
        if !e.contains(&Value::Null) {
            e.push(Value::Null);
        }
    }
    match out.get("type").cloned() {
        Some(Value::String(t)) => {
            out.insert("type".into(), json!([t, "null"]));
            Value::Object(out)
        }
        Some(Value::Array(mut ts)) => {
            if !ts.contains(&json!("null")) {
                ts.push(json!("null"));
            }
            out.insert("type".into(), Value::Array(ts));
            Value::Object(out)
        }
        _ => json!({"anyOf": [Value::Object(out), {"type": "null"}]}),
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema that refers to itself stays a reference; 3.0's dialect is rewritten.
    #[test]
    fn recursion_is_a_reference_and_the_30_dialect_is_rewritten() {
        let root = json!({"components": {"schemas": {
            "Node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                "name": {"type": "string", "nullable": true, "example": "x", "x-internal": true},
                "n": {"type": "integer", "maximum": 5, "exclusiveMaximum": true}
            }, "discriminator": {"propertyName": "name"}}
        }}});
        let mut defs = Defs::new(&root, true, 16, 1000);
        let c = defs
            .convert(&json!({"$ref": "#/components/schemas/Node"}))
            .unwrap();
        assert_eq!(c.schema, json!({"$ref": "#/$defs/Node"}));
        let (names, size) = defs.closure(&c.refs).unwrap();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["Node"]);
        assert!(size >= 4);
        let node = &defs.component("Node").unwrap().schema;
        assert_eq!(
            node["properties"]["children"]["items"]["$ref"],
            "#/$defs/Node"
        );
        assert_eq!(
            node["properties"]["name"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(node["properties"]["name"]["examples"], json!(["x"]));
        assert!(node["properties"]["name"].get("x-internal").is_none());
        assert_eq!(
            node["properties"]["n"],
            json!({"type": "integer", "exclusiveMaximum": 5})
        );
        assert!(node.get("discriminator").is_none());
    }

    #[test]
    fn network_references_and_deep_schemas_are_refused() {
        let root = json!({});
        let mut defs = Defs::new(&root, false, 3, 1000);
        let e = defs
            .convert(&json!({"$ref": "https://evil.example/schema.json"}))
            .unwrap_err();
        assert!(e.contains("network references are not followed"), "{e}");
        let deep = json!({"items": {"items": {"items": {"items": {"items": {}}}}}});
        let e = defs.convert(&deep).unwrap_err();
        assert!(e.contains("max_schema_depth"), "{e}");
        let e = defs
            .convert(&json!({"$ref": "#/components/schemas/Missing"}))
            .and_then(|c| defs.closure(&c.refs).map(|_| ()))
            .unwrap_err();
        assert!(e.contains("points at nothing"), "{e}");
        // References that fan out (each entry using the next twice) stop at the budget.
        let mut chain = serde_json::Map::new();
        for i in 0..64 {
            chain.insert(
                format!("n{i}"),
                json!({"allOf": [{"$ref": format!("#/x/n{}", i + 1)}, {"$ref": format!("#/x/n{}", i + 1)}]}),
            );
        }
        chain.insert("n64".into(), json!({"type": "string"}));
        let root = json!({"x": chain});
        let mut defs = Defs::new(&root, false, 1000, 5000);
        let e = defs.convert(&json!({"$ref": "#/x/n0"})).unwrap_err();
        assert!(e.contains("max_subschemas"), "{e}");
    }
}
