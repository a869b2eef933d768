//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! One process-wide registry. Label values are bounded: `api` is a configured API name (or
//! `unknown`), `method` one of the supported methods (or `other`), `door` `mcp` or `proxy`,
//! `error` and `reason` come from the gateway's own fixed vocabulary.

pub mod otlp;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::error::{ErrorKind, GatewayError};
use crate::types::Door;

pub struct Metrics {
    registry: Registry,
    /// `api_calls_total{api,method,status,door}`: every call judged by the pipeline.
    pub calls: IntCounterVec,
    /// `api_response_time_seconds{api,door}`: from the call's arrival to its answer.
    pub response_time: HistogramVec,
    /// `api_errors_total{api,door,error}`: calls that ended in a gateway error code.
    pub errors: IntCounterVec,
    /// `api_rate_limit_violations_total{api,policy,door}`.
    pub rate_limited: IntCounterVec,
    /// `api_auth_failures_total{reason,door}`.
    pub auth_failures: IntCounterVec,
    /// `api_ip_blocks_total{door}`.
    pub ip_blocks: IntCounterVec,
    /// `api_token_expired_total{door}`: token-expiry events.
    pub token_expired: IntCounterVec,
    /// `api_policy_denials_total{reason,door}`: 403s and 4xx refusals by reason, SSRF included.
    pub policy_denials: IntCounterVec,
    /// `api_rate_limiter_fallbacks_total{on_error}`: decisions made without the shared store.
    pub limiter_fallbacks: IntCounterVec,
    /// `api_rate_limiter_store_up`: 1 while the shared store answers, 0 while it does not.
    pub limiter_store_up: IntGauge,
    /// `api_upstream_requests_total{api,door,reused}`: upstream requests, by whether they went
    /// over a pooled connection.
    pub upstream_requests: IntCounterVec,
    /// `api_cost_total{api}`: the sum of `cost_per_call` over the calls that reached the API.
    pub cost: CounterVec,
    /// `api_audit_sink_errors_total{kind}`: audit records that could not be written.
    pub audit_errors: IntCounterVec,
    /// `api_principal_calls_total{principal,api}`: upstream calls per principal, only with
    /// `metrics.principal_label = true`.
    pub principal_calls: IntCounterVec,
    /// `api_principal_cost_total{principal,api}`: their cost.
    pub principal_cost: CounterVec,
    /// `api_trace_spans_dropped_total`: spans in OTLP exports the collector did not accept.
    pub trace_spans_dropped: prometheus::IntCounter,
    /// `api_mcp_fast_path_requests_total`: stateless `tools/call` requests the MCP door served
    /// on its fast path rather than through rmcp's transport.
    pub mcp_fast_path: prometheus::IntCounter,
    /// `api_config_reloads_total{result}`: reloads (SIGHUP or file change) that were applied
    /// (`success`) or rejected, the old config serving on (`failure`).
    pub config_reloads: IntCounterVec,
    /// `api_config_last_reload_success_timestamp_seconds`: when the serving config was loaded.
    pub config_loaded_at: IntGauge,
    /// `api_policy_shadow_decisions_total{stage,rule,decision}`: would-be refusals of rules
    /// in `mode = "shadow"` (the decision is the would-be reason).
    pub shadow_decisions: IntCounterVec,
    /// `api_console_stream_dropped_total`: decisions the console's live stream dropped
    /// because a subscriber fell behind (the oldest go first).
    pub console_stream_dropped: IntCounterVec,
    /// `api_connections_open{listener}`: connections each listener holds now.
    pub connections_open: prometheus::IntGaugeVec,
    /// `api_connections_refused_total{listener,reason}`: connections closed by the listener
    /// guard: `connection_limit` (over `server.max_connections`) or `head_timeout`.
    pub connections_refused: IntCounterVec,
    /// `api_credential_events_total{api,event}`: per-caller credentials at work: `exchange`,
    /// `exchange_cache_hit`, `exchange_failure`, `exchange_failure_cached`, `refresh`,
    /// `refresh_failure`, `connect`, `set`, `delete`, and `store`/`failure`.
    pub credential_events: IntCounterVec,
    /// `api_approvals_total{rule,outcome}`: approval requests by what became of them:
    /// `requested`, `approved`, `denied`, `declined`, `expired`, `consumed`.
    pub approvals: IntCounterVec,
    /// `api_approval_wait_seconds{rule}`: from request to decision.
    pub approval_wait: HistogramVec,
    /// `api_approvals_pending{rule}`: requests this replica created that wait now.
    pub approvals_pending: prometheus::IntGaugeVec,
    /// `api_approval_oldest_pending_ratio{rule}`: the oldest waiting request's age over its
    /// rule's `ttl` (0 when none waits), every 5 s.
    pub approval_oldest_pending: prometheus::GaugeVec,
    /// `api_surface_drift{api}`: 1 while an API's OpenAPI document differs from its pin (or,
    /// unpinned, from the document first served).
    pub surface_drift: prometheus::IntGaugeVec,
    /// The principals that have a label value of their own; past `max_principals`, the rest
    /// share `other`. `None`: the principal label is off.
    principals: Mutex<Option<Principals>>,
    /// Whether `principals` is `Some`: read first, so a request takes no lock (a cache line
    /// every thread writes) while the principal label is off, as it is by default.
    principal_label_on: AtomicBool,
}

