//! Wiring and lifecycle: one `pingora::server::Server` runs the MCP, proxy and admin services.
//!
//! `Server::run` builds its own runtimes and panics inside an existing one, so `main` stays a
//! plain `fn` and calls [`serve`] directly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::config::{Listener, TlsConfig};
use crate::gateway::{Gateway, Live};
use crate::listener::{Guarded, Limits};
use crate::mcp::McpHttpApp;
use crate::proxy::ProxyDoor;

/// Fails fast when a listen address cannot be bound. Pingora itself logs "in use, will try
/// again" and retries forever, which would leave a second gateway silently not serving.
fn check_listen_addresses(config: &Config) -> Result<(), String> {
    let s = &config.server;
    for (key, addr) in [
        ("server.mcp_listen", s.mcp_listen),
        ("server.proxy_listen", s.proxy_listen),
        ("server.admin_listen", s.admin_listen),
    ]
    .into_iter()
    .chain(config.demo.map(|d| ("demo.listen", d)))
    {
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
/// `source` is the config file that SIGHUP and the file watch reload.
pub fn serve(config: Config, source: Option<PathBuf>) -> Result<(), String> {
    check_listen_addresses(&config)?;
    let grace = config.server.shutdown_grace.as_secs().max(1);
    // Pingora waits the whole grace period after closing the listeners, then stops its
    // runtimes, dropping whatever is still running. The drain watcher below exits earlier,
    // as soon as nothing is in flight.
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let gateway = Gateway::new(config)?;
    let cfg = gateway.config.clone();
    let live = Live::new(gateway, source);

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let (doors, admin_limits) = connection_limits(&cfg.server);
    let mut proxy_app =
        pingora::proxy::http_proxy(&server.configuration, ProxyDoor::new(live.clone()));
    // CONNECT reaches the door, which refuses it with a reason (Pingora's own refusal is an
    // empty 405); nothing is ever tunnelled.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.allow_connect_method_proxying = true;
    proxy_app.server_options = Some(options);
    let mut proxy = Service::new("proxy".to_string(), Guarded::new(proxy_app, doors, "proxy"));
    let tls = cfg.server.tls.as_ref();
    listen(&mut proxy, cfg.server.proxy_listen, tls, Listener::Proxy)?;

    let mcp_app = McpHttpApp::new(live.clone(), CancellationToken::new());
    let mut mcp = Service::new("mcp".to_string(), Guarded::new(mcp_app, doors, "mcp"));
    listen(&mut mcp, cfg.server.mcp_listen, tls, Listener::Mcp)?;

    let admin_app = AdminApp::new(live.clone());
    let mut admin = Service::new(
        "admin".to_string(),
        Guarded::new(admin_app, admin_limits, "admin"),
    );
    listen(&mut admin, cfg.server.admin_listen, tls, Listener::Admin)?;
    admin.threads = Some(1);

    let demo = cfg.demo.map(|addr| {
        let mut demo = Service::new(
            "demo".to_string(),
            Guarded::new(crate::demo::DemoUpstream, admin_limits, "demo"),
        );
        demo.add_tcp(&addr.to_string());
        demo.threads = Some(1);
        demo
    });
    tracing::info!(
        tls = tls.is_some(),
        mtls = tls.is_some_and(|t| t.client_ca_file.is_some()),
        mcp = %cfg.server.mcp_listen,
        proxy = %cfg.server.proxy_listen,
        admin = %cfg.server.admin_listen,
        max_connections = doors.max_connections,
        apis = cfg.apis.len(),
        "api-gateway-mcp listening"
    );
    if cfg.log_format == crate::config::LogFormat::Text {
        eprintln!("{}", banner(&cfg));
    }
    spawn_background(
        live.clone(),
        &cfg.server,
        Some(server.watch_execution_phase()),
    );
    server.add_service(proxy);
    server.add_service(mcp);
    server.add_service(admin);
    if let Some(d) = demo {
        server.add_service(d);
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingSignals {
            live: live.clone(),
            delay: cfg.server.drain_delay,
        }),
    });
    // The doors have drained: write every queued audit record before exiting.
    live.current().shutdown();
    Ok(())
}

