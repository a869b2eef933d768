//! The audit trail: one event per call through either door and one per refusal, written as
//! hash-chained records (JSON lines, or rows of an SQLite table) by a background writer in
//! batches.
//!
//! Each line is `{"seq":N,"prev":"<hex>","hash":"<hex>","event":{…}}` where
//! `hash = SHA-256("{seq}|{prev}|{event as written}")` and `prev` is the previous line's hash
//! (64 zeros for the first record ever). Editing, dropping or reordering a line breaks the
//! chain, and `api-gateway-mcp audit verify --file PATH` names the first bad record.
//!
//! Events never hold secrets: no tokens, keys, injected credentials or signature values, and
//! query values are replaced by `*`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub mod activity;
pub mod search;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::config::{AuditConfig, AuditSink};
use crate::error::{ErrorKind, GatewayError};
use crate::types::Door;

/// What happened to one call.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 UTC with milliseconds.
    pub ts: String,
    pub request_id: String,
    /// The W3C trace id (the caller's, or one started here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub door: &'static str,
    /// The MCP tool, on the MCP door.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<std::borrow::Cow<'static, str>>,
    pub principal: String,
    pub roles: Vec<String>,
    /// The caller's key's `allowed_apis`, when it has one (for replaying the decision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_apis: Option<Vec<String>>,
    pub client_ip: Option<String>,
    pub api: String,
    pub method: String,
    /// The endpoint with query values redacted.
    pub path: String,
    pub status: u16,
    /// `allow` (reached the upstream), `deny` (refused by policy) or `error` (upstream failure).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The admission stage and the rule that refused (always recorded, whatever
    /// `security.explain_denials` lets the caller see).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The rate-limit policy that refused, or the tightest remaining count when admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// What rules in `mode = "shadow"` would have refused: `[{stage, rule, reason}]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Value>,
    /// MCP door: how the answer was shaped (`original_bytes`, `returned_chars`,
    /// `truncated`, `dropped`, and `redacted` counts by kind — never the values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shaping: Option<Value>,
    /// How the injected credential was obtained (`static`, `per_principal`,
    /// `token_exchange`, `user_oauth`); on a credential's management, `managed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_source: Option<&'static str>,
    /// The first 8 hex digits of the credential's SHA-256 — never the credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_fingerprint: Option<String>,
    /// On a credential's management: whose credential was set or deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_subject: Option<String>,
    /// What the record is about when it is not a call: `approval_requested`,
    /// `approval_decided`, `approval_consumed`, `approval_expired`; `limit_reset` (an
    /// admin reset rate-limit counters in the console); `surface_drift` and
    /// `surface_drift_critical` when an API's OpenAPI document changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'static str>,
    /// The approval a call used, or an approval event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The digest of the call an approval is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_digest: Option<String>,
    /// On `surface_drift`: the document hashes, what `on_change` did and the classified diff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surface: Option<Value>,
}

impl AuditEvent {
    /// An event for a call by `caller` (or an unidentified one), with the outcome filled in
    /// by the door.
    pub fn new(door: Door, caller: Option<&Caller>, method: &str, path: &str) -> AuditEvent {
        AuditEvent {
            ts: rfc3339_now(),
            request_id: request_id(),
            trace_id: caller.map(|c| c.trace.trace_id_hex()),
            door: door.as_str(),
            tool: None,
            principal: caller.map_or("unidentified".into(), |c| c.principal.id.clone()),
            roles: caller.map_or(Vec::new(), |c| c.principal.roles.clone()),
            allowed_apis: caller.and_then(|c| c.principal.allowed_apis.clone()),
            client_ip: caller.and_then(|c| c.client_ip).map(|ip| ip.to_string()),
            api: "none".into(),
            method: method.to_string(),
            path: redact_query(path),
            status: 0,
            decision: "allow",
            error: None,
            reason: None,
            stage: None,
            rule: None,
            rate_limit: None,
            upstream_ms: None,
            bytes_in: 0,
            bytes_out: 0,
            shaping: None,
            shadow: None,
            cost: None,
            credential_source: None,
            credential_fingerprint: None,
            credential_subject: None,
            event: None,
            approval_id: None,
            call_digest: None,
            surface: None,
        }
    }

    /// Names the caller, once identified.
    pub fn set_caller(&mut self, c: &Caller) {
        self.trace_id = Some(c.trace.trace_id_hex());
        self.principal = c.principal.id.clone();
        self.roles = c.principal.roles.clone();
        self.allowed_apis = c.principal.allowed_apis.clone();
        self.client_ip = c.client_ip.map(|ip| ip.to_string());
    }

