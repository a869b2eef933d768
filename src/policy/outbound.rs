//! The outbound rule, one table for both doors: which caller headers are forwarded, stripped
//! or refused, where the API's credential goes, and where an upstream redirect may lead.
//!
//! | caller header | proxy door | MCP door (`headers` argument) |
//! |---|---|---|
//! | gateway credentials: `Authorization`, `Proxy-*`, `Cookie`, `X-Api-Key`, signature headers, `Approval-Id` | stripped: they authenticated the caller to the gateway | refused, `reserved_header` |
//! | the API's upstream credential header, when not one of the above | refused, `credential_header` | refused, `credential_header` |
//! | method and URL overrides: `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`, `X-Original-URL`, `X-Rewrite-URL` | refused, `override_header` | refused, `override_header` |
//! | where the request came from: `Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `True-Client-IP`, `X-Client-IP`, `X-Cluster-Client-IP`, `CF-Connecting-IP`, `Fastly-Client-IP` | stripped | refused, `reserved_header` |
//! | framing and hop-by-hop: `Host`, `Content-Length`, `Transfer-Encoding`, `Connection`, … | the HTTP layer's (`Host` is replaced) | refused, `reserved_header` |
//! | `traceparent` | replaced by the gateway's | replaced by the gateway's |
//! | `Accept-Encoding`, on an API with a credential | replaced by `identity` (masking reads plain bodies) | replaced by `identity` |
//! | anything else | forwarded | forwarded |
//!
//! Redirects: a `Location` is followed (MCP door, when the API opts in) or rewritten to a
//! gateway path (proxy door) only when it lands in an allow-listed API; the hop is judged
//! again like a new call, and the credential never crosses origins.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::config::{Api, Config, CredentialPlacement};
use crate::error::{GatewayError, Reason};
use crate::types::headers::is_framing_header;
use crate::types::Door;

/// What happens to one caller header on its way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRule {
    /// Sent upstream as the caller wrote it.
    Forward,
    /// Dropped silently: it was meant for the gateway (or is replaced by the gateway's own).
    Strip,
    /// Left to the HTTP layer, which frames the upstream request itself.
    Framing,
    /// The call is refused with this reason.
    Refuse(Reason),
}

/// Headers that carry the caller's own credentials to the gateway (never forwarded upstream).
fn is_gateway_credential(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "cookie" | "x-api-key" | "approval-id"
    ) || name.starts_with("proxy-")
        || crate::auth::signature::HEADERS.contains(&name)
}

/// Where a request came from, as proxies and CDNs tell it: only the gateway says this to an
/// upstream (and it does not), so a caller's claim is never passed on.
fn is_forwarding_metadata(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-real-ip"
            | "true-client-ip"
            | "x-client-ip"
            | "x-cluster-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
    ) || name.starts_with("x-forwarded-")
}

/// Headers that tell many upstream frameworks to treat the request as another method or
/// another URL than the one admitted: a GET-only grant must not become a DELETE upstream.
fn is_override(name: &str) -> bool {
    matches!(
        name,
        "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-original-url"
            | "x-rewrite-url"
    )
}

/// The rule for one caller header on a call to `api` through `door`: the table above.
pub fn header_rule(door: Door, api: &Api, name: &HeaderName) -> HeaderRule {
    let n = name.as_str();
    let reserved = match door {
        Door::Proxy => HeaderRule::Strip,
        Door::Mcp => HeaderRule::Refuse(Reason::ReservedHeader),
    };
    if is_gateway_credential(n) {
        return reserved;
    }
    if credential_header_name(api) == Some(name) {
        return HeaderRule::Refuse(Reason::CredentialHeader);
    }
    if is_override(n) {
        return HeaderRule::Refuse(Reason::OverrideHeader);
    }
    if is_forwarding_metadata(n) {
        return reserved;
    }
    if is_framing_header(name) {
        return match door {
            Door::Proxy => HeaderRule::Framing,
            Door::Mcp => reserved,
        };
    }
    if n == "traceparent" || (n == "accept-encoding" && api.injects_credential()) {
        return HeaderRule::Strip;
    }
    HeaderRule::Forward
}

/// What the gateway sets on every request to `api`.
fn gateway_set(api: &Api) -> Vec<(HeaderName, HeaderValue)> {
    if api.injects_credential() {
        // Masking reads the body as sent: no compressed echo of the credential.
        vec![(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        )]
    } else {
        Vec::new()
    }
}

/// The header an API's credential is injected in, when it goes in a header.
fn credential_header_name(api: &Api) -> Option<&HeaderName> {
    match api.credential_placement() {
        Some(CredentialPlacement::Header(h)) => Some(h),
        _ => None,
    }
}

/// The API's credential as a header to set, when it goes in a header (a query credential is
/// added by the URL builder). Parsed and marked sensitive while loading the config.
pub fn credential_header(api: &Api) -> Option<(HeaderName, HeaderValue)> {
    let c = api.credential.as_ref()?;
    match (&c.placement, &c.header_value) {
        (CredentialPlacement::Header(name), Some(v)) => Some((name.clone(), v.clone())),
        _ => None,
    }
}

