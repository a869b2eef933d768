//! The shared core both doors hold: the validated config, the policy pipeline and the egress
//! client. Built once at start-up.

use std::sync::Arc;

use crate::audit::Auditor;
use crate::config::Config;
use crate::egress::Egress;
use crate::policy::Pipeline;

/// Everything a request needs, behind one `Arc`.
pub struct Gateway {
    pub config: Arc<Config>,
    pub pipeline: Pipeline,
    pub egress: Arc<Egress>,
    /// The audit writer, unless `audit.enabled = false`.
    pub audit: Option<Auditor>,
    /// False once a graceful shutdown has begun: `/readyz` then fails.
    pub ready: std::sync::atomic::AtomicBool,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        let config = Arc::new(config);
        let egress = Arc::new(Egress::with_nameservers(&config.nameservers));
        Ok(Arc::new(Gateway {
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

    /// Writes every queued audit record; called once the doors have stopped.
    pub fn shutdown(&self) {
        if let Some(a) = &self.audit {
            a.shutdown();
        }
    }
}