    /// Records a refusal or failure.
    pub fn failed(&mut self, e: &GatewayError) {
        self.status = e.kind.status();
        self.decision = match e.kind {
            ErrorKind::UpstreamError | ErrorKind::UpstreamTimeout | ErrorKind::Internal => "error",
            _ => "deny",
        };
        self.error = Some(e.kind.code());
        self.reason = e.reason.map(crate::error::Reason::code);
        self.stage = e.stage.map(crate::error::Stage::as_str);
        self.rule = e.rule.clone();
        if let Some(d) = &e.rate_limit {
            self.rate_limit = Some(serde_json::json!({
                "policy": d.policy,
                "retry_after_s": crate::types::ceil_secs(d.retry_after),
            }));
        }
    }
}

/// `/a/b?x=1&token=abc` → `/a/b?x=*&token=*`.
pub fn redact_query(path: &str) -> String {
    match path.split_once('?') {
        None => path.to_string(),
        Some((p, q)) => {
            let q: Vec<String> = q
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) => format!("{k}=*"),
                    None => kv.to_string(),
                })
                .collect();
            format!("{p}?{}", q.join("&"))
        }
    }
}

pub fn request_id() -> String {
    let mut b = [0u8; 8];
    crate::trace::fill_random_id(&mut b);
    hex::encode(b)
}

/// Now as `2026-11-24T20:01:49.123Z`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339_of(secs: u64) -> String {
    rfc3339(secs, 0)
}

/// Unix seconds as fixed-width RFC 3339 UTC (civil date by Howard Hinnant's algorithm).
fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn line_hash(seq: u64, prev: &str, event: &str) -> String {
    hex::encode(Sha256::digest(format!("{seq}|{prev}|{event}").as_bytes()))
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The audit writer. Events are queued without blocking the call and written in batches by
/// a background thread; `shutdown` drains the queue.
pub struct Auditor {
    /// `None` when only the console's activity is fed (`audit.enabled = false`).
    tx: Mutex<Option<SyncSender<AuditEvent>>>,
    /// Writes records; false when this auditor only feeds `activity`.
    writes: bool,
    /// The admin console's view of recent traffic, fed the same events.
    activity: Option<std::sync::Arc<crate::audit::activity::Activity>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    healthy: std::sync::Arc<AtomicBool>,
    block: bool,
    /// Counts records that could not be queued or written, by kind.
    errors: prometheus::IntCounterVec,
}

impl Auditor {
    /// `None` when auditing is disabled and there is no console to feed. Records that
    /// cannot be queued or written are logged and counted in `errors` (by kind:
    /// `queue_full`, `write_failed`, …). With `activity`, every event also feeds it.
    pub fn start(
        cfg: &AuditConfig,
        errors: prometheus::IntCounterVec,
        activity: Option<std::sync::Arc<crate::audit::activity::Activity>>,
    ) -> Result<Option<Auditor>, String> {
        if !cfg.enabled {
            return Ok(activity.map(|activity| Auditor {
                tx: Mutex::new(None),
                writes: false,
                activity: Some(activity),
                worker: Mutex::new(None),
                healthy: std::sync::Arc::new(AtomicBool::new(true)),
                block: false,
                errors,
            }));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.buffer);
        let healthy = std::sync::Arc::new(AtomicBool::new(true));
        let mut sink = Sink::open(cfg, errors.clone())?;
        let h = healthy.clone();
        let retention = cfg.retention;
        let worker = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || sink.run(rx, &h, retention))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Some(Auditor {
            tx: Mutex::new(Some(tx)),
            writes: true,
            activity,
            worker: Mutex::new(Some(worker)),
            healthy,
            block: cfg.on_failure == crate::config::OnFailure::Block,
            errors,
        }))
    }

    /// With `audit.on_failure = "block"`, calls are refused while the sink is failing.
    pub fn admit(&self) -> Result<(), GatewayError> {
        if self.block && !self.healthy.load(Ordering::Relaxed) {
            return Err(GatewayError::new(
                ErrorKind::AuditUnavailable,
                "the audit log cannot be written, and this gateway refuses calls it cannot audit",
            ));
        }
        Ok(())
    }

    /// Queues an event. A full queue is an error that is logged and counted, never silent.
    pub fn record(&self, event: AuditEvent) {
        if let Some(a) = &self.activity {
            a.observe(&event);
        }
        if !self.writes {
            return;
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            sink_error(&self.errors, "closed");
            return;
        };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                sink_error(&self.errors, "queue_full");
                self.healthy.store(false, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => sink_error(&self.errors, "writer_stopped"),
        }
    }

    /// The console's activity this auditor feeds, if any.
    pub fn activity(&self) -> Option<&std::sync::Arc<crate::audit::activity::Activity>> {
        self.activity.as_ref()
    }

    /// Whether records are written (`audit.enabled`), not only fed to the console.
    pub fn writes(&self) -> bool {
        self.writes
    }

    /// Writes every queued event and stops the writer.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }
}

