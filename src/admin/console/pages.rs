//! The console's pages: minijinja templates embedded in the binary (HTML autoescaped), the
//! two static files, and the views that turn an endpoint's JSON into what a page draws
//! (chart geometry for the inline SVG charts is computed here, from numbers only).

use std::collections::HashMap;
use std::sync::OnceLock;

use minijinja::{AutoEscape, Environment};
use serde_json::{json, Value};

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("denied.html", include_str!("templates/denied.html")),
    ("apis.html", include_str!("templates/apis.html")),
    ("usage.html", include_str!("templates/usage.html")),
    ("limits.html", include_str!("templates/limits.html")),
    ("decisions.html", include_str!("templates/decisions.html")),
    ("explain.html", include_str!("templates/explain.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("approvals.html", include_str!("templates/approvals.html")),
    ("config.html", include_str!("templates/config.html")),
];

/// Colours of the charts' series, in order.
const PALETTE: &[&str] = &[
    "#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2",
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut e = Environment::new();
        // A view without some part (no traffic yet) draws its empty state, not an error.
        e.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        e.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        for (name, src) in TEMPLATES {
            e.add_template(name, src)
                .expect("the console's templates parse");
        }
        e
    })
}

/// A page, or a plain error page naming what failed (never a panic). Null members are
/// dropped first, so an absent value draws as nothing rather than as "none".
pub fn render(name: &str, mut ctx: Value) -> String {
    drop_nulls(&mut ctx);
    env()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| {
            tracing::error!(template = name, error = %e, "console page failed to render");
            "<!doctype html><title>console</title><p>This page could not be drawn; the log says why.</p>".into()
        })
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// A static file by name: its content type and bytes.
pub fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    match name {
        "console.css" => Some((
            "text/css; charset=utf-8",
            include_bytes!("static/console.css"),
        )),
        "console.js" => Some((
            "text/javascript; charset=utf-8",
            include_bytes!("static/console.js"),
        )),
        _ => None,
    }
}

/// The points of a polyline drawing `values` in a `w` × `h` box (top-left origin), scaled
/// to `max`.
fn polyline(values: &[f64], w: f64, h: f64, max: f64) -> String {
    let n = values.len().max(2) - 1;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = i as f64 * w / n as f64;
            let y = h - if max > 0.0 { v / max * (h - 4.0) } else { 0.0 } - 2.0;
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect())
        .unwrap_or_default()
}

/// The APIs page: the table plus a request-rate chart (one line per API, last hour) and a
/// latency chart (p50/p95/p99 bars per API).
pub fn apis_view(mut v: Value) -> Value {
    let apis = v["apis"].as_array().cloned().unwrap_or_default();
    let peak = apis
        .iter()
        .flat_map(|a| nums(&a["calls_per_minute"]))
        .fold(0.0, f64::max);
    let mut series = Vec::new();
    let mut lat_max: f64 = 0.0;
    for a in &apis {
        if let Some(p99) = a["latency_ms_1h"]["p99"].as_f64() {
            lat_max = lat_max.max(p99);
        }
    }
    let mut bars = Vec::new();
    for (i, a) in apis.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let per_minute = nums(&a["calls_per_minute"]);
        if per_minute.iter().any(|x| *x > 0.0) {
            series.push(json!({
                "name": a["name"],
                "colour": colour,
                "points": polyline(&per_minute, 600.0, 160.0, peak),
            }));
        }
        if let Some(l) = a["latency_ms_1h"].as_object() {
            let row = bars.len();
            let w = |k: &str| {
                let x = l.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                // A log scale: latencies span orders of magnitude.
                let scaled = (1.0 + x).ln() / (1.0 + lat_max).ln().max(1e-9) * 440.0;
                json!({"ms": x, "w": format!("{:.1}", scaled.max(1.0))})
            };
            bars.push(json!({
                "name": a["name"],
                "y": row * 54,
                "p50": w("p50"), "p95": w("p95"), "p99": w("p99"),
            }));
        }
    }
    v["rate_chart"] = json!({"series": series, "peak": peak});
    v["latency_chart"] = json!({"bars": bars, "height": bars.len() * 54 + 10});
    for a in v["apis"].as_array_mut().into_iter().flatten() {
        let p = nums(&a["calls_per_minute"]);
        let max = p.iter().copied().fold(0.0, f64::max);
        a["spark"] = json!(polyline(&p, 180.0, 32.0, max));
    }
    v
}

