//! Recent activity for the admin console, kept in memory while `[admin] console = true`:
//! counts per API and per principal × API in minute slots (the last hour) and hour slots
//! (the last 7 days), upstream latency histograms per API, and the live stream of
//! decisions (refusals, shadow refusals, approvals) with the last [`RECENT`] of them kept
//! whole for their explain.
//!
//! It is fed by the audit writer ([`super::Auditor::record`]) with the same events
//! the audit trail gets, so a call is counted once and the console says what the trail
//! says. Figures are this process's since it started (each replica has its own).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::AuditEvent;

/// Decisions kept whole for their explain.
pub const RECENT: usize = 1000;
/// Decisions a stream subscriber may fall behind before the oldest are dropped.
pub const STREAM_BUFFER: usize = 256;
/// Principal × API pairs counted apart; further pairs are counted under `(others)`.
pub const MAX_PAIRS: usize = 1000;

/// Upper bounds (ms) of the latency histogram's buckets: 0.1 ms × 1.25ⁱ, up to ~2 min.
const BUCKETS: usize = 64;

fn bucket_of(ms: f64) -> usize {
    if ms <= 0.1 {
        return 0;
    }
    (((ms / 0.1).ln() / 1.25f64.ln()).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_upper(i: usize) -> f64 {
    0.1 * 1.25f64.powi(i as i32)
}

/// What a set of calls came to.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Every call: admitted, refused or failed.
    pub calls: u64,
    pub refusals: u64,
    /// Admitted calls whose upstream failed (or timed out).
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cost: f64,
}

impl Counts {
    /// Adds `o`'s counts to these.
    pub fn add(&mut self, o: &Counts) {
        self.calls += o.calls;
        self.refusals += o.refusals;
        self.errors += o.errors;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.cost += o.cost;
    }

    pub fn json(&self) -> Value {
        json!({
            "calls": self.calls,
            "refusals": self.refusals,
            "errors": self.errors,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "cost": (self.cost * 1e6).round() / 1e6,
        })
    }
}

#[derive(Clone, Default)]
struct Slot {
    /// The minute (or hour) since the epoch this slot counts; a slot of an older one is stale.
    at: u64,
    counts: Counts,
    latency: Option<Box<[u32; BUCKETS]>>,
}

/// One series: 60 minute slots and 168 hour slots, rings indexed by time.
#[derive(Clone)]
struct Series {
    minutes: Vec<Slot>,
    hours: Vec<Slot>,
}

impl Series {
    fn new() -> Series {
        Series {
            minutes: vec![Slot::default(); 60],
            hours: vec![Slot::default(); 168],
        }
    }

    fn add(&mut self, now_s: u64, c: &Counts, latency_ms: Option<f64>) {
        for (ring, at) in [
            (&mut self.minutes, now_s / 60 + 1),
            (&mut self.hours, now_s / 3600 + 1),
        ] {
            let n = ring.len() as u64;
            let slot = &mut ring[(at % n) as usize];
            if slot.at > at {
                // Older than what the slot counts now: outside this ring's span.
                continue;
            }
            if slot.at != at {
                *slot = Slot {
                    at,
                    ..Slot::default()
                };
            }
            slot.counts.add(c);
            if let Some(ms) = latency_ms {
                slot.latency.get_or_insert_with(|| Box::new([0; BUCKETS]))[bucket_of(ms)] += 1;
            }
        }
    }

    /// The slots within `window` of `now_s`: minute slots for an hour or less, else hours.
    fn within(&self, now_s: u64, window: Window) -> impl Iterator<Item = &Slot> {
        let (ring, span, now) = match window {
            Window::Hour => (&self.minutes, 60, now_s / 60 + 1),
            Window::Day => (&self.hours, 24, now_s / 3600 + 1),
            Window::Week => (&self.hours, 168, now_s / 3600 + 1),
        };
        ring.iter()
            .filter(move |s| s.at != 0 && s.at <= now && now - s.at < span)
    }

    fn counts(&self, now_s: u64, window: Window) -> Counts {
        let mut c = Counts::default();
        for s in self.within(now_s, window) {
            c.add(&s.counts);
        }
        c
    }

    /// Calls per minute over the last hour, oldest first (60 values).
    fn per_minute(&self, now_s: u64) -> Vec<u64> {
        let now = now_s / 60 + 1;
        (0..60u64)
            .rev()
            .map(|back| {
                let at = now - back.min(now);
                let s = &self.minutes[(at % 60) as usize];
                if s.at == at {
                    s.counts.calls
                } else {
                    0
                }
            })
            .collect()
    }

    /// Latency percentiles (upper bounds of their histogram buckets, in ms) over `window`.
    fn percentiles(&self, now_s: u64, window: Window, ps: &[f64]) -> Option<Vec<f64>> {
        let mut h = [0u64; BUCKETS];
        for s in self.within(now_s, window) {
            if let Some(l) = &s.latency {
                for (a, b) in h.iter_mut().zip(l.iter()) {
                    *a += u64::from(*b);
                }
            }
        }
        let total: u64 = h.iter().sum();
        if total == 0 {
            return None;
        }
        Some(
            ps.iter()
                .map(|p| {
                    let rank = ((p * total as f64).ceil() as u64).max(1);
                    let mut seen = 0;
                    for (i, n) in h.iter().enumerate() {
                        seen += n;
                        if seen >= rank {
                            return (bucket_upper(i) * 100.0).round() / 100.0;
                        }
                    }
                    bucket_upper(BUCKETS - 1)
                })
                .collect(),
        )
    }
}

/// A usage window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Week,
}