struct Principals {
    max: usize,
    seen: HashSet<String>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// A counter without labels, registered.
fn single_counter(r: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let response_time = HistogramVec::new(
            HistogramOpts::new(
                "api_response_time_seconds",
                "Time from a call's arrival to its answer, upstream included",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["api", "door"],
        )
        .expect("valid metric");
        r.register(Box::new(response_time.clone()))
            .expect("unique metric");
        let limiter_store_up = IntGauge::new(
            "api_rate_limiter_store_up",
            "1 while the shared rate-limit store answers, 0 while calls fall back",
        )
        .expect("valid metric");
        limiter_store_up.set(1);
        r.register(Box::new(limiter_store_up.clone()))
            .expect("unique metric");
        Metrics {
            calls: counter(
                &r,
                "api_calls_total",
                "Calls through either door, by API, method, status and door",
                &["api", "method", "status", "door"],
            ),
            response_time,
            errors: counter(
                &r,
                "api_errors_total",
                "Calls that ended in a gateway error, by its code",
                &["api", "door", "error"],
            ),
            rate_limited: counter(
                &r,
                "api_rate_limit_violations_total",
                "Calls refused by a rate-limit policy",
                &["api", "policy", "door"],
            ),
            auth_failures: counter(
                &r,
                "api_auth_failures_total",
                "Authentication failures by reason",
                &["reason", "door"],
            ),
            ip_blocks: counter(
                &r,
                "api_ip_blocks_total",
                "Requests refused by the IP rules",
                &["door"],
            ),
            token_expired: counter(
                &r,
                "api_token_expired_total",
                "Expired tokens presented",
                &["door"],
            ),
            policy_denials: counter(
                &r,
                "api_policy_denials_total",
                "Calls refused by policy (allow-lists, RBAC, SSRF, guards), by reason",
                &["reason", "door"],
            ),
            connections_open: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "api_connections_open",
                        "Connections each listener holds now",
                    ),
                    &["listener"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            shadow_decisions: counter(
                &r,
                "api_policy_shadow_decisions_total",
                "Refusals rules in mode = \"shadow\" would have made, by stage, rule and would-be reason",
                &["stage", "rule", "decision"],
            ),
            console_stream_dropped: counter(
                &r,
                "api_console_stream_dropped_total",
                "Decisions the admin console's live stream dropped because a subscriber fell behind",
                &[],
            ),
            connections_refused: counter(
                &r,
                "api_connections_refused_total",
                "Connections the listener guard closed: over server.max_connections, or a request head over server.request_head_timeout",
                &["listener", "reason"],
            ),
            config_reloads: {
                let c = counter(
                    &r,
                    "api_config_reloads_total",
                    "Config reloads by result: success (applied) or failure (rejected, the old config serves on)",
                    &["result"],
                );
                // Both series exist from the start, so increase() sees the first reload.
                for result in ["success", "failure"] {
                    c.with_label_values(&[result]);
                }
                c
            },
            config_loaded_at: {
                let g = IntGauge::new(
                    "api_config_last_reload_success_timestamp_seconds",
                    "Unix time at which the serving config was loaded",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            limiter_fallbacks: counter(
                &r,
                "api_rate_limiter_fallbacks_total",
                "Rate-limit decisions made without the shared store, by on_error mode",
                &["on_error"],
            ),
            limiter_store_up,
            upstream_requests: counter(
                &r,
                "api_upstream_requests_total",
                "Upstream requests by whether a pooled connection was reused",
                &["api", "door", "reused"],
            ),
            cost: {
                let c = CounterVec::new(
                    Opts::new(
                        "api_cost_total",
                        "Sum of cost_per_call over calls that reached the API",
                    ),
                    &["api"],
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            approvals: counter(
                &r,
                "api_approvals_total",
                "Approval requests by outcome",
                &["rule", "outcome"],
            ),
            approval_wait: {
                let h = HistogramVec::new(
                    prometheus::HistogramOpts::new(
                        "api_approval_wait_seconds",
                        "Time from an approval request to its decision",
                    )
                    .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0]),
                    &["rule"],
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            surface_drift: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "api_surface_drift",
                        "1 while an API's OpenAPI document differs from the pinned one",
                    ),
                    &["api"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            approvals_pending: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new("api_approvals_pending", "Approval requests waiting for a decision"),
                    &["rule"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            approval_oldest_pending: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "api_approval_oldest_pending_ratio",
                        "Age of the oldest waiting approval request over its rule's ttl",
                    ),
                    &["rule"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            credential_events: counter(
                &r,
                "api_credential_events_total",
                "Per-caller credential events: exchanges, cache hits, refreshes, failures",
                &["api", "event"],
            ),
            audit_errors: counter(
                &r,
                "api_audit_sink_errors_total",
                "Audit records that could not be written, by kind",
                &["kind"],
            ),
            principal_calls: counter(
                &r,
                "api_principal_calls_total",
                "Upstream calls per principal (opt-in, capped: the rest are \"other\")",
                &["principal", "api"],
            ),
            principal_cost: {
                let c = CounterVec::new(
                    Opts::new(
                        "api_principal_cost_total",
                        "Sum of cost_per_call per principal (opt-in, capped)",
                    ),
                    &["principal", "api"],
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            trace_spans_dropped: single_counter(
                &r,
                "api_trace_spans_dropped_total",
                "Spans in OTLP exports that failed (collector down or refusing)",
            ),
            mcp_fast_path: single_counter(
                &r,
                "api_mcp_fast_path_requests_total",
                "Stateless tools/call requests served on the MCP door's fast path",
            ),
            principals: Mutex::new(None),
            principal_label_on: AtomicBool::new(false),
            registry: r,
        }
    }

    /// The name of every metric family this gateway exports (also the ones with no samples
    /// yet), for checks of dashboards and alert rules.
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let mut names: Vec<String> = [
            self.calls.desc(),
            self.response_time.desc(),
            self.errors.desc(),
            self.rate_limited.desc(),
            self.auth_failures.desc(),
            self.ip_blocks.desc(),
            self.token_expired.desc(),
            self.policy_denials.desc(),
            self.limiter_fallbacks.desc(),
            self.limiter_store_up.desc(),
            self.upstream_requests.desc(),
            self.cost.desc(),
            self.audit_errors.desc(),
            self.principal_calls.desc(),
            self.principal_cost.desc(),
            self.trace_spans_dropped.desc(),
            self.mcp_fast_path.desc(),
            self.config_reloads.desc(),
            self.config_loaded_at.desc(),
            self.connections_open.desc(),
            self.shadow_decisions.desc(),
            self.console_stream_dropped.desc(),
            self.connections_refused.desc(),
            self.credential_events.desc(),
            self.approvals.desc(),
            self.approval_wait.desc(),
            self.approvals_pending.desc(),
            self.approval_oldest_pending.desc(),
            self.surface_drift.desc(),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.fq_name.clone())
        .collect();
        names.sort();
        names
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Records one judged call: its outcome, its latency and, for a refusal, why.
    pub fn call(
        &self,
        door: Door,
        api: &str,
        method: &str,
        status: u16,
        elapsed: Duration,
        error: Option<&GatewayError>,
    ) {
        let label = door.as_str();
        HANDLES.with_borrow_mut(|h| {
            let labels = [api, method_label(method), status_label(status), label];
            h.calls
                .get(&labels, || self.calls.with_label_values(&labels))
                .inc();
            let labels = [api, label];
            h.response_time
                .get(&labels, || self.response_time.with_label_values(&labels))
                .observe(elapsed.as_secs_f64());
        });
        if let Some(e) = error {
            self.refusal(door, Some(api), e);
        }
    }

    /// Applies `[metrics]`: whether calls are also counted per principal, and for how many.
    pub fn configure(&self, cfg: &crate::config::MetricsConfig) {
        let mut p = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        *p = cfg.principal_label.then(|| Principals {
            max: cfg.max_principals,
            seen: HashSet::new(),
        });
        self.principal_label_on
            .store(cfg.principal_label, Ordering::Release);
    }

    /// The label value for a principal: its id while fewer than `max_principals` have one,
    /// `other` after; `None` while the principal label is off.
    fn principal_label(&self, id: &str) -> Option<String> {
        if !self.principal_label_on.load(Ordering::Acquire) {
            return None;
        }
        let mut guard = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        let p = guard.as_mut()?;
        if p.seen.contains(id) {
            return Some(id.to_string());
        }
        if p.seen.len() < p.max && id != "other" {
            p.seen.insert(id.to_string());
            return Some(id.to_string());
        }
        Some("other".to_string())
    }

    /// Records one request sent upstream: connection reuse, the API's cost per call and,
    /// when configured, both per principal.
    pub fn upstream(
        &self,
        door: Door,
        api: &crate::config::Api,
        reused: bool,
        principal: Option<&str>,
    ) {
        if let Some(label) = principal.and_then(|p| self.principal_label(p)) {
            let labels = [label.as_str(), api.name.as_str()];
            self.principal_calls.with_label_values(&labels).inc();
            if let Some(cost) = api.cost_per_call {
                self.principal_cost.with_label_values(&labels).inc_by(cost);
            }
        }
        HANDLES.with_borrow_mut(|h| {
            let labels = [
                api.name.as_str(),
                door.as_str(),
                if reused { "true" } else { "false" },
            ];
            h.upstream_requests
                .get(&labels, || {
                    self.upstream_requests.with_label_values(&labels)
                })
                .inc();
        });
        if let Some(cost) = api.cost_per_call {
            self.cost
                .with_label_values(&[api.name.as_str()])
                .inc_by(cost);
        }
    }

    /// Counts a refusal by its kind and reason (also for requests refused before any API was
    /// named, such as a 401 at the MCP endpoint).
    pub fn refusal(&self, door: Door, api: Option<&str>, e: &GatewayError) {
        let door = door.as_str();
        let api = api.unwrap_or("none");
        self.errors
            .with_label_values(&[api, door, e.kind.code()])
            .inc();
        let reason = e.reason_code();
        match e.kind {
            ErrorKind::Unauthorized => {
                self.auth_failures.with_label_values(&[reason, door]).inc();
                if reason == "token_expired" {
                    self.token_expired.with_label_values(&[door]).inc();
                }
            }
            ErrorKind::RateLimited => {
                let policy = e
                    .rate_limit
                    .as_ref()
                    .map_or("unknown", |d| d.policy.as_str());
                self.rate_limited
                    .with_label_values(&[api, policy, door])
                    .inc();
            }
            ErrorKind::Forbidden
            | ErrorKind::EgressDenied
            | ErrorKind::InvalidEndpoint
            | ErrorKind::InvalidHeader
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::HeadersTooLarge
            | ErrorKind::UnknownApi => {
                if reason == "ip_denied" {
                    self.ip_blocks.with_label_values(&[door]).inc();
                }
                self.policy_denials.with_label_values(&[reason, door]).inc();
            }
            _ => {}
        }
    }
}

fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => "other",
    }
}

/// Status codes as static labels (the set is finite; anything odd is `other`).
fn status_label(s: u16) -> &'static str {
    const CODES: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (206, "206"),
        (301, "301"),
        (302, "302"),
        (303, "303"),
        (304, "304"),
        (307, "307"),
        (308, "308"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (410, "410"),
        (413, "413"),
        (415, "415"),
        (422, "422"),
        (429, "429"),
        (431, "431"),
        (500, "500"),
        (501, "501"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    CODES
        .iter()
        .find(|(c, _)| *c == s)
        .map_or("other", |(_, l)| l)
}

/// The series every request touches, by label values, held per thread: a request finds its
/// counter without taking the vector's lock or cloning the series (a lock word and a reference
/// count that every thread writes, which cost the proxy door at two threads what it did not at
/// one). The handles are the registry's own series, so `/metrics` sees every increment at once.
#[derive(Default)]
struct Handles {
    calls: PerLabels<prometheus::IntCounter>,
    response_time: PerLabels<prometheus::Histogram>,
    upstream_requests: PerLabels<prometheus::IntCounter>,
}

thread_local! {
    static HANDLES: std::cell::RefCell<Handles> = std::cell::RefCell::default();
}

/// One series and the label values it was made for.
type Labelled<M> = (Box<[Box<str>]>, M);

/// Series by their label values, found by a hash of the values and told apart by the values.
struct PerLabels<M> {
    series: std::collections::HashMap<u64, Vec<Labelled<M>>>,
    len: usize,
}

impl<M> Default for PerLabels<M> {
    fn default() -> Self {
        PerLabels {
            series: Default::default(),
            len: 0,
        }
    }
}

/// Label combinations a thread keeps before it starts over (the registry keeps them all;
/// this only bounds the copy, should an API's names churn through reloads).
const MAX_HANDLES: usize = 4096;

impl<M> PerLabels<M> {
    fn get(&mut self, labels: &[&str], make: impl FnOnce() -> M) -> &M {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        labels.hash(&mut h);
        let key = h.finish();
        let found = self.series.get(&key).and_then(|entries| {
            entries.iter().position(|(values, _)| {
                values.len() == labels.len() && values.iter().zip(labels).all(|(a, b)| &**a == *b)
            })
        });
        let at = match found {
            Some(at) => at,
            None => {
                if self.len >= MAX_HANDLES {
                    self.series.clear();
                    self.len = 0;
                }
                let values = labels.iter().map(|l| Box::<str>::from(*l)).collect();
                let entries = self.series.entry(key).or_default();
                entries.push((values, make()));
                self.len += 1;
                entries.len() - 1
            }
        };
        &self.series[&key][at].1
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_counted_through_each_threads_handles_land_in_the_registry() {
        let m = metrics();
        let series = || {
            m.calls
                .with_label_values(&["per-thread-test", "GET", "200", "proxy"])
                .get()
        };
        let before = series();
        let histogram = || {
            m.response_time
                .with_label_values(&["per-thread-test", "proxy"])
                .get_sample_count()
        };
        let observed = histogram();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..3 {
                        m.call(
                            Door::Proxy,
                            "per-thread-test",
                            "GET",
                            200,
                            Duration::from_millis(1),
                            None,
                        );
                    }
                    // Another series on the same thread is its own.
                    m.call(
                        Door::Proxy,
                        "per-thread-test",
                        "GET",
                        404,
                        Duration::ZERO,
                        None,
                    );
                });
            }
        });
        assert_eq!(series(), before + 6);
        assert_eq!(histogram(), observed + 8);
        assert!(m.render().contains(
            r#"api_calls_total{api="per-thread-test",door="proxy",method="GET",status="404"} 2"#
        ));
    }

    #[test]
    fn label_values_that_join_alike_are_different_series() {
        let mut h = PerLabels::default();
        let mut n = 0;
        let a = *h.get(&["ab", "c"], || {
            n += 1;
            n
        });
        let b = *h.get(&["a", "bc"], || {
            n += 1;
            n
        });
        let again = *h.get(&["ab", "c"], || unreachable!("kept"));
        assert_eq!((a, b, again), (1, 2, 1));
    }
}
