//! The one way out: every upstream request is built and vetted here.
//!
//! - [`EndpointPath::parse`] turns a caller's endpoint into validated path segments, refusing
//!   anything that could leave the API's base path (dot segments, encoded dots, `//host`,
//!   backslashes, `@`, schemes, control characters).
//! - [`upstream_path_and_query`] builds the upstream request target from the configured base
//!   plus those segments. URLs are never concatenated from caller strings.
//! - [`Egress::resolve`] resolves DNS and refuses private, loopback, link-local and metadata
//!   addresses (the SSRF guard) unless the API sets `allow_private_network`. The vetted
//!   address is the one dialled; the hostname is kept for SNI and `Host`.
//! - [`Egress::send`] is the MCP door's client, on a pooled Pingora connector. The proxy door
//!   uses [`Egress::peer`] from its `upstream_peer` hook.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Api, CredentialPlacement};
use crate::error::GatewayError;

/// Longest endpoint (path and query) accepted from a caller.
const MAX_ENDPOINT_LEN: usize = 4096;
/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The `User-Agent` sent upstream by the MCP door when the caller sets none.
const USER_AGENT: &str = concat!("api-gateway-mcp/", env!("CARGO_PKG_VERSION"));

/// A caller's endpoint, validated: a path that stays under the API's base, and a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPath {
    /// The path as sent upstream (original percent-encoding kept), always starting with `/`.
    path: String,
    /// Percent-decoded segments, for matching path patterns.
    decoded: Vec<String>,
    /// The raw query string without `?`, if any.
    query: Option<String>,
}