/// A caller-supplied query parameter named like the API's query credential is refused, as
/// a caller-supplied credential header is: the gateway injects it, the caller never does.
pub fn check_query(
    api: &Api,
    endpoint: &crate::egress::EndpointPath,
    extra: &[(String, String)],
) -> Result<(), GatewayError> {
    let Some(CredentialPlacement::Query(name)) = api.credential_placement() else {
        return Ok(());
    };
    let in_endpoint = endpoint.query().is_some_and(|q| {
        q.split('&').any(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            percent_encoding::percent_decode_str(key).decode_utf8_lossy() == name.as_str()
        })
    });
    if in_endpoint || extra.iter().any(|(k, _)| k == name) {
        return Err(GatewayError::because(
            Reason::CredentialParam,
            format!(
                "query parameter {name:?} carries API {:?}'s credential, which the gateway injects; do not send it",
                api.name
            ),
        ));
    }
    Ok(())
}

/// The caller headers of one admitted call, sorted by the rule.
#[derive(Debug, Default, Clone)]
pub struct OutboundHeaders {
    /// Caller headers to remove before the request leaves (proxy door: they arrived with it).
    pub strip: Vec<HeaderName>,
    /// Caller headers to send (MCP door: the `headers` argument, vetted).
    pub forward: Vec<(HeaderName, HeaderValue)>,
    /// The API's credential, when it goes in a header: set last, over anything of that name.
    pub credential: Option<(HeaderName, HeaderValue)>,
    /// Headers the gateway sets itself: `Accept-Encoding: identity` on an API with a
    /// credential, so that echoes of it can be masked.
    pub set: Vec<(HeaderName, HeaderValue)>,
}

/// Sorts the caller's headers by [`header_rule`]; the first refused header refuses the call.
pub fn plan<'a>(
    door: Door,
    api: &Api,
    headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> Result<OutboundHeaders, GatewayError> {
    let mut out = OutboundHeaders {
        credential: credential_header(api),
        set: gateway_set(api),
        ..OutboundHeaders::default()
    };
    for (name, value) in headers {
        match header_rule(door, api, name) {
            // The proxy door's request keeps its own headers: nothing is copied for it.
            HeaderRule::Forward if door == Door::Mcp => {
                out.forward.push((name.clone(), value.clone()))
            }
            HeaderRule::Forward => {}
            HeaderRule::Strip => {
                if !out.strip.contains(name) {
                    out.strip.push(name.clone());
                }
            }
            HeaderRule::Framing => {}
            HeaderRule::Refuse(reason) => {
                let why = match reason {
                    Reason::CredentialHeader => format!(
                        "header {:?} carries API {:?}'s credential, which the gateway injects; \
                         do not send it",
                        name.as_str(),
                        api.name
                    ),
                    Reason::OverrideHeader => format!(
                        "header {:?} would make the upstream see another method or URL than \
                         the one admitted; send the request you mean instead",
                        name.as_str()
                    ),
                    _ => format!(
                        "header {:?} cannot be set by the caller (credentials are injected by \
                         the gateway)",
                        name.as_str()
                    ),
                };
                return Err(GatewayError::because(reason, why));
            }
        }
    }
    Ok(out)
}

/// Where an upstream redirect from `here` (a URL of `from`) leads: an allow-listed API and
/// the endpoint under its base, or `None` when the `Location` leaves every API. Query
/// parameters named like any API's query credential are dropped; a target that still carries
/// a form of `from`'s credential anywhere else is `None`. So a redirect never hands an injected
/// credential to another origin or back to the caller.
pub fn redirect_target<'c>(
    config: &'c Config,
    from: &Api,
    here: &url::Url,
    location: &str,
) -> Option<(&'c Arc<Api>, String)> {
    let mut next = here.join(location).ok()?;
    let hidden: Vec<&str> = std::iter::once(from)
        .chain(config.apis.iter().map(|a| &**a))
        .filter_map(|a| match a.credential_placement() {
            Some(CredentialPlacement::Query(name)) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if next.query().is_some() && !hidden.is_empty() {
        let kept: Vec<(String, String)> = next
            .query_pairs()
            .filter(|(k, _)| !hidden.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        next.set_query(None);
        if !kept.is_empty() {
            next.query_pairs_mut().extend_pairs(kept);
        }
    }
    let (api, endpoint) = config.api_for_url(&next, &from.name)?;
    // A credential form left under another name (or in the path) cannot be stripped: the
    // redirect is not followed.
    if crate::egress::carries_credential(from, &endpoint) {
        return None;
    }
    Some((api, endpoint))
}

/// Whether a redirect from `from` to `to` stays on one origin (scheme, host, port): only
/// then does the credential go along.
pub fn same_origin(from: &Api, to: &Api) -> bool {
    to.base.tls == from.base.tls
        && to.base.host.eq_ignore_ascii_case(&from.base.host)
        && to.base.port == from.base.port
}

/// A redirect that leads nowhere the caller may go.
pub fn redirect_denied() -> GatewayError {
    GatewayError::because(
        Reason::RedirectDenied,
        "the upstream redirected to a destination that is not allowed",
    )
}
