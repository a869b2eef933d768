//! Shaping an upstream answer for a model, in a fixed order: the read cap (done by the
//! client) → parse → project (`response.project`) → select (the caller's, when allowed) →
//! redact → truncate → serialise.
//!
//! Redaction replaces the API's own credential in every form the gateway sent
//! (`[REDACTED:credential]`), common secret formats (`[REDACTED:github]`, …) and configured
//! JSON paths (`[REDACTED:json_path]`), in keys and values, before anything is cut. Truncation
//! keeps JSON parseable: array and object tails are dropped and long strings shortened with a
//! marker, never a cut inside a token, and what was dropped is listed by JSON pointer.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use bytes::Bytes;
use serde_json::{json, Value};

use super::fit::{fit_raw, fit_value, serialised_len};
use crate::config::{Api, Query, SecretKind};
use crate::error::{GatewayError, Reason};

/// What a shaped answer is, and what shaping did to it.
#[derive(Debug, Default)]
pub struct Shaped {
    /// JSON when the upstream sent parseable JSON, else text.
    pub data: Value,
    /// Whether anything was left out: the read cap or the character budget.
    pub truncated: bool,
    /// The body's size as the upstream sent it (its `Content-Length` when the read stopped
    /// at the cap).
    pub original_bytes: u64,
    /// Characters of `data` as serialised for the model.
    pub returned_chars: usize,
    /// What was cut, by JSON pointer (at most [`MAX_DROPPED_NOTES`](super::fit::MAX_DROPPED_NOTES) entries).
    pub dropped: Vec<String>,
    /// Redactions by kind: counts only, never values.
    pub redacted: BTreeMap<&'static str, u64>,
    /// A binary answer (an image, a PDF): its media type and bytes, for the door to return
    /// as the API's `response.binary` says. `data` then only describes it.
    pub binary: Option<(String, Bytes)>,
}

impl Shaped {
    /// The `_meta` of the tool result (and the audit record's `shaping`).
    pub fn meta(&self) -> Value {
        let mut m = json!({
            "truncated": self.truncated,
            "original_bytes": self.original_bytes,
            "returned_chars": self.returned_chars,
        });
        if !self.dropped.is_empty() {
            m["dropped"] = json!(self.dropped);
        }
        if !self.redacted.is_empty() {
            m["redacted"] = json!(self.redacted);
        }
        m
    }
}

/// The upstream's body, as read.
pub struct Body<'a> {
    pub bytes: Bytes,
    pub content_type: Option<&'a str>,
    /// The read stopped at `response.max_upstream_bytes`.
    pub read_cut: bool,
    /// The upstream's `Content-Length`, if it sent one.
    pub declared_len: Option<u64>,
}

/// Shapes a body for the model. `select` is the caller's JMESPath, already compiled (and
/// already refused unless the API allows it).
pub fn shape(api: &Api, body: Body<'_>, select: Option<&Query>) -> Result<Shaped, GatewayError> {
    let cfg = &api.response;
    let mut out = Shaped {
        original_bytes: body
            .declared_len
            .filter(|_| body.read_cut)
            .unwrap_or(body.bytes.len() as u64),
        truncated: body.read_cut,
        ..Shaped::default()
    };
    let mime = body.content_type.map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    if is_binary(mime.as_deref(), &body.bytes) {
        if body.read_cut {
            return Err(GatewayError::because(
                Reason::UpstreamResponseTooLarge,
                format!(
                    "the binary answer ({} bytes) is larger than API {:?} reads \
                     (response.max_upstream_bytes); a binary body cannot be cut",
                    out.original_bytes, api.name
                ),
            ));
        }
        let mime = mime.unwrap_or_else(|| "application/octet-stream".into());
        out.data = json!({"binary": true, "content_type": mime, "bytes": body.bytes.len()});
        out.returned_chars = serialised_len(&out.data);
        out.binary = Some((mime, body.bytes));
        return Ok(out);
    }
    let json_type = body.content_type.is_some_and(is_json_type);
    let redactor = Redactor::for_api(api);
    // An answer larger than the budget, with nothing to apply but redaction and the cut, is
    // cut from its bytes without being parsed whole.
    if json_type
        && !body.read_cut
        && cfg.project.is_none()
        && select.is_none()
        && cfg.redact.json_paths.is_empty()
        && body.bytes.len() > cfg.max_result_chars
    {
        if let Some((fitted, cut)) = fit_raw(
            &redactor,
            &body.bytes,
            cfg.max_result_chars,
            &mut out.dropped,
        ) {
            out.truncated |= cut;
            out.returned_chars = serialised_len(&fitted);
            out.data = fitted;
            return Ok(out);
        }
    }
    let parsed = (json_type && !body.read_cut)
        .then(|| serde_json::from_slice::<Value>(&body.bytes).ok())
        .flatten();
    let mut data = match parsed {
        Some(v) => v,
        None => Value::String(String::from_utf8_lossy(&body.bytes).into_owned()),
    };
    let is_json = !matches!(data, Value::String(_)) || json_type && !body.read_cut;
    for (query, key) in [(cfg.project.as_ref(), "project"), (select, "select")] {
        let Some(q) = query else { continue };
        if !is_json {
            return Err(GatewayError::because(
                Reason::InvalidSelect,
                format!(
                    "{key} applies to a complete JSON answer; this one is {}{}",
                    body.content_type.unwrap_or("without a content type"),
                    if body.read_cut {
                        ", cut at response.max_upstream_bytes"
                    } else {
                        ""
                    }
                ),
            ));
        }
        data = q.apply(&data).map_err(|e| {
            GatewayError::because(
                Reason::InvalidSelect,
                format!("{key} {:?} could not be applied: {e}", q.as_str()),
            )
        })?;
    }
    data = redactor.value(data, &mut out.redacted);
    if !cfg.redact.json_paths.is_empty() && !matches!(data, Value::String(_)) {
        redact_json_paths(api, &mut data, &mut out.redacted);
    }
    let (fitted, cut) = fit_value(data, cfg.max_result_chars, &mut out.dropped);
    out.truncated |= cut;
    out.returned_chars = serialised_len(&fitted);
    out.data = fitted;
    Ok(out)
}

