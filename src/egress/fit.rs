//! Cutting a JSON answer to the model's character budget so it still parses, and doing it
//! without building the whole answer when the answer is much larger than the budget.
//!
//! One cut, [`fit`], works on anything that implements [`Fit`]: a parsed [`Value`], or raw
//! JSON text, a span of the upstream's bytes that is only parsed where the cut needs to
//! look inside it. Arrays keep their head and drop their tail; objects keep their smallest
//! members first (so a large one cannot crowd out the counts and links beside it), in
//! key order; long strings are shortened with a marker; what was dropped is noted by JSON
//! pointer.
//!
//! [`fit_raw`] is the path for a large answer: a 5 MB search result cut to 40,000
//! characters is scanned a few times by serde_json but never becomes a tree of values; only
//! what is kept is. It gives exactly what parsing the whole answer and cutting the
//! [`Value`] gives (a property test holds the two to that), so it declines, and the caller
//! takes the other path, whenever that cannot be guaranteed cheaply: an answer redaction
//! would change, or an object with a key twice (parsing keeps the last).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::shape::Redactor;

/// Notes kept about what truncation dropped.
pub const MAX_DROPPED_NOTES: usize = 20;

/// Room a shortened string keeps for its quotes and marker.
const MARKER_ROOM: usize = 32;

/// Characters of `v` as compact JSON (bytes: never fewer than characters, so a budget in
/// bytes is a safe budget in characters).
pub fn serialised_len<T: Serialize + ?Sized>(v: &T) -> usize {
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// A writer that only counts.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A JSON value the cut can work on.
pub trait Fit: Sized {
    /// Its length as compact JSON, when that is at most `cap`.
    fn size_within(&self, cap: usize) -> Option<usize>;
    /// Its length as compact JSON.
    fn size(&self) -> usize;
    /// The value itself.
    fn whole(self) -> Value;
    /// What it is, with its parts.
    fn open(self) -> Opened<Self>;
}

/// A value opened for cutting.
pub enum Opened<T> {
    String(String),
    Array(Vec<T>),
    /// Members in key order, each key once.
    Object(Vec<(String, T)>),
    /// A number, boolean or null.
    Scalar,
}

impl Fit for Value {
    fn size_within(&self, cap: usize) -> Option<usize> {
        Some(serialised_len(self)).filter(|n| *n <= cap)
    }
    fn size(&self) -> usize {
        serialised_len(self)
    }
    fn whole(self) -> Value {
        self
    }
    fn open(self) -> Opened<Value> {
        match self {
            Value::String(s) => Opened::String(s),
            Value::Array(items) => Opened::Array(items),
            Value::Object(map) => Opened::Object(map.into_iter().collect()),
            _ => Opened::Scalar,
        }
    }
}

/// A span of JSON text already checked to hold one value (by [`fit_raw`]'s first scan).
#[derive(Clone, Copy)]
struct Raw<'a>(&'a str);

impl<'a> Fit for Raw<'a> {
    fn size_within(&self, cap: usize) -> Option<usize> {
        measure(self.0, cap, None).ok()
    }
    fn size(&self) -> usize {
        measure(self.0, usize::MAX, None).unwrap_or(usize::MAX)
    }
    fn whole(self) -> Value {
        serde_json::from_str(self.0).unwrap_or(Value::Null)
    }
    fn open(self) -> Opened<Raw<'a>> {
        let text = self.0.trim_start();
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str(text).map_or(Opened::Scalar, Opened::String),
            Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(text)
                .map_or(Opened::Scalar, |items| {
                    Opened::Array(items.into_iter().map(|r| Raw(r.get())).collect())
                }),
            // Members in key order, as serde_json's `Map` keeps them.
            Some(b'{') => serde_json::from_str::<BTreeMap<String, &RawValue>>(text)
                .map_or(Opened::Scalar, |m| {
                    Opened::Object(m.into_iter().map(|(k, r)| (k, Raw(r.get()))).collect())
                }),
            _ => Opened::Scalar,
        }
    }
}

/// Fits `v` into `budget` bytes of compact JSON; returns the value and whether it was cut.
/// Notes on what was dropped go to `dropped`.
pub fn fit_value<T: Fit>(v: T, budget: usize, dropped: &mut Vec<String>) -> (Value, bool) {
    if v.size_within(budget).is_some() {
        return (v.whole(), false);
    }
    let mut path = String::new();
    let fitted = fit(v, budget, &mut path, dropped).unwrap_or_else(|| {
        note(dropped, "/: nothing fits the budget".to_string());
        Value::Null
    });
    (fitted, true)
}