/// What a person starting the gateway reads first: where each door listens, the APIs,
/// whether callers must authenticate, and a command to try on each door.
fn banner(cfg: &Config) -> String {
    let s = &cfg.server;
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    let api = cfg.apis.first();
    let mut out = format!(
        "\napi-gateway-mcp {} is serving\n  MCP door    {scheme}://{}/mcp\n  proxy door  {scheme}://{}/{{api}}/{{path}}\n  admin       {scheme}://{}/healthz, /metrics\n",
        env!("CARGO_PKG_VERSION"),
        s.mcp_listen,
        s.proxy_listen,
        s.admin_listen
    );
    if let Some(d) = cfg.demo {
        out.push_str(&format!(
            "  demo        http://{d}: a built-in demo upstream that echoes what it receives (the embedded defaults; off in any config that has no [demo])\n"
        ));
    }
    let names: Vec<String> = cfg
        .apis
        .iter()
        .map(|a| format!("{} ({})", a.name, a.base.original))
        .collect();
    out.push_str(&format!("  APIs        {}\n", names.join(", ")));
    out.push_str(if cfg.auth.required {
        "  auth        required: send Authorization: Bearer <token> or X-API-Key\n"
    } else {
        "  auth        off: anonymous callers are served (set [auth] required = true)\n"
    });
    if let (Some(api), false) = (api, cfg.auth.required) {
        let method_ok = api.methods.contains(&http::Method::GET);
        if method_ok {
            out.push_str(&format!(
                "Try:\n  curl -s '{scheme}://{}/{}/hello?name=world'\n  curl -s {scheme}://{}/mcp -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \\\n    -H 'mcp-protocol-version: 2026-07-28' -H 'mcp-method: tools/call' -H 'mcp-name: api_gateway' \\\n    -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"api_gateway\",\"arguments\":{{\"api\":\"{}\",\"endpoint\":\"/hello\"}},\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientCapabilities\":{{}},\"io.modelcontextprotocol/clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}}}'\n",
                s.proxy_listen, api.name, s.mcp_listen, api.name
            ));
        }
    }
    out
}

/// The door listeners' and the admin listener's connection caps and head deadline.
///
/// The descriptor limit is raised to its hard maximum first. Without `server.max_connections`,
/// each door may hold a quarter of what remains after a reserve (a door connection can hold
/// an upstream connection too, and there are two doors), at most 10,000: the admin listener,
/// the audit file and the Redis connections keep the reserve.
fn connection_limits(server: &crate::config::ServerConfig) -> (Limits, Limits) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const RESERVE: u64 = 256;
    let nofile = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    let derived = (nofile.saturating_sub(RESERVE) / 4).clamp(16, 10_000) as usize;
    let max_connections = server.max_connections.unwrap_or(derived);
    if (max_connections as u64).saturating_mul(4) + RESERVE > nofile {
        tracing::warn!(
            max_connections,
            descriptor_limit = nofile,
            "server.max_connections is more than the descriptor limit allows for both doors; \
             under load the admin listener may not accept (raise `ulimit -n`)"
        );
    }
    let head_timeout = server.request_head_timeout;
    (
        Limits {
            max_connections,
            head_timeout,
        },
        Limits {
            max_connections: server.admin_max_connections,
            head_timeout,
        },
    )
}

/// Pingora's Unix signals, plus a drain phase: on SIGTERM `/readyz` fails at once, the doors
/// keep serving for `server.drain_delay` (so load balancers stop routing here), and only
/// then does Pingora close the listeners and drain calls in flight.
struct DrainingSignals {
    live: Arc<Live>,
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
                self.live.set_draining();
                tracing::info!(delay_ms = self.delay.as_millis() as u64, "SIGTERM: /readyz fails; draining");
                tokio::time::sleep(self.delay).await;
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Serves MCP over stdin/stdout on its own runtime.
pub fn stdio(config: Config, source: Option<PathBuf>) -> anyhow::Result<()> {
    if config.audit.enabled && config.audit.sink == crate::config::AuditSink::Stdout {
        anyhow::bail!(
            "audit.sink: \"stdout\" cannot be used with the stdio transport, which owns stdout; use \"file\""
        );
    }
    let gateway: Arc<Gateway> = Gateway::new(config).map_err(|e| anyhow::anyhow!(e))?;
    let server = gateway.config.server.clone();
    let live = Live::new(gateway, source);
    spawn_background(live.clone(), &server, None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(crate::mcp::serve_stdio(live.clone()));
    live.current().shutdown();
    result
}

/// The process's one background thread, on a small runtime of its own:
/// - reloads the config on SIGHUP and, with `server.watch_config`, when the file's content
///   changes (polled every `server.watch_interval`; this also sees a Kubernetes ConfigMap's
///   symlink swap);
/// - with `phases` (the Pingora server's execution phases), ends a graceful shutdown early:
///   see [`exit_when_drained`].
fn spawn_background(
    live: Arc<Live>,
    server: &crate::config::ServerConfig,
    phases: Option<tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>>,
) {
    let watch = server.watch_config.then_some(server.watch_interval);
    let grace = server.shutdown_grace;
    let spawned = std::thread::Builder::new()
        .name("agm-background".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "no background runtime: no reloads, and shutdown waits the whole grace period");
                    return;
                }
            };
            rt.block_on(async {
                let drain = async {
                    if let Some(phases) = phases {
                        exit_when_drained(phases, live.clone(), grace).await;
                    }
                };
                tokio::join!(
                    watch_and_reload(live.clone(), watch),
                    drain,
                    sweep_approvals(live.clone()),
                    refresh_documents(live.clone())
                );
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "no background thread: no reloads, and shutdown waits the whole grace period");
    }
}

