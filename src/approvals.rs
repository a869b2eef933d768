//! Approval records: the server-side, authoritative state of calls that wait for a person
//! (`[[approvals]]`). A record names the exact call (a digest of its API, method, endpoint,
//! query, forwarded headers and body), the caller, the rules' version, and moves once along
//! pending → approved | denied | expired, and approved → consumed. Every move is a
//! compare-and-set, so an approval runs its call once even when many replicas race for it
//! (Redis, when `[rate_limits]` uses Redis; else this process's memory).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::{Api, ApprovalRule, Config, Webhook};
use crate::egress::{Egress, OutboundRequest};
use crate::kv::RedisHandle;

/// Unix seconds now.
fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Consumed => "consumed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Approved,
            Status::Denied,
            Status::Expired,
            Status::Consumed,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// One approval request and its fate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// The `[[approvals]]` rule's id.
    pub rule: String,
    pub mode: String,
    pub principal: String,
    pub api: String,
    pub method: String,
    pub endpoint: String,
    /// SHA-256 (hex) of the whole canonical call.
    pub digest: String,
    /// SHA-256 (hex) of the body alone, and its length: a streamed body is checked against
    /// them.
    pub body_sha256: String,
    pub body_len: u64,
    /// The approval rules' version the request was made under.
    pub version: String,
    /// What the approver is shown (redacted).
    pub summary: Value,
    pub created: u64,
    /// Until when a pending request waits.
    pub expires: u64,
    /// Until when an approval may be used (set when approved).
    pub grant_expires: Option<u64>,
    /// How long an approval may be used, from its decision.
    pub grant_ttl_s: u64,
    pub status: Status,
    pub decided_by: Option<String>,
    pub decided_at: Option<u64>,
    pub reason: Option<String>,
}

impl Record {
    /// The status as of now: a pending request past its wait, or an approval past its use
    /// window, is expired.
    pub fn effective(&self, now: u64) -> Status {
        match self.status {
            Status::Pending if now >= self.expires => Status::Expired,
            Status::Approved if self.grant_expires.is_some_and(|g| now >= g) => Status::Expired,
            s => s,
        }
    }

    /// The record as the admin API and the webhook show it.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "rule": self.rule,
            "mode": self.mode,
            "principal": self.principal,
            "api": self.api,
            "method": self.method,
            "endpoint": self.endpoint,
            "digest": self.digest,
            "summary": self.summary,
            "status": self.effective(now_s()).as_str(),
            "created": crate::audit::rfc3339_of(self.created),
            "expires": crate::audit::rfc3339_of(self.expires),
            "grant_expires": self.grant_expires.map(crate::audit::rfc3339_of),
            "decided_by": self.decided_by,
            "reason": self.reason,
        })
    }
}

/// The canonical description of a call, digested: what an approval is bound to.
pub struct CallShape<'a> {
    pub api: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The query as sent (`("?", raw)`), then extra pairs, in order.
    pub query: Vec<(String, String)>,
    /// Headers that go upstream, lower-case names, in the order they came (values that are
    /// not UTF-8 as `hex:…`).
    pub headers: Vec<(String, String)>,
}

/// Headers that differ between two sendings of the same call and change nothing upstream.
const VOLATILE: &[&str] = &[
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "traceparent",
    "tracestate",
    "approval-id",
    "connection",
    "content-length",
    "host",
    "x-request-id",
];

impl CallShape<'_> {
    /// SHA-256 (hex) of the call with a body of digest `body_sha256`.
    pub fn digest(&self, body_sha256: &str) -> String {
        digest_of(&self.canonical(), body_sha256)
    }

    /// The call without its body, canonically written: the API, method, path, the query as
    /// sent and the headers in their order (less those that vary between sendings), as JSON.
    pub fn canonical(&self) -> String {
        let headers: Vec<&(String, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
            .collect();
        json!([self.api, self.method, self.path, self.query, headers]).to_string()
    }
}

/// SHA-256 (hex) of a canonical call and its body's digest.
pub fn digest_of(canonical: &str, body_sha256: &str) -> String {
    let mut h = Sha256::new();
    h.update(canonical.as_bytes());
    h.update(b"\n");
    h.update(body_sha256.as_bytes());
    hex::encode(h.finalize())
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

enum Backend {
    Memory(Mutex<Memory>),
    Redis(RedisHandle),
}

#[derive(Default)]
struct Memory {
    records: HashMap<String, Record>,
    /// (principal, digest) → the newest request's id.
    by_call: HashMap<(String, String), String>,
}

/// Moves a record from one status to another, atomically: the script returns the status it
/// found when that is not the expected one.
const CAS: &str = r#"
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s ~= ARGV[1] then return s end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'json', ARGV[3])
return 'ok'
"#;

/// The approval records, and what announces new ones.
pub struct ApprovalStore {
    backend: Backend,
    egress: Arc<Egress>,
}

