//! The shared core both doors hold: the validated config, the admission pipeline and the
//! egress client. [`Live`] holds the serving one and swaps it atomically on a reload; each request
//! takes a snapshot when it starts and finishes on it.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::Auditor;
use crate::config::Config;
use crate::egress::Egress;
use crate::policy::Pipeline;
use crate::telemetry::otlp::{CallSpan, Tracing};
use crate::trace::TraceContext;

/// Everything a request needs, behind one `Arc`.
///
/// The audit writer, the span exporter, the egress pool, the rate limiter's state and the
/// signature nonces belong to the process: a reload hands them to the next `Gateway`
/// unchanged. (Readiness is the process's too, and lives in [`Live`].)
pub struct Gateway {
    pub config: Arc<Config>,
    pub pipeline: Pipeline,
    pub egress: Arc<Egress>,
    /// The audit writer, unless `audit.enabled = false`.
    pub audit: Option<Arc<Auditor>>,
    /// The OTLP span exporter, when `[tracing]` is enabled.
    pub tracing: Option<Arc<Tracing>>,
    /// The MCP tool surface this config serves; a document refresh may replace it.
    pub surface: ArcSwap<crate::surface::Surface>,
}

/// Config sections a running process cannot change: a reload keeps their old values and
/// says so in a warning. (Listeners are bound, the audit chain and the span exporter are
/// open, the limiter's store is connected.)
fn restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    fn keep<T: Clone + std::fmt::Debug>(
        changed: &mut Vec<&'static str>,
        key: &'static str,
        old: &T,
        new: &mut T,
    ) {
        // Compared, never logged: Debug output may hold secrets.
        if format!("{old:?}") != format!("{new:?}") {
            changed.push(key);
            *new = old.clone();
        }
    }
    let mut changed = Vec::new();
    keep(&mut changed, "server", &old.server, &mut new.server);
    keep(&mut changed, "mcp", &old.mcp, &mut new.mcp);
    keep(&mut changed, "audit", &old.audit, &mut new.audit);
    keep(&mut changed, "tracing", &old.tracing, &mut new.tracing);
    keep(&mut changed, "metrics", &old.metrics, &mut new.metrics);
    keep(&mut changed, "log", &old.log_format, &mut new.log_format);
    keep(&mut changed, "demo", &old.demo, &mut new.demo);
    keep(
        &mut changed,
        "admin.console",
        &old.admin.console,
        &mut new.admin.console,
    );
    keep(
        &mut changed,
        "egress.nameservers",
        &old.nameservers,
        &mut new.nameservers,
    );
    keep(
        &mut changed,
        "rate_limits.store",
        &old.rate_limits.redis,
        &mut new.rate_limits.redis,
    );
    changed
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        let config = Arc::new(config);
        // Pingora's connector panics without a CA bundle; say what is missing instead.
        let mut roots = pingora::tls::RootCertStore::empty();
        pingora::tls::load_platform_certs_incl_env_into_store(&mut roots).map_err(|e| {
            format!(
                "no trusted CA certificates for upstream TLS ({e}): install ca-certificates, \
                 or set SSL_CERT_FILE to a PEM bundle"
            )
        })?;
        let egress = Arc::new(Egress::with_nameservers(&config.nameservers));
        crate::telemetry::metrics().configure(&config.metrics);
        crate::telemetry::metrics().config_loaded_at.set(unix_now());
        let errors = crate::telemetry::metrics().audit_errors.clone();
        let activity = config
            .admin
            .console
            .then(|| Arc::new(crate::audit::activity::Activity::new()));
        let audit = Auditor::start(&config.audit, errors, activity)?.map(Arc::new);
        let (surface, mut drift) = crate::surface::Surface::build(&config, None);
        let (surface, fetched) = surface.with_urls_fetched(&config);
        drift.extend(fetched);
        surface.check_lock(&config)?;
        let gateway = Arc::new(Gateway {
            tracing: Tracing::start(&config.tracing)?.map(Arc::new),
            pipeline: Pipeline::new(config.clone(), egress.clone(), audit.clone())?,
            audit,
            egress,
            config,
            surface: ArcSwap::from_pointee(surface),
        });
        gateway.audit_drift(drift);
        Ok(gateway)
    }

    /// Writes an audit record for each drift of an API's tool surface.
    pub fn audit_drift(&self, reports: Vec<crate::surface::DriftReport>) {
        for r in reports {
            self.audit(|| {
                let mut e = crate::audit::AuditEvent::new(crate::types::Door::Mcp, None, "", "");
                e.principal = "gateway".into();
                e.api = r.api.clone();
                e.event = Some(if r.drift.critical.is_empty() {
                    "surface_drift"
                } else {
                    "surface_drift_critical"
                });
                e.decision = if r.applied { "allow" } else { "deny" };
                e.surface = Some(r.to_json());
                e
            });
        }
    }

    /// Reads one API's document again (on its refresh timer) and serves what its
    /// `on_change` decides; true when the served tool list changed.
    pub async fn refresh_document(&self, api: &Arc<crate::config::Api>) -> bool {
        let Some(cfg) = &api.openapi else {
            return false;
        };
        let bytes = match (&cfg.source, crate::openapi::read_local(cfg)) {
            (_, Some(b)) => b,
            (crate::config::DocumentSource::Url(url), None) => {
                crate::openapi::fetch(&self.egress, api, url, cfg.max_document_bytes).await
            }
            _ => return false,
        };
        let current = self.surface.load_full();
        let (next, mut report) = current.refreshed(&self.config, api, bytes);
        let Some(mut next) = next else {
            self.audit_drift(report.into_iter().collect());
            return false;
        };
        if next.sha256 != current.sha256 {
            if let Err(e) = next.check_lock(&self.config) {
                tracing::error!(api = %api.name, error = %e, "OpenAPI document change not served: the surface would differ from the lock file");
                if let Some(r) = report.as_mut() {
                    r.applied = false;
                }
                next = current.with_states_of(&self.config, &next);
            }
        }
        self.audit_drift(report.into_iter().collect());
        let changed = next.sha256 != current.sha256;
        self.surface.store(Arc::new(next));
        changed
    }

    /// The gateway for a new config, keeping this one's process-wide parts (and the old
    /// values of the sections that need a restart, which it returns by key).
    pub fn reconfigured(
        &self,
        mut config: Config,
    ) -> Result<(Arc<Self>, Vec<&'static str>), String> {
        let kept = restart_only(&self.config, &mut config);
        let config = Arc::new(config);
        let (surface, mut drift) =
            crate::surface::Surface::build(&config, Some(&self.surface.load()));
        let (surface, fetched) = surface.with_urls_fetched(&config);
        drift.extend(fetched);
        surface.check_lock(&config)?;
        let gateway = Arc::new(Gateway {
            pipeline: self.pipeline.reconfigured(config.clone())?,
            egress: self.egress.clone(),
            audit: self.audit.clone(),
            tracing: self.tracing.clone(),
            config,
            surface: ArcSwap::from_pointee(surface),
        });
        gateway.audit_drift(drift);
        Ok((gateway, kept))
    }

    /// Whether calls make audit events: `audit.enabled`, or the console is on (it is fed the
    /// same events).
    pub fn auditing(&self) -> bool {
        self.audit.is_some()
    }

    /// The admin console's view of recent traffic (`[admin] console = true`).
    pub fn activity(&self) -> Option<&Arc<crate::audit::activity::Activity>> {
        self.audit.as_ref().and_then(|a| a.activity())
    }

    /// Queues an audit event. `make` runs only when auditing is on, so a gateway with
    /// `audit.enabled = false` builds no events on its hot path.
    pub fn audit(&self, make: impl FnOnce() -> crate::audit::AuditEvent) {
        if let Some(a) = &self.audit {
            a.record(make());
        }
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

/// The serving gateway, swapped atomically by a reload.
pub struct Live {
    current: ArcSwap<Gateway>,
    /// Requests being served on either door (see [`Live::enter`]): shutdown waits for zero.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The config file reloads read; `None` when serving the embedded defaults.
    source: Option<PathBuf>,
    /// False once a graceful shutdown has begun: `/readyz` then fails.
    ready: AtomicBool,
    /// One reload at a time.
    reloading: std::sync::Mutex<()>,
    /// Binary answers behind `resource_link`s; they outlive a reload.
    pub blobs: crate::blobs::BlobStore,
    /// MCP tasks (calls waiting for an approval), and the principal each belongs to; they
    /// outlive a reload. Per process: a client polls the replica that made its task.
    pub tasks: rmcp::task_manager::TaskManager,
    pub task_owners: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Legacy MCP sessions, told `notifications/tools/list_changed` when the tool surface
    /// changes (closed ones are dropped as the list is used).
    pub sessions: std::sync::Mutex<Vec<rmcp::Peer<rmcp::RoleServer>>>,
    /// The same news for 2026-07-28 `subscriptions/listen` streams.
    pub tools_changed: tokio::sync::broadcast::Sender<()>,
}

impl Live {
    pub fn new(gateway: Arc<Gateway>, source: Option<PathBuf>) -> Arc<Live> {
        Arc::new(Live {
            current: ArcSwap::new(gateway),
            in_flight: Arc::default(),
            source,
            ready: AtomicBool::new(true),
            reloading: std::sync::Mutex::new(()),
            blobs: Default::default(),
            tasks: Default::default(),
            task_owners: Default::default(),
            sessions: Default::default(),
            tools_changed: tokio::sync::broadcast::channel(4).0,
        })
    }

    /// Remembers a legacy session, to tell it when the tool list changes.
    pub fn add_session(&self, peer: rmcp::Peer<rmcp::RoleServer>) {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|p| !p.is_transport_closed());
        s.push(peer);
    }

    /// Tells every legacy session and every subscription that the tool list changed (the
    /// sessions from tasks on the calling runtime).
    pub fn notify_tools_changed(&self) {
        let _ = self.tools_changed.send(());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|p| !p.is_transport_closed());
        for p in s.iter() {
            let p = p.clone();
            runtime.spawn(async move {
                if let Err(e) = p.notify_tool_list_changed().await {
                    tracing::debug!(error = %e, "a session was not told the tool list changed");
                }
            });
        }
    }

    /// The serving gateway: a request takes this once and keeps it to the end.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Whether `/readyz` answers ready: true until a graceful shutdown begins.
    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A graceful shutdown has begun: `/readyz` fails from now on.
    pub fn set_draining(&self) {
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a request as in flight until the guard drops.
    pub fn enter(&self) -> InFlight {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The config file a reload reads.
    pub fn source(&self) -> Option<&std::path::Path> {
        self.source.as_deref()
    }

    /// Reads and validates the config file again and, if it is valid, swaps it in. A bad
    /// config is refused with every error and the old one keeps serving. Logged and counted
    /// either way; `why` names the trigger (`SIGHUP`, `file changed`).
    pub fn reload(&self, why: &str) -> Result<(), String> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let m = crate::telemetry::metrics();
        let result = self.swap();
        match &result {
            Ok(kept) => {
                m.config_reloads.with_label_values(&["success"]).inc();
                m.config_loaded_at.set(unix_now());
                let apis = self.current().config.apis.len();
                if kept.is_empty() {
                    tracing::info!(trigger = why, apis, "config reloaded");
                } else {
                    tracing::warn!(
                        trigger = why,
                        apis,
                        unchanged = %kept.join(", "),
                        "config reloaded; changes to these sections need a restart and were not applied"
                    );
                }
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["failure"]).inc();
                tracing::error!(trigger = why, error = %e, "config reload rejected; the previous config keeps serving");
            }
        }
        result.map(|_| ())
    }

    fn swap(&self) -> Result<Vec<&'static str>, String> {
        let path = self
            .source
            .as_ref()
            .ok_or("no config file to reload: the gateway runs on the embedded defaults")?;
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let before = self.current().surface.load().sha256.clone();
        let (next, kept) = self.current().reconfigured(config)?;
        let changed = next.surface.load().sha256 != before;
        self.current.store(next);
        if changed {
            self.notify_tools_changed();
        }
        Ok(kept)
    }
}

