//! OTLP traces, received by real collectors started here: an OTLP/HTTP receiver (the test
//! upstream answering `POST /v1/traces`) and an OTLP/gRPC receiver (an HTTP/2 server speaking
//! gRPC framing). Both decode the protobuf export requests the gateway sends.
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

/// Spans exported while the batch processor would still be waiting: only the flush at
/// shutdown delivers them.
const EXPORT_ONLY_AT_SHUTDOWN: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "600000")];

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The spans of export requests, each with its resource's `service.name`.
fn decode(requests: &[Vec<u8>]) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for body in requests {
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| value(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push((service.clone(), s));
                }
            }
        }
    }
    out
}

fn value(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    value(&s.attributes, key)
}

/// `(trace id, span id, flags)` of a `traceparent` value.
fn traceparent(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {v:?}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

fn kind(s: &Span) -> SpanKind {
    SpanKind::try_from(s.kind).unwrap()
}

/// An OTLP/HTTP receiver: records `POST /v1/traces` bodies and answers 200.
fn http_collector() -> Upstream {
    Upstream::start_with(Arc::new(|r: &Seen| {
        (r.method == "POST" && r.target == "/v1/traces")
            .then(|| (200, "application/x-protobuf".to_string(), Vec::new()))
    }))
}

fn http_exports(c: &Upstream) -> Vec<Vec<u8>> {
    c.seen()
        .into_iter()
        .filter(|r| r.target == "/v1/traces")
        .map(|r| {
            assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
            r.body
        })
        .collect()
}

#[tokio::test]
async fn both_doors_export_server_and_upstream_spans_over_otlp_http() {
    let up = Upstream::start();
    let collector = http_collector();
    let mut gw = Gateway::start_generated_env(
        |ports| {
            format!(
                "{}[tracing]\nendpoint = \"http://127.0.0.1:{}\"\nprotocol = \"http/protobuf\"\n\n{}",
                server_section(ports, 1),
                collector.port,
                loopback_get_api(
                    "local",
                    up.port,
                    &format!("credentials = {{ query = \"appid\", value = \"{QUERY_SECRET}\" }}"),
                )
            )
        },
        EXPORT_ONLY_AT_SHUTDOWN,
    );
    let c = reqwest::Client::new();
    let caller_tp = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");

    // 1. Proxy door, with the caller's trace context.
    let r = c
        .get(gw.proxy_url("/local/echo?q=1"))
        .header("traceparent", &caller_tp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // 2. Proxy door, no trace context: the gateway starts the trace.
    assert_eq!(get_status(&c, &gw.proxy_url("/local/plain")).await, 200);
    // 3. A refusal: no upstream request, so no client span.
    let r = c.delete(gw.proxy_url("/local/x")).send().await.unwrap();
    let refused_status = r.status().as_u16();
    assert!(refused_status >= 400);
    // 4. MCP door, with another caller trace.
    let mcp_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut s = McpSession::connect_with(
        &gw.mcp_url(),
        &[(
            "traceparent",
            &format!("00-{mcp_trace}-b7ad6b7169203331-01"),
        )],
    )
    .await;
    let res = s
        .call(
            "api_gateway",
            json!({"api": "local", "endpoint": "/mcp-echo", "method": "GET"}),
        )
        .await;
    assert_eq!(res["isError"], json!(false), "{res}");

    let seen = up.seen();
    let tp_of = |path: &str| {
        let r = seen
            .iter()
            .find(|r| r.target.starts_with(path))
            .unwrap_or_else(|| panic!("{path} did not reach the upstream"));
        traceparent(r.header("traceparent").expect("traceparent sent upstream"))
    };
    let (t1, client1, f1) = tp_of("/echo");
    assert_eq!((t1.as_str(), f1.as_str()), (CALLER_TRACE, "01"));
    let (t2, client2, _) = tp_of("/plain");
    assert_ne!(t2, CALLER_TRACE);
    let (t4, client4, _) = tp_of("/mcp-echo");
    assert_eq!(t4, mcp_trace);

    // Nothing was exported before shutdown; SIGTERM flushes every span.
    assert!(http_exports(&collector).is_empty());
    terminate(&mut gw);
    let bodies = http_exports(&collector);
    for b in &bodies {
        let text = String::from_utf8_lossy(b);
        assert!(
            !text.contains(QUERY_SECRET),
            "an injected credential reached a span"
        );
    }
    let spans = decode(&bodies);
    assert!(spans
        .iter()
        .all(|(service, _)| service == "api-gateway-mcp"));
    let spans: Vec<Span> = spans.into_iter().map(|(_, s)| s).collect();
    let by_id: HashMap<String, &Span> =
        spans.iter().map(|s| (hex::encode(&s.span_id), s)).collect();

    // Proxy call 1: the client span is the one named upstream; its parent is the server span,
    // whose parent is the caller's span.
    let client = by_id[&client1];
    assert_eq!(kind(client), SpanKind::Client);
    assert_eq!(client.name, "GET");
    assert_eq!(hex::encode(&client.trace_id), CALLER_TRACE);
    assert_eq!(attr(client, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        attr(client, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(client, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr(client, "url.full"),
        Some(format!("http://127.0.0.1:{}/echo", up.port)),
        "url.full leaves the query (and the credential in it) out"
    );
    let server = by_id[&hex::encode(&client.parent_span_id)];
    assert_eq!(kind(server), SpanKind::Server);
    assert_eq!(server.name, "GET /local/{path}");
    assert_eq!(hex::encode(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(attr(server, "http.route").as_deref(), Some("/local/{path}"));
    assert_eq!(attr(server, "url.path").as_deref(), Some("/local/echo"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(server, "api_gateway.api").as_deref(), Some("local"));
    assert_eq!(
        attr(server, "api_gateway.principal").as_deref(),
        Some("anonymous")
    );
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);

    // Proxy call 2: a root server span, and the trace id the audit record carries is its.
    let client = by_id[&client2];
    let server = by_id[&hex::encode(&client.parent_span_id)];
    assert!(
        server.parent_span_id.is_empty(),
        "a trace started here has no parent"
    );
    assert_eq!(hex::encode(&server.trace_id), t2);
    let audit =
        std::fs::read_to_string(gw.config_path.parent().unwrap().join("audit.jsonl")).unwrap();
    let plain: serde_json::Value = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| r["event"].clone())
        .find(|e| e["path"] == json!("/local/plain"))
        .expect("audit record of /local/plain");
    assert_eq!(plain["trace_id"], json!(t2));

    // Call 3: the refusal's server span says why, and nothing went upstream.
    let refused = spans
        .iter()
        .find(|s| s.name.starts_with("DELETE"))
        .expect("a span for the refused call");
    assert_eq!(
        attr(refused, "http.response.status_code"),
        Some(refused_status.to_string())
    );
    assert!(attr(refused, "error.type").is_some());
    assert!(!spans.iter().any(|s| s.parent_span_id == refused.span_id));

    // MCP call: `tools/call api_gateway` under the caller's span, with the upstream client span.
    let client = by_id[&client4];
    assert_eq!(kind(client), SpanKind::Client);
    let server = by_id[&hex::encode(&client.parent_span_id)];
    assert_eq!(server.name, "tools/call api_gateway");
    assert_eq!(kind(server), SpanKind::Server);
    assert_eq!(hex::encode(&server.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        attr(server, "mcp.method.name").as_deref(),
        Some("tools/call")
    );
    assert_eq!(
        attr(server, "gen_ai.tool.name").as_deref(),
        Some("api_gateway")
    );
    assert_eq!(attr(server, "api_gateway.api").as_deref(), Some("local"));
    assert!(attr(server, "error.type").is_none());
}

/// An OTLP/gRPC receiver: an HTTP/2 server that answers every unary call with an empty
/// message and `grpc-status: 0`, recording each request's path and message.
struct GrpcCollector {
    port: u16,
    calls: Arc<Mutex<Vec<GrpcCall>>>,
}

/// A gRPC request's path and its message.
type GrpcCall = (String, Vec<u8>);

impl GrpcCollector {
    fn start() -> GrpcCollector {
        let (listener, port) = bind_free_port();
        listener.set_nonblocking(true).unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let record = calls.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    let record = record.clone();
                    tokio::spawn(async move {
                        let Ok(mut conn) = h2::server::handshake(sock).await else {
                            return;
                        };
                        while let Some(Ok((req, mut respond))) = conn.accept().await {
                            let record = record.clone();
                            tokio::spawn(async move {
                                let path = req.uri().path().to_string();
                                let mut body = req.into_body();
                                let mut buf = Vec::new();
                                while let Some(Ok(chunk)) = body.data().await {
                                    let _ = body.flow_control().release_capacity(chunk.len());
                                    buf.extend_from_slice(&chunk);
                                }
                                // One length-prefixed message: flag byte, 4-byte length.
                                assert_eq!(buf[0], 0, "uncompressed");
                                let len = u32::from_be_bytes(buf[1..5].try_into().unwrap());
                                record
                                    .lock()
                                    .unwrap()
                                    .push((path, buf[5..5 + len as usize].to_vec()));
                                let resp = http::Response::builder()
                                    .status(200)
                                    .header("content-type", "application/grpc")
                                    .body(())
                                    .unwrap();
                                let mut send = respond.send_response(resp, false).unwrap();
                                send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false)
                                    .unwrap();
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                send.send_trailers(trailers).unwrap();
                            });
                        }
                    });
                }
            });
        });
        GrpcCollector { port, calls }
    }
}

#[tokio::test]
async fn grpc_export_and_parent_based_sampling() {
    let up = Upstream::start();
    let collector = GrpcCollector::start();
    let mut gw = Gateway::start_generated_env(
        |ports| {
            format!(
                "{}[tracing]\nendpoint = \"http://127.0.0.1:{}\"\nprotocol = \"grpc\"\n\
                 sampling_ratio = 0.0\nservice_name = \"edge-gw\"\n\n{}",
                server_section(ports, 1),
                collector.port,
                loopback_get_api("local", up.port, "")
            )
        },
        EXPORT_ONLY_AT_SHUTDOWN,
    );
    let c = reqwest::Client::new();
    // A new trace is sampled with ratio 0: not sampled, and the upstream is told so.
    assert_eq!(get_status(&c, &gw.proxy_url("/local/unsampled")).await, 200);
    // A sampled caller stays sampled (parent-based).
    let r = c
        .get(gw.proxy_url("/local/sampled"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    let flags_of = |path: &str| {
        let r = seen.iter().find(|r| r.target == path).unwrap();
        traceparent(r.header("traceparent").unwrap())
    };
    assert_eq!(flags_of("/unsampled").2, "00");
    let (trace, client_id, flags) = flags_of("/sampled");
    assert_eq!((trace.as_str(), flags.as_str()), (CALLER_TRACE, "01"));

    terminate(&mut gw);
    let calls = collector.calls.lock().unwrap().clone();
    assert!(!calls.is_empty(), "no export reached the gRPC collector");
    assert!(calls
        .iter()
        .all(|(path, _)| path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"));
    let bodies: Vec<Vec<u8>> = calls.into_iter().map(|(_, b)| b).collect();
    let spans = decode(&bodies);
    // Only the sampled trace was exported: its server span and its client span.
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(spans
        .iter()
        .all(|(service, s)| service == "edge-gw" && hex::encode(&s.trace_id) == CALLER_TRACE));
    let client = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| hex::encode(&s.span_id) == client_id)
        .expect("the client span named upstream");
    let server = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| kind(s) == SpanKind::Server)
        .unwrap();
    assert_eq!(client.parent_span_id, server.span_id);
}

/// A collector that is down costs the calls nothing, and the lost spans are counted.
#[tokio::test]
async fn a_collector_that_is_down_is_counted_not_silent() {
    let up = Upstream::start();
    let (_refuser, port) = refusing_port();
    let gw = Gateway::start_generated_env(
        |ports| {
            format!(
                "{}[tracing]\nendpoint = \"http://127.0.0.1:{port}\"\n\n{}",
                server_section(ports, 1),
                loopback_get_api("local", up.port, "")
            )
        },
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let c = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 200);
    }
    // Three calls, each a server and a client span.
    assert_eq!(
        counter_at(&gw, "api_trace_spans_dropped_total", 6.0).await,
        6.0
    );
}

/// A token exchange made for a call is a child span of the call's server span, ending before
/// the upstream request starts; neither the exchanged token nor the caller's appears in any
/// exported span.
#[tokio::test]
async fn a_token_exchange_is_a_child_span_of_its_call() {
    let up = Upstream::start();
    let idp = Upstream::start_with(Arc::new(|r: &Seen| {
        (r.target == "/token").then(|| {
            let body = br#"{"access_token":"exchanged-token-5b1f","expires_in":300}"#.to_vec();
            (200, "application/json".to_string(), body)
        })
    }));
    let collector = http_collector();
    let mut gw = Gateway::start_generated_env(
        |ports| {
            format!(
                "{}[tracing]\nendpoint = \"http://127.0.0.1:{}\"\nprotocol = \"http/protobuf\"\n\n{}",
                server_section(ports, 1),
                collector.port,
                loopback_get_api(
                    "tx",
                    up.port,
                    &format!(
                        "credentials = {{ mode = \"token_exchange\", header = \"Authorization\", \
                         token_endpoint = \"http://127.0.0.1:{}/token\", client_id = \"gw\", \
                         allow_private_network = true }}",
                        idp.port
                    ),
                )
            )
        },
        EXPORT_ONLY_AT_SHUTDOWN,
    );
    let token = jwt(json!({"sub": "tracy"}));
    let r = reqwest::Client::new()
        .get(gw.proxy_url("/tx/traced"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    terminate(&mut gw);
    let bodies = http_exports(&collector);
    for b in &bodies {
        let text = String::from_utf8_lossy(b);
        assert!(!text.contains("exchanged-token-5b1f") && !text.contains(&token));
    }
    let spans: Vec<Span> = decode(&bodies).into_iter().map(|(_, s)| s).collect();
    let server = spans
        .iter()
        .find(|s| kind(s) == SpanKind::Server)
        .expect("the call's server span");
    let exchange = spans
        .iter()
        .find(|s| s.name == "credential token request")
        .expect("the exchange's span");
    assert_eq!(exchange.parent_span_id, server.span_id);
    assert_eq!(exchange.trace_id, server.trace_id);
    assert_eq!(kind(exchange), SpanKind::Client);
    let upstream = spans
        .iter()
        .find(|s| kind(s) == SpanKind::Client && s.name == "GET")
        .expect("the upstream span");
    assert!(exchange.end_time_unix_nano <= upstream.start_time_unix_nano);
    assert!(exchange.start_time_unix_nano >= server.start_time_unix_nano);
}
