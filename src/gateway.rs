//! The shared core both doors hold: the validated config, the policy pipeline and the egress
//! client. Built once at start-up.

use std::sync::Arc;

use crate::audit::Auditor;
use crate::config::Config;
use crate::egress::Egress;
use crate::policy::Pipeline;
use crate::telemetry::otlp::{CallSpan, Tracing};
use crate::trace::TraceContext;

/// Everything a request needs, behind one `Arc`.
pub struct Gateway {
    pub config: Arc<Config>,
    pub pipeline: Pipeline,
    pub egress: Arc<Egress>,
    /// The audit writer, unless `audit.enabled = false`.
    pub audit: Option<Auditor>,
    /// False once a graceful shutdown has begun: `/readyz` then fails.
    pub ready: std::sync::atomic::AtomicBool,
    /// The OTLP span exporter, when `[tracing]` is enabled.
    pub tracing: Option<Tracing>,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        let config = Arc::new(config);
        let egress = Arc::new(Egress::with_nameservers(&config.nameservers));
        crate::telemetry::metrics().configure(&config.metrics);
        Ok(Arc::new(Gateway {
            tracing: Tracing::start(&config.tracing)?,
            pipeline: Pipeline::new(config.clone(), egress.clone())?,
            audit: Auditor::start(&config.audit)?,
            ready: std::sync::atomic::AtomicBool::new(true),
            egress,
            config,
        }))
    }

    /// Whether calls are audited (`audit.enabled`).
    pub fn auditing(&self) -> bool {
        self.audit.is_some()
    }

    /// Queues an audit event. `make` runs only when auditing is on, so a gateway with
    /// `audit.enabled = false` builds no events on its hot path.
    pub fn audit(&self, make: impl FnOnce() -> crate::audit::AuditEvent) {
        if let Some(a) = &self.audit {
            a.record(make());
        }
    }

    /// Refuses a call that could not be audited, when `audit.on_failure = "block"`.
    pub fn audit_admit(&self) -> Result<(), crate::error::GatewayError> {
        self.audit.as_ref().map_or(Ok(()), |a| a.admit())
    }

    /// Starts a call's server span, when tracing is on; a call that starts a trace gives
    /// `trace` the new trace id.
    pub fn server_span(
        &self,
        name: String,
        trace: &mut TraceContext,
        attributes: impl FnOnce() -> Vec<opentelemetry::KeyValue>,
    ) -> Option<CallSpan> {
        self.tracing
            .as_ref()
            .map(|t| t.server_span(name, trace, attributes()))
    }

    /// The `traceparent` of an upstream request: it names the request's client span when
    /// tracing is on, or a fresh span id of the caller's trace when it is off.
    pub fn upstream_traceparent(
        &self,
        span: Option<&mut CallSpan>,
        trace: &TraceContext,
        method: &str,
        api: &crate::config::Api,
        path: &str,
    ) -> String {
        match (span, &self.tracing) {
            (Some(s), Some(t)) => s.upstream(t, method, api, path),
            _ => trace.child_traceparent(),
        }
    }

    /// Writes every queued audit record and exports every queued span; called once the
    /// doors have stopped.
    pub fn shutdown(&self) {
        if let Some(a) = &self.audit {
            a.shutdown();
        }
        if let Some(t) = &self.tracing {
            t.shutdown();
        }
    }
}