impl EndpointPath {
    /// Validates an endpoint such as `/repos/o/r/issues?state=open`. A missing leading `/` is
    /// added. Refused with `invalid_endpoint`, naming the reason:
    /// - control characters (CR, LF, NUL, …), non-ASCII, backslashes, `@`, `#`;
    /// - a scheme (`http:`, `//host`, `://`);
    /// - empty segments (`a//b`), dot segments (`.`, `..`, also `..;x` and look-alike dots);
    /// - percent-encodings that decode to `/`, `\`, `%`, a dot segment or a control character,
    ///   and malformed `%` escapes.
    pub fn parse(raw: &str) -> Result<EndpointPath, GatewayError> {
        let bad = |why: &str| {
            Err(GatewayError::invalid_endpoint(format!(
                "endpoint rejected: {why}; give a path under the API's base such as \"/v1/items?limit=10\""
            )))
        };
        if raw.len() > MAX_ENDPOINT_LEN {
            return bad("longer than 4096 bytes");
        }
        if let Some(c) = raw.chars().find(|c| !c.is_ascii() || c.is_ascii_control()) {
            return if c.is_ascii_control() {
                bad("contains a control character (CR, LF, tab or NUL)")
            } else {
                bad("contains non-ASCII characters; percent-encode them")
            };
        }
        if raw.contains('\\') {
            return bad("contains a backslash");
        }
        if raw.contains('@') {
            return bad("contains '@'");
        }
        if raw.contains('#') {
            return bad("contains a fragment ('#')");
        }
        if raw.contains("://") {
            return bad("contains a URL scheme");
        }
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        if path.starts_with("//") {
            return bad("starts with '//' (a host reference)");
        }
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('/') {
            path.to_string()
        } else {
            let first = path.split('/').next().unwrap_or("");
            if first.contains(':') {
                return bad("looks like a URL scheme");
            }
            format!("/{path}")
        };

        let raw_segments: Vec<&str> = path[1..].split('/').collect();
        let last = raw_segments.len() - 1;
        let mut decoded = Vec::with_capacity(raw_segments.len());
        for (i, seg) in raw_segments.iter().enumerate() {
            if seg.is_empty() {
                if i == last {
                    // A trailing slash ("/items/") or the root ("/").
                    decoded.push(String::new());
                    continue;
                }
                return bad("contains an empty segment ('//')");
            }
            if !valid_percent_escapes(seg) {
                return bad("contains a malformed percent-escape");
            }
            let bytes: Vec<u8> = percent_decode_str(seg).collect();
            if bytes.iter().any(|&b| {
                b == b'/' || b == b'\\' || b == b'%' || b == b'@' || b < 0x20 || b == 0x7f
            }) {
                return bad("contains an encoded separator, '%', '@' or control character");
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if is_dot_segment(&text) {
                return bad("contains a dot segment ('.' or '..', possibly encoded)");
            }
            decoded.push(text);
        }
        if let Some(q) = query {
            if !valid_percent_escapes(q) {
                return bad("query contains a malformed percent-escape");
            }
        }
        Ok(EndpointPath {
            path,
            decoded,
            query: query.filter(|q| !q.is_empty()).map(str::to_string),
        })
    }

    /// The validated path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The caller's raw query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Percent-decoded segments for path-pattern matching.
    pub fn decoded_segments(&self) -> Vec<&str> {
        self.decoded.iter().map(String::as_str).collect()
    }
}

fn valid_percent_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() {
                return false;
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// A segment that some server would treat as `.` or `..`: only dots (or Unicode dot
/// look-alikes), optionally followed by `;params` (Tomcat-style `..;`).
fn is_dot_segment(seg: &str) -> bool {
    let head = seg.split(';').next().unwrap_or("");
    !head.is_empty()
        && head
            .chars()
            .all(|c| matches!(c, '.' | '\u{2024}' | '\u{FE52}' | '\u{FF0E}' | '\u{3002}'))
}

/// Characters that stay unencoded in query keys and values.
const QUERY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Builds the upstream request target: the API's base path, the validated endpoint path, the
/// caller's query, extra `(key, value)` pairs (encoded here), and a query-placed credential.
/// A caller-supplied parameter with the credential's name is dropped so it cannot override it.
pub fn upstream_path_and_query(
    api: &Api,
    endpoint: &EndpointPath,
    extra_query: &[(String, String)],
) -> String {
    let mut out = String::with_capacity(api.base.path.len() + endpoint.path.len() + 32);
    out.push_str(&api.base.path);
    out.push_str(&endpoint.path);

    let credential_param = match &api.credential {
        Some(c) => match &c.placement {
            CredentialPlacement::Query(name) => Some((name.as_str(), c.value.as_str())),
            CredentialPlacement::Header(_) => None,
        },
        None => None,
    };
    let mut params: Vec<String> = Vec::new();
    if let Some(q) = endpoint.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let key = pair.split('=').next().unwrap_or("");
            let key_decoded = percent_decode_str(key).decode_utf8_lossy();
            if credential_param.is_some_and(|(name, _)| key_decoded == name) {
                continue;
            }
            params.push(pair.to_string());
        }
    }
    for (k, v) in extra_query {
        if credential_param.is_some_and(|(name, _)| k == name) {
            continue;
        }
        params.push(format!(
            "{}={}",
            utf8_percent_encode(k, QUERY_ENCODE),
            utf8_percent_encode(v, QUERY_ENCODE)
        ));
    }
    if let Some((name, value)) = credential_param {
        params.push(format!(
            "{}={}",
            utf8_percent_encode(name, QUERY_ENCODE),
            utf8_percent_encode(value, QUERY_ENCODE)
        ));
    }
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Response headers passed back to a model in `structuredContent.headers`.
pub const SAFE_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-language",
    "location",
    "retry-after",
    "etag",
    "last-modified",
    "cache-control",
    "link",
    "x-request-id",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
];

