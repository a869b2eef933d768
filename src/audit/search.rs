//! Audit search, for the console and scripts: records newest first, filtered by principal,
//! API, decision, rule and time, a page at a time with a cursor (the `seq` to continue
//! below). A JSON-lines file is read backwards in blocks from its end, so a page costs
//! what it reads, not the file; an SQLite database is queried by `seq`. Lines that cannot
//! match are skipped on a substring test before any JSON is parsed.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

use crate::config::AuditSink;

/// Most records one page returns.
pub const MAX_PAGE: usize = 500;
const BLOCK: u64 = 1 << 20;

/// What to look for; every field that is set must match.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub principal: Option<String>,
    pub api: Option<String>,
    /// `allow`, `deny`, `error`, or `shadow` (a rule in shadow mode would have refused).
    pub decision: Option<String>,
    /// The refusing rule, or a shadow rule that would have refused.
    pub rule: Option<String>,
    /// RFC 3339 bounds on the event's `ts` (inclusive).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Only records with a smaller `seq` (the previous page's `next`).
    pub before: Option<u64>,
    pub limit: usize,
}

/// One page of matches, newest first.
pub struct Page {
    /// Whole records: `{seq, prev, hash, event}`.
    pub records: Vec<Value>,
    /// The cursor for the next page, when there may be one.
    pub next: Option<u64>,
    /// Records read to make this page.
    pub scanned: u64,
}

impl Query {
    /// Substrings a matching line must contain (JSON-encoded values), tested before parsing.
    fn needles(&self) -> Vec<String> {
        let enc = |k: &str, v: &str| format!("\"{k}\":{}", Value::from(v));
        let mut n = Vec::new();
        if let Some(p) = &self.principal {
            n.push(enc("principal", p));
        }
        if let Some(a) = &self.api {
            n.push(enc("api", a));
        }
        if let Some(r) = &self.rule {
            n.push(enc("rule", r));
        }
        match self.decision.as_deref() {
            Some("shadow") => n.push("\"shadow\":".into()),
            Some(d) => n.push(enc("decision", d)),
            None => {}
        }
        n
    }

    /// Whether a record's event matches every set field.
    pub fn matches(&self, e: &Value) -> bool {
        let is = |k: &str, want: &Option<String>| want.as_ref().is_none_or(|w| e[k] == w.as_str());
        let shadow = e["shadow"].as_array();
        let decision = match self.decision.as_deref() {
            None => true,
            Some("shadow") => shadow.is_some_and(|s| !s.is_empty()),
            Some(d) => e["decision"] == d,
        };
        let rule = self.rule.as_ref().is_none_or(|r| {
            e["rule"] == r.as_str()
                || shadow.is_some_and(|s| s.iter().any(|x| x["rule"] == r.as_str()))
        });
        let ts = e["ts"].as_str().unwrap_or("");
        is("principal", &self.principal)
            && is("api", &self.api)
            && decision
            && rule
            && self.since.as_ref().is_none_or(|s| ts >= s.as_str())
            && self.until.as_ref().is_none_or(|u| ts <= u.as_str())
    }
}

/// One page of `q` from the configured sink.
pub fn search(sink: &AuditSink, q: &Query) -> Result<Page, String> {
    let limit = q.limit.clamp(1, MAX_PAGE);
    let mut page = Page {
        records: Vec::new(),
        next: None,
        scanned: 0,
    };
    scan(sink, q, |seq, record| {
        page.scanned += 1;
        if let Some(r) = record {
            page.records.push(r);
            if page.records.len() == limit {
                page.next = Some(seq);
                return false;
            }
        }
        true
    })?;
    Ok(page)
}

/// Visits records newest first below `q.before`: `f(seq, Some(record))` for a match,
/// `f(seq, None)` for a record read and passed over; `f` returns false to stop.
pub fn scan(
    sink: &AuditSink,
    q: &Query,
    mut f: impl FnMut(u64, Option<Value>) -> bool,
) -> Result<(), String> {
    let needles = q.needles();
    let mut visit = |seq: u64, line: &str| -> bool {
        if q.before.is_some_and(|b| seq >= b) {
            return true;
        }
        if !needles.iter().all(|n| line.contains(n.as_str())) {
            return f(seq, None);
        }
        match serde_json::from_str::<Value>(line) {
            Ok(r) if q.matches(&r["event"]) => f(seq, Some(r)),
            _ => f(seq, None),
        }
    };
    match sink {
        AuditSink::File(p) => scan_file(p, &mut visit),
        AuditSink::Sqlite(p) => scan_sqlite(p, q, &mut visit),
        AuditSink::Stdout => Err(
            "audit records go to stdout; search needs audit.sink = \"file\" or \"sqlite\"".into(),
        ),
    }
}