fn sink_error(errors: &prometheus::IntCounterVec, kind: &'static str) {
    errors.with_label_values(&[kind]).inc();
    tracing::error!(kind, "audit record could not be written");
}

enum Target {
    Stdout,
    File(PathBuf),
    /// The connection is opened by the writer thread (a connection is not shared).
    Sqlite(PathBuf, Option<rusqlite::Connection>),
}

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS audit (
    seq   INTEGER PRIMARY KEY,
    prev  TEXT NOT NULL,
    hash  TEXT NOT NULL,
    ts    TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);";

fn open_sqlite(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    conn.execute_batch(SQLITE_SCHEMA)?;
    Ok(conn)
}

struct Sink {
    target: Target,
    seq: u64,
    prev: String,
    errors: prometheus::IntCounterVec,
}

impl Sink {
    fn open(cfg: &AuditConfig, errors: prometheus::IntCounterVec) -> Result<Sink, String> {
        let target = match &cfg.sink {
            AuditSink::Stdout => Target::Stdout,
            AuditSink::File(p) => Target::File(p.clone()),
            AuditSink::Sqlite(p) => Target::Sqlite(p.clone(), None),
        };
        // Continue the chain of an existing file or database.
        let (seq, prev) = match &target {
            Target::File(p) => last_link(p)?,
            Target::Sqlite(p, _) => {
                let conn =
                    open_sqlite(p).map_err(|e| format!("audit.path {}: {e}", p.display()))?;
                conn.query_row(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
                )
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_string())),
                    e => Err(format!("audit.path {}: {e}", p.display())),
                })?
            }
            Target::Stdout => (0, GENESIS.to_string()),
        };
        Ok(Sink {
            target,
            seq,
            prev,
            errors,
        })
    }

    fn run(&mut self, rx: Receiver<AuditEvent>, healthy: &AtomicBool, retention: Option<Duration>) {
        let mut last_purge = std::time::Instant::now() - Duration::from_secs(3600);
        loop {
            if let Some(r) = retention {
                if last_purge.elapsed() >= Duration::from_secs(3600) {
                    last_purge = std::time::Instant::now();
                    let purged = match &mut self.target {
                        Target::File(p) => purge(p, r),
                        Target::Sqlite(p, conn) => purge_sqlite(p, conn, r),
                        Target::Stdout => Ok(()),
                    };
                    if let Err(e) = purged {
                        tracing::error!(error = %e, "audit retention purge failed");
                        sink_error(&self.errors, "purge_failed");
                    }
                }
            }
            let first = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(e) => e,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            match self.write(&batch) {
                Ok(()) => {
                    if !healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!("the audit sink is writable again");
                    }
                }
                Err(e) => {
                    if healthy.swap(false, Ordering::Relaxed) {
                        let sink = match &self.target {
                            Target::File(p) | Target::Sqlite(p, _) => p.display().to_string(),
                            Target::Stdout => "stdout".to_string(),
                        };
                        tracing::error!(sink = %sink, error = %e, "the audit sink failed");
                    }
                    for _ in &batch {
                        sink_error(&self.errors, "write_failed");
                    }
                }
            }
        }
    }

    fn write(&mut self, batch: &[AuditEvent]) -> std::io::Result<()> {
        let mut out = String::new();
        let mut rows = Vec::with_capacity(batch.len());
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        for e in batch {
            let event = serde_json::to_string(&serde_json::to_value(e)?)?;
            seq += 1;
            let hash = line_hash(seq, &prev, &event);
            out.push_str(&format!(
                "{{\"seq\":{seq},\"prev\":\"{prev}\",\"hash\":\"{hash}\",\"event\":{event}}}\n"
            ));
            rows.push((seq, prev.clone(), hash.clone(), e.ts.clone(), event));
            prev = hash;
        }
        match &mut self.target {
            Target::Sqlite(p, conn) => {
                let io = |e: rusqlite::Error| std::io::Error::other(e.to_string());
                if conn.is_none() {
                    *conn = Some(open_sqlite(p).map_err(io)?);
                }
                let c = conn.as_mut().expect("opened above");
                let result = (|| {
                    let tx = c.transaction()?;
                    {
                        let mut stmt = tx.prepare_cached(
                            "INSERT INTO audit (seq, prev, hash, ts, event) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?;
                        for (seq, prev, hash, ts, event) in &rows {
                            stmt.execute(rusqlite::params![*seq as i64, prev, hash, ts, event])?;
                        }
                    }
                    tx.commit()
                })();
                if let Err(e) = result {
                    // Reopen on the next batch.
                    *conn = None;
                    return Err(io(e));
                }
            }
            Target::Stdout => {
                let mut s = std::io::stdout().lock();
                s.write_all(out.as_bytes())?;
                s.flush()?;
            }
            Target::File(p) => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                f.write_all(out.as_bytes())?;
                f.flush()?;
            }
        }
        // Only a written batch advances the chain.
        self.seq = seq;
        self.prev = prev;
        Ok(())
    }
}