/// One request in flight; dropping it ends the request.
pub struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, &|_| None).unwrap()
    }

    /// A reload applies what a running process can change and keeps the rest, naming it.
    #[test]
    fn restart_only_sections_keep_their_old_values_and_are_named() {
        let api = |name: &str| {
            format!(
                "[[apis]]\nname = \"{name}\"\nbase_url = \"https://{name}.example\"\n\
                 methods = [\"GET\"]\npaths = [\"/**\"]\n"
            )
        };
        let old = parse(&format!(
            "[server]\nthreads = 2\n[auth]\nrequired = false\n{}",
            api("a")
        ));
        // New APIs and a new thread count: the APIs apply, the threads do not.
        let mut new = parse(&format!(
            "[server]\nthreads = 7\n[auth]\nrequired = false\n{}{}",
            api("a"),
            api("b")
        ));
        assert_eq!(restart_only(&old, &mut new), vec!["server"]);
        assert_eq!(new.server.threads, 2);
        assert_eq!(new.apis.len(), 2);
        // Nothing restart-only changed: nothing is named.
        let mut same = parse(&format!(
            "[server]\nthreads = 2\n[auth]\nrequired = false\n{}",
            api("b")
        ));
        assert!(restart_only(&old, &mut same).is_empty());
        // The audit sink and the limiter's store are kept too.
        let mut other = parse(&format!(
            "[server]\nthreads = 2\n[auth]\nrequired = false\n[audit]\nsink = \"stdout\"\n\
             [rate_limits]\nstore = {{ kind = \"redis\", url = \"redis://127.0.0.1:1\" }}\n{}",
            api("a")
        ));
        assert_eq!(
            restart_only(&old, &mut other),
            vec!["audit", "rate_limits.store"]
        );
        assert!(other.rate_limits.redis.is_none());
    }
}