/// The usage page for one window: bars per principal (refusals in their own colour).
pub fn usage_view(v: Value, window: &str) -> Value {
    let w = &v["windows"][window];
    let principals = w["principals"].as_array().cloned().unwrap_or_default();
    let max = principals
        .iter()
        .map(|p| p["calls"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    let bars: Vec<Value> = principals
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let scale = |k: &str| {
                let x = p[k].as_f64().unwrap_or(0.0);
                if max > 0.0 {
                    x / max * 460.0
                } else {
                    0.0
                }
            };
            json!({
                "principal": p["principal"],
                "calls": p["calls"],
                "refusals": p["refusals"],
                "y": i * 28,
                "w": format!("{:.1}", scale("calls").max(1.0)),
                "rw": format!("{:.1}", scale("refusals")),
            })
        })
        .collect();
    json!({
        "window": window,
        "windows": ["1h", "24h", "7d"],
        "since": v["since"],
        "pairs": w["pairs"],
        "apis": w["apis"],
        "bars": bars,
        "height": bars.len() * 28 + 4,
    })
}

/// The limits page: each counter's fill as a bar.
pub fn limits_view(mut v: Value) -> Value {
    for e in v["entries"].as_array_mut().into_iter().flatten() {
        for p in e["policies"].as_array_mut().into_iter().flatten() {
            let fill = p["fill"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
            p["w"] = json!(format!("{:.1}", fill * 200.0));
            p["level"] = json!(if fill >= 0.9 {
                "high"
            } else if fill >= 0.6 {
                "mid"
            } else {
                "low"
            });
            p["pct"] = json!((fill * 100.0).round());
        }
    }
    v
}

/// The audit page: the search form as filled, the page of records, the next-page and
/// export links, and a verification verdict when asked for.
pub fn audit_view(
    result: Result<Value, String>,
    query: &HashMap<String, String>,
    verify: Option<Value>,
) -> Value {
    let keep = |extra: &[(&str, &str)]| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for k in [
            "principal",
            "api",
            "decision",
            "rule",
            "since",
            "until",
            "limit",
        ] {
            if let Some(v) = query.get(k).filter(|v| !v.is_empty()) {
                s.append_pair(k, v);
            }
        }
        for (k, v) in extra {
            s.append_pair(k, v);
        }
        s.finish()
    };
    let (records, next, error, took) = match &result {
        Ok(v) => (
            v["records"].as_array().cloned().unwrap_or_default(),
            v["next_cursor"]
                .as_str()
                .map(|c| format!("/console/audit?{}", keep(&[("cursor", c)]))),
            None,
            v["took_ms"].clone(),
        ),
        Err(e) => (Vec::new(), None, Some(e.clone()), Value::Null),
    };
    let rows: Vec<Value> = records
        .iter()
        .map(|r| {
            let e = &r["event"];
            json!({
                "seq": r["seq"],
                "ts": e["ts"],
                "principal": e["principal"],
                "api": e["api"],
                "door": e["door"],
                "method": e["method"],
                "path": e["path"],
                "status": e["status"],
                "decision": e["decision"],
                "event": e["event"],
                "rule": e["rule"].as_str().or_else(|| e["shadow"][0]["rule"].as_str()),
                "reason": e["reason"].as_str().or(e["error"].as_str()),
            })
        })
        .collect();
    json!({
        "q": query,
        "records": rows,
        "next": next,
        "export": format!("/console/api/audit?{}", keep(&[("format", "jsonl")])),
        "error": error,
        "took_ms": took,
        "verify": verify,
        "decisions": ["allow", "deny", "error", "shadow"],
    })
}

/// The config page: the masked config as TOML again (as indented JSON if it cannot be).
pub fn config_view(mut v: Value) -> Value {
    let text = toml::Value::try_from(&v["config"])
        .ok()
        .and_then(|t| toml::to_string_pretty(&t).ok())
        .unwrap_or_else(|| serde_json::to_string_pretty(&v["config"]).unwrap_or_default());
    v["pretty"] = json!(text);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_renders_and_escapes_caller_text() {
        for (name, _) in TEMPLATES {
            let ctx = json!({"admin": "key:<b>", "csrf": "t", "nav": "apis"});
            if let Err(e) = env().get_template(name).and_then(|t| t.render(&ctx)) {
                panic!("{name}: {e:#}");
            }
        }
        let html = render(
            "decisions.html",
            json!({"admin": "a", "decisions": [{"principal": "<script>alert(1)</script>", "path": "/x\"><img>"}]}),
        );
        assert!(!html.contains("<script>alert(1)"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("\"><img>"), "{html}");
    }

    #[test]
    fn chart_points_stay_in_their_box() {
        let p = polyline(&[0.0, 5.0, 10.0], 100.0, 50.0, 10.0);
        assert_eq!(p, "0.0,48.0 50.0,25.0 100.0,2.0");
        assert_eq!(polyline(&[0.0, 0.0], 10.0, 10.0, 0.0), "0.0,8.0 10.0,8.0");
    }
}
