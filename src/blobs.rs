//! Binary answers a model cannot read inline (a PDF, an archive), held for a while so the
//! caller that received a `resource_link` to one can read it with `resources/read`. Each blob
//! belongs to the principal it was made for; it expires after `mcp.resource_ttl`, and the
//! store holds at most `mcp.max_resource_bytes`, dropping the oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The URI scheme and prefix of stored answers.
pub const URI_PREFIX: &str = "agm://results/";

/// One stored answer.
#[derive(Clone)]
pub struct Blob {
    pub owner: String,
    pub mime: String,
    pub bytes: Bytes,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Blob>,
    order: VecDeque<String>,
    bytes: usize,
}

/// The store. Cheap when unused: nothing is allocated until the first blob.
#[derive(Default)]
pub struct BlobStore {
    inner: Mutex<Inner>,
}

impl BlobStore {
    /// Stores `bytes` for `owner`; returns the URI to read it by, or `None` when it is larger
    /// than the whole store may hold.
    pub fn put(
        &self,
        owner: &str,
        mime: &str,
        bytes: Bytes,
        ttl: Duration,
        max_bytes: usize,
    ) -> Option<String> {
        if bytes.len() > max_bytes {
            return None;
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).ok()?;
        let id = hex::encode(id);
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now);
        while inner.bytes + bytes.len() > max_bytes {
            if !inner.drop_oldest() {
                break;
            }
        }
        inner.bytes += bytes.len();
        inner.order.push_back(id.clone());
        inner.by_id.insert(
            id.clone(),
            Blob {
                owner: owner.to_string(),
                mime: mime.to_string(),
                bytes,
                expires: now + ttl,
            },
        );
        Some(format!("{URI_PREFIX}{id}"))
    }

    /// The blob at `uri`, if it exists, has not expired, and belongs to `owner`. Another
    /// caller's blob is reported as missing, so ids cannot be probed.
    pub fn get(&self, uri: &str, owner: &str) -> Option<Blob> {
        let id = uri.strip_prefix(URI_PREFIX)?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(Instant::now());
        inner.by_id.get(id).filter(|b| b.owner == owner).cloned()
    }
}

impl Inner {
    /// Drops expired blobs from the front (they were stored in order, with one TTL each
    /// time; a later, shorter TTL is caught when it is read).
    fn expire(&mut self, now: Instant) {
        while let Some(id) = self.order.front() {
            match self.by_id.get(id) {
                Some(b) if b.expires > now => break,
                _ => {
                    self.drop_oldest();
                }
            }
        }
        self.by_id.retain(|_, b| b.expires > now);
        self.bytes = self.by_id.values().map(|b| b.bytes.len()).sum();
    }

    fn drop_oldest(&mut self) -> bool {
        let Some(id) = self.order.pop_front() else {
            return false;
        };
        if let Some(b) = self.by_id.remove(&id) {
            self.bytes -= b.bytes.len();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_its_owners_until_it_expires_and_the_oldest_go_first() {
        let s = BlobStore::default();
        let long = Duration::from_secs(60);
        let a = s
            .put(
                "alice",
                "application/pdf",
                Bytes::from_static(b"0123456789"),
                long,
                25,
            )
            .unwrap();
        assert_eq!(s.get(&a, "alice").unwrap().bytes, "0123456789");
        assert!(s.get(&a, "bob").is_none(), "another caller cannot read it");
        assert!(s.get("agm://results/nope", "alice").is_none());
        let b = s
            .put("alice", "x/y", Bytes::from_static(b"0123456789"), long, 25)
            .unwrap();
        let c = s
            .put("alice", "x/y", Bytes::from_static(b"0123456789"), long, 25)
            .unwrap();
        assert!(s.get(&a, "alice").is_none(), "the oldest made room");
        assert!(s.get(&b, "alice").is_some() && s.get(&c, "alice").is_some());
        assert!(s
            .put("alice", "x/y", Bytes::from(vec![0; 26]), long, 25)
            .is_none());
        let d = s
            .put("alice", "x/y", Bytes::from_static(b"x"), Duration::ZERO, 25)
            .unwrap();
        assert!(s.get(&d, "alice").is_none(), "expired");
    }
}