impl Window {
    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "1h" => Some(Window::Hour),
            "24h" => Some(Window::Day),
            "7d" => Some(Window::Week),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Week => "7d",
        }
    }
}

#[derive(Default)]
struct Stats {
    apis: HashMap<String, Series>,
    pairs: HashMap<(String, String), Series>,
    /// The last upstream failure per API: when (unix s) and what.
    last_error: HashMap<String, (u64, String)>,
    /// When pairs without a call in 7 days were last dropped to make room.
    pruned_at: u64,
}

/// One API's recent health, for the console's APIs view.
pub struct ApiActivity {
    pub hour: Counts,
    pub day: Counts,
    /// p50, p95, p99 of upstream latency over the last hour, in ms.
    pub latency_ms: Option<Vec<f64>>,
    /// Calls per minute over the last hour, oldest first.
    pub per_minute: Vec<u64>,
    pub last_error: Option<(u64, String)>,
    /// `up`, `degraded`, `down` or `idle` (no call in the last 15 minutes).
    pub health: &'static str,
}

/// The console's view of recent traffic; see the module doc.
pub struct Activity {
    stats: Mutex<Stats>,
    feed: tokio::sync::broadcast::Sender<Arc<Value>>,
    recent: Mutex<VecDeque<Arc<Value>>>,
    /// Decisions dropped because a stream subscriber fell behind.
    pub dropped: AtomicU64,
    next_id: AtomicU64,
    pub started: u64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            stats: Mutex::default(),
            feed: tokio::sync::broadcast::channel(STREAM_BUFFER).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            dropped: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            started: unix_now(),
        }
    }

    /// Counts one audit event (a call) and passes a decision on to the stream.
    pub fn observe(&self, e: &AuditEvent) {
        self.observe_at(e, unix_now());
    }

    fn observe_at(&self, e: &AuditEvent, now: u64) {
        if e.event.is_none() && !e.api.is_empty() {
            let c = Counts {
                calls: 1,
                refusals: u64::from(e.decision == "deny"),
                errors: u64::from(e.decision == "error"),
                bytes_in: e.bytes_in,
                bytes_out: e.bytes_out,
                cost: e.cost.unwrap_or(0.0),
            };
            let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(series) = s.apis.get_mut(&e.api) {
                series.add(now, &c, e.upstream_ms);
            } else {
                let mut series = Series::new();
                series.add(now, &c, e.upstream_ms);
                s.apis.insert(e.api.clone(), series);
            }
            let mut key = (e.principal.clone(), e.api.clone());
            if !s.pairs.contains_key(&key) && s.pairs.len() >= MAX_PAIRS {
                // Make room from pairs idle for 7 days (at most once a minute), else count
                // the newcomer under `(others)`.
                if now >= s.pruned_at + 60 {
                    s.pruned_at = now;
                    s.pairs
                        .retain(|_, series| series.counts(now, Window::Week).calls > 0);
                }
                if s.pairs.len() >= MAX_PAIRS {
                    key.0 = "(others)".into();
                }
            }
            s.pairs
                .entry(key)
                .or_insert_with(Series::new)
                .add(now, &c, None);
            if e.decision == "error" {
                let what = e.reason.or(e.error).unwrap_or("upstream_error").to_string();
                s.last_error.insert(e.api.clone(), (now, what));
            }
        }
        if let Some(kind) = decision_kind(e) {
            self.publish(kind, e);
        }
    }

    fn publish(&self, kind: &'static str, e: &AuditEvent) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut v = serde_json::to_value(e).unwrap_or_default();
        let (rule, reason, stage) = match (kind, e.shadow.as_ref().and_then(|s| s.get(0))) {
            ("shadow_refused", Some(s)) => {
                (s["rule"].clone(), s["reason"].clone(), s["stage"].clone())
            }
            _ => (json!(e.rule), json!(e.reason.or(e.error)), json!(e.stage)),
        };
        let summary = json!({
            "id": id,
            "kind": kind,
            "ts": e.ts,
            "request_id": e.request_id,
            "door": e.door,
            "principal": e.principal,
            "api": e.api,
            "method": e.method,
            "path": e.path,
            "status": e.status,
            "reason": reason,
            "stage": stage,
            "rule": rule,
            "approval_id": e.approval_id,
            "explain": format!("/console/explain?request_id={}", e.request_id),
        });
        if let Value::Object(m) = &mut v {
            m.insert("console".into(), summary.clone());
        }
        let whole = Arc::new(v);
        {
            let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(whole);
        }
        let _ = self.feed.send(Arc::new(summary));
    }

    /// A live subscription to decisions as they happen.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Value>> {
        self.feed.subscribe()
    }

    /// The last `n` decisions' summaries, oldest first.
    pub fn recent(&self, n: usize) -> Vec<Value> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.iter()
            .skip(r.len().saturating_sub(n))
            .map(|v| v["console"].clone())
            .collect()
    }

    /// A recent decision's whole audit event, by request id.
    pub fn decision(&self, request_id: &str) -> Option<Arc<Value>> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.iter()
            .rev()
            .find(|v| v["request_id"] == request_id)
            .cloned()
    }

    /// Counts decisions a subscriber missed.
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        crate::telemetry::metrics()
            .console_stream_dropped
            .with_label_values(&[] as &[&str])
            .inc_by(n);
    }

    /// Each API's recent activity (APIs with no call since the start are absent).
    pub fn api(&self, api: &str) -> Option<ApiActivity> {
        let now = unix_now();
        let s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let series = s.apis.get(api)?;
        let hour = series.counts(now, Window::Hour);
        let recent = {
            // The last 5 minutes decide health.
            let mut c = Counts::default();
            let at = now / 60 + 1;
            for slot in &series.minutes {
                if slot.at != 0 && slot.at <= at && at - slot.at < 5 {
                    c.add(&slot.counts);
                }
            }
            c
        };
        let quarter = series
            .minutes
            .iter()
            .filter(|sl| sl.at != 0 && now / 60 + 1 - sl.at.min(now / 60 + 1) < 15)
            .map(|sl| sl.counts.calls)
            .sum::<u64>();
        let admitted = recent.calls - recent.refusals;
        let health = if quarter == 0 {
            "idle"
        } else if admitted > 0 && recent.errors * 2 >= admitted {
            "down"
        } else if admitted > 0 && recent.errors * 20 > admitted {
            "degraded"
        } else {
            "up"
        };
        Some(ApiActivity {
            hour,
            day: series.counts(now, Window::Day),
            latency_ms: series.percentiles(now, Window::Hour, &[0.5, 0.95, 0.99]),
            per_minute: series.per_minute(now),
            last_error: s.last_error.get(api).cloned(),
            health,
        })
    }

    /// Usage per principal × API over `window`, most calls first.
    pub fn usage(&self, window: Window) -> Vec<(String, String, Counts)> {
        let now = unix_now();
        let s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = s
            .pairs
            .iter()
            .map(|((p, a), series)| (p.clone(), a.clone(), series.counts(now, window)))
            .filter(|(_, _, c)| c.calls > 0)
            .collect();
        out.sort_by(|a, b| b.2.calls.cmp(&a.2.calls).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Every principal × API pair seen in the last 7 days.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.usage(Window::Week)
            .into_iter()
            .map(|(p, a, _)| (p, a))
            .collect()
    }
}

