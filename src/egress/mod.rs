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
//!
//! One concern per file: `url.rs` validates endpoints and builds the upstream request target,
//! `guard.rs` is the SSRF guard (address classification, DNS resolution and vetting),
//! `client.rs` is the pooled Pingora client and its error mapping, `redact.rs` is the
//! response-side hygiene (credential masking, the headers shown to a model), and `shape.rs`
//! shapes an answer for a model (project, select, redact), and `fit.rs` cuts it to the
//! budget so JSON still parses, from its bytes when it is large.

mod client;
mod fit;
mod guard;
mod redact;
mod shape;
mod url;

pub use self::client::{map_pingora_error, Egress, OutboundRequest, UpstreamResponse};
pub use self::guard::blocked_reason;
pub use self::redact::{
    carries_credential, check_declared_size, check_inspectable, longest_credential_form,
    redact_credential, StreamRedactor, SAFE_RESPONSE_HEADERS,
};
pub use self::shape::{decode_body, is_json_type, redact_whole, shape, Body, Redactor, Shaped};
pub use self::url::{upstream_path_and_query, EndpointPath};