/// A whole body redacted as an MCP answer would be (the credential, the secret formats and,
/// for JSON, the configured paths), for the proxy door of an API that opts in. Binary
/// bodies only have the credential masked.
pub fn redact_whole(api: &Api, body: Bytes) -> Bytes {
    let Ok(text) = std::str::from_utf8(&body) else {
        return super::redact_credential(api, body);
    };
    let mut counts = BTreeMap::new();
    if !api.response.redact.json_paths.is_empty() {
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            let mut v = Redactor::for_api(api).value(v, &mut counts);
            redact_json_paths(api, &mut v, &mut counts);
            return Bytes::from(v.to_string());
        }
    }
    match Redactor::for_api(api).text(text, &mut counts) {
        Some(t) => Bytes::from(t),
        None => body,
    }
}

/// The most a compressed answer may expand: past this ratio it is refused as a bomb.
pub const MAX_COMPRESSION_RATIO: u64 = 100;

/// A gzip or deflate answer, decompressed so it can be masked and shaped: at most `cap`
/// bytes and at most [`MAX_COMPRESSION_RATIO`] times its compressed size, or refused
/// (`upstream_response_too_large`). Returns the body and whether it was decoded; any other
/// encoding is left to [`super::check_inspectable`].
pub fn decode_body(
    api: &Api,
    headers: &http::HeaderMap,
    body: Bytes,
    read_cut: bool,
    cap: usize,
) -> Result<(Bytes, bool), GatewayError> {
    use std::io::Read;
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let too_large = |why: String| {
        GatewayError::because(
            Reason::UpstreamResponseTooLarge,
            format!("the compressed answer of API {:?} {why}", api.name),
        )
    };
    if !matches!(encoding.as_deref(), Some("gzip" | "x-gzip" | "deflate")) {
        return Ok((body, false));
    }
    if read_cut {
        return Err(too_large(format!(
            "is larger than response.max_upstream_bytes ({cap}) before decompression"
        )));
    }
    let limit = (cap as u64).min((body.len() as u64).saturating_mul(MAX_COMPRESSION_RATIO));
    let mut out = Vec::new();
    let read = if encoding.as_deref() == Some("deflate") {
        flate2::read::ZlibDecoder::new(&body[..])
            .take(limit + 1)
            .read_to_end(&mut out)
    } else {
        flate2::read::MultiGzDecoder::new(&body[..])
            .take(limit + 1)
            .read_to_end(&mut out)
    };
    if let Err(e) = read {
        return Err(GatewayError::because(
            Reason::MalformedUpstreamBody,
            format!(
                "the compressed answer of API {:?} does not decompress: {e}",
                api.name
            ),
        ));
    }
    if out.len() as u64 > limit {
        return Err(too_large(format!(
            "expands past {limit} bytes (response.max_upstream_bytes, or {MAX_COMPRESSION_RATIO} times its {} compressed bytes)",
            body.len()
        )));
    }
    Ok((Bytes::from(out), true))
}

