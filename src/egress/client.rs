//! The egress client: the [`Egress`] value with its pooled Pingora connector, the peer both
//! doors dial, the MCP door's request/response exchange, and the mapping of Pingora errors.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::config::Api;
use crate::error::GatewayError;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The `User-Agent` sent upstream by the MCP door when the caller sets none.
const USER_AGENT: &str = concat!("api-gateway-mcp/", env!("CARGO_PKG_VERSION"));

/// A request for [`Egress::send`].
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    /// From [`upstream_path_and_query`](super::upstream_path_and_query).
    pub path_and_query: String,
    /// Every header the request carries besides `Host`, `User-Agent`, `Accept` and
    /// `Content-Length` (which are set here): for a call, the admitted caller headers and
    /// the credential.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
}

/// What came back from an upstream, capped.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the body was cut at the response cap.
    pub truncated: bool,
    /// Whether the request went over a pooled connection.
    pub reused: bool,
}

/// The egress client: DNS + SSRF guard, and the MCP door's pooled connector.
pub struct Egress {
    connector: Connector,
    /// Resolver for `egress.nameservers`; `None` uses the system resolver.
    pub(super) resolver: Option<hickory_resolver::TokioResolver>,
}

impl Default for Egress {
    fn default() -> Self {
        Self::new()
    }
}

impl Egress {
    pub fn new() -> Self {
        Egress {
            connector: Connector::new(None),
            resolver: None,
        }
    }

    /// Resolves API hosts through these DNS servers (UDP, then TCP) instead of the system
    /// resolver. Every answer still passes the SSRF guard.
    pub fn with_nameservers(servers: &[SocketAddr]) -> Self {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
        if servers.is_empty() {
            return Self::new();
        }
        let configs = servers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        let resolver = hickory_resolver::TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(configs),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .ok();
        Egress {
            connector: Connector::new(None),
            resolver,
        }
    }

    /// The Pingora peer for a vetted address: dial the IP, keep the hostname for SNI (so TLS is
    /// verified against it), with the API's connect and read deadlines.
    pub fn peer(api: &Api, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, api.base.tls, api.base.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(api.connect_timeout);
        o.total_connection_timeout = Some(api.connect_timeout);
        o.read_timeout = Some(api.timeout);
        o.write_timeout = Some(api.timeout);
        o.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        o.verify_cert = true;
        o.verify_hostname = true;
        peer
    }

    /// The whole egress path for one request the gateway makes itself (JWKS, introspection):
    /// resolve and vet the destination, then send.
    pub async fn fetch(
        &self,
        api: &Api,
        req: OutboundRequest,
        max_body: usize,
    ) -> Result<UpstreamResponse, GatewayError> {
        let addr = self.resolve(api).await?;
        self.send(api, addr, req, max_body).await
    }

    /// Sends one request for the MCP door and reads at most `max_body` response bytes.
    /// The whole exchange is bounded by the API's `timeout`. Redirects are returned, not followed.
    pub async fn send(
        &self,
        api: &Api,
        addr: SocketAddr,
        req: OutboundRequest,
        max_body: usize,
    ) -> Result<UpstreamResponse, GatewayError> {
        let peer = Self::peer(api, addr);
        let header = self.request_header(api, &req)?;
        let exchange = async {
            // A pooled connection may have been closed by the upstream while idle; such a
            // failure before any response byte is retried on another connection.
            let mut attempts = 0;
            loop {
                attempts += 1;
                match self
                    .exchange(&peer, header.clone(), req.body.clone(), max_body)
                    .await
                {
                    Err((e, true)) if attempts < 3 && is_stale_connection(&e) => continue,
                    Err((e, _)) => return Err(e),
                    Ok(r) => return Ok(r),
                }
            }
        };
        // Boxed once, so the timeout wrapper moves a pointer rather than the exchange's
        // large future.
        match tokio::time::timeout(api.timeout, Box::pin(exchange)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(map_pingora_error(api, &e)),
            Err(_) => Err(GatewayError::upstream_timeout(format!(
                "API {:?} did not answer within {:?}",
                api.name, api.timeout
            ))),
        }
    }