/// A large JSON answer fitted into `budget` without parsing it whole, or `None` when the
/// answer does not qualify (it is not JSON, redaction would change it, or an object repeats
/// a key) and must be parsed and cut as a [`Value`].
pub fn fit_raw(
    redactor: &Redactor<'_>,
    bytes: &[u8],
    budget: usize,
    dropped: &mut Vec<String>,
) -> Option<(Value, bool)> {
    let text = std::str::from_utf8(bytes).ok()?;
    // A secret or credential inside a string that has no escapes is also in the raw text
    // (its quotes are word boundaries, as the ends of a text are): one scan of the whole
    // answer clears every such string. Strings with escapes are checked one by one below.
    if redactor.touches(text) {
        return None;
    }
    let mut keys = Vec::new();
    measure(
        text,
        usize::MAX,
        Some(Check {
            redactor,
            keys: &mut keys,
        }),
    )
    .ok()?;
    Some(fit_value(Raw(text), budget, dropped))
}

fn note(dropped: &mut Vec<String>, text: String) {
    if dropped.len() < MAX_DROPPED_NOTES {
        dropped.push(text);
    }
}

/// `v` in at most `budget` bytes, or `None` when not even a shortened form fits.
fn fit<T: Fit>(v: T, budget: usize, path: &mut String, dropped: &mut Vec<String>) -> Option<Value> {
    if v.size_within(budget).is_some() {
        return Some(v.whole());
    }
    match v.open() {
        Opened::String(s) => {
            // Quotes, the marker, and escapes the kept text may need.
            if budget < MARKER_ROOM + 16 {
                return None;
            }
            let total = s.chars().count();
            let mut keep = budget - MARKER_ROOM;
            loop {
                let cut: String = s.chars().take(keep).collect();
                let kept = cut.chars().count();
                let candidate = Value::String(format!("{cut}…[+{} chars]", total - kept));
                let len = serialised_len(&candidate);
                if len <= budget {
                    note(
                        dropped,
                        format!("{}: string cut to {kept} of {total} characters", ptr(path)),
                    );
                    return Some(candidate);
                }
                // Escapes and multi-byte characters: shrink in proportion, at least by one.
                let next = (keep * budget / len).min(keep.saturating_sub(1));
                if next == 0 {
                    return None;
                }
                keep = next;
            }
        }
        Opened::Array(items) => {
            let total = items.len();
            let mut kept = Vec::new();
            let mut used = 2; // []
            for (i, item) in items.into_iter().enumerate() {
                let sep = usize::from(!kept.is_empty());
                let room = budget.saturating_sub(used + sep);
                let len = path.len();
                path.push_str(&format!("/{i}"));
                let fitted = fit(item, room, path, dropped);
                path.truncate(len);
                match fitted {
                    Some(x) => {
                        used += sep + serialised_len(&x);
                        kept.push(x);
                    }
                    None => break,
                }
            }
            if kept.len() < total {
                note(
                    dropped,
                    format!("{}: kept {} of {total} items", ptr(path), kept.len()),
                );
            }
            // An emptied container says nothing: leave it out rather than keep the shell.
            (budget >= 2 && (!kept.is_empty() || total == 0)).then_some(Value::Array(kept))
        }
        Opened::Object(members) => {
            // Small members first, so a large one cannot crowd out the counts and links
            // beside it; the output keeps the key order. Members over the budget come last,
            // by their own size when there are several of them.
            let total = members.len();
            let mut sizes: Vec<Option<usize>> =
                members.iter().map(|(_, x)| x.size_within(budget)).collect();
            if sizes.iter().filter(|s| s.is_none()).count() > 1 {
                for (s, (_, x)) in sizes.iter_mut().zip(&members) {
                    if s.is_none() {
                        *s = Some(x.size());
                    }
                }
            }
            let mut order: Vec<(usize, usize)> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| (s.unwrap_or(usize::MAX), i))
                .collect();
            order.sort_unstable();
            let mut members: Vec<(String, Option<T>)> =
                members.into_iter().map(|(k, x)| (k, Some(x))).collect();
            let mut fitted: Vec<Option<Value>> = vec![None; total];
            let mut used = 2; // {}
            let mut count = 0;
            for (_, i) in order {
                let (k, x) = &mut members[i];
                let sep = usize::from(count > 0);
                let key_len = serialised_len(k.as_str()) + 1;
                let room = budget.saturating_sub(used + sep + key_len);
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                let f = match x.take() {
                    Some(x) if room > 0 => fit(x, room, path, dropped),
                    _ => None,
                };
                path.truncate(len);
                if let Some(f) = f {
                    used += sep + key_len + serialised_len(&f);
                    count += 1;
                    fitted[i] = Some(f);
                }
            }
            let mut kept = serde_json::Map::new();
            let mut skipped = Vec::new();
            for ((k, _), f) in members.into_iter().zip(fitted) {
                match f {
                    Some(f) => {
                        kept.insert(k, f);
                    }
                    None => skipped.push(k),
                }
            }
            if !skipped.is_empty() {
                let shown: Vec<&str> = skipped.iter().take(5).map(String::as_str).collect();
                note(
                    dropped,
                    format!(
                        "{}: kept {} of {total} keys; left out {}{}",
                        ptr(path),
                        kept.len(),
                        shown.join(", "),
                        if skipped.len() > 5 { ", …" } else { "" }
                    ),
                );
            }
            (budget >= 2 && (!kept.is_empty() || total == 0)).then_some(Value::Object(kept))
        }
        Opened::Scalar => None,
    }
}