/// Why an address may not be dialled, or `None` for a public unicast address.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return blocked_v4(v4);
            }
            let s = v6.segments();
            if v6.is_unspecified() {
                Some("unspecified address")
            } else if v6.is_loopback() {
                Some("loopback address")
            } else if s[0] == 0x0064 && s[1] == 0xff9b {
                // NAT64: judge the embedded IPv4 address; 64:ff9b:1::/48 is local-use.
                if s[2] == 1 {
                    Some("local-use NAT64 address")
                } else {
                    let v4 =
                        Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                    blocked_v4(v4)
                }
            } else if s[0] == 0x2002 {
                // 6to4 embeds an IPv4 address in bits 16..48.
                let v4 =
                    Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
                blocked_v4(v4)
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("unique-local (private) address")
            } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
                Some("link-local address")
            } else if (s[0] & 0xff00) == 0xff00 {
                Some("multicast address")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("documentation address")
            } else if s[0] == 0x2001 && s[1] == 0 {
                Some("Teredo address")
            } else if s[0] == 0x2001 && s[1] < 0x0200 {
                // 2001::/23: IETF protocol assignments (benchmarking, ORCHID, AMT, ...).
                Some("IETF protocol assignment address")
            } else if s[0] == 0x3fff && s[1] < 0x1000 {
                // 3fff::/20 (RFC 9637).
                Some("documentation address")
            } else if s[0] == 0x5f00 {
                Some("segment-routing (SRv6) address")
            } else if s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0 {
                Some("discard-only address")
            } else if s[..6] == [0, 0, 0, 0, 0, 0] {
                Some("IPv4-compatible address")
            } else {
                None
            }
        }
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("'this network' address")
    } else if ip.is_loopback() {
        Some("loopback address")
    } else if ip.is_private() {
        Some("private address")
    } else if ip.is_link_local() {
        Some("link-local or cloud metadata address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("carrier-grade NAT address")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignment address")
    } else if o[0] == 192 && o[1] == 88 && o[2] == 99 {
        Some("6to4 relay anycast address")
    } else if ip.is_documentation() {
        Some("documentation address")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking address")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else if o[0] >= 240 {
        Some("reserved or broadcast address")
    } else if o == [168, 63, 129, 16] {
        Some("cloud metadata address")
    } else {
        None
    }
}