/// Which decisions the stream carries: refusals, shadow refusals and approval events.
fn decision_kind(e: &AuditEvent) -> Option<&'static str> {
    match e.event {
        Some(ev) if ev.starts_with("approval_") => Some(ev),
        Some(_) => None,
        None if e.decision == "deny" => Some("refused"),
        None if e
            .shadow
            .as_ref()
            .is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty())) =>
        {
            Some("shadow_refused")
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Door;

    fn event(principal: &str, api: &str, decision: &'static str, ms: Option<f64>) -> AuditEvent {
        let mut e = AuditEvent::new(Door::Proxy, None, "GET", "/x");
        e.principal = principal.into();
        e.api = api.into();
        e.decision = decision;
        e.upstream_ms = ms;
        e.bytes_out = 100;
        e.cost = Some(0.5);
        e
    }

    #[test]
    fn windows_count_what_fell_inside_them() {
        let a = Activity::new();
        let now = unix_now();
        a.observe_at(&event("key:a", "w", "allow", Some(3.0)), now);
        a.observe_at(&event("key:a", "w", "deny", None), now - 2 * 3600);
        a.observe_at(&event("key:a", "w", "allow", Some(3.0)), now - 3 * 86400);
        a.observe_at(&event("key:b", "w", "error", Some(900.0)), now - 30);
        let by = |w| {
            a.usage(w)
                .into_iter()
                .map(|(p, _, c)| (p, c.calls, c.refusals, c.errors))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            by(Window::Hour),
            vec![("key:a".into(), 1, 0, 0), ("key:b".into(), 1, 0, 1)]
        );
        assert_eq!(
            by(Window::Day),
            vec![("key:a".into(), 2, 1, 0), ("key:b".into(), 1, 0, 1)]
        );
        assert_eq!(by(Window::Week)[0], ("key:a".into(), 3, 1, 0));
        let api = a.api("w").unwrap();
        assert_eq!(api.hour.calls, 2);
        assert_eq!(api.per_minute.iter().sum::<u64>(), 2);
        let l = api.latency_ms.unwrap();
        assert!(l[0] >= 3.0 && l[0] < 3.8, "{l:?}");
        assert!(l[2] >= 900.0 && l[2] < 1130.0, "{l:?}");
        // One admitted call of two failed in the last 5 minutes.
        assert_eq!(api.health, "down");
        assert!(a.api("nothing").is_none());
    }

    /// A subscriber that falls behind loses the oldest decisions, and is told how many.
    #[test]
    fn a_slow_subscriber_loses_the_oldest() {
        let a = Activity::new();
        let mut rx = a.subscribe();
        for i in 0..STREAM_BUFFER + 44 {
            let mut e = event("key:a", "w", "deny", None);
            e.path = format!("/{i}");
            a.observe(&e);
        }
        match rx.try_recv() {
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 44),
            other => panic!("{other:?}"),
        }
        // The next one is the oldest kept.
        assert_eq!(rx.try_recv().unwrap()["path"], "/44");
        assert_eq!(a.recent(RECENT).len(), STREAM_BUFFER + 44);
    }

    #[test]
    fn refusals_and_approvals_reach_the_stream_and_the_explain_ring() {
        let a = Activity::new();
        let mut rx = a.subscribe();
        a.observe(&event("key:a", "w", "allow", None));
        let mut refused = event("key:a", "w", "deny", None);
        refused.rule = Some("rbac.reader".into());
        a.observe(&refused);
        let got = rx.try_recv().unwrap();
        assert_eq!(got["kind"], "refused");
        assert_eq!(got["rule"], "rbac.reader");
        assert!(rx.try_recv().is_err(), "an admitted call is not a decision");
        let whole = a.decision(&refused.request_id).unwrap();
        assert_eq!(whole["rule"], "rbac.reader");
        assert_eq!(a.recent(10).len(), 1);
    }
}