/// Approval records held in memory at most (one replica without Redis).
const MAX_MEMORY_RECORDS: usize = 10_000;

/// How long a record is kept after it can no longer change.
const KEEP: Duration = Duration::from_secs(24 * 3600);

impl ApprovalStore {
    /// Redis when the rate limiter uses it, else memory.
    pub fn new(config: &Config, egress: Arc<Egress>) -> Result<ApprovalStore, String> {
        let backend = match &config.rate_limits.redis {
            Some(r) if matches!(r.topology, crate::config::Topology::Standalone) => Backend::Redis(
                RedisHandle::open(&r.url, "agm:approval:", "approval-store")?,
            ),
            _ => Backend::Memory(Mutex::new(Memory::default())),
        };
        Ok(ApprovalStore { backend, egress })
    }

    /// Stores a new request and indexes it by caller and call.
    pub async fn create(&self, rec: &Record) -> Result<(), String> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                let now = now_s();
                if m.records.len() >= MAX_MEMORY_RECORDS {
                    // Ended requests go first (with their index entries); if all still live,
                    // no new one is taken: memory stays bounded.
                    m.records.retain(|_, r| {
                        matches!(r.effective(now), Status::Pending | Status::Approved)
                    });
                    let Memory { records, by_call } = &mut *m;
                    by_call.retain(|_, id| records.contains_key(id));
                    if m.records.len() >= MAX_MEMORY_RECORDS {
                        return Err(format!(
                            "{MAX_MEMORY_RECORDS} approval requests are open; no more are taken until some end"
                        ));
                    }
                }
                m.by_call
                    .insert((rec.principal.clone(), rec.digest.clone()), rec.id.clone());
                m.records.insert(rec.id.clone(), rec.clone());
                Ok(())
            }
            Backend::Redis(r) => {
                let key = r.key(&rec.id);
                let index = r.key(&format!("by:{}:{}", rec.principal, rec.digest));
                let all = r.key("all");
                let json = serde_json::to_string(rec).map_err(|e| e.to_string())?;
                let (id, created, status) = (rec.id.clone(), rec.created, rec.status.as_str());
                let keep = (rec.expires.saturating_sub(now_s()) + KEEP.as_secs()) as i64;
                r.run(move |mut c| async move {
                    redis::pipe()
                        .atomic()
                        .cmd("HSET")
                        .arg(&key)
                        .arg("status")
                        .arg(status)
                        .arg("json")
                        .arg(json)
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&key)
                        .arg(keep)
                        .ignore()
                        .cmd("SET")
                        .arg(&index)
                        .arg(&id)
                        .arg("EX")
                        .arg(keep)
                        .ignore()
                        .cmd("ZADD")
                        .arg(&all)
                        .arg(created)
                        .arg(&id)
                        .ignore()
                        // Ids whose records have expired away leave the list too.
                        .cmd("ZREMRANGEBYSCORE")
                        .arg(&all)
                        .arg("-inf")
                        .arg(created.saturating_sub(KEEP.as_secs() + 3600))
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Record>, String> {
        match &self.backend {
            Backend::Memory(m) => Ok(m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .records
                .get(id)
                .cloned()),
            Backend::Redis(r) => {
                let key = r.key(id);
                let got: Option<(Option<String>, Option<String>)> = r
                    .run(move |mut c| async move {
                        redis::cmd("HMGET")
                            .arg(key)
                            .arg("status")
                            .arg("json")
                            .query_async(&mut c)
                            .await
                    })
                    .await?;
                Ok(got.and_then(|(status, json)| {
                    let mut rec: Record = serde_json::from_str(&json?).ok()?;
                    rec.status = Status::parse(&status?)?;
                    Some(rec)
                }))
            }
        }
    }

    /// The newest request by `principal` for the call with `digest`.
    pub async fn find(&self, principal: &str, digest: &str) -> Result<Option<Record>, String> {
        let id = match &self.backend {
            Backend::Memory(m) => m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .by_call
                .get(&(principal.to_string(), digest.to_string()))
                .cloned(),
            Backend::Redis(r) => {
                let index = r.key(&format!("by:{principal}:{digest}"));
                r.run(move |mut c| async move {
                    redis::cmd("GET").arg(index).query_async(&mut c).await
                })
                .await?
            }
        };
        match id {
            Some(id) => self.get(&id).await,
            None => Ok(None),
        }
    }

    /// Moves `rec` from `from` to `next.status`, storing `next`; `Err` holds the status found
    /// instead (`None`: no such record).
    pub async fn transition(
        &self,
        from: Status,
        next: &Record,
    ) -> Result<Result<(), Option<Status>>, String> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                match m.records.get_mut(&next.id) {
                    Some(r) if r.status == from => {
                        *r = next.clone();
                        Ok(Ok(()))
                    }
                    Some(r) => Ok(Err(Some(r.status))),
                    None => Ok(Err(None)),
                }
            }
            Backend::Redis(r) => {
                let key = r.key(&next.id);
                let json = serde_json::to_string(next).map_err(|e| e.to_string())?;
                let (from, to) = (from.as_str(), next.status.as_str());
                let out: String = r
                    .run(move |mut c| async move {
                        redis::Script::new(CAS)
                            .key(key)
                            .arg(from)
                            .arg(to)
                            .arg(json)
                            .invoke_async(&mut c)
                            .await
                    })
                    .await?;
                Ok(match out.as_str() {
                    "ok" => Ok(()),
                    "missing" => Err(None),
                    s => Err(Status::parse(s)),
                })
            }
        }
    }

    /// Every record (newest first), at most `limit`.
    pub async fn list(&self, limit: usize) -> Result<Vec<Record>, String> {
        match &self.backend {
            Backend::Memory(m) => {
                let m = m.lock().unwrap_or_else(|e| e.into_inner());
                let mut all: Vec<Record> = m.records.values().cloned().collect();
                all.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
                all.truncate(limit);
                Ok(all)
            }
            Backend::Redis(r) => {
                let all = r.key("all");
                let ids: Vec<String> = r
                    .run(move |mut c| async move {
                        redis::cmd("ZREVRANGE")
                            .arg(all)
                            .arg(0)
                            .arg(limit.saturating_sub(1) as i64)
                            .query_async(&mut c)
                            .await
                    })
                    .await?;
                let mut out = Vec::new();
                for id in ids {
                    if let Some(rec) = self.get(&id).await? {
                        out.push(rec);
                    }
                }
                Ok(out)
            }
        }
    }

    /// Announces a new request to the rule's webhook: a POST of the record, signed with
    /// HMAC-SHA256 over `{timestamp}.{body}`. Sent in the background; a failure is logged.
    pub fn announce(&self, webhook: &Webhook, rec: &Record, link: String) {
        let mut body = rec.json();
        body["link"] = json!(link);
        let body = body.to_string();
        let ts = now_s().to_string();
        let signature = {
            use hmac::Mac;
            let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(webhook.secret.as_bytes())
                .expect("HMAC takes any key length");
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(body.as_bytes());
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        };
        let target = match Api::internal(
            "approval-webhook",
            &webhook.url,
            webhook.allow_private_network,
            webhook.timeout,
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "approval webhook URL unusable");
                return;
            }
        };
        let path = url::Url::parse(&webhook.url)
            .map(|u| match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_string(),
            })
            .unwrap_or_else(|_| "/".into());
        let egress = self.egress.clone();
        let id = rec.id.clone();
        tokio::spawn(async move {
            let header = |k: &'static str, v: &str| {
                http::HeaderValue::from_str(v)
                    .ok()
                    .map(|v| (http::HeaderName::from_static(k), v))
            };
            let headers = [
                header("content-type", "application/json"),
                header("x-signature-timestamp", &ts),
                header("x-signature", &signature),
                header("x-approval-id", &id),
            ]
            .into_iter()
            .flatten()
            .collect();
            let sent = egress
                .fetch(
                    &target,
                    OutboundRequest {
                        method: http::Method::POST,
                        path_and_query: path,
                        headers,
                        body: Some(bytes::Bytes::from(body)),
                    },
                    64 << 10,
                )
                .await;
            match sent {
                Ok(r) if (200..300).contains(&r.status) => {}
                Ok(r) => {
                    tracing::warn!(approval = %id, status = r.status, "approval webhook refused")
                }
                Err(e) => {
                    tracing::warn!(approval = %id, error = %e.message, "approval webhook failed")
                }
            }
        });
    }
}

/// A fresh approval id: `apr_` and 16 random hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 8];
    crate::trace::fill_random_id(&mut b);
    format!("apr_{}", hex::encode(b))
}

/// A new pending request for a call matched by `rule`.
#[allow(clippy::too_many_arguments)]
pub fn request(
    rule: &ApprovalRule,
    version: &str,
    principal: &str,
    api: &str,
    method: &str,
    endpoint: &str,
    digest: String,
    body_sha256: String,
    body_len: u64,
    summary: Value,
) -> Record {
    let now = now_s();
    Record {
        id: new_id(),
        rule: rule.id.clone(),
        mode: rule.mode.as_str().to_string(),
        principal: principal.to_string(),
        api: api.to_string(),
        method: method.to_string(),
        endpoint: endpoint.to_string(),
        digest,
        body_sha256,
        body_len,
        version: version.to_string(),
        summary,
        created: now,
        expires: now + rule.ttl.as_secs(),
        grant_expires: None,
        grant_ttl_s: rule.grant_ttl.as_secs(),
        status: Status::Pending,
        decided_by: None,
        decided_at: None,
        reason: None,
    }
}
