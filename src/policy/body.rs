//! Body guards: the declared size (`security.request.max_body_size`), the content type
//! (`allowed_content_types`) and a signed body's digest. The proxy door streams its body
//! after admission, so it counts bytes and finishes the digest with [`DigestCheck`].

use crate::config::RequestGuards;
use crate::error::{GatewayError, Reason};

use super::Payload;

/// What admission knows of a body before it streams.
#[derive(Debug, Default)]
pub struct BodyShape<'a> {
    /// Declared length, when known before reading the body.
    pub length: Option<u64>,
    /// Whether a body comes at all (declared length > 0, or chunked).
    pub has_body: bool,
    pub content_type: Option<&'a str>,
}

impl<'a> BodyShape<'a> {
    /// The body of a call, from its headers (proxy door) or its bytes (MCP door).
    pub fn of(payload: &Payload<'a>) -> Result<BodyShape<'a>, GatewayError> {
        match payload {
            Payload::Streamed { headers } => {
                let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
                let length = match text(http::header::CONTENT_LENGTH) {
                    Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                        GatewayError::invalid_header("Content-Length is not a number")
                    })?),
                    None => None,
                };
                let chunked = headers.contains_key(http::header::TRANSFER_ENCODING);
                Ok(BodyShape {
                    length,
                    has_body: chunked || length.is_some_and(|n| n > 0),
                    content_type: text(http::header::CONTENT_TYPE),
                })
            }
            Payload::Whole { headers, body } => Ok(BodyShape {
                length: body.map(|b| b.len() as u64),
                has_body: body.is_some(),
                content_type: headers
                    .iter()
                    .find(|(k, _)| k == http::header::CONTENT_TYPE)
                    .and_then(|(_, v)| v.to_str().ok()),
            }),
        }
    }
}

/// The declared size and the content type pass the request guards: 413, 415.
pub fn check(guards: &RequestGuards, body: &BodyShape<'_>) -> Result<(), GatewayError> {
    if let Some(len) = body.length {
        if len > guards.max_body_size {
            return Err(too_large(guards.max_body_size, Some(len)));
        }
    }
    if body.has_body && !guards.allowed_content_types.is_empty() {
        let essence = body
            .content_type
            .map(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if !guards.allowed_content_types.contains(&essence) {
            return Err(GatewayError::unsupported_media_type(format!(
                "content type {:?} is not allowed; allowed: {}",
                crate::types::truncate_chars(&essence, 64),
                guards.allowed_content_types.join(", ")
            )));
        }
    }
    Ok(())
}

/// A body over `security.request.max_body_size`: 413.
pub fn too_large(limit: u64, declared: Option<u64>) -> GatewayError {
    GatewayError::payload_too_large(match declared {
        Some(len) => format!("request body of {len} bytes exceeds the limit of {limit} bytes"),
        None => format!("request body exceeds the limit of {limit} bytes"),
    })
}

/// A body whose digest differs from the one its signature covers: 401 `signature_invalid`.
fn digest_mismatch() -> GatewayError {
    crate::auth::unauthorized(
        Reason::SignatureInvalid,
        "the body does not match X-Content-SHA256",
    )
}

/// Checks a signed caller's fully read body against the digest its signature covers (the MCP
/// door identifies the caller from the head, then reads the body); unsigned callers pass.
pub fn check_signed_body(caller: &crate::auth::Caller, body: &[u8]) -> Result<(), GatewayError> {
    match &caller.signature {
        Some(v) => check_digest(&v.content_sha256, body),
        None => Ok(()),
    }
}

/// Checks a fully read body against the digest its signature covers.
pub fn check_digest(expected: &[u8; 32], body: &[u8]) -> Result<(), GatewayError> {
    use sha2::Digest;
    let actual: [u8; 32] = sha2::Sha256::digest(body).into();
    if &actual != expected {
        return Err(digest_mismatch());
    }
    Ok(())
}

/// The body guards of a body that streams after admission (the proxy door): its size,
/// counted chunk by chunk against `max_body_size`, and a signed body's digest, checked when
/// the last chunk arrives, before it leaves (so on a mismatch the upstream never receives a
/// complete request).
pub struct StreamGuard {
    limit: u64,
    seen: u64,
    digest: Option<DigestCheck>,
}

impl StreamGuard {
    pub fn new(guards: &RequestGuards, digest: Option<[u8; 32]>) -> Self {
        StreamGuard {
            limit: guards.max_body_size,
            seen: 0,
            digest: digest.map(DigestCheck::new),
        }
    }

    /// The refusal when the body does not match its digest (default: `signature_invalid`).
    pub fn on_mismatch(mut self, e: GatewayError) -> Self {
        if let Some(d) = &mut self.digest {
            d.mismatch = Some(e);
        }
        self
    }

    /// One chunk: 413 once the body passes the limit.
    pub fn chunk(&mut self, chunk: &[u8]) -> Result<(), GatewayError> {
        self.seen += chunk.len() as u64;
        if self.seen > self.limit {
            return Err(too_large(self.limit, None));
        }
        if let Some(d) = &mut self.digest {
            d.update(chunk);
        }
        Ok(())
    }

    /// The end of the body: 401 `signature_invalid` when it does not match its digest.
    pub fn end(&mut self) -> Result<(), GatewayError> {
        self.digest.take().map_or(Ok(()), DigestCheck::finish)
    }
}

/// A streamed body's digest, checked when its last chunk arrives.
struct DigestCheck {
    expected: [u8; 32],
    hasher: sha2::Sha256,
    /// The refusal when the body does not match: a bad signature, unless set otherwise.
    mismatch: Option<GatewayError>,
}

impl DigestCheck {
    fn new(expected: [u8; 32]) -> Self {
        DigestCheck {
            expected,
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            mismatch: None,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        sha2::Digest::update(&mut self.hasher, chunk);
    }

    fn finish(self) -> Result<(), GatewayError> {
        let actual: [u8; 32] = sha2::Digest::finalize(self.hasher).into();
        if actual != self.expected {
            return Err(self.mismatch.unwrap_or_else(digest_mismatch));
        }
        Ok(())
    }
}