/// Whether an answer is binary: a media type that is not text (images, audio, video, PDF,
/// archives, octet streams), or, without a telling type, bytes that are not UTF-8.
fn is_binary(mime: Option<&str>, bytes: &[u8]) -> bool {
    let textual = |m: &str| {
        m.starts_with("text/")
            || is_json_type(m)
            || m.ends_with("+xml")
            || matches!(
                m,
                "application/xml"
                    | "application/javascript"
                    | "application/x-www-form-urlencoded"
                    | "application/yaml"
                    | "application/x-yaml"
                    | "application/graphql"
                    | "application/x-ndjson"
                    | "application/jsonl"
                    | "application/problem+json"
            )
    };
    match mime {
        Some(m) if textual(m) => false,
        Some(m)
            if m.starts_with("image/")
                || m.starts_with("audio/")
                || m.starts_with("video/")
                || m.starts_with("font/")
                || matches!(
                    m,
                    "application/pdf"
                        | "application/octet-stream"
                        | "application/zip"
                        | "application/gzip"
                        | "application/x-tar"
                        | "application/wasm"
                        | "application/msword"
                        | "application/vnd.ms-excel"
                )
                || m.starts_with("application/vnd.openxmlformats") =>
        {
            true
        }
        _ => std::str::from_utf8(bytes).is_err(),
    }
}

/// `application/json` and `+json` types.
pub fn is_json_type(ct: &str) -> bool {
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct == "application/json" || ct.ends_with("+json")
}

/// Replaces secrets in text: the API's credential forms, then the configured formats.
pub struct Redactor<'a> {
    api: &'a Api,
}

/// The compiled secret formats, one per [`SecretKind`].
static PATTERNS: LazyLock<Vec<(SecretKind, regex::Regex)>> = LazyLock::new(|| {
    SecretKind::ALL
        .iter()
        .map(|k| {
            (
                *k,
                regex::Regex::new(k.pattern()).expect("valid built-in pattern"),
            )
        })
        .collect()
});

/// The same formats as one set: a single pass tells which of them occur in a text, so a
/// text holding none (nearly every one) is not scanned once per format.
static PATTERN_SET: LazyLock<regex::RegexSet> = LazyLock::new(|| {
    regex::RegexSet::new(SecretKind::ALL.iter().map(|k| k.pattern()))
        .expect("valid built-in pattern")
});

impl<'a> Redactor<'a> {
    pub fn for_api(api: &'a Api) -> Redactor<'a> {
        Redactor { api }
    }

    /// Whether [`Redactor::text`] would change `text`: it holds a form of the credential or
    /// one of the API's secret formats.
    pub fn touches(&self, text: &str) -> bool {
        if self
            .api
            .credential
            .as_ref()
            .is_some_and(|c| c.replacer.is_match(text))
        {
            return true;
        }
        let enabled = &self.api.response.redact.patterns;
        !enabled.is_empty()
            && PATTERN_SET
                .matches(text)
                .iter()
                .any(|i| enabled.contains(&SecretKind::ALL[i]))
    }

    /// `text` with every secret replaced by `[REDACTED:kind]`, counting each.
    pub fn text(&self, text: &str, counts: &mut BTreeMap<&'static str, u64>) -> Option<String> {
        // One pass per automaton: each match is counted as it is replaced.
        let mut changed: Option<String> = None;
        if let Some(c) = &self.api.credential {
            if c.replacer.is_match(text) {
                let mut hits = 0u64;
                let mut out = String::with_capacity(text.len());
                c.replacer.replace_all_with(text, &mut out, |_, _, dst| {
                    hits += 1;
                    dst.push_str("[REDACTED:credential]");
                    true
                });
                *counts.entry("credential").or_default() += hits;
                changed = Some(out);
            }
        }
        // Which formats occur in the text as it arrived; once a replacement has changed it,
        // every remaining format is tried on the changed text, as each would be alone.
        let present = PATTERN_SET.matches(text);
        for (i, (kind, re)) in PATTERNS.iter().enumerate() {
            if !self.api.response.redact.patterns.contains(kind)
                || (changed.is_none() && !present.matched(i))
            {
                continue;
            }
            let current = changed.as_deref().unwrap_or(text);
            let mut hits = 0u64;
            let replaced = re.replace_all(current, |_: &regex::Captures<'_>| {
                hits += 1;
                format!("[REDACTED:{}]", kind.name())
            });
            if hits > 0 {
                *counts.entry(kind.name()).or_default() += hits;
                changed = Some(replaced.into_owned());
            }
        }
        changed
    }

    /// Every string in `v`, keys included, redacted.
    pub fn value(&self, v: Value, counts: &mut BTreeMap<&'static str, u64>) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(&s, counts).unwrap_or(s)),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|x| self.value(x, counts)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, x)| (self.text(&k, counts).unwrap_or(k), self.value(x, counts)))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Replaces the values at the API's `redact.json_paths` with `[REDACTED:json_path]`.
fn redact_json_paths(api: &Api, data: &mut Value, counts: &mut BTreeMap<&'static str, u64>) {
    let mut pointers = Vec::new();
    for (_, path) in &api.response.redact.json_paths {
        for node in path.query_located(data).all() {
            pointers.push(node.location().to_json_pointer());
        }
    }
    for p in pointers {
        if let Some(slot) = data.pointer_mut(&p) {
            *slot = Value::String("[REDACTED:json_path]".into());
            *counts.entry("json_path").or_default() += 1;
        }
    }
}
