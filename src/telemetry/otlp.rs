//! OTLP traces: one server span per call and one client span per upstream request, exported
//! in batches over OTLP/HTTP (protobuf) or OTLP/gRPC.
//!
//! - A caller's W3C `traceparent` is the server span's remote parent; without one the server
//!   span starts a trace, and that trace id is the one audit records carry.
//! - The upstream request's `traceparent` names the client span, so the API's own spans hang
//!   under the gateway's.
//! - Sampling is parent-based: a sampled caller stays sampled; a new trace is sampled with
//!   `tracing.sampling_ratio` (or as `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` say).
//! - Spans are exported from a background thread, so a slow collector never holds a call up;
//!   [`Tracing::shutdown`] flushes what is queued.
//! - Attributes follow the OTel HTTP and MCP semantic conventions. No query string, header,
//!   token or injected credential is ever recorded.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, SpanId, TraceFlags, TraceId};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter,
};

use crate::config::{OtlpProtocol, TracingConfig};
use crate::error::GatewayError;
use crate::trace::TraceContext;

/// The span exporter and its tracer, when `[tracing]` is enabled.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Drives the gRPC client (tonic needs a Tokio runtime of its own: the doors' runtimes
    /// belong to Pingora).
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Tracing {
    /// Builds the exporter. Call it outside any async runtime (the HTTP client owns one).
    pub fn start(cfg: &TracingConfig) -> Result<Option<Tracing>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        // What both transports take from `[tracing]` (unset: the OTEL_* variables decide).
        fn endpoint_and_timeout<B: WithExportConfig>(mut b: B, cfg: &TracingConfig) -> B {
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Some(t) = cfg.timeout {
                b = b.with_timeout(t);
            }
            b
        }
        let (exporter, runtime) = match cfg.protocol {
            OtlpProtocol::HttpProtobuf => {
                let b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                let b = endpoint_and_timeout(b, cfg);
                (b.build().map_err(|e| format!("tracing: {e}"))?, None)
            }
            OtlpProtocol::Grpc => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("otlp-grpc")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("tracing: cannot start the gRPC runtime: {e}"))?;
                let exporter = rt.block_on(async {
                    let mut b = endpoint_and_timeout(
                        opentelemetry_otlp::SpanExporter::builder().with_tonic(),
                        cfg,
                    );
                    if cfg
                        .endpoint
                        .as_deref()
                        .is_some_and(|e| e.starts_with("https:"))
                    {
                        b = b.with_tls_config(
                            opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                                .with_native_roots(),
                        );
                    }
                    b.build()
                });
                (exporter.map_err(|e| format!("tracing: {e}"))?, Some(rt))
            }
        };
        let mut resource = opentelemetry_sdk::Resource::builder();
        if let Some(name) = &cfg.service_name {
            resource = resource.with_service_name(name.clone());
        } else if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("api-gateway-mcp");
        }
        let resource = resource
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let mut builder = SdkTracerProvider::builder()
            .with_batch_exporter(Counted {
                inner: exporter,
                failing: AtomicBool::new(false),
            })
            .with_resource(resource);
        if let Some(ratio) = cfg.sampling_ratio {
            builder = builder.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        let provider = builder.build();
        let tracer = provider.tracer("api-gateway-mcp");
        Ok(Some(Tracing {
            provider,
            tracer,
            _runtime: runtime,
        }))
    }

    /// Starts the server span of one call. Without a caller `traceparent`, the span starts a
    /// trace and `trace` takes on its id.
    pub fn server_span(
        &self,
        name: String,
        trace: &mut TraceContext,
        attributes: Vec<KeyValue>,
    ) -> CallSpan {
        let parent = if trace.parent_id == [0; 8] {
            Context::new()
        } else {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(trace.trace_id),
                SpanId::from_bytes(trace.parent_id),
                TraceFlags::new(trace.flags),
                true,
                TraceState::default(),
            ))
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let sc = span.span_context();
        if sc.is_valid() {
            trace.trace_id = sc.trace_id().to_bytes();
        }
        CallSpan {
            server: span,
            upstream: None,
        }
    }

    /// Exports every queued span; called once the doors have stopped.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "tracing: spans could not all be exported at shutdown");
        }
    }
}