/// The `seq` at the start of a record line, read without parsing the line.
fn seq_of(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

fn scan_file(path: &Path, visit: &mut dyn FnMut(u64, &str) -> bool) -> Result<(), String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut pos = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    // The start of a line whose beginning is in an earlier block.
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = Vec::new();
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK);
        buf.clear();
        buf.resize((pos - start) as usize, 0);
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        buf.extend_from_slice(&carry);
        pos = start;
        let mut end = buf.len();
        // Lines from the block's end back to its first newline; what precedes that first
        // newline is completed by the next block (unless this is the file's start).
        while let Some(nl) = buf[..end].iter().rposition(|&b| b == b'\n') {
            let line = &buf[nl + 1..end];
            end = nl;
            if !emit(line, visit) {
                return Ok(());
            }
        }
        carry = buf[..end].to_vec();
    }
    emit(&carry, visit);
    Ok(())
}

fn emit(line: &[u8], visit: &mut dyn FnMut(u64, &str) -> bool) -> bool {
    let Ok(line) = std::str::from_utf8(line) else {
        return true;
    };
    match seq_of(line.trim_end_matches('\r')) {
        Some(seq) => visit(seq, line),
        None => true,
    }
}

fn scan_sqlite(
    path: &Path,
    q: &Query,
    visit: &mut dyn FnMut(u64, &str) -> bool,
) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    let needles = q.needles();
    let mut sql = String::from("SELECT seq, prev, hash, event FROM audit WHERE seq < ?1");
    for i in 0..needles.len() {
        sql.push_str(&format!(" AND instr(event, ?{}) > 0", i + 2));
    }
    sql.push_str(" ORDER BY seq DESC LIMIT 1000");
    let mut stmt = conn.prepare(&sql).map_err(|e| e.to_string())?;
    let mut below = q.before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64) as i64;
    loop {
        let mut params: Vec<&dyn rusqlite::ToSql> = vec![&below];
        for n in &needles {
            params.push(n);
        }
        let rows: Vec<(i64, String, String, String)> = stmt
            .query_map(params.as_slice(), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| e.to_string())?;
        let Some(last) = rows.last().map(|r| r.0) else {
            return Ok(());
        };
        for (seq, prev, hash, event) in &rows {
            let line = format!(
                "{{\"seq\":{seq},\"prev\":\"{prev}\",\"hash\":\"{hash}\",\"event\":{event}}}"
            );
            if !visit(*seq as u64, &line) {
                return Ok(());
            }
        }
        below = last;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record line as the writer lays it out (`seq` first).
    fn line(seq: u64, principal: &str, decision: &str, rule: Option<&str>, pad: &str) -> String {
        let event = json!({
            "ts": format!("2026-12-01T00:00:{:02}.000Z", seq % 60),
            "principal": principal, "api": "w", "decision": decision, "rule": rule, "pad": pad,
        });
        format!("{{\"seq\":{seq},\"prev\":\"p\",\"hash\":\"h\",\"event\":{event}}}")
    }

    #[test]
    fn pages_run_newest_first_across_blocks_with_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let mut text = String::new();
        // Long lines so the file spans several read blocks.
        let pad = "x".repeat(3000);
        for seq in 1..=1000u64 {
            let who = if seq % 3 == 0 { "key:ci" } else { "jwt:alice" };
            let decision = if seq % 10 == 0 { "deny" } else { "allow" };
            text.push_str(&line(seq, who, decision, Some("rbac.x"), &pad));
            text.push('\n');
        }
        std::fs::write(&p, &text).unwrap();
        let sink = AuditSink::File(p);
        let q = Query {
            principal: Some("key:ci".into()),
            decision: Some("deny".into()),
            limit: 10,
            ..Query::default()
        };
        let page = search(&sink, &q).unwrap();
        let seqs: Vec<u64> = page
            .records
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (0..10).map(|i| 990 - 30 * i).collect::<Vec<_>>());
        let next = search(
            &sink,
            &Query {
                before: page.next,
                ..q.clone()
            },
        )
        .unwrap();
        assert_eq!(next.records[0]["seq"], 690);
        // Everything: 1000 records, the last page has no cursor.
        let mut all = 0;
        let mut before = None;
        loop {
            let p = search(
                &sink,
                &Query {
                    before,
                    limit: 500,
                    ..Query::default()
                },
            )
            .unwrap();
            all += p.records.len();
            if p.next.is_none() {
                break;
            }
            before = p.next;
        }
        assert_eq!(all, 1000);
    }

    #[test]
    fn shadow_rules_and_time_bounds_match() {
        let e = json!({"ts": "2026-12-01T10:00:00.000Z", "decision": "allow",
            "shadow": [{"rule": "rbac.new", "stage": "rbac"}]});
        let q = |f: fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q.matches(&e)
        };
        assert!(q(|q| q.decision = Some("shadow".into())));
        assert!(q(|q| q.rule = Some("rbac.new".into())));
        assert!(!q(|q| q.rule = Some("rbac.old".into())));
        assert!(q(|q| q.since = Some("2026-12-01T09:00:00Z".into())));
        assert!(!q(|q| q.until = Some("2026-12-01T09:00:00Z".into())));
    }
}