/// A request for [`Egress::send`].
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    /// From [`upstream_path_and_query`].
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
    resolver: Option<hickory_resolver::TokioResolver>,
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

    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match &self.resolver {
            Some(r) => {
                let answer = r
                    .lookup_ip(host)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(answer.iter().map(|ip| SocketAddr::new(ip, port)).collect())
            }
            None => Ok(tokio::net::lookup_host((host, port)).await?.collect()),
        }
    }

    /// Resolves the API's host and vets every address. A name that resolves to any refused
    /// address is refused as a whole, so a DNS answer mixing public and private records cannot
    /// be used to reach the private one.
    pub async fn resolve(&self, api: &Api) -> Result<SocketAddr, GatewayError> {
        let addrs: Vec<SocketAddr> = match api.base.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, api.base.port)],
            Err(_) => {
                let lookup = self.lookup(&api.base.host, api.base.port);
                match tokio::time::timeout(api.connect_timeout, lookup).await {
                    Ok(Ok(addrs)) => addrs,
                    Ok(Err(_)) => {
                        return Err(GatewayError::upstream_error(format!(
                            "the host of API {:?} could not be resolved",
                            api.name
                        )))
                    }
                    Err(_) => {
                        return Err(GatewayError::upstream_timeout(format!(
                            "resolving the host of API {:?} timed out",
                            api.name
                        )))
                    }
                }
            }
        };
        let first = *addrs.first().ok_or_else(|| {
            GatewayError::upstream_error(format!("the host of API {:?} has no addresses", api.name))
        })?;
        if !api.allow_private_network {
            if let Some(reason) = addrs.iter().find_map(|a| blocked_reason(a.ip())) {
                return Err(GatewayError::egress_denied(format!(
                    "the destination of API {:?} resolves to a {reason}, which is blocked; \
                     an operator can set allow_private_network = true on the API to allow it",
                    api.name
                )));
            }
        }
        Ok(first)
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
        match tokio::time::timeout(api.timeout, exchange).await {
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

/// Masks every occurrence of the API's credential value with `*` of the same length, so an
/// upstream that echoes its request cannot leak the credential to the caller. The length is
/// kept so that `Content-Length` framing on the proxy door stays valid.
///
/// On the proxy door the body is masked chunk by chunk; a value split across two chunks is
/// not caught there. The MCP door masks the whole (capped) body at once.
pub fn redact_credential(api: &Api, data: Bytes) -> Bytes {
    let Some(c) = &api.credential else {
        return data;
    };
    let secret = c.value.as_bytes();
    if secret.len() < 4 || !contains(&data, secret) {
        return data;
    }
    let mut out = data.to_vec();
    let mut i = 0;
    while i + secret.len() <= out.len() {
        if out[i..].starts_with(secret) {
            out[i..i + secret.len()].fill(b'*');
            i += secret.len();
        } else {
            i += 1;
        }
    }
    Bytes::from(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accepted() {
        let e = EndpointPath::parse("/repos/o/r/issues?state=open").unwrap();
        assert_eq!(e.path(), "/repos/o/r/issues");
        assert_eq!(e.query(), Some("state=open"));
        assert_eq!(EndpointPath::parse("users/1").unwrap().path(), "/users/1");
        assert_eq!(EndpointPath::parse("").unwrap().path(), "/");
        assert_eq!(
            EndpointPath::parse("/a%20b/c.json")
                .unwrap()
                .decoded_segments(),
            vec!["a b", "c.json"]
        );
        assert!(EndpointPath::parse("/v1/projects/p:run").is_ok());
        assert!(EndpointPath::parse("/files/.well-known").is_ok());
        assert!(EndpointPath::parse("/a/").is_ok());
    }

    #[test]
    fn hostile_endpoints_rejected() {
        for bad in [
            "/../etc/passwd",
            "..",
            "/a/../../b",
            "/a/./b",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2e/x",
            "/%2e/x",
            "/a/%2e%2e%2fb",
            "/a%2fb",
            "/a%5cb",
            "/%252e%252e/x",
            "//evil.com/x",
            "http://evil.com/x",
            "https:/evil.com",
            "evil.com:80/x",
            "/a\\b",
            "\\\\evil\\x",
            "/a@evil.com",
            "@evil.com",
            "/a\r\nHost: evil",
            "/a\nx",
            "/a%0d%0aX: y",
            "/a%00",
            "/a\t",
            "/..;/admin",
            "/\u{FF0E}\u{FF0E}/x",
            "/%EF%BC%8E%EF%BC%8E/x",
            "/a//b",
            "/a#frag",
            "/a%zz",
            "/a%2",
            "/x?y=%g1",
        ] {
            let r = EndpointPath::parse(bad);
            assert!(r.is_err(), "{bad:?} was accepted as {r:?}");
            assert_eq!(
                r.unwrap_err().kind,
                crate::error::ErrorKind::InvalidEndpoint
            );
        }
    }

    #[test]
    fn ssrf_classification() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "168.63.129.16",
        ] {
            assert!(
                blocked_reason(ip.parse().unwrap()).is_some(),
                "{ip} not blocked"
            );
        }
        for ip in [
            "93.184.216.34",
            "140.82.112.3",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
        ] {
            assert_eq!(blocked_reason(ip.parse().unwrap()), None, "{ip} blocked");
        }
    }

    mod properties {
        use super::*;
        use crate::config::{Api, Credential, CredentialPlacement};
        use ipnet::IpNet;
        use proptest::prelude::*;

        fn api() -> Api {
            let mut a = Api::internal(
                "t",
                "https://api.example.com/base/v1",
                false,
                Duration::from_secs(1),
            )
            .unwrap();
            a.credential = Some(Credential {
                placement: CredentialPlacement::Query("appid".into()),
                value: "SECRET".into(),
                header_value: None,
            });
            a
        }

        /// Endpoints built from the pieces attackers use.
        fn hostile_endpoint() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just("%2e".to_string()),
                Just("%2E%2e".to_string()),
                Just("%252e".to_string()),
                Just("%2f".to_string()),
                Just("%5c".to_string()),
                Just("\\".to_string()),
                Just("@".to_string()),
                Just("?".to_string()),
                Just("&appid=x".to_string()),
                Just("#".to_string()),
                Just(";".to_string()),
                Just("%".to_string()),
                Just("%00".to_string()),
                Just("http:".to_string()),
                Just("//evil.test".to_string()),
                Just("\u{ff0e}".to_string()),
                "[a-z0-9_-]{1,6}",
            ];
            proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever the endpoint, an accepted one never leaves the API's host or base
            /// path, even after a URL parser normalises it, and never overrides the
            /// injected credential.
            #[test]
            fn url_builder_never_leaves_the_base(raw in hostile_endpoint()) {
                let a = api();
                if let Ok(e) = EndpointPath::parse(&raw) {
                    let pq = upstream_path_and_query(&a, &e, &[("appid".into(), "forged".into())]);
                    prop_assert!(pq.starts_with("/base/v1/") || pq == "/base/v1" || pq.starts_with("/base/v1?"), "{pq}");
                    let u = url::Url::parse("https://api.example.com").unwrap().join(&pq).unwrap();
                    prop_assert_eq!(u.host_str(), Some("api.example.com"));
                    prop_assert!(u.path().starts_with("/base/v1"), "{} from {:?}", u.path(), raw);
                    let appids: Vec<String> = u
                        .query_pairs()
                        .filter(|(k, _)| k == "appid")
                        .map(|(_, v)| v.into_owned())
                        .collect();
                    prop_assert_eq!(appids, vec!["SECRET".to_string()]);
                }
            }
        }

        /// The special-purpose table (RFC 6890 and successors, IANA registries): every
        /// address in these ranges is refused, everything else is dialable.
        const TABLE: &[&str] = &[
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "168.63.129.16/32",
            "::/128",
            "::1/128",
            "::/96",
            "100::/64",
            "2001::/23",
            "2001:db8::/32",
            "3fff::/20",
            "5f00::/16",
            "fc00::/7",
            "fe80::/10",
            "fec0::/10",
            "ff00::/8",
            "64:ff9b:1::/48",
        ];

        /// The oracle: the table, with IPv4 embedded in IPv4-mapped, NAT64 (64:ff9b::/96)
        /// and 6to4 (2002::/16) addresses judged as that IPv4 address.
        fn oracle(ip: IpAddr) -> bool {
            let nets: Vec<IpNet> = TABLE.iter().map(|s| s.parse().unwrap()).collect();
            let ip = match ip {
                IpAddr::V6(v6) => {
                    let s = v6.segments();
                    if let Some(v4) = v6.to_ipv4_mapped() {
                        IpAddr::V4(v4)
                    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                        IpAddr::V4(Ipv4Addr::new(
                            (s[6] >> 8) as u8,
                            s[6] as u8,
                            (s[7] >> 8) as u8,
                            s[7] as u8,
                        ))
                    } else if s[0] == 0x2002 {
                        IpAddr::V4(Ipv4Addr::new(
                            (s[1] >> 8) as u8,
                            s[1] as u8,
                            (s[2] >> 8) as u8,
                            s[2] as u8,
                        ))
                    } else {
                        ip
                    }
                }
                v4 => v4,
            };
            nets.iter().any(|n| n.contains(&ip))
        }

        /// Addresses inside a random table range, inside the embedding prefixes, or anywhere.
        fn address() -> impl Strategy<Value = IpAddr> {
            let in_table = (0..TABLE.len(), any::<u128>()).prop_map(|(i, r)| {
                match TABLE[i].parse::<IpNet>().unwrap() {
                    IpNet::V4(n) => {
                        let host = (r as u32) & !u32::from(n.netmask());
                        IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
                    }
                    IpNet::V6(n) => {
                        let host = r & !u128::from(n.netmask());
                        IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n.network()) | host))
                    }
                }
            });
            let embedded = (any::<u32>(), 0..3u8).prop_map(|(v4, kind)| {
                let v4 = u128::from(v4);
                let v6 = match kind {
                    0 => 0xffff_0000_0000u128 | v4,
                    1 => (0x0064_ff9bu128 << 96) | v4,
                    _ => (0x2002u128 << 112) | (v4 << 80),
                };
                IpAddr::V6(std::net::Ipv6Addr::from(v6))
            });
            prop_oneof![
                in_table,
                embedded,
                any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
                any::<u128>().prop_map(|v| IpAddr::V6(std::net::Ipv6Addr::from(v))),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20000))]

            #[test]
            fn ip_classifier_matches_the_table(ip in address()) {
                prop_assert_eq!(blocked_reason(ip).is_some(), oracle(ip), "{}", ip);
            }
        }
    }
}
