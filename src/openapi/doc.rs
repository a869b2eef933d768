//! Reading an OpenAPI document: JSON or YAML text into one JSON value, the version check
//! (3.0.x and 3.1.x; Swagger 2.0 is refused by name), and the canonical fingerprint that
//! whitespace, key order and the choice of JSON or YAML do not change.

use serde_json::Value;
use sha2::Digest;

/// A parsed document and its canonical SHA-256 (hex).
#[derive(Debug)]
pub struct Document {
    pub root: Value,
    pub sha256: String,
    /// `3.0` or `3.1`.
    pub version: &'static str,
}

/// Parses `bytes` (JSON, or YAML when it does not start with `{`) and checks the version.
pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Document, String> {
    if bytes.len() > max_bytes {
        return Err(format!(
            "the document is {} bytes, over max_document_bytes ({max_bytes})",
            bytes.len()
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "the document is not UTF-8".to_string())?;
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let root = if trimmed.starts_with('{') {
        serde_json::from_str::<Value>(trimmed).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        let yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(trimmed).map_err(|e| format!("invalid YAML: {e}"))?;
        yaml_to_json(yaml, 0)?
    };
    let Value::Object(top) = &root else {
        return Err("the document is not an object".into());
    };
    if let Some(v) = top.get("swagger") {
        return Err(format!(
            "Swagger {} documents are not supported: convert the document to OpenAPI 3 \
             (for example with swagger2openapi) and point the config at the result",
            v.as_str().unwrap_or("2.0")
        ));
    }
    let version = match top.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0") => "3.0",
        Some(v) if v.starts_with("3.1") => "3.1",
        Some(v) => {
            return Err(format!(
                "OpenAPI {v} is not supported (3.0.x and 3.1.x are)"
            ))
        }
        None => return Err("not an OpenAPI document: no \"openapi\" version field".into()),
    };
    if !top.get("paths").is_none_or(Value::is_object) {
        return Err("\"paths\" is not an object".into());
    }
    Ok(Document {
        sha256: canonical_sha256(&root),
        root,
        version,
    })
}

/// YAML into JSON: scalar keys (a response code written `200:`) become strings; anchors
/// and aliases are already expanded by the parser. Nesting is bounded so a hostile document
/// cannot exhaust the stack.
fn yaml_to_json(v: serde_yaml_ng::Value, depth: usize) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    if depth > 256 {
        return Err("the document nests deeper than 256 levels".into());
    }
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(|i| yaml_to_json(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_string(),
                    _ => return Err("a mapping key is not a scalar".into()),
                };
                out.insert(key, yaml_to_json(v, depth + 1)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value, depth + 1)?,
    })
}

/// The SHA-256 (hex) of `v` written canonically: object keys sorted, no whitespace.
pub fn canonical_sha256(v: &Value) -> String {
    let mut out = Vec::with_capacity(4096);
    write_canonical(v, &mut out);
    hex::encode(sha2::Sha256::digest(&out))
}

/// `v` as canonical JSON text (sorted keys, no whitespace), whatever map type serde_json
/// was built with.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// The value a local JSON pointer (`#/components/schemas/Pet`) names in the document.
pub fn resolve_local<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    let decoded = percent_encoding::percent_decode_str(pointer)
        .decode_utf8()
        .ok()?;
    root.pointer(&decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace, key order and YAML versus JSON do not change the fingerprint; a value does.
    #[test]
    fn the_fingerprint_is_canonical() {
        let a = br#"{"openapi":"3.1.0","info":{"title":"t","version":"1"},"paths":{}}"#;
        let b = b"{ \"paths\": {},\n  \"info\": {\"version\": \"1\", \"title\": \"t\"},\n \"openapi\": \"3.1.0\" }";
        let y = b"openapi: 3.1.0\ninfo:\n  title: t\n  version: '1'\npaths: {}\n";
        let da = parse(a, 1 << 20).unwrap();
        assert_eq!(da.sha256, parse(b, 1 << 20).unwrap().sha256);
        assert_eq!(da.sha256, parse(y, 1 << 20).unwrap().sha256);
        let c = br#"{"openapi":"3.1.0","info":{"title":"u","version":"1"},"paths":{}}"#;
        assert_ne!(da.sha256, parse(c, 1 << 20).unwrap().sha256);
    }

    #[test]
    fn swagger_and_unknown_versions_are_refused_by_name() {
        let e = parse(br#"{"swagger":"2.0","paths":{}}"#, 1 << 20).unwrap_err();
        assert!(e.contains("Swagger 2.0") && e.contains("OpenAPI 3"), "{e}");
        let e = parse(br#"{"openapi":"4.0.0","paths":{}}"#, 1 << 20).unwrap_err();
        assert!(e.contains("4.0.0"), "{e}");
        let e = parse(b"{\"openapi\": ", 1 << 20).unwrap_err();
        assert!(e.starts_with("invalid JSON"), "{e}");
        let e = parse(&[b' '; 100], 10).unwrap_err();
        assert!(e.contains("max_document_bytes"), "{e}");
    }

    #[test]
    fn yaml_response_codes_become_string_keys() {
        let d = parse(
            b"openapi: 3.0.3\npaths:\n  /a:\n    get:\n      responses:\n        200:\n          description: ok\n",
            1 << 20,
        )
        .unwrap();
        assert!(d.root["paths"]["/a"]["get"]["responses"]["200"].is_object());
    }
}