fn ptr(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

/// The first scan's extra duties: refuse strings redaction would change and repeated keys.
struct Check<'c, 'r, 'de> {
    redactor: &'c Redactor<'r>,
    /// The keys of the objects being read, innermost last.
    keys: &'c mut Vec<std::borrow::Cow<'de, str>>,
}

/// A scan of JSON text that adds up its compact length, stopping once it passes `cap`.
struct Scan<'c, 'r, 'de> {
    len: usize,
    cap: usize,
    check: Option<Check<'c, 'r, 'de>>,
}

/// The compact length of the JSON `text` (which must hold one value), or `Err` when it is
/// longer than `cap`, is not JSON, or fails `check`.
fn measure<'de>(
    text: &'de str,
    cap: usize,
    check: Option<Check<'_, '_, 'de>>,
) -> Result<usize, ()> {
    let mut scan = Scan { len: 0, cap, check };
    let mut de = serde_json::Deserializer::from_str(text);
    Node(&mut scan).deserialize(&mut de).map_err(drop)?;
    de.end().map_err(drop)?;
    Ok(scan.len)
}

impl<'de> Scan<'_, '_, 'de> {
    fn add<E: de::Error>(&mut self, n: usize) -> Result<(), E> {
        self.len = self.len.saturating_add(n);
        if self.len > self.cap {
            return Err(E::custom("over the budget"));
        }
        Ok(())
    }

    /// A string serde_json had to unescape: its text is not in the raw answer as it is, so
    /// the whole-answer scan for secrets did not see it.
    fn unescaped<E: de::Error>(&self, s: &str) -> Result<(), E> {
        match &self.check {
            Some(c) if c.redactor.touches(s) => Err(E::custom("redaction applies")),
            _ => Ok(()),
        }
    }
}

/// One value of a [`Scan`].
struct Node<'s, 'c, 'r, 'de>(&'s mut Scan<'c, 'r, 'de>);