/// The spans of one call.
pub struct CallSpan {
    server: Span,
    /// The current upstream request's span, and the status it was answered with.
    upstream: Option<(Span, Option<u16>)>,
}

impl CallSpan {
    pub fn set(&mut self, kv: KeyValue) {
        self.server.set_attribute(kv);
    }

    /// The trace this call belongs to.
    pub fn trace_id(&self) -> [u8; 16] {
        self.server.span_context().trace_id().to_bytes()
    }

    /// Starts the client span of the upstream request (ending one a retry replaces) and
    /// returns the `traceparent` that names it.
    pub fn upstream(
        &mut self,
        tracing: &Tracing,
        method: &str,
        api: &crate::config::Api,
        path: &str,
    ) -> String {
        self.end_upstream();
        let parent = Context::new().with_remote_span_context(self.server.span_context().clone());
        let base = &api.base;
        let scheme = if base.tls { "https" } else { "http" };
        // `url.full` without the query: an injected credential may travel in it.
        let path = path.split('?').next().unwrap_or("");
        let span = tracing
            .tracer
            .span_builder(Cow::Owned(method.to_string()))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("server.address", base.host.clone()),
                KeyValue::new("server.port", i64::from(base.port)),
                KeyValue::new(
                    "url.full",
                    format!("{scheme}://{}{path}", base.host_header()),
                ),
                KeyValue::new("api_gateway.api", api.name.clone()),
            ])
            .start_with_context(&tracing.tracer, &parent);
        let sc = span.span_context().clone();
        self.upstream = Some((span, None));
        crate::trace::traceparent(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
        )
    }

    /// A finished child span of the call (a token request made for its credential), with
    /// its own start and end.
    pub fn child(
        &mut self,
        tracing: &Tracing,
        name: &'static str,
        start: std::time::SystemTime,
        end: std::time::SystemTime,
        ok: bool,
    ) {
        let parent = Context::new().with_remote_span_context(self.server.span_context().clone());
        let mut span = tracing
            .tracer
            .span_builder(Cow::Borrowed(name))
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .start_with_context(&tracing.tracer, &parent);
        if !ok {
            span.set_status(Status::error("the token endpoint did not issue a token"));
        }
        span.end_with_timestamp(end);
    }

    /// Records the status the API answered the current upstream request with.
    pub fn upstream_answered(&mut self, status: u16) {
        if let Some((_, s)) = self.upstream.as_mut() {
            *s = Some(status);
        }
    }

    /// Ends the upstream span: with the API's status, or as failed when none came back.
    fn end_upstream(&mut self) {
        if let Some((mut s, status)) = self.upstream.take() {
            match status {
                Some(code) => {
                    s.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
                    if code >= 500 {
                        s.set_attribute(KeyValue::new("error.type", code.to_string()));
                        s.set_status(Status::error(""));
                    }
                }
                None => {
                    s.set_attribute(KeyValue::new("error.type", "no_response"));
                    s.set_status(Status::error("no response from the upstream"));
                }
            }
            s.end();
        }
    }

    /// Ends the call: `status` is the HTTP status the caller was answered with (0: none, as
    /// for an MCP tool call), `error` the gateway's refusal or failure, if any.
    pub fn end(mut self, status: u16, error: Option<&GatewayError>) {
        self.end_upstream();
        if status != 0 {
            self.server.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(e) = error {
            self.server
                .set_attribute(KeyValue::new("error.type", e.kind.code()));
            if let Some(r) = e.reason {
                self.server
                    .set_attribute(KeyValue::new("api_gateway.reason", r.code()));
            }
        }
        if status >= 500 || (status == 0 && error.is_some()) {
            self.server.set_status(Status::error(
                error.map_or("", |e| e.kind.code()).to_string(),
            ));
        }
        self.server.end();
    }
}

/// The OTLP exporter, with failed exports counted (`api_trace_spans_dropped_total`) and logged
/// once when exporting starts failing and once when it recovers: a collector that is down is
/// visible, never silent.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len() as u64;
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            match &result {
                Ok(()) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("tracing: span export recovered");
                    }
                }
                Err(e) => {
                    crate::telemetry::metrics()
                        .trace_spans_dropped
                        .inc_by(spans);
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, spans, "tracing: span export failed; spans are dropped until the collector answers");
                    }
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}