/// The sequence number and hash of the last record in an existing file.
fn last_link(path: &Path) -> Result<(u64, String), String> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, GENESIS.into())),
        Err(e) => return Err(format!("audit.path {}: {e}", path.display())),
    };
    let mut last = None;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| format!("audit.path {}: {e}", path.display()))?;
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    match last {
        None => Ok((0, GENESIS.into())),
        Some(l) => {
            let v: Value = serde_json::from_str(&l).map_err(|_| {
                format!(
                    "audit.path {}: the last line is not an audit record; move the file aside",
                    path.display()
                )
            })?;
            Ok((
                v["seq"].as_u64().unwrap_or(0),
                v["hash"].as_str().unwrap_or(GENESIS).to_string(),
            ))
        }
    }
}

/// Drops records older than `retention` from the head of the file. The first kept record
/// still names its (purged) predecessor, which `verify` reports as the chain's anchor.
fn purge(path: &Path, retention: Duration) -> std::io::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let cutoff = (SystemTime::now() - retention)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Timestamps are fixed-width RFC 3339, so they compare as strings.
    let cutoff_ts = rfc3339(cutoff, 0);
    let lines: Vec<&str> = text.lines().collect();
    let keep_from = lines
        .iter()
        .position(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["event"]["ts"].as_str().map(|t| t >= cutoff_ts.as_str()))
                .unwrap_or(true)
        })
        .unwrap_or(lines.len());
    if keep_from == 0 {
        return Ok(());
    }
    let tmp = path.with_extension("purge.tmp");
    let mut out = lines[keep_from..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, path)
}

fn purge_sqlite(
    path: &Path,
    conn: &mut Option<rusqlite::Connection>,
    retention: Duration,
) -> std::io::Result<()> {
    let io = |e: rusqlite::Error| std::io::Error::other(e.to_string());
    if conn.is_none() {
        *conn = Some(open_sqlite(path).map_err(io)?);
    }
    let cutoff = (SystemTime::now() - retention)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    conn.as_ref()
        .expect("opened above")
        .execute("DELETE FROM audit WHERE ts < ?1", [rfc3339(cutoff, 0)])
        .map(|_| ())
        .map_err(io)
}

/// The result of checking a chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record links to the one before; `first_seq` > 1 means older records were purged.
    Intact { records: u64, first_seq: u64 },
    /// The first record that does not fit, and why.
    Broken {
        line: usize,
        seq: Option<u64>,
        why: String,
    },
}

/// Checks a JSON-lines audit file.
pub fn verify_file(path: &Path) -> Result<Verdict, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(verify_lines(text.lines()))
}

pub fn verify_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Verdict {
    let records = lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let n = i + 1;
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                return Err((n, None, "not a JSON audit record"));
            };
            let (Some(seq), Some(prev), Some(hash)) =
                (v["seq"].as_u64(), v["prev"].as_str(), v["hash"].as_str())
            else {
                return Err((n, None, "missing seq, prev or hash"));
            };
            // The hash covers the event's bytes exactly as written (the last member of the line),
            // so no re-serialisation (float formatting, key order) can change it.
            let event = match (line.find(",\"event\":"), line.trim_end().strip_suffix('}')) {
                (Some(at), Some(body)) if at + 9 <= body.len() => body[at + 9..].to_string(),
                _ => return Err((n, Some(seq), "unreadable event")),
            };
            Ok(Record {
                position: n,
                seq,
                prev: prev.to_string(),
                hash: hash.to_string(),
                event,
            })
        });
    verify_records(records)
}