/// Every 5 s, when approval rules exist: expires requests that outlived their wait (the
/// `approval_expired` event, `on_timeout = "deny"`) and sets
/// `api_approval_oldest_pending_ratio{rule}`, the oldest waiting request's age over its
/// rule's `ttl` (the alert fires past 0.5).
async fn sweep_approvals(live: Arc<Live>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let gw = live.current();
        if gw.config.approvals.rules.is_empty() {
            continue;
        }
        gw.pipeline.sweep_approvals().await;
    }
}

/// Reads OpenAPI documents again on their timers (they are read at start and reload): a URL
/// document every `refresh` (default 1 h), a file with `refresh` set; one that could not be
/// read, within 10 s. A change is
/// served or kept out as the API's `on_change` says; a change to the tool list is told to the
/// sessions and subscriptions.
async fn refresh_documents(live: Arc<Live>) {
    let mut due: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    loop {
        let gw = live.current();
        let now = tokio::time::Instant::now();
        for api in &gw.config.apis {
            let Some(every) = crate::surface::refresh_interval(api) else {
                continue;
            };
            let key = format!(
                "{}\n{:?}",
                api.name,
                api.openapi.as_ref().map(|o| &o.source)
            );
            let next = due.entry(key).or_insert(now + every);
            if *next > now {
                continue;
            }
            if gw.refresh_document(api).await {
                live.notify_tools_changed();
            }
            // A document that could not be read is tried again sooner.
            let failed = gw
                .surface
                .load()
                .documents
                .get(&api.name)
                .is_some_and(|d| d.error.is_some());
            *next = now
                + if failed {
                    every.min(Duration::from_secs(10))
                } else {
                    every
                };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After SIGTERM, once Pingora has closed the listeners and begun its grace period: waits
/// until no request is in flight (quiet for 100 ms, so a request read just as the listeners
/// closed is counted), flushes audit records and spans, and exits 0. A request still running
/// when `server.grace_period` ends is cut off by Pingora's own shutdown.
async fn exit_when_drained(
    mut phases: tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>,
    live: Arc<Live>,
    grace: Duration,
) {
    use pingora::server::ExecutionPhase;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    let mut quiet_since: Option<tokio::time::Instant> = None;
    while tokio::time::Instant::now() < deadline {
        match (live.in_flight() == 0, quiet_since) {
            (true, Some(t)) if t.elapsed() >= Duration::from_millis(100) => {
                tracing::info!("drained: no request in flight; exiting");
                live.current().shutdown();
                std::process::exit(0);
            }
            (true, None) => quiet_since = Some(tokio::time::Instant::now()),
            (false, _) => quiet_since = None,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(
        in_flight = live.in_flight(),
        "grace period over with requests in flight; they are cut off"
    );
}

async fn watch_and_reload(live: Arc<Live>, watch: Option<Duration>) {
    use tokio::signal::unix::{signal, SignalKind};
    let fingerprint = |live: &Live| {
        live.source()
            .and_then(|p| std::fs::read(p).ok())
            .map(|bytes| {
                use sha2::Digest;
                sha2::Sha256::digest(&bytes)
            })
    };
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP reloads are off");
            return;
        }
    };
    let watching = watch.is_some() && live.source().is_some();
    let mut tick = tokio::time::interval(watch.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = fingerprint(&live);
    // A new content is reloaded once it has stayed the same for one interval, so a file
    // caught half-written (an editor saving in place) is not tried.
    let mut pending = None;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                seen = fingerprint(&live);
                pending = None;
                let _ = live.reload("SIGHUP");
            }
            _ = tick.tick(), if watching => {
                let now = fingerprint(&live);
                if now.is_none() || now == seen {
                    pending = None;
                } else if now == pending {
                    // Each content is tried once: a bad file is not retried until it changes.
                    seen = now;
                    pending = None;
                    let _ = live.reload("file changed");
                } else {
                    pending = now;
                }
            }
        }
    }
}