    fn request_header(
        &self,
        api: &Api,
        req: &OutboundRequest,
    ) -> Result<Box<RequestHeader>, GatewayError> {
        let internal = |_| GatewayError::internal("could not build the upstream request");
        let mut h = RequestHeader::build(
            req.method.clone(),
            req.path_and_query.as_bytes(),
            Some(req.headers.len() + 6),
        )
        .map_err(internal)?;
        h.insert_header(http::header::HOST, api.base.host_header())
            .map_err(internal)?;
        for (k, v) in &req.headers {
            h.append_header(k.clone(), v.clone()).map_err(internal)?;
        }
        if !h.headers.contains_key(http::header::USER_AGENT) {
            h.insert_header(http::header::USER_AGENT, USER_AGENT)
                .map_err(internal)?;
        }
        if !h.headers.contains_key(http::header::ACCEPT) {
            h.insert_header(http::header::ACCEPT, "application/json, */*;q=0.5")
                .map_err(internal)?;
        }
        match &req.body {
            Some(b) => h
                .insert_header(http::header::CONTENT_LENGTH, b.len().to_string())
                .map_err(internal)?,
            None if matches!(req.method, Method::POST | Method::PUT | Method::PATCH) => h
                .insert_header(http::header::CONTENT_LENGTH, "0")
                .map_err(internal)?,
            None => {}
        }
        Ok(Box::new(h))
    }

    /// One attempt. The error's flag says whether the connection came from the pool.
    async fn exchange(
        &self,
        peer: &HttpPeer,
        header: Box<RequestHeader>,
        body: Option<Bytes>,
        max_body: usize,
    ) -> Result<UpstreamResponse, (Box<pingora::Error>, bool)> {
        let (mut session, reused) = self
            .connector
            .get_http_session(peer)
            .await
            .map_err(|e| (e, false))?;
        let io = async {
            session.write_request_header(header).await?;
            if let Some(b) = body {
                session.write_request_body(b, true).await?;
            }
            session.finish_request_body().await?;
            session.read_response_header().await?;
            Ok::<_, Box<pingora::Error>>(())
        };
        if let Err(e) = io.await {
            session.shutdown().await;
            return Err((e, reused));
        }
        let (status, headers) = match session.response_header() {
            Some(h) => (h.status.as_u16(), h.headers.clone()),
            None => {
                session.shutdown().await;
                return Err((
                    pingora::Error::new(pingora::ErrorType::InvalidHTTPHeader),
                    reused,
                ));
            }
        };
        let mut buf = BytesMut::new();
        let mut truncated = false;
        loop {
            match session.read_response_body().await {
                Ok(Some(chunk)) => {
                    let room = max_body - buf.len();
                    if chunk.len() > room {
                        buf.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    session.shutdown().await;
                    return Err((e, false));
                }
            }
        }
        if truncated {
            // The rest of the body is unread, so the connection cannot be reused.
            session.shutdown().await;
        } else {
            self.connector
                .release_http_session(session, peer, Some(POOL_IDLE_TIMEOUT))
                .await;
        }
        Ok(UpstreamResponse {
            status,
            headers,
            body: buf.freeze(),
            truncated,
            reused,
        })
    }
}

fn is_stale_connection(e: &pingora::Error) -> bool {
    use pingora::ErrorType::*;
    matches!(
        e.etype(),
        ConnectionClosed | ReadError | WriteError | H1Error
    )
}

/// Maps a Pingora client error to the caller-facing error. Messages name the API, never
/// addresses or credentials.
pub fn map_pingora_error(api: &Api, e: &pingora::Error) -> GatewayError {
    use pingora::ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            GatewayError::upstream_timeout(format!("API {:?} did not answer in time", api.name))
        }
        ConnectRefused | ConnectNoRoute | ConnectError => {
            GatewayError::upstream_error(format!("could not connect to API {:?}", api.name))
        }
        TLSHandshakeFailure | InvalidCert | HandshakeError => {
            GatewayError::upstream_error(format!(
                "TLS with API {:?} failed (certificate not trusted or handshake refused)",
                api.name
            ))
        }
        other => GatewayError::upstream_error(format!(
            "the exchange with API {:?} failed ({})",
            api.name,
            other.as_str()
        )),
    }
}