impl<'de> DeserializeSeed<'de> for Node<'_, '_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.add(4)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.0.add(if b { 4 } else { 5 })
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.0.add(serialised_len(&n))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.0.add(serialised_len(&n))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        // As `Value` holds it: a number, or null when it is not finite.
        self.0.add(serialised_len(&Value::from(n)))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<(), E> {
        self.0.add(serialised_len(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.0.unescaped(s)?;
        self.0.add(serialised_len(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.add(2)?;
        let mut n = 0usize;
        while seq.next_element_seed(Node(&mut *self.0))?.is_some() {
            if n > 0 {
                self.0.add(1)?;
            }
            n += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.add(2)?;
        let first = self.0.check.as_ref().map_or(0, |c| c.keys.len());
        let mut n = 0usize;
        while map.next_key_seed(Key(&mut *self.0))?.is_some() {
            map.next_value_seed(Node(&mut *self.0))?;
            // The colon, and the comma before every member but the first.
            self.0.add(1 + usize::from(n > 0))?;
            n += 1;
        }
        if let Some(c) = &mut self.0.check {
            // A repeated key: parsing keeps only its last value, which this scan's length
            // does not account for.
            let keys = &mut c.keys[first..];
            keys.sort_unstable();
            let repeated = keys.windows(2).any(|w| w[0] == w[1]);
            c.keys.truncate(first);
            if repeated {
                return Err(de::Error::custom("a key is repeated"));
            }
        }
        Ok(())
    }
}

/// One object key of a [`Scan`].
struct Key<'s, 'c, 'r, 'de>(&'s mut Scan<'c, 'r, 'de>);

impl<'de> DeserializeSeed<'de> for Key<'_, '_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_, '_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<(), E> {
        if let Some(c) = &mut self.0.check {
            c.keys.push(std::borrow::Cow::Borrowed(s));
        }
        self.0.add(serialised_len(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.0.unescaped(s)?;
        if let Some(c) = &mut self.0.check {
            c.keys.push(std::borrow::Cow::Owned(s.to_owned()));
        }
        self.0.add(serialised_len(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_large_document_is_cut_to_the_budget_and_still_parses() {
        let items: Vec<Value> = (0..5000)
            .map(|i| json!({"id": i, "name": format!("item {i}"), "body": "x".repeat(200)}))
            .collect();
        let doc = json!({"total_count": 5000, "items": items, "next": "/page/2"});
        let mut dropped = Vec::new();
        let (v, cut) = fit_value(doc, 40_000, &mut dropped);
        assert!(cut);
        let text = serde_json::to_string(&v).unwrap();
        assert!(text.len() <= 40_000, "{}", text.len());
        assert!(text.len() > 35_000, "the budget is used: {}", text.len());
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["total_count"], 5000);
        assert_eq!(
            back["next"], "/page/2",
            "small keys after a large one are kept"
        );
        assert!(back["items"].as_array().unwrap().len() > 100);
        assert!(
            dropped.iter().any(|d| d.starts_with("/items: kept")),
            "{dropped:?}"
        );
    }

    #[test]
    fn a_long_string_is_shortened_with_a_marker_whatever_its_characters() {
        for s in ["a".repeat(10_000), "é\"\\\n😀".repeat(3000)] {
            let mut dropped = Vec::new();
            let (v, cut) = fit_value(Value::String(s.clone()), 1000, &mut dropped);
            assert!(cut);
            let text = serde_json::to_string(&v).unwrap();
            assert!(text.len() <= 1000, "{}", text.len());
            let kept = v.as_str().unwrap();
            assert!(kept.contains("…[+"), "{kept}");
            assert!(s.starts_with(kept.split("…[+").next().unwrap()));
        }
    }

    fn api(extra: &str) -> crate::config::Api {
        let text = format!(
            "[auth]\nrequired = false\n[[apis]]\nname = \"a\"\nbase_url = \"https://example.com\"\n\
             paths = [\"/**\"]\n{extra}"
        );
        let config = crate::config::Config::parse(&text, &|_| None).expect("config");
        (*config.apis[0]).clone()
    }

    /// The classic path: parse whole, redact, cut.
    fn classic(api: &crate::config::Api, text: &str, budget: usize) -> (Value, bool, Vec<String>) {
        let v: Value = serde_json::from_str(text).unwrap();
        let mut counts = std::collections::BTreeMap::new();
        let v = Redactor::for_api(api).value(v, &mut counts);
        let mut dropped = Vec::new();
        let (v, cut) = fit_value(v, budget, &mut dropped);
        (v, cut, dropped)
    }

    fn raw(
        api: &crate::config::Api,
        text: &str,
        budget: usize,
    ) -> Option<(Value, bool, Vec<String>)> {
        let mut dropped = Vec::new();
        let (v, cut) = fit_raw(
            &Redactor::for_api(api),
            text.as_bytes(),
            budget,
            &mut dropped,
        )?;
        Some((v, cut, dropped))
    }

    #[test]
    fn a_large_answer_cut_from_its_bytes_is_the_answer_parsed_and_cut() {
        let items: Vec<Value> = (0..3000)
            .map(|i| {
                json!({"id": i, "name": format!("item \"{i}\"\n"), "score": i as f64 / 7.0,
                       "tags": ["a", "b"], "owner": {"login": format!("u{i}"), "big": i as u64 * 1_000_003}})
            })
            .collect();
        let doc = json!({"total_count": 3000, "items": items, "next": "/page/2", "meta": {"x": "y".repeat(500)}});
        let api = api("");
        for text in [doc.to_string(), serde_json::to_string_pretty(&doc).unwrap()] {
            for budget in [200, 1000, 40_000] {
                let got = raw(&api, &text, budget).expect("a clean answer takes the raw path");
                assert_eq!(got, classic(&api, &text, budget), "budget {budget}");
                assert!(got.1, "cut");
            }
        }
    }

    #[test]
    fn the_raw_path_declines_what_it_cannot_cut_exactly() {
        let api = api("credentials = { header = \"X-Key\", value = \"s3cr3t-value-42\" }\n");
        let secret = format!("ghp_{}", "a".repeat(36));
        let hidden = format!("\\u0067hp_{}", "a".repeat(36));
        for text in [
            // a key twice: parsing keeps the last value
            r#"{"a": [1, 2, 3], "a": 1}"#.to_string(),
            // a secret format, in the raw text and behind an escape
            format!(r#"{{"t": "{secret}"}}"#),
            format!(r#"{{"t": "{hidden}"}}"#),
            format!(r#"{{"{hidden}": 1}}"#),
            // the API's own credential
            r#"{"echo": "s3cr3t-value-42"}"#.to_string(),
            // not JSON
            "{\"a\": ".to_string(),
        ] {
            assert!(raw(&api, &text, 10).is_none(), "{text}");
        }
        // An escape with no secret behind it is fine.
        let text = r#"{"t": "line\nbreak \u00e9", "n": [1.5e3, -0, 1E2, 18446744073709551616]}"#;
        assert_eq!(raw(&api, text, 30), Some(classic(&api, text, 30)));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                "[ -~é😀\"\\\\]{0,80}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map("[a-z/~]{1,6}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// JSON text with what a parse normalises: whitespace, escapes, number spellings,
        /// repeated keys and secrets.
        fn text() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just("null".to_string()),
                Just("true".to_string()),
                Just("false".to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                Just("1E2".to_string()),
                Just("-0.0".to_string()),
                Just("123456789012345678901234".to_string()),
                "[ -~é😀]{0,60}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                Just("\"tab\\there \\u00e9\\/\"".to_string()),
            ];
            // Now and then a secret, which the raw path must leave to the parsed one.
            let leaf = prop_oneof![
                20 => leaf,
                1 => Just(format!("\"ghp_{}\"", "x".repeat(36))),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    (prop::collection::vec(inner.clone(), 0..8), any::<bool>()).prop_map(
                        |(items, spaced)| {
                            let sep = if spaced { ",\n  " } else { "," };
                            format!("[{}]", items.join(sep))
                        }
                    ),
                    prop::collection::vec(("[a-z/~]{1,3}", inner), 0..6).prop_map(|members| {
                        let body: Vec<String> = members
                            .into_iter()
                            .map(|(k, v)| format!("{} : {v}", serde_json::to_string(&k).unwrap()))
                            .collect();
                        format!("{{ {} }}", body.join(", "))
                    }),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever the document and the budget, the result parses, fits the budget, and
            /// is the document itself when that fits.
            #[test]
            fn the_cut_always_parses_and_fits(v in value(), budget in 2usize..600) {
                let whole = serde_json::to_string(&v).unwrap();
                let mut dropped = Vec::new();
                let (fitted, cut) = fit_value(v.clone(), budget, &mut dropped);
                let text = serde_json::to_string(&fitted).unwrap();
                prop_assert!(serde_json::from_str::<Value>(&text).is_ok());
                if whole.len() <= budget {
                    prop_assert!(!cut);
                    prop_assert_eq!(fitted, v);
                } else {
                    prop_assert!(cut);
                    prop_assert!(text.len() <= budget.max(4), "{} > {budget}: {text}", text.len());
                }
            }

            /// Cut from its bytes, an answer is what parsing it whole and cutting gives, or
            /// the raw path declines it.
            #[test]
            fn the_raw_cut_is_the_parsed_cut(text in text(), share in 0.0f64..1.2) {
                // Budgets from nothing to a little over the whole text.
                let budget = ((text.len() as f64 * share) as usize).max(2);
                let api = api("");
                if let Some(got) = raw(&api, &text, budget) {
                    prop_assert_eq!(got, classic(&api, &text, budget));
                }
            }
        }
    }
}
