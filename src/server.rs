//! Wiring and lifecycle: one `pingora::server::Server` runs the MCP, proxy and admin services.
//!
//! `Server::run` builds its own runtimes and panics inside an existing one, so `main` stays a
//! plain `fn` and calls [`serve`] directly.

use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::mcp::McpHttpApp;
use crate::proxy::ProxyDoor;
use crate::tls::{Listener, TlsConfig};

/// Fails fast when a listen address cannot be bound. Pingora itself logs "in use, will try
/// again" and retries forever, which would leave a second gateway silently not serving.
fn check_listen_addresses(config: &Config) -> Result<(), String> {
    let s = &config.server;
    for (key, addr) in [
        ("server.mcp_listen", s.mcp_listen),
        ("server.proxy_listen", s.proxy_listen),
        ("server.admin_listen", s.admin_listen),
    ] {
        // std sets SO_REUSEADDR like Pingora, so a port in TIME_WAIT is not reported.
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}

/// Adds a listener to a service: TLS when `[server.tls]` names it, else plain TCP.
fn listen<A: Send + Sync + 'static>(
    service: &mut Service<A>,
    addr: std::net::SocketAddr,
    tls: Option<&TlsConfig>,
    which: Listener,
) -> Result<(), String> {
    match tls.filter(|t| t.covers(which)) {
        Some(t) => {
            let settings = t.settings().map_err(|e| format!("server.tls: {e}"))?;
            service.add_tls_with_settings(&addr.to_string(), None, settings);
        }
        None => service.add_tcp(&addr.to_string()),
    }
    Ok(())
}

/// Runs the gateway until SIGTERM (graceful, bounded by `server.shutdown_grace`) or SIGINT.
pub fn serve(config: Config) -> Result<(), String> {
    check_listen_addresses(&config)?;
    let grace = config.server.shutdown_grace.as_secs().max(1);
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(grace),
        ..ServerConf::default()
    };
    let gateway = Gateway::new(config)?;
    let cfg = gateway.config.clone();

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        ProxyDoor::new(gateway.clone()),
        "proxy",
    );
    let tls = cfg.server.tls.as_ref();
    listen(&mut proxy, cfg.server.proxy_listen, tls, Listener::Proxy)?;

    let mut mcp = Service::new(
        "mcp".to_string(),
        McpHttpApp::new(gateway.clone(), CancellationToken::new()),
    );
    listen(&mut mcp, cfg.server.mcp_listen, tls, Listener::Mcp)?;

    let mut admin = Service::new("admin".to_string(), AdminApp::new(gateway.clone()));
    listen(&mut admin, cfg.server.admin_listen, tls, Listener::Admin)?;
    admin.threads = Some(1);

    tracing::info!(
        tls = ?tls.map(|t| &t.listeners),
        mtls = tls.is_some_and(|t| t.client_ca_file.is_some()),
        mcp = %cfg.server.mcp_listen,
        proxy = %cfg.server.proxy_listen,
        admin = %cfg.server.admin_listen,
        apis = cfg.apis.len(),
        "api-gateway-mcp listening"
    );
    server.add_service(proxy);
    server.add_service(mcp);
    server.add_service(admin);
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingSignals {
            gateway: gateway.clone(),
            delay: cfg.server.drain_delay,
        }),
    });
    // The doors have drained: write every queued audit record before exiting.
    gateway.shutdown();
    Ok(())
}

/// Pingora's Unix signals, plus a drain phase: on SIGTERM `/readyz` fails at once, the doors
/// keep serving for `server.drain_delay` (so load balancers stop routing here), and only
/// then does Pingora close the listeners and drain calls in flight.
struct DrainingSignals {
    gateway: Arc<Gateway>,
    delay: std::time::Duration,
}

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; SIGTERM will not drain first");
            return pingora::server::UnixShutdownSignalWatch.recv().await;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                self.gateway.ready.store(false, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(delay = ?self.delay, "SIGTERM: /readyz fails; draining");
                tokio::time::sleep(self.delay).await;
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Serves MCP over stdin/stdout on its own runtime.
pub fn stdio(config: Config) -> anyhow::Result<()> {
    if config.audit.enabled && config.audit.sink == crate::config::AuditSink::Stdout {
        anyhow::bail!(
            "audit.sink: \"stdout\" cannot be used with the stdio transport, which owns stdout; use \"file\""
        );
    }
    let gateway: Arc<Gateway> = Gateway::new(config).map_err(|e| anyhow::anyhow!(e))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(crate::mcp::serve_stdio(gateway.clone()));
    gateway.shutdown();
    result
}
