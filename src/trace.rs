//! W3C Trace Context: a caller's `traceparent` is accepted and the trace continues upstream
//! with a new span id; without one, a new trace starts. The trace id is written into every
//! audit record, so a call can be followed from the agent through the gateway to the API.

use http::HeaderMap;

/// One call's trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span (or zero for a trace started here).
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceContext {
    /// The caller's context from a valid `traceparent`, or a new sampled trace.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse)
            .unwrap_or_else(TraceContext::new_root)
    }

    pub fn new_root() -> TraceContext {
        let mut id = [0u8; 16];
        while id == [0u8; 16] {
            fill_random_id(&mut id);
        }
        TraceContext {
            trace_id: id,
            parent_id: [0; 8],
            flags: 1,
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` for an upstream request: this trace, a new span id.
    pub fn child_traceparent(&self) -> String {
        let mut span = [0u8; 8];
        while span == [0u8; 8] {
            fill_random_id(&mut span);
        }
        traceparent(self.trace_id, span, self.flags)
    }
}

/// A version-00 `traceparent` value: `00-<trace id>-<span id>-<flags>`, lower-case hex.
pub fn traceparent(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> String {
    format!(
        "00-{}-{}-{flags:02x}",
        hex::encode(trace_id),
        hex::encode(span_id)
    )
}

/// Fills `buf` with random bytes for trace, span and request ids: a per-thread xoshiro256**
/// generator seeded once from the OS, so an id costs no system call. Ids must be unique and
/// unpredictable enough not to collide; they are not secrets (keys and nonces use the OS
/// generator directly).
pub fn fill_random_id(buf: &mut [u8]) {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<[u64; 4]> = Cell::new({
            let mut seed = [0u8; 32];
            while seed == [0u8; 32] {
                let _ = getrandom::fill(&mut seed);
            }
            let mut s = [0u64; 4];
            for (i, chunk) in seed.chunks_exact(8).enumerate() {
                s[i] = u64::from_le_bytes(chunk.try_into().unwrap_or([1; 8]));
            }
            s
        });
    }
    STATE.with(|state| {
        let mut s = state.get();
        for chunk in buf.chunks_mut(8) {
            let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
            let t = s[1] << 17;
            s[2] ^= s[0];
            s[3] ^= s[1];
            s[1] ^= s[2];
            s[0] ^= s[3];
            s[2] ^= t;
            s[3] = s[3].rotate_left(45);
            chunk.copy_from_slice(&out.to_le_bytes()[..chunk.len()]);
        }
        state.set(s);
    });
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case, ids not all zero.
fn parse(v: &str) -> Option<TraceContext> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else {
        // Later versions may append fields; version 00 has exactly four.
        return None;
    };
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if *version != "00" || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !(lower_hex(trace) && lower_hex(parent) && lower_hex(flags)) {
        return None;
    }
    let mut t = TraceContext {
        trace_id: [0; 16],
        parent_id: [0; 8],
        flags: u8::from_str_radix(flags, 16).ok()?,
    };
    hex::decode_to_slice(trace, &mut t.trace_id).ok()?;
    hex::decode_to_slice(parent, &mut t.parent_id).ok()?;
    (t.trace_id != [0; 16] && t.parent_id != [0; 8]).then_some(t)
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_ids_differ_across_calls_and_threads() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let mut id = [0u8; 16];
            super::fill_random_id(&mut id);
            assert!(seen.insert(id), "a repeated id");
        }
        let other: Vec<[u8; 16]> = std::thread::spawn(|| {
            (0..1000)
                .map(|_| {
                    let mut id = [0u8; 16];
                    super::fill_random_id(&mut id);
                    id
                })
                .collect()
        })
        .join()
        .unwrap();
        assert!(other.iter().all(|id| !seen.contains(id)));
        // Odd lengths are filled too.
        let mut odd = [0u8; 13];
        super::fill_random_id(&mut odd);
        assert_ne!(odd, [0u8; 13]);
    }

    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly_and_continued() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = parse(good).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = t.child_traceparent();
        assert!(
            child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && child.ends_with("-01")
        );
        assert_ne!(&child[36..52], "00f067aa0ba902b7", "a new span id");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        let root = TraceContext::new_root();
        assert_eq!(root.trace_id_hex().len(), 32);
        assert_ne!(root.trace_id, TraceContext::new_root().trace_id);
    }
}