/// Checks an SQLite audit database, in row order (`rowid` = `seq`, as written).
pub fn verify_sqlite(path: &Path) -> Result<Verdict, String> {
    if !path.exists() {
        return Err(format!("{}: no such file", path.display()));
    }
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut stmt = conn
        .prepare("SELECT seq, prev, hash, event FROM audit ORDER BY rowid")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let rows: Vec<Record> = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(|e| format!("{}: {e}", path.display()))?
        .enumerate()
        .map(|(i, r)| {
            r.map(|(seq, prev, hash, event)| Record {
                position: i + 1,
                seq: seq as u64,
                prev,
                hash,
                event,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(verify_records(rows.into_iter().map(Ok)))
}

/// One stored record, with its position (line or row number) in the store.
struct Record {
    position: usize,
    seq: u64,
    prev: String,
    hash: String,
    event: String,
}

type Unreadable = (usize, Option<u64>, &'static str);

fn verify_records(records: impl Iterator<Item = Result<Record, Unreadable>>) -> Verdict {
    let mut last: Option<(u64, String)> = None;
    let mut first_seq = 0;
    let mut count = 0;
    for r in records {
        let r = match r {
            Ok(r) => r,
            Err((line, seq, why)) => {
                return Verdict::Broken {
                    line,
                    seq,
                    why: why.to_string(),
                }
            }
        };
        let broken = |why: String| Verdict::Broken {
            line: r.position,
            seq: Some(r.seq),
            why,
        };
        if line_hash(r.seq, &r.prev, &r.event) != r.hash {
            return broken("the record was edited: its hash does not match".into());
        }
        match &last {
            None => {
                first_seq = r.seq;
                if r.seq == 1 && r.prev != GENESIS {
                    return broken("the first record does not start a chain".into());
                }
            }
            Some((pseq, phash)) => {
                if r.seq != pseq + 1 {
                    return broken(format!(
                        "expected record {} here: records were dropped or reordered",
                        pseq + 1
                    ));
                }
                if r.prev != *phash {
                    return broken("it does not link to the record before it".into());
                }
            }
        }
        last = Some((r.seq, r.hash));
        count += 1;
    }
    Verdict::Intact {
        records: count,
        first_seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_redacted() {
        assert_eq!(
            redact_query("/a?x=1&appid=SECRET&flag"),
            "/a?x=*&appid=*&flag"
        );
        assert_eq!(redact_query("/a"), "/a");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_552_909, 0), "2026-11-24T20:41:49.000Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_now().len(), 24);
    }

    fn event_at(ts: &str) -> AuditEvent {
        let mut e = AuditEvent::new(Door::Proxy, None, "GET", "/local/x?k=v");
        e.ts = ts.to_string();
        e
    }

    fn test_errors() -> prometheus::IntCounterVec {
        prometheus::IntCounterVec::new(prometheus::Opts::new("audit_errors", "test"), &["kind"])
            .unwrap()
    }

    #[test]
    fn chain_continues_across_restarts_and_survives_a_retention_purge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = AuditConfig {
            enabled: true,
            sink: AuditSink::File(path.clone()),
            retention: None,
            on_failure: crate::config::OnFailure::Continue,
            buffer: 10,
        };
        let mut sink = Sink::open(&cfg, test_errors()).unwrap();
        sink.write(&[
            event_at("2020-01-01T00:00:00.000Z"),
            event_at("2020-01-02T00:00:00.000Z"),
        ])
        .unwrap();
        // A restart continues the same chain.
        let mut sink = Sink::open(&cfg, test_errors()).unwrap();
        assert_eq!(sink.seq, 2);
        sink.write(&[event_at(&rfc3339_now()), event_at(&rfc3339_now())])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            verify_lines(text.lines()),
            Verdict::Intact {
                records: 4,
                first_seq: 1
            }
        );
        assert!(!text.contains("k=v"), "query values are redacted");

        purge(&path, Duration::from_secs(86_400)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            verify_lines(text.lines()),
            Verdict::Intact {
                records: 2,
                first_seq: 3
            },
            "old records are purged and the rest of the chain still verifies"
        );
    }
}
